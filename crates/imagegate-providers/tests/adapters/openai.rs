//! The OpenAI adapter against a local server speaking the Images API wire format
//! (https://platform.openai.com/docs/api-reference/images/create): gpt-image-2's
//! free sizes and token usage, and the suite's failure cases in OpenAI's words.

use imagegate_providers::openai::{OpenAiConfig, OpenAiProvider};
use imagegate_providers::Provider;
use std::collections::BTreeMap;
use std::time::Duration;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::{b64, png, request};
use crate::conformance::{Failure, Wire, BODY_LIMIT, OVERSIZED, RETRY_AFTER};
use async_trait::async_trait;
use std::sync::Arc;

const KEY_ENV: &str = "IMAGEGATE_TEST_OPENAI_KEY";
const KEY: &str = "sk-test-0123456789";

fn provider(server: &MockServer, timeout_secs: u64) -> OpenAiProvider {
    std::env::set_var(KEY_ENV, KEY);
    let mut quality = BTreeMap::new();
    quality.insert("gpt-image-2".to_string(), "high".to_string());
    OpenAiProvider::new(OpenAiConfig {
        base_url: format!("{}/v1", server.uri()),
        api_key_env: KEY_ENV.into(),
        timeout_secs,
        max_response_bytes: BODY_LIMIT,
        quality,
        ..OpenAiConfig::default()
    })
    .expect("provider builds")
}

#[tokio::test]
async fn gpt_image_2_sends_a_free_size_and_reads_token_usage() {
    let server = MockServer::start().await;
    let image = png(24, 16);
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "created": 1776800000,
            "data": [{"b64_json": b64(&image)}],
            "background": "opaque",
            "output_format": "png",
            "quality": "high",
            "size": "2048x1152",
            "usage": {
                "total_tokens": 7044,
                "input_tokens": 14,
                "output_tokens": 7030,
                "input_tokens_details": {"text_tokens": 14, "image_tokens": 0},
                "output_tokens_details": {"image_tokens": 7024, "text_tokens": 6}
            }
        })))
        .expect(1)
        .mount(&server)
        .await;

    let g = provider(&server, 5)
        .generate(&request("gpt-image-2", 2048, 1152))
        .await
        .expect("generation succeeds");

    let sent = &server.received_requests().await.expect("recording on")[0];
    let body: serde_json::Value = serde_json::from_slice(&sent.body).expect("json body");
    // No seed, negative prompt or response_format: the API has none for GPT image
    // models. 2048x1152 is within gpt-image-2's limits, so it is asked for as is.
    assert_eq!(
        body,
        serde_json::json!({
            "model": "gpt-image-2",
            "prompt": "a red fox in snow",
            "n": 1,
            "size": "2048x1152",
            "quality": "high"
        })
    );
    assert_eq!(g.usage.quality.as_deref(), Some("high"));
    assert_eq!(g.usage.input_text_tokens, Some(14));
    assert_eq!(g.usage.input_image_tokens, Some(0));
    // The image's own output tokens, not the reasoning text's.
    assert_eq!(g.usage.output_image_tokens, Some(7024));
    assert_eq!(g.usage.raw["total_tokens"], 7044);
}

#[tokio::test]
async fn an_unconfigured_quality_asks_for_the_price_book_default() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "created": 1, "data": [{"b64_json": b64(&png(8, 8))}]
        })))
        .mount(&server)
        .await;
    std::env::set_var(KEY_ENV, KEY);
    let p = OpenAiProvider::new(OpenAiConfig {
        base_url: format!("{}/v1", server.uri()),
        api_key_env: KEY_ENV.into(),
        ..OpenAiConfig::default()
    })
    .expect("builds");
    let g = p
        .generate(&request("gpt-image-2", 1000, 1000))
        .await
        .expect("served");
    let sent = &server.received_requests().await.expect("recording on")[0];
    let body: serde_json::Value = serde_json::from_slice(&sent.body).expect("json body");
    assert_eq!(
        (body["quality"].as_str(), body["size"].as_str()),
        (Some("medium"), Some("1008x1008"))
    );
    assert_eq!(g.usage.quality.as_deref(), Some("medium"));
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

pub struct OpenAiWire;

#[async_trait]
impl Wire for OpenAiWire {
    fn key_env(&self) -> &'static str {
        KEY_ENV
    }
    fn key(&self) -> &'static str {
        KEY
    }
    fn model(&self) -> &'static str {
        "gpt-image-2"
    }
    fn provider(&self, server: &MockServer) -> Arc<dyn Provider> {
        Arc::new(provider(server, 1))
    }
    async fn serve_success(&self, server: &MockServer, image: &[u8]) {
        Mock::given(method("POST"))
            .and(path("/v1/images/generations"))
            .and(header("authorization", format!("Bearer {KEY}").as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "created": 1776800000,
                "data": [{"b64_json": b64(image)}],
                "usage": {"total_tokens": 1070, "input_tokens": 14, "output_tokens": 1056,
                          "input_tokens_details": {"text_tokens": 14, "image_tokens": 0}}
            })))
            .expect(1)
            .mount(server)
            .await;
    }
    async fn serve_failure(&self, server: &MockServer, failure: Failure) {
        let error = |status: u16, message: &str, kind: &str, code: serde_json::Value| {
            ResponseTemplate::new(status).set_body_json(serde_json::json!({"error": {
                "message": message, "type": kind, "param": null, "code": code
            }}))
        };
        let answer = match failure {
            Failure::Unauthorized => error(
                401,
                &format!("Incorrect API key provided: {KEY}. You can find your API key at https://platform.openai.com/account/api-keys."),
                "invalid_request_error",
                "invalid_api_key".into(),
            ),
            Failure::RateLimited => error(429, "Rate limit reached for images per minute", "requests", "rate_limit_exceeded".into())
                .insert_header("retry-after", RETRY_AFTER.as_secs().to_string().as_str()),
            Failure::ServerError => error(500, "The server had an error while processing your request.", "server_error", serde_json::Value::Null),
            Failure::Slow => ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"created": 1, "data": [{"b64_json": b64(&png(8, 8))}]}))
                .set_delay(Duration::from_secs(3)),
            Failure::Garbage => ResponseTemplate::new(200).set_body_string("<html>502 Bad Gateway</html>"),
            Failure::NotAnImage => ResponseTemplate::new(200).set_body_json(
                serde_json::json!({"created": 1, "data": [{"b64_json": b64(b"just some text, not a picture")}]}),
            ),
            Failure::Oversized => ResponseTemplate::new(200).set_body_json(
                serde_json::json!({"created": 1, "data": [{"b64_json": "A".repeat(OVERSIZED)}]}),
            ),
            Failure::Refusal => error(
                400,
                "Your request was rejected as a result of our safety system.",
                "image_generation_user_error",
                "moderation_blocked".into(),
            ),
        };
        Mock::given(method("POST"))
            .and(path("/v1/images/generations"))
            .respond_with(answer)
            .mount(server)
            .await;
    }
}
