//! The AUTOMATIC1111 adapter against a local server speaking the web UI's
//! `/sdapi/v1/txt2img` wire format
//! (https://github.com/AUTOMATIC1111/stable-diffusion-webui/wiki/API).

use imagegate_core::Size;
use imagegate_providers::automatic1111::{Automatic1111Config, Automatic1111Provider};
use imagegate_providers::{Provider, ProviderError, ProviderRequest};
use std::time::Duration;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::{answering, b64, png};
use crate::conformance::{Failure, Wire, BODY_LIMIT, OVERSIZED, RETRY_AFTER};
use async_trait::async_trait;
use std::sync::Arc;

const AUTH_ENV: &str = "IMAGEGATE_TEST_A1111_AUTH";
const AUTH: &str = "imagegate:hunter2-secret";

fn provider(server: &MockServer, timeout_secs: u64) -> Automatic1111Provider {
    std::env::set_var(AUTH_ENV, AUTH);
    Automatic1111Provider::new(Automatic1111Config {
        base_url: server.uri(),
        api_key_env: Some(AUTH_ENV.into()),
        timeout_secs,
        max_response_bytes: BODY_LIMIT,
        sampler_name: Some("DPM++ 2M".into()),
        ..Automatic1111Config::default()
    })
    .expect("provider builds")
}

fn request() -> ProviderRequest {
    ProviderRequest {
        prompt: "a brass compass on a map".into(),
        negative_prompt: Some("blurry, watermark".into()),
        model: "sd_xl_base_1.0".into(),
        size: Size {
            width: 1020,
            height: 766,
        },
        seed: (1u64 << 32) + 9,
    }
}

#[tokio::test]
async fn txt2img_success_sends_the_documented_payload_and_measures_gpu_time() {
    let server = MockServer::start().await;
    let image = png(16, 12);
    let basic = format!("Basic {}", b64(AUTH.as_bytes()));
    Mock::given(method("POST"))
        .and(path("/sdapi/v1/txt2img"))
        .and(header("authorization", basic.as_str()))
        .respond_with(
            ResponseTemplate::new(200)
                .set_delay(Duration::from_millis(200))
                .set_body_json(serde_json::json!({
                    "images": [b64(&image)],
                    "parameters": {"prompt": "a brass compass on a map", "seed": 9},
                    "info": "{\"prompt\": \"a brass compass on a map\", \"seed\": 9, \"all_seeds\": [9], \"width\": 1016, \"height\": 760, \"sd_model_name\": \"sd_xl_base_1.0\"}"
                })),
        )
        .expect(1)
        .mount(&server)
        .await;

    let g = provider(&server, 5)
        .generate(&request())
        .await
        .expect("generation succeeds");
    let sent = &server.received_requests().await.expect("recording on")[0];
    let body: serde_json::Value = serde_json::from_slice(&sent.body).expect("json body");
    assert_eq!(
        body,
        serde_json::json!({
            "prompt": "a brass compass on a map",
            "negative_prompt": "blurry, watermark",
            "seed": 9,
            "width": 1016,
            "height": 760,
            "steps": 30,
            "cfg_scale": 7.0,
            "sampler_name": "DPM++ 2M",
            "batch_size": 1,
            "n_iter": 1,
            "send_images": true,
            "save_images": false,
            "override_settings": {"sd_model_checkpoint": "sd_xl_base_1.0"}
        })
    );
    assert_eq!(g.bytes.as_ref(), image.as_slice());
    assert_eq!(g.media_type, "image/png");
    assert_eq!((g.usage.width, g.usage.height), (16, 12));
    let secs = g.usage.gpu_seconds.expect("measured");
    assert!((0.2..5.0).contains(&secs), "{secs}");
    assert_eq!(g.usage.raw["seed"], 9);
}

#[tokio::test]
async fn server_exception_is_upstream_with_its_message() {
    let server = answering(ResponseTemplate::new(500).set_body_json(serde_json::json!({
        "error": "OutOfMemoryError",
        "detail": "",
        "body": "",
        "errors": "CUDA out of memory. Tried to allocate 2.00 GiB"
    })))
    .await;
    let e = provider(&server, 5)
        .generate(&request())
        .await
        .expect_err("fails");
    assert!(
        matches!(e, ProviderError::Upstream { ref message, .. } if message.contains("CUDA out of memory")),
        "{e:?}"
    );
}

#[test]
fn debug_output_hides_the_password() {
    std::env::set_var(AUTH_ENV, AUTH);
    let p = Automatic1111Provider::new(Automatic1111Config {
        api_key_env: Some(AUTH_ENV.into()),
        ..Automatic1111Config::default()
    })
    .expect("builds");
    let dbg = format!("{p:?}");
    assert!(!dbg.contains("hunter2"), "{dbg}");
}

pub struct A1111Wire;

#[async_trait]
impl Wire for A1111Wire {
    fn key_env(&self) -> &'static str {
        AUTH_ENV
    }
    fn key(&self) -> &'static str {
        "hunter2-secret"
    }
    fn model(&self) -> &'static str {
        "sd_xl_base_1.0"
    }
    fn provider(&self, server: &MockServer) -> Arc<dyn Provider> {
        Arc::new(provider(server, 1))
    }
    async fn serve_success(&self, server: &MockServer, image: &[u8]) {
        // HTTP basic auth of imagegate:hunter2-secret.
        Mock::given(method("POST"))
            .and(path("/sdapi/v1/txt2img"))
            .and(header(
                "authorization",
                "Basic aW1hZ2VnYXRlOmh1bnRlcjItc2VjcmV0",
            ))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "images": [b64(image)], "parameters": {}, "info": "{\"seed\": 1}"
            })))
            .expect(1)
            .mount(server)
            .await;
    }
    async fn serve_failure(&self, server: &MockServer, failure: Failure) {
        let answer = match failure {
            // FastAPI's HTTP basic refusal (`--api-auth`); this one quotes the password.
            Failure::Unauthorized => ResponseTemplate::new(401)
                .set_body_json(
                    serde_json::json!({"detail": "Incorrect username or password: hunter2-secret"}),
                )
                .insert_header("www-authenticate", "Basic"),
            // A proxy in front of the web UI limits it.
            Failure::RateLimited => ResponseTemplate::new(429)
                .set_body_string("Too Many Requests")
                .insert_header("retry-after", RETRY_AFTER.as_secs().to_string().as_str()),
            Failure::ServerError => ResponseTemplate::new(500).set_body_json(serde_json::json!({
                "error": "RuntimeError", "detail": "", "body": "", "errors": "Model not loaded"
            })),
            Failure::Slow => ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"images": [b64(&png(8, 8))]}))
                .set_delay(Duration::from_secs(3)),
            Failure::Garbage => ResponseTemplate::new(200).set_body_string("Internal Server Error"),
            Failure::NotAnImage => ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"images": [b64(b"not a picture at all")]})),
            Failure::Oversized => ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"images": ["A".repeat(OVERSIZED)]})),
            Failure::Refusal => unreachable!("the web UI has no refusals"),
        };
        Mock::given(method("POST"))
            .and(path("/sdapi/v1/txt2img"))
            .respond_with(answer)
            .mount(server)
            .await;
    }
}
