//! Deferred generation: a caller says "by then is fine" (`deliver_by`) and the job
//! waits in the ledger's queue for the cheapest moment before its deadline by the
//! price book's surge windows (`plan`), then a worker (`worker`) runs it through the
//! same [`Pipeline::generate`] a live request takes: cached, classified, watermarked,
//! encoded, stored and costed alike, its ledger rows under the job's id.
//!
//! A job whose deadline leaves a day to spare, for a model whose provider has a batch
//! API the price book prices (OpenAI Batch, Gemini batch mode: half the live price),
//! goes there instead (`upstream`): grouped with others of its model, submitted,
//! polled, charged at the batch price the moment its result is read, then rendered
//! and published as a live miss would be. A line that came to nothing runs live
//! before its deadline.
//!
//! Cache and single flight still hold. A deferred request whose key is published is
//! answered at once as a hit. A caller's identical pending requests are one job;
//! other callers' identical jobs are jobs of their own that share one generation
//! (whichever runs second is a cache hit). A live request for a key that a pending
//! job will make does not wait for the job: it takes the generation over (it is made
//! now at the live price), and the job, when its moment comes, finds the key
//! published and completes as a hit, paying no provider.

pub mod config;
mod plan;
mod upstream;
mod worker;

pub use config::DeferredConfig;

use crate::error::{PipelineError, RequestFault};
use crate::request::{CacheMode, ImageRequest, RequestContext};
use crate::{Outcome, Pipeline};
use chrono::{DateTime, Utc};
use imagegate_core::{content_key, ContentKey, Micros};
use imagegate_ledger::{Job, NewJob};
use imagegate_providers::router::PriceSource;
use imagegate_providers::SkipReason;

/// What a deferred request got.
#[derive(Debug)]
pub enum Deferred {
    /// The key was already published: answered at once, as a live hit would be.
    Published(Outcome),
    /// Queued (or the caller's identical pending job, `created` false).
    Queued { job: Box<Job>, created: bool },
}

/// Where a deferred job belongs, when it is one line of a batch.
#[derive(Debug, Clone)]
pub struct BatchLine {
    pub batch: String,
    pub custom_id: String,
}

