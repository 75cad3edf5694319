-- What lets deferred jobs outlive crashes.
--
-- Webhooks (Standard Webhooks): a job that ends with a webhook URL gets one
-- delivery, opened by whichever replica's dispatcher sees it first (the id is
-- derived from the job's, so two replicas cannot open two). Its attempts are
-- claimed under a lease like jobs, and each one is recorded. Times are ms since the
-- Unix epoch, database clock.
CREATE TABLE webhook_deliveries (
    id               TEXT    PRIMARY KEY, -- "msg_" + the job id's hex: the webhook-id header, the same on every retry
    job_id           TEXT    NOT NULL UNIQUE,
    url              TEXT    NOT NULL,
    event            TEXT    NOT NULL,   -- job.succeeded | job.failed | job.expired | job.cancelled
    status           TEXT    NOT NULL,   -- pending | delivered | failed
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    lease_holder     TEXT,
    lease_expires_at BIGINT,
    created_at       BIGINT NOT NULL,
    finished_at      BIGINT,
    last_status_code BIGINT,   -- the receiver's HTTP status of the last attempt; NULL: no answer
    last_error       TEXT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);

-- One row per attempt, whatever it ended in.
CREATE TABLE webhook_attempts (
    delivery_id  TEXT    NOT NULL,
    attempt      BIGINT NOT NULL,
    at           BIGINT NOT NULL,
    status_code  BIGINT,   -- NULL: no HTTP answer (refused, timed out, blocked address)
    error        TEXT,
    duration_ms  BIGINT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

-- A key's default webhook for its deferred jobs (a job's own webhook_url wins).
ALTER TABLE api_keys ADD COLUMN webhook_url TEXT;

-- What the dispatcher scans for recently ended jobs that still need a delivery opened.
CREATE INDEX jobs_with_webhook ON jobs (finished_at) WHERE webhook_url IS NOT NULL;

-- A deferred job's provider output, kept from the moment it was paid for until its
-- files are published, so a worker that dies in between (kill -9, a lost machine)
-- leaves the picture for the job's next claim instead of a second payment.
CREATE TABLE paid_sources (
    content_key TEXT    PRIMARY KEY,
    provider    TEXT    NOT NULL,
    model       TEXT    NOT NULL,
    request_id  TEXT    NOT NULL,   -- the request whose ledger row holds the charge
    bytes       BYTEA    NOT NULL,
    created_at  BIGINT NOT NULL
);
