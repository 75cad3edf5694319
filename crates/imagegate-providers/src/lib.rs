//! Image generation behind one trait: [`Provider`], one module per provider, what each
//! model costs ([`price_book`], kept current without a restart by [`LivePrices`]),
//! and the choice of provider for a request ([`Router`]).
//!
//! Adapters turn our [`ProviderRequest`] into a provider's wire format and its answer
//! into a [`Generation`] with the usage the provider reported; they carry no prices
//! (the price book does) and never decode pixels (the imaging crate does, with
//! limits). The shared send-and-map code lives once in `helpers`. Providers with a
//! batch API (OpenAI, Gemini) also expose it as a [`BatchApi`] (`batch`). The
//! `local` provider draws deterministic procedural images so the whole service runs
//! offline.

pub mod automatic1111;
pub mod batch;
pub mod bfl;
pub mod breaker;
pub mod fal;
pub mod google;
mod helpers;
pub mod live_prices;
pub mod local;
pub mod openai;
pub mod price_book;
pub mod replicate;
pub mod router;
pub mod stability;

pub use batch::{BatchApi, BatchLine, BatchPoll, BatchState, LineResult, Submitted};
pub use live_prices::{LivePrices, Reloaded};
pub use price_book::{ModelStatus, PriceBook, PriceError, Quote, Rate};
pub use router::{
    Charge, Decision, Estimate, Policy, RouteError, Routed, Router, RouterConfig, SkipReason,
};

use async_trait::async_trait;
use bytes::Bytes;
use imagegate_core::{ModelClass, Size};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("no configured provider serves model {0}")]
    NoCandidate(String),
    #[error("provider {provider} refused the prompt: {message}")]
    ContentRejected { provider: String, message: String },
    #[error("provider {provider} is rate limiting us (retry after {retry_after:?})")]
    RateLimited {
        provider: String,
        retry_after: Option<Duration>,
    },
    /// The call ran out of time. It may have been charged: a timed-out paid call is
    /// not retried on the same provider (queue-style adapters cancel upstream first).
    #[error("provider {provider} timed out after {after:?}")]
    Timeout { provider: String, after: Duration },
    #[error("provider {provider} failed: {message}")]
    Upstream { provider: String, message: String },
    #[error("provider {provider} answered something we cannot use: {message}")]
    BadResponse { provider: String, message: String },
    #[error("provider {provider} is misconfigured: {message}")]
    Config { provider: String, message: String },
}

impl ProviderError {
    /// Worth another try of the same provider model after a backoff: a 5xx blip or a
    /// rate limit. A timeout is not (the call may have been paid for), garbage tends to
    /// repeat, and a refusal or a bad key repeats for certain.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::Upstream { .. } | ProviderError::RateLimited { .. }
        )
    }

    /// Evidence that the provider is unhealthy, for its circuit breaker. A rate limit
    /// (busy, not broken) and a refused prompt (it answered coherently) are not.
    pub fn counts_against_breaker(&self) -> bool {
        !matches!(
            self,
            ProviderError::RateLimited { .. } | ProviderError::ContentRejected { .. }
        )
    }

    /// The closed set of ways a call fails, for attempts, logs and metric labels.
    pub fn outcome(&self) -> AttemptOutcome {
        match self {
            ProviderError::Upstream { .. } => AttemptOutcome::Upstream,
            ProviderError::Timeout { .. } => AttemptOutcome::Timeout,
            ProviderError::BadResponse { .. } => AttemptOutcome::BadResponse,
            ProviderError::RateLimited { .. } => AttemptOutcome::RateLimited,
            ProviderError::ContentRejected { .. } => AttemptOutcome::ContentRejected,
            ProviderError::Config { .. } | ProviderError::NoCandidate(_) => AttemptOutcome::Config,
        }
    }

    /// How long the provider asked us to wait, when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// How one call to a provider ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Ok,
    Upstream,
    Timeout,
    BadResponse,
    RateLimited,
    ContentRejected,
    Config,
    /// Not called: the provider's circuit breaker was open.
    BreakerOpen,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Ok => "ok",
            AttemptOutcome::Upstream => "upstream",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::BadResponse => "bad_response",
            AttemptOutcome::RateLimited => "rate_limited",
            AttemptOutcome::ContentRejected => "content_rejected",
            AttemptOutcome::Config => "config",
            AttemptOutcome::BreakerOpen => "breaker_open",
        }
    }

    pub fn is_ok(self) -> bool {
        self == AttemptOutcome::Ok
    }
}

impl std::fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a provider is asked to draw, after prompt normalization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRequest {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub model: String,
    pub size: Size,
    pub seed: u64,
}

/// What a provider returned: encoded image bytes (untrusted: decode with limits) and
/// the billable usage the provider reported. What that costs is the price book's job
/// (the router's [`Charge`]); adapters carry no prices.
#[derive(Debug, Clone)]
pub struct Generation {
    pub bytes: Bytes,
    pub media_type: String,
    pub provider: String,
    pub model: String,
    /// Provider-reported usage, kept for pricing and the ledger.
    pub usage: Usage,
}

/// The billable quantities of one call, as the provider reported them (or, where it
/// reports nothing, as implied by the request). Prices come from the price book.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub images: u32,
    pub width: u32,
    pub height: u32,
    /// Provider quality tier where it has one ("standard", "hd", "low", "medium", "high").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_text_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_image_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_image_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credits: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_seconds: Option<f64>,
    /// What the provider said it charged, in dollars, where it says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reported_usd: Option<f64>,
    /// The provider's own usage object, verbatim, for audits.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub raw: serde_json::Value,
}

