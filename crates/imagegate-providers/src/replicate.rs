//! The Replicate adapter, a queue-style API: create a prediction, poll it with
//! backoff until it is `succeeded`, `failed` or `canceled`, then download the output
//! file with a size limit and a timeout. A prediction still running at `max_wait_secs`
//! is canceled so we stop paying for it, and so is one whose caller went away (the
//! `generate` future dropped by a disconnect or the router's own timeout).
//!
//! Wire format:
//! - create: `POST {base}/models/{owner}/{name}/predictions` with `{"input": {..}}` for
//!   official models, or `POST {base}/predictions` with `{"version", "input"}` for a
//!   pinned version; optional `Prefer: wait=N` holds the request up to N (≤ 60) seconds.
//!   <https://replicate.com/docs/reference/http#predictions.create>,
//!   <https://sdks.replicate.com/resources/predictions/methods/get>
//! - the prediction object (`id`, `status` = starting | processing | succeeded |
//!   failed | canceled, `output` as file URL(s), `error`, `metrics.predict_time`,
//!   `urls.get`/`urls.cancel`), polled with `GET {base}/predictions/{id}` and canceled
//!   with `POST {base}/predictions/{id}/cancel`:
//!   <https://replicate.com/docs/reference/http#predictions.get>
//! - output files are HTTPS URLs (on `replicate.delivery`) that may need the same
//!   `Authorization` header; we send it only to that domain or the API's own host.
//! - errors are problem details `{"title", "detail", "status"}`; 429 comes with
//!   a body like `{"detail": "Request was throttled. Expected available in 1 second."}`
//!   (<https://replicate.com/docs/topics/predictions/rate-limits>); we honour a
//!   `Retry-After` header when present and otherwise read the delay from `detail`.
//! - model inputs are per model: Flux models take `prompt`, `aspect_ratio`, `seed`,
//!   `output_format` (<https://replicate.com/black-forest-labs/flux-schnell/api/schema>);
//!   Stable Diffusion models take `prompt`, `negative_prompt`, `width`, `height`, `seed`
//!   (<https://replicate.com/stability-ai/sdxl/api/schema>).

use crate::helpers::{self, ApiKey, CancelOnDrop};
use crate::{Generation, ModelOffer, Provider, ProviderError, ProviderRequest, Usage};
use async_trait::async_trait;
use bytes::Bytes;
use imagegate_core::ModelClass;
use reqwest::header::AUTHORIZATION;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const FLUX_ASPECT_RATIOS: &[&str] = &[
    "21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16", "9:21",
];

/// How a model's `input` object names size and negative prompt: a closed set, since
/// Replicate models differ and there is no common schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputStyle {
    /// `aspect_ratio`, `seed`, `output_format`; no negative prompt.
    #[default]
    Flux,
    /// `width`, `height`, `negative_prompt`, `seed`.
    StableDiffusion,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicateConfig {
    #[serde(default = "default_name")]
    pub name: String,
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Name of the environment variable holding the API token (never the token itself).
    #[serde(default = "default_api_key_env")]
    pub api_key_env: String,
    /// Limit for each single HTTP call (create, one poll, the download).
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// First poll delay; doubles after each poll up to `max_poll_interval_ms`.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    #[serde(default = "default_max_poll_interval_ms")]
    pub max_poll_interval_ms: u64,
    /// Whole-prediction deadline, after which it is canceled and we report a timeout.
    #[serde(default = "default_max_wait_secs")]
    pub max_wait_secs: u64,
    #[serde(default = "default_max_download_bytes")]
    pub max_download_bytes: u64,
    /// Send `Prefer: wait=N` on create (1..=60) so fast models answer in one round trip.
    #[serde(default)]
    pub prefer_wait_secs: Option<u32>,
    /// Input style per model name; models not listed use `flux`.
    #[serde(default)]
    pub input_styles: BTreeMap<String, InputStyle>,
    /// `owner/name` for official models, or `owner/name:version`.
    #[serde(default = "default_models")]
    pub models: Vec<ModelOffer>,
}

fn default_name() -> String {
    "replicate".into()
}
fn default_base_url() -> String {
    "https://api.replicate.com/v1".into()
}
fn default_api_key_env() -> String {
    "REPLICATE_API_TOKEN".into()
}
fn default_timeout_secs() -> u64 {
    // Covers a `Prefer: wait=60` create with margin.
    75
}
fn default_poll_interval_ms() -> u64 {
    500
}
fn default_max_poll_interval_ms() -> u64 {
    4_000
}
fn default_max_wait_secs() -> u64 {
    300
}
fn default_max_download_bytes() -> u64 {
    32 * 1024 * 1024
}
fn default_models() -> Vec<ModelOffer> {
    vec![
        ModelOffer::new("black-forest-labs/flux-schnell", &[ModelClass::Draft]),
        ModelOffer::new("black-forest-labs/flux-dev", &[ModelClass::Standard]),
        ModelOffer::new("black-forest-labs/flux-1.1-pro", &[ModelClass::Premium]),
    ]
}

