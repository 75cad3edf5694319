//! The OpenAI Images API adapter (`POST {base_url}/images/generations`): `gpt-image-1`
//! family (token usage in the response) and `dall-e-3`/`dall-e-2` (billed per image by
//! size and quality). `base_url` is configurable, so OpenAI-compatible endpoints
//! (LiteLLM, LocalAI, aggregators) work through the same adapter.
//!
//! Wire format, from the API reference and the OpenAPI spec it is generated from:
//! - <https://platform.openai.com/docs/api-reference/images/create>
//! - <https://developers.openai.com/api/docs/guides/image-generation>
//! - `ImagesResponse.usage` (`input_tokens`, `input_tokens_details.{text_tokens,image_tokens}`,
//!   `output_tokens`, `total_tokens`; "for gpt-image-1 only"):
//!   <https://docs.rs/openai-struct/latest/src/openai_struct/models/images_response_usage.rs.html>
//! - `Image` (`b64_json` default for GPT image models, `url` default for DALL·E unless
//!   `response_format` is `b64_json`):
//!   <https://docs.rs/crate/openai-client-base/0.12.0/source/docs/Image.md>
//! - Errors are `{"error": {"message", "type", "param", "code"}}`; refusals carry code
//!   `content_policy_violation` (DALL·E) or `moderation_blocked` (GPT image models).
//!
//! The Images API has no seed and no negative prompt, so those request fields are not
//! sent (the content key still includes them; the output is simply not reproducible).
//! Sizes are fixed per model: we ask for the supported size closest to the request's
//! aspect ratio and report the size actually returned.

use crate::http::{self, ApiKey};
use crate::{Generation, ModelOffer, Provider, ProviderError, ProviderRequest, Usage};
use async_trait::async_trait;
use bytes::Bytes;
use imagegate_core::{Micros, ModelClass, Size};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    /// Used by `quote` only until the router prices through the price book.
    #[serde(default)]
    pub expected_usd_per_image: f64,
    /// Quality tier to ask for, per model: `low`/`medium`/`high`/`auto` for GPT image
    /// models, `standard`/`hd` for dall-e-3. Unset models use the API default.
    #[serde(default)]
    pub quality: BTreeMap<String, String>,
    #[serde(default = "default_models")]
    pub models: Vec<ModelOffer>,
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
    // gpt-image-1 at high quality regularly takes over a minute.
    180
}
fn default_models() -> Vec<ModelOffer> {
    vec![
        ModelOffer {
            name: "gpt-image-1".into(),
            classes: vec![ModelClass::Standard, ModelClass::Premium],
        },
        ModelOffer {
            name: "dall-e-3".into(),
            classes: vec![ModelClass::Standard],
        },
    ]
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        OpenAiConfig {
            name: default_name(),
            base_url: default_base_url(),
            api_key_env: default_api_key_env(),
            timeout_secs: default_timeout_secs(),
            expected_usd_per_image: 0.0,
            quality: BTreeMap::new(),
            models: default_models(),
        }
    }
}

// ---- wire types: exactly the API's JSON ----

#[derive(Debug, Serialize)]
struct CreateImageRequest<'a> {
    model: &'a str,
    prompt: &'a str,
    n: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quality: Option<&'a str>,
    /// DALL·E only; GPT image models always answer `b64_json` and reject this field.
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
struct ImagesResponse {
    #[serde(default)]
    data: Vec<Image>,
    #[serde(default)]
    usage: Option<ImagesUsage>,
    #[serde(default)]
    quality: Option<String>,
    #[serde(default)]
    size: Option<String>,
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
}

#[derive(Debug, Deserialize)]
struct InputTokensDetails {
    #[serde(default)]
    text_tokens: u64,
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

// ---- the adapter ----

pub struct OpenAiProvider {
    config: OpenAiConfig,
    endpoint: http::Endpoint,
    key: ApiKey,
}

impl std::fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("config", &self.config)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl OpenAiProvider {
    pub fn new(config: OpenAiConfig) -> Result<OpenAiProvider, ProviderError> {
        let endpoint = http::Endpoint::open(
            &config.name,
            &config.base_url,
            config.timeout_secs,
            config.expected_usd_per_image,
            config.models.is_empty(),
        )?;
        let key = ApiKey::from_env(&config.name, &config.api_key_env)?;
        Ok(OpenAiProvider {
            endpoint,
            config,
            key,
        })
    }

    fn error_from(
        &self,
        status: reqwest::StatusCode,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
    ) -> ProviderError {
        let parsed = serde_json::from_slice::<ErrorResponse>(body).ok();
        if let Some(e) = &parsed {
            let refused = matches!(
                e.error.code.as_deref(),
                Some("content_policy_violation" | "moderation_blocked")
            ) || e.error.kind.as_deref() == Some("image_generation_user_error");
            if refused {
                return ProviderError::ContentRejected {
                    provider: self.config.name.clone(),
                    message: http::truncate(&e.error.message, 300),
                };
            }
        }
        let detail = match &parsed {
            Some(e) => e.error.message.clone(),
            None => String::from_utf8_lossy(body).into_owned(),
        };
        http::status_error(
            &self.config.name,
            Some(&self.config.api_key_env),
            status,
            http::retry_after(headers),
            &detail,
        )
    }
}

/// Sizes each known model accepts; unknown (compatible) models get the exact size.
fn supported_sizes(model: &str) -> Option<&'static [(u32, u32)]> {
    if model.starts_with("gpt-image-") {
        Some(&[(1024, 1024), (1536, 1024), (1024, 1536)])
    } else if model == "dall-e-3" {
        Some(&[(1024, 1024), (1792, 1024), (1024, 1792)])
    } else if model == "dall-e-2" {
        Some(&[(256, 256), (512, 512), (1024, 1024)])
    } else {
        None
    }
}

