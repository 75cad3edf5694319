-- Deferred generation: accepted jobs wait here for their planned moment, then any
-- replica's worker claims one under a lease (a crashed worker's claim runs out and
-- another takes the job over). Times are ms since the Unix epoch, database clock.
CREATE TABLE jobs (
    id               TEXT    PRIMARY KEY, -- "job_" + 24 hex digits
    api_key          TEXT,                   -- owner's key id; NULL: anonymous
    content_key      TEXT    NOT NULL,       -- hex; what the job will publish
    request          TEXT    NOT NULL,       -- the image request as accepted (JSON)
    status           TEXT    NOT NULL,       -- queued | running | succeeded | failed | expired | cancelled
    deliver_by       BIGINT NOT NULL,       -- the caller's deadline
    run_after        BIGINT NOT NULL,       -- the planned (cheapest) moment
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    lease_holder     TEXT,                   -- the worker running it
    lease_expires_at BIGINT,
    attempts         BIGINT NOT NULL DEFAULT 0,
    live_micros      BIGINT,                -- provider fee quoted for running it at acceptance; NULL: unknown
    planned_micros   BIGINT,                -- provider fee quoted at run_after; NULL: unknown
    charged_micros   BIGINT,                -- what running it cost (its request rows), set when it ends
    provider_micros  BIGINT,                -- of which the provider's fee
    error_code       TEXT,
    error            TEXT,
    batch            TEXT,                   -- the batch it belongs to, if any
    custom_id        TEXT,                   -- the caller's id for it within the batch
    webhook_url      TEXT
);
CREATE INDEX jobs_ready ON jobs (status, run_after);
CREATE INDEX jobs_by_owner ON jobs (api_key, created_at);
CREATE INDEX jobs_by_batch ON jobs (batch);
-- Identical deferred requests from one caller are one job while it is pending.
CREATE UNIQUE INDEX jobs_one_pending_per_key ON jobs (content_key, COALESCE(api_key, ''))
    WHERE status IN ('queued', 'running') AND batch IS NULL;

-- Files of the OpenAI Batch API surface: uploaded inputs and made outputs.
CREATE TABLE files (
    id          TEXT    PRIMARY KEY, -- "file-" + 24 hex digits
    api_key     TEXT,
    purpose     TEXT    NOT NULL,             -- batch | batch_output | batch_error
    filename    TEXT    NOT NULL,
    bytes       BIGINT NOT NULL,
    content     BYTEA,                         -- NULL for outputs, which are made from the jobs
    batch       TEXT,                         -- the batch an output file belongs to
    created_at  BIGINT NOT NULL
);

CREATE TABLE batches (
    id                 TEXT    PRIMARY KEY, -- "batch_" + 24 hex digits
    api_key            TEXT,
    endpoint           TEXT    NOT NULL,
    input_file_id      TEXT    NOT NULL,
    completion_window  TEXT    NOT NULL,
    status             TEXT    NOT NULL,      -- in_progress | finalizing | completed | cancelling | cancelled | expired | failed
    metadata           TEXT,                  -- JSON object
    output_file_id     TEXT,
    error_file_id      TEXT,
    errors             TEXT,                  -- JSON: validation errors of a failed batch
    created_at         BIGINT NOT NULL,
    expires_at         BIGINT NOT NULL,
    in_progress_at     BIGINT,
    finalizing_at      BIGINT,
    completed_at       BIGINT,
    failed_at          BIGINT,
    expired_at         BIGINT,
    cancelling_at      BIGINT,
    cancelled_at       BIGINT
);
CREATE INDEX batches_by_owner ON batches (api_key, created_at);

-- A deferred job's charge is the sum of its request rows, found by request id.
CREATE INDEX requests_by_request_id ON requests (request_id);
