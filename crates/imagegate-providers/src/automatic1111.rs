//! The self-hosted AUTOMATIC1111 Stable Diffusion web UI adapter (`--api` mode):
//! `POST {base_url}/sdapi/v1/txt2img`. The GPU time of a call is its measured wall
//! time (the server renders one request at a time, so the GPU is ours for exactly
//! that long); what a GPU-second costs is the price book's `per_gpu_second` entry.
//!
//! Wire format:
//! - API overview and `--api`/`--api-auth user:password` (HTTP basic):
//!   <https://github.com/AUTOMATIC1111/stable-diffusion-webui/wiki/API>
//! - request/response models (`StableDiffusionProcessingTxt2Img` fields `prompt`,
//!   `negative_prompt`, `seed`, `width`, `height`, `steps`, `cfg_scale`,
//!   `sampler_name`, `batch_size`, `n_iter`, `override_settings`; `TextToImageResponse`
//!   with `images` (base64 PNGs), `parameters` and `info`, a JSON *string*):
//!   <https://github.com/AUTOMATIC1111/stable-diffusion-webui/blob/master/modules/api/models.py>
//! - worked example of request and response: <https://randombits.dev/articles/stable-diffusion/txt2img>
//! - errors are FastAPI's: 422 `{"detail": [..]}` for validation, and the web UI's
//!   500 `{"error", "detail", "body", "errors"}` for exceptions
//!   (<https://github.com/AUTOMATIC1111/stable-diffusion-webui/blob/master/modules/api/api.py>).
//!
//! The web UI has no content-policy refusals of its own, so this adapter never returns
//! `ContentRejected`; imagegate's own safety stage still screens the output.

use crate::helpers::{self, Answer, ApiKey};
use crate::{Generation, ModelOffer, Provider, ProviderError, ProviderRequest, Usage};
use async_trait::async_trait;
use bytes::Bytes;
use imagegate_core::ModelClass;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use std::time::Instant;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Automatic1111Config {
    #[serde(default = "default_name")]
    pub name: String,
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Name of an environment variable holding `user:password` for `--api-auth`;
    /// unset when the server runs without authentication.
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Largest answer read (the image arrives base64 in the JSON); more is refused.
    #[serde(default = "helpers::default_max_response_bytes")]
    pub max_response_bytes: u64,
    #[serde(default = "default_steps")]
    pub steps: u32,
    #[serde(default = "default_cfg_scale")]
    pub cfg_scale: f64,
    /// Sampler name as the web UI lists it (`/sdapi/v1/samplers`); server default if unset.
    #[serde(default)]
    pub sampler_name: Option<String>,
    /// Model names are checkpoint titles, sent as `override_settings.sd_model_checkpoint`.
    #[serde(default = "default_models")]
    pub models: Vec<ModelOffer>,
}

fn default_name() -> String {
    "automatic1111".into()
}
fn default_base_url() -> String {
    "http://127.0.0.1:7860".into()
}
fn default_timeout_secs() -> u64 {
    300
}
fn default_steps() -> u32 {
    30
}
fn default_cfg_scale() -> f64 {
    7.0
}
fn default_models() -> Vec<ModelOffer> {
    vec![ModelOffer::new(
        "sd_xl_base_1.0",
        &[ModelClass::Draft, ModelClass::Standard],
    )]
}

impl Default for Automatic1111Config {
    fn default() -> Self {
        Automatic1111Config {
            name: default_name(),
            base_url: default_base_url(),
            api_key_env: None,
            timeout_secs: default_timeout_secs(),
            max_response_bytes: helpers::default_max_response_bytes(),
            steps: default_steps(),
            cfg_scale: default_cfg_scale(),
            sampler_name: None,
            models: default_models(),
        }
    }
}

pub struct Automatic1111Provider {
    config: Automatic1111Config,
    endpoint: helpers::Endpoint,
    auth: Option<(String, ApiKey)>,
}

impl std::fmt::Debug for Automatic1111Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Automatic1111Provider")
            .field("config", &self.config)
            .field("auth", &self.auth.as_ref().map(|(user, _)| (user, "***")))
            .finish_non_exhaustive()
    }
}

impl Automatic1111Provider {
    pub fn new(config: Automatic1111Config) -> Result<Automatic1111Provider, ProviderError> {
        let endpoint = helpers::Endpoint::open(
            &config.name,
            &config.base_url,
            config.timeout_secs,
            config.models.is_empty(),
        )?
        .with_max_body(config.max_response_bytes);
        let fail = |message: String| ProviderError::Config {
            provider: config.name.clone(),
            message,
        };
        if config.steps == 0 {
            return Err(fail("steps must be at least 1".into()));
        }
        let auth = match &config.api_key_env {
            None => None,
            Some(var) => {
                let secret = ApiKey::from_env(&config.name, var)?;
                let Some((user, password)) = secret.expose().split_once(':') else {
                    return Err(fail(format!(
                        "environment variable {var} must hold `user:password` (--api-auth)"
                    )));
                };
                // Keep only the password behind the redacting wrapper.
                let user = user.to_string();
                let password = password.to_string();
                Some((user, ApiKey::from_string(password)))
            }
        };
        Ok(Automatic1111Provider {
            endpoint,
            config,
            auth,
        })
    }

