//! The price book: what each provider model costs, read from `config/pricing.toml`.
//!
//! Entries are keyed by provider *kind* (`openai`, `stability`, `google`, …) and model,
//! and each names the published page it was copied from (`source`) and when
//! (`as_of`). A [`Pricing`] says how the provider bills; modifiers adjust it:
//! surge windows (UTC time of day and weekday), a premium for fine-tuned adapters
//! (a model asked for as `BASE@ADAPTER`), and prepaid or committed discounts.
//!
//! [`PriceBook::quote`] prices one image before a call; [`PriceBook::charge`] prices
//! a finished call from the usage the provider reported. Both take the instant `at`
//! so the surge in force is decided by the caller's (injectable) clock.
//!
//! A call through a provider's batch API is priced at [`Rate::Batch`]: the entry's
//! `batch_discount_pct` off and no surge; an entry without one has no batch price.
//!
//! Arithmetic runs in `f64` micro-dollars and rounds once, at the end, to the nearest
//! micro-dollar: cost = base × (1 + premium%) × surge × (1 − batch%) × (1 − discount%).

use crate::Usage;
pub use audit::{audit, unpriced_offers, Finding, Offered};
use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Utc, Weekday};
use imagegate_core::{Micros, Size};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

/// Why a price could not be read or computed.
#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    #[error("cannot read price book {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The TOML itself is malformed or has unknown or mistyped fields; `message` comes
    /// from the toml crate and names the line and column.
    #[error("price book {origin} does not parse: {message}")]
    Parse { origin: String, message: String },
    #[error("price book {origin}, line {line} column {column}: {fault}")]
    Invalid {
        origin: String,
        line: usize,
        column: usize,
        fault: Box<BookFault>,
    },
    #[error("the price book has no entry for {provider}/{model}")]
    NoEntry { provider: String, model: String },
    /// Models a provider offers that the book does not price and that are not marked
    /// `unpriced = true`: their calls would be recorded at $0.
    #[error("price book {origin} has no entry for offered model(s) {}: add entries, or mark them unpriced = true in the provider's models", .models.join(", "))]
    Unpriced { origin: String, models: Vec<String> },
    #[error("{provider}/{model} has no price for size {size}{}", quality_suffix(.quality))]
    NoPriceForSize {
        provider: String,
        model: String,
        size: String,
        quality: Option<String>,
    },
    #[error(
        "{provider}/{model}: the reported usage lacks {what}, so the call cannot be priced from it"
    )]
    MissingUsage {
        provider: String,
        model: String,
        what: &'static str,
    },
    /// The entry has no `batch_discount_pct`: its batch price is unknown, so nothing
    /// is sent to the provider's batch API on a guess.
    #[error("{provider}/{model} has no batch price (batch_discount_pct)")]
    NoBatchPrice { provider: String, model: String },
    #[error("{provider}/{model} has no adapter_premium_pct, so fine-tuned adapter {adapter:?} cannot be priced")]
    NoAdapterPrice {
        provider: String,
        model: String,
        adapter: String,
    },
}

fn quality_suffix(q: &Option<String>) -> String {
    q.as_ref()
        .map(|q| format!(" at quality {q:?}"))
        .unwrap_or_default()
}

/// How a provider bills one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Pricing {
    PerImage(PerImage),
    PerToken(PerToken),
    PerMegapixel(PerMegapixel),
    PerGpuSecond(PerGpuSecond),
    Credits(Credits),
}

impl Pricing {
    pub fn name(&self) -> &'static str {
        match self {
            Pricing::PerImage(_) => "per_image",
            Pricing::PerToken(_) => "per_token",
            Pricing::PerMegapixel(_) => "per_megapixel",
            Pricing::PerGpuSecond(_) => "per_gpu_second",
            Pricing::Credits(_) => "credits",
        }
    }
}

/// A fixed fee per image, by size and quality tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerImage {
    pub prices: Vec<ImagePrice>,
}

/// One row of a per-image table. No `size` means any size; no `quality` means any tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePrice {
    #[serde(default, with = "size_text", skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<String>,
    pub usd: f64,
}

