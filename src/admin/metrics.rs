//! The relay's counters, gauges and one histogram, in a small hand-written registry, rendered in the
//! Prometheus text format (version 0.0.4) at `GET /metrics`.
//!
//! The registry is process-wide ([`metrics`]): the queue, ingest, the OAuth token providers and the
//! AUTH lockout count with one-line calls, without carrying a handle around. Counters only grow; the
//! queue gauges are computed when scraped.

use crate::deliver::RecipientResult;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Upper bounds (seconds) of the upstream reply-time histogram's buckets; `+Inf` follows.
pub const REPLY_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// The process-wide registry.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

/// A counter without labels.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A counter with one label (listener, route): few distinct values, so a map under a mutex.
#[derive(Debug, Default)]
pub struct LabeledCounter(Mutex<BTreeMap<String, u64>>);

impl LabeledCounter {
    pub fn inc(&self, label: &str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(label) {
            Some(n) => *n += 1,
            None => {
                map.insert(label.to_string(), 1);
            }
        }
    }

    pub fn get(&self, label: &str) -> u64 {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(label).copied().unwrap_or(0)
    }

    fn snapshot(&self) -> Vec<(String, u64)> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Per bucket of [`REPLY_BUCKETS`], not cumulative; one more for `+Inf`.
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A histogram with one label (route).
#[derive(Debug, Default)]
pub struct LabeledHistogram(Mutex<BTreeMap<String, Histogram>>);

impl LabeledHistogram {
    pub fn observe(&self, label: &str, value: Duration) {
        let seconds = value.as_secs_f64();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let h = map.entry(label.to_string()).or_insert_with(|| Histogram {
            buckets: vec![0; REPLY_BUCKETS.len() + 1],
            ..Histogram::default()
        });
        let bucket = REPLY_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(REPLY_BUCKETS.len());
        h.buckets[bucket] += 1;
        h.sum += seconds;
        h.count += 1;
    }

    fn snapshot(&self) -> Vec<(String, Histogram)> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Everything `/metrics` shows but the queue gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Messages accepted (stored in the spool), by where they came in: `smtp`, `pickup`, `badmail`,
    /// `admin`.
    pub received: LabeledCounter,
    /// Recipient results by route: delivered, deferred (temporary), bounced (permanent failure).
    pub delivered: LabeledCounter,
    pub deferred: LabeledCounter,
    pub bounced: LabeledCounter,
    /// Failed inbound AUTH attempts.
    pub auth_failures: Counter,
    /// OAuth access-token renewals (successful or not).
    pub token_refreshes: Counter,
    /// Transactions held back by a mailbox limit.
    pub throttle_waits: Counter,
    /// Time of one upstream transaction (connection set-up included when there was none to reuse).
    pub upstream_reply: LabeledHistogram,
    /// The latest recipient results, newest last (at most [`RECENT_KEPT`]).
    pub recent: Mutex<std::collections::VecDeque<DeliveryRecord>>,
    /// How each route's upstream answered lately.
    pub health: Mutex<BTreeMap<String, RouteHealth>>,
    /// `[cluster]` is configured: the two cluster metrics are shown.
    pub cluster_configured: std::sync::atomic::AtomicBool,
    /// 1 while the shared limits in Redis are in force, 0 on fallback limits.
    pub cluster_redis_up: AtomicU64,
    /// Switches to the fallback limits (Redis unreachable).
    pub cluster_fallbacks: Counter,
}

/// Recipient results kept for the admin page's "recent traffic".
pub const RECENT_KEPT: usize = 200;

/// One recipient's result, as "recent deliveries" shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeliveryRecord {
    /// Unix seconds.
    pub at: u64,
    pub queue_id: String,
    pub route: String,
    pub recipient: String,
    /// `delivered`, `deferred` or `failed`.
    pub outcome: &'static str,
    /// The upstream's reply or the reason.
    pub detail: String,
}

/// A route's upstream as its latest results show it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RouteHealth {
    pub last_attempt: u64,
    pub last_success: Option<u64>,
    pub last_failure: Option<u64>,
    /// Temporary failures in a row since the last success: 0 is healthy.
    pub failures_in_a_row: u64,
    pub last_outcome: &'static str,
    pub last_detail: String,
}

impl Metrics {
    /// Counts one recipient's result on `route`, and keeps it for "recent deliveries" and the
    /// route's health.
    pub fn recipient_result(&self, route: &str, result: &RecipientResult) {
        self.recipient_result_for(route, "", "", 0, result);
    }

