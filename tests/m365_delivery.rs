//! Delivery end to end through the Microsoft 365 presets whose endpoints we cannot reach from here:
//! the preset's host and port are overridden to point at a local stand-in, everything else (TLS rules,
//! client certificate, authentication) is the preset's.

mod common;

use common::client::Client;
use common::upstream::{Upstream, UpstreamConfig};
use smarthost::cli::serve::{Running, start};
use smarthost::config::load_str;
use std::path::Path;
use std::time::Duration;

async fn relay(dir: &Path, route: &str) -> Running {
    let text = format!(
        r#"
data_dir = "{}"
hostname = "relay.contoso.example"
[[listener]]
address = "127.0.0.1:0"
relay_from = ["127.0.0.1"]
[queue]
retry = ["1s"]
{route}
"#,
        dir.display()
    );
    start(load_str(&text, "test.toml").expect("config"))
        .await
        .expect("relay starts")
}

async fn send(relay: &Running, from: &str, to: &str) -> String {
    let (mut c, _) = Client::connect(relay.local_addrs[0]).await;
    c.cmd("EHLO mfp").await;
    c.cmd(&format!("MAIL FROM:<{from}>")).await;
    let rcpt = c.cmd(&format!("RCPT TO:<{to}>")).await;
    if !rcpt.starts_with("250") {
        return rcpt;
    }
    c.cmd("DATA").await;
    c.send(
        format!("From: Scanner <{from}>\r\nTo: <{to}>\r\nSubject: scan\r\n\r\nscan\r\n.\r\n")
            .as_bytes(),
    )
    .await;
    let reply = c.reply().await;
    c.cmd("QUIT").await;
    reply
}

#[tokio::test]
async fn connector_presents_its_client_certificate_over_required_starttls() {
    let pki = common::certs::TestPki::new();
    let (cert, key, der) = pki.client_cert_files(&["contoso.example"]);
    let server_config = pki.server_config_asking_client_cert();
    let upstream = Upstream::start_with_tls(UpstreamConfig::default(), pki, server_config).await;
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(
        dir.path(),
        &format!(
            r#"
[[route]]
name = "connector"
domains = ["*"]
mode = "m365-connector"
host = "localhost"
port = {}
ca_file = "{}"
accepted_domains = ["contoso.example"]
client_certificate = "{}"
client_private_key = "{}"
"#,
            upstream.port(),
            upstream.ca_path().display(),
            cert.path().display(),
            key.path().display()
        ),
    )
    .await;
    let reply = send(
        &relay,
        "printer@fabrikam.example",
        "someone@internet.example",
    )
    .await;
    assert!(reply.starts_with("250"), "{reply}");
    let messages = upstream.wait_for_messages(1, Duration::from_secs(20)).await;
    assert!(messages[0].tls, "a connector requires TLS");
    assert_eq!(
        upstream.client_certs(),
        vec![der],
        "the client certificate was presented"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn direct_send_delivers_to_the_tenant_and_refuses_other_domains_at_rcpt() {
    let upstream = Upstream::start(UpstreamConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(
        dir.path(),
        &format!(
            r#"
[[route]]
name = "direct"
domains = ["*"]
mode = "m365-direct-send"
tenant_domain = "contoso.example"
host = "localhost"
port = {}
ca_file = "{}"
"#,
            upstream.port(),
            upstream.ca_path().display()
        ),
    )
    .await;
    let refused = send(&relay, "scanner@contoso.example", "friend@gmail.example").await;
    assert!(refused.starts_with("550 5.7.1"), "{refused}");
    assert!(refused.contains("Direct Send"), "{refused}");
    let reply = send(&relay, "scanner@contoso.example", "boss@contoso.example").await;
    assert!(reply.starts_with("250"), "{reply}");
    let messages = upstream.wait_for_messages(1, Duration::from_secs(20)).await;
    assert_eq!(messages[0].recipients, vec!["boss@contoso.example"]);
    assert!(messages[0].tls, "opportunistic TLS is used when offered");
    assert_eq!(
        messages[0].auth_user, None,
        "Direct Send does not authenticate"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn hve_and_client_submission_authenticate_and_rewrite_the_sender() {
    let upstream = Upstream::start(UpstreamConfig {
        enforce_send_as: true,
        ..UpstreamConfig::default().with_credentials("hve@contoso.example", "hve-pw")
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "hve-pw").unwrap();
    let relay = relay(
        dir.path(),
        &format!(
            r#"
[[route]]
name = "hve"
domains = ["*"]
mode = "m365-hve"
host = "localhost"
port = {}
ca_file = "{}"
rewrite_sender = "hve@contoso.example"
[route.auth]
mechanism = "login"
username = "hve@contoso.example"
password_file = "{}"
"#,
            upstream.port(),
            upstream.ca_path().display(),
            dir.path().join("pw").display()
        ),
    )
    .await;
    // The device's own address is not the mailbox: without rewriting, 550 5.7.60 SendAsDenied.
    let reply = send(
        &relay,
        "mfp-3rd-floor@contoso.example",
        "team@contoso.example",
    )
    .await;
    assert!(reply.starts_with("250"), "{reply}");
    let messages = upstream.wait_for_messages(1, Duration::from_secs(20)).await;
    let m = &messages[0];
    assert_eq!(m.sender, "hve@contoso.example");
    assert_eq!(m.auth_user.as_deref(), Some("hve@contoso.example"));
    let text = String::from_utf8_lossy(&m.content);
    assert!(
        text.contains("From: Scanner <hve@contoso.example>\r\n"),
        "{text}"
    );
    assert!(
        text.contains("Reply-To: Scanner <mfp-3rd-floor@contoso.example>\r\n")
            || text.contains("Reply-To: <mfp-3rd-floor@contoso.example>\r\n")
            || text.contains("Reply-To: mfp-3rd-floor@contoso.example\r\n"),
        "{text}"
    );
    relay.shutdown().await;
}
