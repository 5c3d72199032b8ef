//! Reading and validating configuration files.
//!
//! The TOML text is parsed into a document whose every value keeps its byte span (`toml`'s
//! `DeTable`), then read by hand, table by table: each problem is recorded with its line and
//! reading goes on, so that one run reports every error in the file. Only a file without errors
//! becomes a [`Config`]. TOML syntax errors stop before validation (the document is then
//! incomplete and would produce misleading errors), but all of them are reported.
//!
//! Secrets are resolved here (`password_env`, `password_file`, `client_secret_env`,
//! `client_secret_file`) and held as [`crate::config::Secret`]; no message repeats a secret's value.
//! Files the relay will need (CA, client certificates, keys) are checked now, so that a mistake stops
//! the start and not the first delivery; a client certificate about to expire is a warning
//! ([`Config::warnings`]), not an error.
//!
//! One file per part: `sections` (top level, limits, queue), `listeners`, `routes` (every route),
//! `m365` (the `mode` presets), `smtp`, `graph` and `oauth` (the transports and their credentials),
//! `mailbox` (`[route.limits]`, sender rewriting), `users` (`[[user]]`, `[auth_lockout]`),
//! `secrets`, `schedule`, `keys` (which keys exist where), `values` (value syntaxes) and `document`
//! (typed, spanned access and the report).

mod admin;
mod cluster;
// Shared with the policy code, which checks `*@domain` patterns the same way.
pub(crate) use values::is_host_name;
mod defaults;
mod document;
mod graph;
mod keys;
mod listeners;
mod logs;
mod m365;
mod mailbox;
mod oauth;
mod routes;
mod schedule;
mod secrets;
mod sections;
mod smtp;
mod users;
mod values;

#[cfg(test)]
mod tests;

use super::{Config, DomainPattern, ListenerConfig, RouteConfig, Transport};
use document::Report;
use std::path::{Path, PathBuf};
use toml::de::DeTable;

/// Looks up an environment variable; injected so that tests need not touch the process
/// environment (`std::env::set_var` is unsafe, and tests run in parallel).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line in the file, when the error belongs to one.
    pub line: Option<usize>,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub source: String,
    pub errors: Vec<ConfigError>,
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.errors {
            match e.line {
                Some(line) => writeln!(f, "{}:{}: {}", self.source, line, e.message)?,
                None => writeln!(f, "{}: {}", self.source, e.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The built-in configuration `smarthost serve` uses without `--config`: a listener on
/// 127.0.0.1:2525 that lets only this machine relay, and every message written to
/// `./smarthost-data/outbox`.
pub fn default_config() -> Config {
    let data_dir = PathBuf::from(defaults::DATA_DIR);
    let loopback = ["127.0.0.0/8", "::1/128"].map(|net| net.parse().expect("a valid range"));
    Config {
        hostname: defaults::machine_hostname(&process_env),
        listeners: vec![ListenerConfig::plain(
            "127.0.0.1:2525".parse().expect("a valid address"),
            loopback.to_vec(),
        )],
        limits: defaults::limits(),
        queue: defaults::queue(),
        warnings: Vec::new(),
        users: Vec::new(),
        auth_lockout: crate::config::AuthLockout::default(),
        admin: crate::config::AdminConfig::default(),
        logs: crate::config::LogsConfig::default(),
        node: defaults::machine_hostname(&process_env),
        cluster: None,
        routes: vec![RouteConfig {
            name: "outbox".to_string(),
            domains: vec![DomainPattern::Any],
            transport: Transport::Drop {
                path: data_dir.join(defaults::DROP_DIR),
            },
            schedule: defaults::queue().schedule,
            mode: None,
            limits: crate::config::MailboxLimits::default(),
            rewrite_sender: None,
            accepted_domains: Vec::new(),
        }],
        data_dir,
    }
}

/// Reads and validates `path`; messages name the file as given.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let source = path.display().to_string();
    let unreadable = |message: String| ConfigErrors {
        source: source.clone(),
        errors: vec![ConfigError {
            line: None,
            message,
        }],
    };
    let bytes = std::fs::read(path).map_err(|e| unreadable(format!("cannot read: {e}")))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| unreadable("cannot read: the file is not UTF-8 text".to_string()))?;
    load_str(&text, &source)
}

/// Validates `text`; `source` names it in messages (`smarthost.toml:12: ...`).
pub fn load_str(text: &str, source: &str) -> Result<Config, ConfigErrors> {
    load_str_with_env(text, source, &process_env)
}

/// [`load_str`] with the environment looked up through `env`.
pub fn load_str_with_env(text: &str, source: &str, env: Env<'_>) -> Result<Config, ConfigErrors> {
    let mut report = Report::new(text);
    let (document, syntax_errors) = DeTable::parse_recoverable(text);
    if syntax_errors.is_empty() {
        let mut config = sections::config(&mut report, document.get_ref(), env);
        if !report.has_errors() {
            config.warnings = report
                .take_warnings()
                .into_iter()
                .map(|w| match w.line {
                    Some(line) => format!("{source}:{line}: warning: {}", w.message),
                    None => format!("{source}: warning: {}", w.message),
                })
                .collect();
            return Ok(config);
        }
    } else {
        for e in syntax_errors {
            let message = format!("TOML syntax: {}", e.message());
            match e.span() {
                Some(span) => report.error(&span, message),
                None => report.error_unlined(message),
            }
        }
    }
    Err(ConfigErrors {
        source: source.to_string(),
        errors: report.into_errors(),
    })
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}
