//! `smarthost doctor`: every check in one table of findings (area, check, verdict, detail, fix).
//!
//! Each area is one function returning `Vec<Finding>`; [`run`] calls them in order. To add an area
//! (e.g. the Redis cluster), write `async fn cluster_findings(config: &Config) -> Vec<Finding>` (or a
//! plain `fn`) and extend the list in [`run`]; nothing else changes (the CLI prints whatever comes
//! back, and any FAIL makes the exit status 1).
//!
//! Areas: the configuration (loads; its warnings), the data directory (exists or can be created,
//! writable, not world-writable, free space against `min_free_space`), listeners (open relay),
//! the admin API (reachable from the network), certificates (listener certificates, connector
//! client certificates, OAuth certificates: expiry, key pair, names), SPF of Direct Send and
//! connector senders, and every route's upstream as `smarthost test upstream` tests it (nothing sent).

use super::date;
use super::upstream::{self, Options as UpstreamOptions, Verdict};
use crate::config::{Config, M365Mode, OAuthGrant, Transport};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// One thing doctor looked at.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    /// "config", "data_dir", "certificates", "route m365", ...
    pub area: String,
    pub check: String,
    pub verdict: Verdict,
    pub detail: String,
    /// For WARN and FAIL: what to do.
    pub fix: Option<String>,
}

