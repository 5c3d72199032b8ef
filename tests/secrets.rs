//! Secrets never appear (issue 8): the real `smarthost` binary with an inbound user, an upstream
//! password (PLAIN and LOGIN), an OAuth client secret with the mock token endpoint, and the admin
//! bearer token, run with debug logging (text, then JSON), through successful and failing AUTH on
//! both sides, a failing token request and a bounce. Then every line the relay wrote, every file
//! under its data directory (W3C logs, spool, drop folder with the bounce, Badmail), every admin API
//! answer and `smarthost queue list/show` are searched for each secret and its encoded forms.
#![cfg(unix)]

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::abuse::{RawClient, RelayProcess, Spawn, WAIT};
use common::inbound::{b64, plain, user};
use common::token_endpoint::{CLIENT_ID, CLIENT_SECRET, EndpointConfig, TENANT, TokenEndpoint};
use common::upstream::{Upstream, UpstreamConfig, ValidTokens};
use std::path::Path;
use std::time::Duration;

const IN_USER: &str = "scanner";
const IN_PASS: &str = "Inbound-Pass-4f9c2a7e1b";
/// Wrong passwords a client tried: they are secrets too (often a typo of the real one).
const IN_WRONG: &str = "Inbound-Typo-8d3e6b0c5a";
const UP_USER: &str = "relay@contoso.example";
const UP_PASS: &str = "Upstream-Pass-93b1c7d4e2";
const MAILBOX: &str = "scanner@contoso.example";
const ADMIN_TOKEN: &str = "Admin-Bearer-5e8a1f3c9d7b2a60";
/// A rotated-away client secret the relay still has for one route: the endpoint refuses it.
const OLD_CLIENT_SECRET: &str = "Old~ClientSecret.Rotated_7Hq2Wm9Kx4";

struct Setup {
    endpoint: TokenEndpoint,
    oauth_ok: Upstream,
    oauth_refused: Upstream,
    password_ok: Upstream,
    basic_off: Upstream,
}

async fn setup() -> Setup {
    let valid = ValidTokens::default();
    let endpoint = TokenEndpoint::start(EndpointConfig::default(), &valid).await;
    let oauth_ok =
        Upstream::start(UpstreamConfig::default().with_xoauth2(&valid, &[MAILBOX])).await;
    let oauth_refused = Upstream::start(UpstreamConfig {
        reject_xoauth2: 1_000,
        xoauth2_error_challenge: true,
        ..UpstreamConfig::default().with_xoauth2(&valid, &[MAILBOX])
    })
    .await;
    let password_ok = Upstream::start(
        UpstreamConfig::default()
            .with_credentials(UP_USER, UP_PASS)
            .with_rcpt_reply("nobody@pass.example", "550 5.1.1 User unknown"),
    )
    .await;
    let basic_off = Upstream::start(UpstreamConfig {
        password_auth_reply: Some(
            "535 5.7.139 Authentication unsuccessful, basic authentication is disabled".into(),
        ),
        ..UpstreamConfig::default().with_credentials(UP_USER, UP_PASS)
    })
    .await;
    Setup {
        endpoint,
        oauth_ok,
        oauth_refused,
        password_ok,
        basic_off,
    }
}

fn smtp_route(name: &str, domain: &str, upstream: &Upstream, auth: &str) -> String {
    format!(
        r#"
[[route]]
name = "{name}"
domains = ["{domain}"]
transport = "smtp"
host = "127.0.0.1"
port = {port}
tls = "starttls"
ca_file = "{ca}"
connect_timeout = "2s"
command_timeout = "5s"
{auth}"#,
        port = upstream.port(),
        ca = upstream.ca_path().display(),
    )
}

fn oauth_auth(s: &Setup, secret_file: &str) -> String {
    format!(
        r#"[route.auth]
mechanism = "xoauth2"
username = "{MAILBOX}"
[route.oauth]
tenant = "{TENANT}"
client_id = "{CLIENT_ID}"
token_endpoint = "{url}"
ca_file = "{ca}"
client_secret_file = "{{data}}/{secret_file}"
"#,
        url = s.endpoint.token_url(),
        ca = s.endpoint.ca_path().display(),
    )
}

fn password_auth(mechanism: &str) -> String {
    format!(
        "[route.auth]\nmechanism = \"{mechanism}\"\nusername = \"{UP_USER}\"\npassword_file = \"{{data}}/upstream.pass\"\n"
    )
}

