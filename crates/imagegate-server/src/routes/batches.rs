//! The OpenAI Batch API, for images: `POST /v1/files` (purpose `batch`, a JSONL of
//! `/v1/images/generations` requests each with a `custom_id`), `GET /v1/files/{id}`,
//! `GET /v1/files/{id}/content`, `POST /v1/batches`, `GET /v1/batches`,
//! `GET /v1/batches/{id}` and `POST /v1/batches/{id}/cancel`, so OpenAI's clients
//! run image batches here unmodified. Each line becomes a deferred job due by the
//! end of the batch's `completion_window`, planned for the cheapest moment before it
//! like any other; the output file is written from the jobs when asked for: per
//! `custom_id`, OpenAI's images answer with CDN URLs, or its error.
//!
//! As OpenAI does, a file whose lines are malformed (not JSON, no `custom_id`, a
//! repeated one, another endpoint) fails the whole batch with `errors`; a line that
//! is well formed but refused (a blocked prompt, an unknown model) is one line of the
//! error file. One image per line (`n` 1); `response_format` `url` only.

use crate::auth::AuthedKey;
use crate::error::{JsonBody, OpenAiError, QueryParams};
use crate::routes::openai_compat::{served_variant, translate, OpenAiImageRequest};
use crate::{ApiError, AppState};
use axum::extract::rejection::PathRejection;
use axum::extract::{Multipart, Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use imagegate_core::ContentKey;
use imagegate_ledger::{BatchRow, FileRow, Job, JobFilter, JobStatus, Ledger, NewJob};
use imagegate_pipeline::deferred::{BatchLine, Deferred};
use imagegate_pipeline::{PipelineError, RequestContext};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;

/// The only endpoint a batch here may target.
const ENDPOINT: &str = "/v1/images/generations";
/// Lines one batch may hold.
const MAX_LINES: usize = 50_000;

fn invalid(param: &'static str, message: impl Into<String>) -> OpenAiError {
    OpenAiError(ApiError::new(StatusCode::BAD_REQUEST, "invalid_value", message).with_param(param))
}

fn not_found(what: &str, id: &str) -> OpenAiError {
    OpenAiError(ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no {what} with id {id}"),
    ))
}

fn ledger_error(e: imagegate_ledger::LedgerError) -> OpenAiError {
    OpenAiError(ApiError::from(PipelineError::from(e)))
}

fn visible(caller: &AuthedKey, owner: &Option<String>) -> bool {
    caller.admin || *owner == caller.id
}

fn path_id(id: Result<Path<String>, PathRejection>) -> Result<String, OpenAiError> {
    id.map(|Path(id)| id).map_err(|e| {
        OpenAiError(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            e.body_text(),
        ))
    })
}

// ---- files ----------------------------------------------------------------------

/// OpenAI's file object.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct FileView {
    id: String,
    /// Always `file`.
    object: &'static str,
    bytes: i64,
    /// Unix seconds.
    created_at: i64,
    filename: String,
    /// `batch` (an upload), `batch_output` or `batch_error`.
    purpose: String,
    /// Always `processed`.
    status: &'static str,
}

impl From<&FileRow> for FileView {
    fn from(f: &FileRow) -> FileView {
        FileView {
            id: f.id.clone(),
            object: "file",
            bytes: f.bytes,
            created_at: f.created_at.timestamp(),
            filename: f.filename.clone(),
            purpose: f.purpose.clone(),
            status: "processed",
        }
    }
}

