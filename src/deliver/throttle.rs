//! Per-mailbox limits kept by the relay itself, so that Microsoft 365 never has to refuse: messages per
//! window (30 per minute), recipients per window (10,000 per day), and a pause after the upstream says
//! it is throttling (`432 4.3.2`, `451 4.7.5xx`/`4.7.6xx`, Graph `429`).
//!
//! Limits belong to the mailbox (the credential), not to the route: routes that send as the same
//! mailbox share one [`MailboxThrottle`]. Windows slide. A reservation is stamped again when its
//! transaction ends, so "at most N in any window" holds for the moments the upstream sees the messages,
//! whatever the network delay. Mail over a limit is not tried and not failed: the queue keeps it until
//! [`MailboxThrottle::reserve`] says it may go.
//!
//! With `[cluster]` the limits are shared by every node through Redis ([`crate::cluster`]):
//! [`MailboxThrottle::acquire`] asks Redis (atomic Lua scripts), and keeps the node's own
//! transactions in a local window too. While Redis cannot be reached, that local window enforces
//! each limit divided by `expected_nodes` (and what the other nodes were last seen to have used), so
//! delivery goes on and the nodes together stay within the limit.

use crate::cluster::{Cluster, View};
use crate::config::{MailboxLimits, RouteConfig, Transport};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// How far ahead a transaction in flight is stamped in a cluster node's own window (its real end
/// replaces it; an abandoned one ages out after this).
const IN_FLIGHT_MS: u64 = 600_000;

/// The throttles of every mailbox the relay sends as.
#[derive(Debug, Default)]
pub struct Throttles {
    by_mailbox: Mutex<HashMap<String, Arc<MailboxThrottle>>>,
    /// Shared limits through Redis, when `[cluster]` is configured.
    cluster: Option<Cluster>,
}

/// The key that identifies a route's mailbox: the login or Graph mailbox, lower-cased; routes
/// without credentials are limited on their own.
pub fn mailbox_key(route: &RouteConfig) -> String {
    match &route.transport {
        Transport::Smtp(smtp) => match &smtp.auth {
            Some(auth) => format!("mailbox:{}", auth.username.to_ascii_lowercase()),
            None => format!("route:{}", route.name),
        },
        Transport::Graph(graph) => format!("mailbox:{}", graph.mailbox.to_ascii_lowercase()),
        Transport::Drop { .. } => format!("route:{}", route.name),
    }
}

impl Throttles {
    /// Throttles whose limits are shared through `cluster` (`None`: kept in memory only).
    pub fn with_cluster(cluster: Option<Cluster>) -> Self {
        Throttles {
            by_mailbox: Mutex::default(),
            cluster,
        }
    }

    fn throttle(&self, key: String, limits: MailboxLimits) -> Arc<MailboxThrottle> {
        let mut throttle = MailboxThrottle::new(key, limits);
        if let Some(cluster) = &self.cluster {
            let view = cluster.view(&throttle.key, &throttle.limits);
            throttle.shared = Some((cluster.clone(), view));
        }
        Arc::new(throttle)
    }

    /// The throttle for `route`'s mailbox. The first route to name a mailbox sets its limits; a
    /// second route with other limits for the same mailbox gets the stricter of each.
    pub fn for_route(&self, route: &RouteConfig) -> Arc<MailboxThrottle> {
        let key = mailbox_key(route);
        let mut map = self.by_mailbox.lock().expect("throttle registry lock");
        let entry = map
            .entry(key.clone())
            .or_insert_with(|| self.throttle(key, route.limits.clone()));
        if entry.limits != route.limits {
            let merged = stricter(&entry.limits, &route.limits);
            if merged != entry.limits {
                *entry = self.throttle(entry.key.clone(), merged);
            }
        }
        entry.clone()
    }
}

