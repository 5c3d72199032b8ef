//! `smarthost test upstream` from the outside: the real binary against local SMTP servers over real
//! sockets and TLS. Each test is a situation an administrator meets (a healthy upstream, nothing
//! listening, a banner that is not Microsoft's, STARTTLS stripped, an expired certificate, AUTH
//! refused) and checks the verdicts and explanations printed, and the exit status.

mod common;

use common::certs::TestPki;
use common::standin::{ExpiredPki, closed_port, config_text, plain_auth, route_text};
use common::token_endpoint::{
    CLIENT_ID, CLIENT_SECRET, EndpointConfig, Fail, TENANT, TokenEndpoint,
};
use common::upstream::{Upstream, UpstreamConfig, ValidTokens};
use std::path::Path;
use std::process::Output;

const USER: &str = "relay@contoso.com";
const PASSWORD: &str = "correct horse";

/// Runs `smarthost test upstream --config <file> ARGS` with the configuration `text`.
async fn test_upstream(dir: &Path, text: &str, args: &[&str]) -> Output {
    let file = dir.join("smarthost.toml");
    std::fs::write(&file, text).unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_smarthost"));
    command
        .args(["test", "upstream", "--config"])
        .arg(&file)
        .args(args);
    command.output().await.unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The printed line of step `name` (verdict first), e.g. `  OK    TLS  ...`.
fn step_line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| {
            let mut words = l.split_whitespace();
            let _verdict = words.next();
            let rest: Vec<&str> = words.collect();
            rest.join(" ").starts_with(&format!("{name} "))
        })
        .unwrap_or_else(|| panic!("no step {name:?} in:\n{out}"))
}

fn verdict_of(out: &str, name: &str) -> String {
    step_line(out, name)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

async fn healthy_upstream() -> Upstream {
    Upstream::start(UpstreamConfig::default().with_credentials(USER, PASSWORD)).await
}

fn healthy_config(dir: &Path, up: &Upstream) -> String {
    config_text(
        &dir.join("data"),
        &route_text(
            "m365",
            up.port(),
            up.ca_path(),
            "tls = \"starttls\"",
            &plain_auth(dir, USER, PASSWORD),
        ),
    )
}

#[tokio::test]
async fn a_healthy_upstream_passes_every_step_and_nothing_is_sent() {
    let up = healthy_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let output = test_upstream(dir.path(), &healthy_config(dir.path(), &up), &[]).await;
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    for step in [
        "DNS",
        "TCP connect",
        "Banner",
        "EHLO",
        "STARTTLS",
        "TLS",
        "EHLO after TLS",
        "AUTH",
        "MAIL FROM",
        "RCPT TO",
        "RSET",
    ] {
        assert_eq!(verdict_of(&out, step), "OK", "{step}:\n{out}");
    }
    let tls = step_line(&out, "TLS");
    assert!(
        tls.contains("TLSv1_3") && tls.contains("chain: verified") && tls.contains("days left"),
        "{tls}"
    );
    assert!(
        tls.contains("issuer CN=smarthost test CA"),
        "the certificate's issuer is shown: {tls}"
    );
    assert!(step_line(&out, "AUTH").contains("AUTH PLAIN as relay@contoso.com: 235"));
    assert!(step_line(&out, "EHLO after TLS").contains("AUTH PLAIN LOGIN"));
    assert!(out.contains("Result: PASS"), "{out}");
    assert!(!out.contains(PASSWORD), "the password is never printed");
    assert!(
        up.messages().is_empty(),
        "nothing is delivered without --send"
    );
    let commands = up.commands();
    assert!(commands.iter().any(|c| c == "RSET"), "{commands:?}");
    assert!(!commands.iter().any(|c| c == "DATA"), "{commands:?}");
}

#[tokio::test]
async fn with_send_exactly_one_test_message_is_delivered_and_its_queue_id_shown() {
    let up = healthy_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let output = test_upstream(
        dir.path(),
        &healthy_config(dir.path(), &up),
        &["--send", "--to", "helpdesk@contoso.com"],
    )
    .await;
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert_eq!(verdict_of(&out, "DATA"), "OK", "{out}");
    assert!(
        step_line(&out, "DATA").contains("the upstream's queue id: 1"),
        "{out}"
    );
    let messages = up.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0].recipients, vec!["helpdesk@contoso.com"]);
    assert_eq!(messages[0].sender, USER);
    assert!(messages[0].tls);
    let content = String::from_utf8_lossy(&messages[0].content);
    assert!(
        content.contains("Subject: smarthost test message"),
        "{content}"
    );
}

