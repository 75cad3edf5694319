//! Savings by lever, for a report's window: what the cache, deferral and the
//! delivery choices (format, width) saved, each in dollars.
//!
//! - **Cache**: hits credited with their key's original generation cost
//!   ([`CacheEconomics::saved`]); recorded money.
//! - **Deferral**: for each deferred job that succeeded in the window and paid a
//!   provider, the live quote at acceptance against the fee actually paid (off-peak
//!   or batch); recorded money. A job that ended as a cache hit (its key published
//!   by then) is the cache's saving, already credited to the hit, so it is counted
//!   here but not valued again. Jobs whose live price was unknown are counted,
//!   never valued at $0.
//! - **Delivery**: for each what-if of the projection that has data, the egress the
//!   served variant saves against the alternative over the images stored in the
//!   window at `expected_views_per_image`; projected, not measured (the CDN's own
//!   bytes are not in the ledger).

use crate::backend::with_pool;
use crate::cost_report::check_window;
use crate::delivery_projection::{DeliveryProjection, WhatIfKind};
use crate::{CacheEconomics, Ledger, LedgerError, ReportQuery};
use imagegate_core::{ImageFormat, Micros};
use serde::Serialize;

/// What deferred jobs saved in the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeferralSavings {
    /// Deferred jobs that succeeded in the window.
    pub jobs: i64,
    /// Of which the live price at acceptance was unknown: not valued.
    pub jobs_unpriced: i64,
    /// Of which answered from the cache by the time they ran: valued under the cache.
    pub jobs_answered_by_cache: i64,
    /// Σ the live provider quote at acceptance, over the valued jobs.
    pub live_provider_usd: f64,
    /// Σ the provider fee paid, over the valued jobs.
    pub paid_provider_usd: f64,
    /// live − paid.
    pub saved_usd: f64,
}

/// One delivery choice and what it saved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryLever {
    pub kind: WhatIfKind,
    /// e.g. `768 px instead of 1024 px (AVIF)`.
    pub label: String,
    pub served_width: u32,
    pub served_format: ImageFormat,
    /// Files of the served variant stored in the window.
    pub images: u64,
    /// Saved per image at `expected_views_per_image` (negative: it costs more).
    pub saved_usd_per_image: f64,
    /// × images.
    pub saved_usd: f64,
}

/// `imagegate report`'s savings section.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SavingsByLever {
    pub cache_saved_usd: f64,
    pub cache_hits: i64,
    pub deferral: DeferralSavings,
    /// Projected at `expected_views_per_image`; empty without a delivery projection.
    pub delivery: Vec<DeliveryLever>,
}

