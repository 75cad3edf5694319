//! SSIMULACRA2 of DISTORTED against REFERENCE (PNG or JPEG; decode AVIF to PNG
//! first with an independent decoder such as avifdec). Prints the score.
//!
//!     ssim2 REFERENCE DISTORTED

use ssimulacra2::{compute_frame_ssimulacra2, ColorPrimaries, Rgb, TransferCharacteristic};

fn load(path: &str) -> Rgb {
    let image = image::open(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .to_rgb8();
    let (width, height) = image.dimensions();
    let pixels = image
        .pixels()
        .map(|p| [p[0], p[1], p[2]].map(|c| f32::from(c) / 255.0))
        .collect();
    Rgb::new(
        pixels,
        width as usize,
        height as usize,
        TransferCharacteristic::SRGB,
        ColorPrimaries::BT709,
    )
    .expect("an sRGB frame")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: ssim2 REFERENCE DISTORTED");
        std::process::exit(2);
    }
    let score = compute_frame_ssimulacra2(load(&args[1]), load(&args[2])).expect("scoring");
    println!("{score:.3}");
}
