//! Resize 1024² corpus pictures to the usual variant widths, and the safety blur.

use criterion::{BenchmarkId, Criterion};
use imagegate_imaging::{blur, resize, resize_all};
use std::time::Duration;

mod corpus;

fn main() {
    let Some(images) = corpus::load() else {
        return;
    };
    let (name, source) = &images[0];
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();

    let mut group = c.benchmark_group(format!("resize/{name}"));
    for width in [256u32, 512, 768] {
        group.bench_with_input(BenchmarkId::new("lanczos3", width), &width, |b, &w| {
            b.iter(|| resize(source, w).expect("resize"))
        });
    }
    group.bench_function("resize_all 256+512+768", |b| {
        b.iter(|| resize_all(source, &[256, 512, 768]).expect("resize"))
    });
    group.finish();

    c.bench_function(&format!("blur/{name}/sigma 0.03"), |b| {
        b.iter(|| blur(source, 0.03))
    });
    c.final_summary();
}
