//! Who may call, and how often: API keys from the ledger database checked in
//! constant time, anonymous access from loopback only while no key exists, and a
//! rate limit per key (GCRA: in the shared ledger database on PostgreSQL, so it holds
//! across replicas; governor's in this process on SQLite) answered with 429 and
//! Retry-After.
//!
//! Keys are created by `imagegate keys create` (possibly on another replica, so an
//! unknown id triggers a reload, at most once per second). Open paths (health,
//! metrics, the local CDN, the dashboard page itself) need no key.
//!
//! Who called is put in the request's extensions as an [`AuthedKey`]; a handler
//! that only admins may use calls [`AuthedKey::require_admin`].

use crate::{ApiError, AppState};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::{header, request::Parts, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use imagegate_ledger::{ApiKeyRecord, KeyScope, Ledger, PresentedKey};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The authenticated caller, put in the request's extensions for handlers (and an
/// extractor of its own for them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthedKey {
    /// The key's id, as ledger rows name it; None for an anonymous caller.
    pub id: Option<String>,
    /// Sees every key's spending and may republish. Anonymous callers count as
    /// admin: they are let in only from loopback while no key exists, so they are
    /// the machine's owner.
    pub admin: bool,
}

impl AuthedKey {
    /// The anonymous loopback caller.
    pub fn anonymous() -> AuthedKey {
        AuthedKey {
            id: None,
            admin: true,
        }
    }

    /// Refuses (403) unless this caller is an admin; `what` names the refused action
    /// for the message, e.g. "cache: refresh".
    pub fn require_admin(&self, what: &str) -> Result<(), ApiError> {
        if self.admin {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_required",
            format!(
                "{what} needs an admin API key; this key is {} (an operator creates \
                 admin keys with `imagegate keys create --admin`)",
                KeyScope::Standard
            ),
        ))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AuthedKey {
    type Rejection = ApiError;

    /// Only open paths (which take no caller) run without one.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<AuthedKey>().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_api_key",
                "send `Authorization: Bearer <api key>`",
            )
        })
    }
}

/// Shortest time between two reloads of the key table.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// The limiter bucket requests without a key share.
const ANONYMOUS: &str = "anonymous";

pub struct Auth {
    ledger: Ledger,
    config: crate::config::AuthConfig,
    keys: RwLock<HashMap<String, ApiKeyRecord>>,
    last_reload: Mutex<Option<Instant>>,
    limiters: Mutex<HashMap<String, Arc<DefaultDirectRateLimiter>>>,
    rates: RateState,
}

