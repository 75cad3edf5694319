//! AVX2 kernels of the crop resample, exact to the integer like the portable ones.
//!
//! Exact 22-bit fixed point leaves AVX2 no wider multiply than 8 x i32
//! (`_mm256_mullo_epi32`), so both passes put the 8 lanes where one broadcast weight
//! applies to all of them, which needs no horizontal sums:
//!
//! - horizontal: the lanes are 8 input rows. A block of 8 rows is transposed so that
//!   each byte position holds its 8 rows' bytes side by side; then every tap is one
//!   8-byte load, one multiply by the tap's weight and one add, for all 8 rows. The
//!   rounded results are transposed back into rows. This works for any scale factor
//!   and kernel width, with no per-size special cases.
//! - vertical: the lanes are 8 neighbouring bytes of a resized row, as the rows being
//!   combined already share one weight; the result goes straight to `f32`.
//!
//! Every entry point takes an [`Avx2`] token, which only exists on CPUs with AVX2.

use super::{AxisTaps, BLOCK_ROWS, CROP_SIDE, ROW_BYTES};
use crate::pillow_resample::{HALF, PRECISION_BITS};
use crate::preprocess::MEAN_BGR;
use std::arch::x86_64::*;

/// Rows the horizontal kernel resizes at once, one per 32-bit lane.
const LANES: usize = 8;
const _: () = assert!(LANES == BLOCK_ROWS);
/// Input bytes per row that one transposition step takes.
const CHUNK: usize = 32;
const SHIFT: i32 = PRECISION_BITS as i32;

/// Proof that this CPU runs AVX2: only [`Avx2::detect`] makes one, and every safe
/// entry point here takes one, which is what makes calling the
/// `#[target_feature(enable = "avx2")]` functions sound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Avx2(());

impl Avx2 {
    pub(crate) fn detect() -> Option<Avx2> {
        is_x86_feature_detected!("avx2").then_some(Avx2(()))
    }
}

/// The horizontal pass with its scratch buffers, kept across the blocks of an image.
/// Made only with an [`Avx2`] token.
pub(super) struct Horizontal<'t> {
    taps: &'t AxisTaps,
    /// First input byte of a row any kept column reads.
    first_byte: usize,
    /// The block's input bytes from `first_byte` on, transposed: for each byte
    /// position, that byte of the block's 8 rows side by side (8 bytes), rounded up
    /// to whole chunks.
    columns: Vec<u8>,
    /// The block's resized bytes, transposed likewise.
    out_columns: Vec<u8>,
}

