//! Stamping a visible mark (text in the bundled DejaVu Sans Bold, or a logo image)
//! onto each variant, sized and placed relative to that variant's width so every
//! size looks the same.

use crate::decode::{decode_rgba, DecodeLimits};
use crate::ImagingError;
use ab_glyph::{point, Font, FontRef, OutlinedGlyph, PxScale, ScaleFont};
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::{Rgb, RgbImage, RgbaImage};
use imagegate_core::profile::{WatermarkMark, WatermarkPosition, WatermarkSpec};
use std::fmt;

/// DejaVu Sans Bold (Bitstream Vera licence, see `assets/DejaVu-LICENSE.txt`):
/// bundled so output never depends on the fonts installed on a host.
static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans-Bold.ttf");

/// Logos are small pictures; these limits are far above any real one.
const LOGO_LIMITS: DecodeLimits = DecodeLimits {
    max_pixels: 16_000_000,
    max_side: 4096,
    max_input_bytes: 16 * 1024 * 1024,
};

/// The dark halo around text, as a fraction of the mark's opacity: enough to read
/// white text on a white sky, faint enough not to look like a box.
const HALO_STRENGTH: f32 = 0.6;

/// A watermark ready to apply: the font or logo is loaded once, here, and the
/// same `Watermarker` is then applied to every variant (it is `Send + Sync`).
pub struct Watermarker {
    mark: Mark,
    position: WatermarkPosition,
    opacity: f32,
    scale: f32,
    margin: f32,
}

enum Mark {
    Text {
        // Boxed: a parsed font is ~3 KB, the logo variant a few words.
        font: Box<FontRef<'static>>,
        text: String,
        color: [u8; 3],
    },
    Logo {
        logo: RgbaImage,
    },
}

impl fmt::Debug for Watermarker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match &self.mark {
            Mark::Text { text, color, .. } => format!("text {text:?} in {color:?}"),
            Mark::Logo { logo } => format!("logo {}x{}", logo.width(), logo.height()),
        };
        f.debug_struct("Watermarker")
            .field("mark", &mark)
            .field("position", &self.position)
            .field("opacity", &self.opacity)
            .field("scale", &self.scale)
            .field("margin", &self.margin)
            .finish()
    }
}

impl Watermarker {
    /// Checks the spec and loads what it needs: the bundled font for text, or the
    /// logo file (read from disk and decoded with limits) for a logo.
    pub fn new(spec: &WatermarkSpec) -> Result<Watermarker, ImagingError> {
        let invalid = |reason: String| Err(ImagingError::InvalidWatermark { reason });
        if !(0.0..=1.0).contains(&spec.opacity) {
            return invalid(format!("opacity {} is outside 0..=1", spec.opacity));
        }
        if !(spec.scale > 0.0 && spec.scale <= 1.0) {
            return invalid(format!("scale {} is outside (0, 1]", spec.scale));
        }
        if !(0.0..=0.5).contains(&spec.margin) {
            return invalid(format!("margin {} is outside 0..=0.5", spec.margin));
        }
        let mark = match &spec.mark {
            WatermarkMark::Text { text, color } => {
                if text.trim().is_empty() {
                    return invalid("text is empty".to_owned());
                }
                let font = FontRef::try_from_slice(FONT_BYTES).map_err(|e| ImagingError::Font {
                    reason: e.to_string(),
                })?;
                Mark::Text {
                    font: Box::new(font),
                    text: text.clone(),
                    color: *color,
                }
            }
            WatermarkMark::Logo { path, .. } => {
                let logo_error = |reason: String| ImagingError::Logo {
                    path: path.clone(),
                    reason,
                };
                let bytes = std::fs::read(path)
                    .map_err(|e| logo_error(format!("could not be read: {e}")))?;
                let logo =
                    decode_rgba(&bytes, &LOGO_LIMITS).map_err(|e| logo_error(e.to_string()))?;
                Mark::Logo { logo }
            }
        };
        Ok(Watermarker {
            mark,
            position: spec.position,
            opacity: spec.opacity,
            scale: spec.scale,
            margin: spec.margin,
        })
    }

