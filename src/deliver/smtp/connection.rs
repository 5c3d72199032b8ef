//! One SMTP client connection to an upstream: set up by [`Connection::connect`] (see `setup`), then
//! any number of mail transactions ([`Connection::send_transaction`]), each after the first preceded
//! by RSET, then [`Connection::quit`]. With PIPELINING the RSET goes in the same write as MAIL, RCPT
//! and DATA (RFC 2920 allows it anywhere in a group); without it, [`Connection::reset`] is a round
//! trip of its own. Either way a connection that does not answer RSET with 2xx is [`Stale`]: nothing
//! is decided from it, and the caller closes it and sends the message on another one.
//!
//! Every reason written here or in `setup` names the upstream as `host[ip]:port`, the command and the
//! reply, with the explanation from [`explain`] when there is one.

use super::setup::{self, Extensions};
use super::wire::{Stream, Wire, WireError};
use crate::config::SmtpRoute;
use crate::deliver::classify::{Class, Stage, classify_at, explain};
use crate::deliver::oauth::{AccessToken, TokenProvider};
use crate::deliver::{OutboundMessage, RecipientResult};
use crate::smtp::Reply;
use crate::smtp::data::dot_stuff;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::{debug, info};

/// What a connection needs to know about its route; shared by all connections of a transport.
pub(crate) struct Upstream {
    pub(crate) route: SmtpRoute,
    pub(crate) helo_name: String,
    pub(crate) tls: tokio_rustls::TlsConnector,
    /// The access tokens for AUTH XOAUTH2 (routes with OAuth credentials).
    pub(crate) tokens: Option<Arc<TokenProvider>>,
    /// The W3C log (disabled unless the relay was started with one).
    pub(crate) log: crate::logs::LogSink,
}

/// The upstream's name and the address actually connected: `smtp.office365.com[52.96.1.2]:587`.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(super) host: String,
    pub(super) addr: SocketAddr,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]:{}", self.host, self.addr.ip(), self.addr.port())
    }
}

/// A failure that ends the connection (or prevents it): applies to every recipient not yet decided.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) class: Class,
    pub(crate) reason: String,
    /// The upstream refused this access token (5xx to AUTH XOAUTH2): the transport drops it and tries
    /// once more on a new connection with a new token.
    pub(crate) refused_token: Option<AccessToken>,
}

impl Failure {
    pub(super) fn transient(reason: String) -> Self {
        Failure {
            class: Class::Transient,
            reason,
            refused_token: None,
        }
    }

    pub(crate) fn result(&self) -> RecipientResult {
        match self.class {
            Class::Transient => RecipientResult::Deferred {
                reason: self.reason.clone(),
            },
            Class::Permanent => RecipientResult::Failed {
                reason: self.reason.clone(),
            },
        }
    }
}

/// A reused connection that turned out dead or unwilling at RSET (write error, lost connection, a
/// non-2xx reply such as `421`): no recipient was decided on it, and it may be in any state (even
/// DATA, if the upstream refused a pipelined RSET but took MAIL, RCPT and DATA), so it must be closed
/// without sending anything more and the message sent on another connection.
#[derive(Debug)]
pub(crate) struct Stale {
    pub(crate) reason: String,
}

/// Why a transaction stopped early.
enum Abort {
    /// The RSET of a reused connection failed: see [`Stale`].
    Stale(String),
    /// A failure that applies to every recipient not yet decided.
    Failed(Failure),
}

impl From<Failure> for Abort {
    fn from(failure: Failure) -> Self {
        Abort::Failed(failure)
    }
}

/// The outcome of one mail transaction.
#[derive(Debug)]
pub(crate) struct Transaction {
    /// One per recipient, in order.
    pub(crate) results: Vec<RecipientResult>,
    /// The connection is in a known state and may carry another transaction (after RSET).
    pub(crate) reusable: bool,
}

pub(crate) struct Connection {
    wire: Wire,
    peer: Peer,
    ext: Extensions,
}

impl Connection {
    pub(super) fn new(wire: Wire, peer: Peer, ext: Extensions) -> Self {
        Connection { wire, peer, ext }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer.to_string())
            .field("tls", &self.is_tls())
            .finish()
    }
}

impl Connection {
    /// Opens a connection ready for a transaction: TCP, TLS per the route, EHLO, AUTH.
    pub(crate) async fn connect(up: &Upstream) -> Result<Connection, Failure> {
        setup::open(up).await
    }

