//! OAuth 2.0 and XOAUTH2 end to end: a mock Microsoft identity platform (`common::token_endpoint`,
//! HTTPS with a test CA) issues tokens, the test upstream plays Exchange Online and accepts only those
//! tokens, and the real relay (or its `TokenProvider` alone) sits in between.
//!
//! Every log line of this test binary is captured, and each test checks at its end that no client
//! secret, access token or refresh token appears in the logs or in any reason the relay recorded.

mod common;

use common::client::Client;
use common::token_endpoint::{
    AppCertificate, CLIENT_ID, CLIENT_SECRET, EndpointConfig, Fail, TENANT, TokenEndpoint,
};
use common::upstream::{Upstream, UpstreamConfig, ValidTokens};
use smarthost::cli::serve::{Running, start};
use smarthost::clock::{Clock, ManualClock};
use smarthost::config::{Config, Credential, OAuthConfig, Transport, load_str};
use smarthost::deliver::oauth::{OAuthError, TokenProvider};
use smarthost::queue::view::MessageInfo;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const MAILBOX: &str = "relay@contoso.example";
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Log capture

#[derive(Clone)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line of this test binary, at debug level (SMTP dialogues included).
fn logs() -> &'static LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = LogBuffer(Arc::new(Mutex::new(Vec::new())));
        let writer = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
        buffer
    })
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().0.lock().unwrap()).into_owned()
}

/// Fails if any secret (at least 8 characters) occurs in any of `texts` or in the logs.
fn assert_no_secret(secrets: &[String], texts: &[&str]) {
    let logs = log_text();
    for secret in secrets.iter().filter(|s| s.len() >= 8) {
        assert!(!logs.contains(secret.as_str()), "a secret is in the logs");
        for text in texts {
            assert!(!text.contains(secret.as_str()), "a secret is in: {text}");
        }
    }
}

/// The client secret, every token the endpoint issued, and the XOAUTH2 responses made of them.
fn all_secrets(endpoint: &TokenEndpoint) -> Vec<String> {
    let mut secrets = vec![CLIENT_SECRET.to_string()];
    for token in endpoint.issued_tokens() {
        secrets.push(smarthost::smtp::sasl::xoauth2_initial_response(
            MAILBOX, &token,
        ));
        // A stretch from the middle: a token cut off in a log line still counts.
        secrets.push(token[token.len() / 3..token.len() / 3 + 40].to_string());
        secrets.push(token);
    }
    secrets
}

// ---------------------------------------------------------------------------------------------
// Set-up

struct Mock {
    endpoint: TokenEndpoint,
    upstream: Upstream,
    valid: ValidTokens,
}

async fn mock(
    endpoint: EndpointConfig,
    upstream: impl FnOnce(UpstreamConfig) -> UpstreamConfig,
) -> Mock {
    logs();
    let valid = ValidTokens::default();
    let endpoint = TokenEndpoint::start(endpoint, &valid).await;
    let upstream = Upstream::start(upstream(
        UpstreamConfig::default().with_xoauth2(&valid, &[MAILBOX]),
    ))
    .await;
    Mock {
        endpoint,
        upstream,
        valid,
    }
}

