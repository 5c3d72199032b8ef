//! The SMTP client transport against the test upstream: one test per behaviour.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::certs::TestPki;
use common::upstream::{Upstream, UpstreamConfig};
use smarthost::config::{AuthMechanism, SmtpRoute, TlsMode};
use smarthost::deliver::smtp::SmtpTransport;
use smarthost::deliver::{OutboundMessage, RecipientResult};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(5);
const USER: &str = "relay@contoso.example";
const PASSWORD: &str = "Sup3r-S3cret!pw";

/// Content with every dot-stuffing case: a leading dot, two dots, a line that is only a dot,
/// a dot at the very start of the content.
const TRICKY: &[u8] = b".starts with a dot\r\nSubject: dots\r\n\r\n.leading\r\n..two\r\n.\r\nmiddle . dot\r\n.\r\nend\r\n";

fn rcpts(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn message<'a>(recipients: &'a [String], content: &'a [u8]) -> OutboundMessage<'a> {
    OutboundMessage {
        queue_id: "TESTQ1",
        sender: "scanner@contoso.example",
        recipients,
        content,
        smtputf8: false,
        eight_bit: false,
    }
}

fn transport(route: &SmtpRoute) -> SmtpTransport {
    SmtpTransport::new(route, "relay.test".into()).expect("transport")
}

async fn deliver(route: &SmtpRoute, recipients: &[&str], content: &[u8]) -> Vec<RecipientResult> {
    let recipients = rcpts(recipients);
    transport(route)
        .deliver(&message(&recipients, content))
        .await
}

fn authenticated_upstream() -> UpstreamConfig {
    UpstreamConfig::default().with_credentials(USER, PASSWORD)
}

fn reason(result: &RecipientResult) -> &str {
    match result {
        RecipientResult::Delivered { reply } => reply,
        RecipientResult::Deferred { reason } | RecipientResult::Failed { reason } => reason,
    }
}

#[track_caller]
fn assert_delivered(result: &RecipientResult) {
    assert!(
        matches!(result, RecipientResult::Delivered { .. }),
        "{result:?}"
    );
}

#[track_caller]
fn assert_deferred(result: &RecipientResult, fragments: &[&str]) {
    assert!(
        matches!(result, RecipientResult::Deferred { .. }),
        "{result:?}"
    );
    for f in fragments {
        assert!(reason(result).contains(f), "{f:?} not in {result:?}");
    }
}

#[track_caller]
fn assert_failed(result: &RecipientResult, fragments: &[&str]) {
    assert!(
        matches!(result, RecipientResult::Failed { .. }),
        "{result:?}"
    );
    for f in fragments {
        assert!(reason(result).contains(f), "{f:?} not in {result:?}");
    }
}

#[tokio::test]
async fn starttls_auth_login_delivers_content_byte_exact() {
    let up = Upstream::start(authenticated_upstream()).await;
    let route = up.route_with_auth(TlsMode::StartTls, AuthMechanism::Login, USER, PASSWORD);
    let results = deliver(
        &route,
        &["a@fabrikam.example", "b@fabrikam.example"],
        TRICKY,
    )
    .await;
    assert_eq!(results.len(), 2);
    let peer = format!("127.0.0.1[127.0.0.1]:{}", up.port());
    for r in &results {
        assert_delivered(r);
        assert!(
            reason(r).contains(&peer) && reason(r).contains("said \"250 2.0.0 OK"),
            "{r:?}"
        );
    }
    let got = up.wait_for_messages(1, WAIT).await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.content, TRICKY);
    assert_eq!(m.sender, "scanner@contoso.example");
    assert_eq!(
        m.recipients,
        rcpts(&["a@fabrikam.example", "b@fabrikam.example"])
    );
    assert!(m.tls);
    assert_eq!(m.auth_user.as_deref(), Some(USER));
    assert!(auth_only_after_starttls(&up.commands()));
}

