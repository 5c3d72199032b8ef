//! Configuration: TOML text → raw serde structs (`raw`) → a validated [`Config`] (`validate`).
//! Every error in a file is reported at once, each with its line; unknown keys are errors.
//! The validated types below are what the rest of the relay uses; nothing else reads TOML.

mod load;

pub use load::{ConfigError, ConfigErrors, default_config, load_file, load_str};

use ipnet::IpNet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Spool, logs, outbox (and later pickup, badmail) live below this directory.
    pub data_dir: PathBuf,
    /// EHLO name towards upstreams, and the name in our banner and `Received:` headers.
    pub hostname: String,
    pub listeners: Vec<ListenerConfig>,
    pub limits: Limits,
    pub queue: QueueConfig,
    /// In the order written; [`crate::route::Router`] picks the most specific match.
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    /// Clients allowed to relay (IIS: Relay restrictions, "Only the list below").
    pub relay_from: Vec<IpNet>,
}

impl ListenerConfig {
    pub fn may_relay(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.relay_from.iter().any(|net| net.contains(&ip))
    }
}

/// An IPv4 client seen on a dual-stack socket arrives as `::ffff:a.b.c.d`; policy speaks IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes; advertised in SIZE and enforced while DATA is read.
    pub max_message_size: u64,
    /// Recipients per message (RCPT beyond it gets `452 4.5.3`).
    pub max_recipients: usize,
    /// Simultaneous inbound connections over all listeners.
    pub max_connections: usize,
    /// Waiting for a command (RFC 5321 §4.5.3.2 suggests 5 minutes).
    pub command_timeout: Duration,
    /// Waiting for the next chunk of DATA (RFC 5321: 3 minutes per block, 10 for the terminator).
    pub data_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Messages being delivered at the same time.
    pub max_concurrent_deliveries: usize,
    /// The retry schedule of routes that do not set their own.
    pub schedule: RetrySchedule,
    /// IIS "Send copy of Non-Delivery Report to": every bounce also goes to this address.
    pub ndr_copy_to: Option<String>,
    /// A bounce carries the whole original message up to this size, only its headers beyond it.
    pub bounce_original_max: u64,
    /// Below this much free space in `data_dir`, new mail is refused with `452 4.3.1`.
    pub min_free_space: u64,
}

/// When to try again, when to tell the sender that it takes long, when to give up (IIS: Delivery →
/// Outbound; defaults 15 min, 30 min, 60 min, then every 240 min; delay notice after 12 h; expiry 2 days).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    /// The wait after the first, second, ... failed attempt; the last one repeats. Never empty.
    pub retry: Vec<Duration>,
    /// One "delayed" notice to the sender once a message has waited this long (`None`: never).
    pub delay_notice: Option<Duration>,
    /// Recipients still not delivered after this long are bounced.
    pub expire: Duration,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        const MINUTE: Duration = Duration::from_secs(60);
        RetrySchedule {
            retry: vec![15 * MINUTE, 30 * MINUTE, 60 * MINUTE, 240 * MINUTE],
            delay_notice: Some(12 * 60 * MINUTE),
            expire: 2 * 24 * 60 * MINUTE,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub domains: Vec<DomainPattern>,
    pub transport: Transport,
    /// The route's own `retry`/`delay_notice`/`expire`, each falling back to `[queue]`'s.
    pub schedule: RetrySchedule,
}

/// A recipient-domain pattern: `*` (any), `*.contoso.com` (subdomains), `contoso.com` (exact).
/// Stored lower-case, without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainPattern {
    Any,
    Subdomains(String),
    Exact(String),
}

#[derive(Debug, Clone)]
pub enum Transport {
    /// Write each message as an `.eml` file into a folder.
    Drop {
        path: PathBuf,
    },
    Smtp(SmtpRoute),
}

#[derive(Debug, Clone)]
pub struct SmtpRoute {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// Extra trust anchors, added to the system roots.
    pub ca_file: Option<PathBuf>,
    pub auth: Option<AuthConfig>,
    pub connect_timeout: Duration,
    /// Waiting for any reply from the upstream.
    pub command_timeout: Duration,
    /// Connections to this upstream at the same time.
    pub max_connections: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// STARTTLS must succeed, or the attempt fails temporarily.
    StartTls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// STARTTLS when offered, plaintext otherwise.
    Opportunistic,
    /// Never TLS.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMechanism {
    Login,
    Plain,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub mechanism: AuthMechanism,
    pub username: String,
    pub password: Secret,
}

/// A secret read from the environment or a file. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The only way to the value: call sites that use it are easy to audit.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}
