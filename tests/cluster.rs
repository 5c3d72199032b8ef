//! Several relay nodes, one mailbox budget (issue 9): two real `smarthost` processes share the
//! per-mailbox limits of one Microsoft 365-like upstream through a real `redis-server`.
//!
//! The upstream counts like Exchange Online, scaled down: 2 connections and 10 messages per 2 s per
//! mailbox; beyond that it refuses (`432 4.3.2`, `451 4.7.500`), and the test counts the refusals.
//! These tests need `redis-server` on the PATH: `bash scripts/cluster.sh` installs it if needed and
//! runs them (`cargo test --test cluster -- --ignored --test-threads=1`).

mod common;

use common::client::Client;
use common::upstream::{Breaches, ReceivedMessage, Upstream, UpstreamConfig};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

const USER: &str = "scanner@contoso.example";
const PASSWORD: &str = "cluster-test-pw";
const TOKEN: &str = "cluster-admin-token";
/// The upstream's limits, and the relays' (the same numbers: the relays must keep them together).
const MESSAGES: usize = 10;
const WINDOW: Duration = Duration::from_secs(2);
const CONNECTIONS: usize = 2;
/// Generous bounds for things that must happen; no assertion depends on them being tight.
const WAIT: Duration = Duration::from_secs(90);
const CONNS_KEY: &str = "smarthost:{mailbox:scanner@contoso.example}:conns";
/// Redis asks for a password (`requirepass`); the relays read it from `password_file`.
const REDIS_PASSWORD: &str = "cluster-redis-Pw-7Qx";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private `redis-server` (no persistence) on a port of its own.
struct Redis {
    port: u16,
    child: Option<tokio::process::Child>,
}

impl Redis {
    async fn start() -> Redis {
        let mut redis = Redis {
            port: free_port(),
            child: None,
        };
        redis.run().await;
        redis
    }