/// Uploads a batch input file: multipart with `purpose` (`batch`) and `file`.
#[utoipa::path(
    post,
    path = "/v1/files",
    tag = "batches",
    request_body(content_type = "multipart/form-data", description = "`purpose` = `batch`, `file` = the JSONL"),
    responses(
        (status = 200, description = "The stored file", body = FileView),
        (status = 400, response = crate::openapi::OpenAiBadRequest),
        (status = 401, response = crate::openapi::OpenAiUnauthorized),
        (status = 413, response = crate::openapi::OpenAiPayloadTooLarge),
        (status = 503, response = crate::openapi::OpenAiUnavailable),
    ),
)]
pub(crate) async fn upload_file(
    State(state): State<Arc<AppState>>,
    caller: AuthedKey,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, OpenAiError> {
    let mut multipart = multipart
        .map_err(|e| OpenAiError(ApiError::new(e.status(), "invalid_request", e.body_text())))?;
    let mut purpose = None;
    let mut file = None;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| OpenAiError(ApiError::new(e.status(), "invalid_request", e.body_text())))?
    {
        match field.name() {
            Some("purpose") => {
                purpose = Some(field.text().await.map_err(|e| {
                    OpenAiError(ApiError::new(e.status(), "invalid_request", e.body_text()))
                })?)
            }
            Some("file") => {
                let name = field.file_name().unwrap_or("upload.jsonl").to_string();
                let bytes = field.bytes().await.map_err(|e| {
                    OpenAiError(ApiError::new(e.status(), "invalid_request", e.body_text()))
                })?;
                file = Some((name, bytes));
            }
            _ => {}
        }
    }
    match purpose.as_deref() {
        Some("batch") => {}
        Some(other) => {
            return Err(invalid(
                "purpose",
                format!("purpose {other:?} is not offered; only 'batch' files are stored"),
            ))
        }
        None => return Err(invalid("purpose", "purpose is required")),
    }
    let (name, bytes) = file.ok_or_else(|| invalid("file", "file is required"))?;
    let row = state
        .pipeline
        .ledger()
        .create_file(
            caller.id.as_deref(),
            "batch",
            &name,
            bytes.len() as i64,
            Some(&bytes[..]),
            None,
        )
        .await
        .map_err(ledger_error)?;
    Ok(Json(FileView::from(&row)).into_response())
}

async fn visible_file(
    state: &AppState,
    caller: &AuthedKey,
    id: &str,
) -> Result<FileRow, OpenAiError> {
    let file = state
        .pipeline
        .ledger()
        .file(id)
        .await
        .map_err(ledger_error)?
        .ok_or_else(|| not_found("file", id))?;
    if !visible(caller, &file.api_key) {
        return Err(not_found("file", id));
    }
    Ok(file)
}

/// A file's metadata.
#[utoipa::path(
    get,
    path = "/v1/files/{id}",
    tag = "batches",
    params(("id" = String, Path, description = "The file's id")),
    responses(
        (status = 200, description = "The file", body = FileView),
        (status = 401, response = crate::openapi::OpenAiUnauthorized),
        (status = 404, description = "No such file (or another key's)"),
    ),
)]
pub(crate) async fn get_file(
    State(state): State<Arc<AppState>>,
    caller: AuthedKey,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, OpenAiError> {
    let id = path_id(id)?;
    let file = visible_file(&state, &caller, &id).await?;
    Ok(Json(FileView::from(&file)).into_response())
}

/// A file's bytes: an upload as sent; a batch's output or error file as JSONL, one
/// line per request (`custom_id`, OpenAI's response or error).
#[utoipa::path(
    get,
    path = "/v1/files/{id}/content",
    tag = "batches",
    params(("id" = String, Path, description = "The file's id")),
    responses(
        (status = 200, description = "The file's bytes", content_type = "application/jsonl", body = String),
        (status = 401, response = crate::openapi::OpenAiUnauthorized),
        (status = 404, description = "No such file (or another key's)"),
    ),
)]
pub(crate) async fn file_content(
    State(state): State<Arc<AppState>>,
    caller: AuthedKey,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, OpenAiError> {
    let id = path_id(id)?;
    let file = visible_file(&state, &caller, &id).await?;
    let body = match (&file.content, &file.batch) {
        (Some(content), _) => content.clone(),
        (None, Some(batch)) => output_lines(&state, batch, file.purpose == "batch_output").await?,
        (None, None) => Vec::new(),
    };
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/jsonl"),
        )],
        body,
    )
        .into_response())
}

/// One line of an output or error file, as OpenAI writes them.
#[derive(Serialize)]
struct OutputLine {
    id: String,
    custom_id: String,
    response: Option<OutputResponse>,
    error: Option<OutputError>,
}

#[derive(Serialize)]
struct OutputResponse {
    status_code: u16,
    request_id: String,
    body: serde_json::Value,
}

