//! The Microsoft 365 modes from the outside: configurations for each mode load to the routes they
//! promise, missing pieces are reported with their lines, Direct Send refuses recipients outside
//! the tenant at RCPT on the real relay, connector certificates are checked, and `smarthost
//! explain` explains the replies of the reference table.

mod common;

use common::client::Client;
use common::upstream::{Upstream, UpstreamConfig};
use smarthost::cli::serve::start;
use smarthost::config::{
    AuthMechanism, ClientCert, Config, Credential, M365Mode, OAuthGrant, Rate, SmtpRoute, TlsMode,
    Transport, load_str,
};
use smarthost::deliver::connector::check_client_certificate;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const LISTENER: &str = "[[listener]]\naddress = \"127.0.0.1:0\"\nrelay_from = [\"127.0.0.1\"]\n";

fn load(routes: &str) -> Config {
    let text = format!("{LISTENER}{routes}");
    load_str(&text, "m365.toml").unwrap_or_else(|e| panic!("{text}\n{e}"))
}

fn smtp(config: &Config, name: &str) -> SmtpRoute {
    let route = config.routes.iter().find(|r| r.name == name).unwrap();
    match &route.transport {
        Transport::Smtp(smtp) => smtp.clone(),
        other => panic!("{name}: {other:?}"),
    }
}

/// A password file, so that the configurations load without environment variables.
fn secret_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, "not-a-real-secret\n").unwrap();
    path
}

