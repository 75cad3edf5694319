//! One suite of failure cases run over every adapter, each against a local server
//! speaking that provider's documented wire format (its error bodies included): the
//! same expectations for every provider, so a new adapter gets every case by adding
//! one [`Wire`] implementation and one [`conformance!`] line in `main.rs`.

use async_trait::async_trait;
use imagegate_providers::{Provider, ProviderError};
use std::sync::Arc;
use std::time::Duration;
use wiremock::MockServer;

use crate::common::png;

/// The Retry-After every rate-limit case asks for, however the provider says it.
pub const RETRY_AFTER: Duration = Duration::from_secs(7);
/// The answer (or download) limit the adapters are built with, and a body past it.
pub const BODY_LIMIT: u64 = 64 * 1024;
pub const OVERSIZED: usize = 256 * 1024;

/// The ways a provider call goes wrong, each served in the provider's own words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The key is refused; the provider's error text quotes it back.
    Unauthorized,
    /// Too many requests, with a wait of [`RETRY_AFTER`].
    RateLimited,
    ServerError,
    /// The first call answers after 3 s; the adapter's timeout is 1 s.
    Slow,
    /// The answer is not the JSON the API documents.
    Garbage,
    /// The "image" is text.
    NotAnImage,
    /// The answer (or the file it names) is larger than [`BODY_LIMIT`].
    Oversized,
    /// The provider's safety system refuses the prompt or the output.
    Refusal,
}

/// One provider's wire format, for the suite.
#[async_trait]
pub trait Wire: Sync {
    /// The environment variable holding the key, and the key: no error may show it.
    fn key_env(&self) -> &'static str;
    fn key(&self) -> &'static str;
    fn model(&self) -> &'static str;
    /// The adapter aimed at `server`, with a 1 s timeout per HTTP call and
    /// [`BODY_LIMIT`] on answers and downloads.
    fn provider(&self, server: &MockServer) -> Arc<dyn Provider>;
    /// Serves a whole successful generation of `image`, checking the key is sent the
    /// provider's way.
    async fn serve_success(&self, server: &MockServer, image: &[u8]);
    async fn serve_failure(&self, server: &MockServer, failure: Failure);
}

async fn fail(wire: &dyn Wire, failure: Failure) -> ProviderError {
    let server = MockServer::start().await;
    wire.serve_failure(&server, failure).await;
    let provider = wire.provider(&server);
    provider
        .generate(&crate::common::request(wire.model(), 1024, 1024))
        .await
        .expect_err("the call fails")
}

pub async fn success(wire: &dyn Wire) {
    let server = MockServer::start().await;
    let image = png(24, 16);
    wire.serve_success(&server, &image).await;
    let g = wire
        .provider(&server)
        .generate(&crate::common::request(wire.model(), 1024, 1024))
        .await
        .expect("generation succeeds");
    assert_eq!(g.bytes.as_ref(), image.as_slice());
    assert_eq!(g.media_type, "image/png");
    assert_eq!(g.model, wire.model());
    assert_eq!((g.usage.images, g.usage.width, g.usage.height), (1, 24, 16));
}

pub async fn unauthorized_without_leaking_the_key(wire: &dyn Wire) {
    let e = fail(wire, Failure::Unauthorized).await;
    let (text, debug) = (e.to_string(), format!("{e:?}"));
    assert!(matches!(e, ProviderError::Config { .. }), "{e:?}");
    assert!(text.contains(wire.key_env()), "names the variable: {text}");
    assert!(
        !text.contains(wire.key()) && !debug.contains(wire.key()),
        "leaks the key: {debug}"
    );
    assert!(!e.is_retryable() && e.counts_against_breaker());
}

pub async fn rate_limited_with_retry_after(wire: &dyn Wire) {
    let e = fail(wire, Failure::RateLimited).await;
    match e {
        ProviderError::RateLimited {
            retry_after: Some(d),
            ..
        } => assert!(
            d <= RETRY_AFTER && d > RETRY_AFTER - Duration::from_secs(2),
            "{d:?}"
        ),
        ref other => panic!("expected RateLimited with a delay, got {other:?}"),
    }
    assert!(e.is_retryable() && !e.counts_against_breaker());
}

pub async fn server_error(wire: &dyn Wire) {
    let e = fail(wire, Failure::ServerError).await;
    assert!(matches!(e, ProviderError::Upstream { .. }), "{e:?}");
    assert!(e.is_retryable() && e.counts_against_breaker());
}

pub async fn timeout(wire: &dyn Wire) {
    let e = fail(wire, Failure::Slow).await;
    assert!(matches!(e, ProviderError::Timeout { .. }), "{e:?}");
    // It may have been charged: not retried on the same provider.
    assert!(!e.is_retryable());
}

pub async fn garbage_body(wire: &dyn Wire) {
    let e = fail(wire, Failure::Garbage).await;
    assert!(matches!(e, ProviderError::BadResponse { .. }), "{e:?}");
}

pub async fn non_image_body(wire: &dyn Wire) {
    let e = fail(wire, Failure::NotAnImage).await;
    assert!(
        matches!(e, ProviderError::BadResponse { ref message, .. } if message.contains("not an image")),
        "{e:?}"
    );
}

pub async fn oversized_body(wire: &dyn Wire) {
    let e = fail(wire, Failure::Oversized).await;
    assert!(
        matches!(e, ProviderError::BadResponse { ref message, .. } if message.contains("limit")),
        "{e:?}"
    );
}

pub async fn content_refusal(wire: &dyn Wire) {
    let e = fail(wire, Failure::Refusal).await;
    assert!(matches!(e, ProviderError::ContentRejected { .. }), "{e:?}");
    assert!(!e.is_retryable() && !e.counts_against_breaker());
}

/// Every case for one adapter, as a module of tests named after the cases.
#[macro_export]
macro_rules! conformance {
    ($module:ident, $wire:expr, [$($case:ident),* $(,)?]) => {
        mod $module {
            $(
                #[tokio::test]
                async fn $case() {
                    $crate::conformance::$case(&$wire).await
                }
            )*
        }
    };
    ($module:ident, $wire:expr) => {
        $crate::conformance!($module, $wire, [
            success,
            unauthorized_without_leaking_the_key,
            rate_limited_with_retry_after,
            server_error,
            timeout,
            garbage_body,
            non_image_body,
            oversized_body,
            content_refusal,
        ]);
    };
}
