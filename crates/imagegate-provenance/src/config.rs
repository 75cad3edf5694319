//! The `[provenance]` section of the configuration: what is marked and where the
//! secrets come from (never the secrets themselves).

use serde::{Deserialize, Serialize};

/// `[provenance]`: the invisible watermark and Content Credentials.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProvenanceConfig {
    pub watermark: WatermarkConfig,
    pub c2pa: C2paConfig,
}

/// `[provenance.c2pa]`: Content Credentials on every delivered file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct C2paConfig {
    /// Sign every delivered file (on by default).
    pub enabled: bool,
    /// PEM certificate chain (leaf first): a file, or an environment variable
    /// holding the PEM text. With neither, each start makes a throwaway chain
    /// (and says so): files validate, and no verifier will ever trust them.
    pub cert_chain_file: Option<std::path::PathBuf>,
    pub cert_chain_env: Option<String>,
    /// The leaf's PKCS#8 PEM P-256 private key (ES256): a file or a variable.
    pub private_key_file: Option<std::path::PathBuf>,
    pub private_key_env: Option<String>,
    /// PEM trust anchors `verify` validates against (e.g. the CA that
    /// `imagegate provenance init` made), besides none by default.
    pub trust_anchors_file: Option<std::path::PathBuf>,
}

impl Default for C2paConfig {
    fn default() -> Self {
        C2paConfig {
            enabled: true,
            cert_chain_file: None,
            cert_chain_env: None,
            private_key_file: None,
            private_key_env: None,
            trust_anchors_file: None,
        }
    }
}

/// `[provenance.watermark]`: the invisible watermark in every variant's luma.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WatermarkConfig {
    /// Mark every variant (on by default).
    pub enabled: bool,
    /// The key id carried in the payload (0..=255), so keys can rotate: the
    /// verifier knows which key to read with.
    pub key_id: u8,
    /// The environment variable holding the 32-byte secret as 64 hex characters.
    /// When it is unset (and `key_file` is not given), the built-in development
    /// key is used, and start-up says so: anyone with imagegate's source can
    /// read and remove a mark made with it.
    pub key_env: String,
    /// A file holding the secret (64 hex characters), read when `key_env` is unset.
    pub key_file: Option<std::path::PathBuf>,
    /// The mark's strength as a PSNR target against the unmarked variant.
    pub psnr_db: f32,
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        WatermarkConfig {
            enabled: true,
            key_id: 0,
            key_env: "IMAGEGATE_WATERMARK_KEY".into(),
            key_file: None,
            psnr_db: DEFAULT_PSNR_DB,
        }
    }
}

/// 45.5 dB measures at or above 45 dB on every corpus picture (BENCHMARKS.md).
pub const DEFAULT_PSNR_DB: f32 = 45.5;

/// The development watermark secret: public, so a mark made with it proves
/// nothing against someone who read this file. Production sets `key_env`.
pub const DEVELOPMENT_WATERMARK_SECRET: [u8; 32] = *b"imagegate public development key";
