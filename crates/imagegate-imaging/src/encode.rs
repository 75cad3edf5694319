//! Encoding variants for the CDN: AVIF (ravif/rav1e), JPEG and WebP (image-rs).
//!
//! WebP is encoded **losslessly**: image-rs 0.25 has no lossy WebP encoder, so
//! `RenderProfile::webp_quality` is not used and WebP files are much larger than
//! AVIF or JPEG. Prefer AVIF with a JPEG fallback for photographs.

use crate::ImagingError;
use image::{ExtendedColorType, ImageEncoder, RgbImage};
use imagegate_core::profile::{ImageFormat, RenderProfile};

/// Encodes `image` as `format` with the profile's quality settings, entirely on the
/// calling thread: ravif is built without its rayon threading, so the caller's
/// thread CPU time is the encode's true cost and parallelism (across variants) is
/// the caller's choice.
pub fn encode(
    image: &RgbImage,
    format: ImageFormat,
    profile: &RenderProfile,
) -> Result<Vec<u8>, ImagingError> {
    let (width, height) = image.dimensions();
    let fail = |reason: String| ImagingError::Encode {
        format,
        width,
        height,
        reason,
    };
    if width == 0 || height == 0 {
        return Err(fail("the image has no pixels".to_owned()));
    }
    match format {
        ImageFormat::Avif => encode_avif(image, profile).map_err(fail),
        ImageFormat::Jpeg => {
            let mut out = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, profile.jpeg.quality)
                .write_image(image.as_raw(), width, height, ExtendedColorType::Rgb8)
                .map_err(|e| fail(e.to_string()))?;
            Ok(out)
        }
        ImageFormat::Webp => {
            let mut out = Vec::new();
            image::codecs::webp::WebPEncoder::new_lossless(&mut out)
                .write_image(image.as_raw(), width, height, ExtendedColorType::Rgb8)
                .map_err(|e| fail(e.to_string()))?;
            Ok(out)
        }
    }
}

