//! Any S3 endpoint (AWS, Garage, MinIO, R2), through `aws-sdk-s3`; a CDN in front of
//! the bucket serves what we put.
//!
//! Private objects (manifests) go to `private_bucket` when one is configured: a
//! bucket the CDN does not serve at all, the only placement that holds with an
//! origin that serves a whole bucket (Garage's web endpoint, S3 website hosting).
//! Without one they go to `private/` in the same bucket, which the CDN must then
//! refuse (e.g. a CloudFront behaviour for `private/*` with no public origin access).
//!
//! Transient trouble (connection refused, timeouts, 5xx, throttling) is retried by the
//! SDK with exponential backoff; whatever is left afterwards becomes
//! [`StorageError::Unavailable`], everything else [`StorageError::Rejected`].

use crate::{
    content_type_for, etag_of, validate_key, Object, ObjectStore, StorageError, StoreKind,
    IMMUTABLE_CACHE_CONTROL,
};
use async_trait::async_trait;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Holds names of environment variables, never secrets, so it may be logged and
/// printed whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3StoreConfig {
    /// Base URL of the S3 API, e.g. `http://127.0.0.1:3900` for Garage; none = AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `garage` for Garage's default, `auto` for R2, the bucket's region on AWS.
    pub region: String,
    pub bucket: String,
    /// Prepended to every key with a `/` (e.g. `imagegate` → `imagegate/i/ab/...`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which Garage and MinIO need
    /// unless DNS is set up for virtual-host style.
    #[serde(default)]
    pub path_style: bool,
    /// Name of the environment variable holding the access key id. With
    /// `secret_access_key_env`; when both are absent the standard AWS chain is used
    /// (env, profile, web identity, ECS, IMDS).
    #[serde(default)]
    pub access_key_id_env: Option<String>,
    /// Name of the environment variable holding the secret access key.
    #[serde(default)]
    pub secret_access_key_env: Option<String>,
    /// CDN base the response URLs are built from: `public_url(key)` is
    /// `public_base_url/prefix/key`.
    pub public_base_url: String,
    /// Bucket for private objects (manifests, which carry costs, the routing decision
    /// and provider error text): one the CDN does not serve. Default: `bucket`, under
    /// `private_prefix`.
    #[serde(default)]
    pub private_bucket: Option<String>,
    /// Prefix of private objects' keys, outside `prefix`. Default: `private` in
    /// `bucket` (the CDN must not serve it), none in a `private_bucket` of their own.
    #[serde(default)]
    pub private_prefix: Option<String>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Bound on one attempt (request sent to response headers received).
    #[serde(default = "default_attempt_timeout_ms")]
    pub attempt_timeout_ms: u64,
    /// Bound on a whole operation, retries and backoff included.
    #[serde(default = "default_operation_timeout_ms")]
    pub operation_timeout_ms: u64,
    /// Attempts per operation, the first included (1 = no retries).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

fn default_connect_timeout_ms() -> u64 {
    3_000
}
fn default_attempt_timeout_ms() -> u64 {
    10_000
}
fn default_operation_timeout_ms() -> u64 {
    30_000
}
fn default_max_attempts() -> u32 {
    3
}

const MAX_ATTEMPTS_LIMIT: u32 = 10;

/// Private objects' prefix in the published bucket unless configured otherwise.
const DEFAULT_PRIVATE_PREFIX: &str = "private";

/// Private objects may be rewritten (a refresh republishes a manifest), and nobody
/// but imagegate reads them.
const PRIVATE_CACHE_CONTROL: &str = "private, no-cache";

impl S3StoreConfig {
    /// Where private objects go: (bucket, normalized prefix).
    fn private_location(&self) -> (String, Option<String>) {
        let bucket = self
            .private_bucket
            .clone()
            .unwrap_or_else(|| self.bucket.clone());
        let prefix = match &self.private_prefix {
            Some(p) => normalize_prefix(p),
            None if bucket == self.bucket => Some(DEFAULT_PRIVATE_PREFIX.to_string()),
            None => Some(String::new()),
        };
        (bucket, prefix)
    }

