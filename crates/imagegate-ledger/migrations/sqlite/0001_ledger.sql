-- One row per request answered (hit, miss or blocked), one row per stage it ran.
CREATE TABLE requests (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id  TEXT    NOT NULL,
    content_key TEXT    NOT NULL,
    cache       TEXT    NOT NULL,   -- miss | hit | bypass
    status      TEXT    NOT NULL,   -- ok | blocked
    provider    TEXT,
    model       TEXT,
    api_key     TEXT,               -- key id, never the secret
    profile     TEXT    NOT NULL,
    micros      INTEGER NOT NULL,
    wall_ms     REAL    NOT NULL,
    created_at  TEXT    NOT NULL    -- RFC 3339 UTC
);
CREATE INDEX requests_by_key ON requests (content_key);
CREATE INDEX requests_by_time ON requests (created_at);

CREATE TABLE stages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    request     INTEGER NOT NULL REFERENCES requests (id),
    stage       TEXT    NOT NULL,
    micros      INTEGER NOT NULL,
    wall_ms     REAL    NOT NULL,
    cpu_ms      REAL    NOT NULL,
    bytes_in    INTEGER NOT NULL,
    bytes_out   INTEGER NOT NULL,
    detail      TEXT    NOT NULL,
    created_at  TEXT    NOT NULL
);
CREATE INDEX stages_by_request ON stages (request);
CREATE INDEX stages_by_stage_time ON stages (stage, created_at);
