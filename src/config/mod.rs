//! Configuration: TOML text → raw serde structs (`raw`) → a validated [`Config`] (`validate`).
//! Every error in a file is reported at once, each with its line; unknown keys are errors.
//! The validated types below are what the rest of the relay uses; nothing else reads TOML.

mod load;

pub(crate) use load::is_host_name;
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
    /// What is valid but needs attention soon (a client certificate about to expire), each as
    /// `file:line: warning: message`; `check-config` prints them and `serve` should log them.
    pub warnings: Vec<String>,
    /// Local accounts for inbound AUTH (`[[user]]`).
    pub users: Vec<UserConfig>,
    /// Locking out addresses that keep failing AUTH.
    pub auth_lockout: AuthLockout,
    /// The admin HTTP API and page (`[admin]`).
    pub admin: AdminConfig,
    /// The W3C extended log and the format of the process log (`[logs]`).
    pub logs: LogsConfig,
    /// This relay's name among several (`[cluster] node`, default the machine's host name): a label
    /// on every metric, in the admin API and in `queue list`.
    pub node: String,
    /// Per-mailbox limits shared with other nodes through Redis (`[cluster]`); `None`: kept in memory.
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: the Redis server that several relays share their per-mailbox limits through.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub redis: RedisUrl,
    /// `password_env` or `password_file`; never part of the URL.
    pub password: Option<Secret>,
    /// While Redis is unreachable each node keeps `limit / expected_nodes` (at least 1) by itself.
    pub expected_nodes: u32,
    /// A connection slot held by a node that stops renewing it (a crash) frees after this long.
    pub lease_ttl: Duration,
    /// One Redis call may take this long before the node falls back to its own limits.
    pub timeout: Duration,
}

impl ClusterConfig {
    /// The values of the keys that are not written (`smarthost.example.toml` documents them).
    pub const DEFAULTS: ClusterDefaults = ClusterDefaults {
        expected_nodes: 2,
        lease_ttl: Duration::from_secs(30),
        timeout: Duration::from_millis(500),
    };
}

/// See [`ClusterConfig::DEFAULTS`].
#[derive(Debug, Clone, Copy)]
pub struct ClusterDefaults {
    pub expected_nodes: u32,
    pub lease_ttl: Duration,
    pub timeout: Duration,
}

/// A Redis address without a password: `redis://host:port/db` or `rediss://` (TLS), optionally with
/// a user name (`redis://user@host`, Redis 6 ACLs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub tls: bool,
    pub username: Option<String>,
    pub host: String,
    pub port: u16,
    pub db: i64,
}

impl RedisUrl {
    /// Parses the URL; the message never repeats what may be a password.
    pub fn parse(text: &str) -> Result<RedisUrl, String> {
        let text = text.trim();
        let (tls, rest) = if let Some(rest) = text.strip_prefix("rediss://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("redis://") {
            (false, rest)
        } else {
            return Err("write redis://host:port/db, or rediss://host:port/db for TLS".into());
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((user, host)) => (Some(user), host),
            None => (None, authority),
        };
        if userinfo.is_some_and(|u| u.contains(':')) {
            return Err(
                "do not write the password in the URL: put it in an environment \
                        variable named by `password_env`, or in a file named by `password_file`"
                    .into(),
            );
        }
        let username = userinfo.filter(|u| !u.is_empty()).map(str::to_string);
        let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
            // [IPv6]:port
            let (ip, after) = inner
                .split_once(']')
                .ok_or("an IPv6 address needs its closing ]")?;
            let port = match after.strip_prefix(':') {
                Some(p) => p
                    .parse()
                    .map_err(|_| format!("port {p:?} is not a number"))?,
                None if after.is_empty() => 6379,
                None => return Err("expected :port after the IPv6 address".into()),
            };
            (ip.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse()
                        .map_err(|_| format!("port {p:?} is not a number"))?,
                ),
                None => (hostport.to_string(), 6379),
            }
        };
        if host.is_empty() {
            return Err("the URL has no host: redis://host:port/db".into());
        }
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let db = if path.is_empty() {
            0
        } else {
            path.parse()
                .ok()
                .filter(|db| *db >= 0)
                .ok_or_else(|| format!("database {path:?} is not a number (redis://host:port/0)"))?
        };
        Ok(RedisUrl {
            tls,
            username,
            host,
            port,
            db,
        })
    }

    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The URL as people see it: no password, ever (`redis://host:port/db`).
    pub fn display(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let user = self
            .username
            .as_ref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{user}{host}:{}/{}", self.port, self.db)
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

/// `[logs]`: the IIS-style W3C extended log files and the process log's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogsConfig {
    /// Write `data_dir/logs/smtpsvc-YYYYMMDD.log` (one line per SMTP command and reply).
    pub w3c: bool,
    /// The process log (tracing) as JSON lines on stdout instead of text on stderr.
    pub json: bool,
    /// W3C log files older than this many days are deleted; 0 keeps them forever.
    pub retention_days: u32,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            w3c: true,
            json: false,
            retention_days: 30,
        }
    }
}

