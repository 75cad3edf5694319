//! The delivery projection: what serving the stored variants would cost in egress
//! (bytes × views × egress price), and what-if comparisons between variants, computed
//! only from the bytes the ledger says were stored ([`crate::DeliveryRow`]).
//! `GET /v1/delivery`, the dashboard and `imagegate report` all show this one shape.
//!
//! These are projections, not charges: they use the configured egress price and
//! expected views per image, and are kept in fractional USD because one view of a
//! small AVIF costs far less than a micro-dollar.

use crate::DeliveryRow;
use imagegate_core::ImageFormat;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Cloud egress is billed per 10^9 bytes.
const BYTES_PER_GB: f64 = 1e9;

/// The projection over one report window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryProjection {
    pub egress_usd_per_gb: f64,
    pub expected_views_per_image: f64,
    /// One row per (width, format) stored in the window, by width then format.
    pub variants: Vec<VariantProjection>,
    pub what_if: Vec<WhatIf>,
}

/// One (width, format) of stored files and what serving it would cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariantProjection {
    pub width: u32,
    pub format: ImageFormat,
    pub files: u64,
    pub bytes: u64,
    /// bytes / files.
    pub avg_bytes: f64,
    /// One view of an average file.
    pub usd_per_view: f64,
    pub usd_per_1000_views: f64,
    /// An average file served `expected_views_per_image` times.
    pub projected_usd_per_image: f64,
    /// Every stored file of this variant served `expected_views_per_image` times.
    /// Not summed across variants: one page view fetches one variant of an image.
    pub projected_usd_all_files: f64,
}

/// Which way a what-if changes the served file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WhatIfKind {
    /// A narrower width, same format.
    Width,
    /// Another format, same width.
    Format,
}

impl WhatIfKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WhatIfKind::Width => "width",
            WhatIfKind::Format => "format",
        }
    }
}

/// One side of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Side {
    pub width: u32,
    pub format: ImageFormat,
    /// None when the window stored no such files.
    pub avg_bytes: Option<f64>,
}

/// "Serve `to` instead of `from`": the deltas are `to − from`, so savings are negative.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WhatIf {
    pub kind: WhatIfKind,
    pub label: String,
    pub from: Side,
    pub to: Side,
    /// Both sides have stored files; without it every delta is null and `missing`
    /// says which side has none.
    pub has_data: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
    pub delta_bytes: Option<f64>,
    pub delta_usd_per_view: Option<f64>,
    pub delta_usd_per_1000_views: Option<f64>,
    /// Per image at `expected_views_per_image`.
    pub delta_usd_per_image: Option<f64>,
    pub delta_percent: Option<f64>,
}

/// Rounds away float noise (`0.30000000000000004`) far below any visible digit.
fn tidy(v: f64) -> f64 {
    if v == 0.0 {
        return 0.0;
    }
    let digits = 12 - v.abs().log10().ceil() as i32;
    let scale = 10f64.powi(digits.clamp(0, 300));
    (v * scale).round() / scale
}

/// Formats from the oldest to the newest codec: a what-if moves rightwards.
fn codec_rank(f: ImageFormat) -> u8 {
    match f {
        ImageFormat::Jpeg => 0,
        ImageFormat::Webp => 1,
        ImageFormat::Avif => 2,
    }
}

fn format_name(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Webp => "WebP",
        ImageFormat::Avif => "AVIF",
    }
}

/// What a projection assumes: the configured prices, and the widths and formats the
/// configured profiles store (what-ifs name them even when the window stored none).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeliveryAssumptions {
    /// `costs.egress_usd_per_gb`.
    pub egress_usd_per_gb: f64,
    /// `costs.expected_views_per_image`.
    pub expected_views_per_image: f64,
    /// Every width a configured profile stores.
    pub widths: BTreeSet<u32>,
    /// Every format a configured profile stores.
    pub formats: BTreeSet<ImageFormat>,
}

