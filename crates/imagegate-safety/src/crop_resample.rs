//! The model input straight from the source pixels: Pillow's BILINEAR resize to
//! 256x256 followed by the central 224x224 crop, computing only the pixels the crop
//! keeps and writing BGR, mean-subtracted `f32`s without an intermediate image.
//!
//! The result equals [`crate::pillow_resample::resize_rgb8`] + crop bit for bit: the
//! coefficients are the same (computed over the full 256 grid, then only the cropped
//! positions are used), the horizontal pass rounds to `u8` exactly as Pillow does, and
//! the vertical pass reads those rounded rows. What is skipped is only work whose
//! result the crop throws away: the 32 outer columns and rows, and the input rows no
//! cropped output row reads.
//!
//! Both passes have a portable kernel and, on x86_64, an AVX2 one chosen at run time.
//! Input rows are resized horizontally in blocks of 8 into a small ring of rows, and
//! each output row is written as soon as the rows it reads are there, so the rounded
//! intermediate rows never leave the cache.

#[cfg(target_arch = "x86_64")]
mod avx2;

use crate::pillow_resample::{clip8, coefficients, horizontal_pixel, HALF};
use crate::preprocess::{CROP, MEAN_BGR, RESIZE};
use std::ops::Range;

const OFFSET: usize = ((RESIZE - CROP) / 2) as usize;
const CROP_SIDE: usize = CROP as usize;
/// Bytes of one horizontally resized (and cropped) row, BGR.
const ROW_BYTES: usize = CROP_SIDE * 3;
/// Input rows resized horizontally at once (the AVX2 kernel's lane count).
const BLOCK_ROWS: usize = 8;

/// The taps one axis of the crop needs: for each of the 224 kept output positions, the
/// first input index and its weights, as Pillow computes them for the 256 grid.
/// Zero weights at either end are dropped: they add nothing, and odd integer scale
/// factors give every position one.
struct AxisTaps {
    kept: Vec<Kept>,
    weights: Vec<i32>,
    /// Input indices any kept position reads.
    span: Range<usize>,
}

struct Kept {
    first: usize,
    /// Where this position's weights are in [`AxisTaps::weights`].
    weights: Range<usize>,
}

impl AxisTaps {
    fn new(in_size: usize) -> AxisTaps {
        let all = coefficients(in_size, RESIZE as usize);
        let mut kept = Vec::with_capacity(CROP_SIDE);
        let mut weights = Vec::new();
        for out in OFFSET..OFFSET + CROP_SIDE {
            let (mut first, mut w) = all.taps(out);
            while let [0, rest @ ..] = w {
                (first, w) = (first + 1, rest);
            }
            while let [rest @ .., 0] = w {
                w = rest;
            }
            let start = weights.len();
            weights.extend_from_slice(w);
            kept.push(Kept {
                first,
                weights: start..weights.len(),
            });
        }
        let start = kept.iter().map(|k| k.first).min().unwrap_or(0);
        let end = kept
            .iter()
            .map(|k| k.first + k.weights.len())
            .max()
            .unwrap_or(0);
        AxisTaps {
            kept,
            weights,
            span: start..end,
        }
    }

    /// First input index and weights of kept position `i` (0..224).
    fn get(&self, i: usize) -> (usize, &[i32]) {
        let kept = &self.kept[i];
        (kept.first, &self.weights[kept.weights.clone()])
    }

    /// The most input indices one kept position reads.
    fn max_len(&self) -> usize {
        self.kept.iter().map(|k| k.weights.len()).max().unwrap_or(0)
    }
}

/// Which kernels to run; tests pin one to compare it with the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernels {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2(avx2::Avx2),
}

impl Kernels {
    /// The fastest kernels this CPU runs.
    pub(crate) fn detect() -> Kernels {
        #[cfg(target_arch = "x86_64")]
        if let Some(avx2) = avx2::Avx2::detect() {
            return Kernels::Avx2(avx2);
        }
        Kernels::Portable
    }
}

/// Horizontally resized rows, row `r` in slot `(r - first) % slots`. Blocks start at
/// multiples of [`BLOCK_ROWS`] from `first` and `slots` is a power of two no smaller,
/// so a block's rows are contiguous and a slot is a mask away.
struct Ring {
    buf: Vec<u8>,
    slots: usize,
    first: usize,
}

