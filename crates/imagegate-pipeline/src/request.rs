//! What callers ask for and who they are: the request as callers spell it
//! (`POST /v1/images`, templates), how it treats the cache, and its resolution
//! against the configuration into what decides the output bytes.

use crate::config::PipelineConfig;
use crate::error::{PipelineError, RequestFault};
use imagegate_core::{
    GenerationRequest, ImageFormat, ModelChoice, RenderProfile, RequestError, Size,
};
use imagegate_providers::Policy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How a request treats the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    /// Answer from the cache when the key exists; otherwise generate once.
    #[default]
    Use,
    /// Generate again and replace the published entry.
    Refresh,
    /// Generate without reading the cache or coalescing with other callers.
    Bypass,
}

/// A generation request as callers spell it (`POST /v1/images`, templates).
/// Everything but `prompt` defaults from the profile and `[defaults]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageRequest {
    pub prompt: String,
    #[serde(default)]
    pub negative_prompt: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub size: Option<String>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub variants: Option<Vec<u32>>,
    #[serde(default)]
    pub formats: Option<Vec<ImageFormat>>,
    #[serde(default)]
    pub profile: Option<String>,
    /// Routing policy (`cheapest`, `fastest`, `balanced`); `[router] policy` by default.
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
    #[serde(default)]
    pub cache: CacheMode,
    /// Defer: deliver by this RFC 3339 time or within this duration (`24h`), at the
    /// cheapest moment before it (`POST /v1/images` answers 202 with a job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_by: Option<String>,
    /// With `deliver_by`: where to announce the job's end (a Standard Webhooks POST,
    /// signed, retried with backoff). The key's default webhook when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
}

/// Who is asking, for the ledger and logs.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub request_id: String,
    /// Id of the API key used (never the secret itself).
    pub api_key: Option<String>,
    /// Keep the provider's paid output in the ledger until it is published, so a
    /// retry after this process dies takes it instead of paying again. For work a
    /// queue retries on its own (deferred jobs); a live caller pays the extra write
    /// only if it asks.
    pub survives_restart: bool,
}

/// Resolves a caller's request against a configuration and its resolved profiles:
/// every check the HTTP and CLI callers rely on, with no I/O, so the fuzz target
/// (`fuzz/`, `parse_request`) exercises exactly what the server runs.
pub fn resolve_request(
    config: &PipelineConfig,
    profiles: &BTreeMap<String, RenderProfile>,
    req: &ImageRequest,
) -> Result<(GenerationRequest, RenderProfile, Policy), PipelineError> {
    let limits = &config.limits;
    let defaults = &config.defaults;
    let normalized = imagegate_core::key::normalize_text(&req.prompt);
    if normalized.is_empty() {
        return Err(RequestFault::from(RequestError::EmptyPrompt).into());
    }
    for (field, text) in [
        ("prompt", Some(&req.prompt)),
        ("negative_prompt", req.negative_prompt.as_ref()),
    ] {
        if let Some(t) = text {
            let n = t.chars().count();
            if n > limits.max_prompt_chars {
                return Err(RequestFault::TooLong {
                    field,
                    chars: n,
                    limit: limits.max_prompt_chars,
                }
                .into());
            }
        }
    }
    let profile_name = req.profile.as_deref().unwrap_or(&defaults.profile);
    let mut profile = profiles
        .get(profile_name)
        .cloned()
        .ok_or_else(|| PipelineError::UnknownProfile(profile_name.into()))?;
    if let Some(v) = &req.variants {
        if v.is_empty() || v.len() > limits.max_variants {
            return Err(RequestFault::VariantCount {
                max: limits.max_variants,
            }
            .into());
        }
        if let Some(w) = first_repeat(v) {
            return Err(RequestFault::RepeatedVariant(w).into());
        }
        profile.variants = v.clone();
    }
    if let Some(f) = &req.formats {
        if f.is_empty() {
            return Err(RequestFault::NoFormats.into());
        }
        // A format listed twice would make the same files twice, and weigh in the
        // key memo as often as it is repeated.
        if let Some(format) = first_repeat(f) {
            return Err(RequestFault::RepeatedFormat(format).into());
        }
        profile.formats = f.clone();
    }
    profile.validate().map_err(|fault| RequestFault::Profile {
        profile: profile_name.to_string(),
        fault,
    })?;
    let size: Size = req
        .size
        .as_deref()
        .unwrap_or(&defaults.size)
        .parse()
        .map_err(RequestFault::from)?;
    let model: ModelChoice = req
        .model
        .as_deref()
        .unwrap_or(&defaults.model)
        .parse()
        .map_err(RequestFault::from)?;
    if let Some(max) = req.max_cost_usd {
        if !(max.is_finite() && max >= 0.0) {
            return Err(RequestFault::MaxCost.into());
        }
    }
    let policy = match &req.policy {
        Some(p) => p.parse().map_err(RequestFault::from)?,
        None => config.router.policy,
    };
    let gen = GenerationRequest::new(
        &req.prompt,
        req.negative_prompt.as_deref(),
        model,
        size,
        req.seed.unwrap_or(defaults.seed),
    )
    .map_err(RequestFault::from)?;
    Ok((gen, profile, policy))
}

