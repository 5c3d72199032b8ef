//! A scriptable upstream SMTP server for integration tests: it plays Microsoft 365 (or any smarthost)
//! on 127.0.0.1 and records what the relay delivered to it.
//!
//! ```ignore
//! let up = Upstream::start(UpstreamConfig::default().with_credentials("user", "secret")).await;
//! let route = up.route(TlsMode::StartTls);                 // an SmtpRoute pointing at it
//! // ... deliver ...
//! let got = up.wait_for_messages(1, Duration::from_secs(5)).await;
//! assert_eq!(got[0].content, b"Subject: x\r\n\r\nhello\r\n");
//! ```
//!
//! By default it offers PIPELINING, SIZE, 8BITMIME and STARTTLS, and AUTH PLAIN LOGIN after TLS when
//! credentials are set. Replies can be scripted per recipient, for MAIL, for the end of DATA and for the
//! greeting (and RSET: `rset_reply`); the configuration can be changed while it runs ([`Upstream::configure`]), and the server can
//! be taken down and brought back on the same port ([`Upstream::go_down`], [`Upstream::go_up`]).
//! [`Upstream::command_groups`] shows which commands arrived together (pipelined in one write).
//!
//! Exchange Online behaviour (client submission, `smtp.office365.com`), each an option:
//! - AUTH XOAUTH2 ([`UpstreamConfig::with_xoauth2`]): the bearer token must be in a [`ValidTokens`] set
//!   (filled by the mock token endpoint, `token_endpoint.rs`) and `user=` one of the mailboxes;
//!   otherwise `535 5.7.3 Authentication unsuccessful` (or the 334 error-challenge dance first).
//!   `reject_xoauth2` refuses the next N valid tokens too (a revoked token); `hve_min_token_lifetime`
//!   answers `501 5.5.127` to tokens about to expire, like High Volume Email.
//! - `password_auth_reply`: every AUTH PLAIN/LOGIN gets this reply (`535 5.7.139 ...` or `550 5.7.30 ...`).
//! - `require_auth`: `530 5.7.57` at MAIL FROM before AUTH; `require_tls_for_auth`: AUTH only after TLS.
//! - `enforce_send_as`: `550 5.7.60` when MAIL FROM is not the authenticated mailbox.
//! - `max_connections_per_user`: `432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded` at MAIL
//!   when the mailbox has more authenticated connections open; `message_rate`: N messages per window
//!   per mailbox, then `rate_limit_reply`. Every refusal for a limit is counted ([`Upstream::breaches`])
//!   so tests can assert that the relay kept the limits itself.

use super::certs::TestPki;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use smarthost::config::{AuthConfig, AuthMechanism, Secret, SmtpRoute, TlsMode};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;

/// How the test upstream behaves. Start from `default()` and change what the test is about.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Name in the greeting and the EHLO reply.
    pub hostname: String,
    /// Offer STARTTLS (before TLS).
    pub starttls: bool,
    /// TLS from the first byte (port 465 style) instead of STARTTLS.
    pub implicit_tls: bool,
    pub pipelining: bool,
    pub smtputf8: bool,
    /// Advertised as `SIZE n`; larger `SIZE=` parameters are refused.
    pub max_size: u64,
    /// Offer and accept AUTH only after STARTTLS.
    pub require_tls_for_auth: bool,
    /// `530 5.7.57` at MAIL FROM without AUTH, like smtp.office365.com.
    pub require_auth: bool,
    /// The one accepted user name and password; AUTH is offered only when set.
    pub credentials: Option<(String, String)>,
    /// The whole greeting line; a `421 ...` greeting is followed by closing the connection.
    pub greeting: String,
    /// Replaces the EHLO reply (e.g. `502 5.5.1 Not implemented` to force HELO).
    pub ehlo_reply: Option<String>,
    /// Replaces the reply to MAIL FROM.
    pub mail_reply: Option<String>,
    /// Per recipient (lower-case address) reply to RCPT TO, e.g. `550 5.1.1 User unknown`.
    pub rcpt_replies: HashMap<String, String>,
    /// Replaces the reply after the message content.
    pub data_reply: Option<String>,
    /// Replaces the reply to RSET (e.g. `421 4.4.2 timeout`); a non-2xx reply keeps the transaction.
    pub rset_reply: Option<String>,
    /// Close the connection after `354`, in the middle of the content.
    pub close_during_data: bool,
    /// Offer and accept AUTH XOAUTH2 with these tokens; `None`: XOAUTH2 is not offered.
    pub xoauth2_tokens: Option<ValidTokens>,
    /// The mailboxes XOAUTH2 may name in `user=` (lower-case); empty: any.
    pub xoauth2_users: Vec<String>,
    /// Refuse this many more XOAUTH2 attempts even with a valid token (a revoked token).
    pub reject_xoauth2: u32,
    /// Answer a failed XOAUTH2 first with `334 <base64 JSON error>` (as Gmail does), then the failure.
    pub xoauth2_error_challenge: bool,
    /// The reply to a refused XOAUTH2.
    pub xoauth2_failure_reply: String,
    /// High Volume Email: tokens with less than this many seconds left get `501 5.5.127`.
    pub hve_min_token_lifetime: Option<u64>,
    /// Every AUTH PLAIN/LOGIN gets this reply, whatever the credentials (Basic auth switched off).
    pub password_auth_reply: Option<String>,
    /// `550 5.7.60` when MAIL FROM is not the authenticated user.
    pub enforce_send_as: bool,
    /// Authenticated connections one mailbox may have open; more get `432 4.3.2` at MAIL.
    pub max_connections_per_user: Option<usize>,
    /// Messages per mailbox per window: `(count, window)`; more get `rate_limit_reply` at MAIL.
    pub message_rate: Option<(usize, Duration)>,
    pub rate_limit_reply: String,
}

