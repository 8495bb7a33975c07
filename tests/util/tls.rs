//! Certificates made at test time: a private CA with a server certificate for the TLS registry,
//! and the self-signed certificate whose key signs the token service's JWTs.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};

/// A CA and a server certificate (for `127.0.0.1` and `localhost`) it signed, as PEM files.
pub struct ServerTls {
    /// Directory holding only `ca.crt`: what `--cert-dir` expects.
    pub cert_dir: PathBuf,
    /// The CA certificate (PEM), e.g. for `SSL_CERT_FILE`.
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    ca_der: Vec<u8>,
}

impl ServerTls {
    pub fn generate(dir: &Path) -> ServerTls {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "layerfs test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut server_params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        server_params
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        server_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();

        let cert_dir = dir.join("certs");
        fs::create_dir_all(&cert_dir).unwrap();
        let ca_file = cert_dir.join("ca.crt");
        fs::write(&ca_file, ca_cert.pem()).unwrap();
        let cert_file = dir.join("server.crt");
        fs::write(&cert_file, server_cert.pem()).unwrap();
        let key_file = dir.join("server.key");
        fs::write(&key_file, server_key.serialize_pem()).unwrap();
        ServerTls {
            cert_dir,
            ca_file,
            cert_file,
            key_file,
            ca_der: ca_cert.der().to_vec(),
        }
    }

    /// A rustls client configuration trusting only this CA, for the test's own HTTP client.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(self.ca_der.clone()))
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

/// The key that signs tokens and its self-signed certificate, which the registry trusts through
/// `auth.token.rootcertbundle`; tokens carry the certificate in their `x5c` header.
pub struct TokenSigner {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    key: ring::signature::EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
}

impl TokenSigner {
    pub fn generate() -> TokenSigner {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "layerfs test token signer");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).unwrap();
        let rng = ring::rand::SystemRandom::new();
        let ring_key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &rng,
        )
        .unwrap();
        TokenSigner {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key: ring_key,
            rng,
        }
    }

    /// ES256 signature (raw `r || s`, as JWS wants it) over `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.key.sign(&self.rng, message).unwrap().as_ref().to_vec()
    }
}
