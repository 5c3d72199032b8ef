//! Which keys exist in which table. A key not listed here is an error: a misspelt key would
//! otherwise leave its default silently in place.

use super::document::{Report, Section};
use super::values::edit_distance;

pub const TOP: &[&str] = &[
    "data_dir", "hostname", "listener", "limits", "queue", "route",
];
pub const LISTENER: &[&str] = &["address", "relay_from"];
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
    "retry",
    "delay_notice",
    "expire",
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
];
pub const AUTH: &[&str] = &["mechanism", "username", "password_env", "password_file"];

/// Every table as written in the file, with its keys.
pub const SECTIONS: &[(&str, &[&str])] = &[
    ("", TOP),
    ("[[listener]]", LISTENER),
    ("[limits]", LIMITS),
    ("[queue]", QUEUE),
    ("[[route]]", ROUTE),
    ("[[route]]", ROUTE_DROP),
    ("[[route]]", ROUTE_SMTP),
    ("[route.auth]", AUTH),
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
    if header == "[route.auth]" && ["password", "pass", "secret"].contains(&key) {
        return Some(
            "the password is read from the environment variable named by `password_env` or \
             from the file named by `password_file`, never from this file"
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
