//! The Black Forest Labs adapter against a local server speaking BFL's API: submit to
//! the model's endpoint with `x-key`, poll the `polling_url` it answers, download the
//! signed `result.sample` (https://docs.bfl.ai/quick_start/generating_images).

use imagegate_providers::bfl::{BflConfig, BflProvider};
use imagegate_providers::{Provider, ProviderError};
use std::sync::Arc;
use std::time::Duration;
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::{png, request};
use crate::conformance::{Failure, Wire, BODY_LIMIT, OVERSIZED, RETRY_AFTER};
use async_trait::async_trait;

const KEY_ENV: &str = "IMAGEGATE_TEST_BFL_KEY";
const KEY: &str = "bfl-test-key-0123456789";
const MODEL: &str = "flux-2-pro";
const TASK: &str = "2a1b7c9e-task";

fn provider(server: &MockServer) -> BflProvider {
    std::env::set_var(KEY_ENV, KEY);
    BflProvider::new(BflConfig {
        base_url: format!("{}/v1", server.uri()),
        api_key_env: KEY_ENV.into(),
        timeout_secs: 1,
        poll_interval_ms: 10,
        max_poll_interval_ms: 40,
        max_wait_secs: 5,
        max_download_bytes: BODY_LIMIT,
        ..BflConfig::default()
    })
    .expect("provider builds")
}

fn submitted(server: &MockServer) -> serde_json::Value {
    serde_json::json!({
        "id": TASK,
        "polling_url": format!("{}/v1/get_result?id={TASK}", server.uri()),
        "cost": 3.0,
        "input_mp": 0.0,
        "output_mp": 1.05
    })
}

fn ready(server: &MockServer) -> serde_json::Value {
    serde_json::json!({
        "id": TASK,
        "status": "Ready",
        "result": {
            "sample": format!("{}/delivery/sample.png?se=2026-12-05&sig=abc", server.uri()),
            "prompt": "a red fox in snow",
            "seed": 42
        }
    })
}

async fn serve_poll(server: &MockServer, answers: Vec<serde_json::Value>) {
    let last = answers.len() - 1;
    for (i, a) in answers.into_iter().enumerate() {
        let mock = Mock::given(method("GET"))
            .and(path("/v1/get_result"))
            .and(query_param("id", TASK))
            .and(header("x-key", KEY))
            .respond_with(ResponseTemplate::new(200).set_body_json(a));
        let mock = if i < last {
            mock.up_to_n_times(1)
        } else {
            mock
        };
        mock.mount(server).await;
    }
}

#[tokio::test]
async fn submits_polls_and_reports_the_credits_charged() {
    let server = MockServer::start().await;
    let image = png(32, 32);
    BflWire.serve_success(&server, &image).await;
    let g = provider(&server)
        .generate(&request(MODEL, 1000, 600))
        .await
        .expect("generation succeeds");
    let requests = server.received_requests().await.expect("recording on");
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).expect("json");
    // FLUX.2 sizes are multiples of 16.
    assert_eq!(
        body,
        serde_json::json!({
            "prompt": "a red fox in snow",
            "width": 992,
            "height": 592,
            "seed": 42,
            "output_format": "png"
        })
    );
    // The signed delivery URL gets no key.
    let download = requests
        .iter()
        .find(|r| r.url.path() == "/delivery/sample.png")
        .expect("downloaded");
    assert!(download.headers.get("x-key").is_none());
    assert_eq!(g.usage.credits, Some(3.0));
    assert_eq!(g.usage.raw["output_mp"], 1.05);
}

#[tokio::test]
async fn a_polling_url_off_bfl_hosts_never_gets_the_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/v1/{MODEL}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "id": TASK, "polling_url": "https://attacker.example/steal"
        })))
        .mount(&server)
        .await;
    let e = provider(&server)
        .generate(&request(MODEL, 1024, 1024))
        .await
        .expect_err("refused");
    assert!(matches!(e, ProviderError::BadResponse { .. }), "{e:?}");
}

#[tokio::test]
async fn an_errored_task_is_upstream() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(submitted(&server)))
        .mount(&server)
        .await;
    serve_poll(
        &server,
        vec![serde_json::json!({"id": TASK, "status": "Error", "error": "Generation failed"})],
    )
    .await;
    let e = provider(&server)
        .generate(&request(MODEL, 1024, 1024))
        .await
        .expect_err("errored");
    assert!(
        matches!(e, ProviderError::Upstream { ref message, .. } if message.contains("Generation failed")),
        "{e:?}"
    );
}

pub struct BflWire;

#[async_trait]
impl Wire for BflWire {
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
        Mock::given(method("POST"))
            .and(path(format!("/v1/{MODEL}")))
            .and(header("x-key", KEY))
            .respond_with(ResponseTemplate::new(200).set_body_json(submitted(server)))
            .expect(1)
            .mount(server)
            .await;
        serve_poll(
            server,
            vec![
                serde_json::json!({"id": TASK, "status": "Pending"}),
                ready(server),
            ],
        )
        .await;
        Mock::given(method("GET"))
            .and(path("/delivery/sample.png"))
            .respond_with(ResponseTemplate::new(200).set_body_raw(image.to_vec(), "image/png"))
            .mount(server)
            .await;
    }
    async fn serve_failure(&self, server: &MockServer, failure: Failure) {
        let sample = |body: Vec<u8>| async move {
            Mock::given(method("POST"))
                .and(path(format!("/v1/{MODEL}")))
                .respond_with(ResponseTemplate::new(200).set_body_json(submitted(server)))
                .mount(server)
                .await;
            serve_poll(server, vec![ready(server)]).await;
            Mock::given(method("GET"))
                .and(path("/delivery/sample.png"))
                .respond_with(ResponseTemplate::new(200).set_body_raw(body, "image/png"))
                .mount(server)
                .await;
        };
        let submit = match failure {
            Failure::Unauthorized => ResponseTemplate::new(403).set_body_json(
                serde_json::json!({"detail": format!("Not authenticated - invalid key {KEY}")}),
            ),
            // BFL says how long to wait in the body.
            Failure::RateLimited => ResponseTemplate::new(429).set_body_json(serde_json::json!({
                "error": "rate_limit_exceeded",
                "message": "Too many concurrent requests",
                "retry_after": RETRY_AFTER.as_secs()
            })),
            Failure::ServerError => ResponseTemplate::new(500)
                .set_body_json(serde_json::json!({"detail": "Internal Server Error"})),
            Failure::Slow => ResponseTemplate::new(200)
                .set_body_json(submitted(server))
                .set_delay(Duration::from_secs(3)),
            Failure::Garbage => ResponseTemplate::new(200).set_body_string("<html>gateway</html>"),
            Failure::NotAnImage => {
                return sample(b"<Error>AuthenticationFailed</Error>".to_vec()).await
            }
            Failure::Oversized => return sample(vec![0x89; OVERSIZED]).await,
            Failure::Refusal => {
                serve_poll(
                    server,
                    vec![serde_json::json!({
                        "id": TASK,
                        "status": "Request Moderated",
                        "details": {"Moderation Reasons": ["Derivative Works Filter"]}
                    })],
                )
                .await;
                ResponseTemplate::new(200).set_body_json(submitted(server))
            }
        };
        Mock::given(method("POST"))
            .and(path(format!("/v1/{MODEL}")))
            .respond_with(submit)
            .mount(server)
            .await;
    }
}