/// Access tokens the upstream accepts, with their expiry (Unix seconds); shared with the mock token
/// endpoint, which adds every token it issues.
#[derive(Clone, Default)]
pub struct ValidTokens(Arc<Mutex<HashMap<String, u64>>>);

impl std::fmt::Debug for ValidTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ValidTokens({} tokens)", self.0.lock().unwrap().len())
    }
}

impl ValidTokens {
    pub fn insert(&self, token: &str, expires_at: u64) {
        self.0.lock().unwrap().insert(token.to_string(), expires_at);
    }

    /// When the token expires, if it is known.
    pub fn expires_at(&self, token: &str) -> Option<u64> {
        self.0.lock().unwrap().get(token).copied()
    }

    pub fn revoke(&self, token: &str) {
        self.0.lock().unwrap().remove(token);
    }

    pub fn revoke_all(&self) {
        self.0.lock().unwrap().clear();
    }

    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().keys().cloned().collect()
    }
}

/// Refusals the upstream gave for its limits: a relay that keeps the limits causes none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Breaches {
    /// `432 4.3.2` for too many connections of one mailbox.
    pub connections: u64,
    /// Over `message_rate`.
    pub rate: u64,
}

/// One AUTH exchange as the upstream saw it (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthAttempt {
    pub mechanism: String,
    pub user: String,
    pub accepted: bool,
    /// The length of the command line that carried the initial response.
    pub line_len: usize,
    pub connection: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            hostname: "upstream.test".into(),
            starttls: true,
            implicit_tls: false,
            pipelining: true,
            smtputf8: false,
            max_size: 35 * 1024 * 1024,
            require_tls_for_auth: true,
            require_auth: false,
            credentials: None,
            greeting: "220 upstream.test ESMTP test upstream".into(),
            ehlo_reply: None,
            mail_reply: None,
            rcpt_replies: HashMap::new(),
            data_reply: None,
            rset_reply: None,
            close_during_data: false,
            xoauth2_tokens: None,
            xoauth2_users: Vec::new(),
            reject_xoauth2: 0,
            xoauth2_error_challenge: false,
            xoauth2_failure_reply: "535 5.7.3 Authentication unsuccessful".into(),
            hve_min_token_lifetime: None,
            password_auth_reply: None,
            enforce_send_as: false,
            max_connections_per_user: None,
            message_rate: None,
            rate_limit_reply: "451 4.7.500 Server busy. Please try again later.".into(),
        }
    }
}

impl UpstreamConfig {
    /// Accept these credentials and require AUTH before MAIL.
    pub fn with_credentials(mut self, user: &str, password: &str) -> Self {
        self.credentials = Some((user.into(), password.into()));
        self.require_auth = true;
        self
    }

    /// Accept AUTH XOAUTH2 with tokens from `tokens` for these mailboxes (empty: any), require AUTH
    /// before MAIL, and offer no password mechanism (unless credentials are set too).
    pub fn with_xoauth2(mut self, tokens: &ValidTokens, users: &[&str]) -> Self {
        self.xoauth2_tokens = Some(tokens.clone());
        self.xoauth2_users = users.iter().map(|u| u.to_ascii_lowercase()).collect();
        self.require_auth = true;
        self
    }

    pub fn with_rcpt_reply(mut self, address: &str, reply: &str) -> Self {
        self.rcpt_replies
            .insert(address.to_ascii_lowercase(), reply.into());
        self
    }
}