impl<'t> Horizontal<'t> {
    pub(super) fn new(_: Avx2, taps: &'t AxisTaps) -> Horizontal<'t> {
        let bytes = taps.span.len() * 3;
        Horizontal {
            taps,
            first_byte: taps.span.start * 3,
            columns: vec![0; bytes.div_ceil(CHUNK) * CHUNK * LANES],
            out_columns: vec![0; ROW_BYTES * LANES],
        }
    }

    /// Resizes up to 8 input rows, `rows` (whole rows, contiguous), into `dst`
    /// (`ROW_BYTES` per row). `upcoming` are the rows of the next block, which are
    /// pulled into cache meanwhile: the source usually comes from DRAM.
    pub(super) fn resize(&mut self, rows: &[u8], upcoming: &[u8], dst: &mut [u8]) {
        // SAFETY: a `Horizontal` is only made with an `Avx2` token, so the CPU has
        // AVX2, the only requirement of a safe `#[target_feature]` function.
        unsafe { self.resize_avx2(rows, upcoming, dst) }
    }

    #[target_feature(enable = "avx2")]
    fn resize_avx2(&mut self, rows: &[u8], upcoming: &[u8], dst: &mut [u8]) {
        let valid = dst.len() / ROW_BYTES;
        let row_len = rows.len() / valid;
        // A short last block repeats its last row; those lanes are computed and dropped.
        let mut in_rows: [&[u8]; LANES] = [&[]; LANES];
        for (j, in_row) in in_rows.iter_mut().enumerate() {
            *in_row = &rows[j.min(valid - 1) * row_len..][..row_len];
        }
        transpose_in(&in_rows, self.first_byte, &mut self.columns);
        convolve(
            &self.columns,
            self.first_byte,
            self.taps,
            upcoming,
            &mut self.out_columns,
        );
        transpose_out(&self.out_columns, dst);
    }
}

/// One output row from the resized rows starting at `row_starts` in `ring`, one per
/// weight: [`super::vertical_portable`]'s result.
pub(super) fn vertical(
    _: Avx2,
    ring: &[u8],
    row_starts: &[usize],
    weights: &[i32],
    out: &mut [f32],
) {
    // SAFETY: the `Avx2` token proves the CPU has AVX2, the only requirement of a
    // safe `#[target_feature]` function.
    unsafe { vertical_avx2(ring, row_starts, weights, out) }
}

/// `columns[p * 8 + j] = rows[j][first_byte + p]`, CHUNK positions at a time.
#[target_feature(enable = "avx2")]
fn transpose_in(rows: &[&[u8]; LANES], first_byte: usize, columns: &mut [u8]) {
    for (chunk, out) in columns.chunks_exact_mut(CHUNK * LANES).enumerate() {
        let at = first_byte + chunk * CHUNK;
        let mut r = [_mm256_setzero_si256(); LANES];
        for (v, row) in r.iter_mut().zip(rows) {
            *v = load_padded(row, at);
        }
        // Interleave bytes of row pairs, then 2-byte pairs of row quads, then 4-byte
        // quads. The unpacks work within 128-bit halves, so each result holds
        // positions 2i and 2i+1 in its low half and 16+2i and 17+2i in its high half,
        // 8 rows' bytes each.
        let s = [
            _mm256_unpacklo_epi8(r[0], r[1]),
            _mm256_unpackhi_epi8(r[0], r[1]),
            _mm256_unpacklo_epi8(r[2], r[3]),
            _mm256_unpackhi_epi8(r[2], r[3]),
            _mm256_unpacklo_epi8(r[4], r[5]),
            _mm256_unpackhi_epi8(r[4], r[5]),
            _mm256_unpacklo_epi8(r[6], r[7]),
            _mm256_unpackhi_epi8(r[6], r[7]),
        ];
        let q = [
            _mm256_unpacklo_epi16(s[0], s[2]),
            _mm256_unpackhi_epi16(s[0], s[2]),
            _mm256_unpacklo_epi16(s[1], s[3]),
            _mm256_unpackhi_epi16(s[1], s[3]),
            _mm256_unpacklo_epi16(s[4], s[6]),
            _mm256_unpackhi_epi16(s[4], s[6]),
            _mm256_unpacklo_epi16(s[5], s[7]),
            _mm256_unpackhi_epi16(s[5], s[7]),
        ];
        let o = [
            _mm256_unpacklo_epi32(q[0], q[4]),
            _mm256_unpackhi_epi32(q[0], q[4]),
            _mm256_unpacklo_epi32(q[1], q[5]),
            _mm256_unpackhi_epi32(q[1], q[5]),
            _mm256_unpacklo_epi32(q[2], q[6]),
            _mm256_unpackhi_epi32(q[2], q[6]),
            _mm256_unpacklo_epi32(q[3], q[7]),
            _mm256_unpackhi_epi32(q[3], q[7]),
        ];
        let (low, high) = out.split_at_mut(CHUNK * LANES / 2);
        for ((v, low), high) in o
            .iter()
            .zip(low.chunks_exact_mut(16))
            .zip(high.chunks_exact_mut(16))
        {
            store128(low, _mm256_castsi256_si128(*v));
            store128(high, _mm256_extracti128_si256::<1>(*v));
        }
    }
}

/// The horizontal filter on transposed rows: for each kept column, its B, G and R
/// for the block's 8 rows, rounded to u8, 24 bytes per column in `out_columns`.
#[target_feature(enable = "avx2")]
fn convolve(
    columns: &[u8],
    first_byte: usize,
    taps: &AxisTaps,
    upcoming: &[u8],
    out_columns: &mut [u8],
) {
    let half = _mm256_set1_epi32(HALF);
    // Dword order that turns the packs' lane-split output back into B, G, R runs.
    let unsplit = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    // Cache lines of `upcoming` to request per output column, to spread them over
    // the whole loop.
    let lines_per_column = upcoming.len().div_ceil(64 * CROP_SIDE);
    let mut lines = upcoming.chunks(64);
    for (x, out) in out_columns.chunks_exact_mut(3 * LANES).enumerate() {
        for line in lines.by_ref().take(lines_per_column) {
            prefetch(line);
        }
        let (first, weights) = taps.get(x);
        let start = (first * 3 - first_byte) * LANES;
        let px = &columns[start..start + weights.len() * 3 * LANES];
        let (mut r, mut g, mut b) = (half, half, half);
        for (w, p) in weights.iter().zip(px.chunks_exact(3 * LANES)) {
            let w = _mm256_set1_epi32(*w);
            r = _mm256_add_epi32(r, _mm256_mullo_epi32(widen(&p[..8]), w));
            g = _mm256_add_epi32(g, _mm256_mullo_epi32(widen(&p[8..16]), w));
            b = _mm256_add_epi32(b, _mm256_mullo_epi32(widen(&p[16..]), w));
        }
        let r = _mm256_srai_epi32::<SHIFT>(r);
        let g = _mm256_srai_epi32::<SHIFT>(g);
        let b = _mm256_srai_epi32::<SHIFT>(b);
        // acc >> 22 lies in -512..512, where the two saturating packs (i32 -> u16,
        // then i16 -> u8) clamp to 0..=255 exactly as `clip8` does.
        let bytes = _mm256_packus_epi16(_mm256_packus_epi32(b, g), _mm256_packus_epi32(r, r));
        let bytes = _mm256_permutevar8x32_epi32(bytes, unsplit);
        // The B, G and R runs are the first 24 bytes.
        let mut slot = [0_u8; 32];
        store256(&mut slot, bytes);
        out.copy_from_slice(&slot[..24]);
    }
}

/// Back from `columns[p * 8 + j]` to rows: `rows[j * ROW_BYTES + p]`, for the first
/// `rows.len() / ROW_BYTES` rows.
#[target_feature(enable = "avx2")]
fn transpose_out(columns: &[u8], rows: &mut [u8]) {
    let valid = rows.len() / ROW_BYTES;
    for chunk in 0..ROW_BYTES / 16 {
        let base = chunk * 16 * LANES;
        let mut q = [_mm_setzero_si128(); 8];
        for (i, v) in q.iter_mut().enumerate() {
            *v = load128(&columns[base + 16 * i..][..16]);
        }
        let lo = transpose_8x8(q[0], q[1], q[2], q[3]);
        let hi = transpose_8x8(q[4], q[5], q[6], q[7]);
        for m in 0..4 {
            let pair = [
                _mm_unpacklo_epi64(lo[m], hi[m]),
                _mm_unpackhi_epi64(lo[m], hi[m]),
            ];
            for (j, v) in (2 * m..).zip(pair) {
                if j < valid {
                    store128(&mut rows[j * ROW_BYTES + chunk * 16..][..16], v);
                }
            }
        }
    }
}

/// Transposes an 8x8 byte matrix given as four registers of two 8-byte rows each;
/// returns it the same way.
#[inline]
#[target_feature(enable = "avx2")]
fn transpose_8x8(a: __m128i, b: __m128i, c: __m128i, d: __m128i) -> [__m128i; 4] {
    // Rows m0..m7: a = m0|m1, b = m2|m3, ... After the byte interleaves, t0 pairs m0
    // with m2 and t1 m1 with m3, so interleaving t0 with t1 orders rows 0, 1, 2, 3.
    let t0 = _mm_unpacklo_epi8(a, b);
    let t1 = _mm_unpackhi_epi8(a, b);
    let t2 = _mm_unpacklo_epi8(c, d);
    let t3 = _mm_unpackhi_epi8(c, d);
    let u0 = _mm_unpacklo_epi8(t0, t1);
    let u1 = _mm_unpackhi_epi8(t0, t1);
    let u2 = _mm_unpacklo_epi8(t2, t3);
    let u3 = _mm_unpackhi_epi8(t2, t3);
    [
        _mm_unpacklo_epi32(u0, u2),
        _mm_unpackhi_epi32(u0, u2),
        _mm_unpacklo_epi32(u1, u3),
        _mm_unpackhi_epi32(u1, u3),
    ]
}

#[target_feature(enable = "avx2")]
fn vertical_avx2(ring: &[u8], row_starts: &[usize], weights: &[i32], out: &mut [f32]) {
    let half = _mm256_set1_epi32(HALF);
    let zero = _mm256_setzero_si256();
    let max = _mm256_set1_epi32(255);
    // 24 bytes of a BGR row are 8 whole pixels: three vectors, each with its own
    // pattern of per-channel means.
    let mut means = [_mm256_setzero_ps(); 3];
    for (m, mean) in means.iter_mut().enumerate() {
        let lane = |i: usize| MEAN_BGR[(8 * m + i) % 3];
        *mean = _mm256_setr_ps(
            lane(0),
            lane(1),
            lane(2),
            lane(3),
            lane(4),
            lane(5),
            lane(6),
            lane(7),
        );
    }
    for (g, out24) in out.chunks_exact_mut(3 * LANES).enumerate() {
        let mut acc = [half; 3];
        for (w, &start) in weights.iter().zip(row_starts) {
            let w = _mm256_set1_epi32(*w);
            let p = &ring[start + g * 24..][..24];
            for (m, a) in acc.iter_mut().enumerate() {
                *a = _mm256_add_epi32(*a, _mm256_mullo_epi32(widen(&p[8 * m..][..8]), w));
            }
        }
        for ((a, mean), dst) in acc.iter().zip(&means).zip(out24.chunks_exact_mut(8)) {
            let v = _mm256_min_epi32(_mm256_max_epi32(_mm256_srai_epi32::<SHIFT>(*a), zero), max);
            store_f32(dst, _mm256_sub_ps(_mm256_cvtepi32_ps(v), *mean));
        }
    }
}

/// Asks for the cache line holding `bytes[0]`.
#[inline]
#[target_feature(enable = "avx2")]
fn prefetch(bytes: &[u8]) {
    _mm_prefetch::<_MM_HINT_T0>(bytes.as_ptr().cast())
}

/// 8 bytes zero-extended to 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn widen(bytes: &[u8]) -> __m256i {
    let bytes: [u8; 8] = bytes.try_into().expect("callers pass 8 bytes");
    _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(i64::from_le_bytes(bytes)))
}

