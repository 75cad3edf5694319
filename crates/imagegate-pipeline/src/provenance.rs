//! The pipeline's side of provenance: the watermark key, loaded once at start-up
//! from where `[provenance]` says (never logged), and what a render needs to mark
//! one image's variants.

use imagegate_core::{C2paMode, ConfigError, ContentKey, InvisibleWatermark, ProvenanceMarks};
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

/// Content Credentials as configured: the signer, and the anchors `verify`
/// validates against.
#[derive(Debug)]
pub struct Credentials {
    pub signer: imagegate_provenance::Signer,
    /// True when no key was configured and a throwaway chain signs.
    pub ephemeral: bool,
    /// PEM bundle of trust anchors for verification, and what to call it.
    pub trust_anchors: Option<String>,
    pub anchors_name: String,
}

/// PEM text from a file or an environment variable, as `what` names them.
fn pem_from(
    file: Option<&std::path::Path>,
    env: Option<&str>,
    what: &str,
) -> Result<Option<String>, ConfigError> {
    if let Some(var) = env {
        if let Some(v) = std::env::var(var).ok().filter(|v| !v.trim().is_empty()) {
            return Ok(Some(v));
        }
    }
    match file {
        Some(path) => std::fs::read_to_string(path).map(Some).map_err(|e| {
            ConfigError::new(
                format!("provenance.c2pa.{what}_file"),
                format!("cannot read {}: {e}", path.display()),
            )
        }),
        None => Ok(None),
    }
}

impl Credentials {
    /// The signer `config` names (files or variables, never logged), or a
    /// throwaway chain with a warning when none is configured. `None` when off.
    pub fn from_config(
        config: &imagegate_provenance::C2paConfig,
    ) -> Result<Option<Credentials>, ConfigError> {
        if !config.enabled {
            return Ok(None);
        }
        let chain = pem_from(
            config.cert_chain_file.as_deref(),
            config.cert_chain_env.as_deref(),
            "cert_chain",
        )?;
        let key = pem_from(
            config.private_key_file.as_deref(),
            config.private_key_env.as_deref(),
            "private_key",
        )?;
        let (signer, ephemeral) = match (chain, key) {
            (Some(chain), Some(key)) => (
                imagegate_provenance::Signer::from_pem(chain.as_bytes(), key.as_bytes())
                    .map_err(|e| ConfigError::new("provenance.c2pa", e.to_string()))?,
                false,
            ),
            (None, None) => {
                tracing::warn!(
                    "Content Credentials: no signing key configured; signing with a throwaway \
                     certificate chain made at start-up. Files validate but no verifier will \
                     trust them. Run `imagegate provenance init` for a development CA, or \
                     configure a real certificate in [provenance.c2pa]"
                );
                (
                    imagegate_provenance::Signer::ephemeral()
                        .map_err(|e| ConfigError::new("provenance.c2pa", e.to_string()))?,
                    true,
                )
            }
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "provenance.c2pa",
                    "a certificate chain is configured but no private key".to_string(),
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "provenance.c2pa",
                    "a private key is configured but no certificate chain".to_string(),
                ))
            }
        };
        let trust_anchors = pem_from(config.trust_anchors_file.as_deref(), None, "trust_anchors")?;
        let anchors_name = match &config.trust_anchors_file {
            Some(path) => format!("the PEM bundle in {}", path.display()),
            None => "none configured (validity only: no certificate is trusted)".to_string(),
        };
        Ok(Some(Credentials {
            signer,
            ephemeral,
            trust_anchors,
            anchors_name,
        }))
    }
}

/// What the configured provenance stage does to every file, as the content key
/// sees it: the watermark's key id and strength, and whether files are signed.
pub(crate) fn marks(
    watermarking: Option<&Watermarking>,
    credentials: Option<&Credentials>,
) -> ProvenanceMarks {
    ProvenanceMarks {
        watermark: watermarking.map(|w| InvisibleWatermark {
            key_id: w.key.id(),
            psnr_db: w.psnr_db,
        }),
        c2pa: match credentials {
            Some(_) => C2paMode::Embedded,
            None => C2paMode::Off,
        },
    }
}