fn stricter(a: &MailboxLimits, b: &MailboxLimits) -> MailboxLimits {
    fn rate(
        a: Option<crate::config::Rate>,
        b: Option<crate::config::Rate>,
    ) -> Option<crate::config::Rate> {
        match (a, b) {
            (Some(x), Some(y)) => {
                // Compare as events per second; the stricter one wins.
                let rx = x.count as f64 / x.per.as_secs_f64().max(1e-3);
                let ry = y.count as f64 / y.per.as_secs_f64().max(1e-3);
                Some(if rx <= ry { x } else { y })
            }
            (x, None) => x,
            (None, y) => y,
        }
    }
    MailboxLimits {
        message_rate: rate(a.message_rate, b.message_rate),
        recipient_rate: rate(a.recipient_rate, b.recipient_rate),
        recipients_per_message: a.recipients_per_message.min(b.recipients_per_message),
        throttle_backoff: a.throttle_backoff.max(b.throttle_backoff),
    }
}

pub struct MailboxThrottle {
    key: String,
    limits: MailboxLimits,
    state: Mutex<State>,
    /// A cluster node's own window: a transaction counts as "in flight" (stamped
    /// [`IN_FLIGHT_MS`] ahead) until its end is stamped, so that one waiting long for a
    /// connection never drops out of the window before it is sent.
    in_flight: bool,
    /// With `[cluster]`: the cluster and this mailbox's shared view (whose local window is the
    /// fallback).
    shared: Option<(Cluster, Arc<View>)>,
}

impl std::fmt::Debug for MailboxThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxThrottle")
            .field("key", &self.key)
            .field("limits", &self.limits)
            .field("shared", &self.shared.is_some())
            .finish()
    }
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// (reservation id, millisecond stamp) of messages in the message window, oldest first.
    messages: VecDeque<(u64, u64)>,
    /// (reservation id, millisecond stamp, recipients) in the recipient window.
    recipients: VecDeque<(u64, u64, u32)>,
    /// No new transaction before this millisecond (after a throttling reply).
    paused_until: u64,
}

/// A window's entries: (id, stamp) per message, (id, stamp, recipients) per transaction.
pub(crate) type WindowEntries = (Vec<(u64, u64)>, Vec<(u64, u64, u32)>);

/// Why a transaction must wait, and until when (Unix milliseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wait {
    pub until_millis: u64,
    pub reason: String,
}

/// A granted transaction; [`Reservation::complete`] (or [`Reservation::finish`], which also tells
/// Redis) stamps it with the time it ended.
pub struct Reservation {
    throttle: Arc<MailboxThrottle>,
    id: u64,
    recipients: u32,
    /// Granted by Redis: the end is stamped there too.
    shared: Option<(Cluster, Arc<View>)>,
    /// Its end was stamped.
    done: bool,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("id", &self.id)
            .field("shared", &self.shared.is_some())
            .finish()
    }
}

impl Reservation {
    pub fn complete(mut self, now_millis: u64) {
        self.throttle.restamp(self.id, now_millis);
        self.done = true;
    }

    /// [`Reservation::complete`], and the shared stamp in Redis when Redis granted it.
    pub async fn finish(mut self, now_millis: u64) {
        self.throttle.restamp(self.id, now_millis);
        self.done = true;
        if let Some((cluster, view)) = self.shared.take() {
            cluster.restamp(&view, self.id, self.recipients).await;
        }
    }
}

impl Drop for Reservation {
    /// Ended without [`Reservation::finish`] (the attempt was cancelled): a cluster window stamps it
    /// now, and Redis stops hearing of it (its entry ages out there).
    fn drop(&mut self) {
        if !self.done && self.throttle.in_flight {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            self.throttle.restamp(self.id, now);
        }
        if let Some((_, view)) = self.shared.take() {
            view.forget_pending(self.id);
        }
    }
}

fn describe_rate(rate: &crate::config::Rate) -> String {
    format!(
        "{} per {}",
        rate.count,
        humantime::format_duration(rate.per)
    )
}

impl MailboxThrottle {
    pub fn new(key: String, limits: MailboxLimits) -> Self {
        MailboxThrottle {
            key,
            limits,
            state: Mutex::new(State::default()),
            in_flight: false,
            shared: None,
        }
    }

    /// A local window whose reservation ids start after `first_id` (ids stay unique per process
    /// when a cluster view replaces its window).
    pub(crate) fn with_first_id(key: String, limits: MailboxLimits, first_id: u64) -> Self {
        let mut throttle = Self::new(key, limits);
        throttle.in_flight = true;
        throttle.lock().next_id = first_id;
        throttle
    }