/// One message as the upstream received it.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    pub sender: String,
    /// MAIL FROM parameters as sent, e.g. `["SIZE=120", "BODY=8BITMIME"]`.
    pub mail_params: Vec<String>,
    /// The recipients accepted at RCPT.
    pub recipients: Vec<String>,
    /// The content after dot-unstuffing, without the terminating `.` line.
    pub content: Vec<u8>,
    pub tls: bool,
    pub auth_user: Option<String>,
    /// More commands had already arrived when MAIL FROM was read (the client pipelined).
    pub pipelined: bool,
    /// Which connection (1, 2, ...) carried it.
    pub connection: u64,
}

/// The running server. Dropping it stops it.
pub struct Upstream {
    pub addr: SocketAddr,
    pub pki: Arc<TestPki>,
    state: Arc<State>,
    accept_task: Mutex<Option<AbortHandle>>,
}

struct State {
    config: Mutex<UpstreamConfig>,
    tls: TlsAcceptor,
    /// The first certificate each TLS client presented, in order.
    client_certs: Mutex<Vec<rustls::pki_types::CertificateDer<'static>>>,
    messages: Mutex<Vec<ReceivedMessage>>,
    /// Every command line received, in order over all connections.
    commands: Mutex<Vec<String>>,
    /// The same with its connection, and whether more had already been received after it.
    arrivals: Mutex<Vec<(u64, String, bool)>>,
    connections: AtomicU64,
    sessions: Mutex<Vec<AbortHandle>>,
    received: tokio::sync::Notify,
    auth_attempts: Mutex<Vec<AuthAttempt>>,
    /// Authenticated connections open per mailbox (lower-case), and the most seen at once.
    open_per_user: Mutex<HashMap<String, (usize, usize)>>,
    /// When each mailbox's recent messages were accepted, for `message_rate`.
    sent_per_user: Mutex<HashMap<String, VecDeque<tokio::time::Instant>>>,
    breaches: Mutex<Breaches>,
}

impl Upstream {
    pub async fn start(config: UpstreamConfig) -> Upstream {
        Self::start_with_pki(config, TestPki::new()).await
    }

    /// With a given certificate (e.g. one for a name the client does not connect to).
    pub async fn start_with_pki(config: UpstreamConfig, pki: TestPki) -> Upstream {
        let server_config = pki.server_config();
        Self::start_with_tls(config, pki, server_config).await
    }

    /// With a given TLS server configuration (e.g. one asking for client certificates).
    pub async fn start_with_tls(
        config: UpstreamConfig,
        pki: TestPki,
        server_config: Arc<rustls::ServerConfig>,
    ) -> Upstream {
        let state = Arc::new(State {
            config: Mutex::new(config),
            tls: TlsAcceptor::from(server_config),
            client_certs: Mutex::new(Vec::new()),
            messages: Mutex::new(Vec::new()),
            commands: Mutex::new(Vec::new()),
            arrivals: Mutex::new(Vec::new()),
            connections: AtomicU64::new(0),
            sessions: Mutex::new(Vec::new()),
            received: tokio::sync::Notify::new(),
            auth_attempts: Mutex::new(Vec::new()),
            open_per_user: Mutex::new(HashMap::new()),
            sent_per_user: Mutex::new(HashMap::new()),
            breaches: Mutex::new(Breaches::default()),
        });
        let listener = listen("127.0.0.1:0".parse().unwrap());
        let addr = listener.local_addr().unwrap();
        let upstream = Upstream {
            addr,
            pki: Arc::new(pki),
            state,
            accept_task: Mutex::new(None),
        };
        upstream.serve(listener);
        upstream
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The CA file that makes the server's certificate trusted.
    pub fn ca_path(&self) -> &std::path::Path {
        self.pki.ca_path()
    }

    /// The TOML of a `[[route]]` named `name` that sends every domain to this server by IP address
    /// with STARTTLS, trusting its CA, then `route_lines` (more keys of the route, e.g. `transport`
    /// or timeouts; may be empty), then `[route.auth]`: AUTH LOGIN as `username` with the password
    /// in `password_file`. Ends with a newline, so more tables (`[route.limits]`, ...) can follow.
    pub fn route_toml(
        &self,
        name: &str,
        route_lines: &str,
        username: &str,
        password_file: &std::path::Path,
    ) -> String {
        let route_lines = match route_lines.trim() {
            "" => String::new(),
            lines => format!("{lines}\n"),
        };
        format!(
            r#"[[route]]
name = "{name}"
domains = ["*"]
host = "127.0.0.1"
port = {port}
tls = "starttls"
ca_file = "{ca}"
{route_lines}[route.auth]
mechanism = "login"
username = "{username}"
password_file = "{pass}"
"#,
            port = self.port(),
            ca = self.ca_path().display(),
            pass = password_file.display(),
        )
    }

    /// A route to this server by IP address, trusting its CA, without credentials.
    pub fn route(&self, tls: TlsMode) -> SmtpRoute {
        SmtpRoute {
            host: "127.0.0.1".into(),
            port: self.port(),
            tls,
            ca_file: Some(self.ca_path().to_path_buf()),
            auth: None,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(10),
            max_connections: 3,
            client_cert: None,
        }
    }

    /// The same with AUTH.
    pub fn route_with_auth(
        &self,
        tls: TlsMode,
        mechanism: AuthMechanism,
        user: &str,
        password: &str,
    ) -> SmtpRoute {
        SmtpRoute {
            auth: Some(AuthConfig {
                mechanism,
                username: user.into(),
                credential: smarthost::config::Credential::Password(Secret::new(password)),
            }),
            ..self.route(tls)
        }
    }

    /// Changes the behaviour for connections and commands from now on.
    pub fn configure(&self, change: impl FnOnce(&mut UpstreamConfig)) {
        change(&mut self.state.config.lock().unwrap());
    }

    /// The client certificates TLS clients presented (first of each chain).
    pub fn client_certs(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        self.state.client_certs.lock().unwrap().clone()
    }

    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.state.messages.lock().unwrap().clone()
    }