fn config(s: &Setup, json: bool) -> String {
    let mut text = format!(
        r#"
[[listener]]
address = "{{smtp}}"
auth = true
allow_plaintext_auth = true
[queue]
retry = ["1h"]
[logs]
json = {json}
[admin]
enabled = true
address = "{{admin}}"
token_file = "{{data}}/admin.token"
{user}
[[route]]
name = "local"
domains = ["contoso.example"]
transport = "drop"
path = "outbox"
"#,
        user = user(IN_USER, IN_PASS, &[]),
    );
    text.push_str(&smtp_route(
        "m365",
        "oauth.example",
        &s.oauth_ok,
        &oauth_auth(s, "client.secret"),
    ));
    text.push_str(&smtp_route(
        "m365-revoked",
        "oauthfail.example",
        &s.oauth_refused,
        &oauth_auth(s, "client.secret"),
    ));
    text.push_str(&smtp_route(
        "m365-old-secret",
        "badsecret.example",
        &s.oauth_ok,
        &oauth_auth(s, "old-client.secret"),
    ));
    text.push_str(&smtp_route(
        "partner",
        "pass.example",
        &s.password_ok,
        &password_auth("plain"),
    ));
    text.push_str(&smtp_route(
        "partner-login",
        "login.example",
        &s.password_ok,
        &password_auth("login"),
    ));
    text.push_str(&smtp_route(
        "basic-off",
        "passfail.example",
        &s.basic_off,
        &password_auth("login"),
    ));
    text
}

/// The files the test writes secrets into on purpose (the relay reads them).
const SECRET_FILES: &[&str] = &[
    "upstream.pass",
    "client.secret",
    "old-client.secret",
    "admin.token",
];

/// Every secret of the set-up and the forms it travels in.
fn secret_forms(s: &Setup) -> Vec<(String, String)> {
    let mut forms: Vec<(String, String)> = Vec::new();
    let mut add = |what: &str, value: String| forms.push((what.to_string(), value));
    for (name, secret) in [
        ("inbound password", IN_PASS),
        ("inbound wrong password", IN_WRONG),
        ("upstream password", UP_PASS),
        ("client secret", CLIENT_SECRET),
        ("old client secret", OLD_CLIENT_SECRET),
        ("admin token", ADMIN_TOKEN),
    ] {
        add(name, secret.to_string());
        add(&format!("{name} (base64, AUTH LOGIN)"), b64(secret));
        // As an HTML form field (`~` → `%7E`) and with `~` and `.` split off.
        add(
            &format!("{name} (form-encoded)"),
            secret.replace('~', "%7E"),
        );
        let longest = secret
            .split(['~', '.'])
            .max_by_key(|part| part.len())
            .unwrap()
            .to_string();
        if longest.len() >= 12 {
            add(&format!("{name} (a part)"), longest);
        }
    }
    add("inbound PLAIN", plain(IN_USER, IN_PASS));
    add("inbound PLAIN (wrong)", plain(IN_USER, IN_WRONG));
    add(
        "inbound PLAIN with authzid",
        BASE64.encode(format!("{IN_USER}\0{IN_USER}\0{IN_PASS}")),
    );
    add("upstream PLAIN", plain(UP_USER, UP_PASS));
    add(
        "upstream PLAIN with authzid",
        BASE64.encode(format!("{UP_USER}\0{UP_USER}\0{UP_PASS}")),
    );
    let tokens = s.endpoint.issued_tokens();
    assert!(
        !tokens.is_empty(),
        "the endpoint issued no token: the test saw nothing"
    );
    for token in tokens {
        add(
            "XOAUTH2 initial response",
            BASE64.encode(format!("user={MAILBOX}\x01auth=Bearer {token}\x01\x01")),
        );
        add(
            "access token (a stretch)",
            token[token.len() / 3..token.len() / 3 + 32].to_string(),
        );
        add("access token (its start)", token[..32].to_string());
        add("access token", token);
    }
    forms
}

/// Fails on the first secret form found in `text`, naming where.
fn assert_clean(forms: &[(String, String)], place: &str, text: &str) {
    for (what, value) in forms {
        if let Some(at) = text.find(value.as_str()) {
            let start = text[..at]
                .char_indices()
                .rev()
                .nth(120)
                .map_or(0, |(i, _)| i);
            let end = (at + value.len() + 120).min(text.len());
            let end = (end..=text.len())
                .find(|&i| text.is_char_boundary(i))
                .unwrap();
            panic!("{what} found in {place}: ...{}...", &text[start..end]);
        }
    }
}