/// CHUNK bytes of `row` from `at`, zero-filled past its end.
#[inline]
#[target_feature(enable = "avx2")]
fn load_padded(row: &[u8], at: usize) -> __m256i {
    match row.get(at..at + CHUNK) {
        Some(bytes) => load256(bytes),
        None => {
            let mut padded = [0_u8; CHUNK];
            let tail = &row[at.min(row.len())..];
            padded[..tail.len()].copy_from_slice(tail);
            load256(&padded)
        }
    }
}

#[inline]
#[target_feature(enable = "avx2")]
fn load256(bytes: &[u8]) -> __m256i {
    let bytes: &[u8; 32] = bytes.try_into().expect("callers pass 32 bytes");
    // SAFETY: reads exactly the 32 bytes of `bytes`; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn load128(bytes: &[u8]) -> __m128i {
    let bytes: &[u8; 16] = bytes.try_into().expect("callers pass 16 bytes");
    // SAFETY: reads exactly the 16 bytes of `bytes`; loadu has no alignment requirement.
    unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn store128(bytes: &mut [u8], v: __m128i) {
    let bytes: &mut [u8; 16] = bytes.try_into().expect("callers pass 16 bytes");
    // SAFETY: writes exactly the 16 bytes of `bytes`; storeu has no alignment requirement.
    unsafe { _mm_storeu_si128(bytes.as_mut_ptr().cast(), v) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn store256(bytes: &mut [u8], v: __m256i) {
    let bytes: &mut [u8; 32] = bytes.try_into().expect("callers pass 32 bytes");
    // SAFETY: writes exactly the 32 bytes of `bytes`; storeu has no alignment requirement.
    unsafe { _mm256_storeu_si256(bytes.as_mut_ptr().cast(), v) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn store_f32(floats: &mut [f32], v: __m256) {
    let floats: &mut [f32; 8] = floats.try_into().expect("callers pass 8 floats");
    // SAFETY: writes exactly the 8 floats of `floats`; storeu has no alignment requirement.
    unsafe { _mm256_storeu_ps(floats.as_mut_ptr(), v) }
}
