//! `smarthost test upstream`: the connection to a route's upstream, one step at a time, each with
//! its time and a verdict (DNS, TCP, the banner, EHLO, TLS and the certificate, the OAuth token,
//! AUTH, MAIL FROM and RCPT TO; DATA only when asked). The SMTP client of the relay
//! (`deliver::smtp`) does the same in one go and reports only the first failure; here every step is
//! shown, and every FAIL names the likely cause and the fix (from `deliver::classify::explain`
//! when the upstream replied).
//!
//! Nothing is sent unless [`Options::send`]: the transaction is ended with RSET. The pieces are the
//! relay's own (the TLS roots and client certificate of `deliver::smtp::tls`, the wire and EHLO
//! parser of `deliver::smtp`, the token provider, the SASL encodings), so what passes here is what
//! the relay does. Certificates are verified exactly as the relay verifies them; the verifier is
//! only wrapped to remember the chain and why it failed, for the report.
//!
//! `check::doctor` runs [`test_route`] for every route.

use super::date;
use crate::config::{
    AuthMechanism, Config, Credential, DomainPattern, GraphRoute, M365Mode, RouteConfig, SmtpRoute,
    TlsMode, Transport,
};
use crate::deliver::classify::explain;
use crate::deliver::oauth::{OAuthError, TokenProvider};
use crate::deliver::smtp::setup::{Extensions, scrub};
use crate::deliver::smtp::tls;
use crate::deliver::smtp::wire::{Stream, Wire};
use crate::smtp::Reply;
use crate::smtp::sasl::{login_encode, plain_initial_response, xoauth2_initial_response};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;

/// A step's outcome. Ordered by gravity (a report's worst verdict is its maximum, SKIP aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Ok,
    Skip,
    Warn,
    Fail,
}

impl Verdict {
    /// How the advice of a finding with this verdict is labelled in the text reports.
    pub fn advice_label(self) -> &'static str {
        if self == Verdict::Fail { "fix" } else { "note" }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Ok => "OK",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
        })
    }
}

/// One step of the test.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    pub name: String,
    pub verdict: Verdict,
    #[serde(rename = "elapsed_ms", serialize_with = "as_millis")]
    pub elapsed: Duration,
    /// What was found (never a secret).
    pub detail: String,
    /// For WARN and FAIL: the likely cause and what to do.
    pub fix: Option<String>,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// The whole test of one route.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub route: String,
    /// `host:port` or the Graph URL.
    pub target: String,
    /// What the test checks, in a sentence.
    pub checks: String,
    pub steps: Vec<Step>,
}

impl Report {
    /// No step failed.
    pub fn passed(&self) -> bool {
        !self.steps.iter().any(|s| s.verdict == Verdict::Fail)
    }
}

/// What to test with.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The name given in EHLO (the relay's `hostname`).
    pub helo_name: String,
    /// The envelope sender; default: the route's `rewrite_sender`, its login, or a placeholder.
    pub from: Option<String>,
    /// The recipient; default: a placeholder at the route's domain.
    pub to: Option<String>,
    /// Send a small test message instead of ending with RSET.
    pub send: bool,
}

/// The route to test: `name`, or the default route (`domains = ["*"]`), or the only SMTP/Graph
/// route. The error says which routes there are.
pub fn select_route<'a>(config: &'a Config, name: Option<&str>) -> Result<&'a RouteConfig, String> {
    let names = || {
        config
            .routes
            .iter()
            .map(|r| format!("{:?}", r.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(name) = name {
        return config
            .routes
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| format!("no route {name:?} (routes: {})", names()));
    }
    let testable: Vec<&RouteConfig> = config
        .routes
        .iter()
        .filter(|r| !matches!(r.transport, Transport::Drop { .. }))
        .collect();
    if let [only] = testable.as_slice() {
        return Ok(only);
    }
    if let Some(default) = testable
        .iter()
        .find(|r| r.domains.contains(&DomainPattern::Any))
    {
        return Ok(default);
    }
    if testable.is_empty() {
        return Err(format!(
            "no SMTP or Graph route to test (routes: {}); give a configuration with --config",
            if config.routes.is_empty() {
                "none".to_string()
            } else {
                names()
            }
        ));
    }
    Err(format!(
        "several routes and no default one (domains = [\"*\"]): name one with --route ({})",
        names()
    ))
}

/// Runs the test of `route`. Never fails as a whole: what went wrong is in the steps.
pub async fn test_route(route: &RouteConfig, options: &Options) -> Report {
    match &route.transport {
        Transport::Smtp(smtp) => {
            let plan = smtp_plan(smtp, options.send);
            let mut run = Run::default();
            let mut session = SmtpTest {
                route,
                smtp,
                options,
                run: &mut run,
                wire: None,
                tls: false,
            };
            let _ = session.steps().await;
            if let Some(mut wire) = session.wire.take() {
                let _ = wire.write_all(b"QUIT\r\n").await;
                let _ = wire.read_reply().await;
                wire.shutdown().await;
            }
            Report {
                route: route.name.clone(),
                target: format!("{}:{}", smtp.host, smtp.port),
                checks: smtp_checks(route, smtp, options),
                steps: run.finish(&plan),
            }
        }
        Transport::Graph(graph) => {
            let mut run = Run::default();
            let _ = graph_steps(route, graph, options, &mut run).await;
            let mut plan = vec!["DNS", "OAuth token", "Graph reachability"];
            if options.send {
                plan.push("sendMail");
            }
            Report {
                route: route.name.clone(),
                target: graph.base_url.clone(),
                checks: format!(
                    "Microsoft Graph route (mailbox {}): DNS, an access token from Entra ID, and \
                     that Graph answers over HTTPS. Graph has no SMTP dialogue: {}",
                    graph.mailbox,
                    if options.send {
                        "a test message is sent with sendMail (the Mail.Send permission)."
                    } else {
                        "the Mail.Send permission is proven only by sending (--send --to ADDR)."
                    }
                ),
                steps: run.finish(&plan),
            }
        }
        Transport::Drop { path } => Report {
            route: route.name.clone(),
            target: path.display().to_string(),
            checks: "a drop route writes messages into a folder: there is no upstream to test"
                .into(),
            steps: vec![Step {
                name: "upstream".into(),
                verdict: Verdict::Skip,
                elapsed: Duration::ZERO,
                detail: format!(
                    "route {:?} drops messages into {}",
                    route.name,
                    path.display()
                ),
                fix: None,
            }],
        },
    }
}

/// The steps an SMTP route goes through, in order (those not reached are SKIPped).
fn smtp_plan(smtp: &SmtpRoute, send: bool) -> Vec<&'static str> {
    let mut plan = vec!["DNS", "TCP connect"];
    if smtp.tls == TlsMode::Implicit {
        plan.push("TLS");
    }
    plan.extend(["Banner", "EHLO"]);
    if matches!(smtp.tls, TlsMode::StartTls | TlsMode::Opportunistic) {
        plan.extend(["STARTTLS", "TLS", "EHLO after TLS"]);
    }
    if let Some(auth) = &smtp.auth {
        if auth.mechanism == AuthMechanism::XOAuth2 {
            plan.push("OAuth token");
        }
        plan.push("AUTH");
    }
    plan.extend(["MAIL FROM", "RCPT TO"]);
    plan.push(if send { "DATA" } else { "RSET" });
    plan
}

