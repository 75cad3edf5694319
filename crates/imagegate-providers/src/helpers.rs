//! What every remote adapter shares, written once: the API key wrapper that never
//! prints, the client with its timeout, sending a request and reading its body with a
//! limit, `Retry-After`, the mapping of HTTP statuses to [`ProviderError`], the
//! sniffing of returned bytes, and cancelling a queued prediction that was abandoned.
//!
//! Each adapter still parses its own error bodies (they differ per provider) and
//! decides what counts as a content-policy refusal; this module handles the rest.

use crate::ProviderError;
use base64::Engine as _;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use std::fmt;
use std::time::{Duration, SystemTime};

/// Largest JSON body we accept from a provider (base64 of a 4096² PNG fits easily).
pub(crate) const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// A secret read from the environment. `Debug` and `Display` print `***`, so the
/// value cannot leak through logs or error messages by accident.
#[derive(Clone)]
pub(crate) struct ApiKey(String);

impl ApiKey {
    /// Reads the variable named `var`; the error names the variable, never a value.
    pub(crate) fn from_env(provider: &str, var: &str) -> Result<ApiKey, ProviderError> {
        match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Ok(ApiKey(v.trim().to_string())),
            Ok(_) => Err(ProviderError::Config {
                provider: provider.to_string(),
                message: format!("environment variable {var} (the API key) is empty"),
            }),
            Err(_) => Err(ProviderError::Config {
                provider: provider.to_string(),
                message: format!("environment variable {var} (the API key) is not set"),
            }),
        }
    }

    /// Wraps a secret already taken from somewhere safe (e.g. split out of another).
    pub(crate) fn from_string(secret: String) -> ApiKey {
        ApiKey(secret)
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A client whose every request (connect, send, whole body) ends after `timeout`.
pub(crate) fn client(provider: &str, timeout: Duration) -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("imagegate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ProviderError::Config {
            provider: provider.to_string(),
            message: format!("cannot build HTTP client: {e}"),
        })
}

/// Checks the shared config fields every remote adapter has.
pub(crate) fn validate_common(
    provider: &str,
    base_url: &str,
    timeout_secs: u64,
    models_empty: bool,
) -> Result<(), ProviderError> {
    let fail = |message: String| {
        Err(ProviderError::Config {
            provider: provider.to_string(),
            message,
        })
    };
    if reqwest::Url::parse(base_url).is_err() {
        return fail(format!("base_url {base_url:?} is not a URL"));
    }
    if timeout_secs == 0 {
        return fail("timeout_secs must be at least 1".into());
    }
    if models_empty {
        return fail("models is empty".into());
    }
    Ok(())
}

/// `base` without a trailing slash, so `format!("{base}/path")` is always right.
/// What every HTTP adapter connects with: the validated base URL (no trailing
/// slash), a client with the configured timeout, and that timeout.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub base_url: String,
    pub client: reqwest::Client,
    pub timeout: Duration,
    /// Largest answer body read (JSON with a base64 image included).
    pub max_body: usize,
}

impl Endpoint {
    /// Checks the settings every adapter shares, then builds the client.
    pub(crate) fn open(
        provider: &str,
        base_url: &str,
        timeout_secs: u64,
        no_models: bool,
    ) -> Result<Endpoint, ProviderError> {
        validate_common(provider, base_url, timeout_secs, no_models)?;
        let timeout = Duration::from_secs(timeout_secs);
        Ok(Endpoint {
            base_url: trim_base(base_url),
            client: client(provider, timeout)?,
            timeout,
            max_body: MAX_RESPONSE_BYTES,
        })
    }

    /// Reads answers of at most `bytes` (a provider's `max_response_bytes`).
    pub(crate) fn with_max_body(mut self, bytes: u64) -> Endpoint {
        self.max_body = usize::try_from(bytes).unwrap_or(usize::MAX);
        self
    }
}

/// The default for `max_response_bytes`.
pub(crate) fn default_max_response_bytes() -> u64 {
    MAX_RESPONSE_BYTES as u64
}

pub(crate) fn trim_base(base: &str) -> String {
    base.trim_end_matches('/').to_string()
}

/// Maps a transport error (no HTTP status) to ours. The URL is dropped from the
/// message: some APIs accept keys in query strings, and we never want those echoed.
pub(crate) fn transport_error(
    provider: &str,
    timeout: Duration,
    e: reqwest::Error,
) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout {
            provider: provider.to_string(),
            after: timeout,
        }
    } else {
        ProviderError::Upstream {
            provider: provider.to_string(),
            message: format!("request failed: {}", e.without_url()),
        }
    }
}