    /// Moves the end of reservation `id` to `now_millis` (stamps only grow; an in-flight stamp
    /// becomes the real end).
    fn restamp(&self, id: u64, now_millis: u64) {
        let in_flight = self.in_flight;
        let end = |at: u64| {
            if in_flight {
                now_millis
            } else {
                at.max(now_millis)
            }
        };
        let mut state = self.lock();
        for entry in state.messages.iter_mut() {
            if entry.0 == id {
                entry.1 = end(entry.1);
            }
        }
        for entry in state.recipients.iter_mut() {
            if entry.0 == id {
                entry.1 = end(entry.1);
            }
        }
        // Stamps only grow, but a later stamp may now sit before an earlier one: keep both windows
        // ordered so that pruning from the front stays right.
        state.messages.make_contiguous().sort_by_key(|e| e.1);
        state.recipients.make_contiguous().sort_by_key(|e| e.1);
    }

    /// A new reservation id (for a transaction Redis is about to grant).
    pub(crate) fn next_id(&self) -> u64 {
        let mut state = self.lock();
        state.next_id += 1;
        state.next_id
    }

    fn prune(&self, state: &mut State, now_millis: u64) {
        if let Some(rate) = self.limits.message_rate {
            let window = rate.window_millis();
            while state
                .messages
                .front()
                .is_some_and(|&(_, at)| at + window <= now_millis)
            {
                state.messages.pop_front();
            }
        }
        if let Some(rate) = self.limits.recipient_rate {
            let window = rate.window_millis();
            while state
                .recipients
                .front()
                .is_some_and(|&(_, at, _)| at + window <= now_millis)
            {
                state.recipients.pop_front();
            }
        }
    }

    /// The stamp of a transaction granted at `now_millis`, until its end is known.
    fn start_stamp(&self, now_millis: u64) -> u64 {
        if self.in_flight {
            now_millis + IN_FLIGHT_MS
        } else {
            now_millis
        }
    }

    /// When the entry stamped `at` leaves a window of `window` ms; soon again when it is still in
    /// flight (its end frees it).
    fn leaves_at(at: u64, window: u64, now_millis: u64) -> u64 {
        if at > now_millis {
            now_millis + 200
        } else {
            at + window
        }
    }

    /// Records a transaction granted elsewhere (by Redis) without checking this window's limits.
    pub(crate) fn record(&self, id: u64, recipients: u32, now_millis: u64) {
        let stamp = self.start_stamp(now_millis);
        let mut state = self.lock();
        self.prune(&mut state, now_millis);
        if self.limits.message_rate.is_some() {
            state.messages.push_back((id, stamp));
        }
        if self.limits.recipient_rate.is_some() {
            state.recipients.push_back((id, stamp, recipients));
        }
    }

    /// The window's entries now: (id, stamp) per message and (id, stamp, recipients) per
    /// transaction.
    pub(crate) fn entries(&self, now_millis: u64) -> WindowEntries {
        let mut state = self.lock();
        self.prune(&mut state, now_millis);
        (
            state.messages.iter().copied().collect(),
            state.recipients.iter().copied().collect(),
        )
    }

    /// Reserves one transaction, through Redis when the limits are shared: see [`Self::reserve`].
    /// Redis unreachable: the node's share of the limits ([`crate::cluster`]); never an error.
    pub async fn acquire(
        self: &Arc<Self>,
        recipients: u32,
        now_millis: u64,
    ) -> Result<Reservation, Wait> {
        let Some((cluster, view)) = &self.shared else {
            return self.reserve(recipients, now_millis);
        };
        let local = view.local();
        if cluster.is_up() {
            let id = local.next_id();
            match cluster.reserve(view, &self.limits, id, recipients).await {
                Some(Ok(())) => {
                    local.record(id, recipients, now_millis);
                    return Ok(Reservation {
                        throttle: local,
                        id,
                        recipients,
                        shared: Some((cluster.clone(), view.clone())),
                        done: false,
                    });
                }
                Some(Err((wait_ms, kind))) => {
                    if kind == "pause" {
                        // Kept locally too, in case Redis goes away during the pause.
                        local.pause_local(now_millis + wait_ms);
                    }
                    let reason = match kind.as_str() {
                        "pause" => format!(
                            "the upstream asked {} to slow down (seen by a node of the cluster); \
                             waiting before sending again",
                            self.mailbox()
                        ),
                        "recipients" => format!(
                            "{} is at its limit of recipients: {} (shared by all nodes); waiting, \
                             not failing",
                            self.mailbox(),
                            self.limits
                                .recipient_rate
                                .as_ref()
                                .map_or_else(String::new, describe_rate)
                        ),
                        _ => format!(
                            "{} is at its limit of messages: {} (shared by all nodes); waiting, not \
                             failing",
                            self.mailbox(),
                            self.limits
                                .message_rate
                                .as_ref()
                                .map_or_else(String::new, describe_rate)
                        ),
                    };
                    return Err(Wait {
                        until_millis: now_millis + wait_ms,
                        reason,
                    });
                }
                // Redis did not answer: the cluster is now on its fallback limits.
                None => {}
            }
        }
        self.reserve_fallback(cluster, view, &local, recipients, now_millis)
            .await
    }