#[test]
fn each_mode_loads_to_its_microsoft_365_route() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "secret");
    let now = unix_now();
    let (cert, key) = certificate(
        dir.path(),
        "relay",
        &["relay.contoso.com"],
        now - DAY,
        now + 365 * DAY,
    );
    let config = load(&format!(
        r#"
[[route]]
name = "submission"
domains = ["*"]
mode = "m365-client-submission"
rewrite_sender = "scanner@contoso.com"
[route.auth]
username = "scanner@contoso.com"
[route.oauth]
tenant = "contoso.onmicrosoft.com"
client_id = "app-id"
client_secret_file = "{secret}"

[[route]]
name = "direct"
domains = ["contoso.com"]
mode = "m365-direct-send"
tenant_domain = "contoso.com"

[[route]]
name = "connector"
domains = ["fabrikam.com"]
mode = "m365-connector"
tenant_domain = "contoso.com"
accepted_domains = ["contoso.com"]
client_certificate = "{cert}"
client_private_key = "{key}"

[[route]]
name = "hve"
domains = ["lists.contoso.com"]
mode = "m365-hve"
[route.auth]
mechanism = "login"
username = "hve@contoso.com"
password_file = "{secret}"

[[route]]
name = "graph"
domains = ["graph.contoso.com"]
mode = "m365-graph"
mailbox = "scanner@contoso.com"
[route.oauth]
tenant = "contoso.onmicrosoft.com"
client_id = "app-id"
client_secret_file = "{secret}"
"#,
        secret = secret.display(),
        cert = cert.display(),
        key = key.display(),
    ));

    let submission = smtp(&config, "submission");
    assert_eq!(
        (
            submission.host.as_str(),
            submission.port,
            submission.tls,
            submission.max_connections
        ),
        ("smtp.office365.com", 587, TlsMode::StartTls, 3)
    );
    let auth = submission.auth.unwrap();
    assert_eq!(auth.mechanism, AuthMechanism::XOAuth2);
    assert_eq!(auth.username, "scanner@contoso.com");
    let Credential::OAuth(oauth) = &auth.credential else {
        panic!("{auth:?}")
    };
    assert_eq!(
        oauth.token_endpoint,
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    assert_eq!(oauth.scope, "https://outlook.office365.com/.default");
    assert!(matches!(oauth.grant, OAuthGrant::ClientSecret(_)));
    let route = &config.routes[0];
    assert_eq!(route.mode, Some(M365Mode::ClientSubmission));
    assert_eq!(
        route.limits.message_rate,
        Some(Rate {
            count: 30,
            per: Duration::from_secs(60)
        })
    );
    assert_eq!(
        route.limits.recipient_rate,
        Some(Rate {
            count: 10_000,
            per: Duration::from_secs(86_400)
        })
    );
    assert_eq!(route.limits.recipients_per_message, 500);
    assert_eq!(
        route.rewrite_sender.as_ref().unwrap().address,
        "scanner@contoso.com"
    );

    let direct = smtp(&config, "direct");
    assert_eq!(
        (direct.host.as_str(), direct.port, direct.tls),
        (
            "contoso-com.mail.protection.outlook.com",
            25,
            TlsMode::Opportunistic
        )
    );
    assert!(direct.auth.is_none());
    assert_eq!(config.routes[1].accepted_domains, ["contoso.com"]);

    let connector = smtp(&config, "connector");
    assert_eq!(
        (connector.host.as_str(), connector.port, connector.tls),
        (
            "contoso-com.mail.protection.outlook.com",
            25,
            TlsMode::StartTls
        )
    );
    assert_eq!(
        connector.client_cert,
        Some(ClientCert {
            certificate: cert,
            private_key: key,
        })
    );
    assert!(config.routes[2].accepted_domains.is_empty());

    let hve = smtp(&config, "hve");
    assert_eq!(
        (hve.host.as_str(), hve.port, hve.tls),
        ("smtp.hve.mx.microsoft", 587, TlsMode::StartTls)
    );
    assert_eq!(hve.auth.unwrap().mechanism, AuthMechanism::Login);

    let Transport::Graph(graph) = &config.routes[4].transport else {
        panic!("{:?}", config.routes[4].transport)
    };
    assert_eq!(graph.base_url, "https://graph.microsoft.com/v1.0");
    assert_eq!(graph.mailbox, "scanner@contoso.com");
    assert_eq!(graph.max_connections, 4);
    assert_eq!(graph.timeout, Duration::from_secs(60));
    assert_eq!(graph.oauth.scope, "https://graph.microsoft.com/.default");
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn missing_pieces_are_reported_with_their_lines() {
    let text = format!(
        "{LISTENER}\
[[route]]
name = \"submission\"
domains = [\"*\"]
mode = \"m365-client-submission\"

[[route]]
name = \"direct\"
domains = [\"contoso.com\"]
mode = \"m365-direct-send\"
[route.auth]
username = \"u@contoso.com\"
password_env = \"SMARTHOST_TEST_UNSET_PASSWORD\"

[[route]]
name = \"connector\"
domains = [\"fabrikam.com\"]
mode = \"m365-connector\"
tenant_domain = \"contoso.com\"

[[route]]
name = \"graph\"
domains = [\"graph.contoso.com\"]
mode = \"m365-graph\"
[route.oauth]
tenant = \"contoso.onmicrosoft.com\"
client_id = \"app\"
flow = \"device-code\"
"
    );
    let errors = load_str(&text, "m365.toml").unwrap_err();
    let got: Vec<(Option<usize>, &str)> = errors
        .errors
        .iter()
        .map(|e| (e.line, e.message.as_str()))
        .collect();
    let expected: &[(usize, &str)] = &[
        (4, "mode = \"m365-client-submission\" needs [route.auth]"),
        (9, "mode = \"m365-direct-send\" needs `tenant_domain`"),
        (13, "mode = \"m365-direct-send\" takes no [route.auth]"),
        (
            15,
            "environment variable SMARTHOST_TEST_UNSET_PASSWORD (password_env) is not set",
        ),
        (17, "mode = \"m365-connector\" needs `accepted_domains`"),
        (
            17,
            "mode = \"m365-connector\" needs `client_certificate` and `client_private_key`",
        ),
        (23, "a graph route needs `mailbox`"),
    ];
    assert_eq!(got.len(), expected.len(), "{errors}");
    for (line, fragment) in expected {
        assert!(
            got.iter()
                .any(|(l, m)| *l == Some(*line) && m.contains(fragment)),
            "expected {line}: {fragment}\n{errors}"
        );
    }
    // As printed by check-config: file:line: message.
    assert!(
        errors
            .to_string()
            .contains("m365.toml:4: mode = \"m365-client-submission\" needs [route.auth]"),
        "{errors}"
    );
}

#[tokio::test]
async fn direct_send_refuses_recipients_outside_the_tenant_at_rcpt() {
    let upstream = Upstream::start(UpstreamConfig::default()).await;
    let data = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
data_dir = "{data}"
hostname = "relay.test"
{LISTENER}
[[route]]
name = "direct-send"
domains = ["*"]
mode = "m365-direct-send"
tenant_domain = "contoso.com"
accepted_domains = ["contoso.com", "Contoso.co.uk"]
host = "127.0.0.1"
port = {port}
ca_file = "{ca}"

[[route]]
name = "internal"
domains = ["*.contoso.net"]
host = "127.0.0.1"
port = {port}
ca_file = "{ca}"
accepted_domains = ["lists.contoso.net"]
"#,
        data = data.path().display(),
        port = upstream.port(),
        ca = upstream.ca_path().display(),
    );
    let config = load_str(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    let relay = start(config).await.expect("relay starts");

    let (mut c, _) = Client::connect(relay.local_addrs[0]).await;
    assert!(c.cmd("EHLO scanner1").await.starts_with("250"));
    assert!(
        c.cmd("MAIL FROM:<scanner@contoso.com>")
            .await
            .starts_with("250")
    );
    for inside in [
        "alice@contoso.com",
        "Bob@CONTOSO.CO.UK",
        "carol@Contoso.Com",
    ] {
        let reply = c.cmd(&format!("RCPT TO:<{inside}>")).await;
        assert!(reply.starts_with("250"), "{inside}: {reply}");
    }
    for (outside, domains) in [
        ("someone@fabrikam.com", "contoso.com, contoso.co.uk"),
        ("eve@eu.contoso.com", "contoso.com, contoso.co.uk"),
        (
            "mallory@contoso.com.evil.example",
            "contoso.com, contoso.co.uk",
        ),
    ] {
        let reply = c.cmd(&format!("RCPT TO:<{outside}>")).await;
        assert_eq!(
            reply,
            format!(
                "550 5.7.1 Direct Send through route direct-send can only deliver to {domains}; \
                 <{outside}> is outside them (Direct Send reaches only the tenant's own accepted \
                 domains)"
            )
        );
    }
    // Any route may be restricted; the reply then names its accepted_domains.
    assert!(
        c.cmd("RCPT TO:<all@lists.contoso.net>")
            .await
            .starts_with("250")
    );
    assert_eq!(
        c.cmd("RCPT TO:<x@other.contoso.net>").await,
        "550 5.7.1 Route internal can only deliver to lists.contoso.net; <x@other.contoso.net> is \
         outside them (its accepted_domains)"
    );
    // The refused recipients do not spoil the transaction.
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"Subject: scan\r\n\r\nscan attached\r\n.\r\n").await;
    let reply = c.reply().await;
    assert!(reply.starts_with("250"), "{reply}");
    c.cmd("QUIT").await;

    // One transaction per route.
    let delivered = upstream.wait_for_messages(2, Duration::from_secs(20)).await;
    assert_eq!(delivered.len(), 2);
    let delivered: Vec<_> = delivered
        .into_iter()
        .filter(|m| m.recipients[0] != "all@lists.contoso.net")
        .collect();
    let mut recipients = delivered[0].recipients.clone();
    recipients.sort();
    assert_eq!(
        recipients,
        [
            "Bob@CONTOSO.CO.UK",
            "alice@contoso.com",
            "carol@Contoso.Com"
        ]
    );
    assert!(delivered[0].tls, "opportunistic TLS is used when offered");
    relay.shutdown().await;
}

const DAY: i64 = 86_400;

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn at(unix: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix as u64)
}

/// A self-signed certificate with `names` (the first also as CN), valid from `from` to `until`
/// (Unix seconds), as PEM files in `dir`.
fn certificate(
    dir: &Path,
    file: &str,
    names: &[&str],
    from: i64,
    until: i64,
) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0].clone());
    params.not_before = time::OffsetDateTime::from_unix_timestamp(from).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(until).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let cert_path = dir.join(format!("{file}.pem"));
    let key_path = dir.join(format!("{file}.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

#[test]
fn connector_certificates_must_name_an_accepted_domain() {
    let dir = tempfile::tempdir().unwrap();
    // 2026-06-01 to 2027-06-01, checked at chosen moments.
    let (from, until) = (1_780_272_000, 1_811_808_000);
    let accepted = vec!["contoso.com".to_string(), "contoso.co.uk".to_string()];
    let middle = at(from + 100 * DAY);
    let cases: &[(&[&str], Result<&str, &str>)] = &[
        (&["contoso.com"], Ok("contoso.com")),
        (&["CONTOSO.CO.UK"], Ok("contoso.co.uk")),
        (&["*.contoso.com"], Ok("*.contoso.com")),
        (&["relay.contoso.com"], Ok("relay.contoso.com")),
        (
            &["relay.fabrikam.com", "contoso.co.uk"],
            Ok("contoso.co.uk"),
        ),
        (
            &["relay.fabrikam.com", "*.fabrikam.com"],
            Err(
                "the certificate's names (relay.fabrikam.com, *.fabrikam.com) match none of the accepted domains (contoso.com, contoso.co.uk)",
            ),
        ),
        (
            &["notcontoso.com"],
            Err("match none of the accepted domains"),
        ),
    ];
    for (i, (names, expected)) in cases.iter().enumerate() {
        let (cert, _) = certificate(dir.path(), &format!("c{i}"), names, from, until);
        match (check_client_certificate(&cert, &accepted, middle), expected) {
            (Ok(report), Ok(name)) => {
                assert_eq!(
                    report.matched.as_ref().map(|(_, n)| n.as_str()),
                    Some(*name),
                    "{names:?}"
                );
                assert!(
                    report.warnings.is_empty(),
                    "{names:?}: {:?}",
                    report.warnings
                );
            }
            (Err(message), Err(fragment)) => {
                assert!(message.contains(fragment), "{names:?}: {message}")
            }
            (got, want) => panic!("{names:?}: got {got:?}, want {want:?}"),
        }
    }

    let (cert, _) = certificate(dir.path(), "dated", &["contoso.com"], from, until);
    // 29 days before the end: a warning; 31 days: none.
    let soon = check_client_certificate(&cert, &accepted, at(until - 29 * DAY)).unwrap();
    assert_eq!(soon.warnings.len(), 1, "{soon:?}");
    assert!(
        soon.warnings[0]
            .starts_with("the certificate expires on 2027-06-01 00:00 UTC (in 29 days): renew it"),
        "{soon:?}"
    );
    let fine = check_client_certificate(&cert, &accepted, at(until - 31 * DAY)).unwrap();
    assert!(fine.warnings.is_empty(), "{fine:?}");
    let expired = check_client_certificate(&cert, &accepted, at(until + DAY)).unwrap_err();
    assert!(
        expired.starts_with("the certificate expired on 2027-06-01 00:00 UTC"),
        "{expired}"
    );
    let early = check_client_certificate(&cert, &accepted, at(from - DAY)).unwrap_err();
    assert!(early.contains("is not valid before 2026-06-01"), "{early}");
    // No accepted domains: no name check.
    let (cert, _) = certificate(dir.path(), "any", &["relay.fabrikam.com"], from, until);
    assert_eq!(
        check_client_certificate(&cert, &[], middle)
            .unwrap()
            .matched,
        None
    );

    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let e = check_client_certificate(&not_pem, &accepted, middle).unwrap_err();
    assert!(e.contains("no certificate in the file"), "{e}");
}

#[test]
fn check_config_reports_a_connector_certificate_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let now = unix_now();
    let (wrong, wrong_key) = certificate(
        dir.path(),
        "wrong",
        &["relay.fabrikam.com"],
        now - DAY,
        now + 365 * DAY,
    );
    let (soon, soon_key) = certificate(
        dir.path(),
        "soon",
        &["*.contoso.com"],
        now - DAY,
        now + 10 * DAY,
    );
    let route = |name: &str, domain: &str, cert: &Path, key: &Path| {
        format!(
            "[[route]]\nname = \"{name}\"\ndomains = [\"{domain}\"]\nmode = \"m365-connector\"\n\
             tenant_domain = \"contoso.com\"\naccepted_domains = [\"contoso.com\"]\n\
             client_certificate = \"{}\"\nclient_private_key = \"{}\"\n",
            cert.display(),
            key.display()
        )
    };
    let file = dir.path().join("smarthost.toml");

    std::fs::write(
        &file,
        format!("{LISTENER}{}", route("c", "*", &wrong, &wrong_key)),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:10: `route.client_certificate`: the certificate's names (relay.fabrikam.com) match none of the accepted domains (contoso.com)",
            file.display()
        )),
        "{stderr}"
    );

    std::fs::write(
        &file,
        format!("{LISTENER}{}", route("c", "*", &soon, &soon_key)),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:10: warning: `route.client_certificate`: the certificate expires on",
            file.display()
        )),
        "{stdout}{stderr}"
    );
}

