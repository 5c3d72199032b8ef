//! What the queue shows about its messages: the types that `queue list/show` and (later) the admin API
//! print and exchange. They carry no secrets: reasons and replies are written for people by the
//! transports, which never put credentials in them.

use serde::{Deserialize, Serialize};

/// One message in the queue, as `queue list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageInfo {
    pub id: String,
    /// The relay node whose spool holds it (`[cluster] node`, default the machine's host name).
    #[serde(default)]
    pub node: String,
    /// Unix seconds when it was accepted.
    pub received_at: u64,
    pub size: u64,
    /// Envelope sender; empty for the null sender (bounces).
    pub sender: String,
    /// Where it came from (`smtp 10.0.0.21 scanner1`).
    pub origin: String,
    pub attempts: u32,
    /// Unix seconds of the next attempt; 0 when held or in an attempt now.
    pub next_attempt: u64,
    /// Held by an administrator: not delivered until released.
    pub held: bool,
    /// In a delivery attempt right now.
    pub active: bool,
    pub recipients: Vec<RecipientInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientInfo {
    pub address: String,
    /// `pending`, `delivered`, `deferred` or `failed`.
    pub state: String,
    /// The last reply or reason for this recipient, if any.
    pub detail: Option<String>,
    /// Unix seconds of that reply.
    pub at: Option<u64>,
}

pub use crate::spool::AttemptRecord;

/// `queue show`: everything about one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDetail {
    pub info: MessageInfo,
    /// The header section of the message as stored (our Received header first).
    pub headers: String,
    pub history: Vec<AttemptRecord>,
}

/// Why a queue command could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("no message with queue id {0} in the queue")]
    NotFound(String),
    #[error("message {0} is in a delivery attempt right now; try again in a moment")]
    Busy(String),
    #[error("message {0} is held; release it first")]
    Held(String),
    #[error("spool error: {0}")]
    Storage(#[from] std::io::Error),
}
