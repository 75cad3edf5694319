//! One error type for the whole request path. Variants carry a message a person can
//! act on; `Clone` because one failed generation answers every caller waiting on it.

use imagegate_core::{ConfigError, ImageFormat, RequestError};
use imagegate_providers::router::BadPolicy;
use std::time::Duration;

#[derive(Debug, Clone, thiserror::Error)]
pub enum PipelineError {
    /// The caller's request cannot be served as asked (400).
    #[error("{0}")]
    Invalid(#[from] RequestFault),
    /// The configuration cannot work: found at start-up, never by a request.
    #[error("configuration {0}")]
    Config(#[from] ConfigError),
    #[error("profile {0:?} is not configured")]
    UnknownProfile(String),
    #[error("prompt blocked by rule {rule:?}")]
    PromptBlocked { rule: String },
    #[error("the cheapest candidate costs ${quote_usd:.6}, above max_cost_usd ${max_usd:.6}")]
    CostLimit { quote_usd: f64, max_usd: f64 },
    #[error("the {window} budget of ${limit_usd:.6} is exhausted (${committed_usd:.6} spent or reserved, this request needs ${needed_usd:.6})")]
    BudgetExhausted {
        window: &'static str,
        limit_usd: f64,
        committed_usd: f64,
        needed_usd: f64,
    },
    #[error("no provider serves model {0}")]
    NoProvider(String),
    /// The caller named a model its provider no longer serves.
    #[error("model {model} was retired on {retired}{}", .replacement.as_ref().map(|r| format!("; use {r} instead")).unwrap_or_default())]
    ModelRetired {
        model: String,
        retired: String,
        replacement: Option<String>,
    },
    #[error("provider {provider} refused the prompt: {message}")]
    UpstreamContentBlocked { provider: String, message: String },
    #[error("provider {provider} is rate limiting; retry later")]
    ProviderRateLimited {
        provider: String,
        retry_after: Option<Duration>,
    },
    #[error("provider {provider} timed out")]
    ProviderTimeout { provider: String },
    #[error("provider failed: {0}")]
    ProviderFailed(String),
    #[error("the image is unusable: {0}")]
    BadImage(String),
    #[error("{what} is at capacity; retry shortly")]
    Overloaded {
        what: &'static str,
        retry_after: Duration,
    },
    /// The store is down or not answering (after retries): worth retrying later.
    #[error("object store: {0}")]
    Storage(String),
    /// The store refused (permissions, missing bucket, bad key): retrying won't help.
    #[error("object store refused: {0}")]
    StorageRejected(String),
    #[error("ledger: {0}")]
    Ledger(String),
    #[error("safety: {0}")]
    Safety(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl PipelineError {
    /// The error's code, as the HTTP API answers it and deferred jobs record it.
    pub fn code(&self) -> &'static str {
        use PipelineError as P;
        match self {
            P::Invalid(_) => "invalid_request",
            P::Config(_) | P::Safety(_) | P::Internal(_) => "internal",
            P::UnknownProfile(_) => "unknown_profile",
            P::PromptBlocked { .. } => "prompt_blocked",
            P::CostLimit { .. } => "cost_limit_exceeded",
            P::BudgetExhausted { .. } => "budget_exhausted",
            P::NoProvider(_) => "no_provider",
            P::ModelRetired { .. } => "model_retired",
            P::UpstreamContentBlocked { .. } => "content_blocked",
            P::ProviderRateLimited { .. } => "provider_rate_limited",
            P::ProviderTimeout { .. } => "provider_timeout",
            P::ProviderFailed(_) => "provider_failed",
            P::BadImage(_) => "bad_provider_image",
            P::Overloaded { .. } => "overloaded",
            P::Storage(_) => "storage_unavailable",
            P::StorageRejected(_) => "storage_error",
            P::Ledger(_) => "ledger_unavailable",
        }
    }

    /// Whether the same request may succeed later: an outage, a full queue, a budget
    /// window that rolls over; not a fault of the request or of the service.
    pub fn is_passing(&self) -> bool {
        use PipelineError as P;
        matches!(
            self,
            P::BudgetExhausted { .. }
                | P::ProviderRateLimited { .. }
                | P::ProviderTimeout { .. }
                | P::ProviderFailed(_)
                | P::BadImage(_)
                | P::Overloaded { .. }
                | P::Storage(_)
                | P::Ledger(_)
        )
    }
}

/// What is wrong with a caller's request: one variant per fault, each able to name
/// the request field it is about ([`RequestFault::field`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestFault {
    /// Size, model or prompt that make no sense whatever the configuration.
    #[error("{0}")]
    Request(#[from] RequestError),
    #[error("{field} has {chars} characters; the limit is {limit}")]
    TooLong {
        field: &'static str,
        chars: usize,
        limit: usize,
    },
    #[error("variants must list 1 to {max} widths")]
    VariantCount { max: usize },
    #[error("variants lists width {0} twice")]
    RepeatedVariant(u32),
    #[error("formats is empty")]
    NoFormats,
    #[error("formats lists {0} twice")]
    RepeatedFormat(ImageFormat),
    /// The profile with the caller's overrides (variants, formats) does not work.
    #[error("profile {profile:?}: {fault}")]
    Profile { profile: String, fault: ConfigError },
    #[error("max_cost_usd must be a non-negative number")]
    MaxCost,
    #[error("{0}")]
    Policy(#[from] BadPolicy),
    /// `deliver_by` cannot be read or kept (the message says why).
    #[error("deliver_by: {0}")]
    DeliverBy(String),
}

impl RequestFault {
    /// The request field at fault, as the native and OpenAI bodies name it.
    pub fn field(&self) -> &str {
        match self {
            RequestFault::Request(e) => e.field(),
            RequestFault::TooLong { field, .. } => field,
            RequestFault::VariantCount { .. } | RequestFault::RepeatedVariant(_) => "variants",
            RequestFault::NoFormats | RequestFault::RepeatedFormat(_) => "formats",
            RequestFault::Profile { fault, .. } => fault.field(),
            RequestFault::MaxCost => "max_cost_usd",
            RequestFault::Policy(_) => "policy",
            RequestFault::DeliverBy(_) => "deliver_by",
        }
    }
}

impl From<imagegate_providers::ProviderError> for PipelineError {
    fn from(e: imagegate_providers::ProviderError) -> Self {
        use imagegate_providers::ProviderError as P;
        match e {
            P::NoCandidate(m) => PipelineError::NoProvider(m),
            P::ContentRejected { provider, message } => {
                PipelineError::UpstreamContentBlocked { provider, message }
            }
            P::RateLimited {
                provider,
                retry_after,
            } => PipelineError::ProviderRateLimited {
                provider,
                retry_after,
            },
            P::Timeout { provider, .. } => PipelineError::ProviderTimeout { provider },
            other => PipelineError::ProviderFailed(other.to_string()),
        }
    }
}

impl From<imagegate_storage::StorageError> for PipelineError {
    fn from(e: imagegate_storage::StorageError) -> Self {
        if e.is_unavailable() {
            PipelineError::Storage(e.to_string())
        } else {
            PipelineError::StorageRejected(e.to_string())
        }
    }
}

impl From<imagegate_ledger::LedgerError> for PipelineError {
    fn from(e: imagegate_ledger::LedgerError) -> Self {
        PipelineError::Ledger(e.to_string())
    }
}

impl From<crate::cpu::PoolError> for PipelineError {
    fn from(e: crate::cpu::PoolError) -> Self {
        match e {
            crate::cpu::PoolError::Full(_) => PipelineError::Overloaded {
                what: "the image processing pool",
                retry_after: Duration::from_secs(1),
            },
            crate::cpu::PoolError::Panicked(m) => PipelineError::Internal(m),
        }
    }
}

impl From<imagegate_providers::RouteError> for PipelineError {
    fn from(e: imagegate_providers::RouteError) -> Self {
        use imagegate_providers::RouteError as R;
        match e {
            R::Config(e) => PipelineError::Config(e.under("router")),
            R::DuplicateProvider(name) => PipelineError::Config(imagegate_core::ConfigError::new(
                "providers",
                format!("two providers are named {name:?}"),
            )),
            R::NoCandidate { choice } => PipelineError::NoProvider(choice),
            R::Retired {
                model,
                on,
                replacement,
            } => PipelineError::ModelRetired {
                model,
                retired: on.to_string(),
                replacement,
            },
            R::OverBudget {
                cheapest, max_cost, ..
            } => PipelineError::CostLimit {
                quote_usd: cheapest.as_usd(),
                max_usd: max_cost.as_usd(),
            },
            R::ContentRejected {
                provider, message, ..
            } => PipelineError::UpstreamContentBlocked { provider, message },
            other => PipelineError::ProviderFailed(other.to_string()),
        }
    }
}
