//! The fal adapter against a local server speaking fal's queue API: submit, status,
//! result, cancel (https://fal.ai/docs/api-reference/inference-api).

use imagegate_providers::fal::{FalConfig, FalProvider};
use imagegate_providers::{Provider, ProviderError};
use std::sync::Arc;
use std::time::Duration;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::{png, received_one, request};
use crate::conformance::{Failure, Wire, BODY_LIMIT, OVERSIZED, RETRY_AFTER};
use async_trait::async_trait;

const KEY_ENV: &str = "IMAGEGATE_TEST_FAL_KEY";
const KEY: &str = "fal-test-id:fal-test-secret-0123";
const MODEL: &str = "fal-ai/flux/dev";
const REQUEST_ID: &str = "764cabcf-b745-4b3e-ae38-1200304cf45b";

fn provider(server: &MockServer) -> FalProvider {
    std::env::set_var(KEY_ENV, KEY);
    FalProvider::new(FalConfig {
        base_url: server.uri(),
        api_key_env: KEY_ENV.into(),
        timeout_secs: 1,
        poll_interval_ms: 10,
        max_poll_interval_ms: 40,
        max_wait_secs: 5,
        max_download_bytes: BODY_LIMIT,
        ..FalConfig::default()
    })
    .expect("provider builds")
}

fn queued(server: &MockServer) -> serde_json::Value {
    // Status, result and cancel URLs name the owner and app only.
    let base = format!("{}/fal-ai/flux/requests/{REQUEST_ID}", server.uri());
    serde_json::json!({
        "status": "IN_QUEUE",
        "request_id": REQUEST_ID,
        "response_url": base,
        "status_url": format!("{base}/status"),
        "cancel_url": format!("{base}/cancel"),
        "queue_position": 0
    })
}

fn result(server: &MockServer, nsfw: bool) -> serde_json::Value {
    serde_json::json!({
        "images": [{
            "url": format!("{}/files/penguin/out.png", server.uri()),
            "width": 1024, "height": 1024, "content_type": "image/png"
        }],
        "timings": {"inference": 1.1},
        "seed": 42,
        "has_nsfw_concepts": [nsfw],
        "prompt": "a red fox in snow"
    })
}

const STATUS_PATH: &str = "/fal-ai/flux/requests/764cabcf-b745-4b3e-ae38-1200304cf45b/status";
const RESULT_PATH: &str = "/fal-ai/flux/requests/764cabcf-b745-4b3e-ae38-1200304cf45b";
const CANCEL_PATH: &str = "/fal-ai/flux/requests/764cabcf-b745-4b3e-ae38-1200304cf45b/cancel";

async fn serve_queue(server: &MockServer, output: ResponseTemplate, file: Option<Vec<u8>>) {
    Mock::given(method("POST"))
        .and(path(format!("/{MODEL}")))
        .and(header("authorization", format!("Key {KEY}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(queued(server)))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(STATUS_PATH))
        .and(header("authorization", format!("Key {KEY}").as_str()))
        .respond_with(ResponseTemplate::new(202).set_body_json(serde_json::json!({
            "status": "IN_PROGRESS", "request_id": REQUEST_ID
        })))
        .up_to_n_times(1)
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(STATUS_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "status": "COMPLETED", "request_id": REQUEST_ID
        })))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(RESULT_PATH))
        .and(header("authorization", format!("Key {KEY}").as_str()))
        .respond_with(output)
        .mount(server)
        .await;
    if let Some(file) = file {
        Mock::given(method("GET"))
            .and(path("/files/penguin/out.png"))
            .respond_with(ResponseTemplate::new(200).set_body_raw(file, "image/png"))
            .mount(server)
            .await;
    }
}

#[tokio::test]
async fn submits_the_documented_input_and_sends_the_key_only_to_fal() {
    let server = MockServer::start().await;
    FalWire.serve_success(&server, &png(16, 16)).await;
    let g = provider(&server)
        .generate(&request(MODEL, 1024, 768))
        .await
        .expect("generation succeeds");
    let requests = server.received_requests().await.expect("recording on");
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).expect("json");
    assert_eq!(
        body,
        serde_json::json!({
            "prompt": "a red fox in snow",
            "image_size": {"width": 1024, "height": 768},
            "seed": 42,
            "num_images": 1,
            "output_format": "png",
            "enable_safety_checker": true
        })
    );
    let download = requests
        .iter()
        .find(|r| r.url.path() == "/files/penguin/out.png")
        .expect("downloaded");
    assert!(
        download.headers.get("authorization").is_none(),
        "CDN got the key"
    );
    assert_eq!(g.usage.raw["request_id"], REQUEST_ID);
}