/// The admin HTTP server (`[admin]`): off by default, loopback by default, a bearer token always.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub enabled: bool,
    pub address: SocketAddr,
    /// The bearer token (`token_env` or `token_file`); always `Some` when `enabled`.
    pub token: Option<Secret>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: false,
            address: SocketAddr::from(([127, 0, 0, 1], 8025)),
            token: None,
        }
    }
}

/// An account devices and applications log in with (IIS: Basic authentication).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserConfig {
    pub name: String,
    /// An argon2 PHC string (`$argon2id$v=19$...`), as `smarthost passwd` prints it. Never a password.
    pub password_hash: String,
    /// Envelope senders this user may use (lower-case; `*@contoso.com` for a whole domain); empty: any.
    pub allowed_senders: Vec<String>,
}

/// After `max_failures` failed AUTH attempts from one address within `window`, that address gets
/// no AUTH (and no connection) for `duration`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthLockout {
    pub max_failures: u32,
    pub window: Duration,
    pub duration: Duration,
}

impl Default for AuthLockout {
    fn default() -> Self {
        AuthLockout {
            max_failures: 5,
            window: Duration::from_secs(600),
            duration: Duration::from_secs(1800),
        }
    }
}

/// Inbound TLS on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerTls {
    /// Plain SMTP only.
    None,
    /// STARTTLS offered (RFC 3207).
    StartTls,
    /// TLS from the first byte (port 465, RFC 8314).
    Implicit,
}

/// The oldest TLS version a listener accepts. 1.0 and 1.1 exist for old devices only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls10,
    Tls11,
    Tls12,
    Tls13,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    /// Clients allowed to relay (IIS: Relay restrictions, "Only the list below").
    pub relay_from: Vec<IpNet>,
    /// Connect-time restrictions (IIS: Connection control). Empty `allow_from`: everyone may connect;
    /// `deny_from` wins over `allow_from`.
    pub allow_from: Vec<IpNet>,
    pub deny_from: Vec<IpNet>,
    pub tls: ListenerTls,
    /// PEM files; required unless `tls` is `None`. Re-read when they change.
    pub certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    pub min_tls: TlsVersion,
    /// Offer AUTH (PLAIN, LOGIN) against `[[user]]`s.
    pub auth: bool,
    /// Only authenticated clients may send (MAIL before AUTH gets `530 5.7.0`).
    pub require_auth: bool,
    /// Offer AUTH before TLS too (old devices on a trusted LAN); otherwise only after STARTTLS.
    pub allow_plaintext_auth: bool,
    /// Connections from one client address at the same time.
    pub max_connections_per_ip: usize,
    /// Messages in one connection (then `421`).
    pub max_messages_per_connection: usize,
    /// A whole session may last at most this long, however busy.
    pub session_timeout: Duration,
}

impl ListenerConfig {
    /// A plain SMTP listener with the defaults for everything but its address and relay list.
    pub fn plain(address: SocketAddr, relay_from: Vec<IpNet>) -> Self {
        ListenerConfig {
            address,
            relay_from,
            allow_from: Vec::new(),
            deny_from: Vec::new(),
            tls: ListenerTls::None,
            certificate: None,
            private_key: None,
            min_tls: TlsVersion::Tls12,
            auth: false,
            require_auth: false,
            allow_plaintext_auth: false,
            max_connections_per_ip: 50,
            max_messages_per_connection: 1000,
            session_timeout: Duration::from_secs(3600),
        }
    }

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
    /// The Microsoft 365 preset (`mode = ...`) the route was built from, if any.
    pub mode: Option<M365Mode>,
    /// What the upstream allows one mailbox (Microsoft counts per mailbox, not per recipient domain).
    pub limits: MailboxLimits,
    /// Sender rewriting (the fix for `5.7.60 SendAsDenied`).
    pub rewrite_sender: Option<SenderRewrite>,
    /// Recipients outside these domains are refused at RCPT (Direct Send reaches only the tenant's own
    /// domains). Empty: no restriction. Lower-case.
    pub accepted_domains: Vec<String>,
}

