//! The OpenAI adapter against a local server speaking the Images API wire format
//! (https://platform.openai.com/docs/api-reference/images/create).

use imagegate_providers::openai::{OpenAiConfig, OpenAiProvider};
use imagegate_providers::{Provider, ProviderError};
use std::collections::BTreeMap;
use std::time::Duration;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

mod common;
use common::{b64, png, request};

const KEY_ENV: &str = "IMAGEGATE_TEST_OPENAI_KEY";
const KEY: &str = "sk-test-0123456789";

fn provider(server: &MockServer, timeout_secs: u64) -> OpenAiProvider {
    std::env::set_var(KEY_ENV, KEY);
    let mut quality = BTreeMap::new();
    quality.insert("gpt-image-1".to_string(), "medium".to_string());
    quality.insert("dall-e-3".to_string(), "hd".to_string());
    OpenAiProvider::new(OpenAiConfig {
        base_url: format!("{}/v1", server.uri()),
        api_key_env: KEY_ENV.into(),
        timeout_secs,
        quality,
        ..OpenAiConfig::default()
    })
    .expect("provider builds")
}

#[tokio::test]
async fn gpt_image_success_sends_the_documented_request_and_reads_token_usage() {
    let server = MockServer::start().await;
    let image = png(24, 16);
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "created": 1713833628,
            "data": [{"b64_json": b64(&image)}],
            "background": "opaque",
            "output_format": "png",
            "quality": "medium",
            "size": "1536x1024",
            "usage": {
                "total_tokens": 1614,
                "input_tokens": 14,
                "output_tokens": 1600,
                "input_tokens_details": {"text_tokens": 14, "image_tokens": 0}
            }
        })))
        .expect(1)
        .mount(&server)
        .await;

    let g = provider(&server, 5)
        .generate(&request("gpt-image-1", 1200, 800))
        .await
        .expect("generation succeeds");

    let sent = &server.received_requests().await.expect("recording on")[0];
    let body: serde_json::Value = serde_json::from_slice(&sent.body).expect("json body");
    // No seed, negative prompt or response_format: the API has none for GPT image models.
    assert_eq!(
        body,
        serde_json::json!({
            "model": "gpt-image-1",
            "prompt": "a red fox in snow",
            "n": 1,
            "size": "1536x1024",
            "quality": "medium"
        })
    );
    assert_eq!(g.bytes.as_ref(), image.as_slice());
    assert_eq!(g.media_type, "image/png");
    assert_eq!(g.provider, "openai");
    assert_eq!(g.model, "gpt-image-1");
    assert_eq!(g.cost.0, 0);
    assert_eq!(g.usage.images, 1);
    assert_eq!((g.usage.width, g.usage.height), (24, 16));
    assert_eq!(g.usage.quality.as_deref(), Some("medium"));
    assert_eq!(g.usage.input_text_tokens, Some(14));
    assert_eq!(g.usage.input_image_tokens, Some(0));
    assert_eq!(g.usage.output_image_tokens, Some(1600));
    assert_eq!(g.usage.raw["total_tokens"], 1614);
}

#[tokio::test]
async fn dall_e_3_asks_for_b64_json_and_reports_quality_without_tokens() {
    let server = MockServer::start().await;
    let image = png(8, 8);
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "created": 1713833628,
            "data": [{"b64_json": b64(&image), "revised_prompt": "A red fox standing in snow."}]
        })))
        .mount(&server)
        .await;

    let g = provider(&server, 5)
        .generate(&request("dall-e-3", 1920, 1080))
        .await
        .expect("generation succeeds");
    let sent = &server.received_requests().await.expect("recording on")[0];
    let body: serde_json::Value = serde_json::from_slice(&sent.body).expect("json body");
    assert_eq!(body["size"], "1792x1024");
    assert_eq!(body["quality"], "hd");
    assert_eq!(body["response_format"], "b64_json");
    assert_eq!(g.usage.quality.as_deref(), Some("hd"));
    assert_eq!(g.usage.output_image_tokens, None);
    assert!(g.usage.raw.is_null());
}

async fn error_for(
    status: u16,
    body: serde_json::Value,
    extra: Option<(&str, &str)>,
) -> ProviderError {
    let server = MockServer::start().await;
    let mut resp = ResponseTemplate::new(status).set_body_json(body);
    if let Some((k, v)) = extra {
        resp = resp.insert_header(k, v);
    }
    Mock::given(method("POST"))
        .respond_with(resp)
        .mount(&server)
        .await;
    provider(&server, 5)
        .generate(&request("gpt-image-1", 1024, 1024))
        .await
        .expect_err("call fails")
}

