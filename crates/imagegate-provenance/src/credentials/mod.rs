//! Content Credentials (C2PA): signing each delivered file after its final encode,
//! and reading a file's manifest back with its validation against our anchors.
//!
//! Built on the `c2pa` crate without OpenSSL and without an HTTP client (its
//! Rust-native crypto): nothing here touches the network, so no timestamp
//! authority is called and no remote manifest or OCSP response is fetched.

mod dev_ca;
mod parent;
mod read;
mod sign;

pub use dev_ca::{generate_development_ca, DevelopmentCredentials};
pub use parent::Parent;
pub use read::{read_credentials, CredentialsReport, IngredientReport};
pub use sign::{Generator, Signer};

/// The IPTC digital source type of a picture a generative model made.
pub const TRAINED_ALGORITHMIC_MEDIA: &str =
    "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia";

/// The c2pa format name of a delivered file's format.
pub(crate) fn mime(format: imagegate_core::ImageFormat) -> &'static str {
    match format {
        imagegate_core::ImageFormat::Avif => "image/avif",
        imagegate_core::ImageFormat::Jpeg => "image/jpeg",
        imagegate_core::ImageFormat::Webp => "image/webp",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagegate_core::{ImageFormat, RenderProfile};
    use std::io::Cursor;

    fn encoded(format: ImageFormat) -> Vec<u8> {
        let picture = image::RgbImage::from_fn(96, 64, |x, y| {
            image::Rgb([(x * 2) as u8, (y * 3) as u8, ((x + y) * 2) as u8])
        });
        let profile = RenderProfile {
            name: "t".into(),
            variants: vec![96],
            formats: vec![format],
            avif: Default::default(),
            jpeg: Default::default(),
            webp_quality: None,
            watermark: None,
            safety: Default::default(),
            provenance: Default::default(),
        };
        imagegate_imaging::encode(&picture, format, &profile).expect("encodes")
    }

    fn generator() -> Generator {
        Generator {
            provider: "openai".into(),
            model: "gpt-image-1".into(),
        }
    }

    #[test]
    fn every_delivered_format_is_signed_and_reads_back_trusted_by_its_anchor() {
        let ca = generate_development_ca("imagegate test").expect("a CA");
        let signer = Signer::from_pem(ca.cert_chain_pem.as_bytes(), ca.private_key_pem.as_bytes())
            .expect("a signer");
        for format in [ImageFormat::Avif, ImageFormat::Jpeg, ImageFormat::Webp] {
            let file = encoded(format);
            let signed = signer
                .sign(&file, format, &generator(), None)
                .expect("signs");
            let added = signed.len() - file.len();
            assert!(
                added < signer.reserve_size() + 4096,
                "{format}: {added} bytes added, reserve {}",
                signer.reserve_size()
            );
            let report = read_credentials(&signed, mime(format), Some(&ca.ca_cert_pem), "test CA")
                .expect("reads");
            assert!(report.present);
            assert_eq!(
                report.state.as_deref(),
                Some("trusted"),
                "{format}: {:?}",
                report.failures
            );
            assert_eq!(report.claim_generator.as_deref(), Some("imagegate"));
            assert_eq!(report.action.as_deref(), Some("c2pa.created"));
            assert_eq!(report.software_agent.as_deref(), Some("openai/gpt-image-1"));
            assert_eq!(
                report.digital_source_type.as_deref(),
                Some(TRAINED_ALGORITHMIC_MEDIA)
            );
            // Without the anchor the signature still holds, but nothing vouches for it.
            let report = read_credentials(&signed, mime(format), None, "none").expect("reads");
            assert_eq!(
                report.state.as_deref(),
                Some("valid"),
                "{format}: {:?}",
                report.failures
            );
        }
    }

    #[test]
    fn an_ephemeral_signer_signs_and_unsigned_or_tampered_files_say_so() {
        let signer = Signer::ephemeral().expect("a throwaway chain");
        let file = encoded(ImageFormat::Jpeg);
        let report = read_credentials(&file, "image/jpeg", None, "none").expect("reads");
        assert!(!report.present);
        let mut signed = signer
            .sign(&file, ImageFormat::Jpeg, &generator(), None)
            .expect("signs");
        let report = read_credentials(&signed, "image/jpeg", None, "none").expect("reads");
        assert_eq!(
            report.state.as_deref(),
            Some("valid"),
            "{:?}",
            report.failures
        );
        // One byte of the picture changed: the hash no longer matches.
        let last = signed.len() - 10;
        signed[last] ^= 0x55;
        let report = read_credentials(&signed, "image/jpeg", None, "none").expect("reads");
        assert_eq!(report.state.as_deref(), Some("invalid"));
        assert!(!report.failures.is_empty());
    }

    /// A PNG as a model vendor delivers it: signed by the vendor's own software
    /// (its own claim generator and throwaway chain), `c2pa.created` by its model.
    fn vendor_signed_png() -> Vec<u8> {
        let picture = image::RgbImage::from_fn(160, 120, |x, y| {
            image::Rgb([(x + y) as u8, (x * 3) as u8, (y * 2) as u8])
        });
        let mut png = Vec::new();
        picture
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .expect("PNG");
        let definition = serde_json::json!({
            "claim_generator_info": [{"name": "Vendor-Image-API", "version": "1.0"}],
            "title": "vendor.png",
            "assertions": [{"label": "c2pa.actions", "data": {"actions": [{
                "action": "c2pa.created",
                "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                "softwareAgent": {"name": "vendor-model-7"},
            }]}}],
        });
        let context = c2pa::Context::new()
            .with_settings(r#"{"builder": {"thumbnail": {"enabled": false}}}"#)
            .expect("settings")
            .into_shared();
        let mut builder = c2pa::Builder::from_shared_context(&context)
            .with_definition(definition.to_string())
            .expect("definition");
        let signer = c2pa::EphemeralSigner::new("vendor test signer").expect("vendor chain");
        let mut out = Cursor::new(Vec::new());
        builder
            .sign(&signer, "image/png", &mut Cursor::new(png), &mut out)
            .expect("the vendor signs");
        out.into_inner()
    }

    #[test]
    fn a_signed_provider_output_is_every_variants_parent_ingredient() {
        let signer = Signer::ephemeral().expect("a throwaway chain");
        let unsigned = encoded(ImageFormat::Jpeg);
        assert!(signer.parent_of(&unsigned).expect("reads").is_none());
        let vendor = vendor_signed_png();
        let parent = signer
            .parent_of(&vendor)
            .expect("reads")
            .expect("the vendor's manifest");
        assert!(parent.manifest_bytes() > 0);
        for format in [ImageFormat::Avif, ImageFormat::Jpeg, ImageFormat::Webp] {
            let file = encoded(format);
            let signed = signer
                .sign(&file, format, &generator(), Some(&parent))
                .expect("signs");
            let report = read_credentials(&signed, mime(format), None, "none").expect("reads");
            assert_eq!(
                report.state.as_deref(),
                Some("valid"),
                "{format}: {:?}",
                report.failures
            );
            assert_eq!(report.claim_generator.as_deref(), Some("imagegate"));
            assert_eq!(report.action.as_deref(), Some("c2pa.opened"));
            assert_eq!(report.software_agent.as_deref(), Some("openai/gpt-image-1"));
            assert_eq!(
                report.digital_source_type.as_deref(),
                Some(TRAINED_ALGORITHMIC_MEDIA)
            );
            assert_eq!(
                report.ingredients.len(),
                1,
                "{format}: {:?}",
                report.ingredients
            );
            let ingredient = &report.ingredients[0];
            assert_eq!(ingredient.relationship.as_deref(), Some("parentOf"));
            assert_eq!(ingredient.title.as_deref(), Some("provider output"));
            assert_eq!(ingredient.manifest.as_deref(), parent.manifest_label());
            assert_eq!(
                ingredient.claim_generator.as_deref(),
                Some("Vendor-Image-API")
            );
            assert_eq!(ingredient.action.as_deref(), Some("c2pa.created"));
            assert_eq!(ingredient.software_agent.as_deref(), Some("vendor-model-7"));
            // The opened action points at that ingredient.
            let store = report.manifest_store.as_ref().expect("store");
            let active = &store["manifests"][store["active_manifest"].as_str().unwrap()];
            let opened = active["assertions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["label"].as_str().unwrap().starts_with("c2pa.actions"))
                .unwrap();
            let linked = opened["data"]["actions"][0]["parameters"]["ingredients"][0]["url"]
                .as_str()
                .expect("the opened action names its ingredient");
            assert!(linked.contains("c2pa.ingredient"), "{linked}");
        }
    }
}