fn smtp_checks(route: &RouteConfig, smtp: &SmtpRoute, options: &Options) -> String {
    let tls = match smtp.tls {
        TlsMode::StartTls => "STARTTLS required",
        TlsMode::Implicit => "implicit TLS",
        TlsMode::Opportunistic => "STARTTLS when offered",
        TlsMode::None => "no TLS",
    };
    let auth = match &smtp.auth {
        Some(auth) => format!(
            ", AUTH {} as {}",
            mechanism_name(auth.mechanism),
            auth.username
        ),
        None => ", no AUTH".into(),
    };
    let mode = route
        .mode
        .map(|m| format!(" (mode {})", mode_name(m)))
        .unwrap_or_default();
    let what = if options.send {
        "a test message is sent (DATA)"
    } else {
        "nothing is sent: MAIL FROM and RCPT TO are tried, then RSET (--send --to ADDR sends a \
         test message)"
    };
    format!(
        "SMTP to {}:{}, {tls}{auth}{mode}; {what}",
        smtp.host, smtp.port
    )
}

fn mode_name(mode: M365Mode) -> &'static str {
    match mode {
        M365Mode::ClientSubmission => "m365-client-submission",
        M365Mode::DirectSend => "m365-direct-send",
        M365Mode::Connector => "m365-connector",
        M365Mode::Hve => "m365-hve",
        M365Mode::Graph => "m365-graph",
    }
}

fn mechanism_name(m: AuthMechanism) -> &'static str {
    match m {
        AuthMechanism::Login => "LOGIN",
        AuthMechanism::Plain => "PLAIN",
        AuthMechanism::XOAuth2 => "XOAUTH2",
    }
}

/// A FAIL was recorded: the steps after it are not run.
struct Stop;

/// The steps recorded so far.
#[derive(Default)]
struct Run {
    steps: Vec<Step>,
}

impl Run {
    fn record(
        &mut self,
        name: &str,
        since: Instant,
        verdict: Verdict,
        detail: impl Into<String>,
        fix: Option<String>,
    ) {
        self.steps.push(Step {
            name: name.into(),
            verdict,
            elapsed: since.elapsed(),
            detail: detail.into(),
            fix,
        });
    }

    fn ok(&mut self, name: &str, since: Instant, detail: impl Into<String>) {
        self.record(name, since, Verdict::Ok, detail, None);
    }

    fn warn(&mut self, name: &str, since: Instant, detail: impl Into<String>, fix: String) {
        self.record(name, since, Verdict::Warn, detail, Some(fix));
    }

    fn fail(&mut self, name: &str, since: Instant, detail: impl Into<String>, fix: String) -> Stop {
        self.record(name, since, Verdict::Fail, detail, Some(fix));
        Stop
    }

    /// The recorded steps in the plan's order, with the ones not reached SKIPped and saying why.
    fn finish(self, plan: &[&str]) -> Vec<Step> {
        let failed = self
            .steps
            .iter()
            .find(|s| s.verdict == Verdict::Fail)
            .map(|s| s.name.clone());
        let mut steps = self.steps;
        let mut out = Vec::new();
        for name in plan {
            let mut found = false;
            while let Some(pos) = steps.iter().position(|s| s.name == *name) {
                out.push(steps.remove(pos));
                found = true;
            }
            if !found {
                out.push(Step {
                    name: (*name).into(),
                    verdict: Verdict::Skip,
                    elapsed: Duration::ZERO,
                    detail: match &failed {
                        Some(f) => format!("not run: {f} failed"),
                        None => "not applicable".into(),
                    },
                    fix: None,
                });
            }
        }
        out.extend(steps);
        out
    }
}

/// Why a TCP connection failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// No answer within the connect timeout.
    Timeout(Duration),
    /// Connection refused (a reset to the SYN).
    Refused,
    /// Anything else (no route to host, network unreachable, ...).
    Other(String),
}

/// The detail and the fix for a connection that failed to `host:port`.
pub fn connect_advice(error: &ConnectError, host: &str, port: u16) -> (String, String) {
    match error {
        ConnectError::Timeout(after) => (
            format!(
                "no answer from {host}:{port} within {} (timed out)",
                humantime::format_duration(*after)
            ),
            format!(
                "a firewall or your ISP blocks port {port}: allow outgoing TCP to {host}:{port} \
                 in the firewall{}",
                if port == 25 {
                    " (many ISPs and cloud providers block outgoing port 25: ask them to open it, \
                     or use client submission on port 587)"
                } else {
                    ""
                }
            ),
        ),
        ConnectError::Refused => (
            format!("connection refused by {host}:{port}: nothing listens on port {port}"),
            format!(
                "check the route's host and port (is the SMTP service at {host} running and \
                 listening on {port}?)"
            ),
        ),
        ConnectError::Other(e) => (
            format!("cannot connect to {host}:{port}: {e}"),
            "check this machine's network connection and routing to the upstream".to_string(),
        ),
    }
}

/// What a Microsoft 365 banner looks like: `220 XX.outlook.office365.com Microsoft ESMTP MAIL
/// Service ready at ...` (and `*.mail.protection.outlook.com` for the MX endpoint).
pub fn looks_like_microsoft(banner: &str) -> bool {
    let text = banner.to_ascii_lowercase();
    text.contains("outlook.com")
        || text.contains("office365.com")
        || text.contains("microsoft esmtp mail service")
        || text.contains(".mx.microsoft")
}

