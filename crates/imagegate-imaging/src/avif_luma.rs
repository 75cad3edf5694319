//! The luma plane of an AVIF file, decoded with libaom: enough for a watermark
//! detector, which reads luma only (chroma and alpha are not decoded into RGB).

use crate::{DecodeLimits, ImagingError};
use aom_sys as aom;
use std::os::raw::c_int;
use std::ptr;

/// A decoded luma plane, samples as the codec stored them (8-bit, or 10/12-bit
/// values for high bit depth; limited or full range as encoded).
#[derive(Clone, Debug)]
pub struct LumaSamples {
    pub width: u32,
    pub height: u32,
    pub samples: Vec<f32>,
}

/// Owns an initialised decoder context and destroys it on every path out.
struct Decoder(aom::aom_codec_ctx_t);

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: the context was initialised by aom_codec_dec_init_ver, the only
        // way a Decoder is built.
        unsafe {
            aom::aom_codec_destroy(&mut self.0);
        }
    }
}

fn fail(reason: impl Into<String>) -> ImagingError {
    ImagingError::Decode {
        format: "avif".into(),
        reason: reason.into(),
    }
}

/// Whether `bytes` look like an AVIF file (an ISO BMFF `ftyp` box with an AVIF brand).
pub fn is_avif(bytes: &[u8]) -> bool {
    bytes.len() >= 12
        && &bytes[4..8] == b"ftyp"
        && (&bytes[8..12] == b"avif" || &bytes[8..12] == b"avis")
}

/// Decodes the primary image of an AVIF file to its luma plane, within `limits`.
pub fn decode_avif_luma(bytes: &[u8], limits: &DecodeLimits) -> Result<LumaSamples, ImagingError> {
    if bytes.len() > limits.max_input_bytes {
        return Err(ImagingError::InputTooLarge {
            bytes: bytes.len(),
            limit: limits.max_input_bytes,
        });
    }
    let avif = avif_parse::read_avif(&mut std::io::Cursor::new(bytes))
        .map_err(|e| fail(format!("container: {e}")))?;
    let av1: &[u8] = &avif.primary_item;
    // SAFETY: the context is zeroed then initialised by libaom before use, and
    // destroyed by Decoder's drop; `av1` outlives the decode call; the image
    // libaom returns is read within its plane bounds (stride x height) before the
    // context that owns it is destroyed.
    unsafe {
        let mut ctx = Decoder(std::mem::zeroed());
        let cfg = aom::aom_codec_dec_cfg_t {
            threads: 1,
            w: 0,
            h: 0,
            allow_lowbitdepth: 1,
        };
        if aom::aom_codec_dec_init_ver(
            &mut ctx.0,
            aom::aom_codec_av1_dx(),
            &cfg,
            0,
            aom::AOM_DECODER_ABI_VERSION as c_int,
        ) != aom::aom_codec_err_t::AOM_CODEC_OK
        {
            return Err(fail("libaom decoder did not start"));
        }
        if aom::aom_codec_decode(&mut ctx.0, av1.as_ptr(), av1.len(), ptr::null_mut())
            != aom::aom_codec_err_t::AOM_CODEC_OK
        {
            return Err(fail("libaom could not decode the AV1 data"));
        }
        let mut iter = ptr::null();
        let img = aom::aom_codec_get_frame(&mut ctx.0, &mut iter);
        if img.is_null() {
            return Err(fail("the AV1 data holds no frame"));
        }
        let img = &*img;
        let (width, height) = (img.d_w, img.d_h);
        limits.check(width, height)?;
        let stride = usize::try_from(img.stride[0]).map_err(|_| fail("negative stride"))?;
        let high = img.fmt & aom::AOM_IMG_FMT_HIGHBITDEPTH != 0;
        let mut samples = Vec::with_capacity(width as usize * height as usize);
        for y in 0..height as usize {
            let row = img.planes[0].add(y * stride);
            for x in 0..width as usize {
                let v = if high {
                    f32::from(ptr::read_unaligned(row.add(2 * x).cast::<u16>()))
                } else {
                    f32::from(*row.add(x))
                };
                samples.push(v);
            }
        }
        Ok(LumaSamples {
            width,
            height,
            samples,
        })
    }
}
