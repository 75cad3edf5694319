//! Who may call, and how often: API keys from the ledger database checked in
//! constant time, anonymous access from loopback only while no key exists, and a
//! rate limit per key (governor's GCRA) answered with 429 and Retry-After.
//!
//! Keys are created by `imagegate keys create` (possibly on another replica, so an
//! unknown id triggers a reload, at most once per second). Open paths (health,
//! metrics, the local CDN, the dashboard page itself) need no key.

use crate::{ApiError, AppState};
use axum::extract::ConnectInfo;
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use imagegate_ledger::{ApiKeyRecord, Ledger, PresentedKey};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The authenticated caller, put in the request's extensions for handlers.
#[derive(Debug, Clone)]
pub(crate) struct AuthedKey(pub Option<String>);

/// Shortest time between two reloads of the key table.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// The limiter bucket requests without a key share.
const ANONYMOUS: &str = "anonymous";

pub struct Auth {
    ledger: Ledger,
    config: imagegate_pipeline::config::AuthConfig,
    keys: RwLock<HashMap<String, ApiKeyRecord>>,
    last_reload: Mutex<Option<Instant>>,
    limiters: Mutex<HashMap<String, Arc<DefaultDirectRateLimiter>>>,
}

impl Auth {
    /// Loads the keys, then keeps re-reading them in the background (a key created
    /// or revoked on any replica takes effect within `auth.reload_secs`).
    pub async fn start(
        ledger: Ledger,
        config: imagegate_pipeline::config::AuthConfig,
    ) -> Result<Arc<Auth>, imagegate_ledger::LedgerError> {
        let every = Duration::from_secs(config.reload_secs.max(1));
        let auth = Arc::new(Auth {
            ledger,
            config,
            keys: RwLock::default(),
            last_reload: Mutex::default(),
            limiters: Mutex::default(),
        });
        auth.reload(true).await?;
        let weak = Arc::downgrade(&auth);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(auth) = weak.upgrade() else { return };
                if let Err(e) = auth.reload(false).await {
                    tracing::warn!(error = %e, "reloading API keys failed; keeping the last set");
                }
            }
        });
        Ok(auth)
    }

    /// Re-reads the key table unless it was read less than a second ago.
    async fn reload(&self, force: bool) -> Result<(), imagegate_ledger::LedgerError> {
        {
            let mut last = self
                .last_reload
                .lock()
                .expect("reload lock is never poisoned");
            if !force && last.is_some_and(|t| t.elapsed() < RELOAD_INTERVAL) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        let fresh: HashMap<String, ApiKeyRecord> = self
            .ledger
            .api_keys()
            .await?
            .into_iter()
            .map(|k| (k.id.clone(), k))
            .collect();
        *self.keys.write().expect("key lock is never poisoned") = fresh;
        Ok(())
    }

    fn any_key_exists(&self) -> bool {
        !self
            .keys
            .read()
            .expect("key lock is never poisoned")
            .is_empty()
    }

    fn lookup(&self, id: &str) -> Option<ApiKeyRecord> {
        self.keys
            .read()
            .expect("key lock is never poisoned")
            .get(id)
            .cloned()
    }

    /// The key id a bearer token belongs to, or why it does not.
    async fn verify(&self, token: &str) -> Result<String, ApiError> {
        let invalid = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "the API key is not valid",
            )
        };
        let presented = PresentedKey::parse(token).ok_or_else(invalid)?;
        let mut record = self.lookup(presented.id);
        if record.is_none() {
            self.reload(false).await.map_err(ledger_down)?;
            record = self.lookup(presented.id);
        }
        let record = record.ok_or_else(invalid)?;
        if !record.matches(presented.secret) {
            return Err(invalid());
        }
        if record.is_revoked() {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "revoked_api_key",
                "the API key was revoked",
            ));
        }
        Ok(record.id)
    }

    /// Takes one request from `bucket`'s allowance, or says how long to wait.
    fn admit(&self, bucket: &str) -> Result<(), Duration> {
        let per_minute = self
            .lookup(bucket)
            .and_then(|k| k.requests_per_minute)
            .unwrap_or(self.config.requests_per_minute);
        if per_minute == 0 {
            return Ok(());
        }
        let limiter = {
            let mut limiters = self
                .limiters
                .lock()
                .expect("limiter lock is never poisoned");
            limiters
                .entry(bucket.to_string())
                .or_insert_with(|| {
                    let rate = NonZeroU32::new(per_minute.max(1)).expect("at least 1");
                    let burst = NonZeroU32::new(self.config.burst.max(1)).expect("at least 1");
                    Arc::new(RateLimiter::direct(
                        Quota::per_minute(rate).allow_burst(burst),
                    ))
                })
                .clone()
        };
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

fn ledger_down(e: imagegate_ledger::LedgerError) -> ApiError {
    ApiError::from(imagegate_pipeline::PipelineError::from(e))
}

/// Paths anyone may read: probes, metrics, published files, the dashboard's page
/// (its data comes from `/v1/costs`, which is checked).
fn is_open(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/metrics" | "/dashboard" | "/openapi.json"
    ) || path.starts_with("/cdn/")
}

/// Checks the caller's key (and its rate limit) and records who it is on `req`.
/// Returns the refusal to send instead of running the route, if it is refused.
pub(crate) async fn refusal(
    state: &AppState,
    req: &mut Request<axum::body::Body>,
) -> Option<Response> {
    let path = req.uri().path();
    if is_open(path) {
        return None;
    }
    let openai_shape = path == "/v1/images/generations";
    let fail = |e: ApiError| -> Option<Response> {
        Some(if openai_shape {
            crate::openai::OpenAiError::from(e).into_response()
        } else {
            e.into_response()
        })
    };
    let auth = &state.auth;
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("").to_string());
    let key_id = match bearer {
        Some(value) => {
            let Some(token) = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
            else {
                return fail(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_api_key",
                    "Authorization must be `Bearer <api key>`",
                ));
            };
            match auth.verify(token.trim()).await {
                Ok(id) => Some(id),
                Err(e) => return fail(e),
            }
        }
        None => {
            let loopback = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .is_some_and(|c| c.0.ip().is_loopback());
            if auth.any_key_exists() {
                return fail(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing_api_key",
                    "send `Authorization: Bearer <api key>`",
                ));
            }
            if !loopback {
                return fail(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing_api_key",
                    "no API key is configured, so only loopback clients may call \
                     anonymously; create one with `imagegate keys create`",
                ));
            }
            None
        }
    };
    if let Err(wait) = auth.admit(key_id.as_deref().unwrap_or(ANONYMOUS)) {
        metrics::counter!("imagegate_rate_limited_total").increment(1);
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests for this API key; retry later",
        );
        e.retry_after = Some(wait.max(Duration::from_secs(1)));
        return fail(e);
    }
    req.extensions_mut().insert(AuthedKey(key_id));
    None
}
