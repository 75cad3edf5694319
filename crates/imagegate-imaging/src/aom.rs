//! AVIF through libaom (the system library, via `aom-sys`), muxed with
//! `avif-serialize`: the same encoder libvips (through libheif) and avifenc use.
//!
//! Still pictures use libaom's all-intra mode (`AOM_USAGE_ALL_INTRA`), 4:2:0, 8 or
//! 10 bits, BT.601 full-range YCbCr in sRGB, tuned for SSIM, as libavif does for a
//! single image. The quality knob maps to libaom's constant-quality level the way
//! libavif maps its `--quality`: `cq = round((100 - quality) * 63 / 100)`.

use aom_sys as aom;
use image::RgbImage;
use imagegate_core::profile::AvifSettings;
use std::ffi::CStr;
use std::num::NonZeroUsize;
use std::os::raw::{c_int, c_uint};
use std::ptr;

/// The constant-quality level libaom gets for a 1..=100 quality.
pub(crate) fn cq_level(quality: f32) -> u32 {
    (((100.0 - quality.clamp(1.0, 100.0)) * 63.0 / 100.0).round() as u32).min(63)
}

/// Owns an initialised encoder context and destroys it on every path out.
struct Context(aom::aom_codec_ctx_t);

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: the context was initialised by aom_codec_enc_init_ver, which is
        // the only way a Context is built.
        unsafe {
            aom::aom_codec_destroy(&mut self.0);
        }
    }
}

impl Context {
    fn error(&mut self, what: &str) -> String {
        // SAFETY: both functions return NUL-terminated static or context-owned
        // strings (or NULL for the detail).
        unsafe {
            let message = CStr::from_ptr(aom::aom_codec_error(&mut self.0)).to_string_lossy();
            let detail = aom::aom_codec_error_detail(&mut self.0);
            if detail.is_null() {
                format!("libaom {what}: {message}")
            } else {
                format!(
                    "libaom {what}: {message} ({})",
                    CStr::from_ptr(detail).to_string_lossy()
                )
            }
        }
    }

    fn control(&mut self, id: aom::aome_enc_control_id::Type, value: c_int) -> Result<(), String> {
        // SAFETY: every control this module sets takes one int-sized argument.
        let status = unsafe { aom::aom_codec_control(&mut self.0, id as c_int, value) };
        if status == aom::aom_codec_err_t::AOM_CODEC_OK {
            Ok(())
        } else {
            Err(self.error(&format!("control {id}")))
        }
    }
}

/// Owns an `aom_image_t` allocated by libaom.
struct Image(*mut aom::aom_image_t);

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: allocated by aom_img_alloc, freed once here.
        unsafe { aom::aom_img_free(self.0) }
    }
}

// BT.601 full range (matrix_coefficients 6 in the file, as ravif writes), in fixed
// point scaled by 2^16. A float conversion with a rounding call per sample cost 15%
// of a 768 px resize + encode; these integer rows vectorise. Each row of
// coefficients sums to exactly 2^16 (luma) or 0 (chroma), so greys stay exact.
const Y_R: i32 = 19_595; // 0.299
const Y_G: i32 = 38_470; // 0.587
const Y_B: i32 = 7_471; // 0.114
const CB_R: i32 = -11_059; // -0.299 / 1.772
const CB_G: i32 = -21_709; // -0.587 / 1.772
const CB_B: i32 = 32_768; // 0.886 / 1.772
const CR_R: i32 = 32_768; // 0.701 / 1.402
const CR_G: i32 = -27_439; // -0.587 / 1.402
const CR_B: i32 = -5_329; // -0.114 / 1.402