#[derive(Serialize)]
struct OutputError {
    code: String,
    message: String,
}

/// The output file (`succeeded`: the lines that succeeded) or the error file (the
/// rest) of `batch`, from its jobs.
async fn output_lines(
    state: &AppState,
    batch: &str,
    succeeded: bool,
) -> Result<Vec<u8>, OpenAiError> {
    let mut jobs = batch_jobs(state.pipeline.ledger(), batch).await?;
    jobs.retain(|j| (j.status == JobStatus::Succeeded) == succeeded && j.status.is_final());
    let mut out = Vec::new();
    for job in jobs {
        let line_id = format!("batch_req_{}", job.id.trim_start_matches("job_"));
        let custom_id = job.custom_id.clone().unwrap_or_default();
        let line = match job.status {
            JobStatus::Succeeded => {
                let manifest = state
                    .pipeline
                    .manifest(job.content_key)
                    .await
                    .map_err(OpenAiError::from)?;
                let url = manifest
                    .as_deref()
                    .and_then(|m| served_variant(m, None))
                    .map(|v| state.pipeline.url_of(v));
                match url {
                    Some(url) => OutputLine {
                        id: line_id,
                        custom_id,
                        response: Some(OutputResponse {
                            status_code: 200,
                            request_id: job.id.clone(),
                            body: serde_json::json!({
                                "created": job.finished_at.unwrap_or(job.created_at).timestamp(),
                                "data": [{"url": url}],
                                "imagegate": {"images": [{"id": job.content_key}]},
                            }),
                        }),
                        error: None,
                    },
                    None => OutputLine {
                        id: line_id,
                        custom_id,
                        response: None,
                        error: Some(OutputError {
                            code: "not_found".into(),
                            message: format!("image {} is no longer stored", job.content_key),
                        }),
                    },
                }
            }
            JobStatus::Failed => {
                let code = job.error_code.clone().unwrap_or_else(|| "failed".into());
                OutputLine {
                    id: line_id,
                    custom_id,
                    response: Some(OutputResponse {
                        status_code: failure_status(&code),
                        request_id: job.id.clone(),
                        body: serde_json::json!({"error": {
                            "message": job.error.clone().unwrap_or_default(),
                            "type": "invalid_request_error",
                            "param": null,
                            "code": code,
                        }}),
                    }),
                    error: None,
                }
            }
            JobStatus::Expired | JobStatus::Cancelled => OutputLine {
                id: line_id,
                custom_id,
                response: None,
                error: Some(OutputError {
                    code: if job.status == JobStatus::Expired {
                        "batch_expired".into()
                    } else {
                        "batch_cancelled".into()
                    },
                    message: job.error.clone().unwrap_or_default(),
                }),
            },
            JobStatus::Queued | JobStatus::Running => continue,
        };
        serde_json::to_writer(&mut out, &line)
            .map_err(|e| OpenAiError::from(PipelineError::Internal(e.to_string())))?;
        out.push(b'\n');
    }
    Ok(out)
}

/// The HTTP status a failed line's code would have had live.
fn failure_status(code: &str) -> u16 {
    match code {
        "cost_limit_exceeded" | "budget_exhausted" => 402,
        "model_retired" => 410,
        "provider_rate_limited" => 429,
        "provider_failed" | "bad_provider_image" => 502,
        "provider_timeout" => 504,
        "internal" | "storage_error" | "too_many_attempts" => 500,
        "overloaded" | "storage_unavailable" | "ledger_unavailable" => 503,
        _ => 400,
    }
}

/// A batch's jobs in the order its lines were accepted.
async fn batch_jobs(ledger: &Ledger, batch: &str) -> Result<Vec<Job>, OpenAiError> {
    let mut jobs = ledger
        .jobs(&JobFilter {
            owner: None,
            status: None,
            batch: Some(batch.to_string()),
            limit: MAX_LINES as u32,
        })
        .await
        .map_err(ledger_error)?;
    jobs.reverse();
    Ok(jobs)
}

// ---- batches --------------------------------------------------------------------

/// `POST /v1/batches`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct CreateBatch {
    input_file_id: String,
    /// `/v1/images/generations`.
    endpoint: String,
    /// How long the batch may take, e.g. `24h`; its lines are due by then.
    completion_window: String,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