#[tokio::test]
async fn send_without_a_recipient_is_a_usage_error() {
    let up = healthy_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let output = test_upstream(dir.path(), &healthy_config(dir.path(), &up), &["--send"]).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(up.messages().is_empty());
}

#[tokio::test]
async fn a_closed_port_fails_at_tcp_saying_nothing_listens() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestPki::new();
    let text = config_text(
        &dir.path().join("data"),
        &route_text("up", closed_port(), ca.ca_path(), "tls = \"starttls\"", ""),
    );
    let output = test_upstream(dir.path(), &text, &[]).await;
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    let tcp = step_line(&out, "TCP connect");
    assert!(tcp.starts_with("  FAIL"), "{tcp}");
    assert!(
        tcp.contains("refused") && tcp.contains("nothing listens"),
        "{tcp}"
    );
    assert!(
        out.contains("fix: check the route's host and port"),
        "{out}"
    );
    assert_eq!(verdict_of(&out, "Banner"), "SKIP");
    assert!(step_line(&out, "RCPT TO").contains("not run: TCP connect failed"));
}

#[tokio::test]
async fn a_banner_that_is_not_microsofts_on_an_m365_route_warns_of_interception() {
    let up = Upstream::start(UpstreamConfig {
        greeting: "220 fw.contoso.local ESMTP Firewall SMTP proxy".into(),
        ..UpstreamConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let route = format!(
        "[[route]]\nname = \"direct\"\ndomains = [\"*\"]\nmode = \"m365-direct-send\"\n\
         tenant_domain = \"contoso.com\"\nhost = \"127.0.0.1\"\nport = {}\nca_file = \"{}\"\n\
         connect_timeout = \"3s\"\ncommand_timeout = \"5s\"\n",
        up.port(),
        up.ca_path().display()
    );
    let text = config_text(&dir.path().join("data"), &route);
    let output = test_upstream(dir.path(), &text, &[]).await;
    let out = stdout(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "a warning is not a failure:\n{out}"
    );
    let banner = step_line(&out, "Banner");
    assert!(banner.starts_with("  WARN"), "{banner}");
    assert!(banner.contains("fw.contoso.local"), "{banner}");
    assert!(
        out.contains("something between you and Microsoft intercepts SMTP (antivirus, firewall SMTP inspection)"),
        "{out}"
    );
    assert!(
        step_line(&out, "RCPT TO").contains("smarthost-test@contoso.com"),
        "the placeholder is at the tenant's domain:\n{out}"
    );
}

#[tokio::test]
async fn starttls_missing_fails_with_the_reason() {
    let up = Upstream::start(UpstreamConfig {
        starttls: false,
        ..UpstreamConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        &dir.path().join("data"),
        &route_text("up", up.port(), up.ca_path(), "tls = \"starttls\"", ""),
    );
    let output = test_upstream(dir.path(), &text, &[]).await;
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    let ehlo = step_line(&out, "EHLO");
    assert!(
        ehlo.starts_with("  FAIL") && ehlo.contains("STARTTLS not offered"),
        "{ehlo}"
    );
    assert!(
        out.contains("the route requires STARTTLS") && out.contains("SMTP inspection"),
        "{out}"
    );
    assert_eq!(verdict_of(&out, "TLS"), "SKIP");
    assert!(
        !up.commands().iter().any(|c| c.starts_with("MAIL")),
        "nothing goes in clear"
    );
}

#[tokio::test]
async fn an_expired_certificate_fails_the_chain_as_expired() {
    let pki = ExpiredPki::new();
    let up = Upstream::start_with_tls(
        UpstreamConfig::default(),
        TestPki::new(),
        pki.server_config(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        &dir.path().join("data"),
        &route_text("up", up.port(), pki.ca_path(), "tls = \"starttls\"", ""),
    );
    let output = test_upstream(dir.path(), &text, &[]).await;
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    let tls = step_line(&out, "TLS");
    assert!(tls.starts_with("  FAIL"), "{tls}");
    assert!(
        tls.contains("chain: not verified: expired on 2021-01-01"),
        "{tls}"
    );
    assert!(
        tls.contains("subject CN=localhost"),
        "the certificate is described: {tls}"
    );
    assert!(
        out.contains("certificate has expired: its administrator must renew it"),
        "{out}"
    );
    assert_eq!(verdict_of(&out, "EHLO after TLS"), "SKIP");
}

#[tokio::test]
async fn a_certificate_for_another_name_fails_as_a_name_mismatch() {
    let up = Upstream::start_with_pki(
        UpstreamConfig::default(),
        TestPki::for_names(&["mx.other.test"]),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        &dir.path().join("data"),
        &route_text("up", up.port(), up.ca_path(), "tls = \"starttls\"", ""),
    );
    let output = test_upstream(dir.path(), &text, &[]).await;
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    let tls = step_line(&out, "TLS");
    assert!(
        tls.contains("name mismatch") && tls.contains("mx.other.test"),
        "{tls}"
    );
}

#[tokio::test]
async fn refused_auth_fails_with_the_explanation_from_the_reply_table() {
    for (reply, explanation) in [
        (
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
            "SMTP AUTH is disabled for the mailbox or tenant",
        ),
        (
            "535 5.7.3 Authentication unsuccessful",
            "authentication failed: wrong credentials or token, SMTP AUTH disabled for the mailbox, or MFA/Conditional Access blocks it",
        ),
    ] {
        let up = Upstream::start(UpstreamConfig {
            password_auth_reply: Some(reply.into()),
            ..UpstreamConfig::default().with_credentials(USER, PASSWORD)
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let output = test_upstream(dir.path(), &healthy_config(dir.path(), &up), &[]).await;
        let out = stdout(&output);
        assert_eq!(output.status.code(), Some(1), "{out}");
        let auth = step_line(&out, "AUTH");
        assert!(auth.starts_with("  FAIL") && auth.contains(reply), "{auth}");
        assert!(out.contains(&format!("fix: {explanation}")), "{out}");
        assert_eq!(verdict_of(&out, "MAIL FROM"), "SKIP");
        assert!(!out.contains(PASSWORD));
    }
}

#[tokio::test]
async fn json_output_has_every_step_for_scripts() {
    let up = healthy_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let output = test_upstream(dir.path(), &healthy_config(dir.path(), &up), &["--json"]).await;
    assert_eq!(output.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["passed"], true);
    assert_eq!(report["route"], "m365");
    let steps = report["steps"].as_array().unwrap();
    assert!(steps.iter().all(|s| s["verdict"] == "OK"), "{steps:?}");
    assert!(steps.iter().any(|s| s["name"] == "AUTH"));
    assert!(steps.iter().all(|s| s["elapsed_ms"].is_u64()));
}

/// A route with AUTH XOAUTH2 and a client secret, to `up`, with tokens from `endpoint`.
fn xoauth2_config(dir: &Path, up: &Upstream, endpoint: &TokenEndpoint) -> String {
    let secret = dir.join("client.secret");
    std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).unwrap();
    let auth = format!(
        "[route.auth]\nmechanism = \"xoauth2\"\nusername = \"scanner@contoso.com\"\n\
         [route.oauth]\ntenant = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\n\
         token_endpoint = \"{}\"\nca_file = \"{}\"\nclient_secret_file = \"{}\"\n",
        endpoint.token_url(),
        endpoint.ca_path().display(),
        secret.display()
    );
    config_text(
        &dir.join("data"),
        &route_text(
            "oauth",
            up.port(),
            up.ca_path(),
            "tls = \"starttls\"",
            &auth,
        ),
    )
}

#[tokio::test]
async fn xoauth2_gets_a_token_and_authenticates_without_printing_secrets() {
    let valid = ValidTokens::default();
    let endpoint = TokenEndpoint::start(EndpointConfig::default(), &valid).await;
    let up =
        Upstream::start(UpstreamConfig::default().with_xoauth2(&valid, &["scanner@contoso.com"]))
            .await;
    let dir = tempfile::tempdir().unwrap();
    let output = test_upstream(dir.path(), &xoauth2_config(dir.path(), &up, &endpoint), &[]).await;
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    let token = step_line(&out, "OAuth token");
    assert!(
        token.starts_with("  OK") && token.contains("valid for"),
        "{token}"
    );
    assert!(step_line(&out, "AUTH").contains("AUTH XOAUTH2 as scanner@contoso.com: 235"));
    let issued = endpoint.issued_access_tokens();
    assert_eq!(issued.len(), 1);
    assert!(
        !out.contains(&issued[0]),
        "the access token is never printed"
    );
    assert!(
        !out.contains(CLIENT_SECRET),
        "the client secret is never printed"
    );
}

#[tokio::test]
async fn a_refused_client_secret_fails_the_token_step_and_skips_auth() {
    let valid = ValidTokens::default();
    let endpoint = TokenEndpoint::start(
        EndpointConfig {
            fail: Some(Fail::InvalidClient),
            ..EndpointConfig::default()
        },
        &valid,
    )
    .await;
    let up =
        Upstream::start(UpstreamConfig::default().with_xoauth2(&valid, &["scanner@contoso.com"]))
            .await;
    let dir = tempfile::tempdir().unwrap();
    let output = test_upstream(dir.path(), &xoauth2_config(dir.path(), &up, &endpoint), &[]).await;
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    let token = step_line(&out, "OAuth token");
    assert!(
        token.starts_with("  FAIL") && token.contains("AADSTS7000215"),
        "{token}"
    );
    assert!(out.contains("Entra ID refused the credentials"), "{out}");
    assert!(step_line(&out, "AUTH").contains("not run: OAuth token failed"));
    assert!(!out.contains(CLIENT_SECRET));
}

#[tokio::test]
async fn a_graph_route_gets_a_token_reaches_graph_and_sends_only_with_send() {
    use common::graph_mock::{self, GraphMock};
    let graph = GraphMock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("graph.secret");
    std::fs::write(&secret, format!("{}\n", graph_mock::CLIENT_SECRET)).unwrap();
    let route = format!(
        "[[route]]\nname = \"graph\"\ndomains = [\"*\"]\nmode = \"m365-graph\"\n\
         mailbox = \"{}\"\ngraph_base_url = \"{}\"\nca_file = \"{}\"\ntimeout = \"5s\"\n\
         [route.oauth]\ntenant = \"{}\"\nclient_id = \"{}\"\ntoken_endpoint = \"{}\"\n\
         client_secret_file = \"{}\"\n",
        graph_mock::MAILBOX,
        graph.base_url(),
        graph.ca_path().display(),
        graph_mock::TENANT,
        graph_mock::CLIENT_ID,
        graph.token_endpoint(),
        secret.display()
    );
    let text = config_text(&dir.path().join("data"), &route);
    let output = test_upstream(dir.path(), &text, &[]).await;
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    for step in ["DNS", "OAuth token", "Graph reachability"] {
        assert_eq!(verdict_of(&out, step), "OK", "{step}:\n{out}");
    }
    assert!(out.contains("proven only by sending"), "{out}");
    assert!(graph.messages().is_empty());
    assert!(!out.contains(graph_mock::CLIENT_SECRET));

    let output = test_upstream(dir.path(), &text, &["--send", "--to", "it@contoso.example"]).await;
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert_eq!(verdict_of(&out, "sendMail"), "OK", "{out}");
    assert_eq!(graph.messages().len(), 1);
}

#[tokio::test]
async fn implicit_tls_is_tested_before_the_banner() {
    let up = Upstream::start(UpstreamConfig {
        implicit_tls: true,
        starttls: false,
        ..UpstreamConfig::default().with_credentials(USER, PASSWORD)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        &dir.path().join("data"),
        &route_text(
            "smtps",
            up.port(),
            up.ca_path(),
            "tls = \"implicit\"",
            &plain_auth(dir.path(), USER, PASSWORD),
        ),
    );
    let output = test_upstream(dir.path(), &text, &[]).await;
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    let names: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("  OK"))
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "DNS", "TCP", "TLS", "Banner", "EHLO", "AUTH", "MAIL", "RCPT", "RSET"
        ],
        "{out}"
    );
    assert!(step_line(&out, "TLS").contains("chain: verified"));
}
