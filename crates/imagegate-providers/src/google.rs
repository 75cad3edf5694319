//! The Google Gemini API adapter: the Gemini image models ("Nano Banana":
//! `gemini-3.1-flash-image`, `gemini-3-pro-image` and their `-preview` ids) through
//! `POST {base_url}/models/{model}:generateContent`, the image returned as an
//! `inlineData` part, billed by tokens from `usageMetadata`.
//!
//! Imagen (`:predict`) is not served any more: Google shut every Imagen model down on
//! 2026-08-17 (<https://ai.google.dev/gemini-api/docs/deprecations>), and
//! gemini-2.5-flash-image on 2026-10-02; config/pricing.toml keeps them as retired
//! entries naming their replacements.
//!
//! Authentication is the `x-goog-api-key` header (never the `?key=` query parameter,
//! so the key cannot end up in a logged URL).
//!
//! Wire format:
//! - generateContent request/response, `GenerationConfig` (`responseModalities`,
//!   `seed`, `imageConfig.aspectRatio`, `imageConfig.imageSize` = `1K` | `2K` | `4K`
//!   on the Gemini 3 image models), `Candidate.finishReason`,
//!   `promptFeedback.blockReason`, `UsageMetadata` (`promptTokenCount`,
//!   `candidatesTokenCount`, `promptTokensDetails[]`, `candidatesTokensDetails[]` of
//!   `{modality, tokenCount}`): <https://ai.google.dev/api/generate-content>,
//!   <https://ai.google.dev/gemini-api/docs/image-generation>
//! - Errors are `{"error": {"code", "message", "status", "details": [..]}}`
//!   (<https://ai.google.dev/gemini-api/docs/troubleshooting>); an invalid key is a
//!   `400 INVALID_ARGUMENT` with `ErrorInfo.reason = "API_KEY_INVALID"`, and 429
//!   `RESOURCE_EXHAUSTED` carries a `RetryInfo.retryDelay` such as `"23s"`.
//!
//! The API takes no negative prompt; that request field is not sent.

pub mod batch;

use crate::helpers::{self, Answer, ApiKey};
use crate::{BatchApi, Generation, ModelOffer, Provider, ProviderError, ProviderRequest, Usage};
use async_trait::async_trait;
use bytes::Bytes;
use imagegate_core::{ModelClass, Size};
use serde::{Deserialize, Serialize};
use std::time::Duration;

const GEMINI_ASPECT_RATIOS: &[&str] = &[
    "21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16",
];
/// `imageConfig.imageSize` tiers of the Gemini 3 image models, by the square box each
/// fills: the price book prices a request by the same boxes (1024, 2048, 4096), so
/// the tier asked for is the tier quoted.
const IMAGE_SIZE_TIERS: &[(u32, &str)] = &[(1024, "1K"), (2048, "2K"), (4096, "4K")];

