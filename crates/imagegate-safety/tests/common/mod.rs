//! Locations of the real model, runtime and corpus for the integration tests.
#![allow(dead_code)]

use imagegate_safety::{Classifier, ClassifierConfig, MODEL_FILE, RUNTIME_LIBRARY_FILE};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `IMAGEGATE_MODELS_DIR`, or `<repo>/models`.
pub fn models_dir() -> PathBuf {
    std::env::var_os("IMAGEGATE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models"))
}

/// The models directory's configuration; panics (never skips) when a file is absent.
pub fn config() -> ClassifierConfig {
    let dir = models_dir();
    for file in [MODEL_FILE, RUNTIME_LIBRARY_FILE] {
        let path = dir.join(file);
        assert!(
            path.is_file(),
            "{} is missing: run scripts/fetch-models.sh (or point IMAGEGATE_MODELS_DIR at a \
             directory holding {MODEL_FILE} and {RUNTIME_LIBRARY_FILE})",
            path.display()
        );
    }
    ClassifierConfig::in_dir(dir)
}

/// One classifier per test binary: loading builds sessions and runs test inferences.
pub fn classifier() -> &'static Classifier {
    static CLASSIFIER: OnceLock<Classifier> = OnceLock::new();
    CLASSIFIER.get_or_init(|| Classifier::load(&config()).expect("classifier loads"))
}

/// `IMAGEGATE_CORPUS`, or `../shared/corpus` beside the repository.
pub fn corpus_dir() -> PathBuf {
    std::env::var_os("IMAGEGATE_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/corpus"))
}

/// The corpus PNGs (name, path), sorted; panics when the corpus is absent.
pub fn corpus() -> Vec<(String, PathBuf)> {
    let dir = corpus_dir();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "corpus {} unreadable ({e}); set IMAGEGATE_CORPUS to the benchmark corpus",
            dir.display()
        )
    });
    let mut images: Vec<(String, PathBuf)> = entries
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .map(|p| {
            let name = p
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            (name, p)
        })
        .collect();
    images.sort();
    assert!(!images.is_empty(), "no PNGs in {}", dir.display());
    images
}

pub fn load_rgb(path: &Path) -> image::RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("decode {}: {e}", path.display()))
        .to_rgb8()
}
