//! One inbound SMTP session (RFC 5321), from the banner to QUIT.
//!
//! Replies to pipelined commands (RFC 2920) are collected and written when no complete command is
//! left in the input buffer, so a client that pipelines gets its replies in one write and a client
//! that does not gets each reply at once. A message is acknowledged (`250` after DATA) only after
//! [`Ingest::submit`](crate::ingest::Ingest::submit) has stored it durably.
//!
//! Invariants:
//! - Time: a command line must be complete within `command_timeout` of the moment the session began
//!   waiting for it (a client dribbling one byte at a time does not restart the clock); each chunk
//!   of DATA must come within `data_timeout`; the whole session ends at the listener's
//!   `session_timeout`, however busy. Each ends with `421 4.4.2`.
//! - STARTTLS (RFC 3207): whatever the client sent after the STARTTLS line, before the handshake, is
//!   discarded and never executed (the STARTTLS command-injection class of bugs); after the
//!   handshake the session starts over: no HELO, no transaction, no authentication.
//! - AUTH is offered in EHLO, and accepted, only on a listener with `auth` and only over TLS unless
//!   the listener has `allow_plaintext_auth`. SASL responses and passwords are never logged.
//! - A client may name recipients when its address is in `relay_from` or it has authenticated.

mod auth;

use super::stream::SessionStream;
use super::tls::{TlsInfo, handshake_hint};
use super::{Listener, ServerContext};
use crate::config::{ListenerTls, canonical_ip};
use crate::ingest::{IngestError, Origin, Submission};
use crate::smtp::Reply;
use crate::smtp::command::{BodyType, Command, MAX_COMMAND_LINE, parse_command};
use crate::smtp::data::{DataReceiver, DataStatus};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// Errors (unknown commands, bad syntax, refused recipients) after which the session is closed.
const MAX_ERRORS: u32 = 20;

/// Why a session ended early.
#[derive(Debug)]
enum Closed {
    /// The client went away, the socket failed, or the TLS handshake did.
    Gone,
    /// We said 421 (timeout, shutdown, too many errors or messages).
    Said421,
}

struct Transaction {
    sender: String,
    smtputf8: bool,
    recipients: Vec<String>,
}

/// A line read while waiting for a command (or a SASL response).
enum Line {
    Complete(Vec<u8>),
    /// Longer than [`MAX_COMMAND_LINE`]; its bytes were skipped.
    TooLong,
}

struct Session {
    stream: SessionStream,
    context: Arc<ServerContext>,
    listener: Arc<Listener>,
    peer: SocketAddr,
    client_ip: IpAddr,
    /// The address the client connected to (`s-ip` of the W3C log).
    local_ip: Option<IpAddr>,
    helo: Option<String>,
    esmtp: bool,
    transaction: Option<Transaction>,
    /// Set once the TLS handshake (STARTTLS or implicit) has succeeded.
    tls: Option<TlsInfo>,
    /// The `[[user]]` the client authenticated as.
    user: Option<String>,
    errors: u32,
    messages: usize,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Reply bytes queued in this session, and the code of the last reply (for the W3C log).
    reply_bytes: u64,
    last_code: u16,
    /// Content bytes received by the last DATA (for the W3C log).
    data_bytes: u64,
    /// Set while the rest of an over-long line is being skipped.
    skipping_long_line: bool,
    /// When the command being waited for must be complete; `None` until the session starts waiting.
    command_deadline: Option<Instant>,
    /// When the whole session must end (`session_timeout`).
    session_deadline: Instant,
    shutdown: watch::Receiver<bool>,
}

/// Answers a client that may not have a session (busy, address not allowed, locked out) and closes.
/// On an implicit-TLS listener nothing is written: the client expects a TLS handshake, not text.
pub(super) async fn refuse(mut stream: TcpStream, listener: &Listener, reply: Reply) {
    if listener.config.tls == ListenerTls::Implicit {
        return;
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        stream.write_all(reply.to_wire().as_bytes()),
    )
    .await;
}

