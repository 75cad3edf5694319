//! Replays every file under `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/`
//! through the property the fuzz target checks. A finding is fixed by committing its
//! input to `fuzz/regressions/<target>/` together with the fix; this test then keeps
//! it fixed on stable Rust, in CI.

use std::fs;
use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut files = Vec::new();
    for dir in ["seeds", "regressions"] {
        let dir = fuzz.join(dir).join(target);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("listing a fuzz corpus").path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn replay(target: &str, check: fn(&[u8]), at_least: usize) {
    let files = inputs(target);
    assert!(
        files.len() >= at_least,
        "expected at least {at_least} inputs for {target}, found {}: the corpus is missing",
        files.len()
    );
    for path in files {
        let data = fs::read(&path).expect("reading a fuzz input");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(
            outcome.is_ok(),
            "{target}: {} breaks a property",
            path.display()
        );
    }
}

#[test]
fn decode_image_corpus_holds() {
    replay("decode_image", imagegate_fuzz::decode_image, 6);
}

#[test]
fn parse_request_corpus_holds() {
    replay("parse_request", imagegate_fuzz::parse_request, 6);
}

/// The checks are not vacuous: a well-formed request resolves (so the key
/// assertions run) and a real PNG decodes (so the size assertions run).
#[test]
fn the_checks_reach_their_assertions() {
    let body = br#"{"prompt":"a red fox","variants":[256,512],"formats":["avif","jpeg"]}"#;
    let req: imagegate_pipeline::ImageRequest = serde_json::from_slice(body).expect("parses");
    let config = imagegate_pipeline::PipelineConfig::from_toml_sections(
        imagegate_fuzz::DEFAULT_CONFIG_TOML,
        &["server"],
    )
    .expect("config");
    let profiles = config.resolved_profiles().expect("profiles");
    assert!(imagegate_pipeline::resolve_request(&config, &profiles, &req).is_ok());
    imagegate_fuzz::parse_request(body);

    let png = fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/decode_image/gradient.png"),
    )
    .expect("the PNG seed");
    assert!(imagegate_imaging::decode(&png, &imagegate_fuzz::FUZZ_LIMITS).is_ok());
    imagegate_fuzz::decode_image(&png);
}