impl Ring {
    /// Holds every row the output rows not yet written can read, when blocks are
    /// resized in order and each output row is written once its rows are there: an
    /// output row still pending after a block ends reads no row older than that
    /// block's end minus the block and a kernel's length.
    fn new(first: usize, kernel_len: usize) -> Ring {
        let slots = (kernel_len + 2 * BLOCK_ROWS).next_power_of_two();
        Ring {
            buf: vec![0; slots * ROW_BYTES],
            slots,
            first,
        }
    }

    fn start_of(&self, row: usize) -> usize {
        ((row - self.first) & (self.slots - 1)) * ROW_BYTES
    }

    fn block_mut(&mut self, rows: Range<usize>) -> &mut [u8] {
        let start = self.start_of(rows.start);
        &mut self.buf[start..start + rows.len() * ROW_BYTES]
    }
}

/// Resizes packed RGB8 `src` (`width` x `height`, both non-zero) as Pillow would to
/// 256x256, crops the central 224x224 and writes it to `out` as BGR minus
/// [`MEAN_BGR`], `[224, 224, 3]` row-major.
pub(crate) fn resample_crop_into(
    kernels: Kernels,
    src: &[u8],
    width: usize,
    height: usize,
    out: &mut [f32],
) {
    assert!(width > 0 && height > 0, "cannot resize an empty image");
    assert_eq!(
        src.len(),
        width * height * 3,
        "src is not width x height RGB"
    );
    assert_eq!(
        out.len(),
        CROP_SIDE * ROW_BYTES,
        "out is not one model input"
    );
    let row_len = width * 3;
    let horizontal = AxisTaps::new(width);
    let vertical = AxisTaps::new(height);
    let rows = vertical.span.clone();
    let mut ring = Ring::new(rows.start, vertical.max_len());
    #[cfg(target_arch = "x86_64")]
    let mut avx2_horizontal = match kernels {
        Kernels::Avx2(avx2) => Some(avx2::Horizontal::new(avx2, &horizontal)),
        Kernels::Portable => None,
    };
    let mut out_rows = out.chunks_exact_mut(ROW_BYTES).enumerate().peekable();
    let mut row_starts = Vec::new();
    for start in rows.clone().step_by(BLOCK_ROWS) {
        let block = start..(start + BLOCK_ROWS).min(rows.end);
        let block_src = &src[block.start * row_len..block.end * row_len];
        let dst = ring.block_mut(block.clone());
        match kernels {
            Kernels::Portable => horizontal_portable(block_src, row_len, &horizontal, dst),
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2(_) => {
                let upcoming_end = (block.end + BLOCK_ROWS).min(rows.end);
                let upcoming = &src[block.end * row_len..upcoming_end * row_len];
                avx2_horizontal
                    .as_mut()
                    .expect("made for AVX2 kernels")
                    .resize(block_src, upcoming, dst);
            }
        }
        while let Some((y, out_row)) = out_rows.next_if(|(y, _)| {
            let (first, weights) = vertical.get(*y);
            first + weights.len() <= block.end
        }) {
            let (first, weights) = vertical.get(y);
            row_starts.clear();
            row_starts.extend((first..first + weights.len()).map(|r| ring.start_of(r)));
            match kernels {
                Kernels::Portable => vertical_portable(&ring.buf, &row_starts, weights, out_row),
                #[cfg(target_arch = "x86_64")]
                Kernels::Avx2(avx2) => {
                    avx2::vertical(avx2, &ring.buf, &row_starts, weights, out_row)
                }
            }
        }
    }
    assert!(out_rows.next().is_none(), "every output row is written");
}

/// Resizes the input rows `rows` (`row_len` bytes each) horizontally into `dst`.
fn horizontal_portable(rows: &[u8], row_len: usize, taps: &AxisTaps, dst: &mut [u8]) {
    for (in_row, out_row) in rows
        .chunks_exact(row_len)
        .zip(dst.chunks_exact_mut(ROW_BYTES))
    {
        for (x, out) in out_row.chunks_exact_mut(3).enumerate() {
            let (first, weights) = taps.get(x);
            let px = &in_row[first * 3..(first + weights.len()) * 3];
            let [r, g, b] = horizontal_pixel(weights, px);
            out.copy_from_slice(&[b, g, r]);
        }
    }
}

