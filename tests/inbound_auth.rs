//! AUTH in inbound sessions (RFC 4954) against the real server: PLAIN and LOGIN, only after TLS
//! unless `allow_plaintext_auth`, `require_auth`, a user's `allowed_senders`, relaying by
//! authentication, and the lockout after failed attempts.

mod common;

use common::inbound::{InboundRelay, b64, plain, user};
use common::tls_client::TlsClient;
use smarthost::clock::{Clock, ManualClock};
use std::sync::Arc;
use std::time::Duration;

/// STARTTLS with AUTH; nobody may relay by address, so relaying needs AUTH.
fn starttls_auth(extra: &str) -> String {
    format!(
        r#"
[[listener]]
address = "127.0.0.1:0"
tls = "starttls"
certificate = "{{cert}}"
private_key = "{{key}}"
auth = true
{extra}
{}{}"#,
        user("scanner", "correct horse", &[]),
        user(
            "billing",
            "invoices!",
            &["billing@contoso.com", "*@billing.contoso.com"]
        ),
    )
}

async fn tls_session(relay: &InboundRelay) -> TlsClient {
    let (c, _) = TlsClient::connect(relay.addr()).await;
    let mut c = c.starttls(relay.ca()).await;
    c.cmd("EHLO device").await;
    c
}

async fn send(c: &mut TlsClient, from: &str) -> String {
    let mail = c.cmd(&format!("MAIL FROM:<{from}>")).await;
    if !mail.starts_with("250") {
        return mail;
    }
    let rcpt = c.cmd("RCPT TO:<boss@example.com>").await;
    if !rcpt.starts_with("250") {
        c.cmd("RSET").await;
        return rcpt;
    }
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"Subject: authenticated\r\n\r\nhi\r\n.\r\n").await;
    c.reply().await
}

#[tokio::test]
async fn auth_plain_after_starttls_lets_the_client_relay() {
    let relay = InboundRelay::start(&starttls_auth("")).await;
    let (mut c, _) = TlsClient::connect(relay.addr()).await;
    let ehlo = c.cmd("EHLO device").await;
    assert!(!ehlo.contains("AUTH"), "AUTH offered before TLS: {ehlo}");
    let early = c
        .cmd(&format!("AUTH PLAIN {}", plain("scanner", "correct horse")))
        .await;
    assert!(
        early.starts_with("538 5.7.11 Encryption required"),
        "{early}"
    );

    let mut c = c.starttls(relay.ca()).await;
    let ehlo = c.cmd("EHLO device").await;
    assert!(ehlo.contains("250-AUTH PLAIN LOGIN"), "{ehlo}");
    // Not yet authenticated, not in relay_from: no relaying.
    let denied = send(&mut c, "scan@contoso.com").await;
    assert!(denied.starts_with("550 5.7.1 Relaying denied"), "{denied}");

    let ok = c
        .cmd(&format!("AUTH PLAIN {}", plain("scanner", "correct horse")))
        .await;
    assert_eq!(ok, "235 2.7.0 Authentication successful");
    let queued = send(&mut c, "scan@contoso.com").await;
    assert!(queued.starts_with("250 2.0.0 OK queued"), "{queued}");
    let twice = c
        .cmd(&format!("AUTH PLAIN {}", plain("scanner", "correct horse")))
        .await;
    assert!(twice.starts_with("503 5.5.1"), "{twice}");
    c.cmd("QUIT").await;

    let files = relay.wait_outbox(1).await;
    assert!(files[0].contains(" with ESMTPSA id "), "{}", files[0]);
    relay.stop().await;
}

#[tokio::test]
async fn auth_login_and_plain_with_a_challenge() {
    let relay = InboundRelay::start(&starttls_auth("")).await;
    let mut c = tls_session(&relay).await;
    assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(c.cmd(&b64("scanner")).await, "334 UGFzc3dvcmQ6");
    assert_eq!(
        c.cmd(&b64("correct horse")).await,
        "235 2.7.0 Authentication successful"
    );

    let mut c = tls_session(&relay).await;
    // LOGIN with the user name as initial response.
    assert_eq!(
        c.cmd(&format!("AUTH LOGIN {}", b64("scanner"))).await,
        "334 UGFzc3dvcmQ6"
    );
    assert!(c.cmd(&b64("correct horse")).await.starts_with("235"));

    let mut c = tls_session(&relay).await;
    assert_eq!(c.cmd("AUTH PLAIN").await, "334");
    assert!(
        c.cmd(&plain("scanner", "correct horse"))
            .await
            .starts_with("235")
    );
    relay.stop().await;
}

