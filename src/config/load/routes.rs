//! `[[route]]` and `[route.auth]`: recipient domains, transport, TLS policy and credentials.
//! Secrets are read here, from the environment or a file; messages name the variable or the file,
//! never the value.

use super::document::{At, Report, Section};
use super::schedule::{self, Inherited};
use super::{Env, defaults, keys, values};
use crate::config::{
    AuthConfig, AuthMechanism, DomainPattern, RetrySchedule, RouteConfig, Secret, SmtpRoute,
    TlsMode, Transport,
};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};

/// What the routes read so far have claimed, for duplicate detection across routes.
#[derive(Default)]
struct Claims {
    /// Route name → line.
    names: HashMap<String, usize>,
    /// Domain pattern as written (normalised) → (route index, route label, line).
    patterns: HashMap<String, (usize, String, usize)>,
}

pub fn routes(
    report: &mut Report,
    top: &Section<'_, '_>,
    data_dir: &Path,
    queue_schedule: &RetrySchedule,
    env: Env<'_>,
) -> Vec<RouteConfig> {
    let Some(list) = report.tables(top, "route", "[[route]]") else {
        if !top.has("route") {
            report.error_unlined(
                "no [[route]]: add at least one, e.g. a `drop` route that writes mail to a folder \
                 (see smarthost.example.toml)",
            );
        }
        return Vec::new();
    };
    if list.value.is_empty() {
        report.error(
            &list.span,
            "`route` is empty: at least one [[route]] is needed",
        );
    }
    let mut claims = Claims::default();
    let context = RouteContext {
        data_dir,
        queue_schedule,
        env,
    };
    list.value
        .iter()
        .enumerate()
        .filter_map(|(index, section)| route(report, index, section, &context, &mut claims))
        .collect()
}

/// What every route is read against.
struct RouteContext<'a> {
    data_dir: &'a Path,
    /// `[queue]`'s schedule, which a route's own keys override one by one.
    queue_schedule: &'a RetrySchedule,
    env: Env<'a>,
}

fn route(
    report: &mut Report,
    index: usize,
    section: &Section<'_, '_>,
    context: &RouteContext<'_>,
    claims: &mut Claims,
) -> Option<RouteConfig> {
    let RouteContext {
        data_dir,
        queue_schedule,
        env,
    } = *context;
    keys::check(
        report,
        section,
        &[keys::ROUTE, keys::ROUTE_DROP, keys::ROUTE_SMTP],
    );

    let name = report.required_string(section, "name").map(|at| {
        let line = report.line(at.span.start);
        match claims.names.entry(at.value.to_string()) {
            Entry::Occupied(first) => report.error(
                &at.span,
                format!(
                    "route name `{}` is already used on line {}",
                    at.value,
                    first.get()
                ),
            ),
            Entry::Vacant(slot) => {
                slot.insert(line);
            }
        }
        at.value.to_string()
    });
    let label = match &name {
        Some(name) => format!("route `{name}`"),
        None => format!("the route on line {}", report.line(section.span.start)),
    };
    let domains = domains(report, section, (index, &label), claims);

    let transport = match report.string(section, "transport") {
        Some(At { value: "smtp", .. }) => smtp_transport(report, section, env).map(Transport::Smtp),
        Some(At { value: "drop", .. }) => Some(drop_transport(report, section, data_dir)),
        Some(at) => {
            report.error(
                &at.span,
                format!(
                    "`route.transport`: unknown value {:?}, expected \"smtp\" or \"drop\"",
                    at.value
                ),
            );
            None
        }
        None if section.has("transport") => None,
        None => smtp_transport(report, section, env).map(Transport::Smtp),
    };
    let schedule = schedule::schedule(report, section, queue_schedule, Inherited::Queue);

    Some(RouteConfig {
        name: name?,
        domains,
        transport: transport?,
        schedule,
        mode: None,
        limits: crate::config::MailboxLimits::default(),
        rewrite_sender: None,
        accepted_domains: Vec::new(),
    })
}

