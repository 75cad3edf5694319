//! Encoding variants for the CDN: AVIF (libaom through `crate::aom`, or ravif/rav1e,
//! per profile), JPEG and WebP (image-rs).
//!
//! WebP is encoded **losslessly**: image-rs 0.25 has no lossy WebP encoder, so
//! `RenderProfile::webp_quality` is not used and WebP files are much larger than
//! AVIF or JPEG. Prefer AVIF with a JPEG fallback for photographs.

use crate::ImagingError;
use image::{ExtendedColorType, ImageEncoder, RgbImage};
use imagegate_core::profile::{AvifEncoder, AvifSettings, ImageFormat, RenderProfile};
use std::num::NonZeroUsize;

/// Whether this build can encode AVIF with `encoder` (libaom needs the `aom`
/// feature). Configuration checks this at start-up, so a profile naming a missing
/// encoder stops the service with a message instead of failing every request.
pub fn avif_encoder_available(encoder: AvifEncoder) -> bool {
    match encoder {
        AvifEncoder::Aom => cfg!(feature = "aom"),
        AvifEncoder::Rav1e => true,
    }
}

/// Encodes `image` as `format` with the profile's quality settings, entirely on the
/// calling thread: libaom gets one thread and ravif is built without its rayon
/// threading, so the caller's thread CPU time is the encode's true cost and
/// parallelism (across variants) is the caller's choice.
pub fn encode(
    image: &RgbImage,
    format: ImageFormat,
    profile: &RenderProfile,
) -> Result<Vec<u8>, ImagingError> {
    encode_threaded(image, format, profile, NonZeroUsize::MIN)
}

