//! Inbound TLS against the real server: STARTTLS (RFC 3207) with rustls and OpenSSL clients,
//! implicit TLS, the old TLS versions behind `min_tls`, the STARTTLS command-injection probe, the
//! reset of the session after the handshake, certificate reload, and IPv6 listeners.

mod common;

use common::inbound::{InboundRelay, outbox_files};
use common::tls_client::TlsClient;
use std::time::Duration;

const STARTTLS: &str = r#"
[[listener]]
address = "127.0.0.1:0"
relay_from = ["127.0.0.1/32"]
tls = "starttls"
certificate = "{cert}"
private_key = "{key}"
"#;

async fn send_message(c: &mut TlsClient, to: &str) {
    let mail = c.cmd("MAIL FROM:<scan@contoso.com>").await;
    assert!(mail.starts_with("250 2.1.0"), "{mail}");
    let rcpt = c.cmd(&format!("RCPT TO:<{to}>")).await;
    assert!(rcpt.starts_with("250 2.1.5"), "{rcpt}");
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"Subject: over TLS\r\n\r\nhello\r\n.\r\n").await;
    let queued = c.reply().await;
    assert!(queued.starts_with("250 2.0.0 OK queued"), "{queued}");
}

#[tokio::test]
async fn starttls_with_rustls_then_the_message_is_received_with_esmtps() {
    let relay = InboundRelay::start(STARTTLS).await;
    let (mut c, banner) = TlsClient::connect(relay.addr()).await;
    assert!(banner.starts_with("220 relay.test"), "{banner}");
    let ehlo = c.cmd("EHLO scanner").await;
    assert!(
        ehlo.contains("250-STARTTLS") || ehlo.contains("250 STARTTLS"),
        "{ehlo}"
    );
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    let mut c = c.starttls(relay.ca()).await;
    let ehlo = c.cmd("EHLO scanner").await;
    assert!(ehlo.starts_with("250-relay.test"), "{ehlo}");
    assert!(
        !ehlo.contains("STARTTLS"),
        "STARTTLS offered again after TLS: {ehlo}"
    );
    send_message(&mut c, "boss@example.com").await;
    assert!(c.cmd("QUIT").await.starts_with("221"));
    let files = relay.wait_outbox(1).await;
    assert_eq!(files.len(), 1);
    assert!(files[0].contains(" with ESMTPS id "), "{}", files[0]);
    relay.stop().await;
}

#[tokio::test]
async fn implicit_tls_speaks_tls_from_the_first_byte() {
    let relay = InboundRelay::start(
        r#"
[[listener]]
address = "127.0.0.1:0"
relay_from = ["127.0.0.1/32"]
tls = "implicit"
certificate = "{cert}"
private_key = "{key}"
"#,
    )
    .await;
    let (mut c, banner) = TlsClient::connect_implicit(relay.addr(), relay.ca()).await;
    assert!(banner.starts_with("220 relay.test"), "{banner}");
    let ehlo = c.cmd("EHLO app").await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    let again = c.cmd("STARTTLS").await;
    assert!(again.starts_with("502 5.5.1"), "{again}");
    send_message(&mut c, "a@example.com").await;
    c.cmd("QUIT").await;
    let files = relay.wait_outbox(1).await;
    assert!(files[0].contains(" with ESMTPS id "), "{}", files[0]);

    // A plaintext client gets no banner: the server waits for a ClientHello, then gives up.
    let mut plain = tokio::net::TcpStream::connect(relay.addr()).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::io::AsyncReadExt::read(&mut plain, &mut buf),
    )
    .await;
    assert!(read.is_err(), "a plaintext banner on an implicit-TLS port");
    relay.stop().await;
}