/// Encodes `image` into an AVIF file with libaom on `threads` threads: the calling one
/// and, past one, `threads - 1` that libaom starts and joins within this call. More
/// than one thread splits the frame into tile columns, so the file depends on it.
pub(crate) fn encode(
    image: &RgbImage,
    settings: &AvifSettings,
    threads: NonZeroUsize,
) -> Result<Vec<u8>, String> {
    let (width, height) = image.dimensions();
    let high_bit_depth = match settings.bit_depth {
        8 => false,
        10 => true,
        other => return Err(format!("avif bit depth {other} is not 8 or 10")),
    };
    let av1 = encode_av1(
        image.as_raw(),
        width,
        height,
        settings,
        high_bit_depth,
        threads,
    )?;
    let mut muxer = avif_serialize::Aviffy::new();
    muxer
        .set_seq_profile(0)
        .set_chroma_subsampling((true, true))
        .set_full_color_range(true)
        .set_matrix_coefficients(avif_serialize::constants::MatrixCoefficients::Bt601)
        .set_transfer_characteristics(avif_serialize::constants::TransferCharacteristics::Srgb)
        .set_color_primaries(avif_serialize::constants::ColorPrimaries::Bt709)
        .set_width(width)
        .set_height(height)
        .set_bit_depth(settings.bit_depth);
    Ok(muxer.to_vec(&av1, None, width, height, settings.bit_depth))
}

fn encode_av1(
    rgb: &[u8],
    width: u32,
    height: u32,
    settings: &AvifSettings,
    high_bit_depth: bool,
    threads: NonZeroUsize,
) -> Result<Vec<u8>, String> {
    // SAFETY (whole function): plain libaom C API use, following aom_encoder.h: the
    // config is filled by aom_codec_enc_config_default before use, the context and
    // image are owned by guards that release them, plane pointers and strides come
    // from libaom's own allocation and are written within (stride, height) bounds,
    // and packet buffers are copied out before the next call into the encoder.
    unsafe {
        let iface = aom::aom_codec_av1_cx();
        let mut cfg: aom::aom_codec_enc_cfg_t = std::mem::zeroed();
        if aom::aom_codec_enc_config_default(iface, &mut cfg, aom::AOM_USAGE_ALL_INTRA)
            != aom::aom_codec_err_t::AOM_CODEC_OK
        {
            return Err("libaom has no all-intra mode (needs libaom 3.2 or newer)".to_owned());
        }
        cfg.rc_end_usage = aom::aom_rc_mode::AOM_Q;
        cfg.g_profile = 0;
        cfg.g_bit_depth = if high_bit_depth {
            aom::aom_bit_depth::AOM_BITS_10
        } else {
            aom::aom_bit_depth::AOM_BITS_8
        };
        cfg.g_input_bit_depth = c_uint::from(settings.bit_depth);
        cfg.g_w = width;
        cfg.g_h = height;
        // One frame: libaom writes a reduced still-picture header and keeps two frame
        // buffers instead of twenty.
        cfg.g_limit = 1;
        cfg.g_lag_in_frames = 0;
        cfg.kf_mode = aom::aom_kf_mode::AOM_KF_DISABLED;
        cfg.kf_max_dist = 0;
        cfg.g_threads = c_uint::try_from(threads.get()).unwrap_or(c_uint::MAX);
        cfg.rc_min_quantizer = 0;
        cfg.rc_max_quantizer = 63;

        let flags = if high_bit_depth {
            aom::AOM_CODEC_USE_HIGHBITDEPTH as aom::aom_codec_flags_t
        } else {
            0
        };
        let mut raw_ctx: aom::aom_codec_ctx_t = std::mem::zeroed();
        if aom::aom_codec_enc_init_ver(
            &mut raw_ctx,
            iface,
            &cfg,
            flags,
            aom::AOM_ENCODER_ABI_VERSION as c_int,
        ) != aom::aom_codec_err_t::AOM_CODEC_OK
        {
            let message = CStr::from_ptr(aom::aom_codec_error(&mut raw_ctx))
                .to_string_lossy()
                .into_owned();
            return Err(format!("libaom init: {message}"));
        }
        let mut ctx = Context(raw_ctx);
        use aom::aome_enc_control_id as c;
        ctx.control(c::AOME_SET_CPUUSED, c_int::from(settings.speed))?;
        ctx.control(c::AOME_SET_CQ_LEVEL, cq_level(settings.quality) as c_int)?;
        ctx.control(
            c::AOME_SET_TUNING,
            aom::aom_tune_metric::AOM_TUNE_SSIM as c_int,
        )?;
        ctx.control(
            c::AV1E_SET_COLOR_RANGE,
            aom::aom_color_range::AOM_CR_FULL_RANGE as c_int,
        )?;
        ctx.control(c::AV1E_SET_COLOR_PRIMARIES, 1)?; // BT.709 / sRGB primaries
        ctx.control(c::AV1E_SET_TRANSFER_CHARACTERISTICS, 13)?; // sRGB
        ctx.control(c::AV1E_SET_MATRIX_COEFFICIENTS, 6)?; // BT.601
        ctx.control(c::AV1E_SET_SKIP_POSTPROC_FILTERING, 1)?;
        // Quantisation matrices: 2% fewer bytes at equal SSIMULACRA2 over the corpus
        // (median; up to 5% on some pictures) for 2-9% more encode time. Delivery
        // bytes are paid on every view, the encode once (BENCHMARKS.md).
        ctx.control(c::AV1E_SET_ENABLE_QM, 1)?;
        if threads.get() > 1 {
            // One tile gives libaom's threads only rows of superblocks to share,
            // which did little for a 768 px picture; tile columns of at least 256 px
            // encode independently. They cost about 1% in bytes, paid only by
            // callers that ask for threads.
            let most_columns = (width / 256).max(1).ilog2();
            let tile_columns_log2 = threads.get().ilog2().min(most_columns);
            ctx.control(c::AV1E_SET_TILE_COLUMNS, tile_columns_log2 as c_int)?;
            ctx.control(c::AV1E_SET_ROW_MT, 1)?;
        }

        let format = if high_bit_depth {
            aom::aom_img_fmt::AOM_IMG_FMT_I42016
        } else {
            aom::aom_img_fmt::AOM_IMG_FMT_I420
        };
        let image = Image(aom::aom_img_alloc(
            ptr::null_mut(),
            format,
            width,
            height,
            32,
        ));
        if image.0.is_null() {
            return Err(format!(
                "libaom could not allocate a {width}x{height} image"
            ));
        }
        let img = &mut *image.0;
        img.range = aom::aom_color_range::AOM_CR_FULL_RANGE;
        img.mc = 6;
        img.cp = 1;
        img.tc = 13;
        img.bit_depth = c_uint::from(settings.bit_depth);
        fill_planes(img, rgb, width as usize, height as usize, high_bit_depth);

        if aom::aom_codec_encode(&mut ctx.0, image.0, 0, 1, 0) != aom::aom_codec_err_t::AOM_CODEC_OK
        {
            return Err(ctx.error("encode"));
        }
        let mut out = Vec::new();
        drain(&mut ctx, &mut out);
        // Flush: with no lag the frame is usually out already, but libaom only
        // promises it after a NULL frame.
        if aom::aom_codec_encode(&mut ctx.0, ptr::null(), 0, 1, 0)
            != aom::aom_codec_err_t::AOM_CODEC_OK
        {
            return Err(ctx.error("flush"));
        }
        drain(&mut ctx, &mut out);
        if out.is_empty() {
            return Err("libaom produced no frame".to_owned());
        }
        Ok(out)
    }
}

