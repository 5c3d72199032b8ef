//! The one way into the relay. SMTP DATA (and later the Pickup folder and the `send` CLI) hand a
//! message to [`Ingest::submit`], which assigns the queue id, adds the `Received:` header, stores the
//! message durably in the spool and hands it to the queue. When `submit` returns `Ok`, the message is
//! on disk and the caller may say `250`.

use crate::clock::Clock;
use crate::queue::Queue;
use crate::spool::{self, Envelope, Recipient, RecipientState, Spool};
use std::net::IpAddr;
use std::sync::Arc;

/// Where a message came from, for the trace header and the logs.
#[derive(Debug, Clone)]
pub struct Origin {
    /// `smtp`, `pickup`, `cli`.
    pub source: &'static str,
    pub client_ip: Option<IpAddr>,
    /// The name the client gave in EHLO/HELO.
    pub helo: Option<String>,
    /// The `with` keyword of the Received header (RFC 3848): SMTP, ESMTP, ESMTPS, ESMTPA, ...
    pub protocol: &'static str,
}

impl Origin {
    fn describe(&self) -> String {
        let mut out = self.source.to_string();
        if let Some(ip) = self.client_ip {
            out.push_str(&format!(" {ip}"));
        }
        if let Some(helo) = &self.helo {
            out.push_str(&format!(" {helo}"));
        }
        out
    }
}

/// A message ready to be queued.
#[derive(Debug, Clone)]
pub struct Submission {
    /// Envelope sender, empty for `<>`.
    pub sender: String,
    /// Envelope recipients, without duplicates.
    pub recipients: Vec<String>,
    pub smtputf8: bool,
    pub origin: Origin,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The spool could not store the message (disk full, permissions): answer 4xx, the client retries.
    #[error("cannot store the message: {0}")]
    Storage(#[from] std::io::Error),
    /// Less free space than `[queue] min_free_space`: refuse before the disk is really full.
    #[error("only {available} bytes free in the spool's file system, less than min_free_space")]
    LowDiskSpace { available: u64 },
}

/// Writes messages into the spool: the part of ingest that the queue also uses for the bounces it
/// creates (they are stored like any other message, then queued).
#[derive(Debug)]
pub struct Store {
    spool: Arc<Spool>,
    clock: Arc<dyn Clock>,
    hostname: String,
    min_free_space: u64,
    /// (unix second of the last check, bytes available then): statvfs at most once a second.
    space_checked: std::sync::Mutex<(u64, u64)>,
}

impl Store {
    pub fn new(
        spool: Arc<Spool>,
        clock: Arc<dyn Clock>,
        hostname: String,
        min_free_space: u64,
    ) -> Self {
        Store {
            spool,
            clock,
            hostname,
            min_free_space,
            space_checked: std::sync::Mutex::new((0, 0)),
        }
    }

    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    pub fn now_millis(&self) -> u64 {
        self.clock.now_millis()
    }

    fn check_free_space(&self) -> Result<(), IngestError> {
        if self.min_free_space == 0 {
            return Ok(());
        }
        let now = self.clock.now();
        let mut checked = self.space_checked.lock().expect("space check lock");
        if checked.0 != now || checked.1 < self.min_free_space {
            checked.1 = crate::spool::available_space(self.spool.queue_dir())?;
            checked.0 = now;
        }
        if checked.1 < self.min_free_space {
            return Err(IngestError::LowDiskSpace {
                available: checked.1,
            });
        }
        Ok(())
    }

