//! The queue: which message is due when, and the runner that delivers due messages.
//!
//! The queue is an in-memory index over the spool, rebuilt from it at start-up. Each attempt takes the
//! recipients of a message that are not done yet, groups them by route, hands each group to its
//! route's transport, and records every recipient's result in the spool before the message is
//! scheduled again (a temporary failure) or removed (all recipients delivered or failed).
//! At most `max_concurrent_deliveries` messages are in an attempt at any time.
//!
//! Every message the relay accepted ends in exactly one of: delivered; bounced to its sender (an RFC
//! 3464 DSN, itself a queued message, `notify.rs`); or kept in Badmail with the reason (a failed
//! message whose sender is `<>`, i.e. a bounce that could not be delivered). Temporary failures
//! follow the route's retry schedule (`schedule.rs`) until the route's expiry.

mod admin;
mod notify;
pub mod schedule;
pub mod view;

use crate::bounce::badmail::Badmail;
use crate::cluster::Cluster;
use crate::config::{QueueConfig, RetrySchedule};
use crate::deliver::throttle::{self, MailboxThrottle, Throttles};
use crate::deliver::{OutboundMessage, RecipientResult, Transporter, rewrite};
use crate::ingest::Store;
use crate::route::Router;
use crate::spool::{AttemptRecord, Envelope, HISTORY_KEPT, RecipientState};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, watch};

/// Content kept in memory from ingest for the first attempt, at most this much in total; beyond it
/// the first attempt reads the spool like any retry.
const CONTENT_CACHE_LIMIT: u64 = 256 * 1024 * 1024;

/// The runner looks at the clock at least this often, even when nothing is due sooner.
const MAX_IDLE: Duration = Duration::from_secs(60);

/// A message's stored content, shared between the cache and an attempt.
type Content = Arc<Vec<u8>>;

/// A handle to the queue, cheap to clone.
#[derive(Clone, Debug)]
pub struct Queue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<Store>,
    /// What a configuration reload replaces ([`Queue::reload`]); an attempt takes one snapshot and
    /// finishes with it.
    routes: RwLock<Arc<Routes>>,
    badmail: Arc<Badmail>,
    schedule: Mutex<Schedule>,
    wake: Notify,
    cached_bytes: AtomicU64,
    slots: Arc<Semaphore>,
    /// This relay's node name (shown by `queue list` and the admin API).
    node: String,
    /// Per-mailbox limits shared with other nodes (`[cluster]`).
    cluster: Option<Cluster>,
}

/// The routes with what was built from them, and the queue settings: one consistent set.
#[derive(Debug)]
struct Routes {
    router: Router,
    transporters: Vec<Arc<Transporter>>,
    config: QueueConfig,
    /// The mailbox throttle of each route (routes sending as one mailbox share one).
    throttles: Vec<Arc<MailboxThrottle>>,
}

#[derive(Debug, Default)]
struct Schedule {
    /// (due Unix milliseconds, queue id) for messages waiting for their next attempt. Milliseconds,
    /// because mailbox rate limits free a slot at a precise moment.
    due: BTreeSet<(u64, String)>,
    entries: HashMap<String, Entry>,
}

impl Schedule {
    /// Puts `id` in the schedule at `due_ms`, replacing its earlier place.
    fn set_due(&mut self, id: &str, due_ms: u64) {
        if let Some(entry) = self.entries.get_mut(id) {
            if let Some(old) = entry.due_ms.replace(due_ms) {
                self.due.remove(&(old, id.to_string()));
            }
            self.due.insert((due_ms, id.to_string()));
        }
    }

    /// Takes `id` out of the schedule (held, in an attempt, being changed).
    fn clear_due(&mut self, id: &str) {
        if let Some(entry) = self.entries.get_mut(id)
            && let Some(old) = entry.due_ms.take()
        {
            self.due.remove(&(old, id.to_string()));
        }
    }
}

#[derive(Debug)]
struct Entry {
    envelope: Envelope,
    /// The content, while it is still in memory from ingest.
    content: Option<Arc<Vec<u8>>>,
    /// In an attempt (or an administrator's bounce/delete) right now: not in `due`.
    active: bool,
    /// Its place in `due`, if it has one.
    due_ms: Option<u64>,
}