/// No credentials went over the wire before TLS.
fn auth_only_after_starttls(commands: &[String]) -> bool {
    let starttls = commands
        .iter()
        .position(|c| c == "STARTTLS")
        .expect("STARTTLS sent");
    commands[..starttls].iter().all(|c| !c.starts_with("AUTH"))
}

#[tokio::test]
async fn starttls_auth_plain_delivers() {
    let up = Upstream::start(authenticated_upstream()).await;
    let route = up.route_with_auth(TlsMode::StartTls, AuthMechanism::Plain, USER, PASSWORD);
    let results = deliver(&route, &["a@fabrikam.example"], TRICKY).await;
    assert_delivered(&results[0]);
    let got = up.wait_for_messages(1, WAIT).await;
    assert_eq!(got[0].content, TRICKY);
    assert_eq!(got[0].auth_user.as_deref(), Some(USER));
    assert!(
        up.commands().iter().any(|c| c.starts_with("AUTH PLAIN ")),
        "initial response sent with AUTH PLAIN"
    );
}

#[tokio::test]
async fn pipelining_sends_the_envelope_in_one_write() {
    let up = Upstream::start(UpstreamConfig::default()).await;
    let results = deliver(
        &up.route(TlsMode::StartTls),
        &["a@x.example", "b@x.example", "c@x.example"],
        TRICKY,
    )
    .await;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, RecipientResult::Delivered { .. })),
        "{results:?}"
    );
    let got = up.wait_for_messages(1, WAIT).await;
    assert!(
        got[0].pipelined,
        "MAIL, RCPT and DATA should arrive together"
    );
    assert_eq!(got[0].mail_params, vec![format!("SIZE={}", TRICKY.len())]);
}

#[tokio::test]
async fn without_pipelining_commands_go_one_at_a_time() {
    let up = Upstream::start(UpstreamConfig {
        pipelining: false,
        ..Default::default()
    })
    .await;
    let results = deliver(
        &up.route(TlsMode::StartTls),
        &["a@x.example", "b@x.example"],
        TRICKY,
    )
    .await;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, RecipientResult::Delivered { .. })),
        "{results:?}"
    );
    let got = up.wait_for_messages(1, WAIT).await;
    assert!(!got[0].pipelined);
    assert_eq!(got[0].content, TRICKY);
}

#[tokio::test]
async fn eight_bit_content_is_announced_with_body_8bitmime() {
    let up = Upstream::start(UpstreamConfig::default()).await;
    let recipients = rcpts(&["a@x.example"]);
    let content = "Subject: caf\u{e9}\r\n\r\nna\u{ef}ve\r\n".as_bytes();
    let msg = OutboundMessage {
        eight_bit: true,
        ..message(&recipients, content)
    };
    let results = transport(&up.route(TlsMode::StartTls)).deliver(&msg).await;
    assert_delivered(&results[0]);
    let got = up.wait_for_messages(1, WAIT).await;
    assert!(
        got[0].mail_params.contains(&"BODY=8BITMIME".to_string()),
        "{:?}",
        got[0].mail_params
    );
    assert_eq!(got[0].content, content);
}

