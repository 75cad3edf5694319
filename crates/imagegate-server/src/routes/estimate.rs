//! `POST /v1/estimate`: what the router would do for a request; generates nothing.

use crate::error::JsonBody;
use crate::{ApiError, AppState};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use imagegate_core::ContentKey;
use imagegate_pipeline::ImageRequest;
use std::sync::Arc;

/// The candidates the router would consider for a request, their expected cost and
/// latency, and its choice; generates nothing.
#[utoipa::path(
    post,
    path = "/v1/estimate",
    tag = "images",
    request_body(
        content = ImageRequest,
        description = "The same body as `POST /v1/images`",
        example = json!({"prompt": "a lighthouse at dusk, watercolor", "model": "premium", "max_cost_usd": 0.05})
    ),
    responses(
        (status = 200, description = "The router's view of the request", body = crate::openapi::EstimateBody),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 402, response = crate::openapi::PaymentRequired),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 415, response = crate::openapi::UnsupportedMediaType),
        (status = 422, description = "The prompt was refused (`prompt_blocked`)", body = crate::error::ErrorBody),
        (status = 429, response = crate::openapi::RateLimited),
        (status = 503, response = crate::openapi::Unavailable),
        (status = 504, response = crate::openapi::GatewayTimeout),
    ),
)]
pub(crate) async fn estimate(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<ImageRequest>,
) -> Result<Response, ApiError> {
    let (key, cached, estimate) = state.pipeline.estimate(&req).await?;
    Ok(Json(estimate_body(key, cached, &estimate)).into_response())
}

/// The router's view of a request: candidates with expected cost and latency, and
/// the choice. `imagegate estimate` prints the same.
pub fn estimate_body(
    key: ContentKey,
    cached: bool,
    estimate: &imagegate_providers::Estimate,
) -> serde_json::Value {
    let candidate = |c: &imagegate_providers::router::Candidate| {
        let mut v = serde_json::to_value(c).unwrap_or_default();
        v["expected_usd"] = c.expected.as_usd().into();
        v
    };
    serde_json::json!({
        "id": key,
        "cached": cached,
        "policy": estimate.policy,
        "size": estimate.size.to_string(),
        "candidates": estimate.candidates.iter().map(candidate).collect::<Vec<_>>(),
        "chosen": estimate.chosen.as_ref().map(candidate),
    })
}
