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

/// Why a caller without a valid key may not call anonymously (no key exists yet),
/// or None when it may: only a loopback client talking to us directly. A reverse
/// proxy on the same host connects from loopback too, so a request that carries
/// forwarding headers or names a host that is not loopback is not anonymous-safe.
fn anonymous_refusal(req: &Request<axum::body::Body>) -> Option<ApiError> {
    let no_key = |why: &str| {
        Some(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_api_key",
            format!(
                "no API key exists yet, and {why}; create one with \
                 `imagegate keys create --name APP` and send it as \
                 `Authorization: Bearer <key>`"
            ),
        ))
    };
    let loopback = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|c| c.0.ip().is_loopback());
    if !loopback {
        return no_key("only loopback clients may call without one");
    }
    let headers = req.headers();
    if ["forwarded", "x-forwarded-for", "x-real-ip"]
        .iter()
        .any(|h| headers.contains_key(*h))
    {
        return no_key("a request forwarded by a proxy may not call without one");
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().host().map(str::to_owned));
    if let Some(host) = host {
        if !is_loopback_host(&host) {
            return no_key("a request for a non-local host name may not call without one");
        }
    }
    None
}

/// Whether a `Host` value (with or without port) names this machine's loopback.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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
                // Clients such as the official OpenAI SDKs always send a bearer token;
                // while no key exists any token is as good as none.
                Err(_) if !auth.any_key_exists() => match anonymous_refusal(req) {
                    None => None,
                    Some(e) => return fail(e),
                },
                Err(e) => return fail(e),
            }
        }
        None if auth.any_key_exists() => {
            return fail(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_api_key",
                "send `Authorization: Bearer <api key>`",
            ));
        }
        None => match anonymous_refusal(req) {
            None => None,
            Some(e) => return fail(e),
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(peer: &str, headers: &[(&str, &str)]) -> Request<axum::body::Body> {
        let mut builder = Request::builder().uri("/v1/images");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let mut req = builder.body(axum::body::Body::empty()).unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        req
    }

    #[test]
    fn only_direct_loopback_callers_are_anonymous() {
        let direct = [("host", "127.0.0.1:8080")];
        assert!(anonymous_refusal(&request("127.0.0.1:5000", &direct)).is_none());
        assert!(anonymous_refusal(&request("[::1]:5000", &[("host", "[::1]:8080")])).is_none());
        assert!(anonymous_refusal(&request("127.0.0.1:5000", &[("host", "localhost")])).is_none());
        assert!(anonymous_refusal(&request("127.0.0.1:5000", &[])).is_none());

        let refused = |peer: &str, headers: &[(&str, &str)]| {
            let e = anonymous_refusal(&request(peer, headers)).expect("refused");
            assert_eq!(e.status, StatusCode::UNAUTHORIZED);
            assert!(e.message.contains("imagegate keys create"), "{}", e.message);
        };
        refused("10.1.2.3:5000", &direct);
        refused("127.0.0.1:5000", &[("host", "images.example.com")]);
        refused("127.0.0.1:5000", &[("host", "127.0.0.1"), ("x-forwarded-for", "1.2.3.4")]);
        refused("127.0.0.1:5000", &[("host", "127.0.0.1"), ("x-real-ip", "1.2.3.4")]);
        refused("127.0.0.1:5000", &[("host", "127.0.0.1"), ("forwarded", "for=1.2.3.4")]);
    }
}
