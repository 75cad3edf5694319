//! The provider's own Content Credentials, kept as the parent ingredient of every
//! file made from its output, so the chain from the model vendor to the delivered
//! file stays intact although imagegate re-encodes the picture.

use crate::ProvenanceError;
use std::io::Cursor;

/// The label our manifests give the parent ingredient; the `c2pa.opened` action
/// names it.
pub(crate) const PARENT_LABEL: &str = "provider-output";

/// A provider output's C2PA manifest store, read once per render and added to
/// every variant's manifest as its `parentOf` ingredient. Holds the parent's
/// manifest store bytes and its validation results as the c2pa crate found them.
#[derive(Clone, Debug)]
pub struct Parent {
    pub(crate) ingredient: c2pa::Ingredient,
}

impl Parent {
    /// The manifest `source` (a provider's output, as it arrived) carries, or
    /// `None` when it carries none (or is in a format C2PA does not cover).
    /// A manifest that does not validate is kept all the same: its ingredient
    /// records the failures, and hiding the claim would break the chain.
    pub(crate) fn from_provider_output(
        source: &[u8],
        context: &std::sync::Arc<c2pa::Context>,
    ) -> Result<Option<Parent>, ProvenanceError> {
        let Some(mime) = sniff_mime(source) else {
            return Ok(None);
        };
        let definition = serde_json::json!({
            "title": "provider output",
            "relationship": "parentOf",
            "label": PARENT_LABEL,
        });
        // A scratch builder only reads the stream into an ingredient (its manifest
        // store, validation results and identifiers); nothing is signed here.
        let mut scratch = c2pa::Builder::from_shared_context(context);
        scratch
            .add_ingredient_from_stream(definition.to_string(), mime, &mut Cursor::new(source))
            .map_err(|e| ProvenanceError::C2pa(format!("reading the provider's manifest: {e}")))?;
        let ingredient = scratch
            .definition
            .ingredients
            .pop()
            .ok_or_else(|| ProvenanceError::C2pa("the ingredient was not added".into()))?;
        if ingredient.active_manifest().is_none() {
            return Ok(None);
        }
        Ok(Some(Parent { ingredient }))
    }

    /// The label of the parent's active manifest.
    pub fn manifest_label(&self) -> Option<&str> {
        self.ingredient.active_manifest()
    }

    /// Bytes of the parent's manifest store each signed file carries.
    pub fn manifest_bytes(&self) -> usize {
        self.ingredient.manifest_data().map_or(0, |d| d.len())
    }
}

/// The MIME type of a provider output C2PA can carry a manifest in.
fn sniff_mime(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" && &bytes[8..12] == b"avif" {
        Some("image/avif")
    } else {
        None
    }
}
