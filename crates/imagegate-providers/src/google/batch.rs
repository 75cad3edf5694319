//! Gemini batch mode: generateContent requests inlined in one
//! `models/{model}:batchGenerateContent` call, the long-running batch operation
//! polled until it ends, its inlined responses read back in order. Google bills
//! batch mode at half the interactive price; the price book says so.
//!
//! Wire format (read 2026-12-08):
//! - <https://ai.google.dev/gemini-api/docs/batch-api> (the guide: inlined requests
//!   for batches under 20 MB, a 24-hour target, 50% of the standard price) and
//!   <https://ai.google.dev/api/batch-api> (the reference): the request is
//!   `{"batch": {"displayName", "inputConfig": {"requests": {"requests":
//!   [{"request": GenerateContentRequest, "metadata": {"key"}}]}}}}`, answered with
//!   an `Operation` named `batches/{id}` whose `metadata` is the batch (`state`:
//!   `BATCH_STATE_PENDING`, `_RUNNING`, `_SUCCEEDED`, `_FAILED`, `_CANCELLED`,
//!   `_EXPIRED`); `GET batches/{id}` polls it; once `done`, `response.inlinedResponses
//!   .inlinedResponses[]` holds `{"response": GenerateContentResponse}` or
//!   `{"error": Status}` per request, in request order; `POST batches/{id}:cancel`.
//! - Inlined responses may come back without the request's `metadata` (reported on
//!   <https://discuss.ai.google.dev/t/gemini-batch-api-doesnt-return-the-user-metadata-back/112386>),
//!   so a response without a key is matched by its position.
//! - An expired batch (not done within 48 hours) keeps the responses it finished.

use super::{GenerateContentResponse, GoogleProvider};
use crate::batch::{BatchApi, BatchLine, BatchPoll, BatchState, LineResult, Submitted};
use crate::helpers;
use crate::ProviderError;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

impl GoogleProvider {
    /// `batches/{id}`, checked: it is put into URLs.
    fn batch_name<'a>(&self, upstream_id: &'a str) -> Result<&'a str, ProviderError> {
        let id = upstream_id.strip_prefix("batches/").unwrap_or_default();
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ProviderError::Config {
                provider: self.config.name.clone(),
                message: format!("{upstream_id:?} is not a Gemini batch name"),
            });
        }
        Ok(upstream_id)
    }

    async fn operation(&self, upstream_id: &str) -> Result<Operation, ProviderError> {
        let name = self.batch_name(upstream_id)?;
        let get = self
            .endpoint
            .client
            .get(format!("{}/{name}", self.endpoint.base_url))
            .header("x-goog-api-key", self.key.expose());
        let (op, _): (Operation, _) =
            helpers::send_json(&self.config.name, &self.endpoint, get, |a| {
                self.error_from(a)
            })
            .await?;
        Ok(op)
    }

    fn inlined_result(&self, model: &str, item: &InlinedResponse) -> LineResult {
        if let Some(e) = &item.error {
            return LineResult::Failed(ProviderError::Upstream {
                provider: self.config.name.clone(),
                message: format!(
                    "batch request failed: {} {}",
                    e.code.unwrap_or_default(),
                    helpers::truncate(&e.message, 300)
                ),
            });
        }
        let Some(value) = &item.response else {
            return LineResult::Failed(helpers::bad_response(
                &self.config.name,
                "inlined response has neither a response nor an error",
            ));
        };
        let read = serde_json::from_value::<GenerateContentResponse>(value.clone())
            .map_err(|e| {
                helpers::bad_response(&self.config.name, format!("unexpected JSON shape: {e}"))
            })
            .and_then(|parsed| self.read_content(&parsed, value))
            .and_then(|(bytes, usage)| self.generation(model, bytes, usage));
        match read {
            Ok(g) => LineResult::Generated(Box::new(g)),
            Err(e) => LineResult::Failed(e),
        }
    }
}

fn poll_of(op: &Operation) -> BatchPoll {
    let status = op
        .metadata
        .as_ref()
        .and_then(|m| m.state.clone())
        .unwrap_or_else(|| "BATCH_STATE_UNSPECIFIED".into());
    // The google-genai SDKs spell the same states JOB_STATE_*.
    let word = status
        .strip_prefix("BATCH_STATE_")
        .or_else(|| status.strip_prefix("JOB_STATE_"))
        .unwrap_or(&status);
    let state = match word {
        "SUCCEEDED" => BatchState::Completed,
        "EXPIRED" => BatchState::Expired,
        "CANCELLED" => BatchState::Cancelled,
        "FAILED" => BatchState::Failed {
            message: op
                .error
                .as_ref()
                .map(|e| e.message.clone())
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "the batch failed".into()),
        },
        _ => BatchState::Working,
    };
    BatchPoll {
        state,
        upstream_status: status,
    }
}

