//! Jobs through a provider's batch API (OpenAI Batch, Gemini batch mode), at the
//! price book's batch price.
//!
//! The planner (`plan`) sends a job here when the live candidate's provider has a
//! batch API, the book prices it, and the deadline leaves the completion window and
//! `[deferred] margin_secs`. The worker (`run`) then, on every tick:
//! - resumes what is open first: every upstream batch recorded in the ledger is
//!   polled under its lease by whichever replica holds it, so a restart polls the
//!   same batch instead of submitting again;
//! - groups due jobs by provider and model (at most `upstream_max_lines` a batch),
//!   records the batch and its lines in the ledger, then submits it and records the
//!   provider's id;
//! - when a batch ends, charges each line with a result at the batch price at once
//!   (the money is spent then, whoever waits), then renders and publishes each
//!   through the same production as a live miss (`Source::PaidUpstream`), and ends
//!   its job. A line without a result (its own error, an expired, failed or
//!   cancelled batch) runs live before its deadline, or fails saying why.

use crate::deferred::config::DeferredConfig;
use crate::error::PipelineError;
use crate::paid::Origin;
use crate::produce::{Order, Source};
use crate::request::{CacheMode, ImageRequest, RequestContext};
use crate::{Outcome, Pipeline};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use imagegate_core::{content_key, ManifestStatus, Micros, Size, Stage, StageCost};
use imagegate_ledger::{
    CacheOutcome, ChargeId, Job, JobEnd, LineOutcome, RequestRecord, RequestStatus, UpstreamBatch,
    UpstreamStatus,
};
use imagegate_providers::router::{Candidate, PriceSource};
use imagegate_providers::{
    BatchApi, BatchLine, BatchPoll, BatchState, Generation, LineResult, Provider, ProviderError,
    ProviderRequest, Rate,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A job's route through a batch API, as planned at acceptance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UpstreamPlan {
    pub provider: String,
    pub model: String,
    /// The batch price of the job's image.
    pub quote: Micros,
}

/// The batch API route for a job whose live choice is `chosen`, if there is one.
pub(crate) fn plan(
    pipeline: &Pipeline,
    chosen: &Candidate,
    size: Size,
    now: DateTime<Utc>,
    deliver_by: DateTime<Utc>,
) -> Option<UpstreamPlan> {
    if chosen.price_source != PriceSource::PriceBook {
        return None;
    }
    let provider = pipeline.router().provider(&chosen.provider)?;
    let api = provider.batch()?;
    let margin = chrono::Duration::seconds(pipeline.config().deferred.margin_secs as i64);
    let window = chrono::Duration::from_std(api.completion_window()).ok()?;
    if deliver_by - now < window + margin {
        return None;
    }
    let quote = pipeline
        .prices()
        .current()
        .quote_at_rate(provider.kind(), &chosen.model, size, None, now, Rate::Batch)
        .ok()?;
    Some(UpstreamPlan {
        provider: chosen.provider.clone(),
        model: chosen.model.clone(),
        quote: quote.micros,
    })
}

pub(crate) async fn run(pipeline: Pipeline) {
    let config = pipeline.config().deferred.clone();
    let holder = format!("{}/upstream", pipeline.replica());
    let every = Duration::from_millis(config.poll_ms.max(10));
    loop {
        if let Err(e) = tick(&pipeline, &config, &holder).await {
            tracing::warn!(error = %e, "upstream batches: the ledger could not be read; trying again");
        }
        tokio::time::sleep(every).await;
    }
}

