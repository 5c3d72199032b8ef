//! Low disk space: new mail is refused with `452 4.3.1` (the client keeps it and retries), and what was
//! already accepted is kept and delivered. `min_free_space` is the relay's own guard; a real full file
//! system (a small tmpfs) is exercised by scripts/interop.sh, which may mount one.

mod common;

use common::client::Client;
use common::upstream::{Upstream, UpstreamConfig};
use smarthost::cli::serve::{Running, start};
use smarthost::config::load_str;
use std::path::Path;
use std::time::Duration;

async fn relay(dir: &Path, upstream: &Upstream, min_free_space: &str) -> Running {
    let text = format!(
        r#"
data_dir = "{}"
hostname = "relay.test"
[[listener]]
address = "127.0.0.1:0"
relay_from = ["127.0.0.1"]
[queue]
retry = ["1s"]
min_free_space = "{min_free_space}"
[[route]]
name = "upstream"
domains = ["*"]
host = "127.0.0.1"
port = {}
tls = "none"
"#,
        dir.display(),
        upstream.port()
    );
    start(load_str(&text, "test.toml").expect("config"))
        .await
        .expect("relay starts")
}

async fn send(relay: &Running, subject: &str) -> String {
    let (mut c, _) = Client::connect(relay.local_addrs[0]).await;
    c.cmd("EHLO app").await;
    c.cmd("MAIL FROM:<app@contoso.example>").await;
    c.cmd("RCPT TO:<a@example.com>").await;
    c.cmd("DATA").await;
    c.send(format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n").as_bytes())
        .await;
    let reply = c.reply().await;
    // The session goes on after a refusal.
    assert!(c.cmd("NOOP").await.starts_with("250"));
    reply
}

#[tokio::test]
async fn low_disk_space_refuses_new_mail_with_452_and_keeps_what_was_accepted() {
    let upstream = Upstream::start(UpstreamConfig::default()).await;
    upstream.go_down().await;
    let dir = tempfile::tempdir().unwrap();

    let normal = relay(dir.path(), &upstream, "0").await;
    let accepted = send(&normal, "accepted before").await;
    assert!(accepted.starts_with("250"), "{accepted}");
    normal.shutdown().await;

    // No file system here has an exabyte free: this relay sees "disk full" for every new message.
    let full = relay(dir.path(), &upstream, "1000000000GiB").await;
    let refused = send(&full, "refused").await;
    assert!(refused.starts_with("452 4.3.1"), "{refused}");
    let stored = std::fs::read_dir(dir.path().join("spool/queue"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "msg")
        })
        .count();
    assert_eq!(stored, 1, "only the message accepted before");

    // What was accepted is still delivered.
    upstream.go_up().await;
    let messages = upstream.wait_for_messages(1, Duration::from_secs(20)).await;
    assert_eq!(messages.len(), 1);
    assert!(String::from_utf8_lossy(&messages[0].content).contains("Subject: accepted before"));
    full.shutdown().await;
}
