//! The Stability adapter against a local server speaking the Stable Image v2beta wire
//! format (https://platform.stability.ai/docs/api-reference#tag/Generate).

use imagegate_core::Size;
use imagegate_providers::stability::{StabilityConfig, StabilityProvider};
use imagegate_providers::{Provider, ProviderError, ProviderRequest};
use std::time::Duration;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

mod common;
use common::{b64, png};

const KEY_ENV: &str = "IMAGEGATE_TEST_STABILITY_KEY";
const KEY: &str = "sk-stability-test-key";

fn provider(server: &MockServer, timeout_secs: u64) -> StabilityProvider {
    std::env::set_var(KEY_ENV, KEY);
    StabilityProvider::new(StabilityConfig {
        base_url: server.uri(),
        api_key_env: KEY_ENV.into(),
        timeout_secs,
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

async fn error_for(template: ResponseTemplate) -> ProviderError {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(template)
        .mount(&server)
        .await;
    provider(&server, 5)
        .generate(&request("core", 1024, 1024))
        .await
        .expect_err("call fails")
}

#[tokio::test]
async fn content_moderation_403_and_filtered_output_are_content_rejected() {
    let e = error_for(ResponseTemplate::new(403).set_body_json(serde_json::json!({
        "id": "ed14db44362126aab3cbd25cca51ffe3",
        "name": "content_moderation",
        "errors": ["Your request was flagged by our content moderation system, as a result your request was denied and you were not charged."]
    })))
    .await;
    assert!(
        matches!(e, ProviderError::ContentRejected { ref message, .. } if message.contains("flagged")),
        "{e:?}"
    );

    let e = error_for(ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "image": b64(&png(8, 8)), "finish_reason": "CONTENT_FILTERED", "seed": 5
    })))
    .await;
    assert!(matches!(e, ProviderError::ContentRejected { .. }), "{e:?}");
}

#[tokio::test]
async fn unauthorized_names_the_variable_only() {
    let e = error_for(ResponseTemplate::new(401).set_body_json(serde_json::json!({
        "id": "9160aa70222f5d9d1ec0c0a2e2a1ab2f",
        "name": "unauthorized",
        "errors": ["authorization: invalid or missing header value"]
    })))
    .await;
    let text = e.to_string();
    assert!(matches!(e, ProviderError::Config { .. }), "{e:?}");
    assert!(text.contains(KEY_ENV) && !text.contains(KEY), "{text}");
}

#[tokio::test]
async fn rate_limit_reads_an_http_date_retry_after() {
    let when = std::time::SystemTime::now() + Duration::from_secs(60);
    let e = error_for(
        ResponseTemplate::new(429)
            .set_body_json(serde_json::json!({
                "id": "rate-limit", "name": "rate_limit_exceeded",
                "errors": ["You have exceeded the rate limit of 150 requests within a 10 second period"]
            }))
            .insert_header("retry-after", httpdate::fmt_http_date(when).as_str()),
    )
    .await;
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

#[tokio::test]
async fn server_error_is_upstream() {
    let e = error_for(ResponseTemplate::new(500).set_body_json(serde_json::json!({
        "id": "2a1b2d4eafe2bc6ab4cd4d5c6133d513", "name": "internal_error",
        "errors": ["An unexpected server error has occurred, please try again later."]
    })))
    .await;
    assert!(
        matches!(e, ProviderError::Upstream { ref message, .. } if message.contains("internal_error")),
        "{e:?}"
    );
}

#[tokio::test]
async fn slow_server_times_out() {
    let e = {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
            .mount(&server)
            .await;
        provider(&server, 1)
            .generate(&request("core", 1024, 1024))
            .await
            .expect_err("times out")
    };
    assert!(matches!(e, ProviderError::Timeout { .. }), "{e:?}");
}

#[tokio::test]
async fn garbage_and_non_image_bytes_are_bad_responses() {
    for t in [
        ResponseTemplate::new(200).set_body_string("{\"image\": 12"),
        ResponseTemplate::new(200).set_body_raw(b"GIF? no, plain text".to_vec(), "image/png"),
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "image": b64(b"%PDF-1.7 not an image"), "finish_reason": "SUCCESS", "seed": 1
        })),
    ] {
        let e = error_for(t).await;
        assert!(matches!(e, ProviderError::BadResponse { .. }), "{e:?}");
    }
}
