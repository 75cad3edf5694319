//! The manifest's part of an image answer, rendered to JSON once per published
//! manifest. A cache hit answers the same manifest over and over, and building its
//! URLs, srcset and escaping was the largest part of a hit's own work; only the
//! cache outcome and this request's cost differ between two answers for one key.

use imagegate_core::{ContentKey, Manifest};
use std::sync::{Arc, Weak};

/// Rendered bytes kept at most (their lengths summed): hot keys stay, a long tail
/// of keys asked for once does not grow memory.
const MAX_RENDERED_BYTES: u64 = 32 << 20;

pub(crate) struct RenderedManifests {
    cache: moka::sync::Cache<ContentKey, Rendered>,
}

#[derive(Clone)]
struct Rendered {
    /// The manifest these bytes were rendered from. A refresh publishes a new
    /// manifest under the same key, whose answer must not be the old one's; the
    /// pointer tells them apart. Weak, so this cache never keeps a manifest alive
    /// that the pipeline's cache dropped; while it exists the allocation is not
    /// reused, so an equal pointer is the same manifest.
    manifest: Weak<Manifest>,
    /// `ManifestView` as a JSON object.
    json: Arc<[u8]>,
}

impl RenderedManifests {
    pub(crate) fn new() -> RenderedManifests {
        RenderedManifests {
            cache: moka::sync::Cache::builder()
                .max_capacity(MAX_RENDERED_BYTES)
                .weigher(|_, r: &Rendered| u32::try_from(r.json.len()).unwrap_or(u32::MAX))
                .build(),
        }
    }

    /// `manifest`'s part of the answer as a JSON object (`{"created_at":...}`):
    /// rendered before, or by `render` now and kept.
    pub(crate) fn get(
        &self,
        manifest: &Arc<Manifest>,
        render: impl FnOnce() -> serde_json::Result<Vec<u8>>,
    ) -> serde_json::Result<Arc<[u8]>> {
        if let Some(r) = self.cache.get(&manifest.id) {
            if std::ptr::eq(r.manifest.as_ptr(), Arc::as_ptr(manifest)) {
                return Ok(r.json);
            }
        }
        let json: Arc<[u8]> = render()?.into();
        self.cache.insert(
            manifest.id,
            Rendered {
                manifest: Arc::downgrade(manifest),
                json: json.clone(),
            },
        );
        Ok(json)
    }
}
