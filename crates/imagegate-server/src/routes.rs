//! Route handlers and the response shapes of API.md.

use crate::auth::AuthedKey;
use crate::{ApiError, AppState};
use axum::error_handling::HandleErrorLayer;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{BoxError, Json, Router};
use imagegate_core::{ContentKey, ImageFormat, Manifest, ManifestStatus, StageCost};
use imagegate_pipeline::{ImageRequest, Outcome, Pipeline, RequestContext};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceBuilder;

pub fn router(state: Arc<AppState>) -> Router {
    let server = state.pipeline.config().server.clone();
    let mut app = Router::new()
        .route("/v1/images", post(create_image))
        .route("/v1/images/{id}", get(get_image))
        .route("/v1/images/generations", post(crate::openai::generations))
        .route("/v1/estimate", post(estimate))
        .route("/v1/costs", get(costs))
        .route("/v1/prices", get(crate::prices::prices))
        .route("/v1/admin/prices/reload", post(crate::prices::reload))
        .route("/healthz", get(healthz))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(crate::openapi::openapi_json))
        .merge(crate::dashboard::routes());
    if server.serve_cdn && state.pipeline.store().kind() == imagegate_storage::StoreKind::Local {
        app = app.route("/cdn/{*path}", get(cdn));
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
                .timeout(Duration::from_secs(server.request_timeout_secs.max(1))),
        )
        .layer(axum::middleware::from_fn_with_state(state.clone(), edge))
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
        }))
    }
}

/// What every request passes on its way in and out: its id (the caller's
/// `x-request-id` if sane, echoed back), the request metrics (which count refusals
/// too), then authentication. One middleware, not one per concern: each layer clones
/// the route's service and boxes a future per request, which showed on the
/// cache-hit path.
async fn edge(
    State(state): State<Arc<AppState>>,
    mut req: Request<axum::body::Body>,
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
        let count = crate::dashboard::RequestCount::start(&req);
        let response = match crate::auth::refusal(&state, &mut req).await {
            None => next.run(req).await,
            Some(refused) => refused,
        };
        count.finish(&response);
        response
    };
    let mut response = tracing::Instrument::instrument(answer, span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

pub(crate) fn json_rejection(rejection: JsonRejection) -> ApiError {
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

/// Generate (or fetch from the cache) and deliver.
#[utoipa::path(
    post,
    path = "/v1/images",
    tag = "images",
    request_body(
        content = ImageRequest,
        description = "Only `prompt` is required; the rest default from the profile. `model` is a class \
(`draft`, `standard`, `premium`) or a pinned `provider/model`; `size` is `WIDTHxHEIGHT`; \
`policy` is `cheapest`, `fastest` or `balanced`.",
        example = json!({"prompt": "a lighthouse at dusk, watercolor", "size": "1024x1024", "seed": 42, "variants": [256, 512], "formats": ["avif", "jpeg"], "policy": "cheapest", "cache": "use"})
    ),
    responses(
        (status = 200, description = "The image's files, verdict and what this request cost", body = crate::openapi::ImageBody),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 402, response = crate::openapi::PaymentRequired),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 410, response = crate::openapi::Gone),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 415, response = crate::openapi::UnsupportedMediaType),
        (status = 422, description = "The prompt (`prompt_blocked`) or the generated image (`content_blocked`) was refused", body = crate::openapi::BlockedBody),
        (status = 429, response = crate::openapi::RateLimited),
        (status = 500, response = crate::openapi::Internal),
        (status = 502, response = crate::openapi::BadGateway),
        (status = 503, response = crate::openapi::Unavailable),
        (status = 504, response = crate::openapi::GatewayTimeout),
    ),
)]
async fn create_image(
    State(state): State<Arc<AppState>>,
    Caller(ctx): Caller,
    key: AuthedKey,
    body: Result<Json<ImageRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(json_rejection)?;
    // Republishing replaces files every other key's answers point at.
    if req.cache == imagegate_pipeline::CacheMode::Refresh {
        key.require_admin("`\"cache\": \"refresh\"` (republishing an image)")?;
    }
    let outcome = state.pipeline.generate(&req, &ctx).await?;
    Ok(answer(&state, &outcome))
}