pub(super) async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<Listener>,
    context: Arc<ServerContext>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let session_deadline = Instant::now() + listener.config.session_timeout;
    let local_ip = stream.local_addr().ok().map(|a| canonical_ip(a.ip()));
    let mut session = Session {
        stream: SessionStream::Plain(stream),
        context,
        listener,
        peer,
        client_ip: canonical_ip(peer.ip()),
        local_ip,
        helo: None,
        esmtp: false,
        transaction: None,
        tls: None,
        user: None,
        errors: 0,
        messages: 0,
        input: Vec::with_capacity(8192),
        output: Vec::with_capacity(1024),
        reply_bytes: 0,
        last_code: 0,
        data_bytes: 0,
        skipping_long_line: false,
        command_deadline: None,
        session_deadline,
        shutdown,
    };
    tracing::info!(client = %session.peer, listener = %session.listener.config.address, "session opened");
    let outcome = session.serve().await;
    // A 421 queued by the last command still goes out; TLS says close_notify.
    let _ = session.flush().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), session.stream.shutdown()).await;
    tracing::info!(
        client = %session.peer,
        messages = session.messages,
        user = session.user.as_deref().unwrap_or("-"),
        ?outcome,
        "session closed"
    );
}

impl Session {
    async fn serve(&mut self) -> Result<(), Closed> {
        if self.listener.config.tls == ListenerTls::Implicit {
            self.start_tls().await?;
        }
        let banner = Reply::new(
            220,
            format!("{} ESMTP smarthost ready", self.context.hostname),
        );
        self.queue_reply(&banner);
        self.flush().await?;
        loop {
            let line = match self.next_line().await? {
                Line::Complete(line) => line,
                Line::TooLong => {
                    self.error_reply(Reply::new(500, "5.5.2 Line too long"))?;
                    continue;
                }
            };
            if let Next::Quit = self.command(&line).await? {
                self.flush().await?;
                return Ok(());
            }
        }
    }

    /// The next line from the client. Replies collected so far are written only when no complete
    /// line is waiting in the input (pipelining).
    async fn next_line(&mut self) -> Result<Line, Closed> {
        loop {
            if let Some(end) = memchr::memchr(b'\n', &self.input) {
                let line: Vec<u8> = self.input.drain(..=end).collect();
                self.command_deadline = None;
                if std::mem::take(&mut self.skipping_long_line) {
                    return Ok(Line::TooLong);
                }
                return Ok(Line::Complete(line));
            }
            if self.input.len() > MAX_COMMAND_LINE {
                self.input.clear();
                self.skipping_long_line = true;
            }
            self.flush().await?;
            self.read_command_input().await?;
        }
    }

