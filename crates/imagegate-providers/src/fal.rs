//! The fal adapter, through fal's queue API: submit, poll the status, fetch the
//! result, then download the image it names. A request still running at
//! `max_wait_secs`, or whose caller went away (the `generate` future dropped), is
//! cancelled upstream.
//!
//! Wire format (fal's Inference API reference, read 2026-12-05:
//! <https://fal.ai/docs/api-reference/inference-api>,
//! <https://docs.fal.ai/documentation/model-apis/inference/queue>,
//! <https://fal.ai/docs/inference-api/queue/cancel>):
//! - submit: `POST {base}/{model_id}` (`fal-ai/flux/schnell`, `fal-ai/flux-2-pro`, ...)
//!   with `Authorization: Key <key>` and the model's input, answers `{"request_id",
//!   "status": "IN_QUEUE", "status_url", "response_url", "cancel_url"}`. The status,
//!   result and cancel URLs use only the owner and app of a model id, so they are
//!   taken from the answer, never built.
//! - status: `GET status_url` answers 202 `{"status": "IN_QUEUE" | "IN_PROGRESS",
//!   "queue_position"}` until 200 `{"status": "COMPLETED"}` (with `"error"` when the
//!   model failed).
//! - result: `GET response_url` answers the model's output; FLUX models give
//!   `{"images": [{"url", "width", "height", "content_type"}], "seed",
//!   "has_nsfw_concepts": [bool], "timings"}`; a failed request answers its error
//!   status with `{"detail": ..}`.
//! - cancel: `PUT cancel_url` answers 202 `{"status": "CANCELLATION_REQUESTED"}` (or
//!   `ALREADY_COMPLETED`).
//! - errors: `{"detail": "..."}` (or a list for 422 validation errors); 401/403 bad
//!   key, 429 over the concurrency limit.
//!
//! fal bills successful outputs only (not server errors or queue time) and reports no
//! cost; the price book prices the output megapixels. The key goes only to fal's own
//! hosts (`*.fal.run`, `*.fal.ai`) or the configured base host, never to the CDN URL.

use crate::helpers::{self, Answer, ApiKey, CancelOnDrop};
use crate::{Generation, ModelOffer, Provider, ProviderError, ProviderRequest, Usage};
use async_trait::async_trait;
use bytes::Bytes;
use imagegate_core::ModelClass;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