    /// Stamps the mark: its width is `scale` × the image width, it sits `margin` ×
    /// the image width from the edges at `position`, blended at `opacity`.
    pub fn apply(&self, image: &mut RgbImage) {
        let width = image.width();
        if self.opacity <= 0.0 || width == 0 || image.height() == 0 {
            return;
        }
        let mark_width = (self.scale * width as f32).round().clamp(1.0, width as f32) as u32;
        let margin = (self.margin * width as f32).round() as i64;
        match &self.mark {
            Mark::Text { font, text, color } => {
                let Some(glyphs) = TextMask::render(font, text, mark_width) else {
                    return;
                };
                let (x, y) = self.place(image, glyphs.width, glyphs.height, margin);
                let halo = glyphs.dilated(glyphs.halo_radius());
                let r = glyphs.halo_radius() as i64;
                blend_mask(
                    image,
                    &halo,
                    x - r,
                    y - r,
                    [0, 0, 0],
                    HALO_STRENGTH * self.opacity,
                );
                blend_mask(image, &glyphs, x, y, *color, self.opacity);
            }
            Mark::Logo { logo } => {
                let Some(resized) = resize_logo(logo, mark_width) else {
                    return;
                };
                let (x, y) = self.place(image, resized.width(), resized.height(), margin);
                blend_logo(image, &resized, x, y, self.opacity);
            }
        }
    }

    /// Top-left corner of a `w`×`h` mark at this watermark's position.
    fn place(&self, image: &RgbImage, w: u32, h: u32, margin: i64) -> (i64, i64) {
        let (iw, ih) = (i64::from(image.width()), i64::from(image.height()));
        let (w, h) = (i64::from(w), i64::from(h));
        let left = margin;
        let right = iw - w - margin;
        let top = margin;
        let bottom = ih - h - margin;
        match self.position {
            WatermarkPosition::TopLeft => (left, top),
            WatermarkPosition::TopRight => (right, top),
            WatermarkPosition::BottomLeft => (left, bottom),
            WatermarkPosition::BottomRight => (right, bottom),
            WatermarkPosition::Center => ((iw - w) / 2, (ih - h) / 2),
        }
    }
}

/// Coverage (0..=1) of rendered text, tightly cropped to its ink.
struct TextMask {
    width: u32,
    height: u32,
    coverage: Vec<f32>,
    px: f32,
}

impl TextMask {
    /// Renders `text` at the size whose inked width is `target_width` pixels.
    /// `None` if nothing would be visible.
    fn render(font: &FontRef<'static>, text: &str, target_width: u32) -> Option<TextMask> {
        // Ink width is proportional to the pixel size except for rounding to whole
        // pixels, so one measurement and one correction land within a pixel.
        const REFERENCE_PX: f32 = 100.0;
        let reference = ink_width(&layout(font, text, REFERENCE_PX))?;
        let mut px = REFERENCE_PX * target_width as f32 / reference;
        let measured = ink_width(&layout(font, text, px))?;
        px *= target_width as f32 / measured;
        if px.is_nan() || px < 1.0 {
            return None;
        }
        let glyphs = layout(font, text, px);
        let (min_x, min_y, max_x, max_y) = ink_bounds(&glyphs)?;
        let width = (max_x - min_x).max(1.0) as u32;
        let height = (max_y - min_y).max(1.0) as u32;
        let mut coverage = vec![0f32; width as usize * height as usize];
        for glyph in &glyphs {
            let bounds = glyph.px_bounds();
            let ox = (bounds.min.x - min_x) as i64;
            let oy = (bounds.min.y - min_y) as i64;
            glyph.draw(|x, y, c| {
                let (x, y) = (ox + i64::from(x), oy + i64::from(y));
                if (0..i64::from(width)).contains(&x) && (0..i64::from(height)).contains(&y) {
                    let cell = &mut coverage[y as usize * width as usize + x as usize];
                    *cell = (*cell + c).min(1.0);
                }
            });
        }
        Some(TextMask {
            width,
            height,
            coverage,
            px,
        })
    }