struct SmtpTest<'a> {
    route: &'a RouteConfig,
    smtp: &'a SmtpRoute,
    options: &'a Options,
    run: &'a mut Run,
    wire: Option<Wire>,
    tls: bool,
}

impl SmtpTest<'_> {
    async fn steps(&mut self) -> Result<(), Stop> {
        let smtp = self.smtp;
        let addrs = self.dns().await?;
        let tcp = self.connect(&addrs).await?;
        let stream = if smtp.tls == TlsMode::Implicit {
            let tls = self.handshake(tcp).await?;
            self.tls = true;
            Stream::Tls(Box::new(tls))
        } else {
            Stream::Plain(tcp)
        };
        self.wire = Some(Wire::new(stream, smtp.command_timeout));
        self.banner().await?;
        let mut ext = self.ehlo("EHLO").await?;
        let starttls = matches!(smtp.tls, TlsMode::StartTls | TlsMode::Opportunistic);
        if starttls && self.starttls(&ext).await? {
            ext = self.ehlo("EHLO after TLS").await?;
        }
        if let Some(auth) = &smtp.auth {
            self.authenticate(auth, &ext).await?;
        }
        let sender = self.sender();
        self.command(
            "MAIL FROM",
            &format!("MAIL FROM:<{sender}>"),
            &format!("sender {sender}"),
        )
        .await?;
        self.rcpt().await?;
        if self.options.send {
            self.data(&sender).await?;
        } else {
            let t = Instant::now();
            let reply = self.exchange("RSET", "RSET", t).await?;
            self.run.ok(
                "RSET",
                t,
                format!(
                    "{}; nothing was sent (--send --to ADDR sends a test message)",
                    reply.one_line()
                ),
            );
        }
        Ok(())
    }

    async fn dns(&mut self) -> Result<Vec<SocketAddr>, Stop> {
        let (host, port) = (&self.smtp.host, self.smtp.port);
        let t = Instant::now();
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            self.run.ok("DNS", t, format!("{host} is an IP address"));
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let timeout = self.smtp.connect_timeout;
        let result =
            tokio::time::timeout(timeout, tokio::net::lookup_host((host.as_str(), port))).await;
        let fix = format!(
            "check the route's host ({host}) and this machine's DNS settings; `smarthost check mx \
             DOMAIN` shows a domain's Microsoft 365 endpoint"
        );
        match result {
            Ok(Ok(addrs)) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                if addrs.is_empty() {
                    return Err(self
                        .run
                        .fail("DNS", t, format!("{host}: no addresses"), fix));
                }
                let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
                self.run
                    .ok("DNS", t, format!("{host} → {}", list.join(", ")));
                Ok(addrs)
            }
            Ok(Err(e)) => Err(self
                .run
                .fail("DNS", t, format!("cannot resolve {host}: {e}"), fix)),
            Err(_) => Err(self.run.fail(
                "DNS",
                t,
                format!(
                    "cannot resolve {host}: no answer within {}",
                    humantime::format_duration(timeout)
                ),
                fix,
            )),
        }
    }

    async fn connect(&mut self, addrs: &[SocketAddr]) -> Result<TcpStream, Stop> {
        let t = Instant::now();
        let timeout = self.smtp.connect_timeout;
        let mut first_error = None;
        let mut tried = Vec::new();
        for addr in addrs {
            let error = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => {
                    let self_connect = matches!(
                        (tcp.local_addr(), tcp.peer_addr()),
                        (Ok(l), Ok(p)) if l == p
                    );
                    if !self_connect {
                        let _ = tcp.set_nodelay(true);
                        let mut detail = format!("connected to {addr}");
                        if !tried.is_empty() {
                            detail.push_str(&format!(" (after failing: {})", tried.join("; ")));
                        }
                        self.run.ok("TCP connect", t, detail);
                        return Ok(tcp);
                    }
                    ConnectError::Refused
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    ConnectError::Refused
                }
                Ok(Err(e)) => ConnectError::Other(e.to_string()),
                Err(_) => ConnectError::Timeout(timeout),
            };
            tried.push(format!(
                "{addr}: {}",
                connect_advice(&error, &addr.ip().to_string(), addr.port()).0
            ));
            first_error.get_or_insert(error);
        }
        let error = first_error.unwrap_or(ConnectError::Other("no address".into()));
        let (mut detail, fix) = connect_advice(&error, &self.smtp.host, self.smtp.port);
        if tried.len() > 1 {
            detail = format!(
                "{detail} (all {} addresses: {})",
                tried.len(),
                tried.join("; ")
            );
        }
        Err(self.run.fail("TCP connect", t, detail, fix))
    }

    /// The TLS handshake, verified as the relay verifies; the step reports the certificate.
    async fn handshake(
        &mut self,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Stop> {
        let t = Instant::now();
        let host = self.smtp.host.clone();
        let config = match recording_config(self.smtp) {
            Ok(c) => c,
            Err(e) => {
                return Err(self.run.fail(
                    "TLS",
                    t,
                    format!("{e:#}"),
                    "fix the route's ca_file / client_certificate (see the message)".into(),
                ));
            }
        };
        let (config, seen) = config;
        let name = match ServerName::try_from(host.clone()) {
            Ok(n) => n,
            Err(e) => {
                return Err(self.run.fail(
                    "TLS",
                    t,
                    format!("{host:?} is not a valid TLS server name: {e}"),
                    "set host to the upstream's DNS name".into(),
                ));
            }
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        let result =
            tokio::time::timeout(self.smtp.command_timeout, connector.connect(name, tcp)).await;
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).take();
        let now = SystemTime::now();
        let cert = seen
            .as_ref()
            .and_then(|s| s.chain.first())
            .and_then(|der| describe_certificate(der, now));
        let cert_text = cert
            .as_ref()
            .map(|c| c.text.clone())
            .unwrap_or_else(|| "no certificate received".into());
        match result {
            Ok(Ok(tls)) => {
                let (_, session) = tls.get_ref();
                let (version, cipher) = crate::deliver::smtp::tls::negotiated(session);
                let detail = format!("{version}, {cipher}; {cert_text}; chain: verified");
                match cert.as_ref().map(|c| c.days_left) {
                    Some(days) if days < 14 => self.run.warn(
                        "TLS",
                        t,
                        detail,
                        format!(
                            "the upstream's certificate expires in {days} days: its administrator \
                             must renew it"
                        ),
                    ),
                    _ => self.run.ok("TLS", t, detail),
                }
                Ok(tls)
            }
            Ok(Err(e)) => {
                let chain_error = seen.and_then(|s| s.result.err());
                let (why, fix) = match &chain_error {
                    Some(err) => chain_advice(err, &host, cert.as_ref(), self.smtp),
                    None => (
                        format!("handshake failed: {e}"),
                        "the upstream and smarthost share no TLS version or cipher (TLS 1.2+ is \
                         needed), or something on the path breaks TLS"
                            .to_string(),
                    ),
                };
                let detail = if chain_error.is_some() {
                    format!("{cert_text}; chain: not verified: {why}")
                } else {
                    why
                };
                Err(self.run.fail("TLS", t, detail, fix))
            }
            Err(_) => Err(self.run.fail(
                "TLS",
                t,
                format!(
                    "no TLS handshake within {}",
                    humantime::format_duration(self.smtp.command_timeout)
                ),
                "the upstream accepted the connection but does not speak TLS there: check the \
                 port and the route's tls setting (implicit TLS is usually port 465)"
                    .into(),
            )),
        }
    }

    fn wire(&mut self) -> &mut Wire {
        self.wire.as_mut().expect("connected")
    }

    /// Sends `line` (what may be shown) and reads the reply; a lost connection is a FAIL.
    async fn exchange(&mut self, name: &str, line: &str, t: Instant) -> Result<Reply, Stop> {
        let sent = self
            .wire()
            .write_all(format!("{line}\r\n").as_bytes())
            .await;
        let result = match sent {
            Ok(()) => self.wire().read_reply().await,
            Err(e) => Err(e),
        };
        result.map_err(|e| {
            self.run.fail(
                name,
                t,
                format!("no reply: {e}"),
                "the upstream closed the connection or stopped answering: something on the path \
                 (firewall SMTP inspection, a proxy) may interfere, or the upstream is overloaded"
                    .into(),
            )
        })
    }

    async fn banner(&mut self) -> Result<(), Stop> {
        let t = Instant::now();
        let greeting = match self.wire().read_reply().await {
            Ok(r) => r,
            Err(e) => {
                return Err(self.run.fail(
                    "Banner",
                    t,
                    format!("no greeting: {e}"),
                    "the port accepts connections but does not speak SMTP: check the port and \
                     the route's tls setting (465 is implicit TLS, 587 and 25 STARTTLS)"
                        .into(),
                ));
            }
        };
        let text = greeting.one_line();
        if greeting.code != 220 {
            let fix = explain(&greeting)
                .map(str::to_string)
                .unwrap_or_else(|| "the upstream refuses service to this machine for now".into());
            return Err(self.run.fail("Banner", t, text, fix));
        }
        let m365 = self.route.mode.is_some_and(|m| m != M365Mode::Graph);
        if m365 && !looks_like_microsoft(&text) {
            self.run.warn(
                "Banner",
                t,
                format!("{text} (not Microsoft 365's banner: \"... Microsoft ESMTP MAIL Service ready ...\" from *.outlook.com)"),
                "something between you and Microsoft intercepts SMTP (antivirus, firewall SMTP \
                 inspection): turn SMTP scanning off for this host, or check that the route's host \
                 is Microsoft 365"
                    .into(),
            );
        } else {
            self.run.ok("Banner", t, text);
        }
        Ok(())
    }

    async fn ehlo(&mut self, name: &str) -> Result<Extensions, Stop> {
        let t = Instant::now();
        let helo = self.options.helo_name.clone();
        let reply = self.exchange(name, &format!("EHLO {helo}"), t).await?;
        if reply.code != 250 {
            let fix = explain(&reply).map(str::to_string).unwrap_or_else(|| {
                "the upstream refused EHLO: it may refuse the name this relay gives (hostname in \
                 the configuration) or not speak ESMTP"
                    .into()
            });
            return Err(self.run.fail(name, t, reply.one_line(), fix));
        }
        let ext = Extensions::from_ehlo(&reply);
        let caps: Vec<&str> = reply.lines.iter().skip(1).map(|l| l.trim()).collect();
        let detail = format!(
            "{}; capabilities: {}",
            reply.lines.first().map(|s| s.trim()).unwrap_or(""),
            if caps.is_empty() {
                "(none)".into()
            } else {
                caps.join(", ")
            }
        );
        if name == "EHLO" && self.smtp.tls == TlsMode::StartTls && !ext.starttls {
            let fix = format!(
                "the route requires STARTTLS (tls = \"starttls\") and the upstream did not offer \
                 it, so nothing is sent in clear. {}Usually a firewall's SMTP inspection (\"ESMTP \
                 inspection\", \"fixup smtp\") or an antivirus removes STARTTLS from the reply: \
                 turn it off for this host; otherwise the server has no TLS certificate \
                 configured",
                if self.route.mode.is_some() {
                    "Microsoft 365 always offers STARTTLS. "
                } else {
                    ""
                }
            );
            return Err(self
                .run
                .fail(name, t, format!("{detail}; STARTTLS not offered"), fix));
        }
        if let Some(auth) = &self.smtp.auth
            && (self.tls || self.smtp.tls == TlsMode::None)
        {
            let wanted = mechanism_name(auth.mechanism);
            if !ext.auth.iter().any(|m| m == wanted) {
                self.run.warn(
                    name,
                    t,
                    detail,
                    format!(
                        "AUTH {wanted} is not advertised (offered: {}): the AUTH step will try it \
                         anyway; if it fails, set the route's mechanism to one offered",
                        if ext.auth.is_empty() {
                            "none".to_string()
                        } else {
                            ext.auth.join(" ")
                        }
                    ),
                );
                return Ok(ext);
            }
        }
        self.run.ok(name, t, detail);
        Ok(ext)
    }

    /// STARTTLS and the handshake; `false`: opportunistic TLS not offered or declined.
    async fn starttls(&mut self, ext: &Extensions) -> Result<bool, Stop> {
        let t = Instant::now();
        let required = self.smtp.tls == TlsMode::StartTls;
        if !ext.starttls {
            self.run.warn(
                "STARTTLS",
                t,
                "not offered: mail to this upstream goes unencrypted",
                "tls = \"opportunistic\" goes on without TLS; if the upstream should have TLS, \
                 something on the path (firewall SMTP inspection) may remove STARTTLS"
                    .into(),
            );
            return Ok(false);
        }
        let reply = self.exchange("STARTTLS", "STARTTLS", t).await?;
        if reply.code != 220 {
            let fix = explain(&reply).map(str::to_string).unwrap_or_else(|| {
                "the upstream offered STARTTLS but refused it: a problem at the upstream".into()
            });
            if required {
                return Err(self.run.fail("STARTTLS", t, reply.one_line(), fix));
            }
            self.run.warn("STARTTLS", t, reply.one_line(), fix);
            return Ok(false);
        }
        self.run.ok("STARTTLS", t, reply.one_line());
        let wire = self.wire.take().expect("connected");
        let tcp = match wire.into_tcp_for_tls() {
            Ok(tcp) => tcp,
            Err(e) => {
                return Err(self.run.fail(
                    "TLS",
                    t,
                    e.to_string(),
                    "refused for safety (STARTTLS injection): something on the path injects data"
                        .into(),
                ));
            }
        };
        let tls = self.handshake(tcp).await?;
        self.tls = true;
        self.wire = Some(Wire::new(
            Stream::Tls(Box::new(tls)),
            self.smtp.command_timeout,
        ));
        Ok(true)
    }

    async fn authenticate(
        &mut self,
        auth: &crate::config::AuthConfig,
        ext: &Extensions,
    ) -> Result<(), Stop> {
        let name = mechanism_name(auth.mechanism);
        let token = if auth.mechanism == AuthMechanism::XOAuth2 {
            Some(self.token(auth).await?)
        } else {
            None
        };
        let t = Instant::now();
        if !self.tls && self.smtp.tls != TlsMode::None {
            return Err(self.run.fail(
                "AUTH",
                t,
                "not attempted: the connection is not encrypted, and credentials are sent only \
                 over TLS",
                "the upstream did not negotiate TLS; plaintext AUTH needs tls = \"none\" on the \
                 route (only on a trusted network)"
                    .into(),
            ));
        }
        let user = auth.username.clone();
        let (lines, secrets): (Vec<String>, Vec<String>) = match (auth.mechanism, &token) {
            (AuthMechanism::XOAuth2, Some(token)) => {
                let initial = xoauth2_initial_response(&user, token.expose());
                (
                    vec![format!("AUTH XOAUTH2 {initial}")],
                    vec![initial, token.expose().to_string()],
                )
            }
            (_, _) => {
                let Some(password) = auth.password().map(|p| p.expose().to_string()) else {
                    return Err(self.run.fail(
                        "AUTH",
                        t,
                        format!(
                            "AUTH {name} needs a password, but the route has OAuth 2.0 credentials"
                        ),
                        "use mechanism = \"xoauth2\" with [route.oauth]".into(),
                    ));
                };
                if auth.mechanism == AuthMechanism::Login {
                    let encoded = login_encode(&password);
                    (
                        vec!["AUTH LOGIN".into(), login_encode(&user), encoded.clone()],
                        vec![encoded, password],
                    )
                } else {
                    let initial = plain_initial_response("", &user, &password);
                    (
                        vec![format!("AUTH PLAIN {initial}")],
                        vec![initial, password],
                    )
                }
            }
        };
        let advertised = ext.auth.iter().any(|m| m == name);
        let last = lines.len() - 1;
        let mut reply = Reply::new(0, "");
        for (i, line) in lines.iter().enumerate() {
            reply = self.exchange("AUTH", line, t).await?;
            scrub(&mut reply, &secrets);
            if reply.code == 334 && i < last {
                continue;
            }
            if reply.code == 334 && auth.mechanism == AuthMechanism::XOAuth2 {
                // The error challenge: an empty line gets the final reply.
                reply = self.exchange("AUTH", "", t).await?;
                scrub(&mut reply, &secrets);
            } else if reply.code == 334 {
                let _ = self.exchange("AUTH", "*", t).await?;
            }
            break;
        }
        let shown = format!("AUTH {name} as {user}: {}", reply.one_line());
        if reply.is_positive() {
            self.run.ok("AUTH", t, shown);
            return Ok(());
        }
        let fix = match explain(&reply) {
            Some(meaning) => meaning.to_string(),
            None if auth.mechanism == AuthMechanism::XOAuth2 => format!(
                "the access token was refused: check the app's permission (SMTP.SendAsApp with \
                 admin consent) and its access to the mailbox {user}"
            ),
            None => "authentication failed: check the route's username and password \
                     (password_env / password_file)"
                .to_string(),
        };
        let fix = if advertised {
            fix
        } else {
            format!(
                "{fix} (note: the upstream did not advertise AUTH {name}; offered: {})",
                if ext.auth.is_empty() {
                    "none".to_string()
                } else {
                    ext.auth.join(" ")
                }
            )
        };
        Err(self.run.fail("AUTH", t, shown, fix))
    }

    async fn token(
        &mut self,
        auth: &crate::config::AuthConfig,
    ) -> Result<crate::config::Secret, Stop> {
        let t = Instant::now();
        let Credential::OAuth(oauth) = &auth.credential else {
            return Err(self.run.fail(
                "OAuth token",
                t,
                "AUTH XOAUTH2 needs OAuth 2.0 credentials, but the route has a password",
                "add [route.oauth] (tenant, client_id, a secret or certificate)".into(),
            ));
        };
        let oauth = oauth.clone();
        fetch_token(self.run, t, &oauth).await
    }

    fn sender(&self) -> String {
        sender_for(self.route, self.options)
    }

    async fn command(&mut self, name: &str, line: &str, what: &str) -> Result<Reply, Stop> {
        let t = Instant::now();
        let reply = self.exchange(name, line, t).await?;
        if reply.is_positive() {
            self.run
                .ok(name, t, format!("{what}: {}", reply.one_line()));
            return Ok(reply);
        }
        let fix = explain(&reply).map(str::to_string).unwrap_or_else(|| {
            format!(
                "the upstream refused the {}: use --from with an address it accepts (for \
                 Microsoft 365: the signed-in mailbox, or one it may Send As; for Direct Send an \
                 address of the tenant's domains)",
                if name == "MAIL FROM" {
                    "sender"
                } else {
                    "command"
                }
            )
        });
        Err(self
            .run
            .fail(name, t, format!("{what}: {}", reply.one_line()), fix))
    }

    async fn rcpt(&mut self) -> Result<(), Stop> {
        let t = Instant::now();
        let (recipient, placeholder) = match &self.options.to {
            Some(to) => (to.clone(), false),
            None => (placeholder_recipient(self.route, &self.sender()), true),
        };
        let reply = self
            .exchange("RCPT TO", &format!("RCPT TO:<{recipient}>"), t)
            .await?;
        let what = format!(
            "recipient {recipient}{}",
            if placeholder { " (a placeholder)" } else { "" }
        );
        if reply.is_positive() {
            self.run
                .ok("RCPT TO", t, format!("{what}: {}", reply.one_line()));
            return Ok(());
        }
        let unknown = reply
            .enhanced()
            .is_some_and(|e| e.class == 5 && (e.subject == 1 || (e.subject, e.detail) == (4, 1)));
        if placeholder && unknown {
            self.run.warn(
                "RCPT TO",
                t,
                format!("{what}: {}", reply.one_line()),
                "the placeholder address does not exist at the upstream (that is expected): give \
                 a real recipient with --to ADDR to test the whole path"
                    .into(),
            );
            return Ok(());
        }
        let fix = explain(&reply).map(str::to_string).unwrap_or_else(|| {
            "the upstream refuses this recipient: check the address, or whether the route may \
             send to its domain (Direct Send reaches only the tenant's own domains)"
                .into()
        });
        Err(self
            .run
            .fail("RCPT TO", t, format!("{what}: {}", reply.one_line()), fix))
    }

    async fn data(&mut self, sender: &str) -> Result<(), Stop> {
        let t = Instant::now();
        let reply = self.exchange("DATA", "DATA", t).await?;
        if reply.code != 354 {
            let fix = explain(&reply)
                .map(str::to_string)
                .unwrap_or_else(|| "the upstream refused DATA".into());
            return Err(self.run.fail("DATA", t, reply.one_line(), fix));
        }
        let to = self.options.to.clone().unwrap_or_default();
        let content = test_message(sender, &to, &self.options.helo_name, &self.route.name);
        let mut wire_form = Vec::new();
        crate::smtp::data::dot_stuff(&content, &mut wire_form);
        wire_form.extend_from_slice(b".\r\n");
        if let Err(e) = self.wire().write_all(&wire_form).await {
            return Err(self.run.fail(
                "DATA",
                t,
                format!("sending the message failed: {e}"),
                "the upstream closed the connection during the message".into(),
            ));
        }
        let reply = match self.wire().read_reply().await {
            Ok(r) => r,
            Err(e) => {
                return Err(self.run.fail(
                    "DATA",
                    t,
                    format!("no reply after the message: {e}"),
                    "the message may or may not have been accepted: look in the recipient's \
                     mailbox"
                        .into(),
                ));
            }
        };
        if reply.is_positive() {
            let id = queue_id(&reply)
                .map(|id| format!("; the upstream's queue id: {id}"))
                .unwrap_or_default();
            self.run.ok(
                "DATA",
                t,
                format!("test message to {to} accepted: {}{id}", reply.one_line()),
            );
            return Ok(());
        }
        let fix = explain(&reply)
            .map(str::to_string)
            .unwrap_or_else(|| "the upstream refused the test message".into());
        Err(self.run.fail("DATA", t, reply.one_line(), fix))
    }
}