    fn error_from(&self, answer: &Answer) -> ProviderError {
        let body = &answer.body[..];
        let detail = match serde_json::from_slice::<ErrorBody>(body) {
            Ok(e) => {
                let mut parts = Vec::new();
                if let Some(s) = e.error {
                    parts.push(s);
                }
                match e.detail {
                    serde_json::Value::Null => {}
                    serde_json::Value::String(s) if s.is_empty() => {}
                    serde_json::Value::String(s) => parts.push(s),
                    other => parts.push(other.to_string()),
                }
                if let Some(s) = e.errors.filter(|s| !s.is_empty()) {
                    parts.push(s);
                }
                parts.join(": ")
            }
            Err(_) => String::from_utf8_lossy(body).into_owned(),
        };
        helpers::status_error(
            &self.config.name,
            self.config.api_key_env.as_deref(),
            answer.status,
            // A web UI behind a proxy may be rate limited by the proxy.
            helpers::retry_after(&answer.headers),
            &detail,
        )
    }
}

#[async_trait]
impl Provider for Automatic1111Provider {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn offers(&self) -> &[ModelOffer] {
        &self.config.models
    }

    fn kind(&self) -> &'static str {
        "automatic1111"
    }

    fn deadline(&self) -> Duration {
        self.endpoint.timeout
    }

    async fn generate(&self, request: &ProviderRequest) -> Result<Generation, ProviderError> {
        let name = &self.config.name;
        let body = Txt2ImgRequest {
            prompt: &request.prompt,
            negative_prompt: request.negative_prompt.as_deref().unwrap_or(""),
            // -1 means random to the web UI; ours are u64, so fold into 0..2^32.
            seed: (request.seed % (1u64 << 32)) as i64,
            // Latent space is 8 pixels per cell: sizes must be multiples of 8.
            width: (request.size.width / 8).max(8) * 8,
            height: (request.size.height / 8).max(8) * 8,
            steps: self.config.steps,
            cfg_scale: self.config.cfg_scale,
            sampler_name: self.config.sampler_name.as_deref(),
            batch_size: 1,
            n_iter: 1,
            send_images: true,
            save_images: false,
            override_settings: OverrideSettings {
                sd_model_checkpoint: &request.model,
            },
        };
        let mut builder = self
            .endpoint
            .client
            .post(format!("{}/sdapi/v1/txt2img", self.endpoint.base_url))
            .json(&body);
        if let Some((user, password)) = &self.auth {
            builder = builder.basic_auth(user, Some(password.expose()));
        }
        let started = Instant::now();
        let answer =
            helpers::send(name, self.endpoint.timeout, builder, self.endpoint.max_body).await?;
        let gpu_seconds = started.elapsed().as_secs_f64();
        if !answer.status.is_success() {
            return Err(self.error_from(&answer));
        }
        let (parsed, _): (Txt2ImgResponse, _) = helpers::parse_json(name, &answer.body)?;
        let first = parsed
            .images
            .first()
            .ok_or_else(|| helpers::bad_response(name, "response has no images"))?;
        let bytes = helpers::decode_base64(name, first)?;
        let sniffed = helpers::sniff_image(name, &bytes)?;
        // `info` is JSON inside a string; keep it parsed when it parses, for audits.
        let info = parsed
            .info
            .as_deref()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            .unwrap_or(serde_json::Value::Null);
        Ok(Generation {
            bytes: Bytes::from(bytes),
            media_type: sniffed.media_type.to_string(),
            provider: name.clone(),
            model: request.model.clone(),
            usage: Usage {
                images: 1,
                width: sniffed.width,
                height: sniffed.height,
                gpu_seconds: Some(gpu_seconds),
                raw: serde_json::json!({
                    "seed": info.get("seed").cloned().unwrap_or(serde_json::Value::Null),
                    "sd_model_name": info.get("sd_model_name").cloned().unwrap_or(serde_json::Value::Null),
                }),
                ..Usage::default()
            },
        })
    }
}

// ---- wire types: exactly the API's JSON ----

#[derive(Debug, Serialize)]
struct Txt2ImgRequest<'a> {
    prompt: &'a str,
    negative_prompt: &'a str,
    seed: i64,
    width: u32,
    height: u32,
    steps: u32,
    cfg_scale: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    sampler_name: Option<&'a str>,
    batch_size: u32,
    n_iter: u32,
    send_images: bool,
    save_images: bool,
    override_settings: OverrideSettings<'a>,
}

#[derive(Debug, Serialize)]
struct OverrideSettings<'a> {
    sd_model_checkpoint: &'a str,
}

#[derive(Debug, Deserialize)]
struct Txt2ImgResponse {
    #[serde(default)]
    images: Vec<String>,
    /// A JSON document encoded as a string (seed actually used, sampler, ...).
    #[serde(default)]
    info: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    detail: serde_json::Value,
    #[serde(default)]
    errors: Option<String>,
}
