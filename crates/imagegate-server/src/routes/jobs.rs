//! Deferred jobs: `POST /v1/images` with `deliver_by` (answered here with 202 and a
//! job, or 200 at once for a published key), `GET /v1/jobs/{id}` and `GET /v1/jobs`.
//! A key sees its own jobs; an admin key sees every key's.

use crate::auth::AuthedKey;
use crate::error::{ErrorDetail, QueryParams};
use crate::views::ManifestView;
use crate::{ApiError, AppState};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use imagegate_core::Micros;
use imagegate_ledger::{Job, JobFilter, JobStatus, WebhookRecord, WebhookStatus};
use imagegate_pipeline::deferred::Deferred;
use imagegate_pipeline::{ImageRequest, Pipeline, RequestContext};
use std::sync::Arc;
use utoipa::ToSchema;

/// A deferred job: where it is, when it is planned and due, what it cost against
/// what it would have cost live, and (once succeeded) its image.
#[derive(serde::Serialize, ToSchema)]
#[schema(as = JobView)]
pub(crate) struct JobView<'a> {
    /// `job_` and 24 hex digits.
    pub(crate) id: String,
    /// Always `job`.
    #[schema(value_type = String)]
    pub(crate) object: &'static str,
    pub(crate) status: JobStatus,
    /// Where to poll it.
    pub(crate) status_url: String,
    /// The content key it publishes: `GET /v1/images/{image_id}` once it succeeded.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub(crate) image_id: String,
    /// RFC 3339.
    pub(crate) deliver_by: String,
    /// The moment it is planned to start (the cheapest before the deadline).
    pub(crate) run_after: String,
    pub(crate) created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) finished_at: Option<String>,
    /// Times a worker claimed it (more than one after a retry or a take-over).
    pub(crate) attempts: i64,
    pub(crate) cost: JobCostView,
    /// The image's files, once succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub(crate) image: Option<ManifestView<'a>>,
    /// Why it failed or expired (or, while queued, the passing fault it waits out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<ErrorDetail>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) batch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) custom_id: Option<String>,
    /// Where the job's end is announced, and how that went (`GET /v1/jobs/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) webhook: Option<WebhookView>,
}

/// A job's webhook: its URL and, once the job ended, its delivery.
#[derive(serde::Serialize, ToSchema)]
pub(crate) struct WebhookView {
    pub(crate) url: String,
    /// The `webhook-id` header; absent until the job ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<String>,
    /// Absent until the job ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<WebhookStatus>,
    /// Attempts made so far.
    pub(crate) attempts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next_attempt_at: Option<String>,
    /// The receiver's HTTP status at the last attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_status_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_error: Option<String>,
}

impl WebhookView {
    fn new(url: &str, record: Option<WebhookRecord>) -> WebhookView {
        match record {
            None => WebhookView {
                url: url.to_string(),
                id: None,
                status: None,
                attempts: 0,
                next_attempt_at: None,
                last_status_code: None,
                last_error: None,
            },
            Some(r) => WebhookView {
                url: r.url,
                id: Some(r.id),
                status: Some(r.status),
                attempts: r.attempts,
                next_attempt_at: r.next_attempt_at.map(time),
                last_status_code: r.last_status_code,
                last_error: r.last_error,
            },
        }
    }
}

/// A job's money in USD. Null where a price is unknown (never shown as $0) or the
/// job has not ended.
#[derive(serde::Serialize, ToSchema)]
pub(crate) struct JobCostView {
    /// The provider fee quoted for running it live, at acceptance.
    pub(crate) live_provider_usd: Option<f64>,
    /// The provider fee quoted for its planned moment.
    pub(crate) planned_provider_usd: Option<f64>,
    /// What running it cost: every stage, as the ledger has it.
    pub(crate) charged_usd: Option<f64>,
    /// Of which the provider's fee.
    pub(crate) provider_usd: Option<f64>,
    /// What the same image would have cost live: the charge with the live
    /// provider quote in place of the fee paid.
    pub(crate) live_equivalent_usd: Option<f64>,
    /// `live_equivalent_usd - charged_usd`.
    pub(crate) saved_usd: Option<f64>,
}

fn usd(m: Option<Micros>) -> Option<f64> {
    m.map(Micros::as_usd)
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub(crate) fn status_url(id: &str) -> String {
    format!("/v1/jobs/{id}")
}

impl<'a> JobView<'a> {
    pub(crate) fn new(
        pipeline: &'a Pipeline,
        job: &Job,
        manifest: Option<&'a imagegate_core::Manifest>,
    ) -> JobView<'a> {
        let live_equivalent = job.live_equivalent();
        JobView {
            id: job.id.clone(),
            object: "job",
            status: job.status,
            status_url: status_url(&job.id),
            image_id: job.content_key.to_hex(),
            deliver_by: time(job.deliver_by),
            run_after: time(job.run_after),
            created_at: time(job.created_at),
            started_at: job.started_at.map(time),
            finished_at: job.finished_at.map(time),
            attempts: job.attempts,
            cost: JobCostView {
                live_provider_usd: usd(job.live_micros),
                planned_provider_usd: usd(job.planned_micros),
                charged_usd: usd(job.charged_micros),
                provider_usd: usd(job.provider_micros),
                live_equivalent_usd: usd(live_equivalent),
                saved_usd: usd(live_equivalent
                    .zip(job.charged_micros)
                    .map(|(live, charged)| live.saturating_sub(charged))),
            },
            image: manifest.map(|m| ManifestView::new(pipeline, m)),
            error: job.error_code.as_ref().map(|code| ErrorDetail {
                code: code.clone(),
                message: job.error.clone().unwrap_or_default(),
            }),
            batch: job.batch.clone(),
            custom_id: job.custom_id.clone(),
            webhook: None,
        }
    }
}

