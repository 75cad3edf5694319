//! OpenAI's Batch API for images against a local server speaking its Files and
//! Batches wire format (https://platform.openai.com/docs/api-reference/batch, the
//! openai-python `types/batch.py` and `file_object.py` shapes): the JSONL upload,
//! the batch over it, status transitions, output and error files mapped by
//! `custom_id`, expiry with partial results, cancel, and the failures in OpenAI's
//! words.

use imagegate_core::Size;
use imagegate_providers::openai::{OpenAiConfig, OpenAiProvider};
use imagegate_providers::{
    BatchLine, BatchState, LineResult, Provider, ProviderError, ProviderRequest,
};
use std::time::Duration;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::{b64, png};

const KEY_ENV: &str = "IMAGEGATE_TEST_OPENAI_BATCH_KEY";
const KEY: &str = "sk-test-batch-0123456789";

fn provider(server: &MockServer, timeout_secs: u64) -> OpenAiProvider {
    std::env::set_var(KEY_ENV, KEY);
    OpenAiProvider::new(OpenAiConfig {
        base_url: format!("{}/v1", server.uri()),
        api_key_env: KEY_ENV.into(),
        timeout_secs,
        ..OpenAiConfig::default()
    })
    .expect("provider builds")
}

fn line(id: &str, prompt: &str) -> BatchLine {
    BatchLine {
        custom_id: id.into(),
        request: ProviderRequest {
            prompt: prompt.into(),
            negative_prompt: None,
            model: "gpt-image-2".into(),
            size: Size {
                width: 1024,
                height: 1024,
            },
            seed: 1,
        },
    }
}

fn batch(status: &str, output: Option<&str>, error: Option<&str>) -> serde_json::Value {
    serde_json::json!({
        "id": "batch_abc123",
        "object": "batch",
        "endpoint": "/v1/images/generations",
        "errors": null,
        "input_file_id": "file-in123",
        "completion_window": "24h",
        "status": status,
        "output_file_id": output,
        "error_file_id": error,
        "created_at": 1_776_800_000,
        "in_progress_at": null,
        "expires_at": 1_776_886_400,
        "request_counts": {"total": 3, "completed": 1, "failed": 2},
        "metadata": {"imagegate_batch": "ub_test"}
    })
}

/// One line of an output file: an Images API answer with token usage.
fn output_line(id: &str, image: &[u8]) -> String {
    serde_json::json!({
        "id": format!("batch_req_{id}"),
        "custom_id": id,
        "response": {
            "status_code": 200,
            "request_id": "req_1",
            "body": {
                "created": 1_776_800_100,
                "data": [{"b64_json": b64(image)}],
                "quality": "medium",
                "size": "1024x1024",
                "usage": {
                    "total_tokens": 1770,
                    "input_tokens": 4,
                    "output_tokens": 1766,
                    "input_tokens_details": {"text_tokens": 4, "image_tokens": 0},
                    "output_tokens_details": {"image_tokens": 1766, "text_tokens": 0}
                }
            }
        },
        "error": null
    })
    .to_string()
}

async fn mount_submit(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/v1/files"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "id": "file-in123", "object": "file", "bytes": 420, "created_at": 1_776_800_000,
            "filename": "ub_test.jsonl", "purpose": "batch", "status": "processed"
        })))
        .expect(1)
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/batches"))
        .respond_with(ResponseTemplate::new(200).set_body_json(batch("validating", None, None)))
        .expect(1)
        .mount(server)
        .await;
}