    /// The same with the message, the recipient and the time (Unix seconds).
    pub fn recipient_result_for(
        &self,
        route: &str,
        queue_id: &str,
        recipient: &str,
        at: u64,
        result: &RecipientResult,
    ) {
        let (outcome, detail) = match result {
            RecipientResult::Delivered { reply } => {
                self.delivered.inc(route);
                ("delivered", reply)
            }
            RecipientResult::Deferred { reason } => {
                self.deferred.inc(route);
                ("deferred", reason)
            }
            RecipientResult::Failed { reason } => {
                self.bounced.inc(route);
                ("failed", reason)
            }
        };
        {
            let mut health = self.health.lock().expect("health lock");
            let h = health.entry(route.to_string()).or_default();
            h.last_attempt = at;
            h.last_outcome = outcome;
            h.last_detail = detail.clone();
            match outcome {
                // A recipient's permanent refusal still means the upstream answered.
                "delivered" | "failed" => {
                    h.last_success = Some(at);
                    h.failures_in_a_row = 0;
                }
                _ => {
                    h.last_failure = Some(at);
                    h.failures_in_a_row += 1;
                }
            }
        }
        let mut recent = self.recent.lock().expect("recent lock");
        if recent.len() == RECENT_KEPT {
            recent.pop_front();
        }
        recent.push_back(DeliveryRecord {
            at,
            queue_id: queue_id.to_string(),
            route: route.to_string(),
            recipient: recipient.to_string(),
            outcome,
            detail: detail.clone(),
        });
    }

    /// The latest recipient results, newest first.
    pub fn recent_deliveries(&self) -> Vec<DeliveryRecord> {
        let recent = self.recent.lock().expect("recent lock");
        recent.iter().rev().cloned().collect()
    }

    /// Each route's health, by name.
    pub fn route_health(&self) -> BTreeMap<String, RouteHealth> {
        self.health.lock().expect("health lock").clone()
    }