fn domains(
    report: &mut Report,
    section: &Section<'_, '_>,
    (index, label): (usize, &str),
    claims: &mut Claims,
) -> Vec<DomainPattern> {
    if !section.has("domains") {
        report.error(
            &section.span,
            "[[route]] needs `domains`: the recipient domains it takes, e.g. [\"contoso.com\"] \
             or [\"*\"] for all others",
        );
        return Vec::new();
    }
    let Some(list) = report.strings(section, "domains") else {
        return Vec::new();
    };
    if list.value.is_empty() {
        report.error(&list.span, "`route.domains` is empty");
    }
    let mut patterns = Vec::new();
    for at in &list.value {
        let pattern = match values::parse_domain_pattern(at.value) {
            Ok(pattern) => pattern,
            Err(message) => {
                report.error(&at.span, format!("`route.domains`: {message}"));
                continue;
            }
        };
        let line = report.line(at.span.start);
        match claims.patterns.entry(values::pattern_text(&pattern)) {
            Entry::Occupied(first) => {
                let (owner_index, owner, first_line) = first.get();
                let message = if *owner_index == index {
                    format!(
                        "domain \"{}\" is listed twice (line {first_line})",
                        first.key()
                    )
                } else {
                    format!(
                        "domain \"{}\" is already routed by {owner} (line {first_line})",
                        first.key()
                    )
                };
                report.error(&at.span, message);
            }
            Entry::Vacant(slot) => {
                slot.insert((index, label.to_string(), line));
                patterns.push(pattern);
            }
        }
    }
    patterns
}

fn drop_transport(report: &mut Report, section: &Section<'_, '_>, data_dir: &Path) -> Transport {
    for key in keys::ROUTE_SMTP {
        if let Some(span) = section.key_span(key) {
            report.error(
                &span,
                format!("`{key}` is only for transport = \"smtp\"; this route is \"drop\""),
            );
        }
    }
    let path = match report.string(section, "path") {
        Some(at) if at.value.trim().is_empty() => {
            report.error(&at.span, "`route.path` is empty");
            PathBuf::new()
        }
        // `join` keeps an absolute path as it is.
        Some(at) => data_dir.join(at.value),
        None => data_dir.join(defaults::DROP_DIR),
    };
    Transport::Drop { path }
}

fn smtp_transport(
    report: &mut Report,
    section: &Section<'_, '_>,
    env: Env<'_>,
) -> Option<SmtpRoute> {
    for key in keys::ROUTE_DROP {
        if let Some(span) = section.key_span(key) {
            report.error(
                &span,
                format!("`{key}` is only for transport = \"drop\"; this route is \"smtp\""),
            );
        }
    }
    let host = report.required_string(section, "host").and_then(|at| {
        values::parse_upstream_host(at.value)
            .map_err(|message| report.error(&at.span, format!("`route.host`: {message}")))
            .ok()
    });
    let tls = match report.string(section, "tls") {
        None => TlsMode::StartTls,
        Some(at) => match at.value {
            "starttls" => TlsMode::StartTls,
            "implicit" => TlsMode::Implicit,
            "opportunistic" => TlsMode::Opportunistic,
            "none" => TlsMode::None,
            other => {
                report.error(
                    &at.span,
                    format!(
                        "`route.tls`: unknown value {other:?}, expected \"starttls\", \"implicit\", \
                         \"opportunistic\" or \"none\""
                    ),
                );
                TlsMode::StartTls
            }
        },
    };
    let port = match report.integer(section, "port") {
        None => defaults::port(tls),
        Some(at) => u16::try_from(at.value)
            .ok()
            .filter(|port| *port != 0)
            .unwrap_or_else(|| {
                report.error(
                    &at.span,
                    format!("`route.port` {} is out of range (1 to 65535)", at.value),
                );
                defaults::port(tls)
            }),
    };
    let ca_file = report.string(section, "ca_file").map(|at| {
        // Read now so that a wrong path stops the start, not the first delivery.
        if let Err(problem) = readable_file(Path::new(at.value)) {
            report.error(
                &at.span,
                format!("cannot read `route.ca_file` {:?}: {problem}", at.value),
            );
        }
        PathBuf::from(at.value)
    });
    let d = defaults::smtp_route();
    let connect_timeout = report.duration(section, "connect_timeout", d.connect_timeout);
    let command_timeout = report.duration(section, "command_timeout", d.command_timeout);
    let max_connections = report.count(section, "max_connections", d.max_connections);
    let allow_plaintext = report.boolean(section, "allow_plaintext_auth");

    // The SMTP client sends a password only over TLS unless the route says tls = "none" (with
    // "opportunistic" and no STARTTLS it gives up instead). So a password in the clear is possible
    // only with "none", and then only when the route says so a second time.
    let auth_section = report.table(section, "auth", "[route.auth]");
    match (&auth_section, tls, &allow_plaintext) {
        (Some(auth_section), TlsMode::None, None | Some(At { value: false, .. })) => report.error(
            &auth_section.span,
            "refusing to send a password in the clear (tls = \"none\"): use tls = \"starttls\" \
             or \"implicit\", or set allow_plaintext_auth = true in this route if the network to \
             the upstream is trusted",
        ),
        (_, TlsMode::Opportunistic, Some(At { value: true, span })) => report.error(
            span,
            "allow_plaintext_auth has no effect with tls = \"opportunistic\": the password is \
             sent only after STARTTLS succeeds; plaintext sign-in needs tls = \"none\"",
        ),
        _ => {}
    }
    let auth = auth_section.and_then(|auth_section| auth(report, &auth_section, env));

    Some(SmtpRoute {
        host: host?,
        port,
        tls,
        ca_file,
        auth,
        connect_timeout,
        command_timeout,
        max_connections,
        client_cert: None,
    })
}