impl Auth {
    /// Loads the keys, then keeps re-reading them in the background (a key created
    /// or revoked on any replica takes effect within `server.auth.reload_secs`).
    pub async fn start(
        ledger: Ledger,
        config: crate::config::AuthConfig,
    ) -> Result<Arc<Auth>, imagegate_ledger::LedgerError> {
        let every = config.reload.max(Duration::from_secs(1));
        let rates = if ledger.backend().is_shared() {
            RateState::Fleet
        } else {
            RateState::Process
        };
        let auth = Arc::new(Auth {
            rates,
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

    /// The key a bearer token belongs to, or why it does not.
    async fn verify(&self, token: &str) -> Result<AuthedKey, ApiError> {
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
        Ok(AuthedKey {
            admin: record.scope.is_admin(),
            id: Some(record.id),
        })
    }

    /// Who is calling: the key of the `Authorization` header or, while no key
    /// exists, an anonymous caller if [`anonymous_refusal`] lets it.
    /// `&mut` only because a shared `&Request` is not `Send` (its body is not `Sync`).
    pub(crate) async fn authenticate(
        &self,
        req: &mut Request<axum::body::Body>,
    ) -> Result<AuthedKey, ApiError> {
        let refused_anonymous = anonymous_refusal(req);
        let anonymous = move || match refused_anonymous {
            None => Ok(AuthedKey::anonymous()),
            Some(e) => Err(e),
        };
        let Some(value) = req.headers().get(header::AUTHORIZATION) else {
            if self.any_key_exists() {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing_api_key",
                    "send `Authorization: Bearer <api key>`",
                ));
            }
            return anonymous();
        };
        let value = value.to_str().unwrap_or("");
        let Some(token) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
        else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "Authorization must be `Bearer <api key>`",
            ));
        };
        match self.verify(token.trim()).await {
            Ok(key) => Ok(key),
            // Clients such as the official OpenAI SDKs always send a bearer token;
            // while no key exists any token is as good as none.
            Err(_) if !self.any_key_exists() => anonymous(),
            Err(e) => Err(e),
        }
    }

    /// Takes one request from `bucket`'s allowance, or says how long to wait.
    async fn admit(&self, bucket: &str) -> Result<(), Duration> {
        let per_minute = self
            .lookup(bucket)
            .and_then(|k| k.requests_per_minute)
            .unwrap_or(self.config.requests_per_minute);
        if per_minute == 0 {
            return Ok(());
        }
        let burst = self.config.burst.max(1);
        if self.rates == RateState::Fleet {
            match self.ledger.take_rate(bucket, per_minute, burst).await {
                Ok(None) => return Ok(()),
                Ok(Some(wait)) => return Err(wait),
                // The ledger being down fails the request's own work anyway; until it
                // is back, each replica holds the rate on its own.
                Err(e) => {
                    tracing::warn!(error = %e, "the fleet's rate state is unreachable; limiting in this process")
                }
            }
        }
        self.admit_here(bucket, per_minute, burst)
    }

    /// [`Auth::admit`] with this process's own GCRA state.
    fn admit_here(&self, bucket: &str, per_minute: u32, burst: u32) -> Result<(), Duration> {
        let limiter = {
            let mut limiters = self
                .limiters
                .lock()
                .expect("limiter lock is never poisoned");
            limiters
                .entry(bucket.to_string())
                .or_insert_with(|| {
                    let rate = NonZeroU32::new(per_minute.max(1)).expect("at least 1");
                    let burst = NonZeroU32::new(burst).expect("at least 1");
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

/// Where a key's request rate is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RateState {
    /// In this process: the ledger is a SQLite file, so this process is the fleet.
    Process,
    /// In the ledger database every replica shares (PostgreSQL), so a key's rate
    /// holds across replicas, not per process.
    Fleet,
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

/// Whether a `Host` value (with or without port) names this machine's loopback (the
/// wildcard address too: a client that connects to 0.0.0.0 reaches loopback).
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
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
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
            crate::error::OpenAiError(e).into_response()
        } else {
            e.into_response()
        })
    };
    let auth = &state.auth;
    let key = match auth.authenticate(req).await {
        Ok(key) => key,
        Err(e) => return fail(e),
    };
    if let Err(wait) = auth.admit(key.id.as_deref().unwrap_or(ANONYMOUS)).await {
        metrics::counter!("imagegate_rate_limited_total").increment(1);
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests for this API key; retry later",
        );
        e.retry_after = Some(wait.max(Duration::from_secs(1)));
        return fail(e);
    }
    req.extensions_mut().insert(key);
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
        assert!(
            anonymous_refusal(&request("127.0.0.1:5000", &[("host", "0.0.0.0:8080")])).is_none()
        );

        let refused = |peer: &str, headers: &[(&str, &str)]| {
            let e = anonymous_refusal(&request(peer, headers)).expect("refused");
            assert_eq!(e.status, StatusCode::UNAUTHORIZED);
            assert!(e.message.contains("imagegate keys create"), "{}", e.message);
        };
        refused("10.1.2.3:5000", &direct);
        refused("127.0.0.1:5000", &[("host", "images.example.com")]);
        refused(
            "127.0.0.1:5000",
            &[("host", "127.0.0.1"), ("x-forwarded-for", "1.2.3.4")],
        );
        refused(
            "127.0.0.1:5000",
            &[("host", "127.0.0.1"), ("x-real-ip", "1.2.3.4")],
        );
        refused(
            "127.0.0.1:5000",
            &[("host", "127.0.0.1"), ("forwarded", "for=1.2.3.4")],
        );
    }

    use imagegate_ledger::LedgerConfig;

    const LOOPBACK: &str = "127.0.0.1:50000";
    const OUTSIDE: &str = "192.0.2.7:50000";
    const LOCAL_HOST: (&str, &str) = ("host", "127.0.0.1:8080");

    fn bearer(peer: &str, token: &str) -> Request<axum::body::Body> {
        request(
            peer,
            &[LOCAL_HOST, ("authorization", &format!("Bearer {token}"))],
        )
    }

    #[tokio::test]
    async fn callers_carry_their_key_id_and_scope() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&LedgerConfig {
            url: format!("sqlite://{}/ledger.db", dir.path().display()),
        })
        .await
        .unwrap();
        let config = crate::config::AuthConfig::default();
        let auth = Auth::start(ledger.clone(), config.clone()).await.unwrap();

        // No key yet: loopback callers are the machine's owner, hence admin.
        let anonymous = auth
            .authenticate(&mut request(LOOPBACK, &[LOCAL_HOST]))
            .await
            .unwrap();
        assert_eq!(anonymous, AuthedKey::anonymous());
        assert!(anonymous.require_admin("cache: refresh").is_ok());
        // Any token is as good as none while no key exists.
        let any_token = auth
            .authenticate(&mut bearer(LOOPBACK, "sk-whatever"))
            .await
            .unwrap();
        assert_eq!(any_token, AuthedKey::anonymous());
        let outside = auth
            .authenticate(&mut request(OUTSIDE, &[LOCAL_HOST]))
            .await
            .unwrap_err();
        assert_eq!(outside.status, StatusCode::UNAUTHORIZED);

        let app = ledger
            .create_api_key("app", None, KeyScope::Standard)
            .await
            .unwrap();
        let ops = ledger
            .create_api_key("ops", None, KeyScope::Admin)
            .await
            .unwrap();
        // A fresh Auth reads both (an unknown id would reload at most once a second).
        let auth = Auth::start(ledger.clone(), config).await.unwrap();

        let standard = auth
            .authenticate(&mut bearer(OUTSIDE, &app.token))
            .await
            .unwrap();
        assert_eq!(standard.id.as_deref(), Some(app.record.id.as_str()));
        assert!(!standard.admin);
        let refused = standard.require_admin("cache: refresh").unwrap_err();
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert_eq!(refused.code, "admin_required");
        assert!(
            refused.message.contains("cache: refresh"),
            "{}",
            refused.message
        );
        assert!(refused.message.contains("--admin"), "{}", refused.message);

        let admin = auth
            .authenticate(&mut bearer(OUTSIDE, &ops.token))
            .await
            .unwrap();
        assert_eq!(admin.id.as_deref(), Some(ops.record.id.as_str()));
        assert!(admin.admin);
        assert!(admin.require_admin("cache: refresh").is_ok());

        // Now that keys exist, even loopback callers need one.
        let anonymous = auth
            .authenticate(&mut request(LOOPBACK, &[LOCAL_HOST]))
            .await
            .unwrap_err();
        assert_eq!(anonymous.code, "missing_api_key");
        let made_up = auth
            .authenticate(&mut bearer(LOOPBACK, "sk-whatever"))
            .await
            .unwrap_err();
        assert_eq!(made_up.code, "invalid_api_key");
        ledger.close().await;
    }
}
