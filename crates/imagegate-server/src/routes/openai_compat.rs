//! `POST /v1/images/generations`: the OpenAI Images API, so code written against
//! OpenAI's client libraries works by changing its base URL. Requests map onto
//! imagegate's own (one content key per image, so the cache and single flight
//! apply); answers and errors keep OpenAI's shapes. `url` answers are CDN URLs.
//!
//! What maps how:
//! - `model`: an alias from `[server.openai.models]` (dall-e-3 → standard, ...) or
//!   any imagegate model (`premium`, `openai/gpt-image-1`).
//! - `quality`: `low` asks for the draft class, `hd`/`high` for premium, the rest
//!   leave the class alone; a pinned `provider/model` is never changed.
//! - `n`: image i gets seed `defaults.seed + i`, so n images differ and each is cached.
//! - The returned file is the profile's widest variant in the first format listed.
//! - `output_format` picks which stored format answers (`jpeg`, `webp`, `avif` when
//!   the profile stores it); `png` is not stored, so it is refused with a clear error.
//! - `style`, `user`, `moderation`, `output_compression` are validated and accepted;
//!   no provider we route to takes a style, `user` is not stored (it may identify a
//!   person), and imagegate's own safety policy and encoder settings apply.

use crate::error::{JsonBody, OpenAiError};
use crate::{ApiError, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use imagegate_core::{ImageFormat, Manifest, ManifestStatus, Stage, VariantRef};
use imagegate_pipeline::{ImageRequest, Outcome, PipelineError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The request as OpenAI documents it. Unknown fields are refused, as OpenAI does.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAiImageRequest {
    pub prompt: String,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub size: Option<String>,
    #[serde(default)]
    pub quality: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub response_format: Option<String>,
    #[serde(default)]
    pub style: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    /// GPT image models: `png`, `webp` or `jpeg`; picks the stored format to answer
    /// with when the profile has it.
    #[serde(default)]
    pub output_format: Option<String>,
    /// GPT image models; accepted, the profile's encoder settings apply.
    #[serde(default)]
    pub output_compression: Option<u8>,
    /// GPT image models: only `auto` and `opaque` (nothing here makes transparency).
    #[serde(default)]
    pub background: Option<String>,
    /// GPT image models: `auto` or `low`; imagegate's own safety policy applies either way.
    #[serde(default)]
    pub moderation: Option<String>,
    /// Streaming partial images is not offered; `false` is accepted.
    #[serde(default)]
    pub stream: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseFormat {
    Url,
    B64Json,
}

/// A 400 blaming the request field `param`.
fn invalid(param: &'static str, message: impl Into<String>) -> OpenAiError {
    OpenAiError(ApiError::new(StatusCode::BAD_REQUEST, "invalid_value", message).with_param(param))
}

/// The OpenAI Images API: code written for OpenAI's clients works by changing its
/// base URL. `url` answers are CDN URLs; errors keep OpenAI's shape.
#[utoipa::path(
    post,
    path = "/v1/images/generations",
    tag = "openai",
    request_body(
        content = OpenAiImageRequest,
        description = "OpenAI's request; unknown fields are refused",
        example = json!({"prompt": "a lighthouse at dusk, watercolor", "n": 2, "size": "512x512", "model": "dall-e-3", "quality": "hd", "response_format": "b64_json"})
    ),
    responses(
        (status = 200, description = "The images, and what each cost", body = OpenAiImagesBody),
        (status = 402, response = crate::openapi::OpenAiPaymentRequired),
        (status = 500, response = crate::openapi::OpenAiInternal),
        (status = 502, response = crate::openapi::OpenAiBadGateway),
        crate::openapi::OpenAiKeyed,
        crate::openapi::OpenAiOverloaded,
        crate::openapi::OpenAiBadBody,
    ),
)]
pub(crate) async fn generations(
    State(state): State<Arc<AppState>>,
    crate::middleware::Caller(ctx): crate::middleware::Caller,
    body: Result<JsonBody<OpenAiImageRequest>, ApiError>,
) -> Result<Response, OpenAiError> {
    let JsonBody(req) = body?;
    let pipeline = &state.pipeline;
    let (requests, format, file_format) = translate(&req, &state.server.openai, pipeline.config())?;
    let runs = requests.iter().map(|r| pipeline.generate(r, &ctx));
    let outcomes: Vec<Outcome> = futures::future::try_join_all(runs).await?;
    if outcomes
        .iter()
        .any(|o| o.manifest.status == ManifestStatus::Blocked)
    {
        return Err(OpenAiError(
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "content_policy_violation",
                "the generated image was blocked by the safety policy",
            )
            .with_param("prompt"),
        ));
    }
    let mut data = Vec::with_capacity(outcomes.len());
    for outcome in &outcomes {
        let variant = served_variant(&outcome.manifest, file_format).ok_or_else(|| {
            OpenAiError::from(PipelineError::Internal(format!(
                "image {} has no stored files",
                outcome.manifest.id
            )))
        })?;
        data.push(match format {
            ResponseFormat::Url => OpenAiImageData::Url {
                url: pipeline.url_of(variant),
            },
            ResponseFormat::B64Json => {
                let object = pipeline
                    .store()
                    .get(&variant.object)
                    .await
                    .map_err(PipelineError::from)?
                    .ok_or_else(|| {
                        PipelineError::Storage(format!("{} is missing", variant.object))
                    })?;
                OpenAiImageData::B64Json {
                    b64_json: base64::engine::general_purpose::STANDARD.encode(&object.bytes),
                }
            }
        });
    }
    let body = OpenAiImagesBody {
        created: chrono::Utc::now().timestamp(),
        data,
        imagegate: OpenAiExtras {
            images: outcomes
                .iter()
                .map(|o| OpenAiImageFacts {
                    cache: o.cache,
                    cost_usd: o
                        .stages
                        .iter()
                        .map(|s| s.micros)
                        .sum::<imagegate_core::Micros>()
                        .as_usd(),
                    id: o.manifest.id,
                })
                .collect(),
        },
        usage: token_usage(&outcomes),
    };
    Ok(Json(body).into_response())
}

