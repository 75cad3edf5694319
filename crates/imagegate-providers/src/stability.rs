//! The Stability AI adapter: Stable Image v2beta generate endpoints `ultra`, `core` and
//! `sd3` (SD 3.5 family, chosen with the `model` form field). Requests are
//! `multipart/form-data`; we ask for `accept: application/json`, which answers
//! `{"image": <base64>, "finish_reason": "SUCCESS" | "CONTENT_FILTERED", "seed": n}`,
//! and also accept raw `image/*` bodies (with `finish-reason` and `seed` headers).
//!
//! Wire format:
//! - <https://platform.stability.ai/docs/api-reference#tag/Generate/paths/~1v2beta~1stable-image~1generate~1ultra/post>
//!   (same for `/core` and `/sd3`): fields `prompt`, `negative_prompt`, `aspect_ratio`
//!   (16:9 1:1 21:9 2:3 3:2 4:5 5:4 9:16 9:21), `seed` (0..=4294967294, 0 = random),
//!   `output_format`; `sd3` adds `model` and `mode`.
//! - JSON response and `finish-reason`/`seed` headers, as documented there and
//!   mirrored in <https://apis.io/examples/stability-ai/stability-ai-generate-image-core-example/>.
//! - Errors are `{"id", "name", "errors": [..]}`; a prompt refused by moderation is
//!   `403` with `name: "content_moderation"` ("your request was flagged by our content
//!   moderation system ... you were not charged"), see
//!   <https://github.com/ZHO-ZHO-ZHO/ComfyUI-StableDiffusion3-API/issues/2>.
//!
//! Credits are not reported per call (the account balance is a separate endpoint), so
//! `Usage::credits` stays empty and the price book charges the model's published
//! credit cost.

use crate::helpers::{self, Answer, ApiKey};
use crate::{Generation, ModelOffer, Provider, ProviderError, ProviderRequest, Usage};
use async_trait::async_trait;
use bytes::Bytes;
use imagegate_core::ModelClass;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde::{Deserialize, Serialize};
use std::time::Duration;

const ASPECT_RATIOS: &[&str] = &[
    "21:9", "16:9", "3:2", "5:4", "1:1", "4:5", "2:3", "9:16", "9:21",
];

/// Stability seeds run 0..=4294967294, where 0 means "random".
const MAX_SEED: u64 = 4_294_967_294;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StabilityConfig {
    #[serde(default = "default_name")]
    pub name: String,
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Name of the environment variable holding the API key (never the key itself).
    #[serde(default = "default_api_key_env")]
    pub api_key_env: String,
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Largest answer read (the image arrives base64 in the JSON); more is refused.
    #[serde(default = "helpers::default_max_response_bytes")]
    pub max_response_bytes: u64,
    /// `png`, `jpeg` or `webp` (sd3 accepts only png and jpeg).
    #[serde(default = "default_output_format")]
    pub output_format: String,
    /// Names are `ultra`, `core`, or an SD 3.5 model id (`sd3.5-large`, ...).
    #[serde(default = "default_models")]
    pub models: Vec<ModelOffer>,
}

fn default_name() -> String {
    "stability".into()
}
fn default_base_url() -> String {
    "https://api.stability.ai".into()
}
fn default_api_key_env() -> String {
    "STABILITY_API_KEY".into()
}
fn default_timeout_secs() -> u64 {
    120
}
fn default_output_format() -> String {
    "png".into()
}
fn default_models() -> Vec<ModelOffer> {
    vec![
        ModelOffer::new("core", &[ModelClass::Draft, ModelClass::Standard]),
        ModelOffer::new("sd3.5-large", &[ModelClass::Standard]),
        ModelOffer::new("ultra", &[ModelClass::Premium]),
    ]
}

impl Default for StabilityConfig {
    fn default() -> Self {
        StabilityConfig {
            name: default_name(),
            base_url: default_base_url(),
            api_key_env: default_api_key_env(),
            timeout_secs: default_timeout_secs(),
            max_response_bytes: helpers::default_max_response_bytes(),
            output_format: default_output_format(),
            models: default_models(),
        }
    }
}

/// `Debug` shows the key as `***`.
#[derive(Debug)]
pub struct StabilityProvider {
    config: StabilityConfig,
    endpoint: helpers::Endpoint,
    key: ApiKey,
}

impl StabilityProvider {
    pub fn new(config: StabilityConfig) -> Result<StabilityProvider, ProviderError> {
        let endpoint = helpers::Endpoint::open(
            &config.name,
            &config.base_url,
            config.timeout_secs,
            config.models.is_empty(),
        )?
        .with_max_body(config.max_response_bytes);
        if let Some(m) = config
            .models
            .iter()
            .find(|m| Endpoint::for_model(&m.name).is_none())
        {
            return Err(ProviderError::Config {
                provider: config.name.clone(),
                message: format!(
                    "model {:?} is not `ultra`, `core` or an `sd3*` model",
                    m.name
                ),
            });
        }
        let key = ApiKey::from_env(&config.name, &config.api_key_env)?;
        Ok(StabilityProvider {
            endpoint,
            config,
            key,
        })
    }

