//! The top level, `[[listener]]`, `[limits]` and `[queue]`: raw document → validated values.
//! Each function reads what it can, reports what it cannot, and returns defaults in its place;
//! the caller discards the result when anything was reported.

use super::document::{Report, Section};
use super::routes;
use super::schedule::{self, Inherited};
use super::{Env, defaults, keys, values};
use crate::config::{Config, Limits, ListenerConfig, QueueConfig};
use crate::smtp::command::is_valid_mailbox;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::SocketAddr;
use std::path::PathBuf;
use toml::de::DeTable;

pub fn config(report: &mut Report, root: &DeTable<'_>, env: Env<'_>) -> Config {
    let top = Section::root(root);
    keys::check(report, &top, &[keys::TOP]);

    let data_dir = match report.string(&top, "data_dir") {
        Some(at) if at.value.trim().is_empty() => {
            report.error(&at.span, "`data_dir` is empty");
            PathBuf::from(defaults::DATA_DIR)
        }
        Some(at) => PathBuf::from(at.value),
        None => PathBuf::from(defaults::DATA_DIR),
    };
    let hostname = match report.string(&top, "hostname") {
        Some(at) if values::is_host_name(at.value) => at.value.to_string(),
        Some(at) => {
            report.error(
                &at.span,
                format!(
                    "`hostname` {:?} is not a valid host name: letters, digits and hyphens in \
                     dot-separated labels (it is sent in EHLO)",
                    at.value
                ),
            );
            String::new()
        }
        None if top.has("hostname") => String::new(),
        None => defaults::machine_hostname(env),
    };

    let listeners = listeners(report, &top);
    let limits = match report.table(&top, "limits", "[limits]") {
        Some(section) => limits(report, &section),
        None => defaults::limits(),
    };
    let queue = match report.table(&top, "queue", "[queue]") {
        Some(section) => queue(report, &section),
        None => defaults::queue(),
    };
    let routes = routes::routes(report, &top, &data_dir, &queue.schedule, env);

    Config {
        data_dir,
        hostname,
        listeners,
        limits,
        queue,
        routes,
        warnings: Vec::new(),
        users: Vec::new(),
        auth_lockout: crate::config::AuthLockout::default(),
    }
}

fn listeners(report: &mut Report, top: &Section<'_, '_>) -> Vec<ListenerConfig> {
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
        // Absent means nobody may relay: IIS's "Only the list below" with an empty list.
        let relay_from = report
            .strings(section, "relay_from")
            .map(|list| {
                list.value
                    .iter()
                    .filter_map(|at| match values::parse_net(at.value) {
                        Ok(net) => Some(net),
                        Err(message) => {
                            report.error(&at.span, format!("`listener.relay_from`: {message}"));
                            None
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Some(address) = address {
            listeners.push(ListenerConfig::plain(address, relay_from));
        }
    }
    listeners
}

fn limits(report: &mut Report, section: &Section<'_, '_>) -> Limits {
    keys::check(report, section, &[keys::LIMITS]);
    let d = defaults::limits();
    Limits {
        max_message_size: report.size(section, "max_message_size", d.max_message_size),
        max_recipients: report.count(section, "max_recipients", d.max_recipients),
        max_connections: report.count(section, "max_connections", d.max_connections),
        command_timeout: report.duration(section, "command_timeout", d.command_timeout),
        data_timeout: report.duration(section, "data_timeout", d.data_timeout),
    }
}

fn queue(report: &mut Report, section: &Section<'_, '_>) -> QueueConfig {
    keys::check(report, section, &[keys::QUEUE]);
    let d = defaults::queue();
    let ndr_copy_to = report.string(section, "ndr_copy_to").and_then(|at| {
        let address = at.value.trim();
        if is_valid_mailbox(address) {
            return Some(address.to_string());
        }
        let hint = if address.starts_with('<') {
            " (write it without < >)"
        } else {
            ""
        };
        report.error(
            &at.span,
            format!(
                "`queue.ndr_copy_to` {:?} is not a valid address: write local-part@domain, \
                 e.g. \"postmaster@contoso.com\"{hint}",
                at.value
            ),
        );
        None
    });
    QueueConfig {
        max_concurrent_deliveries: report.count(
            section,
            "max_concurrent_deliveries",
            d.max_concurrent_deliveries,
        ),
        schedule: schedule::schedule(report, section, &d.schedule, Inherited::Defaults),
        ndr_copy_to,
        bounce_original_max: report.size_or_zero(
            section,
            "bounce_original_max",
            d.bounce_original_max,
        ),
        min_free_space: report.size_or_zero(section, "min_free_space", d.min_free_space),
    }
}
