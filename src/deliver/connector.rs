//! The client certificate of a certificate connector (`mode = "m365-connector"`), checked when the
//! configuration is loaded so that `check-config` and the start report it, not the first delivery
//! (which would end in `550 5.7.64 TenantAttribution; Relay Access Denied`).
//!
//! Microsoft 365 recognises an inbound connector of type OnPremises by the certificate the relay
//! presents in TLS: its CN or one of its DNS SANs must be one of the tenant's accepted domains.
//! Matching here, case-insensitive:
//! - a name equal to an accepted domain matches it (`contoso.com`);
//! - a wildcard `*.contoso.com` matches `contoso.com` itself and every subdomain of it
//!   (`eu.contoso.com`);
//! - a host name inside an accepted domain (`relay.contoso.com` for `contoso.com`) matches too:
//!   Microsoft asks for a name that "contains" an accepted domain. Refusing such a certificate would
//!   stop the relay for a configuration Microsoft accepts; accepting a wrong one only defers mail,
//!   which `explain` then explains.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A certificate expiring within this long is reported with a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// What the check found in a usable certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertReport {
    /// The subject's CNs and the DNS SANs, lower-case, in that order.
    pub names: Vec<String>,
    /// The accepted domain and the certificate name that matched it (`None` when no accepted
    /// domains were given, so no name was checked).
    pub matched: Option<(String, String)>,
    /// The end of the validity period, Unix seconds.
    pub not_after: i64,
    /// Valid but needing attention soon, e.g. "expires on 2026-12-01 (in 12 days)".
    pub warnings: Vec<String>,
}

/// Checks the first certificate (the relay's own; a chain may follow) of the PEM file `cert_pem`:
/// that it parses, that it is valid at `now` and that one of its names matches one of
/// `accepted_domains` (lower-case; empty: no name check). The error is a complete sentence for the
/// operator, naming the names found.
pub fn check_client_certificate(
    cert_pem: &Path,
    accepted_domains: &[String],
    now: SystemTime,
) -> Result<CertReport, String> {
    let der = first_certificate(cert_pem)?;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| {
        format!(
            "{}: not a valid X.509 certificate ({e})",
            cert_pem.display()
        )
    })?;
    let names = certificate_names(&cert);

    let now = unix_seconds(now);
    let validity = cert.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    if now < not_before {
        return Err(format!(
            "the certificate is not valid before {}: check the clock, or use a certificate that \
             is valid now",
            show_time(not_before)
        ));
    }
    if now > not_after {
        return Err(format!(
            "the certificate expired on {}: renew it (Microsoft 365 refuses an expired client \
             certificate, and mail waits in the queue)",
            show_time(not_after)
        ));
    }

    let mut warnings = Vec::new();
    let left = not_after - now;
    if left < EXPIRY_WARNING.as_secs() as i64 {
        let days = left / 86_400;
        let when = match days {
            0 => "in less than a day".to_string(),
            1 => "in 1 day".to_string(),
            n => format!("in {n} days"),
        };
        warnings.push(format!(
            "the certificate expires on {} ({when}): renew it before then, and update the \
             connector if its name changes",
            show_time(not_after)
        ));
    }

    let matched = if accepted_domains.is_empty() {
        None
    } else {
        let found = accepted_domains.iter().find_map(|domain| {
            let domain = normalise(domain);
            names
                .iter()
                .find(|name| name_matches(name, &domain))
                .map(|name| (domain.clone(), name.clone()))
        });
        match found {
            Some(found) => Some(found),
            None => return Err(no_match_message(&names, accepted_domains)),
        }
    };
    Ok(CertReport {
        names,
        matched,
        not_after,
        warnings,
    })
}