/// How `[route.oauth]` names the app's credential.
enum Cred<'a> {
    Secret,
    Certificate(&'a AppCertificate),
    DeviceCode(&'a Path),
}

fn config_text(data_dir: &Path, mock: &Mock, cred: Cred<'_>) -> String {
    let credential = match cred {
        Cred::Secret => {
            let file = data_dir.join("client.secret");
            std::fs::write(&file, format!("{CLIENT_SECRET}\n")).unwrap();
            format!("client_secret_file = \"{}\"", file.display())
        }
        Cred::Certificate(cert) => format!(
            "certificate_file = \"{}\"\nprivate_key_file = \"{}\"",
            cert.certificate.display(),
            cert.private_key.display()
        ),
        Cred::DeviceCode(token_file) => format!(
            "flow = \"device-code\"\ntoken_file = \"{}\"\ndevice_endpoint = \"{}\"",
            token_file.display(),
            mock.endpoint.device_url()
        ),
    };
    format!(
        r#"
data_dir = "{data}"
hostname = "relay.test"
[[listener]]
address = "127.0.0.1:0"
relay_from = ["127.0.0.1"]
[queue]
retry = ["1h"]
[[route]]
name = "m365"
domains = ["*"]
transport = "smtp"
host = "127.0.0.1"
port = {port}
tls = "starttls"
ca_file = "{ca}"
connect_timeout = "2s"
command_timeout = "5s"
max_connections = 3
[route.auth]
mechanism = "xoauth2"
username = "{MAILBOX}"
[route.oauth]
tenant = "{TENANT}"
client_id = "{CLIENT_ID}"
token_endpoint = "{token_url}"
ca_file = "{token_ca}"
{credential}
"#,
        data = data_dir.display(),
        port = mock.upstream.port(),
        ca = mock.upstream.ca_path().display(),
        token_url = mock.endpoint.token_url(),
        token_ca = mock.endpoint.ca_path().display(),
    )
}

fn load(data_dir: &Path, mock: &Mock, cred: Cred<'_>) -> Config {
    let text = config_text(data_dir, mock, cred);
    std::fs::write(data_dir.join("smarthost.toml"), &text).unwrap();
    match load_str(&text, "smarthost.toml") {
        Ok(config) => config,
        Err(errors) => panic!("configuration refused:\n{errors}\n{text}"),
    }
}

/// The route's OAuth configuration as the loader built it.
fn route_oauth(config: &Config) -> OAuthConfig {
    match &config.routes[0].transport {
        Transport::Smtp(smtp) => match &smtp.auth.as_ref().unwrap().credential {
            Credential::OAuth(oauth) => oauth.clone(),
            other => panic!("not OAuth: {other:?}"),
        },
        other => panic!("not an SMTP route: {other:?}"),
    }
}

async fn send(relay: &Running, sender: &str, subject: &str) {
    let (mut c, _) = Client::connect(relay.local_addrs[0]).await;
    assert!(c.cmd("EHLO scanner1").await.starts_with("250"));
    assert!(
        c.cmd(&format!("MAIL FROM:<{sender}>"))
            .await
            .starts_with("250")
    );
    assert!(
        c.cmd("RCPT TO:<someone@fabrikam.example>")
            .await
            .starts_with("250")
    );
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(format!("Subject: {subject}\r\n\r\nscan attached\r\n.\r\n").as_bytes())
        .await;
    let reply = c.reply().await;
    assert!(reply.starts_with("250"), "{reply}");
    c.cmd("QUIT").await;
}

/// Waits until every message in the queue has been tried and deferred; returns the list.
async fn wait_deferred(relay: &Running, n: usize) -> Vec<MessageInfo> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list = relay.queue.list();
        if list.len() == n
            && list.iter().all(|m| {
                m.attempts >= 1 && !m.active && m.recipients.iter().all(|r| r.state == "deferred")
            })
        {
            return list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not deferred in time: {list:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn reasons(list: &[MessageInfo]) -> Vec<String> {
    list.iter()
        .flat_map(|m| m.recipients.iter())
        .filter_map(|r| r.detail.clone())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The token provider on its own

#[tokio::test]
async fn client_secret_token_is_cached_until_600_seconds_before_expiry() {
    let m = mock(EndpointConfig::default(), |c| c).await;
    let clock = Arc::new(ManualClock::starting_now());
    let provider = TokenProvider::with_clock(&m.endpoint.secret_config(), clock.clone()).unwrap();

    let first = provider.access_token().await.unwrap();
    assert_eq!(m.endpoint.token_requests(), 1);
    let request = &m.endpoint.requests()[0];
    assert_eq!(request.field("grant_type"), Some("client_credentials"));
    assert_eq!(request.field("client_id"), Some(CLIENT_ID));
    assert_eq!(request.field("client_secret"), Some(CLIENT_SECRET));
    assert_eq!(
        request.field("scope"),
        Some("https://outlook.office365.com/.default")
    );
    assert_eq!(first.expires_at, clock.now() + 3599);
    assert!(m.valid.expires_at(first.value.expose()).is_some());

    // 601 s left: still good.
    clock.advance(3599 - 601);
    let again = provider.access_token().await.unwrap();
    assert_eq!(again.value, first.value);
    assert_eq!(m.endpoint.token_requests(), 1);

    // 599 s left: HVE would refuse it, so a new one.
    clock.advance(2);
    let renewed = provider.access_token().await.unwrap();
    assert_ne!(renewed.value, first.value);
    assert_eq!(m.endpoint.token_requests(), 2);
    assert_eq!(provider.token_requests(), 2);

    // The endpoint fails: the current token still works for a while, until a minute before it ends.
    m.endpoint.configure(|c| c.fail = Some(Fail::ServerError));
    clock.advance(3000);
    let old = provider.access_token().await.unwrap();
    assert_eq!(old.value, renewed.value);
    clock.advance(540);
    assert!(provider.access_token().await.is_err());
    assert_eq!(m.endpoint.token_requests(), 4);
    m.endpoint.configure(|c| c.fail = None);

    // Refused by an upstream: dropped, the next call asks again.
    provider.invalidate(&renewed);
    let third = provider.access_token().await.unwrap();
    assert_ne!(third.value, renewed.value);
    assert_eq!(m.endpoint.token_requests(), 5);
    provider.invalidate(&third);
    m.endpoint.configure(|c| c.fail = Some(Fail::ServerError));
    assert!(
        provider.access_token().await.is_err(),
        "a refused token is never handed out again"
    );
    assert_no_secret(&all_secrets(&m.endpoint), &[]);
}

#[tokio::test]
async fn certificate_credential_sends_a_signed_assertion() {
    let cert = AppCertificate::new();
    let m = mock(EndpointConfig::default().with_certificate(&cert), |c| c).await;
    let provider = TokenProvider::new(&m.endpoint.certificate_config(&cert)).unwrap();
    let token = provider.access_token().await.unwrap();
    assert!(m.valid.expires_at(token.value.expose()).is_some());

    let request = &m.endpoint.requests()[0];
    assert_eq!(request.status, 200);
    assert_eq!(request.field("client_secret"), None);
    assert_eq!(
        request.field("client_assertion_type"),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    use base64::Engine;
    let assertion = request.field("client_assertion").unwrap();
    let header: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(assertion.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["x5t"], cert.x5t().as_str());
    assert_eq!(header["x5t#S256"], cert.x5t_s256().as_str());

    // A second assertion is a new one (the endpoint refuses a reused jti).
    provider.invalidate(&token);
    provider.access_token().await.unwrap();
    assert_eq!(m.endpoint.requests()[1].status, 200);
}

#[tokio::test]
async fn certificate_not_registered_on_the_app_is_refused_with_entras_reason() {
    let registered = AppCertificate::new();
    let m = mock(EndpointConfig::default(), |c| c).await;
    // The endpoint knows no certificate for the app.
    let provider = TokenProvider::new(&m.endpoint.certificate_config(&registered)).unwrap();
    let err = provider.access_token().await.unwrap_err().to_string();
    assert!(err.contains("AADSTS700027"), "{err}");
    assert!(err.contains("upload the certificate"), "{err}");
}

#[tokio::test]
async fn concurrent_callers_wait_for_one_renewal_and_share_its_outcome() {
    let m = mock(
        EndpointConfig {
            delay: Duration::from_millis(300),
            ..EndpointConfig::default()
        },
        |c| c,
    )
    .await;
    let provider = TokenProvider::new(&m.endpoint.secret_config()).unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let p = Arc::clone(&provider);
            tokio::spawn(async move { p.access_token().await })
        })
        .collect();
    let mut values = Vec::new();
    for task in tasks {
        values.push(task.await.unwrap().unwrap().value);
    }
    assert!(values.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(m.endpoint.token_requests(), 1);

    // A failure is shared too: the failing endpoint is asked once, not once per caller.
    m.endpoint.configure(|c| c.fail = Some(Fail::InvalidClient));
    provider.invalidate(&provider.access_token().await.unwrap());
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let p = Arc::clone(&provider);
            tokio::spawn(async move { p.access_token().await })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap().is_err());
    }
    assert_eq!(m.endpoint.token_requests(), 2);
}

#[tokio::test]
async fn entra_errors_are_quoted_with_advice_and_without_the_secret() {
    let m = mock(
        EndpointConfig {
            client_secret: Some("a-different-secret-value".into()),
            ..EndpointConfig::default()
        },
        |c| c,
    )
    .await;
    let provider = TokenProvider::new(&m.endpoint.secret_config()).unwrap();
    let err = provider.access_token().await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, OAuthError::Refused { ref error, .. } if error == "invalid_client"));
    assert!(text.contains("HTTP 401 invalid_client"), "{text}");
    assert!(
        text.contains("AADSTS7000215: Invalid client secret provided"),
        "{text}"
    );
    assert!(text.contains(&m.endpoint.token_url()), "{text}");
    assert!(text.contains("not its Secret ID"), "{text}");
    assert!(!text.contains('\n'), "one line: {text}");
    assert_no_secret(&all_secrets(&m.endpoint), &[&text, &format!("{err:?}")]);

    // 500 with an HTML page: quoted briefly, still no secret.
    m.endpoint.configure(|c| c.fail = Some(Fail::ServerError));
    let text = provider.access_token().await.unwrap_err().to_string();
    assert!(text.contains("HTTP 500"), "{text}");
    assert_no_secret(&all_secrets(&m.endpoint), &[&text]);
}

