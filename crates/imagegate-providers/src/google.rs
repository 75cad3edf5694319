//! The Google Gemini API adapter, two wire formats behind one provider:
//! - Gemini image models (`gemini-*-image*`) through
//!   `POST {base_url}/models/{model}:generateContent`, image returned as an
//!   `inlineData` part, billed by tokens from `usageMetadata`;
//! - Imagen models (`imagen-*`) through `POST {base_url}/models/{model}:predict`
//!   with `instances[].prompt` and `parameters.sampleCount`, images returned as
//!   `predictions[].bytesBase64Encoded`, billed per image.
//!
//! Authentication is the `x-goog-api-key` header (never the `?key=` query parameter,
//! so the key cannot end up in a logged URL).
//!
//! Wire format:
//! - generateContent request/response, `GenerationConfig` (`responseModalities`,
//!   `seed`, `imageConfig.aspectRatio`), `Candidate.finishReason`,
//!   `promptFeedback.blockReason`, `UsageMetadata` (`promptTokenCount`,
//!   `candidatesTokenCount`, `totalTokenCount`, `promptTokensDetails[]`,
//!   `candidatesTokensDetails[]` of `{modality, tokenCount}`):
//!   <https://ai.google.dev/api/generate-content>
//! - image output with `responseModalities: ["TEXT", "IMAGE"]` and `imageConfig`:
//!   <https://ai.google.dev/gemini-api/docs/image-generation>
//! - Imagen `:predict` (`instances`, `parameters.sampleCount`/`aspectRatio`,
//!   `predictions[].bytesBase64Encoded`/`mimeType`):
//!   <https://ai.google.dev/gemini-api/docs/imagen>
//! - Errors are `{"error": {"code", "message", "status", "details": [..]}}`
//!   (<https://ai.google.dev/gemini-api/docs/troubleshooting>); an invalid key is a
//!   `400 INVALID_ARGUMENT` with `ErrorInfo.reason = "API_KEY_INVALID"`, and 429
//!   `RESOURCE_EXHAUSTED` carries a `RetryInfo.retryDelay` such as `"23s"`.
//!
//! Neither API takes a negative prompt (Imagen's was removed from the Gemini API), and
//! Imagen on the Gemini API takes no seed; those request fields are not sent.

use crate::http::{self, ApiKey};
use crate::{Generation, ModelOffer, Provider, ProviderError, ProviderRequest, Usage};
use async_trait::async_trait;
use bytes::Bytes;
use imagegate_core::{Micros, ModelClass, Size};
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use std::time::Duration;

const GEMINI_ASPECT_RATIOS: &[&str] = &[
    "21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16",
];
const IMAGEN_ASPECT_RATIOS: &[&str] = &["16:9", "4:3", "1:1", "3:4", "9:16"];

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
    /// Used by `quote` only until the router prices through the price book.
    #[serde(default)]
    pub expected_usd_per_image: f64,
    /// `imagen-*` names go to `:predict`, all others to `:generateContent`.
    #[serde(default = "default_models")]
    pub models: Vec<ModelOffer>,
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
        ModelOffer {
            name: "gemini-2.5-flash-image".into(),
            classes: vec![ModelClass::Standard],
        },
        ModelOffer {
            name: "imagen-4.0-generate-001".into(),
            classes: vec![ModelClass::Standard, ModelClass::Premium],
        },
        ModelOffer {
            name: "imagen-4.0-fast-generate-001".into(),
            classes: vec![ModelClass::Draft],
        },
    ]
}

impl Default for GoogleConfig {
    fn default() -> Self {
        GoogleConfig {
            name: default_name(),
            base_url: default_base_url(),
            api_key_env: default_api_key_env(),
            timeout_secs: default_timeout_secs(),
            expected_usd_per_image: 0.0,
            models: default_models(),
        }
    }
}

// ---- wire types: generateContent ----

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

// ---- wire types: Imagen predict ----

#[derive(Debug, Serialize)]
struct PredictRequest<'a> {
    instances: Vec<PredictInstance<'a>>,
    parameters: PredictParameters<'a>,
}

#[derive(Debug, Serialize)]
struct PredictInstance<'a> {
    prompt: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PredictParameters<'a> {
    sample_count: u32,
    aspect_ratio: &'a str,
}

