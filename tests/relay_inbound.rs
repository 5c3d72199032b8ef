//! The inbound side against the real server on 127.0.0.1:0, delivering to a drop folder: what a device
//! sees when it talks to the relay, and what comes out.

mod common;

use common::client::Client;
use smarthost::cli::serve::{Running, start};
use smarthost::config::load_str;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpStream;

/// A relay with its own data directory, delivering to `data_dir/outbox`.
struct Relay {
    running: Option<Running>,
    addr: std::net::SocketAddr,
    dir: tempfile::TempDir,
}

async fn relay_with(extra: &str) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
data_dir = "{}"
hostname = "relay.test"
[[listener]]
address = "127.0.0.1:0"
relay_from = ["127.0.0.1/32"]
{extra}
[[route]]
name = "outbox"
domains = ["*"]
transport = "drop"
path = "outbox"
"#,
        dir.path().display()
    );
    let config = load_str(&text, "test.toml").expect("valid test configuration");
    let running = start(config).await.expect("relay starts");
    let addr = running.local_addrs[0];
    Relay {
        running: Some(running),
        addr,
        dir,
    }
}

impl Relay {
    fn outbox(&self) -> PathBuf {
        self.dir.path().join("outbox")
    }

    /// Waits until `n` files are in the outbox and returns their contents, sorted by name.
    async fn wait_outbox(&self, n: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let files = read_dir_files(&self.outbox());
            if files.len() >= n || tokio::time::Instant::now() > deadline {
                return files;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) -> tempfile::TempDir {
        self.running.take().unwrap().shutdown().await;
        self.dir
    }
}

fn read_dir_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned())
        .collect()
}

/// The content a drop file holds after the x-sender/x-receiver lines and our Received header.
fn body_after_trace(file: &str) -> &str {
    let start = file.find("Received: ").expect("Received header");
    let rest = &file[start..];
    // The Received header ends at the first line that does not start with a tab.
    let mut offset = 0;
    for (i, line) in rest.split_inclusive("\r\n").enumerate() {
        if i > 0 && !line.starts_with('\t') {
            break;
        }
        offset += line.len();
    }
    &rest[offset..]
}

#[tokio::test]
async fn message_is_delivered_byte_exact_with_only_a_received_header_added() {
    let relay = relay_with("").await;
    let (mut c, banner) = Client::connect(relay.addr).await;
    assert!(banner.starts_with("220 relay.test "), "{banner}");
    let ehlo = c.cmd("EHLO scanner1").await;
    for ext in [
        "PIPELINING",
        "SIZE ",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
    ] {
        assert!(ehlo.contains(ext), "{ext} missing in {ehlo}");
    }
    assert!(
        c.cmd("MAIL FROM:<scan@contoso.com>")
            .await
            .starts_with("250 2.1.0")
    );
    assert!(
        c.cmd("RCPT TO:<boss@example.com>")
            .await
            .starts_with("250 2.1.5")
    );
    assert!(c.cmd("DATA").await.starts_with("354"));
    let body = "From: scan@contoso.com\r\nTo: boss@example.com\r\nSubject: scan\r\n\r\nline one\r\n..leading dot\r\n.\r\n\r\n  spaced\r\n";
    // The client stuffs the lines that start with a dot; the relay must undo exactly that.
    c.send(b"From: scan@contoso.com\r\nTo: boss@example.com\r\nSubject: scan\r\n\r\nline one\r\n...leading dot\r\n..\r\n\r\n  spaced\r\n.\r\n")
        .await;
    let queued = c.reply().await;
    assert!(queued.starts_with("250 2.0.0 OK queued as "), "{queued}");
    assert!(c.cmd("QUIT").await.starts_with("221"));

    let files = relay.wait_outbox(1).await;
    assert_eq!(files.len(), 1);
    let file = &files[0];
    assert!(file.starts_with("x-sender: scan@contoso.com\r\nx-receiver: boss@example.com\r\nReceived: from scanner1 ([127.0.0.1])\r\n\tby relay.test (smarthost) with ESMTP id "), "{file}");
    assert_eq!(body_after_trace(file), body);
    relay.stop().await;
}