    pub fn commands(&self) -> Vec<String> {
        self.state.commands.lock().unwrap().clone()
    }

    /// The commands of each connection as they arrived, in groups: a group ends with a command after
    /// which nothing more had been received (the client waited for replies). Pipelined commands sent
    /// in one write form one group: `(connection, ["RSET", "MAIL FROM:<..>", "RCPT TO:<..>", "DATA"])`.
    pub fn command_groups(&self) -> Vec<(u64, Vec<String>)> {
        let mut groups: Vec<(u64, Vec<String>)> = Vec::new();
        // Per connection, the index of its group still open (the last command had more after it).
        let mut open: HashMap<u64, usize> = HashMap::new();
        for (connection, line, more) in self.state.arrivals.lock().unwrap().iter() {
            let index = match open.get(connection) {
                Some(&index) => index,
                None => {
                    groups.push((*connection, Vec::new()));
                    groups.len() - 1
                }
            };
            groups[index].1.push(line.clone());
            if *more {
                open.insert(*connection, index);
            } else {
                open.remove(connection);
            }
        }
        groups
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Every AUTH exchange so far, in order.
    pub fn auth_attempts(&self) -> Vec<AuthAttempt> {
        self.state.auth_attempts.lock().unwrap().clone()
    }

    /// Refusals for limits so far.
    pub fn breaches(&self) -> Breaches {
        *self.state.breaches.lock().unwrap()
    }

    /// The most authenticated connections `user` had open at once.
    pub fn max_open_connections(&self, user: &str) -> usize {
        self.state
            .open_per_user
            .lock()
            .unwrap()
            .get(&user.to_ascii_lowercase())
            .map_or(0, |&(_, max)| max)
    }

    /// Waits until at least `n` messages were received; panics after `timeout` with what there is.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<ReceivedMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.received.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "expected {n} messages within {timeout:?}, got {}: {messages:#?}\ncommands: {:#?}",
                    messages.len(),
                    self.commands()
                );
            }
        }
    }

    /// Stops listening (new connections are refused) and drops every open connection.
    pub async fn go_down(&self) {
        if let Some(task) = self.accept_task.lock().unwrap().take() {
            task.abort();
        }
        for session in self.state.sessions.lock().unwrap().drain(..) {
            session.abort();
        }
        // Let the aborted tasks run their drops (closing the listener and the sockets).
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        while TcpStream::connect(self.addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Listens again on the same port.
    pub async fn go_up(&self) {
        // While we were down, a client's connection attempt to our port may have been given that very
        // port as its local one (a TCP self-connect on loopback): wait until the port is free again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let listener = loop {
            match try_listen(self.addr) {
                Ok(listener) => break listener,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let state = Arc::clone(&self.state);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                // Replies to pipelined commands are separate small writes: no Nagle delay between them.
                let _ = tcp.set_nodelay(true);
                let id = state.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let session_state = Arc::clone(&state);
                let handle = tokio::spawn(async move {
                    let _ = session(session_state, tcp, id).await;
                });
                state.sessions.lock().unwrap().push(handle.abort_handle());
            }
        });
        *self.accept_task.lock().unwrap() = Some(task.abort_handle());
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(task) = self.accept_task.lock().unwrap().take() {
            task.abort();
        }
        for session in self.state.sessions.lock().unwrap().drain(..) {
            session.abort();
        }
    }
}

/// SO_REUSEADDR so that `go_up` can bind the port again while old connections are in TIME_WAIT.
fn listen(addr: SocketAddr) -> tokio::net::TcpListener {
    try_listen(addr).unwrap()
}

