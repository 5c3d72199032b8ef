//! Reading and validating configuration files.
//!
//! The TOML text is parsed into a document whose every value keeps its byte span (`toml`'s
//! `DeTable`), then read by hand, table by table: each problem is recorded with its line and
//! reading goes on, so that one run reports every error in the file. Only a file without errors
//! becomes a [`Config`]. TOML syntax errors stop before validation (the document is then
//! incomplete and would produce misleading errors), but all of them are reported.
//!
//! Secrets are resolved here (`password_env`, `password_file`) and held as [`crate::config::Secret`];
//! no message repeats a secret's value.

mod defaults;
mod document;
mod keys;
mod routes;
mod schedule;
mod sections;
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
        listeners: vec![ListenerConfig {
            address: "127.0.0.1:2525".parse().expect("a valid address"),
            relay_from: loopback.to_vec(),
        }],
        limits: defaults::limits(),
        queue: defaults::queue(),
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
        let config = sections::config(&mut report, document.get_ref(), env);
        if !report.has_errors() {
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