/// Token billing, as multimodal models do: text and image input, image output, all in
/// USD per million tokens, and how many output tokens one image takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerToken {
    pub usd_per_m_text_input: f64,
    #[serde(default)]
    pub usd_per_m_image_input: f64,
    pub usd_per_m_image_output: f64,
    /// Output tokens of one image by size and quality (used to quote, and to charge
    /// when a provider reports no token counts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_output_tokens: Vec<ImageTokens>,
    /// The provider's own published price of one image by size and quality, where it
    /// publishes one (OpenAI does): quotes use it, so an estimate is the published
    /// figure; charges still use the reported tokens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_prices: Vec<ImagePrice>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageTokens {
    #[serde(default, with = "size_text", skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<String>,
    pub tokens: u64,
}

/// A fee per megapixel of output. `pixels_per_megapixel` is 1 000 000 unless a
/// provider defines its megapixel otherwise (ours, `local`, and fal price per 1024²).
/// Black Forest Labs bills the first megapixel at a flat `first_megapixel_usd` and
/// each further one at `usd_per_megapixel`; fal rounds up to whole megapixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerMegapixel {
    pub usd_per_megapixel: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_megapixel_usd: Option<f64>,
    #[serde(default = "default_pixels_per_megapixel")]
    pub pixels_per_megapixel: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub round_up: bool,
}

impl PerMegapixel {
    /// List price of one image of `pixels`, in micro-dollars, and its megapixels.
    fn one_image(&self, pixels: u64) -> (f64, f64) {
        let mut mp = pixels as f64 / self.pixels_per_megapixel as f64;
        if self.round_up {
            mp = mp.ceil();
        }
        let usd = match self.first_megapixel_usd {
            Some(first) => first + (mp - 1.0).max(0.0) * self.usd_per_megapixel,
            None => mp * self.usd_per_megapixel,
        };
        (usd_micros(usd), mp)
    }

    fn words(&self) -> String {
        match self.first_megapixel_usd {
            Some(first) => format!("${first} first MP + ${}/MP", self.usd_per_megapixel),
            None => format!("${}/MP", self.usd_per_megapixel),
        }
    }
}

fn default_pixels_per_megapixel() -> u64 {
    1_000_000
}

/// Self-hosted GPUs: what a GPU-second costs us, and how many seconds a megapixel
/// usually takes (for quotes; charges use the measured seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerGpuSecond {
    pub usd_per_gpu_second: f64,
    pub expected_seconds_per_megapixel: f64,
}

/// Prepaid credits: the price of one credit and how many one image takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credits {
    pub usd_per_credit: f64,
    pub credits_per_image: f64,
}

/// One provider model's price and where it was published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceEntry {
    /// Provider kind, as in `[[providers]] kind = ...`.
    pub provider: String,
    pub model: String,
    /// The page the price was copied from.
    pub source: String,
    /// When the price was read from `source`.
    pub as_of: DateText,
    /// Quality tier assumed when a quote or a usage names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_quality: Option<String>,
    /// What the provider's batch API takes off the live price, in percent (OpenAI's
    /// Batch API and Gemini's batch mode: 50). None: no batch price is known, and no
    /// job goes to the batch API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_discount_pct: Option<f64>,
    /// Extra percentage charged for a fine-tuned adapter (`model@adapter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter_premium_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The day the provider announced the model's retirement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated: Option<DateText>,
    /// The day the provider stops serving the model; from then on the router never
    /// calls it and a caller naming it is told the `replacement`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired: Option<DateText>,
    /// The model the provider recommends instead (required with `retired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    /// What one credit in the provider's own cost report is worth, for providers that
    /// answer with what they charged (Black Forest Labs: `cost` in credits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd_per_reported_credit: Option<f64>,
    pub pricing: Pricing,
}

/// Where a model stands in its provider's lifecycle on a given day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum ModelStatus {
    Current,
    /// Announced for retirement; still served.
    Deprecated {
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<String>, format = Date)]
        retires_on: Option<NaiveDate>,
        #[serde(skip_serializing_if = "Option::is_none")]
        replacement: Option<String>,
    },
    /// No longer served by the provider.
    Retired {
        #[schema(value_type = String, format = Date)]
        on: NaiveDate,
        replacement: Option<String>,
    },
}

