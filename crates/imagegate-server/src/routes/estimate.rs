//! `POST /v1/estimate`: what the router would do for a request; generates nothing.

use crate::error::JsonBody;
use crate::views::EstimateView;
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
        (status = 200, description = "The router's view of the request", body = EstimateView),
        (status = 402, response = crate::openapi::PaymentRequired),
        (status = 422, description = "The prompt was refused (`prompt_blocked`)", body = crate::error::ErrorBody),
        crate::openapi::Keyed,
        crate::openapi::Overloaded,
        crate::openapi::BadBody,
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
) -> EstimateView<'_> {
    EstimateView::new(key, cached, estimate)
}
