//! The admin HTTP API (issue 6) against a relay running in this process: bearer token, status, the
//! queue actions (the same `ControlHandler` as the control socket), the redacted configuration,
//! `send-test`, and `/metrics` counting a known traffic pattern.
#![cfg(unix)]

mod common;

use common::client::Client;
use common::upstream::{Upstream, UpstreamConfig};
use reqwest::StatusCode;
use serde_json::Value;
use smarthost::cli::serve::{Running, start};
use smarthost::queue::view::{MessageDetail, MessageInfo};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "admin-token-7f3a9c1e-very-secret";
const PASSWORD: &str = "upstream-password-Zq81-secret";
const SENDER: &str = "scanner@contoso.example";

/// The counters are process-wide: tests that make traffic take turns.
static TRAFFIC: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Relay {
    _dir: tempfile::TempDir,
    running: Running,
    http: reqwest::Client,
    base: String,
}

/// Mail for anything but contoso.example goes to the upstream through route `route_name`; a failed
/// attempt waits an hour, so only the API makes the relay try again. A second route (never used)
/// carries a password, so that `GET config` has something to redact.
fn config_text(data_dir: &Path, upstream: &Upstream, route_name: &str) -> String {
    std::fs::write(data_dir.join("admin.token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(data_dir.join("partner.pass"), PASSWORD).unwrap();
    format!(
        r#"
data_dir = "{data}"
hostname = "relay.test"
[[listener]]
address = "127.0.0.1:0"
relay_from = ["127.0.0.1"]
[queue]
retry = ["1h"]
[admin]
enabled = true
address = "127.0.0.1:0"
token_file = "{data}/admin.token"
[[route]]
name = "local"
domains = ["contoso.example"]
transport = "drop"
path = "outbox"
[[route]]
name = "partner"
domains = ["fabrikam.example"]
host = "127.0.0.1"
port = 1
tls = "starttls"
[route.auth]
mechanism = "login"
username = "relay-contoso"
password_file = "{data}/partner.pass"
[[route]]
name = "{route_name}"
domains = ["*"]
transport = "smtp"
host = "127.0.0.1"
port = {port}
tls = "none"
connect_timeout = "2s"
command_timeout = "5s"
"#,
        data = data_dir.display(),
        port = upstream.port(),
    )
}

impl Relay {
    async fn start(upstream: &Upstream, route_name: &str) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let text = config_text(dir.path(), upstream, route_name);
        let config = smarthost::config::load_str(&text, "admin.toml")
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let running = start(config).await.expect("relay starts");
        let admin = running.admin_addr.expect("the admin server is enabled");
        Relay {
            _dir: dir,
            running,
            http: reqwest::Client::new(),
            base: format!("http://{admin}"),
        }
    }

    fn smtp(&self) -> SocketAddr {
        self.running.local_addrs[0]
    }

    async fn call(&self, method: reqwest::Method, path: &str) -> (StatusCode, String) {
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.text().await.unwrap())
    }

    async fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, path).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn post(&self, path: &str) -> (StatusCode, Value) {
        let (status, body) = self.call(reqwest::Method::POST, path).await;
        (status, serde_json::from_str(&body).unwrap())
    }

    async fn list(&self) -> Vec<MessageInfo> {
        serde_json::from_value(self.get_json("/api/v1/queue").await).unwrap()
    }

    async fn wait_deferred(&self, ids: &[&str]) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let list = self.list().await;
            if ids.iter().all(|id| {
                list.iter().any(|m| {
                    m.id == *id
                        && m.attempts >= 1
                        && !m.active
                        && m.recipients.iter().all(|r| r.state == "deferred")
                })
            }) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not deferred in time: {list:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_queue_empty(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.list().await.is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "queue not empty");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn metrics(&self) -> HashMap<String, f64> {
        let (status, text) = self.call(reqwest::Method::GET, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        parse_metrics(&text)
    }
}

/// Every line is a comment or `name{labels} value`; returns `name{labels}` → value.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not `name value`: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels: {line:?}");
            let labels = &series[name_end + 1..series.len() - 1];
            for label in labels.split("\",").filter(|l| !l.is_empty()) {
                let (key, value) = label
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label {label:?} in {line:?}"));
                assert!(
                    key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line:?}"
                );
                let _ = value;
            }
        }
        out.insert(series.to_string(), value);
    }
    out
}

