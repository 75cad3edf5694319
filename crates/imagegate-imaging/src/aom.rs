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

// BT.601 full range, as ravif writes (matrix_coefficients 6 in the file).
const KR: f32 = 0.299;
const KB: f32 = 0.114;
const KG: f32 = 1.0 - KR - KB;

fn luma(r: f32, g: f32, b: f32) -> f32 {
    KR * r + KG * g + KB * b
}

/// Encodes `image` into an AVIF file on the calling thread (libaom gets one thread:
/// parallelism across variants is the caller's, and so is the CPU clock).
pub(crate) fn encode(image: &RgbImage, settings: &AvifSettings) -> Result<Vec<u8>, String> {
    let (width, height) = image.dimensions();
    let high_bit_depth = match settings.bit_depth {
        8 => false,
        10 => true,
        other => return Err(format!("avif bit depth {other} is not 8 or 10")),
    };
    let av1 = encode_av1(image.as_raw(), width, height, settings, high_bit_depth)?;
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
        cfg.g_threads = 1;
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
///
/// RGB to full-range BT.601 YCbCr 4:2:0 (chroma from the 2x2 average), written into
/// libaom's planes.
unsafe fn fill_planes(
    img: &mut aom::aom_image_t,
    rgb: &[u8],
    width: usize,
    height: usize,
    high: bool,
) {
    let scale = if high { 4.0f32 } else { 1.0 };
    let max = if high { 1023.0f32 } else { 255.0 };
    let mid = if high { 512.0f32 } else { 128.0 };
    let y_stride = img.stride[0] as usize;
    let u_stride = img.stride[1] as usize;
    let v_stride = img.stride[2] as usize;
    let put = |plane: *mut u8, stride: usize, x: usize, y: usize, value: f32| {
        let v = value.round().clamp(0.0, max);
        if high {
            *(plane.add(y * stride) as *mut u16).add(x) = v as u16;
        } else {
            *plane.add(y * stride + x) = v as u8;
        }
    };
    for y in 0..height {
        let row = &rgb[y * width * 3..(y + 1) * width * 3];
        for (x, p) in row.chunks_exact(3).enumerate() {
            let value = luma(f32::from(p[0]), f32::from(p[1]), f32::from(p[2])) * scale;
            put(img.planes[0], y_stride, x, y, value);
        }
    }
    let chroma_w = width.div_ceil(2);
    let chroma_h = height.div_ceil(2);
    for cy in 0..chroma_h {
        for cx in 0..chroma_w {
            let (mut r, mut g, mut b, mut n) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
            for y in (cy * 2)..(cy * 2 + 2).min(height) {
                for x in (cx * 2)..(cx * 2 + 2).min(width) {
                    let i = (y * width + x) * 3;
                    r += f32::from(rgb[i]);
                    g += f32::from(rgb[i + 1]);
                    b += f32::from(rgb[i + 2]);
                    n += 1.0;
                }
            }
            let (r, g, b) = (r / n, g / n, b / n);
            let yy = luma(r, g, b);
            let cb = (b - yy) / (2.0 * (1.0 - KB)) * scale + mid;
            let cr = (r - yy) / (2.0 * (1.0 - KR)) * scale + mid;
            put(img.planes[1], u_stride, cx, cy, cb);
            put(img.planes[2], v_stride, cx, cy, cr);
        }
    }
}