impl ModelStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            ModelStatus::Current => "current",
            ModelStatus::Deprecated { .. } => "deprecated",
            ModelStatus::Retired { .. } => "retired",
        }
    }
}

impl PriceEntry {
    /// The entry's status on `day` (UTC).
    pub fn status_on(&self, day: NaiveDate) -> ModelStatus {
        match (self.deprecated, self.retired) {
            (_, Some(r)) if day >= r.0 => ModelStatus::Retired {
                on: r.0,
                replacement: self.replacement.clone(),
            },
            (Some(d), retired) if day >= d.0 => ModelStatus::Deprecated {
                retires_on: retired.map(|r| r.0),
                replacement: self.replacement.clone(),
            },
            (None, Some(r)) => ModelStatus::Deprecated {
                retires_on: Some(r.0),
                replacement: self.replacement.clone(),
            },
            _ => ModelStatus::Current,
        }
    }
}

/// A date written either as a TOML date (`2026-11-24`) or a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct DateText(pub NaiveDate);

impl<'de> Deserialize<'de> for DateText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<DateText, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Toml(toml::value::Datetime),
            Text(String),
        }
        let text = match Either::deserialize(d)? {
            Either::Toml(dt) => dt.to_string(),
            Either::Text(s) => s,
        };
        NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
            .map(DateText)
            .map_err(|_| serde::de::Error::custom(format!("{text:?} is not a date (YYYY-MM-DD)")))
    }
}