#[tokio::test]
async fn a_request_whose_caller_went_away_is_cancelled_upstream() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/{MODEL}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(queued(&server)))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(STATUS_PATH))
        .respond_with(ResponseTemplate::new(202).set_body_json(serde_json::json!({
            "status": "IN_QUEUE", "queue_position": 3
        })))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path(CANCEL_PATH))
        .and(header("authorization", format!("Key {KEY}").as_str()))
        .respond_with(
            ResponseTemplate::new(202)
                .set_body_json(serde_json::json!({"status": "CANCELLATION_REQUESTED"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(&server);
    let abandoned = tokio::time::timeout(
        Duration::from_millis(300),
        p.generate(&request(MODEL, 1024, 1024)),
    )
    .await;
    assert!(abandoned.is_err(), "still queued when abandoned");
    assert!(
        received_one(&server, |r| r.method.as_str() == "PUT").await,
        "the abandoned request was not cancelled"
    );
}

#[tokio::test]
async fn a_request_past_max_wait_is_cancelled_and_times_out() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(queued(&server)))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(STATUS_PATH))
        .respond_with(
            ResponseTemplate::new(202).set_body_json(serde_json::json!({"status": "IN_PROGRESS"})),
        )
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path(CANCEL_PATH))
        .respond_with(
            ResponseTemplate::new(202)
                .set_body_json(serde_json::json!({"status": "CANCELLATION_REQUESTED"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    std::env::set_var(KEY_ENV, KEY);
    let p = FalProvider::new(FalConfig {
        base_url: server.uri(),
        api_key_env: KEY_ENV.into(),
        poll_interval_ms: 10,
        max_poll_interval_ms: 40,
        max_wait_secs: 1,
        ..FalConfig::default()
    })
    .expect("builds");
    let e = p
        .generate(&request(MODEL, 1024, 1024))
        .await
        .expect_err("times out");
    assert!(matches!(e, ProviderError::Timeout { .. }), "{e:?}");
}

pub struct FalWire;

#[async_trait]
impl Wire for FalWire {
    fn key_env(&self) -> &'static str {
        KEY_ENV
    }
    fn key(&self) -> &'static str {
        KEY
    }
    fn model(&self) -> &'static str {
        MODEL
    }
    fn provider(&self, server: &MockServer) -> Arc<dyn Provider> {
        Arc::new(provider(server))
    }
    async fn serve_success(&self, server: &MockServer, image: &[u8]) {
        serve_queue(
            server,
            ResponseTemplate::new(200).set_body_json(result(server, false)),
            Some(image.to_vec()),
        )
        .await;
    }
    async fn serve_failure(&self, server: &MockServer, failure: Failure) {
        let submit = match failure {
            Failure::Unauthorized => ResponseTemplate::new(401).set_body_json(serde_json::json!({
                "detail": format!("Invalid key: {KEY}")
            })),
            Failure::RateLimited => ResponseTemplate::new(429)
                .set_body_json(serde_json::json!({"detail": "Concurrency limit reached"}))
                .insert_header("retry-after", RETRY_AFTER.as_secs().to_string().as_str()),
            Failure::ServerError => ResponseTemplate::new(500)
                .set_body_json(serde_json::json!({"detail": "Internal server error"})),
            Failure::Slow => ResponseTemplate::new(200)
                .set_body_json(queued(server))
                .set_delay(Duration::from_secs(3)),
            Failure::Garbage => ResponseTemplate::new(200).set_body_string("not json"),
            Failure::NotAnImage => {
                return serve_queue(
                    server,
                    ResponseTemplate::new(200).set_body_json(result(server, false)),
                    Some(b"<html>404</html>".to_vec()),
                )
                .await
            }
            Failure::Oversized => {
                return serve_queue(
                    server,
                    ResponseTemplate::new(200).set_body_json(result(server, false)),
                    Some(vec![0x89; OVERSIZED]),
                )
                .await
            }
            // The safety checker flags the output rather than failing the request.
            Failure::Refusal => {
                return serve_queue(
                    server,
                    ResponseTemplate::new(200).set_body_json(result(server, true)),
                    Some(png(8, 8)),
                )
                .await
            }
        };
        Mock::given(method("POST"))
            .and(path(format!("/{MODEL}")))
            .respond_with(submit)
            .mount(server)
            .await;
    }
}