/// One output row from the resized rows starting at `row_starts` in `ring`, one per
/// weight.
fn vertical_portable(ring: &[u8], row_starts: &[usize], weights: &[i32], out: &mut [f32]) {
    let mut acc = [HALF; ROW_BYTES];
    for (w, &start) in weights.iter().zip(row_starts) {
        for (a, p) in acc.iter_mut().zip(&ring[start..start + ROW_BYTES]) {
            *a += i32::from(*p) * w;
        }
    }
    for (i, (o, a)) in out.iter_mut().zip(&acc).enumerate() {
        *o = f32::from(clip8(*a)) - MEAN_BGR[i % 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::{preprocess_reference_into, INPUT_LEN};
    use image::RgbImage;
    use proptest::prelude::*;

    /// Every kernel set this machine can run. On x86_64 AVX2 must be among them: CI and
    /// development machines have it, and without it the SIMD path would go untested.
    fn kernels_here() -> Vec<Kernels> {
        #[cfg(target_arch = "x86_64")]
        {
            let detected = Kernels::detect();
            assert!(
                matches!(detected, Kernels::Avx2(_)),
                "this x86_64 machine lacks AVX2, so the AVX2 kernels cannot be tested"
            );
            vec![Kernels::Portable, detected]
        }
        #[cfg(not(target_arch = "x86_64"))]
        vec![Kernels::Portable]
    }

    /// Deterministic noise with smooth and sharp parts, so rounding is exercised.
    fn test_image(width: u32, height: u32, seed: u64) -> RgbImage {
        let mut state = seed | 1;
        RgbImage::from_fn(width, height, |x, y| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let n = state.to_le_bytes();
            if (x / 9 + y / 13) % 3 == 0 {
                image::Rgb([n[0], n[1], n[2]])
            } else {
                image::Rgb([
                    (x * 255 / width) as u8,
                    (y * 255 / height) as u8,
                    n[3] | 0xe0,
                ])
            }
        })
    }

    fn assert_kernels_match_reference(img: &RgbImage) {
        let mut reference = vec![0.0_f32; INPUT_LEN];
        preprocess_reference_into(img, &mut reference).expect("reference preprocess");
        for kernels in kernels_here() {
            let mut fast = vec![f32::NAN; INPUT_LEN];
            resample_crop_into(
                kernels,
                img.as_raw(),
                img.width() as usize,
                img.height() as usize,
                &mut fast,
            );
            if let Some(i) = (0..INPUT_LEN).find(|&i| fast[i].to_bits() != reference[i].to_bits()) {
                let (y, x, c) = (i / ROW_BYTES, i % ROW_BYTES / 3, i % 3);
                panic!(
                    "{kernels:?} differs from the reference on a {}x{} image at row {y}, \
                     column {x}, channel {c}: {} vs {}",
                    img.width(),
                    img.height(),
                    fast[i],
                    reference[i]
                );
            }
        }
    }

    #[test]
    fn common_sizes_match_the_reference() {
        let sizes = [
            (1024, 1024),
            (1024, 1536),
            (1792, 1024),
            (1152, 896),
            (1, 1),
            (3, 700),
            (256, 256),
            (256, 1000),
            (1000, 256),
            (224, 224),
            (2100, 7),
            (8, 2100),
            (2048, 2048),
            // A downscale by 17.6: 37-tap kernels.
            (4500, 40),
        ];
        for (i, (w, h)) in sizes.into_iter().enumerate() {
            assert_kernels_match_reference(&test_image(w, h, i as u64));
        }
    }

    #[test]
    fn extreme_pixel_values_match_the_reference() {
        // All-255 areas are where rounded weight sums above 1.0 would overflow 8 bits.
        for (w, h) in [(1024, 1024), (1153, 897), (300, 200), (2048, 17)] {
            let img = RgbImage::from_fn(w, h, |x, y| {
                let v = if (x / 3 + y / 5) % 2 == 0 { 255 } else { 0 };
                image::Rgb([v, 255 - v, 255])
            });
            assert_kernels_match_reference(&img);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Scale factors below 1, non-integer, integer and above 8 (kernels of up to
        /// 19 taps), and widths whose last 32-byte loads would run past the row.
        #[test]
        fn any_size_matches_the_reference(
            width in prop_oneof![1_u32..=300, 300_u32..=2100],
            height in prop_oneof![1_u32..=300, 300_u32..=2100],
            seed in any::<u64>(),
        ) {
            assert_kernels_match_reference(&test_image(width, height, seed));
        }
    }
}