/// Finish or block reasons that mean "refused on policy grounds".
const POLICY_REASONS: &[&str] = &[
    "SAFETY",
    "IMAGE_SAFETY",
    "PROHIBITED_CONTENT",
    "IMAGE_PROHIBITED_CONTENT",
    "BLOCKLIST",
    "SPII",
    "RECITATION",
    "IMAGE_RECITATION",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoogleConfig {
    #[serde(default = "default_name")]
    pub name: String,
    /// Up to and including the API version, e.g. `.../v1beta`.
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
    #[serde(default = "default_models")]
    pub models: Vec<ModelOffer>,
    /// Send deferred jobs with a day to spare through Gemini's batch mode
    /// (`google::batch`) at its discount.
    #[serde(default = "default_batch")]
    pub batch: bool,
}

fn default_batch() -> bool {
    true
}

fn default_name() -> String {
    "google".into()
}
fn default_base_url() -> String {
    "https://generativelanguage.googleapis.com/v1beta".into()
}
fn default_api_key_env() -> String {
    "GEMINI_API_KEY".into()
}
fn default_timeout_secs() -> u64 {
    120
}
fn default_models() -> Vec<ModelOffer> {
    vec![
        ModelOffer::new(
            "gemini-3.1-flash-image",
            &[ModelClass::Draft, ModelClass::Standard],
        ),
        ModelOffer::new("gemini-3-pro-image", &[ModelClass::Premium]),
    ]
}

impl Default for GoogleConfig {
    fn default() -> Self {
        GoogleConfig {
            name: default_name(),
            base_url: default_base_url(),
            api_key_env: default_api_key_env(),
            timeout_secs: default_timeout_secs(),
            max_response_bytes: helpers::default_max_response_bytes(),
            models: default_models(),
            batch: default_batch(),
        }
    }
}

/// `Debug` shows the key as `***`.
#[derive(Debug)]
pub struct GoogleProvider {
    config: GoogleConfig,
    endpoint: helpers::Endpoint,
    key: ApiKey,
}

/// The Gemini 3 image models take an output size tier; gemini-2.5-flash-image did not.
fn takes_image_size(model: &str) -> bool {
    model.starts_with("gemini-") && !model.starts_with("gemini-2")
}

/// The smallest tier whose square box covers the request.
fn image_size_tier(size: Size) -> &'static str {
    let edge = size.width.max(size.height);
    IMAGE_SIZE_TIERS
        .iter()
        .find(|(box_edge, _)| edge <= *box_edge)
        .map_or("4K", |(_, tier)| tier)
}

impl GoogleProvider {
    pub fn new(config: GoogleConfig) -> Result<GoogleProvider, ProviderError> {
        let endpoint = helpers::Endpoint::open(
            &config.name,
            &config.base_url,
            config.timeout_secs,
            config.models.is_empty(),
        )?
        .with_max_body(config.max_response_bytes);
        let key = ApiKey::from_env(&config.name, &config.api_key_env)?;
        Ok(GoogleProvider {
            endpoint,
            config,
            key,
        })
    }

    fn rejected(&self, message: String) -> ProviderError {
        ProviderError::ContentRejected {
            provider: self.config.name.clone(),
            message,
        }
    }

    fn error_from(&self, answer: &Answer) -> ProviderError {
        let (status, headers) = (answer.status, &answer.headers);
        let parsed = serde_json::from_slice::<ErrorResponse>(&answer.body).ok();
        let Some(ErrorResponse { error: e }) = parsed else {
            return helpers::status_error(
                &self.config.name,
                Some(&self.config.api_key_env),
                status,
                helpers::retry_after(headers),
                &String::from_utf8_lossy(&answer.body),
            );
        };
        if e.reason() == Some("API_KEY_INVALID") {
            // Google answers 400, not 401, for a bad key.
            return helpers::status_error(
                &self.config.name,
                Some(&self.config.api_key_env),
                reqwest::StatusCode::UNAUTHORIZED,
                None,
                "",
            );
        }
        let retry_after = helpers::retry_after(headers).or_else(|| e.retry_delay());
        let detail = format!("{}: {}", e.status.as_deref().unwrap_or("error"), e.message);
        helpers::status_error(
            &self.config.name,
            Some(&self.config.api_key_env),
            status,
            retry_after,
            &detail,
        )
    }