fn auth(report: &mut Report, section: &Section<'_, '_>, env: Env<'_>) -> Option<AuthConfig> {
    keys::check(report, section, &[keys::AUTH]);
    let mechanism = match report.string(section, "mechanism") {
        None if section.has("mechanism") => None,
        None => Some(AuthMechanism::Login),
        Some(at) => match at.value {
            "login" => Some(AuthMechanism::Login),
            "plain" => Some(AuthMechanism::Plain),
            other => {
                let message = if other.to_ascii_lowercase().contains("oauth") {
                    format!(
                        "`route.auth.mechanism` {other:?} is not supported yet: use \"login\" or \"plain\""
                    )
                } else {
                    format!(
                        "`route.auth.mechanism`: unknown value {other:?}, expected \"login\" or \"plain\""
                    )
                };
                report.error(&at.span, message);
                None
            }
        },
    };
    let username = report
        .required_string(section, "username")
        .map(|at| at.value.to_string());
    let password = match (section.has("password_env"), section.has("password_file")) {
        (true, true) => {
            report.error(
                &section.span,
                "[route.auth] has both `password_env` and `password_file`: keep one",
            );
            None
        }
        (false, false) => {
            report.error(
                &section.span,
                "[route.auth] needs `password_env` (an environment variable) or `password_file`",
            );
            None
        }
        (true, false) => password_from_env(report, section, env),
        (false, true) => password_from_file(report, section),
    };
    Some(AuthConfig {
        mechanism: mechanism?,
        username: username?,
        credential: crate::config::Credential::Password(password?),
    })
}

fn password_from_env(
    report: &mut Report,
    section: &Section<'_, '_>,
    env: Env<'_>,
) -> Option<Secret> {
    let at = report.string(section, "password_env")?;
    if !values::is_env_var_name(at.value) {
        // Possibly the password itself: do not repeat it.
        report.error(
            &at.span,
            "`route.auth.password_env` must be the name of an environment variable (letters, \
             digits and _), not the password",
        );
        return None;
    }
    match env(at.value) {
        None => {
            report.error(
                &at.span,
                format!(
                    "environment variable {} (password_env) is not set",
                    at.value
                ),
            );
            None
        }
        Some(value) if value.is_empty() => {
            report.error(
                &at.span,
                format!("environment variable {} (password_env) is empty", at.value),
            );
            None
        }
        Some(value) => Some(Secret::new(value)),
    }
}

fn password_from_file(report: &mut Report, section: &Section<'_, '_>) -> Option<Secret> {
    let at = report.string(section, "password_file")?;
    let problem = match std::fs::read(at.value) {
        Err(e) => e.to_string(),
        Ok(bytes) => match String::from_utf8(bytes) {
            Err(_) => "it is not UTF-8 text".to_string(),
            Ok(text) => {
                // `echo secret > file` and Notepad both end the line; the password does not.
                let password = text.trim_end_matches(['\r', '\n']);
                if !password.is_empty() {
                    return Some(Secret::new(password));
                }
                "it is empty".to_string()
            }
        },
    };
    report.error(
        &at.span,
        format!("cannot read password_file {:?}: {problem}", at.value),
    );
    None
}

fn readable_file(path: &Path) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    match file.metadata() {
        Ok(metadata) if metadata.is_dir() => Err("it is a directory".to_string()),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}