/// OpenAI's batch object.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct BatchView {
    id: String,
    /// Always `batch`.
    object: &'static str,
    endpoint: String,
    #[schema(value_type = Option<Object>)]
    errors: Option<serde_json::Value>,
    input_file_id: String,
    completion_window: String,
    /// `validating`, `failed`, `in_progress`, `completed`, `expired`, `cancelling`,
    /// `cancelled`.
    status: String,
    output_file_id: Option<String>,
    error_file_id: Option<String>,
    created_at: i64,
    in_progress_at: Option<i64>,
    expires_at: Option<i64>,
    finalizing_at: Option<i64>,
    completed_at: Option<i64>,
    failed_at: Option<i64>,
    expired_at: Option<i64>,
    cancelling_at: Option<i64>,
    cancelled_at: Option<i64>,
    request_counts: RequestCounts,
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Value>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct RequestCounts {
    total: i64,
    completed: i64,
    failed: i64,
}

fn batch_view(b: BatchRow, counts: imagegate_ledger::BatchCounts) -> BatchView {
    let json = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
    BatchView {
        object: "batch",
        errors: json(b.errors),
        metadata: json(b.metadata),
        request_counts: RequestCounts {
            total: counts.total,
            completed: counts.succeeded,
            failed: counts.failed,
        },
        id: b.id,
        endpoint: b.endpoint,
        input_file_id: b.input_file_id,
        completion_window: b.completion_window,
        status: b.status,
        output_file_id: b.output_file_id,
        error_file_id: b.error_file_id,
        created_at: b.created_at,
        in_progress_at: b.in_progress_at,
        expires_at: Some(b.expires_at),
        finalizing_at: b.finalizing_at,
        completed_at: b.completed_at,
        failed_at: b.failed_at,
        expired_at: b.expired_at,
        cancelling_at: b.cancelling_at,
        cancelled_at: b.cancelled_at,
    }
}

/// One input line as OpenAI documents it.
#[derive(Deserialize)]
struct InputLine {
    custom_id: String,
    method: String,
    url: String,
    body: serde_json::Value,
}