const KEY_DOMAINS: &[&str] = &["fal.run", "fal.ai"];
/// Words fal models use when their safety checker refuses a prompt or an output.
const POLICY_WORDS: &[&str] = &["nsfw", "content policy", "safety", "moderation", "flagged"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FalConfig {
    #[serde(default = "default_name")]
    pub name: String,
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Name of the environment variable holding the API key (never the key itself).
    #[serde(default = "default_api_key_env")]
    pub api_key_env: String,
    /// Limit for each single HTTP call (submit, one poll, the result, the download).
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    #[serde(default = "default_max_poll_interval_ms")]
    pub max_poll_interval_ms: u64,
    /// Whole-request deadline, after which it is cancelled and reported as a timeout.
    #[serde(default = "default_max_wait_secs")]
    pub max_wait_secs: u64,
    #[serde(default = "default_max_download_bytes")]
    pub max_download_bytes: u64,
    /// Model ids as fal's gallery names them (`owner/app[/path]`).
    #[serde(default = "default_models")]
    pub models: Vec<ModelOffer>,
}

fn default_name() -> String {
    "fal".into()
}
fn default_base_url() -> String {
    "https://queue.fal.run".into()
}
fn default_api_key_env() -> String {
    "FAL_KEY".into()
}
fn default_timeout_secs() -> u64 {
    30
}
fn default_poll_interval_ms() -> u64 {
    250
}
fn default_max_poll_interval_ms() -> u64 {
    2_000
}
fn default_max_wait_secs() -> u64 {
    240
}
fn default_max_download_bytes() -> u64 {
    48 * 1024 * 1024
}
fn default_models() -> Vec<ModelOffer> {
    vec![
        ModelOffer::new("fal-ai/flux/schnell", &[ModelClass::Draft]),
        ModelOffer::new("fal-ai/flux/dev", &[ModelClass::Standard]),
        ModelOffer::new("fal-ai/flux-2-pro", &[ModelClass::Premium]),
    ]
}

impl Default for FalConfig {
    fn default() -> Self {
        FalConfig {
            name: default_name(),
            base_url: default_base_url(),
            api_key_env: default_api_key_env(),
            timeout_secs: default_timeout_secs(),
            poll_interval_ms: default_poll_interval_ms(),
            max_poll_interval_ms: default_max_poll_interval_ms(),
            max_wait_secs: default_max_wait_secs(),
            max_download_bytes: default_max_download_bytes(),
            models: default_models(),
        }
    }
}

/// `Debug` shows the key as `***`.
#[derive(Debug)]
pub struct FalProvider {
    config: FalConfig,
    endpoint: helpers::Endpoint,
    base_host: Option<String>,
    key: ApiKey,
}

impl FalProvider {
    pub fn new(config: FalConfig) -> Result<FalProvider, ProviderError> {
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
        if let Some(m) = config.models.iter().find(|m| !m.name.contains('/')) {
            return Err(ProviderError::Config {
                provider: config.name.clone(),
                message: format!(
                    "model {:?} is not a fal model id `owner/app[/path]`",
                    m.name
                ),
            });
        }
        let key = ApiKey::from_env(&config.name, &config.api_key_env)?;
        let base_host = helpers::host_of(&config.base_url);
        Ok(FalProvider {
            endpoint,
            base_host,
            config,
            key,
        })
    }

    fn auth(&self) -> String {
        format!("Key {}", self.key.expose())
    }

    /// A URL from fal's answers, checked before the key is sent there.
    fn fal_url<'a>(&self, url: &'a str, what: &str) -> Result<&'a str, ProviderError> {
        if helpers::trusted_host(url, self.base_host.as_deref(), KEY_DOMAINS) {
            Ok(url)
        } else {
            Err(helpers::bad_response(
                &self.config.name,
                format!("{what} is not on a fal host; the key is not sent there"),
            ))
        }
    }

    async fn submit(&self, request: &ProviderRequest) -> Result<Submitted, ProviderError> {
        let input = Input {
            prompt: &request.prompt,
            image_size: ImageSize {
                width: request.size.width,
                height: request.size.height,
            },
            // fal's FLUX seeds are int32-sized in practice; fold ours in.
            seed: request.seed % (i32::MAX as u64 + 1),
            num_images: 1,
            output_format: "png",
            enable_safety_checker: true,
        };
        let post = self
            .endpoint
            .client
            .post(format!("{}/{}", self.endpoint.base_url, request.model))
            .header(reqwest::header::AUTHORIZATION, self.auth())
            .json(&input);
        let (submitted, _): (Submitted, _) =
            helpers::send_json(&self.config.name, &self.endpoint, post, |a| {
                self.error_from(a)
            })
            .await?;
        Ok(submitted)
    }

    /// Polls the status until `COMPLETED`. A rate-limited or 5xx poll is waited out.
    async fn wait(
        &self,
        submitted: &Submitted,
        guard: &mut CancelOnDrop,
    ) -> Result<Status, ProviderError> {
        let name = &self.config.name;
        let status_url = self.fal_url(&submitted.status_url, "status_url")?;
        let deadline = Instant::now() + Duration::from_secs(self.config.max_wait_secs);
        let mut schedule = helpers::PollSchedule::new(
            self.config.poll_interval_ms,
            self.config.max_poll_interval_ms,
        );
        let mut wait = schedule.next();
        loop {
            let now = Instant::now();
            if now >= deadline {
                guard.cancel_now().await;
                return Err(ProviderError::Timeout {
                    provider: name.clone(),
                    after: Duration::from_secs(self.config.max_wait_secs),
                });
            }
            tokio::time::sleep(wait.min(deadline - now)).await;
            let get = self
                .endpoint
                .client
                .get(status_url)
                .header(reqwest::header::AUTHORIZATION, self.auth());
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
            let (status, _): (Status, _) = helpers::parse_json(name, &answer.body)?;
            match status.status {
                QueueStatus::InQueue | QueueStatus::InProgress => wait = schedule.next(),
                QueueStatus::Completed => return Ok(status),
            }
        }
    }

    async fn result(
        &self,
        submitted: &Submitted,
    ) -> Result<(FluxOutput, serde_json::Value), ProviderError> {
        let url = self.fal_url(&submitted.response_url, "response_url")?;
        let get = self
            .endpoint
            .client
            .get(url)
            .header(reqwest::header::AUTHORIZATION, self.auth());
        helpers::send_json(&self.config.name, &self.endpoint, get, |a| {
            self.error_from(a)
        })
        .await
    }

    fn error_from(&self, answer: &Answer) -> ProviderError {
        let detail = match serde_json::from_slice::<ErrorBody>(&answer.body) {
            Ok(e) => match e.detail {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => String::from_utf8_lossy(&answer.body).into_owned(),
                other => other.to_string(),
            },
            Err(_) => String::from_utf8_lossy(&answer.body).into_owned(),
        };
        if answer.status.is_client_error()
            && !matches!(answer.status.as_u16(), 401 | 403 | 429)
            && looks_like_policy(&detail)
        {
            return ProviderError::ContentRejected {
                provider: self.config.name.clone(),
                message: helpers::truncate(&detail, 300),
            };
        }
        helpers::status_error(
            &self.config.name,
            Some(&self.config.api_key_env),
            answer.status,
            helpers::retry_after(&answer.headers),
            &detail,
        )
    }
}

