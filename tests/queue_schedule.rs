//! The retry schedule, the delay notice and expiry, driven by a manual clock instead of sleeping:
//! the relay runs for real (sockets, spool, upstream down), only its clock is ours.

mod common;

use common::client::Client;
use common::upstream::{Upstream, UpstreamConfig};
use smarthost::cli::serve::{Running, start_with_clock};
use smarthost::clock::{Clock, ManualClock};
use smarthost::config::load_str;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const MIN: u64 = 60;
const HOUR: u64 = 3600;

/// Mail for contoso.example (the senders' own domain) lands in a drop folder, so bounces can be read;
/// everything else goes to `upstream`.
async fn relay(dir: &Path, upstream: &Upstream, clock: Arc<ManualClock>, queue: &str) -> Running {
    let text = format!(
        r#"
data_dir = "{data}"
hostname = "relay.test"
[[listener]]
address = "127.0.0.1:0"
relay_from = ["127.0.0.1"]
[queue]
{queue}
[[route]]
name = "local"
domains = ["contoso.example"]
transport = "drop"
path = "outbox"
[[route]]
name = "upstream"
domains = ["*"]
host = "127.0.0.1"
port = {port}
tls = "none"
connect_timeout = "2s"
command_timeout = "5s"
"#,
        data = dir.display(),
        port = upstream.port(),
    );
    let config = load_str(&text, "test.toml").expect("config");
    start_with_clock(config, clock).await.expect("relay starts")
}

async fn send(relay: &Running, from: &str, to: &[&str]) -> String {
    let (mut c, _) = Client::connect(relay.local_addrs[0]).await;
    c.cmd("EHLO app").await;
    assert!(
        c.cmd(&format!("MAIL FROM:<{from}>"))
            .await
            .starts_with("250")
    );
    for rcpt in to {
        assert!(c.cmd(&format!("RCPT TO:<{rcpt}>")).await.starts_with("250"));
    }
    c.cmd("DATA").await;
    c.send(b"From: <scanner@contoso.example>\r\nSubject: Quarterly scan\r\n\r\nsee attachment\r\n.\r\n")
        .await;
    let reply = c.reply().await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    reply.rsplit(' ').next().unwrap().to_string()
}

/// The message's attempts, or None once it has left the queue.
fn attempts(relay: &Running, id: &str) -> Option<u32> {
    relay
        .queue
        .list()
        .into_iter()
        .find(|m| m.id == id)
        .map(|m| m.attempts)
}

