//! The OpenAI Images API adapter (`POST {base_url}/images/generations`): the GPT image
//! models (`gpt-image-2` and its successors; token usage in the response). `base_url`
//! is configurable, so OpenAI-compatible endpoints (LiteLLM, LocalAI, aggregators)
//! work through the same adapter.
//!
//! Wire format, from the API reference and the official SDK generated from its
//! OpenAPI spec (openai-python, `types/image_generate_params.py` and
//! `types/images_response.py`, read 2026-12-05):
//! - <https://platform.openai.com/docs/api-reference/images/create>
//! - `size`: for `gpt-image-2` any `WIDTHxHEIGHT` with both sides multiples of 16, an
//!   aspect ratio within 1:3..3:1, at most 3840x2160 (pixel and edge limits); the
//!   GPT image models before it take 1024x1024, 1536x1024 and 1024x1536 only.
//! - `quality`: `low`, `medium`, `high` or `auto` (the 2.5 models add `xhigh`, `max`).
//! - `ImagesResponse.usage` (`input_tokens`, `input_tokens_details.{text_tokens,
//!   image_tokens}`, `output_tokens`, `output_tokens_details.{image_tokens,
//!   text_tokens}`, `total_tokens`); images come back as `data[].b64_json`.
//! - Errors are `{"error": {"message", "type", "param", "code"}}`; refusals carry code
//!   `moderation_blocked` (or `content_policy_violation` on older models).
//!
//! The Images API has no seed and no negative prompt, so those request fields are not
//! sent (the content key still includes them; the output is simply not reproducible).
//! DALL·E 2/3 and gpt-image-1, 1-mini and 1.5 are retired (see config/pricing.toml);
//! the router never sends them here.

pub mod batch;

use crate::helpers::{self, Answer, ApiKey};
use crate::{BatchApi, Generation, ModelOffer, Provider, ProviderError, ProviderRequest, Usage};
use async_trait::async_trait;
use bytes::Bytes;
use imagegate_core::{ModelClass, Size};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// gpt-image-2's size limits (openai-python `image_generate_params.py`).
const FREE_SIZE_STEP: u32 = 16;
const FREE_SIZE_MAX_EDGE: u32 = 3840;
const FREE_SIZE_MAX_PIXELS: u64 = 3840 * 2160;
/// Below roughly this many pixels gpt-image-2 refuses a size; small requests are asked
/// for at this area and resized down by the imaging stage.
const FREE_SIZE_MIN_PIXELS: u64 = 1024 * 640;
const FREE_SIZE_MAX_RATIO: f64 = 3.0;
/// The only sizes of the GPT image models before gpt-image-2.
const FIXED_SIZES: &[(u32, u32)] = &[(1024, 1024), (1536, 1024), (1024, 1536)];
/// Asked for when a GPT image model has no `quality` configured: the price book's
/// `default_quality` for these models, so a quote and the call agree (the API's own
/// default, `auto`, may pick any tier).
const DEFAULT_QUALITY: &str = "medium";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    #[serde(default = "default_name")]
    pub name: String,
    /// Up to and including the version segment, e.g. `https://api.openai.com/v1`.
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
    /// Quality tier to ask for, per model (`low`/`medium`/`high`/`auto`); unset GPT
    /// image models ask for `medium`.
    #[serde(default)]
    pub quality: BTreeMap<String, String>,
    #[serde(default = "default_models")]
    pub models: Vec<ModelOffer>,
    /// Send deferred jobs with a day to spare through the Batch API (`openai::batch`)
    /// at its discount; off for OpenAI-compatible endpoints that lack one.
    #[serde(default = "default_batch")]
    pub batch: bool,
}

fn default_batch() -> bool {
    true
}

fn default_name() -> String {
    "openai".into()
}
fn default_base_url() -> String {
    "https://api.openai.com/v1".into()
}
fn default_api_key_env() -> String {
    "OPENAI_API_KEY".into()
}
fn default_timeout_secs() -> u64 {
    // GPT image models at high quality and large sizes regularly take over a minute.
    180
}
fn default_models() -> Vec<ModelOffer> {
    vec![ModelOffer::new(
        "gpt-image-2",
        &[ModelClass::Standard, ModelClass::Premium],
    )]
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        OpenAiConfig {
            name: default_name(),
            base_url: default_base_url(),
            api_key_env: default_api_key_env(),
            timeout_secs: default_timeout_secs(),
            max_response_bytes: helpers::default_max_response_bytes(),
            quality: BTreeMap::new(),
            models: default_models(),
            batch: default_batch(),
        }
    }
}

