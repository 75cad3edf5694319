//! The Google adapter against a local server speaking the Gemini API wire format:
//! `generateContent` with `inlineData` image parts
//! (https://ai.google.dev/api/generate-content), errors as google.rpc.Status.

use imagegate_core::Size;
use imagegate_providers::google::{GoogleConfig, GoogleProvider};
use imagegate_providers::{Provider, ProviderError, ProviderRequest};
use std::time::Duration;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::{answering, b64, png};
use crate::conformance::{Failure, Wire, BODY_LIMIT, OVERSIZED, RETRY_AFTER};
use async_trait::async_trait;
use std::sync::Arc;

const KEY_ENV: &str = "IMAGEGATE_TEST_GEMINI_KEY";
const KEY: &str = "AIzaTestKey0123456789";
const GEMINI: &str = "gemini-3.1-flash-image";

fn provider(server: &MockServer, timeout_secs: u64) -> GoogleProvider {
    std::env::set_var(KEY_ENV, KEY);
    GoogleProvider::new(GoogleConfig {
        base_url: format!("{}/v1beta", server.uri()),
        api_key_env: KEY_ENV.into(),
        timeout_secs,
        max_response_bytes: BODY_LIMIT,
        ..GoogleConfig::default()
    })
    .expect("provider builds")
}

fn request(model: &str, width: u32, height: u32) -> ProviderRequest {
    ProviderRequest {
        prompt: "a paper crane on a desk".into(),
        negative_prompt: Some("hands".into()),
        model: model.into(),
        size: Size { width, height },
        seed: 77,
    }
}

#[tokio::test]
async fn gemini_success_sends_generate_content_and_reads_usage_metadata() {
    let server = MockServer::start().await;
    let image = png(16, 9);
    Mock::given(method("POST"))
        .and(path(format!("/v1beta/models/{GEMINI}:generateContent")))
        .and(header("x-goog-api-key", KEY))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "candidates": [{
                "content": {"role": "model", "parts": [
                    {"text": "Here is your crane."},
                    {"inlineData": {"mimeType": "image/png", "data": b64(&image)}}
                ]},
                "finishReason": "STOP",
                "index": 0
            }],
            "usageMetadata": {
                "promptTokenCount": 9,
                "candidatesTokenCount": 1295,
                "totalTokenCount": 1304,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 9}],
                "candidatesTokensDetails": [
                    {"modality": "IMAGE", "tokenCount": 1290},
                    {"modality": "TEXT", "tokenCount": 5}
                ]
            },
            "modelVersion": GEMINI
        })))
        .expect(1)
        .mount(&server)
        .await;

    let g = provider(&server, 5)
        .generate(&request(GEMINI, 1920, 1080))
        .await
        .expect("generation succeeds");

    let sent = &server.received_requests().await.expect("recording on")[0];
    assert!(sent.url.query().is_none(), "key must not be in the URL");
    let body: serde_json::Value = serde_json::from_slice(&sent.body).expect("json body");
    assert_eq!(
        body,
        serde_json::json!({
            "contents": [{"role": "user", "parts": [{"text": "a paper crane on a desk"}]}],
            "generationConfig": {
                "responseModalities": ["TEXT", "IMAGE"],
                "candidateCount": 1,
                "seed": 77,
                "imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"}
            }
        })
    );
    assert_eq!(g.bytes.as_ref(), image.as_slice());
    assert_eq!(g.media_type, "image/png");
    assert_eq!((g.usage.width, g.usage.height), (16, 9));
    assert_eq!(g.usage.input_text_tokens, Some(9));
    assert_eq!(g.usage.output_image_tokens, Some(1290));
    assert_eq!(g.usage.raw["totalTokenCount"], 1304);
}

#[tokio::test]
async fn safety_blocks_are_content_rejected() {
    // Prompt blocked before generation.
    let server = answering(ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
        "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}
    })))
    .await;
    let e = provider(&server, 5)
        .generate(&request(GEMINI, 1024, 1024))
        .await
        .expect_err("blocked");
    assert!(
        matches!(e, ProviderError::ContentRejected { ref message, .. } if message.contains("PROHIBITED_CONTENT")),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_text_only_answer_is_a_bad_response() {
    let server = answering(ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "candidates": [{"content": {"parts": [{"text": "I can only describe it."}]}, "finishReason": "STOP"}]
    })))
    .await;
    let e = provider(&server, 5)
        .generate(&request(GEMINI, 1024, 1024))
        .await
        .expect_err("no image");
    assert!(matches!(e, ProviderError::BadResponse { .. }), "{e:?}");
}

pub struct GoogleWire;

#[async_trait]
impl Wire for GoogleWire {
    fn key_env(&self) -> &'static str {
        KEY_ENV
    }
    fn key(&self) -> &'static str {
        KEY
    }
    fn model(&self) -> &'static str {
        GEMINI
    }
    fn provider(&self, server: &MockServer) -> Arc<dyn Provider> {
        Arc::new(provider(server, 1))
    }
    async fn serve_success(&self, server: &MockServer, image: &[u8]) {
        Mock::given(method("POST"))
            .and(path(format!("/v1beta/models/{GEMINI}:generateContent")))
            .and(header("x-goog-api-key", KEY))
            .respond_with(ResponseTemplate::new(200).set_body_json(image_answer(image)))
            .expect(1)
            .mount(server)
            .await;
    }
    async fn serve_failure(&self, server: &MockServer, failure: Failure) {
        let status = |code: u16, status: &str, message: &str, details: serde_json::Value| {
            ResponseTemplate::new(code).set_body_json(serde_json::json!({"error": {
                "code": code, "message": message, "status": status, "details": details
            }}))
        };
        let answer = match failure {
            // Google answers 400, not 401, for a bad key, and quotes nothing of it;
            // the message here does, to prove it is not passed on.
            Failure::Unauthorized => status(
                400,
                "INVALID_ARGUMENT",
                &format!("API key not valid: {KEY}. Please pass a valid API key."),
                serde_json::json!([{
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com"
                }]),
            ),
            Failure::RateLimited => status(
                429,
                "RESOURCE_EXHAUSTED",
                "You exceeded your current quota.",
                serde_json::json!([{
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": format!("{}s", RETRY_AFTER.as_secs())
                }]),
            ),
            Failure::ServerError => status(500, "INTERNAL", "An internal error has occurred.", serde_json::json!([])),
            Failure::Slow => ResponseTemplate::new(200)
                .set_body_json(image_answer(&png(8, 8)))
                .set_delay(Duration::from_secs(3)),
            Failure::Garbage => ResponseTemplate::new(200).set_body_string("upstream connect error"),
            Failure::NotAnImage => ResponseTemplate::new(200).set_body_json(image_answer(b"plain text, no pixels")),
            Failure::Oversized => ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "candidates": [{"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "A".repeat(OVERSIZED)}}]}}]
            })),
            Failure::Refusal => ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "candidates": [{"content": {"parts": []}, "finishReason": "IMAGE_SAFETY", "index": 0}]
            })),
        };
        Mock::given(method("POST"))
            .and(path(format!("/v1beta/models/{GEMINI}:generateContent")))
            .respond_with(answer)
            .mount(server)
            .await;
    }
}

fn image_answer(image: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "candidates": [{
            "content": {"role": "model", "parts": [{"inlineData": {"mimeType": "image/png", "data": b64(image)}}]},
            "finishReason": "STOP",
            "index": 0
        }],
        "usageMetadata": {
            "promptTokenCount": 7,
            "candidatesTokenCount": 1120,
            "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1120}]
        }
    })
}