impl Finding {
    pub fn ok(
        area: impl Into<String>,
        check: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Finding {
            area: area.into(),
            check: check.into(),
            verdict: Verdict::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn warn(
        area: impl Into<String>,
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Finding {
            verdict: Verdict::Warn,
            fix: Some(fix.into()),
            ..Finding::ok(area, check, detail)
        }
    }

    pub fn fail(
        area: impl Into<String>,
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Finding {
            verdict: Verdict::Fail,
            fix: Some(fix.into()),
            ..Finding::ok(area, check, detail)
        }
    }

    pub fn skip(
        area: impl Into<String>,
        check: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Finding {
            verdict: Verdict::Skip,
            ..Finding::ok(area, check, detail)
        }
    }
}

/// `[cluster]`: whether Redis answers, so the per-mailbox limits are shared by the nodes. A
/// WARN, not a FAIL, when it does not: delivery goes on with each node's share of the limits.
async fn cluster_findings(config: &Config) -> Vec<Finding> {
    crate::cluster::doctor_check(config)
        .await
        .into_iter()
        .map(|check| {
            if check.ok {
                Finding::ok("cluster", check.verdict, check.detail)
            } else {
                Finding::warn(
                    "cluster",
                    check.verdict,
                    check.detail,
                    "start Redis or correct [cluster] redis, password_env/password_file; the \
                     nodes return to the shared limits by themselves when it answers",
                )
            }
        })
        .collect()
}

/// Whether any finding is a FAIL.
pub fn any_failed(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.verdict == Verdict::Fail)
}

#[derive(Debug, Clone)]
pub struct Options {
    /// The configuration file; `None`: the built-in configuration.
    pub config: Option<PathBuf>,
    /// Ask this name server for SPF (default: the system's resolver).
    pub dns_server: Option<SocketAddr>,
    /// The address Microsoft 365 sees this relay connect from (for SPF); unknown when `None`.
    pub public_ip: Option<IpAddr>,
    /// Skip the upstream connections (offline checks only).
    pub no_connect: bool,
}

/// Every check, in the order printed.
pub async fn run(options: &Options) -> Vec<Finding> {
    let (config, mut findings) = config_findings(options.config.as_deref());
    let Some(config) = config else {
        findings.push(Finding::skip(
            "doctor",
            "other checks",
            "not run: the configuration does not load",
        ));
        return findings;
    };
    let now = SystemTime::now();
    findings.extend(data_dir_findings(&config));
    findings.extend(listener_findings(&config));
    findings.extend(admin_findings(&config));
    findings.extend(certificate_findings(&config, now));
    findings.extend(spf_findings(&config, options).await);
    if !options.no_connect {
        findings.extend(cluster_findings(&config).await);
    }
    if options.no_connect {
        findings.push(Finding::skip(
            "routes",
            "upstreams",
            "not tested (--no-connect)",
        ));
    } else {
        findings.extend(route_findings(&config).await);
    }
    findings
}

/// The configuration loads (each error with its line) and its warnings.
pub fn config_findings(path: Option<&Path>) -> (Option<Config>, Vec<Finding>) {
    const AREA: &str = "config";
    let Some(path) = path else {
        let config = crate::config::default_config();
        return (
            Some(config),
            vec![Finding::warn(
                AREA,
                "configuration",
                "no --config: the built-in configuration (127.0.0.1:2525, messages written to \
                 ./smarthost-data/outbox)",
                "give the relay's configuration file with --config FILE",
            )],
        );
    };
    match crate::config::load_file(path) {
        Ok(config) => {
            let mut findings = vec![Finding::ok(
                AREA,
                "loads",
                format!(
                    "{}: {} listener(s), {} route(s)",
                    path.display(),
                    config.listeners.len(),
                    config.routes.len()
                ),
            )];
            for warning in &config.warnings {
                findings.push(Finding::warn(
                    AREA,
                    "warning",
                    warning.clone(),
                    "see the warning; the relay starts anyway",
                ));
            }
            (Some(config), findings)
        }
        Err(errors) => {
            let findings = errors
                .errors
                .iter()
                .map(|e| {
                    let at = match e.line {
                        Some(line) => format!("{}:{line}", errors.source),
                        None => errors.source.clone(),
                    };
                    Finding::fail(
                        AREA,
                        at,
                        e.message.clone(),
                        "correct the file (`smarthost check-config FILE` lists every error)",
                    )
                })
                .collect();
            (None, findings)
        }
    }
}

/// The data directory: exists or can be created, writable, not world-writable, free space.
pub fn data_dir_findings(config: &Config) -> Vec<Finding> {
    const AREA: &str = "data_dir";
    let dir = &config.data_dir;
    let shown = dir.display().to_string();
    let mut findings = Vec::new();
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => {
            findings.push(Finding::fail(
                AREA,
                "exists",
                format!("{shown} is not a directory"),
                "set data_dir to a directory",
            ));
            return findings;
        }
        Ok(_) => {
            findings.push(Finding::ok(AREA, "exists", shown.clone()));
            match probe_write(dir) {
                Ok(()) => findings.push(Finding::ok(
                    AREA,
                    "writable",
                    format!("{shown} is writable by this user"),
                )),
                Err(e) => findings.push(Finding::fail(
                    AREA,
                    "writable",
                    format!("cannot write in {shown}: {e}"),
                    format!(
                        "make it writable by the user that runs smarthost (chown that user \
                         {shown}; chmod 750 {shown})"
                    ),
                )),
            }
            findings.extend(permission_finding(dir));
        }
        Err(_) => match creatable(dir) {
            Ok(parent) => findings.push(Finding::ok(
                AREA,
                "exists",
                format!(
                    "{shown} does not exist yet; it can be created in {}",
                    parent.display()
                ),
            )),
            Err(why) => {
                findings.push(Finding::fail(
                    AREA,
                    "exists",
                    format!("{shown} does not exist and cannot be created: {why}"),
                    format!(
                        "create it for the user that runs smarthost (mkdir -p {shown}; chown \
                         that user), or set data_dir to a writable place"
                    ),
                ));
                return findings;
            }
        },
    }
    let min = config.queue.min_free_space;
    let measured = existing_ancestor(dir).map(|d| crate::spool::available_space(&d));
    match measured {
        Some(Ok(free)) => {
            let detail = format!(
                "{} free, min_free_space = {}",
                bytesize::ByteSize(free),
                bytesize::ByteSize(min)
            );
            if free < min {
                findings.push(Finding::fail(
                    AREA,
                    "free space",
                    detail,
                    "new mail is refused (452 4.3.1) below min_free_space: free disk space or \
                     move data_dir",
                ));
            } else if free < min.saturating_mul(2) {
                findings.push(Finding::warn(
                    AREA,
                    "free space",
                    detail,
                    "close to min_free_space, below which new mail is refused: free disk space",
                ));
            } else {
                findings.push(Finding::ok(AREA, "free space", detail));
            }
        }
        Some(Err(e)) => findings.push(Finding::warn(
            AREA,
            "free space",
            format!("not measured: {e}"),
            "check the disk space of data_dir by hand (df)",
        )),
        None => {}
    }
    findings
}

/// Creates and removes a file in `dir`: the only sure test of writing (root passes `access`).
fn probe_write(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".smarthost-doctor-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

#[cfg(unix)]
fn permission_finding(dir: &Path) -> Option<Finding> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir).ok()?.permissions().mode() & 0o7777;
    let shown = dir.display();
    Some(if mode & 0o002 != 0 {
        Finding::fail(
            "data_dir",
            "permissions",
            format!("{shown} is world-writable (mode {mode:o})"),
            format!(
                "anyone on this machine could drop mail into the spool or pickup folder: chmod \
                 750 {shown}"
            ),
        )
    } else {
        Finding::ok(
            "data_dir",
            "permissions",
            format!("mode {mode:o}, not world-writable"),
        )
    })
}

