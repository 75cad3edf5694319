//! Gemini batch mode against a local server speaking its wire format
//! (https://ai.google.dev/api/batch-api): inlined generateContent requests in one
//! `batchGenerateContent` call, the batch operation polled through its states, the
//! inlined responses read back (by key, or by position when the key is missing),
//! expiry with partial results, cancel, and errors as google.rpc.Status.

use imagegate_core::Size;
use imagegate_providers::google::{GoogleConfig, GoogleProvider};
use imagegate_providers::{
    BatchLine, BatchState, LineResult, Provider, ProviderError, ProviderRequest,
};
use std::time::Duration;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::{b64, png};

const KEY_ENV: &str = "IMAGEGATE_TEST_GEMINI_BATCH_KEY";
const KEY: &str = "AIzaBatchKey0123456789";
const MODEL: &str = "gemini-3.1-flash-image";

fn provider(server: &MockServer) -> GoogleProvider {
    std::env::set_var(KEY_ENV, KEY);
    GoogleProvider::new(GoogleConfig {
        base_url: format!("{}/v1beta", server.uri()),
        api_key_env: KEY_ENV.into(),
        timeout_secs: 5,
        ..GoogleConfig::default()
    })
    .expect("provider builds")
}

fn line(id: &str, prompt: &str) -> BatchLine {
    BatchLine {
        custom_id: id.into(),
        request: ProviderRequest {
            prompt: prompt.into(),
            negative_prompt: None,
            model: MODEL.into(),
            size: Size {
                width: 1024,
                height: 1024,
            },
            seed: 5,
        },
    }
}

fn operation(state: &str, response: Option<serde_json::Value>) -> serde_json::Value {
    let mut op = serde_json::json!({
        "name": "batches/abc123",
        "metadata": {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
            "model": format!("models/{MODEL}"),
            "displayName": "ub_test",
            "createTime": "2026-12-08T01:00:00Z",
            "updateTime": "2026-12-08T01:05:00Z",
            "batchStats": {"requestCount": "3", "pendingRequestCount": "3"},
            "state": state,
            "name": "batches/abc123"
        },
        "done": response.is_some()
    });
    if let Some(r) = response {
        op["response"] = r;
    }
    op
}

fn image_response(image: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "candidates": [{
            "content": {"role": "model", "parts": [
                {"inlineData": {"mimeType": "image/png", "data": b64(image)}}
            ]},
            "finishReason": "STOP"
        }],
        "usageMetadata": {
            "promptTokenCount": 7,
            "candidatesTokenCount": 1120,
            "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1120}]
        }
    })
}

#[tokio::test]
async fn a_batch_is_inlined_polled_through_its_states_and_read_back_in_order() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/v1beta/models/{MODEL}:batchGenerateContent")))
        .and(header("x-goog-api-key", KEY))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(operation("BATCH_STATE_PENDING", None)),
        )
        .expect(1)
        .mount(&server)
        .await;
    for state in ["BATCH_STATE_PENDING", "BATCH_STATE_RUNNING"] {
        Mock::given(method("GET"))
            .and(path("/v1beta/batches/abc123"))
            .respond_with(ResponseTemplate::new(200).set_body_json(operation(state, None)))
            .up_to_n_times(1)
            .mount(&server)
            .await;
    }
    let image = png(16, 16);
    let output = serde_json::json!({
        "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput",
        "inlinedResponses": {"inlinedResponses": [
            // Keyed, out of order; then one without its key (matched by position).
            {"response": {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}},
             "metadata": {"key": "job_b"}},
            {"response": image_response(&image), "metadata": {"key": "job_a"}},
            {"error": {"code": 13, "message": "Internal error while generating."}}
        ]}
    });
    Mock::given(method("GET"))
        .and(path("/v1beta/batches/abc123"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(operation("BATCH_STATE_SUCCEEDED", Some(output))),
        )
        .mount(&server)
        .await;

    let google = provider(&server);
    let api = google.batch().expect("Gemini has batch mode");
    let lines = [
        line("job_a", "a paper boat"),
        line("job_b", "something refused"),
        line("job_c", "an unlucky line"),
    ];
    let submitted = api
        .submit(MODEL, "ub_test", &lines)
        .await
        .expect("submitted");
    assert_eq!(submitted.upstream_id, "batches/abc123");
    assert_eq!(submitted.input_file_id, None);
    let sent: serde_json::Value =
        serde_json::from_slice(&server.received_requests().await.expect("recording on")[0].body)
            .expect("json");
    assert_eq!(sent["batch"]["displayName"], "ub_test");
    let requests = &sent["batch"]["inputConfig"]["requests"]["requests"];
    assert_eq!(requests.as_array().map(Vec::len), Some(3));
    assert_eq!(requests[0]["metadata"]["key"], "job_a");
    assert_eq!(
        requests[0]["request"]["contents"][0]["parts"][0]["text"],
        "a paper boat"
    );
    assert_eq!(
        requests[0]["request"]["generationConfig"]["imageConfig"],
        serde_json::json!({"aspectRatio": "1:1", "imageSize": "1K"})
    );

    let mut seen = Vec::new();
    loop {
        let polled = api.poll("batches/abc123").await.expect("polled");
        seen.push(polled.upstream_status.clone());
        if polled.state.is_final() {
            assert_eq!(polled.state, BatchState::Completed);
            break;
        }
    }
    assert_eq!(
        seen,
        [
            "BATCH_STATE_PENDING",
            "BATCH_STATE_RUNNING",
            "BATCH_STATE_SUCCEEDED"
        ]
    );
    let ids: Vec<String> = lines.iter().map(|l| l.custom_id.clone()).collect();
    let mut results = api.results("batches/abc123", MODEL, &ids).await.unwrap();
    match results.remove("job_a") {
        Some(LineResult::Generated(g)) => {
            assert_eq!(&g.bytes[..], &image[..]);
            assert_eq!(g.usage.output_image_tokens, Some(1120));
            assert_eq!(g.usage.input_text_tokens, Some(7));
        }
        other => panic!("job_a: {other:?}"),
    }
    assert!(matches!(
        results.remove("job_b"),
        Some(LineResult::Failed(ProviderError::ContentRejected { .. }))
    ));
    match results.remove("job_c") {
        Some(LineResult::Failed(e @ ProviderError::Upstream { .. })) => {
            assert!(e.to_string().contains("13"), "{e}")
        }
        other => panic!("job_c: {other:?}"),
    }
}