/// An authenticated client sends one message to every route (and one refused recipient, for a
/// bounce); before that it fails AUTH twice (PLAIN and LOGIN) with a wrong password.
async fn traffic(relay: &RelayProcess) {
    let (mut c, _) = RawClient::connect(relay.smtp, None).await;
    assert!(c.cmd("EHLO scanner1").await.contains("AUTH PLAIN LOGIN"));
    let wrong = c
        .cmd(&format!("AUTH PLAIN {}", plain(IN_USER, IN_WRONG)))
        .await;
    assert!(wrong.starts_with("535"), "{wrong}");
    assert!(c.cmd("AUTH LOGIN").await.starts_with("334"));
    assert!(c.cmd(&b64(IN_USER)).await.starts_with("334"));
    assert!(c.cmd(&b64(IN_WRONG)).await.starts_with("535"));
    // LOGIN pipelined in one write, then PLAIN with an authorisation identity.
    c.send(format!("AUTH LOGIN\r\n{}\r\n{}\r\n", b64(IN_USER), b64(IN_WRONG)).as_bytes())
        .await;
    assert!(c.reply().await.starts_with("334"));
    assert!(c.reply().await.starts_with("334"));
    assert!(c.reply().await.starts_with("535"));
    let ok = c
        .cmd(&format!(
            "AUTH PLAIN {}",
            BASE64.encode(format!("{IN_USER}\0{IN_USER}\0{IN_PASS}"))
        ))
        .await;
    assert_eq!(ok, "235 2.7.0 Authentication successful");
    assert!(
        c.cmd("MAIL FROM:<dev@contoso.example>")
            .await
            .starts_with("250")
    );
    for rcpt in [
        "boss@oauth.example",
        "boss@oauthfail.example",
        "boss@badsecret.example",
        "boss@pass.example",
        "nobody@pass.example",
        "boss@login.example",
        "boss@passfail.example",
    ] {
        let reply = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
        assert!(reply.starts_with("250"), "{rcpt}: {reply}");
    }
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"From: dev@contoso.example\r\nSubject: secrets test\r\n\r\nscan\r\n.\r\n")
        .await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    c.cmd("QUIT").await;
    // A password sent out of turn (no AUTH in progress) is an unknown command, not logged as sent.
    let (mut c, _) = RawClient::connect(relay.smtp, None).await;
    c.cmd("EHLO scanner2").await;
    assert!(c.cmd(IN_PASS).await.starts_with("500"));
    assert!(c.cmd(&b64(IN_PASS)).await.starts_with("500"));
    let unknown = c
        .cmd(&format!("AUTH FOO {}", plain(IN_USER, IN_PASS)))
        .await;
    assert!(unknown.starts_with("504"), "{unknown}");
    // Clients that put the password on the wire unencoded (a broken device): refused, not logged.
    let raw = c.cmd(&format!("AUTH PLAIN {IN_PASS}")).await;
    assert!(raw.starts_with("501"), "{raw}");
    let raw = c.cmd(&format!("AUTH LOGIN {IN_PASS}")).await;
    assert!(raw.starts_with("501"), "{raw}");
    assert!(c.cmd("AUTH LOGIN").await.starts_with("334"));
    assert!(c.cmd(&b64(IN_USER)).await.starts_with("334"));
    let raw = c.cmd(IN_PASS).await;
    assert!(raw.starts_with("501"), "{raw}");
    assert!(c.cmd("AUTH PLAIN").await.starts_with("334"));
    let raw = c.cmd(&format!("{IN_USER} {IN_PASS}")).await;
    assert!(raw.starts_with("501"), "{raw}");
    c.cmd("QUIT").await;
}

