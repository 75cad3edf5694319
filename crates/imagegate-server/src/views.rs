//! The JSON shapes the handlers answer with. Each type here is both what a handler
//! serializes and, through its `ToSchema` derive, what `/openapi.json` documents, so
//! the document cannot drift from the answers.

use crate::error::ErrorDetail;
use imagegate_core::{
    ContentKey, ImageFormat, Manifest, ManifestStatus, SafetyAction, Stage, StageCost,
};
use imagegate_ledger::CacheOutcome;
use imagegate_pipeline::Pipeline;
use std::collections::BTreeMap;
use utoipa::ToSchema;

// Fields are in alphabetical order, the order these bodies had when they were built
// as `serde_json::Value` maps.

/// An image: its files, `srcset` strings per format, the safety verdict, what it
/// cost and (`POST /v1/images`) how the cache answered.
#[derive(serde::Serialize, ToSchema)]
#[schema(as = ImageView)]
pub(crate) struct ImageView<'a> {
    /// How the cache answered (`POST /v1/images` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cache: Option<CacheOutcome>,
    /// `GET /v1/images/{id}`: what the first generation cost; `POST /v1/images`:
    /// what this request cost.
    pub(crate) cost: CostView<'a>,
    #[serde(flatten)]
    pub(crate) manifest: ManifestView<'a>,
}

/// A `422` of `POST /v1/images`. A blocked generated image (`content_blocked`) also
/// names its key, the verdict and what the request cost; a refused prompt
/// (`prompt_blocked`) has only the error.
#[derive(serde::Serialize, ToSchema)]
#[schema(as = BlockedView)]
pub(crate) struct BlockedView<'a> {
    #[schema(value_type = Option<CacheOutcome>)]
    pub(crate) cache: CacheOutcome,
    #[schema(value_type = Option<CostView>)]
    pub(crate) cost: CostView<'a>,
    pub(crate) error: ErrorDetail,
    #[schema(value_type = Option<String>, pattern = "^[0-9a-f]{64}$")]
    pub(crate) id: ContentKey,
    #[schema(value_type = Option<SafetyView>)]
    pub(crate) safety: SafetyView,
}

/// A verdict as the API shows it.
#[derive(serde::Serialize, ToSchema)]
pub(crate) struct SafetyView {
    #[schema(value_type = SafetyAction)]
    pub(crate) action: &'static str,
    /// The classifier's score in 0..=1; null when no classifier ran. Widened as the
    /// `Value` maps did, so the digits stay the same.
    #[schema(required = true)]
    pub(crate) nsfw_score: Option<f64>,
}

impl From<&imagegate_core::SafetyVerdict> for SafetyView {
    fn from(v: &imagegate_core::SafetyVerdict) -> SafetyView {
        SafetyView {
            action: v.action.as_str(),
            nsfw_score: v.nsfw_score.map(f64::from),
        }
    }
}

#[derive(serde::Serialize, ToSchema)]
#[schema(as = CostView)]
pub(crate) struct CostView<'a> {
    pub(crate) stages: Vec<StageView<'a>>,
    pub(crate) total_usd: f64,
}

impl<'a> CostView<'a> {
    pub(crate) fn new(stages: &'a [StageCost]) -> CostView<'a> {
        let total: imagegate_core::Micros = stages.iter().map(|s| s.micros).sum();
        CostView {
            total_usd: total.as_usd(),
            stages: stages
                .iter()
                .map(|s| StageView {
                    cpu_ms: (s.cpu_ms * 10.0).round() / 10.0,
                    detail: (!s.detail.is_null()).then_some(&s.detail),
                    ms: (s.wall_ms * 10.0).round() / 10.0,
                    stage: s.stage.as_str(),
                    usd: s.micros.as_usd(),
                })
                .collect(),
        }
    }
}

#[derive(serde::Serialize, ToSchema)]
#[schema(as = StageView)]
pub(crate) struct StageView<'a> {
    /// CPU time in milliseconds.
    pub(crate) cpu_ms: f64,
    /// Stage-specific facts (provider usage, widths, bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub(crate) detail: Option<&'a serde_json::Value>,
    /// Wall time in milliseconds.
    pub(crate) ms: f64,
    #[schema(value_type = Stage)]
    pub(crate) stage: &'static str,
    pub(crate) usd: f64,
}

/// The manifest's part of an image answer.
#[derive(serde::Serialize, ToSchema)]
#[schema(as = ManifestView)]
pub(crate) struct ManifestView<'a> {
    /// RFC 3339 UTC.
    #[schema(value_type = String)]
    pub(crate) created_at: &'a str,
    /// The content key.
    #[schema(value_type = String, pattern = "^[0-9a-f]{64}$")]
    pub(crate) id: ContentKey,
    pub(crate) images: Vec<VariantView>,
    #[schema(value_type = String)]
    pub(crate) model: &'a str,
    #[schema(value_type = String)]
    pub(crate) provider: &'a str,
    pub(crate) safety: SafetyView,
    /// Format extension to a `srcset` value (`<url> 256w, <url> 512w`).
    #[schema(value_type = BTreeMap<String, String>)]
    pub(crate) srcset: BTreeMap<&'static str, String>,
    pub(crate) status: ManifestStatus,
}

