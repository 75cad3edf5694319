//! Content Credentials (C2PA): signing each delivered file after its final encode,
//! and reading a file's manifest back with its validation against our anchors.
//!
//! Built on the `c2pa` crate without OpenSSL and without an HTTP client (its
//! Rust-native crypto): nothing here touches the network, so no timestamp
//! authority is called and no remote manifest or OCSP response is fetched.

mod dev_ca;
mod read;
mod sign;

pub use dev_ca::{generate_development_ca, DevelopmentCredentials};
pub use read::{read_credentials, CredentialsReport};
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
            let signed = signer.sign(&file, format, &generator()).expect("signs");
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
            .sign(&file, ImageFormat::Jpeg, &generator())
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
}