    /// Checks everything that can be checked without a request, including that the
    /// named credential variables are set. Errors name the field and the problem.
    pub fn validate(&self) -> Result<(), StorageError> {
        let bad = |msg: String| Err(StorageError::Config(format!("s3 store: {msg}")));
        if let Some(endpoint) = &self.endpoint {
            if let Err(e) = parse_base_url(endpoint) {
                return bad(format!("endpoint {endpoint:?} {e}"));
            }
        }
        if self.region.is_empty()
            || !self
                .region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return bad(format!(
                "region {:?} must be non-empty letters, digits and '-' (e.g. \"us-east-1\", \"garage\")",
                self.region
            ));
        }
        if !is_valid_bucket_name(&self.bucket) {
            return bad(format!(
                "bucket {:?} is not a valid bucket name (3-63 characters: lowercase letters, digits, '.', '-'; starting and ending with a letter or digit)",
                self.bucket
            ));
        }
        if let Some(prefix) = &self.prefix {
            if normalize_prefix(prefix).is_none() {
                return bad(format!(
                    "prefix {prefix:?} must be like \"imagegate\" or \"a/b\" (letters, digits, '-', '_', '.', '/' between segments; no leading '/', no '..')"
                ));
            }
        }
        if let Err(e) = parse_base_url(&self.public_base_url) {
            return bad(format!("public_base_url {:?} {e}", self.public_base_url));
        }
        if let Some(bucket) = &self.private_bucket {
            if !is_valid_bucket_name(bucket) {
                return bad(format!(
                    "private_bucket {bucket:?} is not a valid bucket name (3-63 characters: lowercase letters, digits, '.', '-'; starting and ending with a letter or digit)"
                ));
            }
        }
        let (private_bucket, private_prefix) = self.private_location();
        let Some(private_prefix) = private_prefix else {
            return bad(format!(
                "private_prefix {:?} must be like \"private\" or \"a/b\" (letters, digits, '-', '_', '.', '/' between segments; no leading '/', no '..')",
                self.private_prefix.as_deref().unwrap_or_default()
            ));
        };
        if private_bucket == self.bucket {
            let public = self
                .prefix
                .as_deref()
                .and_then(normalize_prefix)
                .unwrap_or_default();
            let inside = |inner: &str, outer: &str| {
                inner == outer || inner.starts_with(&format!("{outer}/"))
            };
            if private_prefix.is_empty()
                || (!public.is_empty()
                    && (inside(&private_prefix, &public) || inside(&public, &private_prefix)))
            {
                return bad(format!(
                    "private_prefix {private_prefix:?} must be a prefix of its own, apart from prefix {public:?}: manifests carry costs and provider errors, so they must live where the CDN can be told not to serve them (or set private_bucket)"
                ));
            }
        }
        match (&self.access_key_id_env, &self.secret_access_key_env) {
            (None, None) => {}
            (Some(id_var), Some(secret_var)) => {
                for (field, var) in [
                    ("access_key_id_env", id_var),
                    ("secret_access_key_env", secret_var),
                ] {
                    env_value(field, var).map_err(|e| StorageError::Config(format!("s3 store: {e}")))?;
                }
            }
            _ => {
                return bad(
                    "access_key_id_env and secret_access_key_env go together: set both (names of environment variables) or neither (standard AWS credential chain)".into(),
                )
            }
        }
        for (field, ms) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("attempt_timeout_ms", self.attempt_timeout_ms),
            ("operation_timeout_ms", self.operation_timeout_ms),
        ] {
            if ms == 0 {
                return bad(format!("{field} must be greater than 0"));
            }
        }
        if self.attempt_timeout_ms > self.operation_timeout_ms {
            return bad(format!(
                "attempt_timeout_ms ({}) must not exceed operation_timeout_ms ({})",
                self.attempt_timeout_ms, self.operation_timeout_ms
            ));
        }
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&self.max_attempts) {
            return bad(format!(
                "max_attempts ({}) must be between 1 and {MAX_ATTEMPTS_LIMIT}",
                self.max_attempts
            ));
        }
        Ok(())
    }
}

/// Reads a credential variable; the error names the variable, never its value.
fn env_value(field: &str, var: &str) -> Result<String, String> {
    if var.is_empty() || var.contains('=') || var.contains('\0') {
        return Err(format!(
            "{field} {var:?} is not a valid environment variable name"
        ));
    }
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(v),
        Ok(_) => Err(format!(
            "environment variable {var} (named by {field}) is empty"
        )),
        Err(std::env::VarError::NotPresent) => Err(format!(
            "environment variable {var} (named by {field}) is not set"
        )),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!(
            "environment variable {var} (named by {field}) is not valid UTF-8"
        )),
    }
}