/// Runs a batch of `/v1/images/generations` requests from an uploaded file, each
/// line a deferred job due by the end of `completion_window`.
#[utoipa::path(
    post,
    path = "/v1/batches",
    tag = "batches",
    request_body(content = CreateBatch, example = json!({"input_file_id": "file-0123456789abcdef01234567", "endpoint": "/v1/images/generations", "completion_window": "24h"})),
    responses(
        (status = 200, description = "The batch (`failed` with `errors` when its file did not validate)", body = BatchView),
        (status = 401, response = crate::openapi::OpenAiUnauthorized),
        (status = 404, description = "No such input file (or another key's)"),
        (status = 503, response = crate::openapi::OpenAiUnavailable),
        crate::openapi::OpenAiBadBody,
    ),
)]
pub(crate) async fn create_batch(
    State(state): State<Arc<AppState>>,
    crate::middleware::Caller(ctx): crate::middleware::Caller,
    caller: AuthedKey,
    body: Result<JsonBody<CreateBatch>, ApiError>,
) -> Result<Response, OpenAiError> {
    let JsonBody(req) = body?;
    let pipeline = &state.pipeline;
    let ledger = pipeline.ledger();
    if req.endpoint != ENDPOINT {
        return Err(invalid(
            "endpoint",
            format!(
                "endpoint {:?} is not offered; batches here run {ENDPOINT}",
                req.endpoint
            ),
        ));
    }
    let window = humantime::parse_duration(&req.completion_window)
        .ok()
        .and_then(|w| chrono::Duration::from_std(w).ok())
        .filter(|w| {
            *w > chrono::Duration::zero()
                && *w <= chrono::Duration::hours(pipeline.config().deferred.max_window_hours as i64)
        })
        .ok_or_else(|| {
            invalid(
                "completion_window",
                format!(
                    "completion_window {:?} must be a duration such as 24h, at most {}h",
                    req.completion_window,
                    pipeline.config().deferred.max_window_hours
                ),
            )
        })?;
    if req.metadata.as_ref().is_some_and(|m| !m.is_object()) {
        return Err(invalid("metadata", "metadata must be an object"));
    }
    let file = visible_file(&state, &caller, &req.input_file_id).await?;
    let content = file
        .content
        .filter(|_| file.purpose == "batch")
        .ok_or_else(|| {
            invalid(
                "input_file_id",
                "the input file must be an upload with purpose 'batch'",
            )
        })?;
    let expires_at = chrono::Utc::now() + window;
    let id = Ledger::new_batch_id();
    let metadata = req.metadata.as_ref().map(|m| m.to_string());

    // Validation: a malformed file fails the batch whole, as OpenAI's does.
    let text = String::from_utf8_lossy(&content);
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for (n, raw) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let line_no = n + 1;
        let mut fault = |code: &str, message: String| {
            errors.push(serde_json::json!({"code": code, "message": message, "line": line_no, "param": null}))
        };
        match serde_json::from_str::<InputLine>(raw) {
            Err(e) => fault("invalid_json_line", format!("line {line_no}: {e}")),
            Ok(l) if l.method != "POST" => fault(
                "invalid_method",
                format!("line {line_no}: method must be POST"),
            ),
            Ok(l) if l.url != ENDPOINT => fault(
                "mismatched_endpoint",
                format!(
                    "line {line_no}: url {:?} is not the batch's endpoint {ENDPOINT}",
                    l.url
                ),
            ),
            Ok(l) if !seen.insert(l.custom_id.clone()) => fault(
                "duplicate_custom_id",
                format!("line {line_no}: custom_id {:?} is used twice", l.custom_id),
            ),
            Ok(l) => lines.push(l),
        }
    }
    if lines.is_empty() && errors.is_empty() {
        errors.push(serde_json::json!({"code": "empty_file", "message": "the input file has no requests", "line": null, "param": null}));
    }
    if lines.len() > MAX_LINES {
        errors.push(serde_json::json!({"code": "too_many_requests", "message": format!("at most {MAX_LINES} requests per batch"), "line": null, "param": null}));
    }
    if !errors.is_empty() {
        let errors = serde_json::json!({"object": "list", "data": errors}).to_string();
        let row = ledger
            .create_batch(
                &id,
                caller.id.as_deref(),
                ENDPOINT,
                &req.input_file_id,
                &req.completion_window,
                "failed",
                metadata.as_deref(),
                Some(errors.as_str()),
                expires_at,
            )
            .await
            .map_err(ledger_error)?;
        return Ok(Json(batch_view(row, Default::default())).into_response());
    }

    ledger
        .create_batch(
            &id,
            caller.id.as_deref(),
            ENDPOINT,
            &req.input_file_id,
            &req.completion_window,
            "validating",
            metadata.as_deref(),
            None,
            expires_at,
        )
        .await
        .map_err(ledger_error)?;
    let deliver_by = expires_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    for line in lines {
        let batch_line = BatchLine {
            batch: id.clone(),
            custom_id: line.custom_id.clone(),
        };
        let line_ctx = RequestContext {
            request_id: format!("{}/{}", ctx.request_id, line.custom_id),
            api_key: ctx.api_key.clone(),
            survives_restart: false,
        };
        if let Err((code, message)) =
            accept_line(&state, &line, &deliver_by, &line_ctx, &batch_line).await
        {
            let failed = NewJob {
                api_key: ctx.api_key.clone(),
                // No key: the line never resolved to an image.
                content_key: "0".repeat(64).parse::<ContentKey>().expect("64 hex digits"),
                request: line.body.to_string(),
                deliver_by: expires_at,
                run_after: chrono::Utc::now(),
                live_micros: None,
                planned_micros: None,
                batch: Some(id.clone()),
                custom_id: Some(line.custom_id.clone()),
                webhook_url: None,
            };
            ledger
                .record_failed_job(&failed, &code, &message)
                .await
                .map_err(ledger_error)?;
        }
    }
    ledger
        .move_batch(&id, "validating", "in_progress", None, None)
        .await
        .map_err(ledger_error)?;
    let row = settle(&state, &id).await?;
    Ok(Json(row).into_response())
}

