//! `[[listener]]`: address, who may relay and connect, TLS (certificate files are loaded now, so a
//! bad file is reported against its line), AUTH, and the per-listener limits.
//!
//! Contradictions are errors rather than silently resolved: AUTH over plaintext without
//! `allow_plaintext_auth`, AUTH without any `[[user]]`, TLS keys on a `tls = "none"` listener,
//! `min_tls` below 1.2 in a build without the OpenSSL backend.

use super::document::{At, Report, Section};
use super::{keys, secrets, values};
use crate::config::{ListenerConfig, ListenerTls, TlsVersion};
use crate::server::tls;
use ipnet::IpNet;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::SocketAddr;
use std::time::SystemTime;
use toml::de::DeValue;

pub fn listeners(report: &mut Report, top: &Section<'_, '_>) -> Vec<ListenerConfig> {
    let Some(list) = report.tables(top, "listener", "[[listener]]") else {
        if top.has("listener") {
            return Vec::new();
        }
        report.error_unlined(
            "no [[listener]]: add one, e.g. [[listener]] address = \"0.0.0.0:25\" \
             relay_from = [\"10.0.0.0/8\"]",
        );
        return Vec::new();
    };
    if list.value.is_empty() {
        report.error(
            &list.span,
            "`listener` is empty: at least one [[listener]] is needed",
        );
    }
    let has_users = top.has("user");
    let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
    let mut listeners = Vec::new();
    for section in &list.value {
        keys::check(report, section, &[keys::LISTENER]);
        let address = report.required_string(section, "address").and_then(|at| {
            match values::parse_listen_address(at.value) {
                Ok(address) => {
                    let line = report.line(at.span.start);
                    match seen.entry(address) {
                        Entry::Occupied(first) => report.error(
                            &at.span,
                            format!(
                                "listener address {address} is already used on line {}",
                                first.get()
                            ),
                        ),
                        Entry::Vacant(slot) => {
                            slot.insert(line);
                        }
                    }
                    Some(address)
                }
                Err(message) => {
                    report.error(&at.span, format!("`listener.address`: {message}"));
                    None
                }
            }
        });
        let listener = listener(report, section, has_users);
        if let Some(address) = address {
            listeners.push(ListenerConfig {
                address,
                ..listener
            });
        }
    }
    listeners
}

/// Everything but the address (the caller fills it in).
fn listener(report: &mut Report, section: &Section<'_, '_>, has_users: bool) -> ListenerConfig {
    let d = ListenerConfig::plain(SocketAddr::from(([0, 0, 0, 0], 0)), Vec::new());
    // Absent means nobody may relay: IIS's "Only the list below" with an empty list.
    let relay_from = nets(report, section, "relay_from");
    let allow_from = nets(report, section, "allow_from");
    let deny_from = nets(report, section, "deny_from");

    let tls_mode = match report.string(section, "tls") {
        None => d.tls,
        Some(at) => match at.value {
            "none" => ListenerTls::None,
            "starttls" => ListenerTls::StartTls,
            "implicit" => ListenerTls::Implicit,
            other => {
                report.error(
                    &at.span,
                    format!(
                        "`listener.tls`: unknown value {other:?}, expected \"none\", \"starttls\" \
                         or \"implicit\""
                    ),
                );
                ListenerTls::None
            }
        },
    };
    let min_tls = min_tls(report, section).unwrap_or(d.min_tls);
    let (certificate, private_key) = certificate(report, section, tls_mode, min_tls);

    let auth_key = report.boolean(section, "auth");
    let require_auth = report.boolean(section, "require_auth");
    let allow_plaintext = report.boolean(section, "allow_plaintext_auth");
    let auth = auth_rules(
        report,
        section,
        tls_mode,
        has_users,
        [&auth_key, &require_auth, &allow_plaintext],
    );

    ListenerConfig {
        address: d.address,
        relay_from,
        allow_from,
        deny_from,
        tls: tls_mode,
        certificate,
        private_key,
        min_tls,
        auth,
        require_auth: require_auth.is_some_and(|at| at.value),
        allow_plaintext_auth: allow_plaintext.is_some_and(|at| at.value),
        max_connections_per_ip: report.count(
            section,
            "max_connections_per_ip",
            d.max_connections_per_ip,
        ),
        max_messages_per_connection: report.count(
            section,
            "max_messages_per_connection",
            d.max_messages_per_connection,
        ),
        session_timeout: report.duration(section, "session_timeout", d.session_timeout),
    }
}

fn nets(report: &mut Report, section: &Section<'_, '_>, key: &str) -> Vec<IpNet> {
    let Some(list) = report.strings(section, key) else {
        return Vec::new();
    };
    list.value
        .iter()
        .filter_map(|at| match values::parse_net(at.value) {
            Ok(net) => Some(net),
            Err(message) => {
                report.error(&at.span, format!("`listener.{key}`: {message}"));
                None
            }
        })
        .collect()
}

