//! Measures the invisible watermark on the benchmark corpus along the delivery
//! path: each picture resized to a 768 px variant, marked, encoded as AVIF with the
//! default profile (libaom, quality 60, speed 8, 4:2:0), decoded again (`avifdec`,
//! libavif's independent decoder), then that copy resized to 512 px and re-encoded
//! as JPEG q75. Prints bit error rates, PSNR against the unmarked variant, bytes
//! added, embed time, and detections on the unmarked copies.
//!
//! ```sh
//! cargo run --release -p imagegate-provenance --example watermark_robustness -- [CORPUS_DIR] [PSNR_DB]
//! ```

use imagegate_core::{ImageFormat, RenderProfile};
use imagegate_provenance::{detect, embed, luma_plane, Payload, WatermarkKey};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let corpus = PathBuf::from(
        args.get(1)
            .cloned()
            .unwrap_or_else(|| "../shared/corpus".to_string()),
    );
    let psnr_target: f32 = args.get(2).map_or(46.0, |s| s.parse().expect("PSNR_DB"));
    let Ok(dir) = std::fs::read_dir(&corpus) else {
        eprintln!(
            "no corpus at {}: pass its path (the benchmark corpus lives in ../shared/corpus)",
            corpus.display()
        );
        std::process::exit(2);
    };
    let mut files: Vec<PathBuf> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    files.sort();
    let key = WatermarkKey::new(1, *blake3::hash(b"imagegate benchmark key").as_bytes());
    let profile = RenderProfile {
        name: "bench".into(),
        variants: vec![768],
        formats: vec![ImageFormat::Avif],
        avif: Default::default(),
        jpeg: imagegate_core::profile::JpegSettings { quality: 75 },
        webp_quality: None,
        watermark: None,
        safety: Default::default(),
        provenance: Default::default(),
    };
    let tmp = tempfile::tempdir().expect("temp dir");

    println!(
        "{:<22} {:>7} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "image",
        "psnr",
        "ber_avif",
        "ber_jpg",
        "ber_crop",
        "conf_av",
        "conf_jp",
        "embed_ms",
        "avif_+B",
        "unmarked"
    );
    let (mut errs_avif, mut errs_jpeg, mut bits, mut false_hits, mut unmarked_reads) =
        (0, 0, 0, 0, 0);
    let (mut found_avif, mut found_jpeg) = (0, 0);
    let (mut added, mut base_bytes, mut embed_ms, mut psnr_sum) = (0i64, 0i64, 0f64, 0f64);
    for (n, path) in files.iter().enumerate() {
        let source = image::open(path).expect("corpus PNG").to_rgb8();
        let variant = imagegate_imaging::resize(&source, 768).expect("resize");
        let content_key: imagegate_core::ContentKey =
            blake3::hash(path.to_string_lossy().as_bytes())
                .to_hex()
                .parse()
                .expect("key");
        let payload = Payload::for_content_key(key.id(), content_key);

        let mut marked = variant.clone();
        let t = Instant::now();
        embed(&mut marked, &key, payload, psnr_target);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let psnr = psnr_of(&variant, &marked);

        let avif_plain =
            imagegate_imaging::encode(&variant, ImageFormat::Avif, &profile).expect("avif");
        let avif_marked =
            imagegate_imaging::encode(&marked, ImageFormat::Avif, &profile).expect("avif");
        let back_marked = avifdec(tmp.path(), &format!("m{n}"), &avif_marked);
        let back_plain = avifdec(tmp.path(), &format!("p{n}"), &avif_plain);

        let d_avif = detect(&luma_plane(&back_marked), &key);
        let jpeg = reencode_jpeg(&back_marked, 512, 75);
        let d_jpeg = detect(&luma_plane(&jpeg), &key);
        // A 10% crop from the left: the grid no longer lines up.
        let crop = image::imageops::crop_imm(&back_marked, 77, 0, 691, 768).to_image();
        let d_crop = detect(&luma_plane(&crop), &key);
        if std::env::var_os("WM_DEBUG").is_some() {
            let raw = detect(&luma_plane(&marked), &key);
            eprintln!(
                "raw ber {} conf {:.2}",
                raw.bit_errors(&payload),
                raw.confidence
            );
        }

        let mut hits = 0;
        for unmarked in [
            variant.clone(),
            back_plain.clone(),
            reencode_jpeg(&back_plain, 512, 75),
            source.clone(),
        ] {
            unmarked_reads += 1;
            if detect(&luma_plane(&unmarked), &key).payload.is_some() {
                hits += 1;
            }
        }
        false_hits += hits;
        errs_avif += d_avif.bit_errors(&payload);
        errs_jpeg += d_jpeg.bit_errors(&payload);
        found_avif += usize::from(d_avif.payload == Some(payload));
        found_jpeg += usize::from(d_jpeg.payload == Some(payload));
        bits += 96;
        let plus = avif_marked.len() as i64 - avif_plain.len() as i64;
        added += plus;
        base_bytes += avif_plain.len() as i64;
        embed_ms += ms;
        psnr_sum += psnr;
        println!(
            "{:<22} {:>7.2} {:>8.2}% {:>8.2}% {:>8.2}% {:>8.2} {:>8.2} {:>8.2} {:>9} {:>8}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            psnr,
            100.0 * d_avif.bit_errors(&payload) as f64 / 96.0,
            100.0 * d_jpeg.bit_errors(&payload) as f64 / 96.0,
            100.0 * d_crop.bit_errors(&payload) as f64 / 96.0,
            d_avif.confidence,
            d_jpeg.confidence,
            ms,
            plus,
            hits
        );
    }
    let n = files.len().max(1) as f64;
    println!();
    println!("images: {}", files.len());
    println!(
        "PSNR target {psnr_target} dB, mean measured {:.2} dB",
        psnr_sum / n
    );
    println!(
        "bit error rate after 768 px AVIF: {:.3}% ({errs_avif}/{bits}); payload recovered {found_avif}/{}",
        100.0 * errs_avif as f64 / bits.max(1) as f64,
        files.len()
    );
    println!(
        "bit error rate after that AVIF as 512 px JPEG q75: {:.3}% ({errs_jpeg}/{bits}); payload recovered {found_jpeg}/{}",
        100.0 * errs_jpeg as f64 / bits.max(1) as f64,
        files.len()
    );
    println!("detections on unmarked copies: {false_hits}/{unmarked_reads}");
    println!(
        "AVIF bytes added: {:.0} per file ({:+.2}% of {:.0})",
        added as f64 / n,
        100.0 * added as f64 / base_bytes.max(1) as f64,
        base_bytes as f64 / n
    );
    println!("embed time per 768 px variant: {:.2} ms", embed_ms / n);
}

fn psnr_of(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    let mse = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        / a.as_raw().len() as f64;
    10.0 * (255.0f64 * 255.0 / mse.max(1e-12)).log10()
}

fn avifdec(dir: &Path, name: &str, bytes: &[u8]) -> image::RgbImage {
    let avif = dir.join(format!("{name}.avif"));
    let png = dir.join(format!("{name}.png"));
    std::fs::write(&avif, bytes).expect("write avif");
    let status = std::process::Command::new("avifdec")
        .arg(&avif)
        .arg(&png)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("avifdec (Debian: libavif-bin) runs");
    assert!(status.success(), "avifdec failed");
    image::open(&png).expect("decoded png").to_rgb8()
}

fn reencode_jpeg(img: &image::RgbImage, width: u32, quality: u8) -> image::RgbImage {
    let small = imagegate_imaging::resize(img, width).expect("resize");
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(&small)
        .expect("jpeg");
    image::load_from_memory(&out)
        .expect("jpeg decodes")
        .to_rgb8()
}
