//! OpenAI's Batch API for the Images API: a JSONL file of `/v1/images/generations`
//! requests uploaded with `purpose=batch`, one batch over it, polled until it ends,
//! then its output and error files read back and matched to our lines by `custom_id`.
//! OpenAI bills batch requests at half the live price; the price book says so.
//!
//! Wire format, from the API reference and the official SDK generated from its
//! OpenAPI spec (openai-python `types/batch.py`, `batch_create_params.py`,
//! `file_object.py`, `batch_request_counts.py`; read 2026-12-08):
//! - <https://platform.openai.com/docs/api-reference/files/create>: multipart
//!   `purpose` + `file`, answered with a `FileObject` (`id`, `bytes`, `filename`, ...).
//! - <https://platform.openai.com/docs/api-reference/batch/create>: `input_file_id`,
//!   `endpoint`, `completion_window` (`24h` only), `metadata` (16 string pairs).
//! - `Batch.status`: `validating`, `failed`, `in_progress`, `finalizing`, `completed`,
//!   `expired`, `cancelling`, `cancelled`; `output_file_id`, `error_file_id`,
//!   `errors.data[]` (`code`, `message`, `line`) for a batch that failed validation.
//! - <https://platform.openai.com/docs/api-reference/batch/request-input>: a line is
//!   `{"custom_id", "method": "POST", "url", "body"}`;
//!   <https://platform.openai.com/docs/api-reference/batch/request-output>: a result
//!   is `{"id", "custom_id", "response": {"status_code", "request_id", "body"},
//!   "error": {"code", "message"}}`, successes in the output file, failures (including
//!   lines an expired batch never ran, code `batch_expired`) in the error file.
//! - <https://platform.openai.com/docs/guides/batch#batch-expiration>: an expired
//!   batch's completed lines are in its output file and are billed.
//! - `GET /v1/files/{id}/content` returns a file's bytes;
//!   `POST /v1/batches/{id}/cancel` moves a batch to `cancelling`, then `cancelled`.

use super::{ImagesResponse, OpenAiProvider};
use crate::batch::{BatchApi, BatchLine, BatchPoll, BatchState, LineResult, Submitted};
use crate::helpers::{self, Answer};
use crate::ProviderError;
use async_trait::async_trait;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The endpoint every line of our batches calls.
const IMAGES_ENDPOINT: &str = "/v1/images/generations";
const WINDOW: &str = "24h";
/// The metadata key our own batch id is kept under, to recognise it upstream.
const TAG_KEY: &str = "imagegate_batch";

impl OpenAiProvider {
    fn batch_get(&self, path: &str) -> reqwest::RequestBuilder {
        self.endpoint
            .client
            .get(format!("{}{path}", self.endpoint.base_url))
            .bearer_auth(self.key.expose())
    }

    fn batch_post(&self, path: &str) -> reqwest::RequestBuilder {
        self.endpoint
            .client
            .post(format!("{}{path}", self.endpoint.base_url))
            .bearer_auth(self.key.expose())
    }

    async fn batch_object(&self, id: &str) -> Result<Batch, ProviderError> {
        let get = self.batch_get(&format!("/batches/{id}"));
        let (batch, _): (Batch, _) =
            helpers::send_json(&self.config.name, &self.endpoint, get, |a| {
                self.error_from(a)
            })
            .await?;
        Ok(batch)
    }

    /// A file's bytes, up to `limit`.
    async fn file_content(&self, id: &str, limit: usize) -> Result<Vec<u8>, ProviderError> {
        let get = self.batch_get(&format!("/files/{id}/content"));
        let answer = helpers::send(&self.config.name, self.endpoint.timeout, get, limit).await?;
        if !answer.status.is_success() {
            return Err(self.error_from(&answer));
        }
        Ok(answer.body)
    }

    /// One line of an output or error file, as ours.
    fn line_result(&self, model: &str, line: &OutputLine) -> LineResult {
        let name = &self.config.name;
        if let Some(response) = &line.response {
            let status = StatusCode::from_u16(response.status_code)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if status.is_success() {
                return match serde_json::from_value::<ImagesResponse>(response.body.clone()) {
                    Ok(parsed) => {
                        let quality = self.quality_for(model);
                        match self.read_images(model, quality, &parsed, &response.body) {
                            Ok(g) => LineResult::Generated(Box::new(g)),
                            Err(e) => LineResult::Failed(e),
                        }
                    }
                    Err(e) => LineResult::Failed(helpers::bad_response(
                        name,
                        format!("batch line {}: unexpected JSON shape: {e}", line.custom_id),
                    )),
                };
            }
            // The line's own HTTP answer, mapped as a live call's would be.
            let answer = Answer {
                status,
                headers: HeaderMap::new(),
                body: serde_json::to_vec(&response.body).unwrap_or_default(),
            };
            return LineResult::Failed(self.error_from(&answer));
        }
        let (code, message) = line
            .error
            .as_ref()
            .map(|e| {
                (
                    e.code.clone().unwrap_or_else(|| "error".into()),
                    e.message.clone().unwrap_or_default(),
                )
            })
            .unwrap_or_else(|| ("error".into(), "neither a response nor an error".into()));
        LineResult::Failed(ProviderError::Upstream {
            provider: name.clone(),
            message: format!(
                "batch line {}: {code}: {}",
                line.custom_id,
                helpers::truncate(&message, 300)
            ),
        })
    }
}

