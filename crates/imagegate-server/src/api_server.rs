//! The one router: every route mounted here and dispatched to its group's file under
//! `routes/` (as Garage's `api_server.rs` dispatches to one file per operation),
//! behind the limits every request shares and the [`crate::middleware`].

use crate::routes::{
    batches, cdn, costs, dashboard, estimate, health, images, jobs, openai_compat, prices, verify,
};
use crate::{ApiError, AppState};
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{BoxError, Router};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceBuilder;

pub fn router(state: Arc<AppState>) -> Router {
    let server = state.server.clone();
    let mut app = Router::new()
        .route("/v1/images", post(images::create_image))
        .route("/v1/images/{id}", get(images::get_image))
        .route("/v1/images/generations", post(openai_compat::generations))
        .route("/v1/jobs", get(jobs::list_jobs))
        .route("/v1/files", post(batches::upload_file))
        .route("/v1/files/{id}", get(batches::get_file))
        .route("/v1/files/{id}/content", get(batches::file_content))
        .route(
            "/v1/batches",
            post(batches::create_batch).get(batches::list_batches),
        )
        .route("/v1/batches/{id}", get(batches::get_batch))
        .route("/v1/batches/{id}/cancel", post(batches::cancel_batch))
        .route("/v1/jobs/{id}", get(jobs::get_job))
        .route("/v1/estimate", post(estimate::estimate))
        .route(
            "/v1/verify",
            post(verify::verify).layer(DefaultBodyLimit::max(verify::MAX_UPLOAD_BYTES)),
        )
        .route("/v1/costs", get(costs::costs))
        .route("/v1/delivery", get(dashboard::delivery))
        .route("/dashboard", get(dashboard::page))
        .route("/v1/prices", get(prices::prices))
        .route("/v1/admin/prices/reload", post(prices::reload))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::ready))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(crate::openapi::openapi_json));
    if server.serve_cdn && state.pipeline.store().kind() == imagegate_storage::StoreKind::Local {
        app = app.route("/cdn/{*path}", get(cdn::cdn));
    }
    app.fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(server.max_body_bytes))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(overload_or_timeout))
                .load_shed()
                // Global: `Router::layer` wraps each route on its own, and a plain
                // concurrency limit would give every route its own allowance.
                .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                    server.max_in_flight.max(1),
                ))
                .timeout(server.request_timeout.max(Duration::from_secs(1))),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::middleware::edge,
        ))
        .with_state(state)
}

async fn overload_or_timeout(err: BoxError) -> ApiError {
    if err.is::<tower::timeout::error::Elapsed>() {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "the request took longer than the server allows",
        )
    } else if err.is::<tower::load_shed::error::Overloaded>() {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests in flight",
        );
        e.retry_after = Some(Duration::from_secs(1));
        e
    } else {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            err.to_string(),
        )
    }
}
