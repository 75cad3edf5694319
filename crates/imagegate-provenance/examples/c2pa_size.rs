//! Bytes and CPU time Content Credentials add to each delivered variant: corpus
//! pictures resized to the default widths, encoded as the default profile does
//! (AVIF, JPEG) plus lossless WebP, then signed
//! - with a development CA's ES256 certificate (a two-certificate chain, as
//!   `imagegate provenance init` makes),
//! - with the throwaway Ed25519 chain used when no key is configured,
//! - with the ES256 signer and a parent ingredient: the corpus PNG signed by a
//!   "vendor" first, as OpenAI signs its output.
//!
//! Bytes are means over the pictures; signing time is the median over pictures
//! (one call, single thread, wall clock).
//!
//! ```sh
//! cargo run --release -p imagegate-provenance --example c2pa_size -- [CORPUS_DIR] [N_IMAGES]
//! ```

use imagegate_core::{ImageFormat, RenderProfile};
use imagegate_provenance::{generate_development_ca, Generator, Parent, Signer};
use std::io::Cursor;
use std::path::PathBuf;
use std::time::Instant;

const WIDTHS: [u32; 4] = [256, 512, 768, 1024];
const FORMATS: [ImageFormat; 3] = [ImageFormat::Avif, ImageFormat::Jpeg, ImageFormat::Webp];

/// The corpus PNG with a vendor's manifest (its own throwaway chain).
fn vendor_signed(png: &[u8]) -> Vec<u8> {
    let definition = serde_json::json!({
        "claim_generator_info": [{"name": "Vendor-Image-API", "version": "1"}],
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [{
            "action": "c2pa.created",
            "digitalSourceType": imagegate_provenance::TRAINED_ALGORITHMIC_MEDIA,
            "softwareAgent": {"name": "vendor-model"},
        }]}}],
    });
    let context = c2pa::Context::new()
        .with_settings(r#"{"builder": {"thumbnail": {"enabled": false}}}"#)
        .expect("settings")
        .into_shared();
    let mut builder = c2pa::Builder::from_shared_context(&context)
        .with_definition(definition.to_string())
        .expect("definition");
    let signer = c2pa::EphemeralSigner::new("vendor").expect("vendor chain");
    let mut out = Cursor::new(Vec::new());
    builder
        .sign(&signer, "image/png", &mut Cursor::new(png), &mut out)
        .expect("vendor signs");
    out.into_inner()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// One picture's encoded variants, in (format, width) order.
struct Encoded {
    files: Vec<(ImageFormat, u32, Vec<u8>)>,
    /// The source PNG as a vendor would deliver it, signed.
    vendor_png: Vec<u8>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let corpus = PathBuf::from(
        args.get(1)
            .cloned()
            .unwrap_or_else(|| "../shared/corpus".into()),
    );
    let n: usize = args.get(2).map_or(8, |s| s.parse().expect("N_IMAGES"));
    let Ok(dir) = std::fs::read_dir(&corpus) else {
        eprintln!("no corpus at {}: pass its path", corpus.display());
        std::process::exit(2);
    };
    let mut paths: Vec<PathBuf> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    paths.sort();
    paths.truncate(n);
    let profile = RenderProfile {
        name: "bench".into(),
        variants: WIDTHS.to_vec(),
        formats: FORMATS.to_vec(),
        avif: Default::default(),
        jpeg: Default::default(),
        webp_quality: None,
        watermark: None,
        safety: Default::default(),
        provenance: Default::default(),
    };
    eprintln!("encoding {} pictures ...", paths.len());
    let pictures: Vec<Encoded> = paths
        .iter()
        .map(|path| {
            let png = std::fs::read(path).expect("read");
            let source = image::load_from_memory(&png).expect("PNG").to_rgb8();
            let mut files = Vec::new();
            for format in FORMATS {
                for width in WIDTHS {
                    let v = imagegate_imaging::resize(&source, width).expect("resize");
                    let bytes = imagegate_imaging::encode(&v, format, &profile).expect("encode");
                    files.push((format, width, bytes));
                }
            }
            Encoded {
                files,
                vendor_png: vendor_signed(&png),
            }
        })
        .collect();

    let ca = generate_development_ca("imagegate bench").expect("CA");
    let es256 = Signer::from_pem(ca.cert_chain_pem.as_bytes(), ca.private_key_pem.as_bytes())
        .expect("es256");
    let ed25519 = Signer::ephemeral().expect("ephemeral");
    let generator = Generator {
        provider: "openai".into(),
        model: "gpt-image-2".into(),
    };
    let parents: Vec<Parent> = pictures
        .iter()
        .map(|p| {
            es256
                .parent_of(&p.vendor_png)
                .expect("reads")
                .expect("the vendor's manifest")
        })
        .collect();
    let parent_ms = median(
        pictures
            .iter()
            .map(|p| {
                let t = Instant::now();
                let _ = es256.parent_of(&p.vendor_png).expect("reads");
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    let parent_bytes = parents.iter().map(Parent::manifest_bytes).sum::<usize>() / parents.len();
    println!(
        "pictures: {}; vendor manifest store {} bytes (mean); reading it once per render: {:.2} ms (median)",
        pictures.len(),
        parent_bytes,
        parent_ms
    );
    println!(
        "{:<22} {:<5} {:>5} {:>9} {:>8} {:>7} {:>10}",
        "signer", "fmt", "width", "bytes", "added", "+%", "sign_ms_p50"
    );
    let modes: [(&str, &Signer, bool); 3] = [
        ("es256 dev CA", &es256, false),
        ("ed25519 ephemeral", &ed25519, false),
        ("es256 + vendor parent", &es256, true),
    ];
    for (name, signer, with_parent) in modes {
        println!("# {name}: reserve {} bytes", signer.reserve_size());
        for (i, (format, width)) in FORMATS
            .iter()
            .flat_map(|&f| WIDTHS.iter().map(move |&w| (f, w)))
            .enumerate()
        {
            let (mut plain, mut added) = (0usize, 0usize);
            let mut ms = Vec::new();
            for (picture, parent) in pictures.iter().zip(&parents) {
                let bytes = &picture.files[i].2;
                let parent = with_parent.then_some(parent);
                let t = Instant::now();
                let signed = signer
                    .sign(bytes, format, &generator, parent)
                    .expect("sign");
                ms.push(t.elapsed().as_secs_f64() * 1e3);
                plain += bytes.len();
                added += signed.len() - bytes.len();
            }
            let k = pictures.len().max(1) as f64;
            println!(
                "{:<22} {:<5} {:>5} {:>9.0} {:>8.0} {:>6.1}% {:>10.2}",
                name,
                format.to_string(),
                width,
                plain as f64 / k,
                added as f64 / k,
                100.0 * added as f64 / plain as f64,
                median(ms)
            );
        }
    }
}