/// An absolute http(s) URL with a host and neither query nor fragment, returned
/// without a trailing slash so that joining with `/` never doubles it.
fn parse_base_url(raw: &str) -> Result<String, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("is not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("must be http or https, not {:?}", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".into());
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// `"a/b/"` → `Some("a/b")`, `""` or `"/"` → `Some("")`; odd characters → `None`.
fn normalize_prefix(raw: &str) -> Option<String> {
    let trimmed = raw.strip_suffix('/').unwrap_or(raw);
    if trimmed.is_empty() {
        return Some(String::new());
    }
    validate_key(trimmed).ok().map(|()| trimmed.to_string())
}

fn is_valid_bucket_name(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b".-".contains(c))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// Without trailing slash; empty for none.
    prefix: String,
    /// Where `put_private` writes: `bucket` or a bucket of its own.
    private_bucket: String,
    /// Without trailing slash; empty for none (only in a bucket of its own).
    private_prefix: String,
    public_base_url: String,
    /// Names the store in every error: bucket and endpoint, nothing secret.
    label: String,
    /// Credential values read from the environment, scrubbed from error details in
    /// case a server echoes them.
    redact: Vec<(String, String)>,
    /// Body reads are outside the SDK's operation timeout; this bounds them too.
    operation_timeout: Duration,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("store", &self.label)
            .field("prefix", &self.prefix)
            .field("public_base_url", &self.public_base_url)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// Validates the config and builds the client; makes no request (use
    /// [`ObjectStore::check`] for that).
    pub async fn open(config: &S3StoreConfig) -> Result<S3Store, StorageError> {
        config.validate()?;
        let endpoint = config
            .endpoint
            .as_deref()
            .map(parse_base_url)
            .transpose()
            .map_err(StorageError::Config)?;
        let label = match &endpoint {
            Some(e) => format!("s3 bucket {:?} at {e}", config.bucket),
            None => format!("s3 bucket {:?} (AWS, {})", config.bucket, config.region),
        };

        // rustls with ring: no aws-lc build; plain http endpoints (Garage in tests) work too.
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .operation_attempt_timeout(Duration::from_millis(config.attempt_timeout_ms))
            .operation_timeout(Duration::from_millis(config.operation_timeout_ms))
            .build();
        let retries = RetryConfig::standard()
            .with_max_attempts(config.max_attempts)
            .with_initial_backoff(Duration::from_millis(100))
            .with_max_backoff(Duration::from_secs(2));

        // Pinned rather than `latest()`, so an SDK upgrade cannot change defaults
        // (checksums, retries) under us unnoticed.
        let mut loader = aws_config::defaults(BehaviorVersion::v2026_01_12())
            .region(Region::new(config.region.clone()))
            .http_client(http_client)
            .timeout_config(timeouts)
            .retry_config(retries);
        let mut redact = Vec::new();
        if let (Some(id_var), Some(secret_var)) =
            (&config.access_key_id_env, &config.secret_access_key_env)
        {
            let id = env_value("access_key_id_env", id_var).map_err(StorageError::Config)?;
            let secret =
                env_value("secret_access_key_env", secret_var).map_err(StorageError::Config)?;
            redact.push((secret.clone(), format!("[secret from ${secret_var}]")));
            redact.push((id.clone(), format!("[access key id from ${id_var}]")));
            loader = loader.credentials_provider(Credentials::new(
                id,
                secret,
                None,
                None,
                "imagegate-env",
            ));
        }
        if let Some(endpoint) = &endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        let sdk_config = loader.load().await;
        let s3_config = aws_sdk_s3::config::Builder::from(&sdk_config)
            .force_path_style(config.path_style)
            .build();

        let (private_bucket, private_prefix) = config.private_location();
        let private_prefix = private_prefix.unwrap_or_default();
        tracing::info!(
            store = %label,
            prefix = config.prefix.as_deref().unwrap_or(""),
            private_bucket = %private_bucket,
            private_prefix = %private_prefix,
            credentials = if redact.is_empty() { "aws-chain" } else { "env" },
            "s3 store opened"
        );
        Ok(S3Store {
            client: aws_sdk_s3::Client::from_conf(s3_config),
            bucket: config.bucket.clone(),
            prefix: config
                .prefix
                .as_deref()
                .and_then(normalize_prefix)
                .unwrap_or_default(),
            private_bucket,
            private_prefix,
            public_base_url: parse_base_url(&config.public_base_url)
                .map_err(StorageError::Config)?,
            label,
            redact,
            operation_timeout: Duration::from_millis(config.operation_timeout_ms),
        })
    }

    fn object_key(&self, key: &str) -> Result<String, StorageError> {
        joined(&self.prefix, key)
    }

    /// Sends a PUT of `object_key` to `bucket`.
    async fn put_to(
        &self,
        bucket: &str,
        object_key: &str,
        bytes: Bytes,
        content_type: &str,
        cache_control: &str,
    ) -> Result<(), StorageError> {
        self.client
            .put_object()
            .bucket(bucket)
            .key(object_key)
            .content_type(content_type)
            .cache_control(cache_control)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| self.error(&format!("put {bucket}/{object_key}"), e))?;
        Ok(())
    }

    /// GETs `object_key` from `bucket`; `key` (unprefixed) names its content type
    /// when the object has none.
    async fn get_from(
        &self,
        bucket: &str,
        object_key: &str,
        key: &str,
    ) -> Result<Option<Object>, StorageError> {
        let action = || format!("get {bucket}/{object_key}");
        let resp = match self
            .client
            .get_object()
            .bucket(bucket)
            .key(object_key)
            .send()
            .await
        {
            Ok(resp) => resp,
            Err(e) if is_no_such_key(&e) => return Ok(None),
            Err(e) => return Err(self.error(&action(), e)),
        };
        let content_type = resp
            .content_type()
            .map(str::to_string)
            .unwrap_or_else(|| content_type_for(key).to_string());
        let body = match tokio::time::timeout(self.operation_timeout, resp.body.collect()).await {
            Ok(Ok(body)) => body.into_bytes(),
            Ok(Err(e)) => {
                return Err(StorageError::Unavailable {
                    store: self.label.clone(),
                    action: action(),
                    detail: self.scrub(format!("reading the body failed: {}", chain(&e))),
                })
            }
            Err(_) => {
                return Err(StorageError::Unavailable {
                    store: self.label.clone(),
                    action: action(),
                    detail: format!(
                        "reading the body took longer than {} ms",
                        self.operation_timeout.as_millis()
                    ),
                })
            }
        };
        Ok(Some(Object {
            // Same validator as the local store: ETags do not change with the backend.
            etag: etag_of(&body),
            content_type,
            bytes: body,
        }))
    }

    fn scrub(&self, mut text: String) -> String {
        for (value, replacement) in &self.redact {
            if text.contains(value.as_str()) {
                text = text.replace(value.as_str(), replacement);
            }
        }
        text
    }

    fn error<E>(&self, action: &str, err: SdkError<E, HttpResponse>) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let unavailable = is_transient(&err);
        let detail = self.scrub(describe(&err));
        let (store, action) = (self.label.clone(), action.to_string());
        if unavailable {
            StorageError::Unavailable {
                store,
                action,
                detail,
            }
        } else {
            StorageError::Rejected {
                store,
                action,
                detail,
            }
        }
    }
}

