//! A small landscape painter: sky gradient, sun with glow, fbm clouds, layered noisy
//! ridges and grain, every parameter drawn from a hash of the request.

use crate::ProviderRequest;
use image::{ImageEncoder, RgbImage};

/// SplitMix64: tiny, fast and fully determined by its seed.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }
}

fn hash2(seed: u64, x: i32, y: i32) -> f32 {
    let mut h = seed
        ^ (x as u32 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (y as u32 as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    h = (h ^ (h >> 33)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h = (h ^ (h >> 33)).wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^= h >> 33;
    (h >> 40) as f32 / (1u64 << 24) as f32
}

fn smooth(t: f32) -> f32 {
    t * t * (3.0 - 2.0 * t)
}

fn value_noise(seed: u64, x: f32, y: f32) -> f32 {
    let (xi, yi) = (x.floor() as i32, y.floor() as i32);
    let (tx, ty) = (smooth(x - xi as f32), smooth(y - yi as f32));
    let a = hash2(seed, xi, yi);
    let b = hash2(seed, xi + 1, yi);
    let c = hash2(seed, xi, yi + 1);
    let d = hash2(seed, xi + 1, yi + 1);
    let top = a + (b - a) * tx;
    let bottom = c + (d - c) * tx;
    top + (bottom - top) * ty
}

fn fbm(seed: u64, x: f32, y: f32, octaves: u32) -> f32 {
    let (mut sum, mut amp, mut freq, mut norm) = (0.0, 0.5, 1.0, 0.0);
    for o in 0..octaves {
        sum += amp * value_noise(seed.wrapping_add(o as u64 * 7919), x * freq, y * freq);
        norm += amp;
        amp *= 0.5;
        freq *= 2.03;
    }
    sum / norm
}

fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h = (h.rem_euclid(1.0)) * 6.0;
    let i = h.floor();
    let f = h - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i as i32 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

fn request_seed(req: &ProviderRequest) -> u64 {
    let mut h = blake3::Hasher::new_derive_key("imagegate local provider v1");
    h.update(req.prompt.as_bytes());
    h.update(&[0]);
    h.update(req.negative_prompt.as_deref().unwrap_or("").as_bytes());
    h.update(&[0]);
    h.update(req.model.as_bytes());
    h.update(&req.seed.to_le_bytes());
    let bytes = h.finalize();
    u64::from_le_bytes(
        bytes.as_bytes()[..8]
            .try_into()
            .expect("blake3 output is 32 bytes"),
    )
}

struct Ridge {
    base: f32,
    amplitude: f32,
    frequency: f32,
    color: [f32; 3],
    seed: u64,
}

/// Draws the picture for `req` at its size.
pub fn draw(req: &ProviderRequest) -> RgbImage {
    let seed = request_seed(req);
    let mut rng = Rng(seed);
    let (w, h) = (req.size.width, req.size.height);
    let hue = rng.unit();
    let sky_top = hsv(hue, rng.range(0.4, 0.9), rng.range(0.25, 0.7));
    let sky_horizon = hsv(
        hue + rng.range(0.05, 0.2),
        rng.range(0.3, 0.8),
        rng.range(0.75, 1.0),
    );
    let sun_color = hsv(hue + rng.range(0.4, 0.6), rng.range(0.2, 0.6), 1.0);
    let (sun_x, sun_y, sun_r) = (
        rng.range(0.15, 0.85),
        rng.range(0.15, 0.5),
        rng.range(0.04, 0.12),
    );
    let cloud_scale = rng.range(2.0, 6.0);
    let cloud_amount = rng.range(0.2, 0.6);
    let ridge_hue = hue + rng.range(0.3, 0.7);
    let ridge_count = 2 + (rng.next_u64() % 4) as usize;
    let ridges: Vec<Ridge> = (0..ridge_count)
        .map(|i| {
            let depth = (i + 1) as f32 / ridge_count as f32;
            Ridge {
                base: 0.45 + 0.45 * depth + rng.range(-0.05, 0.05),
                amplitude: rng.range(0.05, 0.25),
                frequency: rng.range(1.5, 6.0),
                color: hsv(
                    ridge_hue + rng.range(-0.08, 0.08),
                    rng.range(0.3, 0.8),
                    0.65 - 0.5 * depth,
                ),
                seed: rng.next_u64(),
            }
        })
        .collect();
    let grain_seed = rng.next_u64();
    let cloud_seed = rng.next_u64();
    let aspect = w as f32 / h as f32;

    // Ridge heights depend on x only: compute each column once.
    let ridge_tops: Vec<Vec<f32>> = ridges
        .iter()
        .map(|r| {
            (0..w)
                .map(|x| {
                    let u = x as f32 / w as f32 * aspect;
                    r.base - r.amplitude * fbm(r.seed, u * r.frequency, 0.5, 5)
                })
                .collect()
        })
        .collect();

    let mut img = RgbImage::new(w, h);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let u = x as f32 / w as f32 * aspect;
        let v = y as f32 / h as f32;
        let mut c = mix(sky_top, sky_horizon, v.powf(0.8));
        let (dx, dy) = (u - sun_x * aspect, v - sun_y);
        let dist = (dx * dx + dy * dy).sqrt();
        let glow = (1.0 - dist / (sun_r * 4.0)).max(0.0).powi(2) * 0.6;
        c = mix(c, sun_color, glow);
        if dist < sun_r {
            c = mix(c, sun_color, ((sun_r - dist) / (sun_r * 0.08)).min(1.0));
        }
        let cloud = fbm(cloud_seed, u * cloud_scale, v * cloud_scale * 2.5, 5);
        let cloud_alpha = ((cloud - (1.0 - cloud_amount)) * 3.0).clamp(0.0, 0.85) * (1.0 - v);
        c = mix(c, [1.0, 1.0, 1.0], cloud_alpha);
        for (ridge, tops) in ridges.iter().zip(&ridge_tops) {
            if v > tops[x as usize] {
                let shade = 0.75 + 0.25 * fbm(ridge.seed ^ 0x5555, u * 24.0, v * 24.0, 3);
                c = [
                    ridge.color[0] * shade,
                    ridge.color[1] * shade,
                    ridge.color[2] * shade,
                ];
            }
        }
        let grain = (hash2(grain_seed, x as i32, y as i32) - 0.5) * 0.04;
        *px = image::Rgb(c.map(|ch| ((ch + grain).clamp(0.0, 1.0) * 255.0 + 0.5) as u8));
    }
    img
}

/// Draws and encodes as PNG, which is what most providers send.
pub fn draw_png(req: &ProviderRequest) -> Result<Vec<u8>, String> {
    let img = draw(req);
    let mut out = Vec::with_capacity(img.as_raw().len() / 2);
    image::codecs::png::PngEncoder::new_with_quality(
        &mut out,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::Adaptive,
    )
    .write_image(
        img.as_raw(),
        img.width(),
        img.height(),
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| format!("encoding the procedural PNG: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagegate_core::Size;

    fn req(prompt: &str) -> ProviderRequest {
        ProviderRequest {
            prompt: prompt.into(),
            negative_prompt: None,
            model: "procedural-v1".into(),
            size: Size {
                width: 128,
                height: 128,
            },
            seed: 0,
        }
    }

    fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
        let sum: u64 = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| x.abs_diff(*y) as u64)
            .sum();
        sum as f64 / a.as_raw().len() as f64
    }

    #[test]
    fn different_prompts_look_clearly_different() {
        let a = draw(&req("a lighthouse at dusk"));
        let b = draw(&req("a lighthouse at dawn"));
        assert!(
            mean_abs_diff(&a, &b) > 20.0,
            "diff {}",
            mean_abs_diff(&a, &b)
        );
        let mut seeded = req("a lighthouse at dusk");
        seeded.seed = 1;
        assert!(mean_abs_diff(&a, &draw(&seeded)) > 20.0);
    }

    #[test]
    fn pictures_have_structure_not_a_flat_colour() {
        let img = draw(&req("structure"));
        let luma: Vec<f64> = img
            .pixels()
            .map(|p| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64)
            .collect();
        let mean = luma.iter().sum::<f64>() / luma.len() as f64;
        let std = (luma.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / luma.len() as f64).sqrt();
        assert!(std > 15.0, "luma std {std}");
        let mut colours: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        colours.sort_unstable();
        colours.dedup();
        assert!(colours.len() > 1000, "{} distinct colours", colours.len());
    }

    #[test]
    fn non_square_sizes_are_honoured() {
        let mut r = req("wide");
        r.size = Size {
            width: 200,
            height: 100,
        };
        let img = draw(&r);
        assert_eq!(img.dimensions(), (200, 100));
    }
}