    /// The Prometheus text format; `queue_messages` and `oldest_age_seconds` are the queue gauges.
    pub fn render(&self, queue_messages: u64, oldest_age_seconds: u64) -> String {
        let mut out = String::new();
        labeled(
            &mut out,
            "smarthost_messages_received_total",
            "Messages accepted into the spool, by where they came in.",
            "listener",
            &self.received,
        );
        labeled(
            &mut out,
            "smarthost_messages_delivered_total",
            "Recipients delivered, by route.",
            "route",
            &self.delivered,
        );
        labeled(
            &mut out,
            "smarthost_messages_deferred_total",
            "Recipient attempts that failed temporarily, by route.",
            "route",
            &self.deferred,
        );
        labeled(
            &mut out,
            "smarthost_messages_bounced_total",
            "Recipients that failed permanently, by route.",
            "route",
            &self.bounced,
        );
        plain(
            &mut out,
            "smarthost_auth_failures_total",
            "Failed inbound AUTH attempts.",
            "counter",
            self.auth_failures.get(),
        );
        plain(
            &mut out,
            "smarthost_token_refreshes_total",
            "OAuth access-token renewals.",
            "counter",
            self.token_refreshes.get(),
        );
        plain(
            &mut out,
            "smarthost_throttle_waits_total",
            "Transactions held back by a mailbox limit.",
            "counter",
            self.throttle_waits.get(),
        );
        plain(
            &mut out,
            "smarthost_queue_messages",
            "Messages in the queue.",
            "gauge",
            queue_messages,
        );
        plain(
            &mut out,
            "smarthost_queue_oldest_age_seconds",
            "Age of the oldest message in the queue (0 when empty).",
            "gauge",
            oldest_age_seconds,
        );
        if self.cluster_configured.load(Ordering::Relaxed) {
            plain(
                &mut out,
                "smarthost_cluster_redis_up",
                "1 while per-mailbox limits are shared through Redis, 0 on fallback limits.",
                "gauge",
                self.cluster_redis_up.load(Ordering::Relaxed),
            );
            plain(
                &mut out,
                "smarthost_cluster_fallbacks_total",
                "Switches to fallback limits because Redis was unreachable.",
                "counter",
                self.cluster_fallbacks.get(),
            );
        }
        let name = "smarthost_upstream_reply_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time of one upstream transaction, by route."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (route, h) in self.upstream_reply.snapshot() {
            let route = escape(&route);
            let mut cumulative = 0;
            for (i, n) in h.buckets.iter().enumerate() {
                cumulative += n;
                let le = REPLY_BUCKETS
                    .get(i)
                    .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
                let _ = writeln!(
                    out,
                    "{name}_bucket{{route=\"{route}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(out, "{name}_sum{{route=\"{route}\"}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{route=\"{route}\"}} {}", h.count);
        }
        out
    }
}

fn labeled(out: &mut String, name: &str, help: &str, label: &str, counter: &LabeledCounter) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    for (value, n) in counter.snapshot() {
        let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {n}", escape(&value));
    }
}

fn plain(out: &mut String, name: &str, help: &str, kind: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

/// `text` (the Prometheus text format) with `smarthost_node_info{node="<node>"} 1` at the end and,
/// when `every_line` (several nodes: `[cluster]`), `node="<node>"` as the first label of every
/// sample, so that relays scraped into one Prometheus stay apart. A single relay's series keep
/// their names and labels.
pub fn with_node_label(text: &str, node: &str, every_line: bool) -> String {
    let label = format!("node=\"{}\"", escape(node));
    let mut out = String::with_capacity(text.len() + text.lines().count() * (label.len() + 2));
    for line in text.lines() {
        if !every_line || line.starts_with('#') || line.trim().is_empty() {
            out.push_str(line);
        } else {
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let (name, rest) = line.split_at(name_end);
            out.push_str(name);
            match rest.strip_prefix('{') {
                Some(labels) if labels.starts_with('}') => {
                    out.push_str(&format!("{{{label}{labels}"));
                }
                Some(labels) => out.push_str(&format!("{{{label},{labels}")),
                None => out.push_str(&format!("{{{label}}}{rest}")),
            }
        }
        out.push('\n');
    }
    out.push_str("# HELP smarthost_node_info The relay node these metrics come from.\n");
    out.push_str("# TYPE smarthost_node_info gauge\n");
    out.push_str(&format!("smarthost_node_info{{{label}}} 1\n"));
    out
}

/// A label value: backslash, double quote and line feed escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_cumulative_buckets() {
        let m = Metrics::default();
        m.received.inc("smtp");
        m.received.inc("smtp");
        m.recipient_result(
            "o\"365",
            &RecipientResult::Delivered {
                reply: "250 ok".into(),
            },
        );
        m.throttle_waits.inc();
        m.upstream_reply.observe("o365", Duration::from_millis(200));
        m.upstream_reply.observe("o365", Duration::from_secs(100));
        let text = m.render(4, 120);
        assert!(text.contains("smarthost_messages_received_total{listener=\"smtp\"} 2\n"));
        assert!(text.contains("smarthost_messages_delivered_total{route=\"o\\\"365\"} 1\n"));
        assert!(text.contains("smarthost_throttle_waits_total 1\n"));
        assert!(text.contains("smarthost_queue_messages 4\n"));
        assert!(text.contains("smarthost_queue_oldest_age_seconds 120\n"));
        assert!(
            text.contains("smarthost_upstream_reply_seconds_bucket{route=\"o365\",le=\"0.1\"} 0\n")
        );
        assert!(
            text.contains(
                "smarthost_upstream_reply_seconds_bucket{route=\"o365\",le=\"0.25\"} 1\n"
            )
        );
        assert!(
            text.contains("smarthost_upstream_reply_seconds_bucket{route=\"o365\",le=\"60\"} 1\n")
        );
        assert!(
            text.contains(
                "smarthost_upstream_reply_seconds_bucket{route=\"o365\",le=\"+Inf\"} 2\n"
            )
        );
        assert!(text.contains("smarthost_upstream_reply_seconds_count{route=\"o365\"} 2\n"));
        assert!(!text.contains("smarthost_cluster_redis_up"));

        let single = with_node_label(&text, "relay-a", false);
        assert!(single.contains("smarthost_queue_messages 4\n"));
        assert!(single.ends_with("smarthost_node_info{node=\"relay-a\"} 1\n"));
        let labeled = with_node_label(&text, "relay-a", true);
        assert!(
            labeled.contains(
                "smarthost_messages_received_total{node=\"relay-a\",listener=\"smtp\"} 2\n"
            )
        );
        assert!(labeled.contains("smarthost_queue_messages{node=\"relay-a\"} 4\n"));
        assert!(labeled.contains("# TYPE smarthost_queue_messages gauge\n"));
        assert!(labeled.ends_with("smarthost_node_info{node=\"relay-a\"} 1\n"));
        assert!(
            labeled
                .lines()
                .filter(|l| !l.starts_with('#'))
                .all(|l| l.contains("{node=\"relay-a\"")),
            "{labeled}"
        );
    }
}