/// One stored file of an image.
#[derive(serde::Serialize, ToSchema)]
pub(crate) struct VariantView {
    pub(crate) bytes: u64,
    pub(crate) format: ImageFormat,
    pub(crate) height: u32,
    pub(crate) url: String,
    pub(crate) width: u32,
}

impl<'a> ManifestView<'a> {
    pub(crate) fn new(pipeline: &Pipeline, m: &'a Manifest) -> ManifestView<'a> {
        let images: Vec<VariantView> = m
            .images
            .iter()
            .map(|v| VariantView {
                bytes: v.bytes,
                format: v.format,
                height: v.height,
                url: pipeline.url_of(v),
                width: v.width,
            })
            .collect();
        // Formats in ImageFormat order, widths in manifest order, as before.
        let mut by_format: BTreeMap<ImageFormat, String> = BTreeMap::new();
        for v in &images {
            let list = by_format.entry(v.format).or_default();
            if !list.is_empty() {
                list.push_str(", ");
            }
            list.push_str(&v.url);
            list.push(' ');
            list.push_str(&v.width.to_string());
            list.push('w');
        }
        ManifestView {
            created_at: &m.created_at,
            id: m.id,
            model: &m.model,
            provider: &m.provider,
            safety: SafetyView::from(&m.safety),
            srcset: by_format
                .into_iter()
                .map(|(f, list)| (f.extension(), list))
                .collect(),
            status: m.status,
            images,
        }
    }
}

/// `GET /healthz` and `GET /readyz`.
#[derive(serde::Serialize, ToSchema)]
pub(crate) struct StatusView {
    /// `ok` (`/healthz`) or `ready` (`/readyz`).
    pub(crate) status: &'static str,
}

/// `POST /v1/estimate` (and `imagegate estimate`): what the router would do for a
/// request; nothing is generated.
#[derive(serde::Serialize, ToSchema)]
#[schema(as = EstimateView)]
pub struct EstimateView<'a> {
    #[schema(value_type = String, pattern = "^[0-9a-f]{64}$")]
    pub(crate) id: ContentKey,
    /// Whether the key is already in the cache (a request would be a hit).
    pub(crate) cached: bool,
    #[schema(value_type = imagegate_providers::Policy)]
    pub(crate) policy: imagegate_providers::Policy,
    /// `WIDTHxHEIGHT`.
    pub(crate) size: String,
    /// Eligible candidates in call order, then skipped ones.
    pub(crate) candidates: Vec<CandidateView<'a>>,
    /// The candidate that would be called first; null when none is eligible.
    #[schema(required = true)]
    pub(crate) chosen: Option<CandidateView<'a>>,
}

impl<'a> EstimateView<'a> {
    pub fn new(
        id: ContentKey,
        cached: bool,
        estimate: &'a imagegate_providers::Estimate,
    ) -> EstimateView<'a> {
        EstimateView {
            id,
            cached,
            policy: estimate.policy,
            size: estimate.size.to_string(),
            candidates: estimate
                .candidates
                .iter()
                .map(CandidateView::from)
                .collect(),
            chosen: estimate.chosen.as_ref().map(CandidateView::from),
        }
    }
}

/// A candidate with its expected fee in dollars beside the micro-dollars.
#[derive(serde::Serialize, ToSchema)]
#[schema(as = CandidateView)]
pub(crate) struct CandidateView<'a> {
    #[serde(flatten)]
    #[schema(value_type = imagegate_providers::router::Candidate)]
    pub(crate) candidate: &'a imagegate_providers::router::Candidate,
    pub(crate) expected_usd: f64,
}

impl<'a> From<&'a imagegate_providers::router::Candidate> for CandidateView<'a> {
    fn from(candidate: &'a imagegate_providers::router::Candidate) -> CandidateView<'a> {
        CandidateView {
            candidate,
            expected_usd: candidate.expected.as_usd(),
        }
    }
}

/// `GET /v1/prices`: the price book in force.
#[derive(serde::Serialize, ToSchema)]
pub(crate) struct PricesView {
    /// The book's version: a hash of its text.
    pub(crate) version: String,
    /// The file (or fleet replica) it was read from.
    pub(crate) origin: String,
    #[schema(value_type = String, format = DateTime)]
    pub(crate) at: chrono::DateTime<chrono::Utc>,
    /// Per provider and model; `imagegate prices list` shows the same.
    pub(crate) models: Vec<imagegate_providers::price_book::Listed>,
}