impl SavingsByLever {
    pub fn new(
        cache: &CacheEconomics,
        deferral: DeferralSavings,
        projection: Option<&DeliveryProjection>,
    ) -> SavingsByLever {
        let delivery = projection
            .map(|p| {
                p.what_if
                    .iter()
                    .filter(|w| w.has_data)
                    .filter_map(|w| {
                        let per_image = -w.delta_usd_per_image?;
                        let images = p
                            .variants
                            .iter()
                            .find(|v| v.width == w.to.width && v.format == w.to.format)?
                            .files;
                        Some(DeliveryLever {
                            kind: w.kind,
                            label: w.label.clone(),
                            served_width: w.to.width,
                            served_format: w.to.format,
                            images,
                            saved_usd_per_image: per_image,
                            saved_usd: per_image * images as f64,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        SavingsByLever {
            cache_saved_usd: cache.saved.as_usd(),
            cache_hits: cache.hits,
            deferral,
            delivery,
        }
    }
}

impl Ledger {
    /// What the deferred jobs that succeeded in `query`'s window (by when they
    /// finished, and by owner when it names a key) saved against running live.
    pub async fn deferral_savings(
        &self,
        query: &ReportQuery,
    ) -> Result<DeferralSavings, LedgerError> {
        check_window(query)?;
        let ms = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.timestamp_millis());
        // Valued: a provider was paid and the live quote is known.
        let valued = "live_micros IS NOT NULL AND provider_micros > 0";
        let sql = format!(
            "SELECT COUNT(*), \
             CAST(COALESCE(SUM(CASE WHEN live_micros IS NULL THEN 1 ELSE 0 END), 0) AS BIGINT), \
             CAST(COALESCE(SUM(CASE WHEN live_micros IS NOT NULL \
                  AND COALESCE(provider_micros, 0) = 0 THEN 1 ELSE 0 END), 0) AS BIGINT), \
             CAST(COALESCE(SUM(CASE WHEN {valued} THEN live_micros ELSE 0 END), 0) AS BIGINT), \
             CAST(COALESCE(SUM(CASE WHEN {valued} THEN provider_micros ELSE 0 END), 0) AS BIGINT) \
             FROM jobs WHERE status = 'succeeded' \
             AND ($1 IS NULL OR finished_at >= $1) AND ($2 IS NULL OR finished_at < $2) \
             AND ($3 IS NULL OR api_key = $3)"
        );
        let (jobs, unpriced, by_cache, live, paid): (i64, i64, i64, i64, i64) =
            with_pool!(&self.pool, p => {
                sqlx::query_as(&sql)
                    .bind(ms(query.since))
                    .bind(ms(query.until))
                    .bind(&query.api_key)
                    .fetch_one(p)
                    .await
            })
            .map_err(|e| self.db(e))?;
        Ok(DeferralSavings {
            jobs,
            jobs_unpriced: unpriced,
            jobs_answered_by_cache: by_cache,
            live_provider_usd: Micros(live).as_usd(),
            paid_provider_usd: Micros(paid).as_usd(),
            saved_usd: Micros(live.saturating_sub(paid)).as_usd(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, on_both_backends, TestDb};
    use crate::{CacheOutcome, JobEnd, NewJob, RequestRecord, RequestStatus};
    use chrono::Utc;
    use imagegate_core::{Stage, StageCost};
    use std::time::Duration;

    on_both_backends!(deferral_savings_value_paid_jobs_and_count_the_rest);

    async fn deferral_savings_value_paid_jobs_and_count_the_rest(db: TestDb) {
        let ledger = db.open().await;
        let job = |n: u8, live: Option<i64>| NewJob {
            api_key: Some("k".into()),
            live_micros: live.map(Micros),
            ..testing::new_job(n)
        };
        for (n, live) in [
            (1, Some(40_000)),
            (2, Some(40_000)),
            (3, None),
            (4, Some(9)),
        ] {
            ledger.enqueue_job(&job(n, live)).await.unwrap();
        }
        let claimed = ledger
            .claim_jobs("w", 10, Duration::from_secs(60), Utc::now())
            .await
            .unwrap();
        assert_eq!(claimed.len(), 4);
        for j in &claimed {
            let hex = j.content_key.to_hex();
            // Job 1 paid the provider half its live quote; job 2 ended as a cache
            // hit (no fee); job 3's live price was unknown; job 4 failed.
            if hex.starts_with("01") || hex.starts_with("03") {
                let mut generate = StageCost::new(Stage::Generate);
                generate.micros = Micros(20_000);
                let request = RequestRecord {
                    request_id: j.id.clone(),
                    key: j.content_key,
                    cache: CacheOutcome::Miss,
                    status: RequestStatus::Ok,
                    provider: Some("local".into()),
                    model: Some("procedural-v1".into()),
                    api_key: Some("k".into()),
                    profile: "default".into(),
                    wall_ms: 1.0,
                };
                ledger.record(&request, &[generate]).await.unwrap();
            }
            let end = if hex.starts_with("04") {
                JobEnd::Failed {
                    code: "x".into(),
                    message: "y".into(),
                }
            } else {
                JobEnd::Succeeded
            };
            assert!(ledger.finish_job(&j.id, "w", &end).await.unwrap());
        }
        let all = ledger
            .deferral_savings(&ReportQuery::default())
            .await
            .unwrap();
        assert_eq!(
            all,
            DeferralSavings {
                jobs: 3,
                jobs_unpriced: 1,
                jobs_answered_by_cache: 1,
                live_provider_usd: 0.04,
                paid_provider_usd: 0.02,
                saved_usd: 0.02,
            }
        );
        let other_key = ReportQuery {
            api_key: Some("other".into()),
            ..ReportQuery::default()
        };
        assert_eq!(ledger.deferral_savings(&other_key).await.unwrap().jobs, 0);
        let future = ReportQuery {
            since: Some(Utc::now() + chrono::Duration::hours(1)),
            ..ReportQuery::default()
        };
        assert_eq!(ledger.deferral_savings(&future).await.unwrap().jobs, 0);
    }
}