#[tokio::test]
async fn wrong_credentials_malformed_responses_and_cancel() {
    let relay = InboundRelay::start(&starttls_auth("")).await;
    let mut c = tls_session(&relay).await;
    let cases = [
        (
            format!("AUTH PLAIN {}", plain("scanner", "wrong")),
            "535 5.7.8 Authentication credentials invalid",
        ),
        (
            format!("AUTH PLAIN {}", plain("nobody", "correct horse")),
            "535 5.7.8 Authentication credentials invalid",
        ),
        ("AUTH PLAIN !!!notbase64".to_string(), "501 5.5.2"),
        (
            "AUTH PLAIN *".to_string(),
            "501 5.0.0 Authentication cancelled",
        ),
        ("AUTH CRAM-MD5".to_string(), "504 5.5.4"),
    ];
    for (command, expected) in &cases {
        let reply = c.cmd(command).await;
        assert!(reply.starts_with(expected), "{command}: {reply}");
    }
    // Cancelling in the middle of LOGIN.
    assert!(c.cmd("AUTH LOGIN").await.starts_with("334"));
    assert_eq!(c.cmd("*").await, "501 5.0.0 Authentication cancelled");
    // A long response (XOAUTH2-size tokens are ~2 KB; this is 8 KB) is read whole, not cut.
    let long = c
        .cmd(&format!(
            "AUTH PLAIN {}",
            plain("scanner", &"x".repeat(6000))
        ))
        .await;
    assert!(long.starts_with("535 5.7.8"), "{long}");
    // Still not authenticated: no relaying.
    let denied = send(&mut c, "scan@contoso.com").await;
    assert!(denied.starts_with("550 5.7.1"), "{denied}");
    // AUTH is not allowed inside a transaction.
    c.cmd("MAIL FROM:<scan@contoso.com>").await;
    let during = c
        .cmd(&format!("AUTH PLAIN {}", plain("scanner", "correct horse")))
        .await;
    assert!(during.starts_with("503 5.5.1"), "{during}");
    relay.stop().await;
}

#[tokio::test]
async fn allow_plaintext_auth_offers_auth_without_tls() {
    let relay = InboundRelay::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nauth = true\nallow_plaintext_auth = true\n{}",
        user("scanner", "correct horse", &[])
    ))
    .await;
    let (mut c, _) = TlsClient::connect(relay.addr()).await;
    let ehlo = c.cmd("EHLO printer").await;
    assert!(ehlo.contains("250-AUTH PLAIN LOGIN"), "{ehlo}");
    assert!(ehlo.contains("250 AUTH=PLAIN LOGIN"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    let ok = c
        .cmd(&format!("AUTH PLAIN {}", plain("scanner", "correct horse")))
        .await;
    assert!(ok.starts_with("235"), "{ok}");
    assert!(
        send(&mut c, "scan@contoso.com")
            .await
            .starts_with("250 2.0.0")
    );
    let files = relay.wait_outbox(1).await;
    assert!(files[0].contains(" with ESMTPA id "), "{}", files[0]);
    relay.stop().await;
}

#[tokio::test]
async fn auth_on_a_listener_without_it_is_502_and_helo_clients_must_ehlo() {
    let relay = InboundRelay::start(&starttls_auth("")).await;
    let (c, _) = TlsClient::connect(relay.addr()).await;
    let mut c = c.starttls(relay.ca()).await;
    c.cmd("HELO old").await;
    let reply = c
        .cmd(&format!("AUTH PLAIN {}", plain("scanner", "correct horse")))
        .await;
    assert!(reply.starts_with("503 5.5.1"), "{reply}");
    relay.stop().await;

    let relay = InboundRelay::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nrelay_from = [\"127.0.0.1/32\"]\n{}",
        user("scanner", "correct horse", &[])
    ))
    .await;
    let (mut c, _) = TlsClient::connect(relay.addr()).await;
    let ehlo = c.cmd("EHLO x").await;
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    let reply = c.cmd("AUTH LOGIN").await;
    assert!(reply.starts_with("502 5.5.1"), "{reply}");
    relay.stop().await;
}

