//! The Black Forest Labs API adapter (FLUX.2 and FLUX 1.1), a queue-style API: submit
//! to the model's endpoint, then poll the `polling_url` the answer names until the
//! result is `Ready`, then download the signed `sample` URL with a size limit.
//!
//! Wire format (BFL's API reference and their `bfl-api` skill, read 2026-12-05:
//! <https://docs.bfl.ai/quick_start/generating_images>,
//! <https://github.com/black-forest-labs/skills/blob/main/skills/bfl-api/references/endpoints.md>):
//! - submit: `POST {base}/{model}` (`flux-2-pro`, `flux-2-max`, `flux-2-klein-4b`,
//!   `flux-pro-1.1`, ...) with header `x-key` and `{"prompt", "width", "height",
//!   "seed", "output_format", "safety_tolerance"}`; FLUX.2 sizes are multiples of 16 up
//!   to 4 MP, FLUX 1.1 multiples of 32 within 256..=1440. The answer is `{"id",
//!   "polling_url", "cost", "input_mp", "output_mp"}`: `cost` is what BFL charged, in
//!   credits ($0.01 each: the price book's `usd_per_reported_credit`), kept beside the
//!   price book's own figure.
//! - poll: `GET polling_url` (with `x-key`) answers `{"id", "status", "result",
//!   "error"}`; `status` is `Pending` (also `Queued`, `Processing`) until `Ready` with
//!   `result.sample` (a signed URL valid ten minutes), or `Error`/`Failed`, or
//!   `Request Moderated` / `Content Moderated` (a refusal), or `Task not found`.
//! - errors: 401/403 bad key, 402 out of credits, 422 `{"detail": [..]}` validation,
//!   429 `{"error", "message", "retry_after"}` when too many tasks are active.
//!
//! BFL documents no cancel call, so an abandoned task runs to its end (and is paid).
//! The key is sent only to the API's own host or other `bfl.ai` hosts the polling URL
//! may name (regional clusters), never to the delivery URL.

use crate::helpers::{self, Answer, ApiKey};
use crate::{Generation, ModelOffer, Provider, ProviderError, ProviderRequest, Usage};
use async_trait::async_trait;
use bytes::Bytes;
use imagegate_core::{ModelClass, Size};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Hosts the key may be sent to besides the configured base URL's.
const KEY_DOMAINS: &[&str] = &["bfl.ai", "bfl.ml"];
/// FLUX.2's output limit.
const FLUX2_MAX_PIXELS: u64 = 4 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BflConfig {
    #[serde(default = "default_name")]
    pub name: String,
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Name of the environment variable holding the API key (never the key itself).
    #[serde(default = "default_api_key_env")]
    pub api_key_env: String,
    /// Limit for each single HTTP call (submit, one poll, the download).
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    #[serde(default = "default_max_poll_interval_ms")]
    pub max_poll_interval_ms: u64,
    /// Whole-task deadline.
    #[serde(default = "default_max_wait_secs")]
    pub max_wait_secs: u64,
    #[serde(default = "default_max_download_bytes")]
    pub max_download_bytes: u64,
    /// 0 (strictest) to 6; BFL's default (2) when unset.
    #[serde(default)]
    pub safety_tolerance: Option<u8>,
    #[serde(default = "default_models")]
    pub models: Vec<ModelOffer>,
}

fn default_name() -> String {
    "bfl".into()
}
fn default_base_url() -> String {
    "https://api.bfl.ai/v1".into()
}
fn default_api_key_env() -> String {
    "BFL_API_KEY".into()
}
fn default_timeout_secs() -> u64 {
    30
}
fn default_poll_interval_ms() -> u64 {
    500
}
fn default_max_poll_interval_ms() -> u64 {
    4_000
}
fn default_max_wait_secs() -> u64 {
    240
}
fn default_max_download_bytes() -> u64 {
    48 * 1024 * 1024
}
fn default_models() -> Vec<ModelOffer> {
    vec![
        ModelOffer::new("flux-2-klein-4b", &[ModelClass::Draft]),
        ModelOffer::new("flux-2-pro", &[ModelClass::Standard]),
        ModelOffer::new("flux-2-max", &[ModelClass::Premium]),
    ]
}

impl Default for BflConfig {
    fn default() -> Self {
        BflConfig {
            name: default_name(),
            base_url: default_base_url(),
            api_key_env: default_api_key_env(),
            timeout_secs: default_timeout_secs(),
            poll_interval_ms: default_poll_interval_ms(),
            max_poll_interval_ms: default_max_poll_interval_ms(),
            max_wait_secs: default_max_wait_secs(),
            max_download_bytes: default_max_download_bytes(),
            safety_tolerance: None,
            models: default_models(),
        }
    }
}

