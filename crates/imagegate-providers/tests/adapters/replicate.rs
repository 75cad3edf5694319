//! The Replicate adapter against a local server speaking the predictions API
//! (https://replicate.com/docs/reference/http#predictions.create): create, poll
//! starting → processing → succeeded, download the output file.

use imagegate_core::Size;
use imagegate_providers::replicate::{InputStyle, ReplicateConfig, ReplicateProvider};
use imagegate_providers::{Provider, ProviderError, ProviderRequest};
use std::time::Duration;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::{png, received_one};
use crate::conformance::{Failure, Wire, BODY_LIMIT, OVERSIZED, RETRY_AFTER};
use async_trait::async_trait;
use std::sync::Arc;

const KEY_ENV: &str = "IMAGEGATE_TEST_REPLICATE_TOKEN";
const KEY: &str = "r8_testtoken0123456789";
const FLUX: &str = "black-forest-labs/flux-schnell";

fn config(server: &MockServer) -> ReplicateConfig {
    std::env::set_var(KEY_ENV, KEY);
    ReplicateConfig {
        base_url: format!("{}/v1", server.uri()),
        api_key_env: KEY_ENV.into(),
        timeout_secs: 5,
        poll_interval_ms: 10,
        max_poll_interval_ms: 40,
        max_wait_secs: 5,
        ..ReplicateConfig::default()
    }
}

fn request(model: &str) -> ProviderRequest {
    ProviderRequest {
        prompt: "a glass teapot".into(),
        negative_prompt: Some("cracks".into()),
        model: model.into(),
        size: Size {
            width: 1344,
            height: 768,
        },
        seed: 5,
    }
}

fn prediction(server: &MockServer, status: &str, output: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "id": "gm3qorzdhgbfurvjtvhg6dckhu",
        "model": FLUX,
        "version": "hidden",
        "input": {"prompt": "a glass teapot"},
        "logs": "",
        "output": output,
        "error": null,
        "status": status,
        "created_at": "2024-09-08T16:19:34.765994Z",
        "metrics": if status == "succeeded" { serde_json::json!({"predict_time": 1.25}) } else { serde_json::json!({}) },
        "urls": {
            "get": format!("{}/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu", server.uri()),
            "cancel": format!("{}/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu/cancel", server.uri())
        }
    })
}

const POLL_PATH: &str = "/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu";

#[tokio::test]
async fn starting_processing_succeeded_then_download() {
    let server = MockServer::start().await;
    let image = png(21, 12);
    let file_url = format!("{}/files/out-0.png", server.uri());
    Mock::given(method("POST"))
        .and(path(format!("/v1/models/{FLUX}/predictions")))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(header("prefer", "wait=1"))
        .respond_with(ResponseTemplate::new(201).set_body_json(prediction(
            &server,
            "starting",
            serde_json::Value::Null,
        )))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(POLL_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(prediction(
            &server,
            "processing",
            serde_json::Value::Null,
        )))
        .up_to_n_times(2)
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(POLL_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(prediction(
            &server,
            "succeeded",
            serde_json::json!([file_url]),
        )))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/files/out-0.png"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_raw(image.clone(), "image/png"))
        .expect(1)
        .mount(&server)
        .await;

    let p = ReplicateProvider::new(ReplicateConfig {
        prefer_wait_secs: Some(1),
        ..config(&server)
    })
    .expect("builds");
    let g = p
        .generate(&request(FLUX))
        .await
        .expect("generation succeeds");

    let requests = server.received_requests().await.expect("recording on");
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).expect("json");
    assert_eq!(
        body,
        serde_json::json!({"input": {
            "prompt": "a glass teapot",
            "aspect_ratio": "16:9",
            "seed": 5,
            "output_format": "png",
            "num_outputs": 1
        }})
    );
    assert_eq!(g.bytes.as_ref(), image.as_slice());
    assert_eq!(g.media_type, "image/png");
    assert_eq!((g.usage.width, g.usage.height), (21, 12));
    assert_eq!(g.usage.gpu_seconds, Some(1.25));
    assert_eq!(g.usage.raw["metrics"]["predict_time"], 1.25);
}

