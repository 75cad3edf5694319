//! Signing one delivered file.

use super::parent::{Parent, PARENT_LABEL};
use super::{mime, TRAINED_ALGORITHMIC_MEDIA};
use crate::ProvenanceError;
use imagegate_core::ImageFormat;
use std::io::Cursor;
use std::sync::Arc;

/// Who made the picture: the provider and model, named as the `softwareAgent` of
/// the `c2pa.created` action.
#[derive(Clone, Debug)]
pub struct Generator {
    pub provider: String,
    pub model: String,
}

/// Signs files with one certificate chain and key, reserving only the bytes the
/// signature needs. Cheap to share (one per process).
pub struct Signer {
    inner: c2pa::BoxedSigner,
    reserve: usize,
    context: Arc<c2pa::Context>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Signer")
            .field("reserve", &self.reserve)
            .finish_non_exhaustive()
    }
}

/// The COSE signature's own bytes beyond the certificates (headers, an ES256
/// signature, padding); the stock signers reserve the same 1024 plus 10 KB for a
/// timestamp token, which a signer without a timestamp authority never writes.
const SIGNATURE_OVERHEAD: usize = 1024;

/// What the c2pa crate does on its own that we do not want: reading the file
/// back after signing (we test that instead), fetching anything, thumbnails.
const SETTINGS: &str = r#"{
    "verify": {"verify_after_sign": false, "ocsp_fetch": false, "remote_manifest_fetch": false},
    "builder": {"thumbnail": {"enabled": false}}
}"#;

impl Signer {
    /// A signer from a PEM certificate chain (leaf first, then intermediates) and a
    /// PKCS#8 PEM P-256 private key (ES256).
    pub fn from_pem(cert_chain: &[u8], private_key: &[u8]) -> Result<Signer, ProvenanceError> {
        let inner =
            c2pa::create_signer::from_keys(cert_chain, private_key, c2pa::SigningAlg::Es256, None)
                .map_err(|e| ProvenanceError::SigningKey(e.to_string()))?;
        Signer::wrap(inner)
    }

    /// A signer with a certificate chain made up on the spot (an Ed25519 CA and
    /// leaf, new at every start): for running without configured keys. Its
    /// signatures validate, and no verifier can ever trust them.
    pub fn ephemeral() -> Result<Signer, ProvenanceError> {
        let inner = c2pa::EphemeralSigner::new("imagegate ephemeral development signer")
            .map_err(|e| ProvenanceError::SigningKey(e.to_string()))?;
        Signer::wrap(Box::new(inner))
    }

    fn wrap(inner: c2pa::BoxedSigner) -> Result<Signer, ProvenanceError> {
        let certs = inner
            .certs()
            .map_err(|e| ProvenanceError::SigningKey(e.to_string()))?;
        if certs.is_empty() {
            return Err(ProvenanceError::SigningKey(
                "the certificate chain holds no certificate".into(),
            ));
        }
        let reserve = SIGNATURE_OVERHEAD + certs.iter().map(Vec::len).sum::<usize>();
        let context = c2pa::Context::new()
            .with_settings(SETTINGS)
            .map_err(|e| ProvenanceError::C2pa(e.to_string()))?
            .into_shared();
        Ok(Signer {
            inner,
            reserve,
            context,
        })
    }

    /// Bytes reserved for the signature in every file.
    pub fn reserve_size(&self) -> usize {
        self.reserve
    }

    /// The provider's manifest in `source` (its output as it arrived), read once
    /// per render and given to [`Signer::sign`] for every variant; `None` when the
    /// output carries none.
    pub fn parent_of(&self, source: &[u8]) -> Result<Option<Parent>, ProvenanceError> {
        Parent::from_provider_output(source, &self.context)
    }

    /// `file` (an encoded `format` image) with a C2PA manifest embedded, claimed
    /// by imagegate. Without a `parent`, its first action is `c2pa.created` of
    /// digital source type `trainedAlgorithmicMedia` by `generator`. With one (the
    /// provider signed its output), the provider's manifest is the `parentOf`
    /// ingredient and the first action is `c2pa.opened` of it, with the same
    /// source type and agent: C2PA forbids `created` beside a parent.
    pub fn sign(
        &self,
        file: &[u8],
        format: ImageFormat,
        generator: &Generator,
        parent: Option<&Parent>,
    ) -> Result<Vec<u8>, ProvenanceError> {
        let agent = serde_json::json!({
            "name": format!("{}/{}", generator.provider, generator.model),
        });
        let first_action = match parent {
            None => serde_json::json!({
                "action": "c2pa.created",
                "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                "softwareAgent": agent,
            }),
            Some(_) => serde_json::json!({
                "action": "c2pa.opened",
                "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                "softwareAgent": agent,
                "parameters": {"ingredientIds": [PARENT_LABEL]},
            }),
        };
        let definition = serde_json::json!({
            "claim_generator_info": [{
                "name": "imagegate",
                "version": env!("CARGO_PKG_VERSION"),
            }],
            "format": mime(format),
            "assertions": [{
                "label": "c2pa.actions",
                "data": {"actions": [first_action]},
            }],
        });
        let mut builder = c2pa::Builder::from_shared_context(&self.context)
            .with_definition(definition.to_string())
            .map_err(|e| ProvenanceError::C2pa(e.to_string()))?;
        if let Some(parent) = parent {
            builder.add_ingredient(parent.ingredient.clone());
        }
        let mut source = Cursor::new(file);
        let mut dest = Cursor::new(Vec::with_capacity(file.len() + self.reserve + 4096));
        builder
            .sign(
                &Lean {
                    inner: &*self.inner,
                    reserve: self.reserve,
                },
                mime(format),
                &mut source,
                &mut dest,
            )
            .map_err(|e| ProvenanceError::C2pa(e.to_string()))?;
        Ok(dest.into_inner())
    }
}

/// The configured signer with a reservation sized to its own chain.
struct Lean<'a> {
    inner: &'a dyn c2pa::Signer,
    reserve: usize,
}

impl c2pa::Signer for Lean<'_> {
    fn sign(&self, data: &[u8]) -> c2pa::Result<Vec<u8>> {
        self.inner.sign(data)
    }
    fn alg(&self) -> c2pa::SigningAlg {
        self.inner.alg()
    }
    fn certs(&self) -> c2pa::Result<Vec<Vec<u8>>> {
        self.inner.certs()
    }
    fn reserve_size(&self) -> usize {
        self.reserve
    }
}
