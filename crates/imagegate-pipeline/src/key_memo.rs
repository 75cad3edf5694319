//! Content keys of recent requests, so a repeated request (a cache hit, mostly)
//! does not encode and hash its canonical form again: that was about 18k of a
//! hit's ~176k instructions (callgrind). The key itself is still only ever computed
//! by [`imagegate_core::content_key`]; this remembers its answers.

use imagegate_core::{content_key, ContentKey, GenerationRequest, ImageFormat, RenderProfile};

/// Remembered inputs' bytes at most (prompts dominate): repeated requests stay, a
/// long tail of prompts seen once does not grow memory.
const MAX_BYTES: u64 = 8 << 20;
/// Per entry besides its prompts: the profile copy, vectors and the map's own share.
const ENTRY_OVERHEAD: usize = 512;

pub(crate) struct KeyMemo {
    keys: moka::sync::Cache<Inputs, Remembered>,
}

/// What the lookup hashes: the request and what a request can change about its
/// profile (which one, and the variants and formats overrides).
#[derive(Clone, PartialEq, Eq, Hash)]
struct Inputs {
    request: GenerationRequest,
    profile: String,
    variants: Vec<u32>,
    formats: Vec<ImageFormat>,
}

#[derive(Clone)]
struct Remembered {
    /// The whole resolved profile the key was computed with. A hit requires it to
    /// equal the caller's, so the memo stays right even if a request could one day
    /// change more of its profile than `Inputs` holds.
    profile: RenderProfile,
    key: ContentKey,
}

impl KeyMemo {
    pub(crate) fn new() -> KeyMemo {
        KeyMemo {
            keys: moka::sync::Cache::builder()
                .max_capacity(MAX_BYTES)
                .weigher(|inputs: &Inputs, _| {
                    let r = &inputs.request;
                    let bytes = r.prompt.len()
                        + r.negative_prompt.as_ref().map_or(0, String::len)
                        + ENTRY_OVERHEAD;
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .build(),
        }
    }

    /// `content_key(request, profile)`, remembered.
    pub(crate) fn key(&self, request: &GenerationRequest, profile: &RenderProfile) -> ContentKey {
        let inputs = Inputs {
            request: request.clone(),
            profile: profile.name.clone(),
            variants: profile.variants.clone(),
            formats: profile.formats.clone(),
        };
        if let Some(r) = self.keys.get(&inputs) {
            if r.profile == *profile {
                return r.key;
            }
        }
        let key = content_key(request, profile);
        self.keys.insert(
            inputs,
            Remembered {
                profile: profile.clone(),
                key,
            },
        );
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagegate_core::{AvifSettings, ModelChoice, ModelClass, Size};

    fn profile() -> RenderProfile {
        RenderProfile {
            name: "default".into(),
            variants: vec![256, 512],
            formats: vec![ImageFormat::Avif, ImageFormat::Jpeg],
            avif: AvifSettings::default(),
            jpeg: Default::default(),
            webp_quality: None,
            watermark: None,
            safety: Default::default(),
        }
    }

    fn request(prompt: &str, seed: u64) -> GenerationRequest {
        GenerationRequest::new(
            prompt,
            None,
            ModelChoice::Class(ModelClass::Standard),
            Size::new(1024, 1024).unwrap(),
            seed,
        )
        .unwrap()
    }

    /// Asked twice, and after every kind of change, the memo answers what
    /// `content_key` answers.
    #[test]
    fn remembered_keys_are_content_keys() {
        let memo = KeyMemo::new();
        let mut other_quality = profile();
        other_quality.avif.quality += 1.0;
        let mut other_widths = profile();
        other_widths.variants = vec![256];
        let cases = [
            (request("a lighthouse", 1), profile()),
            (request("a lighthouse", 2), profile()),
            (request("a  lighthouse ", 1), profile()),
            (request("a lighthouse", 1), other_quality),
            (request("a lighthouse", 1), other_widths),
        ];
        for _ in 0..2 {
            for (r, p) in &cases {
                assert_eq!(memo.key(r, p), content_key(r, p), "{r:?} {p:?}");
            }
        }
    }
}