/// `Debug` shows the key as `***`.
#[derive(Debug)]
pub struct BflProvider {
    config: BflConfig,
    endpoint: helpers::Endpoint,
    base_host: Option<String>,
    key: ApiKey,
}

impl BflProvider {
    pub fn new(config: BflConfig) -> Result<BflProvider, ProviderError> {
        let endpoint = helpers::Endpoint::open(
            &config.name,
            &config.base_url,
            config.timeout_secs,
            config.models.is_empty(),
        )?;
        helpers::validate_queue(
            &config.name,
            config.poll_interval_ms,
            config.max_poll_interval_ms,
            config.max_wait_secs,
            config.max_download_bytes,
        )?;
        if config.safety_tolerance.is_some_and(|t| t > 6) {
            return Err(ProviderError::Config {
                provider: config.name.clone(),
                message: "safety_tolerance must be within 0..=6".into(),
            });
        }
        let key = ApiKey::from_env(&config.name, &config.api_key_env)?;
        let base_host = helpers::host_of(&config.base_url);
        Ok(BflProvider {
            endpoint,
            base_host,
            config,
            key,
        })
    }

    async fn submit(&self, request: &ProviderRequest) -> Result<SubmitResponse, ProviderError> {
        let name = &self.config.name;
        let (width, height) = wire_size(&request.model, request.size);
        let body = SubmitRequest {
            prompt: &request.prompt,
            width,
            height,
            // BFL seeds are int32-sized in practice; fold ours in.
            seed: request.seed % (i32::MAX as u64 + 1),
            output_format: "png",
            safety_tolerance: self.config.safety_tolerance,
        };
        let post = self
            .endpoint
            .client
            .post(format!("{}/{}", self.endpoint.base_url, request.model))
            .header("x-key", self.key.expose())
            .json(&body);
        let (submitted, _): (SubmitResponse, _) =
            helpers::send_json(name, &self.endpoint, post, |a| self.error_from(a)).await?;
        Ok(submitted)
    }

