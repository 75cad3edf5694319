//! `POST /v1/images` and `GET /v1/images/{id}`: generate (or fetch) and deliver.

use crate::auth::AuthedKey;
use crate::error::ErrorDetail;
use crate::error::JsonBody;
use crate::middleware::Caller;
use crate::views::{BlockedView, CostView, ImageView, ManifestView, SafetyView};
use crate::{ApiError, AppState};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use imagegate_core::{ContentKey, Manifest, ManifestStatus, StageCost};
use imagegate_pipeline::{ImageRequest, Outcome, Pipeline};
use std::sync::Arc;

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
        (status = 200, description = "The image's files, verdict and what this request cost", body = ImageView),
        (status = 202, description = "Deferred (`deliver_by`): the job, to poll at `status_url` (also in `Location`)", body = crate::routes::jobs::JobView),
        (status = 402, response = crate::openapi::PaymentRequired),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 410, response = crate::openapi::Gone),
        (status = 422, description = "The prompt (`prompt_blocked`) or the generated image (`content_blocked`) was refused", body = BlockedView),
        (status = 500, response = crate::openapi::Internal),
        (status = 502, response = crate::openapi::BadGateway),
        crate::openapi::Keyed,
        crate::openapi::Overloaded,
        crate::openapi::BadBody,
    ),
)]
pub(crate) async fn create_image(
    State(state): State<Arc<AppState>>,
    Caller(ctx): Caller,
    key: AuthedKey,
    JsonBody(req): JsonBody<ImageRequest>,
) -> Result<Response, ApiError> {
    // Republishing replaces files every other key's answers point at.
    if req.cache == imagegate_pipeline::CacheMode::Refresh {
        key.require_admin("`\"cache\": \"refresh\"` (republishing an image)")?;
    }
    if req.deliver_by.is_some() {
        return crate::routes::jobs::accept(&state, &ctx, &req).await;
    }
    if req.webhook_url.is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "webhook_url announces a deferred job's end: it needs deliver_by",
        )
        .with_param("webhook_url"));
    }
    let outcome = state.pipeline.generate(&req, &ctx).await?;
    Ok(answer(&state, &outcome))
}

pub(crate) fn answer(state: &AppState, outcome: &Outcome) -> Response {
    let m = &outcome.manifest;
    if m.status == ManifestStatus::Blocked {
        let (status, body) = outcome_body(&state.pipeline, outcome);
        return (status, Json(body)).into_response();
    }
    // A cache hit's whole answer is this body. The manifest's part is rendered once
    // per published manifest; only the cache outcome and this request's cost are
    // written per request (building the URLs each time cost more than the rest of a hit).
    image_response(state, Some(outcome.cache), &outcome.stages, m)
}

/// `ImageView` as an `application/json` 200, from the manifest's part as rendered
/// once per manifest: its fields follow `cache` and `cost` (alphabetical order), so
/// the rendered object is spliced in after them without its opening brace. The
/// bytes are the ones serializing `ImageView` whole gives.
pub(crate) fn image_response(
    state: &AppState,
    cache: Option<imagegate_ledger::CacheOutcome>,
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
                serde_json::to_writer(&mut body, &cache)?;
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
        let body = BlockedView {
            cache: outcome.cache,
            cost,
            error: ErrorDetail {
                code: "content_blocked".into(),
                message: "the generated image was blocked by the safety policy".into(),
            },
            id: m.id,
            safety: SafetyView::from(&m.safety),
        };
        let body = serde_json::to_value(&body).expect("the blocked view serializes");
        return (StatusCode::UNPROCESSABLE_ENTITY, body);
    }
    let body = ImageView {
        cache: Some(outcome.cache),
        cost,
        manifest: ManifestView::new(pipeline, m),
    };
    (
        StatusCode::OK,
        serde_json::to_value(&body).expect("the image view serializes"),
    )
}

/// The manifest of a key: files, URLs, safety verdict and the original cost.
#[utoipa::path(
    get,
    path = "/v1/images/{id}",
    tag = "images",
    params(("id" = String, Path, description = "The content key: 64 lowercase hex digits", pattern = "^[0-9a-f]{64}$")),
    responses(
        (status = 200, description = "The image as first generated, with that generation's cost", body = ImageView),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::Internal),
        crate::openapi::Keyed,
        crate::openapi::Overloaded,
    ),
)]
pub(crate) async fn get_image(
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