/// An access token from the route's credentials; the step shows its lifetime, never its value.
async fn fetch_token(
    run: &mut Run,
    t: Instant,
    oauth: &crate::config::OAuthConfig,
) -> Result<crate::config::Secret, Stop> {
    let provider = match TokenProvider::new(oauth) {
        Ok(p) => p,
        Err(e) => {
            return Err(run.fail(
                "OAuth token",
                t,
                format!("{e:#}"),
                "fix the credential files of [route.oauth] named in the message".into(),
            ));
        }
    };
    match provider.access_token().await {
        Ok(token) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let minutes = token.expires_at.saturating_sub(now) / 60;
            run.ok(
                "OAuth token",
                t,
                format!(
                    "access token for client {} from {} (scope {}), valid for {minutes} min",
                    oauth.client_id, oauth.token_endpoint, oauth.scope
                ),
            );
            Ok(token.value)
        }
        Err(e) => {
            let fix = match &e {
                OAuthError::Refused { .. } => "Entra ID refused the credentials: check tenant, \
                     client_id and the client secret or certificate in [route.oauth] (a secret \
                     may have expired: make a new one in the app registration)"
                    .to_string(),
                OAuthError::NotSignedIn(_) => format!(
                    "nobody has signed in for this route: {}",
                    crate::deliver::oauth::LOGIN_ADVICE
                ),
                OAuthError::Failed(_) => "the token endpoint was not reached or its answer \
                     was unusable: check the network path to login.microsoftonline.com (a proxy, \
                     the firewall) and the credential files"
                    .to_string(),
            };
            Err(run.fail("OAuth token", t, e.to_string(), fix))
        }
    }
}