/// # Safety
/// `ctx` is an initialised encoder; packets are copied before it is used again.
unsafe fn drain(ctx: &mut Context, out: &mut Vec<u8>) {
    let mut iter: aom::aom_codec_iter_t = ptr::null();
    loop {
        let packet = aom::aom_codec_get_cx_data(&mut ctx.0, &mut iter);
        if packet.is_null() {
            break;
        }
        if (*packet).kind == aom::aom_codec_cx_pkt_kind::AOM_CODEC_CX_FRAME_PKT {
            let frame = (*packet).data.frame;
            out.extend_from_slice(std::slice::from_raw_parts(frame.buf as *const u8, frame.sz));
        }
    }
}

/// # Safety
/// `img` was allocated by libaom for `width` x `height` in the matching format
/// (I420, or I42016 when `high`), and `rgb` holds `width * height * 3` bytes.
unsafe fn fill_planes(
    img: &mut aom::aom_image_t,
    rgb: &[u8],
    width: usize,
    height: usize,
    high: bool,
) {
    if high {
        rgb_to_ycbcr420(rgb, width, height, 2, planes::<u16>(img, height));
    } else {
        rgb_to_ycbcr420(rgb, width, height, 0, planes::<u8>(img, height));
    }
}

/// libaom's three planes as `(samples, stride in samples)`; strides are in bytes
/// and planes are 32-byte aligned.
///
/// # Safety
/// As [`fill_planes`], with `S` the sample type of `img`'s format.
unsafe fn planes<S: Sample>(img: &mut aom::aom_image_t, height: usize) -> [(&mut [S], usize); 3] {
    let size = std::mem::size_of::<S>();
    [0, 1, 2].map(|p| {
        let rows = if p == 0 { height } else { height.div_ceil(2) };
        let stride = img.stride[p] as usize / size;
        let plane = std::slice::from_raw_parts_mut(img.planes[p] as *mut S, stride * rows);
        (plane, stride)
    })
}

