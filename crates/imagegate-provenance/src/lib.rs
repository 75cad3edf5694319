//! Provenance that survives delivery: the invisible watermark imagegate puts in
//! every variant's luma, and reading it back.
//!
//! This crate owns the watermark's design end to end: the 64-bit [`Payload`] (a
//! watermark key id and a prefix of the content key) protected by a CRC-32, the
//! keyed spread-spectrum pattern on a resolution-independent grid, [`embed`] (after
//! the last resize of a variant, before encode) and [`detect`] (on any decoded copy,
//! whatever its size or codec). It deliberately does no decoding of files, no I/O
//! and no ledger look-ups: callers hand it pixels and keys, and map a detected
//! payload to a request themselves. Everything is synchronous and CPU-only.
//!
//! Main entry points: [`WatermarkKey`], [`embed`], [`detect`].

mod config;
mod credentials;
mod error;
mod watermark;

pub use config::{
    C2paConfig, ProvenanceConfig, WatermarkConfig, DEFAULT_PSNR_DB, DEVELOPMENT_WATERMARK_SECRET,
};

pub use credentials::{
    generate_development_ca, read_credentials, CredentialsReport, DevelopmentCredentials,
    Generator, IngredientReport, Parent, Signer, TRAINED_ALGORITHMIC_MEDIA,
};
pub use error::ProvenanceError;
pub use watermark::{
    detect, embed, luma_plane, Detection, LumaPlane, Payload, WatermarkKey, PAYLOAD_BITS,
};
