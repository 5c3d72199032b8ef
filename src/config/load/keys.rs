//! Which keys exist in which table. A key not listed here is an error: a misspelt key would
//! otherwise leave its default silently in place.

use super::document::{Report, Section};
use super::values::edit_distance;

pub const TOP: &[&str] = &[
    "data_dir",
    "hostname",
    "listener",
    "limits",
    "queue",
    "route",
    "user",
    "auth_lockout",
    "admin",
    "logs",
    "cluster",
];
pub const LOGS: &[&str] = &["w3c", "json", "retention_days"];
pub const LISTENER: &[&str] = &[
    "address",
    "relay_from",
    "allow_from",
    "deny_from",
    "tls",
    "certificate",
    "private_key",
    "min_tls",
    "auth",
    "require_auth",
    "allow_plaintext_auth",
    "max_connections_per_ip",
    "max_messages_per_connection",
    "session_timeout",
];
pub const LIMITS: &[&str] = &[
    "max_message_size",
    "max_recipients",
    "max_connections",
    "command_timeout",
    "data_timeout",
];
pub const QUEUE: &[&str] = &[
    "max_concurrent_deliveries",
    "retry",
    "delay_notice",
    "expire",
    "ndr_copy_to",
    "bounce_original_max",
    "min_free_space",
];
/// Keys of every route, whatever its transport.
pub const ROUTE: &[&str] = &[
    "name",
    "domains",
    "transport",
    "mode",
    "retry",
    "delay_notice",
    "expire",
    "limits",
    "rewrite_sender",
    "allowed_senders",
];
/// Keys of a `transport = "drop"` route only.
pub const ROUTE_DROP: &[&str] = &["path"];
/// Keys of a `transport = "smtp"` route only.
pub const ROUTE_SMTP: &[&str] = &[
    "host",
    "port",
    "tls",
    "ca_file",
    "connect_timeout",
    "command_timeout",
    "max_connections",
    "allow_plaintext_auth",
    "auth",
    "oauth",
    "tenant_domain",
    "accepted_domains",
    "client_certificate",
    "client_private_key",
];
/// Keys of a `transport = "graph"` route only.
pub const ROUTE_GRAPH: &[&str] = &[
    "mailbox",
    "graph_base_url",
    "timeout",
    "ca_file",
    "max_connections",
    "auth",
    "oauth",
];
/// The transports and their own keys, for "only for transport = ..." messages.
pub const TRANSPORT_KEYS: &[(&str, &[&str])] = &[
    ("smtp", ROUTE_SMTP),
    ("graph", ROUTE_GRAPH),
    ("drop", ROUTE_DROP),
];
pub const ROUTE_LIMITS: &[&str] = &[
    "max_connections",
    "message_rate",
    "recipient_rate",
    "recipients_per_message",
    "throttle_backoff",
];
pub const AUTH: &[&str] = &["mechanism", "username", "password_env", "password_file"];
pub const OAUTH: &[&str] = &[
    "tenant",
    "client_id",
    "flow",
    "client_secret_env",
    "client_secret_file",
    "certificate_file",
    "private_key_file",
    "authority_host",
    "token_endpoint",
    "device_endpoint",
    "token_file",
    "scope",
    "ca_file",
];
pub const USER: &[&str] = &["name", "password_hash", "allowed_senders"];
pub const AUTH_LOCKOUT: &[&str] = &["max_failures", "window", "duration"];
pub const ADMIN: &[&str] = &["enabled", "address", "token_env", "token_file"];
pub const CLUSTER: &[&str] = &[
    "redis",
    "password_env",
    "password_file",
    "node",
    "expected_nodes",
    "lease_ttl",
    "timeout",
];

