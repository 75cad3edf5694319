//! `GET /openapi.json`: the HTTP API as an OpenAPI 3.1 document, generated from the
//! handlers' `#[utoipa::path]` attributes and the `ToSchema` derives of the request
//! types.
//!
//! Answers are documented by the types the handlers serialize (`views`, the error
//! flavours, the OpenAI route's bodies, the ledger's report, the router's candidates,
//! the price book's listing): there are no hand-written mirrors to drift. `scripts/schemathesis.sh` checks every answer
//! of the real server against the document (schema, status, content type).

use crate::error::{ErrorBody, OpenAiErrorBody};
use crate::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{self, RefOr};
use utoipa::OpenApi;

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
    doc.merge(crate::routes::jobs::JobsDoc::openapi());
    doc.merge(crate::routes::batches::BatchesDoc::openapi());
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
        Overloaded,
    ),
)]
pub(crate) async fn openapi_json(State(state): State<Arc<AppState>>) -> Response {
    // The same condition under which `api_server::router` registers `/cdn/{*path}`.
    let serves_cdn = state.server.serve_cdn
        && state.pipeline.store().kind() == imagegate_storage::StoreKind::Local;
    Json(document(serves_cdn)).into_response()
}

// ---- groups of answers many routes share --------------------------------------------

/// Answers that come together, listed in a route's `responses(...)` as one entry:
/// each status refers to its response component.
macro_rules! response_group {
    ($(#[$doc:meta])* $name:ident { $($status:literal => $response:ident),+ $(,)? }) => {
        $(#[$doc])*
        pub struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> std::collections::BTreeMap<String, RefOr<openapi::Response>> {
                [$(($status, stringify!($response))),+]
                    .into_iter()
                    .map(|(status, name)| {
                        (status.to_string(), RefOr::Ref(openapi::Ref::from_response_name(name)))
                    })
                    .collect()
            }
        }
    };
}

response_group!(
    /// Every route behind a key: no valid key, or too many requests for it.
    Keyed { "401" => Unauthorized, "429" => RateLimited }
);
response_group!(
    /// Every route: the server's load shedding and whole-request deadline.
    Overloaded { "503" => Unavailable, "504" => GatewayTimeout }
);
response_group!(
    /// Every route that reads a JSON body.
    BadBody { "400" => BadRequest, "413" => PayloadTooLarge, "415" => UnsupportedMediaType }
);
response_group!(
    /// `Keyed` in OpenAI's error shape.
    OpenAiKeyed { "401" => OpenAiUnauthorized, "429" => OpenAiRateLimited }
);
response_group!(
    /// `Overloaded` in OpenAI's error shape.
    OpenAiOverloaded { "503" => OpenAiUnavailable, "504" => OpenAiGatewayTimeout }
);
response_group!(
    /// `BadBody` in OpenAI's error shape.
    OpenAiBadBody {
        "400" => OpenAiBadRequest,
        "413" => OpenAiPayloadTooLarge,
        "415" => OpenAiUnsupportedMediaType,
    }
);

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
    fn shared_answer_groups_expand_in_each_route() {
        let doc = doc_json();
        let create = &doc["paths"]["/v1/images"]["post"]["responses"];
        for status in [
            "200", "400", "401", "402", "403", "410", "413", "415", "422", "429", "500", "502",
            "503", "504",
        ] {
            assert!(
                create.get(status).is_some(),
                "POST /v1/images lacks {status}"
            );
        }
        assert_eq!(create["401"]["$ref"], "#/components/responses/Unauthorized");
        let openai = &doc["paths"]["/v1/images/generations"]["post"]["responses"];
        assert_eq!(
            openai["429"]["$ref"],
            "#/components/responses/OpenAiRateLimited"
        );
        let health = &doc["paths"]["/healthz"]["get"]["responses"];
        assert!(health.get("401").is_none(), "probes need no key");
        assert!(health.get("503").is_some());
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
    use imagegate_providers::breaker::BreakerState;
    use imagegate_providers::router::{Candidate, PriceSource};
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
            // A tagged enum: any variant's fields may appear, none is required of all.
            if let Some(variants) = part["oneOf"].as_array() {
                for v in variants {
                    listed.extend(v["properties"].as_object().unwrap().keys().cloned());
                }
                continue;
            }
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

    fn candidate(skipped: Option<imagegate_providers::SkipReason>) -> Candidate {
        Candidate {
            provider: "openai".into(),
            model: "gpt-image-2".into(),
            expected: imagegate_core::Micros(53_000),
            price_source: PriceSource::PriceBook,
            surge_multiplier: Some(1.5),
            expected_latency_ms: 9000,
            score: skipped.is_none().then_some(0.053),
            breaker: BreakerState::Closed {
                consecutive_failures: 0,
            },
            skipped_reason: skipped,
        }
    }

    #[test]
    fn estimates_are_their_documented_type() {
        let skipped = candidate(Some(imagegate_providers::SkipReason::OverMaxCost {
            expected: imagegate_core::Micros(53_000),
            max_cost: imagegate_core::Micros(10_000),
        }));
        let estimate = imagegate_providers::Estimate {
            choice: "premium".into(),
            policy: imagegate_providers::Policy::Cheapest,
            size: imagegate_core::Size {
                width: 1024,
                height: 1024,
            },
            at: chrono::Utc::now(),
            book_version: "v".into(),
            candidates: vec![candidate(None), skipped],
            chosen: Some(candidate(None)),
        };
        let view = crate::views::EstimateView::new(key(), false, &estimate);
        assert_documented("EstimateView", &view);
        let answer = serde_json::to_value(&view).unwrap();
        assert_documented("CandidateView", &answer["candidates"][1]);
        assert_eq!(answer["chosen"]["expected_usd"], 0.053);
        assert!(answer["candidates"][1]["skipped_reason"]
            .as_str()
            .unwrap()
            .starts_with("over_max_cost"));
    }

    #[test]
    fn cost_reports_are_their_documented_type() {
        use imagegate_ledger::{Dimension, Report, ReportRow, Totals};
        let row = ReportRow {
            values: Dimension::ALL
                .iter()
                .map(|d| (*d, (*d != Dimension::Key).then(|| "x".to_string())))
                .collect(),
            totals: Totals {
                requests: 2,
                micros: imagegate_core::Micros(80_000),
                unpriced_stages: 1,
                ..Totals::default()
            },
        };
        let report = Report {
            group_by: Dimension::ALL.to_vec(),
            since: Some(chrono::Utc::now()),
            until: None,
            rows: vec![row.clone()],
            total: ReportRow {
                values: vec![],
                totals: row.totals.clone(),
            },
            cache: Default::default(),
        };
        assert_documented("Report", &report);
        let answer = serde_json::to_value(&report).unwrap();
        assert_documented("ReportRow", &answer["rows"][0]);
        assert_documented("ReportRow", &answer["total"]);
        assert_documented("CacheEconomics", &answer["cache"]);
        // Every dimension a report can group by is a documented row field.
        assert_eq!(answer["rows"][0]["key"], serde_json::Value::Null);
        assert_eq!(answer["rows"][0]["status"], "x");
        assert_eq!(answer["total"]["usd"], 0.08);
    }

    #[test]
    fn price_listings_are_their_documented_type() {
        let book = imagegate_providers::PriceBook::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/pricing.toml"
        )))
        .expect("the shipped price book loads");
        let at = chrono::Utc::now();
        let listing = book.listing(at);
        assert!(listing.len() > 10, "{} entries", listing.len());
        let view = crate::views::PricesView {
            version: book.version().to_string(),
            origin: book.origin().to_string(),
            at,
            models: listing,
        };
        assert_documented("PricesView", &view);
        let answer = serde_json::to_value(&view).unwrap();
        for model in answer["models"].as_array().unwrap() {
            assert_documented("Listed", model);
        }
        let reloaded = imagegate_providers::Reloaded {
            version: "a".into(),
            previous: "b".into(),
            changed: true,
            entries: 3,
        };
        assert_documented("Reloaded", &reloaded);
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