    /// Redis unreachable: this node's share of each limit, and no more than what the other nodes
    /// left of the whole limit when they were last seen.
    async fn reserve_fallback(
        &self,
        cluster: &Cluster,
        view: &Arc<View>,
        local: &Arc<MailboxThrottle>,
        recipients: u32,
        now_millis: u64,
    ) -> Result<Reservation, Wait> {
        let share = format!(
            "(Redis unreachable: this node keeps 1/{} of the limit)",
            cluster.expected_nodes()
        );
        let (own_messages, own_recipients) = local.entries(now_millis);
        if let Some(rate) = self.limits.message_rate {
            let others = view.others_messages(now_millis, rate.window_millis());
            if own_messages.len() + others.len() >= rate.count as usize {
                let until = others
                    .first()
                    .map_or(now_millis + 100, |&at| at + rate.window_millis());
                return Err(Wait {
                    until_millis: until.max(now_millis + 1),
                    reason: format!(
                        "{} is at its limit of messages: {} with the other nodes {share}; waiting, \
                         not failing",
                        self.mailbox(),
                        describe_rate(&rate)
                    ),
                });
            }
        }
        if let Some(rate) = self.limits.recipient_rate {
            let used: u64 =
                own_recipients.iter().map(|e| e.2 as u64).sum::<u64>() + view.others_recipients();
            let needed = (recipients as u64).min(rate.count as u64);
            if used > 0 && used + needed > rate.count as u64 {
                return Err(Wait {
                    until_millis: now_millis + 1000,
                    reason: format!(
                        "{} is at its limit of recipients: {} with the other nodes {share}; \
                         waiting, not failing",
                        self.mailbox(),
                        describe_rate(&rate)
                    ),
                });
            }
        }
        let reservation = local.reserve(recipients, now_millis).map_err(|mut wait| {
            wait.reason = format!("{} {share}", wait.reason);
            wait
        })?;
        cluster.note_fallback_reservation(view).await;
        Ok(reservation)
    }

    pub fn limits(&self) -> &MailboxLimits {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("throttle lock")
    }