async fn tick(
    pipeline: &Pipeline,
    config: &DeferredConfig,
    holder: &str,
) -> Result<(), PipelineError> {
    let ledger = pipeline.ledger();
    let lease = Duration::from_secs(config.lease_secs.max(1));
    let poll_every = chrono::Duration::milliseconds(config.upstream_poll_ms.max(10) as i64);
    for batch in ledger.claim_upstream_batches(holder, lease).await? {
        let Some((provider, api)) = batch_api(pipeline, &batch.provider) else {
            tracing::warn!(batch = %batch.id, provider = %batch.provider, "an open upstream batch's provider is not configured (or its batch API is off); it waits");
            continue;
        };
        match (&batch.upstream_id, batch.status) {
            (Some(upstream_id), UpstreamStatus::Submitted) => {
                if batch.polled_at.is_none_or(|t| Utc::now() - t >= poll_every) {
                    poll(pipeline, holder, &batch, upstream_id, &**provider, api).await?;
                }
            }
            _ => {
                // Recorded, never confirmed: its submitter stopped between recording it
                // and recording the provider's answer. After the longest a submission
                // can take, its lines run live.
                let longest = chrono::Duration::from_std(provider.deadline() * 3)
                    .unwrap_or(chrono::Duration::MAX);
                if Utc::now() - batch.created_at > longest {
                    tracing::error!(batch = %batch.id, provider = %batch.provider, "an upstream batch was recorded but its submission never confirmed; its lines run live (the provider may bill the batch if it has it)");
                    fall_back_all(
                        pipeline,
                        &batch,
                        "upstream_submission_unknown",
                        "the upstream batch's submission was interrupted",
                    )
                    .await?;
                    ledger
                        .end_upstream_batch(
                            &batch.id,
                            UpstreamStatus::Failed,
                            None,
                            Some("submission interrupted"),
                        )
                        .await?;
                }
            }
        }
    }
    let max_lines = config.upstream_max_lines.max(1);
    for (provider, model) in ledger.due_upstream_groups(Utc::now()).await? {
        while let Some((batch, jobs)) = ledger
            .open_upstream_batch(&provider, &model, holder, lease, max_lines, Utc::now())
            .await?
        {
            submit(pipeline, config, &batch, jobs).await?;
        }
    }
    Ok(())
}

fn batch_api<'a>(
    pipeline: &'a Pipeline,
    name: &str,
) -> Option<(&'a Arc<dyn Provider>, &'a dyn BatchApi)> {
    let provider = pipeline.router().provider(name)?;
    Some((provider, provider.batch()?))
}

/// Submits the lines of a batch just recorded and records the provider's id. A
/// refusal sends the jobs back: to wait for another batch when the fault passes and
/// the deadline still allows one, else to run live.
async fn submit(
    pipeline: &Pipeline,
    config: &DeferredConfig,
    batch: &UpstreamBatch,
    jobs: Vec<Job>,
) -> Result<(), PipelineError> {
    let ledger = pipeline.ledger();
    let Some((_, api)) = batch_api(pipeline, &batch.provider) else {
        fall_back_all(
            pipeline,
            batch,
            "upstream_unavailable",
            "the provider's batch API is not configured here",
        )
        .await?;
        ledger
            .end_upstream_batch(
                &batch.id,
                UpstreamStatus::Failed,
                None,
                Some("no batch API"),
            )
            .await?;
        return Ok(());
    };
    let mut lines = Vec::with_capacity(jobs.len());
    for job in &jobs {
        match provider_request(pipeline, job, &batch.model) {
            Ok(request) => lines.push(BatchLine {
                custom_id: job.id.clone(),
                request,
            }),
            Err(e) => {
                // The request was checked at acceptance; one that no longer resolves
                // (a profile removed since) fails with the reason.
                ledger
                    .finish_job(
                        &job.id,
                        &batch.id,
                        &JobEnd::Failed {
                            code: e.code().to_string(),
                            message: e.to_string(),
                        },
                    )
                    .await?;
                ledger
                    .upstream_line_outcome(&job.id, LineOutcome::Failed)
                    .await?;
            }
        }
    }
    if lines.is_empty() {
        ledger
            .end_upstream_batch(
                &batch.id,
                UpstreamStatus::Failed,
                None,
                Some("no valid line"),
            )
            .await?;
        return Ok(());
    }
    match api.submit(&batch.model, &batch.id, &lines).await {
        Ok(submitted) => {
            ledger
                .upstream_submitted(
                    &batch.id,
                    &submitted.upstream_id,
                    submitted.input_file_id.as_deref(),
                )
                .await?;
            metrics::counter!("imagegate_upstream_batches_total", "status" => "submitted")
                .increment(1);
            tracing::info!(batch = %batch.id, provider = %batch.provider, model = %batch.model, upstream = %submitted.upstream_id, lines = lines.len(), "upstream batch submitted");
        }
        Err(e) => {
            metrics::counter!("imagegate_upstream_batches_total", "status" => "refused")
                .increment(1);
            tracing::warn!(batch = %batch.id, provider = %batch.provider, error = %e, "upstream batch refused");
            let retry_at = Utc::now()
                + chrono::Duration::from_std(e.retry_after().unwrap_or(Duration::from_secs(60)))
                    .unwrap_or_default();
            let window = chrono::Duration::from_std(api.completion_window()).unwrap_or_default();
            let margin = chrono::Duration::seconds(config.margin_secs as i64);
            for job in jobs
                .iter()
                .filter(|j| lines.iter().any(|l| l.custom_id == j.id))
            {
                // Another batch while the deadline still leaves its window; else live.
                let again = e.is_retryable() && job.deliver_by - retry_at >= window + margin;
                let at = if again { retry_at } else { Utc::now() };
                ledger
                    .release_upstream_job(
                        &job.id,
                        &batch.id,
                        !again,
                        at,
                        "upstream_batch_refused",
                        &e.to_string(),
                    )
                    .await?;
            }
            ledger
                .end_upstream_batch(
                    &batch.id,
                    UpstreamStatus::Failed,
                    None,
                    Some(&e.to_string()),
                )
                .await?;
        }
    }
    Ok(())
}