impl Default for ReplicateConfig {
    fn default() -> Self {
        ReplicateConfig {
            name: default_name(),
            base_url: default_base_url(),
            api_key_env: default_api_key_env(),
            timeout_secs: default_timeout_secs(),
            poll_interval_ms: default_poll_interval_ms(),
            max_poll_interval_ms: default_max_poll_interval_ms(),
            max_wait_secs: default_max_wait_secs(),
            max_download_bytes: default_max_download_bytes(),
            prefer_wait_secs: None,
            input_styles: BTreeMap::new(),
            models: default_models(),
        }
    }
}

/// `Debug` shows the key as `***`.
#[derive(Debug)]
pub struct ReplicateProvider {
    config: ReplicateConfig,
    endpoint: helpers::Endpoint,
    base_host: Option<String>,
    key: ApiKey,
}

/// Words Replicate models use when their safety checker rejects a prompt or output.
fn looks_like_policy(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "nsfw",
        "safety",
        "sensitive",
        "flagged",
        "content policy",
        "moderation",
    ]
    .iter()
    .any(|w| t.contains(w))
}

/// Replicate documents its 429 body, not a `Retry-After` header:
/// `{"detail":"Request was throttled. Expected available in 1 second."}` or
/// `"... Your rate limit resets in ~30s."`. Reads the number of seconds from it.
fn retry_from_detail(detail: &str) -> Option<Duration> {
    detail.match_indices("in ").find_map(|(i, _)| {
        let rest = detail[i + 3..].trim_start_matches('~');
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let after = rest[digits.len()..].trim_start();
        let unit_ok = after.starts_with('s') || after.starts_with("second");
        match (digits.parse::<u64>(), unit_ok) {
            (Ok(secs), true) => Some(Duration::from_secs(secs)),
            _ => None,
        }
    })
}

impl ReplicateProvider {
    pub fn new(config: ReplicateConfig) -> Result<ReplicateProvider, ProviderError> {
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
        let fail = |message: String| ProviderError::Config {
            provider: config.name.clone(),
            message,
        };
        if config
            .prefer_wait_secs
            .is_some_and(|s| !(1..=60).contains(&s))
        {
            return Err(fail("prefer_wait_secs must be within 1..=60".into()));
        }
        if let Some(m) = config.models.iter().find(|m| !m.name.contains('/')) {
            return Err(fail(format!(
                "model {:?} is not `owner/name[:version]`",
                m.name
            )));
        }
        let key = ApiKey::from_env(&config.name, &config.api_key_env)?;
        let base_host = helpers::host_of(&config.base_url);
        Ok(ReplicateProvider {
            endpoint,
            base_host,
            config,
            key,
        })
    }

    fn input(&self, request: &ProviderRequest) -> serde_json::Value {
        let style = self
            .config
            .input_styles
            .get(&request.model)
            .copied()
            .unwrap_or_default();
        // Model seeds are Python ints, but many models cap them at int32.
        let seed = request.seed % (i32::MAX as u64 + 1);
        match style {
            InputStyle::Flux => serde_json::json!({
                "prompt": request.prompt,
                "aspect_ratio": helpers::closest_aspect_ratio(request.size.width, request.size.height, FLUX_ASPECT_RATIOS),
                "seed": seed,
                "output_format": "png",
                "num_outputs": 1,
            }),
            InputStyle::StableDiffusion => {
                let mut input = serde_json::json!({
                    "prompt": request.prompt,
                    "width": request.size.width,
                    "height": request.size.height,
                    "seed": seed,
                    "num_outputs": 1,
                });
                if let Some(neg) = &request.negative_prompt {
                    input["negative_prompt"] = serde_json::Value::String(neg.clone());
                }
                input
            }
        }
    }

