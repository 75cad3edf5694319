//! Milliseconds per image: `Classifier::score` end to end (preprocess + inference)
//! against bare inference on an already preprocessed tensor, and preprocessing alone,
//! both the fast path `score` uses and the scalar reference it must equal.
//!
//! Needs the model and runtime (`scripts/fetch-models.sh`, or IMAGEGATE_MODELS_DIR)
//! and the corpus (`../shared/corpus`, or IMAGEGATE_CORPUS); skips with a message
//! when either is absent.

use criterion::{criterion_group, criterion_main, Criterion};
use imagegate_safety::{
    preprocess, preprocess_reference, Classifier, ClassifierConfig, MODEL_FILE,
};
use std::path::PathBuf;
use std::time::Duration;

fn corpus_dir() -> PathBuf {
    std::env::var_os("IMAGEGATE_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/corpus"
            ))
        })
}

fn models_dir() -> PathBuf {
    std::env::var_os("IMAGEGATE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models")))
}

fn corpus() -> Option<Vec<image::RgbImage>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    paths.sort();
    let images: Vec<_> = paths
        .iter()
        .map(|p| image::open(p).expect("decode corpus image").to_rgb8())
        .collect();
    (!images.is_empty()).then_some(images)
}

fn bench(c: &mut Criterion) {
    let Some(images) = corpus() else {
        eprintln!(
            "classify bench skipped: no corpus at {} (set IMAGEGATE_CORPUS)",
            corpus_dir().display()
        );
        return;
    };
    if !models_dir().join(MODEL_FILE).is_file() {
        eprintln!(
            "classify bench skipped: no model in {} (run scripts/fetch-models.sh)",
            models_dir().display()
        );
        return;
    }
    // One session on one thread: the per-image cost of one worker.
    let cfg = ClassifierConfig {
        sessions: 1,
        intra_threads: 1,
        ..ClassifierConfig::in_dir(models_dir())
    };
    let classifier = Classifier::load(&cfg).expect("load classifier");
    let tensors: Vec<Vec<f32>> = images
        .iter()
        .map(|img| preprocess(img).expect("preprocess"))
        .collect();

    let mut group = c.benchmark_group("classify");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    group.warm_up_time(Duration::from_secs(1));

    let mut next = 0;
    group.bench_function("score_1024px_end_to_end", |b| {
        b.iter(|| {
            next = (next + 1) % images.len();
            classifier.score(&images[next]).expect("score")
        })
    });
    group.bench_function("preprocess_1024px", |b| {
        b.iter(|| {
            next = (next + 1) % images.len();
            preprocess(&images[next]).expect("preprocess")
        })
    });
    group.bench_function("preprocess_reference_1024px", |b| {
        b.iter(|| {
            next = (next + 1) % images.len();
            preprocess_reference(&images[next]).expect("preprocess")
        })
    });
    group.bench_function("bare_session_run", |b| {
        b.iter(|| {
            next = (next + 1) % tensors.len();
            classifier.score_preprocessed(&tensors[next]).expect("run")
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