    /// Reserves one transaction with `recipients` recipients at `now_millis`, or says until when to
    /// wait.
    pub fn reserve(
        self: &Arc<Self>,
        recipients: u32,
        now_millis: u64,
    ) -> Result<Reservation, Wait> {
        let mut state = self.lock();
        if state.paused_until > now_millis {
            return Err(Wait {
                until_millis: state.paused_until,
                reason: format!(
                    "the upstream asked {} to slow down; waiting before sending again",
                    self.mailbox()
                ),
            });
        }
        if let Some(rate) = self.limits.message_rate {
            let window = rate.window_millis();
            while state
                .messages
                .front()
                .is_some_and(|&(_, at)| at + window <= now_millis)
            {
                state.messages.pop_front();
            }
            if state.messages.len() >= rate.count as usize {
                let oldest = state.messages[state.messages.len() - rate.count as usize].1;
                return Err(Wait {
                    until_millis: Self::leaves_at(oldest, window, now_millis),
                    reason: format!(
                        "{} is at its limit of messages: {}; waiting, not failing",
                        self.mailbox(),
                        describe_rate(&rate)
                    ),
                });
            }
        }
        if let Some(rate) = self.limits.recipient_rate {
            let window = rate.window_millis();
            while state
                .recipients
                .front()
                .is_some_and(|&(_, at, _)| at + window <= now_millis)
            {
                state.recipients.pop_front();
            }
            let used: u64 = state.recipients.iter().map(|e| e.2 as u64).sum();
            // A transaction larger than the whole allowance goes alone into an empty window.
            let needed = (recipients as u64).min(rate.count as u64);
            if used + needed > rate.count as u64 {
                // The earliest moment enough recipients have left the window.
                let mut freed = 0u64;
                let mut until = now_millis;
                for &(_, at, n) in &state.recipients {
                    freed += n as u64;
                    until = Self::leaves_at(at, window, now_millis);
                    if used - freed + needed <= rate.count as u64 {
                        break;
                    }
                }
                return Err(Wait {
                    until_millis: until,
                    reason: format!(
                        "{} is at its limit of recipients: {}; waiting, not failing",
                        self.mailbox(),
                        describe_rate(&rate)
                    ),
                });
            }
        }
        state.next_id += 1;
        let id = state.next_id;
        let stamp = self.start_stamp(now_millis);
        if self.limits.message_rate.is_some() {
            state.messages.push_back((id, stamp));
        }
        if self.limits.recipient_rate.is_some() {
            state.recipients.push_back((id, stamp, recipients));
        }
        Ok(Reservation {
            throttle: self.clone(),
            id,
            recipients,
            shared: None,
            done: false,
        })
    }

    /// The upstream said it is throttling this mailbox: no transaction for `throttle_backoff` (on
    /// every node, when the limits are shared).
    pub fn pause(&self, now_millis: u64) {
        let until = now_millis + self.limits.throttle_backoff.as_millis() as u64;
        self.pause_local(until);
        if let Some((cluster, view)) = &self.shared {
            view.local().pause_local(until);
            cluster.pause(view, self.limits.throttle_backoff);
        }
        tracing::warn!(mailbox = %self.mailbox(), pause = ?self.limits.throttle_backoff, "upstream throttling: pausing this mailbox");
    }

    fn pause_local(&self, until: u64) {
        let mut state = self.lock();
        state.paused_until = state.paused_until.max(until);
    }

    fn mailbox(&self) -> &str {
        self.key
            .strip_prefix("mailbox:")
            .or_else(|| self.key.strip_prefix("route:"))
            .unwrap_or(&self.key)
    }
}

/// Whether an upstream's temporary reply (as quoted in a deferral reason) says "you are sending too
/// much": `432 4.3.2` (concurrent connections), `4.7.500`–`4.7.699` (throttled, rate limited, too
/// many connections), Graph `429`.
pub fn is_throttling(reason: &str) -> bool {
    let codes = enhanced_codes(reason);
    codes.iter().any(|&(class, subject, detail)| {
        class == 4
            && ((subject == 3 && detail == 2) || (subject == 7 && (500..700).contains(&detail)))
    }) || reason.contains("HTTP 429")
        || reason.contains("(429)")
}