/// The envelope sender of the test: `--from`, the route's `rewrite_sender`, its login (when an
/// address), the Graph mailbox, or `postmaster@` the route's domain.
pub fn sender_for(route: &RouteConfig, options: &Options) -> String {
    if let Some(from) = &options.from {
        return from.clone();
    }
    if let Some(rewrite) = &route.rewrite_sender {
        return rewrite.address.clone();
    }
    match &route.transport {
        Transport::Smtp(smtp) => {
            if let Some(auth) = &smtp.auth
                && auth.username.contains('@')
            {
                return auth.username.clone();
            }
        }
        Transport::Graph(graph) if graph.mailbox.contains('@') => return graph.mailbox.clone(),
        _ => {}
    }
    format!(
        "postmaster@{}",
        route_domain(route).unwrap_or_else(|| options.helo_name.clone())
    )
}

/// The route's own domain: its first accepted domain, or its first named recipient domain.
fn route_domain(route: &RouteConfig) -> Option<String> {
    route.accepted_domains.first().cloned().or_else(|| {
        route.domains.iter().find_map(|d| match d {
            DomainPattern::Exact(d) | DomainPattern::Subdomains(d) => Some(d.clone()),
            DomainPattern::Any => None,
        })
    })
}

/// A recipient that names the test: at the route's domain, or the sender's.
pub fn placeholder_recipient(route: &RouteConfig, sender: &str) -> String {
    let domain = route_domain(route)
        .or_else(|| sender.rsplit_once('@').map(|(_, d)| d.to_string()))
        .unwrap_or_else(|| "example.com".into());
    format!("smarthost-test@{domain}")
}

