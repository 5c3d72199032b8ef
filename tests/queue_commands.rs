//! `smarthost queue ...` and `smarthost badmail ...` as an administrator uses them: the real binary,
//! run with `--config FILE`, against a relay that is running (in this process) on the same data_dir.
//! The control socket is a Unix domain socket; on other platforms the commands are not there yet.
#![cfg(unix)]

mod common;

use common::client::Client;
use common::upstream::{Upstream, UpstreamConfig};
use smarthost::cli::serve::{Running, start};
use smarthost::queue::view::{MessageDetail, MessageInfo};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);
const SENDER: &str = "scanner@contoso.example";

/// Mail for contoso.example (the senders' domain, where bounces go) is dropped into `data_dir/outbox`;
/// everything else goes to the test upstream. A failed attempt waits an hour, so only the commands
/// under test make the relay try again.
fn config_text(data_dir: &Path, upstream: &Upstream) -> String {
    format!(
        r#"
data_dir = "{data}"
hostname = "relay.test"
[[listener]]
address = "127.0.0.1:0"
relay_from = ["127.0.0.1"]
[queue]
retry = ["1h"]
[[route]]
name = "local"
domains = ["contoso.example"]
transport = "drop"
path = "outbox"
[[route]]
name = "upstream"
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

struct Relay {
    dir: tempfile::TempDir,
    config: PathBuf,
    running: Running,
}

impl Relay {
    async fn start(upstream: &Upstream) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("smarthost.toml");
        std::fs::write(&config, config_text(dir.path(), upstream)).unwrap();
        let running = start(smarthost::config::load_file(&config).expect("config"))
            .await
            .expect("relay starts");
        Relay {
            dir,
            config,
            running,
        }
    }

    fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    fn addr(&self) -> SocketAddr {
        self.running.local_addrs[0]
    }

    /// `smarthost ARGS... --config FILE`.
    async fn cli(&self, args: &[&str]) -> Outcome {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", self.config.to_str().unwrap()]);
        cli(&all).await
    }

    async fn list(&self) -> Vec<MessageInfo> {
        let out = self.cli(&["queue", "list", "--json"]).await;
        assert_eq!(out.code, 0, "{out:?}");
        serde_json::from_str(&out.stdout).expect("queue list --json prints a list")
    }

    /// Waits until every listed id has had an attempt that left its recipients deferred.
    async fn wait_deferred(&self, ids: &[&str]) -> Vec<MessageInfo> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let list = self.list().await;
            let deferred = ids.iter().all(|id| {
                list.iter().any(|m| {
                    m.id == *id
                        && m.attempts >= 1
                        && !m.active
                        && m.recipients.iter().all(|r| r.state == "deferred")
                })
            });
            if deferred {
                return list;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not deferred in time: {list:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn spool_files(&self, id: &str) -> Vec<String> {
        std::fs::read_dir(self.data_dir().join("spool/queue"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.starts_with(id))
            .collect()
    }

    async fn wait_queue_empty(&self) {
        for _ in 0..200 {
            if self.list().await.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("queue not empty: {:#?}", self.list().await);
    }
}

#[derive(Debug)]
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the real binary, without blocking the runtime the relay runs on.
async fn cli(args: &[&str]) -> Outcome {
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_smarthost"))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the command finishes in time")
    .expect("smarthost runs");
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Sends one message; returns its queue id.
async fn send(addr: SocketAddr, sender: &str, recipients: &[&str], subject: &str) -> String {
    let (mut c, _) = Client::connect(addr).await;
    assert!(c.cmd("EHLO scanner1").await.starts_with("250"));
    let reply = c.cmd(&format!("MAIL FROM:<{sender}>")).await;
    assert!(reply.starts_with("250"), "{reply}");
    for rcpt in recipients {
        let reply = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
        assert!(reply.starts_with("250"), "{rcpt}: {reply}");
    }
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(
        format!(
            "From: {SENDER}\r\nTo: {}\r\nSubject: {subject}\r\n\r\nscan attached\r\n.\r\n",
            recipients.join(", ")
        )
        .as_bytes(),
    )
    .await;
    let reply = c.reply().await;
    assert!(reply.starts_with("250"), "{reply}");
    c.cmd("QUIT").await;
    reply.rsplit(' ').next().unwrap().to_string()
}

async fn down_upstream() -> Upstream {
    let upstream = Upstream::start(UpstreamConfig::default()).await;
    upstream.go_down().await;
    upstream
}

#[tokio::test]
async fn list_shows_deferred_messages_with_the_connection_error() {
    let upstream = down_upstream().await;
    let relay = Relay::start(&upstream).await;
    let first = send(relay.addr(), SENDER, &["boss@example.com"], "Scan 1").await;
    let second = send(
        relay.addr(),
        SENDER,
        &["a@example.com", "b@example.com"],
        "Scan 2",
    )
    .await;

    let list = relay.wait_deferred(&[&first, &second]).await;
    assert_eq!(list.len(), 2);
    let m = list.iter().find(|m| m.id == first).unwrap();
    assert_eq!(m.sender, SENDER);
    assert_eq!(m.attempts, 1);
    assert!(!m.held);
    assert!(
        m.next_attempt > m.received_at + 3000,
        "retry in an hour: {m:?}"
    );
    let detail = m.recipients[0].detail.as_deref().unwrap_or_default();
    assert!(detail.contains("cannot connect"), "{detail}");

    let out = relay.cli(&["queue", "list"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    for expected in [
        first.as_str(),
        second.as_str(),
        "<scanner@contoso.example>",
        "(1 attempt, next try in ",
        "deferred   <boss@example.com>  cannot connect",
        "2 messages, 3 recipients pending",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?}:\n{}",
            out.stdout
        );
    }

    // --data-dir names the relay without a configuration file.
    let out = cli(&[
        "queue",
        "list",
        "--data-dir",
        relay.data_dir().to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&first));
    relay.running.shutdown().await;
}

#[tokio::test]
async fn show_prints_envelope_headers_and_attempt_history() {
    let upstream = down_upstream().await;
    let relay = Relay::start(&upstream).await;
    let id = send(
        relay.addr(),
        SENDER,
        &["boss@example.com"],
        "Quarterly scan",
    )
    .await;
    relay.wait_deferred(&[&id]).await;

    let out = relay.cli(&["queue", "show", &id]).await;
    assert_eq!(out.code, 0, "{out:?}");
    for expected in [
        format!("Queue ID:    {id}"),
        "Sender:      <scanner@contoso.example>".into(),
        "deferred   <boss@example.com>".into(),
        "Headers:".into(),
        "Received: from scanner1 ([127.0.0.1])".into(),
        "Subject: Quarterly scan".into(),
        "History:".into(),
        "<boss@example.com> ".into(),
    ] {
        assert!(
            out.stdout.contains(&expected),
            "missing {expected:?}:\n{}",
            out.stdout
        );
    }
    let history = &out.stdout[out.stdout.find("History:").unwrap()..];
    assert!(history.contains("cannot connect"), "{history}");

    let out = relay.cli(&["queue", "show", &id, "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let detail: MessageDetail = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(detail.info.id, id);
    assert_eq!(detail.history.len(), 1);
    assert!(detail.headers.contains("Subject: Quarterly scan"));
    relay.running.shutdown().await;
}

#[tokio::test]
async fn held_message_is_not_delivered_until_released() {
    let upstream = down_upstream().await;
    let relay = Relay::start(&upstream).await;
    let id = send(relay.addr(), SENDER, &["boss@example.com"], "Hold me").await;
    relay.wait_deferred(&[&id]).await;

    let out = relay.cli(&["queue", "hold", &id]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&id), "{out:?}");
    let list = relay.list().await;
    assert!(list[0].held, "{list:?}");
    let out = relay.cli(&["queue", "list"]).await;
    assert!(out.stdout.contains("held"), "{}", out.stdout);

    upstream.go_up().await;
    let out = relay.cli(&["queue", "retry", "--all"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "0 messages will be tried now\n");
    let out = relay.cli(&["queue", "retry", &id]).await;
    assert_eq!(out.code, 1, "retrying a held message is refused: {out:?}");
    assert!(
        out.stderr.contains(&id) && out.stderr.contains("held"),
        "{out:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        upstream.messages().is_empty(),
        "a held message was delivered"
    );
    assert_eq!(
        relay.spool_files(&id).len(),
        2,
        "held message still in the spool"
    );

    let out = relay.cli(&["queue", "release", &id]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = relay.cli(&["queue", "retry", &id]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, format!("message {id} will be tried now\n"));
    let messages = upstream.wait_for_messages(1, WAIT).await;
    assert_eq!(messages[0].recipients, vec!["boss@example.com"]);
    relay.wait_queue_empty().await;
    assert!(relay.spool_files(&id).is_empty());
    relay.running.shutdown().await;
}

#[tokio::test]
async fn retry_all_delivers_every_waiting_message_now() {
    let upstream = down_upstream().await;
    let relay = Relay::start(&upstream).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(send(relay.addr(), SENDER, &[&format!("r{i}@example.com")], "x").await);
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    relay.wait_deferred(&refs).await;

    upstream.go_up().await;
    let out = relay.cli(&["queue", "retry", "--all"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "3 messages will be tried now\n");
    let messages = upstream.wait_for_messages(3, WAIT).await;
    assert_eq!(messages.len(), 3);
    relay.wait_queue_empty().await;
    let out = relay.cli(&["queue", "list"]).await;
    assert_eq!(out.stdout, "The queue is empty.\n");
    relay.running.shutdown().await;
}

#[tokio::test]
async fn delete_removes_the_message_from_the_queue_and_the_spool() {
    let upstream = down_upstream().await;
    let relay = Relay::start(&upstream).await;
    let id = send(relay.addr(), SENDER, &["boss@example.com"], "Delete me").await;
    let keep = send(relay.addr(), SENDER, &["other@example.com"], "Keep me").await;
    relay.wait_deferred(&[&id, &keep]).await;
    assert_eq!(relay.spool_files(&id).len(), 2);

    let out = relay.cli(&["queue", "delete", &id]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&id), "{out:?}");
    let list = relay.list().await;
    assert_eq!(
        list.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        vec![keep.as_str()]
    );
    assert!(
        relay.spool_files(&id).is_empty(),
        "{:?}",
        relay.spool_files(&id)
    );
    // Deleted, not kept to be written over by a later message (`spool/free/`).
    assert!(dir_is_empty(&relay.data_dir().join("spool/free")));
    // No bounce for a deleted message.
    assert!(
        !relay.data_dir().join("outbox").exists() || dir_is_empty(&relay.data_dir().join("outbox"))
    );

    let out = relay.cli(&["queue", "delete", &id]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains(&id), "{out:?}");
    relay.running.shutdown().await;
}

#[tokio::test]
async fn bounce_sends_the_sender_a_delivery_status_notification() {
    let upstream = down_upstream().await;
    let relay = Relay::start(&upstream).await;
    let id = send(relay.addr(), SENDER, &["boss@example.com"], "Bounce me").await;
    relay.wait_deferred(&[&id]).await;

    let out = relay.cli(&["queue", "bounce", &id]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&id), "{out:?}");

    // The DSN goes to scanner@contoso.example, which the drop route writes into data_dir/outbox.
    let outbox = relay.data_dir().join("outbox");
    let mut dsn = None;
    for _ in 0..200 {
        if let Some(file) = std::fs::read_dir(&outbox)
            .ok()
            .and_then(|mut d| d.next())
            .map(|e| e.unwrap().path())
        {
            dsn = Some(std::fs::read_to_string(file).unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dsn = dsn.expect("a bounce in data_dir/outbox");
    assert!(dsn.contains("multipart/report"), "{dsn}");
    assert!(dsn.contains("boss@example.com"), "{dsn}");
    assert!(
        !relay.list().await.iter().any(|m| m.id == id),
        "bounced message still queued"
    );
    assert!(relay.spool_files(&id).is_empty());
    relay.running.shutdown().await;
}

#[tokio::test]
async fn unknown_queue_id_is_an_error_that_names_it() {
    let upstream = down_upstream().await;
    let relay = Relay::start(&upstream).await;
    let unknown = "0000000000000DEAD";
    for command in ["show", "retry", "hold", "release", "delete", "bounce"] {
        let out = relay.cli(&["queue", command, unknown]).await;
        assert_eq!(out.code, 1, "{command}: {out:?}");
        assert!(out.stdout.is_empty(), "{command}: {out:?}");
        assert!(
            out.stderr.contains(unknown),
            "{command}: the error should name the id: {out:?}"
        );
    }
    let out = relay.cli(&["badmail", "show", "NO-SUCH-BADMAIL"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("NO-SUCH-BADMAIL"), "{out:?}");
    relay.running.shutdown().await;
}

#[tokio::test]
async fn without_a_running_relay_commands_exit_2_and_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("smarthost.toml");
    std::fs::write(
        &config,
        format!("data_dir = \"{}\"\n", dir.path().display()),
    )
    .unwrap();
    let socket = dir.path().join("control.sock");
    for args in [
        &["queue", "list"][..],
        &["queue", "retry", "--all"],
        &["badmail", "list"],
    ] {
        let mut all = args.to_vec();
        all.extend(["--config", config.to_str().unwrap()]);
        let out = cli(&all).await;
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains(&format!(
                "cannot reach the relay at {}: is `smarthost serve` running with this data_dir?",
                socket.display()
            )),
            "{args:?}: {out:?}"
        );
    }
    // Usage errors are 2 as well.
    let out = cli(&["queue", "retry"]).await;
    assert_eq!(out.code, 2, "{out:?}");
}

#[tokio::test]
async fn control_socket_is_private_and_a_second_relay_on_the_data_dir_refuses_to_start() {
    use std::os::unix::fs::PermissionsExt;
    let upstream = down_upstream().await;
    let relay = Relay::start(&upstream).await;
    let socket = relay.data_dir().join("control.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let config = smarthost::config::load_file(&relay.config).unwrap();
    let err = match start(config.clone()).await {
        Ok(_) => panic!("a second relay started on the same data_dir"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("another smarthost is already running with this data_dir"),
        "{err}"
    );
    // The first one is unharmed.
    assert!(relay.list().await.is_empty());

    relay.running.shutdown().await;
    assert!(!socket.exists(), "control socket left after shutdown");
    // A socket file left by a relay that was killed does not stop the next start.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let again = start(config).await.expect("starts over a stale socket");
    let out = cli(&[
        "queue",
        "list",
        "--data-dir",
        relay.dir.path().to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    again.shutdown().await;
}

#[tokio::test]
async fn refused_bounce_lands_in_badmail_and_resubmit_delivers_it() {
    let upstream = Upstream::start(
        UpstreamConfig::default().with_rcpt_reply("nobody@example.com", "550 5.1.1 User unknown"),
    )
    .await;
    let relay = Relay::start(&upstream).await;
    // The null sender: a refused recipient cannot be bounced, so the message goes to badmail.
    let id = send(relay.addr(), "", &["nobody@example.com"], "Undeliverable").await;

    let mut records = Vec::new();
    for _ in 0..200 {
        let out = relay.cli(&["badmail", "list", "--json"]).await;
        assert_eq!(out.code, 0, "{out:?}");
        records = serde_json::from_str::<Vec<serde_json::Value>>(&out.stdout).unwrap();
        if !records.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["id"], id.as_str());
    assert_eq!(records[0]["name"], id.as_str(), "named after its queue id");
    relay.wait_queue_empty().await;

    let out = relay.cli(&["badmail", "list"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&id), "{}", out.stdout);
    assert!(out.stdout.contains("<>"), "{}", out.stdout);

    let out = relay.cli(&["badmail", "show", &id]).await;
    assert_eq!(out.code, 0, "{out:?}");
    for expected in ["550 5.1.1", "nobody@example.com", "Subject: Undeliverable"] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?}:\n{}",
            out.stdout
        );
    }

    upstream.configure(|c| c.rcpt_replies.clear());
    let out = relay.cli(&["badmail", "resubmit", &id]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("resubmitted as message"), "{out:?}");
    let messages = upstream.wait_for_messages(1, WAIT).await;
    assert_eq!(messages[0].sender, "");
    assert_eq!(messages[0].recipients, vec!["nobody@example.com"]);
    let content = String::from_utf8_lossy(&messages[0].content);
    assert!(content.contains("Subject: Undeliverable"), "{content}");
    relay.wait_queue_empty().await;

    let out = relay.cli(&["badmail", "show", &id]).await;
    assert!(out.stdout.contains("Resubmitted "), "{}", out.stdout);
    relay.running.shutdown().await;
}

fn dir_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}