#[tokio::test]
async fn a_batch_uploads_jsonl_moves_through_its_statuses_and_maps_results_by_custom_id() {
    let server = MockServer::start().await;
    mount_submit(&server).await;
    for status in ["validating", "in_progress", "finalizing"] {
        Mock::given(method("GET"))
            .and(path("/v1/batches/batch_abc123"))
            .respond_with(ResponseTemplate::new(200).set_body_json(batch(status, None, None)))
            .up_to_n_times(1)
            .mount(&server)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/v1/batches/batch_abc123"))
        .respond_with(ResponseTemplate::new(200).set_body_json(batch(
            "completed",
            Some("file-out"),
            Some("file-err"),
        )))
        .mount(&server)
        .await;
    let image = png(32, 32);
    Mock::given(method("GET"))
        .and(path("/v1/files/file-out/content"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string(format!("{}\n", output_line("job_a", &image))),
        )
        .mount(&server)
        .await;
    let refused = serde_json::json!({
        "id": "batch_req_b", "custom_id": "job_b",
        "response": {"status_code": 400, "request_id": "req_2", "body": {"error": {
            "message": "Your request was rejected by the safety system.",
            "type": "image_generation_user_error", "param": null, "code": "moderation_blocked"}}},
        "error": null
    });
    let broke = serde_json::json!({
        "id": "batch_req_c", "custom_id": "job_c",
        "response": {"status_code": 500, "request_id": "req_3", "body": {"error": {
            "message": "The server had an error processing your request.",
            "type": "server_error", "param": null, "code": null}}},
        "error": null
    });
    Mock::given(method("GET"))
        .and(path("/v1/files/file-err/content"))
        .respond_with(ResponseTemplate::new(200).set_body_string(format!("{refused}\n{broke}\n")))
        .mount(&server)
        .await;

    let openai = provider(&server, 5);
    let api = openai.batch().expect("OpenAI has a batch API");
    let lines = [
        line("job_a", "a red kite"),
        line("job_b", "something refused"),
        line("job_c", "an unlucky line"),
    ];
    let submitted = api
        .submit("gpt-image-2", "ub_test", &lines)
        .await
        .expect("submitted");
    assert_eq!(submitted.upstream_id, "batch_abc123");
    assert_eq!(submitted.input_file_id.as_deref(), Some("file-in123"));

    // The upload: purpose=batch and a JSONL of Images API requests.
    let got = server.received_requests().await.expect("recording on");
    let upload = String::from_utf8_lossy(&got[0].body).to_string();
    assert!(upload.contains("name=\"purpose\"\r\n\r\nbatch"), "{upload}");
    let jsonl: Vec<serde_json::Value> = upload
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(jsonl.len(), 3);
    assert_eq!(
        jsonl[0],
        serde_json::json!({
            "custom_id": "job_a", "method": "POST", "url": "/v1/images/generations",
            "body": {"model": "gpt-image-2", "prompt": "a red kite", "n": 1,
                     "size": "1024x1024", "quality": "medium"}
        })
    );
    let create: serde_json::Value = serde_json::from_slice(&got[1].body).expect("json");
    assert_eq!(
        create,
        serde_json::json!({
            "input_file_id": "file-in123",
            "endpoint": "/v1/images/generations",
            "completion_window": "24h",
            "metadata": {"imagegate_batch": "ub_test"}
        })
    );

    let mut seen = Vec::new();
    loop {
        let polled = api.poll("batch_abc123").await.expect("polled");
        seen.push(polled.upstream_status.clone());
        if polled.state.is_final() {
            assert_eq!(polled.state, BatchState::Completed);
            break;
        }
        assert_eq!(polled.state, BatchState::Working);
    }
    assert_eq!(
        seen,
        ["validating", "in_progress", "finalizing", "completed"]
    );

    let ids: Vec<String> = lines.iter().map(|l| l.custom_id.clone()).collect();
    let mut results = api
        .results("batch_abc123", "gpt-image-2", &ids)
        .await
        .expect("results");
    match results.remove("job_a") {
        Some(LineResult::Generated(g)) => {
            assert_eq!(&g.bytes[..], &image[..]);
            assert_eq!(g.model, "gpt-image-2");
            assert_eq!((g.usage.width, g.usage.height), (32, 32));
            assert_eq!(g.usage.input_text_tokens, Some(4));
            assert_eq!(g.usage.output_image_tokens, Some(1766));
        }
        other => panic!("job_a: {other:?}"),
    }
    assert!(
        matches!(
            results.remove("job_b"),
            Some(LineResult::Failed(ProviderError::ContentRejected { .. }))
        ),
        "a refused line is a refusal"
    );
    match results.remove("job_c") {
        Some(LineResult::Failed(e @ ProviderError::Upstream { .. })) => {
            assert!(e.to_string().contains("500"), "{e}")
        }
        other => panic!("job_c: {other:?}"),
    }
    assert!(results.is_empty());
}

#[tokio::test]
async fn an_expired_batch_returns_the_lines_it_finished() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/batches/batch_abc123"))
        .respond_with(ResponseTemplate::new(200).set_body_json(batch(
            "expired",
            Some("file-out"),
            Some("file-err"),
        )))
        .mount(&server)
        .await;
    let image = png(8, 8);
    Mock::given(method("GET"))
        .and(path("/v1/files/file-out/content"))
        .respond_with(ResponseTemplate::new(200).set_body_string(output_line("job_a", &image)))
        .mount(&server)
        .await;
    let expired = serde_json::json!({
        "id": "batch_req_b", "custom_id": "job_b", "response": null,
        "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}
    });
    Mock::given(method("GET"))
        .and(path("/v1/files/file-err/content"))
        .respond_with(ResponseTemplate::new(200).set_body_string(expired.to_string()))
        .mount(&server)
        .await;
    let openai = provider(&server, 5);
    let api = openai.batch().unwrap();
    assert_eq!(
        api.poll("batch_abc123").await.unwrap().state,
        BatchState::Expired
    );
    let ids = vec![
        "job_a".to_string(),
        "job_b".to_string(),
        "job_c".to_string(),
    ];
    let results = api
        .results("batch_abc123", "gpt-image-2", &ids)
        .await
        .unwrap();
    assert!(matches!(
        results.get("job_a"),
        Some(LineResult::Generated(_))
    ));
    match results.get("job_b") {
        Some(LineResult::Failed(e)) => assert!(e.to_string().contains("batch_expired"), "{e}"),
        other => panic!("job_b: {other:?}"),
    }
    assert!(
        !results.contains_key("job_c"),
        "a line never reported has no result"
    );
}

#[tokio::test]
async fn cancel_and_a_batch_that_failed_validation() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/batches/batch_abc123/cancel"))
        .respond_with(ResponseTemplate::new(200).set_body_json(batch("cancelling", None, None)))
        .expect(1)
        .mount(&server)
        .await;
    let mut failed = batch("failed", None, None);
    failed["errors"] = serde_json::json!({"object": "list", "data": [
        {"code": "invalid_url", "message": "URL /v1/images/generations is not supported", "param": null, "line": 1}
    ]});
    Mock::given(method("GET"))
        .and(path("/v1/batches/batch_abc123"))
        .respond_with(ResponseTemplate::new(200).set_body_json(failed))
        .mount(&server)
        .await;
    let openai = provider(&server, 5);
    let api = openai.batch().unwrap();
    let cancelling = api.cancel("batch_abc123").await.unwrap();
    assert_eq!(cancelling.state, BatchState::Working);
    assert_eq!(cancelling.upstream_status, "cancelling");
    match api.poll("batch_abc123").await.unwrap().state {
        BatchState::Failed { message } => assert!(message.contains("invalid_url"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn errors_are_typed_rate_limits_wait_and_the_key_never_leaks() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/files"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "7")
                .set_body_json(serde_json::json!({"error": {
                    "message": "Rate limit reached for requests", "type": "requests",
                    "param": null, "code": "rate_limit_exceeded"}})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/batches/batch_500"))
        .respond_with(
            ResponseTemplate::new(500).set_body_json(serde_json::json!({"error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error", "param": null, "code": null}})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/batches/batch_401"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(serde_json::json!({"error": {
            "message": format!("Incorrect API key provided: {KEY}."),
            "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/batches/batch_slow"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(batch("in_progress", None, None))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let openai = provider(&server, 1);
    let api = openai.batch().unwrap();
    let e = api
        .submit("gpt-image-2", "ub_x", &[line("job_a", "a kite")])
        .await
        .unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)), "{e:?}");
    assert!(e.is_retryable());
    let e = api.poll("batch_500").await.unwrap_err();
    assert!(matches!(e, ProviderError::Upstream { .. }), "{e:?}");
    let e = api.poll("batch_401").await.unwrap_err();
    assert!(matches!(e, ProviderError::Config { .. }), "{e:?}");
    assert!(!e.to_string().contains(KEY), "{e}");
    let e = api.poll("batch_slow").await.unwrap_err();
    assert!(matches!(e, ProviderError::Timeout { .. }), "{e:?}");
    // An OpenAI-compatible endpoint without a Batch API turns it off.
    std::env::set_var(KEY_ENV, KEY);
    let off = OpenAiProvider::new(OpenAiConfig {
        base_url: format!("{}/v1", server.uri()),
        api_key_env: KEY_ENV.into(),
        batch: false,
        ..OpenAiConfig::default()
    })
    .unwrap();
    assert!(off.batch().is_none());
}
