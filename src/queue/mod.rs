//! The queue: which message is due when, and the runner that delivers due messages.
//!
//! The queue is an in-memory index over the spool, rebuilt from it at start-up. Each attempt takes the
//! recipients of a message that are not done yet, groups them by route, hands each group to its
//! route's transport, and records every recipient's result in the spool before the message is
//! scheduled again (a temporary failure) or removed (all recipients delivered or failed).
//! At most `max_concurrent_deliveries` messages are in an attempt at any time.

use crate::config::QueueConfig;
use crate::deliver::{OutboundMessage, RecipientResult, Transporter};
use crate::route::Router;
use crate::spool::{self, Envelope, RecipientState, Spool};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, watch};

/// Content kept in memory from ingest for the first attempt, at most this much in total; beyond it
/// the first attempt reads the spool like any retry.
const CONTENT_CACHE_LIMIT: u64 = 256 * 1024 * 1024;

/// A handle to the queue, cheap to clone.
#[derive(Clone, Debug)]
pub struct Queue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    spool: Arc<Spool>,
    router: Router,
    transporters: Vec<Arc<Transporter>>,
    config: QueueConfig,
    schedule: Mutex<Schedule>,
    wake: Notify,
    cached_bytes: AtomicU64,
    slots: Arc<Semaphore>,
}

#[derive(Debug, Default)]
struct Schedule {
    /// (due unix seconds, queue id) for messages waiting for their next attempt.
    due: BTreeSet<(u64, String)>,
    entries: HashMap<String, Entry>,
}

#[derive(Debug)]
struct Entry {
    envelope: Envelope,
    /// The content, while it is still in memory from ingest.
    content: Option<Arc<Vec<u8>>>,
    /// In an attempt right now (not in `due`).
    active: bool,
}

/// How long to wait after the `attempts`-th failed attempt: `retry_initial` doubled each time, at most
/// `retry_max`. (The IIS-style schedule with expiry and delay notices replaces this in issue 3.)
pub fn backoff(config: &QueueConfig, attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(20);
    config
        .retry_initial
        .saturating_mul(factor)
        .min(config.retry_max)
}