/// Sends one message; returns its queue id.
async fn send(addr: SocketAddr, recipient: &str) -> String {
    let (mut c, _) = Client::connect(addr).await;
    assert!(c.cmd("EHLO scanner1").await.starts_with("250"));
    assert!(
        c.cmd(&format!("MAIL FROM:<{SENDER}>"))
            .await
            .starts_with("250")
    );
    let reply = c.cmd(&format!("RCPT TO:<{recipient}>")).await;
    assert!(reply.starts_with("250"), "{reply}");
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(
        format!("From: {SENDER}\r\nTo: {recipient}\r\nSubject: scan\r\n\r\nscan attached\r\n.\r\n")
            .as_bytes(),
    )
    .await;
    let reply = c.reply().await;
    assert!(reply.starts_with("250"), "{reply}");
    c.cmd("QUIT").await;
    reply.rsplit(' ').next().unwrap().to_string()
}

#[tokio::test]
async fn every_endpoint_but_the_page_needs_the_token() {
    let upstream = Upstream::start(UpstreamConfig::default()).await;
    let relay = Relay::start(&upstream, "upstream").await;
    for path in [
        "/api/v1/status",
        "/api/v1/queue",
        "/api/v1/config",
        "/metrics",
        "/api/v1/nothing",
    ] {
        let url = format!("{}{path}", relay.base);
        let none = relay.http.get(&url).send().await.unwrap();
        assert_eq!(none.status(), StatusCode::UNAUTHORIZED, "{path}");
        let body: Value = none.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("bearer token"));
        let wrong = relay
            .http
            .get(&url)
            .bearer_auth("admin-token-7f3a9c1e-very-secreT")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "{path}");
        let basic = relay
            .http
            .get(&url)
            .basic_auth("admin", Some(TOKEN))
            .send()
            .await
            .unwrap();
        assert_eq!(basic.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let (status, _) = relay
        .call(reqwest::Method::POST, "/api/v1/queue/retry-all")
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = relay.call(reqwest::Method::GET, "/api/v1/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // The page itself is static and asks for the token.
    let page = relay.http.get(&relay.base).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("Admin token"));
    assert!(!html.contains(TOKEN));
    relay.running.shutdown().await;
}

#[tokio::test]
async fn status_routes_and_a_config_without_secrets() {
    let upstream = Upstream::start(UpstreamConfig::default()).await;
    let relay = Relay::start(&upstream, "upstream").await;
    let status = relay.get_json("/api/v1/status").await;
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["uptime_seconds"].is_u64());
    assert_eq!(status["queue_messages"], 0);
    assert_eq!(status["oldest_message_age_seconds"], 0);
    assert_eq!(status["listeners"][0], relay.smtp().to_string());
    assert_eq!(status["routes"].as_array().unwrap().len(), 3);

    let routes = relay.get_json("/api/v1/routes").await;
    assert_eq!(routes[0]["name"], "local");
    assert_eq!(routes[0]["transport"], "drop");
    assert_eq!(routes[1]["name"], "partner");
    assert_eq!(routes[1]["transport"], "smtp");
    assert_eq!(routes[1]["host"], "127.0.0.1");
    assert_eq!(routes[1]["port"], 1);
    assert_eq!(routes[2]["domains"][0], "*");
    assert_eq!(routes[2]["port"], upstream.port());

    let (status, text) = relay.call(reqwest::Method::GET, "/api/v1/config").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!text.contains(PASSWORD), "{text}");
    assert!(!text.contains(TOKEN), "{text}");
    let config: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(config["hostname"], "relay.test");
    assert_eq!(config["routes"][1]["auth"]["username"], "relay-contoso");
    assert_eq!(config["routes"][1]["auth"]["password"], "<redacted>");
    assert_eq!(config["admin"]["token"], "<redacted>");
    assert_eq!(config["admin"]["enabled"], true);
    relay.running.shutdown().await;
}