    fn halo_radius(&self) -> u32 {
        (self.px / 14.0).round().max(1.0) as u32
    }

    /// This mask grown by `r` pixels on every side (a square max filter, keeping
    /// the anti-aliased rim): the halo drawn under the text.
    fn dilated(&self, r: u32) -> TextMask {
        let (w, h, r) = (self.width as usize, self.height as usize, r as usize);
        let (ow, oh) = (w + 2 * r, h + 2 * r);
        // Output index `o` sits over source index `o - r`; it takes the maximum of
        // source indices `o - 2r ..= o` that exist. Rows first, then columns.
        let window = |o: usize, len: usize| o.saturating_sub(2 * r)..=o.min(len - 1);
        let mut rows = vec![0f32; ow * h];
        for y in 0..h {
            for x in 0..ow {
                rows[y * ow + x] = window(x, w)
                    .map(|sx| self.coverage[y * w + sx])
                    .fold(0.0, f32::max);
            }
        }
        let mut coverage = vec![0f32; ow * oh];
        for y in 0..oh {
            for x in 0..ow {
                coverage[y * ow + x] = window(y, h).map(|sy| rows[sy * ow + x]).fold(0.0, f32::max);
            }
        }
        TextMask {
            width: ow as u32,
            height: oh as u32,
            coverage,
            px: self.px,
        }
    }
}

fn layout(font: &FontRef<'static>, text: &str, px: f32) -> Vec<OutlinedGlyph> {
    let scaled = font.as_scaled(PxScale::from(px));
    let mut caret = 0.0f32;
    let mut previous = None;
    let mut glyphs = Vec::new();
    // One line: newlines and other control characters are dropped, not drawn.
    for c in text.chars().filter(|c| !c.is_control()) {
        let id = scaled.glyph_id(c);
        if let Some(previous) = previous {
            caret += scaled.kern(previous, id);
        }
        let glyph = id.with_scale_and_position(px, point(caret, scaled.ascent()));
        caret += scaled.h_advance(id);
        previous = Some(id);
        if let Some(outlined) = font.outline_glyph(glyph) {
            glyphs.push(outlined);
        }
    }
    glyphs
}

fn ink_bounds(glyphs: &[OutlinedGlyph]) -> Option<(f32, f32, f32, f32)> {
    glyphs
        .iter()
        .map(OutlinedGlyph::px_bounds)
        .fold(None, |acc, b| {
            Some(match acc {
                None => (b.min.x, b.min.y, b.max.x, b.max.y),
                Some((x0, y0, x1, y1)) => (
                    x0.min(b.min.x),
                    y0.min(b.min.y),
                    x1.max(b.max.x),
                    y1.max(b.max.y),
                ),
            })
        })
}

fn ink_width(glyphs: &[OutlinedGlyph]) -> Option<f32> {
    let (x0, _, x1, _) = ink_bounds(glyphs)?;
    let width = x1 - x0;
    (width > 0.0).then_some(width)
}

fn blend_pixel(dst: &mut Rgb<u8>, src: [u8; 3], alpha: f32) {
    for (d, s) in dst.0.iter_mut().zip(src) {
        let v = f32::from(*d) + (f32::from(s) - f32::from(*d)) * alpha;
        *d = v.round().clamp(0.0, 255.0) as u8;
    }
}

/// Visits the mark pixels that fall inside the image: (mark x, mark y, image pixel).
fn for_each_overlap(
    image: &mut RgbImage,
    x0: i64,
    y0: i64,
    width: u32,
    height: u32,
    mut f: impl FnMut(u32, u32, &mut Rgb<u8>),
) {
    let (iw, ih) = (i64::from(image.width()), i64::from(image.height()));
    for my in 0..height {
        let y = y0 + i64::from(my);
        if !(0..ih).contains(&y) {
            continue;
        }
        for mx in 0..width {
            let x = x0 + i64::from(mx);
            if (0..iw).contains(&x) {
                f(mx, my, image.get_pixel_mut(x as u32, y as u32));
            }
        }
    }
}

