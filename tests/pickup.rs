//! The Pickup folder against the real relay (`serve::start`), delivering to a drop folder: a file
//! dropped into `data_dir/pickup` comes out of the same queue as SMTP mail, with its envelope from
//! `x-sender`/`x-receiver` or from the header fields. The relay runs with the default timing (poll
//! 1 s, settle 2 s), so each test takes a few seconds.

use smarthost::cli::serve::{Running, start};
use smarthost::config::load_str;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(20);

/// A relay delivering to `data_dir/outbox`.
async fn relay(dir: &Path, extra: &str) -> Running {
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
        dir.display()
    );
    let config = load_str(&text, "test.toml").expect("valid test configuration");
    let running = start(config).await.expect("relay starts");
    assert!(
        dir.join("pickup").is_dir(),
        "the Pickup folder is created at start"
    );
    running
}

/// A delivered message: the drop transport's envelope lines, then the content.
#[derive(Debug)]
struct Dropped {
    sender: String,
    recipients: Vec<String>,
    content: String,
}

impl Dropped {
    /// The content after our `Received:` header (which continues on lines that begin with a tab).
    fn after_trace(&self) -> &str {
        assert!(
            self.content.starts_with("Received: from pickup\r\n"),
            "{}",
            self.content
        );
        let mut offset = 0;
        for (i, line) in self.content.split_inclusive("\r\n").enumerate() {
            if i > 0 && !line.starts_with('\t') {
                break;
            }
            offset += line.len();
        }
        &self.content[offset..]
    }
}

fn read_outbox(dir: &Path) -> Vec<Dropped> {
    let Ok(entries) = std::fs::read_dir(dir.join("outbox")) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let file = String::from_utf8(std::fs::read(p).unwrap()).unwrap();
            let mut dropped = Dropped {
                sender: String::new(),
                recipients: Vec::new(),
                content: String::new(),
            };
            let mut rest = file.as_str();
            while let Some((line, after)) = rest.split_once("\r\n") {
                if let Some(sender) = line.strip_prefix("x-sender: ") {
                    dropped.sender = sender.to_string();
                } else if let Some(rcpt) = line.strip_prefix("x-receiver: ") {
                    dropped.recipients.push(rcpt.to_string());
                } else {
                    break;
                }
                rest = after;
            }
            dropped.content = rest.to_string();
            dropped
        })
        .collect()
}

/// Waits until `n` messages are in the outbox.
async fn wait_outbox(dir: &Path, n: usize) -> Vec<Dropped> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = read_outbox(dir);
        if found.len() >= n || tokio::time::Instant::now() > deadline {
            let summary: Vec<String> = found
                .iter()
                .map(|m| {
                    let start: String = m.content.chars().take(300).collect();
                    format!(
                        "{} -> {:?}, {} bytes: {start:?}",
                        m.sender,
                        m.recipients,
                        m.content.len()
                    )
                })
                .collect();
            assert_eq!(found.len(), n, "messages in the outbox: {summary:#?}");
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_gone(path: &Path) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while path.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} was not picked up",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn drop_file(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.join("pickup").join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn badmail_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("badmail"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn seed_example_is_delivered_to_its_to_address() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "").await;
    // The four lines of the IIS documentation, saved by Notepad: CRLF, no final line end, no empty
    // line before the body, no file name extension.
    let file = drop_file(
        dir.path(),
        "test",
        b"from:testuser@internaldomain.com\r\nto:tbill@externaldomainname.com\r\n\
          subject:This is a test.\r\nthis is a test.",
    );
    wait_gone(&file).await;
    let dropped = wait_outbox(dir.path(), 1).await;
    let message = &dropped[0];
    assert_eq!(message.sender, "testuser@internaldomain.com");
    assert_eq!(message.recipients, ["tbill@externaldomainname.com"]);
    assert!(
        message
            .content
            .contains("by relay.test (smarthost) with local id "),
        "{}",
        message.content
    );
    // Date and Message-ID are added at the top; the rest is the file, with the empty line.
    let content = message.after_trace();
    let lines: Vec<&str> = content.split("\r\n").collect();
    assert!(lines[0].starts_with("Date: "), "{content}");
    assert!(
        lines[1].starts_with("Message-ID: <") && lines[1].ends_with(".pickup@relay.test>"),
        "{content}"
    );
    assert_eq!(
        lines[2..].join("\r\n"),
        "from:testuser@internaldomain.com\r\nto:tbill@externaldomainname.com\r\n\
         subject:This is a test.\r\n\r\nthis is a test.\r\n"
    );
    assert_eq!(badmail_files(dir.path()), Vec::<String>::new());
    relay.shutdown().await;
}

