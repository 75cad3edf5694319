//! Pixels in, pixels or bytes out: the imaging stages of imagegate.
//!
//! This crate owns everything done to an image between the provider's bytes and the
//! files uploaded to the CDN: [`decode`] untrusted bytes with limits (a
//! decompression bomb is refused from its header, before any pixel is allocated),
//! stamp a [`Watermarker`] (bundled-font text or a logo), [`blur`] for the safety
//! stage, [`resize`] / [`resize_all`] to variant widths (Lanczos3, never upscaling),
//! and [`encode`] to AVIF (libaom by default, or ravif/rav1e), JPEG, or lossless WebP.
//!
//! It deliberately does not decide anything: which variants and formats to make,
//! whether an image is safe, where bytes go and what they cost belong to the
//! pipeline, safety and storage crates. Every function is synchronous, CPU-only and
//! free of globals; the only I/O is [`Watermarker::new`] reading a logo file once.
//! Callers run these on a bounded blocking pool; [`encode`] runs entirely on the
//! calling thread, so parallelism (and CPU accounting) is the caller's choice.
//!
//! Pixels are `image::RgbImage` (8-bit RGB) throughout; alpha in inputs is
//! composited over white when decoding.
//!
//! Building on x86_64 requires `nasm` (rav1e's assembly; without it AVIF encoding is
//! several times slower). `build.rs` fails the build if `nasm -v` does not run,
//! unless `IMAGEGATE_ALLOW_NO_NASM=1`. The default `aom` feature links the system
//! libaom (Debian: libaom-dev, plus libclang-dev and pkg-config for the bindings).

#[cfg(feature = "aom")]
mod aom;
#[cfg(feature = "aom")]
mod avif_luma;
mod blur;
mod decode;
mod encode;
mod error;
mod resize;
mod watermark;

#[cfg(feature = "aom")]
pub use avif_luma::{decode_avif_luma, is_avif, LumaSamples};
pub use blur::blur;
pub use decode::{decode, decode_rgba, DecodeLimits};
pub use encode::{avif_encoder_available, encode, encode_threaded};
pub use error::ImagingError;
pub use resize::{resize, resize_all, scaled_height};
pub use watermark::Watermarker;

/// Re-exported so callers name the same pixel type this crate uses.
pub use image::RgbImage;