    async fn error_from(&self, resp: reqwest::Response) -> ProviderError {
        let name = &self.config.name;
        let status = resp.status();
        let retry_after = helpers::retry_after(resp.headers());
        let body = helpers::read_limited(name, self.endpoint.timeout, resp, 64 * 1024)
            .await
            .unwrap_or_default();
        let detail = match serde_json::from_slice::<Problem>(&body) {
            Ok(p) => format!(
                "{}: {}",
                p.title.unwrap_or_default(),
                p.detail.unwrap_or_default()
            ),
            Err(_) => String::from_utf8_lossy(&body).into_owned(),
        };
        if status.is_client_error() && status.as_u16() != 429 && looks_like_policy(&detail) {
            return ProviderError::ContentRejected {
                provider: name.clone(),
                message: helpers::truncate(&detail, 300),
            };
        }
        let retry_after = retry_after.or_else(|| retry_from_detail(&detail));
        helpers::status_error(
            name,
            Some(&self.config.api_key_env),
            status,
            retry_after,
            &detail,
        )
    }

    async fn parse_prediction(&self, resp: reqwest::Response) -> Result<Prediction, ProviderError> {
        let name = &self.config.name;
        let raw = helpers::read_limited(
            name,
            self.endpoint.timeout,
            resp,
            helpers::MAX_RESPONSE_BYTES,
        )
        .await?;
        serde_json::from_slice(&raw)
            .map_err(|e| helpers::bad_response(name, format!("not a prediction object: {e}")))
    }

    async fn create(&self, request: &ProviderRequest) -> Result<Prediction, ProviderError> {
        let name = &self.config.name;
        let (url, version) = match request.model.split_once(':') {
            Some((_, version)) => (
                format!("{}/predictions", self.endpoint.base_url),
                Some(version),
            ),
            None => (
                format!(
                    "{}/models/{}/predictions",
                    self.endpoint.base_url, request.model
                ),
                None,
            ),
        };
        let mut builder = self
            .endpoint
            .client
            .post(url)
            .bearer_auth(self.key.expose())
            .json(&CreatePrediction {
                version,
                input: self.input(request),
            });
        if let Some(secs) = self.config.prefer_wait_secs {
            builder = builder.header("Prefer", format!("wait={secs}"));
        }
        let resp = builder
            .send()
            .await
            .map_err(|e| helpers::transport_error(name, self.endpoint.timeout, e))?;
        if !resp.status().is_success() {
            return Err(self.error_from(resp).await);
        }
        self.parse_prediction(resp).await
    }

    /// One poll. `Ok(None)` means "try again later" (rate limited or a 5xx blip):
    /// the prediction is already paid for, so a poll hiccup must not abandon it.
    async fn poll(
        &self,
        id: &str,
    ) -> Result<(Option<Prediction>, Option<Duration>), ProviderError> {
        let name = &self.config.name;
        let resp = match self
            .endpoint
            .client
            .get(format!("{}/predictions/{}", self.endpoint.base_url, id))
            .bearer_auth(self.key.expose())
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Ok((None, None)),
            Err(e) => return Err(helpers::transport_error(name, self.endpoint.timeout, e)),
        };
        let status = resp.status();
        if status.as_u16() == 429 || status.is_server_error() {
            return Ok((None, helpers::retry_after(resp.headers())));
        }
        if !status.is_success() {
            return Err(self.error_from(resp).await);
        }
        Ok((Some(self.parse_prediction(resp).await?), None))
    }

    /// `POST /predictions/{id}/cancel`, armed until the prediction ends on its own.
    fn cancel_guard(&self, id: &str) -> CancelOnDrop {
        let cancel = self
            .endpoint
            .client
            .post(format!(
                "{}/predictions/{}/cancel",
                self.endpoint.base_url, id
            ))
            .bearer_auth(self.key.expose());
        CancelOnDrop::new(&self.config.name, id, cancel)
    }

    async fn wait(
        &self,
        mut prediction: Prediction,
        guard: &mut CancelOnDrop,
    ) -> Result<Prediction, ProviderError> {
        let deadline = Instant::now() + Duration::from_secs(self.config.max_wait_secs);
        let mut schedule = helpers::PollSchedule::new(
            self.config.poll_interval_ms,
            self.config.max_poll_interval_ms,
        );
        let mut wait = schedule.next();
        while matches!(
            prediction.status,
            PredictionStatus::Starting | PredictionStatus::Processing
        ) {
            let now = Instant::now();
            if now >= deadline {
                guard.cancel_now().await;
                return Err(ProviderError::Timeout {
                    provider: self.config.name.clone(),
                    after: Duration::from_secs(self.config.max_wait_secs),
                });
            }
            tokio::time::sleep(wait.min(deadline - now)).await;
            let (next, retry_after) = self.poll(&prediction.id).await?;
            match next {
                Some(p) => {
                    prediction = p;
                    wait = schedule.next();
                }
                None => wait = schedule.after_blip(retry_after),
            }
        }
        guard.disarm();
        Ok(prediction)
    }

    /// The first file URL in `output` (a string, or a list for multi-output models).
    fn output_url(&self, output: &serde_json::Value) -> Result<String, ProviderError> {
        let url = match output {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(items) => {
                items.iter().find_map(|v| v.as_str().map(str::to_string))
            }
            _ => None,
        };
        url.ok_or_else(|| {
            helpers::bad_response(
                &self.config.name,
                format!(
                    "succeeded without a file URL in output: {}",
                    helpers::truncate(&output.to_string(), 120)
                ),
            )
        })
    }

    /// The token goes only to Replicate's own hosts, never to an arbitrary output URL.
    fn sends_token_to(&self, url: &reqwest::Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        host == "replicate.delivery"
            || host.ends_with(".replicate.delivery")
            || self.base_host.as_deref() == Some(host)
    }

    async fn download(&self, url: &str) -> Result<Vec<u8>, ProviderError> {
        let auth = reqwest::Url::parse(url)
            .ok()
            .filter(|u| self.sends_token_to(u))
            .map(|_| {
                (
                    AUTHORIZATION.as_str(),
                    format!("Bearer {}", self.key.expose()),
                )
            });
        helpers::download(
            &self.config.name,
            &self.endpoint,
            url,
            self.config.max_download_bytes,
            auth,
        )
        .await
    }
}