fn answer(state: &AppState, outcome: &Outcome) -> Response {
    let m = &outcome.manifest;
    if m.status == ManifestStatus::Blocked {
        let (status, body) = outcome_body(&state.pipeline, outcome);
        return (status, Json(body)).into_response();
    }
    // A cache hit's whole answer is this body. The manifest's part is rendered once
    // per published manifest; only the cache outcome and this request's cost are
    // written per request (building the URLs each time cost more than the rest of a hit).
    image_response(state, Some(outcome.cache.as_str()), &outcome.stages, m)
}

/// `ImageView` as an `application/json` 200, from the manifest's part as rendered
/// once per manifest: its fields follow `cache` and `cost` (alphabetical order), so
/// the rendered object is spliced in after them without its opening brace. The
/// bytes are the ones serializing `ImageView` whole gives.
fn image_response(
    state: &AppState,
    cache: Option<&'static str>,
    stages: &[StageCost],
    manifest: &Arc<Manifest>,
) -> Response {
    let body = state
        .rendered
        .get(manifest, || {
            serde_json::to_vec(&ManifestView::new(&state.pipeline, manifest))
        })
        .and_then(|rendered| {
            let mut body = Vec::with_capacity(rendered.len() + 512);
            body.push(b'{');
            if let Some(cache) = cache {
                body.extend_from_slice(b"\"cache\":");
                serde_json::to_writer(&mut body, cache)?;
                body.push(b',');
            }
            body.extend_from_slice(b"\"cost\":");
            serde_json::to_writer(&mut body, &CostView::new(stages))?;
            body.push(b',');
            // Never empty: ManifestView always has fields.
            body.extend_from_slice(&rendered[1..]);
            // Debug builds (every test that gets an image answer) check the splice
            // against the whole view serialized the plain way.
            #[cfg(debug_assertions)]
            {
                let whole = serde_json::to_vec(&ImageView {
                    cache,
                    cost: CostView::new(stages),
                    manifest: ManifestView::new(&state.pipeline, manifest),
                })?;
                assert_eq!(
                    String::from_utf8_lossy(&body),
                    String::from_utf8_lossy(&whole),
                    "the spliced image answer differs from ImageView serialized whole"
                );
            }
            Ok(body)
        });
    match body {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("serializing the response: {e}"),
        )
        .into_response(),
    }
}

/// The body (and status) `POST /v1/images` answers for an outcome; `imagegate
/// process` prints the same.
pub fn outcome_body(pipeline: &Pipeline, outcome: &Outcome) -> (StatusCode, serde_json::Value) {
    let m = &outcome.manifest;
    let cost = CostView::new(&outcome.stages);
    if m.status == ManifestStatus::Blocked {
        let body = serde_json::json!({
            "error": {"code": "content_blocked", "message": "the generated image was blocked by the safety policy"},
            "id": m.id,
            "cache": outcome.cache.as_str(),
            "safety": SafetyView::from(&m.safety),
            "cost": cost,
        });
        return (StatusCode::UNPROCESSABLE_ENTITY, body);
    }
    let body = ImageView {
        cache: Some(outcome.cache.as_str()),
        cost,
        manifest: ManifestView::new(pipeline, m),
    };
    (
        StatusCode::OK,
        serde_json::to_value(&body).expect("the image view serializes"),
    )
}

// The views below spell the JSON of API.md. Fields are in alphabetical order, the
// order these bodies had when they were built as `serde_json::Value` maps.

/// A published image with what this request cost.
#[derive(serde::Serialize)]
struct ImageView<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    cache: Option<&'static str>,
    cost: CostView<'a>,
    #[serde(flatten)]
    manifest: ManifestView<'a>,
}

/// A verdict as the API shows it.
#[derive(serde::Serialize)]
struct SafetyView {
    action: &'static str,
    /// Widened as the `Value` maps did, so the digits stay the same.
    nsfw_score: Option<f64>,
}

impl From<&imagegate_core::SafetyVerdict> for SafetyView {
    fn from(v: &imagegate_core::SafetyVerdict) -> SafetyView {
        SafetyView {
            action: v.action.as_str(),
            nsfw_score: v.nsfw_score.map(f64::from),
        }
    }
}

