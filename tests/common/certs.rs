//! Test certificates: a throw-away CA and a server certificate for `localhost` and 127.0.0.1 signed by
//! it, made fresh for each test with rcgen. The CA's PEM is written to a temporary file to be used as a
//! route's `ca_file`.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// A throw-away CA: its certificate and the issuer that signs with it.
pub fn test_ca(common_name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    (ca_cert, Issuer::new(ca_params, ca_key))
}

/// The parameters of a TLS server certificate for `names` (the first is the common name).
pub fn server_params(names: &[&str]) -> CertificateParams {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names.clone()).expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].clone());
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params
}

/// `pem` in a temporary file (deleted when dropped), for a `ca_file`.
pub fn pem_file(prefix: &str, pem: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .prefix(prefix)
        .suffix(".pem")
        .tempfile()
        .expect("temporary CA file");
    file.write_all(pem.as_bytes()).expect("write CA file");
    file.flush().expect("flush CA file");
    file
}

pub struct TestPki {
    pub ca_pem: String,
    /// The CA certificate as a PEM file, for `ca_file`. Deleted when the `TestPki` is dropped.
    pub ca_file: tempfile::NamedTempFile,
    pub server_cert: CertificateDer<'static>,
    server_key: PrivatePkcs8KeyDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestPki {
    /// A CA and a server certificate for `localhost` and `127.0.0.1`.
    pub fn new() -> Self {
        Self::for_names(&["localhost", "127.0.0.1"])
    }

    /// A CA and a server certificate for the given DNS names / IP addresses (e.g. a wrong name, to see
    /// host name verification fail).
    pub fn for_names(names: &[&str]) -> Self {
        let (ca_cert, issuer) = test_ca("smarthost test CA");

        let server_key = KeyPair::generate().expect("server key");
        let params = server_params(names);
        let server_cert = params
            .signed_by(&server_key, &issuer)
            .expect("server certificate");

        let ca_pem = ca_cert.pem();
        let ca_file = pem_file("smarthost-test-ca-", &ca_pem);

        TestPki {
            ca_pem,
            ca_file,
            server_cert: server_cert.der().clone(),
            server_key: PrivatePkcs8KeyDer::from(server_key.serialize_der()),
            issuer,
        }
    }

    /// A client certificate for `names` signed by this CA, as PEM files (certificate, key), and its DER.
    pub fn client_cert_files(
        &self,
        names: &[&str],
    ) -> (
        tempfile::NamedTempFile,
        tempfile::NamedTempFile,
        CertificateDer<'static>,
    ) {
        let key = KeyPair::generate().expect("client key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("client params");
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].clone());
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("client certificate");
        let write = |text: &str| {
            let mut f = tempfile::NamedTempFile::new().expect("temporary file");
            f.write_all(text.as_bytes()).expect("write");
            f.flush().expect("flush");
            f
        };
        (
            write(&cert.pem()),
            write(&key.serialize_pem()),
            cert.der().clone(),
        )
    }

    /// A server configuration that asks for a client certificate signed by this CA (optional: a
    /// client without one still gets in, and the upstream records what was presented).
    pub fn server_config_asking_client_cert(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(
                rustls::pki_types::CertificateDer::from_pem_slice(self.ca_pem.as_bytes())
                    .expect("CA PEM"),
            )
            .expect("CA as a root");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .expect("client verifier");
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![self.server_cert.clone()],
                PrivateKeyDer::Pkcs8(self.server_key.clone_key()),
            )
            .expect("server certificate and key");
        Arc::new(config)
    }

    pub fn ca_path(&self) -> &Path {
        self.ca_file.path()
    }

    /// The server certificate and its private key as PEM files in `dir`, for a listener's
    /// `certificate` and `private_key`: (certificate, key).
    pub fn write_server_pem(&self, dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let cert = dir.join("server.crt");
        let key = dir.join("server.key");
        std::fs::write(&cert, pem("CERTIFICATE", self.server_cert.as_ref())).expect("write cert");
        std::fs::write(&key, pem("PRIVATE KEY", self.server_key.secret_pkcs8_der()))
            .expect("write key");
        (cert, key)
    }

    /// A rustls server configuration presenting the server certificate (TLS 1.2 and 1.3).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![self.server_cert.clone()],
                PrivateKeyDer::Pkcs8(self.server_key.clone_key()),
            )
            .expect("server certificate and key");
        Arc::new(config)
    }
}

/// PEM (RFC 7468): base64 in lines of 64 characters between BEGIN and END.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
