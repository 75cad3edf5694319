//! Putting the pattern into a variant's pixels.

use super::luma::luma_plane;
use super::{cell_of, grid, Payload, WatermarkKey, CODED_BITS, GRID};
use image::RgbImage;

/// A cell's contrast (luma standard deviation) is clamped to this range before it
/// scales the cell's chip: flat cells still carry a little, and one busy cell does
/// not take the whole budget.
const MASK_MIN: f32 = 1.5;
const MASK_MAX: f32 = 12.0;

/// Marks `image` in place with `payload` under `key`, at the strength whose
/// PSNR against the unmarked picture is about `psnr_db` (before rounding to
/// 8 bits, which adds a little noise of its own). Call it after the variant's last
/// resize, before encoding.
///
/// The embedding is informed: it measures how the picture itself already
/// correlates with each bit's chips (what the detector will see as noise) and
/// gives each bit the extra gain that cancels a correlation against it, then
/// scales everything to the PSNR budget. Cancelling costs little energy (the
/// picture's correlation grows with the square root of a bit's cells, the mark's
/// linearly), and removes most of the picture's interference.
pub fn embed(image: &mut RgbImage, key: &WatermarkKey, payload: Payload, psnr_db: f32) {
    let (w, h) = image.dimensions();
    if w == 0 || h == 0 {
        return;
    }
    let pattern = key.pattern();
    let bits = payload.coded_bits();
    let sign = |k: usize| {
        if bits[usize::from(pattern.bit[k])] {
            1.0
        } else {
            -1.0
        }
    };

    let luma = luma_plane(image);
    let means = grid::cell_means(&luma);
    let host_residual = grid::residual(&means);
    let weights = grid::weights(&host_residual);
    let (host_corr, _) = grid::correlate(&host_residual, &weights, pattern);

    // Each cell's contrast, from its luma sum of squares.
    let mut sum2 = vec![0f64; GRID * GRID];
    let mut count = vec![0u32; GRID * GRID];
    let col_cell: Vec<usize> = (0..w).map(|x| cell_of(x, w)).collect();
    for (y, row) in luma.data.chunks_exact(w as usize).enumerate() {
        let cy = cell_of(y as u32, h);
        for (x, &l) in row.iter().enumerate() {
            let k = cy * GRID + col_cell[x];
            sum2[k] += f64::from(l) * f64::from(l);
            count[k] += 1;
        }
    }
    let mask: Vec<f32> = (0..GRID * GRID)
        .map(|k| {
            let n = f64::from(count[k].max(1));
            let mean = f64::from(means[k].unwrap_or(0.0));
            let std = ((sum2[k] / n - mean * mean).max(0.0)).sqrt() as f32;
            std.clamp(MASK_MIN, MASK_MAX)
        })
        .collect();

    // What a unit gain on every bit shows the detector: the cell means of the
    // bilinear pattern are close to the cell values smoothed by [1/8, 3/4, 1/8].
    let unit: Vec<Option<f32>> = (0..GRID * GRID)
        .map(|k| Some(pattern.chip[k] * sign(k) * mask[k]))
        .collect();
    let smoothed = smooth(&unit);
    let (unit_corr, _) = grid::correlate(&grid::residual(&smoothed), &weights, pattern);
    let mut bit_energy = [0f64; CODED_BITS];
    for k in 0..GRID * GRID {
        bit_energy[usize::from(pattern.bit[k])] += f64::from(mask[k] * mask[k]);
    }
    // Gain per bit: a common base plus what cancels the picture's correlation
    // against the bit. The base is what the budget leaves (a quadratic in it).
    let mut cancel = [0f64; CODED_BITS];
    for b in 0..CODED_BITS {
        let s = if bits[b] { 1.0 } else { -1.0 };
        let toward = s * unit_corr[b];
        if toward > 0.0 {
            cancel[b] = (-s * host_corr[b]).max(0.0) / toward;
        }
    }
    let total_energy: f64 = bit_energy.iter().sum();
    // Budget in units where a unit gain everywhere costs `total_energy`; solve
    // sum_b (base + cancel_b)^2 E_b = total_energy for base >= 0 (the final
    // global scale below meets the PSNR target exactly either way).
    let (a, b2, c) = (0..CODED_BITS).fold((0f64, 0f64, -total_energy), |(a, b, c), i| {
        (
            a + bit_energy[i],
            b + 2.0 * cancel[i] * bit_energy[i],
            c + cancel[i] * cancel[i] * bit_energy[i],
        )
    });
    let base = if a > 0.0 {
        ((-b2 + (b2 * b2 - 4.0 * a * c).max(0.0).sqrt()) / (2.0 * a)).max(0.0)
    } else {
        1.0
    };
    let value: Vec<f32> = (0..GRID * GRID)
        .map(|k| {
            let gain = base + cancel[usize::from(pattern.bit[k])];
            pattern.chip[k] * sign(k) * mask[k] * gain as f32
        })
        .collect();

    // Bilinear between cell centres, so the pattern has no edges at cell borders.
    let axis = |len: u32| -> Vec<(usize, usize, f32)> {
        (0..len)
            .map(|i| {
                let u = (i as f32 + 0.5) * GRID as f32 / len as f32 - 0.5;
                let u = u.clamp(0.0, (GRID - 1) as f32);
                let i0 = u.floor() as usize;
                let i1 = (i0 + 1).min(GRID - 1);
                (i0, i1, u - i0 as f32)
            })
            .collect()
    };
    let xs = axis(w);
    let ys = axis(h);
    let mut delta = Vec::with_capacity(w as usize * h as usize);
    let mut energy = 0f64;
    for &(j0, j1, fy) in &ys {
        let (r0, r1) = (&value[j0 * GRID..][..GRID], &value[j1 * GRID..][..GRID]);
        for &(i0, i1, fx) in &xs {
            let top = r0[i0] + (r0[i1] - r0[i0]) * fx;
            let bottom = r1[i0] + (r1[i1] - r1[i0]) * fx;
            let d = top + (bottom - top) * fy;
            energy += f64::from(d * d);
            delta.push(d);
        }
    }
    let rms = (energy / delta.len() as f64).sqrt() as f32;
    if rms <= 0.0 {
        return;
    }
    // The dithered rounding below adds noise of its own, f(1-f) for a fraction
    // f: 1/6 of a level squared on average. The mark gets what is left.
    let budget = (255.0f32 * 255.0 / 10f32.powf(psnr_db / 10.0) - 1.0 / 6.0).max(0.0);
    let scale = budget.sqrt() / rms;
    // The same integer on R, G and B moves luma by that much and chroma not at all.
    // Rounded with a dither, so that the fraction survives in each cell's mean
    // (plain rounding would erase every step under half a level, which is most
    // of them in flat cells).
    let mut dither = 0x9e37_79b9_7f4a_7c15_u64;
    for (p, d) in image.pixels_mut().zip(delta) {
        dither ^= dither << 13;
        dither ^= dither >> 7;
        dither ^= dither << 17;
        let u = (dither >> 40) as f32 / (1u64 << 24) as f32;
        let step = (d * scale + u).floor() as i16;
        for c in p.0.iter_mut() {
            *c = (i16::from(*c) + step).clamp(0, 255) as u8;
        }
    }
}

/// Cell values smoothed by [1/8, 3/4, 1/8] along both axes: roughly what
/// averaging the bilinear pattern over each cell gives back.
fn smooth(values: &[Option<f32>]) -> Vec<Option<f32>> {
    let at = |v: &[Option<f32>], x: usize, y: usize| v[y * GRID + x].unwrap_or(0.0);
    let mut rows = vec![Some(0f32); GRID * GRID];
    for y in 0..GRID {
        for x in 0..GRID {
            let l = at(values, x.saturating_sub(1), y);
            let r = at(values, (x + 1).min(GRID - 1), y);
            rows[y * GRID + x] = Some(0.125 * l + 0.75 * at(values, x, y) + 0.125 * r);
        }
    }
    let mut out = vec![Some(0f32); GRID * GRID];
    for y in 0..GRID {
        for x in 0..GRID {
            let u = at(&rows, x, y.saturating_sub(1));
            let d = at(&rows, x, (y + 1).min(GRID - 1));
            out[y * GRID + x] = Some(0.125 * u + 0.75 * at(&rows, x, y) + 0.125 * d);
        }
    }
    out
}