/// The test message: plain text, saying where it came from.
fn test_message(from: &str, to: &str, host: &str, route: &str) -> Vec<u8> {
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: smarthost test message\r\nDate: {date}\r\n\
         Message-ID: <test.{nanos}@{host}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n\
         This is a test message from `smarthost test upstream --send` on {host},\r\n\
         sent through the route \"{route}\". No action is needed.\r\n"
    )
    .into_bytes()
}

/// The upstream's id for an accepted message: `queued as X`, or Exchange's `<...>` message id and
/// `[InternalId=...]`.
pub fn queue_id(reply: &Reply) -> Option<String> {
    let text = reply.lines.join(" ");
    let lower = text.to_ascii_lowercase();
    if let Some(pos) = lower.find("queued as ") {
        let rest = &text[pos + "queued as ".len()..];
        return rest.split_whitespace().next().map(str::to_string);
    }
    if let Some(pos) = text.find("InternalId=") {
        let rest = &text[pos + "InternalId=".len()..];
        return Some(
            rest.split([',', ']', ' '])
                .next()
                .unwrap_or_default()
                .to_string(),
        );
    }
    let start = text.find('<')?;
    let end = text[start..].find('>')?;
    Some(text[start..start + end + 1].to_string())
}

/// What the report says about the server's certificate.
struct CertSummary {
    text: String,
    days_left: i64,
    not_after: String,
    sans: Vec<String>,
}

