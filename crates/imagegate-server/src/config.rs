//! `[server]`: the HTTP surface's own section of the configuration tree. The binary
//! composes it with the pipeline's sections; values arrive parsed into their types
//! (an address, a duration), and [`ServerConfig::validate`] names a faulty field by
//! its path within the section.

use imagegate_core::{ConfigError, ModelChoice};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// An IP address and port (`127.0.0.1:8080`, `[::]:8080`); port 0 picks one.
    pub listen: SocketAddr,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// HTTP requests in flight at once; past that, 503 with Retry-After.
    pub max_in_flight: usize,
    /// Whole-request deadline (`request_timeout_secs` in the file).
    #[serde(rename = "request_timeout_secs", with = "whole_seconds")]
    pub request_timeout: Duration,
    /// Serve the local store's files under `/cdn/`.
    pub serve_cdn: bool,
    /// `POST /v1/images/generations`, the OpenAI Images API surface.
    pub openai: OpenAiCompatConfig,
    pub auth: AuthConfig,
    /// Webhooks of deferred jobs (Standard Webhooks).
    pub webhooks: WebhookConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            max_body_bytes: 64 * 1024,
            max_in_flight: 1024,
            request_timeout: Duration::from_secs(300),
            serve_cdn: true,
            openai: OpenAiCompatConfig::default(),
            auth: AuthConfig::default(),
            webhooks: WebhookConfig::default(),
        }
    }
}

impl ServerConfig {
    /// Checks what the types alone do not, naming fields relative to `[server]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.request_timeout.is_zero() {
            return Err(ConfigError::new(
                "request_timeout_secs",
                "must be at least 1",
            ));
        }
        if self.auth.burst == 0 {
            return Err(ConfigError::new("auth.burst", "must be at least 1"));
        }
        if !(1..=10).contains(&self.openai.max_n) {
            return Err(ConfigError::new("openai.max_n", "must be 1 to 10"));
        }
        if self.webhooks.timeout.is_zero() {
            return Err(ConfigError::new(
                "webhooks.timeout_secs",
                "must be at least 1",
            ));
        }
        if self.webhooks.concurrency == 0 {
            return Err(ConfigError::new(
                "webhooks.concurrency",
                "must be at least 1",
            ));
        }
        if self.webhooks.retry_delays_secs.len() > 20 {
            return Err(ConfigError::new(
                "webhooks.retry_delays_secs",
                "at most 20 retries",
            ));
        }
        for (alias, model) in &self.openai.models {
            if let Err(e) = model.parse::<ModelChoice>() {
                return Err(ConfigError::new(
                    format!("openai.models.{alias}"),
                    e.to_string(),
                ));
            }
        }
        Ok(())
    }

    /// The base of the URLs of the local store's files when it has none of its own:
    /// the `/cdn/` of the address listened on. A wildcard address (0.0.0.0, ::) names
    /// no host a client could use, so loopback stands in for it.
    pub fn local_cdn_base_url(&self) -> String {
        let ip = match self.listen.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => Ipv4Addr::LOCALHOST.into(),
            ip if ip.is_unspecified() => Ipv6Addr::LOCALHOST.into(),
            ip => ip,
        };
        format!("http://{}/cdn", SocketAddr::new(ip, self.listen.port()))
    }
}

/// API keys live in the ledger database (`imagegate keys create`); these are the
/// limits that apply to them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Sustained requests per minute per key without a limit of its own
    /// (`keys create --requests-per-minute`); 0 leaves such keys unlimited. Anonymous
    /// loopback callers share one allowance.
    pub requests_per_minute: u32,
    /// Requests a key may make at once above the sustained rate.
    pub burst: u32,
    /// How often the key table is re-read, so keys created or revoked anywhere apply
    /// (`reload_secs` in the file).
    #[serde(rename = "reload_secs", with = "whole_seconds")]
    pub reload: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            requests_per_minute: 0,
            burst: 100,
            reload: Duration::from_secs(2),
        }
    }
}

