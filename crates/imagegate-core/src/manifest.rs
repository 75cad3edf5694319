//! The manifest: the record of one content key, written last. A key exists exactly
//! when its manifest does.

use crate::cost::StageCost;
use crate::key::ContentKey;
use crate::money::Micros;
use crate::profile::ImageFormat;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SafetyAction {
    Allow,
    Blur,
    Block,
}

impl SafetyAction {
    pub fn as_str(self) -> &'static str {
        match self {
            SafetyAction::Allow => "allow",
            SafetyAction::Blur => "blur",
            SafetyAction::Block => "block",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SafetyVerdict {
    /// None when no classifier is configured (the action is then `allow`).
    pub nsfw_score: Option<f32>,
    pub action: SafetyAction,
    /// Which check decided: "classifier", "prompt", or "none".
    pub source: String,
}

/// One stored file of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VariantRef {
    pub width: u32,
    pub height: u32,
    pub format: ImageFormat,
    /// Object-store key, e.g. `i/ab/<id>/768.avif`.
    pub object: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ManifestStatus {
    Ok,
    Blocked,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub id: ContentKey,
    pub status: ManifestStatus,
    pub provider: String,
    pub model: String,
    pub source_width: u32,
    pub source_height: u32,
    pub images: Vec<VariantRef>,
    pub safety: SafetyVerdict,
    /// What producing this key cost the first time.
    pub cost_micros: Micros,
    pub stages: Vec<StageCost>,
    /// RFC 3339 UTC.
    pub created_at: String,
    pub pipeline_version: u32,
}

impl Manifest {
    /// Where a key's manifest lives in the object store.
    pub fn object_key(id: ContentKey) -> String {
        format!("i/{}/{}/manifest.json", id.shard(), id)
    }

    /// Where one variant of a key lives in the object store.
    pub fn variant_object_key(id: ContentKey, width: u32, format: ImageFormat) -> String {
        format!("i/{}/{}/{}.{}", id.shard(), id, width, format.extension())
    }

    /// Where one variant of a bypass generation of a key lives: beside no published
    /// key's files, under a `nonce` of the request's own, so it replaces nothing.
    pub fn bypass_variant_object_key(
        id: ContentKey,
        nonce: &str,
        width: u32,
        format: ImageFormat,
    ) -> String {
        format!(
            "b/{}/{}/{}/{}.{}",
            id.shard(),
            id,
            nonce,
            width,
            format.extension()
        )
    }
}
