//! A private CA and a signing certificate for development (`imagegate provenance
//! init`): real C2PA signatures that public verifiers show as untrusted, because
//! no public trust list holds this CA.

use crate::ProvenanceError;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

/// A development CA and the leaf certificate it issued, as PEM.
pub struct DevelopmentCredentials {
    /// The CA certificate: the trust anchor to give verifiers.
    pub ca_cert_pem: String,
    /// The leaf then the CA: what a signer presents.
    pub cert_chain_pem: String,
    /// The leaf's P-256 private key, PKCS#8.
    pub private_key_pem: String,
}

impl std::fmt::Debug for DevelopmentCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevelopmentCredentials")
            .finish_non_exhaustive()
    }
}

/// Makes a P-256 CA (ten years) and an ES256 signing certificate (two years)
/// with the key usage C2PA asks for: digitalSignature, and emailProtection as the
/// extended key usage.
pub fn generate_development_ca(
    organization: &str,
) -> Result<DevelopmentCredentials, ProvenanceError> {
    let fail =
        |e: rcgen::Error| ProvenanceError::SigningKey(format!("generating a development CA: {e}"));
    let now = std::time::SystemTime::now();
    let day = std::time::Duration::from_secs(86_400);

    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(fail)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca.distinguished_name
        .push(DnType::CommonName, format!("{organization} development CA"));
    ca.distinguished_name
        .push(DnType::OrganizationName, organization.to_string());
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = (now - day).into();
    ca.not_after = (now + 3650 * day).into();
    let ca_cert = ca.self_signed(&ca_key).map_err(fail)?;

    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(fail)?;
    let mut leaf = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    leaf.distinguished_name.push(
        DnType::CommonName,
        format!("{organization} development signer"),
    );
    leaf.distinguished_name
        .push(DnType::OrganizationName, organization.to_string());
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::EmailProtection];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = (now - day).into();
    leaf.not_after = (now + 730 * day).into();
    let issuer = Issuer::from_params(&ca, &ca_key);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(fail)?;

    Ok(DevelopmentCredentials {
        ca_cert_pem: ca_cert.pem(),
        cert_chain_pem: format!("{}{}", leaf_cert.pem(), ca_cert.pem()),
        private_key_pem: leaf_key.serialize_pem(),
    })
}
