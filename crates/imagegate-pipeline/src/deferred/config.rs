//! `[deferred]`: how this replica runs the jobs callers deferred with `deliver_by`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeferredConfig {
    /// Deferred jobs this replica runs at once; 0 accepts jobs but runs none here
    /// (another replica of the ledger database does). A job also waits while every
    /// generation slot is busy, so live requests keep priority.
    pub workers: usize,
    /// How often an idle worker looks for due jobs.
    pub poll_ms: u64,
    /// A claimed job whose worker stopped renewing for this long is taken over by
    /// another worker (the holder renews every third of it).
    pub lease_secs: u64,
    /// Time kept in hand before a deadline: a job is planned to start at least this
    /// long before its `deliver_by`.
    pub margin_secs: u64,
    /// The furthest `deliver_by` accepted.
    pub max_window_hours: u64,
    /// Claims of one job before it is failed (a job that keeps killing its worker).
    pub max_attempts: u32,
    /// Send jobs whose deadline leaves the provider's completion window (24 h) and
    /// `margin_secs` to its batch API, where it has one and the price book prices it
    /// (`batch_discount_pct`), instead of running them live.
    pub upstream: bool,
    /// Most jobs in one upstream batch.
    pub upstream_max_lines: u32,
    /// How often an open upstream batch is polled.
    pub upstream_poll_ms: u64,
}

impl Default for DeferredConfig {
    fn default() -> DeferredConfig {
        DeferredConfig {
            workers: 1,
            poll_ms: 1000,
            lease_secs: 60,
            margin_secs: 600,
            max_window_hours: 7 * 24,
            max_attempts: 5,
            upstream: true,
            upstream_max_lines: 500,
            upstream_poll_ms: 60_000,
        }
    }
}