/// Projects `rows` (from [`crate::Ledger::delivery`]) at the assumed prices.
/// What-ifs cover every width and format that the data or a configured profile has:
/// each format's adjacent widths (narrower instead of wider), and each width's older
/// format against a newer one. A pair with one side the window never stored is
/// listed without numbers, never estimated; a pair with neither is left out.
pub fn project_delivery(rows: &[DeliveryRow], assume: &DeliveryAssumptions) -> DeliveryProjection {
    let price = assume.egress_usd_per_gb;
    let views = assume.expected_views_per_image;
    let per_view = |bytes: f64| bytes * price / BYTES_PER_GB;
    let mut avg: BTreeMap<(u32, ImageFormat), f64> = BTreeMap::new();
    let variants = rows
        .iter()
        .filter(|r| r.files > 0)
        .map(|r| {
            let avg_bytes = r.bytes as f64 / r.files as f64;
            avg.insert((r.width, r.format), avg_bytes);
            VariantProjection {
                width: r.width,
                format: r.format,
                files: r.files,
                bytes: r.bytes,
                avg_bytes: tidy(avg_bytes),
                usd_per_view: tidy(per_view(avg_bytes)),
                usd_per_1000_views: tidy(per_view(avg_bytes) * 1000.0),
                projected_usd_per_image: tidy(per_view(avg_bytes) * views),
                projected_usd_all_files: tidy(per_view(r.bytes as f64) * views),
            }
        })
        .collect();

    let mut widths: BTreeSet<u32> = avg.keys().map(|(w, _)| *w).collect();
    let mut formats: BTreeSet<ImageFormat> = avg.keys().map(|(_, f)| *f).collect();
    widths.extend(&assume.widths);
    formats.extend(&assume.formats);
    let mut formats: Vec<ImageFormat> = formats.into_iter().collect();
    formats.sort_by_key(|f| codec_rank(*f));

    let compare = |kind: WhatIfKind, label: String, from: (u32, ImageFormat), to| {
        let side = |(width, format): (u32, ImageFormat)| Side {
            width,
            format,
            avg_bytes: avg.get(&(width, format)).copied().map(tidy),
        };
        let (from, to) = (side(from), side(to));
        let absent: Vec<String> = [&from, &to]
            .into_iter()
            .filter(|s| s.avg_bytes.is_none())
            .map(|s| format!("{}-wide {}", s.width, s.format.extension()))
            .collect();
        if absent.len() == 2 {
            return None;
        }
        let delta = match (from.avg_bytes, to.avg_bytes) {
            (Some(a), Some(b)) => Some((b - a, a)),
            _ => None,
        };
        Some(WhatIf {
            kind,
            label,
            has_data: delta.is_some(),
            missing: (!absent.is_empty()).then(|| {
                format!(
                    "no data: no {} files stored in the window",
                    absent.join(" or ")
                )
            }),
            delta_bytes: delta.map(|(d, _)| tidy(d)),
            delta_usd_per_view: delta.map(|(d, _)| tidy(per_view(d))),
            delta_usd_per_1000_views: delta.map(|(d, _)| tidy(per_view(d) * 1000.0)),
            delta_usd_per_image: delta.map(|(d, _)| tidy(per_view(d) * views)),
            delta_percent: delta.and_then(|(d, a)| (a > 0.0).then(|| tidy(d / a * 100.0))),
            from,
            to,
        })
    };

    let mut what_if = Vec::new();
    let widths: Vec<u32> = widths.into_iter().collect();
    for &format in &formats {
        for pair in widths.windows(2).rev() {
            let (narrow, wide) = (pair[0], pair[1]);
            what_if.extend(compare(
                WhatIfKind::Width,
                format!(
                    "serve {narrow} wide instead of {wide} ({})",
                    format_name(format)
                ),
                (wide, format),
                (narrow, format),
            ));
        }
    }
    for &width in widths.iter().rev() {
        for (i, &old) in formats.iter().enumerate() {
            for &new in &formats[i + 1..] {
                what_if.extend(compare(
                    WhatIfKind::Format,
                    format!(
                        "{} instead of {} at {width} wide",
                        format_name(new),
                        format_name(old)
                    ),
                    (width, old),
                    (width, new),
                ));
            }
        }
    }
    DeliveryProjection {
        egress_usd_per_gb: price,
        expected_views_per_image: views,
        variants,
        what_if,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// $0.1 per GB, 1000 views per image, profiles storing `widths` in `formats`.
    fn assume(widths: &[u32], formats: &[ImageFormat]) -> DeliveryAssumptions {
        DeliveryAssumptions {
            egress_usd_per_gb: 0.1,
            expected_views_per_image: 1000.0,
            widths: widths.iter().copied().collect(),
            formats: formats.iter().copied().collect(),
        }
    }

    fn row(width: u32, format: ImageFormat, files: u64, bytes: u64) -> DeliveryRow {
        DeliveryRow {
            width,
            format,
            files,
            bytes,
        }
    }

    #[test]
    fn projects_average_bytes_times_views_times_price() {
        let c = assume(&[1024], &[ImageFormat::Jpeg]);
        let p = project_delivery(&[row(1024, ImageFormat::Jpeg, 4, 400_000)], &c);
        let v = &p.variants[0];
        assert_eq!(v.avg_bytes, 100_000.0);
        // 10^5 bytes at $0.1 per 10^9 bytes: $10^-5 a view.
        assert_eq!(v.usd_per_view, 0.00001);
        assert_eq!(v.usd_per_1000_views, 0.01);
        assert_eq!(v.projected_usd_per_image, 0.01);
        assert_eq!(v.projected_usd_all_files, 0.04);
        assert!(p.what_if.is_empty(), "{:?}", p.what_if);
    }

    #[test]
    fn what_ifs_use_stored_bytes_and_say_when_a_side_has_none() {
        let c = assume(&[512, 768, 1024], &[ImageFormat::Avif, ImageFormat::Jpeg]);
        let rows = [
            row(768, ImageFormat::Avif, 2, 60_000),
            row(768, ImageFormat::Jpeg, 2, 120_000),
            row(1024, ImageFormat::Avif, 2, 100_000),
        ];
        let p = project_delivery(&rows, &c);
        let labels: Vec<&str> = p.what_if.iter().map(|w| w.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "serve 768 wide instead of 1024 (JPEG)",
                "serve 512 wide instead of 768 (JPEG)",
                "serve 768 wide instead of 1024 (AVIF)",
                "serve 512 wide instead of 768 (AVIF)",
                "AVIF instead of JPEG at 1024 wide",
                "AVIF instead of JPEG at 768 wide",
            ]
        );
        let narrower = &p.what_if[2];
        assert!(narrower.has_data);
        assert_eq!(narrower.delta_bytes, Some(-20_000.0));
        assert_eq!(narrower.delta_percent, Some(-40.0));
        assert_eq!(narrower.delta_usd_per_view, Some(-0.000002));
        assert_eq!(narrower.delta_usd_per_1000_views, Some(-0.002));
        let avif_768 = &p.what_if[5];
        assert_eq!(avif_768.delta_percent, Some(-50.0));
        let no_jpeg_1024 = &p.what_if[4];
        assert!(!no_jpeg_1024.has_data);
        assert_eq!(no_jpeg_1024.delta_usd_per_view, None);
        assert_eq!(
            no_jpeg_1024.missing.as_deref(),
            Some("no data: no 1024-wide jpeg files stored in the window")
        );
        // Neither 512 file was stored: that pair says nothing and is left out.
        assert!(project_delivery(&[], &c).what_if.is_empty());
    }

    #[test]
    fn tidy_keeps_twelve_significant_digits() {
        assert_eq!(tidy(0.1 + 0.2), 0.3);
        assert_eq!(tidy(-3.4e-9), -3.4e-9);
        assert_eq!(tidy(0.0), 0.0);
    }
}