/// One imagegate request per image asked for, and how to answer: the response
/// format and, when asked for, the stored file format to answer with.
pub(crate) fn translate(
    req: &OpenAiImageRequest,
    compat: &crate::config::OpenAiCompatConfig,
    config: &imagegate_pipeline::PipelineConfig,
) -> Result<(Vec<ImageRequest>, ResponseFormat, Option<ImageFormat>), OpenAiError> {
    let n = req.n.unwrap_or(1);
    if n == 0 || n > compat.max_n {
        return Err(invalid(
            "n",
            format!("n must be between 1 and {}", compat.max_n),
        ));
    }
    let format = match req.response_format.as_deref() {
        None | Some("url") => ResponseFormat::Url,
        Some("b64_json") => ResponseFormat::B64Json,
        Some(other) => {
            return Err(invalid(
                "response_format",
                format!("response_format {other:?} is not one of 'url', 'b64_json'"),
            ))
        }
    };
    match req.style.as_deref() {
        None | Some("vivid") | Some("natural") => {}
        Some(other) => {
            return Err(invalid(
                "style",
                format!("style {other:?} is not one of 'vivid', 'natural'"),
            ))
        }
    }
    if req.stream == Some(true) {
        return Err(invalid(
            "stream",
            "streaming partial images is not supported; omit stream or set it to false",
        ));
    }
    match req.background.as_deref() {
        None | Some("auto") | Some("opaque") => {}
        Some(other) => {
            return Err(invalid(
                "background",
                format!("background {other:?} is not supported; use 'auto' or 'opaque'"),
            ))
        }
    }
    match req.moderation.as_deref() {
        None | Some("auto") | Some("low") => {}
        Some(other) => {
            return Err(invalid(
                "moderation",
                format!("moderation {other:?} is not one of 'auto', 'low'"),
            ))
        }
    }
    if req.output_compression.is_some_and(|c| c > 100) {
        return Err(invalid(
            "output_compression",
            "output_compression must be 0 to 100",
        ));
    }
    let profile = config
        .profiles
        .get(&config.defaults.profile)
        .map(|p| p.formats.clone())
        .unwrap_or_default();
    let file_format = match req.output_format.as_deref() {
        None => None,
        Some(name) => {
            let wanted = match name {
                "jpeg" | "jpg" => Some(ImageFormat::Jpeg),
                "webp" => Some(ImageFormat::Webp),
                "avif" => Some(ImageFormat::Avif),
                _ => None,
            };
            match wanted {
                Some(f) if profile.contains(&f) => Some(f),
                _ => {
                    let stored: Vec<&str> = profile.iter().map(|f| f.extension()).collect();
                    return Err(invalid(
                        "output_format",
                        format!(
                            "output_format {name:?} is not stored; this service stores {}",
                            stored.join(", ")
                        ),
                    ));
                }
            }
        }
    };
    if req.user.as_ref().is_some_and(|u| u.chars().count() > 256) {
        return Err(invalid("user", "user is longer than 256 characters"));
    }
    // The pipeline checks these too; checked here first so OpenAI's `param` names
    // the field, as its clients expect.
    let bad_request = |param: &'static str, message: String| {
        OpenAiError(
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message).with_param(param),
        )
    };
    if imagegate_core::key::normalize_text(&req.prompt).is_empty() {
        return Err(bad_request("prompt", "prompt is empty".into()));
    }
    let chars = req.prompt.chars().count();
    if chars > config.limits.max_prompt_chars {
        return Err(bad_request(
            "prompt",
            format!(
                "prompt has {chars} characters; the limit is {}",
                config.limits.max_prompt_chars
            ),
        ));
    }
    let size = match req.size.as_deref() {
        None | Some("auto") => None,
        Some(s) => {
            s.parse::<imagegate_core::Size>()
                .map_err(|e| bad_request("size", e.to_string()))?;
            Some(s.to_string())
        }
    };
    let model = req
        .model
        .as_deref()
        .map(|m| {
            compat
                .models
                .get(m)
                .cloned()
                .unwrap_or_else(|| m.to_string())
        })
        .unwrap_or_else(|| config.defaults.model.clone());
    let model = match req.quality.as_deref() {
        None | Some("auto") | Some("standard") | Some("medium") => model,
        Some("low") if is_class(&model) => "draft".to_string(),
        Some("hd") | Some("high") | Some("xhigh") | Some("max") if is_class(&model) => {
            "premium".to_string()
        }
        Some("low") | Some("hd") | Some("high") | Some("xhigh") | Some("max") => model,
        Some(other) => {
            return Err(invalid(
                "quality",
                format!(
                "quality {other:?} is not one of 'auto', 'low', 'medium', 'high', 'standard', 'hd'"
            ),
            ))
        }
    };
    let requests = (0..u64::from(n))
        .map(|i| ImageRequest {
            prompt: req.prompt.clone(),
            model: Some(model.clone()),
            size: size.clone(),
            seed: Some(config.defaults.seed.wrapping_add(i)),
            ..ImageRequest::default()
        })
        .collect();
    Ok((requests, format, file_format))
}