    pub(crate) fn is_tls(&self) -> bool {
        matches!(self.wire.stream(), Stream::Tls(_))
    }

    /// Sends one message; `reused`: the connection carried a transaction before and owes the
    /// upstream an RSET first (pipelined with the envelope when PIPELINING is offered).
    ///
    /// Connection problems become `Deferred` results for every recipient not decided before them;
    /// the only error is [`Stale`], when the RSET of a reused connection fails (nothing decided).
    pub(crate) async fn send_transaction(
        &mut self,
        msg: &OutboundMessage<'_>,
        reused: bool,
    ) -> Result<Transaction, Stale> {
        let n = msg.recipients.len();
        if let Some(reason) = self.cannot_carry(msg) {
            // Nothing sent: a reused connection still owes its RSET, and gets it with the next message.
            info!(upstream = %self.peer, "{reason}");
            return Ok(Transaction {
                results: vec![RecipientResult::Failed { reason }; n],
                reusable: true,
            });
        }
        let rset_first = reused && self.ext.pipelining;
        if reused
            && !rset_first
            && let Err(failure) = self.reset().await
        {
            return Err(Stale {
                reason: failure.reason,
            });
        }
        let mut tx = TransactionState {
            decided: vec![None; n],
            accepted: Vec::with_capacity(n),
            reusable: true,
        };
        match self.transaction(msg, &mut tx, rset_first).await {
            Ok(()) => {}
            Err(Abort::Stale(reason)) => return Err(Stale { reason }),
            Err(Abort::Failed(failure)) => {
                info!(upstream = %self.peer, "{}", failure.reason);
                tx.reusable = false;
                for slot in tx.decided.iter_mut().filter(|slot| slot.is_none()) {
                    *slot = Some(failure.result());
                }
            }
        }
        Ok(Transaction {
            results: tx
                .decided
                .into_iter()
                .map(|r| {
                    // Every path above decides every recipient; this is only a safety net.
                    r.unwrap_or_else(|| RecipientResult::Deferred {
                        reason: "internal error: no result for this recipient".into(),
                    })
                })
                .collect(),
            reusable: tx.reusable,
        })
    }

    /// A message the upstream cannot take whatever we do: fail it before sending anything.
    fn cannot_carry(&self, msg: &OutboundMessage<'_>) -> Option<String> {
        if msg.smtputf8 && !self.ext.smtputf8 {
            return Some(format!(
                "the message needs SMTPUTF8 (non-ASCII addresses or headers) but {} does not offer it",
                self.peer
            ));
        }
        let size = message_size(msg.content);
        match self.ext.size {
            Some(limit) if limit > 0 && size > limit => Some(format!(
                "the message ({size} bytes) is larger than the {limit} bytes {} accepts (SIZE in its EHLO reply)",
                self.peer
            )),
            _ => None,
        }
    }