/// A model a provider offers and the classes it may serve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelOffer {
    pub name: String,
    pub classes: Vec<ModelClass>,
    /// Offered although the price book has no entry: its calls are recorded with an
    /// unknown price and flagged, never at $0. Without this, a model missing from the
    /// book stops start-up.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unpriced: bool,
}

impl ModelOffer {
    pub fn new(name: &str, classes: &[ModelClass]) -> ModelOffer {
        ModelOffer {
            name: name.to_string(),
            classes: classes.to_vec(),
            unpriced: false,
        }
    }
}

#[async_trait]
pub trait Provider: Send + Sync {
    fn name(&self) -> &str;
    /// The provider kind, as price-book entries name it (`openai`, `bfl`, ...).
    fn kind(&self) -> &'static str;
    fn offers(&self) -> &[ModelOffer];
    /// The longest this adapter itself waits for one `generate` (every HTTP call and
    /// poll included). The router never gives up on an attempt sooner: dropping a call
    /// the provider is still working on pays for it and then pays again.
    fn deadline(&self) -> Duration;
    /// Generates one image. Dropping the future abandons the call; queue-style
    /// adapters then cancel the prediction upstream where the provider can.
    async fn generate(&self, request: &ProviderRequest) -> Result<Generation, ProviderError>;
    /// The provider's batch API, when it has one and it is enabled: the same
    /// generations within a completion window, at the price book's batch price.
    fn batch(&self) -> Option<&dyn BatchApi> {
        None
    }
}

/// Provider configuration, one table per provider in `[[providers]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProviderConfig {
    Local(local::LocalConfig),
    #[serde(rename = "openai")]
    OpenAi(openai::OpenAiConfig),
    Stability(stability::StabilityConfig),
    Google(google::GoogleConfig),
    Replicate(replicate::ReplicateConfig),
    Automatic1111(automatic1111::Automatic1111Config),
    Bfl(bfl::BflConfig),
    Fal(fal::FalConfig),
}

impl ProviderConfig {
    /// The configured name and the kind (as price-book entries name it).
    pub fn name_and_kind(&self) -> (&str, &'static str) {
        match self {
            ProviderConfig::Local(c) => (&c.name, "local"),
            ProviderConfig::OpenAi(c) => (&c.name, "openai"),
            ProviderConfig::Stability(c) => (&c.name, "stability"),
            ProviderConfig::Google(c) => (&c.name, "google"),
            ProviderConfig::Replicate(c) => (&c.name, "replicate"),
            ProviderConfig::Automatic1111(c) => (&c.name, "automatic1111"),
            ProviderConfig::Bfl(c) => (&c.name, "bfl"),
            ProviderConfig::Fal(c) => (&c.name, "fal"),
        }
    }

    pub fn models(&self) -> &[ModelOffer] {
        match self {
            ProviderConfig::Local(c) => &c.models,
            ProviderConfig::OpenAi(c) => &c.models,
            ProviderConfig::Stability(c) => &c.models,
            ProviderConfig::Google(c) => &c.models,
            ProviderConfig::Replicate(c) => &c.models,
            ProviderConfig::Automatic1111(c) => &c.models,
            ProviderConfig::Bfl(c) => &c.models,
            ProviderConfig::Fal(c) => &c.models,
        }
    }
}

/// What the configured providers offer, read from their configuration alone (no
/// keys needed), for checking the price book before a deploy.
pub fn offered_by(configs: &[ProviderConfig]) -> Vec<price_book::Offered> {
    configs
        .iter()
        .flat_map(|c| {
            let (name, kind) = c.name_and_kind();
            c.models().iter().map(move |m| price_book::Offered {
                provider: name.to_string(),
                kind: kind.to_string(),
                model: m.name.clone(),
                unpriced: m.unpriced,
            })
        })
        .collect()
}

/// The configured providers, in configuration order.
#[derive(Clone)]
pub struct ProviderSet {
    providers: Vec<Arc<dyn Provider>>,
}

impl ProviderSet {
    pub fn from_config(configs: &[ProviderConfig]) -> Result<ProviderSet, ProviderError> {
        let mut providers: Vec<Arc<dyn Provider>> = Vec::new();
        for c in configs {
            let p: Arc<dyn Provider> = match c {
                ProviderConfig::Local(lc) => Arc::new(local::LocalProvider::new(lc.clone())?),
                ProviderConfig::OpenAi(c) => Arc::new(openai::OpenAiProvider::new(c.clone())?),
                ProviderConfig::Stability(c) => {
                    Arc::new(stability::StabilityProvider::new(c.clone())?)
                }
                ProviderConfig::Google(c) => Arc::new(google::GoogleProvider::new(c.clone())?),
                ProviderConfig::Replicate(c) => {
                    Arc::new(replicate::ReplicateProvider::new(c.clone())?)
                }
                ProviderConfig::Automatic1111(c) => {
                    Arc::new(automatic1111::Automatic1111Provider::new(c.clone())?)
                }
                ProviderConfig::Bfl(c) => Arc::new(bfl::BflProvider::new(c.clone())?),
                ProviderConfig::Fal(c) => Arc::new(fal::FalProvider::new(c.clone())?),
            };
            if providers.iter().any(|q| q.name() == p.name()) {
                return Err(ProviderError::Config {
                    provider: p.name().to_string(),
                    message: "two providers share this name".into(),
                });
            }
            providers.push(p);
        }
        Ok(ProviderSet { providers })
    }

    /// The providers, in configuration order, for the [`Router`].
    pub fn into_providers(self) -> Vec<Arc<dyn Provider>> {
        self.providers
    }
}