/// `Debug` shows the key as `***`.
#[derive(Debug)]
pub struct OpenAiProvider {
    config: OpenAiConfig,
    endpoint: helpers::Endpoint,
    key: ApiKey,
}

impl OpenAiProvider {
    pub fn new(config: OpenAiConfig) -> Result<OpenAiProvider, ProviderError> {
        let endpoint = helpers::Endpoint::open(
            &config.name,
            &config.base_url,
            config.timeout_secs,
            config.models.is_empty(),
        )?
        .with_max_body(config.max_response_bytes);
        let key = ApiKey::from_env(&config.name, &config.api_key_env)?;
        Ok(OpenAiProvider {
            endpoint,
            config,
            key,
        })
    }

    fn quality_for(&self, model: &str) -> Option<&str> {
        self.config
            .quality
            .get(model)
            .map(String::as_str)
            .or(model.starts_with("gpt-image-").then_some(DEFAULT_QUALITY))
    }
}

#[async_trait]
impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn kind(&self) -> &'static str {
        "openai"
    }

    fn offers(&self) -> &[ModelOffer] {
        &self.config.models
    }

    fn deadline(&self) -> Duration {
        self.endpoint.timeout
    }

    fn batch(&self) -> Option<&dyn BatchApi> {
        self.config.batch.then_some(self as &dyn BatchApi)
    }

    async fn generate(&self, request: &ProviderRequest) -> Result<Generation, ProviderError> {
        let name = &self.config.name;
        let body = self.image_request(request);
        let quality = body.quality;
        tracing::debug!(provider = %name, model = %request.model, size = %body.size, "openai images/generations");
        let post = self
            .endpoint
            .client
            .post(format!("{}/images/generations", self.endpoint.base_url))
            .bearer_auth(self.key.expose())
            .json(&body);
        let (parsed, value): (ImagesResponse, _) =
            helpers::send_json(name, &self.endpoint, post, |a| self.error_from(a)).await?;
        self.read_images(&request.model, quality, &parsed, &value)
    }
}

impl OpenAiProvider {
    /// The Images API request for `request` (live, or one line of a batch).
    fn image_request<'a>(&'a self, request: &'a ProviderRequest) -> CreateImageRequest<'a> {
        let model = request.model.as_str();
        let (w, h) = wire_size(model, request.size);
        CreateImageRequest {
            model,
            prompt: &request.prompt,
            n: 1,
            size: format!("{w}x{h}"),
            quality: self.quality_for(model),
        }
    }

    /// A generation from an Images API answer (the live response, or one line of a
    /// batch's output file).
    fn read_images(
        &self,
        model: &str,
        quality: Option<&str>,
        parsed: &ImagesResponse,
        value: &serde_json::Value,
    ) -> Result<Generation, ProviderError> {
        let name = &self.config.name;
        let first = parsed
            .data
            .first()
            .ok_or_else(|| helpers::bad_response(name, "response has no images in `data`"))?;
        let b64 = match (&first.b64_json, &first.url) {
            (Some(b), _) => b,
            (None, Some(_)) => {
                return Err(helpers::bad_response(
                    name,
                    "response carries a URL instead of b64_json",
                ))
            }
            (None, None) => {
                return Err(helpers::bad_response(
                    name,
                    "image has neither b64_json nor url",
                ))
            }
        };
        let bytes = helpers::decode_base64(name, b64)?;
        let sniffed = helpers::sniff_image(name, &bytes)?;

        let mut usage = Usage {
            images: 1,
            width: sniffed.width,
            height: sniffed.height,
            quality: parsed
                .quality
                .clone()
                .or_else(|| quality.map(str::to_string)),
            raw: value
                .get("usage")
                .cloned()
                .unwrap_or(serde_json::Value::Null),
            ..Usage::default()
        };
        if let Some(u) = &parsed.usage {
            match &u.input_tokens_details {
                Some(d) => {
                    usage.input_text_tokens = Some(d.text_tokens);
                    usage.input_image_tokens = Some(d.image_tokens);
                }
                None => usage.input_text_tokens = Some(u.input_tokens),
            }
            usage.output_image_tokens = Some(
                u.output_tokens_details
                    .as_ref()
                    .map_or(u.output_tokens, |d| d.image_tokens),
            );
        }
        Ok(Generation {
            bytes: Bytes::from(bytes),
            media_type: sniffed.media_type.to_string(),
            provider: name.clone(),
            model: model.to_string(),
            usage,
        })
    }