/// How OpenAI Images API requests map onto imagegate's own.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiCompatConfig {
    /// Largest `n` accepted (OpenAI allows 10).
    pub max_n: u32,
    /// OpenAI model names and what they mean here: a model class or a pinned
    /// `provider/model`. Names not listed are parsed as imagegate models.
    pub models: BTreeMap<String, String>,
}

impl Default for OpenAiCompatConfig {
    fn default() -> Self {
        let models = [
            ("dall-e-2", "draft"),
            ("dall-e-3", "standard"),
            ("gpt-image-1", "standard"),
            ("gpt-image-1-mini", "draft"),
            ("gpt-image-1.5", "standard"),
            ("gpt-image-2", "standard"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        OpenAiCompatConfig { max_n: 10, models }
    }
}

/// `[server.webhooks]`: how the ends of deferred jobs are announced. Deliveries are
/// signed per the Standard Webhooks convention with the secret in `secret_env`;
/// without one, a request naming a webhook is refused (and keys' default webhooks
/// are not called).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// The environment variable holding the signing secret, `whsec_` and base64 (the
    /// secret itself is never in the file or the logs).
    pub secret_env: String,
    /// One attempt's deadline, connection included (`timeout_secs` in the file).
    #[serde(rename = "timeout_secs", with = "whole_seconds")]
    pub timeout: Duration,
    /// The wait before each retry after a failed attempt; when they run out, the
    /// delivery fails. The default follows the Standard Webhooks recommendation
    /// (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h).
    pub retry_delays_secs: Vec<u64>,
    /// Deliveries in flight at once on this replica.
    pub concurrency: usize,
    /// How often this replica looks for ended jobs and due retries.
    pub poll_ms: u64,
    /// Allow receivers on loopback, private, link-local and other non-public
    /// addresses. Off: a webhook cannot be aimed at the service's own network.
    pub allow_private_networks: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            secret_env: "IMAGEGATE_WEBHOOK_SECRET".into(),
            timeout: Duration::from_secs(15),
            retry_delays_secs: vec![5, 300, 1800, 7200, 18000, 36000, 36000],
            concurrency: 8,
            poll_ms: 1000,
            allow_private_networks: false,
        }
    }
}

/// Durations written as whole seconds, as the file has always had them.
mod whole_seconds {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_listen(listen: &str) -> ServerConfig {
        toml::from_str(&format!("listen = {listen:?}")).expect("parses")
    }

    #[test]
    fn the_local_cdn_follows_the_address_listened_on() {
        assert_eq!(
            with_listen("127.0.0.1:9000").local_cdn_base_url(),
            "http://127.0.0.1:9000/cdn"
        );
        assert_eq!(
            with_listen("0.0.0.0:8080").local_cdn_base_url(),
            "http://127.0.0.1:8080/cdn"
        );
        assert_eq!(
            with_listen("[::]:81").local_cdn_base_url(),
            "http://[::1]:81/cdn"
        );
    }

    #[test]
    fn values_arrive_typed_and_faults_name_their_field() {
        let refused = toml::from_str::<ServerConfig>("listen = \"localhost\"")
            .expect_err("a host name is not an address");
        assert!(refused.to_string().contains("listen"), "{refused}");
        let c: ServerConfig =
            toml::from_str("request_timeout_secs = 7\n[auth]\nreload_secs = 3\n").unwrap();
        assert_eq!(c.request_timeout, Duration::from_secs(7));
        assert_eq!(c.auth.reload, Duration::from_secs(3));
        c.validate().expect("valid");

        let fault = |text: &str| {
            toml::from_str::<ServerConfig>(text)
                .unwrap()
                .validate()
                .expect_err("refused")
                .path
        };
        assert_eq!(fault("request_timeout_secs = 0"), "request_timeout_secs");
        assert_eq!(fault("[auth]\nburst = 0"), "auth.burst");
        assert_eq!(fault("[openai]\nmax_n = 11"), "openai.max_n");
        assert_eq!(
            fault("[webhooks]\ntimeout_secs = 0"),
            "webhooks.timeout_secs"
        );
        assert_eq!(fault("[openai.models]\nx = \"nope/\""), "openai.models.x");
    }
}
