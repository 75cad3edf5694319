//! `GET /openapi.json`: the HTTP API as an OpenAPI 3.1 document, generated from the
//! handlers' `#[utoipa::path]` attributes and the `ToSchema` derives of the request
//! types.
//!
//! Handlers build most answers as JSON values, so the `*Body` types here describe
//! those shapes for the document; nothing constructs them. `scripts/schemathesis.sh`
//! checks every answer of the real server against the document (schema, status,
//! content type), which keeps the two in step.

use crate::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use imagegate_core::{ImageFormat, ManifestStatus, SafetyAction, Stage};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{self, RefOr};
use utoipa::{OpenApi, ToSchema};

/// How authentication works, for the document's description.
const AUTH: &str = "Send `Authorization: Bearer <api key>` (keys are made with \
`imagegate keys create`). While no key exists at all, the server accepts anonymous \
requests from loopback clients only; once one exists, every request needs a key. \
`/healthz`, `/readyz`, `/metrics`, `/cdn/...` and `/openapi.json` are open.";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "imagegate",
        description = "Image generation at the lowest total cost, with what every stage cost. \
Errors are `{\"error\": {\"code\", \"message\"}}` (OpenAI's error shape on \
`/v1/images/generations`); 429 and 503 carry `Retry-After`. Any method a route does \
not serve answers 405 `method_not_allowed`, any unknown path 404 `not_found`.",
    ),
    paths(
        crate::routes::create_image,
        crate::routes::get_image,
        crate::openai::generations,
        crate::routes::estimate,
        crate::routes::costs,
        crate::prices::prices,
        crate::prices::reload,
        crate::dashboard::delivery,
        crate::dashboard::page,
        crate::routes::healthz,
        crate::routes::ready,
        crate::routes::metrics,
        crate::routes::cdn,
        openapi_json,
    ),
    components(
        schemas(ErrorBody, OpenAiErrorBody),
        responses(
            BadRequest,
            Unauthorized,
            PaymentRequired,
            Forbidden,
            Gone,
            BadPriceBook,
            NotFound,
            PayloadTooLarge,
            UnsupportedMediaType,
            RateLimited,
            Internal,
            BadGateway,
            Unavailable,
            GatewayTimeout,
            OpenAiBadRequest,
            OpenAiUnauthorized,
            OpenAiPaymentRequired,
            OpenAiPayloadTooLarge,
            OpenAiUnsupportedMediaType,
            OpenAiRateLimited,
            OpenAiInternal,
            OpenAiBadGateway,
            OpenAiUnavailable,
            OpenAiGatewayTimeout,
        ),
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "images", description = "Generate, fetch and price images"),
        (name = "openai", description = "The OpenAI Images API"),
        (name = "costs", description = "What was spent"),
        (name = "operations", description = "Probes, metrics, the local CDN and this document"),
    ),
)]
pub struct ApiDoc;

/// The `bearer` scheme, and the global requirement: a key, or none (anonymous from
/// loopback while no key exists).
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("imagegate API key")
                    .description(Some(AUTH))
                    .build(),
            ),
        );
        doc.security = Some(vec![
            SecurityRequirement::new("bearer", Vec::<String>::new()),
            SecurityRequirement::default(),
        ]);
    }
}

/// The document this server answers: every route it registers, `/cdn/{path}` only
/// when it serves the local store.
pub fn document(serves_cdn: bool) -> openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    if !serves_cdn {
        doc.paths.paths.remove("/cdn/{path}");
    }
    doc
}

/// The OpenAPI 3.1 document of this server.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "This document", content_type = "application/json", body = Object),
        (status = 503, response = Unavailable),
        (status = 504, response = GatewayTimeout),
    ),
)]
pub(crate) async fn openapi_json(State(state): State<Arc<AppState>>) -> Response {
    // The same condition under which `routes::router` registers `/cdn/{*path}`.
    let serves_cdn = state.pipeline.config().server.serve_cdn
        && state.pipeline.store().kind() == imagegate_storage::StoreKind::Local;
    Json(document(serves_cdn)).into_response()
}

// ---- bodies ---------------------------------------------------------------------------

/// Every error: a stable snake_case `code` to switch on, and text for a person.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// e.g. `invalid_request`, `invalid_json`, `missing_api_key`, `budget_exhausted`,
    /// `content_blocked`, `rate_limited`, `provider_failed`, `overloaded`.
    pub code: String,
    pub message: String,
}