    fn error_from(&self, answer: &Answer) -> ProviderError {
        let parsed = serde_json::from_slice::<ErrorResponse>(&answer.body).ok();
        if let Some(e) = &parsed {
            let refused = matches!(
                e.error.code.as_deref(),
                Some("content_policy_violation" | "moderation_blocked")
            ) || e.error.kind.as_deref() == Some("image_generation_user_error");
            if refused {
                return ProviderError::ContentRejected {
                    provider: self.config.name.clone(),
                    message: helpers::truncate(&e.error.message, 300),
                };
            }
        }
        let detail = match &parsed {
            Some(e) => e.error.message.clone(),
            None => String::from_utf8_lossy(&answer.body).into_owned(),
        };
        helpers::status_error(
            &self.config.name,
            Some(&self.config.api_key_env),
            answer.status,
            helpers::retry_after(&answer.headers),
            &detail,
        )
    }
}

/// Whether the model takes any size within limits (gpt-image-2 and later) rather than
/// the three fixed sizes.
fn takes_free_sizes(model: &str) -> bool {
    model.starts_with("gpt-image-") && !model.starts_with("gpt-image-1")
}

/// The size to ask for: for free-size models the request itself, kept within the
/// documented limits (multiples of 16, ratio within 3:1, pixel and edge limits);
/// otherwise the fixed size nearest in aspect ratio, then in area.
fn wire_size(model: &str, size: Size) -> (u32, u32) {
    if takes_free_sizes(model) {
        return free_size(size);
    }
    if !model.starts_with("gpt-image-") {
        // An OpenAI-compatible model we know nothing about: ask for what was asked.
        return (size.width, size.height);
    }
    let want_ratio = (f64::from(size.width) / f64::from(size.height.max(1))).ln();
    let want_area = size.pixels() as f64;
    let score = |&(w, h): &(u32, u32)| {
        let ratio = ((f64::from(w) / f64::from(h)).ln() - want_ratio).abs();
        let area = (f64::from(w) * f64::from(h) - want_area).abs();
        (ratio, area)
    };
    FIXED_SIZES
        .iter()
        .copied()
        .min_by(|a, b| {
            score(a)
                .partial_cmp(&score(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .unwrap_or((1024, 1024))
}

fn free_size(size: Size) -> (u32, u32) {
    let (mut w, mut h) = (f64::from(size.width.max(1)), f64::from(size.height.max(1)));
    // Clamp the aspect ratio, keeping the longer side.
    if w / h > FREE_SIZE_MAX_RATIO {
        h = w / FREE_SIZE_MAX_RATIO;
    } else if h / w > FREE_SIZE_MAX_RATIO {
        w = h / FREE_SIZE_MAX_RATIO;
    }
    // Scale into the pixel and edge limits, keeping the ratio.
    let mut scale = 1.0f64;
    let pixels = w * h;
    if pixels > FREE_SIZE_MAX_PIXELS as f64 {
        scale = (FREE_SIZE_MAX_PIXELS as f64 / pixels).sqrt();
    } else if pixels < FREE_SIZE_MIN_PIXELS as f64 {
        scale = (FREE_SIZE_MIN_PIXELS as f64 / pixels).sqrt();
    }
    let edge = w.max(h) * scale;
    if edge > f64::from(FREE_SIZE_MAX_EDGE) {
        scale *= f64::from(FREE_SIZE_MAX_EDGE) / edge;
    }
    let step = f64::from(FREE_SIZE_STEP);
    let snap = |v: f64, round: fn(f64) -> f64| (round(v / step).max(1.0) * step) as u32;
    let fits = |(a, b): (u32, u32)| {
        a.max(b) <= FREE_SIZE_MAX_EDGE && u64::from(a) * u64::from(b) <= FREE_SIZE_MAX_PIXELS
    };
    // Grown to the minimum: round up; otherwise the nearest multiple, or down when
    // that would break a limit.
    let round = if scale > 1.0 { f64::ceil } else { f64::round };
    let nearest = (snap(w * scale, round), snap(h * scale, round));
    if fits(nearest) {
        nearest
    } else {
        (snap(w * scale, f64::floor), snap(h * scale, f64::floor))
    }
}

// ---- wire types: exactly the API's JSON ----

#[derive(Debug, Serialize)]
struct CreateImageRequest<'a> {
    model: &'a str,
    prompt: &'a str,
    n: u32,
    size: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    quality: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
struct ImagesResponse {
    #[serde(default)]
    data: Vec<Image>,
    #[serde(default)]
    usage: Option<ImagesUsage>,
    #[serde(default)]
    quality: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Image {
    #[serde(default)]
    b64_json: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ImagesUsage {
    input_tokens: u64,
    output_tokens: u64,
    #[serde(default)]
    input_tokens_details: Option<InputTokensDetails>,
    #[serde(default)]
    output_tokens_details: Option<OutputTokensDetails>,
}

#[derive(Debug, Deserialize)]
struct InputTokensDetails {
    #[serde(default)]
    text_tokens: u64,
    #[serde(default)]
    image_tokens: u64,
}

#[derive(Debug, Deserialize)]
struct OutputTokensDetails {
    #[serde(default)]
    image_tokens: u64,
}

#[derive(Debug, Deserialize)]
struct ErrorResponse {
    error: ApiError,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default)]
    message: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    code: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(w: u32, h: u32) -> Size {
        Size {
            width: w,
            height: h,
        }
    }

    #[test]
    fn older_gpt_image_models_snap_to_their_three_sizes() {
        assert_eq!(wire_size("gpt-image-1.5", size(1024, 1024)), (1024, 1024));
        assert_eq!(wire_size("gpt-image-1", size(1200, 800)), (1536, 1024));
        assert_eq!(wire_size("gpt-image-1-mini", size(512, 900)), (1024, 1536));
        assert_eq!(
            wire_size("some-compatible-model", size(640, 480)),
            (640, 480)
        );
    }

    #[test]
    fn gpt_image_2_takes_any_size_within_its_limits() {
        assert_eq!(wire_size("gpt-image-2", size(2048, 2048)), (2048, 2048));
        assert_eq!(wire_size("gpt-image-2", size(3840, 2160)), (3840, 2160));
        assert_eq!(wire_size("gpt-image-2", size(1536, 864)), (1536, 864));
        // Not a multiple of 16: rounded.
        assert_eq!(wire_size("gpt-image-2", size(1000, 1000)), (1008, 1008));
        // Over the pixel limit: scaled down to it, ratio kept.
        let (w, h) = wire_size("gpt-image-2", size(4096, 4096));
        assert!(
            u64::from(w) * u64::from(h) <= FREE_SIZE_MAX_PIXELS && w == h,
            "{w}x{h}"
        );
        // Wider than 3:1: clamped.
        let (w, h) = wire_size("gpt-image-2.5-flare", size(3000, 500));
        assert!(f64::from(w) / f64::from(h) <= 3.0 + 1e-9, "{w}x{h}");
        // Tiny: grown to the minimum area.
        let (w, h) = wire_size("gpt-image-2", size(256, 256));
        assert!(
            u64::from(w) * u64::from(h) >= FREE_SIZE_MIN_PIXELS,
            "{w}x{h}"
        );
        for (w, h) in [(1000, 1000), (3000, 500), (256, 256), (5000, 100)] {
            let (a, b) = wire_size("gpt-image-2", size(w, h));
            assert!(
                a % 16 == 0 && b % 16 == 0 && a <= 3840 && b <= 3840,
                "{a}x{b}"
            );
        }
    }

    #[test]
    fn config_rejects_unknown_fields() {
        let err = serde_json::from_str::<OpenAiConfig>(r#"{"expected_usd_per_image": 0.04}"#);
        assert!(err.is_err());
    }
}
