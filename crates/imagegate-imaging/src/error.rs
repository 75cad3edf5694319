//! The one error type of this crate. Each variant carries what a person needs to act:
//! the sizes and limits involved, the format, the file.

use imagegate_core::profile::ImageFormat;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ImagingError {
    #[error("input is empty: expected a PNG, JPEG or WebP image")]
    EmptyInput,

    #[error("input is {bytes} bytes; the limit is {limit} bytes")]
    InputTooLarge { bytes: usize, limit: usize },

    #[error(
        "image is {width}x{height} ({pixels} pixels); \
         the limit is {max_side} px a side and {max_pixels} pixels"
    )]
    TooLarge {
        width: u32,
        height: u32,
        pixels: u64,
        max_side: u32,
        max_pixels: u64,
    },

    #[error("unknown image format (first bytes: {magic}); expected PNG, JPEG or WebP")]
    UnknownFormat { magic: String },

    #[error("{format} images cannot be decoded here; expected PNG, JPEG or WebP")]
    UnsupportedFormat { format: String },

    #[error("could not decode {format} image: {reason}")]
    Decode { format: String, reason: String },

    /// The decoder itself refused to allocate (a header that lies about its size, or
    /// an unusual pixel layout that needs more memory than the limits allow).
    #[error("decoding {format} image would exceed the memory limit: {reason}")]
    DecodeLimit { format: String, reason: String },

    #[error("target width must be at least 1 px, got {width}")]
    InvalidWidth { width: u32 },

    #[error("could not resize {from_width}x{from_height} to {to_width}x{to_height}: {reason}")]
    Resize {
        from_width: u32,
        from_height: u32,
        to_width: u32,
        to_height: u32,
        reason: String,
    },

    #[error("could not encode {width}x{height} image as {format}: {reason}")]
    Encode {
        format: ImageFormat,
        width: u32,
        height: u32,
        reason: String,
    },

    #[error("watermark logo {}: {reason}", path.display())]
    Logo { path: PathBuf, reason: String },

    #[error("watermark is invalid: {reason}")]
    InvalidWatermark { reason: String },

    #[error("bundled watermark font could not be loaded: {reason}")]
    Font { reason: String },
}