/// One line a person can act on: status, S3 error code and message for answers;
/// the cause chain (e.g. "... tcp connect error: Connection refused") otherwise.
/// Never the raw response or request, which the SDK's own Debug output includes.
fn describe<E>(err: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match err {
        SdkError::ServiceError(s) => format!(
            "HTTP {} {}: {}",
            s.raw().status().as_u16(),
            s.err().code().unwrap_or("(no error code)"),
            s.err().message().unwrap_or("(no message)")
        ),
        other => chain(other),
    }
}

/// An error and its sources, joined with ": ", repeats dropped.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = Some(err);
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

/// Worth retrying later? Called after the SDK's own retries are spent.
fn is_transient<E>(err: &SdkError<E, HttpResponse>) -> bool
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    // Missing or malformed credentials look like dispatch failures but will not heal.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            return matches!(
                c,
                CredentialsError::ProviderTimedOut(_) | CredentialsError::ProviderError(_)
            );
        }
        source = e.source();
    }
    let status = err.raw_response().map(|r| r.status().as_u16());
    match err {
        SdkError::TimeoutError(_) => true,
        SdkError::DispatchFailure(d) => !d.is_user(),
        SdkError::ServiceError(s) => is_transient_status(status) || is_throttling(s.err().code()),
        SdkError::ResponseError(_) => is_transient_status(status),
        _ => false,
    }
}

fn is_transient_status(status: Option<u16>) -> bool {
    matches!(status, Some(429) | Some(500..=599))
}

fn is_throttling(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "SlowDown"
                | "Throttling"
                | "ThrottlingException"
                | "RequestTimeout"
                | "InternalError"
                | "ServiceUnavailable"
        )
    )
}

#[async_trait]
impl ObjectStore for S3Store {
    fn kind(&self) -> StoreKind {
        StoreKind::S3
    }