#[tokio::test]
async fn queue_actions_through_the_api() {
    let _turn = TRAFFIC.lock().await;
    let upstream = Upstream::start(UpstreamConfig::default()).await;
    upstream.go_down().await;
    let relay = Relay::start(&upstream, "upstream").await;
    let a = send(relay.smtp(), "alice@remote.example").await;
    let b = send(relay.smtp(), "bob@remote.example").await;
    relay.wait_deferred(&[&a, &b]).await;

    let status = relay.get_json("/api/v1/status").await;
    assert_eq!(status["queue_messages"], 2);
    // The upstream is down: its route's health says so, with the reason.
    let upstreams = relay.get_json("/api/v1/upstreams").await;
    let health = &upstreams
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["route"] == "upstream")
        .expect("the route is listed")["health"];
    assert!(
        health["failures_in_a_row"].as_u64().unwrap() >= 2,
        "{upstreams}"
    );
    assert_eq!(health["last_outcome"], "deferred");
    assert!(
        health["last_detail"].as_str().unwrap().contains("connect"),
        "{upstreams}"
    );
    let detail: MessageDetail =
        serde_json::from_value(relay.get_json(&format!("/api/v1/queue/{a}")).await).unwrap();
    assert_eq!(detail.info.id, a);
    assert_eq!(detail.info.recipients[0].address, "alice@remote.example");
    assert!(detail.headers.contains("Subject: scan"));
    // Lower case is accepted like on the command line.
    let lower = relay
        .get_json(&format!("/api/v1/queue/{}", a.to_ascii_lowercase()))
        .await;
    assert_eq!(lower["info"]["id"], a.as_str());

    let (status, body) = relay
        .call(reqwest::Method::GET, "/api/v1/queue/0123456789ABCDEF0")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("\"error\""));
    let (status, _) = relay.post("/api/v1/queue/0123456789ABCDEF0/retry").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = relay.post(&format!("/api/v1/queue/{a}/frobnicate")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Hold: a held message is not retried (409) until released.
    let (status, body) = relay.post(&format!("/api/v1/queue/{a}/hold")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["message"].as_str().unwrap().contains("is held"));
    let list = relay.list().await;
    assert!(list.iter().any(|m| m.id == a && m.held));
    let (status, body) = relay.post(&format!("/api/v1/queue/{a}/retry")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("held"));
    let (status, _) = relay.post(&format!("/api/v1/queue/{a}/release")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(relay.list().await.iter().any(|m| m.id == a && !m.held));

    // Delete: gone, no bounce.
    let (status, body) = relay
        .call(reqwest::Method::DELETE, &format!("/api/v1/queue/{b}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = relay
        .call(reqwest::Method::GET, &format!("/api/v1/queue/{b}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Retry after the upstream is back delivers it.
    upstream.go_up().await;
    let (status, body) = relay.post(&format!("/api/v1/queue/{a}/retry")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let got = upstream.wait_for_messages(1, WAIT).await;
    assert_eq!(got.len(), 1);
    relay.wait_queue_empty().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        upstream.messages().len(),
        1,
        "the deleted message stays gone"
    );
    relay.running.shutdown().await;
}

#[tokio::test]
async fn metrics_count_a_known_traffic_pattern_and_send_test_submits() {
    let _turn = TRAFFIC.lock().await;
    let upstream = Upstream::start(UpstreamConfig::default()).await;
    let relay = Relay::start(&upstream, "metered").await;
    let before = relay.metrics().await;
    let smtp_received = r#"smarthost_messages_received_total{listener="smtp"}"#;
    let admin_received = r#"smarthost_messages_received_total{listener="admin"}"#;
    let get = |m: &HashMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);

    for n in 0..3 {
        send(relay.smtp(), &format!("user{n}@remote.example")).await;
    }
    upstream.wait_for_messages(3, WAIT).await;
    relay.wait_queue_empty().await;
    let after = relay.metrics().await;
    assert_eq!(
        get(&after, smtp_received) - get(&before, smtp_received),
        3.0
    );
    assert_eq!(
        get(
            &after,
            r#"smarthost_messages_delivered_total{route="metered"}"#
        ),
        3.0
    );
    assert_eq!(
        get(
            &after,
            r#"smarthost_messages_deferred_total{route="metered"}"#
        ),
        0.0
    );
    assert_eq!(
        get(
            &after,
            r#"smarthost_upstream_reply_seconds_count{route="metered"}"#
        ),
        3.0
    );
    assert_eq!(
        get(
            &after,
            r#"smarthost_upstream_reply_seconds_bucket{route="metered",le="+Inf"}"#
        ),
        3.0
    );
    assert_eq!(get(&after, "smarthost_queue_messages"), 0.0);

    // Recent deliveries and upstream health show the same traffic.
    let recent = relay.get_json("/api/v1/deliveries").await;
    let ours: Vec<&Value> = recent
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["route"] == "metered")
        .collect();
    assert_eq!(ours.len(), 3, "{recent}");
    for n in 0..3 {
        let rcpt = format!("user{n}@remote.example");
        let d = ours
            .iter()
            .find(|d| d["recipient"] == rcpt.as_str())
            .unwrap_or_else(|| panic!("{rcpt} in {recent}"));
        assert_eq!(d["outcome"], "delivered");
        assert!(!d["queue_id"].as_str().unwrap().is_empty());
        assert!(d["detail"].as_str().unwrap().contains("250"), "{d}");
    }
    let upstreams = relay.get_json("/api/v1/upstreams").await;
    let metered = upstreams
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["route"] == "metered")
        .expect("the route is listed");
    assert_eq!(metered["health"]["failures_in_a_row"], 0, "{upstreams}");
    assert_eq!(metered["health"]["last_outcome"], "delivered");
    assert!(metered["health"]["last_success"].as_u64().unwrap() > 0);
    assert!(after.contains_key("smarthost_auth_failures_total"));
    assert!(after.contains_key("smarthost_token_refreshes_total"));
    assert!(after.contains_key("smarthost_throttle_waits_total"));
    assert!(after.contains_key("smarthost_queue_oldest_age_seconds"));

    // send-test goes through ingest like any message.
    let response = relay
        .http
        .post(format!("{}/api/v1/send-test", relay.base))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({
            "from": "admin@contoso.example",
            "to": "someone@remote.example",
            "subject": "admin test",
            "body": "hello\nfrom the API",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    assert!(!id.is_empty());
    let got = upstream.wait_for_messages(4, WAIT).await;
    let text = String::from_utf8_lossy(&got[3].content).to_string();
    assert!(text.contains("Subject: admin test\r\n"), "{text}");
    assert!(text.contains(&format!("id {id}")), "{text}");
    assert!(text.contains("hello\r\nfrom the API\r\n"), "{text}");
    relay.wait_queue_empty().await;
    let last = relay.metrics().await;
    assert_eq!(
        get(&last, admin_received) - get(&after, admin_received),
        1.0
    );
    assert_eq!(
        get(
            &last,
            r#"smarthost_messages_delivered_total{route="metered"}"#
        ),
        4.0
    );

    let bad = relay
        .http
        .post(format!("{}/api/v1/send-test", relay.base))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({ "from": "not an address", "to": "x@remote.example" }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    relay.running.shutdown().await;
}