async fn get(http: &reqwest::Client, relay: &RelayProcess, path: &str) -> String {
    let response = http
        .get(format!("http://{}{path}", relay.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "GET {path}: {}",
        response.status()
    );
    response.text().await.unwrap()
}

/// Every regular file below `dir` but the ones holding secrets on purpose: (path, text).
fn files_below(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            files_below(&path, out);
        } else if kind.is_file()
            && !SECRET_FILES.contains(&entry.file_name().to_string_lossy().as_ref())
        {
            let bytes = std::fs::read(&path).unwrap();
            out.push((
                path.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }
}

async fn secrets_never_appear(json: bool) {
    let s = setup().await;
    let secret_files = [
        ("upstream.pass", format!("{UP_PASS}\n")),
        ("client.secret", format!("{CLIENT_SECRET}\n")),
        ("old-client.secret", format!("{OLD_CLIENT_SECRET}\n")),
        ("admin.token", format!("{ADMIN_TOKEN}\n")),
    ];
    let files: Vec<(&str, &str)> = secret_files.iter().map(|(n, c)| (*n, c.as_str())).collect();
    let relay = RelayProcess::spawn(Spawn {
        body: &config(&s, json),
        env: &[("SMARTHOST_LOG", "debug"), ("RUST_LOG", "debug")],
        shell_prefix: None,
        files: &files,
    })
    .await;
    traffic(&relay).await;

    // Every route has been tried once: three delivered, one recipient bounced, three deferred
    // (XOAUTH2 refused, the token request refused, basic authentication refused).
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let id = loop {
        let list: serde_json::Value =
            serde_json::from_str(&get(&http, &relay, "/api/v1/queue").await).unwrap();
        let settled = list.as_array().unwrap().first().filter(|m| {
            m["attempts"].as_u64() >= Some(1)
                && m["active"] == false
                && m["recipients"].as_array().unwrap().iter().all(|r| {
                    ["delivered", "failed", "deferred"].contains(&r["state"].as_str().unwrap_or(""))
                })
        });
        if let Some(m) = settled
            && s.oauth_ok.messages().len() == 1
            && s.password_ok.messages().len() == 2
            && relay.eml_files("outbox").len() == 1
        {
            break m["id"].as_str().unwrap().to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled: {list:#}\n{}",
            relay.output().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!s.oauth_refused.auth_attempts().is_empty());
    assert!(!s.basic_off.auth_attempts().is_empty());
    assert!(s.endpoint.requests().iter().any(|r| r.status == 401));
    assert!(s.oauth_ok.messages()[0].auth_user.is_some());

    let mut places: Vec<(String, String)> = Vec::new();
    for path in [
        "/api/v1/status".to_string(),
        "/api/v1/config".into(),
        "/api/v1/routes".into(),
        "/api/v1/upstreams".into(),
        "/api/v1/deliveries".into(),
        "/api/v1/queue".into(),
        format!("/api/v1/queue/{id}"),
        "/api/v1/badmail".into(),
        "/metrics".into(),
    ] {
        let answer = get(&http, &relay, &path).await;
        places.push((format!("admin API GET {path}"), answer));
    }
    // An administrator who mistypes the token, or leaves out `Bearer`: refused without an echo.
    for header in [
        format!("Bearer {ADMIN_TOKEN}-typo"),
        ADMIN_TOKEN.to_string(),
    ] {
        let response = http
            .get(format!("http://{}/api/v1/status", relay.admin))
            .header("authorization", &header)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);
        let headers = format!("{:?}", response.headers());
        let answer = format!("{headers}\n{}", response.text().await.unwrap());
        places.push(("the admin API's refusal of a wrong token".into(), answer));
    }
    for args in [
        vec!["queue", "list"],
        vec!["queue", "list", "--json"],
        vec!["queue", "show", &id],
        vec!["queue", "show", &id, "--json"],
        vec!["badmail", "list"],
    ] {
        let (code, stdout, stderr) = relay.cli(&args).await;
        places.push((
            format!("`smarthost {}` ({code})", args.join(" ")),
            format!("{stdout}\n{stderr}"),
        ));
    }
    let (code, stdout, stderr) = relay.cli(&["reload"]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    places.push(("`smarthost reload`".into(), format!("{stdout}\n{stderr}")));
    let check = tokio::process::Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .arg("check-config")
        .arg(&relay.config)
        .output()
        .await
        .unwrap();
    places.push((
        "`smarthost check-config`".into(),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        ),
    ));
    let show = &places
        .iter()
        .find(|(p, _)| p.contains("queue show"))
        .unwrap()
        .1;
    assert!(show.contains("boss@passfail.example"), "{show}");

    let (output, dir) = relay.stop().await;
    let log = output.join("\n");
    // Debug logging was on, and the failures were logged (so there was something to leak).
    let debug_marker = if json {
        "\"level\":\"DEBUG\""
    } else {
        " DEBUG "
    };
    assert!(log.contains(debug_marker), "no debug lines:\n{log}");
    assert!(log.contains("authentication failed"), "{log}");
    places.push(("the relay's stdout and stderr".into(), log));
    let mut files = Vec::new();
    files_below(dir.path(), &mut files);
    let w3c = files.iter().filter(|(p, _)| p.contains("/logs/")).count();
    assert!(
        w3c >= 1,
        "no W3C log: {:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    let bounce = files
        .iter()
        .find(|(p, _)| p.contains("/outbox/"))
        .expect("the bounce");
    assert!(bounce.1.contains("nobody@pass.example"), "{}", bounce.1);
    places.extend(files);

    let forms = secret_forms(&s);
    for (place, text) in &places {
        assert_clean(&forms, place, text);
    }
}

#[tokio::test]
async fn secrets_never_appear_in_text_logs_files_api_answers_or_cli_output() {
    secrets_never_appear(false).await;
}

#[tokio::test]
async fn secrets_never_appear_with_json_logs() {
    secrets_never_appear(true).await;
}
