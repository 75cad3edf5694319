//! The Google adapter against a local server speaking the Gemini API wire format:
//! `generateContent` with `inlineData` image parts (https://ai.google.dev/api/generate-content)
//! and Imagen `:predict` (https://ai.google.dev/gemini-api/docs/imagen).

use imagegate_core::Size;
use imagegate_providers::google::{GoogleConfig, GoogleProvider};
use imagegate_providers::{Provider, ProviderError, ProviderRequest};
use std::time::Duration;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

mod common;
use common::{b64, png};

const KEY_ENV: &str = "IMAGEGATE_TEST_GEMINI_KEY";
const KEY: &str = "AIzaTestKey0123456789";
const GEMINI: &str = "gemini-2.5-flash-image";
const IMAGEN: &str = "imagen-4.0-generate-001";

fn provider(server: &MockServer, timeout_secs: u64) -> GoogleProvider {
    std::env::set_var(KEY_ENV, KEY);
    GoogleProvider::new(GoogleConfig {
        base_url: format!("{}/v1beta", server.uri()),
        api_key_env: KEY_ENV.into(),
        timeout_secs,
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
                "imageConfig": {"aspectRatio": "16:9"}
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
async fn imagen_success_sends_predict_with_sample_count() {
    let server = MockServer::start().await;
    let image = png(12, 16);
    Mock::given(method("POST"))
        .and(path(format!("/v1beta/models/{IMAGEN}:predict")))
        .and(header("x-goog-api-key", KEY))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "predictions": [{"mimeType": "image/png", "bytesBase64Encoded": b64(&image)}]
        })))
        .expect(1)
        .mount(&server)
        .await;

    let g = provider(&server, 5)
        .generate(&request(IMAGEN, 768, 1024))
        .await
        .expect("generation succeeds");
    let sent = &server.received_requests().await.expect("recording on")[0];
    let body: serde_json::Value = serde_json::from_slice(&sent.body).expect("json body");
    assert_eq!(
        body,
        serde_json::json!({
            "instances": [{"prompt": "a paper crane on a desk"}],
            "parameters": {"sampleCount": 1, "aspectRatio": "3:4"}
        })
    );
    assert_eq!(g.bytes.as_ref(), image.as_slice());
    assert_eq!(g.usage.images, 1);
    assert_eq!((g.usage.width, g.usage.height), (12, 16));
    assert_eq!(g.usage.output_image_tokens, None);
}

async fn error_for(model: &str, template: ResponseTemplate) -> ProviderError {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(template)
        .mount(&server)
        .await;
    provider(&server, 5)
        .generate(&request(model, 1024, 1024))
        .await
        .expect_err("call fails")
}

#[tokio::test]
async fn safety_blocks_are_content_rejected() {
    // Prompt blocked before generation.
    let e = error_for(
        GEMINI,
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
            "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}
        })),
    )
    .await;
    assert!(
        matches!(e, ProviderError::ContentRejected { ref message, .. } if message.contains("PROHIBITED_CONTENT")),
        "{e:?}"
    );
    // Output image withheld.
    let e = error_for(
        GEMINI,
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "candidates": [{"content": {"parts": []}, "finishReason": "IMAGE_SAFETY", "index": 0}]
        })),
    )
    .await;
    assert!(
        matches!(e, ProviderError::ContentRejected { ref message, .. } if message.contains("IMAGE_SAFETY")),
        "{e:?}"
    );
    // Imagen drops filtered samples.
    let e = error_for(
        IMAGEN,
        ResponseTemplate::new(200).set_body_json(serde_json::json!({})),
    )
    .await;
    assert!(matches!(e, ProviderError::ContentRejected { .. }), "{e:?}");
}

#[tokio::test]
async fn invalid_key_is_a_config_error_naming_the_variable() {
    let e = error_for(
        GEMINI,
        ResponseTemplate::new(400).set_body_json(serde_json::json!({"error": {
            "code": 400,
            "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
            "details": [{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"}
            }]
        }})),
    )
    .await;
    assert!(matches!(e, ProviderError::Config { .. }), "{e:?}");
    assert!(e.to_string().contains(KEY_ENV) && !e.to_string().contains(KEY));

    let e = error_for(
        GEMINI,
        ResponseTemplate::new(403).set_body_json(serde_json::json!({"error": {
            "code": 403, "message": "Method doesn't allow unregistered callers.", "status": "PERMISSION_DENIED"
        }})),
    )
    .await;
    assert!(matches!(e, ProviderError::Config { .. }), "{e:?}");
}

#[tokio::test]
async fn resource_exhausted_uses_retry_info_delay() {
    let e = error_for(
        GEMINI,
        ResponseTemplate::new(429).set_body_json(serde_json::json!({"error": {
            "code": 429,
            "message": "You exceeded your current quota.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "23s"}]
        }})),
    )
    .await;
    assert!(
        matches!(e, ProviderError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(23)),
        "{e:?}"
    );
    let e = error_for(
        IMAGEN,
        ResponseTemplate::new(429)
            .insert_header("retry-after", "4")
            .set_body_json(serde_json::json!({"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}})),
    )
    .await;
    assert!(
        matches!(e, ProviderError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(4)),
        "{e:?}"
    );
}

#[tokio::test]
async fn server_error_is_upstream() {
    let e = error_for(
        GEMINI,
        ResponseTemplate::new(503).set_body_json(serde_json::json!({"error": {
            "code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"
        }})),
    )
    .await;
    assert!(
        matches!(e, ProviderError::Upstream { ref message, .. } if message.contains("UNAVAILABLE")),
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
        .generate(&request(IMAGEN, 1024, 1024))
        .await
        .expect_err("times out");
    assert!(matches!(e, ProviderError::Timeout { .. }), "{e:?}");
}

#[tokio::test]
async fn garbage_text_only_and_non_image_bytes_are_bad_responses() {
    let cases = [
        (GEMINI, ResponseTemplate::new(200).set_body_string("not json at all")),
        (
            GEMINI,
            ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "candidates": [{"content": {"parts": [{"text": "I can only describe it."}]}, "finishReason": "STOP"}]
            })),
        ),
        (
            GEMINI,
            ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "candidates": [{"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": b64(b"plain text")}}]}, "finishReason": "STOP"}]
            })),
        ),
        (
            IMAGEN,
            ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "predictions": [{"mimeType": "image/png", "bytesBase64Encoded": "@@@"}]
            })),
        ),
    ];
    for (model, t) in cases {
        let e = error_for(model, t).await;
        assert!(
            matches!(e, ProviderError::BadResponse { .. }),
            "{model}: {e:?}"
        );
    }
}
