//! `smarthost doctor` from the outside: the real binary on real configuration files, with a local
//! upstream. A healthy setup exits 0 with its table; each problem (a route nobody answers, an
//! expired listener certificate, a data directory that cannot be created or is world-writable, a
//! configuration error) is named with its fix and makes the exit status 1.

mod common;

use common::standin::{ExpiredPki, closed_port, config_text, plain_auth, route_text};
use common::upstream::{Upstream, UpstreamConfig};
use std::path::Path;
use std::process::Output;

async fn doctor(dir: &Path, text: &str, args: &[&str]) -> Output {
    let file = dir.join("smarthost.toml");
    std::fs::write(&file, text).unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .args(["doctor", "--config"])
        .arg(&file)
        .args(args)
        .output()
        .await
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The table row whose area and check start with these words.
fn row<'a>(out: &'a str, area: &str, check: &str) -> &'a str {
    out.lines()
        .find(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.len() > 2 && l.contains(area) && l.contains(check) && !l.contains("fix:")
        })
        .unwrap_or_else(|| panic!("no row {area} / {check} in:\n{out}"))
}

#[cfg(unix)]
fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test]
async fn a_healthy_configuration_passes_with_a_table() {
    let up = Upstream::start(UpstreamConfig::default().with_credentials("relay@contoso.com", "pw"))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    #[cfg(unix)]
    chmod(&data, 0o750);
    let text = config_text(
        &data,
        &route_text(
            "m365",
            up.port(),
            up.ca_path(),
            "tls = \"starttls\"",
            &plain_auth(dir.path(), "relay@contoso.com", "pw"),
        ),
    );
    let output = doctor(dir.path(), &text, &[]).await;
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(out.lines().next().unwrap().contains("AREA"), "{out}");
    assert!(row(&out, "config", "loads").starts_with("OK"), "{out}");
    assert!(row(&out, "data_dir", "writable").starts_with("OK"), "{out}");
    assert!(
        row(&out, "data_dir", "free space").starts_with("OK"),
        "{out}"
    );
    let route = row(&out, "route m365", "upstream");
    assert!(
        route.starts_with("OK") && route.contains("TLS") && route.contains("AUTH"),
        "{route}"
    );
    assert!(out.contains("No problems found."), "{out}");
    assert!(up.messages().is_empty(), "doctor sends nothing");
}

#[tokio::test]
async fn a_bad_route_an_expired_certificate_and_an_impossible_data_dir_are_each_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ExpiredPki::new();
    let (cert, key) = pki.write_pem(dir.path());
    // data_dir below a regular file cannot be created, whoever runs the test (even root).
    let blocker = dir.path().join("not-a-directory");
    std::fs::write(&blocker, b"x").unwrap();
    let listener = format!(
        "[[listener]]\naddress = \"127.0.0.2:0\"\nrelay_from = [\"127.0.0.1\"]\ntls = \"starttls\"\n\
         certificate = \"{}\"\nprivate_key = \"{}\"\n\n",
        cert.display(),
        key.display()
    );
    let text = config_text(
        &blocker.join("data"),
        &format!(
            "{listener}{}",
            route_text(
                "bad",
                closed_port(),
                pki.ca_path(),
                "tls = \"starttls\"",
                ""
            )
        ),
    );
    let output = doctor(dir.path(), &text, &[]).await;
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");

    let route = row(&out, "route bad", "upstream: TCP connect");
    assert!(
        route.starts_with("FAIL") && route.contains("nothing listens"),
        "{route}"
    );
    let certificate = row(&out, "certificates", "listener 127.0.0.2:0");
    assert!(
        certificate.starts_with("FAIL") && certificate.contains("expired"),
        "{certificate}"
    );
    let data = row(&out, "data_dir", "exists");
    assert!(
        data.starts_with("FAIL") && data.contains("cannot be created"),
        "{data}"
    );
    assert!(out.contains("fix: renew the certificate"), "{out}");
    assert!(out.contains("Problems found"), "{out}");
}

#[cfg(unix)]
#[tokio::test]
async fn a_world_writable_data_dir_fails() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    chmod(&data, 0o777);
    let outbox = dir.path().join("outbox");
    let text = config_text(
        &data,
        &format!(
            "[[route]]\nname = \"local\"\ndomains = [\"*\"]\ntransport = \"drop\"\npath = \"{}\"\n",
            outbox.display()
        ),
    );
    let output = doctor(dir.path(), &text, &["--no-connect"]).await;
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    let permissions = row(&out, "data_dir", "permissions");
    assert!(
        permissions.starts_with("FAIL") && permissions.contains("world-writable"),
        "{permissions}"
    );
    assert!(out.contains("chmod 750"), "{out}");
}

#[tokio::test]
async fn a_configuration_with_errors_names_each_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        &dir.path().join("data"),
        "[[route]]\nname = \"x\"\ndomains = [\"*\"]\nhost = \"127.0.0.1\"\ntls = \"sometimes\"\n",
    );
    let output = doctor(dir.path(), &text, &[]).await;
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    let error = row(&out, "config", "smarthost.toml:12");
    assert!(
        error.starts_with("FAIL") && error.contains("sometimes"),
        "{error}"
    );
    assert!(
        out.contains("not run: the configuration does not load"),
        "{out}"
    );
}

#[tokio::test]
async fn direct_send_without_a_public_ip_names_the_spf_record_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    #[cfg(unix)]
    chmod(&data, 0o750);
    let text = config_text(
        &data,
        "[[route]]\nname = \"direct\"\ndomains = [\"*\"]\nmode = \"m365-direct-send\"\n\
         tenant_domain = \"contoso.com\"\n",
    );
    let output = doctor(dir.path(), &text, &["--no-connect"]).await;
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "a warning only:\n{out}");
    let spf = row(&out, "spf", "contoso.com");
    assert!(spf.starts_with("WARN"), "{spf}");
    assert!(
        out.contains("v=spf1 ip4:<public IP> include:spf.protection.outlook.com -all"),
        "{out}"
    );
}

#[tokio::test]
async fn an_unreachable_redis_is_a_warning_naming_the_fallback_limits() {
    let up = Upstream::start(UpstreamConfig::default().with_credentials("relay@contoso.com", "pw"))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    #[cfg(unix)]
    chmod(&data, 0o750);
    let mut text = config_text(
        &data,
        &route_text(
            "m365",
            up.port(),
            up.ca_path(),
            "tls = \"starttls\"",
            &plain_auth(dir.path(), "relay@contoso.com", "pw"),
        ),
    );
    text = format!(
        "{text}\n[route.limits]\nmessage_rate = \"30/1m\"\n\n[cluster]\nredis = \"redis://127.0.0.1:{}/0\"\nnode = \"relay-a\"\nexpected_nodes = 2\n",
        closed_port()
    );
    let output = doctor(dir.path(), &text, &[]).await;
    let out = stdout(&output);
    // Delivery goes on without Redis: a warning, not a failure.
    assert_eq!(output.status.code(), Some(0), "{out}");
    let cluster = row(&out, "cluster", "Redis unreachable");
    assert!(cluster.starts_with("WARN"), "{cluster}");
    assert!(out.contains("limit/2"), "{out}");
    assert!(out.contains("30/1m") && out.contains("15/1m"), "{out}");
}