#[tokio::test]
async fn untrusted_certificate_defers() {
    let up = Upstream::start(UpstreamConfig::default()).await;
    let route = SmtpRoute {
        ca_file: None,
        ..up.route(TlsMode::StartTls)
    };
    let results = deliver(&route, &["a@x.example"], TRICKY).await;
    assert_deferred(
        &results[0],
        &[
            "TLS handshake failed",
            "certificate",
            &up.port().to_string(),
        ],
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(up.messages().is_empty());
}

#[tokio::test]
async fn certificate_for_another_name_defers() {
    let up = Upstream::start_with_pki(
        UpstreamConfig::default(),
        TestPki::for_names(&["other.example"]),
    )
    .await;
    let results = deliver(&up.route(TlsMode::StartTls), &["a@x.example"], TRICKY).await;
    assert_deferred(&results[0], &["TLS handshake failed", "certificate"]);
    assert!(up.messages().is_empty());
}

#[tokio::test]
async fn opportunistic_tls_still_verifies_the_certificate() {
    let up = Upstream::start(UpstreamConfig::default()).await;
    let route = SmtpRoute {
        ca_file: None,
        ..up.route(TlsMode::Opportunistic)
    };
    let results = deliver(&route, &["a@x.example"], TRICKY).await;
    assert_deferred(&results[0], &["TLS handshake failed"]);
    assert!(up.messages().is_empty());
}

#[tokio::test]
async fn starttls_required_but_not_offered_defers() {
    let up = Upstream::start(UpstreamConfig {
        starttls: false,
        ..Default::default()
    })
    .await;
    let results = deliver(
        &up.route(TlsMode::StartTls),
        &["a@x.example", "b@x.example"],
        TRICKY,
    )
    .await;
    for r in &results {
        assert_deferred(r, &["STARTTLS is required", "did not offer it"]);
    }
    assert!(up.messages().is_empty());
}

#[tokio::test]
async fn opportunistic_tls_goes_plain_when_not_offered() {
    let up = Upstream::start(UpstreamConfig {
        starttls: false,
        ..Default::default()
    })
    .await;
    let results = deliver(&up.route(TlsMode::Opportunistic), &["a@x.example"], TRICKY).await;
    assert_delivered(&results[0]);
    assert!(!up.wait_for_messages(1, WAIT).await[0].tls);
}

#[tokio::test]
async fn credentials_are_not_sent_when_opportunistic_tls_did_not_happen() {
    let up = Upstream::start(UpstreamConfig {
        starttls: false,
        require_tls_for_auth: false,
        ..authenticated_upstream()
    })
    .await;
    let route = up.route_with_auth(TlsMode::Opportunistic, AuthMechanism::Plain, USER, PASSWORD);
    let results = deliver(&route, &["a@x.example"], TRICKY).await;
    assert_deferred(&results[0], &["credentials are sent only over TLS"]);
    assert!(!up.commands().iter().any(|c| c.starts_with("AUTH")));
}

#[tokio::test]
async fn implicit_tls_delivers() {
    let up = Upstream::start(UpstreamConfig {
        implicit_tls: true,
        starttls: false,
        ..authenticated_upstream()
    })
    .await;
    let route = up.route_with_auth(TlsMode::Implicit, AuthMechanism::Login, USER, PASSWORD);
    let results = deliver(&route, &["a@x.example"], TRICKY).await;
    assert_delivered(&results[0]);
    let got = up.wait_for_messages(1, WAIT).await;
    assert!(got[0].tls);
    assert_eq!(got[0].content, TRICKY);
}

#[tokio::test]
async fn one_of_three_recipients_rejected_fails_alone() {
    let up = Upstream::start(
        UpstreamConfig::default().with_rcpt_reply("b@x.example", "550 5.1.1 User unknown"),
    )
    .await;
    let results = deliver(
        &up.route(TlsMode::StartTls),
        &["a@x.example", "b@x.example", "c@x.example"],
        TRICKY,
    )
    .await;
    assert_delivered(&results[0]);
    let expected = format!(
        "127.0.0.1[127.0.0.1]:{} said \"550 5.1.1 User unknown\" in reply to RCPT TO:<b@x.example>",
        up.port()
    );
    assert_failed(&results[1], &[&expected]);
    assert_delivered(&results[2]);
    let got = up.wait_for_messages(1, WAIT).await;
    assert_eq!(got[0].recipients, rcpts(&["a@x.example", "c@x.example"]));
}

#[tokio::test]
async fn temporary_rejection_of_one_recipient_defers_it() {
    let up = Upstream::start(UpstreamConfig::default().with_rcpt_reply(
        "b@x.example",
        "451 4.7.500 Server busy. Please try again later. (AS900)",
    ))
    .await;
    let results = deliver(
        &up.route(TlsMode::StartTls),
        &["a@x.example", "b@x.example"],
        TRICKY,
    )
    .await;
    assert_delivered(&results[0]);
    assert_deferred(
        &results[1],
        &["451 4.7.500", "RCPT TO:<b@x.example>", "sending pattern"],
    );
}

#[tokio::test]
async fn no_recipient_accepted_sends_no_content_and_keeps_the_connection() {
    for pipelining in [true, false] {
        let up = Upstream::start(
            UpstreamConfig {
                pipelining,
                ..Default::default()
            }
            .with_rcpt_reply("a@x.example", "550 5.1.1 User unknown")
            .with_rcpt_reply(
                "b@x.example",
                "550 5.4.1 Recipient address rejected: Access denied",
            ),
        )
        .await;
        let t = transport(&up.route(TlsMode::StartTls));
        let recipients = rcpts(&["a@x.example", "b@x.example"]);
        let results = t.deliver(&message(&recipients, TRICKY)).await;
        assert_failed(&results[0], &["550 5.1.1"]);
        assert_failed(&results[1], &["550 5.4.1", "does not exist"]);
        // The connection is still good for the next message.
        let ok = rcpts(&["c@x.example"]);
        let results = t.deliver(&message(&ok, TRICKY)).await;
        assert_delivered(&results[0]);
        assert_eq!(up.wait_for_messages(1, WAIT).await.len(), 1);
        assert_eq!(up.connections(), 1, "pipelining={pipelining}");
    }
}

#[tokio::test]
async fn rejected_sender_applies_to_all_recipients() {
    let up = Upstream::start(UpstreamConfig {
        mail_reply: Some(
            "550 5.7.60 SMTP; Client does not have permissions to send as this sender".into(),
        ),
        ..Default::default()
    })
    .await;
    let results = deliver(
        &up.route(TlsMode::StartTls),
        &["a@x.example", "b@x.example"],
        TRICKY,
    )
    .await;
    for r in &results {
        assert_failed(
            r,
            &[
                "550 5.7.60",
                "MAIL FROM:<scanner@contoso.example>",
                "Send As",
            ],
        );
    }
}

#[tokio::test]
async fn rejection_after_the_content_applies_to_accepted_recipients() {
    let up = Upstream::start(
        UpstreamConfig {
            data_reply: Some("554 5.6.0 Message content rejected".into()),
            ..Default::default()
        }
        .with_rcpt_reply("b@x.example", "451 4.3.0 later"),
    )
    .await;
    let results = deliver(
        &up.route(TlsMode::StartTls),
        &["a@x.example", "b@x.example"],
        TRICKY,
    )
    .await;
    assert_failed(&results[0], &["554 5.6.0", "after the message content"]);
    assert_deferred(&results[1], &["451 4.3.0"]);
}

#[tokio::test]
async fn auth_failure_defers_all_and_never_shows_the_password() {
    for mechanism in [AuthMechanism::Login, AuthMechanism::Plain] {
        let up = Upstream::start(UpstreamConfig::default().with_credentials(USER, "the-right-one"))
            .await;
        let route = up.route_with_auth(TlsMode::StartTls, mechanism, USER, PASSWORD);
        let results = deliver(&route, &["a@x.example", "b@x.example"], TRICKY).await;
        let plain = BASE64.encode(format!("\0{USER}\0{PASSWORD}"));
        let login = BASE64.encode(PASSWORD);
        for r in &results {
            assert_deferred(
                r,
                &[
                    "535 5.7.3 Authentication unsuccessful",
                    "in reply to AUTH",
                    "wrong credentials",
                ],
            );
            let text = reason(r);
            assert!(
                !text.contains(PASSWORD) && !text.contains(&plain) && !text.contains(&login),
                "{text}"
            );
        }
        let debug = format!("{route:?}");
        assert!(
            !debug.contains(PASSWORD),
            "route Debug shows the password: {debug}"
        );
        assert!(up.messages().is_empty());
    }
}

#[tokio::test]
async fn unauthenticated_submission_is_deferred_not_bounced() {
    let up = Upstream::start(authenticated_upstream()).await;
    let results = deliver(&up.route(TlsMode::StartTls), &["a@x.example"], TRICKY).await;
    assert_deferred(&results[0], &["530 5.7.57", "MAIL FROM"]);
}

#[tokio::test]
async fn refused_connection_defers_and_the_same_port_comes_back() {
    let up = Upstream::start(UpstreamConfig::default()).await;
    let route = up.route(TlsMode::StartTls);
    up.go_down().await;
    let results = deliver(&route, &["a@x.example", "b@x.example"], TRICKY).await;
    for r in &results {
        assert_deferred(r, &["cannot connect to 127.0.0.1", &up.port().to_string()]);
    }
    up.go_up().await;
    let results = deliver(&route, &["a@x.example"], TRICKY).await;
    assert_delivered(&results[0]);
}

#[tokio::test]
async fn greeting_421_defers() {
    let up = Upstream::start(UpstreamConfig {
        greeting: "421 4.3.2 Service not available".into(),
        ..Default::default()
    })
    .await;
    let results = deliver(&up.route(TlsMode::StartTls), &["a@x.example"], TRICKY).await;
    assert_deferred(
        &results[0],
        &["\"421 4.3.2 Service not available\" in its greeting"],
    );
}

#[tokio::test]
async fn permanent_greeting_rejection_still_defers() {
    let up = Upstream::start(UpstreamConfig {
        greeting: "554 5.7.1 No SMTP service for you".into(),
        ..Default::default()
    })
    .await;
    let results = deliver(&up.route(TlsMode::StartTls), &["a@x.example"], TRICKY).await;
    assert_deferred(&results[0], &["554 5.7.1"]);
}

#[tokio::test]
async fn connection_lost_during_data_defers() {
    let up = Upstream::start(UpstreamConfig {
        close_during_data: true,
        ..Default::default()
    })
    .await;
    let results = deliver(
        &up.route(TlsMode::StartTls),
        &["a@x.example", "b@x.example"],
        TRICKY,
    )
    .await;
    for r in &results {
        assert_deferred(r, &["connection lost", "the message content"]);
    }
    assert!(up.messages().is_empty());
}

#[tokio::test]
async fn smtputf8_message_fails_when_upstream_lacks_it() {
    let up = Upstream::start(UpstreamConfig::default()).await;
    let recipients = rcpts(&["j\u{f6}rg@x.example"]);
    let msg = OutboundMessage {
        smtputf8: true,
        ..message(&recipients, TRICKY)
    };
    let results = transport(&up.route(TlsMode::StartTls)).deliver(&msg).await;
    assert_failed(&results[0], &["SMTPUTF8", "does not offer it"]);

    up.configure(|c| c.smtputf8 = true);
    let results = transport(&up.route(TlsMode::StartTls)).deliver(&msg).await;
    assert_delivered(&results[0]);
    let got = up.wait_for_messages(1, WAIT).await;
    assert!(got[0].mail_params.contains(&"SMTPUTF8".to_string()));
    assert_eq!(got[0].recipients, recipients);
}

#[tokio::test]
async fn message_over_the_advertised_size_fails_without_sending() {
    let up = Upstream::start(UpstreamConfig {
        max_size: 10,
        ..Default::default()
    })
    .await;
    let results = deliver(&up.route(TlsMode::StartTls), &["a@x.example"], TRICKY).await;
    assert_failed(&results[0], &["larger than the 10 bytes"]);
    assert!(!up.commands().iter().any(|c| c.starts_with("MAIL")));
}

#[tokio::test]
async fn ehlo_refused_falls_back_to_helo_without_tls() {
    let up = Upstream::start(UpstreamConfig {
        ehlo_reply: Some("502 5.5.1 EHLO not implemented".into()),
        ..Default::default()
    })
    .await;
    let results = deliver(&up.route(TlsMode::None), &["a@x.example"], TRICKY).await;
    assert_delivered(&results[0]);
    assert!(
        up.commands()
            .iter()
            .any(|c| c.starts_with("HELO relay.test"))
    );
    // With STARTTLS required there is no fallback: EHLO is needed for it.
    let results = deliver(&up.route(TlsMode::StartTls), &["a@x.example"], TRICKY).await;
    assert_deferred(&results[0], &["502 5.5.1", "in reply to EHLO"]);
}

#[tokio::test]
async fn connection_is_reused_for_the_next_message() {
    let up = Upstream::start(UpstreamConfig::default()).await;
    let t = transport(&up.route(TlsMode::StartTls));
    let recipients = rcpts(&["a@x.example"]);
    for _ in 0..3 {
        assert_delivered(&t.deliver(&message(&recipients, TRICKY)).await[0]);
    }
    let got = up.wait_for_messages(3, WAIT).await;
    assert!(got.iter().all(|m| m.connection == 1 && m.tls));
    assert_eq!(up.connections(), 1);
    assert_eq!(up.commands().iter().filter(|c| *c == "RSET").count(), 2);
}

#[tokio::test]
async fn concurrent_deliveries_respect_max_connections() {
    let up = Upstream::start(UpstreamConfig::default()).await;
    let route = SmtpRoute {
        max_connections: 1,
        ..up.route(TlsMode::StartTls)
    };
    let t = std::sync::Arc::new(transport(&route));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let recipients = vec![format!("r{i}@x.example")];
            t.deliver(&message(&recipients, TRICKY)).await
        }));
    }
    for task in tasks {
        assert_delivered(&task.await.unwrap()[0]);
    }
    assert_eq!(up.wait_for_messages(4, WAIT).await.len(), 4);
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn a_reused_connection_pipelines_rset_with_the_envelope() {
    let up = Upstream::start(UpstreamConfig::default()).await;
    let t = transport(&up.route(TlsMode::StartTls));
    let first = rcpts(&["a@x.example"]);
    let second = rcpts(&["b@x.example", "c@x.example"]);
    assert_delivered(&t.deliver(&message(&first, TRICKY)).await[0]);
    for r in t.deliver(&message(&second, TRICKY)).await {
        assert_delivered(&r);
    }
    let got = up.wait_for_messages(2, WAIT).await;
    assert_eq!(got.len(), 2, "each message delivered once: {got:#?}");
    assert_eq!(got[1].recipients, second);
    assert!(got.iter().all(|m| m.connection == 1));
    assert_eq!(up.connections(), 1);

    let commands = up.commands();
    let rset = commands
        .iter()
        .position(|c| c == "RSET")
        .expect("RSET sent");
    let mails: Vec<usize> = (0..commands.len())
        .filter(|&i| commands[i].starts_with("MAIL FROM:"))
        .collect();
    assert_eq!(mails.len(), 2, "{commands:?}");
    assert!(mails[0] < rset && rset < mails[1], "{commands:?}");
    assert_eq!(commands.iter().filter(|c| *c == "RSET").count(), 1);

    // RSET, MAIL, both RCPT and DATA arrived in one write; the first message had no RSET.
    let mail = format!("MAIL FROM:<scanner@contoso.example> SIZE={}", TRICKY.len());
    let lines = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let groups = up.command_groups();
    let reused = lines(&[
        "RSET",
        &mail,
        "RCPT TO:<b@x.example>",
        "RCPT TO:<c@x.example>",
        "DATA",
    ]);
    assert!(groups.contains(&(1, reused)), "{groups:#?}");
    let fresh = lines(&[&mail, "RCPT TO:<a@x.example>", "DATA"]);
    assert!(groups.contains(&(1, fresh)), "{groups:#?}");
}