fn is_class(model: &str) -> bool {
    matches!(
        model.parse::<imagegate_core::ModelChoice>(),
        Ok(imagegate_core::ModelChoice::Class(_))
    )
}

/// The widest variant in `format`, or else in the first format the profile lists
/// (files are stored in profile order).
pub(crate) fn served_variant(m: &Manifest, format: Option<ImageFormat>) -> Option<&VariantRef> {
    let format = format.unwrap_or(m.images.first()?.format);
    m.images
        .iter()
        .filter(|v| v.format == format)
        .max_by_key(|v| v.width)
}

/// OpenAI's `usage` object, when every generation run by this request reported
/// tokens (GPT image models); hits used none.
fn token_usage(outcomes: &[Outcome]) -> Option<OpenAiUsage> {
    let mut input_text = 0u64;
    let mut input_image = 0u64;
    let mut output = 0u64;
    let mut any = false;
    for o in outcomes {
        for s in o.stages.iter().filter(|s| s.stage == Stage::Generate) {
            let usage = &s.detail["usage"];
            let tokens = |field: &str| usage[field].as_u64();
            let out = tokens("output_image_tokens")?;
            input_text += tokens("input_text_tokens").unwrap_or(0);
            input_image += tokens("input_image_tokens").unwrap_or(0);
            output += out;
            any = true;
        }
    }
    any.then_some(OpenAiUsage {
        input_tokens: input_text + input_image,
        input_tokens_details: OpenAiInputTokens {
            image_tokens: input_image,
            text_tokens: input_text,
        },
        output_tokens: output,
        total_tokens: input_text + input_image + output,
    })
}

// The answer's shapes, as serialized and as documented. Fields in alphabetical order,
// the order these bodies had when they were built as `serde_json::Value` maps.

/// `POST /v1/images/generations`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct OpenAiImagesBody {
    /// Unix seconds.
    created: i64,
    data: Vec<OpenAiImageData>,
    /// Beyond OpenAI's shape (its clients ignore unknown fields): what each image is
    /// and what this request cost.
    imagegate: OpenAiExtras,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<OpenAiUsage>,
}

