//! Downscaling to variant widths with `fast_image_resize` (Lanczos3). Never upscales:
//! a variant wider than the source would only add bytes, not detail.

use crate::ImagingError;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

/// The height that keeps `width`×`height`'s aspect ratio at `target_width`,
/// rounded to the nearest pixel and at least 1.
pub fn scaled_height(width: u32, height: u32, target_width: u32) -> u32 {
    let h = (u64::from(height) * u64::from(target_width) * 2 + u64::from(width))
        / (2 * u64::from(width.max(1)));
    u32::try_from(h).unwrap_or(u32::MAX).max(1)
}

/// Resizes `src` to `target_width` (aspect ratio kept). If `target_width` is at
/// least the source width, returns an unchanged copy.
pub fn resize(src: &RgbImage, target_width: u32) -> Result<RgbImage, ImagingError> {
    resize_with(&mut Resizer::new(), src, target_width)
}

/// Resizes `src` to each of `widths` (each from the source, not from the previous
/// variant, so errors do not compound), reusing one resizer's buffers.
/// The output is in the order of `widths`.
pub fn resize_all(src: &RgbImage, widths: &[u32]) -> Result<Vec<RgbImage>, ImagingError> {
    let mut resizer = Resizer::new();
    widths
        .iter()
        .map(|&w| resize_with(&mut resizer, src, w))
        .collect()
}

fn resize_with(
    resizer: &mut Resizer,
    src: &RgbImage,
    target_width: u32,
) -> Result<RgbImage, ImagingError> {
    if target_width == 0 {
        return Err(ImagingError::InvalidWidth {
            width: target_width,
        });
    }
    let (width, height) = src.dimensions();
    if target_width >= width || height == 0 {
        return Ok(src.clone());
    }
    let target_height = scaled_height(width, height, target_width);
    let mut dst = RgbImage::new(target_width, target_height);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    resizer
        .resize(src, &mut dst, &options)
        .map_err(|e| ImagingError::Resize {
            from_width: width,
            from_height: height,
            to_width: target_width,
            to_height: target_height,
            reason: e.to_string(),
        })?;
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;
    use proptest::prelude::*;

    fn checkerboard(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            if (x / 8 + y / 8) % 2 == 0 {
                Rgb([250, 250, 250])
            } else {
                Rgb([5, 5, 5])
            }
        })
    }

    #[test]
    fn halves_keeping_aspect_ratio() {
        let out = resize(&checkerboard(1024, 768), 512).unwrap();
        assert_eq!(out.dimensions(), (512, 384));
    }

    #[test]
    fn never_upscales() {
        let src = checkerboard(300, 200);
        let out = resize(&src, 768).unwrap();
        assert_eq!(out, src);
        assert_eq!(resize(&src, 300).unwrap(), src);
    }

    #[test]
    fn zero_width_is_refused() {
        let err = resize(&checkerboard(10, 10), 0).unwrap_err();
        assert!(matches!(err, ImagingError::InvalidWidth { width: 0 }));
    }

    #[test]
    fn a_flat_colour_stays_that_colour() {
        let src = RgbImage::from_pixel(640, 480, Rgb([200, 100, 50]));
        let out = resize(&src, 100).unwrap();
        assert!(out.pixels().all(|p| p == &Rgb([200, 100, 50])));
    }

    #[test]
    fn very_wide_images_keep_at_least_one_row() {
        let out = resize(&checkerboard(1000, 1), 10).unwrap();
        assert_eq!(out.dimensions(), (10, 1));
    }

    #[test]
    fn resize_all_resizes_each_from_the_source() {
        let src = checkerboard(1024, 1024);
        let all = resize_all(&src, &[256, 512, 2048]).unwrap();
        let dims: Vec<_> = all.iter().map(|i| i.dimensions()).collect();
        assert_eq!(dims, vec![(256, 256), (512, 512), (1024, 1024)]);
        assert_eq!(all[0], resize(&src, 256).unwrap(), "same as a lone resize");
    }

    #[test]
    fn scaled_height_rounds_to_nearest() {
        assert_eq!(scaled_height(1024, 768, 512), 384);
        assert_eq!(scaled_height(3, 2, 2), 1); // 1.33 → 1
        assert_eq!(scaled_height(3, 5, 2), 3); // 3.33 → 3
        assert_eq!(scaled_height(4, 3, 2), 2); // 1.5 → 2
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn output_is_never_larger_and_keeps_aspect(
            width in 1u32..400,
            height in 1u32..400,
            target in 1u32..600,
        ) {
            let src = RgbImage::new(width, height);
            let out = resize(&src, target).unwrap();
            let (w, h) = out.dimensions();
            prop_assert!(w <= width && h <= height);
            prop_assert_eq!(w, target.min(width));
            let exact = f64::from(height) * f64::from(w) / f64::from(width);
            prop_assert!((f64::from(h) - exact).abs() <= 1.0, "{}x{} -> {}x{}", width, height, w, h);
        }
    }
}