#[tokio::test]
async fn pinned_version_with_stable_diffusion_inputs_goes_to_predictions() {
    let server = MockServer::start().await;
    let file_url = format!("{}/files/sd.png", server.uri());
    Mock::given(method("POST"))
        .and(path("/v1/predictions"))
        .respond_with(ResponseTemplate::new(201).set_body_json(prediction(
            &server,
            "succeeded",
            serde_json::json!(file_url),
        )))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/files/sd.png"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(png(8, 8), "image/png"))
        .mount(&server)
        .await;
    let model =
        "stability-ai/sdxl:7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc";
    let mut cfg = config(&server);
    cfg.input_styles
        .insert(model.into(), InputStyle::StableDiffusion);
    cfg.models[0].name = model.into();
    let g = ReplicateProvider::new(cfg)
        .expect("builds")
        .generate(&request(model))
        .await
        .expect("generation succeeds");
    let requests = server.received_requests().await.expect("recording on");
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).expect("json");
    assert_eq!(
        body,
        serde_json::json!({
            "version": "7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc",
            "input": {
                "prompt": "a glass teapot",
                "negative_prompt": "cracks",
                "width": 1344,
                "height": 768,
                "seed": 5,
                "num_outputs": 1
            }
        })
    );
    assert_eq!(g.usage.images, 1);
}

async fn failing(server: &MockServer, error: &str) -> ProviderError {
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_body_json(prediction(
            server,
            "processing",
            serde_json::Value::Null,
        )))
        .mount(server)
        .await;
    let mut failed = prediction(server, "failed", serde_json::Value::Null);
    failed["error"] = serde_json::json!(error);
    Mock::given(method("GET"))
        .and(path(POLL_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(failed))
        .mount(server)
        .await;
    ReplicateProvider::new(config(server))
        .expect("builds")
        .generate(&request(FLUX))
        .await
        .expect_err("prediction fails")
}

#[tokio::test]
async fn failed_prediction_is_upstream_and_nsfw_failure_is_content_rejected() {
    let server = MockServer::start().await;
    let e = failing(&server, "CUDA out of memory").await;
    assert!(
        matches!(e, ProviderError::Upstream { ref message, .. } if message.contains("CUDA")),
        "{e:?}"
    );
    let server = MockServer::start().await;
    let e = failing(
        &server,
        "NSFW content detected. Try running it again, or try a different prompt.",
    )
    .await;
    assert!(matches!(e, ProviderError::ContentRejected { .. }), "{e:?}");
}

#[tokio::test]
async fn prediction_past_max_wait_is_canceled_and_times_out() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/v1/models/{FLUX}/predictions")))
        .respond_with(ResponseTemplate::new(201).set_body_json(prediction(
            &server,
            "starting",
            serde_json::Value::Null,
        )))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(POLL_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(prediction(
            &server,
            "processing",
            serde_json::Value::Null,
        )))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("{POLL_PATH}/cancel")))
        .respond_with(ResponseTemplate::new(200).set_body_json(prediction(
            &server,
            "canceled",
            serde_json::Value::Null,
        )))
        .expect(1)
        .mount(&server)
        .await;
    let e = ReplicateProvider::new(ReplicateConfig {
        max_wait_secs: 1,
        ..config(&server)
    })
    .expect("builds")
    .generate(&request(FLUX))
    .await
    .expect_err("times out");
    assert!(matches!(e, ProviderError::Timeout { .. }), "{e:?}");
}

#[tokio::test]
async fn non_image_output_is_a_bad_response_and_foreign_hosts_get_no_token() {
    let server = MockServer::start().await;
    let other = MockServer::start().await;
    let file_url = format!("http://localhost:{}/files/x.png", other.address().port());
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_body_json(prediction(
            &server,
            "succeeded",
            serde_json::json!(file_url),
        )))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(b"<html>not found</html>".to_vec(), "text/html"),
        )
        .mount(&other)
        .await;
    let e = ReplicateProvider::new(config(&server))
        .expect("builds")
        .generate(&request(FLUX))
        .await
        .expect_err("not an image");
    assert!(matches!(e, ProviderError::BadResponse { .. }), "{e:?}");
    let got = other.received_requests().await.expect("recording on");
    assert_eq!(got.len(), 1);
    assert!(
        got[0].headers.get("authorization").is_none(),
        "token leaked to a foreign host"
    );
}

#[tokio::test]
async fn a_prediction_whose_caller_went_away_is_canceled_upstream() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/v1/models/{FLUX}/predictions")))
        .respond_with(ResponseTemplate::new(201).set_body_json(prediction(
            &server,
            "starting",
            serde_json::Value::Null,
        )))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(POLL_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(prediction(
            &server,
            "processing",
            serde_json::Value::Null,
        )))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("{POLL_PATH}/cancel")))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(prediction(
            &server,
            "canceled",
            serde_json::Value::Null,
        )))
        .expect(1)
        .mount(&server)
        .await;
    let p = ReplicateProvider::new(config(&server)).expect("builds");
    // The caller (or the router's attempt timeout) gives up while it is processing.
    let abandoned =
        tokio::time::timeout(Duration::from_millis(300), p.generate(&request(FLUX))).await;
    assert!(abandoned.is_err(), "still running when abandoned");
    // The cancel goes out on its own task.
    assert!(
        received_one(&server, |r| r.url.path().ends_with("/cancel")).await,
        "the abandoned prediction was not canceled"
    );
}