/// `POST /v1/images` with `deliver_by`: 202 with the job (and `Location`), or the
/// image at once (200) when its key is already published.
pub(crate) async fn accept(
    state: &AppState,
    ctx: &RequestContext,
    req: &ImageRequest,
) -> Result<Response, ApiError> {
    let mut req = req.clone();
    match (&state.webhooks, &req.webhook_url) {
        (None, Some(_)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "webhooks_disabled",
                format!(
                    "webhooks are off on this service (no signing secret in ${})",
                    state.server.webhooks.secret_env
                ),
            )
            .with_param("webhook_url"))
        }
        (Some(hooks), Some(url)) => {
            hooks.check(url).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_webhook_url",
                    format!("webhook_url {e}"),
                )
                .with_param("webhook_url")
            })?;
        }
        (Some(_), None) => {
            if let Some(key) = &ctx.api_key {
                req.webhook_url = state
                    .pipeline
                    .ledger()
                    .key_webhook(key)
                    .await
                    .map_err(imagegate_pipeline::PipelineError::from)?;
            }
        }
        (None, None) => {}
    }
    match state.pipeline.defer(&req, ctx, None).await? {
        Deferred::Published(outcome) => Ok(crate::routes::images::answer(state, &outcome)),
        Deferred::Queued { job, .. } => {
            let body = JobView::new(&state.pipeline, &job, None);
            let location = HeaderValue::from_str(&body.status_url).map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?;
            Ok((
                StatusCode::ACCEPTED,
                [(header::LOCATION, location)],
                Json(body),
            )
                .into_response())
        }
    }
}

/// The job as its owner (or an admin) may see it; 404 for anyone else, so ids of
/// other keys' jobs are not confirmed.
async fn visible_job(state: &AppState, caller: &AuthedKey, id: &str) -> Result<Job, ApiError> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no job {id}"));
    let job = state
        .pipeline
        .ledger()
        .job(id)
        .await
        .map_err(imagegate_pipeline::PipelineError::from)?
        .ok_or_else(not_found)?;
    if !caller.admin && job.api_key != caller.id {
        return Err(not_found());
    }
    Ok(job)
}

/// A deferred job.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id (`job_` and 24 hex digits)")),
    responses(
        (status = 200, description = "The job, with its image once succeeded", body = JobView),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 503, response = crate::openapi::Unavailable),
    ),
)]
pub(crate) async fn get_job(
    State(state): State<Arc<AppState>>,
    caller: AuthedKey,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) =
        id.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", e.body_text()))?;
    let job = visible_job(&state, &caller, &id).await?;
    let manifest = match job.status {
        JobStatus::Succeeded => state.pipeline.manifest(job.content_key).await?,
        _ => None,
    };
    let mut view = JobView::new(&state.pipeline, &job, manifest.as_deref());
    if let Some(url) = &job.webhook_url {
        let record = state
            .pipeline
            .ledger()
            .webhook_of_job(&job.id)
            .await
            .map_err(imagegate_pipeline::PipelineError::from)?;
        view.webhook = Some(WebhookView::new(url, record));
    }
    Ok(Json(view).into_response())
}

/// `GET /v1/jobs` parameters.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct JobsParams {
    /// Only jobs in this status (`queued`, `running`, `succeeded`, `failed`,
    /// `expired`, `cancelled`).
    status: Option<String>,
    /// At most this many, newest first (default 100, at most 1000).
    limit: Option<u32>,
}

/// A list of jobs, newest first.
#[derive(serde::Serialize, ToSchema)]
#[schema(as = JobListView)]
pub(crate) struct JobListView<'a> {
    /// Always `list`.
    #[schema(value_type = String)]
    pub(crate) object: &'static str,
    pub(crate) data: Vec<JobView<'a>>,
}

/// The caller's deferred jobs (every key's for an admin key), newest first.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    params(JobsParams),
    responses(
        (status = 200, description = "The jobs", body = JobListView),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 503, response = crate::openapi::Unavailable),
    ),
)]
pub(crate) async fn list_jobs(
    State(state): State<Arc<AppState>>,
    caller: AuthedKey,
    QueryParams(params): QueryParams<JobsParams>,
) -> Result<Response, ApiError> {
    let status = params
        .status
        .map(|s| {
            JobStatus::parse(&s).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    format!(
                        "status {s:?} is not one of {}",
                        JobStatus::ALL.map(JobStatus::as_str).join(", ")
                    ),
                )
                .with_param("status")
            })
        })
        .transpose()?;
    let filter = JobFilter {
        owner: (!caller.admin).then(|| caller.id.clone()),
        status,
        batch: None,
        limit: params.limit.unwrap_or(100),
    };
    let jobs = state
        .pipeline
        .ledger()
        .jobs(&filter)
        .await
        .map_err(imagegate_pipeline::PipelineError::from)?;
    let body = JobListView {
        object: "list",
        data: jobs
            .iter()
            .map(|j| JobView::new(&state.pipeline, j, None))
            .collect(),
    };
    Ok(Json(body).into_response())
}

/// The jobs routes' part of `/openapi.json`, merged into the document there.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(get_job, list_jobs),
    tags((name = "jobs", description = "Deferred generation: jobs that wait for the cheapest moment before their deadline")),
)]
pub(crate) struct JobsDoc;
