//! Render profiles: how a generated image becomes the files an app serves.
//! Every field here changes output bytes, so every field is part of the content key.

use crate::ConfigError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

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
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Avif,
    Webp,
    Jpeg,
}

impl ImageFormat {
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Avif => "avif",
            ImageFormat::Webp => "webp",
            ImageFormat::Jpeg => "jpeg",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ImageFormat::Avif => "image/avif",
            ImageFormat::Webp => "image/webp",
            ImageFormat::Jpeg => "image/jpeg",
        }
    }

    pub fn from_extension(ext: &str) -> Option<ImageFormat> {
        match ext {
            "avif" => Some(ImageFormat::Avif),
            "webp" => Some(ImageFormat::Webp),
            "jpeg" | "jpg" => Some(ImageFormat::Jpeg),
            _ => None,
        }
    }
}

impl FromStr for ImageFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<ImageFormat, String> {
        ImageFormat::from_extension(s)
            .ok_or_else(|| format!("format {s:?} is not one of avif, webp, jpeg"))
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

/// Which AV1 encoder writes a profile's AVIF files. The two write different bytes for
/// the same settings, so the choice is part of the content key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AvifEncoder {
    /// libaom (the system library, the imaging crate's `aom` feature) in all-intra
    /// mode, 4:2:0. BENCHMARKS.md: at equal SSIMULACRA2 about 8x faster than rav1e
    /// at speed 8 and smaller.
    Aom,
    /// rav1e through ravif, pure Rust (with nasm assembly), 4:4:4.
    Rav1e,
}

impl AvifEncoder {
    pub fn as_str(self) -> &'static str {
        match self {
            AvifEncoder::Aom => "aom",
            AvifEncoder::Rav1e => "rav1e",
        }
    }

    /// The encoder's speed scale: libaom's all-intra `cpu-used` is 0..=9, ravif's
    /// speed 1..=10. Higher is faster and larger in both.
    pub fn speeds(self) -> std::ops::RangeInclusive<u8> {
        match self {
            AvifEncoder::Aom => 0..=9,
            AvifEncoder::Rav1e => 1..=10,
        }
    }
}

impl fmt::Display for AvifEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// AVIF settings; `encoder` picks libaom or rav1e.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvifSettings {
    /// 1..=100, higher is better. libaom maps it as libavif does
    /// (`cq-level = round((100 - quality) * 63 / 100)`); rav1e uses ravif's scale.
    pub quality: f32,
    /// The encoder's speed (`AvifEncoder::speeds`): higher is faster and larger.
    pub speed: u8,
    /// The AV1 stream's bit depth, 8 or 10, whatever the (8-bit) input. BENCHMARKS.md
    /// has the trade: 10 bits buy a little quality per byte for about twice the time.
    #[serde(default = "default_avif_bit_depth")]
    pub bit_depth: u8,
    #[serde(default = "default_avif_encoder")]
    pub encoder: AvifEncoder,
}

/// The numbers chose libaom (BENCHMARKS.md, "Resize + encode").
pub const DEFAULT_AVIF_ENCODER: AvifEncoder = AvifEncoder::Aom;

fn default_avif_encoder() -> AvifEncoder {
    DEFAULT_AVIF_ENCODER
}

pub const DEFAULT_AVIF_BIT_DEPTH: u8 = 8;

fn default_avif_bit_depth() -> u8 {
    DEFAULT_AVIF_BIT_DEPTH
}

