//! The AUTOMATIC1111 adapter against a local server speaking the web UI's
//! `/sdapi/v1/txt2img` wire format
//! (https://github.com/AUTOMATIC1111/stable-diffusion-webui/wiki/API).

use imagegate_core::Size;
use imagegate_providers::automatic1111::{Automatic1111Config, Automatic1111Provider};
use imagegate_providers::{Provider, ProviderError, ProviderRequest};
use std::time::Duration;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

mod common;
use common::{b64, png};

const AUTH_ENV: &str = "IMAGEGATE_TEST_A1111_AUTH";
const AUTH: &str = "imagegate:hunter2-secret";

fn provider(server: &MockServer, timeout_secs: u64) -> Automatic1111Provider {
    std::env::set_var(AUTH_ENV, AUTH);
    Automatic1111Provider::new(Automatic1111Config {
        base_url: server.uri(),
        api_key_env: Some(AUTH_ENV.into()),
        timeout_secs,
        usd_per_gpu_second: 0.0004,
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
    assert_eq!(g.cost.0, 0);
}

async fn error_for(template: ResponseTemplate, timeout_secs: u64) -> ProviderError {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(template)
        .mount(&server)
        .await;
    provider(&server, timeout_secs)
        .generate(&request())
        .await
        .expect_err("call fails")
}

#[tokio::test]
async fn wrong_credentials_are_a_config_error_without_the_password() {
    let e = error_for(
        ResponseTemplate::new(401)
            .set_body_json(serde_json::json!({"detail": "Incorrect username or password"})),
        5,
    )
    .await;
    let text = e.to_string();
    assert!(matches!(e, ProviderError::Config { .. }), "{e:?}");
    assert!(
        text.contains(AUTH_ENV) && !text.contains("hunter2"),
        "{text}"
    );
}

#[tokio::test]
async fn server_exception_is_upstream_with_its_message() {
    let e = error_for(
        ResponseTemplate::new(500).set_body_json(serde_json::json!({
            "error": "OutOfMemoryError",
            "detail": "",
            "body": "",
            "errors": "CUDA out of memory. Tried to allocate 2.00 GiB"
        })),
        5,
    )
    .await;
    assert!(
        matches!(e, ProviderError::Upstream { ref message, .. } if message.contains("CUDA out of memory")),
        "{e:?}"
    );
}

#[tokio::test]
async fn busy_server_429_and_timeouts() {
    let e = error_for(
        ResponseTemplate::new(429).insert_header("retry-after", "2"),
        5,
    )
    .await;
    assert!(matches!(e, ProviderError::RateLimited { .. }), "{e:?}");
    let e = error_for(
        ResponseTemplate::new(200).set_delay(Duration::from_secs(3)),
        1,
    )
    .await;
    assert!(matches!(e, ProviderError::Timeout { .. }), "{e:?}");
}

#[tokio::test]
async fn garbage_and_non_images_are_bad_responses() {
    for t in [
        ResponseTemplate::new(200).set_body_string("Internal Server Error"),
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"images": [], "parameters": {}, "info": "{}"})),
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"images": [b64(b"not a png")], "info": "{}"})),
    ] {
        let e = error_for(t, 5).await;
        assert!(matches!(e, ProviderError::BadResponse { .. }), "{e:?}");
    }
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