fn try_listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

/// Per-connection state that survives STARTTLS (TLS itself resets EHLO and AUTH).
impl State {
    fn record_client_cert(&self, chain: Option<&[rustls::pki_types::CertificateDer<'static>]>) {
        if let Some(first) = chain.and_then(|c| c.first()) {
            self.client_certs.lock().unwrap().push(first.clone());
        }
    }
}

struct Session {
    state: Arc<State>,
    id: u64,
    tls: bool,
    auth_user: Option<String>,
    /// Counts this connection as open for its mailbox until the session ends.
    user_slot: Option<UserSlot>,
    tx: Option<ReceivedMessage>,
    /// A 421 was sent: close after this command.
    closing: bool,
}

/// One authenticated connection of a mailbox; dropping it (the session ends) frees it.
struct UserSlot {
    state: Arc<State>,
    user: String,
}

impl UserSlot {
    fn take(state: &Arc<State>, user: &str) -> Self {
        let user = user.to_ascii_lowercase();
        let mut open = state.open_per_user.lock().unwrap();
        let entry = open.entry(user.clone()).or_insert((0, 0));
        entry.0 += 1;
        entry.1 = entry.1.max(entry.0);
        UserSlot {
            state: Arc::clone(state),
            user,
        }
    }

    fn open(&self) -> usize {
        self.state.open_per_user.lock().unwrap()[&self.user].0
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        if let Some(entry) = self.state.open_per_user.lock().unwrap().get_mut(&self.user) {
            entry.0 -= 1;
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

enum Next {
    Close,
    StartTls,
}

async fn session(state: Arc<State>, tcp: TcpStream, id: u64) -> std::io::Result<()> {
    let (implicit, greeting) = {
        let config = state.config.lock().unwrap();
        (config.implicit_tls, config.greeting.clone())
    };
    let mut s = Session {
        state: Arc::clone(&state),
        id,
        tls: false,
        auth_user: None,
        user_slot: None,
        tx: None,
        closing: false,
    };
    if implicit {
        let mut tls = state.tls.accept(tcp).await?;
        s.tls = true;
        state.record_client_cert(tls.get_ref().1.peer_certificates());
        if greet(&mut tls, &greeting).await? {
            s.commands(&mut BufReader::new(tls)).await?;
        }
        return Ok(());
    }
    let mut tcp = tcp;
    if !greet(&mut tcp, &greeting).await? {
        return Ok(());
    }
    let mut reader = BufReader::new(tcp);
    if let Next::StartTls = s.commands(&mut reader).await? {
        let tls = state.tls.accept(reader.into_inner()).await?;
        s.tls = true;
        state.record_client_cert(tls.get_ref().1.peer_certificates());
        s.commands(&mut BufReader::new(tls)).await?;
    }
    Ok(())
}

/// Sends the greeting; false when it refuses service (then the connection closes).
async fn greet<S: AsyncWrite + Unpin>(stream: &mut S, greeting: &str) -> std::io::Result<bool> {
    stream
        .write_all(format!("{greeting}\r\n").as_bytes())
        .await?;
    Ok(greeting.starts_with('2'))
}

async fn write_line<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut BufReader<S>,
    line: &str,
) -> std::io::Result<()> {
    stream
        .get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .await
}

async fn read_line<S: AsyncRead + Unpin>(
    stream: &mut BufReader<S>,
) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    if stream.read_until(b'\n', &mut line).await? == 0 {
        return Ok(None);
    }
    Ok(Some(
        String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_string(),
    ))
}

/// `MAIL FROM:<a@b> SIZE=1` → (`a@b`, [`SIZE=1`]).
fn path_and_params(arg: &str) -> (String, Vec<String>) {
    let arg = arg.trim();
    let (path, rest) = match (arg.find('<'), arg.find('>')) {
        (Some(open), Some(close)) if open < close => (&arg[open + 1..close], &arg[close + 1..]),
        _ => (arg, ""),
    };
    (
        path.to_string(),
        rest.split_whitespace().map(String::from).collect(),
    )
}

impl Session {
    /// Writes a reply; after a `421` the server closes the connection (RFC 5321 §3.8).
    async fn reply<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut BufReader<S>,
        line: &str,
    ) -> std::io::Result<()> {
        if line.starts_with("421") {
            self.closing = true;
        }
        write_line(io, line).await
    }

    fn config(&self) -> UpstreamConfig {
        self.state.config.lock().unwrap().clone()
    }

