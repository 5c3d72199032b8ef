//! What an administrator can see and do with queued messages (`smarthost queue ...`, later the admin
//! API). Changes that must survive a restart (hold, release) are written to the spool before they are
//! confirmed; a message in a delivery attempt is not changed under the attempt's feet.

use super::view::{MessageDetail, MessageInfo, QueueError, RecipientInfo};
use super::{Entry, Queue};
use crate::spool::{self, RecipientState};

/// The header section of a stored message, at most this long in `queue show`.
const HEADERS_SHOWN: usize = 64 * 1024;

fn info(entry: &Entry, node: &str) -> MessageInfo {
    let e = &entry.envelope;
    MessageInfo {
        id: e.id.clone(),
        node: node.to_string(),
        received_at: e.received_at,
        size: e.size,
        sender: e.sender.clone(),
        origin: e.origin.clone(),
        attempts: e.attempts,
        next_attempt: if e.held || entry.active {
            0
        } else {
            e.next_attempt
        },
        held: e.held,
        active: entry.active,
        recipients: e
            .recipients
            .iter()
            .map(|r| {
                let (state, detail, at) = match &r.state {
                    RecipientState::Pending => ("pending", None, None),
                    RecipientState::Delivered { reply, at } => {
                        ("delivered", Some(reply), Some(*at))
                    }
                    RecipientState::Deferred { reason, at } => {
                        ("deferred", Some(reason), Some(*at))
                    }
                    RecipientState::Failed { reason, at } => ("failed", Some(reason), Some(*at)),
                };
                RecipientInfo {
                    address: r.address.clone(),
                    state: state.to_string(),
                    detail: detail.cloned(),
                    at,
                }
            })
            .collect(),
    }
}

/// The header section: everything up to the first empty line.
fn header_section(content: &[u8]) -> String {
    let end = content
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(content.len())
        .min(HEADERS_SHOWN);
    String::from_utf8_lossy(&content[..end]).into_owned()
}

impl Queue {
    fn checked_id(id: &str) -> Result<(), QueueError> {
        if spool::is_queue_id(id) {
            Ok(())
        } else {
            Err(QueueError::NotFound(id.to_string()))
        }
    }

    /// Every message in the queue, oldest first.
    pub fn list(&self) -> Vec<MessageInfo> {
        let schedule = self.lock();
        let mut all: Vec<MessageInfo> = schedule
            .entries
            .values()
            .map(|e| info(e, &self.inner.node))
            .collect();
        all.sort_by(|a, b| (a.received_at, &a.id).cmp(&(b.received_at, &b.id)));
        all
    }

    /// One message with its headers and attempt history.
    pub async fn show(&self, id: &str) -> Result<MessageDetail, QueueError> {
        Self::checked_id(id)?;
        let (info, history) = {
            let schedule = self.lock();
            let entry = schedule
                .entries
                .get(id)
                .ok_or_else(|| QueueError::NotFound(id.to_string()))?;
            (
                info(entry, &self.inner.node),
                entry.envelope.history.clone(),
            )
        };
        let content = self.read_content(id).await?;
        Ok(MessageDetail {
            info,
            headers: header_section(&content),
            history,
        })
    }

    /// Makes a message due now.
    pub fn retry(&self, id: &str) -> Result<(), QueueError> {
        Self::checked_id(id)?;
        let now = self.now();
        let mut schedule = self.lock();
        let entry = schedule
            .entries
            .get_mut(id)
            .ok_or_else(|| QueueError::NotFound(id.to_string()))?;
        if entry.envelope.held {
            return Err(QueueError::Held(id.to_string()));
        }
        if entry.active {
            // Being tried right now: that is what was asked for.
            return Ok(());
        }
        entry.envelope.next_attempt = now;
        schedule.set_due(id, now.saturating_mul(1000));
        drop(schedule);
        self.wake();
        Ok(())
    }

    /// Makes every waiting message that is not held due now; returns how many.
    pub fn retry_all(&self) -> usize {
        let now = self.now_millis();
        let mut schedule = self.lock();
        let waiting: Vec<(u64, String)> = schedule.due.iter().cloned().collect();
        for (due, id) in &waiting {
            schedule.set_due(id, now.min(*due));
            if let Some(entry) = schedule.entries.get_mut(id) {
                entry.envelope.next_attempt = now.min(*due).div_ceil(1000);
            }
        }
        drop(schedule);
        self.wake();
        waiting.len()
    }

