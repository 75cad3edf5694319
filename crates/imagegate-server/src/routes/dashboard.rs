//! What operators look at: `GET /dashboard` (one static page that draws its charts
//! from the JSON routes in the browser) and `GET /v1/delivery` (the delivery
//! projection and what-ifs of [`imagegate_ledger::project_delivery`]).
//!
//! The page carries no data and no keys: it fetches `/v1/costs` and `/v1/delivery`
//! with the browser's same-origin credentials (plus a bearer key the user types, kept
//! in session storage, once the server asks for one), so it works unchanged behind
//! authentication.

use crate::error::QueryParams;
use crate::{ApiError, AppState};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use imagegate_ledger::DeliveryAssumptions;
use imagegate_pipeline::PipelineConfig;
use std::sync::Arc;

/// The page: HTML, CSS and script in one file, no build step, nothing fetched from
/// another origin.
const PAGE: &str = include_str!("../../assets/dashboard.html");

/// Only this origin's JSON routes may be reached from the page.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

#[utoipa::path(
    get,
    path = "/dashboard",
    tag = "costs",
    security(()),
    responses(
        (status = 200, description = "The cost dashboard: one HTML page that draws its charts from `/v1/costs` and `/v1/delivery`", content_type = "text/html", body = String),
        crate::openapi::Overloaded,
    ),
)]
pub(crate) async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

/// What the delivery projection assumes under `config`: its egress price and views
/// per image, and the widths and formats its profiles store. `imagegate report`
/// projects with the same.
pub fn delivery_assumptions(config: &PipelineConfig) -> DeliveryAssumptions {
    let mut assume = DeliveryAssumptions {
        egress_usd_per_gb: config.costs.egress_usd_per_gb,
        expected_views_per_image: config.costs.expected_views_per_image,
        ..DeliveryAssumptions::default()
    };
    for p in config.profiles.values() {
        assume.widths.extend(&p.variants);
        assume.formats.extend(&p.formats);
    }
    assume
}

/// `GET /v1/delivery` parameters; unknown ones are refused, as for `/v1/costs`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeliveryParams {
    since: Option<String>,
    until: Option<String>,
    key: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/delivery",
    tag = "costs",
    params(
        ("since" = Option<String>, Query, description = "Inclusive start: a duration before now (`7d`), an RFC 3339 time or a UTC day; 30 days before `until` (or now) when absent"),
        ("until" = Option<String>, Query, description = "Exclusive end, in the same forms as `since`"),
        ("key" = Option<String>, Query, description = "Only files stored for this API key id's requests; as for `/v1/costs`, a key sees its own only"),
    ),
    responses(
        (status = 200, description = "Stored bytes per width and format, the delivery projection and what-ifs", body = Object),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        crate::openapi::Keyed,
        crate::openapi::Overloaded,
    ),
)]
pub(crate) async fn delivery(
    State(state): State<Arc<AppState>>,
    caller: crate::auth::AuthedKey,
    QueryParams(params): QueryParams<DeliveryParams>,
) -> Result<Response, ApiError> {
    let query = crate::routes::costs::report_query(
        &caller,
        Vec::new(),
        params.since,
        params.until,
        params.key,
    )?;
    let rows = state
        .pipeline
        .ledger()
        .delivery(&query)
        .await
        .map_err(crate::routes::costs::report_error)?;
    let projection =
        imagegate_ledger::project_delivery(&rows, &delivery_assumptions(state.pipeline.config()));
    let mut body = serde_json::to_value(&projection).unwrap_or_default();
    let time =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    body["since"] = query.since.map(time).into();
    body["until"] = query.until.map(time).into();
    Ok(Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        // The SVG namespace is a name, not an address anything is fetched from.
        let page = PAGE.replace("\"http://www.w3.org/2000/svg\"", "");
        for needle in ["http://", "https://", "//cdn", "<link", "src=", "@import"] {
            assert!(!page.contains(needle), "the page mentions {needle:?}");
        }
        for id in [
            "chart-stage",
            "chart-provider",
            "chart-cache",
            "chart-bytes",
        ] {
            assert!(PAGE.contains(&format!("id=\"{id}\"")), "no #{id}");
        }
        assert!(PAGE.contains("credentials: \"same-origin\""));
    }
}
