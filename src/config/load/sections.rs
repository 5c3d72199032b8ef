//! The top level, `[[listener]]`, `[limits]` and `[queue]`: raw document → validated values.
//! Each function reads what it can, reports what it cannot, and returns defaults in its place;
//! the caller discards the result when anything was reported.

use super::admin;
use super::cluster;
use super::document::{Report, Section};
use super::listeners;
use super::logs;
use super::routes;
use super::schedule::{self, Inherited};
use super::users;
use super::{Env, defaults, keys, values};
use crate::config::{Config, Limits, QueueConfig};
use crate::smtp::command::is_valid_mailbox;
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

    let listeners = listeners::listeners(report, &top);
    let limits = match report.table(&top, "limits", "[limits]") {
        Some(section) => limits(report, &section),
        None => defaults::limits(),
    };
    let queue = match report.table(&top, "queue", "[queue]") {
        Some(section) => queue(report, &section),
        None => defaults::queue(),
    };
    let routes = routes::routes(report, &top, &data_dir, &queue.schedule, env);
    let users = users::users(report, &top);
    let auth_lockout = users::auth_lockout(report, &top);
    let admin = admin::admin(report, &top, env);
    let logs = logs::logs(report, &top);
    let (node, cluster) = cluster::cluster(report, &top, env);

    Config {
        data_dir,
        hostname,
        listeners,
        limits,
        queue,
        routes,
        warnings: Vec::new(),
        users,
        auth_lockout,
        admin,
        logs,
        node,
        cluster,
    }
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