/// The STARTTLS command-injection probe: commands sent in plaintext in the same packet as STARTTLS
/// must never be executed, before or after the handshake.
#[tokio::test]
async fn commands_pipelined_after_starttls_are_discarded_not_executed() {
    let relay = InboundRelay::start(STARTTLS).await;
    let (mut c, _) = TlsClient::connect(relay.addr()).await;
    c.cmd("EHLO prober").await;
    c.send(b"STARTTLS\r\nRSET\r\n").await;
    let reply = c.reply().await;
    assert!(reply.starts_with("220 2.0.0"), "{reply}");
    // No plaintext reply to RSET may follow the 220 (TlsClient checks nothing is buffered).
    let mut c = c.upgrade_rustls(relay.ca()).await.expect("handshake");
    assert_eq!(
        c.try_reply(Duration::from_millis(500)).await,
        None,
        "a reply to the injected RSET arrived over TLS"
    );
    let ehlo = c.cmd("EHLO prober").await;
    assert!(ehlo.starts_with("250-relay.test"), "{ehlo}");

    // The classic form: a whole transaction injected behind STARTTLS.
    let (mut c, _) = TlsClient::connect(relay.addr()).await;
    c.cmd("EHLO prober").await;
    c.send(b"STARTTLS\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\n")
        .await;
    assert!(c.reply().await.starts_with("220"));
    let mut c = c.upgrade_rustls(relay.ca()).await.expect("handshake");
    assert_eq!(c.try_reply(Duration::from_millis(300)).await, None);
    c.cmd("EHLO prober").await;
    let rcpt = c.cmd("RCPT TO:<someone@example.com>").await;
    assert!(
        rcpt.starts_with("503 5.5.1"),
        "the injected MAIL was executed: {rcpt}"
    );
    c.cmd("QUIT").await;
    assert!(outbox_files(&relay.outbox()).is_empty());
    relay.stop().await;
}

#[tokio::test]
async fn the_session_starts_over_after_starttls() {
    let relay = InboundRelay::start(STARTTLS).await;
    let (mut c, _) = TlsClient::connect(relay.addr()).await;
    c.cmd("EHLO before").await;
    assert!(c.cmd("MAIL FROM:<a@contoso.com>").await.starts_with("250"));
    let mut c = c.starttls(relay.ca()).await;
    // RFC 3207 §4.2: the EHLO and the transaction from before TLS are forgotten.
    let mail = c.cmd("MAIL FROM:<a@contoso.com>").await;
    assert!(mail.starts_with("503 5.5.1"), "{mail}");
    let rcpt = c.cmd("RCPT TO:<b@example.com>").await;
    assert!(rcpt.starts_with("503 5.5.1"), "{rcpt}");
    c.cmd("EHLO after").await;
    let again = c.cmd("STARTTLS").await;
    assert!(again.starts_with("503 5.5.1"), "{again}");
    send_message(&mut c, "b@example.com").await;
    let files = relay.wait_outbox(1).await;
    assert!(
        files[0].contains("Received: from after "),
        "the HELO name from before TLS was kept: {}",
        files[0]
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_renewed_certificate_is_used_without_a_restart() {
    let relay = InboundRelay::start(STARTTLS).await;
    let (c, _) = TlsClient::connect(relay.addr()).await;
    let mut c = c.starttls(relay.ca()).await;
    c.cmd("QUIT").await;

    // Renew: a certificate from another CA, written over the same files.
    let renewed = common::certs::TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = renewed.write_server_pem(dir.path());
    std::fs::copy(&key, &relay.key).unwrap();
    std::fs::copy(&cert, &relay.cert).unwrap();

    let (c, _) = TlsClient::connect(relay.addr()).await;
    let mut c = c.starttls(&renewed.ca_pem).await;
    assert!(c.cmd("EHLO renewed").await.starts_with("250"));
    // The old CA no longer verifies what the relay presents.
    let (mut c, _) = TlsClient::connect(relay.addr()).await;
    assert!(c.cmd("STARTTLS").await.starts_with("220"));
    assert!(c.upgrade_rustls(relay.ca()).await.is_err());

    // A broken file keeps the renewed certificate in use.
    std::fs::write(&relay.cert, "not a certificate").unwrap();
    let (c, _) = TlsClient::connect(relay.addr()).await;
    let mut c = c.starttls(&renewed.ca_pem).await;
    assert!(c.cmd("EHLO still").await.starts_with("250"));
    relay.stop().await;
}

#[tokio::test]
async fn a_failed_handshake_ends_only_that_session() {
    let relay = InboundRelay::start(STARTTLS).await;
    let (mut c, _) = TlsClient::connect(relay.addr()).await;
    assert!(c.cmd("STARTTLS").await.starts_with("220"));
    // Garbage instead of a ClientHello.
    c.send(b"EHLO not-tls\r\n").await;
    assert!(c.closed_within(Duration::from_secs(5)).await);
    let (c, _) = TlsClient::connect(relay.addr()).await;
    let mut c = c.starttls(relay.ca()).await;
    assert!(c.cmd("EHLO ok").await.starts_with("250"));
    relay.stop().await;
}

#[tokio::test]
async fn ipv4_and_ipv6_listeners_side_by_side() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    }
    let relay = InboundRelay::start(
        r#"
[[listener]]
address = "127.0.0.1:0"
relay_from = ["127.0.0.1/32"]
[[listener]]
address = "[::1]:0"
relay_from = ["::1/128"]
"#,
    )
    .await;
    assert!(relay.addrs[1].is_ipv6());
    for addr in relay.addrs.clone() {
        let (mut c, banner) = TlsClient::connect(addr).await;
        assert!(banner.starts_with("220"), "{banner}");
        c.cmd("EHLO v6").await;
        send_message(&mut c, "x@example.com").await;
    }
    let files = relay.wait_outbox(2).await;
    assert!(files.iter().any(|f| f.contains("([::1])")), "{files:?}");
    relay.stop().await;
}