fn min_tls(report: &mut Report, section: &Section<'_, '_>) -> Option<TlsVersion> {
    const EXPECTED: &str = "expected \"1.0\", \"1.1\", \"1.2\" or \"1.3\"";
    if let Some(value) = section.get("min_tls")
        && let DeValue::Float(number) = value.get_ref()
    {
        // `min_tls = 1.2`: TOML reads a number, which would turn "1.10" into 1.1.
        report.error(
            &value.span(),
            format!(
                "`listener.min_tls` must be a string: write min_tls = \"{number}\" ({EXPECTED})"
            ),
        );
        return None;
    }
    let at = report.string(section, "min_tls")?;
    let version = match at.value.trim() {
        "1.0" | "1" => TlsVersion::Tls10,
        "1.1" => TlsVersion::Tls11,
        "1.2" => TlsVersion::Tls12,
        "1.3" => TlsVersion::Tls13,
        other => {
            report.error(
                &at.span,
                format!("`listener.min_tls`: unknown value {other:?}, {EXPECTED}"),
            );
            return None;
        }
    };
    if version < TlsVersion::Tls12 && !tls::SUPPORTS_LEGACY_TLS {
        report.error(
            &at.span,
            format!(
                "`listener.min_tls` = {:?}: {} (build with `--features legacy-tls`), or use \
                 \"1.2\"",
                at.value,
                tls::LEGACY_UNAVAILABLE
            ),
        );
        return None;
    }
    Some(version)
}

/// `certificate` and `private_key`: required with TLS, refused without it, and loaded now the way
/// the listener will load them.
fn certificate(
    report: &mut Report,
    section: &Section<'_, '_>,
    tls_mode: ListenerTls,
    min_tls: TlsVersion,
) -> (Option<std::path::PathBuf>, Option<std::path::PathBuf>) {
    if tls_mode == ListenerTls::None {
        // (`min_tls` is harmless there: it only says what TLS would accept.)
        for key in ["certificate", "private_key"] {
            if let Some(span) = section.key_span(key) {
                report.error(
                    &span,
                    format!(
                        "`{key}` is for TLS, and this listener has tls = \"none\" (the default): \
                         set tls = \"starttls\" (port 25/587) or \"implicit\" (port 465)"
                    ),
                );
            }
        }
        return (None, None);
    }
    let mode = if tls_mode == ListenerTls::StartTls {
        "starttls"
    } else {
        "implicit"
    };
    let missing: Vec<&str> = ["certificate", "private_key"]
        .into_iter()
        .filter(|key| !section.has(key))
        .collect();
    if !missing.is_empty() {
        report.error(
            &section.span,
            format!(
                "[[listener]] with tls = \"{mode}\" needs `{}` (PEM files: the certificate with \
                 its chain, and its unencrypted private key)",
                missing.join("` and `")
            ),
        );
    }
    let certificate = secrets::readable_path(report, section, "certificate");
    let private_key = secrets::readable_path(report, section, "private_key");
    if let (Some(cert), Some(key)) = (&certificate, &private_key)
        && secrets::readable_file(cert).is_ok()
        && secrets::readable_file(key).is_ok()
    {
        let span = section
            .get("certificate")
            .map(|v| v.span())
            .unwrap_or_else(|| section.span.clone());
        match tls::check(cert, key, min_tls, SystemTime::now()) {
            Ok(warnings) => {
                for warning in warnings {
                    report.warning(&span, format!("`listener.certificate`: {warning}"));
                }
            }
            Err(message) => report.error(&span, format!("`listener.certificate`: {message}")),
        }
    }
    (certificate, private_key)
}

/// Whether AUTH is on (`require_auth` implies it), with the contradictions reported.
fn auth_rules(
    report: &mut Report,
    section: &Section<'_, '_>,
    tls_mode: ListenerTls,
    has_users: bool,
    [auth, require_auth, allow_plaintext]: [&Option<At<bool>>; 3],
) -> bool {
    let required = require_auth.as_ref().filter(|at| at.value);
    if let (Some(At { value: false, span }), Some(_)) = (auth, required) {
        report.error(
            span,
            "this listener has require_auth = true, which needs AUTH: remove auth = false",
        );
    }
    let enabled = auth.as_ref().is_some_and(|at| at.value) || required.is_some();
    let enabling_span = || {
        auth.as_ref()
            .filter(|at| at.value)
            .or(required)
            .map(|at| at.span.clone())
            .unwrap_or_else(|| section.span.clone())
    };
    if enabled && !has_users {
        report.error(
            &enabling_span(),
            "AUTH is on for this listener, and there is no [[user]] to log in as: add one \
             (`smarthost passwd` makes its password_hash)",
        );
    }
    let plaintext_allowed = allow_plaintext.as_ref().is_some_and(|at| at.value);
    if enabled && tls_mode == ListenerTls::None && !plaintext_allowed {
        report.error(
            &enabling_span(),
            "AUTH on a listener with tls = \"none\" could only be offered in the clear: set \
             tls = \"starttls\" with a certificate, or allow_plaintext_auth = true for devices on \
             a trusted network that cannot do TLS",
        );
    }
    if let Some(at) = allow_plaintext.as_ref().filter(|at| at.value)
        && !enabled
    {
        report.error(
            &at.span,
            "allow_plaintext_auth is about AUTH, and this listener has none: set auth = true, or \
             remove allow_plaintext_auth",
        );
    }
    enabled
}