/// A `422` of `POST /v1/images`. A blocked generated image (`content_blocked`) also
/// names its key, the verdict and what the request cost; a refused prompt
/// (`prompt_blocked`) has only the error.
#[derive(Serialize, ToSchema)]
pub struct BlockedBody {
    pub error: ErrorDetail,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safety: Option<SafetyBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<CostBody>,
}

/// OpenAI's error shape, so its client libraries raise their usual exceptions.
#[derive(Serialize, ToSchema)]
pub struct OpenAiErrorBody {
    pub error: OpenAiErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct OpenAiErrorDetail {
    pub message: String,
    /// `invalid_request_error`, `insufficient_quota`, `requests` or `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, when one is.
    #[schema(required = true)]
    pub param: Option<String>,
    /// imagegate's error code (`content_policy_violation` for blocked content).
    pub code: String,
}

/// How the cache answered.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CacheState {
    /// Served from the cache; the cost is that of the hit.
    Hit,
    /// This request ran the generation.
    Miss,
    /// Generated without the cache (`"cache": "bypass"`).
    Bypass,
}

#[derive(Serialize, ToSchema)]
pub struct SafetyBody {
    /// The classifier's score in 0..=1; null when no classifier ran.
    #[schema(required = true)]
    pub nsfw_score: Option<f64>,
    pub action: SafetyAction,
}

/// One stored file of an image.
#[derive(Serialize, ToSchema)]
pub struct ImageFile {
    pub width: u32,
    pub height: u32,
    pub format: ImageFormat,
    pub url: String,
    pub bytes: u64,
}