/// Reads `deliver_by`: an RFC 3339 instant, or a duration from `now` such as `24h`,
/// `90m` or `1h 30m`.
pub fn parse_deliver_by(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, RequestFault> {
    let text = text.trim();
    if let Ok(instant) = DateTime::parse_from_rfc3339(text) {
        return Ok(instant.with_timezone(&Utc));
    }
    let span = humantime::parse_duration(text).map_err(|_| {
        RequestFault::DeliverBy(format!(
            "{text:?} is neither an RFC 3339 time (2026-12-08T09:00:00Z) nor a duration (24h)"
        ))
    })?;
    chrono::Duration::from_std(span)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .ok_or_else(|| RequestFault::DeliverBy(format!("{text:?} is too far away")))
}

impl Pipeline {
    /// Accepts `req` for delivery by its `deliver_by`:
    /// answers a published key at once, else queues a job planned for the cheapest
    /// moment. Every check a live request gets (the request, the prompt screen, a
    /// provider able to serve it under `max_cost_usd`) is made now, so a job that is
    /// accepted can run.
    pub async fn defer(
        &self,
        req: &ImageRequest,
        ctx: &RequestContext,
        line: Option<&BatchLine>,
    ) -> Result<Deferred, PipelineError> {
        let now = Utc::now();
        let config = &self.config().deferred;
        let deliver_by = match &req.deliver_by {
            Some(text) => parse_deliver_by(text, now)?,
            None => return Err(RequestFault::DeliverBy("is required to defer".into()).into()),
        };
        if deliver_by <= now {
            return Err(RequestFault::DeliverBy("the deadline has already passed".into()).into());
        }
        let window = chrono::Duration::hours(config.max_window_hours as i64);
        if deliver_by > now + window {
            return Err(RequestFault::DeliverBy(format!(
                "the deadline is more than {} hours away",
                config.max_window_hours
            ))
            .into());
        }
        if req.cache != CacheMode::Use {
            return Err(RequestFault::DeliverBy(
                "only `\"cache\": \"use\"` requests can be deferred".into(),
            )
            .into());
        }
        let (gen, profile, policy) = self.resolve(req)?;
        if let Some(hit) = self.inner.screen.check(&gen.prompt) {
            metrics::counter!("imagegate_prompts_blocked_total").increment(1);
            return Err(PipelineError::PromptBlocked {
                rule: hit.rule().to_string(),
            });
        }
        let key = content_key(&gen, &profile);
        let published = self.manifest(key).await?.is_some();
        // A batch line is always a job (its output file answers for every line); a
        // published one is due at once and completes as a hit.
        if published && line.is_none() {
            return Ok(Deferred::Published(self.generate(req, ctx).await?));
        }
        let max_cost = req.max_cost_usd.map(Micros::from_usd);
        let router = self.router();
        let quote_at = |at: DateTime<Utc>| -> Result<Option<Micros>, PipelineError> {
            let estimate = router.estimate(&gen.model, gen.size, policy, max_cost, at)?;
            Ok(estimate.chosen.and_then(|c| match c.price_source {
                PriceSource::PriceBook => Some(c.expected),
                PriceSource::Unpriced => None,
            }))
        };
        let live = router.estimate(&gen.model, gen.size, policy, max_cost, now)?;
        if live.chosen.is_none() {
            let over = live
                .candidates
                .iter()
                .filter_map(|c| match c.skipped_reason {
                    Some(SkipReason::OverMaxCost { expected, .. }) => Some(expected),
                    _ => None,
                })
                .min();
            return Err(match (over, max_cost) {
                (Some(cheapest), Some(max)) => PipelineError::CostLimit {
                    quote_usd: cheapest.as_usd(),
                    max_usd: max.as_usd(),
                },
                _ => PipelineError::NoProvider(gen.model.to_string()),
            });
        }
        let live_micros = quote_at(now)?;
        let latest = plan::latest_start(
            now,
            deliver_by,
            chrono::Duration::seconds(config.margin_secs as i64),
        );
        let book = self.prices().current();
        let edges = plan::window_edges(book.surges(), now, latest);
        let mut chosen = if published {
            plan::Plan {
                at: now,
                quote: Some(Micros::ZERO),
            }
        } else {
            plan::cheapest(now, &edges, |at| quote_at(at).ok().flatten())
        };
        // The provider's batch API when the deadline leaves it time and it is cheaper
        // than the best live moment (an unknown live price ranks last). A key under a
        // spending limit stays live, where each call is reserved against it first.
        let limited = self.inner.budgets.is_limited(ctx.api_key.as_deref());
        let upstream = live
            .chosen
            .as_ref()
            .filter(|_| !published && !limited && config.upstream)
            .and_then(|c| upstream::plan(self, c, gen.size, now, deliver_by))
            .filter(|u| chosen.quote.is_none_or(|q| u.quote < q));
        if let Some(u) = &upstream {
            chosen = plan::Plan {
                at: now,
                quote: Some(u.quote),
            };
        }
        let job = NewJob {
            api_key: ctx.api_key.clone(),
            content_key: key,
            request: serde_json::to_string(req)
                .map_err(|e| PipelineError::Internal(format!("storing the request: {e}")))?,
            deliver_by,
            run_after: chosen.at,
            live_micros,
            planned_micros: chosen.quote,
            batch: line.map(|l| l.batch.clone()),
            custom_id: line.map(|l| l.custom_id.clone()),
            webhook_url: req.webhook_url.clone(),
        };
        let (job, created) = match &upstream {
            Some(u) => {
                self.ledger()
                    .enqueue_upstream_job(&job, &u.provider, &u.model)
                    .await?
            }
            None => self.ledger().enqueue_job(&job).await?,
        };
        if created {
            let route = if upstream.is_some() {
                "upstream_batch"
            } else {
                "live"
            };
            metrics::counter!("imagegate_deferred_jobs_accepted_total", "route" => route)
                .increment(1);
            tracing::info!(job = %job.id, key = %key, run_after = %job.run_after, deliver_by = %job.deliver_by, route, "deferred job queued");
        }
        Ok(Deferred::Queued {
            job: Box::new(job),
            created,
        })
    }

    /// The content key `req` would publish (for a caller matching jobs to images).
    pub fn key_of(&self, req: &ImageRequest) -> Result<ContentKey, PipelineError> {
        let (gen, profile, _) = self.resolve(req)?;
        Ok(content_key(&gen, &profile))
    }

    /// Starts this replica's deferred-job workers, live and upstream (none when
    /// `[deferred] workers` is 0).
    pub fn run_deferred_jobs(&self) -> Option<tokio::task::JoinHandle<()>> {
        (self.config().deferred.workers > 0).then(|| {
            let (live, upstream) = (self.clone(), self.clone());
            tokio::spawn(async move {
                tokio::join!(worker::run(live), upstream::run(upstream));
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliver_by_is_an_instant_or_a_duration() {
        let now: DateTime<Utc> = "2026-12-07T12:00:00Z".parse().unwrap();
        assert_eq!(
            parse_deliver_by("24h", now).unwrap(),
            "2026-12-08T12:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            parse_deliver_by("1h 30m", now).unwrap(),
            "2026-12-07T13:30:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            parse_deliver_by("2026-12-08T09:00:00+01:00", now).unwrap(),
            "2026-12-08T08:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        let err = parse_deliver_by("tomorrow", now).unwrap_err();
        assert_eq!(err.field(), "deliver_by");
        assert!(err.to_string().contains("RFC 3339"), "{err}");
    }
}