    /// `rset_first`: a reused connection with PIPELINING; RSET leads the pipelined group and any
    /// failure up to and including its reply is [`Abort::Stale`].
    async fn transaction(
        &mut self,
        msg: &OutboundMessage<'_>,
        tx: &mut TransactionState,
        rset_first: bool,
    ) -> Result<(), Abort> {
        let mail = format!("MAIL FROM:<{}>", msg.sender);
        let mut mail_line = mail.clone();
        if self.ext.size.is_some() {
            mail_line.push_str(&format!(" SIZE={}", message_size(msg.content)));
        }
        if msg.eight_bit {
            if self.ext.eight_bit_mime {
                mail_line.push_str(" BODY=8BITMIME");
            } else {
                debug!(upstream = %self.peer, "8-bit content but no 8BITMIME offered: sending it as it is");
            }
        }
        if msg.smtputf8 {
            mail_line.push_str(" SMTPUTF8");
        }
        let rcpts: Vec<String> = msg
            .recipients
            .iter()
            .map(|r| format!("RCPT TO:<{r}>"))
            .collect();
        let pipelining = self.ext.pipelining;

        if pipelining {
            // RFC 2920: MAIL, every RCPT and DATA in one write (after RSET on a reused connection:
            // it may appear anywhere in a group); the replies come back in order.
            let mut batch = String::new();
            if rset_first {
                debug!(upstream = %self.peer, "C: RSET");
                self.wire.log_command("RSET");
                batch.push_str("RSET\r\n");
            }
            for line in std::iter::once(&mail_line).chain(&rcpts) {
                debug!(upstream = %self.peer, "C: {line}");
                self.wire.log_command(line);
                batch.push_str(line);
                batch.push_str("\r\n");
            }
            debug!(upstream = %self.peer, "C: DATA");
            self.wire.log_command("DATA");
            batch.push_str("DATA\r\n");
            if rset_first {
                self.write(batch.as_bytes(), "RSET")
                    .await
                    .map_err(|failure| Abort::Stale(failure.reason))?;
                // The reply to RSET first; anything but 2xx and the rest of the group is not ours
                // to read: the upstream may have taken MAIL, RCPT and even DATA after refusing RSET.
                let reply = self
                    .read(Stage::Rset, "RSET")
                    .await
                    .map_err(|failure| Abort::Stale(failure.reason))?;
                if !reply.is_positive() {
                    return Err(Abort::Stale(said(&self.peer, &reply, Stage::Rset, "RSET")));
                }
            } else {
                self.write(batch.as_bytes(), &mail).await?;
            }
        } else {
            self.send(&mail_line, &mail).await?;
        }

        let reply = self.read(Stage::MailFrom, &mail).await?;
        tx.note_reply(&reply);
        let mail_ok = reply.is_positive();
        if !mail_ok {
            let result = self.outcome(Stage::MailFrom, &mail, &reply);
            tx.decided
                .iter_mut()
                .for_each(|slot| *slot = Some(result.clone()));
            if !pipelining {
                return Ok(());
            }
        }

        for (i, rcpt) in rcpts.iter().enumerate() {
            if !pipelining {
                self.send(rcpt, rcpt).await?;
            }
            let reply = self.read(Stage::RcptTo, rcpt).await?;
            tx.note_reply(&reply);
            if !mail_ok {
                continue;
            }
            if reply.is_positive() {
                tx.accepted.push(i);
            } else {
                tx.decided[i] = Some(self.outcome(Stage::RcptTo, rcpt, &reply));
            }
        }

        if !pipelining {
            if tx.accepted.is_empty() {
                // Nothing to send: end the transaction instead of sending DATA.
                self.send("RSET", "RSET").await?;
                let reply = self.read(Stage::Rset, "RSET").await?;
                tx.note_reply(&reply);
                tx.reusable &= reply.is_positive();
                return Ok(());
            }
            self.send("DATA", "DATA").await?;
        }
        let reply = self.read(Stage::Data, "DATA").await?;
        tx.note_reply(&reply);
        if reply.code != 354 {
            // With pipelining and no accepted recipient this is the expected 554/503.
            let result = self.outcome(Stage::Data, "DATA", &reply);
            for &i in &tx.accepted {
                tx.decided[i] = Some(result.clone());
            }
            return Ok(());
        }
        if tx.accepted.is_empty() {
            // A server that says 354 with nobody to deliver to: end the content at once.
            self.write(b".\r\n", "an empty DATA").await?;
            let reply = self.read(Stage::EndOfData, "an empty DATA").await?;
            tx.note_reply(&reply);
            return Ok(());
        }

        let mut wire = Vec::with_capacity(msg.content.len() + msg.content.len() / 32 + 5);
        dot_stuff(msg.content, &mut wire);
        debug!(upstream = %self.peer, "C: <{} bytes of content>", wire.len());
        self.write(&wire, "the message content").await?;
        let reply = self.read(Stage::EndOfData, "the message content").await?;
        tx.note_reply(&reply);
        let result = self.outcome(Stage::EndOfData, "the message content", &reply);
        for &i in &tx.accepted {
            tx.decided[i] = Some(result.clone());
        }
        Ok(())
    }

    /// RSET before the connection carries another message; any failure means "do not reuse".
    pub(crate) async fn reset(&mut self) -> Result<(), Failure> {
        self.send("RSET", "RSET").await?;
        let reply = self.read(Stage::Rset, "RSET").await?;
        if reply.is_positive() {
            Ok(())
        } else {
            Err(Failure::transient(said(
                &self.peer,
                &reply,
                Stage::Rset,
                "RSET",
            )))
        }
    }

    /// Closes a [`Stale`] connection at once: no QUIT (it may be in DATA, or dead), nothing more sent.
    pub(crate) fn abandon(self) {
        debug!(upstream = %self.peer, "closed without QUIT");
        drop(self);
    }

