//! The `local` provider: deterministic procedural pictures drawn on this machine.
//!
//! It is the embedded default, not a test double: it has a price (the price book's
//! `local` entry) and a latency like a paid provider, so the cost path runs for real. Same prompt, negative prompt,
//! seed, size and model give the same PNG bytes; different prompts give clearly
//! different pictures (another palette, sky, sun, ridges and texture).

mod procedural;

use crate::{Generation, ModelOffer, Provider, ProviderError, ProviderRequest, Usage};
use async_trait::async_trait;
use bytes::Bytes;
use imagegate_core::ModelClass;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

pub use procedural::draw;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    #[serde(default = "default_name")]
    pub name: String,
    /// Simulated provider latency added before the picture is returned.
    #[serde(default = "default_latency_ms")]
    pub latency_ms: u64,
    #[serde(default = "default_models")]
    pub models: Vec<ModelOffer>,
}

fn default_name() -> String {
    "local".into()
}
fn default_latency_ms() -> u64 {
    200
}
fn default_models() -> Vec<ModelOffer> {
    vec![ModelOffer::new(
        "procedural-v1",
        &[ModelClass::Draft, ModelClass::Standard, ModelClass::Premium],
    )]
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            name: default_name(),
            latency_ms: default_latency_ms(),
            models: default_models(),
        }
    }
}

pub struct LocalProvider {
    config: LocalConfig,
    /// Pictures drawn at once: one per core. A draw is pure CPU work holding a
    /// picture and its PNG (about 6 MB at 1024 px) for as long as it runs, so more
    /// draws than cores finish no sooner and only hold more memory.
    drawing: Arc<Semaphore>,
}

impl LocalProvider {
    pub fn new(config: LocalConfig) -> Result<LocalProvider, ProviderError> {
        if config.models.is_empty() {
            return Err(ProviderError::Config {
                provider: config.name.clone(),
                message: "models is empty".into(),
            });
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(LocalProvider {
            config,
            drawing: Arc::new(Semaphore::new(cores)),
        })
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn offers(&self) -> &[ModelOffer] {
        &self.config.models
    }

    fn kind(&self) -> &'static str {
        "local"
    }

    /// The configured latency plus a drawing's worth of time on a busy machine.
    fn deadline(&self) -> Duration {
        Duration::from_millis(self.config.latency_ms) + Duration::from_secs(30)
    }

    async fn generate(&self, request: &ProviderRequest) -> Result<Generation, ProviderError> {
        if !self.config.models.iter().any(|m| m.name == request.model) {
            return Err(ProviderError::Config {
                provider: self.config.name.clone(),
                message: format!("no model named {:?}", request.model),
            });
        }
        let started = std::time::Instant::now();
        let req = request.clone();
        // Drawing is CPU work: keep it off the async workers, a core's worth at a time.
        let slots = self.drawing.clone();
        let drawing = async move {
            let _slot = slots
                .acquire_owned()
                .await
                .expect("the drawing semaphore is never closed");
            tokio::task::spawn_blocking(move || procedural::draw_png(&req)).await
        };
        let latency = tokio::time::sleep(Duration::from_millis(self.config.latency_ms));
        let (png, ()) = tokio::join!(drawing, latency);
        let png = png
            .map_err(|e| ProviderError::Upstream {
                provider: self.config.name.clone(),
                message: e.to_string(),
            })?
            .map_err(|e| ProviderError::Upstream {
                provider: self.config.name.clone(),
                message: e,
            })?;
        Ok(Generation {
            bytes: Bytes::from(png),
            media_type: "image/png".into(),
            provider: self.config.name.clone(),
            model: request.model.clone(),
            usage: Usage {
                images: 1,
                width: request.size.width,
                height: request.size.height,
                raw: serde_json::json!({"provider_ms": started.elapsed().as_millis() as u64}),
                ..Usage::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use imagegate_core::Size;

    fn req(prompt: &str, seed: u64) -> ProviderRequest {
        ProviderRequest {
            prompt: prompt.into(),
            negative_prompt: None,
            model: "procedural-v1".into(),
            size: Size {
                width: 256,
                height: 192,
            },
            seed,
        }
    }

    fn provider() -> LocalProvider {
        LocalProvider::new(LocalConfig {
            latency_ms: 1,
            ..LocalConfig::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn same_request_same_bytes_and_reported_size() {
        let p = provider();
        let a = p.generate(&req("a lighthouse at dusk", 7)).await.unwrap();
        let b = p.generate(&req("a lighthouse at dusk", 7)).await.unwrap();
        assert_eq!(a.bytes, b.bytes);
        assert_eq!(&a.bytes[1..4], b"PNG");
        assert_eq!(
            (a.usage.images, a.usage.width, a.usage.height),
            (1, 256, 192)
        );
    }

    #[tokio::test]
    async fn unknown_model_is_a_config_error() {
        let mut r = req("x", 1);
        r.model = "nope".into();
        assert!(matches!(
            provider().generate(&r).await,
            Err(ProviderError::Config { .. })
        ));
    }

    #[test]
    fn a_price_in_the_provider_config_is_refused() {
        // Prices live in the price book only.
        let err = serde_json::from_str::<LocalConfig>(r#"{"usd_per_image": 0.002}"#);
        assert!(err.is_err());
    }
}
