//! Luma, the only plane the watermark lives in.

use image::RgbImage;

/// A picture's luma (BT.601 weights, the matrix AVIF and JPEG use for 8-bit RGB),
/// row-major, as decoded from any format.
#[derive(Clone, Debug)]
pub struct LumaPlane {
    pub width: u32,
    pub height: u32,
    pub data: Vec<f32>,
}

impl LumaPlane {
    /// A plane from a decoder's Y samples (any range: the detector only correlates,
    /// so a limited-range or 10-bit scale changes nothing).
    pub fn from_samples(width: u32, height: u32, data: Vec<f32>) -> Option<LumaPlane> {
        (data.len() as u64 == u64::from(width) * u64::from(height)).then_some(LumaPlane {
            width,
            height,
            data,
        })
    }
}

pub(crate) fn luma_of(p: &image::Rgb<u8>) -> f32 {
    0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2])
}

/// The luma of an RGB picture.
pub fn luma_plane(image: &RgbImage) -> LumaPlane {
    LumaPlane {
        width: image.width(),
        height: image.height(),
        data: image.pixels().map(luma_of).collect(),
    }
}
