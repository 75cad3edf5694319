//! What every request passes through on its way in and out: its id, its span, the
//! request metrics and authentication ([`edge`]); and who is asking ([`Caller`]).

use crate::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use imagegate_pipeline::RequestContext;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone)]
struct RequestId(String);

/// Who is asking: the request id (set by the `request_id` middleware) and, once
/// authenticated, the API key's id.
pub(crate) struct Caller(pub RequestContext);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        let api_key = parts
            .extensions
            .get::<crate::auth::AuthedKey>()
            .and_then(|k| k.id.clone());
        Ok(Caller(RequestContext {
            request_id,
            api_key,
            survives_restart: false,
        }))
    }
}

/// What every request passes on its way in and out: its id (the caller's
/// `x-request-id` if sane, echoed back), the request metrics (which count refusals
/// too), then authentication. One middleware, not one per concern: each layer clones
/// the route's service and boxes a future per request, which showed on the
/// cache-hit path.
pub(crate) async fn edge(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    let answer = async move {
        let count = RequestCount::start(&req);
        let response = match crate::auth::refusal(&state, &mut req).await {
            None => next.run(req).await,
            Some(refused) => refused,
        };
        count.finish(&response);
        log_failure(&response);
        response
    };
    let mut response = tracing::Instrument::instrument(answer, span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// Server-side failures are logged here, once, whichever flavour rendered them
/// (rendering an error stays pure); a client's mistakes are answered, not logged.
fn log_failure(response: &Response) {
    if !response.status().is_server_error() {
        return;
    }
    if let Some(f) = response.extensions().get::<crate::error::Failure>() {
        tracing::error!(code = f.code, message = %f.message, status = response.status().as_u16(), "request failed");
    }
}

/// Counts every answer by route template (never the raw path, which holds ids),
/// method and status, and times it: `imagegate_http_requests_total` and
/// `imagegate_http_request_duration_seconds`.
pub(crate) struct RequestCount {
    route: String,
    method: &'static str,
    started: Instant,
}

impl RequestCount {
    pub(crate) fn start(req: &Request) -> RequestCount {
        RequestCount {
            route: req
                .extensions()
                .get::<MatchedPath>()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "unmatched".to_string()),
            method: method_label(req.method()),
            started: Instant::now(),
        }
    }

    pub(crate) fn finish(self, response: &Response) {
        let RequestCount {
            route,
            method,
            started,
        } = self;
        let status = response.status().as_u16().to_string();
        metrics::counter!("imagegate_http_requests_total",
            "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
        metrics::histogram!("imagegate_http_request_duration_seconds",
            "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    }
}

/// A closed set, so a client inventing methods cannot grow the label space.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }
}