#[tokio::test]
async fn pipelined_transaction_gets_all_replies_in_order() {
    let relay = relay_with("").await;
    let (mut c, _) = Client::connect(relay.addr).await;
    c.cmd("EHLO app").await;
    c.send(b"MAIL FROM:<app@contoso.com>\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        .await;
    assert!(c.reply().await.starts_with("250 2.1.0"));
    assert!(c.reply().await.starts_with("250 2.1.5"));
    assert!(c.reply().await.starts_with("250 2.1.5"));
    assert!(c.reply().await.starts_with("354"));
    // End of data, a second whole transaction and QUIT in one write.
    c.send(b"Subject: one\r\n\r\nfirst\r\n.\r\nMAIL FROM:<app@contoso.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\nSubject: two\r\n\r\nsecond\r\n.\r\nQUIT\r\n")
        .await;
    assert!(c.reply().await.starts_with("250 2.0.0 OK queued"));
    assert!(c.reply().await.starts_with("250 2.1.0"));
    assert!(c.reply().await.starts_with("250 2.1.5"));
    assert!(c.reply().await.starts_with("354"));
    assert!(c.reply().await.starts_with("250 2.0.0 OK queued"));
    assert!(c.reply().await.starts_with("221"));
    let files = relay.wait_outbox(2).await;
    assert_eq!(files.len(), 2);
    assert!(files.iter().any(|f| {
        f.contains("x-receiver: a@example.com\r\nx-receiver: b@example.com\r\n")
            && f.ends_with("\r\nSubject: one\r\n\r\nfirst\r\n")
    }));
    assert!(
        files
            .iter()
            .any(|f| f.contains("x-receiver: c@example.com\r\n")
                && f.ends_with("\r\nSubject: two\r\n\r\nsecond\r\n"))
    );
    relay.stop().await;
}

#[tokio::test]
async fn client_outside_relay_from_is_refused_at_rcpt_and_nothing_is_queued() {
    let relay = relay_with("").await;
    // relay_from is 127.0.0.1/32 only; 127.0.0.2 is another host on the loopback network.
    let (mut c, _) = Client::connect_from(relay.addr, Some("127.0.0.2".parse().unwrap())).await;
    c.cmd("EHLO outsider").await;
    assert!(c.cmd("MAIL FROM:<x@evil.example>").await.starts_with("250"));
    let rcpt = c.cmd("RCPT TO:<victim@example.com>").await;
    assert!(rcpt.starts_with("550 5.7.1 "), "{rcpt}");
    assert!(rcpt.contains("127.0.0.2"));
    let data = c.cmd("DATA").await;
    assert!(data.starts_with("554 5.5.1"), "{data}");
    c.cmd("QUIT").await;
    let dir = relay.stop().await;
    assert!(read_dir_files(&dir.path().join("outbox")).is_empty());
    let queued = std::fs::read_dir(dir.path().join("spool/queue"))
        .unwrap()
        .count();
    assert_eq!(queued, 0);
}

#[tokio::test]
async fn oversized_message_is_refused_with_552_and_the_session_goes_on() {
    let relay = relay_with("[limits]\nmax_message_size = 10000\n").await;
    let (mut c, _) = Client::connect(relay.addr).await;
    let ehlo = c.cmd("EHLO big").await;
    assert!(ehlo.contains("SIZE 10000"), "{ehlo}");
    // Declared too large: refused at MAIL.
    let mail = c.cmd("MAIL FROM:<a@contoso.com> SIZE=20000").await;
    assert!(mail.starts_with("552 5.3.4"), "{mail}");
    // Not declared, but too large: read to the end, then refused.
    c.cmd("MAIL FROM:<a@contoso.com>").await;
    c.cmd("RCPT TO:<b@example.com>").await;
    c.cmd("DATA").await;
    let line = "x".repeat(98) + "\r\n";
    for _ in 0..200 {
        c.send(line.as_bytes()).await;
    }
    c.send(b".\r\n").await;
    let reply = c.reply().await;
    assert!(reply.starts_with("552 5.3.4"), "{reply}");
    // The session is still usable, and a small message goes through.
    c.cmd("MAIL FROM:<a@contoso.com>").await;
    c.cmd("RCPT TO:<b@example.com>").await;
    c.cmd("DATA").await;
    c.send(b"Subject: small\r\n\r\nok\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    c.cmd("QUIT").await;
    let files = relay.wait_outbox(1).await;
    assert_eq!(files.len(), 1);
    assert!(files[0].contains("Subject: small"));
    relay.stop().await;
}

#[tokio::test]
async fn smuggled_end_of_data_sequences_never_start_a_second_message() {
    let relay = relay_with("").await;
    let sequences: [&[u8]; 5] = [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r"];
    for (i, seq) in sequences.iter().enumerate() {
        let (mut c, _) = Client::connect(relay.addr).await;
        c.cmd("EHLO smuggler").await;
        c.cmd("MAIL FROM:<a@contoso.com>").await;
        c.cmd(&format!("RCPT TO:<victim{i}@example.com>")).await;
        assert!(c.cmd("DATA").await.starts_with("354"));
        let mut payload = b"Subject: outer\r\n\r\nhello".to_vec();
        payload.extend_from_slice(seq);
        payload.extend_from_slice(
            b"MAIL FROM:<admin@contoso.com>\r\nRCPT TO:<smuggled@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n",
        );
        c.send(&payload).await;
        // Exactly one reply: the message ended at the only real <CRLF>.<CRLF>.
        assert!(c.reply().await.starts_with("250 2.0.0"), "sequence {seq:?}");
        assert!(c.cmd("QUIT").await.starts_with("221"), "sequence {seq:?}");
    }
    let files = relay.wait_outbox(sequences.len()).await;
    assert_eq!(files.len(), sequences.len());
    for file in &files {
        assert!(!file.contains("x-receiver: smuggled@example.com"), "{file}");
        assert!(file.contains("Subject: outer"));
        // The smuggled commands are content of the one message.
        assert!(file.contains("MAIL FROM:<admin@contoso.com>"));
    }
    relay.stop().await;
}

#[tokio::test]
async fn protocol_errors_get_the_rfc_5321_codes() {
    let relay = relay_with("").await;
    let (mut c, _) = Client::connect(relay.addr).await;
    let cases = [
        ("MAIL FROM:<a@contoso.com>", "503 5.5.1"),
        ("FOO bar", "500 5.5.2"),
        ("EHLO x", "250"),
        ("RCPT TO:<a@example.com>", "503 5.5.1"),
        ("DATA", "503 5.5.1"),
        ("MAIL FROM:<a@contoso.com>", "250 2.1.0"),
        ("MAIL FROM:<a@contoso.com>", "503 5.5.1"),
        ("RCPT TO:<not-an-address>", "501 5.1.3"),
        ("VRFY someone", "252"),
        ("NOOP", "250 2.0.0"),
        ("RSET", "250 2.0.0"),
        ("HELP", "214"),
        ("STARTTLS", "502 5.5.1"),
        ("QUIT", "221 2.0.0"),
    ];
    for (command, expected) in cases {
        let reply = c.cmd(command).await;
        assert!(reply.starts_with(expected), "{command}: {reply}");
    }
    assert!(c.closed().await);
    relay.stop().await;
}

#[tokio::test]
async fn overlong_command_line_is_refused_and_the_session_survives() {
    let relay = relay_with("").await;
    let (mut c, _) = Client::connect(relay.addr).await;
    c.cmd("EHLO x").await;
    let long = format!("NOOP {}\r\n", "a".repeat(100_000));
    c.send(long.as_bytes()).await;
    let reply = c.reply().await;
    assert!(reply.starts_with("500 5.5.2"), "{reply}");
    assert!(c.cmd("NOOP").await.starts_with("250"));
    relay.stop().await;
}

#[tokio::test]
async fn idle_client_is_disconnected_with_421() {
    let relay = relay_with("[limits]\ncommand_timeout = \"1s\"\n").await;
    let (mut c, _) = Client::connect(relay.addr).await;
    let reply = c.reply().await;
    assert!(reply.starts_with("421 4.4.2"), "{reply}");
    assert!(c.closed().await);
    relay.stop().await;
}

#[tokio::test]
async fn shutdown_tells_idle_clients_421_and_keeps_queued_mail() {
    let relay = relay_with("").await;
    let (mut c, _) = Client::connect(relay.addr).await;
    c.cmd("EHLO x").await;
    let addr = relay.addr;
    let dir = relay.stop().await;
    let reply = c.reply().await;
    assert!(reply.starts_with("421 4.3.2"), "{reply}");
    assert!(TcpStream::connect(addr).await.is_err());
    drop(dir);
}