#[tokio::test]
async fn moderation_refusal_is_content_rejected() {
    let e = error_for(
        400,
        serde_json::json!({"error": {
            "message": "Your request was rejected as a result of our safety system.",
            "type": "image_generation_user_error",
            "param": null,
            "code": "moderation_blocked"
        }}),
        None,
    )
    .await;
    assert!(
        matches!(e, ProviderError::ContentRejected { ref message, .. } if message.contains("safety system")),
        "{e:?}"
    );

    let e = error_for(
        400,
        serde_json::json!({"error": {
            "message": "Your request was rejected as a result of our safety system.",
            "type": "invalid_request_error",
            "param": null,
            "code": "content_policy_violation"
        }}),
        None,
    )
    .await;
    assert!(matches!(e, ProviderError::ContentRejected { .. }), "{e:?}");
}

#[tokio::test]
async fn unauthorized_is_a_config_error_naming_the_variable_not_the_key() {
    let e = error_for(
        401,
        serde_json::json!({"error": {
            "message": "Incorrect API key provided: sk-test-************6789.",
            "type": "invalid_request_error",
            "param": null,
            "code": "invalid_api_key"
        }}),
        None,
    )
    .await;
    let text = e.to_string();
    assert!(matches!(e, ProviderError::Config { .. }), "{e:?}");
    assert!(text.contains(KEY_ENV), "{text}");
    assert!(!text.contains("sk-test"), "{text}");
}

#[tokio::test]
async fn rate_limit_carries_retry_after() {
    let e = error_for(
        429,
        serde_json::json!({"error": {"message": "Rate limit reached", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}),
        Some(("retry-after", "20")),
    )
    .await;
    assert!(
        matches!(e, ProviderError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(20)),
        "{e:?}"
    );
}

#[tokio::test]
async fn server_error_is_upstream() {
    let e = error_for(
        500,
        serde_json::json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error", "param": null, "code": null}}),
        None,
    )
    .await;
    assert!(
        matches!(e, ProviderError::Upstream { ref message, .. } if message.contains("500")),
        "{e:?}"
    );
}

#[tokio::test]
async fn slow_server_times_out() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .mount(&server)
        .await;
    let e = provider(&server, 1)
        .generate(&request("gpt-image-1", 1024, 1024))
        .await
        .expect_err("times out");
    assert!(
        matches!(e, ProviderError::Timeout { after, .. } if after == Duration::from_secs(1)),
        "{e:?}"
    );
}

#[tokio::test]
async fn garbage_bodies_and_non_images_are_bad_responses() {
    for body in [
        ResponseTemplate::new(200).set_body_string("<html>gateway</html>"),
        ResponseTemplate::new(200).set_body_json(serde_json::json!({"created": 1, "data": []})),
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"data": [{"b64_json": "%%%not base64"}]})),
        ResponseTemplate::new(200).set_body_json(
            serde_json::json!({"data": [{"b64_json": b64(b"just some text, not a picture")}]}),
        ),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(body)
            .mount(&server)
            .await;
        let e = provider(&server, 5)
            .generate(&request("gpt-image-1", 1024, 1024))
            .await
            .expect_err("bad response");
        assert!(matches!(e, ProviderError::BadResponse { .. }), "{e:?}");
    }
}

#[tokio::test]
async fn missing_key_variable_is_named_in_the_error() {
    let e = OpenAiProvider::new(OpenAiConfig {
        api_key_env: "IMAGEGATE_TEST_OPENAI_UNSET".into(),
        ..OpenAiConfig::default()
    })
    .expect_err("no key");
    assert!(e.to_string().contains("IMAGEGATE_TEST_OPENAI_UNSET"), "{e}");
}

#[test]
fn debug_output_hides_the_key() {
    std::env::set_var(KEY_ENV, KEY);
    let p = OpenAiProvider::new(OpenAiConfig {
        api_key_env: KEY_ENV.into(),
        ..OpenAiConfig::default()
    })
    .expect("builds");
    let dbg = format!("{p:?}");
    assert!(!dbg.contains(KEY) && dbg.contains("***"), "{dbg}");
}
