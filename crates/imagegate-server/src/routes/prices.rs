//! The price book over HTTP: `GET /v1/prices` shows the book in force, and
//! `POST /v1/admin/prices/reload` reads its file again (as SIGHUP does).

use crate::error::ApiError;
use crate::views::PricesView;
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;

/// The book in force: per provider and model, a 1024x1024 image at each quality tier
/// with the surge and discount in force now, status (current, deprecated, retired)
/// and where the price was read.
#[utoipa::path(
    get,
    path = "/v1/prices",
    tag = "costs",
    responses(
        (status = 200, description = "The price book in force", body = PricesView),
        crate::openapi::Keyed,
        crate::openapi::Overloaded,
    ),
)]
pub(crate) async fn prices(State(state): State<Arc<AppState>>) -> Response {
    let book = state.pipeline.prices().current();
    let at = chrono::Utc::now();
    Json(PricesView {
        version: book.version().to_string(),
        origin: book.origin().to_string(),
        at,
        models: book.listing(at),
    })
    .into_response()
}

/// Reads the price book's file again and installs it; a broken file is refused with
/// its line and column, and the old book stays in force. Admin keys only (or the
/// anonymous loopback operator while no key exists).
#[utoipa::path(
    post,
    path = "/v1/admin/prices/reload",
    tag = "costs",
    responses(
        (status = 200, description = "Installed (or unchanged)", body = imagegate_providers::Reloaded),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 422, response = crate::openapi::BadPriceBook),
        crate::openapi::Keyed,
        crate::openapi::Overloaded,
    ),
)]
pub(crate) async fn reload(
    State(state): State<Arc<AppState>>,
    caller: crate::auth::AuthedKey,
) -> Result<Response, ApiError> {
    caller.require_admin("reloading prices")?;
    let reloaded = state.pipeline.prices().reload_file().map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_price_book",
            e.to_string(),
        )
    })?;
    Ok(Json(reloaded).into_response())
}