/// Reads at most `limit` bytes of body; more is refused as a bad response.
pub(crate) async fn read_limited(
    provider: &str,
    timeout: Duration,
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, ProviderError> {
    let too_big = || ProviderError::BadResponse {
        provider: provider.to_string(),
        message: format!("response body is larger than the {limit}-byte limit"),
    };
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| transport_error(provider, timeout, e))?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// What one HTTP exchange brought back: status, headers and the (bounded) body.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Sends `request` and reads at most `limit` bytes of the answer, whatever its status.
pub(crate) async fn send(
    provider: &str,
    timeout: Duration,
    request: reqwest::RequestBuilder,
    limit: usize,
) -> Result<Answer, ProviderError> {
    let resp = request
        .send()
        .await
        .map_err(|e| transport_error(provider, timeout, e))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = read_limited(provider, timeout, resp, limit).await?;
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// Sends `request`; a success is parsed as `T` (and kept as a JSON value for audits),
/// anything else goes through the adapter's own `error_from`.
pub(crate) async fn send_json<T: DeserializeOwned>(
    provider: &str,
    endpoint: &Endpoint,
    request: reqwest::RequestBuilder,
    error_from: impl FnOnce(&Answer) -> ProviderError,
) -> Result<(T, serde_json::Value), ProviderError> {
    let answer = send(provider, endpoint.timeout, request, endpoint.max_body).await?;
    if !answer.status.is_success() {
        return Err(error_from(&answer));
    }
    parse_json(provider, &answer.body)
}

/// A JSON body as `T`, and as a value.
pub(crate) fn parse_json<T: DeserializeOwned>(
    provider: &str,
    body: &[u8],
) -> Result<(T, serde_json::Value), ProviderError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| bad_response(provider, format!("body is not JSON: {e}")))?;
    let parsed = T::deserialize(&value)
        .map_err(|e| bad_response(provider, format!("unexpected JSON shape: {e}")))?;
    Ok((parsed, value))
}

/// A number of seconds from a provider (`Retry-After`, Google's `retryDelay`) as a
/// `Duration`, or none when it is negative, not a number, or too large to be one:
/// whatever a provider sends must never panic.
pub(crate) fn seconds(secs: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(secs).ok()
}

/// `Retry-After` as delta-seconds or an HTTP date (RFC 9110 §10.2.3).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>() {
        return seconds(secs);
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The error for a non-success status that is not a content-policy refusal.
/// `detail` is the provider's own message; it is left out for 401/403, whose
/// messages sometimes quote part of the key.
pub(crate) fn status_error(
    provider: &str,
    key_env: Option<&str>,
    status: StatusCode,
    retry_after: Option<Duration>,
    detail: &str,
) -> ProviderError {
    let provider = provider.to_string();
    let detail = truncate(detail, 300);
    match status.as_u16() {
        401 | 403 => ProviderError::Config {
            provider,
            message: match key_env {
                Some(var) => {
                    format!("HTTP {status}: the API key in environment variable {var} was refused")
                }
                None => format!("HTTP {status}: the provider refused our credentials"),
            },
        },
        402 => ProviderError::Config {
            provider,
            message: format!("HTTP {status}: the account cannot pay for this call: {detail}"),
        },
        404 => ProviderError::Config {
            provider,
            message: format!("HTTP {status}: unknown model or wrong base_url: {detail}"),
        },
        429 => ProviderError::RateLimited {
            provider,
            retry_after,
        },
        _ => ProviderError::Upstream {
            provider,
            message: format!("HTTP {status}: {detail}"),
        },
    }
}

/// A short, single-line excerpt of an untrusted body for error messages.
pub(crate) fn truncate(s: &str, max_chars: usize) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let trimmed = one_line.trim();
    if trimmed.chars().count() <= max_chars {
        trimmed.to_string()
    } else {
        let mut out: String = trimmed.chars().take(max_chars).collect();
        out.push('…');
        out
    }
}

pub(crate) fn bad_response(provider: &str, message: impl Into<String>) -> ProviderError {
    ProviderError::BadResponse {
        provider: provider.to_string(),
        message: message.into(),
    }
}

pub(crate) fn decode_base64(provider: &str, data: &str) -> Result<Vec<u8>, ProviderError> {
    // Some servers prefix a data URL; tolerate it rather than fail a paid call.
    let data = match data.split_once(";base64,") {
        Some((prefix, rest)) if prefix.starts_with("data:") => rest,
        _ => data,
    };
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| bad_response(provider, format!("image is not valid base64: {e}")))
}