    async fn commands<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut BufReader<S>,
    ) -> std::io::Result<Next> {
        while let Some(line) = read_line(io).await? {
            self.state.commands.lock().unwrap().push(line.clone());
            self.state.arrivals.lock().unwrap().push((
                self.id,
                line.clone(),
                !io.buffer().is_empty(),
            ));
            let config = self.config();
            let (verb, arg) = line.split_once(' ').unwrap_or((&line, ""));
            match verb.to_ascii_uppercase().as_str() {
                "EHLO" => {
                    self.tx = None;
                    if let Some(custom) = &config.ehlo_reply {
                        self.reply(io, custom).await?;
                        continue;
                    }
                    let mut lines = vec![format!("{} Hello {arg}", config.hostname)];
                    if config.pipelining {
                        lines.push("PIPELINING".into());
                    }
                    lines.push(format!("SIZE {}", config.max_size));
                    lines.push("8BITMIME".into());
                    if config.smtputf8 {
                        lines.push("SMTPUTF8".into());
                    }
                    if config.starttls && !self.tls {
                        lines.push("STARTTLS".into());
                    }
                    if self.tls || !config.require_tls_for_auth {
                        let mut mechanisms = Vec::new();
                        if config.credentials.is_some() || config.password_auth_reply.is_some() {
                            mechanisms.push("PLAIN LOGIN");
                        }
                        if config.xoauth2_tokens.is_some() {
                            mechanisms.push("XOAUTH2");
                        }
                        if !mechanisms.is_empty() {
                            lines.push(format!("AUTH {}", mechanisms.join(" ")));
                        }
                    }
                    let last = lines.len() - 1;
                    let text: String = lines
                        .iter()
                        .enumerate()
                        .map(|(i, l)| format!("250{}{l}\r\n", if i == last { ' ' } else { '-' }))
                        .collect();
                    io.get_mut().write_all(text.as_bytes()).await?;
                }
                "HELO" => {
                    self.tx = None;
                    self.reply(io, &format!("250 {}", config.hostname)).await?;
                }
                "STARTTLS" => {
                    if !config.starttls || self.tls {
                        self.reply(io, "454 4.7.0 TLS not available").await?;
                    } else {
                        self.reply(io, "220 2.0.0 Ready to start TLS").await?;
                        return Ok(Next::StartTls);
                    }
                }
                "AUTH" => self.auth(io, &config, arg).await?,
                "MAIL" => {
                    let (sender, mail_params) = path_and_params(
                        arg.trim_start_matches(|c| c != ':').trim_start_matches(':'),
                    );
                    if config.require_auth && self.auth_user.is_none() {
                        self.reply(
                            io,
                            "530 5.7.57 Client not authenticated to send mail during MAIL FROM",
                        )
                        .await?;
                    } else if self.tx.is_some() {
                        self.reply(io, "503 5.5.1 Sender already specified").await?;
                    } else if config.enforce_send_as
                        && self
                            .auth_user
                            .as_ref()
                            .is_some_and(|u| !u.eq_ignore_ascii_case(&sender))
                    {
                        self.reply(
                            io,
                            "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
                        )
                        .await?;
                    } else if config
                        .max_connections_per_user
                        .is_some_and(|max| self.user_slot.as_ref().is_some_and(|s| s.open() > max))
                    {
                        self.state.breaches.lock().unwrap().connections += 1;
                        self.reply(
                            io,
                            "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
                        )
                        .await?;
                    } else if self.over_rate(&config) {
                        self.state.breaches.lock().unwrap().rate += 1;
                        self.reply(io, &config.rate_limit_reply).await?;
                    } else if let Some(custom) = &config.mail_reply {
                        self.reply(io, custom).await?;
                    } else if let Some(size) = mail_params
                        .iter()
                        .find_map(|p| p.strip_prefix("SIZE="))
                        .and_then(|n| n.parse::<u64>().ok())
                        .filter(|&n| n > config.max_size)
                    {
                        self.reply(
                            io,
                            &format!("552 5.3.4 Message size {size} exceeds fixed limit"),
                        )
                        .await?;
                    } else {
                        self.tx = Some(ReceivedMessage {
                            sender,
                            mail_params,
                            recipients: Vec::new(),
                            content: Vec::new(),
                            tls: self.tls,
                            auth_user: self.auth_user.clone(),
                            pipelined: !io.buffer().is_empty(),
                            connection: self.id,
                        });
                        self.reply(io, "250 2.1.0 Sender OK").await?;
                    }
                }
                "RCPT" => {
                    let (address, _) = path_and_params(
                        arg.trim_start_matches(|c| c != ':').trim_start_matches(':'),
                    );
                    let Some(tx) = self.tx.as_mut() else {
                        self.reply(io, "503 5.5.1 Need MAIL before RCPT").await?;
                        continue;
                    };
                    let answer = config
                        .rcpt_replies
                        .get(&address.to_ascii_lowercase())
                        .cloned()
                        .unwrap_or_else(|| "250 2.1.5 Recipient OK".into());
                    if answer.starts_with('2') {
                        tx.recipients.push(address);
                    }
                    self.reply(io, &answer).await?;
                }
                "DATA" => {
                    match &self.tx {
                        None => {
                            self.reply(io, "503 5.5.1 Need MAIL command").await?;
                            continue;
                        }
                        Some(tx) if tx.recipients.is_empty() => {
                            self.tx = None;
                            self.reply(io, "554 5.5.1 No valid recipients").await?;
                            continue;
                        }
                        Some(_) => {}
                    }
                    self.reply(io, "354 Start mail input; end with <CRLF>.<CRLF>")
                        .await?;
                    if config.close_during_data {
                        let _ = read_line(io).await?;
                        return Ok(Next::Close);
                    }
                    let Some(content) = read_content(io).await? else {
                        return Ok(Next::Close);
                    };
                    let mut tx = self.tx.take().expect("checked above");
                    tx.content = content;
                    let answer = config.data_reply.clone().unwrap_or_else(|| {
                        format!(
                            "250 2.0.0 OK queued as {}",
                            self.state.messages.lock().unwrap().len() + 1
                        )
                    });
                    if answer.starts_with('2') {
                        let user = self
                            .auth_user
                            .clone()
                            .unwrap_or_default()
                            .to_ascii_lowercase();
                        self.state
                            .sent_per_user
                            .lock()
                            .unwrap()
                            .entry(user)
                            .or_default()
                            .push_back(tokio::time::Instant::now());
                        self.state.messages.lock().unwrap().push(tx);
                        self.state.received.notify_waiters();
                    }
                    self.reply(io, &answer).await?;
                }
                "RSET" => {
                    let answer = config
                        .rset_reply
                        .clone()
                        .unwrap_or_else(|| "250 2.0.0 Reset OK".into());
                    if answer.starts_with('2') {
                        self.tx = None;
                    }
                    self.reply(io, &answer).await?;
                }
                "NOOP" => self.reply(io, "250 2.0.0 OK").await?,
                "QUIT" => {
                    self.reply(io, "221 2.0.0 Service closing transmission channel")
                        .await?;
                    return Ok(Next::Close);
                }
                _ => self.reply(io, "502 5.5.2 Command not recognized").await?,
            }
            if self.closing {
                return Ok(Next::Close);
            }
        }
        Ok(Next::Close)
    }