impl Queue {
    pub fn new(
        spool: Arc<Spool>,
        router: Router,
        transporters: Vec<Arc<Transporter>>,
        config: QueueConfig,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(config.max_concurrent_deliveries.max(1)));
        Queue {
            inner: Arc::new(Inner {
                spool,
                router,
                transporters,
                config,
                schedule: Mutex::new(Schedule::default()),
                wake: Notify::new(),
                cached_bytes: AtomicU64::new(0),
                slots,
            }),
        }
    }

    /// Adds a stored message. `content` is its spool content when the caller still has it in memory.
    pub fn enqueue(&self, envelope: Envelope, content: Option<Arc<Vec<u8>>>) {
        let content = content.filter(|c| {
            let len = c.len() as u64;
            let before = self.inner.cached_bytes.fetch_add(len, Ordering::Relaxed);
            if before + len > CONTENT_CACHE_LIMIT {
                self.inner.cached_bytes.fetch_sub(len, Ordering::Relaxed);
                false
            } else {
                true
            }
        });
        let mut schedule = self.inner.schedule.lock().expect("queue lock");
        schedule
            .due
            .insert((envelope.next_attempt, envelope.id.clone()));
        schedule.entries.insert(
            envelope.id.clone(),
            Entry {
                envelope,
                content,
                active: false,
            },
        );
        drop(schedule);
        self.inner.wake.notify_one();
    }

    /// Messages in the queue (waiting or in an attempt).
    pub fn len(&self) -> usize {
        self.inner
            .schedule
            .lock()
            .expect("queue lock")
            .entries
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Delivers due messages until `shutdown` turns true, then waits for attempts in progress.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut attempts = tokio::task::JoinSet::new();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let permit = tokio::select! {
                permit = self.inner.slots.clone().acquire_owned() => permit.expect("queue semaphore"),
                _ = shutdown.changed() => continue,
            };
            match self.take_due(spool::unix_now()) {
                Ok((id, envelope, content)) => {
                    let queue = self.clone();
                    attempts.spawn(async move {
                        queue.attempt(id, envelope, content).await;
                        drop(permit);
                    });
                }
                Err(next_due) => {
                    drop(permit);
                    let sleep = match next_due {
                        Some(due) => Duration::from_secs(due.saturating_sub(spool::unix_now())),
                        None => Duration::from_secs(3600),
                    };
                    tokio::select! {
                        _ = self.inner.wake.notified() => {}
                        _ = tokio::time::sleep(sleep.max(Duration::from_millis(200))) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
            // Reap finished attempts so the set does not grow.
            while attempts.try_join_next().is_some() {}
        }
        if !attempts.is_empty() {
            tracing::info!(
                in_progress = attempts.len(),
                "waiting for delivery attempts in progress"
            );
        }
        // Attempts are bounded by their transports' timeouts; whatever they leave stays in the spool.
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            while attempts.join_next().await.is_some() {}
        })
        .await;
    }

    /// The first message due at `now`, marked active; or the next due time when none is due.
    #[allow(clippy::type_complexity)]
    fn take_due(&self, now: u64) -> Result<(String, Envelope, Option<Arc<Vec<u8>>>), Option<u64>> {
        let mut schedule = self.inner.schedule.lock().expect("queue lock");
        let Some((due, id)) = schedule.due.first().cloned() else {
            return Err(None);
        };
        if due > now {
            return Err(Some(due));
        }
        schedule.due.remove(&(due, id.clone()));
        let entry = schedule.entries.get_mut(&id).expect("due entry exists");
        entry.active = true;
        let content = entry.content.take();
        if let Some(c) = &content {
            self.inner
                .cached_bytes
                .fetch_sub(c.len() as u64, Ordering::Relaxed);
        }
        Ok((id, entry.envelope.clone(), content))
    }

    /// One delivery attempt for one message.
    async fn attempt(&self, id: String, mut envelope: Envelope, content: Option<Arc<Vec<u8>>>) {
        let content = match content {
            Some(c) => c,
            None => {
                let spool = self.inner.spool.clone();
                let read_id = id.clone();
                match tokio::task::spawn_blocking(move || spool.read_content(&read_id)).await {
                    Ok(Ok(c)) => Arc::new(c),
                    failure => {
                        let reason = match failure {
                            Ok(Err(e)) => e.to_string(),
                            Err(e) => e.to_string(),
                            Ok(Ok(_)) => unreachable!(),
                        };
                        tracing::error!(queue_id = %id, %reason, "cannot read message content; will retry");
                        self.reschedule(envelope, spool::unix_now() + 60);
                        return;
                    }
                }
            }
        };

        let now = spool::unix_now();
        // Pending recipients grouped by route, in the order of the envelope.
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for (index, rcpt) in envelope.recipients.iter_mut().enumerate() {
            if rcpt.state.is_final() {
                continue;
            }
            match self.inner.router.route_for(&rcpt.address) {
                Some(route) => match groups.iter_mut().find(|(r, _)| *r == route) {
                    Some((_, members)) => members.push(index),
                    None => groups.push((route, vec![index])),
                },
                None => {
                    rcpt.state = RecipientState::Failed {
                        reason: format!(
                            "no route takes the domain of <{}> (configuration changed since it was accepted?)",
                            rcpt.address
                        ),
                        at: now,
                    };
                }
            }
        }

        for (route, members) in groups {
            let recipients: Vec<String> = members
                .iter()
                .map(|&i| envelope.recipients[i].address.clone())
                .collect();
            let message = OutboundMessage {
                queue_id: &id,
                sender: &envelope.sender,
                recipients: &recipients,
                content: &content,
                smtputf8: envelope.smtputf8,
                eight_bit: envelope.eight_bit,
            };
            let route_name = &self.inner.router.routes()[route].name;
            let results = self.inner.transporters[route].deliver(&message).await;
            let at = spool::unix_now();
            for (k, &index) in members.iter().enumerate() {
                let result = results
                    .get(k)
                    .cloned()
                    .unwrap_or(RecipientResult::Deferred {
                        reason: "transport returned no result for this recipient".into(),
                    });
                let rcpt = &mut envelope.recipients[index];
                log_result(&id, &envelope.sender, &rcpt.address, route_name, &result);
                rcpt.state = match result {
                    RecipientResult::Delivered { reply } => RecipientState::Delivered { reply, at },
                    RecipientResult::Deferred { reason } => RecipientState::Deferred { reason, at },
                    RecipientResult::Failed { reason } => RecipientState::Failed { reason, at },
                };
            }
        }
        envelope.attempts += 1;

        if envelope.is_done() {
            self.finish(envelope).await;
        } else {
            let wait = backoff(&self.inner.config, envelope.attempts);
            let next = spool::unix_now() + wait.as_secs().max(1);
            envelope.next_attempt = next;
            let spool = self.inner.spool.clone();
            let stored = envelope.clone();
            match tokio::task::spawn_blocking(move || spool.update(&stored)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(queue_id = %id, error = %e, "cannot record delivery state in the spool")
                }
                Err(e) => tracing::error!(queue_id = %id, error = %e, "spool writer failed"),
            }
            tracing::info!(queue_id = %id, attempts = envelope.attempts, retry_in = ?wait, "message deferred");
            self.reschedule(envelope, next);
        }
    }

    fn reschedule(&self, envelope: Envelope, due: u64) {
        let mut schedule = self.inner.schedule.lock().expect("queue lock");
        let id = envelope.id.clone();
        if let Some(entry) = schedule.entries.get_mut(&id) {
            entry.active = false;
            entry.envelope = envelope;
            entry.envelope.next_attempt = due;
            schedule.due.insert((due, id));
        }
        drop(schedule);
        self.inner.wake.notify_one();
    }

    /// All recipients are done: the message leaves the spool.
    async fn finish(&self, envelope: Envelope) {
        let id = envelope.id.clone();
        let failed = envelope
            .recipients
            .iter()
            .filter(|r| matches!(r.state, RecipientState::Failed { .. }))
            .count();
        if failed > 0 {
            // Bounces to the sender come with issue 3; until then the failure is in the log above.
            tracing::warn!(queue_id = %id, failed, delivered = envelope.recipients.len() - failed, "message done with permanently failed recipients");
        } else {
            tracing::info!(queue_id = %id, recipients = envelope.recipients.len(), "message delivered to all recipients");
        }
        let spool = self.inner.spool.clone();
        let remove_id = id.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || spool.remove(&remove_id)).await {
            tracing::error!(queue_id = %id, error = %e, "cannot remove delivered message from the spool");
        }
        self.inner
            .schedule
            .lock()
            .expect("queue lock")
            .entries
            .remove(&id);
    }
}

fn log_result(id: &str, sender: &str, rcpt: &str, route: &str, result: &RecipientResult) {
    match result {
        RecipientResult::Delivered { reply } => {
            tracing::info!(queue_id = %id, from = %sender, to = %rcpt, route, %reply, "delivered")
        }
        RecipientResult::Deferred { reason } => {
            tracing::warn!(queue_id = %id, from = %sender, to = %rcpt, route, %reason, "deferred")
        }
        RecipientResult::Failed { reason } => {
            tracing::warn!(queue_id = %id, from = %sender, to = %rcpt, route, %reason, "failed permanently")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let config = QueueConfig {
            max_concurrent_deliveries: 1,
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
        };
        let waits: Vec<u64> = (1..=8).map(|n| backoff(&config, n).as_secs()).collect();
        assert_eq!(waits, vec![60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(backoff(&config, 1000).as_secs(), 3600);
    }
}