fn describe_certificate(der: &CertificateDer<'_>, now: SystemTime) -> Option<CertSummary> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let not_after_ts = cert.validity().not_after.timestamp();
    let days_left = (not_after_ts - now).div_euclid(86_400);
    let not_after = date(not_after_ts);
    let mut sans = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => sans.push(d.to_string()),
                GeneralName::IPAddress(ip) if ip.len() == 4 => {
                    sans.push(format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3]))
                }
                GeneralName::IPAddress(ip) if ip.len() == 16 => {
                    let octets: [u8; 16] = (*ip).try_into().unwrap_or([0; 16]);
                    sans.push(std::net::Ipv6Addr::from(octets).to_string())
                }
                _ => {}
            }
        }
    }
    let left = match days_left {
        d if d < 0 => format!("expired {} days ago", -d),
        0 => "less than a day left".into(),
        1 => "1 day left".into(),
        d => format!("{d} days left"),
    };
    let text = format!(
        "certificate: subject {}, issuer {}, not after {not_after} ({left})",
        cert.subject(),
        cert.issuer()
    );
    Some(CertSummary {
        text,
        days_left,
        not_after,
        sans,
    })
}

/// Why the chain was not verified, and what to do: (the verdict, the fix).
fn chain_advice(
    error: &rustls::Error,
    host: &str,
    cert: Option<&CertSummary>,
    smtp: &SmtpRoute,
) -> (String, String) {
    let kind = match error {
        rustls::Error::InvalidCertificate(e) => format!("{e:?}"),
        other => format!("{other:?}"),
    };
    let intercept = "if the upstream is Microsoft 365 or a public server, something between you \
                     and it intercepts TLS (antivirus, firewall TLS/SMTP inspection): exclude \
                     this host from inspection";
    if kind.starts_with("Expired") {
        let when = cert
            .map(|c| format!(" on {}", c.not_after))
            .unwrap_or_default();
        return (
            format!("expired{when}"),
            format!(
                "the upstream's certificate has expired: its administrator must renew it; {intercept}"
            ),
        );
    }
    if kind.starts_with("NotValidYet") {
        return (
            "not valid yet".into(),
            "check this machine's clock (and the upstream's certificate dates)".into(),
        );
    }
    if kind.starts_with("UnknownIssuer") {
        return (
            "unknown issuer (the certificate does not chain to a trusted CA)".into(),
            match &smtp.ca_file {
                Some(ca) => format!(
                    "the CA that signed it is neither a system CA nor in ca_file {}: add it there; \
                     {intercept}",
                    ca.display()
                ),
                None => format!(
                    "for a private CA, add its certificate with ca_file = \"/path/ca.pem\" in the \
                     route; {intercept}"
                ),
            },
        );
    }
    if kind.starts_with("NotValidForName") {
        let names = cert
            .map(|c| c.sans.join(", "))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "none".into());
        return (
            format!("name mismatch: the certificate is not for {host} (it names: {names})"),
            format!(
                "set the route's host to a name the certificate covers ({names}), not an IP \
                 address or alias; {intercept}"
            ),
        );
    }
    if kind.starts_with("Revoked") {
        return (
            "revoked".into(),
            "the upstream's certificate was revoked: its administrator must replace it".into(),
        );
    }
    (
        format!("{error}"),
        format!("the certificate chain could not be verified; {intercept}"),
    )
}

/// What the verifier saw: the chain presented and its verdict.
struct Seen {
    chain: Vec<CertificateDer<'static>>,
    result: Result<(), rustls::Error>,
}

type SeenSlot = Arc<Mutex<Option<Seen>>>;

/// The relay's verifier (web PKI over the route's roots), remembering what it was shown.
#[derive(Debug)]
struct Recording {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    seen: SeenSlot,
}

impl fmt::Debug for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Seen")
            .field("certificates", &self.chain.len())
            .field("result", &self.result)
            .finish()
    }
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(Seen {
            chain,
            result: result.as_ref().map(|_| ()).map_err(Clone::clone),
        });
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The route's TLS client configuration with the recording verifier.
fn recording_config(smtp: &SmtpRoute) -> anyhow::Result<(Arc<rustls::ClientConfig>, SeenSlot)> {
    let base = tls::client_config_with_cert(smtp.ca_file.as_deref(), smtp.client_cert.as_ref())?;
    let roots = tls::root_store(smtp.ca_file.as_deref())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()?;
    let seen: SeenSlot = Arc::new(Mutex::new(None));
    let mut config = (*base).clone();
    config
        .dangerous()
        .set_certificate_verifier(Arc::new(Recording {
            inner,
            seen: Arc::clone(&seen),
        }));
    Ok((Arc::new(config), seen))
}