/// Downloads an output file (a URL a queue API answered with) with a size limit;
/// `auth` is sent only when the caller has checked the URL's host is the provider's.
pub(crate) async fn download(
    provider: &str,
    endpoint: &Endpoint,
    url: &str,
    limit: u64,
    auth: Option<(&str, String)>,
) -> Result<Vec<u8>, ProviderError> {
    if let Some(data) = url.strip_prefix("data:") {
        // Some queues answer small outputs inline as data URLs.
        return decode_base64(provider, &format!("data:{data}"));
    }
    let parsed =
        reqwest::Url::parse(url).map_err(|_| bad_response(provider, "output is not a URL"))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(bad_response(provider, "output URL is not http(s)"));
    }
    let mut request = endpoint.client.get(parsed);
    if let Some((header, value)) = auth {
        request = request.header(header, value);
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let answer = send(provider, endpoint.timeout, request, limit).await?;
    if !answer.status.is_success() {
        return Err(ProviderError::Upstream {
            provider: provider.to_string(),
            message: format!("downloading the output failed with HTTP {}", answer.status),
        });
    }
    Ok(answer.body)
}

/// The host of `url`, if it is a URL with one.
pub(crate) fn host_of(url: &str) -> Option<String> {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
}

/// Whether `url` points at `base_host` or a subdomain of one of `domains`: the only
/// hosts a queue API's key may be sent to, whatever URL its answers name.
pub(crate) fn trusted_host(url: &str, base_host: Option<&str>, domains: &[&str]) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else {
        return false;
    };
    let Some(host) = url.host_str() else {
        return false;
    };
    base_host == Some(host)
        || domains
            .iter()
            .any(|d| host == *d || host.ends_with(&format!(".{d}")))
}

/// Poll intervals: doubling from `first` up to `max`, a rate limit's or a blip's wait
/// honoured up to four times `max`.
pub(crate) struct PollSchedule {
    interval: Duration,
    max: Duration,
}

impl PollSchedule {
    pub(crate) fn new(first_ms: u64, max_ms: u64) -> PollSchedule {
        PollSchedule {
            interval: Duration::from_millis(first_ms),
            max: Duration::from_millis(max_ms),
        }
    }

    /// The wait before the next poll after a normal answer.
    pub(crate) fn next(&mut self) -> Duration {
        let now = self.interval;
        self.interval = (self.interval * 2).min(self.max);
        now
    }

    /// The wait after a poll that was rate limited or hit a 5xx blip.
    pub(crate) fn after_blip(&mut self, retry_after: Option<Duration>) -> Duration {
        retry_after.unwrap_or(self.interval).min(self.max * 4)
    }
}

/// Validates the queue settings every queue-style adapter shares.
pub(crate) fn validate_queue(
    provider: &str,
    poll_interval_ms: u64,
    max_poll_interval_ms: u64,
    max_wait_secs: u64,
    max_download_bytes: u64,
) -> Result<(), ProviderError> {
    let fail = |message: &str| {
        Err(ProviderError::Config {
            provider: provider.to_string(),
            message: message.to_string(),
        })
    };
    if poll_interval_ms == 0 || max_poll_interval_ms < poll_interval_ms {
        return fail("poll_interval_ms must be at least 1 and at most max_poll_interval_ms");
    }
    if max_wait_secs == 0 || max_download_bytes == 0 {
        return fail("max_wait_secs and max_download_bytes must be positive");
    }
    Ok(())
}

/// Cancels a queued prediction when the call waiting for it is dropped (the caller
/// went away, or the router's attempt timed out) before the adapter saw it finish,
/// so an abandoned prediction stops running and billing upstream. The cancel request
/// goes out on a task of its own, since a drop cannot wait.
pub(crate) struct CancelOnDrop {
    armed: Option<reqwest::RequestBuilder>,
    provider: String,
    id: String,
}

impl CancelOnDrop {
    pub(crate) fn new(provider: &str, id: &str, cancel: reqwest::RequestBuilder) -> CancelOnDrop {
        CancelOnDrop {
            armed: Some(cancel),
            provider: provider.to_string(),
            id: id.to_string(),
        }
    }

    /// The prediction ended on its own: nothing to cancel.
    pub(crate) fn disarm(&mut self) {
        self.armed = None;
    }

    /// Cancels now, waiting for the answer (the adapter's own deadline passed).
    pub(crate) async fn cancel_now(&mut self) {
        if let Some(request) = self.armed.take() {
            log_cancel(&self.provider, &self.id, request.send().await);
        }
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(request) = self.armed.take() else {
            return;
        };
        let (provider, id) = (
            std::mem::take(&mut self.provider),
            std::mem::take(&mut self.id),
        );
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    log_cancel(&provider, &id, request.send().await);
                });
            }
            Err(_) => tracing::warn!(provider = %provider, prediction = %id,
                "abandoned prediction not cancelled: no runtime to send the cancel on"),
        }
    }
}

