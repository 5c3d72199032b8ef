//! `[[listener]]`: every key, the defaults, the contradictions refused, and the certificate and key
//! files checked when loading (so `check-config` reports them against their line).

use super::*;
use crate::config::{ListenerTls, TlsVersion};

/// A CA-less, self-signed certificate for `localhost` valid from `from` to `until` (Unix seconds),
/// as PEM files in `dir`: (certificate, key).
fn certificate(dir: &Path, file: &str, from: i64, until: i64) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = time::OffsetDateTime::from_unix_timestamp(from).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(until).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let cert_path = dir.join(format!("{file}.crt"));
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

/// A `[[user]]` with a valid (cheap) argon2 hash.
fn user() -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(64, 1, 1, None).unwrap();
    let argon2 = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
    let hash = argon2.hash_password(b"pw", &salt).unwrap();
    format!("[[user]]\nname = \"scanner\"\npassword_hash = \"{hash}\"\n")
}

#[test]
fn every_listener_key_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "relay", now() - DAY, now() + 365 * DAY);
    let (min_tls, expected_min) = if crate::server::tls::SUPPORTS_LEGACY_TLS {
        ("1.0", TlsVersion::Tls10)
    } else {
        ("1.3", TlsVersion::Tls13)
    };
    let text = format!(
        "[[listener]]\naddress = \"[::]:587\"\nrelay_from = [\"10.0.0.0/8\"]\n\
         allow_from = [\"10.0.0.0/8\", \"192.168.1.0/255.255.255.0\"]\ndeny_from = [\"10.6.6.6\"]\n\
         tls = \"starttls\"\ncertificate = '{}'\nprivate_key = '{}'\nmin_tls = \"{min_tls}\"\n\
         require_auth = true\nmax_connections_per_ip = 5\nmax_messages_per_connection = 20\n\
         session_timeout = \"10m\"\n{}{BASE}",
        cert.display(),
        key.display(),
        user()
    );
    let config = load(&text).unwrap_or_else(|e| panic!("{e}"));
    let l = &config.listeners[0];
    assert_eq!(l.address, "[::]:587".parse().unwrap());
    assert_eq!(l.allow_from.len(), 2);
    assert_eq!(l.allow_from[1], "192.168.1.0/24".parse().unwrap());
    assert_eq!(l.deny_from, vec!["10.6.6.6/32".parse().unwrap()]);
    assert_eq!(l.tls, ListenerTls::StartTls);
    assert_eq!(l.certificate.as_deref(), Some(cert.as_path()));
    assert_eq!(l.private_key.as_deref(), Some(key.as_path()));
    assert_eq!(l.min_tls, expected_min);
    assert!(l.auth && l.require_auth && !l.allow_plaintext_auth);
    assert_eq!(l.max_connections_per_ip, 5);
    assert_eq!(l.max_messages_per_connection, 20);
    assert_eq!(l.session_timeout, Duration::from_secs(600));
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn listener_defaults() {
    let config = load(BASE).unwrap();
    let l = &config.listeners[0];
    assert_eq!(l.tls, ListenerTls::None);
    assert_eq!(l.min_tls, TlsVersion::Tls12);
    assert!(!l.auth && !l.require_auth && !l.allow_plaintext_auth);
    assert!(l.allow_from.is_empty() && l.deny_from.is_empty() && l.relay_from.is_empty());
    assert_eq!(l.max_connections_per_ip, 50);
    assert_eq!(l.max_messages_per_connection, 1000);
    assert_eq!(l.session_timeout, Duration::from_secs(3600));
}

