//! The JSON shapes of API.md that image answers are serialized from.

use imagegate_core::{ContentKey, ImageFormat, Manifest, ManifestStatus, StageCost};
use imagegate_pipeline::Pipeline;
use std::collections::BTreeMap;

// The views below spell the JSON of API.md. Fields are in alphabetical order, the
// order these bodies had when they were built as `serde_json::Value` maps.

/// A published image with what this request cost.
#[derive(serde::Serialize)]
pub(crate) struct ImageView<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cache: Option<&'static str>,
    pub(crate) cost: CostView<'a>,
    #[serde(flatten)]
    pub(crate) manifest: ManifestView<'a>,
}

/// A verdict as the API shows it.
#[derive(serde::Serialize)]
pub(crate) struct SafetyView {
    pub(crate) action: &'static str,
    /// Widened as the `Value` maps did, so the digits stay the same.
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

#[derive(serde::Serialize)]
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

#[derive(serde::Serialize)]
pub(crate) struct StageView<'a> {
    pub(crate) cpu_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) detail: Option<&'a serde_json::Value>,
    pub(crate) ms: f64,
    pub(crate) stage: &'static str,
    pub(crate) usd: f64,
}

#[derive(serde::Serialize)]
pub(crate) struct ManifestView<'a> {
    pub(crate) created_at: &'a str,
    pub(crate) id: ContentKey,
    pub(crate) images: Vec<VariantView>,
    pub(crate) model: &'a str,
    pub(crate) provider: &'a str,
    pub(crate) safety: SafetyView,
    pub(crate) srcset: BTreeMap<&'static str, String>,
    pub(crate) status: ManifestStatus,
}

#[derive(serde::Serialize)]
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