    async fn put(&self, key: &str, bytes: Bytes, content_type: &str) -> Result<(), StorageError> {
        let object_key = self.object_key(key)?;
        self.put_to(
            &self.bucket,
            &object_key,
            bytes,
            content_type,
            IMMUTABLE_CACHE_CONTROL,
        )
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<Object>, StorageError> {
        let object_key = self.object_key(key)?;
        self.get_from(&self.bucket, &object_key, key).await
    }

    async fn put_private(
        &self,
        key: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<(), StorageError> {
        let object_key = joined(&self.private_prefix, key)?;
        self.put_to(
            &self.private_bucket,
            &object_key,
            bytes,
            content_type,
            PRIVATE_CACHE_CONTROL,
        )
        .await
    }

    async fn get_private(&self, key: &str) -> Result<Option<Object>, StorageError> {
        let object_key = joined(&self.private_prefix, key)?;
        match self
            .get_from(&self.private_bucket, &object_key, key)
            .await?
        {
            Some(object) => Ok(Some(object)),
            // Where releases before private placement wrote it.
            None => self.get(key).await,
        }
    }

    fn public_url(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            format!("{}/{key}", self.public_base_url)
        } else {
            format!("{}/{}/{key}", self.public_base_url, self.prefix)
        }
    }

    async fn check(&self) -> Result<(), StorageError> {
        for bucket in [&self.bucket, &self.private_bucket] {
            self.client
                .head_bucket()
                .bucket(bucket)
                .send()
                .await
                .map_err(|e| self.error(&format!("head bucket {bucket:?}"), e))?;
            if self.private_bucket == self.bucket {
                break;
            }
        }
        Ok(())
    }
}

/// `prefix/key` (just `key` without a prefix), for a valid `key`.
fn joined(prefix: &str, key: &str) -> Result<String, StorageError> {
    validate_key(key)?;
    Ok(if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}/{key}")
    })
}

