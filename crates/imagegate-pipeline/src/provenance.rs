//! The pipeline's side of provenance: the watermark key, loaded once at start-up
//! from where `[provenance]` says (never logged), and what a render needs to mark
//! one image's variants.

use imagegate_core::{ConfigError, ContentKey};
use imagegate_provenance::{Payload, WatermarkConfig, WatermarkKey, DEVELOPMENT_WATERMARK_SECRET};

/// The invisible watermark as configured: the key, and how strongly to mark.
#[derive(Clone, Debug)]
pub struct Watermarking {
    pub key: WatermarkKey,
    pub psnr_db: f32,
    /// True when no secret was configured and the public development key is in use.
    pub development_key: bool,
}

impl Watermarking {
    /// Loads the key `config` names: its environment variable, else its file, else
    /// the built-in development key (with a warning). `None` when disabled.
    pub fn from_config(config: &WatermarkConfig) -> Result<Option<Watermarking>, ConfigError> {
        if !config.enabled {
            return Ok(None);
        }
        if !(config.psnr_db.is_finite() && (30.0..=70.0).contains(&config.psnr_db)) {
            return Err(ConfigError::new(
                "provenance.watermark.psnr_db",
                "must be between 30 and 70 dB".to_string(),
            ));
        }
        let from_env = std::env::var(&config.key_env)
            .ok()
            .filter(|v| !v.trim().is_empty());
        let (key, development_key) = if let Some(hex) = from_env {
            let what = format!("in ${}", config.key_env);
            let key = WatermarkKey::from_hex(config.key_id, &hex, &what)
                .map_err(|e| ConfigError::new("provenance.watermark.key_env", e.to_string()))?;
            (key, false)
        } else if let Some(path) = &config.key_file {
            let hex = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(
                    "provenance.watermark.key_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let what = format!("in {}", path.display());
            let key = WatermarkKey::from_hex(config.key_id, &hex, &what)
                .map_err(|e| ConfigError::new("provenance.watermark.key_file", e.to_string()))?;
            (key, false)
        } else {
            tracing::warn!(
                key_env = %config.key_env,
                "invisible watermark: no key configured, using the public development key; \
                 anyone with imagegate's source can read and remove these marks. Set ${} \
                 (64 hex characters) in production",
                config.key_env
            );
            (
                WatermarkKey::new(config.key_id, DEVELOPMENT_WATERMARK_SECRET),
                true,
            )
        };
        Ok(Some(Watermarking {
            key,
            psnr_db: config.psnr_db,
            development_key,
        }))
    }

    /// What one render marks its variants with.
    pub(crate) fn mark_for(&self, key: ContentKey) -> InvisibleMark {
        InvisibleMark {
            key: self.key.clone(),
            payload: Payload::for_content_key(self.key.id(), key),
            psnr_db: self.psnr_db,
        }
    }
}

/// The mark one render puts in every variant, after its last resize.
pub(crate) struct InvisibleMark {
    pub key: WatermarkKey,
    pub payload: Payload,
    pub psnr_db: f32,
}