/// Runs `smarthost explain` with `args`; returns (exit code, stdout).
fn explain(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .arg("explain")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
    )
}

#[test]
fn explain_knows_the_replies_of_the_reference_table() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "550 5.7.30 Basic authentication is not supported for Client Submission",
            "use OAuth 2.0 (XOAUTH2) or Microsoft Graph",
            "temporary",
        ),
        (
            "535 5.7.3 Authentication unsuccessful",
            "wrong credentials or token",
            "temporary",
        ),
        (
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant",
            "enable SMTP client authentication",
            "temporary",
        ),
        (
            "530 5.7.57 Client not authenticated to send mail",
            "configure AUTH for this route",
            "temporary",
        ),
        (
            "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
            "rewrite the sender",
            "permanent",
        ),
        (
            "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
            "lower max_connections",
            "temporary",
        ),
        (
            "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
            "10,000 recipients per day",
            "temporary",
        ),
        (
            "550 5.7.64 TenantAttribution; Relay Access Denied",
            "fix the connector",
            "temporary",
        ),
        (
            "550 5.7.68 TenantInboundAttribution; Direct Send not allowed",
            "RejectDirectSend",
            "temporary",
        ),
        (
            "421 4.7.66 TLS 1.0 and 1.1 are not supported",
            "TLS 1.2 or newer",
            "temporary",
        ),
        ("5.7.708", "not accepted", "temporary"),
    ];
    for (reply, meaning, class) in cases {
        let (code, out) = explain(&[reply]);
        assert_eq!(code, 0, "{reply}\n{out}");
        assert!(
            out.lines()
                .any(|line| line.starts_with("Meaning:  ") && line.contains(meaning)),
            "{reply}\n{out}"
        );
        assert!(
            out.contains(&format!("Class:    {class}")),
            "{reply}\n{out}"
        );
    }
    // Unquoted words are joined.
    let (code, out) = explain(&["550", "5.7.30", "Basic", "authentication"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("Reply:    550 5.7.30 Basic authentication\n"),
        "{out}"
    );
}

#[test]
fn explain_reads_unknown_replies_by_their_codes() {
    let (code, out) = explain(&["550 5.1.1 User unknown"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not a reply smarthost knows"), "{out}");
    assert!(out.contains("Code:     550: mailbox unavailable"), "{out}");
    assert!(
        out.contains("Status:   5.1.1 (RFC 3463): permanent failure; addressing status; bad destination mailbox address"),
        "{out}"
    );

    let (code, out) = explain(&["4.4.1"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no answer from host"), "{out}");
    assert!(out.contains("Class:    temporary"), "{out}");

    let (code, out) = explain(&["5.7.1"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("delivery not authorized"), "{out}");

    let (code, out) = explain(&["no code here"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("No reply code found"), "{out}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .args(["explain", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"550-5.7.1 Service unavailable; Client host [192.0.2.1]\r\n550 5.7.1 blocked using Spamhaus\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("listed by Spamhaus"), "{stdout}");
}
