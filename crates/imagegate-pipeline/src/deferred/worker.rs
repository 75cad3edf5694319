//! The worker that runs due jobs: claims what it has room for (at most `[deferred]
//! workers` at once, and only while a generation slot is free, so live requests keep
//! priority), renews each claim while the job runs, and finishes it with what it
//! cost. A passing fault (a provider outage, a full queue) puts the job back with a
//! backoff while its deadline allows; anything else fails it with the reason.

use crate::deferred::config::DeferredConfig;
use crate::error::PipelineError;
use crate::request::{ImageRequest, RequestContext};
use crate::Pipeline;
use chrono::Utc;
use imagegate_core::ManifestStatus;
use imagegate_ledger::{Job, JobEnd};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// A batch still validating after this long lost the server validating it: validation
/// is one pass over an uploaded file of at most 50,000 lines, made while the caller
/// waits for `POST /v1/batches` to answer.
const VALIDATION_STALLED: Duration = Duration::from_secs(600);

pub(crate) async fn run(pipeline: Pipeline) {
    let config = pipeline.config().deferred.clone();
    let slots = Arc::new(Semaphore::new(config.workers.max(1)));
    let holder = format!("{}/deferred", pipeline.replica());
    let poll = Duration::from_millis(config.poll_ms.max(10));
    loop {
        if let Err(e) = tick(&pipeline, &config, &slots, &holder).await {
            tracing::warn!(error = %e, "deferred jobs: the queue could not be read; trying again");
        }
        tokio::time::sleep(poll).await;
    }
}

async fn tick(
    pipeline: &Pipeline,
    config: &DeferredConfig,
    slots: &Arc<Semaphore>,
    holder: &str,
) -> Result<(), PipelineError> {
    let ledger = pipeline.ledger();
    for id in ledger.expire_overdue_jobs(Utc::now()).await? {
        metrics::counter!("imagegate_deferred_jobs_total", "status" => "expired").increment(1);
        tracing::warn!(job = %id, "deferred job expired before it could start");
    }
    for id in ledger.fail_interrupted_batches(VALIDATION_STALLED).await? {
        tracing::warn!(batch = %id, "a batch's validation was interrupted (its server stopped); failed it");
    }
    let (_, generation_slots) = pipeline.generation_limits();
    let room = slots
        .available_permits()
        .min(generation_slots.available_permits());
    if room == 0 {
        return Ok(());
    }
    let lease = Duration::from_secs(config.lease_secs.max(1));
    let claimed = ledger
        .claim_jobs(holder, room as u32, lease, Utc::now())
        .await?;
    for job in claimed {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Cannot happen (claimed no more than the free permits); the lease
            // returns the job to the queue if it ever does.
            break;
        };
        let pipeline = pipeline.clone();
        let holder = holder.to_string();
        let config = config.clone();
        tokio::spawn(async move {
            run_one(&pipeline, &config, &holder, job).await;
            drop(permit);
        });
    }
    Ok(())
}

async fn run_one(pipeline: &Pipeline, config: &DeferredConfig, holder: &str, job: Job) {
    let ledger = pipeline.ledger().clone();
    let lease = Duration::from_secs(config.lease_secs.max(1));
    let renewer = {
        let (ledger, id, holder) = (ledger.clone(), job.id.clone(), holder.to_string());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                match ledger.renew_job(&id, &holder, lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(job = %id, "deferred job's claim was lost (taken over)");
                        return;
                    }
                    Err(e) => tracing::warn!(job = %id, error = %e, "renewing a job's claim"),
                }
            }
        })
    };
    let end = attempt(pipeline, config, &job).await;
    renewer.abort();
    let result = match &end {
        Attempted::Done(end) => ledger.finish_job(&job.id, holder, end).await,
        Attempted::Retry {
            after,
            code,
            message,
        } => {
            let at = Utc::now() + chrono::Duration::from_std(*after).unwrap_or_default();
            ledger.requeue_job(&job.id, holder, at, code, message).await
        }
    };
    let status = match &end {
        Attempted::Done(JobEnd::Succeeded) => "succeeded",
        Attempted::Done(JobEnd::Failed { .. }) => "failed",
        Attempted::Retry { .. } => "retried",
    };
    match result {
        Ok(true) => {
            metrics::counter!("imagegate_deferred_jobs_total", "status" => status).increment(1);
            tracing::info!(job = %job.id, key = %job.content_key, status, attempts = job.attempts, "deferred job ran");
        }
        Ok(false) => {
            tracing::warn!(job = %job.id, "deferred job ran, but another worker holds it now")
        }
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "deferred job ran, but its end was not recorded; its lease will return it")
        }
    }
}

enum Attempted {
    Done(JobEnd),
    Retry {
        after: Duration,
        code: &'static str,
        message: String,
    },
}

fn failed(code: &str, message: impl Into<String>) -> Attempted {
    Attempted::Done(JobEnd::Failed {
        code: code.to_string(),
        message: message.into(),
    })
}

async fn attempt(pipeline: &Pipeline, config: &DeferredConfig, job: &Job) -> Attempted {
    if job.attempts > i64::from(config.max_attempts) {
        return failed(
            "too_many_attempts",
            format!("claimed {} times without finishing", job.attempts),
        );
    }
    let req: ImageRequest = match serde_json::from_str(&job.request) {
        Ok(r) => r,
        Err(e) => return failed("invalid_request", format!("the stored request: {e}")),
    };
    let ctx = RequestContext {
        request_id: job.id.clone(),
        api_key: job.api_key.clone(),
        // A claim that dies mid-run is retried by the queue: what it paid for waits
        // in the ledger for that retry.
        survives_restart: true,
    };
    match pipeline.generate(&req, &ctx).await {
        Ok(outcome) if outcome.manifest.status == ManifestStatus::Blocked => failed(
            "content_blocked",
            "the generated image was blocked by the safety policy",
        ),
        Ok(_) => Attempted::Done(JobEnd::Succeeded),
        Err(e) => {
            let code = e.code();
            // Backoff doubles per claim: 5 s, 10 s, 20 s, … 160 s from the sixth on.
            let doublings = job.attempts.clamp(1, 6) as u32 - 1;
            let after = Duration::from_secs(5 * 2u64.pow(doublings));
            let fits =
                Utc::now() + chrono::Duration::from_std(after).unwrap_or_default() < job.deliver_by;
            if e.is_passing() && fits && job.attempts < i64::from(config.max_attempts) {
                Attempted::Retry {
                    after,
                    code,
                    message: e.to_string(),
                }
            } else {
                failed(code, e.to_string())
            }
        }
    }
}
