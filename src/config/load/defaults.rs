//! The value of every key that is not written. `smarthost.example.toml` documents the same
//! values; a test keeps the two in step.

use super::{Env, values};
use crate::config::{Limits, QueueConfig, TlsMode};
use std::time::Duration;

/// Relative, so kept relative: to the current directory.
#[cfg(not(windows))]
pub const DATA_DIR: &str = "./smarthost-data";
/// On Windows (a service starts in System32): `%ProgramData%\smarthost`.
#[cfg(windows)]
pub const DATA_DIR: &str = r"C:\ProgramData\smarthost";
/// A drop route's folder when it has no `path`, below `data_dir`.
pub const DROP_DIR: &str = "outbox";

const MINUTE: Duration = Duration::from_secs(60);

pub fn limits() -> Limits {
    Limits {
        // Microsoft 365's default maximum send size.
        max_message_size: 35 * 1024 * 1024,
        max_recipients: 500,
        max_connections: 1000,
        command_timeout: 5 * MINUTE,
        data_timeout: 10 * MINUTE,
    }
}

pub fn queue() -> QueueConfig {
    QueueConfig {
        max_concurrent_deliveries: 20,
        schedule: crate::config::RetrySchedule::default(),
        ndr_copy_to: None,
        bounce_original_max: 256 * 1024,
        min_free_space: 100 * 1024 * 1024,
    }
}

/// The parts of an smtp route that have defaults independent of its TLS mode.
pub struct SmtpRouteDefaults {
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub max_connections: usize,
}

pub fn smtp_route() -> SmtpRouteDefaults {
    SmtpRouteDefaults {
        connect_timeout: Duration::from_secs(30),
        command_timeout: 5 * MINUTE,
        max_connections: 10,
    }
}

/// Submission (587) for STARTTLS, submissions (465) for implicit TLS, relay (25) otherwise.
pub fn port(tls: TlsMode) -> u16 {
    match tls {
        TlsMode::StartTls => 587,
        TlsMode::Implicit => 465,
        TlsMode::Opportunistic | TlsMode::None => 25,
    }
}

/// The machine's host name: the kernel's (Linux), else `HOSTNAME` or `COMPUTERNAME` (Windows),
/// else "localhost". Only a syntactically valid name is taken, since it goes into EHLO.
pub fn machine_hostname(env: Env<'_>) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    kernel
        .into_iter()
        .chain(env("HOSTNAME"))
        .chain(env("COMPUTERNAME"))
        .map(|name| name.trim().to_string())
        .find(|name| values::is_host_name(name))
        .unwrap_or_else(|| "localhost".to_string())
}
