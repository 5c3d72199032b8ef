//! One inbound SMTP session (RFC 5321), from the banner to QUIT.
//!
//! Replies to pipelined commands (RFC 2920) are collected and written when no complete command is
//! left in the input buffer, so a client that pipelines gets its replies in one write and a client
//! that does not gets each reply at once. A message is acknowledged (`250` after DATA) only after
//! [`Ingest::submit`] has stored it durably.

use super::ServerContext;
use crate::config::{ListenerConfig, canonical_ip};
use crate::ingest::{IngestError, Origin, Submission};
use crate::smtp::Reply;
use crate::smtp::command::{BodyType, Command, MAX_COMMAND_LINE, parse_command};
use crate::smtp::data::{DataReceiver, DataStatus};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Errors (unknown commands, bad syntax, refused recipients) after which the session is closed.
const MAX_ERRORS: u32 = 20;

/// Why a session ended early.
#[derive(Debug)]
enum Closed {
    /// The client went away, or the socket failed.
    Gone,
    /// We said 421 (timeout, shutdown, too many errors).
    Said421,
}

struct Transaction {
    sender: String,
    smtputf8: bool,
    recipients: Vec<String>,
}

struct Session<S> {
    stream: S,
    context: Arc<ServerContext>,
    listener: Arc<ListenerConfig>,
    peer: SocketAddr,
    client_ip: IpAddr,
    helo: Option<String>,
    esmtp: bool,
    transaction: Option<Transaction>,
    errors: u32,
    messages: u32,
    input: Vec<u8>,
    output: Vec<u8>,
    shutdown: watch::Receiver<bool>,
}

/// Answers a client that arrives when all connection slots are taken.
pub(super) async fn refuse_busy(mut stream: TcpStream, peer: SocketAddr, hostname: &str) {
    tracing::warn!(client = %peer, "connection refused: too many connections");
    let reply = Reply::new(
        421,
        format!("4.7.0 {hostname} Too many connections, try again later"),
    );
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.write_all(reply.to_wire().as_bytes()),
    )
    .await;
}