#[tokio::test]
async fn require_auth_refuses_mail_before_auth_even_from_relay_from() {
    let relay = InboundRelay::start(&starttls_auth(
        "require_auth = true\nrelay_from = [\"127.0.0.1/32\"]",
    ))
    .await;
    let mut c = tls_session(&relay).await;
    let mail = c.cmd("MAIL FROM:<scan@contoso.com>").await;
    assert_eq!(mail, "530 5.7.0 Authentication required");
    c.cmd(&format!("AUTH PLAIN {}", plain("scanner", "correct horse")))
        .await;
    assert!(
        send(&mut c, "scan@contoso.com")
            .await
            .starts_with("250 2.0.0")
    );
    relay.stop().await;
}

#[tokio::test]
async fn allowed_senders_restrict_mail_from() {
    let relay = InboundRelay::start(&starttls_auth("")).await;
    let mut c = tls_session(&relay).await;
    c.cmd(&format!("AUTH PLAIN {}", plain("billing", "invoices!")))
        .await;
    let refused = c.cmd("MAIL FROM:<ceo@contoso.com>").await;
    assert_eq!(
        refused,
        "550 5.7.1 Sender address <ceo@contoso.com> not allowed for user billing"
    );
    for allowed in [
        "billing@contoso.com",
        "Billing@Contoso.com",
        "eu@billing.contoso.com",
    ] {
        let reply = send(&mut c, allowed).await;
        assert!(reply.starts_with("250 2.0.0"), "{allowed}: {reply}");
    }
    // The null sender claims no one's address.
    let bounce = send(&mut c, "").await;
    assert!(bounce.starts_with("250 2.0.0"), "{bounce}");
    // A user without allowed_senders may use any.
    let mut c = tls_session(&relay).await;
    c.cmd(&format!("AUTH PLAIN {}", plain("scanner", "correct horse")))
        .await;
    assert!(
        send(&mut c, "ceo@contoso.com")
            .await
            .starts_with("250 2.0.0")
    );
    relay.stop().await;
}

#[tokio::test]
async fn repeated_failures_lock_the_address_out() {
    let clock = Arc::new(ManualClock::new(smarthost::clock::SystemClock.now()));
    let lockout = "[auth_lockout]\nmax_failures = 3\nwindow = \"10m\"\nduration = \"30m\"\n";
    let relay =
        InboundRelay::start_with_clock(&format!("{}{lockout}", starttls_auth("")), clock.clone())
            .await;
    let mut c = tls_session(&relay).await;
    for _ in 0..3 {
        let reply = c
            .cmd(&format!("AUTH PLAIN {}", plain("scanner", "guess")))
            .await;
        assert!(reply.starts_with("535 5.7.8"), "{reply}");
    }
    // Locked: even the right password is not tried.
    let locked = c
        .cmd(&format!("AUTH PLAIN {}", plain("scanner", "correct horse")))
        .await;
    assert_eq!(locked, "454 4.7.0 Temporary authentication failure");
    // Other sessions from the address too.
    let mut other = tls_session(&relay).await;
    let locked = other.cmd(&format!("AUTH LOGIN {}", b64("scanner"))).await;
    assert!(locked.starts_with("454 4.7.0"), "{locked}");

    clock.advance(30 * 60);
    let ok = other
        .cmd(&format!("AUTH PLAIN {}", plain("scanner", "correct horse")))
        .await;
    assert!(ok.starts_with("235"), "{ok}");
    relay.stop().await;
}

#[tokio::test]
async fn a_locked_out_address_cannot_connect_where_auth_is_required() {
    let clock = Arc::new(ManualClock::new(smarthost::clock::SystemClock.now()));
    let lockout = "[auth_lockout]\nmax_failures = 2\nwindow = \"10m\"\nduration = \"30m\"\n";
    let relay = InboundRelay::start_with_clock(
        &format!("{}{lockout}", starttls_auth("require_auth = true")),
        clock.clone(),
    )
    .await;
    let mut c = tls_session(&relay).await;
    for _ in 0..2 {
        c.cmd(&format!("AUTH PLAIN {}", plain("scanner", "guess")))
            .await;
    }
    let (mut refused, banner) = TlsClient::connect(relay.addr()).await;
    assert!(banner.starts_with("421 4.7.0"), "{banner}");
    assert!(refused.closed_within(Duration::from_secs(5)).await);
    clock.advance(30 * 60);
    let (_, banner) = TlsClient::connect(relay.addr()).await;
    assert!(banner.starts_with("220"), "{banner}");
    relay.stop().await;
}