#[tokio::test]
async fn a_pipelined_rset_and_its_reply_are_in_the_w3c_log() {
    let up = Upstream::start(UpstreamConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (log, writer) = smarthost::logs::w3c::start(dir.path().into(), "relay.test", 0).unwrap();
    let t = SmtpTransport::with_log(&up.route(TlsMode::StartTls), "relay.test".into(), log)
        .expect("transport");
    let recipients = rcpts(&["a@x.example"]);
    for _ in 0..2 {
        assert_delivered(&t.deliver(&message(&recipients, TRICKY)).await[0]);
    }
    drop(t);
    writer.shutdown().await;
    let mut text = String::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        text.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    let rows: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    let command = |verb: &str| {
        rows.iter().position(|r| {
            r.contains("OutboundConnectionCommand") && r.contains(&format!(" {verb} "))
        })
    };
    let rset = command("RSET").unwrap_or_else(|| panic!("RSET logged: {text}"));
    let reply = rows
        .iter()
        .position(|r| r.contains("OutboundConnectionResponse") && r.contains("250+2.0.0+Reset+OK"))
        .unwrap_or_else(|| panic!("RSET's reply logged: {text}"));
    assert!(rset < reply, "{text}");
    assert_eq!(
        rows.iter().filter(|r| r.contains(" RSET ")).count(),
        1,
        "{text}"
    );
}

#[tokio::test]
async fn without_pipelining_rset_is_a_round_trip_of_its_own() {
    let up = Upstream::start(UpstreamConfig {
        pipelining: false,
        ..Default::default()
    })
    .await;
    let t = transport(&up.route(TlsMode::StartTls));
    let recipients = rcpts(&["a@x.example"]);
    for _ in 0..2 {
        assert_delivered(&t.deliver(&message(&recipients, TRICKY)).await[0]);
    }
    assert_eq!(up.wait_for_messages(2, WAIT).await.len(), 2);
    assert_eq!(up.connections(), 1);
    let groups = up.command_groups();
    assert!(
        groups.contains(&(1, vec!["RSET".to_string()])),
        "{groups:#?}"
    );
    assert!(
        groups.iter().all(|(_, group)| group.len() == 1),
        "{groups:#?}"
    );
}

#[tokio::test]
async fn a_dropped_idle_connection_is_replaced() {
    for pipelining in [true, false] {
        let up = Upstream::start(UpstreamConfig {
            pipelining,
            ..Default::default()
        })
        .await;
        let t = transport(&up.route(TlsMode::StartTls));
        let recipients = rcpts(&["a@x.example"]);
        assert_delivered(&t.deliver(&message(&recipients, TRICKY)).await[0]);
        // The server goes away and comes back: the idle connection is dead, RSET fails, a new one is made.
        up.go_down().await;
        up.go_up().await;
        assert_delivered(&t.deliver(&message(&recipients, TRICKY)).await[0]);
        assert_eq!(up.connections(), 2, "pipelining={pipelining}");
        let got = up.messages();
        assert_eq!(got.len(), 2, "pipelining={pipelining}: {got:#?}");
        assert_eq!(got[1].connection, 2, "pipelining={pipelining}");
    }
}

#[tokio::test]
async fn rset_refused_on_a_reused_connection_moves_the_message_to_a_new_one() {
    for pipelining in [true, false] {
        for refusal in ["421 4.4.2 timeout", "554 5.5.1 No RSET for you"] {
            let case = format!("pipelining={pipelining}, {refusal}");
            let up = Upstream::start(UpstreamConfig {
                pipelining,
                ..Default::default()
            })
            .await;
            // One connection at most: the refused one must give its slot back for the new one.
            let route = SmtpRoute {
                max_connections: 1,
                ..up.route(TlsMode::StartTls)
            };
            let t = transport(&route);
            let first = rcpts(&["a@x.example"]);
            assert_delivered(&t.deliver(&message(&first, TRICKY)).await[0]);

            up.configure(|c| c.rset_reply = Some(refusal.into()));
            let second = rcpts(&["b@x.example", "c@x.example"]);
            let results = t.deliver(&message(&second, TRICKY)).await;
            assert_eq!(results.len(), 2, "{case}");
            for r in &results {
                assert_delivered(r);
                assert!(!reason(r).contains("RSET"), "{case}: {r:?}");
            }
            let got = up.messages();
            assert_eq!(got.len(), 2, "{case}: each message once: {got:#?}");
            assert_eq!(got[1].recipients, second, "{case}");
            assert_eq!(got[1].connection, 2, "{case}");
            assert_eq!(up.connections(), 2, "{case}");
            // The new connection sent no RSET; nothing after RSET's refusal went to the old one
            // but (pipelined) the rest of its group.
            let groups = up.command_groups();
            assert!(
                groups
                    .iter()
                    .filter(|(connection, _)| *connection == 2)
                    .all(|(_, group)| !group.contains(&"RSET".to_string())),
                "{case}: {groups:#?}"
            );
            assert_eq!(
                up.commands().iter().filter(|c| *c == "RSET").count(),
                1,
                "{case}"
            );
        }
    }
}

#[tokio::test]
async fn unreadable_ca_file_is_a_startup_error() {
    let route = SmtpRoute {
        ca_file: Some("/nonexistent/upstream-ca.pem".into()),
        ..Upstream::start(UpstreamConfig::default())
            .await
            .route(TlsMode::StartTls)
    };
    let err = SmtpTransport::new(&route, "relay.test".into()).unwrap_err();
    assert!(
        format!("{err:#}").contains("/nonexistent/upstream-ca.pem"),
        "{err:#}"
    );
}

#[tokio::test]
async fn long_reply_lines_are_read_whole() {
    let long = "x".repeat(5000);
    let up = Upstream::start(UpstreamConfig {
        greeting: format!("220 upstream.test {long}"),
        data_reply: Some(format!("250 2.0.0 OK {long}")),
        ..Default::default()
    })
    .await;
    let results = deliver(&up.route(TlsMode::StartTls), &["a@x.example"], TRICKY).await;
    assert_delivered(&results[0]);
    assert!(reason(&results[0]).contains(&long));
}

/// A one-connection server running `script`: for behaviour the test upstream is too well-behaved to show.
async fn raw_upstream<F, Fut>(script: F) -> SmtpRoute
where
    F: FnOnce(BufReader<TcpStream>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        script(BufReader::new(tcp)).await;
    });
    SmtpRoute {
        host: "127.0.0.1".into(),
        port,
        tls: TlsMode::None,
        ca_file: None,
        auth: None,
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_millis(300),
        max_connections: 1,
        client_cert: None,
    }
}