#[derive(serde::Serialize)]
struct CostView<'a> {
    stages: Vec<StageView<'a>>,
    total_usd: f64,
}

impl<'a> CostView<'a> {
    fn new(stages: &'a [StageCost]) -> CostView<'a> {
        let total: imagegate_core::Micros = stages.iter().map(|s| s.micros).sum();
        CostView {
            total_usd: total.as_usd(),
            stages: stages
                .iter()
                .map(|s| StageView {
                    cpu_ms: (s.cpu_ms * 10.0).round() / 10.0,
                    detail: (!s.detail.is_null()).then_some(&s.detail),
                    ms: (s.wall_ms * 10.0).round() / 10.0,
                    stage: s.stage.as_str(),
                    usd: s.micros.as_usd(),
                })
                .collect(),
        }
    }
}

#[derive(serde::Serialize)]
struct StageView<'a> {
    cpu_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a serde_json::Value>,
    ms: f64,
    stage: &'static str,
    usd: f64,
}

#[derive(serde::Serialize)]
struct ManifestView<'a> {
    created_at: &'a str,
    id: ContentKey,
    images: Vec<VariantView>,
    model: &'a str,
    provider: &'a str,
    safety: SafetyView,
    srcset: BTreeMap<&'static str, String>,
    status: ManifestStatus,
}

#[derive(serde::Serialize)]
struct VariantView {
    bytes: u64,
    format: ImageFormat,
    height: u32,
    url: String,
    width: u32,
}