    /// QUIT, wait briefly for the answer, close. Errors do not matter any more.
    pub(crate) async fn quit(mut self) {
        if self.send("QUIT", "QUIT").await.is_ok()
            && let Ok(reply) = self.wire.read_reply().await
        {
            self.wire.log_reply(&reply, false);
        }
        self.wire.shutdown().await;
        debug!(upstream = %self.peer, "closed");
    }

    /// The result for the recipients a reply applies to.
    fn outcome(&self, stage: Stage, command: &str, reply: &Reply) -> RecipientResult {
        let text = said(&self.peer, reply, stage, command);
        if reply.is_positive() {
            return RecipientResult::Delivered { reply: text };
        }
        info!(upstream = %self.peer, "{text}");
        match classify_at(stage, reply) {
            Class::Transient => RecipientResult::Deferred { reason: text },
            Class::Permanent => RecipientResult::Failed { reason: text },
        }
    }

    async fn send(&mut self, line: &str, command: &str) -> Result<(), Failure> {
        debug!(upstream = %self.peer, "C: {line}");
        self.wire.log_command(line);
        self.write(format!("{line}\r\n").as_bytes(), command).await
    }

    async fn write(&mut self, bytes: &[u8], command: &str) -> Result<(), Failure> {
        self.wire
            .write_all(bytes)
            .await
            .map_err(|e| lost(&self.peer, &format!("while sending {command}"), e))
    }

    async fn read(&mut self, stage: Stage, command: &str) -> Result<Reply, Failure> {
        read(&mut self.wire, &self.peer, stage, command).await
    }
}

/// Per-recipient bookkeeping of one transaction.
struct TransactionState {
    decided: Vec<Option<RecipientResult>>,
    /// Recipients the upstream accepted at RCPT, waiting for the outcome of DATA.
    accepted: Vec<usize>,
    reusable: bool,
}

impl TransactionState {
    /// `421`: the server is closing the connection (RFC 5321 §3.8).
    fn note_reply(&mut self, reply: &Reply) {
        if reply.code == 421 {
            self.reusable = false;
        }
    }
}

pub(super) async fn read(
    wire: &mut Wire,
    peer: &Peer,
    stage: Stage,
    command: &str,
) -> Result<Reply, Failure> {
    match wire.read_reply().await {
        Ok(reply) => {
            debug!(upstream = %peer, "S: {}", reply.one_line());
            wire.log_reply(&reply, stage == Stage::Auth);
            Ok(reply)
        }
        Err(e) => {
            let when = if stage == Stage::Greeting {
                "before the greeting".to_string()
            } else {
                format!("after {command}")
            };
            Err(lost(peer, &when, e))
        }
    }
}

pub(super) fn lost(peer: &Peer, when: &str, err: WireError) -> Failure {
    let reason = match err {
        WireError::Closed => format!("{peer}: connection lost {when} (closed by the upstream)"),
        WireError::Io(e) => format!("{peer}: connection lost {when}: {e}"),
        WireError::Timeout(_) => format!("{peer}: timed out {when}: {err}"),
        WireError::Malformed(_) | WireError::LineTooLong => {
            format!("{peer}: unreadable reply {when}: {err}")
        }
    };
    Failure::transient(reason)
}

/// `host[ip]:port said "550 5.1.1 User unknown" in reply to RCPT TO:<x@y> (explanation)`.
pub(super) fn said(peer: &Peer, reply: &Reply, stage: Stage, command: &str) -> String {
    let context = match stage {
        Stage::Greeting => "in its greeting".to_string(),
        Stage::EndOfData => "after the message content".to_string(),
        _ => format!("in reply to {command}"),
    };
    let mut text = format!("{peer} said \"{}\" {context}", reply.one_line());
    if let Some(explanation) = explain(reply) {
        text.push_str(&format!(" ({explanation})"));
    }
    text
}

/// The size for `SIZE=` (RFC 1870): the content as sent, before dot-stuffing, with the final CRLF.
fn message_size(content: &[u8]) -> u64 {
    let tail = if content.ends_with(b"\r\n") { 0 } else { 2 };
    content.len() as u64 + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn size_counts_the_final_line_end() {
        assert_eq!(message_size(b"a\r\n"), 3);
        assert_eq!(message_size(b"a"), 3);
        assert_eq!(message_size(b""), 2);
    }
}
