//! The HTTP surface: axum routes for `/v1/images`, the local CDN, health, readiness,
//! metrics and the cost dashboard; JSON errors mapped from pipeline errors in one place ([`ApiError`]).
//! `api_server` mounts every route, each group's handlers live in a file of their own
//! under `routes/`, the shapes they answer in `views`, what every request passes
//! through in `middleware`, its own section of the configuration in `config`.
//!
//! It parses and answers; every decision about images and money is the pipeline's.
//! Entry points: [`router`] and [`serve`].

mod api_server;
pub mod auth;
pub mod config;
mod error;
mod middleware;
pub mod openapi;
mod rendered;
mod routes;
mod views;
pub mod webhooks;

pub use config::ServerConfig;
pub use error::ApiError;
pub use routes::dashboard::delivery_assumptions;
pub use routes::estimate::estimate_body;
pub use routes::images::outcome_body;
pub use views::EstimateView;

use imagegate_pipeline::Pipeline;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};
use tokio::net::TcpListener;

/// Shared state built once at start-up.
pub struct AppState {
    pub pipeline: Pipeline,
    /// `[server]`: this crate's own section of the configuration.
    pub server: ServerConfig,
    pub metrics: PrometheusHandle,
    pub auth: Arc<auth::Auth>,
    /// Deferred jobs' webhooks; None when no signing secret is configured.
    pub webhooks: Option<Arc<webhooks::Webhooks>>,
    rendered: rendered::RenderedManifests,
}

impl AppState {
    /// Fails when `[server.webhooks]` names a malformed signing secret.
    pub fn new(
        pipeline: Pipeline,
        server: ServerConfig,
        metrics: PrometheusHandle,
        auth: Arc<auth::Auth>,
    ) -> Result<AppState, imagegate_core::ConfigError> {
        let webhooks = webhooks::Webhooks::from_config(&server.webhooks)?.map(Arc::new);
        Ok(AppState {
            pipeline,
            server,
            metrics,
            auth,
            webhooks,
            rendered: rendered::RenderedManifests::new(),
        })
    }
}

/// The process-wide Prometheus recorder (the `metrics` facade allows one).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ])
                .expect("bucket list is non-empty")
                .install_recorder()
                .expect("the metrics recorder is installed once per process")
        })
        .clone()
}

pub fn router(state: Arc<AppState>) -> axum::Router {
    api_server::router(state)
}

/// Serves until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Peer addresses: anonymous access is for loopback clients only.
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    // An answer is one small write: send it now rather than hold it back (Nagle)
    // until the client acknowledges the previous one.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