    /// Stores the message durably; returns its envelope and its stored content.
    pub async fn store(
        &self,
        submission: Submission,
        content: Vec<u8>,
    ) -> Result<(Envelope, Arc<Vec<u8>>), IngestError> {
        self.check_free_space()?;
        let id = spool::new_queue_id();
        let trace = received_header(&self.hostname, &id, &submission);
        let envelope = Envelope {
            id: id.clone(),
            received_at: self.clock.now(),
            sender: submission.sender,
            recipients: submission
                .recipients
                .into_iter()
                .map(|address| Recipient {
                    address,
                    state: RecipientState::Pending,
                })
                .collect(),
            size: (trace.len() + content.len()) as u64,
            smtputf8: submission.smtputf8,
            eight_bit: !content.is_ascii(),
            origin: submission.origin.describe(),
            attempts: 0,
            next_attempt: 0,
            held: false,
            delay_notified: false,
            history: Vec::new(),
        };
        let spool = self.spool.clone();
        let (envelope, full) = tokio::task::spawn_blocking(move || {
            spool
                .store_new(&envelope, &[trace.as_bytes(), &content])
                .map(|()| {
                    let mut full = trace.into_bytes();
                    full.extend_from_slice(&content);
                    (envelope, full)
                })
        })
        .await
        .map_err(|e| IngestError::Storage(std::io::Error::other(e)))??;
        tracing::info!(
            queue_id = %id,
            from = %envelope.sender,
            to = %envelope
                .recipients
                .iter()
                .map(|r| r.address.as_str())
                .collect::<Vec<_>>()
                .join(","),
            size = envelope.size,
            origin = %envelope.origin,
            "message accepted"
        );
        Ok((envelope, Arc::new(full)))
    }
}

/// The entry point for SMTP, Pickup and the CLI: store, then queue.
#[derive(Debug, Clone)]
pub struct Ingest {
    store: Arc<Store>,
    queue: Queue,
}

impl Ingest {
    pub fn new(store: Arc<Store>, queue: Queue) -> Self {
        Ingest { store, queue }
    }

    /// Stores the message durably and queues it; returns its queue id.
    pub async fn submit(
        &self,
        submission: Submission,
        content: Vec<u8>,
    ) -> Result<String, IngestError> {
        let source = submission.origin.source;
        let (envelope, content) = self.store.store(submission, content).await?;
        crate::admin::metrics::metrics().received.inc(source);
        let id = envelope.id.clone();
        self.queue.enqueue(envelope, Some(content));
        Ok(id)
    }
}

/// The `Received:` header (RFC 5321 §4.4) we put on top of every message, folded to short lines.
fn received_header(hostname: &str, id: &str, submission: &Submission) -> String {
    let origin = &submission.origin;
    let from = match (&origin.helo, origin.client_ip) {
        (Some(helo), Some(ip)) => format!("from {} ([{ip}])", sanitize(helo)),
        (None, Some(ip)) => format!("from [{ip}] ([{ip}])"),
        (Some(helo), None) => format!("from {}", sanitize(helo)),
        (None, None) => format!("from {}", origin.source),
    };
    let mut header = format!(
        "Received: {from}\r\n\tby {hostname} (smarthost) with {} id {id}",
        origin.protocol
    );
    // Name the recipient only when there is one: listing a whole distribution would leak Bcc.
    if let [only] = submission.recipients.as_slice() {
        header.push_str(&format!("\r\n\tfor <{}>", sanitize(only)));
    }
    let now = time::OffsetDateTime::now_utc();
    let date = now
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_else(|_| now.unix_timestamp().to_string());
    header.push_str(&format!("; {date}\r\n"));
    header
}

/// Keeps client-supplied text from breaking the header: no control characters, no parentheses.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() || c == '(' || c == ')' {
                '_'
            } else {
                c
            }
        })
        .take(255)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submission(recipients: &[&str], helo: &str) -> Submission {
        Submission {
            sender: "scan@contoso.com".into(),
            recipients: recipients.iter().map(|s| s.to_string()).collect(),
            smtputf8: false,
            origin: Origin {
                source: "smtp",
                client_ip: Some("10.0.0.21".parse().unwrap()),
                helo: Some(helo.into()),
                protocol: "ESMTP",
            },
        }
    }

    #[test]
    fn received_header_names_client_relay_id_and_single_recipient() {
        let h = received_header(
            "relay01.contoso.com",
            "ABC",
            &submission(&["a@b.com"], "scanner1"),
        );
        assert!(h.starts_with("Received: from scanner1 ([10.0.0.21])\r\n\tby relay01.contoso.com (smarthost) with ESMTP id ABC\r\n\tfor <a@b.com>; "));
        assert!(h.ends_with("\r\n"));
        assert!(!h.ends_with("\r\n\r\n"));
    }

    #[test]
    fn received_header_hides_recipient_list_and_neutralises_client_text() {
        let h = received_header(
            "relay",
            "ABC",
            &submission(&["a@b.com", "c@d.com"], "evil\r\nX-Injected: 1 (x)"),
        );
        assert!(!h.contains("a@b.com"));
        assert!(!h.contains("\r\nX-Injected"));
        assert_eq!(h.matches("\r\n").count(), 2, "{h:?}");
    }
}