pub struct ReplicateWire;

#[async_trait]
impl Wire for ReplicateWire {
    fn key_env(&self) -> &'static str {
        KEY_ENV
    }
    fn key(&self) -> &'static str {
        KEY
    }
    fn model(&self) -> &'static str {
        FLUX
    }
    fn provider(&self, server: &MockServer) -> Arc<dyn Provider> {
        Arc::new(
            ReplicateProvider::new(ReplicateConfig {
                timeout_secs: 1,
                max_download_bytes: BODY_LIMIT,
                ..config(server)
            })
            .expect("builds"),
        )
    }
    async fn serve_success(&self, server: &MockServer, image: &[u8]) {
        Mock::given(method("POST"))
            .and(path(format!("/v1/models/{FLUX}/predictions")))
            .and(header("authorization", format!("Bearer {KEY}").as_str()))
            .respond_with(ResponseTemplate::new(201).set_body_json(prediction(
                server,
                "starting",
                serde_json::Value::Null,
            )))
            .expect(1)
            .mount(server)
            .await;
        Mock::given(method("GET"))
            .and(path(POLL_PATH))
            .respond_with(ResponseTemplate::new(200).set_body_json(prediction(
                server,
                "succeeded",
                serde_json::json!([format!("{}/files/out.png", server.uri())]),
            )))
            .mount(server)
            .await;
        Mock::given(method("GET"))
            .and(path("/files/out.png"))
            .respond_with(ResponseTemplate::new(200).set_body_raw(image.to_vec(), "image/png"))
            .mount(server)
            .await;
    }
    async fn serve_failure(&self, server: &MockServer, failure: Failure) {
        let problem = |status: u16, title: &str, detail: &str| {
            ResponseTemplate::new(status).set_body_json(serde_json::json!({
                "title": title, "detail": detail, "status": status
            }))
        };
        let file = |body: Vec<u8>| async move {
            Mock::given(method("POST"))
                .and(path(format!("/v1/models/{FLUX}/predictions")))
                .respond_with(ResponseTemplate::new(201).set_body_json(prediction(
                    server,
                    "succeeded",
                    serde_json::json!(format!("{}/files/out.png", server.uri())),
                )))
                .mount(server)
                .await;
            Mock::given(method("GET"))
                .and(path("/files/out.png"))
                .respond_with(ResponseTemplate::new(200).set_body_raw(body, "image/png"))
                .mount(server)
                .await;
        };
        let create = match failure {
            Failure::Unauthorized => problem(
                401,
                "Unauthenticated",
                &format!("You did not pass a valid authentication token: {KEY}"),
            ),
            // Replicate documents the wait in the body, not in a header.
            Failure::RateLimited => problem(
                429,
                "Request was throttled",
                &format!(
                    "Request was throttled. Expected available in {} seconds.",
                    RETRY_AFTER.as_secs()
                ),
            ),
            Failure::ServerError => problem(
                500,
                "Internal Server Error",
                "Something went wrong on our end.",
            ),
            Failure::Slow => ResponseTemplate::new(201)
                .set_body_json(prediction(server, "starting", serde_json::Value::Null))
                .set_delay(Duration::from_secs(3)),
            Failure::Garbage => ResponseTemplate::new(201).set_body_string("<html>oops</html>"),
            Failure::NotAnImage => return file(b"<html>not found</html>".to_vec()).await,
            Failure::Oversized => return file(vec![0x89; OVERSIZED]).await,
            Failure::Refusal => {
                let mut failed = prediction(server, "failed", serde_json::Value::Null);
                failed["error"] = serde_json::json!(
                    "NSFW content detected. Try running it again, or try a different prompt."
                );
                Mock::given(method("GET"))
                    .and(path(POLL_PATH))
                    .respond_with(ResponseTemplate::new(200).set_body_json(failed))
                    .mount(server)
                    .await;
                ResponseTemplate::new(201).set_body_json(prediction(
                    server,
                    "processing",
                    serde_json::Value::Null,
                ))
            }
        };
        Mock::given(method("POST"))
            .and(path(format!("/v1/models/{FLUX}/predictions")))
            .respond_with(create)
            .mount(server)
            .await;
    }
}