pub(super) async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerConfig>,
    context: Arc<ServerContext>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let mut session = Session {
        stream,
        context,
        listener,
        peer,
        client_ip: canonical_ip(peer.ip()),
        helo: None,
        esmtp: false,
        transaction: None,
        errors: 0,
        messages: 0,
        input: Vec::with_capacity(8192),
        output: Vec::with_capacity(1024),
        shutdown,
    };
    tracing::info!(client = %session.peer, "session opened");
    let outcome = session.serve().await;
    // A 421 queued by the last command still goes out.
    let _ = session.flush().await;
    tracing::info!(client = %session.peer, messages = session.messages, ?outcome, "session closed");
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    async fn serve(&mut self) -> Result<(), Closed> {
        let banner = Reply::new(
            220,
            format!("{} ESMTP smarthost ready", self.context.hostname),
        );
        self.queue_reply(&banner);
        self.flush().await?;
        // Set while the rest of an over-long line is being skipped.
        let mut skipping_long_line = false;
        loop {
            // Answer every complete command already received (pipelining).
            while let Some(end) = memchr_lf(&self.input) {
                let line: Vec<u8> = self.input.drain(..=end).collect();
                if std::mem::take(&mut skipping_long_line) {
                    self.error_reply(Reply::new(500, "5.5.2 Line too long"))?;
                    continue;
                }
                match self.command(&line).await? {
                    Next::Continue => {}
                    Next::Quit => {
                        self.flush().await?;
                        return Ok(());
                    }
                }
            }
            if self.input.len() > MAX_COMMAND_LINE {
                self.input.clear();
                skipping_long_line = true;
            }
            self.flush().await?;
            self.read_command_input().await?;
        }
    }

    /// Reads more input while waiting for a command: bounded by the command timeout and interrupted
    /// by shutdown.
    async fn read_command_input(&mut self) -> Result<(), Closed> {
        let timeout = self.context.limits.command_timeout;
        let mut shutdown = self.shutdown.clone();
        if *shutdown.borrow() {
            return self
                .say_421("4.3.2 Service shutting down, try again later")
                .await;
        }
        self.input.reserve(8192);
        let read = tokio::select! {
            read = tokio::time::timeout(timeout, self.stream.read_buf(&mut self.input)) => read,
            _ = shutdown.changed() => {
                return self.say_421("4.3.2 Service shutting down, try again later").await;
            }
        };
        match read {
            Err(_) => {
                tracing::info!(client = %self.peer, "command timeout");
                self.say_421("4.4.2 Timeout waiting for a command, closing connection")
                    .await
            }
            Ok(Ok(0)) | Ok(Err(_)) => Err(Closed::Gone),
            Ok(Ok(_)) => Ok(()),
        }
    }

    async fn say_421(&mut self, text: &str) -> Result<(), Closed> {
        let reply = Reply::new(421, format!("{text} ({})", self.context.hostname));
        self.queue_reply(&reply);
        let _ = self.flush().await;
        Err(Closed::Said421)
    }

    fn queue_reply(&mut self, reply: &Reply) {
        self.output.extend_from_slice(reply.to_wire().as_bytes());
    }

    /// A reply that counts as a client error; too many of them end the session.
    fn error_reply(&mut self, reply: Reply) -> Result<(), Closed> {
        tracing::debug!(client = %self.peer, reply = %reply, "client error");
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

    async fn flush(&mut self) -> Result<(), Closed> {
        if self.output.is_empty() {
            return Ok(());
        }
        let timeout = self.context.limits.command_timeout;
        let written = tokio::time::timeout(timeout, self.stream.write_all(&self.output)).await;
        self.output.clear();
        match written {
            Ok(Ok(())) => Ok(()),
            _ => Err(Closed::Gone),
        }
    }

    async fn command(&mut self, line: &[u8]) -> Result<Next, Closed> {
        let command = match parse_command(line) {
            Ok(c) => c,
            Err(reply) => {
                self.error_reply(reply)?;
                return Ok(Next::Continue);
            }
        };
        tracing::debug!(client = %self.peer, ?command, "command");
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
                    "2.0.0 EHLO HELO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY".into(),
                ],
            )),
            Command::Vrfy(_) => self.queue_reply(&Reply::new(
                252,
                "2.1.5 Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Expn(_) => {
                self.error_reply(Reply::new(502, "5.5.1 EXPN is not supported"))?;
            }
            Command::StartTls => {
                self.error_reply(Reply::new(
                    502,
                    "5.5.1 STARTTLS is not offered on this listener",
                ))?;
            }
            Command::Auth { .. } => {
                self.error_reply(Reply::new(
                    502,
                    "5.5.1 AUTH is not offered on this listener",
                ))?;
            }
        }
        Ok(Next::Continue)
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
            Reply::multiline(
                250,
                vec![
                    greeting,
                    "PIPELINING".into(),
                    format!("SIZE {}", self.context.limits.max_message_size),
                    "8BITMIME".into(),
                    "ENHANCEDSTATUSCODES".into(),
                    "SMTPUTF8".into(),
                ],
            )
        } else {
            Reply::new(250, greeting)
        };
        self.queue_reply(&reply);
    }

    fn mail(&mut self, mail: crate::smtp::command::MailFrom) -> Result<(), Closed> {
        if self.helo.is_none() {
            return self.error_reply(Reply::new(503, "5.5.1 Send EHLO or HELO first"));
        }
        if self.transaction.is_some() {
            return self.error_reply(Reply::new(503, "5.5.1 Sender already specified"));
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
        if !self.listener.may_relay(self.client_ip) {
            tracing::warn!(client = %self.peer, to = %address, "relay denied: client not in relay_from");
            return self.error_reply(Reply::new(
                550,
                format!(
                    "5.7.1 Relaying denied: {} is not allowed to relay through this server",
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
            let read = tokio::time::timeout(
                self.context.limits.data_timeout,
                self.stream.read_buf(&mut chunk),
            )
            .await;
            match read {
                Err(_) => {
                    self.transaction = None;
                    return self
                        .say_421("4.4.2 Timeout waiting for data, closing connection")
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
                protocol: if self.esmtp { "ESMTP" } else { "SMTP" },
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

fn memchr_lf(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
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
