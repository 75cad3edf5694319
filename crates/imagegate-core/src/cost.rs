//! Stage names and what one stage cost.

use crate::money::Micros;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The stages a request can pass, in flow order. `Cache` is the cost of answering a
/// hit (a manifest read), so hits are on the books too.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Cache,
    Generate,
    Decode,
    Safety,
    Watermark,
    Resize,
    Encode,
    /// The invisible watermark and Content Credentials (imagegate-provenance).
    Provenance,
    Upload,
    Storage,
}

impl Stage {
    pub const ALL: [Stage; 10] = [
        Stage::Cache,
        Stage::Generate,
        Stage::Decode,
        Stage::Safety,
        Stage::Watermark,
        Stage::Resize,
        Stage::Encode,
        Stage::Provenance,
        Stage::Upload,
        Stage::Storage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Cache => "cache",
            Stage::Generate => "generate",
            Stage::Decode => "decode",
            Stage::Safety => "safety",
            Stage::Watermark => "watermark",
            Stage::Resize => "resize",
            Stage::Encode => "encode",
            Stage::Provenance => "provenance",
            Stage::Upload => "upload",
            Stage::Storage => "storage",
        }
    }

    pub fn parse(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stage's measured cost: one ledger row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageCost {
    pub stage: Stage,
    pub micros: Micros,
    pub wall_ms: f64,
    /// Thread CPU time the stage burned (summed over worker threads where it fans out).
    pub cpu_ms: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub detail: serde_json::Value,
    /// The stage was paid for at a price nobody knows (a model the price book marks
    /// `unpriced`): `micros` holds only the known part, and reports flag the row
    /// instead of passing it off as free.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unpriced: bool,
}

impl StageCost {
    pub fn new(stage: Stage) -> StageCost {
        StageCost {
            stage,
            micros: Micros::ZERO,
            wall_ms: 0.0,
            cpu_ms: 0.0,
            bytes_in: 0,
            bytes_out: 0,
            detail: serde_json::Value::Null,
            unpriced: false,
        }
    }
}
