//! Finding the pattern in any copy of a marked variant.

use super::{grid, LumaPlane, Payload, WatermarkKey, CODED_BITS};

/// The mean |z| over the coded bits below which a copy is not called marked even
/// when its CRC matches. Unmarked pictures average about 0.8 (the mean of a
/// half-normal); marked copies after the delivery path measure far above (see
/// BENCHMARKS.md).
const MIN_CONFIDENCE: f32 = 1.5;

/// What the detector read from one picture under one key.
#[derive(Clone, Debug)]
pub struct Detection {
    /// The payload, when the CRC matches and the confidence clears the threshold.
    pub payload: Option<Payload>,
    /// The mean over the coded bits of each bit's correlation z-score (its sum of
    /// chip × residual over its cells, divided by the residual's energy): about
    /// 0.8 on unmarked pictures, several on marked ones.
    pub confidence: f32,
    /// The smallest bit z-score: how close the weakest bit came to flipping.
    pub weakest_bit: f32,
    bits: [bool; CODED_BITS],
}

impl Detection {
    /// The 96 bits as read (payload and CRC), marked or not: for bit error rates.
    pub fn coded_bits(&self) -> &[bool; CODED_BITS] {
        &self.bits
    }

    /// How many bits differ from those `expected` would have put there.
    pub fn bit_errors(&self, expected: &Payload) -> usize {
        self.bits
            .iter()
            .zip(expected.coded_bits())
            .filter(|(a, b)| *a != b)
            .count()
    }
}

/// Reads the watermark of `key` from `luma`, a decoded copy of any size (the
/// detector maps it onto the same grid cells the embedder used).
pub fn detect(luma: &LumaPlane, key: &WatermarkKey) -> Detection {
    let pattern = key.pattern();
    let residual = grid::residual(&grid::cell_means(luma));
    let weights = grid::weights(&residual);
    let (corr, energy) = grid::correlate(&residual, &weights, pattern);
    let mut bits = [false; CODED_BITS];
    let mut z = [0f32; CODED_BITS];
    let mut total = 0f32;
    let mut weakest = f32::INFINITY;
    for b in 0..CODED_BITS {
        bits[b] = corr[b] > 0.0;
        let zb = if energy[b] > 0.0 {
            (corr[b].abs() / energy[b].sqrt()) as f32
        } else {
            0.0
        };
        total += zb;
        weakest = weakest.min(zb);
        z[b] = zb;
    }
    let confidence = total / CODED_BITS as f32;
    // Soft decision: the bits read, then each of the two least certain flipped.
    // Three CRC trials put a false match at 3 x 2^-32 = 7.0e-10 per picture (and
    // the confidence threshold must be cleared as well).
    let mut order: Vec<usize> = (0..CODED_BITS).collect();
    order.sort_by(|&a, &b| z[a].total_cmp(&z[b]));
    let candidates = [None, Some(order[0]), Some(order[1])];
    let payload = (confidence >= MIN_CONFIDENCE)
        .then(|| {
            candidates.iter().find_map(|flip| {
                let mut tried = bits;
                if let Some(i) = *flip {
                    tried[i] = !tried[i];
                }
                Payload::from_coded_bits(&tried).filter(|p| p.key_id == key.id())
            })
        })
        .flatten();
    Detection {
        payload,
        confidence,
        weakest_bit: weakest,
        bits,
    }
}