#[derive(Serialize, ToSchema)]
pub struct StageCostBody {
    pub stage: Stage,
    pub usd: f64,
    /// Wall time in milliseconds.
    pub ms: f64,
    /// CPU time in milliseconds.
    pub cpu_ms: f64,
    /// Stage-specific facts (provider usage, widths, bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
pub struct CostBody {
    pub total_usd: f64,
    pub stages: Vec<StageCostBody>,
}

/// An image: its files, `srcset` strings per format, the safety verdict and its cost.
#[derive(Serialize, ToSchema)]
pub struct ManifestBody {
    /// The content key.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub id: String,
    pub status: ManifestStatus,
    pub provider: String,
    pub model: String,
    pub images: Vec<ImageFile>,
    /// Format extension to a `srcset` value (`<url> 256w, <url> 512w`).
    pub srcset: BTreeMap<String, String>,
    pub safety: SafetyBody,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// `GET /v1/images/{id}`: what the first generation cost; `POST /v1/images`:
    /// what this request cost.
    pub cost: CostBody,
}

/// `POST /v1/images`: the image and how the cache answered.
#[derive(Serialize, ToSchema)]
pub struct ImageBody {
    #[serde(flatten)]
    pub manifest: ManifestBody,
    pub cache: CacheState,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PolicyName {
    Cheapest,
    Fastest,
    Balanced,
}

/// A provider's circuit breaker.
#[derive(Serialize, ToSchema)]
pub struct BreakerBody {
    /// `closed`, `open` or `half_open`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
}

/// One provider model the router considered.
#[derive(Serialize, ToSchema)]
pub struct CandidateBody {
    pub provider: String,
    pub model: String,
    /// Expected cost in micro-dollars.
    pub expected: i64,
    pub expected_usd: f64,
    /// `price_book`, or `unpriced` (a model offered without a price: its cost is
    /// unknown and recorded as such, never as $0).
    pub price_source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub surge_multiplier: Option<f64>,
    pub expected_latency_ms: u64,
    /// Policy score, lower is better; absent when skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    pub breaker: BreakerBody,
    /// Why it is not called; the first word is the kind: `retired`, `unpriceable`,
    /// `unpriced_under_cap`, `circuit_open` or `over_max_cost`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_reason: Option<String>,
}

/// `POST /v1/estimate`: what the router would do; nothing is generated.
#[derive(Serialize, ToSchema)]
pub struct EstimateBody {
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub id: String,
    /// Whether the key is already in the cache (a request would be a hit).
    pub cached: bool,
    pub policy: PolicyName,
    /// `WIDTHxHEIGHT`.
    pub size: String,
    pub candidates: Vec<CandidateBody>,
    /// The candidate that would be called first; null when none is eligible.
    #[schema(required = true)]
    pub chosen: Option<CandidateBody>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DimensionName {
    Stage,
    Provider,
    Model,
    Key,
    Day,
}

/// Sums over a group; the grouped dimensions come first (null where a row has none).
#[derive(Serialize, ToSchema)]
pub struct ReportRowBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The API key id (never the secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// UTC day, `YYYY-MM-DD`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    pub requests: i64,
    pub micros: i64,
    pub usd: f64,
    pub wall_ms: f64,
    pub cpu_ms: f64,
    pub bytes_out: i64,
}

#[derive(Serialize, ToSchema)]
pub struct CacheEconomicsBody {
    pub hits: i64,
    pub misses: i64,
    pub bypasses: i64,
    /// hits / (hits + misses); null before any.
    #[schema(required = true)]
    pub hit_ratio: Option<f64>,
    pub saved_micros: i64,
    pub saved_usd: f64,
    pub hits_without_original: i64,
}

/// `GET /v1/costs`.
#[derive(Serialize, ToSchema)]
pub struct CostReportBody {
    pub group_by: Vec<DimensionName>,
    /// RFC 3339; null when unbounded.
    #[schema(required = true)]
    pub since: Option<String>,
    #[schema(required = true)]
    pub until: Option<String>,
    pub rows: Vec<ReportRowBody>,
    pub total: ReportRowBody,
    pub cache: CacheEconomicsBody,
}

/// One image of an OpenAI answer, as `response_format` asked.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum OpenAiImageData {
    Url {
        /// The CDN URL of the profile's widest variant in its first format.
        url: String,
    },
    B64Json {
        b64_json: String,
    },
}

#[derive(Serialize, ToSchema)]
pub struct OpenAiImageFacts {
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub id: String,
    pub cache: CacheState,
    pub cost_usd: f64,
}

/// Beyond OpenAI's shape (its clients ignore unknown fields).
#[derive(Serialize, ToSchema)]
pub struct OpenAiExtras {
    pub images: Vec<OpenAiImageFacts>,
}

#[derive(Serialize, ToSchema)]
pub struct OpenAiInputTokens {
    pub text_tokens: u64,
    pub image_tokens: u64,
}

/// Present when every generation of the request reported tokens.
#[derive(Serialize, ToSchema)]
pub struct OpenAiUsage {
    pub total_tokens: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub input_tokens_details: OpenAiInputTokens,
}

/// `POST /v1/images/generations`.
#[derive(Serialize, ToSchema)]
pub struct OpenAiImagesBody {
    /// Unix seconds.
    pub created: i64,
    pub data: Vec<OpenAiImageData>,
    pub imagegate: OpenAiExtras,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<OpenAiUsage>,
}

#[derive(Serialize, ToSchema)]
pub struct StatusBody {
    /// `ok` (`/healthz`) or `ready` (`/readyz`).
    pub status: String,
}

// ---- shared error answers ---------------------------------------------------------------

/// Error answers shared by the routes, as response components: one per status,
/// imagegate's shape and OpenAI's.
macro_rules! error_response {
    ($name:ident, $schema:literal, $description:literal) => {
        error_response!($name, $schema, $description, retry_after = false);
    };
    ($name:ident, $schema:literal, $description:literal, retry_after = $retry:literal) => {
        pub struct $name;

        impl<'r> utoipa::ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<openapi::Response>) {
                let body = openapi::ContentBuilder::new()
                    .schema(Some(openapi::Ref::from_schema_name($schema)))
                    .build();
                let mut response = openapi::ResponseBuilder::new()
                    .description($description)
                    .content("application/json", body);
                if $retry {
                    response = response.header(
                        "Retry-After",
                        openapi::HeaderBuilder::new()
                            .schema(
                                openapi::ObjectBuilder::new()
                                    .schema_type(openapi::schema::Type::Integer)
                                    .minimum(Some(1)),
                            )
                            .description(Some("Seconds to wait before trying again"))
                            .build(),
                    );
                }
                (stringify!($name), response.build().into())
            }
        }
    };
}