fn blend_mask(image: &mut RgbImage, mask: &TextMask, x0: i64, y0: i64, color: [u8; 3], alpha: f32) {
    for_each_overlap(image, x0, y0, mask.width, mask.height, |mx, my, px| {
        let c = mask.coverage[my as usize * mask.width as usize + mx as usize];
        if c > 0.0 {
            blend_pixel(px, color, c * alpha);
        }
    });
}

fn blend_logo(image: &mut RgbImage, logo: &RgbaImage, x0: i64, y0: i64, opacity: f32) {
    for_each_overlap(image, x0, y0, logo.width(), logo.height(), |mx, my, px| {
        let p = logo.get_pixel(mx, my);
        if p[3] > 0 {
            blend_pixel(px, [p[0], p[1], p[2]], f32::from(p[3]) / 255.0 * opacity);
        }
    });
}

/// The logo at `width` pixels wide, aspect ratio kept. Alpha-aware (premultiplied
/// while filtering) so transparent pixels do not bleed dark fringes.
fn resize_logo(logo: &RgbaImage, width: u32) -> Option<RgbaImage> {
    if logo.width() == 0 || logo.height() == 0 {
        return None;
    }
    if width == logo.width() {
        return Some(logo.clone());
    }
    let height = crate::resize::scaled_height(logo.width(), logo.height(), width);
    let mut out = RgbaImage::new(width, height);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3))
        .use_alpha(true);
    // Both buffers are RGBA8 of non-zero size, the only way this could fail.
    Resizer::new().resize(logo, &mut out, &options).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, Rgba};
    use std::path::{Path, PathBuf};

    const GRAY: Rgb<u8> = Rgb([128, 128, 128]);

    fn text_spec(position: WatermarkPosition, scale: f32, opacity: f32) -> WatermarkSpec {
        WatermarkSpec {
            mark: WatermarkMark::Text {
                text: "imagegate".to_owned(),
                color: [255, 255, 255],
            },
            position,
            opacity,
            scale,
            margin: 0.02,
        }
    }

    fn logo_spec(path: &Path, position: WatermarkPosition, opacity: f32) -> WatermarkSpec {
        WatermarkSpec {
            mark: WatermarkMark::Logo {
                path: path.to_owned(),
                digest: String::new(),
            },
            position,
            opacity,
            scale: 0.25,
            margin: 0.02,
        }
    }

    /// Bounding box (x0, y0, x1 exclusive, y1 exclusive) of pixels where `pred` holds.
    fn bbox(image: &RgbImage, pred: impl Fn(&Rgb<u8>) -> bool) -> Option<(u32, u32, u32, u32)> {
        image
            .enumerate_pixels()
            .filter(|(_, _, p)| pred(p))
            .fold(None, |acc, (x, y, _)| {
                Some(match acc {
                    None => (x, y, x + 1, y + 1),
                    Some((x0, y0, x1, y1)) => (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1)),
                })
            })
    }

    fn changed(a: &RgbImage, b: &RgbImage) -> Option<(u32, u32, u32, u32)> {
        let diff = RgbImage::from_fn(a.width(), a.height(), |x, y| {
            if a.get_pixel(x, y) == b.get_pixel(x, y) {
                Rgb([0, 0, 0])
            } else {
                Rgb([1, 1, 1])
            }
        });
        bbox(&diff, |p| p[0] == 1)
    }

    fn stamped(spec: &WatermarkSpec, width: u32, height: u32) -> (RgbImage, RgbImage) {
        let before = RgbImage::from_pixel(width, height, GRAY);
        let mut after = before.clone();
        Watermarker::new(spec).unwrap().apply(&mut after);
        (before, after)
    }

    #[test]
    fn text_marks_the_bottom_right_and_leaves_the_top_left_alone() {
        let (before, after) = stamped(
            &text_spec(WatermarkPosition::BottomRight, 0.25, 0.8),
            800,
            600,
        );
        let (x0, y0, x1, y1) = changed(&before, &after).expect("something was drawn");
        assert!(
            x0 > 400 && y0 > 300,
            "mark starts in the bottom-right quadrant: {x0},{y0}"
        );
        assert!(x1 <= 800 && y1 <= 600);
        // Right edge of the text ink sits a margin (16 px) from the image edge.
        let (_, _, ink_x1, ink_y1) = bbox(&after, |p| p[0] > 140).unwrap();
        assert!((782..=786).contains(&ink_x1), "ink ends at x {ink_x1}");
        assert!((580..=586).contains(&ink_y1), "ink ends at y {ink_y1}");
        // The opposite quadrant is bit-for-bit untouched.
        for y in 0..300 {
            for x in 0..400 {
                assert_eq!(after.get_pixel(x, y), &GRAY);
            }
        }
    }

    #[test]
    fn every_position_lands_where_it_says() {
        let cases = [
            (WatermarkPosition::TopLeft, (0, 0, 400, 300)),
            (WatermarkPosition::TopRight, (400, 0, 800, 300)),
            (WatermarkPosition::BottomLeft, (0, 300, 400, 600)),
            (WatermarkPosition::BottomRight, (400, 300, 800, 600)),
            (WatermarkPosition::Center, (250, 250, 550, 350)),
        ];
        for (position, (qx0, qy0, qx1, qy1)) in cases {
            let (before, after) = stamped(&text_spec(position, 0.25, 1.0), 800, 600);
            let (x0, y0, x1, y1) = changed(&before, &after).unwrap();
            assert!(
                x0 >= qx0 && y0 >= qy0 && x1 <= qx1 && y1 <= qy1,
                "{position:?}: changed {x0},{y0}..{x1},{y1}"
            );
        }
        // Centre is centred: the ink's midpoint is the image's, within a pixel or two.
        let (_, after) = stamped(&text_spec(WatermarkPosition::Center, 0.25, 1.0), 800, 600);
        let (x0, _, x1, _) = bbox(&after, |p| p[0] > 140).unwrap();
        assert!(((x0 + x1) / 2).abs_diff(400) <= 2, "{x0}..{x1}");
    }

    #[test]
    fn opacity_zero_changes_nothing() {
        let (before, after) = stamped(
            &text_spec(WatermarkPosition::BottomRight, 0.25, 0.0),
            320,
            240,
        );
        assert_eq!(before, after);
    }

    #[test]
    fn scale_sets_the_text_width() {
        for scale in [0.1f32, 0.25, 0.5] {
            let (_, after) = stamped(
                &text_spec(WatermarkPosition::TopLeft, scale, 1.0),
                1000,
                500,
            );
            let (x0, _, x1, _) = bbox(&after, |p| p[0] > 140).unwrap();
            let expected = (scale * 1000.0) as u32;
            assert!(
                (x1 - x0).abs_diff(expected) <= 3,
                "scale {scale}: ink is {} px wide, expected {expected}",
                x1 - x0
            );
            assert!((19..=22).contains(&x0), "starts a margin (20 px) in: {x0}");
        }
    }

    #[test]
    fn text_is_visible_on_white_and_on_black() {
        for background in [Rgb([255, 255, 255]), Rgb([0, 0, 0])] {
            let before = RgbImage::from_pixel(400, 300, background);
            let mut after = before.clone();
            let spec = text_spec(WatermarkPosition::BottomRight, 0.3, 0.5);
            Watermarker::new(&spec).unwrap().apply(&mut after);
            let strongest = before
                .pixels()
                .zip(after.pixels())
                .map(|(a, b)| a[0].abs_diff(b[0]))
                .max()
                .unwrap();
            assert!(
                strongest >= 60,
                "on {background:?} the mark changes at most {strongest}"
            );
        }
    }

    #[test]
    fn text_colour_is_used() {
        let mut spec = text_spec(WatermarkPosition::TopLeft, 0.5, 1.0);
        spec.mark = WatermarkMark::Text {
            text: "HI".to_owned(),
            color: [255, 0, 0],
        };
        let (_, after) = stamped(&spec, 400, 300);
        assert!(after.pixels().any(|p| p == &Rgb([255, 0, 0])));
    }

    fn write_logo(dir: &Path) -> PathBuf {
        // 40x20: left half opaque red, right half fully transparent green.
        let logo = RgbaImage::from_fn(40, 20, |x, _| {
            if x < 20 {
                Rgba([255, 0, 0, 255])
            } else {
                Rgba([0, 255, 0, 0])
            }
        });
        let path = dir.join("logo.png");
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(logo.as_raw(), 40, 20, image::ExtendedColorType::Rgba8)
            .unwrap();
        std::fs::write(&path, png).unwrap();
        path
    }

    #[test]
    fn logo_is_scaled_placed_and_respects_alpha() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_logo(dir.path());
        let spec = logo_spec(&path, WatermarkPosition::TopLeft, 1.0);
        let (before, after) = stamped(&spec, 400, 300);
        // Mark: 100x50 at (8, 8) — scale 0.25 and margin 0.02 of 400 px.
        assert_eq!(
            after.get_pixel(8 + 25, 8 + 25),
            &Rgb([255, 0, 0]),
            "opaque half"
        );
        assert_eq!(after.get_pixel(8 + 75, 8 + 25), &GRAY, "transparent half");
        let (x0, y0, x1, y1) = changed(&before, &after).unwrap();
        assert!((7..=9).contains(&x0) && (7..=9).contains(&y0), "{x0},{y0}");
        assert!(x1 <= 8 + 60 && (57..=59).contains(&y1), "{x1},{y1}");
        assert_eq!(
            after.get_pixel(399, 299),
            &GRAY,
            "opposite corner untouched"
        );
    }

    #[test]
    fn logo_opacity_blends() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_logo(dir.path());
        let (_, after) = stamped(
            &logo_spec(&path, WatermarkPosition::BottomRight, 0.5),
            400,
            300,
        );
        // Mark spans x 292..392, y 242..292; the red half is its left 50 px.
        assert_eq!(after.get_pixel(292 + 25, 242 + 25), &Rgb([192, 64, 64]));
        let (_, zero) = stamped(
            &logo_spec(&path, WatermarkPosition::BottomRight, 0.0),
            400,
            300,
        );
        assert!(zero.pixels().all(|p| p == &GRAY));
    }

    #[test]
    fn missing_logo_names_the_file() {
        let spec = logo_spec(
            Path::new("/nonexistent/logo.png"),
            WatermarkPosition::TopLeft,
            1.0,
        );
        let err = Watermarker::new(&spec).unwrap_err();
        assert!(matches!(err, ImagingError::Logo { .. }));
        assert!(err.to_string().contains("/nonexistent/logo.png"), "{err}");
    }

    #[test]
    fn logo_that_is_not_an_image_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logo.png");
        std::fs::write(&path, b"not a picture").unwrap();
        let err = Watermarker::new(&logo_spec(&path, WatermarkPosition::TopLeft, 1.0)).unwrap_err();
        assert!(err.to_string().contains("unknown image format"), "{err}");
    }

    #[test]
    fn invalid_specs_are_refused() {
        let mut empty = text_spec(WatermarkPosition::TopLeft, 0.25, 1.0);
        empty.mark = WatermarkMark::Text {
            text: "  ".to_owned(),
            color: [0, 0, 0],
        };
        assert!(Watermarker::new(&empty).is_err());
        assert!(Watermarker::new(&text_spec(WatermarkPosition::TopLeft, 0.0, 1.0)).is_err());
        assert!(Watermarker::new(&text_spec(WatermarkPosition::TopLeft, 0.25, 1.5)).is_err());
        assert!(Watermarker::new(&text_spec(WatermarkPosition::TopLeft, f32::NAN, 1.0)).is_err());
    }

    #[test]
    fn a_watermarker_can_be_shared_across_worker_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Watermarker>();
    }

    #[test]
    fn tiny_images_do_not_panic() {
        for (w, h) in [(1, 1), (3, 200), (200, 3)] {
            let mut image = RgbImage::from_pixel(w, h, GRAY);
            Watermarker::new(&text_spec(WatermarkPosition::Center, 1.0, 1.0))
                .unwrap()
                .apply(&mut image);
        }
    }
}