/// The provider request of a job's stored request, as `call_provider` makes it.
fn provider_request(
    pipeline: &Pipeline,
    job: &Job,
    model: &str,
) -> Result<ProviderRequest, PipelineError> {
    let req: ImageRequest = serde_json::from_str(&job.request)
        .map_err(|e| PipelineError::Internal(format!("the stored request is unreadable: {e}")))?;
    let (gen, _, _) = pipeline.resolve(&req)?;
    Ok(ProviderRequest {
        prompt: imagegate_core::key::normalize_text(&gen.prompt),
        negative_prompt: gen
            .negative_prompt
            .as_deref()
            .map(imagegate_core::key::normalize_text)
            .filter(|n| !n.is_empty()),
        model: model.to_string(),
        size: gen.size,
        seed: gen.seed,
    })
}

async fn poll(
    pipeline: &Pipeline,
    holder: &str,
    batch: &UpstreamBatch,
    upstream_id: &str,
    provider: &dyn Provider,
    api: &dyn BatchApi,
) -> Result<(), PipelineError> {
    let ledger = pipeline.ledger();
    let polled = match api.poll(upstream_id).await {
        Ok(p) => p,
        Err(e) => {
            metrics::counter!("imagegate_provider_errors_total",
                "provider" => batch.provider.clone(), "kind" => e.outcome().as_str())
            .increment(1);
            tracing::warn!(batch = %batch.id, upstream = upstream_id, error = %e, "polling an upstream batch failed; polling again later");
            return Ok(());
        }
    };
    if !ledger
        .upstream_polled(&batch.id, holder, &polled.upstream_status)
        .await?
    {
        return Ok(()); // another replica holds it now
    }
    if !polled.state.is_final() {
        cancel_if_unwanted(pipeline, batch, upstream_id, api).await?;
        return Ok(());
    }
    finish(pipeline, batch, upstream_id, provider, api, &polled).await
}

/// Cancels a batch every one of whose jobs ended otherwise (deadline passed): its
/// unfinished lines would be paid for nothing.
async fn cancel_if_unwanted(
    pipeline: &Pipeline,
    batch: &UpstreamBatch,
    upstream_id: &str,
    api: &dyn BatchApi,
) -> Result<(), PipelineError> {
    let ledger = pipeline.ledger();
    for line in ledger.upstream_lines(&batch.id).await? {
        if let Some(job) = ledger.job(&line.job).await? {
            if !job.status.is_final() {
                return Ok(());
            }
        }
    }
    match api.cancel(upstream_id).await {
        Ok(p) => {
            tracing::warn!(batch = %batch.id, upstream = upstream_id, status = %p.upstream_status, "every job of an upstream batch ended without it; cancelled")
        }
        Err(e) => {
            tracing::warn!(batch = %batch.id, upstream = upstream_id, error = %e, "cancelling an unwanted upstream batch failed")
        }
    }
    Ok(())
}

