//! What the fuzz targets in `fuzz/` assert, kept here so that ordinary
//! `cargo test` replays the seed corpus and every past finding
//! (`fuzz/seeds/<target>/`, `fuzz/regressions/<target>/`) without libFuzzer or a
//! nightly compiler. Each function panics when a property is broken; any input
//! that makes one panic is a bug in imagegate, not in the input.

use image::RgbImage;
use imagegate_core::key::content_key;
use imagegate_core::profile::RenderProfile;
use imagegate_imaging::{decode, decode_rgba, resize, scaled_height, DecodeLimits, Watermarker};
use imagegate_pipeline::{resolve_request, ImageRequest, PipelineConfig};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// Smaller than the service's defaults so a fuzzer spends its time on parsing, not
/// on decoding megapixels; the code paths are the same.
pub const FUZZ_LIMITS: DecodeLimits = DecodeLimits {
    max_pixels: 1 << 20,
    max_side: 2048,
    max_input_bytes: 1 << 20,
};

/// The configuration the service starts with when given none.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../../config/imagegate.toml");

struct Defaults {
    config: PipelineConfig,
    profiles: BTreeMap<String, RenderProfile>,
    watermarker: Watermarker,
}

fn defaults() -> &'static Defaults {
    static DEFAULTS: OnceLock<Defaults> = OnceLock::new();
    DEFAULTS.get_or_init(|| {
        let config: PipelineConfig =
            PipelineConfig::from_toml_sections(DEFAULT_CONFIG_TOML, &["server"])
                .expect("config/imagegate.toml parses");
        config.validate().expect("config/imagegate.toml is valid");
        let profiles = config
            .resolved_profiles()
            .expect("the default profiles resolve");
        let spec = profiles
            .values()
            .find_map(|p| p.watermark.clone())
            .expect("a default profile has a watermark");
        let watermarker = Watermarker::new(&spec).expect("the default watermark loads");
        Defaults {
            config,
            profiles,
            watermarker,
        }
    })
}

/// Provider output or a user upload: decoding either succeeds within the limits
/// or returns an error; never a panic, an allocation past the limits, or an empty
/// image. What decodes must also survive the rest of the image path's cheap steps
/// (the watermark and a resize), whatever its shape.
pub fn decode_image(data: &[u8]) {
    let limits = FUZZ_LIMITS;
    let rgb = match decode(data, &limits) {
        Ok(image) => image,
        Err(_) => {
            // The alpha-keeping decoder must refuse the same inputs.
            assert!(
                decode_rgba(data, &limits).is_err(),
                "decode refused an input that decode_rgba accepted"
            );
            return;
        }
    };
    let (width, height) = rgb.dimensions();
    assert!(
        width > 0 && height > 0,
        "decoded an empty {width}x{height} image"
    );
    assert!(width <= limits.max_side && height <= limits.max_side);
    assert!(u64::from(width) * u64::from(height) <= limits.max_pixels);
    let rgba = decode_rgba(data, &limits).expect("decode_rgba refused what decode accepted");
    assert_eq!(rgba.dimensions(), (width, height));

    let mut stamped: RgbImage = rgb.clone();
    defaults().watermarker.apply(&mut stamped);
    assert_eq!(stamped.dimensions(), (width, height));

    let target = (width / 2).clamp(1, 64);
    let small = resize(&rgb, target).expect("resizing a decoded image");
    if target < width {
        assert_eq!(
            small.dimensions(),
            (target, scaled_height(width, height, target))
        );
    } else {
        assert_eq!(small.dimensions(), (width, height));
    }
}

/// `POST /v1/images` bodies: parsing and resolution against the default
/// configuration either produce a request whose profile is valid and whose content
/// key is deterministic, or a client error; never a panic.
pub fn parse_request(data: &[u8]) {
    let Ok(req) = serde_json::from_slice::<ImageRequest>(data) else {
        return;
    };
    let defaults = defaults();
    let Ok((gen, profile, policy)) = resolve_request(&defaults.config, &defaults.profiles, &req)
    else {
        return;
    };
    profile
        .validate()
        .expect("a resolved request carries a valid profile");
    assert!(profile.variants.len() <= defaults.config.limits.max_variants);
    assert!(req.prompt.chars().count() <= defaults.config.limits.max_prompt_chars);
    assert!(
        !gen.prompt.trim().is_empty(),
        "an empty prompt was accepted"
    );
    let (again, again_profile, again_policy) =
        resolve_request(&defaults.config, &defaults.profiles, &req)
            .expect("resolving the same request twice");
    assert_eq!(
        content_key(&gen, &profile),
        content_key(&again, &again_profile),
        "the content key of one request changed between resolutions"
    );
    assert_eq!(policy, again_policy);
}