#[derive(Debug, Deserialize)]
struct PredictResponse {
    #[serde(default)]
    predictions: Vec<Prediction>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Prediction {
    #[serde(default)]
    bytes_base64_encoded: Option<String>,
    #[serde(default)]
    rai_filtered_reason: Option<String>,
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
    fn retry_delay(&self) -> Option<Duration> {
        let s = self
            .details
            .iter()
            .find_map(|d| d.get("retryDelay").and_then(|r| r.as_str()))?;
        let secs: f64 = s.strip_suffix('s')?.parse().ok()?;
        (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
    }
}

// ---- the adapter ----

pub struct GoogleProvider {
    config: GoogleConfig,
    endpoint: http::Endpoint,
    key: ApiKey,
}

impl std::fmt::Debug for GoogleProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoogleProvider")
            .field("config", &self.config)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn is_imagen(model: &str) -> bool {
    model.starts_with("imagen")
}

impl GoogleProvider {
    pub fn new(config: GoogleConfig) -> Result<GoogleProvider, ProviderError> {
        let endpoint = http::Endpoint::open(
            &config.name,
            &config.base_url,
            config.timeout_secs,
            config.expected_usd_per_image,
            config.models.is_empty(),
        )?;
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

    fn error_from(
        &self,
        status: reqwest::StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> ProviderError {
        let parsed = serde_json::from_slice::<ErrorResponse>(body).ok();
        let Some(ErrorResponse { error: e }) = parsed else {
            return http::status_error(
                &self.config.name,
                Some(&self.config.api_key_env),
                status,
                http::retry_after(headers),
                &String::from_utf8_lossy(body),
            );
        };
        if e.reason() == Some("API_KEY_INVALID") {
            // Google answers 400, not 401, for a bad key.
            return http::status_error(
                &self.config.name,
                Some(&self.config.api_key_env),
                reqwest::StatusCode::UNAUTHORIZED,
                None,
                "",
            );
        }
        let retry_after = http::retry_after(headers).or_else(|| e.retry_delay());
        let detail = format!("{}: {}", e.status.as_deref().unwrap_or("error"), e.message);
        http::status_error(
            &self.config.name,
            Some(&self.config.api_key_env),
            status,
            retry_after,
            &detail,
        )
    }

    async fn post_json<T: Serialize + Sync>(
        &self,
        url: String,
        body: &T,
    ) -> Result<serde_json::Value, ProviderError> {
        let name = &self.config.name;
        let resp = self
            .endpoint
            .client
            .post(url)
            .header("x-goog-api-key", self.key.expose())
            .json(body)
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
        serde_json::from_slice(&raw)
            .map_err(|e| http::bad_response(name, format!("body is not JSON: {e}")))
    }

    async fn generate_content(
        &self,
        request: &ProviderRequest,
    ) -> Result<(Vec<u8>, Usage), ProviderError> {
        let name = &self.config.name;
        let ratio = http::closest_aspect_ratio(
            request.size.width,
            request.size.height,
            GEMINI_ASPECT_RATIOS,
        );
        let body = GenerateContentRequest {
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
                },
            },
        };
        let url = format!(
            "{}/models/{}:generateContent",
            self.endpoint.base_url, request.model
        );
        let value = self.post_json(url, &body).await?;
        let parsed: GenerateContentResponse = serde_json::from_value(value.clone())
            .map_err(|e| http::bad_response(name, format!("unexpected JSON shape: {e}")))?;

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
            return Err(http::bad_response(
                name,
                format!(
                    "no image part (finishReason {:?}, text {:?})",
                    reason,
                    http::truncate(&text, 120)
                ),
            ));
        };
        if let Some(mt) = &blob.mime_type {
            if !mt.starts_with("image/") {
                return Err(http::bad_response(
                    name,
                    format!("inlineData has mimeType {mt}"),
                ));
            }
        }
        let bytes = http::decode_base64(name, &blob.data)?;

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

    async fn predict(&self, request: &ProviderRequest) -> Result<(Vec<u8>, Usage), ProviderError> {
        let name = &self.config.name;
        let ratio = http::closest_aspect_ratio(
            request.size.width,
            request.size.height,
            IMAGEN_ASPECT_RATIOS,
        );
        let body = PredictRequest {
            instances: vec![PredictInstance {
                prompt: &request.prompt,
            }],
            parameters: PredictParameters {
                sample_count: 1,
                aspect_ratio: ratio,
            },
        };
        let url = format!(
            "{}/models/{}:predict",
            self.endpoint.base_url, request.model
        );
        let value = self.post_json(url, &body).await?;
        let parsed: PredictResponse = serde_json::from_value(value)
            .map_err(|e| http::bad_response(name, format!("unexpected JSON shape: {e}")))?;
        if let Some(reason) = parsed
            .predictions
            .iter()
            .find_map(|p| p.rai_filtered_reason.clone())
        {
            if parsed
                .predictions
                .iter()
                .all(|p| p.bytes_base64_encoded.is_none())
            {
                return Err(self.rejected(reason));
            }
        }
        let Some(b64) = parsed
            .predictions
            .iter()
            .find_map(|p| p.bytes_base64_encoded.as_deref())
        else {
            // Imagen drops filtered images from `predictions` instead of failing the call.
            return Err(self.rejected("no image returned: Imagen filtered every sample".into()));
        };
        let bytes = http::decode_base64(name, b64)?;
        Ok((
            bytes,
            Usage {
                images: 1,
                ..Usage::default()
            },
        ))
    }
}

#[async_trait]
impl Provider for GoogleProvider {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn offers(&self) -> &[ModelOffer] {
        &self.config.models
    }

    /// A flat configured figure; token and per-image prices live in the price book.
    fn quote(&self, _model: &str, _size: Size) -> Micros {
        Micros::from_usd(self.config.expected_usd_per_image)
    }

    async fn generate(&self, request: &ProviderRequest) -> Result<Generation, ProviderError> {
        let name = &self.config.name;
        let (bytes, mut usage) = if is_imagen(&request.model) {
            self.predict(request).await?
        } else {
            self.generate_content(request).await?
        };
        let sniffed = http::sniff_image(name, &bytes)?;
        usage.width = sniffed.width;
        usage.height = sniffed.height;
        Ok(Generation {
            bytes: Bytes::from(bytes),
            media_type: sniffed.media_type.to_string(),
            provider: name.clone(),
            model: request.model.clone(),
            cost: Micros::ZERO,
            usage,
        })
    }
}