fn encode_avif(image: &RgbImage, profile: &RenderProfile) -> Result<Vec<u8>, String> {
    let settings = profile.avif;
    // ravif clamps quality itself but asserts on speed; refuse out-of-range values
    // here with a message instead of a panic.
    if !(1..=10).contains(&settings.speed) {
        return Err(format!("avif speed {} is outside 1..=10", settings.speed));
    }
    let bit_depth = match settings.bit_depth {
        8 => ravif::BitDepth::Eight,
        10 => ravif::BitDepth::Ten,
        other => return Err(format!("avif bit depth {other} is not 8 or 10")),
    };
    if !(1.0..=100.0).contains(&settings.quality) {
        return Err(format!(
            "avif quality {} is outside 1..=100",
            settings.quality
        ));
    }
    // A copy into ravif's pixel type costs well under 1% of an AV1 encode and keeps
    // this crate free of unsafe casts.
    let pixels: Vec<ravif::RGB8> = image
        .as_raw()
        .chunks_exact(3)
        .map(|p| ravif::RGB8::new(p[0], p[1], p[2]))
        .collect();
    let encoded = ravif::Encoder::new()
        .with_quality(settings.quality)
        .with_speed(settings.speed)
        .with_bit_depth(bit_depth)
        .encode_rgb(ravif::Img::new(
            &pixels[..],
            image.width() as usize,
            image.height() as usize,
        ))
        .map_err(|e| e.to_string())?;
    Ok(encoded.avif_file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode, DecodeLimits};
    use image::Rgb;
    use std::process::Command;

    fn profile() -> RenderProfile {
        RenderProfile {
            name: "test".to_owned(),
            variants: vec![256],
            formats: vec![ImageFormat::Avif],
            avif: Default::default(),
            jpeg: Default::default(),
            webp_quality: None,
            watermark: None,
            safety: Default::default(),
        }
    }

    fn picture(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            Rgb([
                (x * 255 / width) as u8,
                (y * 255 / height) as u8,
                ((x + y) % 64 * 4) as u8,
            ])
        })
    }

    fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
        assert_eq!(a.dimensions(), b.dimensions());
        let sum: u64 = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(&x, &y)| u64::from(x.abs_diff(y)))
            .sum();
        sum as f64 / a.as_raw().len() as f64
    }

    #[test]
    fn avif_has_an_avif_ftyp_box_and_decodes_with_avifdec() {
        let original = picture(96, 64);
        let avif = encode(&original, ImageFormat::Avif, &profile()).unwrap();
        assert_eq!(&avif[4..8], b"ftyp", "ISO-BMFF file starts with ftyp");
        assert_eq!(&avif[8..12], b"avif", "major brand is avif");

        let dir = tempfile::tempdir().unwrap();
        let avif_path = dir.path().join("out.avif");
        let png_path = dir.path().join("out.png");
        std::fs::write(&avif_path, &avif).unwrap();
        // avifdec (Debian: libavif-bin) is required: a missing decoder must fail this
        // test, not skip it, or AVIF output would go unchecked.
        let status = Command::new("avifdec")
            .arg(&avif_path)
            .arg(&png_path)
            .output()
            .expect("avifdec must be installed (apt-get install libavif-bin)");
        assert!(
            status.status.success(),
            "avifdec failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        let decoded = decode(&std::fs::read(&png_path).unwrap(), &DecodeLimits::default()).unwrap();
        assert_eq!(decoded.dimensions(), (96, 64));
        let diff = mean_abs_diff(&original, &decoded);
        assert!(diff < 12.0, "mean abs difference {diff} is too large");
    }

    #[test]
    fn avif_quality_changes_the_size() {
        let image = picture(128, 128);
        let mut low = profile();
        low.avif.quality = 20.0;
        let mut high = profile();
        high.avif.quality = 95.0;
        let small = encode(&image, ImageFormat::Avif, &low).unwrap();
        let large = encode(&image, ImageFormat::Avif, &high).unwrap();
        assert!(
            small.len() < large.len(),
            "{} vs {}",
            small.len(),
            large.len()
        );
    }

    #[test]
    fn avif_bad_speed_is_an_error_not_a_panic() {
        let mut p = profile();
        p.avif.speed = 0;
        let err = encode(&picture(16, 16), ImageFormat::Avif, &p).unwrap_err();
        assert!(err.to_string().contains("speed 0"), "{err}");
    }

    #[test]
    fn avif_bit_depth_is_the_profiles() {
        let dir = tempfile::tempdir().unwrap();
        for depth in [8u8, 10] {
            let mut p = profile();
            p.avif.bit_depth = depth;
            let path = dir.path().join(format!("{depth}.avif"));
            std::fs::write(
                &path,
                encode(&picture(64, 48), ImageFormat::Avif, &p).unwrap(),
            )
            .unwrap();
            let info = Command::new("avifdec")
                .arg("--info")
                .arg(&path)
                .output()
                .expect("avifdec must be installed (apt-get install libavif-bin)");
            let info = String::from_utf8_lossy(&info.stdout);
            let line = info
                .lines()
                .find(|l| l.contains("Bit Depth"))
                .unwrap_or_else(|| panic!("no bit depth in avifdec --info: {info}"));
            assert!(line.trim_end().ends_with(&format!(": {depth}")), "{line}");
        }
        let mut bad = profile();
        bad.avif.bit_depth = 12;
        let err = encode(&picture(16, 16), ImageFormat::Avif, &bad).unwrap_err();
        assert!(err.to_string().contains("bit depth 12"), "{err}");
    }

    #[test]
    fn jpeg_decodes_back_with_the_same_dimensions() {
        let original = picture(200, 120);
        let jpeg = encode(&original, ImageFormat::Jpeg, &profile()).unwrap();
        assert_eq!(&jpeg[..3], &[0xff, 0xd8, 0xff]);
        let decoded = decode(&jpeg, &DecodeLimits::default()).unwrap();
        assert_eq!(decoded.dimensions(), (200, 120));
        assert!(mean_abs_diff(&original, &decoded) < 8.0);
    }

    #[test]
    fn jpeg_quality_changes_the_size() {
        let image = picture(200, 120);
        let mut low = profile();
        low.jpeg.quality = 20;
        let mut high = profile();
        high.jpeg.quality = 95;
        let small = encode(&image, ImageFormat::Jpeg, &low).unwrap();
        let large = encode(&image, ImageFormat::Jpeg, &high).unwrap();
        assert!(small.len() < large.len());
    }

    #[test]
    fn webp_is_lossless() {
        let original = picture(50, 30);
        let webp = encode(&original, ImageFormat::Webp, &profile()).unwrap();
        assert_eq!(&webp[..4], b"RIFF");
        assert_eq!(&webp[8..12], b"WEBP");
        assert_eq!(decode(&webp, &DecodeLimits::default()).unwrap(), original);
    }

    #[test]
    fn empty_image_is_an_encode_error() {
        let err = encode(&RgbImage::new(0, 0), ImageFormat::Jpeg, &profile()).unwrap_err();
        assert!(matches!(err, ImagingError::Encode { .. }));
    }
}
