//! `GET /openapi.json`: the HTTP API as an OpenAPI 3.1 document, generated from the
//! handlers' `#[utoipa::path]` attributes and the `ToSchema` derives of the request
//! types.
//!
//! Answers are documented by the types the handlers serialize (`views`, the error
//! flavours, the OpenAI route's bodies). `scripts/schemathesis.sh` checks every answer
//! of the real server against the document (schema, status, content type).

use crate::error::{ErrorBody, OpenAiErrorBody};
use crate::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
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
        crate::routes::images::create_image,
        crate::routes::images::get_image,
        crate::routes::openai_compat::generations,
        crate::routes::estimate::estimate,
        crate::routes::verify::verify,
        crate::routes::costs::costs,
        crate::routes::prices::prices,
        crate::routes::prices::reload,
        crate::routes::dashboard::delivery,
        crate::routes::dashboard::page,
        crate::routes::health::healthz,
        crate::routes::health::ready,
        crate::routes::health::metrics,
        crate::routes::cdn::cdn,
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
    // The same condition under which `api_server::router` registers `/cdn/{*path}`.
    let serves_cdn = state.pipeline.config().server.serve_cdn
        && state.pipeline.store().kind() == imagegate_storage::StoreKind::Local;
    Json(document(serves_cdn)).into_response()
}

// ---- bodies not yet serialized from one type ----------------------------------------
//
// `/v1/estimate` and `/v1/costs` answer types of the providers and ledger crates
// (`Candidate`, `Report`, whose rows serialize by hand); until those derive
// `ToSchema`, these describe their shapes. Schemathesis holds them to the answers.

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

    /// Every route `api_server.rs` registers is documented (a new route without a
    /// `#[utoipa::path]` fails here).
    #[test]
    fn every_registered_route_is_documented() {
        let doc = doc_json();
        let paths = doc["paths"].as_object().unwrap();
        let source = include_str!("api_server.rs");
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
            registered >= 14,
            "found only {registered} routes in api_server.rs"
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

#[cfg(test)]
mod answer_types {
    //! The document's answer shapes are the types the handlers serialize: an answer
    //! built from them has every field its schema requires and none it does not list.

    use super::document;
    use crate::error::{ApiError, ErrorFlavour, Native, OpenAi};
    use crate::views::{BlockedView, CostView, ImageView, ManifestView, SafetyView, StageView};
    use crate::views::{StatusView, VariantView};
    use axum::http::StatusCode;
    use imagegate_core::{ContentKey, ImageFormat, ManifestStatus, SafetyAction};
    use imagegate_ledger::CacheOutcome;
    use serde::Serialize;

    /// `name`'s (listed, required) properties, following `allOf` and `$ref`.
    fn shape(schemas: &serde_json::Value, name: &str) -> (Vec<String>, Vec<String>) {
        let schema = &schemas[name];
        assert!(schema.is_object(), "no schema {name}");
        let (mut listed, mut required) = (Vec::new(), Vec::new());
        let parts = match schema["allOf"].as_array() {
            Some(parts) => parts.clone(),
            None => vec![schema.clone()],
        };
        for part in parts {
            if let Some(target) = part["$ref"].as_str() {
                let (l, r) = shape(schemas, target.rsplit('/').next().unwrap());
                listed.extend(l);
                required.extend(r);
                continue;
            }
            listed.extend(part["properties"].as_object().unwrap().keys().cloned());
            required.extend(
                part["required"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| r.as_str().unwrap().to_string()),
            );
        }
        (listed, required)
    }

    fn assert_documented(name: &str, answer: &impl Serialize) {
        let doc = serde_json::to_value(document(true)).expect("the document serializes");
        let (listed, required) = shape(&doc["components"]["schemas"], name);
        let answer = serde_json::to_value(answer).unwrap();
        let fields: Vec<&String> = answer.as_object().unwrap().keys().collect();
        for f in &fields {
            assert!(
                listed.contains(f),
                "{name} answers {f:?}, which it does not document"
            );
        }
        for r in &required {
            assert!(
                fields.contains(&r),
                "{name} requires {r:?}, which its answer lacks"
            );
        }
    }

    fn key() -> ContentKey {
        "07".repeat(32).parse().unwrap()
    }

    fn safety() -> SafetyView {
        SafetyView {
            action: SafetyAction::Allow.as_str(),
            nsfw_score: None,
        }
    }

    fn cost() -> CostView<'static> {
        CostView {
            stages: vec![StageView {
                cpu_ms: 1.0,
                detail: None,
                ms: 2.0,
                stage: "generate",
                usd: 0.04,
            }],
            total_usd: 0.04,
        }
    }

    #[test]
    fn image_answers_are_their_documented_types() {
        let manifest = || ManifestView {
            created_at: "2026-12-05T00:00:00Z",
            id: key(),
            images: vec![VariantView {
                bytes: 1,
                format: ImageFormat::Avif,
                height: 2,
                url: "http://x/cdn/a.avif".into(),
                width: 2,
            }],
            model: "procedural-v1",
            provider: "local",
            safety: safety(),
            srcset: [("avif", "http://x/cdn/a.avif 2w".to_string())].into(),
            status: ManifestStatus::Ok,
        };
        for cache in [Some(CacheOutcome::Hit), None] {
            let view = ImageView {
                cache,
                cost: cost(),
                manifest: manifest(),
            };
            assert_documented("ImageView", &view);
        }
        let blocked = BlockedView {
            cache: CacheOutcome::Miss,
            cost: cost(),
            error: Native::body(&ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "content_blocked",
                "no",
            ))
            .error,
            id: key(),
            safety: safety(),
        };
        assert_documented("BlockedView", &blocked);
        assert_documented("StageView", &cost().stages[0]);
        assert_documented("StatusView", &StatusView { status: "ok" });
    }

    #[test]
    fn both_error_flavours_are_their_documented_types() {
        let e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_value", "n is 0").with_param("n");
        assert_documented("ErrorBody", &Native::body(&e));
        assert_documented("ErrorDetail", &Native::body(&e).error);
        assert_documented("OpenAiErrorBody", &OpenAi::body(&e));
        assert_documented("OpenAiErrorDetail", &OpenAi::body(&e).error);
    }
}