fn poll_of(batch: &Batch) -> BatchPoll {
    let state = match batch.status.as_str() {
        "completed" => BatchState::Completed,
        "expired" => BatchState::Expired,
        "cancelled" => BatchState::Cancelled,
        "failed" => BatchState::Failed {
            message: batch
                .errors
                .as_ref()
                .map(|e| {
                    e.data
                        .iter()
                        .map(|d| {
                            format!(
                                "{}: {}",
                                d.code.as_deref().unwrap_or("error"),
                                d.message.as_deref().unwrap_or_default()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "the batch failed".into()),
        },
        // validating, in_progress, finalizing, cancelling, and any status OpenAI adds.
        _ => BatchState::Working,
    };
    BatchPoll {
        state,
        upstream_status: batch.status.clone(),
    }
}

#[async_trait]
impl BatchApi for OpenAiProvider {
    async fn submit(
        &self,
        model: &str,
        tag: &str,
        lines: &[BatchLine],
    ) -> Result<Submitted, ProviderError> {
        let name = &self.config.name;
        let mut jsonl = Vec::new();
        for line in lines {
            if line.request.model != model {
                return Err(ProviderError::Config {
                    provider: name.clone(),
                    message: format!("batch of {model} has a line for {}", line.request.model),
                });
            }
            let input = InputLine {
                custom_id: &line.custom_id,
                method: "POST",
                url: IMAGES_ENDPOINT,
                body: self.image_request(&line.request),
            };
            serde_json::to_writer(&mut jsonl, &input)
                .map_err(|e| helpers::bad_response(name, format!("encoding a batch line: {e}")))?;
            jsonl.push(b'\n');
        }
        let file = reqwest::multipart::Part::bytes(jsonl)
            .file_name(format!("{tag}.jsonl"))
            .mime_str("application/jsonl")
            .map_err(|e| helpers::bad_response(name, format!("batch file part: {e}")))?;
        let form = reqwest::multipart::Form::new()
            .text("purpose", "batch")
            .part("file", file);
        let upload = self.batch_post("/files").multipart(form);
        let (uploaded, _): (FileObject, _) =
            helpers::send_json(name, &self.endpoint, upload, |a| self.error_from(a)).await?;
        tracing::debug!(provider = %name, model, file = %uploaded.id, lines = lines.len(), "openai batch input uploaded");
        let create = self.batch_post("/batches").json(&CreateBatch {
            input_file_id: &uploaded.id,
            endpoint: IMAGES_ENDPOINT,
            completion_window: WINDOW,
            metadata: BTreeMap::from([(TAG_KEY, tag)]),
        });
        let (batch, _): (Batch, _) =
            helpers::send_json(name, &self.endpoint, create, |a| self.error_from(a)).await?;
        Ok(Submitted {
            upstream_id: batch.id,
            input_file_id: Some(uploaded.id),
        })
    }

    async fn poll(&self, upstream_id: &str) -> Result<BatchPoll, ProviderError> {
        Ok(poll_of(&self.batch_object(upstream_id).await?))
    }

    async fn results(
        &self,
        upstream_id: &str,
        model: &str,
        custom_ids: &[String],
    ) -> Result<BTreeMap<String, LineResult>, ProviderError> {
        let name = &self.config.name;
        let batch = self.batch_object(upstream_id).await?;
        // Each line carries one base64 image at most as large as a live answer.
        let limit = self
            .endpoint
            .max_body
            .saturating_mul(custom_ids.len().max(1));
        let mut results = BTreeMap::new();
        for file in [&batch.output_file_id, &batch.error_file_id]
            .into_iter()
            .flatten()
        {
            let content = self.file_content(file, limit).await?;
            for (n, text) in content.split(|b| *b == b'\n').enumerate() {
                if text.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let line: OutputLine = serde_json::from_slice(text).map_err(|e| {
                    helpers::bad_response(name, format!("file {file} line {}: {e}", n + 1))
                })?;
                if !custom_ids.contains(&line.custom_id) {
                    tracing::warn!(provider = %name, batch = upstream_id, custom_id = %line.custom_id, "a batch result for a line we did not send");
                    continue;
                }
                let result = self.line_result(model, &line);
                results.insert(line.custom_id, result);
            }
        }
        Ok(results)
    }

    async fn cancel(&self, upstream_id: &str) -> Result<BatchPoll, ProviderError> {
        let post = self.batch_post(&format!("/batches/{upstream_id}/cancel"));
        let (batch, _): (Batch, _) =
            helpers::send_json(&self.config.name, &self.endpoint, post, |a| {
                self.error_from(a)
            })
            .await?;
        Ok(poll_of(&batch))
    }
}

// ---- wire types: exactly the API's JSON ----

#[derive(Debug, Serialize)]
struct InputLine<'a> {
    custom_id: &'a str,
    method: &'a str,
    url: &'a str,
    body: super::CreateImageRequest<'a>,
}

#[derive(Debug, Serialize)]
struct CreateBatch<'a> {
    input_file_id: &'a str,
    endpoint: &'a str,
    completion_window: &'a str,
    metadata: BTreeMap<&'a str, &'a str>,
}

#[derive(Debug, Deserialize)]
struct FileObject {
    id: String,
}

#[derive(Debug, Deserialize)]
struct Batch {
    id: String,
    status: String,
    #[serde(default)]
    output_file_id: Option<String>,
    #[serde(default)]
    error_file_id: Option<String>,
    #[serde(default)]
    errors: Option<BatchErrors>,
}

#[derive(Debug, Deserialize)]
struct BatchErrors {
    #[serde(default)]
    data: Vec<BatchError>,
}

#[derive(Debug, Deserialize)]
struct BatchError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
struct OutputLine {
    custom_id: String,
    #[serde(default)]
    response: Option<LineResponse>,
    #[serde(default)]
    error: Option<LineError>,
}

#[derive(Debug, Deserialize)]
struct LineResponse {
    status_code: u16,
    #[serde(default)]
    body: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct LineError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}
