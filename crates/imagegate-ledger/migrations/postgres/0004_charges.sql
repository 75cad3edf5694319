-- The same as migrations/sqlite/0004_charges.sql, in PostgreSQL types.
ALTER TABLE stages ADD COLUMN unpriced SMALLINT NOT NULL DEFAULT 0;

CREATE INDEX requests_by_api_key_time ON requests (api_key, created_at);

CREATE TABLE reservations (
    id          BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bucket      TEXT    COLLATE "C" NOT NULL,
    micros      BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL
);
CREATE INDEX reservations_by_bucket ON reservations (bucket);

CREATE TABLE rate_limits (
    bucket      TEXT    COLLATE "C" PRIMARY KEY,
    tat_us      BIGINT  NOT NULL
);
