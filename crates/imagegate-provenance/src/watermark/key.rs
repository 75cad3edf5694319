//! The secret that decides the pattern, and the pattern itself (computed once).

use super::{CODED_BITS, GRID};
use crate::ProvenanceError;
use std::sync::Arc;

/// A watermark key: a public id (carried in the payload, so keys can rotate) and a
/// 32-byte secret that decides every cell's chip and bit. Cheap to clone.
#[derive(Clone)]
pub struct WatermarkKey {
    id: u8,
    pattern: Arc<Pattern>,
}

/// Per cell of the grid: the chip (+1 or -1) and which coded bit it carries. The
/// cells of one bit are scattered over the whole picture by a keyed shuffle, so a
/// flat or clipped region costs every bit a little instead of some bits a lot.
pub(crate) struct Pattern {
    pub chip: Vec<f32>,
    pub bit: Vec<u8>,
}

impl std::fmt::Debug for WatermarkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("WatermarkKey")
            .field("id", &self.id)
            .finish()
    }
}

impl WatermarkKey {
    pub fn new(id: u8, secret: [u8; 32]) -> WatermarkKey {
        WatermarkKey {
            id,
            pattern: Arc::new(Pattern::new(&secret)),
        }
    }

    /// A key from 64 hex characters; `what` names where they came from, for the error.
    pub fn from_hex(id: u8, hex: &str, what: &str) -> Result<WatermarkKey, ProvenanceError> {
        let hex = hex.trim();
        let bad = || ProvenanceError::BadWatermarkKey {
            what: what.to_string(),
            len: hex.chars().count(),
        };
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut secret = [0u8; 32];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                .map_err(|_| bad())?;
        }
        Ok(WatermarkKey::new(id, secret))
    }

    pub fn id(&self) -> u8 {
        self.id
    }

    pub(crate) fn pattern(&self) -> &Pattern {
        &self.pattern
    }
}

impl Pattern {
    fn new(secret: &[u8; 32]) -> Pattern {
        let cells = GRID * GRID;
        let mut xof = blake3::Hasher::new_keyed(secret)
            .update(b"imagegate watermark pattern v1")
            .finalize_xof();
        let mut random = vec![0u8; cells / 8 + cells * 4];
        xof.fill(&mut random);
        let (sign_bytes, shuffle_bytes) = random.split_at(cells / 8);
        let chip = (0..cells)
            .map(|i| {
                if sign_bytes[i / 8] >> (i % 8) & 1 == 1 {
                    1.0
                } else {
                    -1.0
                }
            })
            .collect();
        // Fisher-Yates over the cells, then cell order i -> bit i mod 96: every bit
        // gets the same number of cells (give or take one), scattered.
        let mut order: Vec<usize> = (0..cells).collect();
        for i in (1..cells).rev() {
            let r = u32::from_le_bytes(
                shuffle_bytes[4 * i..4 * i + 4]
                    .try_into()
                    .expect("four bytes"),
            );
            order.swap(i, r as usize % (i + 1));
        }
        let mut bit = vec![0u8; cells];
        for (rank, &cell) in order.iter().enumerate() {
            bit[cell] = (rank % CODED_BITS) as u8;
        }
        Pattern { chip, bit }
    }
}
