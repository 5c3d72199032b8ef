//! Per-mailbox limits kept by the relay: at ten times the offered load, an upstream that counts like
//! Exchange Online (connections and messages per window per mailbox) refuses nothing, and the relay
//! still delivers at the limit. Limits are scaled down (5 per second instead of 30 per minute) so the
//! test takes seconds; the mechanism is the same.

mod common;

use common::client::Client;
use common::upstream::{Breaches, Upstream, UpstreamConfig};
use smarthost::cli::serve::{Running, start};
use smarthost::config::load_str;
use std::path::Path;
use std::time::{Duration, Instant};

const USER: &str = "scanner@contoso.example";
const PASSWORD: &str = "limits-test-pw";

async fn relay(dir: &Path, upstream: &Upstream, limits: &str) -> Running {
    let pass = dir.join("pass");
    std::fs::write(&pass, PASSWORD).unwrap();
    let text = format!(
        r#"
data_dir = "{data}"
hostname = "relay.test"
[[listener]]
address = "127.0.0.1:0"
relay_from = ["127.0.0.1"]
[queue]
retry = ["1s"]
max_concurrent_deliveries = 20
{route}[route.limits]
{limits}
"#,
        data = dir.display(),
        route = upstream.route_toml("m365", "", USER, &pass),
    );
    start(load_str(&text, "test.toml").expect("config"))
        .await
        .expect("relay starts")
}

async fn send_many(relay: &Running, n: usize, recipients_each: usize) {
    let (mut c, _) = Client::connect(relay.local_addrs[0]).await;
    c.cmd("EHLO app").await;
    for i in 0..n {
        c.cmd(&format!("MAIL FROM:<{USER}>")).await;
        for r in 0..recipients_each {
            let reply = c.cmd(&format!("RCPT TO:<r{i}-{r}@example.com>")).await;
            assert!(reply.starts_with("250"), "{reply}");
        }
        c.cmd("DATA").await;
        c.send(format!("Subject: load {i}\r\n\r\nx\r\n.\r\n").as_bytes())
            .await;
        assert!(c.reply().await.starts_with("250"));
    }
    c.cmd("QUIT").await;
}

#[tokio::test]
async fn ten_times_the_allowed_load_causes_no_refusal_and_runs_at_the_limit() {
    // Exchange-like: 5 messages per second per mailbox, 3 connections per mailbox.
    let upstream = Upstream::start(UpstreamConfig {
        message_rate: Some((5, Duration::from_secs(1))),
        max_connections_per_user: Some(3),
        ..UpstreamConfig::default().with_credentials(USER, PASSWORD)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(
        dir.path(),
        &upstream,
        "message_rate = \"5/1s\"\nmax_connections = 3",
    )
    .await;

    // 50 messages offered at once: ten seconds' worth at the limit.
    let offered = Instant::now();
    send_many(&relay, 50, 1).await;
    assert!(
        offered.elapsed() < Duration::from_secs(5),
        "offering took too long to be 10x the limit"
    );

    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(40);
    while upstream.messages().len() < 50 && Instant::now() < deadline {
        if first.is_none() && !upstream.messages().is_empty() {
            first = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = Instant::now();
    let delivered = upstream.messages().len();
    // Breaches first: one refusal pauses the mailbox for `throttle_backoff` (60 s), which would
    // otherwise show only as too few messages delivered.
    assert_eq!(
        upstream.breaches(),
        Breaches::default(),
        "the upstream refused something ({delivered} of 50 delivered)"
    );
    assert_eq!(delivered, 50, "all delivered in the end");

    // Sliding window of 5 per second: after the first 5, 45 more take 9 seconds.
    let span = last.duration_since(first.unwrap()).as_secs_f64();
    let rate = 45.0 / span;
    println!("delivered 50 messages at {rate:.2} messages per second (limit 5)");
    assert!(
        (4.5..=5.5).contains(&rate),
        "delivered rate {rate:.2}/s is not within 10% of the 5/s limit"
    );
    // Everything left the queue: nothing that waited for a limit was failed or left behind.
    for _ in 0..100 {
        if relay.queue.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(relay.queue.is_empty());
    relay.shutdown().await;
}

#[tokio::test]
async fn recipients_over_the_per_message_limit_are_split_into_transactions() {
    let upstream =
        Upstream::start(UpstreamConfig::default().with_credentials(USER, PASSWORD)).await;
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), &upstream, "recipients_per_message = 4").await;
    send_many(&relay, 1, 10).await;
    let messages = upstream.wait_for_messages(3, Duration::from_secs(20)).await;
    let sizes: Vec<usize> = messages.iter().map(|m| m.recipients.len()).collect();
    assert_eq!(sizes, vec![4, 4, 2]);
    let mut all: Vec<String> = messages.iter().flat_map(|m| m.recipients.clone()).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 10, "every recipient exactly once");
    relay.shutdown().await;
}

#[tokio::test]
async fn a_throttling_reply_pauses_the_mailbox_instead_of_failing() {
    // The upstream allows 2 per 2 s and answers 451 4.7.500 beyond; the relay does not know the
    // limit, learns from the reply, pauses, and delivers everything without a bounce.
    let upstream = Upstream::start(UpstreamConfig {
        message_rate: Some((2, Duration::from_secs(2))),
        ..UpstreamConfig::default().with_credentials(USER, PASSWORD)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), &upstream, "throttle_backoff = \"2s\"").await;
    send_many(&relay, 6, 1).await;
    let messages = upstream.wait_for_messages(6, Duration::from_secs(40)).await;
    assert_eq!(messages.len(), 6);
    assert!(upstream.breaches().rate >= 1, "the upstream did throttle");
    assert!(
        messages.iter().all(|m| m.sender == USER),
        "no bounce was sent: {messages:#?}"
    );
    relay.shutdown().await;
}