    /// Whether the authenticated mailbox already sent `message_rate` messages in the window.
    fn over_rate(&self, config: &UpstreamConfig) -> bool {
        let Some((count, window)) = config.message_rate else {
            return false;
        };
        let user = self
            .auth_user
            .clone()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let mut sent = self.state.sent_per_user.lock().unwrap();
        let times = sent.entry(user).or_default();
        let now = tokio::time::Instant::now();
        while times
            .front()
            .is_some_and(|&t| now.duration_since(t) >= window)
        {
            times.pop_front();
        }
        times.len() >= count
    }

    fn record_auth(&self, mechanism: &str, user: &str, accepted: bool, line_len: usize) {
        self.state.auth_attempts.lock().unwrap().push(AuthAttempt {
            mechanism: mechanism.into(),
            user: user.into(),
            accepted,
            line_len,
            connection: self.id,
        });
    }

    fn authenticated(&mut self, user: &str) {
        self.auth_user = Some(user.to_string());
        self.user_slot = Some(UserSlot::take(&self.state, user));
    }

    async fn auth<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut BufReader<S>,
        config: &UpstreamConfig,
        arg: &str,
    ) -> std::io::Result<()> {
        let password_auth = config.credentials.is_some() || config.password_auth_reply.is_some();
        if !password_auth && config.xoauth2_tokens.is_none() {
            return self.reply(io, "503 5.5.1 AUTH not available").await;
        }
        if config.require_tls_for_auth && !self.tls {
            return self
                .reply(io, "530 5.7.0 Must issue a STARTTLS command first")
                .await;
        }
        if self.auth_user.is_some() {
            return self.reply(io, "503 5.5.1 Already authenticated").await;
        }
        let line_len = "AUTH ".len() + arg.len();
        let mut words = arg.split_whitespace();
        let mechanism = words.next().unwrap_or("").to_ascii_uppercase();
        let initial = words.next().map(String::from);
        let decode = |b64: &str| {
            BASE64
                .decode(b64.trim())
                .ok()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        if mechanism == "XOAUTH2" {
            return self.xoauth2(io, config, initial, line_len).await;
        }
        if !password_auth {
            return self
                .reply(io, "504 5.7.4 Unrecognized authentication type")
                .await;
        }
        let (given_user, given_password) = match mechanism.as_str() {
            "PLAIN" => {
                let response = match initial {
                    Some(r) => r,
                    None => {
                        self.reply(io, "334 ").await?;
                        read_line(io).await?.unwrap_or_default()
                    }
                };
                let decoded = decode(&response).unwrap_or_default();
                let mut parts = decoded.split('\0').skip(1);
                (
                    parts.next().unwrap_or("").to_string(),
                    parts.next().unwrap_or("").to_string(),
                )
            }
            "LOGIN" => {
                self.reply(io, "334 VXNlcm5hbWU6").await?;
                let u = read_line(io).await?.unwrap_or_default();
                self.reply(io, "334 UGFzc3dvcmQ6").await?;
                let p = read_line(io).await?.unwrap_or_default();
                (
                    decode(&u).unwrap_or_default(),
                    decode(&p).unwrap_or_default(),
                )
            }
            _ => {
                return self
                    .reply(io, "504 5.7.4 Unrecognized authentication type")
                    .await;
            }
        };
        if let Some(refusal) = &config.password_auth_reply {
            self.record_auth(&mechanism, &given_user, false, line_len);
            return self.reply(io, refusal).await;
        }
        let ok = config
            .credentials
            .as_ref()
            .is_some_and(|(user, password)| &given_user == user && &given_password == password);
        self.record_auth(&mechanism, &given_user, ok, line_len);
        if ok {
            self.authenticated(&given_user);
            self.reply(io, "235 2.7.0 Authentication successful").await
        } else {
            self.reply(io, "535 5.7.3 Authentication unsuccessful")
                .await
        }
    }

    /// SASL XOAUTH2, with the initial response in the command or after `334 `.
    async fn xoauth2<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut BufReader<S>,
        config: &UpstreamConfig,
        initial: Option<String>,
        mut line_len: usize,
    ) -> std::io::Result<()> {
        let Some(tokens) = &config.xoauth2_tokens else {
            return self
                .reply(io, "504 5.7.4 Unrecognized authentication type")
                .await;
        };
        let response = match initial {
            Some(r) => r,
            None => {
                self.reply(io, "334 ").await?;
                let line = read_line(io).await?.unwrap_or_default();
                line_len = line.len();
                line
            }
        };
        let (user, token) = BASE64
            .decode(response.trim())
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .and_then(|text| {
                let mut user = None;
                let mut token = None;
                for pair in text.split('\x01') {
                    if let Some(u) = pair.strip_prefix("user=") {
                        user = Some(u.to_string());
                    } else if let Some(t) = pair.strip_prefix("auth=Bearer ") {
                        token = Some(t.to_string());
                    }
                }
                Some((user?, token?))
            })
            .unwrap_or_default();
        let expires_at = tokens.expires_at(&token);
        let user_ok = !user.is_empty()
            && (config.xoauth2_users.is_empty()
                || config.xoauth2_users.contains(&user.to_ascii_lowercase()));
        let mut ok = user_ok && expires_at.is_some_and(|at| at > unix_now());
        if ok
            && let (Some(min), Some(at)) = (config.hve_min_token_lifetime, expires_at)
            && at < unix_now() + min
        {
            self.record_auth("XOAUTH2", &user, false, line_len);
            return self
                .reply(
                    io,
                    "501 5.5.127 Authentication unsuccessful. Token will expire soon",
                )
                .await;
        }
        if ok && config.reject_xoauth2 > 0 {
            self.state.config.lock().unwrap().reject_xoauth2 -= 1;
            ok = false;
        }
        self.record_auth("XOAUTH2", &user, ok, line_len);
        if ok {
            self.authenticated(&user);
            return self.reply(io, "235 2.7.0 Authentication successful").await;
        }
        if config.xoauth2_error_challenge {
            let details = BASE64.encode(r#"{"status":"401","schemes":"bearer","scope":"https://outlook.office365.com/.default"}"#);
            self.reply(io, &format!("334 {details}")).await?;
            let _ = read_line(io).await?;
        }
        self.reply(io, &config.xoauth2_failure_reply).await
    }
}

/// Reads the content after 354 up to the `.` line, undoing dot-stuffing. `None` if the client went away.
async fn read_content<S: AsyncRead + Unpin>(
    io: &mut BufReader<S>,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut content = Vec::new();
    loop {
        let mut line = Vec::new();
        if io.read_until(b'\n', &mut line).await? == 0 {
            return Ok(None);
        }
        if line == b".\r\n" {
            return Ok(Some(content));
        }
        let unstuffed = if line.first() == Some(&b'.') {
            &line[1..]
        } else {
            &line[..]
        };
        content.extend_from_slice(unstuffed);
    }
}
