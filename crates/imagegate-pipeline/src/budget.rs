//! Spending limits per API key, daily and monthly (UTC). A miss reserves its expected
//! cost before the provider is called and releases the reservation once its actual
//! cost is in the ledger, so concurrent requests cannot spend past a limit together.

use crate::error::PipelineError;
use chrono::{DateTime, Datelike, TimeZone, Utc};
use imagegate_core::Micros;
use imagegate_ledger::Ledger;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// The key id requests without an API key are booked under.
pub const ANONYMOUS: &str = "anonymous";

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetLimit {
    #[serde(default)]
    pub daily_usd: Option<f64>,
    #[serde(default)]
    pub monthly_usd: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetsConfig {
    /// Added to the provider estimate when reserving: the processing and storage a
    /// miss will cost on top of the provider fee.
    pub processing_reserve_usd: f64,
    /// Limits for every key without its own entry (and for anonymous requests).
    pub default: Option<BudgetLimit>,
    /// Limits by API key id.
    pub keys: BTreeMap<String, BudgetLimit>,
}

impl BudgetsConfig {
    pub fn validate(&self) -> Result<(), String> {
        let ok = |v: Option<f64>| v.is_none_or(|v| v.is_finite() && v >= 0.0);
        if !(self.processing_reserve_usd.is_finite() && self.processing_reserve_usd >= 0.0) {
            return Err("budgets.processing_reserve_usd must be a non-negative number".into());
        }
        for (name, l) in self
            .default
            .iter()
            .map(|l| ("default", l))
            .chain(self.keys.iter().map(|(k, l)| (k.as_str(), l)))
        {
            if !ok(l.daily_usd) || !ok(l.monthly_usd) {
                return Err(format!("budgets for {name:?} must be non-negative numbers"));
            }
        }
        Ok(())
    }
}

pub struct Budgets {
    config: BudgetsConfig,
    ledger: Ledger,
    /// Serialises check-then-reserve so two callers cannot both fit in the last dollar.
    admission: tokio::sync::Mutex<()>,
    reserved: Arc<Mutex<HashMap<String, Micros>>>,
}

/// A live reservation; dropping it releases the amount (after the ledger has the
/// actual cost, since the caller holds it until then).
pub struct Reservation {
    key: String,
    amount: Micros,
    reserved: Arc<Mutex<HashMap<String, Micros>>>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut map = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = map.get_mut(&self.key) {
            r.0 -= self.amount.0;
            if r.0 <= 0 {
                map.remove(&self.key);
            }
        }
    }
}

fn start_of_day(now: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(now.year(), now.month(), now.day(), 0, 0, 0)
        .single()
        .unwrap_or(now)
}

fn start_of_month(now: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(now)
}

impl Budgets {
    pub fn new(config: BudgetsConfig, ledger: Ledger) -> Budgets {
        Budgets {
            config,
            ledger,
            admission: tokio::sync::Mutex::new(()),
            reserved: Arc::default(),
        }
    }

    fn limit_for(&self, key: &str) -> Option<BudgetLimit> {
        self.config.keys.get(key).copied().or(self.config.default)
    }

    /// Does any limit apply to `api_key`? When none does, a miss needs no estimate.
    pub fn is_limited(&self, api_key: Option<&str>) -> bool {
        self.limit_for(api_key.unwrap_or(ANONYMOUS)).is_some()
    }

    /// Reserves `expected` (plus the processing reserve) for `api_key`, or answers
    /// `BudgetExhausted` when a daily or monthly limit would be passed.
    pub async fn reserve(
        &self,
        api_key: Option<&str>,
        expected: Micros,
    ) -> Result<Option<Reservation>, PipelineError> {
        let key = api_key.unwrap_or(ANONYMOUS);
        let Some(limit) = self.limit_for(key) else {
            return Ok(None);
        };
        let amount = expected + Micros::from_usd(self.config.processing_reserve_usd);
        let _serialised = self.admission.lock().await;
        let now = Utc::now();
        let reserved = self
            .reserved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
            .unwrap_or_default();
        for (window, since, limit_usd) in [
            ("daily", start_of_day(now), limit.daily_usd),
            ("monthly", start_of_month(now), limit.monthly_usd),
        ] {
            let Some(limit_usd) = limit_usd else { continue };
            let spent = self.ledger.spent_since(api_key, since).await?;
            if spent + reserved + amount > Micros::from_usd(limit_usd) {
                return Err(PipelineError::BudgetExhausted {
                    window,
                    limit_usd,
                    committed_usd: (spent + reserved).as_usd(),
                    needed_usd: amount.as_usd(),
                });
            }
        }
        *self
            .reserved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_string())
            .or_default() += amount;
        Ok(Some(Reservation {
            key: key.to_string(),
            amount,
            reserved: self.reserved.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_start_at_utc_midnight_and_the_first() {
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 17, 5, 9).unwrap();
        assert_eq!(
            start_of_day(now),
            Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 0).unwrap()
        );
        assert_eq!(
            start_of_month(now),
            Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap()
        );
    }

    #[tokio::test]
    async fn reservations_hold_the_line_and_release_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&imagegate_ledger::LedgerConfig {
            url: format!("sqlite://{}/l.db", dir.path().display()),
        })
        .await
        .unwrap();
        let config = BudgetsConfig {
            processing_reserve_usd: 0.0,
            default: Some(BudgetLimit {
                daily_usd: Some(0.005),
                monthly_usd: None,
            }),
            keys: BTreeMap::from([("rich".to_string(), BudgetLimit::default())]),
        };
        let budgets = Budgets::new(config, ledger);
        let a = budgets.reserve(None, Micros(2000)).await.unwrap();
        let b = budgets.reserve(None, Micros(2000)).await.unwrap();
        let refused = budgets.reserve(None, Micros(2000)).await;
        assert!(matches!(
            refused,
            Err(PipelineError::BudgetExhausted {
                window: "daily",
                ..
            })
        ));
        assert!(budgets.is_limited(None));
        // A key with its own (unlimited) entry is not held to the default.
        assert!(budgets
            .reserve(Some("rich"), Micros(1_000_000))
            .await
            .unwrap()
            .is_some());
        drop(a);
        assert!(budgets.reserve(None, Micros(2000)).await.unwrap().is_some());
        drop(b);
    }
}
