//! The W3C extended log (IIS SMTP's format): a known session through the real relay to a test
//! upstream (STARTTLS, AUTH LOGIN), then the log file read the way the administrators' PowerShell
//! reads IIS's (`#Software`/`#Version`/`#Date` dropped, header from `#Fields:`, split on single
//! spaces), every field of the interesting lines checked, and `smarthost logs export` checked.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::client::Client;
use common::upstream::{Upstream, UpstreamConfig};
use smarthost::cli::serve::start;
use smarthost::config::load_str;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

const USER: &str = "relay@contoso.example";
const PASSWORD: &str = "Corr3ct-Horse-Battery";
/// What a device might send as AUTH PLAIN on a listener without AUTH: must never be logged.
const CLIENT_PASSWORD: &str = "Dev1ce-Secret-42";
const WAIT: Duration = Duration::from_secs(20);
const BODY: &str = "Subject: Scan 0042\r\n\r\nhello\r\n";

fn config_text(data_dir: &Path, upstream: &Upstream) -> String {
    let password_file = data_dir.join("upstream.pass");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    format!(
        r#"
data_dir = "{data}"
hostname = "relay.test"
[[listener]]
address = "127.0.0.1:0"
relay_from = ["127.0.0.1"]
[logs]
retention_days = 30
{route}"#,
        data = data_dir.display(),
        route = upstream.route_toml(
            "upstream",
            "transport = \"smtp\"\nconnect_timeout = \"2s\"\ncommand_timeout = \"5s\"",
            USER,
            &password_file,
        ),
    )
}

/// One parsed log: the header from `#Fields:` and the rows, as the seed's PowerShell gets them.
struct Log {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Log {
    /// Every `smtpsvc-*.log` in `dir`, in name order, read like `Get-Content | where {$_ -notLike
    /// "#[D,S-V]*"}`, the first remaining line minus `#Fields: ` as the header, other `#F` lines
    /// dropped, `ConvertFrom-Csv -Delimiter ' '`.
    fn read(dir: &Path) -> (Log, String) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("smtpsvc-") && n.ends_with(".log"))
            .collect();
        names.sort();
        assert!(!names.is_empty(), "no log file in {}", dir.display());
        let mut text = String::new();
        for name in &names {
            text.push_str(&std::fs::read_to_string(dir.join(name)).unwrap());
        }
        let mut kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                !(l.starts_with('#')
                    && l[1..]
                        .starts_with(|c: char| c == 'D' || c == ',' || ('S'..='V').contains(&c)))
            })
            .collect();
        assert!(kept[0].starts_with("#Fields: "), "{}", kept[0]);
        let header: Vec<String> = kept
            .remove(0)
            .trim_start_matches("#Fields: ")
            .split(' ')
            .map(String::from)
            .collect();
        let rows = kept
            .into_iter()
            .filter(|l| !l.starts_with("#F"))
            .map(|l| l.split(' ').map(String::from).collect())
            .collect();
        (Log { header, rows }, text)
    }

    fn record(&self, row: &[String]) -> HashMap<String, String> {
        self.header
            .iter()
            .cloned()
            .zip(row.iter().cloned())
            .collect()
    }

    fn records(&self) -> Vec<HashMap<String, String>> {
        self.rows.iter().map(|r| self.record(r)).collect()
    }
}

/// Checks the fields every line has whatever its kind.
fn check_common(r: &HashMap<String, String>) {
    let date = &r["date"];
    assert!(
        date.len() == 10 && date.as_bytes()[4] == b'-' && date.as_bytes()[7] == b'-',
        "{r:?}"
    );
    let time = &r["time"];
    assert!(
        time.len() == 8 && time.as_bytes()[2] == b':' && time.as_bytes()[5] == b':',
        "{r:?}"
    );
    assert_eq!(r["c-ip"], "127.0.0.1", "{r:?}");
    assert_eq!(r["s-sitename"], "SMTPSVC1", "{r:?}");
    assert_eq!(r["s-computername"], "relay.test", "{r:?}");
    assert_eq!(r["cs-uri-stem"], "-", "{r:?}");
    assert_eq!(r["sc-win32-status"], "0", "{r:?}");
    assert!(r["time-taken"].parse::<u64>().is_ok(), "{r:?}");
    assert_eq!(r["cs-version"], "SMTP", "{r:?}");
    for field in ["cs-host", "cs(User-Agent)", "cs(Cookie)", "cs(Referer)"] {
        assert_eq!(r[field], "-", "{field}: {r:?}");
    }
}