    fn error_from(&self, answer: &Answer) -> ProviderError {
        let (status, headers, body) = (answer.status, &answer.headers, &answer.body[..]);
        let parsed = serde_json::from_slice::<ErrorResponse>(body).ok();
        let detail = match &parsed {
            Some(e) => format!(
                "{}: {} (id {})",
                e.name.as_deref().unwrap_or("error"),
                e.errors.join("; "),
                e.id.as_deref().unwrap_or("-")
            ),
            None => String::from_utf8_lossy(body).into_owned(),
        };
        if parsed
            .as_ref()
            .is_some_and(|e| e.name.as_deref() == Some("content_moderation"))
        {
            return ProviderError::ContentRejected {
                provider: self.config.name.clone(),
                message: helpers::truncate(&detail, 300),
            };
        }
        helpers::status_error(
            &self.config.name,
            Some(&self.config.api_key_env),
            status,
            helpers::retry_after(headers),
            &detail,
        )
    }

    fn form(&self, endpoint: &Endpoint, request: &ProviderRequest) -> reqwest::multipart::Form {
        let ratio =
            helpers::closest_aspect_ratio(request.size.width, request.size.height, ASPECT_RATIOS);
        let mut form = reqwest::multipart::Form::new()
            .text("prompt", request.prompt.clone())
            .text("aspect_ratio", ratio.to_string())
            // Our seeds are u64 and may be 0; Stability's 0 means random, so shift into 1..=MAX.
            .text("seed", (1 + request.seed % MAX_SEED).to_string())
            .text("output_format", self.config.output_format.clone());
        if let Endpoint::Sd3 { model } = endpoint {
            form = form
                .text("model", model.clone())
                .text("mode", "text-to-image");
        }
        // SD 3.5 turbo models reject negative prompts.
        let takes_negative =
            !matches!(endpoint, Endpoint::Sd3 { model } if model.contains("turbo"));
        if let (Some(neg), true) = (&request.negative_prompt, takes_negative) {
            form = form.text("negative_prompt", neg.clone());
        }
        form
    }
}

#[async_trait]
impl Provider for StabilityProvider {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn kind(&self) -> &'static str {
        "stability"
    }

    fn offers(&self) -> &[ModelOffer] {
        &self.config.models
    }

    fn deadline(&self) -> Duration {
        self.endpoint.timeout
    }

    async fn generate(&self, request: &ProviderRequest) -> Result<Generation, ProviderError> {
        let name = &self.config.name;
        let endpoint =
            Endpoint::for_model(&request.model).ok_or_else(|| ProviderError::Config {
                provider: name.clone(),
                message: format!("no Stability endpoint serves model {:?}", request.model),
            })?;
        let post = self
            .endpoint
            .client
            .post(format!("{}{}", self.endpoint.base_url, endpoint.path()))
            .bearer_auth(self.key.expose())
            .header(ACCEPT, "application/json")
            .multipart(self.form(&endpoint, request));
        let answer =
            helpers::send(name, self.endpoint.timeout, post, self.endpoint.max_body).await?;
        if !answer.status.is_success() {
            return Err(self.error_from(&answer));
        }
        let Answer {
            headers, body: raw, ..
        } = answer;

        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let (bytes, finish_reason, seed) = if content_type.starts_with("image/") {
            let header = |k: &str| {
                headers
                    .get(k)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            (
                raw,
                header("finish-reason"),
                header("seed").and_then(|s| s.parse::<u64>().ok()),
            )
        } else {
            let parsed: GenerateResponse = serde_json::from_slice(&raw)
                .map_err(|e| helpers::bad_response(name, format!("unexpected body: {e}")))?;
            let bytes = helpers::decode_base64(name, &parsed.image)?;
            (bytes, parsed.finish_reason, parsed.seed)
        };
        if finish_reason.as_deref() == Some("CONTENT_FILTERED") {
            return Err(ProviderError::ContentRejected {
                provider: name.clone(),
                message: "finish_reason CONTENT_FILTERED: the output image was filtered".into(),
            });
        }
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
                raw: serde_json::json!({ "finish_reason": finish_reason, "seed": seed }),
                ..Usage::default()
            },
        })
    }
}

// ---- wire types: exactly the API's JSON, and the endpoint per model ----

/// `accept: application/json` answer.
#[derive(Debug, Deserialize)]
struct GenerateResponse {
    image: String,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    seed: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct ErrorResponse {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    errors: Vec<String>,
}

/// Which endpoint serves a model, and the `model` form field it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Ultra,
    Core,
    Sd3 { model: String },
}

impl Endpoint {
    fn for_model(model: &str) -> Option<Endpoint> {
        match model {
            "ultra" | "stable-image-ultra" => Some(Endpoint::Ultra),
            "core" | "stable-image-core" => Some(Endpoint::Core),
            m if m.starts_with("sd3") => Some(Endpoint::Sd3 {
                model: m.to_string(),
            }),
            _ => None,
        }
    }

    fn path(&self) -> &'static str {
        match self {
            Endpoint::Ultra => "/v2beta/stable-image/generate/ultra",
            Endpoint::Core => "/v2beta/stable-image/generate/core",
            Endpoint::Sd3 { .. } => "/v2beta/stable-image/generate/sd3",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_map_to_endpoints() {
        assert_eq!(Endpoint::for_model("ultra"), Some(Endpoint::Ultra));
        assert_eq!(Endpoint::for_model("core"), Some(Endpoint::Core));
        assert_eq!(
            Endpoint::for_model("sd3.5-large-turbo"),
            Some(Endpoint::Sd3 {
                model: "sd3.5-large-turbo".into()
            })
        );
        assert_eq!(Endpoint::for_model("dall-e-3"), None);
    }
}
