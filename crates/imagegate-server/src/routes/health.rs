//! Probes and metrics: `GET /healthz`, `GET /readyz`, `GET /metrics`.

use crate::views::StatusView;
use crate::{ApiError, AppState};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;
use std::time::Duration;

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "Alive", body = StatusView),
        crate::openapi::Overloaded,
    ),
)]
pub(crate) async fn healthz() -> Json<StatusView> {
    Json(StatusView { status: "ok" })
}

/// Readiness: the store and the ledger answer.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "Ready for traffic", body = StatusView),
        crate::openapi::Overloaded,
    ),
)]
pub(crate) async fn ready(State(state): State<Arc<AppState>>) -> Response {
    match state.pipeline.ready().await {
        Ok(()) => Json(StatusView { status: "ready" }).into_response(),
        Err(e) => {
            let mut err =
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", e.to_string());
            err.retry_after = Some(Duration::from_secs(5));
            err.into_response()
        }
    }
}

/// Prometheus metrics (`imagegate_*`).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String),
        crate::openapi::Overloaded,
    ),
)]
pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
