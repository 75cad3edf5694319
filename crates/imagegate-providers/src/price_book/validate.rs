//! What the price book refuses in its file, and the checks of each entry: one
//! variant per fault, so a caller can tell them apart and the message stays the same.

use super::{PriceEntry, Pricing};
use chrono::NaiveDate;
use imagegate_core::Size;
use std::collections::BTreeSet;

/// Why the book's file is refused; it comes with the line and column of the row.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BookFault {
    #[error("{provider}/{model}: {fault}")]
    Entry {
        provider: String,
        model: String,
        fault: EntryFault,
    },
    #[error("{provider}/{model} is listed twice")]
    ListedTwice { provider: String, model: String },
    #[error("surge multiplier must be a non-negative number, not {0}")]
    SurgeMultiplier(f64),
    #[error("discount pct must be within 0..=100, not {0}")]
    DiscountPct(f64),
}

/// What is wrong with one `[[model]]` entry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EntryFault {
    #[error("{field} must be a non-negative number, not {value}")]
    NotAPrice { field: &'static str, value: f64 },
    #[error("batch_discount_pct must be within 0..=100, not {0}")]
    BatchDiscountPct(f64),
    #[error("provider and model must not be empty")]
    EmptyName,
    #[error("model must not contain '@' (it marks a fine-tuned adapter)")]
    AdapterMarker,
    #[error("source must say where the price was published")]
    NoSource,
    #[error("a retired model needs a replacement to point callers to")]
    NoReplacement,
    #[error("deprecated {deprecated} is after retired {retired}")]
    DeprecatedAfterRetired {
        deprecated: NaiveDate,
        retired: NaiveDate,
    },
    #[error("prices is empty")]
    NoPrices,
    #[error("a per_token entry needs image_output_tokens or image_prices")]
    NoImageOutput,
    #[error("pixels_per_megapixel must be positive")]
    ZeroPixelsPerMegapixel,
    #[error("rows name a quality, so default_quality is required")]
    NoDefaultQuality,
    #[error("default_quality {0:?} has no row")]
    DefaultQualityHasNoRow(String),
    #[error("two rows for size {size} quality {quality}")]
    DuplicateRow { size: String, quality: String },
}

pub(super) fn validate_entry(e: &PriceEntry) -> Result<(), EntryFault> {
    let price = |field: &'static str, value: f64| {
        if value.is_finite() && value >= 0.0 {
            Ok(())
        } else {
            Err(EntryFault::NotAPrice { field, value })
        }
    };
    if e.provider.trim().is_empty() || e.model.trim().is_empty() {
        return Err(EntryFault::EmptyName);
    }
    if e.model.contains('@') {
        return Err(EntryFault::AdapterMarker);
    }
    if e.source.trim().is_empty() {
        return Err(EntryFault::NoSource);
    }
    if let Some(p) = e.adapter_premium_pct {
        price("adapter_premium_pct", p)?;
    }
    if let Some(p) = e.batch_discount_pct {
        if !(p.is_finite() && (0.0..=100.0).contains(&p)) {
            return Err(EntryFault::BatchDiscountPct(p));
        }
    }
    if let Some(p) = e.usd_per_reported_credit {
        price("usd_per_reported_credit", p)?;
    }
    if e.retired.is_some() && e.replacement.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Err(EntryFault::NoReplacement);
    }
    if let (Some(d), Some(r)) = (e.deprecated, e.retired) {
        if d.0 > r.0 {
            return Err(EntryFault::DeprecatedAfterRetired {
                deprecated: d.0,
                retired: r.0,
            });
        }
    }
    let qualities: Vec<Option<&str>> = match &e.pricing {
        Pricing::PerImage(t) => {
            if t.prices.is_empty() {
                return Err(EntryFault::NoPrices);
            }
            for r in &t.prices {
                price("usd", r.usd)?;
            }
            unique_rows(t.prices.iter().map(|r| (r.size, r.quality.as_deref())))?;
            t.prices.iter().map(|r| r.quality.as_deref()).collect()
        }
        Pricing::PerToken(t) => {
            price("usd_per_m_text_input", t.usd_per_m_text_input)?;
            price("usd_per_m_image_input", t.usd_per_m_image_input)?;
            price("usd_per_m_image_output", t.usd_per_m_image_output)?;
            if t.image_output_tokens.is_empty() && t.image_prices.is_empty() {
                return Err(EntryFault::NoImageOutput);
            }
            unique_rows(
                t.image_output_tokens
                    .iter()
                    .map(|r| (r.size, r.quality.as_deref())),
            )?;
            for r in &t.image_prices {
                price("usd", r.usd)?;
            }
            unique_rows(
                t.image_prices
                    .iter()
                    .map(|r| (r.size, r.quality.as_deref())),
            )?;
            t.image_output_tokens
                .iter()
                .map(|r| r.quality.as_deref())
                .chain(t.image_prices.iter().map(|r| r.quality.as_deref()))
                .collect()
        }
        Pricing::PerMegapixel(m) => {
            price("usd_per_megapixel", m.usd_per_megapixel)?;
            if let Some(first) = m.first_megapixel_usd {
                price("first_megapixel_usd", first)?;
            }
            if m.pixels_per_megapixel == 0 {
                return Err(EntryFault::ZeroPixelsPerMegapixel);
            }
            Vec::new()
        }
        Pricing::PerGpuSecond(g) => {
            price("usd_per_gpu_second", g.usd_per_gpu_second)?;
            price(
                "expected_seconds_per_megapixel",
                g.expected_seconds_per_megapixel,
            )?;
            Vec::new()
        }
        Pricing::Credits(c) => {
            price("usd_per_credit", c.usd_per_credit)?;
            price("credits_per_image", c.credits_per_image)?;
            Vec::new()
        }
    };
    // Rows keyed by quality need a default, or a quote naming no quality finds none.
    if qualities.iter().all(|q| q.is_some()) && !qualities.is_empty() {
        match e.default_quality.as_deref() {
            None => return Err(EntryFault::NoDefaultQuality),
            Some(d)
                if !qualities
                    .iter()
                    .flatten()
                    .any(|q| q.eq_ignore_ascii_case(d)) =>
            {
                return Err(EntryFault::DefaultQualityHasNoRow(d.to_string()));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn unique_rows<'a>(
    rows: impl Iterator<Item = (Option<Size>, Option<&'a str>)>,
) -> Result<(), EntryFault> {
    let mut seen = BTreeSet::new();
    for (size, quality) in rows {
        let key = (
            size.map(|s| (s.width, s.height)),
            quality.map(str::to_ascii_lowercase),
        );
        if !seen.insert(key) {
            return Err(EntryFault::DuplicateRow {
                size: size.map(|s| s.to_string()).unwrap_or_else(|| "any".into()),
                quality: quality.unwrap_or("any").to_string(),
            });
        }
    }
    Ok(())
}