fn first_repeat<T: PartialEq + Copy>(items: &[T]) -> Option<T> {
    items
        .iter()
        .enumerate()
        .find(|(i, x)| items[..*i].contains(x))
        .map(|(_, x)| *x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(req: serde_json::Value) -> RequestFault {
        let config = PipelineConfig::from_toml_sections(
            include_str!("../../../config/imagegate.toml"),
            &["server"],
        )
        .expect("config/imagegate.toml parses");
        let profiles = config
            .resolved_profiles()
            .expect("the shipped profiles resolve");
        let req: ImageRequest = serde_json::from_value(req).expect("a request body");
        match resolve_request(&config, &profiles, &req) {
            Err(PipelineError::Invalid(f)) => f,
            other => panic!("expected a request fault, got {other:?}"),
        }
    }

    /// Each fault names the request field it is about: the OpenAI surface answers it
    /// as `param`, and the message says the same as it did as a bare string.
    #[test]
    fn each_fault_names_its_field() {
        let cases = [
            (
                serde_json::json!({"prompt": " \t "}),
                "prompt",
                "prompt is empty",
            ),
            (
                serde_json::json!({"prompt": "x", "negative_prompt": "a".repeat(100_000)}),
                "negative_prompt",
                "negative_prompt has 100000 characters",
            ),
            (
                serde_json::json!({"prompt": "x", "size": "big"}),
                "size",
                "size \"big\"",
            ),
            (
                serde_json::json!({"prompt": "x", "model": "ultra"}),
                "model",
                "model \"ultra\"",
            ),
            (
                serde_json::json!({"prompt": "x", "variants": []}),
                "variants",
                "variants must list",
            ),
            (
                serde_json::json!({"prompt": "x", "variants": [256, 256]}),
                "variants",
                "variants lists width 256 twice",
            ),
            (
                serde_json::json!({"prompt": "x", "variants": [4]}),
                "variants",
                "width 4 is outside",
            ),
            (
                serde_json::json!({"prompt": "x", "formats": []}),
                "formats",
                "formats is empty",
            ),
            (
                serde_json::json!({"prompt": "x", "max_cost_usd": -1.0}),
                "max_cost_usd",
                "max_cost_usd must be a non-negative number",
            ),
            (
                serde_json::json!({"prompt": "x", "policy": "random"}),
                "policy",
                "policy \"random\"",
            ),
        ];
        for (req, field, words) in cases {
            let f = fault(req.clone());
            assert_eq!(f.field(), field, "{req}: {f}");
            assert!(f.to_string().contains(words), "{req}: {f}");
        }
    }
}