#[tokio::test]
async fn x_sender_and_x_receiver_give_the_envelope_and_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "").await;
    // Written on Linux: LF line ends.
    let file = drop_file(
        dir.path(),
        "job-42.eml",
        b"x-sender: bounces@contoso.com\nx-receiver: <a@fabrikam.com>\nX-Receiver: b@fabrikam.com\n\
          From: Payroll <payroll@contoso.com>\nTo: staff@contoso.com\nDate: Mon, 1 Dec 2025 10:00:00 +0000\n\
          Message-ID: <job-42@app.contoso.com>\nSubject: payslip\n\nSee attachment.\n",
    );
    wait_gone(&file).await;
    let dropped = wait_outbox(dir.path(), 1).await;
    let message = &dropped[0];
    assert_eq!(message.sender, "bounces@contoso.com");
    assert_eq!(message.recipients, ["a@fabrikam.com", "b@fabrikam.com"]);
    assert_eq!(
        message.after_trace(),
        "From: Payroll <payroll@contoso.com>\r\nTo: staff@contoso.com\r\n\
         Date: Mon, 1 Dec 2025 10:00:00 +0000\r\nMessage-ID: <job-42@app.contoso.com>\r\n\
         Subject: payslip\r\n\r\nSee attachment.\r\n"
    );
    assert!(!message.content.to_ascii_lowercase().contains("x-sender"));
    relay.shutdown().await;
}

#[tokio::test]
async fn bcc_recipient_is_delivered_but_the_bcc_field_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "").await;
    let file = drop_file(
        dir.path(),
        "scan.eml",
        b"From: \"Scanner, 3rd floor\" <scanner@contoso.com>\n\
          To: Alice <alice@fabrikam.com>,\n  \"Bob (IT)\" <bob@fabrikam.com>\n\
          Cc: undisclosed-recipients:;, ALICE@fabrikam.com\n\
          Bcc: archive@contoso.com\nSubject: scan\n\nbody\n",
    );
    wait_gone(&file).await;
    let dropped = wait_outbox(dir.path(), 1).await;
    let message = &dropped[0];
    assert_eq!(message.sender, "scanner@contoso.com");
    assert_eq!(
        message.recipients,
        [
            "alice@fabrikam.com",
            "bob@fabrikam.com",
            "archive@contoso.com"
        ]
    );
    let content = message.after_trace();
    assert!(!content.contains("archive@contoso.com"), "{content}");
    assert!(!content.contains("Bcc"), "{content}");
    assert!(
        content.contains(
            "To: Alice <alice@fabrikam.com>,\r\n  \"Bob (IT)\" <bob@fabrikam.com>\r\n\
             Cc: undisclosed-recipients:;, ALICE@fabrikam.com\r\nSubject: scan\r\n\r\nbody\r\n"
        ),
        "{content}"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn malformed_files_go_to_badmail_with_a_readable_reason() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "").await;
    let no_recipients = drop_file(
        dir.path(),
        "scan.eml",
        b"From: scanner@contoso.com\nSubject: scan\n\nbody\n",
    );
    let junk: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let junk_file = drop_file(dir.path(), "photo.jpg", &junk);
    wait_gone(&no_recipients).await;
    wait_gone(&junk_file).await;

    assert_eq!(
        badmail_files(dir.path()),
        [
            "pickup-photo-jpg.bad",
            "pickup-photo-jpg.bdp",
            "pickup-photo-jpg.bdr",
            "pickup-scan-eml.bad",
            "pickup-scan-eml.bdp",
            "pickup-scan-eml.bdr",
        ]
    );
    let badmail = dir.path().join("badmail");
    let bdr = std::fs::read_to_string(badmail.join("pickup-scan-eml.bdr")).unwrap();
    assert!(
        bdr.contains(
            "Reason:     Pickup file `scan.eml`: no recipients: no x-receiver line and no To, Cc or \
             Bcc address"
        ),
        "{bdr}"
    );
    assert!(bdr.contains("Sender:     <scanner@contoso.com>"), "{bdr}");
    // What would have been queued: CRLF text.
    assert_eq!(
        std::fs::read(badmail.join("pickup-scan-eml.bad")).unwrap(),
        b"From: scanner@contoso.com\r\nSubject: scan\r\n\r\nbody\r\n"
    );
    let bdr = std::fs::read_to_string(badmail.join("pickup-photo-jpg.bdr")).unwrap();
    assert!(
        bdr.contains("Pickup file `photo.jpg`: it is not a text file (it contains NUL bytes)"),
        "{bdr}"
    );
    // Not a message at all: kept as it was.
    assert_eq!(
        std::fs::read(badmail.join("pickup-photo-jpg.bad")).unwrap(),
        junk
    );
    assert!(read_outbox(dir.path()).is_empty());
    relay.shutdown().await;
}

