//! `[[route]]`: name, recipient domains, `mode`, transport, retry schedule, mailbox limits and
//! sender rewriting. The transports' own keys are read by `smtp.rs` and `graph.rs`.

use super::document::{At, Report, Section};
use super::graph::{self, GraphContext};
use super::schedule::{self, Inherited};
use super::smtp::{self, SmtpContext};
use super::{Env, defaults, keys, m365, mailbox, values};
use crate::config::{DomainPattern, M365Mode, RetrySchedule, RouteConfig, Transport};
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
        &[
            keys::ROUTE,
            keys::ROUTE_DROP,
            keys::ROUTE_SMTP,
            keys::ROUTE_GRAPH,
        ],
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

    let mode = m365::mode(report, section);
    let kind = transport_kind(report, section, mode.as_ref());
    let preset = m365::preset(mode.as_ref().map(|at| at.value));
    let (limits, limits_max_connections) = mailbox::limits(report, section, &preset.limits);
    let limits_max_connections = limits_max_connections.map(|at| at.value);
    let rewrite_sender = if section.has("rewrite_sender") || section.has("allowed_senders") {
        mailbox::rewrite(report, section)
    } else {
        None
    };
    let mut accepted_domains = Vec::new();
    let transport = match kind {
        Some(Kind::Smtp) => {
            wrong_transport_keys(report, section, "smtp");
            let smtp_context = SmtpContext {
                preset: &preset,
                route_name: name.as_deref(),
                data_dir,
                env,
                limits_max_connections,
            };
            let (smtp, restriction) = smtp::smtp_transport(report, section, &smtp_context);
            accepted_domains = restriction;
            smtp.map(Transport::Smtp)
        }
        Some(Kind::Graph) => {
            wrong_transport_keys(report, section, "graph");
            let graph_context = GraphContext {
                route_name: name.as_deref(),
                data_dir,
                env,
                limits_max_connections,
            };
            graph::graph_transport(report, section, &graph_context).map(Transport::Graph)
        }
        Some(Kind::Drop) => {
            wrong_transport_keys(report, section, "drop");
            if let Some(limits) = section.get("limits")
                && let toml::de::DeValue::Table(table) = limits.get_ref()
                && let Some((key, _)) = table.get_key_value("max_connections")
            {
                report.error(
                    &key.span(),
                    "`max_connections` is only for transport = \"smtp\" or \"graph\"; this route \
                     is \"drop\"",
                );
            }
            Some(drop_transport(report, section, data_dir))
        }
        None => None,
    };
    let schedule = schedule::schedule(report, section, queue_schedule, Inherited::Queue);

    Some(RouteConfig {
        name: name?,
        domains,
        transport: transport?,
        schedule,
        mode: mode.map(|at| at.value),
        limits,
        rewrite_sender,
        accepted_domains,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Smtp,
    Graph,
    Drop,
}

/// `transport`, checked against `mode`: the graph mode sends through Graph, the others through
/// SMTP. Without `transport`, the mode decides (smtp when there is none).
fn transport_kind(
    report: &mut Report,
    section: &Section<'_, '_>,
    mode: Option<&At<M365Mode>>,
) -> Option<Kind> {
    let written = report.string(section, "transport");
    let kind = match &written {
        Some(At { value: "smtp", .. }) => Kind::Smtp,
        Some(At { value: "graph", .. }) => Kind::Graph,
        Some(At { value: "drop", .. }) => Kind::Drop,
        Some(at) => {
            report.error(
                &at.span,
                format!(
                    "`route.transport`: unknown value {:?}, expected \"smtp\", \"graph\" or \"drop\"",
                    at.value
                ),
            );
            return None;
        }
        None if section.has("transport") => return None,
        None if mode.is_some_and(|m| m.value == M365Mode::Graph) => Kind::Graph,
        None => Kind::Smtp,
    };
    if let (Some(mode), Some(written)) = (mode, &written) {
        let name = m365::mode_name(mode.value);
        let fits = match mode.value {
            M365Mode::Graph => kind == Kind::Graph,
            _ => kind == Kind::Smtp,
        };
        if !fits {
            let expected = if mode.value == M365Mode::Graph {
                "graph"
            } else {
                "smtp"
            };
            report.error(
                &written.span,
                format!(
                    "mode = \"{name}\" sends with transport = \"{expected}\", and this route says \
                     transport = \"{}\": leave transport out, or remove mode",
                    written.value
                ),
            );
        }
    }
    Some(kind)
}

/// Reports the keys of other transports written in a route of transport `this`.
fn wrong_transport_keys(report: &mut Report, section: &Section<'_, '_>, this: &str) {
    let own = keys::TRANSPORT_KEYS
        .iter()
        .find(|(name, _)| *name == this)
        .map_or(&[][..], |(_, keys)| *keys);
    let mut reported: Vec<&str> = Vec::new();
    for (_, keys) in keys::TRANSPORT_KEYS {
        for key in *keys {
            if own.contains(key) || reported.contains(key) {
                continue;
            }
            let Some(span) = section.key_span(key) else {
                continue;
            };
            reported.push(key);
            let homes: Vec<String> = keys::TRANSPORT_KEYS
                .iter()
                .filter(|(_, keys)| keys.contains(key))
                .map(|(name, _)| format!("\"{name}\""))
                .collect();
            report.error(
                &span,
                format!(
                    "`{key}` is only for transport = {}; this route is \"{this}\"",
                    homes.join(" or ")
                ),
            );
        }
    }
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
