//! Encode corpus pictures at the default profile: AVIF (quality 60, speed 8, one
//! rav1e thread, as the pipeline runs it) at 768 and 1024 px, and JPEG q80 at 768.

use criterion::Criterion;
use imagegate_core::profile::{ImageFormat, RenderProfile};
use imagegate_imaging::{encode, resize};
use std::time::Duration;

mod corpus;

fn main() {
    let Some(images) = corpus::load() else {
        return;
    };
    let (name, source) = &images[0];
    let profile = RenderProfile {
        name: "bench".to_owned(),
        variants: vec![768, 1024],
        formats: vec![ImageFormat::Avif, ImageFormat::Jpeg],
        avif: Default::default(),
        jpeg: Default::default(),
        webp_quality: None,
        watermark: None,
        safety: Default::default(),
        provenance: Default::default(),
    };
    let w768 = resize(source, 768).expect("resize");
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();

    let mut group = c.benchmark_group(format!("encode/{name}"));
    group.bench_function("avif q60 s8 768", |b| {
        b.iter(|| encode(&w768, ImageFormat::Avif, &profile).expect("encode"))
    });
    group.bench_function("jpeg q80 768", |b| {
        b.iter(|| encode(&w768, ImageFormat::Jpeg, &profile).expect("encode"))
    });
    group.bench_function("avif q60 s8 1024", |b| {
        b.iter(|| encode(source, ImageFormat::Avif, &profile).expect("encode"))
    });
    group.finish();

    for (format, label) in [(ImageFormat::Avif, "avif"), (ImageFormat::Jpeg, "jpeg")] {
        let bytes = encode(&w768, format, &profile).expect("encode");
        eprintln!("{name} 768 px {label}: {} bytes", bytes.len());
    }
    c.final_summary();
}
