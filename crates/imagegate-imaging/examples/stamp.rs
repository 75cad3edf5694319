//! Eyeball the watermark: `cargo run -p imagegate-imaging --example stamp -- in.png out.png [text]`
//! decodes `in.png`, stamps `text` (default "imagegate") bottom-right at the default
//! opacity, scale and margin, and writes `out.png`.

use imagegate_core::profile::{WatermarkMark, WatermarkPosition, WatermarkSpec};
use imagegate_imaging::{decode, DecodeLimits, Watermarker};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output, rest @ ..] = args.as_slice() else {
        return Err("usage: stamp IN.png OUT.png [TEXT]".into());
    };
    let text = rest
        .first()
        .cloned()
        .unwrap_or_else(|| "imagegate".to_owned());
    let mut image = decode(&std::fs::read(input)?, &DecodeLimits::default())?;
    let spec = WatermarkSpec {
        mark: WatermarkMark::Text {
            text,
            color: [255, 255, 255],
        },
        position: WatermarkPosition::BottomRight,
        opacity: 0.5,
        scale: 0.25,
        margin: 0.02,
    };
    Watermarker::new(&spec)?.apply(&mut image);
    image.save(output)?;
    Ok(())
}
