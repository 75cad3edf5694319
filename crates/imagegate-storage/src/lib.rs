//! Where finished files live: the [`ObjectStore`] trait, the local directory store
//! ([`LocalStore`]), the S3 store ([`S3Store`], any S3 endpoint: AWS, Garage, MinIO,
//! R2) and the mapping from object keys to public (CDN) URLs.
//!
//! It knows nothing about manifests or the order of uploads (the pipeline owns
//! "variants first, manifest last"); it only promises that a `put` is atomic: a
//! reader sees the whole old object, the whole new one, or nothing, and that objects
//! put with [`ObjectStore::put_private`] are kept where the CDN does not serve them.

mod local;
mod s3;

pub use local::{LocalStore, LocalStoreConfig};
pub use s3::{S3Store, S3StoreConfig};

use async_trait::async_trait;
use bytes::Bytes;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object key {0:?} is not allowed (empty, absolute, or has '..' or odd characters)")]
    BadKey(String),
    #[error("local store at {root}: {action} failed: {source}")]
    Io {
        root: String,
        action: String,
        #[source]
        source: std::io::Error,
    },
    /// The store could not be reached or asked us to come back later (connection
    /// refused, timeouts, 5xx, throttling), after the client's own retries. Worth
    /// retrying later: callers answer 503 with Retry-After.
    #[error("{store}: {action} failed, store unavailable (after retries): {detail}")]
    Unavailable {
        /// Which store, e.g. `s3 bucket "img" at http://127.0.0.1:3900`.
        store: String,
        action: String,
        detail: String,
    },
    /// The store answered and refused in a way retrying will not fix (access denied,
    /// no such bucket, bad request, missing credentials).
    #[error("{store}: {action} failed: {detail}")]
    Rejected {
        store: String,
        action: String,
        detail: String,
    },
    /// The store's configuration is wrong; found at start-up, before any request.
    #[error("storage config: {0}")]
    Config(String),
}

impl StorageError {
    /// True when the failure is transient (the store is down, slow or throttling),
    /// as opposed to a bad key, bad configuration or a refusal.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StorageError::Unavailable { .. })
    }
}

/// The closed set of object stores. Serialized as in the configuration's
/// `[storage] kind` and in ledger details (`"local"`, `"s3"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// A directory on this machine (imagegate may serve it itself under `/cdn/`).
    Local,
    S3,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Local => "local",
            StoreKind::S3 => "s3",
        }
    }
}

impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored object as read back.
#[derive(Debug, Clone)]
pub struct Object {
    pub bytes: Bytes,
    pub content_type: String,
    /// Strong validator, quoted as HTTP wants it.
    pub etag: String,
}

/// Immutable content-addressed objects: every key is written once with bytes that
/// never change meaning, which is why they may be cached for a year.
pub const IMMUTABLE_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Which implementation this is, for logs and ledger details.
    fn kind(&self) -> StoreKind;
    /// Publishes an object: the CDN serves it at [`ObjectStore::public_url`].
    async fn put(&self, key: &str, bytes: Bytes, content_type: &str) -> Result<(), StorageError>;
    async fn get(&self, key: &str) -> Result<Option<Object>, StorageError>;
    /// Stores an object only imagegate reads (a manifest carries costs, the routing
    /// decision and provider error text) where the CDN does not serve it; atomic
    /// like `put`. Its key space is separate from the published one.
    async fn put_private(
        &self,
        key: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<(), StorageError>;
    /// Reads an object stored with `put_private`. One that a release before private
    /// placement published with `put` under the same key is found too, so a store
    /// upgraded in place keeps answering its keys (move such objects to end their
    /// exposure: README, "Production").
    async fn get_private(&self, key: &str) -> Result<Option<Object>, StorageError>;
    /// The URL a browser fetches the object from.
    fn public_url(&self, key: &str) -> String;
    /// Cheap check that the store can be written, for readiness probes.
    async fn check(&self) -> Result<(), StorageError>;
}

/// Strong ETag of some bytes.
pub fn etag_of(bytes: &[u8]) -> String {
    format!("\"{}\"", hex::encode(&blake3::hash(bytes).as_bytes()[..16]))
}

/// Rejects keys that could escape the store root or confuse URL mapping.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let ok = !key.is_empty()
        && key.len() <= 512
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StorageError::BadKey(key.chars().take(100).collect()))
    }
}

/// Is `key` an image file (by its extension)? The only kind of object a CDN route
/// may serve.
pub fn is_image_key(key: &str) -> bool {
    content_type_for(key).starts_with("image/")
}

pub fn content_type_for(key: &str) -> &'static str {
    match key.rsplit_once('.').map(|(_, ext)| ext) {
        Some("avif") => "image/avif",
        Some("webp") => "image/webp",
        Some("jpeg") | Some("jpg") => "image/jpeg",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ledger details carry the kind as JSON; its names must stay those of `as_str`.
    #[test]
    fn store_kinds_serialize_as_their_names() {
        for kind in [StoreKind::Local, StoreKind::S3] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        assert_eq!(StoreKind::Local.to_string(), "local");
        assert_eq!(StoreKind::S3.to_string(), "s3");
    }

    #[test]
    fn keys_that_escape_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "a//b",
            "./a",
            "a/b/",
            "a b",
            "a\\b",
            "%2e%2e",
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?} should be refused");
        }
        validate_key("i/ab/0123/768.avif").unwrap();
    }

    #[test]
    fn only_image_files_count_as_images() {
        for image in [
            "i/ab/k/768.avif",
            "i/ab/k/1.webp",
            "a.jpeg",
            "a.jpg",
            "a.png",
        ] {
            assert!(is_image_key(image), "{image}");
        }
        for other in ["i/ab/k/manifest.json", "ledger.db", "i/ab/k", "avif"] {
            assert!(!is_image_key(other), "{other}");
        }
    }
}
