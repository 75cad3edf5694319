//! The classifier on the real ONNX Runtime and the real open_nsfw model.

mod common;

use common::{classifier, config, corpus, load_rgb};
use imagegate_core::profile::SafetyThresholds;
use imagegate_core::SafetyAction;
use imagegate_safety::{decide, preprocess, Classifier, ClassifierConfig, SafetyError};
use std::path::PathBuf;

#[test]
fn corpus_images_score_low_and_are_allowed() {
    let classifier = classifier();
    for (name, path) in corpus() {
        let score = classifier.score(&load_rgb(&path)).expect("score");
        println!("{name}: {score:.6}");
        assert!((0.0..0.2).contains(&score), "{name} scored {score}");
        assert_eq!(
            decide(score, SafetyThresholds::default()),
            SafetyAction::Allow
        );
    }
}

#[test]
fn thresholds_at_zero_block_every_corpus_image() {
    let block_all = SafetyThresholds {
        blur_at: 0.0,
        block_at: 0.0,
    };
    let (_, path) = &corpus()[0];
    let score = classifier().score(&load_rgb(path)).expect("score");
    assert_eq!(decide(score, block_all), SafetyAction::Block);
}

#[test]
fn scoring_from_eight_threads_at_once_gives_the_same_scores() {
    let classifier = classifier();
    let images: Vec<_> = corpus().iter().take(8).map(|(_, p)| load_rgb(p)).collect();
    let sequential: Vec<f32> = images
        .iter()
        .map(|img| classifier.score(img).expect("score"))
        .collect();
    let concurrent: Vec<f32> = std::thread::scope(|s| {
        let handles: Vec<_> = images
            .iter()
            .map(|img| s.spawn(move || classifier.score(img).expect("score")))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    for (a, b) in sequential.iter().zip(&concurrent) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
}

#[test]
fn batch_scores_match_single_scores() {
    let classifier = classifier();
    // More than one batch of 8, so chunking is exercised.
    let images: Vec<_> = corpus().iter().map(|(_, p)| load_rgb(p)).collect();
    let refs: Vec<&image::RgbImage> = images.iter().chain(images.iter().take(3)).collect();
    let batch = classifier.score_batch(&refs).expect("batch");
    assert_eq!(batch.len(), refs.len());
    for (img, b) in refs.iter().zip(&batch) {
        let single = classifier.score(img).expect("score");
        assert!((single - b).abs() < 1e-4, "{single} vs {b}");
    }
    assert!(classifier.score_batch(&[]).expect("empty").is_empty());
}

#[test]
fn preprocessed_input_scores_like_an_image() {
    let classifier = classifier();
    let (_, path) = &corpus()[1];
    let img = load_rgb(path);
    let tensor = preprocess(&img).expect("preprocess");
    let bare = classifier.score_preprocessed(&tensor).expect("run");
    assert_eq!(bare.len(), 1);
    assert!((bare[0] - classifier.score(&img).expect("score")).abs() < 1e-6);
    assert!(matches!(
        classifier.score_preprocessed(&tensor[1..]),
        Err(SafetyError::BadImage(_))
    ));
}

#[test]
fn empty_image_is_an_error_not_a_panic() {
    let err = classifier()
        .score(&image::RgbImage::new(0, 0))
        .expect_err("empty image");
    assert!(matches!(err, SafetyError::BadImage(_)), "{err}");
    // The session went back to the pool: scoring still works.
    let (_, path) = &corpus()[0];
    classifier()
        .score(&load_rgb(path))
        .expect("score after error");
}

#[test]
fn missing_model_is_a_load_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("open-nsfw.onnx");
    let cfg = ClassifierConfig {
        model_path: missing.clone(),
        ..config()
    };
    let err = Classifier::load(&cfg).expect_err("must fail");
    assert!(
        matches!(&err, SafetyError::ModelMissing { path } if *path == missing),
        "{err:?}"
    );
    assert!(err.to_string().contains(&missing.display().to_string()));
    assert!(err.to_string().contains("scripts/fetch-models.sh"));
}

#[test]
fn missing_runtime_is_a_load_error_naming_the_file() {
    let missing = PathBuf::from("/nonexistent/libonnxruntime.so.1.31.1");
    let cfg = ClassifierConfig {
        runtime_library: missing.clone(),
        ..config()
    };
    let err = Classifier::load(&cfg).expect_err("must fail");
    assert!(
        matches!(&err, SafetyError::RuntimeMissing { path } if *path == missing),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .contains("/nonexistent/libonnxruntime.so.1.31.1"));
}

#[test]
fn garbage_model_is_a_clear_load_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("open-nsfw.onnx");
    std::fs::write(&garbage, b"this is not an ONNX protobuf, just some bytes").expect("write");
    let cfg = ClassifierConfig {
        model_path: garbage.clone(),
        ..config()
    };
    let err = Classifier::load(&cfg).expect_err("must fail");
    println!("{err}");
    assert!(
        matches!(&err, SafetyError::ModelLoad { path, .. } if *path == garbage),
        "{err:?}"
    );
    assert!(err.to_string().contains(&garbage.display().to_string()));
}