/// The bytes of a reply as `Client::reply` returns it ("250-a\n250 b"), on the wire.
fn wire_len(reply: &str) -> usize {
    reply.lines().map(|l| l.len() + 2).sum()
}

fn csv_rows(text: &str) -> Vec<Vec<String>> {
    text.split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| {
            assert!(l.starts_with('"') && l.ends_with('"'), "{l}");
            l[1..l.len() - 1].split("\",\"").map(String::from).collect()
        })
        .collect()
}

fn export(data_dir: &Path, args: &[&str]) -> Vec<Vec<String>> {
    let out = data_dir.join("export.csv");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .args(["logs", "export", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .arg("--csv")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "{args:?}: {status}");
    csv_rows(&std::fs::read_to_string(&out).unwrap())
}

#[tokio::test]
async fn a_session_and_its_delivery_are_logged_as_iis_does() {
    let upstream =
        Upstream::start(UpstreamConfig::default().with_credentials(USER, PASSWORD)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = load_str(&config_text(dir.path(), &upstream), "test.toml").expect("config");
    assert!(config.logs.w3c && !config.logs.json);
    assert_eq!(config.logs.retention_days, 30);
    let relay = start(config).await.expect("relay starts");

    let plain = BASE64.encode(format!("\0device\0{CLIENT_PASSWORD}"));
    let (mut c, _) = Client::connect(relay.local_addrs[0]).await;
    let ehlo = c.cmd("EHLO scanner1").await;
    assert!(ehlo.starts_with("250"), "{ehlo}");
    let auth = c.cmd(&format!("AUTH PLAIN {plain}")).await;
    assert!(auth.starts_with("502"), "{auth}");
    let mail = c.cmd("MAIL FROM:<scanner@contoso.example>").await;
    assert!(mail.starts_with("250"), "{mail}");
    let rcpt = c.cmd("RCPT TO:<boss@example.com>").await;
    assert!(rcpt.starts_with("250"), "{rcpt}");
    let go_ahead = c.cmd("DATA").await;
    assert!(go_ahead.starts_with("354"), "{go_ahead}");
    c.send(format!("{BODY}.\r\n").as_bytes()).await;
    let queued = c.reply().await;
    assert!(queued.starts_with("250 2.0.0 OK queued as"), "{queued}");
    let quit = c.cmd("QUIT").await;
    assert!(quit.starts_with("221"), "{quit}");

    assert_eq!(upstream.wait_for_messages(1, WAIT).await.len(), 1);
    // The upstream's final reply reaches the log once the attempt is recorded; shutdown flushes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.shutdown().await;

    let logs = dir.path().join("logs");
    let (log, text) = Log::read(&logs);
    assert_eq!(
        log.header.join(" "),
        smarthost::logs::w3c::FIELDS,
        "header from #Fields:"
    );
    assert_eq!(log.header.len(), 21);
    assert!(text.starts_with("#Software: smarthost "), "{text}");
    assert!(text.contains("\n#Version: 1.0\n#Date: "), "{text}");
    for row in &log.rows {
        assert_eq!(row.len(), log.header.len(), "column count: {row:?}");
    }
    for secret in [
        PASSWORD.to_string(),
        BASE64.encode(PASSWORD),
        BASE64.encode(USER),
        CLIENT_PASSWORD.to_string(),
        plain.clone(),
        "<redacted>".to_string(),
    ] {
        assert!(!text.contains(&secret), "{secret} in the log:\n{text}");
    }

    let records = log.records();
    let (outbound, inbound): (Vec<_>, Vec<_>) = records
        .iter()
        .partition(|r| r["cs-username"].starts_with("OutboundConnection"));
    for r in &records {
        check_common(r);
    }

    // Inbound: one line per command, with our reply.
    let methods: Vec<&str> = inbound.iter().map(|r| r["cs-method"].as_str()).collect();
    assert_eq!(
        methods,
        ["EHLO", "AUTH", "MAIL", "RCPT", "DATA", "QUIT"],
        "{text}"
    );
    let line = |method: &str| *inbound.iter().find(|r| r["cs-method"] == method).unwrap();
    let expect = |r: &HashMap<String, String>, query: &str, status: &str, sc: usize, cs: usize| {
        assert_eq!(r["cs-username"], "scanner1", "{r:?}");
        assert_eq!(r["s-ip"], "127.0.0.1", "{r:?}");
        assert_eq!(r["s-port"], "0", "{r:?}");
        assert_eq!(r["cs-uri-query"], query, "{r:?}");
        assert_eq!(r["sc-status"], status, "{r:?}");
        assert_eq!(r["sc-bytes"], sc.to_string(), "sc-bytes {r:?}");
        assert_eq!(r["cs-bytes"], cs.to_string(), "cs-bytes {r:?}");
    };
    expect(
        line("EHLO"),
        "+scanner1",
        "250",
        wire_len(&ehlo),
        "EHLO scanner1\r\n".len(),
    );
    expect(
        line("AUTH"),
        "+PLAIN",
        "502",
        wire_len(&auth),
        format!("AUTH PLAIN {plain}\r\n").len(),
    );
    expect(
        line("MAIL"),
        "+FROM:<scanner@contoso.example>",
        "250",
        wire_len(&mail),
        "MAIL FROM:<scanner@contoso.example>\r\n".len(),
    );
    expect(
        line("RCPT"),
        "+TO:<boss@example.com>",
        "250",
        wire_len(&rcpt),
        "RCPT TO:<boss@example.com>\r\n".len(),
    );
    expect(
        line("DATA"),
        "-",
        "250",
        wire_len(&go_ahead) + wire_len(&queued),
        "DATA\r\n".len() + BODY.len(),
    );
    expect(line("QUIT"), "-", "221", wire_len(&quit), "QUIT\r\n".len());

    // Outbound: the upstream's replies and our commands, in order.
    let port = upstream.port().to_string();
    for r in &outbound {
        assert_eq!(r["s-ip"], "-", "{r:?}");
        assert_eq!(r["s-port"], port, "{r:?}");
        assert_eq!(r["sc-status"], "0", "{r:?}");
    }
    let greeting = outbound[0];
    assert_eq!(greeting["cs-username"], "OutboundConnectionResponse");
    assert_eq!(greeting["cs-method"], "-");
    assert_eq!(
        greeting["cs-uri-query"],
        "220+upstream.test+ESMTP+test+upstream"
    );
    assert_eq!(
        greeting["sc-bytes"],
        "220 upstream.test ESMTP test upstream\r\n"
            .len()
            .to_string()
    );
    assert_eq!(greeting["cs-bytes"], "0");

    let commands: Vec<(&str, &str)> = outbound
        .iter()
        .filter(|r| r["cs-username"] == "OutboundConnectionCommand")
        .map(|r| (r["cs-method"].as_str(), r["cs-uri-query"].as_str()))
        .collect();
    assert!(commands.len() >= 7, "{commands:?}");
    assert_eq!(commands[0], ("EHLO", "relay.test"));
    assert_eq!(commands[1], ("STARTTLS", "-"));
    assert_eq!(commands[2], ("EHLO", "relay.test"));
    assert_eq!(commands[3], ("AUTH", "LOGIN"), "mechanism only");
    assert_eq!(commands[4].0, "MAIL");
    assert!(
        commands[4]
            .1
            .starts_with("FROM:<scanner@contoso.example>+SIZE="),
        "{commands:?}"
    );
    assert_eq!(commands[5], ("RCPT", "TO:<boss@example.com>"));
    assert_eq!(commands[6], ("DATA", "-"));
    for r in outbound
        .iter()
        .filter(|r| r["cs-username"] == "OutboundConnectionCommand")
    {
        // IIS's shape: sc-bytes is the verb's length, cs-bytes and time-taken 0.
        assert_eq!(r["sc-bytes"], r["cs-method"].len().to_string(), "{r:?}");
        assert_eq!(r["cs-bytes"], "0", "{r:?}");
        assert_eq!(r["time-taken"], "0", "{r:?}");
    }
    let responses: Vec<&str> = outbound
        .iter()
        .filter(|r| r["cs-username"] == "OutboundConnectionResponse")
        .map(|r| r["cs-uri-query"].as_str())
        .collect();
    assert!(
        responses.contains(&"220+2.0.0+Ready+to+start+TLS"),
        "{responses:?}"
    );
    // Replies during AUTH: the code only (challenges could carry anything).
    assert!(responses.contains(&"334"), "{responses:?}");
    assert!(responses.contains(&"235"), "{responses:?}");
    assert!(responses.contains(&"250+2.1.0+Sender+OK"), "{responses:?}");
    assert!(
        responses.contains(&"250+2.1.5+Recipient+OK"),
        "{responses:?}"
    );
    assert!(
        responses.contains(&"354+Start+mail+input;+end+with+<CRLF>.<CRLF>"),
        "{responses:?}"
    );
    assert!(
        responses
            .iter()
            .any(|r| r.starts_with("250+2.0.0+OK+queued+as+")),
        "{responses:?}"
    );

    // CSV export: header and every row, then the outbound lines only, then an empty range.
    let today = &log.rows[0][0];
    let rows = export(dir.path(), &["--since", &format!("{today} 00:00")]);
    assert_eq!(rows[0], log.header);
    assert_eq!(rows.len() - 1, log.rows.len());
    assert_eq!(&rows[1..], &log.rows[..]);
    let rows = export(
        dir.path(),
        &["--since", today, "--until", today, "--outbound"],
    );
    assert_eq!(rows[0], log.header);
    assert_eq!(rows.len() - 1, outbound.len());
    assert!(
        rows[1..]
            .iter()
            .all(|r| r[3].starts_with("OutboundConnection")),
        "{rows:?}"
    );
    let rows = export(
        dir.path(),
        &["--since", "2000-01-01", "--until", "2000-01-02"],
    );
    assert_eq!(rows, vec![log.header.clone()]);
}

#[tokio::test]
async fn w3c_false_writes_no_log() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = \"{}\"\nhostname = \"relay.test\"\n[[listener]]\naddress = \"127.0.0.1:0\"\nrelay_from = [\"127.0.0.1\"]\n[logs]\nw3c = false\n[[route]]\nname = \"out\"\ndomains = [\"*\"]\ntransport = \"drop\"\n",
        dir.path().display()
    );
    let relay = start(load_str(&text, "test.toml").expect("config"))
        .await
        .unwrap();
    let (mut c, _) = Client::connect(relay.local_addrs[0]).await;
    assert!(c.cmd("EHLO scanner1").await.starts_with("250"));
    c.cmd("QUIT").await;
    relay.shutdown().await;
    assert!(!dir.path().join("logs").exists());
}

#[test]
fn logs_keys_are_checked_with_their_line() {
    let base = "[[listener]]\naddress = \"127.0.0.1:2525\"\n[[route]]\nname = \"out\"\ndomains = [\"*\"]\ntransport = \"drop\"\n";
    for (logs, line, message) in [
        ("[logs]\nw3c = \"yes\"\n", 2, "`logs.w3c`"),
        ("[logs]\nretention_days = -1\n", 2, "`logs.retention_days`"),
        ("[logs]\nrotate = \"daily\"\n", 2, "unknown key `rotate`"),
    ] {
        let err = load_str(&format!("{logs}{base}"), "t.toml")
            .err()
            .unwrap_or_else(|| panic!("{logs} accepted"))
            .to_string();
        assert!(err.contains(&format!("t.toml:{line}:")), "{err}");
        assert!(err.contains(message), "{err}");
    }
    let config = load_str(
        &format!("[logs]\nw3c = false\njson = true\nretention_days = 0\n{base}"),
        "t.toml",
    )
    .unwrap();
    assert_eq!(
        config.logs,
        smarthost::config::LogsConfig {
            w3c: false,
            json: true,
            retention_days: 0
        }
    );
}