error_response!(
    BadRequest,
    "ErrorBody",
    "Bad input: malformed JSON, an unknown or out-of-range field, an unknown profile or model"
);
error_response!(
    Unauthorized,
    "ErrorBody",
    "No valid API key (`missing_api_key`, `invalid_api_key`, `revoked_api_key`)"
);
error_response!(
    PaymentRequired,
    "ErrorBody",
    "Over `max_cost_usd` (`cost_limit_exceeded`) or the key's budget (`budget_exhausted`)"
);
error_response!(
    Forbidden,
    "ErrorBody",
    "The key's scope does not allow it (`admin_required`): another key's costs, or `cache: refresh`"
);
error_response!(NotFound, "ErrorBody", "No such image or file");
error_response!(
    Gone,
    "ErrorBody",
    "The model named was retired by its provider (`model_retired`); the message names its replacement"
);
error_response!(
    BadPriceBook,
    "ErrorBody",
    "The price book file does not parse or does not price every offered model (`bad_price_book`); the old book stays in force"
);
error_response!(
    PayloadTooLarge,
    "ErrorBody",
    "The body is larger than `server.max_body_bytes`"
);
error_response!(
    UnsupportedMediaType,
    "ErrorBody",
    "The body is not sent as `Content-Type: application/json`"
);
error_response!(
    RateLimited,
    "ErrorBody",
    "Too many requests for this key, or the provider's rate limit",
    retry_after = true
);
error_response!(Internal, "ErrorBody", "A bug or a refused store write");
error_response!(
    BadGateway,
    "ErrorBody",
    "Every provider failed, or returned an unusable image"
);
error_response!(
    Unavailable,
    "ErrorBody",
    "Overloaded (queues full), or the store or ledger is unreachable",
    retry_after = true
);
error_response!(
    GatewayTimeout,
    "ErrorBody",
    "The providers, or the whole request, took longer than allowed"
);
error_response!(
    OpenAiBadRequest,
    "OpenAiErrorBody",
    "Bad input, or content refused (`content_policy_violation`)"
);
error_response!(OpenAiUnauthorized, "OpenAiErrorBody", "No valid API key");
error_response!(
    OpenAiPaymentRequired,
    "OpenAiErrorBody",
    "Over the key's budget (`insufficient_quota`)"
);
error_response!(
    OpenAiPayloadTooLarge,
    "OpenAiErrorBody",
    "The body is larger than `server.max_body_bytes`"
);
error_response!(
    OpenAiUnsupportedMediaType,
    "OpenAiErrorBody",
    "The body is not sent as `Content-Type: application/json`"
);
error_response!(
    OpenAiRateLimited,
    "OpenAiErrorBody",
    "Too many requests for this key, or the provider's rate limit",
    retry_after = true
);
error_response!(
    OpenAiInternal,
    "OpenAiErrorBody",
    "A bug or a refused store write"
);
error_response!(
    OpenAiBadGateway,
    "OpenAiErrorBody",
    "Every provider failed, or returned an unusable image"
);
error_response!(
    OpenAiUnavailable,
    "OpenAiErrorBody",
    "Overloaded, or the store or ledger is unreachable",
    retry_after = true
);
error_response!(
    OpenAiGatewayTimeout,
    "OpenAiErrorBody",
    "The providers, or the whole request, took longer than allowed"
);

#[cfg(test)]
mod tests {
    use super::*;

    fn doc_json() -> serde_json::Value {
        serde_json::to_value(document(true)).expect("the document serializes")
    }

    #[test]
    fn is_openapi_3_1_with_bearer_auth() {
        let doc = doc_json();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }

    /// Every route `routes.rs` registers is documented (a new route without a
    /// `#[utoipa::path]` fails here).
    #[test]
    fn every_registered_route_is_documented() {
        let doc = doc_json();
        let paths = doc["paths"].as_object().unwrap();
        let source = concat!(include_str!("routes.rs"), include_str!("dashboard.rs"));
        let mut registered = 0;
        for part in source.split(".route(\"").skip(1) {
            let route = part.split('"').next().unwrap().replace("{*", "{");
            assert!(
                paths.contains_key(&route),
                "{route} is not in /openapi.json"
            );
            registered += 1;
        }
        assert!(
            registered >= 9,
            "found only {registered} routes in routes.rs"
        );
    }

    #[test]
    fn cdn_is_listed_only_when_served() {
        assert!(!document(false).paths.paths.contains_key("/cdn/{path}"));
        assert!(document(true).paths.paths.contains_key("/cdn/{path}"));
    }

    #[test]
    fn every_reference_resolves() {
        let doc = doc_json();
        let text = doc.to_string();
        for part in text.split("\"$ref\":\"#/components/").skip(1) {
            let target = part.split('"').next().unwrap();
            let (kind, name) = target.split_once('/').unwrap();
            assert!(
                doc["components"][kind].get(name).is_some(),
                "dangling reference #/components/{target}"
            );
        }
    }
}