/// Every table as written in the file, with its keys.
pub const SECTIONS: &[(&str, &[&str])] = &[
    ("", TOP),
    ("[[listener]]", LISTENER),
    ("[limits]", LIMITS),
    ("[queue]", QUEUE),
    ("[[route]]", ROUTE),
    ("[[route]]", ROUTE_DROP),
    ("[[route]]", ROUTE_SMTP),
    ("[[route]]", ROUTE_GRAPH),
    ("[route.limits]", ROUTE_LIMITS),
    ("[route.auth]", AUTH),
    ("[route.oauth]", OAUTH),
    ("[[user]]", USER),
    ("[auth_lockout]", AUTH_LOCKOUT),
    ("[admin]", ADMIN),
    ("[logs]", LOGS),
    ("[cluster]", CLUSTER),
];

/// Reports every key of `section` that is in none of `known`.
pub fn check(report: &mut Report, section: &Section<'_, '_>, known: &[&[&str]]) {
    for (key, span) in section.keys() {
        if known.iter().any(|keys| keys.contains(&key)) {
            continue;
        }
        let mut message = format!("unknown key `{key}` {}", section.place());
        if let Some(hint) = hint(key, section.header, known) {
            message.push_str(&format!(" ({hint})"));
        }
        report.error(&span, message);
    }
}

fn hint(key: &str, header: &str, known: &[&[&str]]) -> Option<String> {
    if header == "[route.oauth]" && ["client_secret", "secret", "password"].contains(&key) {
        return Some(
            "the client secret is read from the environment variable named by \
             `client_secret_env` or from the file named by `client_secret_file`, never from this \
             file"
                .to_string(),
        );
    }
    if header == "[cluster]" && ["password", "pass", "secret"].contains(&key) {
        return Some(
            "the Redis password is read from the environment variable named by `password_env` \
             or from the file named by `password_file`, never from this file"
                .to_string(),
        );
    }
    if header == "[route.auth]" && ["password", "pass", "secret"].contains(&key) {
        return Some(
            "the password is read from the environment variable named by `password_env` or \
             from the file named by `password_file`, never from this file"
                .to_string(),
        );
    }
    if header == "[[user]]"
        && [
            "password",
            "pass",
            "secret",
            "password_env",
            "password_file",
        ]
        .contains(&key)
    {
        return Some(
            "plain passwords are not stored; put the output of `smarthost passwd` in \
             password_hash"
                .to_string(),
        );
    }
    if ["retry_initial", "retry_max"].contains(&key) {
        return Some(
            "the retry schedule is now a list of waits, the last one repeating: \
             retry = [\"15m\", \"30m\", \"60m\", \"240m\"]"
                .to_string(),
        );
    }
    // Names other tools use for the same thing (Entra's portal, other relays' files).
    const ALIASES: &[(&str, &str)] = &[
        ("tenant_id", "tenant"),
        ("directory_id", "tenant"),
        ("app_id", "client_id"),
        ("application_id", "client_id"),
        ("user", "username"),
        ("from", "rewrite_sender"),
        ("sender", "rewrite_sender"),
        ("certificate", "client_certificate"),
        ("private_key", "client_private_key"),
        ("cert", "certificate"),
        ("certificate_file", "certificate"),
        ("key", "private_key"),
        ("key_file", "private_key"),
        ("private_key_file", "private_key"),
        ("tls_version", "min_tls"),
        ("min_tls_version", "min_tls"),
        ("starttls", "tls"),
    ];
    if let Some((_, name)) = ALIASES
        .iter()
        .find(|(alias, name)| *alias == key && known.iter().any(|keys| keys.contains(name)))
    {
        return Some(format!("did you mean `{name}`?"));
    }
    let closest = known
        .iter()
        .flat_map(|keys| keys.iter())
        .map(|candidate| (edit_distance(key, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= 2 && *distance < candidate.len() / 2)
        .min();
    if let Some((_, candidate)) = closest {
        return Some(format!("did you mean `{candidate}`?"));
    }
    let mut homes: Vec<&str> = SECTIONS
        .iter()
        .filter(|(home, keys)| *home != header && keys.contains(&key))
        .map(|(home, _)| {
            if home.is_empty() {
                "the top level"
            } else {
                *home
            }
        })
        .collect();
    homes.dedup();
    (!homes.is_empty()).then(|| format!("it belongs in {}", homes.join(" or ")))
}
