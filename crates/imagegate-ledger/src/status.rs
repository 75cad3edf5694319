//! What became of a request, as its ledger row says.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A request row's status. Every status but `Ok` and `Blocked` is a request that
/// delivered nothing, whose costs are in the ledger all the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    /// Published and answered.
    Ok,
    /// The classifier blocked the image: the verdict is cached and paid for once.
    Blocked,
    /// A provider was paid and the rest is still running (or the process died
    /// before it could say otherwise).
    InProgress,
    /// Paid, then failed downstream (decode, the CPU pool, the store, ...).
    Failed,
    /// Paid, then the work was dropped before it could finish (shutdown, a panic).
    Abandoned,
}

impl RequestStatus {
    pub const ALL: [RequestStatus; 5] = [
        RequestStatus::Ok,
        RequestStatus::Blocked,
        RequestStatus::InProgress,
        RequestStatus::Failed,
        RequestStatus::Abandoned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Ok => "ok",
            RequestStatus::Blocked => "blocked",
            RequestStatus::InProgress => "in_progress",
            RequestStatus::Failed => "failed",
            RequestStatus::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<RequestStatus> {
        RequestStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for RequestStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