#[async_trait]
impl Provider for ReplicateProvider {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn kind(&self) -> &'static str {
        "replicate"
    }

    fn offers(&self) -> &[ModelOffer] {
        &self.config.models
    }

    /// Create, the whole wait, then the download.
    fn deadline(&self) -> Duration {
        self.endpoint.timeout * 2 + Duration::from_secs(self.config.max_wait_secs)
    }

    async fn generate(&self, request: &ProviderRequest) -> Result<Generation, ProviderError> {
        let name = &self.config.name;
        let created = self.create(request).await?;
        tracing::debug!(provider = %name, prediction = %created.id, status = ?created.status, "replicate prediction created");
        let mut guard = self.cancel_guard(&created.id);
        let done = self.wait(created, &mut guard).await?;
        match done.status {
            PredictionStatus::Succeeded => {}
            PredictionStatus::Failed => {
                let message = match &done.error {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => "prediction failed without an error message".into(),
                };
                return Err(if looks_like_policy(&message) {
                    ProviderError::ContentRejected {
                        provider: name.clone(),
                        message: helpers::truncate(&message, 300),
                    }
                } else {
                    ProviderError::Upstream {
                        provider: name.clone(),
                        message: format!(
                            "prediction {} failed: {}",
                            done.id,
                            helpers::truncate(&message, 300)
                        ),
                    }
                });
            }
            PredictionStatus::Canceled => {
                return Err(ProviderError::Upstream {
                    provider: name.clone(),
                    message: format!("prediction {} was canceled", done.id),
                })
            }
            PredictionStatus::Starting | PredictionStatus::Processing => {
                return Err(helpers::bad_response(
                    name,
                    "prediction left the wait loop unfinished",
                ))
            }
        }
        let url = self.output_url(&done.output)?;
        let bytes = self.download(&url).await?;
        let sniffed = helpers::sniff_image(name, &bytes)?;
        let predict_time = done.metrics.as_ref().and_then(|m| m.predict_time);
        Ok(Generation {
            bytes: Bytes::from(bytes),
            media_type: sniffed.media_type.to_string(),
            provider: name.clone(),
            model: request.model.clone(),
            usage: Usage {
                images: 1,
                width: sniffed.width,
                height: sniffed.height,
                gpu_seconds: predict_time,
                raw: serde_json::json!({ "prediction": done.id, "metrics": done.metrics }),
                ..Usage::default()
            },
        })
    }
}

// ---- wire types: exactly the API's JSON ----

#[derive(Debug, Serialize)]
struct CreatePrediction<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
    input: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct Prediction {
    id: String,
    status: PredictionStatus,
    #[serde(default)]
    output: serde_json::Value,
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(default)]
    metrics: Option<Metrics>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum PredictionStatus {
    Starting,
    Processing,
    Succeeded,
    Failed,
    Canceled,
}

#[derive(Debug, Deserialize, Serialize)]
struct Metrics {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    predict_time: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct Problem {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    detail: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_is_read_from_the_documented_429_details() {
        assert_eq!(
            retry_from_detail("Request was throttled. Expected available in 1 second."),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            retry_from_detail("Request was throttled. Your rate limit resets in ~30s."),
            Some(Duration::from_secs(30))
        );
        assert_eq!(retry_from_detail("Request was throttled."), None);
        assert_eq!(retry_from_detail("in the queue"), None);
    }
}
