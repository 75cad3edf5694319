//! Bytes and CPU time Content Credentials add to each delivered variant: corpus
//! pictures resized to the default widths, encoded as the default profile does
//! (AVIF quality 60 speed 8, JPEG q80) plus lossless WebP, then signed with a
//! development CA's ES256 certificate (a two-certificate chain) and with the
//! throwaway Ed25519 chain used when no key is configured.
//!
//! ```sh
//! cargo run --release -p imagegate-provenance --example c2pa_size -- [CORPUS_DIR] [N_IMAGES]
//! ```

use imagegate_core::{ImageFormat, RenderProfile};
use imagegate_provenance::{generate_development_ca, Generator, Signer};
use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let corpus = PathBuf::from(
        args.get(1)
            .cloned()
            .unwrap_or_else(|| "../shared/corpus".into()),
    );
    let n: usize = args.get(2).map_or(3, |s| s.parse().expect("N_IMAGES"));
    let Ok(dir) = std::fs::read_dir(&corpus) else {
        eprintln!("no corpus at {}: pass its path", corpus.display());
        std::process::exit(2);
    };
    let mut files: Vec<PathBuf> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    files.sort();
    files.truncate(n);
    let ca = generate_development_ca("imagegate bench").expect("CA");
    let signers = [
        (
            "es256 dev CA",
            Signer::from_pem(ca.cert_chain_pem.as_bytes(), ca.private_key_pem.as_bytes())
                .expect("signer"),
        ),
        ("ed25519 ephemeral", Signer::ephemeral().expect("signer")),
    ];
    let profile = RenderProfile {
        name: "bench".into(),
        variants: vec![256, 512, 768, 1024],
        formats: vec![ImageFormat::Avif, ImageFormat::Jpeg, ImageFormat::Webp],
        avif: Default::default(),
        jpeg: Default::default(),
        webp_quality: None,
        watermark: None,
        safety: Default::default(),
    };
    let generator = Generator {
        provider: "openai".into(),
        model: "gpt-image-1".into(),
    };
    println!(
        "{:<18} {:<5} {:>5} {:>9} {:>9} {:>8} {:>8} {:>9}",
        "signer", "fmt", "width", "bytes", "signed", "added", "+%", "sign_ms"
    );
    for (name, signer) in &signers {
        println!("# {name}: reserve {} bytes", signer.reserve_size());
        for format in [ImageFormat::Avif, ImageFormat::Jpeg, ImageFormat::Webp] {
            for width in [256u32, 512, 768, 1024] {
                let (mut plain, mut signed_total, mut ms) = (0usize, 0usize, 0f64);
                for path in &files {
                    let source = image::open(path).expect("PNG").to_rgb8();
                    let v = imagegate_imaging::resize(&source, width).expect("resize");
                    let bytes = imagegate_imaging::encode(&v, format, &profile).expect("encode");
                    let t = Instant::now();
                    let signed = signer.sign(&bytes, format, &generator).expect("sign");
                    ms += t.elapsed().as_secs_f64() * 1e3;
                    plain += bytes.len();
                    signed_total += signed.len();
                }
                let k = files.len().max(1) as f64;
                println!(
                    "{:<18} {:<5} {:>5} {:>9.0} {:>9.0} {:>8.0} {:>7.1}% {:>9.2}",
                    name,
                    format.to_string(),
                    width,
                    plain as f64 / k,
                    signed_total as f64 / k,
                    (signed_total - plain) as f64 / k,
                    100.0 * (signed_total - plain) as f64 / plain as f64,
                    ms / k
                );
            }
        }
    }
}