/// A multiplier in force during a UTC time-of-day range on some weekdays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SurgeWindow {
    /// Provider kind it applies to; none means every provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// UTC weekdays ("mon", "tue", …); empty means every day.
    #[serde(default)]
    pub days: Vec<Weekday>,
    /// UTC "HH:MM", inclusive.
    #[serde(with = "time_text")]
    pub start: NaiveTime,
    /// UTC "HH:MM", exclusive. Earlier than `start` wraps past midnight; equal to
    /// `start` means all day.
    #[serde(with = "time_text")]
    pub end: NaiveTime,
    pub multiplier: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl SurgeWindow {
    fn applies(&self, provider: &str, model: &str, at: DateTime<Utc>) -> bool {
        if self.provider.as_deref().is_some_and(|p| p != provider)
            || self.model.as_deref().is_some_and(|m| m != model)
        {
            return false;
        }
        if !self.days.is_empty() && !self.days.contains(&at.weekday()) {
            return false;
        }
        let t = at.time();
        match self.start.cmp(&self.end) {
            std::cmp::Ordering::Less => self.start <= t && t < self.end,
            std::cmp::Ordering::Greater => t >= self.start || t < self.end,
            std::cmp::Ordering::Equal => true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscountKind {
    Prepaid,
    Committed,
}

/// A negotiated percentage off a provider's (or one model's) list price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discount {
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub kind: DiscountKind,
    pub pct: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceBookFile {
    #[serde(default)]
    model: Vec<toml::Spanned<PriceEntry>>,
    #[serde(default)]
    surge: Vec<toml::Spanned<SurgeWindow>>,
    #[serde(default)]
    discount: Vec<toml::Spanned<Discount>>,
}

/// Which of a model's prices applies: a live call's, or a call through the
/// provider's batch API (the entry's `batch_discount_pct` off, no surge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rate {
    Live,
    Batch,
}

/// The expected or actual fee of one call, and how it was reached.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quote {
    pub micros: Micros,
    pub basis: QuoteBasis,
}

/// What a price was made of, for the ledger and `/v1/estimate`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuoteBasis {
    pub provider: String,
    pub model: String,
    pub pricing: &'static str,
    /// The billed quantities in words, e.g. "1 image 1024x1024 standard at $0.04".
    pub detail: String,
    /// List price before modifiers, in (fractional) micro-dollars.
    pub list_micros: f64,
    #[serde(skip_serializing_if = "is_zero")]
    pub adapter_premium_pct: f64,
    pub surge_multiplier: f64,
    #[serde(skip_serializing_if = "is_zero")]
    pub discount_pct: f64,
    /// Taken off for a call through the provider's batch API.
    #[serde(skip_serializing_if = "is_zero")]
    pub batch_discount_pct: f64,
    pub source: String,
    pub as_of: NaiveDate,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// Every known price, validated once at load.
#[derive(Debug, Clone, Default)]
pub struct PriceBook {
    entries: Vec<PriceEntry>,
    surges: Vec<SurgeWindow>,
    discounts: Vec<Discount>,
    /// blake3 of the file's text (12 hex digits): the same text on every replica has
    /// the same version, so ledger rows can say which book priced them.
    version: String,
    origin: String,
    text: String,
}

impl PriceBook {
    /// Reads and validates a price book file.
    pub fn load(path: impl AsRef<Path>) -> Result<PriceBook, PriceError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| PriceError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn from_toml_str(text: &str) -> Result<PriceBook, PriceError> {
        Self::parse(text, "(inline)")
    }

    /// Parses a book's text, naming `origin` (a path, or where the text came from) in
    /// errors.
    pub fn parse(text: &str, origin: &str) -> Result<PriceBook, PriceError> {
        let file: PriceBookFile = toml::from_str(text).map_err(|e| PriceError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        let invalid = |span: std::ops::Range<usize>, fault: BookFault| {
            let (line, column) = line_column(text, span.start);
            PriceError::Invalid {
                origin: origin.to_string(),
                line,
                column,
                fault: Box::new(fault),
            }
        };
        let mut seen = BTreeSet::new();
        let mut entries = Vec::with_capacity(file.model.len());
        for spanned in file.model {
            let span = spanned.span();
            let entry = spanned.into_inner();
            validate_entry(&entry).map_err(|fault| {
                invalid(
                    span.clone(),
                    BookFault::Entry {
                        provider: entry.provider.clone(),
                        model: entry.model.clone(),
                        fault,
                    },
                )
            })?;
            if !seen.insert((entry.provider.clone(), entry.model.clone())) {
                return Err(invalid(
                    span,
                    BookFault::ListedTwice {
                        provider: entry.provider.clone(),
                        model: entry.model.clone(),
                    },
                ));
            }
            entries.push(entry);
        }
        let mut surges = Vec::new();
        for spanned in file.surge {
            let span = spanned.span();
            let s = spanned.into_inner();
            if !(s.multiplier.is_finite() && s.multiplier >= 0.0) {
                return Err(invalid(span, BookFault::SurgeMultiplier(s.multiplier)));
            }
            surges.push(s);
        }
        let mut discounts = Vec::new();
        for spanned in file.discount {
            let span = spanned.span();
            let d = spanned.into_inner();
            if !(d.pct.is_finite() && (0.0..=100.0).contains(&d.pct)) {
                return Err(invalid(span, BookFault::DiscountPct(d.pct)));
            }
            discounts.push(d);
        }
        Ok(PriceBook {
            entries,
            surges,
            discounts,
            version: blake3::hash(text.as_bytes()).to_hex()[..12].to_string(),
            origin: origin.to_string(),
            text: text.to_string(),
        })
    }

    pub fn entries(&self) -> &[PriceEntry] {
        &self.entries
    }

    pub fn surges(&self) -> &[SurgeWindow] {
        &self.surges
    }

    pub fn discounts(&self) -> &[Discount] {
        &self.discounts
    }

    /// The book's version: a hash of its text.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Where the book was read from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The text the book was parsed from (what fleet replicas share).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The cost the provider itself reported for a call, where it reports one: a
    /// dollar figure, or credits at the entry's `usd_per_reported_credit` (for
    /// credit-priced entries, their `usd_per_credit`).
    pub fn reported_cost(&self, provider: &str, model: &str, usage: &Usage) -> Option<Micros> {
        if let Some(usd) = usage.reported_usd.filter(|u| u.is_finite() && *u >= 0.0) {
            return Some(micros_of(usd_micros(usd)));
        }
        let credits = usage.credits.filter(|c| c.is_finite() && *c >= 0.0)?;
        let entry = self.entry(provider, model)?;
        let per_credit = entry.usd_per_reported_credit.or(match &entry.pricing {
            Pricing::Credits(c) => Some(c.usd_per_credit),
            _ => None,
        })?;
        Some(micros_of(usd_micros(credits * per_credit)))
    }

    /// The entry for `provider`/`model`; a fine-tuned `base@adapter` finds `base`.
    pub fn entry(&self, provider: &str, model: &str) -> Option<&PriceEntry> {
        let (base, _) = split_adapter(model);
        self.entries
            .iter()
            .find(|e| e.provider == provider && e.model == base)
    }

    /// The expected fee of one image of `size` before calling. `quality` defaults to
    /// the entry's `default_quality`.
    pub fn quote(
        &self,
        provider: &str,
        model: &str,
        size: Size,
        quality: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<Quote, PriceError> {
        self.quote_at_rate(provider, model, size, quality, at, Rate::Live)
    }

    /// [`quote`](Self::quote) at `rate`.
    pub fn quote_at_rate(
        &self,
        provider: &str,
        model: &str,
        size: Size,
        quality: Option<&str>,
        at: DateTime<Utc>,
        rate: Rate,
    ) -> Result<Quote, PriceError> {
        let entry = self.lookup(provider, model)?;
        let quality = quality.or(entry.default_quality.as_deref());
        let (list, detail) = match &entry.pricing {
            Pricing::PerImage(t) => {
                let row = pick(&t.prices, |r| (r.size, r.quality.as_deref()), size, quality)
                    .ok_or_else(|| no_price(entry, size, quality))?;
                (
                    usd_micros(row.usd),
                    format!("1 image {size}{} at ${}", q_words(quality), row.usd),
                )
            }
            Pricing::PerToken(t) if !t.image_prices.is_empty() => {
                let (usd, how) = published_or_scaled(&t.image_prices, size, quality)
                    .ok_or_else(|| no_price(entry, size, quality))?;
                (
                    usd_micros(usd),
                    format!("1 image {size}{} at ${usd:.6} ({how})", q_words(quality)),
                )
            }
            Pricing::PerToken(t) => {
                let row = pick(
                    &t.image_output_tokens,
                    |r| (r.size, r.quality.as_deref()),
                    size,
                    quality,
                )
                .ok_or_else(|| no_price(entry, size, quality))?;
                (
                    per_million(row.tokens, t.usd_per_m_image_output),
                    format!(
                        "{} image output tokens ({size}{}) at ${}/M",
                        row.tokens,
                        q_words(quality),
                        t.usd_per_m_image_output
                    ),
                )
            }
            Pricing::PerMegapixel(m) => {
                let (micros, mp) = m.one_image(size.pixels());
                (micros, format!("{mp:.4} MP ({size}) at {}", m.words()))
            }
            Pricing::PerGpuSecond(g) => {
                let secs = size.pixels() as f64 / 1e6 * g.expected_seconds_per_megapixel;
                (
                    usd_micros(secs * g.usd_per_gpu_second),
                    format!(
                        "~{secs:.2} GPU-s expected ({size}) at ${}/s",
                        g.usd_per_gpu_second
                    ),
                )
            }
            Pricing::Credits(c) => (
                usd_micros(c.credits_per_image * c.usd_per_credit),
                format!(
                    "{} credits at ${}/credit",
                    c.credits_per_image, c.usd_per_credit
                ),
            ),
        };
        self.finish(entry, model, list, detail, at, rate)
    }

    /// The actual fee of a finished call from the usage the provider reported.
    pub fn charge(
        &self,
        provider: &str,
        model: &str,
        usage: &Usage,
        at: DateTime<Utc>,
    ) -> Result<Micros, PriceError> {
        self.charge_quote(provider, model, usage, at)
            .map(|q| q.micros)
    }

    /// [`charge`](Self::charge) with the basis of the figure.
    pub fn charge_quote(
        &self,
        provider: &str,
        model: &str,
        usage: &Usage,
        at: DateTime<Utc>,
    ) -> Result<Quote, PriceError> {
        self.charge_at_rate(provider, model, usage, at, Rate::Live)
    }

    /// [`charge_quote`](Self::charge_quote) at `rate`.
    pub fn charge_at_rate(
        &self,
        provider: &str,
        model: &str,
        usage: &Usage,
        at: DateTime<Utc>,
        rate: Rate,
    ) -> Result<Quote, PriceError> {
        let entry = self.lookup(provider, model)?;
        let missing = |what: &'static str| PriceError::MissingUsage {
            provider: entry.provider.clone(),
            model: entry.model.clone(),
            what,
        };
        let quality = usage
            .quality
            .as_deref()
            .or(entry.default_quality.as_deref());
        let size = || {
            if usage.width == 0 || usage.height == 0 {
                Err(missing("the image width and height"))
            } else {
                Ok(Size {
                    width: usage.width,
                    height: usage.height,
                })
            }
        };
        let images = || {
            if usage.images == 0 {
                Err(missing("the number of images"))
            } else {
                Ok(usage.images)
            }
        };
        let (list, detail) = match &entry.pricing {
            Pricing::PerImage(t) => {
                let (n, size) = (images()?, size()?);
                let row = pick(&t.prices, |r| (r.size, r.quality.as_deref()), size, quality)
                    .ok_or_else(|| no_price(entry, size, quality))?;
                (
                    f64::from(n) * usd_micros(row.usd),
                    format!("{n} image(s) {size}{} at ${}", q_words(quality), row.usd),
                )
            }
            Pricing::PerToken(t) => {
                let text = usage.input_text_tokens.unwrap_or(0);
                let image_in = usage.input_image_tokens.unwrap_or(0);
                let input = per_million(text, t.usd_per_m_text_input)
                    + per_million(image_in, t.usd_per_m_image_input);
                match usage.output_image_tokens {
                    Some(output) => (
                        input + per_million(output, t.usd_per_m_image_output),
                        format!(
                            "{text} text input + {image_in} image input + {output} image output tokens"
                        ),
                    ),
                    // No counts reported: the request implies them.
                    None if !t.image_output_tokens.is_empty() => {
                        let (n, size) = (images()?, size()?);
                        let row = pick(
                            &t.image_output_tokens,
                            |r| (r.size, r.quality.as_deref()),
                            size,
                            quality,
                        )
                        .ok_or_else(|| no_price(entry, size, quality))?;
                        let output = u64::from(n) * row.tokens;
                        (
                            input + per_million(output, t.usd_per_m_image_output),
                            format!(
                                "{text} text input + {image_in} image input + {output} image output tokens (implied by the size)"
                            ),
                        )
                    }
                    None => {
                        let (n, size) = (images()?, size()?);
                        let (usd, how) = published_or_scaled(&t.image_prices, size, quality)
                            .ok_or_else(|| no_price(entry, size, quality))?;
                        (
                            f64::from(n) * usd_micros(usd),
                            format!(
                                "{n} image(s) {size}{} at ${usd:.6} ({how}; no token counts reported)",
                                q_words(quality)
                            ),
                        )
                    }
                }
            }
            Pricing::PerMegapixel(m) => {
                let (n, size) = (images()?, size()?);
                let (micros, mp) = m.one_image(size.pixels());
                (
                    f64::from(n) * micros,
                    format!("{n} image(s) {size} of {mp:.4} MP at {}", m.words()),
                )
            }
            Pricing::PerGpuSecond(g) => {
                let secs = usage
                    .gpu_seconds
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| missing("gpu_seconds"))?;
                (
                    usd_micros(secs * g.usd_per_gpu_second),
                    format!("{secs:.2} GPU-s at ${}/s", g.usd_per_gpu_second),
                )
            }
            Pricing::Credits(c) => {
                let credits = match usage.credits.filter(|c| c.is_finite() && *c >= 0.0) {
                    Some(credits) => credits,
                    None => f64::from(images()?) * c.credits_per_image,
                };
                (
                    usd_micros(credits * c.usd_per_credit),
                    format!("{credits} credits at ${}/credit", c.usd_per_credit),
                )
            }
        };
        self.finish(entry, model, list, detail, at, rate)
    }

    /// The surge multiplier in force for `provider`/`model` at `at`: the largest of
    /// the matching windows (windows do not compound), or 1.
    pub fn surge_multiplier(&self, provider: &str, model: &str, at: DateTime<Utc>) -> f64 {
        let (base, _) = split_adapter(model);
        self.surges
            .iter()
            .filter(|s| s.applies(provider, base, at))
            .map(|s| s.multiplier)
            .reduce(f64::max)
            .unwrap_or(1.0)
    }

    /// The largest discount for `provider`/`model` (discounts do not stack), or 0.
    pub fn discount_pct(&self, provider: &str, model: &str) -> f64 {
        let (base, _) = split_adapter(model);
        self.discounts
            .iter()
            .filter(|d| d.provider == provider && d.model.as_deref().is_none_or(|m| m == base))
            .map(|d| d.pct)
            .fold(0.0, f64::max)
    }

    fn lookup(&self, provider: &str, model: &str) -> Result<&PriceEntry, PriceError> {
        let entry = self
            .entry(provider, model)
            .ok_or_else(|| PriceError::NoEntry {
                provider: provider.to_string(),
                model: model.to_string(),
            })?;
        if let (_, Some(adapter)) = split_adapter(model) {
            if entry.adapter_premium_pct.is_none() {
                return Err(PriceError::NoAdapterPrice {
                    provider: provider.to_string(),
                    model: entry.model.clone(),
                    adapter: adapter.to_string(),
                });
            }
        }
        Ok(entry)
    }

    /// `entry` was found by its provider kind, so its `provider` is the caller's.
    fn finish(
        &self,
        entry: &PriceEntry,
        model: &str,
        list_micros: f64,
        detail: String,
        at: DateTime<Utc>,
        rate: Rate,
    ) -> Result<Quote, PriceError> {
        let provider = entry.provider.as_str();
        let adapter_premium_pct = match split_adapter(model) {
            (_, Some(_)) => entry.adapter_premium_pct.unwrap_or(0.0),
            (_, None) => 0.0,
        };
        // A batch runs when the provider chooses, at its one batch price: surge
        // windows price live calls only.
        let (surge_multiplier, batch_discount_pct) = match rate {
            Rate::Live => (self.surge_multiplier(provider, model, at), 0.0),
            Rate::Batch => (
                1.0,
                entry
                    .batch_discount_pct
                    .ok_or_else(|| PriceError::NoBatchPrice {
                        provider: provider.to_string(),
                        model: entry.model.clone(),
                    })?,
            ),
        };
        let discount_pct = self.discount_pct(provider, model);
        let total = list_micros
            * (1.0 + adapter_premium_pct / 100.0)
            * surge_multiplier
            * (1.0 - batch_discount_pct / 100.0)
            * (1.0 - discount_pct / 100.0);
        let micros = micros_of(total);
        Ok(Quote {
            micros,
            basis: QuoteBasis {
                provider: provider.to_string(),
                model: model.to_string(),
                pricing: entry.pricing.name(),
                detail,
                list_micros,
                adapter_premium_pct,
                surge_multiplier,
                discount_pct,
                batch_discount_pct,
                source: entry.source.clone(),
                as_of: entry.as_of.0,
            },
        })
    }
}

fn split_adapter(model: &str) -> (&str, Option<&str>) {
    match model.split_once('@') {
        Some((base, adapter)) if !adapter.is_empty() => (base, Some(adapter)),
        _ => (model, None),
    }
}

fn usd_micros(usd: f64) -> f64 {
    usd * 1_000_000.0
}

/// Rounds fractional micro-dollars once, to the nearest. Validation keeps every
/// factor finite and non-negative, and absurd reported usage saturates instead of
/// wrapping: the clamp guards the i64 conversion.
fn micros_of(total: f64) -> Micros {
    if total.is_nan() {
        return Micros::ZERO;
    }
    Micros(total.round().clamp(0.0, i64::MAX as f64) as i64)
}

/// The published price of one image at `size` and `quality`: the smallest listed
/// size covering it, or, past the listed sizes (gpt-image-2 takes any size up to
/// 3840x2160), the dearest listed price per pixel times the pixels. That over-quotes
/// (token counts grow slower than area), which errs on the side of the caller's cap
/// and budget; the charge uses the tokens the provider reports.
fn published_or_scaled(
    rows: &[ImagePrice],
    size: Size,
    quality: Option<&str>,
) -> Option<(f64, &'static str)> {
    if let Some(row) = pick(rows, |r| (r.size, r.quality.as_deref()), size, quality) {
        return Some((row.usd, "published"));
    }
    let quality_ok = |q: Option<&str>| match (q, quality) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(row), Some(want)) => row.eq_ignore_ascii_case(want),
    };
    // The dearest price per pixel among the listed sizes, so the estimate is an
    // upper bound whichever size the provider's token count really follows.
    let per_pixel = rows
        .iter()
        .filter(|r| quality_ok(r.quality.as_deref()))
        .filter_map(|r| r.size.map(|s| r.usd / s.pixels() as f64))
        .fold(None, |best: Option<f64>, v| {
            Some(best.map_or(v, |b| b.max(v)))
        })?;
    Some((
        per_pixel * size.pixels() as f64,
        "scaled by pixels from the published sizes",
    ))
}