#[tokio::test]
async fn an_expired_batch_keeps_what_it_finished_and_cancel_is_a_post() {
    let server = MockServer::start().await;
    let image = png(8, 8);
    let output = serde_json::json!({
        "inlinedResponses": {"inlinedResponses": [
            {"response": image_response(&image), "metadata": {"key": "job_a"}}
        ]}
    });
    Mock::given(method("GET"))
        .and(path("/v1beta/batches/abc123"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(operation("BATCH_STATE_EXPIRED", Some(output))),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1beta/batches/abc123:cancel"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({})))
        .expect(1)
        .mount(&server)
        .await;
    let google = provider(&server);
    let api = google.batch().unwrap();
    assert_eq!(
        api.poll("batches/abc123").await.unwrap().state,
        BatchState::Expired
    );
    let ids = vec!["job_a".to_string(), "job_b".to_string()];
    let results = api.results("batches/abc123", MODEL, &ids).await.unwrap();
    assert!(matches!(
        results.get("job_a"),
        Some(LineResult::Generated(_))
    ));
    assert!(!results.contains_key("job_b"));
    // Cancel answers with the state after it.
    assert_eq!(
        api.cancel("batches/abc123").await.unwrap().state,
        BatchState::Expired
    );
    // A name that is not a batch's never reaches a URL.
    assert!(matches!(
        api.poll("batches/../models").await,
        Err(ProviderError::Config { .. })
    ));
}

#[tokio::test]
async fn rate_limits_carry_the_retry_delay_and_a_failed_batch_says_why() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/v1beta/models/{MODEL}:batchGenerateContent")))
        .respond_with(ResponseTemplate::new(429).set_body_json(serde_json::json!({"error": {
            "code": 429, "message": "Resource has been exhausted (e.g. check quota).",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]
        }})))
        .mount(&server)
        .await;
    let mut failed = operation("BATCH_STATE_FAILED", None);
    failed["done"] = serde_json::json!(true);
    failed["error"] =
        serde_json::json!({"code": 3, "message": "Request payload size exceeds the limit."});
    Mock::given(method("GET"))
        .and(path("/v1beta/batches/abc123"))
        .respond_with(ResponseTemplate::new(200).set_body_json(failed))
        .mount(&server)
        .await;
    let google = provider(&server);
    let api = google.batch().unwrap();
    let e = api
        .submit(MODEL, "ub_x", &[line("job_a", "a kite")])
        .await
        .unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)), "{e:?}");
    match api.poll("batches/abc123").await.unwrap().state {
        BatchState::Failed { message } => assert!(message.contains("payload"), "{message}"),
        other => panic!("{other:?}"),
    }
    let results = api
        .results("batches/abc123", MODEL, &["job_a".to_string()])
        .await
        .unwrap();
    assert!(results.is_empty());
}
