//! What a certificate file holds, and whether it suits a Microsoft 365 certificate connector
//! (the verdict is `deliver::connector`'s, the check `check-config` runs for `m365-connector`).

use crate::deliver::connector::check_client_certificate;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub self_signed: bool,
    pub sans: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    /// Whole days until expiry (negative: expired).
    pub days_left: i64,
    /// "RSA 2048 bits", "EC 256 bits", ...
    pub key: String,
    /// Certificates in the file (the first is the one described).
    pub count: usize,
    /// `Ok(notes)`: suitable (notes are warnings); `Err(why)`: not suitable.
    pub verdict: Result<Vec<String>, String>,
}

/// Reads the first certificate of the PEM file and judges it for `domain` (no name check when
/// `None`).
pub fn inspect(file: &Path, domain: Option<&str>, now: SystemTime) -> Result<CertInfo, String> {
    let ders: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: unreadable PEM ({e})", file.display()))?;
    let first = ders.first().ok_or_else(|| {
        format!(
            "{}: no certificate in the file (expected a PEM \"BEGIN CERTIFICATE\" block)",
            file.display()
        )
    })?;
    let (_, cert) = X509Certificate::from_der(first.as_ref())
        .map_err(|e| format!("{}: not a valid X.509 certificate ({e})", file.display()))?;
    let mut sans = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => sans.push(format!("DNS:{d}")),
                GeneralName::IPAddress(ip) => sans.push(format!("IP:{ip:02x?}")),
                GeneralName::RFC822Name(m) => sans.push(format!("email:{m}")),
                other => sans.push(format!("{other:?}")),
            }
        }
    }
    let key = match cert.public_key().parsed() {
        Ok(PublicKey::RSA(rsa)) => format!("RSA {} bits", rsa.key_size()),
        Ok(PublicKey::EC(ec)) => format!("EC {} bits", ec.key_size()),
        Ok(PublicKey::DSA(_)) => "DSA".into(),
        Ok(_) | Err(_) => format!("{}", cert.public_key().algorithm.algorithm),
    };
    let now_secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let not_after = cert.validity().not_after.timestamp();
    let domains: Vec<String> = domain
        .map(|d| vec![d.trim().trim_end_matches('.').to_ascii_lowercase()])
        .unwrap_or_default();
    let self_signed = cert.subject() == cert.issuer();
    let verdict = check_client_certificate(file, &domains, now).map(|report| {
        let mut notes = report.warnings;
        if self_signed {
            notes.push(
                "the certificate is self-signed: Microsoft 365 accepts only a certificate that \
                 chains to a public CA"
                    .into(),
            );
        }
        if let Some((domain, name)) = report.matched {
            notes.insert(0, format!("{name} matches the accepted domain {domain}"));
        }
        notes
    });
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        self_signed,
        sans,
        not_before: cert.validity().not_before.timestamp(),
        not_after,
        days_left: (not_after - now_secs).div_euclid(86_400),
        key,
        count: ders.len(),
        verdict,
    })
}
