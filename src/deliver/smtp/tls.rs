//! The TLS client configuration of an SMTP route: built once per route at start-up.
//! Certificates and host names are always verified: there is no switch to turn that off. An upstream
//! with a private CA is trusted by adding that CA (`ca_file`), not by trusting everything.

use crate::config::ClientCert;
use anyhow::{Context, bail};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The operating system's trust anchors, read once per process (they do not change while we run, and
/// reading a few hundred PEM files per route would slow start-up and tests).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for err in &found.errors {
            tracing::warn!("while reading the system's trusted certificates: {err}");
        }
        found.certs
    })
}

/// System roots plus the certificates in `ca_file`; TLS 1.2 and 1.3 only.
pub(crate) fn client_config(ca_file: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    client_config_with_cert(ca_file, None)
}

/// The same, presenting `client_cert` when the server asks for one (Microsoft 365 certificate
/// connectors match the certificate's name against the tenant's accepted domains).
pub(crate) fn client_config_with_cert(
    ca_file: Option<&Path>,
    client_cert: Option<&ClientCert>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let roots = root_store(ca_file)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS configuration")?
        .with_root_certificates(roots);
    let config = match client_cert {
        None => config.with_no_client_auth(),
        Some(cert) => {
            let chain = CertificateDer::pem_file_iter(&cert.certificate)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| {
                    format!(
                        "cannot read client_certificate {}",
                        cert.certificate.display()
                    )
                })?;
            if chain.is_empty() {
                bail!(
                    "client_certificate {} contains no certificate",
                    cert.certificate.display()
                );
            }
            let key = PrivateKeyDer::from_pem_file(&cert.private_key).with_context(|| {
                format!(
                    "cannot read client_private_key {}",
                    cert.private_key.display()
                )
            })?;
            config.with_client_auth_cert(chain, key).with_context(|| {
                format!(
                    "client_certificate {} and client_private_key {} do not go together",
                    cert.certificate.display(),
                    cert.private_key.display()
                )
            })?
        }
    };
    Ok(Arc::new(config))
}

/// The trust anchors of a route: the system roots plus the certificates in `ca_file` (also used by
/// `smarthost test upstream`, which verifies with these roots and reports why a chain fails).
pub(crate) fn root_store(ca_file: Option<&Path>) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let (_, unusable) = roots.add_parsable_certificates(system_roots().iter().cloned());
    if unusable > 0 {
        tracing::debug!("{unusable} system certificates could not be used as trust anchors");
    }
    if let Some(path) = ca_file {
        add_ca_file(&mut roots, path)?;
    }
    if roots.is_empty() {
        tracing::warn!(
            "no trusted CA certificates: TLS to upstreams will fail (install ca-certificates or set ca_file)"
        );
    }
    Ok(roots)
}

fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> anyhow::Result<()> {
    let file = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read ca_file {file}"))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("ca_file {file} is not valid PEM"))?;
    if certs.is_empty() {
        bail!("ca_file {file} contains no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)");
    }
    for (i, cert) in certs.into_iter().enumerate() {
        roots.add(cert).with_context(|| {
            format!(
                "ca_file {file}: certificate {} cannot be a trust anchor",
                i + 1
            )
        })?;
    }
    Ok(())
}

/// The negotiated protocol version and cipher suite of a client session, for logs and reports
/// (`TLSv1_3`, `TLS13_AES_256_GCM_SHA384`); empty before the handshake.
pub(crate) fn negotiated(session: &rustls::ClientConnection) -> (String, String) {
    let version = session
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    let cipher = session
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    (version, cipher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_missing_or_empty_ca_file_is_an_error_naming_the_file() {
        let err = client_config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/ca.pem"),
            "{err:#}"
        );

        let mut empty = tempfile::NamedTempFile::new().unwrap();
        writeln!(empty, "not a certificate").unwrap();
        let err = client_config(Some(empty.path())).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains(&empty.path().display().to_string()) && text.contains("no certificate"),
            "{text}"
        );
    }

    #[test]
    fn a_ca_file_with_a_certificate_is_accepted() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(ca.pem().as_bytes()).unwrap();
        client_config(Some(file.path())).unwrap();
    }
}