impl Queue {
    pub fn new(
        store: Arc<Store>,
        router: Router,
        transporters: Vec<Arc<Transporter>>,
        config: QueueConfig,
        badmail: Arc<Badmail>,
    ) -> Self {
        Self::with_node(
            store,
            router,
            transporters,
            config,
            badmail,
            String::new(),
            None,
        )
    }

    /// [`Queue::new`] on node `node`, with per-mailbox limits shared through `cluster`.
    pub fn with_node(
        store: Arc<Store>,
        router: Router,
        transporters: Vec<Arc<Transporter>>,
        config: QueueConfig,
        badmail: Arc<Badmail>,
        node: String,
        cluster: Option<Cluster>,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(config.max_concurrent_deliveries.max(1)));
        if let Some(cluster) = &cluster {
            cluster.attach(router.routes(), &transporters);
        }
        let registry = Throttles::with_cluster(cluster.clone());
        let throttles = router
            .routes()
            .iter()
            .map(|route| registry.for_route(route))
            .collect();
        Queue {
            inner: Arc::new(Inner {
                store,
                routes: RwLock::new(Arc::new(Routes {
                    router,
                    transporters,
                    config,
                    throttles,
                })),
                badmail,
                schedule: Mutex::new(Schedule::default()),
                wake: Notify::new(),
                cached_bytes: AtomicU64::new(0),
                slots,
                node,
                cluster,
            }),
        }
    }

    fn now(&self) -> u64 {
        self.inner.store.now()
    }

    /// The routes, transports and queue settings in force now.
    fn routes(&self) -> Arc<Routes> {
        self.inner
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the routes (with their transports) and the queue settings, for attempts that start
    /// from now on; attempts in progress finish with the previous ones. A mailbox throttle whose
    /// mailbox and limits are unchanged is kept with its counts. `max_concurrent_deliveries` keeps
    /// its value until a restart.
    pub fn reload(&self, router: Router, transporters: Vec<Arc<Transporter>>, config: QueueConfig) {
        let old = self.routes();
        if let Some(cluster) = &self.inner.cluster {
            cluster.attach(router.routes(), &transporters);
        }
        let registry = Throttles::with_cluster(self.inner.cluster.clone());
        let throttles = router
            .routes()
            .iter()
            .map(|route| {
                let fresh = registry.for_route(route);
                old.router
                    .routes()
                    .iter()
                    .zip(&old.throttles)
                    .find(|(r, t)| {
                        throttle::mailbox_key(r) == throttle::mailbox_key(route)
                            && t.limits() == fresh.limits()
                    })
                    .map_or(fresh, |(_, t)| t.clone())
            })
            .collect();
        *self
            .inner
            .routes
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(Routes {
            router,
            transporters,
            config,
            throttles,
        });
        self.inner.wake.notify_one();
    }

    fn now_millis(&self) -> u64 {
        self.inner.store.now_millis()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.inner.schedule.lock().expect("queue lock")
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
        let mut schedule = self.lock();
        let id = envelope.id.clone();
        let due = (!envelope.held).then_some(envelope.next_attempt.saturating_mul(1000));
        schedule.entries.insert(
            id.clone(),
            Entry {
                envelope,
                content,
                active: false,
                due_ms: None,
            },
        );
        if let Some(due) = due {
            schedule.set_due(&id, due);
        }
        drop(schedule);
        self.inner.wake.notify_one();
    }

    /// Messages in the queue (waiting, held or in an attempt).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes the runner look at the clock now (after a [`crate::clock::ManualClock`] moved).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
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
            match self.take_due() {
                Ok((envelope, content)) => {
                    let queue = self.clone();
                    attempts.spawn(async move {
                        queue.attempt(envelope, content).await;
                        drop(permit);
                    });
                }
                Err(next_due) => {
                    drop(permit);
                    let sleep = match next_due {
                        Some(due) => Duration::from_millis(due.saturating_sub(self.now_millis())),
                        None => MAX_IDLE,
                    };
                    tokio::select! {
                        _ = self.inner.wake.notified() => {}
                        _ = tokio::time::sleep(sleep.clamp(Duration::from_millis(5), MAX_IDLE)) => {}
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

    /// The first message due now, marked active; or the next due time when none is due.
    fn take_due(&self) -> Result<(Envelope, Option<Content>), Option<u64>> {
        let now = self.now_millis();
        let mut schedule = self.lock();
        let Some((due, id)) = schedule.due.first().cloned() else {
            return Err(None);
        };
        if due > now {
            return Err(Some(due));
        }
        schedule.clear_due(&id);
        let entry = schedule.entries.get_mut(&id).expect("due entry exists");
        entry.active = true;
        let content = entry.content.take();
        if let Some(c) = &content {
            self.inner
                .cached_bytes
                .fetch_sub(c.len() as u64, Ordering::Relaxed);
        }
        Ok((entry.envelope.clone(), content))
    }

    /// The retry schedule that applies to a recipient: its route's (the queue's when unroutable).
    fn schedule_for(&self, address: &str) -> RetrySchedule {
        let routes = self.routes();
        match routes.router.route_for(address) {
            Some(route) => routes.router.routes()[route].schedule.clone(),
            None => routes.config.schedule.clone(),
        }
    }

    async fn read_content(&self, id: &str) -> std::io::Result<Arc<Vec<u8>>> {
        let spool = self.inner.store.spool().clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || spool.read_content(&id))
            .await
            .map_err(std::io::Error::other)?
            .map(Arc::new)
    }

    async fn write_envelope(&self, envelope: &Envelope) {
        let spool = self.inner.store.spool().clone();
        let stored = envelope.clone();
        let id = envelope.id.clone();
        match tokio::task::spawn_blocking(move || spool.update(&stored)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(queue_id = %id, error = %e, "cannot record delivery state in the spool")
            }
            Err(e) => tracing::error!(queue_id = %id, error = %e, "spool writer failed"),
        }
    }

    /// One delivery attempt for one message.
    async fn attempt(&self, mut envelope: Envelope, content: Option<Arc<Vec<u8>>>) {
        let id = envelope.id.clone();
        let content = match content {
            Some(c) => c,
            None => match self.read_content(&id).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(queue_id = %id, error = %e, "cannot read message content; will retry");
                    let next = self.now() + 60;
                    self.reschedule(envelope, next);
                    return;
                }
            },
        };

        let was_final: Vec<bool> = envelope
            .recipients
            .iter()
            .map(|r| r.state.is_final())
            .collect();
        let now = self.now();
        // One set of routes for the whole attempt, even if the configuration is reloaded meanwhile.
        let routes = self.routes();
        // Pending recipients grouped by route, in the order of the envelope.
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for (index, rcpt) in envelope.recipients.iter_mut().enumerate() {
            if rcpt.state.is_final() {
                continue;
            }
            match routes.router.route_for(&rcpt.address) {
                Some(route) => match groups.iter_mut().find(|(r, _)| *r == route) {
                    Some((_, members)) => members.push(index),
                    None => groups.push((route, vec![index])),
                },
                None => {
                    rcpt.state = RecipientState::Failed {
                        reason: format!(
                            "no route takes the domain of <{}> (the configuration changed since it was accepted)",
                            rcpt.address
                        ),
                        at: now,
                    };
                }
            }
        }

        let mut record = AttemptRecord {
            at: now,
            results: Vec::new(),
        };
        // Earliest moment (Unix ms) a mailbox limit lets held-back recipients go.
        let mut throttled_until: Option<u64> = None;
        for (route, members) in groups {
            let throttle = &routes.throttles[route];
            let per_message = throttle.limits().recipients_per_message.max(1);
            // More recipients than one transaction may carry: several transactions.
            for chunk in members.chunks(per_message) {
                let reservation = match throttle
                    .acquire(chunk.len() as u32, self.now_millis())
                    .await
                {
                    Ok(r) => r,
                    Err(wait) => {
                        crate::admin::metrics::metrics().throttle_waits.inc();
                        let at = self.now();
                        for &index in chunk {
                            envelope.recipients[index].state = RecipientState::Deferred {
                                reason: wait.reason.clone(),
                                at,
                            };
                        }
                        throttled_until = Some(
                            throttled_until.map_or(wait.until_millis, |t| t.min(wait.until_millis)),
                        );
                        continue;
                    }
                };
                let started = std::time::Instant::now();
                let results = self
                    .deliver_chunk(&routes, &envelope, &content, route, chunk)
                    .await;
                crate::admin::metrics::metrics()
                    .upstream_reply
                    .observe(&routes.router.routes()[route].name, started.elapsed());
                reservation.finish(self.now_millis()).await;
                if results.iter().any(|r| {
                    matches!(r, RecipientResult::Deferred { reason } if throttle::is_throttling(reason))
                }) {
                    throttle.pause(self.now_millis());
                }
                self.record_results(&routes, &mut envelope, route, chunk, results, &mut record);
            }
        }
        if record.results.is_empty() && throttled_until.is_some() {
            // Nothing was tried: every recipient waits for a mailbox limit. That is no attempt, and
            // nothing changed that the spool must know.
            tracing::debug!(queue_id = %id, "held back by a mailbox limit");
            self.reschedule_millis(envelope, throttled_until.unwrap_or(0));
            return;
        }
        envelope.attempts += 1;
        record.at = self.now();
        envelope.history.push(record);
        let excess = envelope.history.len().saturating_sub(HISTORY_KEPT);
        envelope.history.drain(..excess);

        self.expire_recipients(&mut envelope);
        let newly_failed: Vec<usize> = (0..envelope.recipients.len())
            .filter(|&i| {
                !was_final[i]
                    && matches!(envelope.recipients[i].state, RecipientState::Failed { .. })
            })
            .collect();
        if !newly_failed.is_empty() {
            self.report_failures(&mut envelope, &content, &newly_failed)
                .await;
        }

        if envelope.is_done() {
            self.finish(envelope).await;
            return;
        }
        self.maybe_send_delay_notice(&mut envelope, &content).await;
        let now = self.now();
        let next = envelope
            .recipients
            .iter()
            .filter(|r| !r.state.is_final())
            .map(|r| {
                schedule::next_attempt(
                    &self.schedule_for(&r.address),
                    &id,
                    envelope.attempts,
                    envelope.received_at,
                    now,
                )
            })
            .min()
            .unwrap_or(now + 1);
        let next_ms = match throttled_until {
            Some(until) => (next * 1000).min(until),
            None => next * 1000,
        };
        let next = next_ms.div_ceil(1000);
        envelope.next_attempt = next;
        self.write_envelope(&envelope).await;
        tracing::info!(queue_id = %id, attempts = envelope.attempts, retry_in_seconds = next.saturating_sub(now), "message deferred");
        self.reschedule_millis(envelope, next_ms);
    }

    /// Hands some recipients of a message to their route's transport.
    async fn deliver_chunk(
        &self,
        routes: &Routes,
        envelope: &Envelope,
        content: &[u8],
        route: usize,
        chunk: &[usize],
    ) -> Vec<RecipientResult> {
        let recipients: Vec<String> = chunk
            .iter()
            .map(|&i| envelope.recipients[i].address.clone())
            .collect();
        // Sender rewriting (the fix for 5.7.60 SendAsDenied) happens per attempt, on a copy: the
        // spool keeps the message as it was accepted.
        let rewritten = routes.router.routes()[route]
            .rewrite_sender
            .as_ref()
            .and_then(|rule| rewrite::rewrite_sender(content, &envelope.sender, rule));
        let (sender, content, smtputf8) = match &rewritten {
            Some((sender, content)) => (
                sender.as_str(),
                content.as_slice(),
                envelope.smtputf8 || !sender.is_ascii(),
            ),
            None => (envelope.sender.as_str(), content, envelope.smtputf8),
        };
        let message = OutboundMessage {
            queue_id: &envelope.id,
            sender,
            recipients: &recipients,
            content,
            smtputf8,
            eight_bit: envelope.eight_bit,
        };
        routes.transporters[route].deliver(&message).await
    }

    /// Records a transport's results in the recipients' states, the log and the attempt record.
    fn record_results(
        &self,
        routes: &Routes,
        envelope: &mut Envelope,
        route: usize,
        chunk: &[usize],
        results: Vec<RecipientResult>,
        record: &mut AttemptRecord,
    ) {
        let route_name = &routes.router.routes()[route].name;
        let at = self.now();
        for (k, &index) in chunk.iter().enumerate() {
            let result = results
                .get(k)
                .cloned()
                .unwrap_or(RecipientResult::Deferred {
                    reason: "transport returned no result for this recipient".into(),
                });
            let rcpt = &mut envelope.recipients[index];
            crate::admin::metrics::metrics().recipient_result_for(
                route_name,
                &envelope.id,
                &rcpt.address,
                at,
                &result,
            );
            log_result(
                &envelope.id,
                &envelope.sender,
                &rcpt.address,
                route_name,
                &result,
            );
            let (state, outcome) = match result {
                RecipientResult::Delivered { reply } => (
                    RecipientState::Delivered {
                        reply: reply.clone(),
                        at,
                    },
                    format!("delivered: {reply}"),
                ),
                RecipientResult::Deferred { reason } => (
                    RecipientState::Deferred {
                        reason: reason.clone(),
                        at,
                    },
                    format!("deferred: {reason}"),
                ),
                RecipientResult::Failed { reason } => (
                    RecipientState::Failed {
                        reason: reason.clone(),
                        at,
                    },
                    format!("failed: {reason}"),
                ),
            };
            rcpt.state = state;
            record.results.push((rcpt.address.clone(), outcome));
        }
    }

    /// Recipients still deferred after their route's expiry fail, with the last reason kept.
    fn expire_recipients(&self, envelope: &mut Envelope) {
        let now = self.now();
        let received_at = envelope.received_at;
        for index in 0..envelope.recipients.len() {
            let rcpt = &envelope.recipients[index];
            if rcpt.state.is_final() {
                continue;
            }
            let schedule = &self.schedule_for(&rcpt.address);
            if now < schedule::expires_at(schedule, received_at) {
                continue;
            }
            let last = match &rcpt.state {
                RecipientState::Deferred { reason, .. } => reason.clone(),
                _ => "no attempt was made".to_string(),
            };
            let waited = humantime::format_duration(schedule.expire);
            envelope.recipients[index].state = RecipientState::Failed {
                reason: format!("{EXPIRED_PREFIX} {waited}; last error: {last}"),
                at: now,
            };
        }
    }

    fn reschedule(&self, envelope: Envelope, due: u64) {
        self.reschedule_millis(envelope, due.saturating_mul(1000));
    }

    fn reschedule_millis(&self, mut envelope: Envelope, due_ms: u64) {
        let mut schedule = self.lock();
        let id = envelope.id.clone();
        envelope.next_attempt = due_ms.div_ceil(1000);
        let held = envelope.held;
        if let Some(entry) = schedule.entries.get_mut(&id) {
            entry.active = false;
            // An administrator may have held the message during the attempt.
            let held = held || entry.envelope.held;
            entry.envelope = envelope;
            entry.envelope.held = held;
            if !held {
                schedule.set_due(&id, due_ms);
            }
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
            tracing::warn!(queue_id = %id, failed, delivered = envelope.recipients.len() - failed, "message done; failed recipients were reported");
        } else {
            tracing::info!(queue_id = %id, recipients = envelope.recipients.len(), "message delivered to all recipients");
        }
        let spool = self.inner.store.spool().clone();
        let remove_id = id.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || spool.remove(&remove_id)).await {
            tracing::error!(queue_id = %id, error = %e, "cannot remove finished message from the spool");
        }
        self.lock().entries.remove(&id);
    }
}

/// How an expired recipient's reason starts; the DSN builder recognises it.
pub const EXPIRED_PREFIX: &str = "expired: not delivered within";

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