/// Queues one line as a job; its error code and message when it is refused.
async fn accept_line(
    state: &AppState,
    line: &InputLine,
    deliver_by: &str,
    ctx: &RequestContext,
    batch_line: &BatchLine,
) -> Result<(), (String, String)> {
    let refused = |e: OpenAiError| (e.0.code.to_string(), e.0.message.clone());
    let body: OpenAiImageRequest = serde_json::from_value(line.body.clone())
        .map_err(|e| ("invalid_request".to_string(), format!("body: {e}")))?;
    if body.n.unwrap_or(1) != 1 {
        return Err((
            "invalid_value".into(),
            "n must be 1 in a batch: send one line per image".into(),
        ));
    }
    if body.response_format.as_deref().is_some_and(|f| f != "url") {
        return Err((
            "invalid_value".into(),
            "response_format must be 'url' in a batch".into(),
        ));
    }
    let (mut requests, _, _) =
        translate(&body, &state.server.openai, state.pipeline.config()).map_err(refused)?;
    let mut request = requests.pop().ok_or_else(|| {
        (
            "invalid_request".to_string(),
            "no image asked for".to_string(),
        )
    })?;
    request.deliver_by = Some(deliver_by.to_string());
    match state.pipeline.defer(&request, ctx, Some(batch_line)).await {
        Ok(Deferred::Queued { .. }) => Ok(()),
        Ok(Deferred::Published(_)) => {
            Err(("internal".into(), "a batch line was answered live".into()))
        }
        Err(e) => Err(refused(OpenAiError(ApiError::from(e)))),
    }
}

/// The batch, after moving it to a final status if its lines are all done.
async fn settle(state: &AppState, id: &str) -> Result<BatchView, OpenAiError> {
    let ledger = state.pipeline.ledger();
    for _ in 0..3 {
        let batch = ledger
            .batch(id)
            .await
            .map_err(ledger_error)?
            .ok_or_else(|| not_found("batch", id))?;
        let counts = ledger.batch_counts(id).await.map_err(ledger_error)?;
        let to = match batch.status.as_str() {
            "in_progress" if counts.pending == 0 && counts.expired > 0 => "expired",
            "in_progress" if counts.pending == 0 => "completed",
            "cancelling" if counts.running == 0 => "cancelled",
            _ => return Ok(batch_view(batch, counts)),
        };
        let owner = batch.api_key.as_deref();
        let output = match counts.succeeded {
            0 => None,
            _ => Some(
                ledger
                    .create_file(
                        owner,
                        "batch_output",
                        &format!("{id}_output.jsonl"),
                        0,
                        None,
                        Some(id),
                    )
                    .await
                    .map_err(ledger_error)?,
            ),
        };
        let error = match counts.failed {
            0 => None,
            _ => Some(
                ledger
                    .create_file(
                        owner,
                        "batch_error",
                        &format!("{id}_error.jsonl"),
                        0,
                        None,
                        Some(id),
                    )
                    .await
                    .map_err(ledger_error)?,
            ),
        };
        ledger
            .move_batch(
                id,
                &batch.status,
                to,
                output.as_ref().map(|f| f.id.as_str()),
                error.as_ref().map(|f| f.id.as_str()),
            )
            .await
            .map_err(ledger_error)?;
    }
    let batch = ledger
        .batch(id)
        .await
        .map_err(ledger_error)?
        .ok_or_else(|| not_found("batch", id))?;
    let counts = ledger.batch_counts(id).await.map_err(ledger_error)?;
    Ok(batch_view(batch, counts))
}

async fn visible_batch(
    state: &AppState,
    caller: &AuthedKey,
    id: &str,
) -> Result<BatchView, OpenAiError> {
    let row = state
        .pipeline
        .ledger()
        .batch(id)
        .await
        .map_err(ledger_error)?
        .ok_or_else(|| not_found("batch", id))?;
    if !visible(caller, &row.api_key) {
        return Err(not_found("batch", id));
    }
    settle(state, id).await
}

