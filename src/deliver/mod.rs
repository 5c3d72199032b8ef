//! Transports: how a message leaves the relay. Each takes one message and the recipients of one route
//! and answers one result per recipient, in the same order.

pub mod classify;
pub mod connector;
pub mod drop;
pub mod graph;
pub mod oauth;
pub mod rewrite;
pub mod smtp;
pub mod throttle;

use crate::config::{RouteConfig, Transport};
use std::sync::Arc;

/// What a transport gets: the envelope for one route and the stored message content
/// (header lines and body, CRLF line endings, not dot-stuffed).
#[derive(Debug, Clone, Copy)]
pub struct OutboundMessage<'a> {
    pub queue_id: &'a str,
    /// Envelope sender; empty for the null sender.
    pub sender: &'a str,
    pub recipients: &'a [String],
    pub content: &'a [u8],
    /// The client asked for SMTPUTF8 (non-ASCII addresses or headers).
    pub smtputf8: bool,
    /// The content has 8-bit bytes (send BODY=8BITMIME when the upstream offers it).
    pub eight_bit: bool,
}

/// The result of one attempt for one recipient. `reply`/`reason` are for people: they name the upstream
/// and quote its reply, and they never contain a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientResult {
    Delivered {
        reply: String,
    },
    /// Temporary: try again later.
    Deferred {
        reason: String,
    },
    /// Permanent: do not try again.
    Failed {
        reason: String,
    },
}

impl RecipientResult {
    pub fn is_final(&self) -> bool {
        !matches!(self, RecipientResult::Deferred { .. })
    }
}

/// A route's transport, built once from its configuration and shared by all deliveries.
#[derive(Debug)]
pub enum Transporter {
    Drop(drop::DropTransport),
    Smtp(smtp::SmtpTransport),
    Graph(graph::GraphTransport),
}

impl Transporter {
    /// `helo_name` is the relay's own host name, sent in EHLO.
    pub fn from_route(route: &RouteConfig, helo_name: &str) -> anyhow::Result<Arc<Self>> {
        Self::from_route_logged(route, helo_name, &crate::logs::LogSink::disabled())
    }

    /// [`Transporter::from_route`] whose SMTP client writes to the W3C log `log`.
    pub fn from_route_logged(
        route: &RouteConfig,
        helo_name: &str,
        log: &crate::logs::LogSink,
    ) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(match &route.transport {
            Transport::Drop { path } => Transporter::Drop(drop::DropTransport::new(path.clone())),
            Transport::Graph(graph) => Transporter::Graph(graph::GraphTransport::new(graph)?),
            Transport::Smtp(smtp) => Transporter::Smtp(smtp::SmtpTransport::with_log(
                smtp,
                helo_name.to_string(),
                log.clone(),
            )?),
        }))
    }

    pub async fn deliver(&self, msg: &OutboundMessage<'_>) -> Vec<RecipientResult> {
        match self {
            Transporter::Drop(t) => t.deliver(msg).await,
            Transporter::Smtp(t) => t.deliver(msg).await,
            Transporter::Graph(t) => t.deliver(msg).await,
        }
    }
}
