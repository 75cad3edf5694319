//! The Stability adapter against a local server speaking the Stable Image v2beta wire
//! format (https://platform.stability.ai/docs/api-reference#tag/Generate).

use imagegate_core::Size;
use imagegate_providers::stability::{StabilityConfig, StabilityProvider};
use imagegate_providers::{Provider, ProviderError, ProviderRequest};
use std::time::Duration;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::{answering, b64, png};
use crate::conformance::{Failure, Wire, BODY_LIMIT, OVERSIZED, RETRY_AFTER};
use async_trait::async_trait;
use std::sync::Arc;

const KEY_ENV: &str = "IMAGEGATE_TEST_STABILITY_KEY";
const KEY: &str = "sk-stability-test-key";

fn provider(server: &MockServer, timeout_secs: u64) -> StabilityProvider {
    std::env::set_var(KEY_ENV, KEY);
    StabilityProvider::new(StabilityConfig {
        base_url: server.uri(),
        api_key_env: KEY_ENV.into(),
        timeout_secs,
        max_response_bytes: BODY_LIMIT,
        ..StabilityConfig::default()
    })
    .expect("provider builds")
}

fn request(model: &str, width: u32, height: u32) -> ProviderRequest {
    ProviderRequest {
        prompt: "a lighthouse at dusk".into(),
        negative_prompt: Some("people, text".into()),
        model: model.into(),
        size: Size { width, height },
        seed: 1234,
    }
}

/// The value of one text field of a multipart/form-data body.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    let body = String::from_utf8_lossy(body);
    let marker = format!("name=\"{name}\"");
    let start = body.find(&marker)? + marker.len();
    let rest = &body[start..];
    let value_start = rest.find("\r\n\r\n")? + 4;
    let value = &rest[value_start..];
    let end = value.find("\r\n--")?;
    Some(value[..end].to_string())
}

#[tokio::test]
async fn sd3_success_sends_the_documented_multipart_form() {
    let server = MockServer::start().await;
    let image = png(32, 18);
    Mock::given(method("POST"))
        .and(path("/v2beta/stable-image/generate/sd3"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(header("accept", "application/json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "image": b64(&image),
            "finish_reason": "SUCCESS",
            "seed": 1235
        })))
        .expect(1)
        .mount(&server)
        .await;

    let g = provider(&server, 5)
        .generate(&request("sd3.5-large", 1920, 1080))
        .await
        .expect("generation succeeds");

    let sent = &server.received_requests().await.expect("recording on")[0];
    let content_type = sent
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("multipart/form-data; boundary="),
        "{content_type}"
    );
    let field = |n: &str| form_field(&sent.body, n);
    assert_eq!(field("prompt").as_deref(), Some("a lighthouse at dusk"));
    assert_eq!(field("negative_prompt").as_deref(), Some("people, text"));
    assert_eq!(field("aspect_ratio").as_deref(), Some("16:9"));
    assert_eq!(field("seed").as_deref(), Some("1235"));
    assert_eq!(field("output_format").as_deref(), Some("png"));
    assert_eq!(field("model").as_deref(), Some("sd3.5-large"));
    assert_eq!(field("mode").as_deref(), Some("text-to-image"));

    assert_eq!(g.bytes.as_ref(), image.as_slice());
    assert_eq!(g.media_type, "image/png");
    assert_eq!(g.usage.images, 1);
    assert_eq!((g.usage.width, g.usage.height), (32, 18));
    assert_eq!(g.usage.credits, None);
    assert_eq!(g.usage.raw["seed"], 1235);
    assert_eq!(g.usage.raw["finish_reason"], "SUCCESS");
}

#[tokio::test]
async fn ultra_and_core_use_their_own_paths_without_a_model_field() {
    for (model, p) in [
        ("ultra", "/v2beta/stable-image/generate/ultra"),
        ("core", "/v2beta/stable-image/generate/core"),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(p))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "image": b64(&png(8, 8)), "finish_reason": "SUCCESS", "seed": 7
            })))
            .expect(1)
            .mount(&server)
            .await;
        provider(&server, 5)
            .generate(&request(model, 800, 1200))
            .await
            .expect("generation succeeds");
        let sent = &server.received_requests().await.expect("recording on")[0];
        assert_eq!(form_field(&sent.body, "model"), None);
        assert_eq!(
            form_field(&sent.body, "aspect_ratio").as_deref(),
            Some("2:3")
        );
    }
}