fn looks_like_policy(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    POLICY_WORDS.iter().any(|w| t.contains(w))
}

#[async_trait]
impl Provider for FalProvider {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn kind(&self) -> &'static str {
        "fal"
    }

    fn offers(&self) -> &[ModelOffer] {
        &self.config.models
    }

    /// Submit, the whole wait, the result, then the download.
    fn deadline(&self) -> Duration {
        self.endpoint.timeout * 3 + Duration::from_secs(self.config.max_wait_secs)
    }

    async fn generate(&self, request: &ProviderRequest) -> Result<Generation, ProviderError> {
        let name = &self.config.name;
        let submitted = self.submit(request).await?;
        tracing::debug!(provider = %name, request_id = %submitted.request_id, "fal request queued");
        let cancel_url = self.fal_url(&submitted.cancel_url, "cancel_url")?;
        let cancel = self
            .endpoint
            .client
            .put(cancel_url)
            .header(reqwest::header::AUTHORIZATION, self.auth());
        let mut guard = CancelOnDrop::new(name, &submitted.request_id, cancel);
        let status = self.wait(&submitted, &mut guard).await?;
        guard.disarm();
        if let Some(error) = status.error.filter(|e| !e.is_empty()) {
            return Err(if looks_like_policy(&error) {
                ProviderError::ContentRejected {
                    provider: name.clone(),
                    message: helpers::truncate(&error, 300),
                }
            } else {
                ProviderError::Upstream {
                    provider: name.clone(),
                    message: format!(
                        "request {} failed: {}",
                        submitted.request_id,
                        helpers::truncate(&error, 300)
                    ),
                }
            });
        }
        let (output, value) = self.result(&submitted).await?;
        if output.has_nsfw_concepts.first() == Some(&true) {
            // fal's checker blacks the image out rather than failing the request.
            return Err(ProviderError::ContentRejected {
                provider: name.clone(),
                message: "the safety checker flagged the output (has_nsfw_concepts)".into(),
            });
        }
        let image = output
            .images
            .first()
            .ok_or_else(|| helpers::bad_response(name, "result has no images"))?;
        // The CDN URL takes no key.
        let bytes = helpers::download(
            name,
            &self.endpoint,
            &image.url,
            self.config.max_download_bytes,
            None,
        )
        .await?;
        let sniffed = helpers::sniff_image(name, &bytes)?;
        Ok(Generation {
            bytes: Bytes::from(bytes),
            media_type: sniffed.media_type.to_string(),
            provider: name.clone(),
            model: request.model.clone(),
            usage: Usage {
                images: 1,
                width: sniffed.width,
                height: sniffed.height,
                raw: serde_json::json!({
                    "request_id": submitted.request_id,
                    "seed": value.get("seed").cloned().unwrap_or(serde_json::Value::Null),
                    "timings": value.get("timings").cloned().unwrap_or(serde_json::Value::Null),
                }),
                ..Usage::default()
            },
        })
    }
}

// ---- wire types: exactly the API's JSON ----

#[derive(Debug, Serialize)]
struct Input<'a> {
    prompt: &'a str,
    image_size: ImageSize,
    seed: u64,
    num_images: u32,
    output_format: &'a str,
    enable_safety_checker: bool,
}

#[derive(Debug, Serialize)]
struct ImageSize {
    width: u32,
    height: u32,
}

#[derive(Debug, Deserialize)]
struct Submitted {
    request_id: String,
    status_url: String,
    response_url: String,
    cancel_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum QueueStatus {
    InQueue,
    InProgress,
    Completed,
}

#[derive(Debug, Deserialize)]
struct Status {
    status: QueueStatus,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct FluxOutput {
    #[serde(default)]
    images: Vec<FalImage>,
    #[serde(default)]
    has_nsfw_concepts: Vec<bool>,
}

#[derive(Debug, Deserialize)]
struct FalImage {
    url: String,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    detail: serde_json::Value,
}
