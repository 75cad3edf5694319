//! Errors as HTTP answers. One error type ([`ApiError`]) for every route, mapped from
//! pipeline errors in one place; written on the wire by a [`ErrorFlavour`]: imagegate's
//! own `{"error": {"code", "message"}}` ([`Native`]) or OpenAI's
//! `{"error": {"message", "type", "param", "code"}}` ([`OpenAi`]), as Garage renders
//! S3 XML and admin JSON from one error type. Both add `Retry-After` where waiting
//! helps, in [`ApiError::render`] only.
//!
//! Turning an error into a response is pure; the middleware logs server errors.

use axum::extract::rejection::JsonRejection;
use axum::extract::FromRequest;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use imagegate_pipeline::PipelineError;
use serde::Serialize;
use std::time::Duration;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<Duration>,
    /// The request field at fault, when one is (OpenAI's `param`).
    pub param: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            param: None,
        }
    }

    /// This error, blaming the request field `param`.
    pub fn with_param(mut self, param: &'static str) -> ApiError {
        self.param = Some(param);
        self
    }

    /// This error, telling the caller to wait `after` before trying again.
    pub fn with_retry_after(mut self, after: Duration) -> ApiError {
        self.retry_after = Some(after);
        self
    }

    /// The native body, `{"error": {"code", "message"}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::to_value(Native::body(self)).expect("an error body serializes")
    }

    /// The answer in flavour `F`: its status and body, and `Retry-After` (whole
    /// seconds, at least 1) when the error carries a wait.
    pub fn render<F: ErrorFlavour>(&self) -> Response {
        let mut response = (F::status(self), axum::Json(F::body(self))).into_response();
        if let Some(after) = self.retry_after {
            let secs = after.as_secs().max(1).to_string();
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&secs).expect("digits are a valid header"),
            );
        }
        // For the middleware's log line.
        response.extensions_mut().insert(Failure {
            code: self.code,
            message: self.message.clone(),
        });
        response
    }
}

/// The error a response carries, for the middleware to log.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub code: &'static str,
    pub message: String,
}

/// How an [`ApiError`] is written on the wire.
pub trait ErrorFlavour {
    type Body: Serialize;
    fn status(e: &ApiError) -> StatusCode;
    fn body(e: &ApiError) -> Self::Body;
}

/// imagegate's own shape, on every route but OpenAI's.
pub struct Native;

/// Every error: a stable snake_case `code` to switch on, and text for a person.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// e.g. `invalid_request`, `invalid_json`, `missing_api_key`, `budget_exhausted`,
    /// `content_blocked`, `rate_limited`, `provider_failed`, `overloaded`.
    pub code: String,
    pub message: String,
}

impl ErrorFlavour for Native {
    type Body = ErrorBody;
    fn status(e: &ApiError) -> StatusCode {
        e.status
    }
    fn body(e: &ApiError) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: e.code.to_string(),
                message: e.message.clone(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.render::<Native>()
    }
}

/// OpenAI's shape, on `/v1/images/generations`.
pub struct OpenAi;

/// OpenAI's error shape, so its client libraries raise their usual exceptions.
#[derive(Serialize, utoipa::ToSchema)]
pub struct OpenAiErrorBody {
    pub error: OpenAiErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct OpenAiErrorDetail {
    pub message: String,
    /// `invalid_request_error`, `insufficient_quota`, `requests` or `server_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request field at fault, when one is.
    #[schema(required = true)]
    pub param: Option<&'static str>,
    /// imagegate's error code (`content_policy_violation` for blocked content).
    pub code: &'static str,
}

impl OpenAi {
    /// OpenAI answers refused content (a prompt or a generated image) with 400
    /// `content_policy_violation`.
    fn is_content_refusal(e: &ApiError) -> bool {
        matches!(e.code, "prompt_blocked" | "content_blocked")
    }
}

impl ErrorFlavour for OpenAi {
    type Body = OpenAiErrorBody;
    fn status(e: &ApiError) -> StatusCode {
        if OpenAi::is_content_refusal(e) {
            StatusCode::BAD_REQUEST
        } else {
            e.status
        }
    }
    fn body(e: &ApiError) -> OpenAiErrorBody {
        // OpenAI's `type` for a status: what its client libraries switch on.
        let kind = match OpenAi::status(e).as_u16() {
            402 => "insufficient_quota",
            429 => "requests",
            500.. => "server_error",
            _ => "invalid_request_error",
        };
        OpenAiErrorBody {
            error: OpenAiErrorDetail {
                message: e.message.clone(),
                kind,
                param: e.param,
                code: if OpenAi::is_content_refusal(e) {
                    "content_policy_violation"
                } else {
                    e.code
                },
            },
        }
    }
}

/// An [`ApiError`] answered in OpenAI's shape (the OpenAI route's error type).
#[derive(Debug)]
pub struct OpenAiError(pub ApiError);

impl<E: Into<ApiError>> From<E> for OpenAiError {
    fn from(e: E) -> OpenAiError {
        OpenAiError(e.into())
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        self.0.render::<OpenAi>()
    }
}

/// The request field a pipeline error blames, from the error's own variant.
fn param_of(e: &PipelineError) -> Option<&'static str> {
    match e {
        PipelineError::Invalid(fault) => match fault.field() {
            // The native body's names that OpenAI's request shares.
            "prompt" | "negative_prompt" => Some("prompt"),
            "size" => Some("size"),
            "model" => Some("model"),
            _ => None,
        },
        PipelineError::NoProvider(_) | PipelineError::ModelRetired { .. } => Some("model"),
        _ => None,
    }
}

