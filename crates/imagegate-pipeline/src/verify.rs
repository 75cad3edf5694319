//! Verification: what a file says about where it came from. Its Content
//! Credentials (C2PA) and whether they validate, the invisible watermark (read
//! with this service's key) and, when its payload names a content key this ledger
//! recorded, the request that made the picture.

use crate::error::PipelineError;
use crate::Pipeline;
use bytes::Bytes;
use imagegate_imaging::DecodeLimits;
use imagegate_provenance::{detect, luma_plane, LumaPlane};
use serde::Serialize;

/// What `imagegate verify` and `POST /v1/verify` report for one file.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VerifyReport {
    /// `avif`, `jpeg`, `png` or `webp`, as sniffed from the bytes.
    pub format: String,
    pub width: u32,
    pub height: u32,
    pub watermark: WatermarkFinding,
    /// The file's C2PA manifest and whether it validates.
    pub content_credentials: imagegate_provenance::CredentialsReport,
}

/// The invisible watermark, read with this service's key.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WatermarkFinding {
    /// Whether this service's watermark was found (its CRC matched and the
    /// correlation cleared the threshold).
    pub found: bool,
    /// Mean correlation z-score over the 96 coded bits: about 0.8 on unmarked
    /// pictures, 1.5 needed, 2 to 7 on delivered copies.
    pub confidence: f32,
    /// The watermark key id in the payload.
    pub key_id: Option<u8>,
    /// The first 56 bits of the picture's content key, as hex.
    pub content_key_prefix: Option<String>,
    /// True when the service marks with the public development key (no key
    /// configured): such a mark proves little.
    pub development_key: bool,
    /// The request that made the picture, when this ledger recorded it (and the
    /// caller may see it).
    pub origin: Option<Origin>,
    /// Why nothing was read, when the watermark is off here.
    pub note: Option<String>,
}

/// The request that generated a watermarked picture.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Origin {
    pub request_id: String,
    pub content_key: String,
    /// When it was answered (RFC 3339 UTC).
    pub created_at: String,
    pub provider: Option<String>,
    pub model: Option<String>,
    /// What the request cost in all, in US dollars.
    pub cost_usd: f64,
    /// The API key id that asked (never the secret).
    #[serde(skip)]
    pub api_key: Option<String>,
}

fn sniff(bytes: &[u8]) -> &'static str {
    if imagegate_imaging::is_avif(bytes) {
        "avif"
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        "jpeg"
    } else if bytes.starts_with(b"\x89PNG") {
        "png"
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        "webp"
    } else {
        "unknown"
    }
}

/// The luma of any file the service delivers or accepts.
fn luma_of(file: &[u8], limits: &DecodeLimits) -> Result<LumaPlane, PipelineError> {
    if imagegate_imaging::is_avif(file) {
        let y = imagegate_imaging::decode_avif_luma(file, limits)
            .map_err(|e| PipelineError::BadImage(e.to_string()))?;
        LumaPlane::from_samples(y.width, y.height, y.samples)
            .ok_or_else(|| PipelineError::Internal("AVIF luma of the wrong size".into()))
    } else {
        let rgb = imagegate_imaging::decode(file, limits)
            .map_err(|e| PipelineError::BadImage(e.to_string()))?;
        Ok(luma_plane(&rgb))
    }
}

impl Pipeline {
    /// Reads `file`'s provenance: decodes it on the CPU pool, looks for this
    /// service's watermark, and looks its content key up in the ledger.
    pub async fn verify(&self, file: Bytes) -> Result<VerifyReport, PipelineError> {
        let l = &self.config().limits;
        let limits = DecodeLimits {
            max_pixels: l.max_pixels,
            max_side: l.max_side,
            max_input_bytes: l.max_input_bytes,
        };
        let key = self.watermarking().map(|w| w.key.clone());
        let credentials = self.credentials().cloned();
        let format = sniff(&file);
        let (width, height, detection, content_credentials) = self
            .cpu()
            .run(move || -> Result<_, PipelineError> {
                let luma = luma_of(&file, &limits)?;
                let found = key.map(|k| detect(&luma, &k));
                let (anchors, anchors_name) = match &credentials {
                    Some(c) => (c.trust_anchors.as_deref(), c.anchors_name.as_str()),
                    None => (None, "none configured"),
                };
                let mime = match format {
                    "avif" => "image/avif",
                    "jpeg" => "image/jpeg",
                    "webp" => "image/webp",
                    _ => "image/png",
                };
                let c2pa =
                    imagegate_provenance::read_credentials(&file, mime, anchors, anchors_name)
                        .map_err(|e| PipelineError::Internal(e.to_string()))?;
                Ok((luma.width, luma.height, found, c2pa))
            })
            .await??;
        let development_key = self.watermarking().is_some_and(|w| w.development_key);
        let mut finding = WatermarkFinding {
            found: false,
            confidence: 0.0,
            key_id: None,
            content_key_prefix: None,
            development_key,
            origin: None,
            note: None,
        };
        match detection {
            None => {
                finding.note = Some(
                    "the invisible watermark is off in this service's configuration \
                     ([provenance.watermark] enabled = false), so it has no key to read with"
                        .into(),
                )
            }
            Some(d) => {
                finding.confidence = d.confidence;
                if let Some(p) = d.payload {
                    finding.found = true;
                    finding.key_id = Some(p.key_id);
                    let prefix = p.key_prefix_hex();
                    finding.origin = self
                        .ledger()
                        .origin_by_key_prefix(&prefix)
                        .await
                        .map_err(|e| PipelineError::Ledger(e.to_string()))?
                        .map(|o| Origin {
                            request_id: o.request_id,
                            content_key: o.content_key,
                            created_at: o.created_at,
                            provider: o.provider,
                            model: o.model,
                            cost_usd: o.micros.as_usd(),
                            api_key: o.api_key,
                        });
                    finding.content_key_prefix = Some(prefix);
                }
            }
        }
        Ok(VerifyReport {
            format: format.into(),
            width,
            height,
            watermark: finding,
            content_credentials,
        })
    }
}