#[tokio::test]
async fn raw_image_answer_with_headers_is_accepted() {
    let server = MockServer::start().await;
    let image = png(8, 8);
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(image.clone(), "image/png")
                .insert_header("finish-reason", "SUCCESS")
                .insert_header("seed", "99"),
        )
        .mount(&server)
        .await;
    let g = provider(&server, 5)
        .generate(&request("core", 512, 512))
        .await
        .expect("generation succeeds");
    assert_eq!(g.bytes.as_ref(), image.as_slice());
    assert_eq!(g.usage.raw["seed"], 99);
}

#[tokio::test]
async fn filtered_output_is_content_rejected() {
    let server = answering(ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "image": b64(&png(8, 8)), "finish_reason": "CONTENT_FILTERED", "seed": 5
    })))
    .await;
    let e = provider(&server, 5)
        .generate(&request("core", 1024, 1024))
        .await
        .expect_err("filtered");
    assert!(matches!(e, ProviderError::ContentRejected { .. }), "{e:?}");
}

#[tokio::test]
async fn rate_limit_reads_an_http_date_retry_after() {
    let when = std::time::SystemTime::now() + Duration::from_secs(60);
    let server = answering(
        ResponseTemplate::new(429)
            .set_body_json(serde_json::json!({
                "id": "rate-limit", "name": "rate_limit_exceeded",
                "errors": ["You have exceeded the rate limit of 150 requests within a 10 second period"]
            }))
            .insert_header("retry-after", httpdate::fmt_http_date(when).as_str()),
    )
    .await;
    let e = provider(&server, 5)
        .generate(&request("core", 1024, 1024))
        .await
        .expect_err("limited");
    match e {
        ProviderError::RateLimited {
            retry_after: Some(d),
            ..
        } => assert!(
            d > Duration::from_secs(50) && d <= Duration::from_secs(60),
            "{d:?}"
        ),
        other => panic!("{other:?}"),
    }
}

pub struct StabilityWire;

#[async_trait]
impl Wire for StabilityWire {
    fn key_env(&self) -> &'static str {
        KEY_ENV
    }
    fn key(&self) -> &'static str {
        KEY
    }
    fn model(&self) -> &'static str {
        "core"
    }
    fn provider(&self, server: &MockServer) -> Arc<dyn Provider> {
        Arc::new(provider(server, 1))
    }
    async fn serve_success(&self, server: &MockServer, image: &[u8]) {
        Mock::given(method("POST"))
            .and(path("/v2beta/stable-image/generate/core"))
            .and(header("authorization", format!("Bearer {KEY}").as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "image": b64(image), "finish_reason": "SUCCESS", "seed": 43
            })))
            .expect(1)
            .mount(server)
            .await;
    }
    async fn serve_failure(&self, server: &MockServer, failure: Failure) {
        let error = |status: u16, name: &str, message: &str| {
            ResponseTemplate::new(status).set_body_json(serde_json::json!({
                "id": "a1b2c3", "name": name, "errors": [message]
            }))
        };
        let answer = match failure {
            Failure::Unauthorized => error(401, "unauthorized", &format!("authorization: invalid API key {KEY}")),
            Failure::RateLimited => error(429, "rate_limit_exceeded", "You have exceeded the rate limit of 150 requests within a 10 second period")
                .insert_header("retry-after", RETRY_AFTER.as_secs().to_string().as_str()),
            Failure::ServerError => error(500, "internal_error", "An unexpected server error has occurred, please try again later."),
            Failure::Slow => ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"image": b64(&png(8, 8)), "finish_reason": "SUCCESS", "seed": 1}))
                .set_delay(Duration::from_secs(3)),
            Failure::Garbage => ResponseTemplate::new(200).set_body_string("{\"image\": "),
            // The raw-bytes answer (`accept: image/*`), with text for pixels.
            Failure::NotAnImage => ResponseTemplate::new(200)
                .set_body_raw(b"this is not a png".to_vec(), "image/png")
                .insert_header("finish-reason", "SUCCESS"),
            Failure::Oversized => ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"image": "A".repeat(OVERSIZED), "finish_reason": "SUCCESS"})),
            Failure::Refusal => error(
                403,
                "content_moderation",
                "Your request was flagged by our content moderation system, as a result your request was denied and you were not charged.",
            ),
        };
        Mock::given(method("POST"))
            .and(path("/v2beta/stable-image/generate/core"))
            .respond_with(answer)
            .mount(server)
            .await;
    }
}
