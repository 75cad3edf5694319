//! `GET /cdn/{path}`: the local directory store's image files, for a deployment
//! without a CDN in front of its bucket.

use crate::{ApiError, AppState};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

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
        crate::openapi::Overloaded,
    ),
)]
pub(crate) async fn cdn(
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
