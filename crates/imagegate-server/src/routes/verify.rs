//! `POST /v1/verify`: where a file came from (this service's invisible watermark,
//! and the request that made the picture), for an uploaded file or a URL under
//! this service's own CDN.

use crate::auth::AuthedKey;
use crate::{ApiError, AppState};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use imagegate_pipeline::verify::VerifyReport;
use std::sync::Arc;

/// The largest upload `POST /v1/verify` reads: files, not prompts, so above
/// `server.max_body_bytes` (a provider's 2048 px PNG is a few megabytes).
pub(crate) const MAX_UPLOAD_BYTES: usize = 16 * 1024 * 1024;

/// A file to verify by its URL: only URLs under this service's CDN are fetched
/// (read from the object store directly, never over the network).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyUrl {
    /// A delivered file's URL, as `POST /v1/images` answered it.
    pub url: String,
}

/// Reads a file's provenance: the invisible watermark (with its confidence) and,
/// when its payload names a picture in this ledger, the request that made it
/// (shown to admin keys and to the key that asked for it).
#[utoipa::path(
    post,
    path = "/v1/verify",
    tag = "images",
    request_body(
        description = "The file itself (`image/*` or `application/octet-stream`), or JSON `{\"url\": ...}` naming a file under this service's CDN",
        content(
            (Vec<u8> = "image/avif"),
            (Vec<u8> = "image/jpeg"),
            (Vec<u8> = "image/png"),
            (Vec<u8> = "image/webp"),
            (Vec<u8> = "application/octet-stream"),
            (VerifyUrl = "application/json"),
        ),
    ),
    responses(
        (status = 200, description = "What the file says about where it came from", body = VerifyReport),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 404, response = crate::openapi::NotFound),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, description = "The file is not an image this service can read (`bad_image`)", body = crate::error::ErrorBody),
        (status = 500, response = crate::openapi::Internal),
        crate::openapi::Keyed,
        crate::openapi::Overloaded,
    ),
)]
pub(crate) async fn verify(
    State(state): State<Arc<AppState>>,
    caller: AuthedKey,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    let file = if is_json {
        let VerifyUrl { url } = serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("expected {{\"url\": \"...\"}}: {e}"),
            )
        })?;
        fetch_own(&state, &url).await?
    } else {
        if body.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "empty_body",
                "send the file as the body, or JSON {\"url\": ...} for a file on this service's CDN",
            ));
        }
        body
    };
    let mut report = state.pipeline.verify(file).await.map_err(|e| match e {
        imagegate_pipeline::PipelineError::BadImage(m) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_image", m)
        }
        e => e.into(),
    })?;
    // Tenants see their own: who asked, and what it cost, only to admins and the
    // key that asked.
    if let Some(origin) = &report.watermark.origin {
        if !(caller.admin || caller.id.is_some() && caller.id == origin.api_key) {
            report.watermark.origin = None;
        }
    }
    Ok(Json(report).into_response())
}

/// The bytes of `url`, a file under this service's CDN (its object store's public
/// base, absolute or, for the built-in `/cdn/`, by path on any host).
async fn fetch_own(state: &AppState, url: &str) -> Result<Bytes, ApiError> {
    let store = state.pipeline.store();
    let base = store.public_url("");
    let path_of = |u: &str| -> String {
        match u.split_once("://") {
            Some((_, rest)) => rest
                .find('/')
                .map_or(String::new(), |i| rest[i..].to_string()),
            None => u.to_string(),
        }
    };
    let key = url
        .strip_prefix(&base)
        .map(str::to_string)
        .or_else(|| {
            // A relative base (the built-in `/cdn/` when no public URL is set): the
            // answers' URLs name whatever host the caller used, so the path decides.
            base.starts_with('/')
                .then(|| path_of(url).strip_prefix(&base).map(str::to_string))
                .flatten()
        })
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "foreign_url",
                format!("only files under this service's CDN ({base}) can be verified by URL; upload other files"),
            )
        })?;
    let key = key.split(['?', '#']).next().unwrap_or_default().to_string();
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such file on this service's CDN",
        )
    };
    if imagegate_storage::validate_key(&key).is_err() || !imagegate_storage::is_image_key(&key) {
        return Err(not_found());
    }
    let object = store
        .get(&key)
        .await
        .map_err(imagegate_pipeline::PipelineError::from)?
        .ok_or_else(not_found)?;
    Ok(object.bytes)
}