#[cfg(not(unix))]
fn permission_finding(_dir: &Path) -> Option<Finding> {
    None
}

fn existing_ancestor(dir: &Path) -> Option<PathBuf> {
    let absolute = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(dir)
    };
    absolute
        .ancestors()
        .find(|a| a.is_dir())
        .map(Path::to_path_buf)
}

/// Whether the missing `dir` can be created: the nearest existing ancestor must be a directory we
/// may write in. `Ok`: that ancestor.
fn creatable(dir: &Path) -> Result<PathBuf, String> {
    let absolute = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| e.to_string())?
            .join(dir)
    };
    for ancestor in absolute.ancestors().skip(1) {
        match std::fs::metadata(ancestor) {
            Ok(meta) if meta.is_dir() => {
                return writable_dir(ancestor)
                    .map(|()| ancestor.to_path_buf())
                    .map_err(|e| format!("{} is not writable ({e})", ancestor.display()));
            }
            Ok(_) => return Err(format!("{} is not a directory", ancestor.display())),
            Err(_) => continue,
        }
    }
    Err("no existing parent directory".into())
}

#[cfg(unix)]
fn writable_dir(dir: &Path) -> std::io::Result<()> {
    use rustix::fs::Access;
    rustix::fs::access(dir, Access::WRITE_OK | Access::EXEC_OK).map_err(std::io::Error::from)
}

#[cfg(not(unix))]
fn writable_dir(dir: &Path) -> std::io::Result<()> {
    probe_write(dir)
}

/// Listeners that let everyone relay.
pub fn listener_findings(config: &Config) -> Vec<Finding> {
    let mut findings = Vec::new();
    for listener in &config.listeners {
        let everyone = listener.relay_from.iter().any(|net| net.prefix_len() == 0);
        let local = listener.address.ip().is_loopback();
        if everyone && !listener.require_auth && !local {
            findings.push(Finding::fail(
                "listeners",
                format!("relay {}", listener.address),
                "relay_from lets every address relay without AUTH: an open relay",
                "list only your networks in relay_from (e.g. [\"10.0.0.0/8\"]), or set \
                 require_auth = true",
            ));
        }
    }
    if findings.is_empty() {
        findings.push(Finding::ok(
            "listeners",
            "relay",
            format!(
                "{} listener(s); none relays for everyone",
                config.listeners.len()
            ),
        ));
    }
    findings
}

/// The admin API: off, or on loopback, or reachable from the network.
pub fn admin_findings(config: &Config) -> Vec<Finding> {
    const AREA: &str = "admin";
    let admin = &config.admin;
    if !admin.enabled {
        return vec![Finding::ok(AREA, "admin API", "disabled")];
    }
    let mut findings = Vec::new();
    match &admin.token {
        None => findings.push(Finding::fail(
            AREA,
            "token",
            format!("the admin API on {} has no token", admin.address),
            "set token_env or token_file in [admin]",
        )),
        Some(token) if token.expose().len() < 20 => findings.push(Finding::warn(
            AREA,
            "token",
            format!("the token is short ({} characters)", token.expose().len()),
            "use a long random token (openssl rand -hex 32)",
        )),
        Some(_) => {}
    }
    if admin.address.ip().is_loopback() {
        findings.push(Finding::ok(
            AREA,
            "address",
            format!("{} (this machine only)", admin.address),
        ));
    } else {
        findings.push(Finding::warn(
            AREA,
            "address",
            format!(
                "{} is reachable from the network over plain HTTP: the bearer token crosses it \
                 unencrypted",
                admin.address
            ),
            "bind it to 127.0.0.1:8025 and use an SSH tunnel or a TLS reverse proxy, or at least \
             allow only admin hosts in the firewall",
        ));
    }
    findings
}

