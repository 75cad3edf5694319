-- Charges recorded when incurred: a miss's request row is written as soon as its
-- provider has been paid (status in_progress) and settled later (ok, blocked,
-- failed or abandoned). Stages paid at an unknown price are flagged.
ALTER TABLE stages ADD COLUMN unpriced INTEGER NOT NULL DEFAULT 0;

-- The budget query sums one key's spend in a window.
CREATE INDEX requests_by_api_key_time ON requests (api_key, created_at);

-- Budget reservations shared by every replica: a miss reserves its expected cost
-- before calling a provider and the reservation goes when its charge settles, or
-- expires (a replica that died holding one frees it after its TTL).
CREATE TABLE reservations (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    bucket      TEXT    NOT NULL,               -- API key id, or 'anonymous'
    micros      INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL                -- ms since the Unix epoch, database clock
);
CREATE INDEX reservations_by_bucket ON reservations (bucket);

-- Per-key request rate limits shared by replicas (GCRA): the theoretical arrival
-- time of the next request per bucket.
CREATE TABLE rate_limits (
    bucket      TEXT    PRIMARY KEY,
    tat_us      INTEGER NOT NULL                -- µs since the Unix epoch, database clock
);