async fn send(io: &mut BufReader<TcpStream>, text: &str) {
    io.get_mut().write_all(text.as_bytes()).await.unwrap();
}

async fn expect_line(io: &mut BufReader<TcpStream>, prefix: &str) {
    let mut line = String::new();
    io.read_line(&mut line).await.unwrap();
    assert!(
        line.starts_with(prefix),
        "expected {prefix:?}, got {line:?}"
    );
}

#[tokio::test]
async fn silent_upstream_times_out() {
    let route = raw_upstream(|io| async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(io);
    })
    .await;
    let results = deliver(&route, &["a@x.example"], TRICKY).await;
    assert_deferred(&results[0], &["timed out before the greeting", "300ms"]);
}

#[tokio::test]
async fn endless_reply_line_is_refused() {
    let route = raw_upstream(|mut io| async move {
        send(&mut io, &format!("220 {}", "x".repeat(70 * 1024))).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    })
    .await;
    let results = deliver(&route, &["a@x.example"], TRICKY).await;
    assert_deferred(
        &results[0],
        &["unreadable reply", "longer than 65536 bytes"],
    );
}

#[tokio::test]
async fn data_injected_after_starttls_reply_is_refused() {
    // RFC 3207 §5 / CVE-2011-0411: bytes sent in plaintext after "220" must not be read as if under TLS.
    let route = raw_upstream(|mut io| async move {
        send(&mut io, "220 raw.test ESMTP\r\n").await;
        expect_line(&mut io, "EHLO").await;
        send(&mut io, "250-raw.test\r\n250 STARTTLS\r\n").await;
        expect_line(&mut io, "STARTTLS").await;
        send(&mut io, "220 2.0.0 Go ahead\r\n250 2.1.0 injected\r\n").await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    })
    .await;
    let route = SmtpRoute {
        tls: TlsMode::StartTls,
        ..route
    };
    let results = deliver(&route, &["a@x.example"], TRICKY).await;
    assert_deferred(&results[0], &["sent data after its reply to STARTTLS"]);
}