/// A plane sample: 8 bits, or 10 bits in 16.
trait Sample: Copy {
    fn from_level(level: i32) -> Self;
}

impl Sample for u8 {
    fn from_level(level: i32) -> u8 {
        level as u8
    }
}

impl Sample for u16 {
    fn from_level(level: i32) -> u16 {
        level as u16
    }
}

/// RGB to full-range BT.601 YCbCr 4:2:0, chroma from the 2x2 average, into three
/// `(plane, stride in samples)` pairs. `extra_bits` is 0 for 8-bit output and 2 for
/// 10-bit (levels scaled by 4, mid-grey chroma at 512).
fn rgb_to_ycbcr420<S: Sample>(
    rgb: &[u8],
    width: usize,
    height: usize,
    extra_bits: u32,
    planes: [(&mut [S], usize); 3],
) {
    let [(y_plane, y_stride), (u_plane, u_stride), (v_plane, v_stride)] = planes;
    let row_bytes = width * 3;
    for (y, row) in rgb.chunks_exact(row_bytes).take(height).enumerate() {
        let out = &mut y_plane[y * y_stride..y * y_stride + width];
        for (dst, p) in out.iter_mut().zip(row.chunks_exact(3)) {
            let (r, g, b) = (i32::from(p[0]), i32::from(p[1]), i32::from(p[2]));
            let level = ((Y_R * r + Y_G * g + Y_B * b) << extra_bits) + (1 << 15);
            *dst = S::from_level(level >> 16);
        }
    }
    let chroma_width = width.div_ceil(2);
    for cy in 0..height.div_ceil(2) {
        let top = &rgb[cy * 2 * row_bytes..][..row_bytes];
        // An odd last row averages with itself (twice the weight of nothing).
        let bottom = if cy * 2 + 1 < height {
            &rgb[(cy * 2 + 1) * row_bytes..][..row_bytes]
        } else {
            top
        };
        let u_out = &mut u_plane[cy * u_stride..cy * u_stride + chroma_width];
        let v_out = &mut v_plane[cy * v_stride..cy * v_stride + chroma_width];
        let pairs = top.chunks_exact(6).zip(bottom.chunks_exact(6));
        let mut outputs = u_out.iter_mut().zip(v_out.iter_mut());
        for ((t, b), (u, v)) in pairs.zip(&mut outputs) {
            let sum = |c: usize| {
                i32::from(t[c]) + i32::from(t[c + 3]) + i32::from(b[c]) + i32::from(b[c + 3])
            };
            (*u, *v) = chroma(sum(0), sum(1), sum(2), extra_bits);
        }
        // An odd last column repeats its pixel, so its sum is of four too.
        if let Some((u, v)) = outputs.next() {
            let left = row_bytes - 3;
            let sum = |c: usize| 2 * (i32::from(top[left + c]) + i32::from(bottom[left + c]));
            (*u, *v) = chroma(sum(0), sum(1), sum(2), extra_bits);
        }
    }
}

