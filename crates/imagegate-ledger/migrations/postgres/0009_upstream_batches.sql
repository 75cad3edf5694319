-- Deferred jobs sent to a provider's batch API (OpenAI Batch, Gemini batch mode)
-- instead of running live. A job planned for one names the configured provider and
-- model; the live worker leaves it alone. The upstream batch is recorded here before
-- it is submitted and its provider id as soon as the provider accepts it, so a
-- restart resumes polling it instead of submitting again. Times are ms since the
-- Unix epoch, database clock.
ALTER TABLE jobs ADD COLUMN upstream_provider TEXT; -- planned for this provider's batch API; NULL: runs live
ALTER TABLE jobs ADD COLUMN upstream_model TEXT;
CREATE INDEX jobs_upstream_ready ON jobs (status, upstream_provider, upstream_model, run_after);

CREATE TABLE upstream_batches (
    id               TEXT    PRIMARY KEY, -- "ub_" + 24 hex digits; the tag sent upstream
    provider         TEXT    NOT NULL,             -- configured provider name
    model            TEXT    NOT NULL,
    upstream_id      TEXT,                         -- the provider's batch id; NULL until it accepted the batch
    input_file_id    TEXT,                         -- the provider's input file, where it has one
    status           TEXT    NOT NULL,             -- submitting | submitted | completed | expired | cancelled | failed
    upstream_status  TEXT,                         -- the provider's own word at the last poll
    error            TEXT,
    lines            BIGINT NOT NULL,
    created_at       BIGINT NOT NULL,
    submitted_at     BIGINT,
    polled_at        BIGINT,
    finished_at      BIGINT,
    lease_holder     TEXT,                         -- the replica polling it
    lease_expires_at BIGINT
);
CREATE INDEX upstream_batches_open ON upstream_batches (status, lease_expires_at);

-- One row per job sent upstream; a job goes upstream at most once (the job id is
-- also the line's custom_id).
CREATE TABLE upstream_batch_lines (
    job      TEXT    PRIMARY KEY,
    batch    TEXT    NOT NULL,
    charge   BIGINT,                              -- requests.id of the line's charge, once recorded
    outcome  TEXT                                  -- generated | failed | missing, once known
);
CREATE INDEX upstream_batch_lines_by_batch ON upstream_batch_lines (batch);