#[test]
fn listener_mistakes_are_reported_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "ok", now() - DAY, now() + 365 * DAY);
    let (other_cert, _) = certificate(dir.path(), "other", now() - DAY, now() + 365 * DAY);
    let not_pem = dir.path().join("cert.der");
    std::fs::write(&not_pem, [0x30, 0x82, 0x01, 0x0a]).unwrap();
    let encrypted = dir.path().join("encrypted.key");
    std::fs::write(
        &encrypted,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap();
    let l = "[[listener]]\naddress = \"127.0.0.1:25\"\n";
    let tls = |cert: &Path, key: &Path| {
        format!(
            "{l}tls = \"starttls\"\ncertificate = '{}'\nprivate_key = '{}'\n",
            cert.display(),
            key.display()
        )
    };
    let user = user();
    let cases: Vec<(String, usize, &str)> = vec![
        (
            format!("{l}tls = \"ssl\""),
            3,
            "`listener.tls`: unknown value \"ssl\", expected \"none\", \"starttls\" or \"implicit\"",
        ),
        (
            format!("{l}cert = \"x.pem\""),
            3,
            "unknown key `cert` in [[listener]] (did you mean `certificate`?)",
        ),
        (format!("{l}starttls = true"), 3, "(did you mean `tls`?)"),
        (
            format!("{l}deny_from = [\"10.0.0.0/40\"]"),
            3,
            "`listener.deny_from`: invalid address range",
        ),
        (
            format!("{l}allow_from = [\"everyone\"]"),
            3,
            "`listener.allow_from`: invalid address range \"everyone\"",
        ),
        (
            format!("{l}tls = \"starttls\""),
            1,
            "[[listener]] with tls = \"starttls\" needs `certificate` and `private_key`",
        ),
        (
            format!("{l}tls = \"implicit\"\ncertificate = '{}'", cert.display()),
            1,
            "needs `private_key`",
        ),
        (
            format!("{l}certificate = '{}'", cert.display()),
            3,
            "`certificate` is for TLS, and this listener has tls = \"none\"",
        ),
        (
            format!("{l}private_key = '{}'", key.display()),
            3,
            "`private_key` is for TLS",
        ),
        (
            format!("{}min_tls = 1.2", tls(&cert, &key)),
            6,
            "`listener.min_tls` must be a string: write min_tls = \"1.2\"",
        ),
        (
            format!("{}min_tls = \"1.4\"", tls(&cert, &key)),
            6,
            "`listener.min_tls`: unknown value \"1.4\"",
        ),
        (
            format!(
                "{l}tls = \"starttls\"\ncertificate = '/nonexistent/relay.pem'\nprivate_key = '{}'",
                key.display()
            ),
            4,
            "cannot read `listener.certificate` \"/nonexistent/relay.pem\"",
        ),
        (
            tls(&not_pem, &key),
            4,
            "no certificate in the file (expected a PEM \"BEGIN CERTIFICATE\" block); if you have a .pfx",
        ),
        (tls(&cert, &cert), 4, "no private key in the file"),
        (tls(&cert, &encrypted), 4, "the private key is encrypted"),
        (
            tls(&other_cert, &key),
            4,
            "the private key does not belong to the certificate",
        ),
        (
            format!("{l}auth = true\n{user}"),
            3,
            "AUTH on a listener with tls = \"none\" could only be offered in the clear",
        ),
        (
            format!("{}auth = true", tls(&cert, &key)),
            6,
            "AUTH is on for this listener, and there is no [[user]]",
        ),
        (
            format!("{}require_auth = true", tls(&cert, &key)),
            6,
            "there is no [[user]]",
        ),
        (
            format!(
                "{}auth = false\nrequire_auth = true\n{user}",
                tls(&cert, &key)
            ),
            6,
            "require_auth = true, which needs AUTH: remove auth = false",
        ),
        (
            format!("{l}allow_plaintext_auth = true"),
            3,
            "allow_plaintext_auth is about AUTH",
        ),
        (
            format!("{l}max_connections_per_ip = 0"),
            3,
            "`listener.max_connections_per_ip` must be at least 1",
        ),
        (
            format!("{l}max_messages_per_connection = -1"),
            3,
            "`listener.max_messages_per_connection` must be at least 1",
        ),
        (
            format!("{l}session_timeout = \"0s\""),
            3,
            "`listener.session_timeout` must be longer than zero",
        ),
        (
            format!("{l}auth = \"yes\""),
            3,
            "`listener.auth` must be true or false",
        ),
    ];
    for (snippet, line, fragment) in &cases {
        let text = format!("{snippet}\n{BASE}");
        let got = errors(&text);
        assert!(
            got.len() == 1 && got[0].line == Some(*line) && got[0].message.contains(fragment),
            "for:\n{snippet}\nexpected line {line}: {fragment}\ngot: {got:#?}"
        );
    }
}

#[test]
fn auth_over_plaintext_is_allowed_when_said_twice() {
    let text = format!(
        "[[listener]]\naddress = \"127.0.0.1:25\"\nauth = true\nallow_plaintext_auth = true\n{}{BASE}",
        user()
    );
    let config = load(&text).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.listeners[0].auth && config.listeners[0].allow_plaintext_auth);
}

#[test]
fn an_expired_or_expiring_certificate_is_a_warning_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for (from, until, expected) in [
        (now() - 400 * DAY, now() - DAY, "the certificate expired on"),
        (now() - DAY, now() + 10 * DAY, "the certificate expires on"),
    ] {
        let (cert, key) = certificate(dir.path(), "soon", from, until);
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:25\"\ntls = \"implicit\"\ncertificate = '{}'\nprivate_key = '{}'\n{BASE}",
            cert.display(),
            key.display()
        );
        let config = load(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
        assert!(
            config.warnings[0].starts_with("test.toml:4: warning: `listener.certificate`: ")
                && config.warnings[0].contains(expected),
            "{:?}",
            config.warnings
        );
    }
}

#[cfg(not(feature = "legacy-tls"))]
#[test]
fn tls_below_1_2_needs_the_legacy_tls_feature() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "relay", now() - DAY, now() + 365 * DAY);
    let text = format!(
        "[[listener]]\naddress = \"127.0.0.1:25\"\ntls = \"starttls\"\ncertificate = '{}'\nprivate_key = '{}'\nmin_tls = \"1.1\"\n{BASE}",
        cert.display(),
        key.display()
    );
    let got = errors(&text);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].line, Some(6));
    assert!(
        got[0]
            .message
            .contains("built without the `legacy-tls` feature"),
        "{got:#?}"
    );
}