    /// The generateContent body for `request` (live, or one inlined batch request).
    fn content_request<'a>(&self, request: &'a ProviderRequest) -> GenerateContentRequest<'a> {
        let ratio = helpers::closest_aspect_ratio(
            request.size.width,
            request.size.height,
            GEMINI_ASPECT_RATIOS,
        );
        GenerateContentRequest {
            contents: vec![Content {
                role: "user",
                parts: vec![TextPart {
                    text: &request.prompt,
                }],
            }],
            generation_config: GenerationConfig {
                response_modalities: ["TEXT", "IMAGE"],
                candidate_count: 1,
                // The API's seed is an int32.
                seed: (request.seed % (i32::MAX as u64 + 1)) as i32,
                image_config: ImageConfig {
                    aspect_ratio: ratio,
                    image_size: takes_image_size(&request.model)
                        .then(|| image_size_tier(request.size)),
                },
            },
        }
    }

    async fn generate_content(
        &self,
        request: &ProviderRequest,
    ) -> Result<(Vec<u8>, Usage), ProviderError> {
        let body = self.content_request(request);
        let post = self
            .endpoint
            .client
            .post(format!(
                "{}/models/{}:generateContent",
                self.endpoint.base_url, request.model
            ))
            .header("x-goog-api-key", self.key.expose())
            .json(&body);
        let (parsed, value): (GenerateContentResponse, _) =
            helpers::send_json(&self.config.name, &self.endpoint, post, |a| {
                self.error_from(a)
            })
            .await?;
        self.read_content(&parsed, &value)
    }

    /// The image and usage of a generateContent answer (live, or one inlined batch
    /// response).
    fn read_content(
        &self,
        parsed: &GenerateContentResponse,
        value: &serde_json::Value,
    ) -> Result<(Vec<u8>, Usage), ProviderError> {
        let name = &self.config.name;
        if let Some(reason) = parsed
            .prompt_feedback
            .as_ref()
            .and_then(|f| f.block_reason.as_deref())
        {
            return Err(self.rejected(format!("prompt blocked: {reason}")));
        }
        let candidate = parsed.candidates.first();
        let image = candidate
            .and_then(|c| c.content.as_ref())
            .and_then(|c| c.parts.iter().find_map(|p| p.inline_data.as_ref()));
        let Some(blob) = image else {
            let reason = candidate.and_then(|c| c.finish_reason.clone());
            if reason
                .as_deref()
                .is_some_and(|r| POLICY_REASONS.contains(&r))
            {
                return Err(self.rejected(format!(
                    "no image: finishReason {}",
                    reason.unwrap_or_default()
                )));
            }
            let text: String = candidate
                .and_then(|c| c.content.as_ref())
                .map(|c| c.parts.iter().filter_map(|p| p.text.as_deref()).collect())
                .unwrap_or_default();
            return Err(helpers::bad_response(
                name,
                format!(
                    "no image part (finishReason {:?}, text {:?})",
                    reason,
                    helpers::truncate(&text, 120)
                ),
            ));
        };
        if let Some(mt) = &blob.mime_type {
            if !mt.starts_with("image/") {
                return Err(helpers::bad_response(
                    name,
                    format!("inlineData has mimeType {mt}"),
                ));
            }
        }
        let bytes = helpers::decode_base64(name, &blob.data)?;

        let mut usage = Usage {
            images: 1,
            raw: value
                .get("usageMetadata")
                .cloned()
                .unwrap_or(serde_json::Value::Null),
            ..Usage::default()
        };
        if let Some(u) = &parsed.usage_metadata {
            let by_modality = |details: &[ModalityTokenCount], modality: &str| {
                details
                    .iter()
                    .filter(|d| d.modality.as_deref() == Some(modality))
                    .map(|d| d.token_count)
                    .reduce(|a, b| a + b)
            };
            usage.input_text_tokens =
                by_modality(&u.prompt_tokens_details, "TEXT").or(u.prompt_token_count);
            usage.input_image_tokens = by_modality(&u.prompt_tokens_details, "IMAGE");
            // Without a per-modality split, all candidate tokens are counted as image output.
            usage.output_image_tokens =
                by_modality(&u.candidates_tokens_details, "IMAGE").or(u.candidates_token_count);
        }
        Ok((bytes, usage))
    }
}

impl GoogleProvider {
    fn generation(
        &self,
        model: &str,
        bytes: Vec<u8>,
        mut usage: Usage,
    ) -> Result<Generation, ProviderError> {
        let name = &self.config.name;
        let sniffed = helpers::sniff_image(name, &bytes)?;
        usage.width = sniffed.width;
        usage.height = sniffed.height;
        Ok(Generation {
            bytes: Bytes::from(bytes),
            media_type: sniffed.media_type.to_string(),
            provider: name.clone(),
            model: model.to_string(),
            usage,
        })
    }
}