#[cfg(feature = "legacy-tls")]
mod legacy {
    use super::*;
    use openssl::ssl::SslVersion;

    const OLD_DEVICES: &str = r#"
[[listener]]
address = "127.0.0.1:0"
relay_from = ["127.0.0.1/32"]
tls = "starttls"
certificate = "{cert}"
private_key = "{key}"
min_tls = "1.0"
"#;

    async fn handshake(
        relay: &InboundRelay,
        min: SslVersion,
        max: SslVersion,
    ) -> std::io::Result<(TlsClient, String)> {
        let (mut c, _) = TlsClient::connect(relay.addr()).await;
        c.cmd("EHLO printer").await;
        assert!(c.cmd("STARTTLS").await.starts_with("220"));
        c.upgrade_openssl(relay.pki.ca_path(), min, max).await
    }

    #[tokio::test]
    async fn starttls_with_an_openssl_client() {
        let relay = InboundRelay::start(STARTTLS).await;
        let (mut c, version) = handshake(&relay, SslVersion::TLS1_2, SslVersion::TLS1_3)
            .await
            .expect("handshake");
        assert_eq!(version, "TLSv1.3");
        c.cmd("EHLO printer").await;
        send_message(&mut c, "a@example.com").await;
        let (_, version) = handshake(&relay, SslVersion::TLS1_2, SslVersion::TLS1_2)
            .await
            .expect("TLS 1.2 handshake");
        assert_eq!(version, "TLSv1.2");
        relay.stop().await;
    }

    #[tokio::test]
    async fn tls_1_0_and_1_1_devices_are_accepted_with_min_tls_1_0() {
        let relay = InboundRelay::start(OLD_DEVICES).await;
        for (version, name) in [(SslVersion::TLS1, "TLSv1"), (SslVersion::TLS1_1, "TLSv1.1")] {
            let (mut c, negotiated) = handshake(&relay, version, version)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(negotiated, name);
            let ehlo = c.cmd("EHLO printer").await;
            assert!(ehlo.starts_with("250-relay.test"), "{ehlo}");
            send_message(&mut c, "a@example.com").await;
        }
        // Modern clients still get TLS 1.3 there.
        let (_, negotiated) = handshake(&relay, SslVersion::TLS1, SslVersion::TLS1_3)
            .await
            .unwrap();
        assert_eq!(negotiated, "TLSv1.3");
        assert_eq!(relay.wait_outbox(2).await.len(), 2);
        relay.stop().await;
    }

    #[tokio::test]
    async fn tls_1_0_and_1_1_are_refused_by_default() {
        let relay = InboundRelay::start(STARTTLS).await;
        for version in [SslVersion::TLS1, SslVersion::TLS1_1] {
            let result = handshake(&relay, version, version).await;
            assert!(result.is_err(), "{version:?} was accepted with min_tls 1.2");
        }
        relay.stop().await;
    }

    #[tokio::test]
    async fn min_tls_1_3_refuses_tls_1_2() {
        let relay = InboundRelay::start(&format!("{STARTTLS}min_tls = \"1.3\"\n")).await;
        assert!(
            handshake(&relay, SslVersion::TLS1_2, SslVersion::TLS1_2)
                .await
                .is_err()
        );
        let (_, version) = handshake(&relay, SslVersion::TLS1_2, SslVersion::TLS1_3)
            .await
            .unwrap();
        assert_eq!(version, "TLSv1.3");
        relay.stop().await;
    }
}