/// Checks that the private key in `key_pem` belongs to the first certificate in `cert_pem`; a
/// mismatch would otherwise show only as a failing TLS handshake at the first delivery.
pub fn check_key_pair(cert_pem: &Path, key_pem: &Path) -> Result<(), String> {
    let cert = first_certificate(cert_pem)?;
    let key = PrivateKeyDer::from_pem_file(key_pem).map_err(|e| {
        format!(
            "{}: no private key found ({e}); expected a PEM \"PRIVATE KEY\" block",
            key_pem.display()
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: unusable private key ({e})", key_pem.display()))?;
    match rustls::sign::CertifiedKey::new(vec![cert], signing_key).keys_match() {
        Ok(()) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(_) => Err(format!(
            "the private key {} does not belong to the certificate {}",
            key_pem.display(),
            cert_pem.display()
        )),
    }
}

/// Whether certificate name `name` covers accepted domain `domain` (both lower-case).
pub fn name_matches(name: &str, domain: &str) -> bool {
    let name = normalise(name);
    let within = |parent: &str| {
        domain == parent
            || (domain.len() > parent.len()
                && domain.ends_with(parent)
                && domain.as_bytes()[domain.len() - parent.len() - 1] == b'.')
    };
    match name.strip_prefix("*.") {
        Some(parent) => within(parent),
        // `relay.contoso.com` for `contoso.com`: the name lies inside the accepted domain.
        None => {
            name == domain
                || (name.len() > domain.len()
                    && name.ends_with(domain)
                    && name.as_bytes()[name.len() - domain.len() - 1] == b'.')
        }
    }
}

fn normalise(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn first_certificate(cert_pem: &Path) -> Result<CertificateDer<'static>, String> {
    let mut certificates = CertificateDer::pem_file_iter(cert_pem)
        .map_err(|e| format!("cannot read {}: {e}", cert_pem.display()))?;
    match certificates.next() {
        Some(Ok(der)) => Ok(der),
        Some(Err(e)) => Err(format!("{}: unreadable PEM ({e})", cert_pem.display())),
        None => Err(format!(
            "{}: no certificate in the file (expected a PEM \"BEGIN CERTIFICATE\" block)",
            cert_pem.display()
        )),
    }
}

fn certificate_names(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(normalise)
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                let dns = normalise(dns);
                if !names.contains(&dns) {
                    names.push(dns);
                }
            }
        }
    }
    names
}

fn no_match_message(names: &[String], accepted_domains: &[String]) -> String {
    let found = if names.is_empty() {
        "the certificate has no CN and no DNS name".to_string()
    } else {
        format!("the certificate's names ({})", names.join(", "))
    };
    format!(
        "{found} match none of the accepted domains ({}): Microsoft 365 recognises a certificate \
         connector only by a CN or SAN that is an accepted domain of the tenant (wildcards such as \
         *.contoso.com allowed); use a certificate for one of them, or correct accepted_domains",
        accepted_domains.join(", ")
    )
}

fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_secs() as i64,
        Err(before) => -(before.duration().as_secs() as i64),
    }
}

/// `2026-12-01 17:00 UTC`.
fn show_time(unix: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| format!("{unix} (Unix time)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_accepted_domains() {
        let cases = [
            ("contoso.com", "contoso.com", true),
            ("Contoso.COM.", "contoso.com", true),
            ("*.contoso.com", "contoso.com", true),
            ("*.contoso.com", "eu.contoso.com", true),
            ("*.contoso.com", "a.eu.contoso.com", true),
            ("relay.contoso.com", "contoso.com", true),
            ("contoso.com", "eu.contoso.com", false),
            ("*.eu.contoso.com", "contoso.com", false),
            ("notcontoso.com", "contoso.com", false),
            ("*.notcontoso.com", "contoso.com", false),
            ("contoso.com.evil.example", "contoso.com", false),
            ("*.com", "contoso.com", true),
            ("fabrikam.com", "contoso.com", false),
        ];
        for (name, domain, expected) in cases {
            assert_eq!(name_matches(name, domain), expected, "{name} vs {domain}");
        }
    }

    #[test]
    fn times_show_as_utc_dates() {
        assert_eq!(show_time(0), "1970-01-01 00:00 UTC");
        assert_eq!(show_time(1_796_083_200), "2026-12-01 00:00 UTC");
    }
}
