//! Webhooks of deferred jobs, per the Standard Webhooks convention: when a job ends,
//! its webhook URL (the job's own, or its key's default) gets a POST of the job as
//! `GET /v1/jobs/{id}` shows it, wrapped as `{"type": "job.succeeded", "timestamp",
//! "data"}`, with the `webhook-id` (the same on every retry), `webhook-timestamp`
//! and `webhook-signature` (`v1,` + base64 HMAC-SHA256 of `id.timestamp.body`)
//! headers. A 2xx ends it; anything else is retried after `retry_delays_secs`, and
//! every attempt is recorded in the ledger (see `imagegate_ledger::webhooks`), so
//! deliveries survive restarts and replicas share them. Redirects are not followed:
//! the address that was checked is the one called (`target`).

mod target;

pub use target::{TargetError, WebhookTarget};

use crate::config::WebhookConfig;
use crate::routes::jobs::JobView;
use crate::AppState;
use base64::Engine;
use chrono::{SecondsFormat, Utc};
use imagegate_core::ConfigError;
use imagegate_ledger::{JobStatus, WebhookAttempt, WebhookDelivery, WebhookNext};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The signing secret and how to send.
pub struct Webhooks {
    signer: standardwebhooks::Webhook,
    config: WebhookConfig,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("secret", &"[redacted]")
            .field("config", &self.config)
            .finish()
    }
}

/// The shortest and longest signing secrets the convention allows, in bytes.
const SECRET_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

impl Webhooks {
    /// Reads the signing secret from the environment variable `config` names. None
    /// (webhooks off) when it is unset or empty; an error when it is malformed.
    pub fn from_config(config: &WebhookConfig) -> Result<Option<Webhooks>, ConfigError> {
        let field = "server.webhooks.secret_env";
        let Some(secret) = std::env::var(&config.secret_env)
            .ok()
            .filter(|s| !s.trim().is_empty())
        else {
            return Ok(None);
        };
        let secret = secret.trim();
        let fault = |what: &str| {
            ConfigError::new(
                field,
                format!(
                    "${} {what}: a secret is `whsec_` and the base64 of {} to {} random bytes",
                    config.secret_env,
                    SECRET_BYTES.start(),
                    SECRET_BYTES.end()
                ),
            )
        };
        let encoded = secret
            .strip_prefix("whsec_")
            .ok_or_else(|| fault("does not start with whsec_"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| fault("is not base64 after whsec_"))?;
        if !SECRET_BYTES.contains(&bytes.len()) {
            return Err(fault(&format!("holds {} bytes", bytes.len())));
        }
        Ok(Some(Webhooks {
            signer: standardwebhooks::Webhook::from_bytes(bytes)
                .map_err(|e| fault(&e.to_string()))?,
            config: config.clone(),
        }))
    }

    /// Checks a URL a caller named, as it arrives.
    pub fn check(&self, url: &str) -> Result<WebhookTarget, TargetError> {
        WebhookTarget::parse(url, self.config.allow_private_networks)
    }

    /// The delay before retry number `n` (1 after the first failed attempt), or None
    /// when the retries have run out.
    fn retry_delay(&self, failed_attempts: i64) -> Option<Duration> {
        let n = usize::try_from(failed_attempts.max(1) - 1).ok()?;
        self.config
            .retry_delays_secs
            .get(n)
            .map(|s| Duration::from_secs(*s))
    }
}

/// One delivery's body: the Standard Webhooks envelope around the job.
#[derive(serde::Serialize)]
struct WebhookEvent<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: String,
    data: JobView<'a>,
}

/// Starts this replica's dispatcher; None when webhooks are off.
pub fn spawn(state: Arc<AppState>) -> Option<tokio::task::JoinHandle<()>> {
    if state.webhooks.is_none() {
        tracing::info!(
            secret_env = %state.server.webhooks.secret_env,
            "webhooks off: no signing secret; requests naming a webhook_url are refused"
        );
        return None;
    }
    Some(tokio::spawn(run(state)))
}

async fn run(state: Arc<AppState>) {
    let Some(hooks) = state.webhooks.clone() else {
        return;
    };
    let holder = format!("{}/webhooks", state.pipeline.replica());
    let poll = Duration::from_millis(hooks.config.poll_ms.max(10));
    loop {
        if let Err(e) = tick(&state, &hooks, &holder).await {
            tracing::warn!(error = %e, "webhooks: the ledger could not be read; trying again");
        }
        tokio::time::sleep(poll).await;
    }
}