/// Listener certificates, connector client certificates and OAuth certificates.
pub fn certificate_findings(config: &Config, now: SystemTime) -> Vec<Finding> {
    const AREA: &str = "certificates";
    let mut findings = Vec::new();
    for listener in &config.listeners {
        let (Some(cert), Some(key)) = (&listener.certificate, &listener.private_key) else {
            continue;
        };
        let check = format!("listener {}", listener.address);
        let mut finding = judge_certificate(AREA, &check, cert, None, now);
        if finding.verdict != Verdict::Fail
            && let Err(e) = crate::server::tls::check(cert, key, listener.min_tls, now)
        {
            finding = Finding::fail(
                AREA,
                check,
                e,
                "the certificate and private_key must be a pair that loads (PEM)",
            );
        }
        findings.push(finding);
    }
    for route in &config.routes {
        let Transport::Smtp(smtp) = &route.transport else {
            if let Transport::Graph(graph) = &route.transport {
                findings.extend(oauth_certificate(AREA, &route.name, &graph.oauth, now));
            }
            continue;
        };
        if let Some(client) = &smtp.client_cert {
            let check = format!("route {} client certificate", route.name);
            let domains = (route.mode == Some(M365Mode::Connector))
                .then_some(route.accepted_domains.as_slice());
            let mut finding = judge_certificate(AREA, &check, &client.certificate, domains, now);
            if finding.verdict != Verdict::Fail
                && let Err(e) = crate::deliver::connector::check_key_pair(
                    &client.certificate,
                    &client.private_key,
                )
            {
                finding = Finding::fail(
                    AREA,
                    check,
                    e,
                    "use the private key that belongs to the certificate",
                );
            }
            findings.push(finding);
        }
        if let Some(auth) = &smtp.auth
            && let crate::config::Credential::OAuth(oauth) = &auth.credential
        {
            findings.extend(oauth_certificate(AREA, &route.name, oauth, now));
        }
    }
    if findings.is_empty() {
        findings.push(Finding::ok(AREA, "certificates", "none configured"));
    }
    findings
}

fn oauth_certificate(
    area: &str,
    route: &str,
    oauth: &crate::config::OAuthConfig,
    now: SystemTime,
) -> Option<Finding> {
    let OAuthGrant::ClientCertificate { certificate, .. } = &oauth.grant else {
        return None;
    };
    Some(judge_certificate(
        area,
        &format!("route {route} OAuth certificate"),
        certificate,
        None,
        now,
    ))
}

/// Expiry (FAIL expired, WARN within 30 days), names, and for a connector the name check.
fn judge_certificate(
    area: &str,
    check: &str,
    file: &Path,
    accepted_domains: Option<&[String]>,
    now: SystemTime,
) -> Finding {
    let domain = accepted_domains.and_then(|d| d.first()).map(String::as_str);
    let info = match super::cert::inspect(file, domain, now) {
        Ok(info) => info,
        Err(e) => {
            return Finding::fail(
                area,
                check,
                e,
                "point the setting at a PEM certificate file",
            );
        }
    };
    let names = if info.sans.is_empty() {
        "no SANs".to_string()
    } else {
        info.sans.join(", ")
    };
    let detail = format!(
        "{}: {}, {names}, expires {} ({})",
        file.display(),
        info.subject,
        date(info.not_after),
        if info.days_left < 0 {
            format!("expired {} days ago", -info.days_left)
        } else {
            days_left(info.days_left)
        }
    );
    if info.days_left < 0 || info.not_after < unix(now) {
        return Finding::fail(
            area,
            check,
            format!("expired: {detail}"),
            "renew the certificate and put the new files in place (listeners reload it without a \
             restart)",
        );
    }
    // A connector's certificate must also match an accepted domain (the verdict of cert.rs).
    if accepted_domains.is_some()
        && let Err(why) = &info.verdict
    {
        return Finding::fail(area, check, format!("{detail}: {why}"), why.clone());
    }
    if info.days_left < 30 {
        return Finding::warn(
            area,
            check,
            detail,
            "renew the certificate soon (and update a certificate connector if its name changes)",
        );
    }
    Finding::ok(area, check, detail)
}