/// An ended batch: every result charged first, then each line rendered and
/// published, the rest sent live.
async fn finish(
    pipeline: &Pipeline,
    batch: &UpstreamBatch,
    upstream_id: &str,
    provider: &dyn Provider,
    api: &dyn BatchApi,
    polled: &BatchPoll,
) -> Result<(), PipelineError> {
    let ledger = pipeline.ledger();
    let lines = ledger.upstream_lines(&batch.id).await?;
    let ids: Vec<String> = lines.iter().map(|l| l.job.clone()).collect();
    let mut results = match &polled.state {
        BatchState::Failed { .. } => BTreeMap::new(),
        _ => match api.results(upstream_id, &batch.model, &ids).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(batch = %batch.id, upstream = upstream_id, error = %e, "reading an upstream batch's results failed; trying again at the next poll");
                return Ok(());
            }
        },
    };

    // The charges, all of them, before any rendering: they are incurred now.
    let mut made = Vec::new();
    let mut unmade = Vec::new();
    for line in &lines {
        let Some(job) = ledger.job(&line.job).await? else {
            continue;
        };
        match results.remove(&line.job) {
            Some(LineResult::Generated(generation)) => {
                let (request, stage) =
                    charge_of(pipeline, batch, upstream_id, provider, &job, &generation);
                let charge = ledger
                    .charge_upstream_line(&job.id, &request, &stage)
                    .await?;
                made.push((job, charge, stage, *generation));
            }
            Some(LineResult::Failed(e)) => {
                ledger
                    .upstream_line_outcome(&job.id, LineOutcome::Failed)
                    .await?;
                unmade.push((job, Some(e)));
            }
            None => {
                ledger
                    .upstream_line_outcome(&job.id, LineOutcome::Missing)
                    .await?;
                unmade.push((job, None));
            }
        }
    }
    metrics::counter!("imagegate_upstream_lines_total", "outcome" => "generated")
        .increment(made.len() as u64);
    metrics::counter!("imagegate_upstream_lines_total", "outcome" => "unmade")
        .increment(unmade.len() as u64);

    let state_code = match &polled.state {
        BatchState::Expired => "upstream_batch_expired",
        BatchState::Cancelled => "upstream_batch_cancelled",
        BatchState::Failed { .. } => "upstream_batch_failed",
        BatchState::Completed | BatchState::Working => "upstream_line_failed",
    };
    for (job, error) in unmade {
        let message = match (&error, &polled.state) {
            (Some(e), _) => e.to_string(),
            (None, BatchState::Failed { message }) => {
                format!("the upstream batch failed: {message}")
            }
            (None, _) => format!(
                "the upstream batch ended {} without a result for it",
                polled.upstream_status
            ),
        };
        // A refused prompt would be refused live too.
        if let Some(ProviderError::ContentRejected { .. }) = &error {
            end_job(pipeline, &job, batch, failed("content_blocked", message)).await?;
        } else {
            fall_back(pipeline, &job, batch, state_code, &message).await?;
        }
    }
    for (job, charge, stage, generation) in made {
        deliver(pipeline, batch, job, charge, stage, generation).await?;
    }
    let status = match &polled.state {
        BatchState::Completed | BatchState::Working => UpstreamStatus::Completed,
        BatchState::Expired => UpstreamStatus::Expired,
        BatchState::Cancelled => UpstreamStatus::Cancelled,
        BatchState::Failed { .. } => UpstreamStatus::Failed,
    };
    let error = match &polled.state {
        BatchState::Failed { message } => Some(message.as_str()),
        _ => None,
    };
    ledger
        .end_upstream_batch(&batch.id, status, Some(&polled.upstream_status), error)
        .await?;
    metrics::counter!("imagegate_upstream_batches_total", "status" => status.as_str()).increment(1);
    tracing::info!(batch = %batch.id, upstream = upstream_id, status = %status, "upstream batch ended");
    Ok(())
}

