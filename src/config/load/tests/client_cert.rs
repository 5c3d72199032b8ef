//! Client certificates (`client_certificate`, `client_private_key`), checked when the
//! configuration is loaded: a connector's must name an accepted domain, none may be expired, and
//! the key must belong to the certificate.

use super::*;
use crate::config::ClientCert;

/// A route head without a host, for the modes that fill it in (3 lines).
const M: &str = "[[route]]\nname = \"r\"\ndomains = [\"r.example\"]\n";

fn route<'c>(config: &'c Config, name: &str) -> &'c RouteConfig {
    config.routes.iter().find(|r| r.name == name).unwrap()
}

/// A self-signed certificate for `names` valid from `from` to `until` (Unix seconds), as PEM
/// files in `dir`: (certificate, private key).
fn certificate(
    dir: &Path,
    file: &str,
    names: &[&str],
    from: i64,
    until: i64,
) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0].clone());
    params.not_before = time::OffsetDateTime::from_unix_timestamp(from).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(until).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let cert_path = dir.join(format!("{file}.pem"));
    let key_path = dir.join(format!("{file}.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

const DAY: i64 = 86_400;

fn connector_text(cert: &Path, key: &Path) -> String {
    format!(
        "{M}mode = \"m365-connector\"\ntenant_domain = \"contoso.com\"\n\
         accepted_domains = [\"contoso.com\", \"contoso.co.uk\"]\n\
         client_certificate = '{}'\nclient_private_key = '{}'\n{BASE}",
        cert.display(),
        key.display()
    )
}

#[test]
fn connector_certificates_are_checked_when_loading() {
    let dir = tempfile::tempdir().unwrap();
    let now = now();

    let (cert, key) = certificate(
        dir.path(),
        "good",
        &["*.contoso.co.uk"],
        now - DAY,
        now + 365 * DAY,
    );
    let config = load(&connector_text(&cert, &key)).unwrap_or_else(|e| panic!("{e}"));
    let smtp = smtp_route(&config, "r");
    assert_eq!(smtp.host, "contoso-com.mail.protection.outlook.com");
    assert_eq!((smtp.port, smtp.tls), (25, TlsMode::StartTls));
    assert!(smtp.auth.is_none());
    assert_eq!(
        smtp.client_cert,
        Some(ClientCert {
            certificate: cert,
            private_key: key.clone(),
        })
    );
    // A connector relays to the Internet too: its accepted_domains name the certificate only.
    assert!(route(&config, "r").accepted_domains.is_empty());
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);

    let (cert, key) = certificate(
        dir.path(),
        "other",
        &["relay.fabrikam.com", "fabrikam.com"],
        now - DAY,
        now + 365 * DAY,
    );
    let e = errors(&connector_text(&cert, &key));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].line, Some(7));
    assert!(
        e[0].message.starts_with(
            "`route.client_certificate`: the certificate's names (relay.fabrikam.com, fabrikam.com) \
             match none of the accepted domains (contoso.com, contoso.co.uk)"
        ),
        "{e:#?}"
    );

    let (cert, key) = certificate(
        dir.path(),
        "expired",
        &["contoso.com"],
        now - 400 * DAY,
        now - DAY,
    );
    let e = errors(&connector_text(&cert, &key));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].line, Some(7));
    assert!(
        e[0].message.contains("the certificate expired on"),
        "{e:#?}"
    );

    let (cert, key) = certificate(
        dir.path(),
        "soon",
        &["contoso.com"],
        now - DAY,
        now + 10 * DAY,
    );
    let text = connector_text(&cert, &key);
    let config = load_str_with_env(&text, "smarthost.toml", &fake_env).unwrap();
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    assert!(
        config.warnings[0].starts_with(
            "smarthost.toml:7: warning: `route.client_certificate`: the certificate expires on"
        ),
        "{:?}",
        config.warnings
    );
    assert!(
        config.warnings[0].contains("(in 9 days)") || config.warnings[0].contains("(in 10 days)")
    );

    // The key of another certificate.
    let (_, wrong_key) = certificate(
        dir.path(),
        "stranger",
        &["contoso.com"],
        now - DAY,
        now + 365 * DAY,
    );
    let e = errors(&connector_text(&cert, &wrong_key));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].line, Some(8));
    assert!(
        e[0].message.contains("does not belong to the certificate"),
        "{e:#?}"
    );
}

#[test]
fn client_certificates_on_other_routes_need_both_files_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let now = now();
    let (cert, key) = certificate(
        dir.path(),
        "any",
        &["relay.example"],
        now - DAY,
        now + 365 * DAY,
    );
    // Any name will do outside connector mode.
    let text = format!(
        "{ROUTE}client_certificate = '{}'\nclient_private_key = '{}'\n{BASE}",
        cert.display(),
        key.display()
    );
    let config = load(&text).unwrap_or_else(|e| panic!("{e}"));
    assert!(smtp_route(&config, "r").client_cert.is_some());

    let e = errors(&format!(
        "{ROUTE}client_certificate = '{}'\n{BASE}",
        cert.display()
    ));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].line, Some(1));
    assert!(
        e[0].message
            .contains("has `client_certificate` but no `client_private_key`"),
        "{e:#?}"
    );

    let e = errors(&format!(
        "{ROUTE}tls = \"none\"\nclient_certificate = '{}'\nclient_private_key = '{}'\n{BASE}",
        cert.display(),
        key.display()
    ));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].line, Some(6));
    assert!(e[0].message.contains("tls = \"none\""), "{e:#?}");

    let e = errors(&format!(
        "{ROUTE}client_certificate = '{}'\nclient_private_key = \"/nonexistent/k.pem\"\n{BASE}",
        dir.path().join("missing.pem").display()
    ));
    let lines: Vec<_> = e.iter().map(|e| e.line).collect();
    assert_eq!(lines, [Some(5), Some(6)], "{e:#?}");
    assert!(
        e[0].message
            .starts_with("cannot read `route.client_certificate`")
    );
}