fn log_cancel(provider: &str, id: &str, result: Result<reqwest::Response, reqwest::Error>) {
    match result {
        Ok(resp) if resp.status().is_success() => {
            tracing::info!(
                provider,
                prediction = id,
                "cancelled an abandoned prediction upstream"
            );
        }
        Ok(resp) => tracing::warn!(provider, prediction = id, status = %resp.status(),
            "cancelling an abandoned prediction was refused"),
        Err(e) => tracing::warn!(provider, prediction = id, error = %e.without_url(),
            "cancelling an abandoned prediction failed"),
    }
}

/// What the returned bytes are, judged from their header only (no pixel decoding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sniffed {
    pub media_type: &'static str,
    pub width: u32,
    pub height: u32,
}

/// Accepts PNG, JPEG and WebP (what the imaging crate decodes) and reads their
/// dimensions from the header; anything else is a bad response.
pub(crate) fn sniff_image(provider: &str, bytes: &[u8]) -> Result<Sniffed, ProviderError> {
    use image::ImageFormat;
    let format = image::guess_format(bytes)
        .map_err(|_| bad_response(provider, "returned bytes are not an image"))?;
    let media_type = match format {
        ImageFormat::Png => "image/png",
        ImageFormat::Jpeg => "image/jpeg",
        ImageFormat::WebP => "image/webp",
        other => {
            return Err(bad_response(
                provider,
                format!("returned image format {other:?} is not supported"),
            ))
        }
    };
    let (width, height) = image::ImageReader::with_format(std::io::Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| bad_response(provider, format!("returned image header is invalid: {e}")))?;
    Ok(Sniffed {
        media_type,
        width,
        height,
    })
}

/// The entry of `ratios` ("W:H") closest to `width`/`height` in log space, so
/// 2:1 is as far from 1:1 as 1:2 is.
pub(crate) fn closest_aspect_ratio<'a>(width: u32, height: u32, ratios: &[&'a str]) -> &'a str {
    let want = (f64::from(width) / f64::from(height.max(1))).ln();
    let mut best = ratios.first().copied().unwrap_or("1:1");
    let mut best_dist = f64::INFINITY;
    for r in ratios {
        let Some((w, h)) = r.split_once(':') else {
            continue;
        };
        let (Ok(w), Ok(h)) = (w.parse::<f64>(), h.parse::<f64>()) else {
            continue;
        };
        let dist = ((w / h).ln() - want).abs();
        if dist < best_dist {
            best_dist = dist;
            best = r;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_never_prints() {
        let k = ApiKey("sk-secret".into());
        assert_eq!(format!("{k:?} {k}"), "*** ***");
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "7".parse().expect("valid header"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(120);
        h.insert(
            RETRY_AFTER,
            httpdate::fmt_http_date(later)
                .parse()
                .expect("valid header"),
        );
        let d = retry_after(&h).expect("date parsed");
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120));
        h.insert(RETRY_AFTER, "soon".parse().expect("valid header"));
        assert_eq!(retry_after(&h), None);
    }

    proptest::proptest! {
        /// Whatever a provider puts in Retry-After, reading it never panics.
        #[test]
        fn retry_after_never_panics(value in "\\PC{0,40}", secs in proptest::num::f64::ANY) {
            let mut h = HeaderMap::new();
            if let Ok(v) = value.parse() {
                h.insert(RETRY_AFTER, v);
                let _ = retry_after(&h);
            }
            if let Ok(v) = secs.to_string().parse() {
                h.insert(RETRY_AFTER, v);
                let _ = retry_after(&h);
            }
            let _ = seconds(secs);
        }
    }

    #[test]
    fn absurd_retry_after_values_are_ignored() {
        let mut h = HeaderMap::new();
        for v in [
            "1e300",
            "-5",
            "NaN",
            "inf",
            "18446744073709551616",
            "99999999999999999999.5",
        ] {
            h.insert(RETRY_AFTER, v.parse().expect("valid header"));
            assert_eq!(retry_after(&h), None, "{v}");
        }
    }

    #[test]
    fn aspect_ratio_picks_nearest() {
        let r = ["1:1", "16:9", "9:16", "3:2", "2:3"];
        assert_eq!(closest_aspect_ratio(1024, 1024, &r), "1:1");
        assert_eq!(closest_aspect_ratio(1920, 1080, &r), "16:9");
        assert_eq!(closest_aspect_ratio(1200, 800, &r), "3:2");
        assert_eq!(closest_aspect_ratio(640, 1000, &r), "2:3");
    }

    #[test]
    fn sniff_rejects_text() {
        assert!(sniff_image("p", b"<html>oops</html>").is_err());
    }
}
