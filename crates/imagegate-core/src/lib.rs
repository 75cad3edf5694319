//! The vocabulary every other imagegate crate speaks: requests and render profiles,
//! the canonical form and content key that decide caching, the manifest that is
//! published last, money in integer micro-dollars, stage names and cost records.
//!
//! This crate does no I/O and depends on nothing of ours. Its main entry point is
//! [`key::content_key`], which turns a [`request::GenerationRequest`] and a
//! [`profile::RenderProfile`] into the [`key::ContentKey`] that names every artefact.

pub mod config_error;
pub mod cost;
pub mod key;
pub mod manifest;
pub mod money;
pub mod profile;
pub mod request;

pub use config_error::ConfigError;
pub use cost::{Stage, StageCost};
pub use key::{content_key, source_key, ContentKey, PIPELINE_VERSION};
pub use manifest::{Manifest, ManifestStatus, SafetyAction, SafetyVerdict, VariantRef};
pub use money::Micros;
pub use profile::{
    AvifEncoder, AvifSettings, C2paMode, ImageFormat, InvisibleWatermark, JpegSettings,
    ProvenanceMarks, RenderProfile, SafetyThresholds, WatermarkMark, WatermarkPosition,
    WatermarkSpec,
};
pub use request::{GenerationRequest, ModelChoice, ModelClass, RequestError, Size, TemplateRef};