async fn wait_attempts(relay: &Running, id: &str, at_least: u32) -> Option<u32> {
    for _ in 0..800 {
        match attempts(relay, id) {
            Some(n)
                if n >= at_least && !relay.queue.list().iter().any(|m| m.id == id && m.active) =>
            {
                return Some(n);
            }
            None => return None,
            _ => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    attempts(relay, id)
}

fn outbox(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("outbox"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

async fn wait_outbox(dir: &Path, n: usize) -> Vec<PathBuf> {
    for _ in 0..200 {
        if outbox(dir).len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    outbox(dir)
}

#[tokio::test]
async fn iis_schedule_delay_notice_after_12h_and_bounce_after_2_days() {
    let upstream = Upstream::start(UpstreamConfig::default()).await;
    upstream.go_down().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::starting_now());
    let t0 = clock.now();
    let relay = relay(dir.path(), &upstream, clock.clone(), "").await;
    let id = send(&relay, "scanner@contoso.example", &["boss@example.com"]).await;

    // The first attempt is at once and fails; the next is 15 minutes (±10 %) later.
    assert_eq!(wait_attempts(&relay, &id, 1).await, Some(1));
    let next = relay.queue.list()[0].next_attempt;
    assert!(
        (t0 + 13 * MIN..=t0 + 17 * MIN).contains(&next),
        "next attempt at +{}s",
        next - t0
    );

    // Not before it is due.
    clock.advance(12 * MIN);
    relay.queue.wake();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(attempts(&relay, &id), Some(1));

    // Then 30 min, 60 min, and every 240 min: check each wait.
    let expected = [15 * MIN, 30 * MIN, 60 * MIN, 240 * MIN, 240 * MIN];
    let mut previous_next = next;
    for (n, base) in expected.iter().enumerate().skip(1) {
        let now = clock.now();
        clock.advance(previous_next.saturating_sub(now));
        relay.queue.wake();
        assert_eq!(
            wait_attempts(&relay, &id, n as u32 + 1).await,
            Some(n as u32 + 1)
        );
        let m = &relay.queue.list()[0];
        let wait = m.next_attempt - clock.now();
        assert!(
            (*base as f64 * 0.89..=*base as f64 * 1.11).contains(&(wait as f64)),
            "wait after attempt {} was {wait}s, expected about {base}s",
            n + 1
        );
        assert_eq!(m.recipients[0].state, "deferred");
        previous_next = m.next_attempt;
    }
    assert!(outbox(dir.path()).is_empty(), "no notice before 12 hours");

    // Past 12 hours: the next attempt sends the one delay notice.
    clock.advance((t0 + 12 * HOUR).saturating_sub(clock.now()) + 1);
    let due = relay.queue.list()[0].next_attempt;
    clock.advance(due.saturating_sub(clock.now()));
    relay.queue.wake();
    let files = wait_outbox(dir.path(), 1).await;
    assert_eq!(files.len(), 1, "one delay notice");
    let notice = common::dsn::parse(&std::fs::read(&files[0]).unwrap());
    assert_eq!(notice.to, "scanner@contoso.example");
    assert_eq!(
        notice.report_type,
        "multipart/report; report-type=delivery-status"
    );
    assert_eq!(notice.recipient_field(0, "action"), Some("delayed"));
    assert!(
        notice
            .recipient_field(0, "status")
            .unwrap()
            .starts_with("4.")
    );
    assert_eq!(
        notice.recipient_field(0, "final-recipient"),
        Some("rfc822; boss@example.com")
    );
    assert!(notice.recipient_field(0, "will-retry-until").is_some());
    assert!(
        notice.subject.contains("Quarterly scan"),
        "{}",
        notice.subject
    );

    // Keep failing until two days have passed: exactly one notice, then a bounce.
    for _ in 0..30 {
        if attempts(&relay, &id).is_none() {
            break;
        }
        let due = relay.queue.list()[0].next_attempt;
        clock.advance(due.saturating_sub(clock.now()));
        relay.queue.wake();
        let before = attempts(&relay, &id).unwrap_or(0);
        wait_attempts(&relay, &id, before + 1).await;
    }
    assert_eq!(attempts(&relay, &id), None, "the message left the queue");
    assert!(clock.now() >= t0 + 48 * HOUR && clock.now() <= t0 + 48 * HOUR + 5 * MIN);
    let files = wait_outbox(dir.path(), 2).await;
    assert_eq!(files.len(), 2, "a delay notice and a bounce, nothing more");
    let bounce = files
        .iter()
        .map(|f| common::dsn::parse(&std::fs::read(f).unwrap()))
        .find(|d| d.recipient_field(0, "action") == Some("failed"))
        .expect("a failure DSN");
    assert_eq!(bounce.to, "scanner@contoso.example");
    assert_eq!(bounce.auto_submitted, "auto-replied");
    assert!(
        bounce
            .recipient_field(0, "status")
            .unwrap()
            .starts_with("5.4.7")
    );
    assert!(bounce.readable.contains("boss@example.com"));
    assert!(bounce.original_type == "message/rfc822");
    assert!(String::from_utf8_lossy(&bounce.original).contains("Subject: Quarterly scan"));
    relay.shutdown().await;
}

#[tokio::test]
async fn retry_state_survives_a_restart() {
    let upstream = Upstream::start(UpstreamConfig::default()).await;
    upstream.go_down().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::starting_now());
    let relay1 = relay(dir.path(), &upstream, clock.clone(), "").await;
    let id = send(&relay1, "scanner@contoso.example", &["boss@example.com"]).await;
    assert_eq!(wait_attempts(&relay1, &id, 1).await, Some(1));
    let before = relay1.queue.list()[0].clone();
    relay1.shutdown().await;

    let relay2 = relay(dir.path(), &upstream, clock.clone(), "").await;
    let after = relay2.queue.list();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].attempts, 1);
    assert_eq!(after[0].next_attempt, before.next_attempt);
    assert_eq!(after[0].recipients[0].detail, before.recipients[0].detail);
    // Nothing happens before the recorded time, even after the restart.
    relay2.queue.wake();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(attempts(&relay2, &id), Some(1));
    // At the recorded time it is delivered.
    upstream.go_up().await;
    clock.advance(before.next_attempt - clock.now());
    relay2.queue.wake();
    upstream.wait_for_messages(1, Duration::from_secs(10)).await;
    assert_eq!(wait_attempts(&relay2, &id, 2).await, None);
    relay2.shutdown().await;
}

#[tokio::test]
async fn route_schedule_overrides_apply_per_route() {
    let upstream = Upstream::start(UpstreamConfig::default()).await;
    upstream.go_down().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::starting_now());
    let t0 = clock.now();
    let relay = relay(
        dir.path(),
        &upstream,
        clock.clone(),
        "retry = [\"5m\"]\ndelay_notice = \"never\"\nexpire = \"1h\"",
    )
    .await;
    let id = send(&relay, "scanner@contoso.example", &["a@example.com"]).await;
    assert_eq!(wait_attempts(&relay, &id, 1).await, Some(1));
    let next = relay.queue.list()[0].next_attempt;
    assert!((t0 + 4 * MIN..=t0 + 6 * MIN).contains(&next));
    for _ in 0..30 {
        let Some(m) = relay.queue.list().into_iter().next() else {
            break;
        };
        clock.advance(m.next_attempt.saturating_sub(clock.now()));
        relay.queue.wake();
        wait_attempts(&relay, &id, m.attempts + 1).await;
    }
    assert_eq!(attempts(&relay, &id), None, "the message left the queue");
    assert!(clock.now() <= t0 + HOUR + MIN, "expired after one hour");
    let files = wait_outbox(dir.path(), 1).await;
    assert_eq!(files.len(), 1, "only the bounce, no delay notice");
    relay.shutdown().await;
}
