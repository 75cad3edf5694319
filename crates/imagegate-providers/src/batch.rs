//! Provider batch APIs: many generations of one model submitted at once, answered
//! within a completion window (24 hours for OpenAI's Batch API and Gemini's batch
//! mode) at a discount. [`BatchApi`] is what an adapter exposes when its provider has
//! one ([`crate::Provider::batch`]); the deferred-job planner sends jobs with time to
//! spare there instead of calling live.
//!
//! Each line carries our own id (`custom_id`), and results come back keyed by it: a
//! generation with the usage the provider reported, or that line's typed error. The
//! adapter never prices anything (the price book's batch price does) and never
//! decides what to do with a failed line (the planner runs it live if time allows).

use crate::{Generation, ProviderError, ProviderRequest};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::time::Duration;

/// The completion window both providers offer (and the only one OpenAI accepts).
pub const COMPLETION_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// One request of a batch, under the id its result will come back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLine {
    pub custom_id: String,
    pub request: ProviderRequest,
}

/// A batch the provider accepted: its id there, and the input file it was read from
/// where the provider has one (OpenAI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub upstream_id: String,
    pub input_file_id: Option<String>,
}

/// Where an upstream batch stands, in our terms: still working, or ended one of
/// four ways. Only an ended batch has results worth fetching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchState {
    /// Validating, queued, running, finalizing or cancelling: poll again later.
    Working,
    /// Every line has a result (an image or its own error).
    Completed,
    /// The completion window ran out: the lines done by then have results, the rest
    /// none (OpenAI and Gemini both return partial results).
    Expired,
    /// Cancelled: lines finished before the cancel have results.
    Cancelled,
    /// The batch as a whole failed (e.g. its input was refused); no line has a result.
    Failed { message: String },
}

impl BatchState {
    pub fn is_final(&self) -> bool {
        !matches!(self, BatchState::Working)
    }
}

/// A poll's answer: our reading, and the provider's own status word for logs and
/// the ledger (`in_progress`, `BATCH_STATE_RUNNING`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPoll {
    pub state: BatchState,
    pub upstream_status: String,
}

/// What one line came to.
#[derive(Debug)]
pub enum LineResult {
    Generated(Box<Generation>),
    Failed(ProviderError),
}

/// A provider's batch API, for one configured provider.
#[async_trait]
pub trait BatchApi: Send + Sync {
    /// How long the provider may take; a job is only sent here when its deadline
    /// leaves this much time and a margin.
    fn completion_window(&self) -> Duration {
        COMPLETION_WINDOW
    }

    /// Submits `lines`, all of `model`. `tag` (our own id for the batch) is attached
    /// where the provider keeps a label, so the batch can be recognised on its side.
    async fn submit(
        &self,
        model: &str,
        tag: &str,
        lines: &[BatchLine],
    ) -> Result<Submitted, ProviderError>;

    /// Where the batch stands now.
    async fn poll(&self, upstream_id: &str) -> Result<BatchPoll, ProviderError>;

    /// The results of an ended batch of `model` by custom id. `custom_ids` are the
    /// submitted lines in order (Gemini answers inlined requests in order and may omit
    /// their keys). A line missing from the answer had no result.
    async fn results(
        &self,
        upstream_id: &str,
        model: &str,
        custom_ids: &[String],
    ) -> Result<BTreeMap<String, LineResult>, ProviderError>;

    /// Asks the provider to stop; lines already done keep their results.
    async fn cancel(&self, upstream_id: &str) -> Result<BatchPoll, ProviderError>;
}