/// NoSuchKey, or a bare 404 that is not about the bucket.
fn is_no_such_key(err: &SdkError<GetObjectError, HttpResponse>) -> bool {
    match err {
        SdkError::ServiceError(s) => {
            s.err().is_no_such_key()
                || (s.err().code() != Some("NoSuchBucket") && s.raw().status().as_u16() == 404)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> S3StoreConfig {
        toml::from_str(
            r#"
            endpoint = "http://127.0.0.1:3900"
            region = "garage"
            bucket = "images"
            path_style = true
            public_base_url = "https://cdn.example.com/"
            "#,
        )
        .unwrap()
    }

    fn config_error(c: &S3StoreConfig) -> String {
        match c.validate() {
            Err(StorageError::Config(msg)) => msg,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_what_is_left_out_and_typos_fail() {
        let c = config();
        c.validate().unwrap();
        assert_eq!(c.prefix, None);
        assert_eq!(c.access_key_id_env, None);
        assert_eq!(c.connect_timeout_ms, 3_000);
        assert_eq!(c.attempt_timeout_ms, 10_000);
        assert_eq!(c.operation_timeout_ms, 30_000);
        assert_eq!(c.max_attempts, 3);
        let err = toml::from_str::<S3StoreConfig>(
            "region = \"garage\"\nbucket = \"images\"\npublic_base_url = \"https://cdn\"\npathstyle = true\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("pathstyle"), "{err}");
    }

    #[test]
    fn validation_names_the_field_and_the_problem() {
        type Change = fn(&mut S3StoreConfig);
        let cases: Vec<(Change, &str)> = vec![
            (
                |c| c.endpoint = Some("not a url".into()),
                "endpoint \"not a url\" is not a valid URL",
            ),
            (
                |c| c.endpoint = Some("ftp://x".into()),
                "must be http or https",
            ),
            (
                |c| c.bucket = String::new(),
                "bucket \"\" is not a valid bucket name",
            ),
            (|c| c.bucket = "Images".into(), "bucket \"Images\""),
            (|c| c.region = String::new(), "region \"\""),
            (|c| c.prefix = Some("/abs".into()), "prefix \"/abs\""),
            (|c| c.prefix = Some("a/../b".into()), "prefix \"a/../b\""),
            (
                |c| c.public_base_url = "cdn.example.com".into(),
                "public_base_url \"cdn.example.com\" is not a valid URL",
            ),
            (
                |c| c.public_base_url = "https://cdn.example.com/?x=1".into(),
                "must not have a query",
            ),
            (
                |c| c.access_key_id_env = Some("X".into()),
                "access_key_id_env and secret_access_key_env go together",
            ),
            (
                |c| c.attempt_timeout_ms = 0,
                "attempt_timeout_ms must be greater than 0",
            ),
            (
                |c| c.attempt_timeout_ms = 40_000,
                "must not exceed operation_timeout_ms",
            ),
            (|c| c.max_attempts = 0, "max_attempts (0)"),
            (
                |c| c.private_bucket = Some("Private".into()),
                "private_bucket \"Private\" is not a valid bucket name",
            ),
            (
                |c| c.private_prefix = Some("../up".into()),
                "private_prefix \"../up\" must be like",
            ),
            // In the published bucket, private objects need a prefix of their own.
            (
                |c| c.private_prefix = Some(String::new()),
                "private_prefix \"\" must be a prefix of its own",
            ),
            (
                |c| {
                    c.prefix = Some("img".into());
                    c.private_prefix = Some("img/private".into());
                },
                "apart from prefix \"img\"",
            ),
            (
                |c| {
                    c.prefix = Some("a/b".into());
                    c.private_prefix = Some("a".into());
                },
                "apart from prefix \"a/b\"",
            ),
        ];
        for (change, expected) in cases {
            let mut c = config();
            change(&mut c);
            let msg = config_error(&c);
            assert!(
                msg.contains(expected),
                "{msg:?} should contain {expected:?}"
            );
            assert!(msg.starts_with("s3 store: "), "{msg}");
        }
    }

    #[test]
    fn a_missing_credential_variable_is_named_and_values_never_shown() {
        let id_var = "IMAGEGATE_UNIT_S3_ID_7f3a";
        let secret_var = "IMAGEGATE_UNIT_S3_SECRET_7f3a";
        std::env::remove_var(secret_var);
        std::env::set_var(id_var, "AKIDUNITTEST");
        let mut c = config();
        c.access_key_id_env = Some(id_var.into());
        c.secret_access_key_env = Some(secret_var.into());
        let msg = config_error(&c);
        assert!(
            msg.contains(&format!(
                "environment variable {secret_var} (named by secret_access_key_env) is not set"
            )),
            "{msg}"
        );

        std::env::set_var(secret_var, "sup3r-s3cret-value");
        c.validate().unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("sup3r-s3cret-value") && !debug.contains("AKIDUNITTEST"));
    }

    #[tokio::test]
    async fn public_urls_join_base_prefix_and_key_with_single_slashes() {
        for (base, prefix, expected) in [
            (
                "https://cdn.example.com",
                None,
                "https://cdn.example.com/i/ab/k/768.avif",
            ),
            (
                "https://cdn.example.com/",
                Some(""),
                "https://cdn.example.com/i/ab/k/768.avif",
            ),
            (
                "https://cdn.example.com/img/",
                Some("p/q/"),
                "https://cdn.example.com/img/p/q/i/ab/k/768.avif",
            ),
            (
                "http://localhost:3902",
                Some("p"),
                "http://localhost:3902/p/i/ab/k/768.avif",
            ),
        ] {
            let mut c = config();
            c.public_base_url = base.into();
            c.prefix = prefix.map(str::to_string);
            let store = S3Store::open(&c).await.unwrap();
            assert_eq!(store.public_url("i/ab/k/768.avif"), expected);
        }
    }

    #[test]
    fn private_objects_default_to_their_own_prefix_or_bucket() {
        let mut c = config();
        assert_eq!(
            c.private_location(),
            ("images".to_string(), Some("private".to_string()))
        );
        c.private_bucket = Some("images-private".into());
        c.validate().unwrap();
        assert_eq!(
            c.private_location(),
            ("images-private".to_string(), Some(String::new()))
        );
        c.private_prefix = Some("m/".into());
        assert_eq!(
            c.private_location(),
            ("images-private".to_string(), Some("m".to_string()))
        );
        // The same bucket named explicitly is the same bucket.
        c.private_bucket = Some("images".into());
        c.private_prefix = None;
        c.prefix = Some("img".into());
        c.validate().unwrap();
        assert_eq!(c.private_location().1.as_deref(), Some("private"));
    }

    #[test]
    fn bucket_names_follow_the_s3_rules() {
        for ok in ["abc", "my-bucket.v2", "a1b"] {
            assert!(is_valid_bucket_name(ok), "{ok}");
        }
        for bad in ["ab", "-abc", "abc-", "ABC", "a_b", "a b", &"a".repeat(64)] {
            assert!(!is_valid_bucket_name(bad), "{bad}");
        }
    }
}
