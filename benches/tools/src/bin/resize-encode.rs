//! imagegate's resize + encode as one process, the unit of work `vipsthumbnail`
//! does: decode a PNG, resize to one width (Lanczos3, as the pipeline does), encode
//! one format with the given settings, write the file. Prints one JSON line with
//! the milliseconds of each step and the output size.
//!
//!     resize-encode IN.png OUT WIDTH avif|jpeg|webp QUALITY [SPEED [BIT_DEPTH [aom|rav1e [THREADS]]]]
//!
//! THREADS (default 1) is how many threads libaom may use, as the service gives a
//! lone encode the CPU workers that sit idle.

use imagegate_core::profile::{
    AvifEncoder, AvifSettings, ImageFormat, JpegSettings, RenderProfile,
};
use imagegate_imaging::{decode, encode_threaded, resize, DecodeLimits};
use std::num::NonZeroUsize;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        eprintln!(
            "usage: resize-encode IN.png OUT WIDTH avif|jpeg|webp QUALITY [SPEED [BIT_DEPTH [aom|rav1e [THREADS]]]]"
        );
        std::process::exit(2);
    }
    let width: u32 = args[3].parse().expect("WIDTH is a number");
    let format: ImageFormat = args[4].parse().expect("format is avif or jpeg");
    let quality: f32 = args[5].parse().expect("QUALITY is a number");
    let defaults = AvifSettings::default();
    let speed: u8 = args
        .get(6)
        .map_or(defaults.speed, |s| s.parse().expect("SPEED is a number"));
    let bit_depth: u8 = args.get(7).map_or(defaults.bit_depth, |s| {
        s.parse().expect("BIT_DEPTH is 8 or 10")
    });
    let encoder = match args.get(8).map(String::as_str) {
        None => defaults.encoder,
        Some("aom") => AvifEncoder::Aom,
        Some("rav1e") => AvifEncoder::Rav1e,
        Some(other) => panic!("encoder {other:?} is not aom or rav1e"),
    };
    let threads: NonZeroUsize = args.get(9).map_or(NonZeroUsize::MIN, |s| {
        s.parse().expect("THREADS is a number of at least 1")
    });
    let profile = RenderProfile {
        name: "bench".to_owned(),
        variants: vec![width],
        formats: vec![format],
        avif: AvifSettings {
            quality,
            speed,
            bit_depth,
            encoder,
        },
        jpeg: JpegSettings {
            quality: quality.round().clamp(1.0, 100.0) as u8,
        },
        webp_quality: None,
        watermark: None,
        safety: Default::default(),
        provenance: Default::default(),
    };

    let started = Instant::now();
    let bytes = std::fs::read(&args[1]).expect("reading the input");
    let source = decode(&bytes, &DecodeLimits::default()).expect("decoding the input");
    let decoded = Instant::now();
    let resized = resize(&source, width).expect("resizing");
    let resized_at = Instant::now();
    let out = encode_threaded(&resized, format, &profile, threads).expect("encoding");
    let encoded = Instant::now();
    std::fs::write(&args[2], &out).expect("writing the output");
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
    println!(
        "{{\"decode_ms\":{:.2},\"resize_ms\":{:.2},\"encode_ms\":{:.2},\"bytes\":{}}}",
        ms(started, decoded),
        ms(decoded, resized_at),
        ms(resized_at, encoded),
        out.len()
    );
}