/// Cb and Cr of a 2x2 block from its sums of four red, green and blue samples.
#[inline(always)]
fn chroma<S: Sample>(r: i32, g: i32, b: i32, extra_bits: u32) -> (S, S) {
    let max = (256 << extra_bits) - 1;
    let mid = 128 << extra_bits;
    // Sums of four at 2^16 scale: 2^18 per level.
    let level = |weighted: i32| {
        S::from_level((((weighted << extra_bits) + (mid << 18) + (1 << 17)) >> 18).clamp(0, max))
    };
    (
        level(CB_R * r + CB_G * g + CB_B * b),
        level(CR_R * r + CR_G * g + CR_B * b),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The float formulas the fixed-point constants approximate.
    fn reference(r: f64, g: f64, b: f64) -> (f64, f64, f64) {
        let y = 0.299 * r + 0.587 * g + 0.114 * b;
        (y, (b - y) / 1.772 + 128.0, (r - y) / 1.402 + 128.0)
    }

    fn convert(rgb: &[u8], width: usize, height: usize, extra_bits: u32) -> [Vec<u16>; 3] {
        let chroma = (width.div_ceil(2), height.div_ceil(2));
        // Strides wider than the rows, as libaom's are.
        let (y_stride, c_stride) = (width + 5, chroma.0 + 3);
        let mut y = vec![0u16; y_stride * height];
        let mut u = vec![0u16; c_stride * chroma.1];
        let mut v = vec![0u16; c_stride * chroma.1];
        rgb_to_ycbcr420(
            rgb,
            width,
            height,
            extra_bits,
            [(&mut y, y_stride), (&mut u, c_stride), (&mut v, c_stride)],
        );
        let pack = |plane: Vec<u16>, stride: usize, w: usize, h: usize| {
            (0..h)
                .flat_map(|row| plane[row * stride..row * stride + w].to_vec())
                .collect()
        };
        [
            pack(y, y_stride, width, height),
            pack(u, c_stride, chroma.0, chroma.1),
            pack(v, c_stride, chroma.0, chroma.1),
        ]
    }

    #[test]
    fn greys_and_primaries_land_on_their_levels() {
        let rgb = [0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 0, 255];
        let [y, u, v] = convert(&rgb, 4, 1, 0);
        assert_eq!(y, [0, 255, 76, 29]);
        // Chroma of black + white is mid-grey; of pure red + blue, both clamp-free.
        assert_eq!((u[0], v[0]), (128, 128));
        let (_, cb, cr) = reference(127.5, 0.0, 127.5);
        assert_eq!((u[1], v[1]), (cb.round() as u16, cr.round() as u16));
        let [y10, u10, v10] = convert(&rgb, 4, 1, 2);
        assert_eq!(y10, [0, 1020, 305, 116]);
        assert_eq!((u10[0], v10[0]), (512, 512));
    }

    proptest! {
        /// Every sample is within one level of the float formula (the rounding of
        /// the 2^-16 coefficients), at both depths and odd sizes, and in range.
        #[test]
        fn fixed_point_matches_the_float_formula(
            (width, height, rgb) in (1usize..9, 1usize..9).prop_flat_map(|(w, h)| {
                (Just(w), Just(h), proptest::collection::vec(any::<u8>(), w * h * 3))
            }),
            high in any::<bool>(),
        ) {
            let extra_bits = if high { 2 } else { 0 };
            let scale = f64::from(1u32 << extra_bits);
            let max = f64::from((256u32 << extra_bits) - 1);
            let [y, u, v] = convert(&rgb, width, height, extra_bits);
            let pixel = |x: usize, row: usize| {
                let i = (row * width + x) * 3;
                (f64::from(rgb[i]), f64::from(rgb[i + 1]), f64::from(rgb[i + 2]))
            };
            for row in 0..height {
                for x in 0..width {
                    let (r, g, b) = pixel(x, row);
                    let expected = reference(r, g, b).0 * scale;
                    prop_assert!((f64::from(y[row * width + x]) - expected).abs() <= 1.0);
                }
            }
            let chroma_width = width.div_ceil(2);
            for cy in 0..height.div_ceil(2) {
                for cx in 0..chroma_width {
                    let (mut r, mut g, mut b) = (0.0, 0.0, 0.0);
                    for (x, row) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                        let p = pixel((cx * 2 + x).min(width - 1), (cy * 2 + row).min(height - 1));
                        r += p.0 / 4.0;
                        g += p.1 / 4.0;
                        b += p.2 / 4.0;
                    }
                    let (_, cb, cr) = reference(r, g, b);
                    let (cb, cr) = (cb * scale, cr * scale);
                    let got = (f64::from(u[cy * chroma_width + cx]), f64::from(v[cy * chroma_width + cx]));
                    prop_assert!((got.0 - cb.clamp(0.0, max)).abs() <= 1.0, "cb {} vs {}", got.0, cb);
                    prop_assert!((got.1 - cr.clamp(0.0, max)).abs() <= 1.0, "cr {} vs {}", got.1, cr);
                }
            }
        }
    }
}
