//! Image generation behind one trait: [`Provider`], one module per provider, and the
//! choice of provider for a request ([`ProviderSet::choose`]).
//!
//! Adapters turn our [`ProviderRequest`] into a provider's wire format and its answer
//! into a [`Generation`] with the fee it charged; they never decode pixels (the
//! imaging crate does, with limits). The `local` provider draws deterministic
//! procedural images so the whole service runs offline.

pub mod automatic1111;
pub mod breaker;
pub mod google;
mod http;
pub mod local;
pub mod openai;
pub mod price_book;
pub mod replicate;
pub mod router;
pub mod stability;

pub use price_book::{PriceBook, PriceError, Quote};
pub use router::{Decision, Estimate, Policy, RouteError, Routed, Router, RouterConfig};

use async_trait::async_trait;
use bytes::Bytes;
use imagegate_core::{Micros, ModelClass, Size};
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
    #[error("provider {provider} timed out after {after:?}")]
    Timeout { provider: String, after: Duration },
    #[error("provider {provider} failed: {message}")]
    Upstream { provider: String, message: String },
    #[error("provider {provider} answered something we cannot use: {message}")]
    BadResponse { provider: String, message: String },
    #[error("provider {provider} is misconfigured: {message}")]
    Config { provider: String, message: String },
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

/// What a provider returned: encoded image bytes (untrusted: decode with limits)
/// and what it cost according to the provider's own usage figures.
#[derive(Debug, Clone)]
pub struct Generation {
    pub bytes: Bytes,
    pub media_type: String,
    pub provider: String,
    pub model: String,
    pub cost: Micros,
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
}

#[async_trait]
pub trait Provider: Send + Sync {
    fn name(&self) -> &str;
    fn offers(&self) -> &[ModelOffer];
    /// Expected fee for one image of `size` from `model`, before calling.
    fn quote(&self, model: &str, size: Size) -> Micros;
    async fn generate(&self, request: &ProviderRequest) -> Result<Generation, ProviderError>;
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
