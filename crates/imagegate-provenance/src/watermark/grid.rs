//! The detector's view of a picture, shared with the embedder so that it can plan
//! against exactly what will be measured: luma averaged onto the grid's cells,
//! each cell minus its neighbourhood, weighted by how busy the neighbourhood is.

use super::key::Pattern;
use super::{cell_of, LumaPlane, CODED_BITS, GRID};

/// Cell means of a luma plane; `None` for cells no pixel falls in (pictures under
/// [`GRID`] pixels on a side).
pub(crate) fn cell_means(luma: &LumaPlane) -> Vec<Option<f32>> {
    let (w, h) = (luma.width, luma.height);
    let mut sum = vec![0f64; GRID * GRID];
    let mut count = vec![0u32; GRID * GRID];
    if w > 0 && h > 0 {
        let col_cell: Vec<usize> = (0..w).map(|x| cell_of(x, w)).collect();
        for (y, row) in luma.data.chunks_exact(w as usize).enumerate() {
            let cy = cell_of(y as u32, h);
            for (x, &l) in row.iter().enumerate() {
                let k = cy * GRID + col_cell[x];
                sum[k] += f64::from(l);
                count[k] += 1;
            }
        }
    }
    (0..GRID * GRID)
        .map(|k| (count[k] > 0).then(|| (sum[k] / f64::from(count[k])) as f32))
        .collect()
}

/// Each cell minus a prediction from its neighbours: the picture is smooth at
/// this scale in at least one direction almost everywhere, the chips are
/// independent in every direction. Three predictors (the 3x3 mean, the cells
/// above and below, the cells left and right); each region of cells uses the one
/// that leaves the least energy there, which is decided by the picture (the mark
/// is far weaker), so embedder and detector choose alike. `None` where the cell
/// is empty.
pub(crate) fn residual(mean: &[Option<f32>]) -> Vec<Option<f32>> {
    let at = |x: usize, y: usize| mean[y * GRID + x];
    let mut by = [
        vec![None; GRID * GRID],
        vec![None; GRID * GRID],
        vec![None; GRID * GRID],
    ];
    for cy in 0..GRID {
        for cx in 0..GRID {
            let Some(m) = at(cx, cy) else {
                continue;
            };
            let (mut s, mut n) = (0f32, 0u32);
            for ny in cy.saturating_sub(1)..=(cy + 1).min(GRID - 1) {
                for nx in cx.saturating_sub(1)..=(cx + 1).min(GRID - 1) {
                    if let Some(v) = at(nx, ny) {
                        s += v;
                        n += 1;
                    }
                }
            }
            by[0][cy * GRID + cx] = Some(m - s / n as f32);
            let pair = |a: Option<f32>, b: Option<f32>| match (a, b) {
                (Some(a), Some(b)) => Some(m - 0.5 * (a + b)),
                (Some(a), None) | (None, Some(a)) => Some(m - a),
                (None, None) => Some(0.0),
            };
            let up = cy.checked_sub(1).and_then(|y| at(cx, y));
            let down = (cy + 1 < GRID).then(|| at(cx, cy + 1)).flatten();
            let left = cx.checked_sub(1).and_then(|x| at(x, cy));
            let right = (cx + 1 < GRID).then(|| at(cx + 1, cy)).flatten();
            by[1][cy * GRID + cx] = pair(up, down);
            by[2][cy * GRID + cx] = pair(left, right);
        }
    }
    // Choose per block of REGION x REGION cells. The pair predictors leave 1.5x
    // the chip noise of the 3x3 mean on a flat picture: prefer the mean unless a
    // pair clearly does better.
    const REGION: usize = 8;
    let mut out = vec![None; GRID * GRID];
    for by0 in (0..GRID).step_by(REGION) {
        for bx0 in (0..GRID).step_by(REGION) {
            let cells = || {
                (by0..(by0 + REGION).min(GRID))
                    .flat_map(move |y| (bx0..(bx0 + REGION).min(GRID)).map(move |x| y * GRID + x))
            };
            let energy =
                |r: &Vec<Option<f32>>| -> f32 { cells().filter_map(|k| r[k]).map(|v| v * v).sum() };
            let e = [energy(&by[0]), 1.5 * energy(&by[1]), 1.5 * energy(&by[2])];
            let best = (0..3)
                .min_by(|&a, &b| e[a].total_cmp(&e[b]))
                .expect("three predictors");
            for k in cells() {
                out[k] = by[best][k];
            }
        }
    }
    out
}

/// One over each cell's neighbourhood (5x5) residual RMS: busy regions leave
/// large residuals and would drown the quiet ones.
pub(crate) fn weights(residual: &[Option<f32>]) -> Vec<f32> {
    let mut out = vec![0f32; GRID * GRID];
    for cy in 0..GRID {
        for cx in 0..GRID {
            if residual[cy * GRID + cx].is_none() {
                continue;
            }
            let (mut e, mut n) = (0f32, 0u32);
            for ny in cy.saturating_sub(2)..=(cy + 2).min(GRID - 1) {
                for nx in cx.saturating_sub(2)..=(cx + 2).min(GRID - 1) {
                    if let Some(r) = residual[ny * GRID + nx] {
                        e += r * r;
                        n += 1;
                    }
                }
            }
            out[cy * GRID + cx] = 1.0 / ((e / n as f32).sqrt() + 0.05);
        }
    }
    out
}

/// Per coded bit: the weighted correlation of the residual with the chips, and
/// the weighted residual's energy.
pub(crate) fn correlate(
    residual: &[Option<f32>],
    weights: &[f32],
    pattern: &Pattern,
) -> ([f64; CODED_BITS], [f64; CODED_BITS]) {
    let mut corr = [0f64; CODED_BITS];
    let mut energy = [0f64; CODED_BITS];
    for k in 0..GRID * GRID {
        let Some(r) = residual[k] else { continue };
        let b = usize::from(pattern.bit[k]);
        let r = f64::from(r * weights[k]);
        corr[b] += f64::from(pattern.chip[k]) * r;
        energy[b] += r * r;
    }
    (corr, energy)
}