/// The supported size nearest in aspect ratio, then in area, to what was asked.
fn wire_size(model: &str, size: Size) -> (u32, u32) {
    let Some(sizes) = supported_sizes(model) else {
        return (size.width, size.height);
    };
    let want_ratio = (f64::from(size.width) / f64::from(size.height)).ln();
    let want_area = size.pixels() as f64;
    let score = |&(w, h): &(u32, u32)| {
        let ratio = ((f64::from(w) / f64::from(h)).ln() - want_ratio).abs();
        let area = (f64::from(w) * f64::from(h) - want_area).abs();
        (ratio, area)
    };
    sizes
        .iter()
        .copied()
        .min_by(|a, b| {
            score(a)
                .partial_cmp(&score(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .unwrap_or((size.width, size.height))
}

#[async_trait]
impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn offers(&self) -> &[ModelOffer] {
        &self.config.models
    }

    /// A flat configured figure: real prices (per token for GPT image models, per
    /// size and quality for DALL·E) are the price book's job, which the router uses.
    fn quote(&self, _model: &str, _size: Size) -> Micros {
        Micros::from_usd(self.config.expected_usd_per_image)
    }

    async fn generate(&self, request: &ProviderRequest) -> Result<Generation, ProviderError> {
        let name = &self.config.name;
        let model = request.model.as_str();
        let (w, h) = wire_size(model, request.size);
        let quality = self.config.quality.get(model).map(String::as_str);
        let body = CreateImageRequest {
            model,
            prompt: &request.prompt,
            n: 1,
            size: Some(format!("{w}x{h}")),
            quality,
            response_format: (!model.starts_with("gpt-image-")).then_some("b64_json"),
        };
        tracing::debug!(provider = %name, model, size = %format!("{w}x{h}"), "openai images/generations");
        let resp = self
            .endpoint
            .client
            .post(format!("{}/images/generations", self.endpoint.base_url))
            .bearer_auth(self.key.expose())
            .json(&body)
            .send()
            .await
            .map_err(|e| http::transport_error(name, self.endpoint.timeout, e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let raw =
            http::read_limited(name, self.endpoint.timeout, resp, http::MAX_RESPONSE_BYTES).await?;
        if !status.is_success() {
            return Err(self.error_from(status, &headers, &raw));
        }

        let value: serde_json::Value = serde_json::from_slice(&raw)
            .map_err(|e| http::bad_response(name, format!("body is not JSON: {e}")))?;
        let parsed: ImagesResponse = serde_json::from_value(value.clone())
            .map_err(|e| http::bad_response(name, format!("unexpected JSON shape: {e}")))?;
        let first = parsed
            .data
            .first()
            .ok_or_else(|| http::bad_response(name, "response has no images in `data`"))?;
        let b64 =
            match (&first.b64_json, &first.url) {
                (Some(b), _) => b,
                (None, Some(_)) => return Err(http::bad_response(
                    name,
                    "response carries a URL instead of b64_json (server ignored response_format)",
                )),
                (None, None) => {
                    return Err(http::bad_response(
                        name,
                        "image has neither b64_json nor url",
                    ))
                }
            };
        let bytes = http::decode_base64(name, b64)?;
        let sniffed = http::sniff_image(name, &bytes)?;

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
            usage.output_image_tokens = Some(u.output_tokens);
        }
        if let Some(s) = &parsed.size {
            tracing::debug!(provider = %name, reported_size = %s, "openai reported size");
        }
        Ok(Generation {
            bytes: Bytes::from(bytes),
            media_type: sniffed.media_type.to_string(),
            provider: name.clone(),
            model: request.model.clone(),
            // The price book turns `usage` into money.
            cost: Micros::ZERO,
            usage,
        })
    }
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
    fn sizes_snap_to_what_each_model_supports() {
        assert_eq!(wire_size("gpt-image-1", size(1024, 1024)), (1024, 1024));
        assert_eq!(wire_size("gpt-image-1", size(1200, 800)), (1536, 1024));
        assert_eq!(wire_size("gpt-image-1", size(512, 900)), (1024, 1536));
        assert_eq!(wire_size("dall-e-3", size(1920, 1080)), (1792, 1024));
        assert_eq!(wire_size("dall-e-2", size(500, 500)), (512, 512));
        assert_eq!(
            wire_size("some-compatible-model", size(640, 480)),
            (640, 480)
        );
    }

    #[test]
    fn config_rejects_unknown_fields() {
        let err = serde_json::from_str::<OpenAiConfig>(r#"{"api_key": "sk-x"}"#);
        assert!(err.is_err());
    }
}
