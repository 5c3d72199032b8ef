//! Crash safety of the real binary: messages are sent while the relay is killed with SIGKILL at random
//! moments, several times; after a last restart every message that got its `250` reaches the upstream
//! at least once. Duplicates (messages delivered but not yet marked done at a kill) are counted and
//! reported.

mod common;

use common::client::Client;
use common::upstream::{Upstream, UpstreamConfig};
use rand::Rng;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

const KILLS: usize = 5;
const SENDERS: usize = 4;

async fn spawn_relay(config: &Path) -> (tokio::process::Child, std::net::SocketAddr) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start smarthost");
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.trim().strip_prefix("listening on ") {
                return rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        }
        panic!("smarthost exited without listening");
    })
    .await
    .expect("smarthost listens in time");
    (child, addr)
}

/// Sends numbered messages until the relay goes away; records the numbers that got a 250.
async fn sender(
    addr: std::net::SocketAddr,
    next: Arc<AtomicU64>,
    acknowledged: Arc<Mutex<BTreeSet<u64>>>,
) {
    loop {
        let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                .await
        else {
            return;
        };
        drop(stream);
        let n = next.fetch_add(1, Ordering::SeqCst);
        let result = tokio::time::timeout(Duration::from_secs(5), async {
            let (mut c, _) = Client::connect(addr).await;
            c.cmd("EHLO crash").await;
            c.cmd("MAIL FROM:<app@contoso.example>").await;
            c.cmd("RCPT TO:<sink@example.com>").await;
            c.cmd("DATA").await;
            c.send(format!("Subject: crash-{n}\r\n\r\npayload {n}\r\n.\r\n").as_bytes())
                .await;
            c.reply().await
        })
        .await;
        // A panic inside (connection closed by the kill) ends this sender: not acknowledged.
        match result {
            Ok(reply) if reply.starts_with("250") => {
                acknowledged.lock().unwrap().insert(n);
            }
            _ => return,
        }
    }
}

fn subject_number(content: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(content);
    let start = text.find("Subject: crash-")? + "Subject: crash-".len();
    text[start..].split("\r\n").next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_acknowledged_message() {
    let upstream = Upstream::start(UpstreamConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("smarthost.toml");
    std::fs::write(
        &config,
        format!(
            r#"
data_dir = "{}"
hostname = "relay.test"
[[listener]]
address = "127.0.0.1:0"
relay_from = ["127.0.0.1"]
[queue]
retry = ["1s"]
[[route]]
name = "upstream"
domains = ["*"]
host = "127.0.0.1"
port = {}
tls = "none"
"#,
            dir.path().display(),
            upstream.port()
        ),
    )
    .unwrap();

    let next = Arc::new(AtomicU64::new(0));
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    for _ in 0..KILLS {
        let (mut child, addr) = spawn_relay(&config).await;
        let senders: Vec<_> = (0..SENDERS)
            .map(|_| tokio::spawn(sender(addr, next.clone(), acknowledged.clone())))
            .collect();
        let wait = rand::rng().random_range(50..600);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.start_kill().unwrap(); // SIGKILL
        child.wait().await.unwrap();
        for s in senders {
            let _ = s.await;
        }
    }

    // The last start delivers whatever the kills left in the spool.
    let (mut child, _) = spawn_relay(&config).await;
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() >= KILLS,
        "too few messages were sent to test anything"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut counts: HashMap<u64, usize> = HashMap::new();
    loop {
        counts.clear();
        for m in upstream.messages() {
            if let Some(n) = subject_number(&m.content) {
                *counts.entry(n).or_default() += 1;
            }
        }
        let missing = acknowledged
            .iter()
            .filter(|n| !counts.contains_key(n))
            .count();
        if missing == 0 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.start_kill().unwrap();
    let missing: Vec<u64> = acknowledged
        .iter()
        .copied()
        .filter(|n| !counts.contains_key(n))
        .collect();
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    println!(
        "crash safety: {} kills, {} messages acknowledged, {} delivered, {} duplicates, {} missing",
        KILLS,
        acknowledged.len(),
        counts.len(),
        duplicates,
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "acknowledged but never delivered: {missing:?}"
    );
    // A duplicate can only come from a delivery in flight at a kill: at most the concurrent
    // deliveries (20 by default) at each kill.
    assert!(duplicates <= KILLS * 20, "{duplicates} duplicates");
}