/// A batch, with its request counts.
#[utoipa::path(
    get,
    path = "/v1/batches/{id}",
    tag = "batches",
    params(("id" = String, Path, description = "The batch's id")),
    responses(
        (status = 200, description = "The batch", body = BatchView),
        (status = 401, response = crate::openapi::OpenAiUnauthorized),
        (status = 404, description = "No such batch (or another key's)"),
    ),
)]
pub(crate) async fn get_batch(
    State(state): State<Arc<AppState>>,
    caller: AuthedKey,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, OpenAiError> {
    let id = path_id(id)?;
    Ok(Json(visible_batch(&state, &caller, &id).await?).into_response())
}

/// Cancels a batch: its queued lines are cancelled, running ones finish.
#[utoipa::path(
    post,
    path = "/v1/batches/{id}/cancel",
    tag = "batches",
    params(("id" = String, Path, description = "The batch's id")),
    responses(
        (status = 200, description = "The batch, `cancelling` or `cancelled`", body = BatchView),
        (status = 401, response = crate::openapi::OpenAiUnauthorized),
        (status = 404, description = "No such batch (or another key's)"),
        (status = 409, description = "The batch is already over"),
    ),
)]
pub(crate) async fn cancel_batch(
    State(state): State<Arc<AppState>>,
    caller: AuthedKey,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, OpenAiError> {
    let id = path_id(id)?;
    let view = visible_batch(&state, &caller, &id).await?;
    let ledger = state.pipeline.ledger();
    if !matches!(
        view.status.as_str(),
        "in_progress" | "validating" | "cancelling"
    ) {
        return Err(OpenAiError(ApiError::new(
            StatusCode::CONFLICT,
            "batch_not_cancellable",
            format!("batch {id} is {}", view.status),
        )));
    }
    if view.status != "cancelling" {
        ledger
            .move_batch(&id, &view.status, "cancelling", None, None)
            .await
            .map_err(ledger_error)?;
    }
    ledger.cancel_batch_jobs(&id).await.map_err(ledger_error)?;
    Ok(Json(settle(&state, &id).await?).into_response())
}

/// `GET /v1/batches` parameters.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct BatchesParams {
    /// At most this many, newest first (default 20, at most 100).
    limit: Option<u32>,
    /// Accepted for OpenAI's clients; lists start at the newest batch.
    #[allow(dead_code)]
    after: Option<String>,
}

/// A page of batches.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct BatchListView {
    /// Always `list`.
    object: &'static str,
    data: Vec<BatchView>,
    first_id: Option<String>,
    last_id: Option<String>,
    has_more: bool,
}

/// The caller's batches (every key's for an admin key), newest first.
#[utoipa::path(
    get,
    path = "/v1/batches",
    tag = "batches",
    params(BatchesParams),
    responses(
        (status = 200, description = "The batches", body = BatchListView),
        (status = 400, response = crate::openapi::OpenAiBadRequest),
        (status = 401, response = crate::openapi::OpenAiUnauthorized),
    ),
)]
pub(crate) async fn list_batches(
    State(state): State<Arc<AppState>>,
    caller: AuthedKey,
    params: Result<QueryParams<BatchesParams>, ApiError>,
) -> Result<Response, OpenAiError> {
    // A bad query is refused in OpenAI's error shape, like every error here.
    let QueryParams(params) = params?;
    let limit = params.limit.unwrap_or(20).clamp(1, 100);
    let owner = (!caller.admin).then_some(caller.id.as_deref());
    let rows = state
        .pipeline
        .ledger()
        .batches(owner, limit + 1)
        .await
        .map_err(ledger_error)?;
    let has_more = rows.len() > limit as usize;
    let mut data = Vec::new();
    for row in rows.into_iter().take(limit as usize) {
        data.push(settle(&state, &row.id).await?);
    }
    let body = BatchListView {
        object: "list",
        first_id: data.first().map(|b| b.id.clone()),
        last_id: data.last().map(|b| b.id.clone()),
        has_more,
        data,
    };
    Ok(Json(body).into_response())
}

/// The batch routes' part of `/openapi.json`, merged into the document there.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(upload_file, get_file, file_content, create_batch, get_batch, cancel_batch, list_batches),
    tags((name = "batches", description = "The OpenAI Batch API for images: deferred jobs at the cheapest moment")),
)]
pub(crate) struct BatchesDoc;
