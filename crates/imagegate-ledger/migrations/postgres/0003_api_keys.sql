-- API keys. Only a hash of each secret is kept: a key is shown once, when created.
CREATE TABLE api_keys (
    id                   TEXT    PRIMARY KEY,          -- public part; ledger rows name keys by it
    name                 TEXT    NOT NULL,
    secret_blake3        TEXT    NOT NULL,             -- hex blake3 of the secret part
    requests_per_minute  BIGINT,                       -- NULL: the server's default
    created_at           TEXT    NOT NULL,             -- RFC 3339 UTC
    revoked_at           TEXT
);
