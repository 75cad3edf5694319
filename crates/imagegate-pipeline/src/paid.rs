//! Paid work that could not be finished yet, kept so that the retry does not pay
//! again: the provider's picture when the CPU pool was full, the rendered files
//! when the store was down. The charge for it is in the ledger already (as a failed
//! request); the next request for the same key takes the work from here instead of
//! calling a provider. Bounded by bytes and time: past either, the work is gone
//! and a retry pays (and records) a new generation.

use bytes::Bytes;
use imagegate_core::{ContentKey, SafetyVerdict};
use std::sync::Arc;
use std::time::Duration;

/// Bytes of paid work kept at most.
const MAX_BYTES: u64 = 256 << 20;
/// How long paid work waits for its retry.
const KEEP_FOR: Duration = Duration::from_secs(3600);

/// Where a provider's picture came from, for the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    pub provider: String,
    pub model: String,
}

impl Origin {
    /// The caller's own image (`imagegate process`): no provider drew it.
    pub fn upload() -> Origin {
        Origin {
            provider: imagegate_core::ModelChoice::UPLOAD_PROVIDER.into(),
            model: imagegate_core::ModelChoice::UPLOAD_MODEL.into(),
        }
    }
}

/// Files rendered for a key, not yet stored.
#[derive(Clone)]
pub(crate) struct RenderedFiles {
    pub verdict: SafetyVerdict,
    pub source_width: u32,
    pub source_height: u32,
    pub files: Vec<StoredFile>,
}

/// One encoded variant on its way to the store.
#[derive(Clone)]
pub(crate) struct StoredFile {
    pub width: u32,
    pub height: u32,
    pub format: imagegate_core::ImageFormat,
    pub bytes: Bytes,
}

#[derive(Clone)]
pub(crate) enum PaidWork {
    /// The provider's picture, not rendered yet.
    Source { origin: Origin, bytes: Bytes },
    /// Rendered, not stored yet.
    Rendered {
        origin: Origin,
        rendered: Arc<RenderedFiles>,
    },
}

impl PaidWork {
    fn weight(&self) -> u32 {
        let bytes = match self {
            PaidWork::Source { bytes, .. } => bytes.len(),
            PaidWork::Rendered { rendered, .. } => {
                rendered.files.iter().map(|f| f.bytes.len()).sum()
            }
        };
        u32::try_from(bytes + 256).unwrap_or(u32::MAX)
    }
}

pub(crate) struct PaidWorkCache {
    kept: moka::sync::Cache<ContentKey, PaidWork>,
}

impl PaidWorkCache {
    pub(crate) fn new() -> PaidWorkCache {
        PaidWorkCache {
            kept: moka::sync::Cache::builder()
                .max_capacity(MAX_BYTES)
                .weigher(|_, work: &PaidWork| work.weight())
                .time_to_live(KEEP_FOR)
                .build(),
        }
    }

    pub(crate) fn keep(&self, key: ContentKey, work: PaidWork) {
        self.kept.insert(key, work);
    }

    /// The paid work kept for `key`, taken out (one retry uses it).
    pub(crate) fn take(&self, key: ContentKey) -> Option<PaidWork> {
        self.kept.remove(&key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> ContentKey {
        format!("{n:02x}").repeat(32).parse().unwrap()
    }

    fn source(bytes: usize) -> PaidWork {
        PaidWork::Source {
            origin: Origin {
                provider: "openai".into(),
                model: "gpt-image-2".into(),
            },
            bytes: Bytes::from(vec![7u8; bytes]),
        }
    }

    #[test]
    fn kept_work_is_taken_once() {
        let cache = PaidWorkCache::new();
        cache.keep(key(1), source(10));
        assert!(matches!(cache.take(key(1)), Some(PaidWork::Source { .. })));
        assert!(cache.take(key(1)).is_none());
        assert!(cache.take(key(2)).is_none());
    }

    #[test]
    fn kept_work_is_bounded_by_bytes() {
        let cache = PaidWorkCache::new();
        // Ten pictures of 64 MiB cannot all stay under 256 MiB.
        for n in 0..10 {
            cache.keep(key(n), source(64 << 20));
        }
        cache.kept.run_pending_tasks();
        assert!(cache.kept.weighted_size() <= MAX_BYTES);
        assert!(cache.kept.entry_count() < 10);
    }
}
