//! Embed and detect time for one variant at each default width.
//!
//! ```sh
//! cargo bench -p imagegate-provenance --bench watermark
//! ```

use criterion::{criterion_group, criterion_main, Criterion};
use imagegate_provenance::{detect, embed, luma_plane, Payload, WatermarkKey, DEFAULT_PSNR_DB};

/// A deterministic textured picture (gradients and noise), `side` px square.
fn textured(side: u32) -> image::RgbImage {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    image::RgbImage::from_fn(side, side, |x, y| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let noise = (state & 0x1f) as u8;
        image::Rgb([
            (x / 4) as u8 ^ noise,
            (y / 4) as u8 ^ noise,
            ((x + y) / 8) as u8 ^ noise,
        ])
    })
}

fn bench(c: &mut Criterion) {
    let key = WatermarkKey::new(1, [7; 32]);
    let payload = Payload {
        key_id: 1,
        key_prefix: [1, 2, 3, 4, 5, 6, 7],
    };
    for side in [256u32, 512, 768, 1024] {
        let picture = textured(side);
        c.bench_function(&format!("embed {side}px"), |b| {
            b.iter_batched(
                || picture.clone(),
                |mut p| embed(&mut p, &key, payload, DEFAULT_PSNR_DB),
                criterion::BatchSize::LargeInput,
            )
        });
        let mut marked = picture.clone();
        embed(&mut marked, &key, payload, DEFAULT_PSNR_DB);
        c.bench_function(&format!("detect {side}px"), |b| {
            b.iter(|| detect(&luma_plane(&marked), &key))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