/// The request row and paid stage of one line: the usage the provider reported,
/// priced at the book's batch rate, beside the live price of the same usage.
fn charge_of(
    pipeline: &Pipeline,
    batch: &UpstreamBatch,
    upstream_id: &str,
    provider: &dyn Provider,
    job: &Job,
    generation: &Generation,
) -> (RequestRecord, StageCost) {
    let book = pipeline.prices().current();
    let kind = provider.kind();
    let at = Utc::now();
    let batch_price = book.charge_at_rate(kind, &batch.model, &generation.usage, at, Rate::Batch);
    let live_price = book.charge_at_rate(kind, &batch.model, &generation.usage, at, Rate::Live);
    let mut stage = StageCost::new(Stage::Generate);
    stage.bytes_out = generation.bytes.len() as u64;
    let basis = match &batch_price {
        Ok(q) => {
            stage.micros = q.micros;
            serde_json::json!({"from": "usage", "quote": q.basis})
        }
        // The usage could not be priced: the batch quote at acceptance stands, and
        // without one the charge is unknown, never $0.
        Err(e) => match job.planned_micros {
            Some(planned) => {
                stage.micros = planned;
                serde_json::json!({"from": "estimate", "reason": e.to_string()})
            }
            None => {
                stage.unpriced = true;
                serde_json::json!({"from": "unpriced", "reason": e.to_string()})
            }
        },
    };
    if stage.unpriced {
        metrics::counter!("imagegate_unpriced_calls_total", "provider" => batch.provider.clone())
            .increment(1);
    }
    stage.detail = serde_json::json!({
        "provider": batch.provider,
        "model": batch.model,
        "usage": generation.usage,
        "rate": Rate::Batch,
        "book_version": book.version(),
        "charge": basis,
        "live_equivalent_micros": live_price.ok().map(|q| q.micros),
        "upstream_batch": batch.id,
        "upstream_id": upstream_id,
    });
    let profile = serde_json::from_str::<ImageRequest>(&job.request)
        .ok()
        .and_then(|req| pipeline.resolve(&req).ok())
        .map(|(_, profile, _)| profile.name)
        .unwrap_or_else(|| pipeline.config().defaults.profile.clone());
    let request = RequestRecord {
        request_id: job.id.clone(),
        key: job.content_key,
        cache: CacheOutcome::Miss,
        status: RequestStatus::InProgress,
        provider: Some(batch.provider.clone()),
        model: Some(batch.model.clone()),
        api_key: job.api_key.clone(),
        profile,
        wall_ms: 0.0,
    };
    (request, stage)
}

/// Renders and publishes one paid line and ends its job.
async fn deliver(
    pipeline: &Pipeline,
    batch: &UpstreamBatch,
    job: Job,
    charge: ChargeId,
    stage: StageCost,
    generation: Generation,
) -> Result<(), PipelineError> {
    let ledger = pipeline.ledger();
    let req: ImageRequest = match serde_json::from_str(&job.request) {
        Ok(r) => r,
        Err(e) => {
            settle_unmade(pipeline, charge, RequestStatus::Failed).await;
            return end_job(
                pipeline,
                &job,
                batch,
                failed("invalid_request", format!("the stored request: {e}")),
            )
            .await;
        }
    };
    let ctx = RequestContext {
        request_id: job.id.clone(),
        api_key: job.api_key.clone(),
        // The picture stays readable from the provider's output file, and its
        // charge is recorded once per line: nothing to keep in the ledger.
        survives_restart: false,
    };
    let origin = Origin {
        provider: generation.provider.clone(),
        model: generation.model.clone(),
    };
    let delivered = pipeline
        .publish_paid_upstream(&req, &ctx, origin, generation.bytes, charge, stage)
        .await;
    let end = match delivered {
        Ok(outcome) => {
            if outcome.cache != CacheOutcome::Miss {
                // Published meanwhile by someone else: this picture was paid for and
                // is not the one served.
                settle_unmade(pipeline, charge, RequestStatus::Ok).await;
            }
            match outcome.manifest.status {
                ManifestStatus::Blocked => failed(
                    "content_blocked",
                    "the generated image was blocked by the safety policy",
                ),
                ManifestStatus::Ok => JobEnd::Succeeded,
            }
        }
        Err(e) => {
            settle_unmade(pipeline, charge, RequestStatus::Failed).await;
            if e.is_passing() && job.deliver_by > Utc::now() {
                // Paid work kept in this process (`paid`) is finished by the live run
                // without paying again.
                return fall_back(pipeline, &job, batch, e.code(), &e.to_string()).await;
            }
            failed(e.code(), e.to_string())
        }
    };
    let ended = ledger.finish_job(&job.id, &batch.id, &end).await?;
    if !ended {
        tracing::warn!(job = %job.id, batch = %batch.id, "an upstream line was delivered after its job ended (its deadline passed)");
    }
    Ok(())
}

