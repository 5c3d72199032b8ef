//! Telling the sender: failure DSNs (bounces), the one delay notice, and Badmail for failures that
//! cannot be told to anyone (the sender is `<>`). A bounce is stored and queued like any message; if
//! it cannot be stored (disk full), the recipients go back to deferred and are reported later, so a
//! failure is never dropped silently.

use super::{EXPIRED_PREFIX, Queue, schedule};
use crate::bounce::badmail::{BadmailRecipient, BadmailRecord};
use crate::bounce::dsn::{DsnKind, DsnRecipient, DsnRequest, build_dsn};
use crate::ingest::{Origin, Submission};
use crate::spool::{Envelope, RecipientState};

/// The state of a recipient in words, with its reason or reply and when it was decided.
fn describe(state: &RecipientState) -> (&'static str, Option<String>, Option<u64>) {
    match state {
        RecipientState::Pending => ("pending", None, None),
        RecipientState::Delivered { reply, at } => ("delivered", Some(reply.clone()), Some(*at)),
        RecipientState::Deferred { reason, at } => ("deferred", Some(reason.clone()), Some(*at)),
        RecipientState::Failed { reason, at } => ("failed", Some(reason.clone()), Some(*at)),
    }
}

impl Queue {
    /// Reports recipients that just failed: a DSN to the sender, or Badmail when the sender is `<>`.
    pub(super) async fn report_failures(
        &self,
        envelope: &mut Envelope,
        content: &[u8],
        failed: &[usize],
    ) {
        let outcome = if envelope.sender.is_empty() {
            self.to_badmail(
                envelope,
                content,
                "the sender is <> (this is itself a bounce or notice): a message that cannot be \
                 delivered is not bounced again",
            )
            .await
            .map(|name| format!("kept in Badmail as {name}"))
            .map_err(|e| e.to_string())
        } else {
            self.send_dsn(envelope, content, failed, DsnKind::Failure)
                .await
                .map(|id| format!("bounce queued as {id}"))
                .map_err(|e| e.to_string())
        };
        match outcome {
            Ok(what) => tracing::warn!(queue_id = %envelope.id, failed = failed.len(), "{what}"),
            Err(error) => {
                tracing::error!(queue_id = %envelope.id, %error, "cannot report failed recipients; they will be retried and reported later");
                let now = self.now();
                for &i in failed {
                    let (_, reason, _) = describe(&envelope.recipients[i].state);
                    envelope.recipients[i].state = RecipientState::Deferred {
                        reason: format!(
                            "{} (failed permanently, but reporting it failed: {error})",
                            reason.unwrap_or_default()
                        ),
                        at: now,
                    };
                }
            }
        }
    }

    /// Sends the one delay notice once the oldest deferred recipient has waited `delay_notice`.
    pub(super) async fn maybe_send_delay_notice(&self, envelope: &mut Envelope, content: &[u8]) {
        if envelope.delay_notified || envelope.sender.is_empty() {
            return;
        }
        let now = self.now();
        let waiting: Vec<usize> = (0..envelope.recipients.len())
            .filter(|&i| {
                let r = &envelope.recipients[i];
                !r.state.is_final()
                    && schedule::delay_notice_due(
                        &self.schedule_for(&r.address),
                        envelope.received_at,
                        now,
                    )
            })
            .collect();
        if waiting.is_empty() {
            return;
        }
        match self
            .send_dsn(envelope, content, &waiting, DsnKind::Delay)
            .await
        {
            Ok(id) => {
                envelope.delay_notified = true;
                tracing::info!(queue_id = %envelope.id, notice = %id, "delay notice queued");
            }
            Err(error) => {
                tracing::error!(queue_id = %envelope.id, %error, "cannot queue the delay notice; will try again")
            }
        }
    }

    async fn send_dsn(
        &self,
        envelope: &Envelope,
        content: &[u8],
        indices: &[usize],
        kind: DsnKind,
    ) -> Result<String, crate::ingest::IngestError> {
        let now = self.now();
        let recipients = indices
            .iter()
            .map(|&i| {
                let r = &envelope.recipients[i];
                let (_, reason, at) = describe(&r.state);
                let reason = reason.unwrap_or_else(|| "no attempt was made yet".into());
                DsnRecipient {
                    address: r.address.clone(),
                    expired: reason.starts_with(EXPIRED_PREFIX),
                    reason,
                    last_attempt: at,
                }
            })
            .collect();
        let will_retry_until = indices
            .iter()
            .map(|&i| {
                schedule::expires_at(
                    &self.schedule_for(&envelope.recipients[i].address),
                    envelope.received_at,
                )
            })
            .max();
        let dsn = build_dsn(&DsnRequest {
            kind,
            reporting_mta: self.inner.store.hostname(),
            queue_id: &envelope.id,
            original_sender: &envelope.sender,
            arrival: envelope.received_at,
            now,
            recipients,
            original: content,
            original_max: self.routes().config.bounce_original_max,
            will_retry_until: matches!(kind, DsnKind::Delay)
                .then_some(will_retry_until)
                .flatten(),
        });
        let mut to = vec![envelope.sender.clone()];
        // IIS "Send copy of Non-Delivery Report to": failures only, not delay notices.
        let ndr_copy_to = self.routes().config.ndr_copy_to.clone();
        if let (DsnKind::Failure, Some(copy)) = (&kind, &ndr_copy_to)
            && !copy.eq_ignore_ascii_case(&envelope.sender)
        {
            to.push(copy.clone());
        }
        let submission = Submission {
            sender: String::new(),
            smtputf8: !to.iter().all(|a| a.is_ascii()),
            recipients: to,
            origin: Origin {
                source: "bounce",
                client_ip: None,
                helo: None,
                protocol: "local",
            },
        };
        let (stored, content) = self.inner.store.store(submission, dsn).await?;
        let id = stored.id.clone();
        self.enqueue(stored, Some(content));
        Ok(id)
    }

    /// Keeps the message and its envelope in Badmail; returns the entry's name.
    pub(super) async fn to_badmail(
        &self,
        envelope: &Envelope,
        content: &[u8],
        why: &str,
    ) -> std::io::Result<String> {
        let record = BadmailRecord {
            name: String::new(),
            id: envelope.id.clone(),
            sender: envelope.sender.clone(),
            recipients: envelope
                .recipients
                .iter()
                .map(|r| {
                    let (state, detail, _) = describe(&r.state);
                    BadmailRecipient {
                        address: r.address.clone(),
                        state: state.to_string(),
                        detail,
                    }
                })
                .collect(),
            reason: why.to_string(),
            attempts: envelope.attempts,
            received_at: envelope.received_at,
            badmailed_at: self.now(),
            resubmitted: Vec::new(),
        };
        let badmail = self.inner.badmail.clone();
        let content = content.to_vec();
        tokio::task::spawn_blocking(move || badmail.store(&record, &content))
            .await
            .map_err(std::io::Error::other)?
    }
}