impl Default for AvifSettings {
    fn default() -> Self {
        AvifSettings {
            quality: 60.0,
            speed: 8,
            bit_depth: DEFAULT_AVIF_BIT_DEPTH,
            encoder: DEFAULT_AVIF_ENCODER,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JpegSettings {
    /// 1..=100.
    pub quality: u8,
}

impl Default for JpegSettings {
    fn default() -> Self {
        JpegSettings { quality: 80 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WatermarkPosition {
    TopLeft,
    TopRight,
    BottomLeft,
    BottomRight,
    Center,
}

/// What is stamped: text in the bundled font, or a logo image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WatermarkMark {
    Text {
        text: String,
        /// RGB colour; opacity is separate.
        #[serde(default = "white")]
        color: [u8; 3],
    },
    Logo {
        path: PathBuf,
        /// blake3 of the logo file, filled in when the configuration is loaded, so the
        /// content key changes when the logo does even if its path does not.
        #[serde(default, skip_serializing)]
        digest: String,
    },
}

fn white() -> [u8; 3] {
    [255, 255, 255]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatermarkSpec {
    pub mark: WatermarkMark,
    #[serde(default = "default_position")]
    pub position: WatermarkPosition,
    /// 0.0 (invisible) ..= 1.0 (opaque).
    #[serde(default = "default_opacity")]
    pub opacity: f32,
    /// Width of the mark as a fraction of the variant's width.
    #[serde(default = "default_scale")]
    pub scale: f32,
    /// Gap to the edges as a fraction of the variant's width.
    #[serde(default = "default_margin")]
    pub margin: f32,
}

fn default_position() -> WatermarkPosition {
    WatermarkPosition::BottomRight
}
fn default_opacity() -> f32 {
    0.5
}
fn default_scale() -> f32 {
    0.25
}
fn default_margin() -> f32 {
    0.02
}

/// NSFW score thresholds: at or above `blur_at` the image is blurred, at or above
/// `block_at` it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyThresholds {
    pub blur_at: f32,
    pub block_at: f32,
}

impl Default for SafetyThresholds {
    fn default() -> Self {
        SafetyThresholds {
            blur_at: 0.2,
            block_at: 0.8,
        }
    }
}

/// A named set of output decisions, chosen per request by `profile`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenderProfile {
    #[serde(default)]
    pub name: String,
    /// Target widths in pixels; never upscaled beyond the generated width.
    pub variants: Vec<u32>,
    pub formats: Vec<ImageFormat>,
    #[serde(default)]
    pub avif: AvifSettings,
    #[serde(default)]
    pub jpeg: JpegSettings,
    #[serde(default)]
    pub webp_quality: Option<u8>,
    #[serde(default)]
    pub watermark: Option<WatermarkSpec>,
    #[serde(default)]
    pub safety: SafetyThresholds,
    /// What the provenance stage puts in the files. Not set per profile: the
    /// pipeline copies it from `[provenance]` into every profile at start-up, so
    /// the content key tells marked files from unmarked ones.
    #[serde(skip)]
    pub provenance: ProvenanceMarks,
}

/// The provenance settings that change a profile's delivered bytes (never the
/// secrets: a key id names the watermark key, the key itself stays out).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ProvenanceMarks {
    /// The invisible watermark, when on.
    pub watermark: Option<InvisibleWatermark>,
    /// Content Credentials on every file.
    pub c2pa: C2paMode,
}

/// The invisible watermark's key id and strength.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct InvisibleWatermark {
    pub key_id: u8,
    /// The strength, as a PSNR target in dB.
    pub psnr_db: f32,
}

/// Whether and how files carry a C2PA manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum C2paMode {
    #[default]
    Off,
    /// Signed, with the manifest embedded in the file.
    Embedded,
}

impl ProvenanceMarks {
    /// True when the provenance stage leaves the files as they are.
    pub fn is_off(&self) -> bool {
        self.watermark.is_none() && self.c2pa == C2paMode::Off
    }
}

impl RenderProfile {
    /// Checks the invariants a configuration file could break.
    /// Checks value ranges, naming fields relative to the profile (`avif.quality`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fault = |path: &str, problem: String| Err(ConfigError::new(path, problem));
        if self.variants.is_empty() {
            return fault("variants", "is empty".into());
        }
        if let Some(w) = self.variants.iter().find(|w| !(16..=8192).contains(*w)) {
            return fault("variants", format!("width {w} is outside 16..=8192"));
        }
        if self.formats.is_empty() {
            return fault("formats", "is empty".into());
        }
        if !(1.0..=100.0).contains(&self.avif.quality) {
            return fault("avif.quality", "must be 1..=100".into());
        }
        let speeds = self.avif.encoder.speeds();
        if !speeds.contains(&self.avif.speed) {
            return fault(
                "avif.speed",
                format!(
                    "must be {}..={} for the {} encoder",
                    speeds.start(),
                    speeds.end(),
                    self.avif.encoder
                ),
            );
        }
        if !matches!(self.avif.bit_depth, 8 | 10) {
            return fault("avif.bit_depth", "must be 8 or 10".into());
        }
        if !(1..=100).contains(&self.jpeg.quality) {
            return fault("jpeg.quality", "must be 1..=100".into());
        }
        if let Some(wm) = &self.watermark {
            if !(0.0..=1.0).contains(&wm.opacity) {
                return fault("watermark.opacity", "must be 0..=1".into());
            }
            if !(0.01..=1.0).contains(&wm.scale) {
                return fault("watermark.scale", "must be 0.01..=1".into());
            }
            if !(0.0..=0.25).contains(&wm.margin) {
                return fault("watermark.margin", "must be 0..=0.25".into());
            }
            if let WatermarkMark::Text { text, .. } = &wm.mark {
                if text.trim().is_empty() {
                    return fault("watermark.text", "is empty".into());
                }
            }
        }
        let s = self.safety;
        if !(0.0..=1.0).contains(&s.blur_at) {
            return fault("safety.blur_at", "must be 0..=1".into());
        }
        if !(0.0..=1.0).contains(&s.block_at) {
            return fault("safety.block_at", "must be 0..=1".into());
        }
        Ok(())
    }

    /// Variant widths sorted ascending without duplicates.
    pub fn widths(&self) -> Vec<u32> {
        let mut w = self.variants.clone();
        w.sort_unstable();
        w.dedup();
        w
    }
}