    async fn run(&mut self) {
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                REDIS_PASSWORD,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server on the PATH (scripts/cluster.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while self.client().await.is_none() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server (its data is gone: no persistence).
    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn client(&self) -> Option<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(format!(
            "redis://:{REDIS_PASSWORD}@127.0.0.1:{}/0",
            self.port
        ))
        .ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let pong: String = redis::cmd("PING").query_async(&mut conn).await.ok()?;
        (pong == "PONG").then_some(conn)
    }

    /// The connection leases of the test mailbox: (member, expiry ms) and Redis's clock (ms).
    async fn leases(&self) -> (Vec<(String, u64)>, u64) {
        let mut conn = self.client().await.expect("redis answers");
        let leases: Vec<(String, u64)> = redis::cmd("ZRANGE")
            .arg(CONNS_KEY)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .unwrap();
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
        (leases, secs * 1000 + micros / 1000)
    }
}

/// One `smarthost serve` process.
struct Node {
    name: &'static str,
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
    admin: u16,
    log: PathBuf,
    config: PathBuf,
}

impl Node {
    async fn start(
        name: &'static str,
        dir: &Path,
        upstream: &Upstream,
        redis: &Redis,
        lease_ttl: &str,
    ) -> Node {
        let data = dir.join(name);
        std::fs::create_dir_all(&data).unwrap();
        let pass = data.join("pass");
        std::fs::write(&pass, PASSWORD).unwrap();
        let token = data.join("token");
        std::fs::write(&token, TOKEN).unwrap();
        let redis_pass = data.join("redis.pass");
        std::fs::write(&redis_pass, format!("{REDIS_PASSWORD}\n")).unwrap();
        let admin = free_port();
        let config = data.join("smarthost.toml");
        std::fs::write(
            &config,
            format!(
                r#"
data_dir = "{data}"
hostname = "{name}.relay.test"
[[listener]]
address = "127.0.0.1:0"
relay_from = ["127.0.0.1"]
[queue]
retry = ["1s"]
max_concurrent_deliveries = 20
{route}[route.limits]
message_rate = "{MESSAGES}/{window}s"
max_connections = {CONNECTIONS}
throttle_backoff = "2s"
[cluster]
redis = "{redis}"
password_file = "{redis_pass}"
node = "{name}"
expected_nodes = 2
lease_ttl = "{lease_ttl}"
[admin]
enabled = true
address = "127.0.0.1:{admin}"
token_file = "{token}"
"#,
                data = data.display(),
                route = upstream.route_toml("m365", "", USER, &pass),
                window = WINDOW.as_secs(),
                redis = redis.url(),
                redis_pass = redis_pass.display(),
                token = token.display(),
            ),
        )
        .unwrap();
        let log = data.join("smarthost.log");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_smarthost"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("start smarthost");
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.trim().strip_prefix("listening on ") {
                    return rest.split_whitespace().next().unwrap().parse().unwrap();
                }
            }
            panic!("smarthost {name} exited without listening");
        })
        .await
        .expect("smarthost listens in time");
        // Keep reading stdout so the relay never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Node {
            name,
            child,
            addr,
            admin,
            log,
            config,
        }
    }

    async fn get(&self, path: &str) -> String {
        reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}{path}", self.admin))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn metrics(&self) -> String {
        self.get("/metrics").await
    }

    async fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/api/v1/status").await).unwrap()
    }

    /// Waits until the node's `smarthost_cluster_redis_up` is `value`.
    async fn wait_redis_up(&self, value: u8) {
        let line = format!(
            "smarthost_cluster_redis_up{{node=\"{}\"}} {value}\n",
            self.name
        );
        let deadline = Instant::now() + WAIT;
        loop {
            let metrics = self.metrics().await;
            if metrics.contains(&line) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never showed {line:?}:\n{metrics}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `smarthost queue list` for this node, as an administrator runs it.
    async fn queue_list(&self) -> String {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_smarthost"))
            .args(["queue", "list", "--config"])
            .arg(&self.config)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn upstream_config() -> UpstreamConfig {
    UpstreamConfig {
        message_rate: Some((MESSAGES, WINDOW)),
        max_connections_per_user: Some(CONNECTIONS),
        ..UpstreamConfig::default().with_credentials(USER, PASSWORD)
    }
}

/// Offers `n` messages to `addr` in one session, subjects `<tag> <i>`.
async fn offer(addr: std::net::SocketAddr, tag: &str, n: usize) {
    let (mut c, _) = Client::connect(addr).await;
    c.cmd("EHLO app").await;
    for i in 0..n {
        assert!(
            c.cmd(&format!("MAIL FROM:<{USER}>"))
                .await
                .starts_with("250")
        );
        let reply = c.cmd(&format!("RCPT TO:<{tag}-{i}@example.com>")).await;
        assert!(reply.starts_with("250"), "{reply}");
        c.cmd("DATA").await;
        c.send(format!("Subject: {tag} {i}\r\n\r\nx\r\n.\r\n").as_bytes())
            .await;
        assert!(c.reply().await.starts_with("250"));
    }
    c.cmd("QUIT").await;
}

/// The tag of a received message (the first word of its subject).
fn tag(m: &ReceivedMessage) -> String {
    let content = String::from_utf8_lossy(&m.content);
    content
        .lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_default()
        .to_string()
}

/// Every offered message arrived exactly once, from its sender (no bounce went out instead).
fn assert_each_once(messages: &[ReceivedMessage], expected: usize) {
    let mut subjects: Vec<String> = messages
        .iter()
        .map(|m| {
            let content = String::from_utf8_lossy(&m.content).into_owned();
            content
                .lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
                .unwrap_or_default()
        })
        .collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), expected, "every message exactly once");
    assert_eq!(messages.len(), expected, "no duplicates");
    assert!(
        messages.iter().all(|m| m.sender == USER),
        "no bounce was sent"
    );
}

/// The warnings and cluster lines of the nodes' logs, for failure messages.
fn notable_log_lines(nodes: &[&Node]) -> String {
    let mut out = String::new();
    for node in nodes {
        out.push_str(&format!("\n--- {}:\n", node.name));
        for line in node.log_text().lines() {
            if line.contains("WARN") || line.contains("cluster") {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Waits for `done`; on time-out fails with the end of each node's log.
async fn wait_until(what: &str, nodes: &[&Node], mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done().await {
        if Instant::now() > deadline {
            let mut logs = String::new();
            for node in nodes {
                let text = node.log_text();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                let queue = node.get("/api/v1/queue").await;
                logs.push_str(&format!(
                    "\n--- {} (last 40 lines):\n{tail}\nqueue: {}\n",
                    node.name,
                    &queue[..queue.len().min(3000)]
                ));
            }
            panic!("timed out waiting for {what}{logs}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: scripts/cluster.sh"]
async fn two_nodes_together_keep_the_mailbox_limits_and_reach_them() {
    let redis = Redis::start().await;
    let upstream = Upstream::start(upstream_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start("node-a", dir.path(), &upstream, &redis, "30s").await;
    let b = Node::start("node-b", dir.path(), &upstream, &redis, "30s").await;

    // Ten times the allowed load: 60 messages (six windows' worth) offered at once, half to each.
    let total = 60;
    tokio::join!(
        offer(a.addr, "node-a", total / 2),
        offer(b.addr, "node-b", total / 2)
    );
    // Each node keeps its own queue, and says which node it is.
    for node in [&a, &b] {
        let list = node.queue_list().await;
        assert!(
            list.contains(&format!("pending on node {}\n", node.name)),
            "{list}"
        );
        let queue: serde_json::Value =
            serde_json::from_str(&node.get("/api/v1/queue").await).unwrap();
        let queue = queue.as_array().unwrap();
        assert!(!queue.is_empty());
        assert!(queue.iter().all(|m| m["node"] == node.name), "{queue:?}");
    }
    let mut first: Option<Instant> = None;
    wait_until("every message at the upstream", &[&a, &b], async || {
        let n = upstream.messages().len();
        if first.is_none() && n > 0 {
            first = Some(Instant::now());
        }
        n >= total
    })
    .await;
    let last = Instant::now();
    let messages = upstream.messages();
    assert_each_once(&messages, total);
    assert_eq!(
        upstream.breaches(),
        Breaches::default(),
        "together the nodes never went over the limits: the upstream refused nothing{}",
        notable_log_lines(&[&a, &b])
    );
    assert!(upstream.max_open_connections(USER) <= CONNECTIONS);
    for node in ["node-a", "node-b"] {
        assert!(
            messages.iter().any(|m| tag(m) == node),
            "{node} delivered too"
        );
    }
    // 10 per 2 s: after the first 10, the remaining 50 take 10 s at the limit.
    let span = last.duration_since(first.unwrap()).as_secs_f64();
    let rate = (total - MESSAGES) as f64 / span;
    let limit = MESSAGES as f64 / WINDOW.as_secs_f64();
    println!("two nodes delivered {total} messages at {rate:.2} per second (limit {limit})");
    assert!(
        (limit * 0.9..=limit * 1.1).contains(&rate),
        "together {rate:.2}/s is not within 10% of the {limit}/s limit"
    );

    // Which node is which, for people and for Prometheus; the Redis password nowhere.
    for node in [&a, &b] {
        let config = node.get("/api/v1/config").await;
        let parsed: serde_json::Value = serde_json::from_str(&config).unwrap();
        assert_eq!(parsed["cluster"]["password"], "<redacted>");
        assert_eq!(parsed["node"], node.name);
        assert!(!config.contains(REDIS_PASSWORD));
        assert!(!node.log_text().contains(REDIS_PASSWORD));
        let status = node.status().await;
        assert_eq!(status["node"], node.name);
        assert_eq!(status["cluster"]["limits"], "shared");
        assert_eq!(status["cluster"]["redis"], redis.url());
        let metrics = node.metrics().await;
        assert!(metrics.contains(&format!(
            "smarthost_node_info{{node=\"{}\"}} 1\n",
            node.name
        )));
        assert!(metrics.contains(&format!(
            "smarthost_cluster_redis_up{{node=\"{}\"}} 1\n",
            node.name
        )));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: scripts/cluster.sh"]
async fn without_redis_each_node_keeps_its_share_and_shared_limits_resume() {
    let mut redis = Redis::start().await;
    let upstream = Upstream::start(upstream_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start("node-a", dir.path(), &upstream, &redis, "3s").await;
    let b = Node::start("node-b", dir.path(), &upstream, &redis, "3s").await;

    let total = 80;
    tokio::join!(
        offer(a.addr, "node-a", total / 2),
        offer(b.addr, "node-b", total / 2)
    );
    wait_until("some messages with shared limits", &[&a, &b], async || {
        upstream.messages().len() >= 15
    })
    .await;

    // Redis goes away in the middle of the run.
    redis.stop().await;
    a.wait_redis_up(0).await;
    b.wait_redis_up(0).await;
    let before = upstream.messages().len();
    wait_until("messages on fallback limits", &[&a, &b], async || {
        upstream.messages().len() >= before + 20
    })
    .await;
    let during: Vec<String> = upstream.messages()[before..].iter().map(tag).collect();
    for node in ["node-a", "node-b"] {
        assert!(
            during.iter().any(|t| t == node),
            "{node} went on delivering without Redis: {during:?}"
        );
        let metrics = if node == "node-a" {
            a.metrics().await
        } else {
            b.metrics().await
        };
        assert!(
            metrics.contains(&format!(
                "smarthost_cluster_fallbacks_total{{node=\"{node}\"}} 1\n"
            )),
            "{metrics}"
        );
    }
    assert_eq!(
        a.status().await["cluster"]["limits"],
        "fallback",
        "the API says so"
    );
    assert!(
        a.log_text()
            .contains("Redis unreachable: running on fallback limits")
    );

    // Redis is back: shared limits again.
    redis.run().await;
    a.wait_redis_up(1).await;
    b.wait_redis_up(1).await;
    for node in [&a, &b] {
        assert!(
            node.log_text()
                .contains("shared limits resumed: Redis is reachable again"),
            "{}",
            node.log_text()
        );
    }

    wait_until("every message at the upstream", &[&a, &b], async || {
        upstream.messages().len() >= total
    })
    .await;
    assert_each_once(&upstream.messages(), total);
    assert_eq!(
        upstream.breaches(),
        Breaches::default(),
        "before, during and after the outage the nodes together stayed within the limits"
    );
    assert!(upstream.max_open_connections(USER) <= CONNECTIONS);
    for node in [&a, &b] {
        wait_until("an empty queue", &[node], async || {
            node.status().await["queue_messages"] == 0
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: scripts/cluster.sh"]
async fn a_killed_node_frees_its_connection_slots_within_the_lease_time() {
    let redis = Redis::start().await;
    let upstream = Upstream::start(upstream_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = Node::start("node-a", dir.path(), &upstream, &redis, "3s").await;
    let b = Node::start("node-b", dir.path(), &upstream, &redis, "3s").await;

    // Node A takes both connection slots of the mailbox.
    offer(a.addr, "node-a", 40).await;
    wait_until("node A holding both slots", &[&a, &b], async || {
        let (leases, _) = redis.leases().await;
        leases
            .iter()
            .filter(|(m, _)| m.starts_with("node-a:"))
            .count()
            == CONNECTIONS
    })
    .await;

    a.child.kill().await.unwrap();
    let (leases, now) = redis.leases().await;
    let held: Vec<&(String, u64)> = leases
        .iter()
        .filter(|(m, _)| m.starts_with("node-a:"))
        .collect();
    assert!(!held.is_empty(), "the killed node's leases are still there");
    for (member, expiry) in &held {
        assert!(
            *expiry <= now + 3000,
            "lease {member} may not outlive the lease time: expires {} ms from now",
            expiry - now
        );
    }

    // Node B gets both slots once the killed node's leases expired, and delivers through them.
    let before = upstream.messages().len();
    offer(b.addr, "node-b", 20).await;
    wait_until("node B holding both slots", &[&b], async || {
        let (leases, now) = redis.leases().await;
        let live = |prefix: &str| {
            leases
                .iter()
                .filter(|(m, expiry)| m.starts_with(prefix) && *expiry > now)
                .count()
        };
        live("node-a:") == 0 && live("node-b:") == CONNECTIONS
    })
    .await;
    wait_until("node B's messages", &[&b], async || {
        upstream.messages()[before..]
            .iter()
            .filter(|m| tag(m) == "node-b")
            .count()
            == 20
    })
    .await;
    assert_eq!(upstream.breaches(), Breaches::default());
    assert!(upstream.max_open_connections(USER) <= CONNECTIONS);
}
