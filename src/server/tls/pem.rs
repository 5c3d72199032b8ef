//! Reading a listener's certificate chain and private key from PEM files, with messages an
//! administrator can act on (IIS administrators often hold a `.pfx`, not PEM files).

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};
use x509_parser::prelude::{FromDer, X509Certificate};

/// A certificate expiring within this long is reported with a warning.
const EXPIRY_WARNING_DAYS: i64 = 30;

/// The certificate (first), its chain, and the private key, as DER.
pub(super) struct Pair {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

const PFX_HINT: &str = "if you have a .pfx/.p12 file (as exported from Windows), convert it with \
     `openssl pkcs12 -in cert.pfx -nokeys -out cert.pem` and \
     `openssl pkcs12 -in cert.pfx -nocerts -nodes -out key.pem`";

pub(super) fn read_pair(certificate: &Path, private_key: &Path) -> Result<Pair, String> {
    let cert_bytes = read(certificate)?;
    let chain = CertificateDer::pem_slice_iter(&cert_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: unreadable PEM ({e})", certificate.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no certificate in the file (expected a PEM \"BEGIN CERTIFICATE\" block); {PFX_HINT}",
            certificate.display()
        ));
    }
    for (i, der) in chain.iter().enumerate() {
        if let Err(e) = X509Certificate::from_der(der.as_ref()) {
            return Err(format!(
                "{}: certificate {} is not a valid X.509 certificate ({e})",
                certificate.display(),
                i + 1
            ));
        }
    }
    let key_bytes = read(private_key)?;
    let key = match PrivateKeyDer::from_pem_slice(&key_bytes) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => {
            let text = String::from_utf8_lossy(&key_bytes);
            let why = if text.contains("ENCRYPTED") {
                "the private key is encrypted with a passphrase; smarthost needs it unencrypted \
                 (`openssl pkey -in key.pem -out key-plain.pem`, then protect the file with \
                 permissions, e.g. chmod 600)"
                    .to_string()
            } else {
                format!(
                    "no private key in the file (expected a PEM \"BEGIN PRIVATE KEY\", \"BEGIN \
                     RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" block); {PFX_HINT}"
                )
            };
            return Err(format!("{}: {why}", private_key.display()));
        }
        Err(e) => {
            return Err(format!("{}: unreadable PEM ({e})", private_key.display()));
        }
    };
    Ok(Pair { chain, key })
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Warnings about the validity period of the first certificate: expired, not yet valid, or
/// expiring soon. Not errors: many devices do not check the certificate at all, and refusing to
/// start would stop their mail too.
pub(super) fn validity_warnings(pair: &Pair, now: SystemTime) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(pair.chain[0].as_ref()) else {
        return Vec::new();
    };
    let now = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(_) => 0,
    };
    let validity = cert.validity();
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    if now > not_after {
        return vec![format!(
            "the certificate expired on {}: clients that check certificates will refuse TLS; \
             renew it (it is re-read when the file changes, no restart needed)",
            show_time(not_after)
        )];
    }
    if now < not_before {
        return vec![format!(
            "the certificate is not valid before {}: check the clock",
            show_time(not_before)
        )];
    }
    let days = (not_after - now) / 86_400;
    if days < EXPIRY_WARNING_DAYS {
        return vec![format!(
            "the certificate expires on {} (in {days} days): renew it before then (it is \
             re-read when the file changes, no restart needed)",
            show_time(not_after)
        )];
    }
    Vec::new()
}

fn show_time(unix: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| format!("{unix} (Unix time)"))
}
