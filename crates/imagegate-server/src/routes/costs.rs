//! `GET /v1/costs`: the cost report, and the window and key scope every ledger
//! query a caller runs is held to ([`report_query`]).

use crate::auth::AuthedKey;
use crate::error::QueryParams;
use crate::{ApiError, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;

/// `GET /v1/costs` parameters; unknown ones are refused so a typo is not silently
/// ignored.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CostsParams {
    group_by: Option<String>,
    since: Option<String>,
    until: Option<String>,
    key: Option<String>,
}

/// How far back a report without `since` reaches.
pub(crate) const DEFAULT_WINDOW_DAYS: i64 = 30;

/// The ledger query a caller may run: its own key's requests unless it is an admin
/// (who may name one key, or see all), over the window asked for, which reaches
/// [`DEFAULT_WINDOW_DAYS`] back from its end when it has no start.
pub(crate) fn report_query(
    caller: &AuthedKey,
    group_by: Vec<imagegate_ledger::Dimension>,
    since: Option<String>,
    until: Option<String>,
    key: Option<String>,
) -> Result<imagegate_ledger::ReportQuery, ApiError> {
    let now = chrono::Utc::now();
    let instant = |v: Option<String>| {
        v.map(|v| imagegate_ledger::parse_instant(&v, now))
            .transpose()
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_time", e.to_string()))
    };
    let until = instant(until)?;
    let since = match instant(since)? {
        Some(since) => since,
        None => until.unwrap_or(now) - chrono::Duration::days(DEFAULT_WINDOW_DAYS),
    };
    let api_key = if caller.admin {
        key
    } else {
        let own = caller.id.clone();
        if key.is_some() && key != own {
            caller.require_admin("reading another key's costs")?;
        }
        own
    };
    Ok(imagegate_ledger::ReportQuery {
        group_by,
        since: Some(since),
        until,
        api_key,
    })
}

/// The cost report: totals grouped by any of stage, provider, model, key and day over
/// a time window, and cache economics.
#[utoipa::path(
    get,
    path = "/v1/costs",
    tag = "costs",
    params(
        ("group_by" = Option<String>, Query, description = "Comma-separated dimensions: `stage`, `provider`, `model`, `key`, `day`", example = "stage,day"),
        ("since" = Option<String>, Query, description = "Inclusive start: a duration before now (`7d`, `12h`), an RFC 3339 time or a UTC day; 30 days before `until` (or now) when absent", example = "7d"),
        ("until" = Option<String>, Query, description = "Exclusive end, in the same forms as `since`"),
        ("key" = Option<String>, Query, description = "Only this API key id's requests. A key sees its own requests only (naming another needs an admin key); an admin key sees every key's unless it names one"),
    ),
    responses(
        (status = 200, description = "The report", body = imagegate_ledger::Report),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        crate::openapi::Keyed,
        crate::openapi::Overloaded,
    ),
)]
pub(crate) async fn costs(
    State(state): State<Arc<AppState>>,
    caller: AuthedKey,
    QueryParams(params): QueryParams<CostsParams>,
) -> Result<Response, ApiError> {
    let group_by = imagegate_ledger::Dimension::parse_list(
        params.group_by.as_deref().unwrap_or(""),
    )
    .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_group_by", e.to_string()))?;
    let query = report_query(&caller, group_by, params.since, params.until, params.key)?;
    let report = state
        .pipeline
        .ledger()
        .report(&query)
        .await
        .map_err(report_error)?;
    Ok(Json(report).into_response())
}

/// A ledger report's failure: a window the ledger refuses is the caller's
/// (`invalid_time`), anything else the ledger's.
pub(crate) fn report_error(e: imagegate_ledger::LedgerError) -> ApiError {
    match e {
        imagegate_ledger::LedgerError::BadReport(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_time", e.to_string())
        }
        e => ApiError::from(imagegate_pipeline::PipelineError::from(e)),
    }
}