async fn graph_steps(
    route: &RouteConfig,
    graph: &GraphRoute,
    options: &Options,
    run: &mut Run,
) -> Result<(), Stop> {
    let t = Instant::now();
    let url = match reqwest::Url::parse(&graph.base_url) {
        Ok(u) => u,
        Err(e) => {
            return Err(run.fail(
                "DNS",
                t,
                format!("{} is not a URL: {e}", graph.base_url),
                "fix graph_base_url".into(),
            ));
        }
    };
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    if host.parse::<std::net::IpAddr>().is_ok() {
        run.ok("DNS", t, format!("{host} is an IP address"));
    } else {
        match tokio::time::timeout(
            graph.timeout,
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(addrs)) => {
                let list: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
                run.ok("DNS", t, format!("{host} → {}", list.join(", ")));
            }
            Ok(Err(e)) => {
                return Err(run.fail(
                    "DNS",
                    t,
                    format!("cannot resolve {host}: {e}"),
                    "check this machine's DNS settings".into(),
                ));
            }
            Err(_) => {
                return Err(run.fail(
                    "DNS",
                    t,
                    format!("cannot resolve {host}: no answer"),
                    "check this machine's DNS settings".into(),
                ));
            }
        }
    }
    let t = Instant::now();
    let mut oauth = graph.oauth.clone();
    if oauth.ca_file.is_none() {
        oauth.ca_file = graph.ca_file.clone();
    }
    let token = fetch_token(run, t, &oauth).await?;
    let t = Instant::now();
    let client = match graph_client(graph) {
        Ok(c) => c,
        Err(e) => {
            return Err(run.fail(
                "Graph reachability",
                t,
                format!("{e:#}"),
                "fix the route's ca_file".into(),
            ));
        }
    };
    let probe = format!("{}/", graph.base_url.trim_end_matches('/'));
    match client.get(&probe).bearer_auth(token.expose()).send().await {
        Ok(response) => run.ok(
            "Graph reachability",
            t,
            format!(
                "{probe} answered HTTP {} over HTTPS",
                response.status().as_u16()
            ),
        ),
        Err(e) => {
            return Err(run.fail(
                "Graph reachability",
                t,
                format!("{probe}: {e}"),
                "HTTPS to Microsoft Graph is blocked or intercepted: allow graph.microsoft.com:443 \
                 through the firewall/proxy"
                    .into(),
            ));
        }
    }
    if options.send {
        let t = Instant::now();
        let Some(to) = options.to.clone() else {
            return Err(run.fail(
                "sendMail",
                t,
                "no recipient",
                "give one with --to ADDR".into(),
            ));
        };
        let transport = match crate::deliver::graph::GraphTransport::new(graph) {
            Ok(tr) => tr,
            Err(e) => {
                return Err(run.fail("sendMail", t, format!("{e:#}"), "see the message".into()));
            }
        };
        let sender = sender_for(route, options);
        let content = test_message(&sender, &to, &options.helo_name, &route.name);
        let recipients = vec![to.clone()];
        let msg = crate::deliver::OutboundMessage {
            queue_id: "smarthost-test",
            sender: &sender,
            recipients: &recipients,
            content: &content,
            smtputf8: false,
            eight_bit: false,
        };
        match transport.deliver(&msg).await.into_iter().next() {
            Some(crate::deliver::RecipientResult::Delivered { reply }) => run.ok(
                "sendMail",
                t,
                format!("test message to {to} accepted: {reply}"),
            ),
            Some(
                crate::deliver::RecipientResult::Deferred { reason }
                | crate::deliver::RecipientResult::Failed { reason },
            ) => {
                return Err(run.fail(
                    "sendMail",
                    t,
                    reason,
                    "the app needs the Mail.Send application permission with admin consent, \
                     and access to the mailbox (an application access policy may restrict it)"
                        .into(),
                ));
            }
            None => {}
        }
    }
    Ok(())
}

fn graph_client(graph: &GraphRoute) -> anyhow::Result<reqwest::Client> {
    use anyhow::Context;
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .min_tls_version(reqwest::tls::Version::TLS_1_2)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(graph.timeout)
        .timeout(graph.timeout);
    if let Some(path) = &graph.ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read ca_file {}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("ca_file {} is not valid PEM", path.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder.build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_timeout_blames_a_firewall_and_refused_says_nothing_listens() {
        let (detail, fix) = connect_advice(
            &ConnectError::Timeout(Duration::from_secs(5)),
            "smtp.office365.com",
            587,
        );
        assert!(
            detail.contains("timed out") && detail.contains("5s"),
            "{detail}"
        );
        assert!(
            fix.contains("a firewall or your ISP blocks port 587"),
            "{fix}"
        );
        let (_, fix) = connect_advice(
            &ConnectError::Timeout(Duration::from_secs(5)),
            "contoso-com.mail.protection.outlook.com",
            25,
        );
        assert!(fix.contains("block outgoing port 25"), "{fix}");
        let (detail, _) = connect_advice(&ConnectError::Refused, "10.0.0.7", 25);
        assert!(
            detail.contains("refused") && detail.contains("nothing listens on port 25"),
            "{detail}"
        );
    }

    #[test]
    fn microsoft_banners_are_recognised() {
        assert!(looks_like_microsoft(
            "220 BN9PR03CA0123.outlook.office365.com Microsoft ESMTP MAIL Service ready at Sun, 29 Nov 2026"
        ));
        assert!(looks_like_microsoft(
            "220 AM4PEPF00027A5F.mail.protection.outlook.com Microsoft ESMTP MAIL Service ready"
        ));
        assert!(!looks_like_microsoft(
            "220 mail.contoso.local ESMTP Postfix"
        ));
        assert!(!looks_like_microsoft(
            "220 ********************************"
        ));
    }

    #[test]
    fn queue_ids_are_found_in_replies() {
        let r = Reply::new(250, "2.0.0 OK queued as 4F2A1");
        assert_eq!(queue_id(&r).as_deref(), Some("4F2A1"));
        let r = Reply::new(
            250,
            "2.0.0 OK <abc@host> [Hostname=BN9PR03MB1234.namprd03.prod.outlook.com]",
        );
        assert_eq!(queue_id(&r).as_deref(), Some("<abc@host>"));
        let r = Reply::new(
            250,
            "2.0.0 OK [InternalId=12345, Hostname=BN9PR03MB1234.namprd03.prod.outlook.com]",
        );
        assert_eq!(queue_id(&r).as_deref(), Some("12345"));
        assert_eq!(queue_id(&Reply::new(250, "2.0.0 OK")), None);
    }

    #[test]
    fn steps_after_a_failure_are_skipped_with_the_reason() {
        let mut run = Run::default();
        let t = Instant::now();
        run.ok("DNS", t, "x");
        let _ = run.fail("TCP connect", t, "refused", "fix".into());
        let steps = run.finish(&["DNS", "TCP connect", "Banner"]);
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[2].verdict, Verdict::Skip);
        assert_eq!(steps[2].detail, "not run: TCP connect failed");
    }
}