#[async_trait]
impl Provider for GoogleProvider {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn kind(&self) -> &'static str {
        "google"
    }

    fn offers(&self) -> &[ModelOffer] {
        &self.config.models
    }

    fn deadline(&self) -> Duration {
        self.endpoint.timeout
    }

    async fn generate(&self, request: &ProviderRequest) -> Result<Generation, ProviderError> {
        let (bytes, usage) = self.generate_content(request).await?;
        self.generation(&request.model, bytes, usage)
    }

    fn batch(&self) -> Option<&dyn BatchApi> {
        self.config.batch.then_some(self as &dyn BatchApi)
    }
}

// ---- wire types: exactly the API's JSON ----

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentRequest<'a> {
    contents: Vec<Content<'a>>,
    generation_config: GenerationConfig<'a>,
}

#[derive(Debug, Serialize)]
struct Content<'a> {
    role: &'a str,
    parts: Vec<TextPart<'a>>,
}

#[derive(Debug, Serialize)]
struct TextPart<'a> {
    text: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig<'a> {
    response_modalities: [&'a str; 2],
    candidate_count: u32,
    seed: i32,
    image_config: ImageConfig<'a>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageConfig<'a> {
    aspect_ratio: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_size: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentResponse {
    #[serde(default)]
    candidates: Vec<Candidate>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    content: Option<CandidateContent>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CandidateContent {
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part {
    #[serde(default)]
    text: Option<String>,
    #[serde(default, alias = "inline_data")]
    inline_data: Option<Blob>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Blob {
    #[serde(default, alias = "mime_type")]
    mime_type: Option<String>,
    data: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: Option<u64>,
    #[serde(default)]
    candidates_token_count: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Vec<ModalityTokenCount>,
    #[serde(default)]
    candidates_tokens_details: Vec<ModalityTokenCount>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModalityTokenCount {
    #[serde(default)]
    modality: Option<String>,
    #[serde(default)]
    token_count: u64,
}

// ---- wire types: errors ----

#[derive(Debug, Deserialize)]
struct ErrorResponse {
    error: ApiError,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    details: Vec<serde_json::Value>,
}

impl ApiError {
    fn reason(&self) -> Option<&str> {
        self.details
            .iter()
            .find_map(|d| d.get("reason").and_then(|r| r.as_str()))
    }

    /// `RetryInfo.retryDelay` is a protobuf Duration in JSON form: `"23s"`, `"1.5s"`.
    /// A value that is not one, or too large for a `Duration`, is ignored.
    fn retry_delay(&self) -> Option<Duration> {
        let s = self
            .details
            .iter()
            .find_map(|d| d.get("retryDelay").and_then(|r| r.as_str()))?;
        helpers::seconds(s.strip_suffix('s')?.parse().ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_tiers_cover_the_request_like_the_price_book_rows() {
        let size = |w, h| Size {
            width: w,
            height: h,
        };
        assert_eq!(image_size_tier(size(512, 512)), "1K");
        assert_eq!(image_size_tier(size(1024, 1024)), "1K");
        assert_eq!(image_size_tier(size(1200, 800)), "2K");
        assert_eq!(image_size_tier(size(4096, 2304)), "4K");
        assert_eq!(image_size_tier(size(8000, 8000)), "4K");
        assert!(takes_image_size("gemini-3-pro-image-preview"));
        assert!(!takes_image_size("gemini-2.5-flash-image"));
    }

    #[test]
    fn absurd_retry_delays_are_ignored() {
        for delay in ["1e300s", "-3s", "NaNs", "soon", "99999999999999999999999s"] {
            let e = ApiError {
                message: String::new(),
                status: None,
                details: vec![serde_json::json!({"retryDelay": delay})],
            };
            assert_eq!(e.retry_delay(), None, "{delay}");
        }
    }
}
