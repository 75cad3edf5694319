//! Pipeline errors as HTTP answers: `{"error": {"code", "message"}}` with a fitting
//! status, and Retry-After where waiting helps.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use imagegate_pipeline::PipelineError;
use std::time::Duration;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl From<PipelineError> for ApiError {
    fn from(e: PipelineError) -> ApiError {
        use PipelineError as P;
        let message = e.to_string();
        let (status, code, retry_after) = match &e {
            P::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request", None),
            // Found at start-up, before anything serves: never a caller's fault.
            P::Config(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
            P::UnknownProfile(_) => (StatusCode::BAD_REQUEST, "unknown_profile", None),
            P::PromptBlocked { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "prompt_blocked", None),
            P::CostLimit { .. } => (StatusCode::PAYMENT_REQUIRED, "cost_limit_exceeded", None),
            P::BudgetExhausted { .. } => (StatusCode::PAYMENT_REQUIRED, "budget_exhausted", None),
            P::NoProvider(_) => (StatusCode::BAD_REQUEST, "no_provider", None),
            P::ModelRetired { .. } => (StatusCode::GONE, "model_retired", None),
            P::UpstreamContentBlocked { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "content_blocked", None)
            }
            P::ProviderRateLimited { retry_after, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "provider_rate_limited",
                Some(retry_after.unwrap_or(Duration::from_secs(5))),
            ),
            P::ProviderTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "provider_timeout", None),
            P::ProviderFailed(_) => (StatusCode::BAD_GATEWAY, "provider_failed", None),
            P::BadImage(_) => (StatusCode::BAD_GATEWAY, "bad_provider_image", None),
            P::Overloaded { retry_after, .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                Some(*retry_after),
            ),
            P::Storage(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                Some(Duration::from_secs(5)),
            ),
            P::StorageRejected(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage_error", None),
            P::Ledger(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ledger_unavailable",
                Some(Duration::from_secs(5)),
            ),
            P::Safety(_) | P::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
        };
        if status.is_server_error() {
            tracing::error!(code, %message, "request failed");
        }
        ApiError {
            status,
            code,
            message,
            retry_after,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(after) = self.retry_after {
            let secs = after.as_secs().max(1).to_string();
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&secs).expect("digits are a valid header"),
            );
        }
        response
    }
}