async fn tick(
    state: &AppState,
    hooks: &Webhooks,
    holder: &str,
) -> Result<(), imagegate_ledger::LedgerError> {
    let ledger = state.pipeline.ledger();
    ledger.open_webhook_deliveries().await?;
    // Held for the longest an attempt can take (resolving, connecting and the
    // answer each under the timeout) and then some, so a live sender never loses
    // its delivery to another replica mid-attempt.
    let lease = hooks.config.timeout * 3 + Duration::from_secs(5);
    let limit = u32::try_from(hooks.config.concurrency).unwrap_or(u32::MAX);
    let claimed = ledger
        .claim_webhook_deliveries(holder, limit, lease)
        .await?;
    let sends = claimed
        .into_iter()
        .map(|delivery| deliver(state, hooks, holder, delivery));
    futures::future::join_all(sends).await;
    Ok(())
}

/// Why an attempt got no 2xx.
#[derive(Debug, thiserror::Error)]
enum AttemptFault {
    #[error("webhook URL {0}")]
    Target(#[from] TargetError),
    #[error("{0}")]
    Http(String),
    #[error("the receiver answered {0}")]
    Status(reqwest::StatusCode),
    #[error("the job could not be read: {0}")]
    Job(String),
}

impl AttemptFault {
    /// Faults a retry cannot fix: the address is one the service may not call.
    fn is_final(&self) -> bool {
        matches!(
            self,
            AttemptFault::Target(TargetError::NotPublic { .. } | TargetError::Malformed(_))
        )
    }
}

async fn deliver(state: &AppState, hooks: &Webhooks, holder: &str, delivery: WebhookDelivery) {
    let started = Instant::now();
    let sent = match event_body(state, &delivery).await {
        Ok(body) => send(hooks, &delivery, body).await,
        Err(e) => Err(e),
    };
    let status_code = match &sent {
        Ok(code) => Some(code.as_u16()),
        Err(AttemptFault::Status(code)) => Some(code.as_u16()),
        Err(_) => None,
    };
    let next = match &sent {
        Ok(_) => WebhookNext::Delivered,
        Err(fault) if fault.is_final() => WebhookNext::GiveUp,
        Err(_) => match hooks.retry_delay(delivery.attempts) {
            Some(delay) => WebhookNext::RetryAt(
                Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default(),
            ),
            None => WebhookNext::GiveUp,
        },
    };
    let attempt = WebhookAttempt {
        status_code,
        error: sent.as_ref().err().map(ToString::to_string),
        duration: started.elapsed(),
    };
    let outcome = match next {
        WebhookNext::Delivered => "delivered",
        WebhookNext::RetryAt(_) => "retry",
        WebhookNext::GiveUp => "failed",
    };
    metrics::counter!("imagegate_webhook_attempts_total", "outcome" => outcome).increment(1);
    match &sent {
        Ok(_) => {
            tracing::info!(job = %delivery.job_id, id = %delivery.id, attempt = delivery.attempts, "webhook delivered")
        }
        Err(e) => {
            tracing::warn!(job = %delivery.job_id, id = %delivery.id, attempt = delivery.attempts, outcome, error = %e, "webhook attempt failed")
        }
    }
    match state
        .pipeline
        .ledger()
        .record_webhook_attempt(&delivery, holder, &attempt, next)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(id = %delivery.id, "webhook attempt made, but another replica holds the delivery now")
        }
        Err(e) => {
            tracing::warn!(id = %delivery.id, error = %e, "webhook attempt made, but not recorded; its lease will return it")
        }
    }
}

/// The job as it stands, in its envelope.
async fn event_body(state: &AppState, delivery: &WebhookDelivery) -> Result<Vec<u8>, AttemptFault> {
    let ledger = state.pipeline.ledger();
    let job = ledger
        .job(&delivery.job_id)
        .await
        .map_err(|e| AttemptFault::Job(e.to_string()))?
        .ok_or_else(|| AttemptFault::Job(format!("no job {}", delivery.job_id)))?;
    let manifest = match job.status {
        JobStatus::Succeeded => state
            .pipeline
            .manifest(job.content_key)
            .await
            .map_err(|e| AttemptFault::Job(e.to_string()))?,
        _ => None,
    };
    let event = WebhookEvent {
        kind: &delivery.event,
        timestamp: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        data: JobView::new(&state.pipeline, &job, manifest.as_deref()),
    };
    serde_json::to_vec(&event).map_err(|e| AttemptFault::Job(e.to_string()))
}

