//! Upstream faults, each ending in the right state: temporary trouble leaves the recipient deferred
//! (queued, with the reason), a permanent refusal bounces only that recipient to the sender.

mod common;

use common::certs::TestPki;
use common::client::Client;
use common::upstream::{Upstream, UpstreamConfig};
use smarthost::cli::serve::{Running, start};
use smarthost::config::load_str;
use smarthost::queue::view::MessageInfo;
use std::path::Path;
use std::time::Duration;

/// Bounces to contoso.example land in `outbox`; everything else goes to 127.0.0.1:`port`.
async fn relay(dir: &Path, port: u16, tls: &str, ca: Option<&Path>) -> Running {
    relay_with(dir, port, tls, ca, "").await
}

async fn relay_with(dir: &Path, port: u16, tls: &str, ca: Option<&Path>, queue: &str) -> Running {
    let ca = ca
        .map(|p| format!("ca_file = \"{}\"", p.display()))
        .unwrap_or_default();
    let text = format!(
        r#"
data_dir = "{data}"
hostname = "relay.test"
[[listener]]
address = "127.0.0.1:0"
relay_from = ["127.0.0.1"]
[queue]
retry = ["1h"]
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
tls = "{tls}"
{ca}
connect_timeout = "2s"
command_timeout = "1s"
"#,
        data = dir.display(),
    );
    start(load_str(&text, "test.toml").expect("config"))
        .await
        .expect("relay starts")
}

async fn send(relay: &Running, to: &[&str]) -> String {
    let (mut c, _) = Client::connect(relay.local_addrs[0]).await;
    c.cmd("EHLO app").await;
    c.cmd("MAIL FROM:<scanner@contoso.example>").await;
    for rcpt in to {
        assert!(c.cmd(&format!("RCPT TO:<{rcpt}>")).await.starts_with("250"));
    }
    c.cmd("DATA").await;
    c.send(b"Subject: fault test\r\n\r\nbody\r\n.\r\n").await;
    let reply = c.reply().await;
    assert!(reply.starts_with("250"), "{reply}");
    c.cmd("QUIT").await;
    reply.rsplit(' ').next().unwrap().to_string()
}

