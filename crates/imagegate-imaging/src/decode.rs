//! Decoding untrusted bytes (from a provider or a user) into 8-bit RGB, refusing
//! oversized inputs before any pixel buffer is allocated.

use crate::ImagingError;
use image::{DynamicImage, ImageError, ImageReader, RgbImage, RgbaImage};
use std::io::Cursor;

/// What a decoder may accept. Checked against the file header before decoding, and
/// handed to `image` as its own [`image::Limits`] so a header that lies cannot make
/// the decoder allocate beyond them either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Width × height.
    pub max_pixels: u64,
    /// Longest allowed width or height in pixels.
    pub max_side: u32,
    /// Size of the encoded input.
    pub max_input_bytes: usize,
}

impl Default for DecodeLimits {
    /// 64 megapixels, 8192 px a side, 64 MiB of input: well above what any
    /// generation provider returns, well below what would exhaust a worker.
    fn default() -> Self {
        DecodeLimits {
            max_pixels: 64_000_000,
            max_side: 8192,
            max_input_bytes: 64 * 1024 * 1024,
        }
    }
}

impl DecodeLimits {
    /// The most bytes a decoder may allocate: the largest in-memory layout `image`
    /// can produce is 16-bit RGBA (8 bytes a pixel), plus room for its own buffers.
    fn max_alloc(&self) -> u64 {
        self.max_pixels.saturating_mul(8).saturating_add(16 << 20)
    }

    pub(crate) fn check(&self, width: u32, height: u32) -> Result<(), ImagingError> {
        let pixels = u64::from(width) * u64::from(height);
        if width > self.max_side || height > self.max_side || pixels > self.max_pixels {
            return Err(ImagingError::TooLarge {
                width,
                height,
                pixels,
                max_side: self.max_side,
                max_pixels: self.max_pixels,
            });
        }
        Ok(())
    }
}

/// Decodes PNG, JPEG or WebP bytes into 8-bit RGB; transparency is composited over
/// white (the background a CDN image is most often shown on).
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, ImagingError> {
    let decoded = decode_dynamic(bytes, limits)?;
    Ok(if decoded.color().has_alpha() {
        over_white(&decoded.to_rgba8())
    } else {
        // Moves the buffer when it is already 8-bit RGB (what providers return);
        // to_rgb8 would copy it.
        decoded.into_rgb8()
    })
}

/// Like [`decode`] but keeps the alpha channel (for watermark logos).
pub fn decode_rgba(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbaImage, ImagingError> {
    Ok(decode_dynamic(bytes, limits)?.to_rgba8())
}

fn decode_dynamic(bytes: &[u8], limits: &DecodeLimits) -> Result<DynamicImage, ImagingError> {
    if bytes.is_empty() {
        return Err(ImagingError::EmptyInput);
    }
    if bytes.len() > limits.max_input_bytes {
        return Err(ImagingError::InputTooLarge {
            bytes: bytes.len(),
            limit: limits.max_input_bytes,
        });
    }
    let format = guess_format(bytes)?;
    let format_name = format!("{format:?}");
    if !matches!(
        format,
        image::ImageFormat::Png | image::ImageFormat::Jpeg | image::ImageFormat::WebP
    ) {
        return Err(ImagingError::UnsupportedFormat {
            format: format_name,
        });
    }
    let decode_error = |e: ImageError| match e {
        ImageError::Limits(l) => ImagingError::DecodeLimit {
            format: format_name.clone(),
            reason: l.to_string(),
        },
        ImageError::Unsupported(u) => ImagingError::UnsupportedFormat {
            format: format!("{format_name} ({u})"),
        },
        other => ImagingError::Decode {
            format: format_name.clone(),
            reason: other.to_string(),
        },
    };

    // First pass reads only the header. Side limits are left off here on purpose:
    // `image` would reject a bomb with its own terse message before we could name the
    // dimensions; the allocation cap still applies to any header buffers.
    let mut header_limits = image::Limits::default();
    header_limits.max_alloc = Some(limits.max_alloc());
    header_limits.max_image_width = None;
    header_limits.max_image_height = None;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(header_limits);
    let (width, height) =
        without_panics(&format_name, || reader.into_dimensions())?.map_err(decode_error)?;
    limits.check(width, height)?;

    let mut decode_limits = image::Limits::default();
    decode_limits.max_alloc = Some(limits.max_alloc());
    decode_limits.max_image_width = Some(limits.max_side);
    decode_limits.max_image_height = Some(limits.max_side);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(decode_limits);
    let image = without_panics(&format_name, || reader.decode())?.map_err(decode_error)?;
    // Belt and braces: the pixels we got must match what the header promised.
    limits.check(image.width(), image.height())?;
    Ok(image)
}

/// Runs a third-party decoder so that a panic inside it is a decode error. The
/// fuzzer found one: png 0.18.1 panics on a PLTE chunk whose length is not a multiple
/// of 3 (fuzz/regressions/decode_image/). Provider bytes must never take a worker down.
fn without_panics<T>(format: &str, decode: impl FnOnce() -> T) -> Result<T, ImagingError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        ImagingError::Decode {
            format: format.to_owned(),
            reason: format!("the decoder panicked: {message}"),
        }
    })
}

