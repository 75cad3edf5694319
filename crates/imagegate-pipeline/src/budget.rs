//! Spending limits per API key, daily and monthly (UTC). A miss reserves its expected
//! cost before the provider is called, in the ledger database, so concurrent
//! requests on any number of replicas cannot spend past a limit together; the
//! reservation goes when the request's charge settles.

use crate::error::PipelineError;
use chrono::{DateTime, Datelike, TimeZone, Utc};
use imagegate_core::Micros;
use imagegate_ledger::{BudgetWindow, Ledger, ReservationId, Reserve, SpendLimit};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The key id requests without an API key are booked under.
pub const ANONYMOUS: &str = imagegate_ledger::ANONYMOUS_BUCKET;

/// A key's limits, written in dollars (`daily_usd = 2.5`) and held as micro-dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetLimit {
    #[serde(
        default,
        rename = "daily_usd",
        with = "imagegate_core::money::dollars::option"
    )]
    pub daily: Option<Micros>,
    #[serde(
        default,
        rename = "monthly_usd",
        with = "imagegate_core::money::dollars::option"
    )]
    pub monthly: Option<Micros>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetsConfig {
    /// Added to the provider estimate when reserving: the processing and storage a
    /// miss will cost on top of the provider fee (`processing_reserve_usd`).
    #[serde(
        rename = "processing_reserve_usd",
        with = "imagegate_core::money::dollars"
    )]
    pub processing_reserve: Micros,
    /// Limits for every key without its own entry (and for anonymous requests).
    pub default: Option<BudgetLimit>,
    /// Limits by API key id.
    pub keys: BTreeMap<String, BudgetLimit>,
}

pub struct Budgets {
    config: BudgetsConfig,
    ledger: Ledger,
}

/// How long a reservation holds budget without being settled: longer than any miss
/// runs (provider deadline, render, upload), short enough that one left behind by a
/// replica that died frees the key's budget the same hour.
const RESERVATION_TTL: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// A live reservation in the ledger. The charge it is for settles it (and removes
/// it in the same transaction); dropped unsettled (the request failed before any
/// provider was paid), it is released in the background.
pub struct Reservation {
    id: Option<ReservationId>,
    ledger: Ledger,
}

impl Reservation {
    /// The reservation's row, for the charge that settles it.
    pub(crate) fn id(&self) -> Option<ReservationId> {
        self.id
    }

    /// The charge that settled it removed its row.
    pub(crate) fn settled(mut self) {
        self.id = None;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let ledger = self.ledger.clone();
        // Left alone it would still expire after its TTL; releasing now gives the
        // budget back at once.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = ledger.release_reservation(id).await {
                    tracing::warn!(error = %e, "releasing a budget reservation failed; it expires by itself");
                }
            });
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
        Budgets { config, ledger }
    }

    fn limit_for(&self, key: &str) -> Option<BudgetLimit> {
        self.config.keys.get(key).copied().or(self.config.default)
    }

    /// Does any limit apply to `api_key`? When none does, a miss needs no estimate.
    pub fn is_limited(&self, api_key: Option<&str>) -> bool {
        self.limit_for(api_key.unwrap_or(ANONYMOUS)).is_some()
    }

    /// Reserves `expected` (plus the processing reserve) for `api_key` in the ledger
    /// database, which every replica shares, or answers `BudgetExhausted` when a
    /// daily or monthly limit would be passed by what is spent, what others hold
    /// reserved and this.
    pub async fn reserve(
        &self,
        api_key: Option<&str>,
        expected: Micros,
    ) -> Result<Option<Reservation>, PipelineError> {
        let Some(limit) = self.limit_for(api_key.unwrap_or(ANONYMOUS)) else {
            return Ok(None);
        };
        let amount = expected + self.config.processing_reserve;
        let now = Utc::now();
        let limits: Vec<SpendLimit> = [
            (BudgetWindow::Daily, start_of_day(now), limit.daily),
            (BudgetWindow::Monthly, start_of_month(now), limit.monthly),
        ]
        .into_iter()
        .filter_map(|(window, since, limit)| {
            limit.map(|limit| SpendLimit {
                window,
                since,
                limit,
            })
        })
        .collect();
        match self
            .ledger
            .reserve(api_key, amount, &limits, RESERVATION_TTL)
            .await?
        {
            Reserve::Granted(id) => Ok(Some(Reservation {
                id: Some(id),
                ledger: self.ledger.clone(),
            })),
            Reserve::Refused {
                window,
                limit,
                committed,
                needed,
            } => Err(PipelineError::BudgetExhausted {
                window: window.as_str(),
                limit_usd: limit.as_usd(),
                committed_usd: committed.as_usd(),
                needed_usd: needed.as_usd(),
            }),
        }
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
            processing_reserve: Micros(0),
            default: Some(BudgetLimit {
                daily: Some(Micros(5000)),
                monthly: None,
            }),
            keys: BTreeMap::from([("rich".to_string(), BudgetLimit::default())]),
        };
        let budgets = Budgets::new(config, ledger.clone());
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
        // Released in the background: wait until the ledger says so.
        let since = start_of_day(Utc::now());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while ledger.committed(None, since).await.unwrap() > Micros(2000) {
            assert!(std::time::Instant::now() < deadline, "never released");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(budgets.reserve(None, Micros(2000)).await.unwrap().is_some());
        drop(b);
    }
}
