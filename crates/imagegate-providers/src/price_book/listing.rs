//! The book in force as people read it (`GET /v1/prices`, `imagegate prices list`):
//! per provider and model, one 1024x1024 image at each quality tier with the surge
//! and discount in force, the list price, status and where the price came from.

use super::{ModelStatus, PriceBook, Pricing};
use chrono::{DateTime, NaiveDate, Utc};
use imagegate_core::Size;
use serde::Serialize;

/// One entry of the book as listed.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Listed {
    pub provider: String,
    pub model: String,
    #[serde(flatten)]
    pub status: ModelStatus,
    /// How the model is billed (`per_image`, `per_megapixel`, `tokens`, ...).
    #[schema(value_type = String)]
    pub pricing: &'static str,
    /// One 1024x1024 image at each quality tier the entry names (or once, with no
    /// quality, when it names none).
    pub image_1024: Vec<TierPrice>,
    /// The surge multiplier in force at the listing's instant.
    pub surge_multiplier: f64,
    pub discount_pct: f64,
    pub source: String,
    #[schema(value_type = String, format = Date)]
    pub as_of: NaiveDate,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TierPrice {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<String>,
    /// With the surge and discount in force; none when the entry cannot price it.
    pub usd: Option<f64>,
    /// Before surge and discount.
    pub list_usd: Option<f64>,
}

const SQUARE_1024: Size = Size {
    width: 1024,
    height: 1024,
};

impl PriceBook {
    /// Every entry as listed at `at`.
    pub fn listing(&self, at: DateTime<Utc>) -> Vec<Listed> {
        self.entries()
            .iter()
            .map(|e| {
                let qualities = qualities_of(&e.pricing);
                let tiers = if qualities.is_empty() {
                    vec![None]
                } else {
                    qualities.into_iter().map(Some).collect()
                };
                let image_1024 = tiers
                    .into_iter()
                    .map(|q| {
                        let quote = self
                            .quote(&e.provider, &e.model, SQUARE_1024, q.as_deref(), at)
                            .ok();
                        TierPrice {
                            usd: quote.as_ref().map(|q| q.micros.as_usd()),
                            list_usd: quote.map(|q| q.basis.list_micros / 1e6),
                            quality: q,
                        }
                    })
                    .collect();
                Listed {
                    provider: e.provider.clone(),
                    model: e.model.clone(),
                    status: e.status_on(at.date_naive()),
                    pricing: e.pricing.name(),
                    image_1024,
                    surge_multiplier: self.surge_multiplier(&e.provider, &e.model, at),
                    discount_pct: self.discount_pct(&e.provider, &e.model),
                    source: e.source.clone(),
                    as_of: e.as_of.0,
                    note: e.note.clone(),
                }
            })
            .collect()
    }
}

/// The quality tiers an entry's rows name, in first-seen order.
fn qualities_of(pricing: &Pricing) -> Vec<String> {
    let named: Vec<Option<&str>> = match pricing {
        Pricing::PerImage(t) => t.prices.iter().map(|r| r.quality.as_deref()).collect(),
        Pricing::PerToken(t) => t
            .image_prices
            .iter()
            .map(|r| r.quality.as_deref())
            .chain(t.image_output_tokens.iter().map(|r| r.quality.as_deref()))
            .collect(),
        _ => Vec::new(),
    };
    let mut out: Vec<String> = Vec::new();
    for q in named.into_iter().flatten() {
        if !out.iter().any(|o| o.eq_ignore_ascii_case(q)) {
            out.push(q.to_string());
        }
    }
    out
}