#[tokio::test]
async fn slowly_written_file_is_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "").await;
    let mut message = b"From: app@contoso.com\nTo: big@fabrikam.com\nSubject: report\n\n".to_vec();
    for i in 0..60_000 {
        message.extend_from_slice(format!("line {i:06} of the report\n").as_bytes());
    }
    let path = dir.path().join("pickup/report.eml");
    // Twelve chunks, 250 ms apart: 3 s in all, longer than the settle time (2 s), but each gap
    // shorter than it.
    let mut file = tokio::fs::File::create(&path).await.unwrap();
    for chunk in message.chunks(message.len().div_ceil(12)) {
        file.write_all(chunk).await.unwrap();
        file.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(
            path.exists(),
            "the file was picked up while it was being written"
        );
    }
    drop(file);
    wait_gone(&path).await;
    let dropped = wait_outbox(dir.path(), 1).await;
    let content = dropped[0].after_trace();
    let want = String::from_utf8(message).unwrap().replace('\n', "\r\n");
    assert!(content.ends_with(&want), "delivered whole");
    // And only once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(read_outbox(dir.path()).len(), 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn tmp_file_is_ignored_until_renamed() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "").await;
    let message = b"From: app@contoso.com\nTo: r@fabrikam.com\nSubject: s\n\nbody\n";
    let tmp = drop_file(dir.path(), "invoice.eml.tmp", message);
    let hidden = drop_file(dir.path(), ".invoice2.eml", message);
    std::fs::create_dir(dir.path().join("pickup/sub")).unwrap();
    let nested = drop_file(dir.path(), "sub/invoice3.eml", message);
    // Poll 1 s + settle 2 s, with room to spare.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(tmp.exists() && hidden.exists() && nested.exists());
    assert!(read_outbox(dir.path()).is_empty());

    let renamed = dir.path().join("pickup/invoice.eml");
    std::fs::rename(&tmp, &renamed).unwrap();
    wait_gone(&renamed).await;
    let dropped = wait_outbox(dir.path(), 1).await;
    assert_eq!(dropped[0].recipients, ["r@fabrikam.com"]);
    assert!(hidden.exists() && nested.exists());
    relay.shutdown().await;
}

#[tokio::test]
async fn file_stays_while_the_spool_cannot_take_it_and_is_sent_later() {
    let dir = tempfile::tempdir().unwrap();
    // No file system here has an exabyte free: every submission fails as if the disk were full.
    let full = relay(dir.path(), "[queue]\nmin_free_space = \"1000000000GiB\"").await;
    let file = drop_file(
        dir.path(),
        "urgent.eml",
        b"From: app@contoso.com\nTo: r@fabrikam.com\nSubject: s\n\nbody\n",
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(file.exists(), "kept while the spool refuses it");
    assert!(read_outbox(dir.path()).is_empty());
    assert_eq!(badmail_files(dir.path()), Vec::<String>::new());
    full.shutdown().await;

    let normal = relay(dir.path(), "").await;
    wait_gone(&file).await;
    let dropped = wait_outbox(dir.path(), 1).await;
    assert_eq!(dropped[0].recipients, ["r@fabrikam.com"]);
    normal.shutdown().await;
}
