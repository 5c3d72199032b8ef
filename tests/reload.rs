//! Reloading the configuration of a running relay (`smarthost reload`, SIGHUP): open sessions keep
//! their settings and finish their messages, new sessions get the new policy and routes, and a
//! configuration with errors is refused while the running one stays.

mod common;

use common::client::Client;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

const OTHER_LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// Relay from `relay_from`; route `a` for a.example, and route `b` for b.example when `with_b`.
fn config_text(data_dir: &Path, relay_from: &str, with_b: bool) -> String {
    let mut text = format!(
        r#"data_dir = "{}"
hostname = "relay.test"

[[listener]]
address = "127.0.0.1:0"
relay_from = ["{relay_from}"]

[[route]]
name = "a"
domains = ["a.example"]
transport = "drop"
path = "out-a"
"#,
        data_dir.display()
    );
    if with_b {
        text.push_str(
            r#"
[[route]]
name = "b"
domains = ["b.example"]
transport = "drop"
path = "out-b"
"#,
        );
    }
    text
}

struct Relay {
    child: tokio::process::Child,
    addr: SocketAddr,
    log: PathBuf,
    config: PathBuf,
    data_dir: PathBuf,
    _stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    _dir: tempfile::TempDir,
}

impl Relay {
    async fn start() -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let config = dir.path().join("smarthost.toml");
        std::fs::write(&config, config_text(&data_dir, "127.0.0.1", false)).unwrap();
        let log = dir.path().join("relay.log");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_smarthost"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("SMARTHOST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
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
        Relay {
            child,
            addr,
            log,
            config,
            data_dir,
            _stdout: lines,
            _dir: dir,
        }
    }

    fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the relay's log holds `needle` `count` times.
    async fn wait_for_log(&self, needle: &str, count: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.log_text().matches(needle).count() < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the log never said {needle:?} {count} times:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `smarthost reload --config FILE`: (exit code, stdout, stderr).
    async fn reload_cli(&self) -> (i32, String, String) {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_smarthost"))
            .args(["reload", "--config"])
            .arg(&self.config)
            .output()
            .await
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn sighup(&self) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for `n` `.eml` files in the drop folder `folder`.
    async fn wait_for_files(&self, folder: &str, n: usize) {
        let dir = self.data_dir.join(folder);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let count = std::fs::read_dir(&dir)
                .map(|d| d.filter_map(Result::ok).count())
                .unwrap_or(0);
            if count >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} messages never reached {}",
                dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        let pid = self.child.id().unwrap().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}

/// A whole message from `from` (`None`: 127.0.0.1) to `rcpt`; returns the reply to RCPT and, if
/// that was accepted, to the end of DATA.
async fn send(addr: SocketAddr, from: Option<IpAddr>, rcpt: &str) -> (String, Option<String>) {
    let (mut c, _) = Client::connect_from(addr, from).await;
    c.cmd("EHLO client.test").await;
    finish(&mut c, rcpt).await
}

async fn finish(c: &mut Client, rcpt: &str) -> (String, Option<String>) {
    assert!(
        c.cmd("MAIL FROM:<app@sender.example>")
            .await
            .starts_with("250")
    );
    let rcpt_reply = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
    if !rcpt_reply.starts_with("250") {
        c.cmd("QUIT").await;
        return (rcpt_reply, None);
    }
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"Subject: reload\r\n\r\nhello\r\n.\r\n").await;
    let end = c.reply().await;
    c.cmd("QUIT").await;
    (rcpt_reply, Some(end))
}