    /// Polls until the task ends. A rate-limited or 5xx poll is waited out: the task
    /// is already paid for, so a poll hiccup must not abandon it.
    async fn wait(&self, polling_url: &str) -> Result<PollResponse, ProviderError> {
        let name = &self.config.name;
        if !helpers::trusted_host(polling_url, self.base_host.as_deref(), KEY_DOMAINS) {
            return Err(helpers::bad_response(
                name,
                "polling_url is not on a BFL host; the key is not sent there",
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(self.config.max_wait_secs);
        let mut schedule = helpers::PollSchedule::new(
            self.config.poll_interval_ms,
            self.config.max_poll_interval_ms,
        );
        let mut wait = schedule.next();
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ProviderError::Timeout {
                    provider: name.clone(),
                    after: Duration::from_secs(self.config.max_wait_secs),
                });
            }
            tokio::time::sleep(wait.min(deadline - now)).await;
            let get = self
                .endpoint
                .client
                .get(polling_url)
                .header("x-key", self.key.expose());
            let answer = match helpers::send(name, self.endpoint.timeout, get, 1 << 20).await {
                Ok(a) => a,
                Err(ProviderError::Timeout { .. }) => {
                    wait = schedule.after_blip(None);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if answer.status.as_u16() == 429 || answer.status.is_server_error() {
                wait = schedule.after_blip(helpers::retry_after(&answer.headers));
                continue;
            }
            if !answer.status.is_success() {
                return Err(self.error_from(&answer));
            }
            let (poll, _): (PollResponse, _) = helpers::parse_json(name, &answer.body)?;
            match poll.status.as_str() {
                "Pending" | "Queued" | "Processing" => wait = schedule.next(),
                _ => return Ok(poll),
            }
        }
    }

    fn error_from(&self, answer: &Answer) -> ProviderError {
        let parsed = serde_json::from_slice::<ErrorBody>(&answer.body).ok();
        let detail = match &parsed {
            Some(e) => [
                e.error.as_ref().map(value_text),
                e.message.clone(),
                e.detail.as_ref().map(value_text),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": "),
            None => String::from_utf8_lossy(&answer.body).into_owned(),
        };
        let retry_after = helpers::retry_after(&answer.headers).or_else(|| {
            parsed
                .as_ref()
                .and_then(|e| e.retry_after)
                .and_then(helpers::seconds)
        });
        helpers::status_error(
            &self.config.name,
            Some(&self.config.api_key_env),
            answer.status,
            retry_after,
            &detail,
        )
    }
}

#[async_trait]
impl Provider for BflProvider {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn kind(&self) -> &'static str {
        "bfl"
    }

    fn offers(&self) -> &[ModelOffer] {
        &self.config.models
    }

    /// Submit, the whole wait, then the download.
    fn deadline(&self) -> Duration {
        self.endpoint.timeout * 2 + Duration::from_secs(self.config.max_wait_secs)
    }

    async fn generate(&self, request: &ProviderRequest) -> Result<Generation, ProviderError> {
        let name = &self.config.name;
        let submitted = self.submit(request).await?;
        tracing::debug!(provider = %name, task = %submitted.id, cost = ?submitted.cost, "bfl task submitted");
        let done = self.wait(&submitted.polling_url).await?;
        match done.status.as_str() {
            "Ready" => {}
            "Request Moderated" | "Content Moderated" => {
                return Err(ProviderError::ContentRejected {
                    provider: name.clone(),
                    message: format!(
                        "{}{}",
                        done.status,
                        done.details
                            .as_ref()
                            .map(|d| format!(": {}", helpers::truncate(&value_text(d), 200)))
                            .unwrap_or_default()
                    ),
                })
            }
            other => {
                return Err(ProviderError::Upstream {
                    provider: name.clone(),
                    message: format!(
                        "task {} ended {other:?}: {}",
                        submitted.id,
                        done.error
                            .as_ref()
                            .map(|e| helpers::truncate(&value_text(e), 300))
                            .unwrap_or_default()
                    ),
                })
            }
        }
        let sample = done
            .result
            .as_ref()
            .and_then(|r| r.sample.as_deref())
            .ok_or_else(|| helpers::bad_response(name, "Ready without result.sample"))?;
        // The signed delivery URL takes no key.
        let bytes = helpers::download(
            name,
            &self.endpoint,
            sample,
            self.config.max_download_bytes,
            None,
        )
        .await?;
        let sniffed = helpers::sniff_image(name, &bytes)?;
        let cost = done.cost.or(submitted.cost);
        Ok(Generation {
            bytes: Bytes::from(bytes),
            media_type: sniffed.media_type.to_string(),
            provider: name.clone(),
            model: request.model.clone(),
            usage: Usage {
                images: 1,
                width: sniffed.width,
                height: sniffed.height,
                credits: cost,
                raw: serde_json::json!({
                    "id": submitted.id,
                    "cost": cost,
                    "input_mp": submitted.input_mp,
                    "output_mp": submitted.output_mp,
                }),
                ..Usage::default()
            },
        })
    }
}

/// A size the model takes: FLUX.2 multiples of 16 up to 4 MP; FLUX 1.x multiples of
/// 32 within 256..=1440.
fn wire_size(model: &str, size: Size) -> (u32, u32) {
    let (w, h) = (f64::from(size.width.max(1)), f64::from(size.height.max(1)));
    if model.starts_with("flux-2") {
        let scale = (FLUX2_MAX_PIXELS as f64 / (w * h)).sqrt().min(1.0);
        let snap = |v: f64| ((v * scale / 16.0).floor().max(4.0) * 16.0) as u32;
        (snap(w), snap(h))
    } else {
        let scale = (1440.0 / w.max(h)).min(1.0);
        let snap = |v: f64| (((v * scale / 32.0).round() * 32.0).clamp(256.0, 1440.0)) as u32;
        (snap(w), snap(h))
    }
}

fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

// ---- wire types: exactly the API's JSON ----

#[derive(Debug, Serialize)]
struct SubmitRequest<'a> {
    prompt: &'a str,
    width: u32,
    height: u32,
    seed: u64,
    output_format: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    safety_tolerance: Option<u8>,
}

#[derive(Debug, Deserialize)]
struct SubmitResponse {
    id: String,
    polling_url: String,
    /// Credits charged.
    #[serde(default)]
    cost: Option<f64>,
    #[serde(default)]
    input_mp: Option<f64>,
    #[serde(default)]
    output_mp: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct PollResponse {
    status: String,
    #[serde(default)]
    result: Option<PollResult>,
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(default)]
    details: Option<serde_json::Value>,
    #[serde(default)]
    cost: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct PollResult {
    #[serde(default)]
    sample: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    detail: Option<serde_json::Value>,
    #[serde(default)]
    retry_after: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_each_family_s_limits() {
        let size = |w, h| Size {
            width: w,
            height: h,
        };
        assert_eq!(wire_size("flux-2-pro", size(1024, 1024)), (1024, 1024));
        assert_eq!(wire_size("flux-2-pro", size(1000, 600)), (992, 592));
        let (w, h) = wire_size("flux-2-max", size(4096, 4096));
        assert!(
            u64::from(w) * u64::from(h) <= FLUX2_MAX_PIXELS && w % 16 == 0,
            "{w}x{h}"
        );
        assert_eq!(wire_size("flux-pro-1.1", size(2048, 1024)), (1440, 736));
        assert_eq!(wire_size("flux-pro-1.1", size(100, 100)), (256, 256));
    }
}