#[tokio::test]
async fn the_token_endpoints_certificate_is_verified() {
    let m = mock(EndpointConfig::default(), |c| c).await;
    let untrusted = OAuthConfig {
        ca_file: None,
        ..m.endpoint.secret_config()
    };
    let provider = TokenProvider::new(&untrusted).unwrap();
    let text = provider.access_token().await.unwrap_err().to_string();
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    assert_eq!(m.endpoint.token_requests(), 0);
}

#[tokio::test]
async fn delegated_routes_use_the_refresh_token_and_store_its_successor() {
    let m = mock(EndpointConfig::default(), |c| c).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("oauth/m365.json");
    let config = m.endpoint.device_code_config(&token_file);
    let provider = TokenProvider::new(&config).unwrap();

    let err = provider.access_token().await.unwrap_err();
    assert!(matches!(err, OAuthError::NotSignedIn(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("no signed-in account for this route")
            && text.contains("smarthost oauth login --route"),
        "{text}"
    );
    assert_eq!(m.endpoint.token_requests(), 0);

    let first = m.endpoint.add_refresh_token();
    smarthost::deliver::oauth::token_file::write(
        &token_file,
        &smarthost::deliver::oauth::token_file::StoredToken {
            refresh_token: first.clone(),
            obtained_at: 1,
            account: Some("scanner@contoso.example".into()),
        },
    )
    .unwrap();
    provider.access_token().await.unwrap();
    let request = &m.endpoint.requests()[0];
    assert_eq!(request.field("grant_type"), Some("refresh_token"));
    assert_eq!(request.field("refresh_token"), Some(first.as_str()));
    assert_eq!(request.field("client_secret"), None);

    let stored = smarthost::deliver::oauth::token_file::read(&token_file)
        .unwrap()
        .unwrap();
    assert_ne!(stored.refresh_token, first, "the rotated token is kept");
    assert!(m.endpoint.refresh_token_valid(&stored.refresh_token));
    assert!(!m.endpoint.refresh_token_valid(&first));
    assert_eq!(stored.account.as_deref(), Some("scanner@contoso.example"));
    assert_eq!(file_mode(&token_file), 0o600);

    // A revoked sign-in says what to do.
    m.endpoint.configure(|c| c.rotate_refresh_tokens = true);
    std::fs::remove_file(&token_file).unwrap();
    smarthost::deliver::oauth::token_file::write(
        &token_file,
        &smarthost::deliver::oauth::token_file::StoredToken {
            refresh_token: first.clone(),
            obtained_at: 1,
            account: None,
        },
    )
    .unwrap();
    let provider = TokenProvider::new(&config).unwrap();
    let text = provider.access_token().await.unwrap_err().to_string();
    assert!(
        text.contains("AADSTS700082") && text.contains("oauth login"),
        "{text}"
    );
    assert_no_secret(&all_secrets(&m.endpoint), &[&text]);
}

fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn routes_with_the_same_credential_share_one_provider() {
    let m = mock(EndpointConfig::default(), |c| c).await;
    let config = m.endpoint.secret_config();
    let a = TokenProvider::shared(&config).unwrap();
    let b = TokenProvider::shared(&config).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    let graph = OAuthConfig {
        scope: "https://graph.microsoft.com/.default".into(),
        ..config.clone()
    };
    let c = TokenProvider::shared(&graph).unwrap();
    assert!(!Arc::ptr_eq(&a, &c));
    // Not shared: its own.
    assert!(!Arc::ptr_eq(&a, &TokenProvider::new(&config).unwrap()));
}

// ---------------------------------------------------------------------------------------------
// The relay end to end

#[tokio::test]
async fn xoauth2_delivers_many_messages_with_one_token() {
    // The endpoint is slow, so the first deliveries all wait for the same token request.
    let m = mock(
        EndpointConfig {
            delay: Duration::from_millis(300),
            ..EndpointConfig::default()
        },
        |c| c,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start(load(dir.path(), &m, Cred::Secret)).await.unwrap();
    for i in 0..6 {
        send(&relay, MAILBOX, &format!("scan {i}")).await;
    }
    let got = m.upstream.wait_for_messages(6, WAIT).await;
    assert!(
        got.iter()
            .all(|msg| msg.auth_user.as_deref() == Some(MAILBOX) && msg.tls)
    );
    assert_eq!(
        m.endpoint.token_requests(),
        1,
        "one token for every message"
    );

    let attempts = m.upstream.auth_attempts();
    assert!(!attempts.is_empty());
    for a in &attempts {
        assert_eq!(
            (a.mechanism.as_str(), a.user.as_str()),
            ("XOAUTH2", MAILBOX)
        );
        assert!(a.accepted);
        // Microsoft's tokens make the line longer than 2,500 bytes.
        assert!(a.line_len > 2500, "{a:?}");
    }
    assert!(m.upstream.max_open_connections(MAILBOX) <= 3);
    assert_eq!(m.upstream.breaches(), Default::default());

    let logs = log_text();
    assert!(
        logs.contains("AUTH XOAUTH2 <redacted>"),
        "the AUTH line is logged redacted"
    );
    relay.shutdown().await;
    assert_no_secret(&all_secrets(&m.endpoint), &[]);
}

#[tokio::test]
async fn xoauth2_delivers_with_a_certificate_credential() {
    let cert = AppCertificate::new();
    let m = mock(EndpointConfig::default().with_certificate(&cert), |c| c).await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start(load(dir.path(), &m, Cred::Certificate(&cert)))
        .await
        .unwrap();
    send(&relay, MAILBOX, "certificate").await;
    let got = m.upstream.wait_for_messages(1, WAIT).await;
    assert_eq!(got[0].auth_user.as_deref(), Some(MAILBOX));
    let requests = m.endpoint.requests();
    assert_eq!(requests.len(), 1);
    assert!(requests[0].field("client_assertion").is_some());
    relay.shutdown().await;
    assert_no_secret(&all_secrets(&m.endpoint), &[]);
}

#[tokio::test]
async fn token_is_renewed_when_less_than_600_seconds_are_left() {
    let m = mock(EndpointConfig::default(), |c| c).await;
    let dir = tempfile::tempdir().unwrap();
    let config = load(dir.path(), &m, Cred::Secret);
    // The relay's transport finds this provider (same credential) and so runs on this clock.
    let clock = Arc::new(ManualClock::starting_now());
    let provider = TokenProvider::shared_with_clock(&route_oauth(&config), clock.clone()).unwrap();
    let relay = start(config).await.unwrap();

    send(&relay, MAILBOX, "first").await;
    m.upstream.wait_for_messages(1, WAIT).await;
    assert_eq!(provider.token_requests(), 1);

    // 599 s left: too little for Microsoft (HVE: "501 5.5.127 Token will expire soon").
    clock.advance(3000);
    // Past the connection cache, so the next message authenticates again.
    tokio::time::sleep(smarthost::deliver::smtp::IDLE_REUSE + Duration::from_millis(200)).await;
    send(&relay, MAILBOX, "second").await;
    m.upstream.wait_for_messages(2, WAIT).await;
    assert_eq!(provider.token_requests(), 2);
    assert_eq!(m.endpoint.token_requests(), 2);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_refused_token_is_replaced_once_on_a_new_connection() {
    let m = mock(EndpointConfig::default(), |c| UpstreamConfig {
        reject_xoauth2: 1,
        ..c
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start(load(dir.path(), &m, Cred::Secret)).await.unwrap();
    send(&relay, MAILBOX, "revoked token").await;
    m.upstream.wait_for_messages(1, WAIT).await;

    let attempts = m.upstream.auth_attempts();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(!attempts[0].accepted && attempts[1].accepted);
    assert_ne!(attempts[0].connection, attempts[1].connection);
    assert_eq!(m.endpoint.token_requests(), 2, "a new token for the retry");
    relay.shutdown().await;
    assert_no_secret(&all_secrets(&m.endpoint), &[]);
}

#[tokio::test]
async fn a_token_refused_twice_defers_with_the_reply_and_its_explanation() {
    let m = mock(EndpointConfig::default(), |c| UpstreamConfig {
        reject_xoauth2: 2,
        // Gmail-style: the error JSON in a 334 challenge first.
        xoauth2_error_challenge: true,
        ..c
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start(load(dir.path(), &m, Cred::Secret)).await.unwrap();
    send(&relay, MAILBOX, "refused").await;
    let list = wait_deferred(&relay, 1).await;
    let reasons = reasons(&list);
    let reason = &reasons[0];
    assert!(
        reason.contains("535 5.7.3 Authentication unsuccessful"),
        "{reason}"
    );
    assert!(reason.contains("in reply to AUTH XOAUTH2"), "{reason}");
    assert!(
        reason.contains("authentication failed: wrong credentials or token"),
        "{reason}"
    );
    assert!(
        reason.contains("a new access token was refused as well"),
        "{reason}"
    );
    assert!(reason.contains(r#""status":"401""#), "{reason}");
    assert_eq!(m.upstream.auth_attempts().len(), 2, "one retry, not more");
    assert_eq!(m.endpoint.token_requests(), 2);
    assert!(m.upstream.messages().is_empty());
    relay.shutdown().await;
    let texts: Vec<&str> = reasons.iter().map(String::as_str).collect();
    assert_no_secret(&all_secrets(&m.endpoint), &texts);
}

#[tokio::test]
async fn a_failing_token_endpoint_defers_with_entras_reason_and_no_secret() {
    let m = mock(
        EndpointConfig {
            fail: Some(Fail::InvalidClient),
            ..EndpointConfig::default()
        },
        |c| c,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start(load(dir.path(), &m, Cred::Secret)).await.unwrap();
    send(&relay, MAILBOX, "no token").await;
    let list = wait_deferred(&relay, 1).await;
    let reasons = reasons(&list);
    let reason = &reasons[0];
    assert!(
        reason.contains("no OAuth 2.0 access token for relay@contoso.example"),
        "{reason}"
    );
    assert!(
        reason.contains("AADSTS7000215: Invalid client secret provided"),
        "{reason}"
    );
    assert!(reason.contains("invalid_client"), "{reason}");
    assert_eq!(m.upstream.connections(), 0, "no connection without a token");
    let detail = relay.queue.show(&list[0].id).await.unwrap();
    let history = format!("{:?}", detail.history);
    relay.shutdown().await;
    assert_no_secret(&all_secrets(&m.endpoint), &[reason, &history]);
}

#[tokio::test]
async fn oauth_login_with_the_device_code_then_the_relay_delivers() {
    let m = mock(
        EndpointConfig {
            pending_polls: 2,
            device_interval: 1,
            account: MAILBOX.into(),
            ..EndpointConfig::default()
        },
        |c| c,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("oauth/m365.json");
    let config = load(dir.path(), &m, Cred::DeviceCode(&token_file));

    // Before the sign-in: deferred, saying what to do.
    let relay = start(config.clone()).await.unwrap();
    send(&relay, MAILBOX, "before sign-in").await;
    let list = wait_deferred(&relay, 1).await;
    let reason = reasons(&list).remove(0);
    assert!(
        reason.contains("no signed-in account for this route")
            && reason.contains("smarthost oauth login --route"),
        "{reason}"
    );
    relay.shutdown().await;

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .args(["oauth", "login", "--route", "m365", "--config"])
        .arg(dir.path().join("smarthost.toml"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("https://microsoft.com/devicelogin"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("Signed in as {MAILBOX}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&token_file.display().to_string()),
        "{stdout}"
    );
    assert_eq!(file_mode(&token_file), 0o600);

    let requests = m.endpoint.requests();
    let device = &requests[0];
    assert!(device.path.ends_with("/devicecode"));
    assert_eq!(
        device.field("scope"),
        Some("https://outlook.office.com/SMTP.Send offline_access")
    );
    let polls: Vec<_> = requests
        .iter()
        .filter(|r| r.field("grant_type") == Some("urn:ietf:params:oauth:grant-type:device_code"))
        .collect();
    assert_eq!(polls.len(), 3, "pending twice, then signed in");

    // The relay now delivers with the refresh token, and keeps its successor.
    let signed_in = smarthost::deliver::oauth::token_file::read(&token_file)
        .unwrap()
        .unwrap();
    let relay = start(config).await.unwrap();
    relay.queue.retry_all();
    let got = m.upstream.wait_for_messages(1, WAIT).await;
    assert_eq!(got[0].auth_user.as_deref(), Some(MAILBOX));
    let last = m.endpoint.requests().pop().unwrap();
    assert_eq!(last.field("grant_type"), Some("refresh_token"));
    assert_eq!(
        last.field("scope"),
        Some("https://outlook.office.com/SMTP.Send offline_access")
    );
    let rotated = smarthost::deliver::oauth::token_file::read(&token_file)
        .unwrap()
        .unwrap();
    assert_ne!(rotated.refresh_token, signed_in.refresh_token);
    assert_eq!(file_mode(&token_file), 0o600);
    relay.shutdown().await;
    assert_no_secret(&all_secrets(&m.endpoint), &[&stdout, &stderr, &reason]);
}

#[tokio::test]
async fn oauth_login_refuses_routes_without_delegated_sign_in() {
    let m = mock(EndpointConfig::default(), |c| c).await;
    let dir = tempfile::tempdir().unwrap();
    load(dir.path(), &m, Cred::Secret);
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .args(["oauth", "login", "--route", "m365", "--config"])
        .arg(dir.path().join("smarthost.toml"))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("client credentials"), "{stderr}");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .args(["oauth", "login", "--route", "nope", "--config"])
        .arg(dir.path().join("smarthost.toml"))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no route named \"nope\""), "{stderr}");
    assert_eq!(m.endpoint.token_requests(), 0);
}

// ---------------------------------------------------------------------------------------------
// Exchange Online's other answers, as the test upstream plays them

#[tokio::test]
async fn send_as_is_enforced_and_fails_the_recipient() {
    let m = mock(EndpointConfig::default(), |c| UpstreamConfig {
        enforce_send_as: true,
        ..c
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start(load(dir.path(), &m, Cred::Secret)).await.unwrap();
    send(&relay, MAILBOX, "as myself").await;
    m.upstream.wait_for_messages(1, WAIT).await;
    send(&relay, "scanner@contoso.example", "as someone else").await;
    // 5.7.60 is permanent: the recipient fails (a bounce goes to the sender).
    let deadline = tokio::time::Instant::now() + WAIT;
    while !m
        .upstream
        .commands()
        .iter()
        .any(|c| c.starts_with("MAIL FROM:<scanner@contoso.example>"))
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(m.upstream.messages().len(), 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn basic_auth_disabled_for_the_tenant_defers_with_the_explanation() {
    let m = mock(EndpointConfig::default(), |c| UpstreamConfig {
        password_auth_reply: Some(
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant".into(),
        ),
        ..c
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), &m, Cred::Secret);
    // The same route with a password instead of OAuth.
    let start_auth = text.find("[route.auth]").unwrap();
    let password_file = dir.path().join("pass");
    std::fs::write(&password_file, "Basic-Pass-123\n").unwrap();
    let text = format!(
        "{}[route.auth]\nmechanism = \"login\"\nusername = \"{MAILBOX}\"\npassword_file = \"{}\"\n",
        &text[..start_auth],
        password_file.display()
    );
    let relay = start(load_str(&text, "t.toml").expect("config"))
        .await
        .unwrap();
    send(&relay, MAILBOX, "basic").await;
    let list = wait_deferred(&relay, 1).await;
    let reason = reasons(&list).remove(0);
    assert!(reason.contains("535 5.7.139"), "{reason}");
    assert!(
        reason.contains("SMTP AUTH is disabled for the mailbox or tenant"),
        "{reason}"
    );
    relay.shutdown().await;
    assert_no_secret(&["Basic-Pass-123".to_string()], &[&reason]);
}

#[tokio::test]
async fn the_relay_keeps_to_three_connections_per_mailbox() {
    let m = mock(EndpointConfig::default(), |c| UpstreamConfig {
        max_connections_per_user: Some(3),
        ..c
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start(load(dir.path(), &m, Cred::Secret)).await.unwrap();
    let sends: Vec<_> = (0..12)
        .map(|i| {
            let addr = relay.local_addrs[0];
            tokio::spawn(async move {
                let (mut c, _) = Client::connect(addr).await;
                c.cmd("EHLO scanner").await;
                c.cmd(&format!("MAIL FROM:<{MAILBOX}>")).await;
                c.cmd("RCPT TO:<x@fabrikam.example>").await;
                c.cmd("DATA").await;
                c.send(format!("Subject: {i}\r\n\r\nx\r\n.\r\n").as_bytes())
                    .await;
                let reply = c.reply().await;
                c.cmd("QUIT").await;
                reply
            })
        })
        .collect();
    for s in sends {
        assert!(s.await.unwrap().starts_with("250"));
    }
    m.upstream.wait_for_messages(12, WAIT).await;
    assert!(m.upstream.max_open_connections(MAILBOX) <= 3);
    assert_eq!(m.upstream.breaches().connections, 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_key_that_does_not_belong_to_the_certificate_is_a_start_up_error() {
    let m = mock(EndpointConfig::default(), |c| c).await;
    let app = AppCertificate::new();
    let other_key = rcgen::KeyPair::generate().unwrap();
    let other = rcgen::CertificateParams::new(vec!["other".into()])
        .unwrap()
        .self_signed(&other_key)
        .unwrap();
    let other_cert = app.dir.path().join("other.crt");
    std::fs::write(&other_cert, other.pem()).unwrap();
    let config = OAuthConfig {
        grant: smarthost::config::OAuthGrant::ClientCertificate {
            certificate: other_cert,
            private_key: app.private_key.clone(),
        },
        ..m.endpoint.secret_config()
    };
    let err = format!("{:#}", TokenProvider::new(&config).unwrap_err());
    assert!(err.contains("does not belong to the certificate"), "{err}");
}

#[tokio::test]
async fn hve_refuses_tokens_about_to_expire() {
    // An endpoint that issues tokens shorter than HVE accepts: each is tried, none is accepted.
    let m = mock(
        EndpointConfig {
            expires_in: 500,
            ..EndpointConfig::default()
        },
        |c| UpstreamConfig {
            hve_min_token_lifetime: Some(600),
            ..c
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start(load(dir.path(), &m, Cred::Secret)).await.unwrap();
    send(&relay, MAILBOX, "hve").await;
    let list = wait_deferred(&relay, 1).await;
    let reason = reasons(&list).remove(0);
    assert!(reason.contains("501 5.5.127"), "{reason}");
    assert!(reason.contains("Token will expire soon"), "{reason}");
    assert_eq!(
        m.endpoint.token_requests(),
        2,
        "a new token for the one retry"
    );
    relay.shutdown().await;
    assert_no_secret(&all_secrets(&m.endpoint), &[&reason]);
}

#[tokio::test]
async fn the_upstream_counts_messages_over_its_rate_limit() {
    let m = mock(EndpointConfig::default(), |c| UpstreamConfig {
        message_rate: Some((2, Duration::from_secs(60))),
        ..c
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start(load(dir.path(), &m, Cred::Secret)).await.unwrap();
    for i in 0..3 {
        send(&relay, MAILBOX, &format!("rate {i}")).await;
    }
    m.upstream.wait_for_messages(2, WAIT).await;
    let list = wait_deferred(&relay, 1).await;
    let reason = reasons(&list).remove(0);
    assert!(reason.contains("451 4.7.500 Server busy"), "{reason}");
    assert_eq!(m.upstream.breaches().rate, 1);
    assert_eq!(m.upstream.messages().len(), 2);
    relay.shutdown().await;
}
