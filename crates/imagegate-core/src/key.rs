//! The content key: blake3 over a canonical, versioned encoding of everything that
//! decides the output bytes, and nothing else (no request id, API key or time).

use crate::profile::{RenderProfile, WatermarkMark};
use crate::request::{GenerationRequest, ModelChoice};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use unicode_normalization::{IsNormalized, UnicodeNormalization};

/// Bumped whenever a stage changes its output for the same input, so old cache
/// entries stop matching instead of serving stale bytes.
pub const PIPELINE_VERSION: u32 = 1;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentKey([u8; 32]);

impl ContentKey {
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// The first two hex digits: a fan-out directory so no folder holds millions of keys.
    pub fn shard(self) -> String {
        hex::encode(&self.0[..1])
    }
}

impl fmt::Display for ContentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentKey({})", self.to_hex())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a content key (64 lowercase hex digits)")]
pub struct BadKey(String);

impl FromStr for ContentKey {
    type Err = BadKey;
    fn from_str(s: &str) -> Result<ContentKey, BadKey> {
        let bad = || BadKey(s.chars().take(80).collect());
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| bad())?;
        Ok(ContentKey(out))
    }
}

impl Serialize for ContentKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ContentKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ContentKey, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Unicode NFC, surrounding whitespace trimmed, inner whitespace runs collapsed to
/// one space: the spellings a person would call "the same prompt".
pub fn normalize_text(text: &str) -> String {
    // Most prompts are already NFC (all ASCII ones are): the quick check spares them
    // the decompose-and-recompose pass, which was most of a cache hit's key cost.
    let nfc: Cow<'_, str> = match unicode_normalization::is_nfc_quick(text.chars()) {
        IsNormalized::Yes => Cow::Borrowed(text),
        IsNormalized::No | IsNormalized::Maybe => Cow::Owned(text.nfc().collect()),
    };
    let mut out = String::with_capacity(nfc.len());
    for word in nfc.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// The canonical form, field by field. serde_json writes struct fields in
/// declaration order, which makes this encoding stable.
#[derive(Serialize)]
struct Canonical<'a> {
    v: u32,
    /// blake3 of the caller's own image for `process`; None for generations.
    source: Option<String>,
    prompt: String,
    negative_prompt: Option<String>,
    model: String,
    width: u32,
    height: u32,
    seed: u64,
    template: Option<(&'a str, Vec<(&'a str, String)>)>,
    profile: CanonicalProfile<'a>,
}

#[derive(Serialize)]
struct CanonicalProfile<'a> {
    variants: Vec<u32>,
    formats: Vec<&'static str>,
    avif_quality: f32,
    avif_speed: u8,
    avif_bit_depth: u8,
    avif_encoder: &'static str,
    jpeg_quality: u8,
    webp_quality: Option<u8>,
    watermark: Option<CanonicalWatermark<'a>>,
    blur_at: f32,
    block_at: f32,
    /// Absent when provenance is off, so such keys are the ones made before
    /// provenance existed (the same bytes); any mark gives every key anew, and an
    /// unmarked cached file is never served as a marked one.
    #[serde(skip_serializing_if = "Option::is_none")]
    provenance: Option<CanonicalProvenance>,
}

#[derive(Serialize)]
struct CanonicalProvenance {
    invisible_watermark: Option<crate::profile::InvisibleWatermark>,
    c2pa: crate::profile::C2paMode,
}

#[derive(Serialize)]
struct CanonicalWatermark<'a> {
    text: Option<String>,
    color: Option<[u8; 3]>,
    logo_digest: Option<&'a str>,
    position: crate::profile::WatermarkPosition,
    opacity: f32,
    scale: f32,
    margin: f32,
}

/// The content key of `request` rendered with `profile`.
pub fn content_key(request: &GenerationRequest, profile: &RenderProfile) -> ContentKey {
    canonical_key(None, request, profile)
}

/// The content key of an image the caller already has (`imagegate process`), rendered
/// with `profile`: the source bytes' blake3 takes the place of the prompt.
pub fn source_key(source: &[u8], profile: &RenderProfile) -> ContentKey {
    let placeholder = GenerationRequest {
        prompt: String::new(),
        negative_prompt: None,
        model: ModelChoice::upload(),
        size: crate::request::Size {
            width: 0,
            height: 0,
        },
        seed: 0,
        template: None,
    };
    canonical_key(
        Some(blake3::hash(source).to_hex().to_string()),
        &placeholder,
        profile,
    )
}