#[test]
fn a_model_of_another_shape_is_rejected_at_load() {
    // A valid ONNX model that is not open_nsfw: ONNX Runtime's own test model from the
    // wheel is not kept, so build the smallest one by hand: Identity on float [N, 3].
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("identity.onnx");
    std::fs::write(&path, identity_model()).expect("write");
    let cfg = ClassifierConfig {
        model_path: path.clone(),
        ..config()
    };
    let err = Classifier::load(&cfg).expect_err("must fail");
    println!("{err}");
    assert!(
        matches!(&err, SafetyError::ModelLoad { path: p, .. } if *p == path),
        "{err:?}"
    );
}

#[test]
fn garbage_runtime_library_is_a_clear_load_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("libonnxruntime.so.1.31.1");
    std::fs::write(&garbage, b"\x7fELF but not really").expect("write");
    let cfg = ClassifierConfig {
        runtime_library: garbage.clone(),
        ..config()
    };
    let err = Classifier::load(&cfg).expect_err("must fail");
    println!("{err}");
    // Which error depends on whether another test already loaded the real runtime in
    // this process; both name the file.
    assert!(
        matches!(
            &err,
            SafetyError::RuntimeLoad { .. } | SafetyError::RuntimeConflict { .. }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains(&garbage.display().to_string()));
}

/// A minimal ONNX ModelProto (IR 8, opset 13): `y = Identity(x)`, x and y float [N, 3].
fn identity_model() -> Vec<u8> {
    fn field(tag: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let mut len = bytes.len();
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
        out.extend_from_slice(bytes);
        out
    }
    let value_info = |name: &str| {
        // TypeProto { tensor_type { elem_type: FLOAT, shape { dim { dim_param: "N" } dim { dim_value: 3 } } } }
        let dims = [field(0x0a, &field(0x12, b"N")), field(0x0a, &[0x08, 3])].concat();
        let tensor = [vec![0x08, 1], field(0x12, &dims)].concat();
        let ty = field(0x0a, &tensor);
        [field(0x0a, name.as_bytes()), field(0x12, &ty)].concat()
    };
    let node = [
        field(0x0a, b"x"),
        field(0x12, b"y"),
        field(0x22, b"Identity"),
    ]
    .concat();
    let graph = [
        field(0x0a, &node),
        field(0x12, b"g"),
        field(0x5a, &value_info("x")),
        field(0x62, &value_info("y")),
    ]
    .concat();
    let opset = [field(0x0a, b""), vec![0x10, 13]].concat();
    [vec![0x08, 8], field(0x3a, &graph), field(0x42, &opset)].concat()
}

#[test]
fn a_file_without_the_pinned_digest_stops_loading_naming_it() {
    let good = config();
    let pinned = ClassifierConfig {
        model_sha256: Some(imagegate_safety::MODEL_SHA256.into()),
        runtime_sha256: Some(imagegate_safety::RUNTIME_SHA256.into()),
        ..good.clone()
    };
    Classifier::load(&pinned).expect("the fetched files carry the pinned digests");

    let wrong = ClassifierConfig {
        model_sha256: Some("00".repeat(32)),
        ..good
    };
    let err = Classifier::load(&wrong).expect_err("a digest mismatch must fail");
    assert!(
        matches!(&err, SafetyError::DigestMismatch { path, actual, .. }
            if *path == wrong.model_path && actual == imagegate_safety::MODEL_SHA256),
        "{err:?}"
    );
    assert!(err.to_string().contains("scripts/fetch-models.sh"));
}