/// One image of an OpenAI answer, as `response_format` asked.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
enum OpenAiImageData {
    Url {
        /// The CDN URL of the profile's widest variant in its first format.
        url: String,
    },
    B64Json {
        b64_json: String,
    },
}

#[derive(Serialize, utoipa::ToSchema)]
struct OpenAiExtras {
    images: Vec<OpenAiImageFacts>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct OpenAiImageFacts {
    cache: imagegate_ledger::CacheOutcome,
    cost_usd: f64,
    #[schema(value_type = String, pattern = "^[0-9a-f]{64}$")]
    id: imagegate_core::ContentKey,
}

/// Present when every generation of the request reported tokens.
#[derive(Debug, PartialEq, Serialize, utoipa::ToSchema)]
struct OpenAiUsage {
    input_tokens: u64,
    input_tokens_details: OpenAiInputTokens,
    output_tokens: u64,
    total_tokens: u64,
}

#[derive(Debug, PartialEq, Serialize, utoipa::ToSchema)]
struct OpenAiInputTokens {
    image_tokens: u64,
    text_tokens: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../../../config/imagegate.toml");

    fn config() -> imagegate_pipeline::PipelineConfig {
        imagegate_pipeline::PipelineConfig::from_toml_sections(SHIPPED, &["server"])
            .expect("embedded defaults parse")
    }

    fn compat() -> crate::config::OpenAiCompatConfig {
        let mut file: toml::Table = toml::from_str(SHIPPED).expect("embedded defaults parse");
        let server: crate::config::ServerConfig = file
            .remove("server")
            .map(|s| s.try_into().expect("[server] parses"))
            .unwrap_or_default();
        server.openai
    }

    fn request(json: serde_json::Value) -> OpenAiImageRequest {
        serde_json::from_value(json).expect("valid request")
    }

    #[test]
    fn n_images_get_consecutive_seeds_and_aliases_map_to_classes() {
        let config = config();
        let (reqs, format, _) = translate(
            &request(serde_json::json!({"prompt": "a fox", "n": 3, "model": "dall-e-3", "quality": "hd", "size": "512x512"})),
            &compat(),
            &config,
        )
        .unwrap();
        assert_eq!(format, ResponseFormat::Url);
        assert_eq!(reqs.len(), 3);
        let seeds: Vec<u64> = reqs.iter().map(|r| r.seed.unwrap()).collect();
        let base = config.defaults.seed;
        assert_eq!(seeds, vec![base, base + 1, base + 2]);
        assert!(reqs.iter().all(|r| r.model.as_deref() == Some("premium")));
        assert_eq!(reqs[0].size.as_deref(), Some("512x512"));
    }

    #[test]
    fn pinned_models_are_not_changed_by_quality() {
        let (reqs, format, _) = translate(
            &request(serde_json::json!({"prompt": "a fox", "model": "local/procedural-v1", "quality": "low", "response_format": "b64_json"})),
            &compat(),
            &config(),
        )
        .unwrap();
        assert_eq!(format, ResponseFormat::B64Json);
        assert_eq!(reqs[0].model.as_deref(), Some("local/procedural-v1"));
    }

    #[test]
    fn out_of_range_values_name_their_parameter() {
        for (body, param) in [
            (serde_json::json!({"prompt": "x", "n": 0}), "n"),
            (serde_json::json!({"prompt": "x", "n": 11}), "n"),
            (
                serde_json::json!({"prompt": "x", "response_format": "png"}),
                "response_format",
            ),
            (
                serde_json::json!({"prompt": "x", "quality": "ultra"}),
                "quality",
            ),
            (serde_json::json!({"prompt": "x", "style": "noir"}), "style"),
            (
                serde_json::json!({"prompt": "x", "user": "u".repeat(300)}),
                "user",
            ),
            (serde_json::json!({"prompt": "  "}), "prompt"),
            (serde_json::json!({"prompt": "x".repeat(100_000)}), "prompt"),
            (serde_json::json!({"prompt": "x", "size": "big"}), "size"),
        ] {
            let err = translate(&request(body.clone()), &compat(), &config())
                .err()
                .unwrap();
            assert_eq!(err.0.param, Some(param), "{body}");
            assert_eq!(err.0.status, StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_value::<OpenAiImageRequest>(
            serde_json::json!({"prompt": "x", "bogus": 1}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
