//! The HTTP API's own description: the real binary answers `/openapi.json` with an
//! OpenAPI 3.1 document listing every route, and Schemathesis, generating hostile
//! requests from that document, finds no 5xx and no answer that breaks it.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The classifier files the setup fetches; their absence is a failure, not a skip.
fn models_dir() -> PathBuf {
    let dir = std::env::var_os("IMAGEGATE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models"));
    for f in ["open-nsfw.onnx", "libonnxruntime.so.1.31.1"] {
        assert!(
            dir.join(f).is_file(),
            "{} is missing: run scripts/fetch-models.sh (the README's test command does)",
            dir.join(f).display()
        );
    }
    dir
}

struct Server {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The embedded defaults' parts (local provider, local store served under /cdn/,
/// SQLite ledger, real classifier) in a temp dir.
fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let models = models_dir();
    let data = dir.path().join("data");
    let config = format!(
        r#"
pricing = "{pricing}"

[server]
listen = "127.0.0.1:{port}"

[[providers]]
kind = "local"
latency_ms = 1

[storage]
kind = "local"
root = "{data}/objects"
public_base_url = "http://127.0.0.1:{port}/cdn"

[ledger]
url = "sqlite://{data}/ledger.db"

[safety]
classifier = true
model = "{models}/open-nsfw.onnx"
runtime_library = "{models}/libonnxruntime.so.1.31.1"

[profiles.default]
variants = [64]
formats = ["avif"]
"#,
        pricing = repo_root().join("config/pricing.toml").display(),
        data = data.display(),
        models = models.display(),
    );
    let config_path = dir.path().join("imagegate.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_imagegate"))
        .arg("--config")
        .arg(&config_path)
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("imagegate listening on "),
        "server did not start: {line:?}"
    );
    Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

/// Every route the server registers, as the document spells it, with its methods.
const ROUTES: &[(&str, &str)] = &[
    ("/v1/images", "post"),
    ("/v1/images/{id}", "get"),
    ("/v1/images/generations", "post"),
    ("/v1/estimate", "post"),
    ("/v1/costs", "get"),
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
    let server = start();
    let response = reqwest::get(format!("{}/openapi.json", server.base))
        .await
        .unwrap();
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
    assert_eq!(
        paths.len(),
        ROUTES.len(),
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
