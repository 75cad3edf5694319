//! Content keys of recent requests, so a repeated request (a cache hit, mostly)
//! does not encode and hash its canonical form again: that was about 18k of a
//! hit's ~176k instructions (callgrind). The key itself is still only ever computed
//! by [`imagegate_core::content_key`]; this remembers its answers, weighing each
//! entry by everything it holds, and only for requests that were admitted (a
//! refused request must not push out the keys of served ones).

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
                .weigher(|inputs: &Inputs, remembered: &Remembered| {
                    u32::try_from(inputs.weight() + profile_weight(&remembered.profile))
                        .unwrap_or(u32::MAX)
                })
                .build(),
        }
    }

    /// `content_key(request, profile)`, remembered or computed. A computed key is
    /// remembered only when the returned [`Remember`] is told to.
    pub(crate) fn key<'a>(
        &'a self,
        request: &GenerationRequest,
        profile: &RenderProfile,
    ) -> (ContentKey, Remember<'a>) {
        let inputs = Inputs {
            request: request.clone(),
            profile: profile.name.clone(),
            variants: profile.variants.clone(),
            formats: profile.formats.clone(),
        };
        if let Some(r) = self.keys.get(&inputs) {
            if r.profile == *profile {
                return (r.key, Remember(None));
            }
        }
        let key = content_key(request, profile);
        let remembered = Remembered {
            profile: profile.clone(),
            key,
        };
        (key, Remember(Some((self, inputs, remembered))))
    }
}

/// A key computed for a request not yet admitted; [`Remember::remember`] keeps it.
pub(crate) struct Remember<'a>(Option<(&'a KeyMemo, Inputs, Remembered)>);

impl Remember<'_> {
    pub(crate) fn remember(self) {
        if let Some((memo, inputs, remembered)) = self.0 {
            memo.keys.insert(inputs, remembered);
        }
    }
}

impl Inputs {
    /// Bytes this holds, prompts, lists and the map's own share.
    fn weight(&self) -> usize {
        let r = &self.request;
        r.prompt.len()
            + r.negative_prompt.as_ref().map_or(0, String::len)
            + r.template.as_ref().map_or(0, |t| {
                t.name.len()
                    + t.vars
                        .iter()
                        .map(|(k, v)| k.len() + v.len() + 48)
                        .sum::<usize>()
            })
            + self.profile.len()
            + self.variants.len() * std::mem::size_of::<u32>()
            + self.formats.len() * std::mem::size_of::<ImageFormat>()
            + ENTRY_OVERHEAD
    }
}

/// Bytes a profile copy holds beyond its fixed size: its name, lists and the
/// watermark's text or logo path.
fn profile_weight(p: &RenderProfile) -> usize {
    let watermark = p.watermark.as_ref().map_or(0, |w| match &w.mark {
        imagegate_core::WatermarkMark::Text { text, .. } => text.len(),
        imagegate_core::WatermarkMark::Logo { path, digest } => {
            path.as_os_str().len() + digest.len()
        }
    });
    std::mem::size_of::<RenderProfile>()
        + p.name.len()
        + p.variants.len() * std::mem::size_of::<u32>()
        + p.formats.len() * std::mem::size_of::<ImageFormat>()
        + watermark
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
            provenance: Default::default(),
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
                let (key, remember) = memo.key(r, p);
                assert_eq!(key, content_key(r, p), "{r:?} {p:?}");
                remember.remember();
            }
        }
    }

    #[test]
    fn keys_of_requests_not_admitted_are_not_remembered() {
        let memo = KeyMemo::new();
        let (_, remember) = memo.key(&request("refused", 1), &profile());
        drop(remember);
        memo.keys.run_pending_tasks();
        assert_eq!(memo.keys.entry_count(), 0);
        let (_, remember) = memo.key(&request("served", 1), &profile());
        remember.remember();
        memo.keys.run_pending_tasks();
        assert_eq!(memo.keys.entry_count(), 1);
    }

    #[test]
    fn an_entry_weighs_its_lists_not_only_its_prompt() {
        let mut many = profile();
        many.variants = (16..4016).collect();
        let small = Inputs {
            request: request("p", 1),
            profile: "default".into(),
            variants: profile().variants,
            formats: profile().formats,
        };
        let large = Inputs {
            variants: many.variants.clone(),
            ..small.clone()
        };
        assert!(large.weight() + profile_weight(&many) > 30_000);
        assert!(small.weight() + profile_weight(&profile()) < 2_000);
    }
}