/// The Microsoft 365 presets of issue 4; each fills in endpoints and rules, all overridable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum M365Mode {
    /// smtp.office365.com:587, STARTTLS, authentication required.
    ClientSubmission,
    /// `<tenant>.mail.protection.outlook.com:25`, opportunistic TLS, no auth, own tenant only.
    DirectSend,
    /// The same MX endpoint, STARTTLS required, client certificate (inbound connector).
    Connector,
    /// High Volume Email: smtp.hve.mx.microsoft:587, STARTTLS, password or OAuth.
    Hve,
    /// Microsoft Graph sendMail.
    Graph,
}

/// A rate: `count` events per `per` (config: `"30/1m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    /// How long (ms) the relay counts a message against this rate: the window and a margin of
    /// 1 ms plus 0.2 % (2 ms for a second, 120 ms for a minute). The relay stamps a message when
    /// it reads the `250`, after the upstream counted it, but in whole milliseconds of its own
    /// clock; without the margin the next message could reach the upstream a fraction of a
    /// millisecond before the upstream's window let it (found: a `5/1s` test upstream refused one
    /// message in about ten runs, and one refusal pauses the mailbox for `throttle_backoff`).
    pub fn window_millis(&self) -> u64 {
        let window = self.per.as_millis() as u64;
        window + 1 + window / 500
    }
}

/// Limits per mailbox (per credential): kept by the relay so the upstream never has to refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxLimits {
    /// Messages (transactions) per window; `None`: unlimited. Microsoft: 30 per minute.
    pub message_rate: Option<Rate>,
    /// Recipients per window; `None`: unlimited. Microsoft: 10,000 per day.
    pub recipient_rate: Option<Rate>,
    /// Recipients in one transaction; more are split into several. Microsoft: 500.
    pub recipients_per_message: usize,
    /// After a throttling reply (`432 4.3.2`, `4.7.x`), wait this long before the mailbox sends again.
    pub throttle_backoff: Duration,
}

impl Default for MailboxLimits {
    fn default() -> Self {
        MailboxLimits {
            message_rate: None,
            recipient_rate: None,
            recipients_per_message: 500,
            throttle_backoff: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderRewrite {
    /// The address put in the envelope sender and the From header.
    pub address: String,
    /// Senders that pass unchanged (lower-case); empty: every sender is rewritten.
    pub allowed_senders: Vec<String>,
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
    /// Microsoft Graph `sendMail`.
    Graph(GraphRoute),
}

#[derive(Debug, Clone)]
pub struct GraphRoute {
    /// `https://graph.microsoft.com/v1.0` (overridable for national clouds and tests).
    pub base_url: String,
    /// The mailbox (user id or UPN) whose `sendMail` is called.
    pub mailbox: String,
    pub oauth: OAuthConfig,
    /// Extra trust anchors for the Graph and token endpoints.
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
    /// Graph allows 4 concurrent requests per app and mailbox.
    pub max_connections: usize,
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
    /// A client certificate presented in TLS (certificate connectors).
    pub client_cert: Option<ClientCert>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// PEM: the certificate and its chain.
    pub certificate: PathBuf,
    /// PEM: the private key.
    pub private_key: PathBuf,
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
    /// SASL XOAUTH2 with an OAuth 2.0 access token.
    XOAuth2,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub mechanism: AuthMechanism,
    /// The login; for XOAUTH2 the mailbox to send as (`user=`).
    pub username: String,
    pub credential: Credential,
}

impl AuthConfig {
    /// The password, for LOGIN and PLAIN.
    pub fn password(&self) -> Option<&Secret> {
        match &self.credential {
            Credential::Password(p) => Some(p),
            Credential::OAuth(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Credential {
    Password(Secret),
    OAuth(OAuthConfig),
}

/// How the relay gets OAuth 2.0 access tokens from Microsoft Entra ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthConfig {
    /// Tenant id or domain (`contoso.onmicrosoft.com`).
    pub tenant: String,
    pub client_id: String,
    pub grant: OAuthGrant,
    /// `https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token` unless overridden.
    pub token_endpoint: String,
    /// `https://outlook.office365.com/.default` for SMTP, `https://graph.microsoft.com/.default` for
    /// Graph, `https://outlook.office.com/SMTP.Send offline_access` for delegated SMTP.
    pub scope: String,
    /// Extra trust anchors for the token endpoint.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OAuthGrant {
    /// Client credentials with a client secret.
    ClientSecret(Secret),
    /// Client credentials with a certificate: a signed JWT client assertion (Microsoft's advice).
    ClientCertificate {
        certificate: PathBuf,
        private_key: PathBuf,
    },
    /// Delegated: a person signs in once with the device-code flow (`smarthost oauth login`); the
    /// refresh token is kept in `token_file` (mode 0600) and renewed.
    DeviceCode {
        device_endpoint: String,
        token_file: PathBuf,
    },
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