fn days_left(days: i64) -> String {
    match days {
        0 => "less than a day left".into(),
        1 => "1 day left".into(),
        n => format!("{n} days left"),
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The sender domains of Direct Send and connector routes, with the route.
fn spf_domains(config: &Config) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for route in &config.routes {
        if !matches!(route.mode, Some(M365Mode::DirectSend | M365Mode::Connector)) {
            continue;
        }
        let mut domains: Vec<String> = Vec::new();
        if let Some(rewrite) = &route.rewrite_sender
            && let Some((_, d)) = rewrite.address.rsplit_once('@')
        {
            domains.push(d.to_ascii_lowercase());
        }
        domains.extend(route.accepted_domains.iter().cloned());
        for d in domains {
            if !out.iter().any(|(_, known)| *known == d) {
                out.push((route.name.clone(), d));
            }
        }
    }
    out
}

/// SPF of the sender domains of Direct Send and connector routes for this relay's public address.
pub async fn spf_findings(config: &Config, options: &Options) -> Vec<Finding> {
    const AREA: &str = "spf";
    let domains = spf_domains(config);
    if domains.is_empty() {
        return vec![Finding::ok(
            AREA,
            "SPF",
            "no Direct Send or connector route: SPF of this relay's address does not apply",
        )];
    }
    let include = super::spf::MICROSOFT_INCLUDE;
    let Some(ip) = options.public_ip else {
        return domains
            .into_iter()
            .map(|(route, domain)| {
                Finding::warn(
                    AREA,
                    format!("{domain} (route {route})"),
                    "this relay's public IP address is not known, so SPF was not evaluated",
                    format!(
                        "check the TXT record of {domain}: it must allow the address Microsoft \
                         365 sees this relay connect from, e.g. \"v=spf1 ip4:<public IP> \
                         include:{include} -all\"; or run doctor --public-ip IP"
                    ),
                )
            })
            .collect();
    };
    let resolver = match super::dns::DnsResolver::new(options.dns_server) {
        Ok(r) => r,
        Err(e) => {
            return vec![Finding::warn(
                AREA,
                "SPF",
                e,
                "give a name server with --dns-server IP",
            )];
        }
    };
    let mut findings = Vec::new();
    for (route, domain) in domains {
        let check = format!("{domain} (route {route})");
        let outcome = super::spf::check(&resolver, &domain, ip).await;
        let detail = format!(
            "SPF {} for {ip}: {}{}",
            outcome.result,
            outcome.reason,
            outcome
                .record
                .as_deref()
                .map(|r| format!(" (record: {r})"))
                .unwrap_or_default()
        );
        use super::spf::SpfResult;
        match outcome.result {
            SpfResult::Pass => findings.push(Finding::ok(AREA, check, detail)),
            SpfResult::TempError => findings.push(Finding::warn(
                AREA,
                check,
                detail,
                "the DNS did not answer: try again, or give another server with --dns-server",
            )),
            _ => {
                let fix = match super::spf::suggested_record(outcome.record.as_deref(), ip, false) {
                    Some(record) => format!("publish this TXT record at {domain}: {record}"),
                    None => "fix the error in the SPF record".to_string(),
                };
                findings.push(Finding::fail(AREA, check, detail, fix));
            }
        }
    }
    findings
}

/// Every SMTP and Graph route, tested as `smarthost test upstream` does (nothing sent): one OK
/// line per healthy route, otherwise its WARN and FAIL steps.
pub async fn route_findings(config: &Config) -> Vec<Finding> {
    let mut findings = Vec::new();
    let options = UpstreamOptions {
        helo_name: config.hostname.clone(),
        ..UpstreamOptions::default()
    };
    for route in &config.routes {
        let area = format!("route {}", route.name);
        if let Transport::Drop { path } = &route.transport {
            findings.push(Finding::ok(
                area,
                "transport",
                format!("drops messages into {}", path.display()),
            ));
            continue;
        }
        let report = upstream::test_route(route, &options).await;
        let troubles: Vec<&upstream::Step> = report
            .steps
            .iter()
            .filter(|s| matches!(s.verdict, Verdict::Warn | Verdict::Fail))
            .collect();
        if troubles.is_empty() {
            let passed: Vec<&str> = report
                .steps
                .iter()
                .filter(|s| s.verdict == Verdict::Ok)
                .map(|s| s.name.as_str())
                .collect();
            findings.push(Finding::ok(
                area,
                "upstream",
                format!("{}: {} OK", report.target, passed.join(", ")),
            ));
            continue;
        }
        let skipped = report
            .steps
            .iter()
            .filter(|s| s.verdict == Verdict::Skip && s.detail.starts_with("not run"))
            .count();
        for step in troubles {
            let mut detail = step.detail.clone();
            if step.verdict == Verdict::Fail && skipped > 0 {
                detail.push_str(&format!(" ({skipped} later steps not run)"));
            }
            findings.push(Finding {
                area: area.clone(),
                check: format!("upstream: {}", step.name),
                verdict: step.verdict,
                detail,
                fix: step.fix.clone(),
            });
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_data_dir_under_a_file_cannot_be_created() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let why = creatable(&file.join("data")).unwrap_err();
        assert!(why.contains("is not a directory"), "{why}");
        assert_eq!(creatable(&dir.path().join("a/b")).unwrap(), dir.path());
    }
}