impl<'a> ManifestView<'a> {
    fn new(pipeline: &Pipeline, m: &'a Manifest) -> ManifestView<'a> {
        let images: Vec<VariantView> = m
            .images
            .iter()
            .map(|v| VariantView {
                bytes: v.bytes,
                format: v.format,
                height: v.height,
                url: pipeline.url_of(v),
                width: v.width,
            })
            .collect();
        // Formats in ImageFormat order, widths in manifest order, as before.
        let mut by_format: BTreeMap<ImageFormat, String> = BTreeMap::new();
        for v in &images {
            let list = by_format.entry(v.format).or_default();
            if !list.is_empty() {
                list.push_str(", ");
            }
            list.push_str(&v.url);
            list.push(' ');
            list.push_str(&v.width.to_string());
            list.push('w');
        }
        ManifestView {
            created_at: &m.created_at,
            id: m.id,
            model: &m.model,
            provider: &m.provider,
            safety: SafetyView::from(&m.safety),
            srcset: by_format
                .into_iter()
                .map(|(f, list)| (f.extension(), list))
                .collect(),
            status: m.status,
            images,
        }
    }
}

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
        (status = 422, description = "The prompt was refused (`prompt_blocked`)", body = crate::openapi::ErrorBody),
        (status = 429, response = crate::openapi::RateLimited),
        (status = 503, response = crate::openapi::Unavailable),
        (status = 504, response = crate::openapi::GatewayTimeout),
    ),
)]
async fn estimate(
    State(state): State<Arc<AppState>>,
    body: Result<Json<ImageRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(json_rejection)?;
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

/// The manifest of a key: files, URLs, safety verdict and the original cost.
#[utoipa::path(
    get,
    path = "/v1/images/{id}",
    tag = "images",
    params(("id" = String, Path, description = "The content key: 64 lowercase hex digits", pattern = "^[0-9a-f]{64}$")),
    responses(
        (status = 200, description = "The image as first generated, with that generation's cost", body = crate::openapi::ManifestBody),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 429, response = crate::openapi::RateLimited),
        (status = 500, response = crate::openapi::Internal),
        (status = 503, response = crate::openapi::Unavailable),
        (status = 504, response = crate::openapi::GatewayTimeout),
    ),
)]
async fn get_image(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    // A path that is not UTF-8 once percent-decoded gets JSON like any bad input.
    let Path(id) =
        id.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", e.body_text()))?;
    let key: ContentKey = id.parse().map_err(|e: imagegate_core::key::BadKey| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", e.to_string())
    })?;
    let manifest = state.pipeline.manifest(key).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no image with id {key}"),
        )
    })?;
    Ok(image_response(&state, None, &manifest.stages, &manifest))
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "Alive", body = crate::openapi::StatusBody),
        (status = 503, response = crate::openapi::Unavailable),
        (status = 504, response = crate::openapi::GatewayTimeout),
    ),
)]
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: the store and the ledger answer.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "Ready for traffic", body = crate::openapi::StatusBody),
        (status = 503, response = crate::openapi::Unavailable),
        (status = 504, response = crate::openapi::GatewayTimeout),
    ),
)]
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    match state.pipeline.ready().await {
        Ok(()) => Json(serde_json::json!({"status": "ready"})).into_response(),
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
        (status = 503, response = crate::openapi::Unavailable),
        (status = 504, response = crate::openapi::GatewayTimeout),
    ),
)]
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Image files of the local directory store (only when that store is configured),
/// with immutable caching and `ETag` revalidation; never manifests or ledger data.
#[utoipa::path(
    get,
    path = "/cdn/{path}",
    tag = "operations",
    security(()),
    params(
        ("path" = String, Path, description = "The object's key, e.g. `i/ab/<id>/768.avif`"),
        ("If-None-Match" = Option<String>, Header, description = "ETags the client holds; `*` matches any"),
    ),
    responses(
        (status = 200, description = "The file", content(
            (Vec<u8> = "image/avif"),
            (Vec<u8> = "image/webp"),
            (Vec<u8> = "image/jpeg"),
            (Vec<u8> = "image/png"),
        )),
        (status = 304, description = "Not modified: the client's ETag matches"),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::Internal),
        (status = 503, response = crate::openapi::Unavailable),
        (status = 504, response = crate::openapi::GatewayTimeout),
    ),
)]
async fn cdn(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such object");
    // Not UTF-8 once percent-decoded: no object has such a key.
    let Ok(Path(path)) = path else {
        return Err(not_found());
    };
    // Image files only: never a manifest (costs, routing, provider errors), not even
    // one an older release published beside the images, nor temp or private files.
    if path.starts_with('.')
        || imagegate_storage::validate_key(&path).is_err()
        || !imagegate_storage::is_image_key(&path)
    {
        return Err(not_found());
    }
    let object = state
        .pipeline
        .store()
        .get(&path)
        .await
        .map_err(imagegate_pipeline::PipelineError::from)?
        .ok_or_else(not_found)?;
    let etag = HeaderValue::from_str(&object.etag).expect("etags are hex in quotes");
    let cache_control = HeaderValue::from_static(imagegate_storage::IMMUTABLE_CACHE_CONTROL);
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == object.etag || t.trim() == "*")
        });
    if matches {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag), (header::CACHE_CONTROL, cache_control)],
        )
            .into_response());
    }
    let content_type =
        HeaderValue::from_str(&object.content_type).expect("content types are ASCII");
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, cache_control),
        ],
        object.bytes,
    )
        .into_response())
}

/// `GET /v1/costs` parameters; unknown ones are refused so a typo is not silently
/// ignored.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CostsParams {
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
        (status = 200, description = "The report", body = crate::openapi::CostReportBody),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 429, response = crate::openapi::RateLimited),
        (status = 503, response = crate::openapi::Unavailable),
        (status = 504, response = crate::openapi::GatewayTimeout),
    ),
)]
async fn costs(
    State(state): State<Arc<AppState>>,
    caller: AuthedKey,
    params: Result<axum::extract::Query<CostsParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let bad = |code: &'static str, e: imagegate_ledger::LedgerError| {
        ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string())
    };
    let axum::extract::Query(params) = params
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let group_by =
        imagegate_ledger::Dimension::parse_list(params.group_by.as_deref().unwrap_or(""))
            .map_err(|e| bad("invalid_group_by", e))?;
    let query = report_query(&caller, group_by, params.since, params.until, params.key)?;
    let report = state
        .pipeline
        .ledger()
        .report(&query)
        .await
        .map_err(|e| match e {
            imagegate_ledger::LedgerError::BadReport(_) => bad("invalid_time", e),
            e => ApiError::from(imagegate_pipeline::PipelineError::from(e)),
        })?;
    Ok(Json(report).into_response())
}
