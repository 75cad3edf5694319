//! The HTTP API's own description: the real binary answers `/openapi.json` with an
//! OpenAPI 3.1 document listing every route, and Schemathesis, generating hostile
//! requests from that document, finds no 5xx and no answer that breaks it.

use crate::support;

use std::process::Command;
use support::{models_dir, repo_root, small_config, Site};

/// Every route the server registers, as the document spells it, with its methods.
const ROUTES: &[(&str, &str)] = &[
    ("/v1/images", "post"),
    ("/v1/images/{id}", "get"),
    ("/v1/images/generations", "post"),
    ("/v1/jobs", "get"),
    ("/v1/jobs/{id}", "get"),
    ("/v1/files", "post"),
    ("/v1/files/{id}", "get"),
    ("/v1/files/{id}/content", "get"),
    ("/v1/batches", "post"),
    ("/v1/batches", "get"),
    ("/v1/batches/{id}", "get"),
    ("/v1/batches/{id}/cancel", "post"),
    ("/v1/estimate", "post"),
    ("/v1/verify", "post"),
    ("/v1/costs", "get"),
    ("/v1/prices", "get"),
    ("/v1/admin/prices/reload", "post"),
    ("/v1/delivery", "get"),
    ("/dashboard", "get"),
    ("/healthz", "get"),
    ("/readyz", "get"),
    ("/metrics", "get"),
    ("/cdn/{path}", "get"),
    ("/openapi.json", "get"),
];

#[tokio::test]
async fn openapi_json_is_3_1_and_lists_every_route() {
    let site = Site::new(|dir| small_config(dir, "127.0.0.1:0", "127.0.0.1:1", ""));
    let server = site.serve(&[]);
    let response = reqwest::get(server.url("/openapi.json")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let doc: serde_json::Value = response.json().await.unwrap();

    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "not OpenAPI 3.1: {}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in ROUTES {
        let op = &paths
            .get(*path)
            .unwrap_or_else(|| panic!("{path} is not documented"))[method];
        assert!(op.is_object(), "{method} {path} is not documented");
        assert!(
            op["responses"]["200"].is_object(),
            "{method} {path} has no 200"
        );
    }
    let distinct: std::collections::BTreeSet<_> = ROUTES.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        paths.len(),
        distinct.len(),
        "undocumented extras or missing routes"
    );

    // Request bodies come from the request types; unknown fields are refused.
    let body = &paths["/v1/images"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(body["$ref"], "#/components/schemas/ImageRequest");
    let request = &doc["components"]["schemas"]["ImageRequest"];
    assert_eq!(request["required"], serde_json::json!(["prompt"]));
    assert_eq!(request["additionalProperties"], false);

    // The error shapes, and which routes answer which codes.
    let error = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["required"], serde_json::json!(["error"]));
    let responses = &paths["/v1/images"]["post"]["responses"];
    for code in [
        "200", "400", "401", "402", "413", "415", "422", "429", "500", "502", "503", "504",
    ] {
        assert!(responses[code].is_object(), "POST /v1/images lacks {code}");
    }
    assert_eq!(
        paths["/v1/images/generations"]["post"]["responses"]["400"]["$ref"],
        "#/components/responses/OpenAiBadRequest"
    );
    assert!(paths["/cdn/{path}"]["get"]["responses"]["304"].is_object());
    assert!(doc["components"]["responses"]["RateLimited"]["headers"]["Retry-After"].is_object());

    // Bearer keys, or anonymous (the empty requirement) from loopback.
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"], serde_json::json!([{"bearer": []}, {}]));
    assert_eq!(
        paths["/healthz"]["get"]["security"],
        serde_json::json!([{}])
    );
}

/// Schemathesis against the real binary: no 5xx, and every answer matches the
/// document. `scripts/schemathesis.sh` refuses to run without its tools (python3,
/// the pinned venv, the model files), so a missing tool fails this test.
#[test]
fn schemathesis_finds_no_server_error_or_schema_violation() {
    let status = Command::new(repo_root().join("scripts/schemathesis.sh"))
        .env("IMAGEGATE_BIN", env!("CARGO_BIN_EXE_imagegate"))
        .env("IMAGEGATE_MODELS_DIR", models_dir())
        .status()
        .expect("scripts/schemathesis.sh runs");
    assert!(status.success(), "schemathesis found failures (see above)");
}