fn guess_format(bytes: &[u8]) -> Result<image::ImageFormat, ImagingError> {
    image::guess_format(bytes).map_err(|_| ImagingError::UnknownFormat {
        magic: bytes
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" "),
    })
}

fn over_white(rgba: &RgbaImage) -> RgbImage {
    let mut out = RgbImage::new(rgba.width(), rgba.height());
    for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
        let a = u32::from(src[3]);
        for c in 0..3 {
            let v = (u32::from(src[c]) * a + 255 * (255 - a) + 127) / 255;
            dst[c] = v as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, Rgb, Rgba};

    fn png_bytes(image: &RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(
                image.as_raw(),
                image.width(),
                image.height(),
                image::ExtendedColorType::Rgb8,
            )
            .expect("encoding a PNG in memory");
        out
    }

    fn gradient(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, 128])
        })
    }

    /// The fuzzer's first finding: png 0.18.1 panics on a PLTE chunk of 49 bytes.
    #[test]
    fn a_panicking_decoder_is_a_decode_error() {
        let png = include_bytes!(
            "../../../fuzz/regressions/decode_image/png-plte-length-not-a-multiple-of-3.png"
        );
        let err = decode(png, &DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(&err, ImagingError::Decode { reason, .. } if reason.contains("panicked")),
            "{err}"
        );
        assert!(decode_rgba(png, &DecodeLimits::default()).is_err());
    }

    // --- a hand-built PNG, so bombs need no encoder that would refuse them ---

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in data {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }

    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }

    /// A valid PNG signature and IHDR claiming `width`x`height` RGB, followed by a
    /// small (stored, uncompressed) zlib IDAT holding only the first bytes of data.
    fn png_with_header(width: u32, height: u32) -> Vec<u8> {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit, RGB, deflate, adaptive, no interlace
        chunk(&mut out, b"IHDR", &ihdr);
        // Whole image data when small, otherwise only its first 2 KiB (a bomb's IDAT).
        let full = (1 + 3 * u64::from(width)) * u64::from(height);
        let raw = vec![0u8; full.min(2048) as usize];
        let mut zlib = vec![0x78, 0x01, 0x01]; // zlib header; one final stored block
        zlib.extend_from_slice(&(raw.len() as u16).to_le_bytes());
        zlib.extend_from_slice(&(!(raw.len() as u16)).to_le_bytes());
        zlib.extend_from_slice(&raw);
        zlib.extend_from_slice(&adler32(&raw).to_be_bytes());
        chunk(&mut out, b"IDAT", &zlib);
        chunk(&mut out, b"IEND", &[]);
        out
    }

    #[test]
    fn png_round_trips_exactly() {
        let original = gradient(97, 61);
        let decoded = decode(&png_bytes(&original), &DecodeLimits::default()).unwrap();
        assert_eq!(decoded, original);
    }

    #[test]
    fn jpeg_decodes_with_its_dimensions() {
        let original = gradient(120, 80);
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode_image(&original)
            .unwrap();
        let decoded = decode(&jpeg, &DecodeLimits::default()).unwrap();
        assert_eq!(decoded.dimensions(), (120, 80));
    }

    #[test]
    fn transparency_is_composited_over_white() {
        let mut rgba = RgbaImage::new(3, 1);
        rgba.put_pixel(0, 0, Rgba([10, 20, 30, 0]));
        rgba.put_pixel(1, 0, Rgba([10, 20, 30, 255]));
        rgba.put_pixel(2, 0, Rgba([0, 0, 0, 128]));
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(rgba.as_raw(), 3, 1, image::ExtendedColorType::Rgba8)
            .unwrap();
        let decoded = decode(&png, &DecodeLimits::default()).unwrap();
        assert_eq!(decoded.get_pixel(0, 0), &Rgb([255, 255, 255]));
        assert_eq!(decoded.get_pixel(1, 0), &Rgb([10, 20, 30]));
        assert_eq!(decoded.get_pixel(2, 0), &Rgb([127, 127, 127]));
    }

    #[test]
    fn the_hand_built_png_is_valid_when_small() {
        // Proves the bomb fixture is a real PNG: at a harmless size it decodes.
        let png = png_with_header(33, 20);
        let image = decode(&png, &DecodeLimits::default()).unwrap();
        assert_eq!(image.dimensions(), (33, 20));
    }

    #[test]
    fn decompression_bomb_is_refused_from_its_header() {
        let bomb = png_with_header(100_000, 100_000);
        assert!(bomb.len() < 4096, "the bomb is a small file");
        let err = decode(&bomb, &DecodeLimits::default()).unwrap_err();
        assert!(matches!(
            err,
            ImagingError::TooLarge {
                width: 100_000,
                height: 100_000,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "image is 100000x100000 (10000000000 pixels); \
             the limit is 8192 px a side and 64000000 pixels"
        );
    }

    #[test]
    fn too_many_pixels_within_the_side_limit_is_refused() {
        let limits = DecodeLimits {
            max_pixels: 1_000_000,
            ..DecodeLimits::default()
        };
        let err = decode(&png_with_header(2000, 2000), &limits).unwrap_err();
        assert!(
            matches!(
                err,
                ImagingError::TooLarge {
                    pixels: 4_000_000,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn one_long_side_is_refused() {
        let err = decode(&png_with_header(9000, 1), &DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(err, ImagingError::TooLarge { width: 9000, .. }),
            "{err}"
        );
    }

    #[test]
    fn input_over_the_byte_limit_is_refused_before_parsing() {
        let png = png_bytes(&gradient(64, 64));
        let limits = DecodeLimits {
            max_input_bytes: png.len() - 1,
            ..DecodeLimits::default()
        };
        let err = decode(&png, &limits).unwrap_err();
        assert!(
            matches!(err, ImagingError::InputTooLarge { bytes, limit } if bytes == png.len() && limit == png.len() - 1),
            "{err}"
        );
        assert!(err.to_string().contains("bytes; the limit is"));
    }

    #[test]
    fn garbage_is_an_unknown_format() {
        let err = decode(b"<html>not an image</html>", &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, ImagingError::UnknownFormat { .. }), "{err}");
        assert!(err.to_string().contains("3c 68 74 6d"), "{err}");
    }

    #[test]
    fn empty_input_says_so() {
        let err = decode(&[], &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, ImagingError::EmptyInput));
    }

    #[test]
    fn truncated_png_is_a_decode_error() {
        let png = png_bytes(&gradient(64, 64));
        let err = decode(&png[..png.len() / 2], &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, ImagingError::Decode { .. }), "{err}");
        assert!(
            err.to_string().starts_with("could not decode Png image"),
            "{err}"
        );
    }

    #[test]
    fn known_but_undecodable_formats_are_named() {
        // A GIF header: recognised, but this crate decodes only PNG, JPEG and WebP.
        let err = decode(
            b"GIF89a\x01\x00\x01\x00\x00\x00\x00",
            &DecodeLimits::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, ImagingError::UnsupportedFormat { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("Gif"), "{err}");
    }
}
