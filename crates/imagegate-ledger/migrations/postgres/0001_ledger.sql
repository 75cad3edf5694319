-- The same schema as migrations/sqlite/0001_ledger.sql, in PostgreSQL types.
-- Text columns that reports group and order by use the "C" collation, so they sort
-- byte-wise exactly as SQLite's BINARY does; created_at stays RFC 3339 UTC text with
-- fixed millisecond width, so text order is time order and both backends share the
-- same window and per-day queries.
CREATE TABLE requests (
    id          BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id  TEXT    NOT NULL,
    content_key TEXT    COLLATE "C" NOT NULL,
    cache       TEXT    COLLATE "C" NOT NULL,   -- miss | hit | bypass
    status      TEXT    COLLATE "C" NOT NULL,   -- ok | blocked
    provider    TEXT    COLLATE "C",
    model       TEXT    COLLATE "C",
    api_key     TEXT    COLLATE "C",            -- key id, never the secret
    profile     TEXT    NOT NULL,
    micros      BIGINT  NOT NULL,
    wall_ms     DOUBLE PRECISION NOT NULL,
    created_at  TEXT    COLLATE "C" NOT NULL    -- RFC 3339 UTC, e.g. 2026-11-01T10:00:00.000Z
);
CREATE INDEX requests_by_key ON requests (content_key);
CREATE INDEX requests_by_time ON requests (created_at);

CREATE TABLE stages (
    id          BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request     BIGINT  NOT NULL REFERENCES requests (id),
    stage       TEXT    COLLATE "C" NOT NULL,
    micros      BIGINT  NOT NULL,
    wall_ms     DOUBLE PRECISION NOT NULL,
    cpu_ms      DOUBLE PRECISION NOT NULL,
    bytes_in    BIGINT  NOT NULL,
    bytes_out   BIGINT  NOT NULL,
    detail      TEXT    NOT NULL,               -- JSON, parsed by the ledger where needed
    created_at  TEXT    COLLATE "C" NOT NULL
);
CREATE INDEX stages_by_request ON stages (request);
CREATE INDEX stages_by_stage_time ON stages (stage, created_at);