fn canonical_key(
    source: Option<String>,
    request: &GenerationRequest,
    profile: &RenderProfile,
) -> ContentKey {
    let negative = request
        .negative_prompt
        .as_deref()
        .map(normalize_text)
        .filter(|n| !n.is_empty());
    let model = match &request.model {
        ModelChoice::Class(c) => c.as_str().to_string(),
        ModelChoice::Pinned { provider, model } => format!("{provider}/{model}"),
    };
    let mut formats: Vec<&'static str> = profile.formats.iter().map(|f| f.extension()).collect();
    formats.sort_unstable();
    formats.dedup();
    let watermark = profile.watermark.as_ref().map(|w| {
        let (text, color, logo_digest) = match &w.mark {
            WatermarkMark::Text { text, color } => (Some(normalize_text(text)), Some(*color), None),
            WatermarkMark::Logo { digest, .. } => (None, None, Some(digest.as_str())),
        };
        CanonicalWatermark {
            text,
            color,
            logo_digest,
            position: w.position,
            opacity: w.opacity,
            scale: w.scale,
            margin: w.margin,
        }
    });
    let canonical = Canonical {
        v: PIPELINE_VERSION,
        source,
        prompt: normalize_text(&request.prompt),
        negative_prompt: negative,
        model,
        width: request.size.width,
        height: request.size.height,
        seed: request.seed,
        template: request.template.as_ref().map(|t| {
            let vars = t
                .vars
                .iter()
                .map(|(k, v)| (k.as_str(), normalize_text(v)))
                .collect();
            (t.name.as_str(), vars)
        }),
        profile: CanonicalProfile {
            variants: profile.widths(),
            formats,
            avif_quality: profile.avif.quality,
            avif_speed: profile.avif.speed,
            avif_bit_depth: profile.avif.bit_depth,
            avif_encoder: profile.avif.encoder.as_str(),
            jpeg_quality: profile.jpeg.quality,
            webp_quality: profile.webp_quality,
            watermark,
            blur_at: profile.safety.blur_at,
            block_at: profile.safety.block_at,
            provenance: (!profile.provenance.is_off()).then_some(CanonicalProvenance {
                invisible_watermark: profile.provenance.watermark,
                c2pa: profile.provenance.c2pa,
            }),
        },
    };
    let encoded =
        serde_json::to_vec(&canonical).expect("canonical form has only serializable fields");
    ContentKey(
        *blake3::Hasher::new_derive_key("imagegate content key")
            .update(&encoded)
            .finalize()
            .as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{
        AvifSettings, C2paMode, ImageFormat, InvisibleWatermark, JpegSettings, ProvenanceMarks,
        SafetyThresholds,
    };
    use crate::request::{ModelClass, Size};
    use proptest::prelude::*;

    fn profile() -> RenderProfile {
        RenderProfile {
            name: "default".into(),
            variants: vec![256, 512, 768],
            formats: vec![ImageFormat::Avif, ImageFormat::Jpeg],
            avif: AvifSettings::default(),
            jpeg: JpegSettings::default(),
            webp_quality: None,
            watermark: None,
            safety: SafetyThresholds::default(),
            provenance: Default::default(),
        }
    }

    fn request(prompt: &str) -> GenerationRequest {
        GenerationRequest::new(
            prompt,
            None,
            ModelChoice::Class(ModelClass::Standard),
            Size {
                width: 1024,
                height: 1024,
            },
            42,
        )
        .unwrap()
    }

    /// What the pipeline stamps on every profile under the default `[provenance]`:
    /// watermark key 0 at 45.5 dB, Content Credentials embedded.
    fn default_marks() -> ProvenanceMarks {
        ProvenanceMarks {
            watermark: Some(InvisibleWatermark {
                key_id: 0,
                psnr_db: 45.5,
            }),
            c2pa: C2paMode::Embedded,
        }
    }

    /// A key changes only on purpose: these two are published in stores. With
    /// provenance off the canonical form is the one from before provenance
    /// existed (the same bytes come out), so that key did not move.
    #[test]
    fn the_default_keys_are_stable() {
        let req = request("a lighthouse at dusk, watercolor");
        let mut p = profile();
        assert_eq!(
            content_key(&req, &p).to_hex(),
            "4dddb7afb130f32774d09aa52343a49eabb82510e171935bfd74a1fd7e96b56f"
        );
        p.provenance = default_marks();
        assert_eq!(
            content_key(&req, &p).to_hex(),
            "02987fcb0e9c271f5400e01f43d1a192ac498a6da7a417244c3dd3648c6871fa"
        );
    }

    /// Files cached unmarked, or marked with another key id or strength, or
    /// signed or not, are other files: each setting gives another key.
    #[test]
    fn every_provenance_setting_gives_another_key() {
        let req = request("a red bicycle");
        let mut seen = std::collections::HashSet::new();
        let mut p = profile();
        assert!(seen.insert(content_key(&req, &p)));
        let variants = [
            ProvenanceMarks {
                watermark: None,
                c2pa: C2paMode::Embedded,
            },
            ProvenanceMarks {
                c2pa: C2paMode::Off,
                ..default_marks()
            },
            default_marks(),
            ProvenanceMarks {
                watermark: Some(InvisibleWatermark {
                    key_id: 1,
                    psnr_db: 45.5,
                }),
                ..default_marks()
            },
            ProvenanceMarks {
                watermark: Some(InvisibleWatermark {
                    key_id: 0,
                    psnr_db: 48.0,
                }),
                ..default_marks()
            },
        ];
        for marks in variants {
            p.provenance = marks;
            assert!(seen.insert(content_key(&req, &p)), "{marks:?} collides");
            // The key of an uploaded picture follows them too.
            assert_ne!(source_key(b"png", &p), source_key(b"png", &profile()));
        }
    }

    #[test]
    fn keys_round_trip_through_hex() {
        let k = content_key(&request("a cat"), &profile());
        assert_eq!(k.to_hex().parse::<ContentKey>().unwrap(), k);
        assert!("ABC".parse::<ContentKey>().is_err());
        assert!(k.to_hex().to_uppercase().parse::<ContentKey>().is_err());
    }

    #[test]
    fn nfc_and_nfd_spellings_are_one_prompt() {
        // "é" precomposed versus e + combining acute.
        let a = content_key(&request("caf\u{e9} at night"), &profile());
        let b = content_key(&request("cafe\u{301}  at\tnight "), &profile());
        assert_eq!(a, b);
    }

    #[test]
    fn source_keys_follow_bytes_and_profile() {
        let p = profile();
        assert_eq!(source_key(b"png bytes", &p), source_key(b"png bytes", &p));
        assert_ne!(source_key(b"png bytes", &p), source_key(b"png bytez", &p));
        let mut q = profile();
        q.variants.push(1024);
        assert_ne!(source_key(b"png bytes", &p), source_key(b"png bytes", &q));
    }

    #[test]
    fn variant_order_and_duplicates_do_not_matter() {
        let mut p = profile();
        p.variants = vec![768, 256, 512, 256];
        p.formats = vec![ImageFormat::Jpeg, ImageFormat::Avif];
        assert_eq!(
            content_key(&request("x"), &p),
            content_key(&request("x"), &profile())
        );
    }

    fn whitespace() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec![" ", "\t", "\n", "\u{a0}", "  "]),
            1..3,
        )
        .prop_map(|v| v.concat())
    }

    proptest! {
        /// The quick-check shortcut changes nothing: the same text as a full NFC
        /// pass, on ASCII, composed and decomposed spellings alike.
        #[test]
        fn normalize_text_is_nfc_then_collapsed_whitespace(
            text in "([a-zA-Z \t\n\u{a0}\u{e9}\u{301}\u{212b}\u{fb01}\u{1100}\u{1161}]|\\PC){0,40}",
        ) {
            let nfc: String = text.nfc().collect();
            let reference = nfc.split_whitespace().collect::<Vec<_>>().join(" ");
            prop_assert_eq!(normalize_text(&text), reference);
        }

        #[test]
        fn respelled_whitespace_gives_one_key(
            words in prop::collection::vec("[a-zA-Z\u{e9}0-9]{1,8}", 1..6),
            seps in prop::collection::vec(whitespace(), 6),
            lead in whitespace(),
            trail in whitespace(),
        ) {
            let plain = words.join(" ");
            let mut spelled = lead.clone();
            for (i, w) in words.iter().enumerate() {
                if i > 0 { spelled.push_str(&seps[i % seps.len()]); }
                spelled.push_str(w);
            }
            spelled.push_str(&trail);
            prop_assert_eq!(content_key(&request(&plain), &profile()), content_key(&request(&spelled), &profile()));
        }

        #[test]
        fn any_output_deciding_change_gives_another_key(
            prompt in "[a-z]{1,12}( [a-z]{1,12}){0,4}",
            field in 0usize..16,
            delta in 1u32..100,
        ) {
            let base_req = request(&prompt);
            let base = content_key(&base_req, &profile());
            let mut req = base_req.clone();
            let mut p = profile();
            match field {
                0 => req.prompt.push_str(" more"),
                1 => req.negative_prompt = Some("blurry".into()),
                2 => req.model = ModelChoice::Class(ModelClass::Premium),
                3 => req.size.width += delta,
                4 => req.seed += u64::from(delta),
                5 => req.template = Some(crate::request::TemplateRef { name: "t".into(), vars: Default::default() }),
                6 => p.variants.push(1024 + delta),
                7 => p.formats = vec![ImageFormat::Avif],
                8 => p.avif.quality = 60.0 + delta as f32 / 10.0,
                9 => p.jpeg.quality = 79 - (delta % 50) as u8,
                11 => p.avif.bit_depth = 18 - p.avif.bit_depth,
                12 => p.avif.encoder = match p.avif.encoder {
                    crate::profile::AvifEncoder::Aom => crate::profile::AvifEncoder::Rav1e,
                    crate::profile::AvifEncoder::Rav1e => crate::profile::AvifEncoder::Aom,
                },
                10 => p.watermark = Some(crate::profile::WatermarkSpec {
                    mark: WatermarkMark::Text { text: "imagegate".into(), color: [255; 3] },
                    position: crate::profile::WatermarkPosition::BottomRight,
                    opacity: 0.5, scale: 0.25, margin: 0.02,
                }),
                13 => p.provenance.c2pa = C2paMode::Embedded,
                14 => p.provenance.watermark = Some(InvisibleWatermark { key_id: (delta % 256) as u8, psnr_db: 45.5 }),
                _ => p.safety.block_at = 0.5 + delta as f32 / 1000.0,
            }
            prop_assert_ne!(base, content_key(&req, &p));
        }
    }
}