    /// Takes a message that is not in an attempt out of the schedule for an administrator's change.
    fn take_for_change(&self, id: &str) -> Result<crate::spool::Envelope, QueueError> {
        Self::checked_id(id)?;
        let mut schedule = self.lock();
        let entry = schedule
            .entries
            .get_mut(id)
            .ok_or_else(|| QueueError::NotFound(id.to_string()))?;
        if entry.active {
            return Err(QueueError::Busy(id.to_string()));
        }
        entry.active = true;
        let envelope = entry.envelope.clone();
        schedule.clear_due(id);
        Ok(envelope)
    }

    /// Puts a message back after a change; `held` ones stay out of the schedule.
    fn put_back(&self, envelope: crate::spool::Envelope) {
        let mut schedule = self.lock();
        let id = envelope.id.clone();
        let due = (!envelope.held).then_some(envelope.next_attempt.saturating_mul(1000));
        if let Some(entry) = schedule.entries.get_mut(&id) {
            entry.envelope = envelope;
            entry.active = false;
            if let Some(due) = due {
                schedule.set_due(&id, due);
            }
        }
        drop(schedule);
        self.wake();
    }

    async fn set_held(&self, id: &str, held: bool) -> Result<(), QueueError> {
        let mut envelope = self.take_for_change(id)?;
        let before = envelope.clone();
        envelope.held = held;
        let spool = self.inner.store.spool().clone();
        let stored = envelope.clone();
        let written = tokio::task::spawn_blocking(move || spool.update(&stored))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        match written {
            Ok(()) => {
                tracing::info!(queue_id = %id, held, "changed by an administrator");
                self.put_back(envelope);
                Ok(())
            }
            Err(e) => {
                self.put_back(before);
                Err(e.into())
            }
        }
    }

    /// Keeps a message from being delivered until it is released (persisted in the spool).
    pub async fn hold(&self, id: &str) -> Result<(), QueueError> {
        self.set_held(id, true).await
    }

    /// Lets a held message go on with its schedule (due now if its time has passed).
    pub async fn release(&self, id: &str) -> Result<(), QueueError> {
        self.set_held(id, false).await
    }

    /// Removes a message from the queue and the spool without a bounce.
    pub async fn delete(&self, id: &str) -> Result<(), QueueError> {
        let envelope = self.take_for_change(id)?;
        let spool = self.inner.store.spool().clone();
        let remove_id = id.to_string();
        let removed = tokio::task::spawn_blocking(move || spool.delete(&remove_id))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        match removed {
            Ok(()) => {
                tracing::warn!(queue_id = %id, from = %envelope.sender, "deleted by an administrator, without a bounce");
                self.lock().entries.remove(id);
                Ok(())
            }
            Err(e) => {
                self.put_back(envelope);
                Err(e.into())
            }
        }
    }

    /// Gives up on every recipient not yet done and bounces them to the sender.
    pub async fn bounce(&self, id: &str) -> Result<(), QueueError> {
        let mut envelope = self.take_for_change(id)?;
        let content = match self.read_content(id).await {
            Ok(c) => c,
            Err(e) => {
                self.put_back(envelope);
                return Err(e.into());
            }
        };
        let now = self.now();
        let mut returned = Vec::new();
        for (i, rcpt) in envelope.recipients.iter_mut().enumerate() {
            if rcpt.state.is_final() {
                continue;
            }
            let last = match &rcpt.state {
                RecipientState::Deferred { reason, .. } => format!("; last error: {reason}"),
                _ => String::new(),
            };
            rcpt.state = RecipientState::Failed {
                reason: format!("returned to the sender by the relay's administrator{last}"),
                at: now,
            };
            returned.push(i);
        }
        self.report_failures(&mut envelope, &content, &returned)
            .await;
        tracing::warn!(queue_id = %id, recipients = returned.len(), "bounced by an administrator");
        if envelope.is_done() {
            self.finish(envelope).await;
            Ok(())
        } else {
            // Reporting failed (the recipients went back to deferred): keep it, say why.
            self.write_envelope(&envelope).await;
            let reason = envelope
                .recipients
                .iter()
                .find_map(|r| match &r.state {
                    RecipientState::Deferred { reason, .. } => Some(reason.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            self.put_back(envelope);
            Err(QueueError::Storage(std::io::Error::other(reason)))
        }
    }
}