fn per_million(tokens: u64, usd_per_million: f64) -> f64 {
    // usd/M tokens × tokens × 1e6 µ$/usd ÷ 1e6 tokens/M = tokens × usd_per_million µ$.
    tokens as f64 * usd_per_million
}

fn q_words(quality: Option<&str>) -> String {
    quality.map(|q| format!(" {q}")).unwrap_or_default()
}

fn no_price(entry: &PriceEntry, size: Size, quality: Option<&str>) -> PriceError {
    PriceError::NoPriceForSize {
        provider: entry.provider.clone(),
        model: entry.model.clone(),
        size: size.to_string(),
        quality: quality.map(str::to_string),
    }
}

/// The row pricing `size` at `quality`: among rows whose quality matches (or is
/// unset), the smallest listed size covering the request (a provider rounds an odd
/// size up to one it offers), else a row with no size (any size).
fn pick<'a, R>(
    rows: &'a [R],
    key: impl Fn(&R) -> (Option<Size>, Option<&str>),
    size: Size,
    quality: Option<&str>,
) -> Option<&'a R> {
    let quality_ok = |q: Option<&str>| match (q, quality) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(row), Some(want)) => row.eq_ignore_ascii_case(want),
    };
    let matching = || rows.iter().filter(|r| quality_ok(key(r).1));
    matching()
        .filter_map(|r| {
            key(r)
                .0
                .filter(|s| s.width >= size.width && s.height >= size.height)
                .map(|s| (s.pixels(), r))
        })
        .min_by_key(|(pixels, _)| *pixels)
        .map(|(_, r)| r)
        .or_else(|| matching().find(|r| key(r).0.is_none()))
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl fmt::Display for Quote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.micros, self.basis.detail)
    }
}

/// Sizes as "WIDTHxHEIGHT" text in the file.
mod size_text {
    use imagegate_core::Size;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(size: &Option<Size>, s: S) -> Result<S::Ok, S::Error> {
        match size {
            Some(size) => s.serialize_str(&size.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Size>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| t.parse::<Size>().map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Times of day as "HH:MM" (or "HH:MM:SS") text.
mod time_text {
    use chrono::NaiveTime;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &NaiveTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.format("%H:%M").to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveTime, D::Error> {
        let text = String::deserialize(d)?;
        NaiveTime::parse_from_str(&text, "%H:%M")
            .or_else(|_| NaiveTime::parse_from_str(&text, "%H:%M:%S"))
            .map_err(|_| serde::de::Error::custom(format!("{text:?} is not a UTC time HH:MM")))
    }
}

pub mod audit;
mod listing;
mod validate;

pub use listing::{Listed, TierPrice};
use validate::validate_entry;
pub use validate::{BookFault, EntryFault};

#[cfg(test)]
mod tests;
