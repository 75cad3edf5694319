//! The one error type of this crate.

/// What went wrong in a provenance operation, with what a person needs to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    /// A watermark key was not 32 bytes of hex (64 characters).
    #[error("watermark key {what}: expected 64 hex characters (32 bytes), got {len} characters")]
    BadWatermarkKey { what: String, len: usize },

    /// The signing certificate or key could not be used.
    #[error("C2PA signing key: {0}")]
    SigningKey(String),
    /// The c2pa crate refused to sign or read.
    #[error("C2PA: {0}")]
    C2pa(String),
}