/// The common scenario; `reload` makes the relay read the file as just written.
async fn scenario(relay: &Relay, reload: impl AsyncReload) {
    // A session opened under the first configuration (127.0.0.1 may relay).
    let (mut open, _) = Client::connect(relay.addr).await;
    assert!(open.cmd("EHLO before.test").await.starts_with("250"));

    // The new configuration: only 127.0.0.2 may relay, and a route for b.example.
    relay.write_config(&config_text(&relay.data_dir, "127.0.0.2", true));
    reload.valid(relay).await;

    // The open session keeps its settings and finishes its message.
    let (rcpt, end) = finish(&mut open, "someone@a.example").await;
    assert!(rcpt.starts_with("250"), "{rcpt}");
    assert!(end.unwrap().starts_with("250"));
    relay.wait_for_files("out-a", 1).await;

    // New sessions get the new policy: 127.0.0.1 may no longer relay, 127.0.0.2 may, to b.example.
    let (rcpt, _) = send(relay.addr, None, "someone@a.example").await;
    assert!(rcpt.starts_with("5"), "relay still allowed: {rcpt}");
    let (rcpt, end) = send(relay.addr, Some(OTHER_LOOPBACK), "someone@b.example").await;
    assert!(rcpt.starts_with("250"), "{rcpt}");
    assert!(end.unwrap().starts_with("250"));
    relay.wait_for_files("out-b", 1).await;

    // A configuration with errors is refused and the running one stays.
    let mut broken = config_text(&relay.data_dir, "127.0.0.1", true);
    broken.push_str("\n[limits]\nmax_recipients = \"many\"\n");
    let line = broken.lines().count();
    relay.write_config(&broken);
    reload.invalid(relay, line).await;
    relay.wait_for_log("configuration not reloaded", 1).await;
    let (rcpt, _) = send(relay.addr, None, "someone@a.example").await;
    assert!(rcpt.starts_with("5"), "the broken file was applied: {rcpt}");
    let (rcpt, end) = send(relay.addr, Some(OTHER_LOOPBACK), "someone@b.example").await;
    assert!(rcpt.starts_with("250"), "{rcpt}");
    assert!(end.unwrap().starts_with("250"));
    relay.wait_for_files("out-b", 2).await;
}

trait AsyncReload {
    async fn valid(&self, relay: &Relay);
    async fn invalid(&self, relay: &Relay, line: usize);
}

struct Cli;

impl AsyncReload for Cli {
    async fn valid(&self, relay: &Relay) {
        let (code, stdout, stderr) = relay.reload_cli().await;
        assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
        assert!(stdout.contains("configuration reloaded"), "{stdout}");
        assert!(stdout.contains("2 routes"), "{stdout}");
    }

    async fn invalid(&self, relay: &Relay, line: usize) {
        let (code, stdout, stderr) = relay.reload_cli().await;
        assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
        assert!(
            stderr.contains("configuration not reloaded: the running configuration stays"),
            "{stderr}"
        );
        let at = format!("{}:{line}:", relay.config.display());
        assert!(stderr.contains(&at), "no {at} in {stderr}");
        assert!(stderr.contains("max_recipients"), "{stderr}");
    }
}

struct Sighup;

impl AsyncReload for Sighup {
    async fn valid(&self, relay: &Relay) {
        relay.sighup();
        relay.wait_for_log("configuration reloaded", 1).await;
    }

    async fn invalid(&self, relay: &Relay, line: usize) {
        relay.sighup();
        relay.wait_for_log("configuration not reloaded", 1).await;
        let at = format!("{}:{line}:", relay.config.display());
        relay.wait_for_log(&at, 1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_command_applies_a_valid_file_and_refuses_a_broken_one() {
    let relay = Relay::start().await;
    scenario(&relay, Cli).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_file_and_refuses_a_broken_one() {
    let relay = Relay::start().await;
    scenario(&relay, Sighup).await;
    // Still serving after both signals.
    let (rcpt, _) = send(relay.addr, Some(OTHER_LOOPBACK), "x@b.example").await;
    assert!(rcpt.starts_with("250"), "{rcpt}");
    relay.stop().await;
}

#[tokio::test]
async fn in_process_reload_reports_what_needs_a_restart_and_refuses_without_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let path = dir.path().join("smarthost.toml");
    std::fs::write(&path, config_text(&data_dir, "127.0.0.1", false)).unwrap();
    let config = smarthost::config::load_file(&path).unwrap();
    let running = smarthost::cli::serve::start(config).await.unwrap();

    // Started without --config: nothing to read again.
    let err = running.reload_configured().await.unwrap_err();
    assert!(err.contains("without --config"), "{err}");

    let changed = config_text(&data_dir, "127.0.0.2", true)
        .replace("relay.test", "other.test")
        .replace("127.0.0.1:0", "127.0.0.1:1");
    std::fs::write(&path, changed).unwrap();
    let summary = running.reload(&path).unwrap();
    assert_eq!(summary.routes, 2);
    assert!(summary.restart_needed.iter().any(|k| k == "hostname"));
    assert!(
        summary
            .restart_needed
            .iter()
            .any(|k| k.contains("127.0.0.1:1") && k.contains("added")),
        "{:?}",
        summary.restart_needed
    );
    assert!(summary.to_string().contains("takes effect after a restart"));

    running.set_config_path(Some(path.clone()));
    std::fs::write(&path, "hostname = 5\n").unwrap();
    let err = running.reload_configured().await.unwrap_err();
    assert!(err.contains(&format!("{}:1:", path.display())), "{err}");
    running.shutdown().await;
}