impl From<PipelineError> for ApiError {
    fn from(e: PipelineError) -> ApiError {
        use PipelineError as P;
        let message = e.to_string();
        let (status, retry_after) = match &e {
            P::Invalid(_) | P::UnknownProfile(_) | P::NoProvider(_) => {
                (StatusCode::BAD_REQUEST, None)
            }
            // Config is found at start-up, before anything serves: never a caller's fault.
            P::Config(_) | P::StorageRejected(_) | P::Safety(_) | P::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, None)
            }
            P::PromptBlocked { .. } | P::UpstreamContentBlocked { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, None)
            }
            P::CostLimit { .. } | P::BudgetExhausted { .. } => (StatusCode::PAYMENT_REQUIRED, None),
            P::ModelRetired { .. } => (StatusCode::GONE, None),
            P::ProviderRateLimited { retry_after, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                Some(retry_after.unwrap_or(Duration::from_secs(5))),
            ),
            P::ProviderTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, None),
            P::ProviderFailed(_) | P::BadImage(_) => (StatusCode::BAD_GATEWAY, None),
            P::Overloaded { retry_after, .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, Some(*retry_after))
            }
            P::Storage(_) | P::Ledger(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Some(Duration::from_secs(5)),
            ),
        };
        let code = e.code();
        ApiError {
            status,
            code,
            message,
            retry_after,
            param: param_of(&e),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        let status = rejection.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "invalid_json",
        };
        let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
            StatusCode::BAD_REQUEST
        } else {
            status
        };
        ApiError::new(status, code, rejection.body_text())
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            rejection.body_text(),
        )
    }
}

/// Query parameters, refused as `invalid_query` in the service's own error shape.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct QueryParams<T>(pub T);

/// A JSON request body, refused in the service's own error shape (as axum's
/// `error-handling` example does), so handlers never see a `JsonRejection`. The
/// OpenAI route maps the refusal into its flavour with `?` like any other error.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct JsonBody<T>(pub T);

#[cfg(test)]
mod tests {
    use super::*;

    async fn parts(e: ApiError, openai: bool) -> (StatusCode, Option<String>, serde_json::Value) {
        let response = if openai {
            OpenAiError(e).into_response()
        } else {
            e.into_response()
        };
        let status = response.status();
        let retry = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, retry, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn one_error_renders_in_either_flavour_with_one_retry_after() {
        let e = || {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow down")
                .with_retry_after(Duration::from_millis(200))
        };
        let (status, retry, body) = parts(e(), false).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(retry.as_deref(), Some("1"), "a wait under a second is 1");
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": "rate_limited", "message": "slow down"}})
        );
        let (status, retry, body) = parts(e(), true).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(retry.as_deref(), Some("1"));
        assert_eq!(
            body,
            serde_json::json!({"error": {"message": "slow down", "type": "requests", "param": null, "code": "rate_limited"}})
        );
    }

    #[tokio::test]
    async fn openai_flavour_takes_param_from_the_error_and_refuses_content_with_400() {
        let missing_model = ApiError::from(PipelineError::NoProvider("no such model".into()));
        let (_, _, body) = parts(missing_model, true).await;
        assert_eq!(body["error"]["param"], "model");

        let blocked = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "prompt_blocked", "no")
            .with_param("prompt");
        let (status, _, body) = parts(blocked, true).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "content_policy_violation");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "prompt");

        // The native flavour keeps imagegate's status and code.
        let blocked = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "prompt_blocked", "no");
        let (status, _, body) = parts(blocked, false).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["error"]["code"], "prompt_blocked");
    }
}