#[async_trait]
impl BatchApi for GoogleProvider {
    async fn submit(
        &self,
        model: &str,
        tag: &str,
        lines: &[BatchLine],
    ) -> Result<Submitted, ProviderError> {
        let name = &self.config.name;
        let mut requests = Vec::with_capacity(lines.len());
        for line in lines {
            if line.request.model != model {
                return Err(ProviderError::Config {
                    provider: name.clone(),
                    message: format!("batch of {model} has a line for {}", line.request.model),
                });
            }
            requests.push(InlinedRequest {
                request: self.content_request(&line.request),
                metadata: RequestMetadata {
                    key: &line.custom_id,
                },
            });
        }
        let body = BatchGenerateContentRequest {
            batch: BatchBody {
                display_name: tag,
                input_config: InputConfig {
                    requests: Requests { requests },
                },
            },
        };
        let post = self
            .endpoint
            .client
            .post(format!(
                "{}/models/{model}:batchGenerateContent",
                self.endpoint.base_url
            ))
            .header("x-goog-api-key", self.key.expose())
            .json(&body);
        let (op, _): (Operation, _) =
            helpers::send_json(name, &self.endpoint, post, |a| self.error_from(a)).await?;
        self.batch_name(&op.name)?;
        Ok(Submitted {
            upstream_id: op.name,
            input_file_id: None,
        })
    }

    async fn poll(&self, upstream_id: &str) -> Result<BatchPoll, ProviderError> {
        Ok(poll_of(&self.operation(upstream_id).await?))
    }

    async fn results(
        &self,
        upstream_id: &str,
        model: &str,
        custom_ids: &[String],
    ) -> Result<BTreeMap<String, LineResult>, ProviderError> {
        let op = self.operation(upstream_id).await?;
        let Some(output) = op.response else {
            return Ok(BTreeMap::new());
        };
        if output.responses_file.is_some() && output.inlined_responses.is_none() {
            return Err(helpers::bad_response(
                &self.config.name,
                "the batch answered with a responses file; its requests were inlined",
            ));
        }
        let items = output
            .inlined_responses
            .map(|r| r.inlined_responses)
            .unwrap_or_default();
        let mut results = BTreeMap::new();
        for (n, item) in items.iter().enumerate() {
            let key = item
                .metadata
                .as_ref()
                .and_then(|m| m.key.clone())
                .or_else(|| custom_ids.get(n).cloned());
            match key {
                Some(key) if custom_ids.contains(&key) => {
                    let result = self.inlined_result(model, item);
                    results.insert(key, result);
                }
                _ => {
                    tracing::warn!(provider = %self.config.name, batch = upstream_id, position = n, "a batch response for a request we did not send")
                }
            }
        }
        Ok(results)
    }

    async fn cancel(&self, upstream_id: &str) -> Result<BatchPoll, ProviderError> {
        let name = self.batch_name(upstream_id)?;
        let post = self
            .endpoint
            .client
            .post(format!("{}/{name}:cancel", self.endpoint.base_url))
            .header("x-goog-api-key", self.key.expose());
        let answer = helpers::send(
            &self.config.name,
            self.endpoint.timeout,
            post,
            self.endpoint.max_body,
        )
        .await?;
        if !answer.status.is_success() {
            return Err(self.error_from(&answer));
        }
        self.poll(upstream_id).await
    }
}

// ---- wire types: exactly the API's JSON ----

#[derive(Debug, Serialize)]
struct BatchGenerateContentRequest<'a> {
    batch: BatchBody<'a>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BatchBody<'a> {
    display_name: &'a str,
    input_config: InputConfig<'a>,
}

#[derive(Debug, Serialize)]
struct InputConfig<'a> {
    requests: Requests<'a>,
}

#[derive(Debug, Serialize)]
struct Requests<'a> {
    requests: Vec<InlinedRequest<'a>>,
}

#[derive(Debug, Serialize)]
struct InlinedRequest<'a> {
    request: super::GenerateContentRequest<'a>,
    metadata: RequestMetadata<'a>,
}

#[derive(Debug, Serialize)]
struct RequestMetadata<'a> {
    key: &'a str,
}

#[derive(Debug, Deserialize)]
struct Operation {
    name: String,
    #[serde(default)]
    metadata: Option<BatchMetadata>,
    #[serde(default)]
    response: Option<BatchOutput>,
    #[serde(default)]
    error: Option<Status>,
}

#[derive(Debug, Deserialize)]
struct BatchMetadata {
    #[serde(default)]
    state: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchOutput {
    #[serde(default)]
    inlined_responses: Option<InlinedResponses>,
    #[serde(default)]
    responses_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InlinedResponses {
    #[serde(default)]
    inlined_responses: Vec<InlinedResponse>,
}

#[derive(Debug, Deserialize)]
struct InlinedResponse {
    #[serde(default)]
    response: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<Status>,
    #[serde(default)]
    metadata: Option<ResponseMetadata>,
}

#[derive(Debug, Deserialize)]
struct ResponseMetadata {
    #[serde(default)]
    key: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Status {
    #[serde(default)]
    code: Option<i32>,
    #[serde(default)]
    message: String,
}