/// Settles a line's charge that no production settled (it never ran, or the key was
/// published already). A charge a production settled is left alone.
async fn settle_unmade(pipeline: &Pipeline, charge: ChargeId, status: RequestStatus) {
    let ledger = pipeline.ledger();
    match ledger.charge(charge).await {
        Ok(row) if row.status == RequestStatus::InProgress => {
            if let Err(e) = ledger.settle_charge(charge, status, &[], 0.0, None).await {
                tracing::warn!(charge = charge.0, error = %e, "settling an upstream line's charge failed; start-up marks it abandoned");
            }
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(charge = charge.0, error = %e, "reading an upstream line's charge failed")
        }
    }
}

fn failed(code: &str, message: impl Into<String>) -> JobEnd {
    JobEnd::Failed {
        code: code.to_string(),
        message: message.into(),
    }
}

async fn end_job(
    pipeline: &Pipeline,
    job: &Job,
    batch: &UpstreamBatch,
    end: JobEnd,
) -> Result<(), PipelineError> {
    pipeline
        .ledger()
        .finish_job(&job.id, &batch.id, &end)
        .await?;
    Ok(())
}

/// A line without an image: live before its deadline, else failed with `code`.
async fn fall_back(
    pipeline: &Pipeline,
    job: &Job,
    batch: &UpstreamBatch,
    code: &str,
    message: &str,
) -> Result<(), PipelineError> {
    let now = Utc::now();
    if job.deliver_by > now {
        let released = pipeline
            .ledger()
            .release_upstream_job(&job.id, &batch.id, true, now, code, message)
            .await?;
        if released {
            metrics::counter!("imagegate_upstream_fallbacks_total").increment(1);
            tracing::warn!(job = %job.id, batch = %batch.id, code, "an upstream line came to nothing; the job runs live");
        }
        Ok(())
    } else {
        end_job(pipeline, job, batch, failed(code, message)).await
    }
}

async fn fall_back_all(
    pipeline: &Pipeline,
    batch: &UpstreamBatch,
    code: &str,
    message: &str,
) -> Result<(), PipelineError> {
    let ledger = pipeline.ledger();
    for line in ledger.upstream_lines(&batch.id).await? {
        if let Some(job) = ledger.job(&line.job).await? {
            fall_back(pipeline, &job, batch, code, message).await?;
        }
    }
    Ok(())
}

impl Pipeline {
    /// Renders and publishes a batch line's picture, paid already (`charge`), as a
    /// live miss is: under the key's single flight, classified, watermarked, encoded,
    /// stored and published, the bill settling the line's charge.
    async fn publish_paid_upstream(
        &self,
        req: &ImageRequest,
        ctx: &RequestContext,
        origin: Origin,
        bytes: Bytes,
        charge: ChargeId,
        stage: StageCost,
    ) -> Result<Outcome, PipelineError> {
        let started = Instant::now();
        let (gen, profile, _) = self.resolve(req)?;
        let key = content_key(&gen, &profile);
        let order = Order {
            key,
            source: Source::PaidUpstream {
                origin,
                bytes,
                charge,
                stage,
            },
            profile: profile.clone(),
            mode: CacheMode::Use,
            ctx: ctx.clone(),
            started,
            reservation: None,
        };
        let flight = self.start_production(order);
        self.wait_for(flight, &profile.name, ctx, started).await
    }
}
