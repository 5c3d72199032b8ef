//! `smarthost send` as a user runs it (the real binary): a MIME message with a non-ASCII subject,
//! an HTML body and attachments, sent with STARTTLS and AUTH to the test upstream and parsed back
//! with mail-parser; Bcc only in the envelope; a wrong password; `--via-queue` through the Pickup
//! folder of a running relay.

mod common;

use common::upstream::{Upstream, UpstreamConfig};
use mail_parser::{MessageParser, MimeHeaders};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_smarthost");
const PASSWORD: &str = "S3nd-test-pa55word!";

async fn smarthost(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(BIN);
    command.arg("send").args(args);
    for (k, v) in envs {
        command.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("smarthost send finishes")
        .expect("smarthost runs")
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn upstream_args(up: &Upstream) -> Vec<String> {
    vec![
        "--server".into(),
        "127.0.0.1".into(),
        "--port".into(),
        up.port().to_string(),
        "--tls".into(),
        "starttls".into(),
        "--ca-file".into(),
        up.ca_path().display().to_string(),
        "--user".into(),
        "sender@contoso.com".into(),
        "--password-env".into(),
        "SEND_TEST_PASSWORD".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_html_with_attachments_over_starttls_and_auth() {
    let up =
        Upstream::start(UpstreamConfig::default().with_credentials("sender@contoso.com", PASSWORD))
            .await;
    let dir = tempfile::tempdir().unwrap();
    let binary: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let pdf = dir.path().join("Bericht März.pdf");
    std::fs::write(&pdf, &binary).unwrap();
    let csv = dir.path().join("data.csv");
    let csv_text = "a,b\r\n1,2\r\n".repeat(50);
    std::fs::write(&csv, &csv_text).unwrap();
    let html = "<html><body><p>Grüße — the report is attached.</p></body></html>";

    let mut args = upstream_args(&up);
    args.extend(
        [
            "--from",
            "Scan Station <sender@contoso.com>",
            "--to",
            "boss@contoso.com,Ann Other <ann@contoso.com>",
            "--cc",
            "cc@contoso.com",
            "--bcc",
            "hidden@contoso.com",
            "--subject",
            "Monatsbericht für Köln ✓",
            "--body",
            html,
            "--html",
            "--attach",
            pdf.to_str().unwrap(),
            "--attach",
            csv.to_str().unwrap(),
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = smarthost(&args, &[("SEND_TEST_PASSWORD", PASSWORD)]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.matches("delivered ").count(), 4, "{}", text(&output));
    assert!(!text(&output).contains(PASSWORD));

    let got = up.wait_for_messages(1, Duration::from_secs(10)).await;
    let received = &got[0];
    assert!(received.tls, "sent after STARTTLS");
    assert_eq!(received.auth_user.as_deref(), Some("sender@contoso.com"));
    assert_eq!(received.sender, "sender@contoso.com");
    let mut rcpts = received.recipients.clone();
    rcpts.sort();
    assert_eq!(
        rcpts,
        [
            "ann@contoso.com",
            "boss@contoso.com",
            "cc@contoso.com",
            "hidden@contoso.com"
        ]
    );
    let raw = &received.content;
    assert!(raw.is_ascii(), "7-bit clean");
    let raw_text = String::from_utf8_lossy(raw);
    assert!(
        !raw_text.replace("\r\n", "").contains('\n'),
        "CRLF line ends only"
    );
    for line in raw_text.split("\r\n") {
        assert!(line.len() <= 78, "long line: {line}");
    }
    assert!(!raw_text.to_ascii_lowercase().contains("\r\nbcc:"));
    assert!(!raw_text.contains("hidden@"), "{raw_text}");

    let message = MessageParser::default().parse(raw).expect("valid MIME");
    assert_eq!(message.subject(), Some("Monatsbericht für Köln ✓"));
    let from = message.from().unwrap().first().unwrap();
    assert_eq!(from.address(), Some("sender@contoso.com"));
    assert_eq!(from.name(), Some("Scan Station"));
    let to: Vec<_> = message
        .to()
        .unwrap()
        .as_list()
        .unwrap()
        .iter()
        .map(|a| a.address().unwrap().to_string())
        .collect();
    assert_eq!(to, ["boss@contoso.com", "ann@contoso.com"]);
    assert_eq!(
        message.cc().unwrap().first().unwrap().address(),
        Some("cc@contoso.com")
    );
    assert!(message.bcc().is_none());
    assert!(message.message_id().is_some_and(|id| id.contains('@')));
    assert!(message.date().is_some());
    assert_eq!(message.body_html(0).unwrap().trim_end(), html);
    assert_eq!(message.attachment_count(), 2);
    let first = message.attachment(0).unwrap();
    assert_eq!(first.attachment_name(), Some("Bericht März.pdf"));
    assert_eq!(first.content_type().unwrap().ctype(), "application");
    assert_eq!(first.contents(), binary.as_slice());
    let second = message.attachment(1).unwrap();
    assert_eq!(second.attachment_name(), Some("data.csv"));
    assert_eq!(second.contents(), csv_text.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_body_from_a_file_is_quoted_printable() {
    let up = Upstream::start(UpstreamConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let body_path = dir.path().join("body.txt");
    let body = format!("Zeile eins: Grüße\n{}\n.\nend  \n", "x".repeat(200));
    std::fs::write(&body_path, &body).unwrap();
    let port = up.port().to_string();
    let output = smarthost(
        &[
            "--port",
            &port,
            "--ca-file",
            up.ca_path().to_str().unwrap(),
            "--from",
            "a@contoso.com",
            "--to",
            "b@contoso.com",
            "--subject",
            "plain",
            "--body-file",
            body_path.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let got = up.wait_for_messages(1, Duration::from_secs(10)).await;
    let raw = String::from_utf8(got[0].content.clone()).unwrap();
    assert!(
        raw.contains("Content-Type: text/plain; charset=utf-8\r\n"),
        "{raw}"
    );
    assert!(raw.contains("Content-Transfer-Encoding: quoted-printable\r\n"));
    assert!(
        raw.split("\r\n")
            .all(|l| l.len() <= 76 || l.starts_with("Message-ID"))
    );
    let message = MessageParser::default().parse(raw.as_bytes()).unwrap();
    assert_eq!(message.subject(), Some("plain"));
    assert_eq!(
        message.body_text(0).unwrap().replace("\r\n", "\n"),
        body,
        "{raw}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_exits_1_with_the_reply_and_never_prints_the_password() {
    let up =
        Upstream::start(UpstreamConfig::default().with_credentials("sender@contoso.com", PASSWORD))
            .await;
    let wrong = "Wr0ng-pa55word-visible?";
    let mut args = upstream_args(&up);
    args.extend(
        [
            "--from",
            "sender@contoso.com",
            "--to",
            "boss@contoso.com",
            "--body",
            "hi",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = smarthost(&args, &[("SEND_TEST_PASSWORD", wrong)]).await;
    let all = text(&output);
    assert_eq!(output.status.code(), Some(1), "{all}");
    assert!(all.contains("535"), "the upstream's reply is shown: {all}");
    assert!(all.contains("boss@contoso.com"), "{all}");
    assert!(!all.contains(wrong), "{all}");
    assert!(up.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2() {
    for (args, envs, expect) in [
        (vec!["--from", "a@x.com"], vec![], "no recipients"),
        (
            vec!["--from", "nobody", "--to", "b@x.com"],
            vec![],
            "--from",
        ),
        (
            vec![
                "--from",
                "a@x.com",
                "--to",
                "b@x.com",
                "--user",
                "u",
                "--password-env",
                "SEND_TEST_UNSET_VAR",
            ],
            vec![],
            "SEND_TEST_UNSET_VAR",
        ),
        (
            vec![
                "--from",
                "a@x.com",
                "--to",
                "b@x.com",
                "--attach",
                "/nonexistent/file.pdf",
            ],
            vec![],
            "/nonexistent/file.pdf",
        ),
        (
            vec![
                "--from",
                "a@x.com",
                "--to",
                "b@x.com",
                "--via-queue",
                "--data-dir",
                "/nonexistent/dir",
            ],
            vec![],
            "Pickup folder",
        ),
        (vec!["--to", "b@x.com"], vec![], "--from"),
    ] {
        let envs: Vec<(&str, &str)> = envs;
        let output = smarthost(&args, &envs).await;
        let all = text(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {all}");
        assert!(all.contains(expect), "{args:?}: {all}");
    }
}

fn outbox_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .map(|p| String::from_utf8(std::fs::read(p).unwrap()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn via_queue_goes_through_the_pickup_folder_of_the_running_relay() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config_text = format!(
        r#"
data_dir = "{}"
hostname = "relay.test"
[[listener]]
address = "127.0.0.1:0"
relay_from = ["127.0.0.1/32"]
[[route]]
name = "outbox"
domains = ["*"]
transport = "drop"
path = "outbox"
"#,
        data.display()
    );
    let config_path = dir.path().join("smarthost.toml");
    std::fs::write(&config_path, &config_text).unwrap();
    let config = smarthost::config::load_str(&config_text, "test.toml").unwrap();
    let running = smarthost::cli::serve::start(config).await.unwrap();
    let attachment = dir.path().join("scan.png");
    let png: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&attachment, &png).unwrap();

    let output = smarthost(
        &[
            "--via-queue",
            "--config",
            config_path.to_str().unwrap(),
            "--from",
            "scanner@contoso.com",
            "--to",
            "boss@fabrikam.com",
            "--bcc",
            "audit@fabrikam.com",
            "--subject",
            "Scan über Pickup",
            "--body",
            "see attached",
            "--attach",
            attachment.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    let all = text(&output);
    assert_eq!(output.status.code(), Some(0), "{all}");
    assert!(
        all.contains(&data.join("pickup").display().to_string()),
        "{all}"
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let dropped = loop {
        let found = outbox_files(&data.join("outbox"));
        if !found.is_empty() {
            break found;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing delivered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    running.shutdown().await;
    let file = &dropped[0];
    assert!(
        file.starts_with("x-sender: scanner@contoso.com\r\n"),
        "{file}"
    );
    assert!(file.contains("x-receiver: boss@fabrikam.com\r\n"));
    assert!(file.contains("x-receiver: audit@fabrikam.com\r\n"));
    let content_start = file.find("Received:").unwrap();
    let content = &file[content_start..];
    assert!(
        !content.contains("audit@"),
        "Bcc only in the envelope: {content}"
    );
    let message = MessageParser::default().parse(content.as_bytes()).unwrap();
    assert_eq!(message.subject(), Some("Scan über Pickup"));
    assert_eq!(message.body_text(0).unwrap().trim_end(), "see attached");
    let part = message.attachment(0).unwrap();
    assert_eq!(part.attachment_name(), Some("scan.png"));
    assert_eq!(part.content_type().unwrap().subtype(), Some("png"));
    assert_eq!(part.contents(), png.as_slice());
    assert!(
        std::fs::read_dir(data.join("pickup"))
            .unwrap()
            .next()
            .is_none(),
        "the Pickup folder is empty again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_with_the_body_from_stdin() {
    let up = Upstream::start(UpstreamConfig {
        implicit_tls: true,
        starttls: false,
        ..UpstreamConfig::default()
    })
    .await;
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "send",
            "--tls",
            "implicit",
            "--port",
            &up.port().to_string(),
            "--ca-file",
            up.ca_path().to_str().unwrap(),
            "--from",
            "a@contoso.com",
            "--to",
            "b@contoso.com",
            "--body-file",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, b"short ASCII body\n")
        .await
        .unwrap();
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let got = up.wait_for_messages(1, Duration::from_secs(10)).await;
    assert!(got[0].tls);
    let raw = String::from_utf8(got[0].content.clone()).unwrap();
    assert!(
        raw.contains("Content-Transfer-Encoding: 7bit\r\n\r\nshort ASCII body\r\n"),
        "{raw}"
    );
}