/// Every `d.d{1,3}.d{1,3}` token in the text.
fn enhanced_codes(text: &str) -> Vec<(u8, u16, u16)> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|token| {
            let mut parts = token.split('.');
            let class: u8 = parts.next()?.parse().ok()?;
            let subject: u16 = parts.next()?.parse().ok()?;
            let detail: u16 = parts.next()?.parse().ok()?;
            (parts.next().is_none()
                && matches!(class, 2 | 4 | 5)
                && subject < 1000
                && detail < 1000)
                .then_some((class, subject, detail))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rate;
    use std::time::Duration;

    fn throttle(
        message_rate: Option<(u32, u64)>,
        recipient_rate: Option<(u32, u64)>,
    ) -> Arc<MailboxThrottle> {
        let rate = |(count, secs): (u32, u64)| Rate {
            count,
            per: Duration::from_secs(secs),
        };
        Arc::new(MailboxThrottle::new(
            "mailbox:scanner@contoso.com".into(),
            MailboxLimits {
                message_rate: message_rate.map(rate),
                recipient_rate: recipient_rate.map(rate),
                recipients_per_message: 500,
                throttle_backoff: Duration::from_secs(60),
            },
        ))
    }

    #[test]
    fn thirty_per_minute_then_wait_for_the_oldest_to_leave_the_window() {
        let t = throttle(Some((30, 60)), None);
        let start = 1_000_000_000;
        for i in 0..30 {
            t.reserve(1, start + i * 100)
                .unwrap()
                .complete(start + i * 100 + 50);
        }
        let wait = t.reserve(1, start + 5_000).unwrap_err();
        // The first one ended at start+50: the window frees one minute later (and the 121 ms
        // margin for the upstream's clock, `Rate::window_millis`).
        assert_eq!(wait.until_millis, start + 50 + 60_000 + 121);
        assert!(
            wait.reason.contains("limit of messages: 30 per 1m"),
            "{}",
            wait.reason
        );
        assert!(t.reserve(1, start + 60_170).is_err());
        assert!(t.reserve(1, start + 60_171).is_ok());
    }

    #[test]
    fn a_rate_counts_a_message_a_little_longer_than_its_window() {
        let rate = |per| Rate { count: 1, per };
        assert_eq!(rate(Duration::from_secs(1)).window_millis(), 1_003);
        assert_eq!(rate(Duration::from_secs(60)).window_millis(), 60_121);
        // A 5/1s mailbox: the sixth message may go 1,003 ms after the first ended, not at 1,000
        // (the upstream stamped it earlier, in finer time).
        let t = throttle(Some((5, 1)), None);
        for i in 0..5 {
            t.reserve(1, i).unwrap().complete(i);
        }
        assert!(t.reserve(1, 1_002).is_err());
        assert!(t.reserve(1, 1_003).is_ok());
    }

    #[test]
    fn completion_time_counts_not_reservation_time() {
        let t = throttle(Some((1, 10)), None);
        let r = t.reserve(1, 0).unwrap();
        // A slow transaction: the upstream saw it at 3 s.
        r.complete(3_000);
        assert_eq!(
            t.reserve(1, 10_000).unwrap_err().until_millis,
            13_000 + 21,
            "10 s after the end, and the margin"
        );
    }

    #[test]
    fn recipients_per_day_counts_recipients() {
        let t = throttle(None, Some((10_000, 86_400)));
        let day = 86_400_000;
        t.reserve(6_000, 0).unwrap().complete(0);
        t.reserve(3_000, 1_000).unwrap().complete(1_000);
        let wait = t.reserve(2_000, 2_000).unwrap_err();
        assert_eq!(
            wait.until_millis,
            day + 1 + day / 500,
            "6,000 leave the window after a day (and the margin)"
        );
        assert!(
            t.reserve(1_000, 2_000).is_ok(),
            "exactly at the limit is allowed"
        );
        // A transaction bigger than the allowance waits for an empty window, then goes.
        let big = throttle(None, Some((100, 60)));
        assert!(big.reserve(500, 0).is_ok());
        assert!(big.reserve(1, 1).is_err());
    }

    #[test]
    fn a_throttling_reply_pauses_the_mailbox() {
        let t = throttle(None, None);
        t.pause(1_000);
        let wait = t.reserve(1, 2_000).unwrap_err();
        assert_eq!(wait.until_millis, 61_000);
        assert!(t.reserve(1, 61_000).is_ok());
    }

    #[test]
    fn throttling_replies_are_recognised() {
        let yes = [
            r#"smtp.office365.com[1.2.3.4]:587 said "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded" in reply to MAIL"#,
            r#"said "451 4.7.500 Server busy. Please try again later. (AS770)""#,
            r#"said "451 4.7.650 The mail server [1.2.3.4] has been temporarily rate limited""#,
            "Graph sendMail answered HTTP 429 Too Many Requests; retry after 10 s",
        ];
        let no = [
            r#"said "451 4.3.0 Temporary failure""#,
            r#"said "550 5.7.60 SMTP; Client does not have permissions""#,
            "connection refused",
            r#"said "421 4.4.2 timeout""#,
        ];
        for reason in yes {
            assert!(is_throttling(reason), "{reason}");
        }
        for reason in no {
            assert!(!is_throttling(reason), "{reason}");
        }
    }
}