/// The message once its first attempt is over (None if it already left the queue).
async fn after_first_attempt(relay: &Running, id: &str) -> Option<MessageInfo> {
    for _ in 0..400 {
        match relay.queue.list().into_iter().find(|m| m.id == id) {
            Some(m) if m.attempts >= 1 && !m.active => return Some(m),
            None => return None,
            _ => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    panic!("no attempt finished for {id}");
}

fn assert_deferred(m: &MessageInfo, fragment: &str) {
    assert_eq!(m.recipients.len(), 1);
    let r = &m.recipients[0];
    assert_eq!(r.state, "deferred", "{r:?}");
    let detail = r.detail.as_deref().unwrap_or("");
    assert!(
        detail.to_lowercase().contains(&fragment.to_lowercase()),
        "reason {detail:?} should mention {fragment:?}"
    );
}

fn outbox(dir: &Path) -> Vec<Vec<u8>> {
    std::fs::read_dir(dir.join("outbox"))
        .map(|d| {
            d.map(|e| std::fs::read(e.unwrap().path()).unwrap())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn connection_refused_defers() {
    let upstream = Upstream::start(UpstreamConfig::default()).await;
    upstream.go_down().await;
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), upstream.port(), "none", None).await;
    let id = send(&relay, &["a@example.com"]).await;
    let m = after_first_attempt(&relay, &id)
        .await
        .expect("still queued");
    assert_deferred(&m, "refused");
    assert!(
        outbox(dir.path()).is_empty(),
        "no bounce for a temporary failure"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn reset_in_the_middle_of_data_defers() {
    let upstream = Upstream::start(UpstreamConfig {
        close_during_data: true,
        ..UpstreamConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), upstream.port(), "none", None).await;
    let id = send(&relay, &["a@example.com"]).await;
    let m = after_first_attempt(&relay, &id)
        .await
        .expect("still queued");
    assert_deferred(&m, "connection");
    assert!(upstream.messages().is_empty());
    relay.shutdown().await;
}

#[tokio::test]
async fn stalled_upstream_times_out_and_defers() {
    // Accepts the connection and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), port, "none", None).await;
    let id = send(&relay, &["a@example.com"]).await;
    let m = after_first_attempt(&relay, &id)
        .await
        .expect("still queued");
    assert_deferred(&m, "time");
    relay.shutdown().await;
    holder.abort();
}

#[tokio::test]
async fn tls_handshake_failure_defers_and_sends_nothing_in_clear() {
    // The upstream's certificate names another host: verification must fail.
    let upstream = Upstream::start_with_pki(
        UpstreamConfig::default(),
        TestPki::for_names(&["mail.other.example"]),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(
        dir.path(),
        upstream.port(),
        "starttls",
        Some(upstream.ca_path()),
    )
    .await;
    let id = send(&relay, &["a@example.com"]).await;
    let m = after_first_attempt(&relay, &id)
        .await
        .expect("still queued");
    assert_deferred(&m, "certificate");
    assert!(upstream.messages().is_empty());
    assert!(
        !upstream.commands().iter().any(|c| c.starts_with("MAIL")),
        "no transaction may follow a failed handshake"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn greeting_421_defers() {
    let upstream = Upstream::start(UpstreamConfig {
        greeting: "421 4.3.2 Service not available, closing transmission channel".into(),
        ..UpstreamConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), upstream.port(), "none", None).await;
    let id = send(&relay, &["a@example.com"]).await;
    let m = after_first_attempt(&relay, &id)
        .await
        .expect("still queued");
    assert_deferred(&m, "421");
    relay.shutdown().await;
}

#[tokio::test]
async fn temporary_refusal_of_one_recipient_defers_only_that_one() {
    let upstream = Upstream::start(
        UpstreamConfig::default().with_rcpt_reply("busy@example.com", "451 4.2.1 Mailbox busy"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), upstream.port(), "none", None).await;
    let id = send(&relay, &["a@example.com", "busy@example.com"]).await;
    let m = after_first_attempt(&relay, &id)
        .await
        .expect("still queued");
    let states: Vec<(&str, &str)> = m
        .recipients
        .iter()
        .map(|r| (r.address.as_str(), r.state.as_str()))
        .collect();
    assert_eq!(
        states,
        vec![
            ("a@example.com", "delivered"),
            ("busy@example.com", "deferred")
        ]
    );
    assert!(
        m.recipients[1]
            .detail
            .as_deref()
            .unwrap()
            .contains("451 4.2.1")
    );
    let delivered = upstream.messages();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].recipients, vec!["a@example.com"]);
    relay.shutdown().await;
}

#[tokio::test]
async fn permanent_refusal_of_one_of_three_bounces_only_that_one() {
    let upstream = Upstream::start(
        UpstreamConfig::default().with_rcpt_reply("gone@example.com", "550 5.1.1 User unknown"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), upstream.port(), "none", None).await;
    let id = send(
        &relay,
        &["a@example.com", "gone@example.com", "c@example.com"],
    )
    .await;
    assert!(
        after_first_attempt(&relay, &id).await.is_none(),
        "message done"
    );
    let delivered = upstream.wait_for_messages(1, Duration::from_secs(10)).await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(
        delivered[0].recipients,
        vec!["a@example.com", "c@example.com"]
    );

    // One bounce, to the sender, naming only the refused recipient.
    let mut bounces = Vec::new();
    for _ in 0..200 {
        bounces = outbox(dir.path());
        if !bounces.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(bounces.len(), 1);
    let dsn = common::dsn::parse(&bounces[0]);
    assert_eq!(dsn.to, "scanner@contoso.example");
    assert_eq!(dsn.per_recipient.len(), 1);
    assert_eq!(
        dsn.recipient_field(0, "final-recipient"),
        Some("rfc822; gone@example.com")
    );
    assert_eq!(dsn.recipient_field(0, "action"), Some("failed"));
    assert_eq!(dsn.recipient_field(0, "status"), Some("5.1.1"));
    assert_eq!(
        dsn.recipient_field(0, "diagnostic-code"),
        Some("smtp; 550 5.1.1 User unknown")
    );
    assert_eq!(dsn.recipient_field(0, "remote-mta"), Some("dns; 127.0.0.1"));
    assert!(
        dsn.per_message
            .iter()
            .any(|(k, v)| k == "reporting-mta" && v == "dns; relay.test")
    );
    assert!(dsn.readable.contains("gone@example.com"));
    assert!(!dsn.readable.contains("a@example.com"));
    // The bounce itself was sent from the null sender.
    let text = String::from_utf8_lossy(&bounces[0]);
    assert!(text.starts_with("x-sender: \r\n"), "{text}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        upstream.messages().len(),
        1,
        "the others are delivered once"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn every_bounce_is_copied_to_ndr_copy_to() {
    let upstream = Upstream::start(
        UpstreamConfig::default().with_rcpt_reply("gone@example.com", "550 5.1.1 User unknown"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with(
        dir.path(),
        upstream.port(),
        "none",
        None,
        "ndr_copy_to = \"postmaster@contoso.example\"",
    )
    .await;
    send(&relay, &["gone@example.com"]).await;
    let mut bounces = Vec::new();
    for _ in 0..400 {
        bounces = outbox(dir.path());
        if !bounces.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        bounces.len(),
        1,
        "one bounce, to the sender and the copy address together"
    );
    let text = String::from_utf8_lossy(&bounces[0]);
    assert!(
        text.starts_with(
            "x-sender: \r\nx-receiver: scanner@contoso.example\r\nx-receiver: postmaster@contoso.example\r\n"
        ),
        "{text}"
    );
    relay.shutdown().await;
}