async fn send(
    hooks: &Webhooks,
    delivery: &WebhookDelivery,
    body: Vec<u8>,
) -> Result<reqwest::StatusCode, AttemptFault> {
    let allow_private = hooks.config.allow_private_networks;
    let target = WebhookTarget::parse(&delivery.url, allow_private)?;
    let addr = tokio::time::timeout(hooks.config.timeout, target.resolve(allow_private))
        .await
        .map_err(|_| AttemptFault::Http("resolving the host timed out".into()))??;
    let mut client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(hooks.config.timeout)
        .user_agent(concat!("imagegate-webhooks/", env!("CARGO_PKG_VERSION")));
    if let Some(url::Host::Domain(domain)) = target.url.host() {
        client = client.resolve(domain, addr);
    }
    let client = client
        .build()
        .map_err(|e| AttemptFault::Http(e.to_string()))?;
    let timestamp = Utc::now().timestamp();
    let signature = hooks
        .signer
        .sign(&delivery.id, timestamp, &body)
        .map_err(|e| AttemptFault::Http(format!("signing: {e}")))?;
    let answer = client
        .post(target.url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(standardwebhooks::HEADER_WEBHOOK_ID, &delivery.id)
        .header(
            standardwebhooks::HEADER_WEBHOOK_TIMESTAMP,
            timestamp.to_string(),
        )
        .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
        .body(body)
        .send()
        .await
        .map_err(|e| AttemptFault::Http(without_url(e)))?;
    let status = answer.status();
    if status.is_success() {
        Ok(status)
    } else {
        Err(AttemptFault::Status(status))
    }
}

/// A transport error's text without the URL (which may carry a caller's token in
/// its query), walking the sources for the cause.
fn without_url(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_secret(var: &str, secret: &str) -> Result<Option<Webhooks>, ConfigError> {
        // Each test uses its own variable: tests run in parallel threads.
        std::env::set_var(var, secret);
        let config = WebhookConfig {
            secret_env: var.into(),
            retry_delays_secs: vec![1, 10],
            ..WebhookConfig::default()
        };
        let hooks = Webhooks::from_config(&config);
        std::env::remove_var(var);
        hooks
    }

    #[test]
    fn the_secret_is_whsec_base64_of_24_to_64_bytes() {
        let good = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode([7u8; 32])
        );
        let hooks = with_secret("IG_TEST_HOOK_GOOD", &good)
            .unwrap()
            .expect("on");
        assert!(!format!("{hooks:?}").contains(&good[6..]), "never shown");
        assert_eq!(hooks.retry_delay(1), Some(Duration::from_secs(1)));
        assert_eq!(hooks.retry_delay(2), Some(Duration::from_secs(10)));
        assert_eq!(hooks.retry_delay(3), None);
        assert!(with_secret("IG_TEST_HOOK_EMPTY", " ").unwrap().is_none());
        for (var, bad) in [
            ("IG_TEST_HOOK_PREFIX", "c2VjcmV0"),
            ("IG_TEST_HOOK_B64", "whsec_!!!"),
            ("IG_TEST_HOOK_SHORT", "whsec_c2VjcmV0"),
        ] {
            let e = with_secret(var, bad).unwrap_err();
            assert_eq!(e.path, "server.webhooks.secret_env");
            assert!(e.to_string().contains(var), "{e}");
            assert!(
                !e.to_string().contains(bad),
                "the secret is not echoed: {e}"
            );
        }
    }

    #[test]
    fn a_signature_verifies_with_the_reference_library() {
        let secret = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode([9u8; 24])
        );
        let hooks = with_secret("IG_TEST_HOOK_SIGN", &secret).unwrap().unwrap();
        let now = Utc::now().timestamp();
        let body = br#"{"type":"job.succeeded"}"#;
        let signature = hooks.signer.sign("msg_1", now, body).unwrap();
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("webhook-id", "msg_1".parse().unwrap());
        headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
        headers.insert("webhook-signature", signature.parse().unwrap());
        let receiver = standardwebhooks::Webhook::new(&secret).unwrap();
        receiver.verify(body, &headers).expect("verifies");
        assert!(receiver.verify(b"{}", &headers).is_err(), "tampered body");
    }
}
