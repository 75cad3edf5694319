//! A strong, fast Gaussian-like blur for the safety stage: three box blurs
//! approximate a Gaussian (central limit theorem), and each box pass is a running
//! sum, so the cost does not grow with the radius.

use image::RgbImage;

/// Blurs with sigma = `sigma_fraction` × image width (e.g. 0.03 makes a 1024 px wide
/// image unrecognisable in detail while keeping its overall colours). A fraction of
/// zero, a negative one or NaN returns an unchanged copy.
pub fn blur(image: &RgbImage, sigma_fraction: f32) -> RgbImage {
    let (width, height) = image.dimensions();
    let sigma = f64::from(sigma_fraction) * f64::from(width);
    if sigma.is_nan() || sigma <= 0.0 || width == 0 || height == 0 {
        return image.clone();
    }
    let mut a = image.as_raw().clone();
    let mut b = vec![0u8; a.len()];
    let (w, h) = (width as usize, height as usize);
    for radius in box_radii(sigma) {
        box_rows(&a, &mut b, w, h, radius);
        box_columns(&b, &mut a, w, h, radius);
    }
    RgbImage::from_raw(width, height, a).expect("buffer keeps the source's dimensions")
}

/// Radii of three boxes whose successive application has standard deviation `sigma`
/// (Kovesi, "Fast almost-Gaussian filtering", 2010).
fn box_radii(sigma: f64) -> [usize; 3] {
    const N: f64 = 3.0;
    let ideal = (12.0 * sigma * sigma / N + 1.0).sqrt();
    let mut lower = ideal.floor() as i64;
    if lower % 2 == 0 {
        lower -= 1;
    }
    let lower = lower.max(1);
    let upper = lower + 2;
    let lf = lower as f64;
    let m = ((12.0 * sigma * sigma - N * lf * lf - 4.0 * N * lf - 3.0 * N) / (-4.0 * lf - 4.0))
        .round() as i64;
    let mut radii = [0usize; 3];
    for (i, r) in radii.iter_mut().enumerate() {
        let size = if (i as i64) < m { lower } else { upper };
        *r = ((size - 1) / 2) as usize;
    }
    radii
}

/// Horizontal box blur of an RGB buffer, clamping at the edges.
fn box_rows(src: &[u8], dst: &mut [u8], width: usize, height: usize, radius: usize) {
    let div = (2 * radius + 1) as u32;
    let last = width - 1;
    for y in 0..height {
        let row = &src[y * width * 3..(y + 1) * width * 3];
        let out = &mut dst[y * width * 3..(y + 1) * width * 3];
        for c in 0..3 {
            let at = |x: usize| u32::from(row[x.min(last) * 3 + c]);
            let mut sum = at(0) * (radius as u32 + 1);
            for x in 1..=radius {
                sum += at(x);
            }
            for x in 0..width {
                out[x * 3 + c] = ((sum + div / 2) / div) as u8;
                sum = sum + at(x + radius + 1) - at(x.saturating_sub(radius));
            }
        }
    }
}

/// Vertical box blur, walking rows so memory is read in order: one running sum per
/// column and channel.
fn box_columns(src: &[u8], dst: &mut [u8], width: usize, height: usize, radius: usize) {
    let div = (2 * radius + 1) as u32;
    let stride = width * 3;
    let last = height - 1;
    let row = |y: usize| &src[y.min(last) * stride..(y.min(last) + 1) * stride];
    let mut sums: Vec<u32> = row(0)
        .iter()
        .map(|&v| u32::from(v) * (radius as u32 + 1))
        .collect();
    for y in 1..=radius {
        for (s, &v) in sums.iter_mut().zip(row(y)) {
            *s += u32::from(v);
        }
    }
    for y in 0..height {
        let out = &mut dst[y * stride..(y + 1) * stride];
        for (o, &s) in out.iter_mut().zip(&sums) {
            *o = ((s + div / 2) / div) as u8;
        }
        let add = row(y + radius + 1);
        let remove = row(y.saturating_sub(radius));
        for ((s, &a), &r) in sums.iter_mut().zip(add).zip(remove) {
            *s = *s + u32::from(a) - u32::from(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn stripes(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, _| {
            if x % 16 < 8 {
                Rgb([255, 0, 255])
            } else {
                Rgb([0, 255, 0])
            }
        })
    }

    #[test]
    fn box_radii_match_sigma() {
        for sigma in [1.0, 5.0, 30.72] {
            let radii = box_radii(sigma);
            // Variance of a box of width w is (w² - 1) / 12; variances add.
            let variance: f64 = radii
                .iter()
                .map(|&r| {
                    let w = (2 * r + 1) as f64;
                    (w * w - 1.0) / 12.0
                })
                .sum();
            assert!(
                (variance.sqrt() - sigma).abs() < 0.5,
                "sigma {sigma}: {radii:?}"
            );
        }
    }

    #[test]
    fn flat_colour_is_unchanged() {
        let src = RgbImage::from_pixel(100, 80, Rgb([12, 200, 99]));
        assert_eq!(blur(&src, 0.05), src);
    }

    #[test]
    fn zero_sigma_is_a_copy() {
        let src = stripes(64, 64);
        assert_eq!(blur(&src, 0.0), src);
        assert_eq!(blur(&src, f32::NAN), src);
    }

    #[test]
    fn strong_blur_averages_out_detail() {
        let src = stripes(256, 64);
        let out = blur(&src, 0.03);
        assert_eq!(out.dimensions(), src.dimensions());
        // 8 px stripes under sigma ≈ 7.7 px average to the mid colour.
        for p in out.pixels().skip(64).take(128) {
            for (c, mid) in p.0.iter().zip([128u8, 128, 128]) {
                assert!(c.abs_diff(mid) < 20, "{p:?}");
            }
        }
    }

    #[test]
    fn tiny_images_survive_large_radii() {
        let src = stripes(3, 2);
        let out = blur(&src, 5.0);
        assert_eq!(out.dimensions(), (3, 2));
    }
}