/// [`encode`], except that a libaom AVIF encode may use up to `threads` threads: the
/// calling one plus threads libaom starts and joins before this returns. Their CPU
/// time is not on the calling thread's clock, so a caller that accounts CPU must
/// count the threads this call starts too (a perf task clock that child threads
/// inherit does). JPEG, WebP and rav1e encodes stay on the calling thread.
pub fn encode_threaded(
    image: &RgbImage,
    format: ImageFormat,
    profile: &RenderProfile,
    threads: NonZeroUsize,
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
        ImageFormat::Avif => encode_avif(image, profile, threads).map_err(fail),
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

fn encode_avif(
    image: &RgbImage,
    profile: &RenderProfile,
    threads: NonZeroUsize,
) -> Result<Vec<u8>, String> {
    let settings = profile.avif;
    // ravif clamps quality itself but asserts on speed; refuse out-of-range values
    // here with a message instead of a panic.
    let speeds = settings.encoder.speeds();
    if !speeds.contains(&settings.speed) {
        return Err(format!(
            "avif speed {} is outside {}..={} for {}",
            settings.speed,
            speeds.start(),
            speeds.end(),
            settings.encoder
        ));
    }
    if !(1.0..=100.0).contains(&settings.quality) {
        return Err(format!(
            "avif quality {} is outside 1..=100",
            settings.quality
        ));
    }
    match settings.encoder {
        AvifEncoder::Aom => encode_aom(image, &settings, threads),
        AvifEncoder::Rav1e => encode_rav1e(image, &settings),
    }
}

#[cfg(feature = "aom")]
fn encode_aom(
    image: &RgbImage,
    settings: &AvifSettings,
    threads: NonZeroUsize,
) -> Result<Vec<u8>, String> {
    crate::aom::encode(image, settings, threads)
}

#[cfg(not(feature = "aom"))]
fn encode_aom(_: &RgbImage, _: &AvifSettings, _: NonZeroUsize) -> Result<Vec<u8>, String> {
    Err(
        "this build has no libaom encoder (imagegate-imaging's `aom` feature); \
         set avif.encoder = \"rav1e\""
            .to_owned(),
    )
}

fn encode_rav1e(image: &RgbImage, settings: &AvifSettings) -> Result<Vec<u8>, String> {
    let bit_depth = match settings.bit_depth {
        8 => ravif::BitDepth::Eight,
        10 => ravif::BitDepth::Ten,
        other => return Err(format!("avif bit depth {other} is not 8 or 10")),
    };
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
            provenance: Default::default(),
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

    const ENCODERS: [AvifEncoder; 2] = [AvifEncoder::Aom, AvifEncoder::Rav1e];

    fn with_encoder(encoder: AvifEncoder) -> RenderProfile {
        let mut p = profile();
        p.avif.encoder = encoder;
        p
    }

    /// `avifdec --info` of an AVIF file, and the file decoded back to RGB by
    /// avifdec (Debian: libavif-bin), an independent decoder (dav1d). A missing
    /// avifdec fails the test rather than skipping it, or AVIF output would go
    /// unchecked.
    fn avifdec(avif: &[u8]) -> (String, RgbImage) {
        let dir = tempfile::tempdir().unwrap();
        let avif_path = dir.path().join("out.avif");
        let png_path = dir.path().join("out.png");
        std::fs::write(&avif_path, avif).unwrap();
        let run = |args: &[&std::path::Path]| {
            let out = Command::new("avifdec")
                .args(args)
                .output()
                .expect("avifdec must be installed (apt-get install libavif-bin)");
            assert!(
                out.status.success(),
                "avifdec failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let info = run(&[std::path::Path::new("--info"), &avif_path]);
        run(&[&avif_path, &png_path]);
        let decoded = decode(&std::fs::read(&png_path).unwrap(), &DecodeLimits::default()).unwrap();
        (info, decoded)
    }

    fn info_field<'a>(info: &'a str, field: &str) -> &'a str {
        info.lines()
            .find(|l| l.contains(field))
            .and_then(|l| l.split(':').nth(1))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {field:?} in avifdec --info: {info}"))
    }

    #[test]
    fn avif_has_an_avif_ftyp_box_and_decodes_with_avifdec() {
        // Odd sizes too: 4:2:0 chroma planes round up, and a 1x1 picture is legal.
        for encoder in ENCODERS {
            for (width, height) in [(96, 64), (97, 63), (1, 1)] {
                let original = picture(width, height);
                let avif = encode(&original, ImageFormat::Avif, &with_encoder(encoder)).unwrap();
                assert_eq!(&avif[4..8], b"ftyp", "ISO-BMFF file starts with ftyp");
                assert_eq!(&avif[8..12], b"avif", "major brand is avif");
                let (info, decoded) = avifdec(&avif);
                assert_eq!(decoded.dimensions(), (width, height), "{encoder}");
                assert_eq!(info_field(&info, "Range"), "Full", "{encoder}: {info}");
                assert_eq!(
                    info_field(&info, "Matrix Coeffs."),
                    "6",
                    "{encoder}: {info}"
                );
                let diff = mean_abs_diff(&original, &decoded);
                assert!(
                    diff < 12.0,
                    "{encoder} {width}x{height}: mean abs difference {diff}"
                );
            }
        }
    }

    #[test]
    fn aom_on_more_threads_writes_tile_columns_that_decode_like_one_thread() {
        let p = with_encoder(AvifEncoder::Aom);
        for (width, height) in [(768, 512), (601, 97)] {
            let original = picture(width, height);
            let one = encode(&original, ImageFormat::Avif, &p).unwrap();
            let (_, one_decoded) = avifdec(&one);
            for threads in [2, 4] {
                let threads = NonZeroUsize::new(threads).unwrap();
                let avif = encode_threaded(&original, ImageFormat::Avif, &p, threads).unwrap();
                // Tile columns change the bitstream: this is the threaded path.
                assert_ne!(avif, one, "{width}x{height} on {threads} threads");
                let (_, decoded) = avifdec(&avif);
                assert_eq!(decoded.dimensions(), (width, height));
                let diff = mean_abs_diff(&one_decoded, &decoded);
                assert!(
                    diff < 2.0,
                    "{width}x{height} on {threads} threads: {diff} from one thread's picture"
                );
            }
        }
    }

    #[test]
    fn aom_writes_4_2_0_and_rav1e_4_4_4() {
        let picture = picture(64, 64);
        let aom = encode(&picture, ImageFormat::Avif, &with_encoder(AvifEncoder::Aom)).unwrap();
        assert_eq!(info_field(&avifdec(&aom).0, "Format"), "YUV420");
        let rav1e = encode(
            &picture,
            ImageFormat::Avif,
            &with_encoder(AvifEncoder::Rav1e),
        )
        .unwrap();
        assert_eq!(info_field(&avifdec(&rav1e).0, "Format"), "YUV444");
        assert_ne!(aom, rav1e, "the encoder decides the bytes");
    }

    #[test]
    fn avif_quality_changes_the_size() {
        let image = picture(128, 128);
        for encoder in ENCODERS {
            let mut low = with_encoder(encoder);
            low.avif.quality = 20.0;
            let mut high = with_encoder(encoder);
            high.avif.quality = 95.0;
            let small = encode(&image, ImageFormat::Avif, &low).unwrap();
            let large = encode(&image, ImageFormat::Avif, &high).unwrap();
            assert!(
                small.len() < large.len(),
                "{encoder}: {} vs {}",
                small.len(),
                large.len()
            );
        }
    }

    #[cfg(feature = "aom")]
    #[test]
    fn aom_quality_maps_to_libavif_quantizers() {
        assert_eq!(crate::aom::cq_level(100.0), 0);
        assert_eq!(crate::aom::cq_level(60.0), 25);
        assert_eq!(crate::aom::cq_level(1.0), 62);
    }

    #[test]
    fn avif_bad_speed_is_an_error_not_a_panic() {
        for (encoder, speed) in [(AvifEncoder::Rav1e, 0), (AvifEncoder::Aom, 10)] {
            let mut p = with_encoder(encoder);
            p.avif.speed = speed;
            let err = encode(&picture(16, 16), ImageFormat::Avif, &p).unwrap_err();
            assert!(err.to_string().contains(&format!("speed {speed}")), "{err}");
        }
    }

    #[test]
    fn avif_bit_depth_is_the_profiles() {
        for encoder in ENCODERS {
            for depth in [8u8, 10] {
                let mut p = with_encoder(encoder);
                p.avif.bit_depth = depth;
                let original = picture(64, 48);
                let (info, decoded) = avifdec(&encode(&original, ImageFormat::Avif, &p).unwrap());
                assert_eq!(
                    info_field(&info, "Bit Depth"),
                    depth.to_string(),
                    "{encoder}"
                );
                let diff = mean_abs_diff(&original, &decoded);
                assert!(
                    diff < 12.0,
                    "{encoder} {depth}-bit: mean abs difference {diff}"
                );
            }
            let mut bad = with_encoder(encoder);
            bad.avif.bit_depth = 12;
            let err = encode(&picture(16, 16), ImageFormat::Avif, &bad).unwrap_err();
            assert!(err.to_string().contains("bit depth 12"), "{err}");
        }
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

    #[cfg(not(feature = "aom"))]
    #[test]
    fn without_the_aom_feature_aom_profiles_are_a_clear_error() {
        assert!(!avif_encoder_available(AvifEncoder::Aom));
        let err = encode(
            &picture(16, 16),
            ImageFormat::Avif,
            &with_encoder(AvifEncoder::Aom),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no libaom encoder"), "{err}");
    }

    #[test]
    fn empty_image_is_an_encode_error() {
        let err = encode(&RgbImage::new(0, 0), ImageFormat::Jpeg, &profile()).unwrap_err();
        assert!(matches!(err, ImagingError::Encode { .. }));
    }
}
