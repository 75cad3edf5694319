//! Holding the book against what the providers offer: start-up's strict check (every
//! offered model priced, or marked `unpriced`) and `imagegate prices check`'s findings
//! (stale prices, missing entries, retired or retiring models still configured).

use super::{ModelStatus, PriceBook};
use chrono::NaiveDate;
use serde::Serialize;

/// One model a configured provider offers, as the book is asked about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Offered {
    /// The configured provider name (`[[providers]] name`).
    pub provider: String,
    /// Its kind, which price-book entries are keyed by.
    pub kind: String,
    pub model: String,
    /// Marked `unpriced = true` in the provider's `models`.
    pub unpriced: bool,
}

/// Days before retirement from which start-up and `prices check` warn.
pub const RETIRING_SOON_DAYS: i64 = 30;

/// What `prices check` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "finding")]
pub enum Finding {
    /// An offered model with no entry and no `unpriced = true`.
    Missing { provider: String, model: String },
    /// An entry whose `as_of` is older than the threshold.
    Stale {
        provider: String,
        model: String,
        as_of: NaiveDate,
        age_days: i64,
    },
    /// A configured model the provider no longer serves.
    RetiredConfigured {
        provider: String,
        model: String,
        retired: NaiveDate,
        replacement: Option<String>,
    },
    /// A configured model retiring within [`RETIRING_SOON_DAYS`] (a warning).
    RetiringSoon {
        provider: String,
        model: String,
        retires: NaiveDate,
        days_left: i64,
        replacement: Option<String>,
    },
}

impl Finding {
    pub fn as_str(&self) -> &'static str {
        match self {
            Finding::Missing { .. } => "missing",
            Finding::Stale { .. } => "stale",
            Finding::RetiredConfigured { .. } => "retired_configured",
            Finding::RetiringSoon { .. } => "retiring_soon",
        }
    }

    /// Whether a deploy should stop on it (`prices check` exits non-zero).
    pub fn fails(&self) -> bool {
        !matches!(self, Finding::RetiringSoon { .. })
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let instead = |r: &Option<String>| {
            r.as_deref()
                .map(|r| format!("; use {r}"))
                .unwrap_or_default()
        };
        match self {
            Finding::Missing { provider, model } => write!(
                f,
                "{provider}/{model} is offered but has no price-book entry (add one, or mark it unpriced = true)"
            ),
            Finding::Stale {
                provider,
                model,
                as_of,
                age_days,
            } => write!(
                f,
                "{provider}/{model}: price read {as_of}, {age_days} days ago; check its source again"
            ),
            Finding::RetiredConfigured {
                provider,
                model,
                retired,
                replacement,
            } => write!(
                f,
                "{provider}/{model} was retired on {retired} and is still configured{}",
                instead(replacement)
            ),
            Finding::RetiringSoon {
                provider,
                model,
                retires,
                days_left,
                replacement,
            } => write!(
                f,
                "{provider}/{model} retires on {retires}, in {days_left} days{}",
                instead(replacement)
            ),
        }
    }
}

/// The offered models that neither have an entry nor are marked `unpriced`, as
/// "provider/model" (empty when the book covers every offer).
pub fn unpriced_offers(book: &PriceBook, offered: &[Offered]) -> Vec<String> {
    offered
        .iter()
        .filter(|o| !o.unpriced && book.entry(&o.kind, &o.model).is_none())
        .map(|o| format!("{}/{}", o.provider, o.model))
        .collect()
}

/// Everything `prices check` reports on `today`, with prices older than
/// `max_age_days` counted stale. Retired entries are not held to freshness: nothing
/// is priced from them any more.
pub fn audit(
    book: &PriceBook,
    offered: &[Offered],
    today: NaiveDate,
    max_age_days: i64,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    for o in offered {
        let Some(entry) = book.entry(&o.kind, &o.model) else {
            if !o.unpriced {
                findings.push(Finding::Missing {
                    provider: o.provider.clone(),
                    model: o.model.clone(),
                });
            }
            continue;
        };
        match entry.status_on(today) {
            ModelStatus::Retired { on, replacement } => findings.push(Finding::RetiredConfigured {
                provider: o.provider.clone(),
                model: o.model.clone(),
                retired: on,
                replacement,
            }),
            ModelStatus::Deprecated {
                retires_on: Some(retires),
                replacement,
            } if (retires - today).num_days() <= RETIRING_SOON_DAYS => {
                findings.push(Finding::RetiringSoon {
                    provider: o.provider.clone(),
                    model: o.model.clone(),
                    retires,
                    days_left: (retires - today).num_days(),
                    replacement,
                })
            }
            _ => {}
        }
    }
    for e in book.entries() {
        if matches!(e.status_on(today), ModelStatus::Retired { .. }) {
            continue;
        }
        let age_days = (today - e.as_of.0).num_days();
        if age_days > max_age_days {
            findings.push(Finding::Stale {
                provider: e.provider.clone(),
                model: e.model.clone(),
                as_of: e.as_of.0,
                age_days,
            });
        }
    }
    findings
}