    /// Reads more input while waiting for a command: bounded by the command's deadline (set when the
    /// wait began, not moved by partial input) and the session's, and interrupted by shutdown.
    async fn read_command_input(&mut self) -> Result<(), Closed> {
        let mut shutdown = self.shutdown.clone();
        if *shutdown.borrow() {
            return self
                .say_421("4.3.2 Service shutting down, try again later")
                .await;
        }
        let timeout = self.context.limits.command_timeout;
        let deadline = *self
            .command_deadline
            .get_or_insert_with(|| Instant::now() + timeout);
        let until = deadline.min(self.session_deadline);
        self.input.reserve(8192);
        let read = tokio::select! {
            read = tokio::time::timeout_at(until, self.stream.read_buf(&mut self.input)) => read,
            _ = shutdown.changed() => {
                return self.say_421("4.3.2 Service shutting down, try again later").await;
            }
        };
        match read {
            Err(_) => {
                self.timed_out("4.4.2 Timeout waiting for a command, closing connection")
                    .await
            }
            Ok(Ok(0)) | Ok(Err(_)) => Err(Closed::Gone),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// A deadline passed: the session's own, or the one `text` is about.
    async fn timed_out(&mut self, text: &str) -> Result<(), Closed> {
        if Instant::now() >= self.session_deadline {
            tracing::info!(client = %self.peer, limit = ?self.listener.config.session_timeout, "session time limit reached");
            self.say_421("4.4.2 Session time limit exceeded, closing connection")
                .await
        } else {
            tracing::info!(client = %self.peer, "{}", text.trim_start_matches("4.4.2 "));
            self.say_421(text).await
        }
    }

    async fn say_421(&mut self, text: &str) -> Result<(), Closed> {
        let reply = Reply::new(421, format!("{text} ({})", self.context.hostname));
        self.queue_reply(&reply);
        let _ = self.flush().await;
        Err(Closed::Said421)
    }

    fn queue_reply(&mut self, reply: &Reply) {
        let wire = reply.to_wire();
        self.reply_bytes += wire.len() as u64;
        self.last_code = reply.code;
        self.output.extend_from_slice(wire.as_bytes());
    }

    /// A reply that counts as a client error; too many of them end the session.
    fn error_reply(&mut self, reply: Reply) -> Result<(), Closed> {
        tracing::debug!(client = %self.peer, reply = %reply.one_line(), "client error");
        self.queue_reply(&reply);
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            self.queue_reply(&Reply::new(
                421,
                format!(
                    "4.7.0 {} Too many errors, closing connection",
                    self.context.hostname
                ),
            ));
            return Err(Closed::Said421);
        }
        Ok(())
    }

    /// Writes the collected replies, within the command timeout (and a little past the session's
    /// end, so that its 421 still goes out).
    async fn flush(&mut self) -> Result<(), Closed> {
        if self.output.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let until = (now + self.context.limits.command_timeout)
            .min(self.session_deadline.max(now + Duration::from_secs(5)));
        let written = tokio::time::timeout_at(until, async {
            self.stream.write_all(&self.output).await?;
            self.stream.flush().await
        })
        .await;
        self.output.clear();
        match written {
            Ok(Ok(())) => Ok(()),
            _ => Err(Closed::Gone),
        }
    }

    /// One command and its W3C log line (whatever the outcome).
    async fn command(&mut self, line: &[u8]) -> Result<Next, Closed> {
        if !self.context.log.is_enabled() {
            return self.dispatch(line).await;
        }
        let started = Instant::now();
        let replied_before = self.reply_bytes;
        self.data_bytes = 0;
        let outcome = self.dispatch(line).await;
        let (verb, argument) = log_verb_and_argument(line);
        self.context.log.inbound(&crate::logs::w3c::InboundEntry {
            client_ip: self.client_ip,
            helo: self.helo.as_deref(),
            server_ip: self.local_ip,
            verb: &verb,
            argument: &argument,
            status: self.last_code,
            reply_bytes: self.reply_bytes - replied_before,
            command_bytes: line.len() as u64 + self.data_bytes,
            took: started.elapsed(),
        });
        outcome
    }

    async fn dispatch(&mut self, line: &[u8]) -> Result<Next, Closed> {
        let command = match parse_command(line) {
            Ok(c) => c,
            Err(reply) => {
                self.error_reply(reply)?;
                return Ok(Next::Continue);
            }
        };
        if let Command::Auth { mechanism, .. } = &command {
            // Never the initial response: it holds the password.
            tracing::debug!(client = %self.peer, "command: AUTH {mechanism} <redacted>");
        } else {
            tracing::debug!(client = %self.peer, ?command, "command");
        }
        match command {
            Command::Ehlo(name) => self.hello(name, true),
            Command::Helo(name) => self.hello(name, false),
            Command::Mail(mail) => self.mail(mail)?,
            Command::Rcpt(rcpt) => self.rcpt(rcpt.address)?,
            Command::Data => self.data().await?,
            Command::Rset => {
                self.transaction = None;
                self.queue_reply(&Reply::new(250, "2.0.0 OK"));
            }
            Command::Noop => self.queue_reply(&Reply::new(250, "2.0.0 OK")),
            Command::Quit => {
                let reply = Reply::new(
                    221,
                    format!("2.0.0 {} closing connection", self.context.hostname),
                );
                self.queue_reply(&reply);
                return Ok(Next::Quit);
            }
            Command::Help => self.queue_reply(&Reply::multiline(
                214,
                vec![
                    "2.0.0 smarthost relay; commands:".into(),
                    "2.0.0 EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET NOOP QUIT HELP VRFY".into(),
                ],
            )),
            Command::Vrfy(_) => self.queue_reply(&Reply::new(
                252,
                "2.1.5 Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Expn(_) => {
                self.error_reply(Reply::new(502, "5.5.1 EXPN is not supported"))?;
            }
            Command::StartTls => self.starttls().await?,
            Command::Auth {
                mechanism,
                initial_response,
            } => self.auth(&mechanism, initial_response).await?,
        }
        Ok(Next::Continue)
    }

    fn starttls_offered(&self) -> bool {
        self.listener.config.tls == ListenerTls::StartTls && self.tls.is_none()
    }

    fn hello(&mut self, name: String, esmtp: bool) {
        self.transaction = None;
        self.esmtp = esmtp;
        let greeting = format!(
            "{} Hello {} [{}]",
            self.context.hostname, name, self.client_ip
        );
        self.helo = Some(name);
        let reply = if esmtp {
            let mut lines = vec![
                greeting,
                "PIPELINING".into(),
                format!("SIZE {}", self.context.limits.max_message_size),
                "8BITMIME".into(),
                "ENHANCEDSTATUSCODES".into(),
                "SMTPUTF8".into(),
            ];
            if self.starttls_offered() {
                lines.push("STARTTLS".into());
            }
            if self.auth_offered() {
                let mechanisms = crate::policy::sasl_server::MECHANISMS.join(" ");
                lines.push(format!("AUTH {mechanisms}"));
                // The pre-RFC form, still expected by old Outlook versions and some devices.
                lines.push(format!("AUTH={mechanisms}"));
            }
            Reply::multiline(250, lines)
        } else {
            Reply::new(250, greeting)
        };
        self.queue_reply(&reply);
    }

    /// STARTTLS (RFC 3207): `220`, then the handshake; what was pipelined after it is dropped.
    async fn starttls(&mut self) -> Result<(), Closed> {
        if self.listener.config.tls != ListenerTls::StartTls {
            return self.error_reply(Reply::new(
                502,
                "5.5.1 STARTTLS is not offered on this listener",
            ));
        }
        if self.tls.is_some() {
            return self.error_reply(Reply::new(503, "5.5.1 TLS is already active"));
        }
        self.queue_reply(&Reply::new(220, "2.0.0 Ready to start TLS"));
        self.flush().await?;
        if !self.input.is_empty() {
            tracing::warn!(
                client = %self.peer,
                bytes = self.input.len(),
                "discarding what the client sent after STARTTLS before the TLS handshake; it is \
                 never executed (RFC 3207: possible command injection)"
            );
            self.input.clear();
        }
        self.skipping_long_line = false;
        self.start_tls().await
    }

    /// The TLS handshake, then a fresh session state (RFC 3207 §4.2).
    async fn start_tls(&mut self) -> Result<(), Closed> {
        let listener = self.listener.clone();
        let (Some(tls), Some(plain)) = (listener.tls.as_ref(), self.stream.take_plain()) else {
            return Err(Closed::Gone);
        };
        let until =
            (Instant::now() + self.context.limits.command_timeout).min(self.session_deadline);
        let mut shutdown = self.shutdown.clone();
        let handshake = async {
            tokio::select! {
                done = tokio::time::timeout_at(until, tls.accept(plain)) => Some(done),
                _ = shutdown.wait_for(|stop| *stop) => None,
            }
        };
        let Some(done) = handshake.await else {
            tracing::info!(client = %self.peer, "TLS handshake abandoned: shutting down");
            return Err(Closed::Gone);
        };
        match done {
            Ok(Ok((stream, info))) => {
                self.stream = SessionStream::Tls(Box::new(stream));
                tracing::info!(client = %self.peer, version = %info.version, cipher = %info.cipher, "TLS established");
                self.tls = Some(info);
                self.helo = None;
                self.esmtp = false;
                self.transaction = None;
                self.user = None;
                self.command_deadline = None;
                Ok(())
            }
            Ok(Err(error)) => {
                let error = error.to_string();
                match handshake_hint(&error, listener.config.min_tls) {
                    Some(hint) => {
                        tracing::warn!(client = %self.peer, %error, "TLS handshake failed: {hint}")
                    }
                    None => tracing::warn!(client = %self.peer, %error, "TLS handshake failed"),
                }
                Err(Closed::Gone)
            }
            Err(_) => {
                tracing::info!(client = %self.peer, "TLS handshake timed out");
                Err(Closed::Gone)
            }
        }
    }

    fn mail(&mut self, mail: crate::smtp::command::MailFrom) -> Result<(), Closed> {
        if self.helo.is_none() {
            return self.error_reply(Reply::new(503, "5.5.1 Send EHLO or HELO first"));
        }
        if self.transaction.is_some() {
            return self.error_reply(Reply::new(503, "5.5.1 Sender already specified"));
        }
        let max_messages = self.listener.config.max_messages_per_connection;
        if self.messages >= max_messages {
            tracing::info!(client = %self.peer, max_messages, "closing: max_messages_per_connection reached");
            self.queue_reply(&Reply::new(
                421,
                format!(
                    "4.7.0 {} Too many messages in this connection, reconnect to send more",
                    self.context.hostname
                ),
            ));
            return Err(Closed::Said421);
        }
        if self.listener.config.require_auth && self.user.is_none() {
            return self.error_reply(Reply::new(530, "5.7.0 Authentication required"));
        }
        if !mail.address.is_empty() && !crate::smtp::command::is_valid_mailbox(&mail.address) {
            return self.error_reply(Reply::new(501, "5.1.7 Bad sender address syntax"));
        }
        if (mail.smtputf8 || mail.body == BodyType::EightBitMime) && !self.esmtp {
            return self.error_reply(Reply::new(555, "5.5.4 Parameters need EHLO, not HELO"));
        }
        if !mail.smtputf8 && !mail.address.is_ascii() {
            return self.error_reply(Reply::new(
                553,
                "5.6.7 Non-ASCII sender address needs the SMTPUTF8 parameter",
            ));
        }
        let max = self.context.limits.max_message_size;
        if mail.size.is_some_and(|size| size > max) {
            return self.error_reply(Reply::new(
                552,
                format!("5.3.4 Message size exceeds the limit of {max} bytes"),
            ));
        }
        if let Some(user) = &self.user
            && !self.context.users.may_send_as(user, &mail.address)
        {
            tracing::warn!(client = %self.peer, %user, from = %mail.address, "sender refused: not in the user's allowed_senders");
            let text = format!(
                "5.7.1 Sender address <{}> not allowed for user {user}",
                mail.address
            );
            return self.error_reply(Reply::new(550, text));
        }
        self.queue_reply(&Reply::new(
            250,
            format!("2.1.0 Sender <{}> OK", mail.address),
        ));
        self.transaction = Some(Transaction {
            sender: mail.address,
            smtputf8: mail.smtputf8,
            recipients: Vec::new(),
        });
        Ok(())
    }

    fn rcpt(&mut self, address: String) -> Result<(), Closed> {
        let Some(transaction) = &self.transaction else {
            return self.error_reply(Reply::new(503, "5.5.1 Need MAIL command first"));
        };
        let smtputf8 = transaction.smtputf8;
        let count = transaction.recipients.len();
        let duplicate = transaction
            .recipients
            .iter()
            .any(|r| r.eq_ignore_ascii_case(&address));
        if !crate::smtp::command::is_valid_mailbox(&address) {
            return self.error_reply(Reply::new(501, "5.1.3 Bad recipient address syntax"));
        }
        if !smtputf8 && !address.is_ascii() {
            return self.error_reply(Reply::new(
                553,
                "5.6.7 Non-ASCII recipient address needs SMTPUTF8 in MAIL FROM",
            ));
        }
        if self.user.is_none() && !self.listener.config.may_relay(self.client_ip) {
            tracing::warn!(client = %self.peer, to = %address, "relay denied: client not in relay_from and not authenticated");
            let hint = if self.auth_offered() {
                " (authenticate first)"
            } else {
                ""
            };
            return self.error_reply(Reply::new(
                550,
                format!(
                    "5.7.1 Relaying denied: {} is not allowed to relay through this server{hint}",
                    self.client_ip
                ),
            ));
        }
        let Some(route) = self.context.router.route_for(&address) else {
            return self.error_reply(Reply::new(
                550,
                format!("5.7.1 Relaying denied: no route for the domain of <{address}>"),
            ));
        };
        if let Some(refusal) =
            outside_accepted_domains(&self.context.router.routes()[route], &address)
        {
            tracing::info!(client = %self.peer, to = %address, "recipient outside the route's accepted_domains");
            return self.error_reply(refusal);
        }
        if duplicate {
            self.queue_reply(&Reply::new(250, "2.1.5 Recipient OK (duplicate)"));
            return Ok(());
        }
        if count >= self.context.limits.max_recipients {
            self.queue_reply(&Reply::new(452, "4.5.3 Too many recipients"));
            return Ok(());
        }
        self.queue_reply(&Reply::new(250, format!("2.1.5 Recipient <{address}> OK")));
        if let Some(t) = self.transaction.as_mut() {
            t.recipients.push(address);
        }
        Ok(())
    }

    /// The `with` keyword of the Received header (RFC 3848).
    fn protocol(&self) -> &'static str {
        match (self.esmtp, self.tls.is_some(), self.user.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        }
    }

    async fn data(&mut self) -> Result<(), Closed> {
        match &self.transaction {
            None => return self.error_reply(Reply::new(503, "5.5.1 Need MAIL command first")),
            Some(t) if t.recipients.is_empty() => {
                return self.error_reply(Reply::new(554, "5.5.1 No valid recipients"));
            }
            Some(_) => {}
        }
        self.queue_reply(&Reply::new(354, "Start mail input; end with <CRLF>.<CRLF>"));
        self.flush().await?;

        let max = self.context.limits.max_message_size;
        let mut receiver = DataReceiver::new(max);
        let mut content = Vec::with_capacity(64 * 1024);
        let mut status = receiver.feed(&self.input, &mut content);
        let mut consumed_from_input = self.input.len();
        let mut chunk = Vec::with_capacity(64 * 1024);
        while status == DataStatus::NeedMore {
            chunk.clear();
            let until =
                (Instant::now() + self.context.limits.data_timeout).min(self.session_deadline);
            let read = tokio::time::timeout_at(until, self.stream.read_buf(&mut chunk)).await;
            match read {
                Err(_) => {
                    self.transaction = None;
                    return self
                        .timed_out("4.4.2 Timeout waiting for data, closing connection")
                        .await;
                }
                Ok(Ok(0)) | Ok(Err(_)) => {
                    tracing::warn!(client = %self.peer, "connection lost during DATA; nothing was queued");
                    return Err(Closed::Gone);
                }
                Ok(Ok(_)) => {}
            }
            self.input.clear();
            consumed_from_input = 0;
            status = receiver.feed(&chunk, &mut content);
            if let DataStatus::Complete { consumed } = status {
                // What follows the end of data is the next pipelined command.
                self.input.extend_from_slice(&chunk[consumed..]);
            }
        }
        if consumed_from_input > 0
            && let DataStatus::Complete { consumed } = status
        {
            self.input.drain(..consumed);
        }
        self.command_deadline = None;
        self.data_bytes = receiver.size();

        let transaction = self.transaction.take().expect("checked above");
        if receiver.exceeded() {
            tracing::warn!(client = %self.peer, size = receiver.size(), max, "message refused: too large");
            self.queue_reply(&Reply::new(
                552,
                format!("5.3.4 Message size exceeds the limit of {max} bytes"),
            ));
            return Ok(());
        }
        let submission = Submission {
            sender: transaction.sender,
            recipients: transaction.recipients,
            smtputf8: transaction.smtputf8,
            origin: Origin {
                source: "smtp",
                client_ip: Some(self.client_ip),
                helo: self.helo.clone(),
                protocol: self.protocol(),
            },
        };
        let reply = match self.context.ingest.submit(submission, content).await {
            Ok(id) => {
                self.messages += 1;
                Reply::new(250, format!("2.0.0 OK queued as {id}"))
            }
            Err(IngestError::Storage(e)) => {
                tracing::error!(client = %self.peer, error = %e, "cannot store message");
                Reply::new(452, "4.3.1 Insufficient system storage, try again later")
            }
            Err(IngestError::LowDiskSpace { available }) => {
                tracing::error!(client = %self.peer, available, "refusing mail: spool disk space below min_free_space");
                Reply::new(452, "4.3.1 Insufficient system storage, try again later")
            }
        };
        self.queue_reply(&reply);
        Ok(())
    }
}

enum Next {
    Continue,
    Quit,
}

/// The verbs logged as sent; anything else is logged as `-` (it could be a SASL response sent out
/// of turn, i.e. a password).
const KNOWN_VERBS: &[&str] = &[
    "HELO", "EHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "HELP", "VRFY", "EXPN",
    "STARTTLS", "AUTH", "ETRN", "TURN", "ATRN",
];

/// `cs-method` and the argument for the W3C log. AUTH keeps its mechanism only (never the initial
/// response); an unknown verb is `-` without its argument.
fn log_verb_and_argument(line: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches(['\r', '\n']).trim_start();
    let (verb, rest) = text.split_once([' ', '\t']).unwrap_or((text, ""));
    let verb = verb.to_ascii_uppercase();
    if !KNOWN_VERBS.contains(&verb.as_str()) {
        return ("-".to_string(), String::new());
    }
    let rest = rest.trim();
    let argument = if verb == "AUTH" {
        rest.split_whitespace().next().unwrap_or("").to_string()
    } else {
        rest.to_string()
    };
    (verb, argument)
}

/// The refusal of a recipient outside its route's `accepted_domains` (exact domains,
/// case-insensitive; subdomains are not included): refused now rather than bounced later, since
/// Direct Send can reach only the tenant's own domains.
fn outside_accepted_domains(route: &crate::config::RouteConfig, address: &str) -> Option<Reply> {
    if route.accepted_domains.is_empty() {
        return None;
    }
    let domain = crate::route::recipient_domain(address).unwrap_or_default();
    if route.accepted_domains.contains(&domain) {
        return None;
    }
    let domains = route.accepted_domains.join(", ");
    let text = if route.mode == Some(crate::config::M365Mode::DirectSend) {
        format!(
            "5.7.1 Direct Send through route {} can only deliver to {domains}; <{address}> is \
             outside them (Direct Send reaches only the tenant's own accepted domains)",
            route.name
        )
    } else {
        format!(
            "5.7.1 Route {} can only deliver to {domains}; <{address}> is outside them (its \
             accepted_domains)",
            route.name
        )
    };
    Some(Reply::new(550, text))
}
