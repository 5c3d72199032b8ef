//! `smarthost check spf|dnsbl|mx|cert`: the DNS and certificate checks of the troubleshooting
//! steps (Direct Send and connectors: SPF, block lists, the tenant's MX, the connector
//! certificate). Each prints what it found and what to do; exit status 0 when all is well, 1
//! otherwise, 2 when the check could not run (bad argument, no DNS configuration).

use crate::check::dns::DnsResolver;
use crate::check::spf::{self, SpfResult};
use crate::check::{cert, date, dnsbl, mx};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::SystemTime;

#[derive(Debug, clap::Subcommand)]
pub enum CheckCommand {
    /// SPF (RFC 7208) of DOMAIN for the relay's public address, e.g.
    /// smarthost check spf contoso.com --ip 203.0.113.5 --mode direct-send.
    Spf {
        domain: String,
        /// The address Microsoft 365 sees the relay connect from.
        #[arg(long)]
        ip: IpAddr,
        /// How the relay delivers: the record to publish is printed for direct-send and
        /// connector even on pass.
        #[arg(long, value_enum)]
        mode: Option<Mode>,
        #[command(flatten)]
        dns: DnsArgs,
    },
    /// Whether IP is on DNS block lists (default: zen.spamhaus.org, bl.spamcop.net).
    Dnsbl {
        ip: IpAddr,
        /// A list to ask (repeat for several).
        #[arg(long = "list", value_name = "ZONE", num_args = 1..)]
        lists: Vec<String>,
        #[command(flatten)]
        dns: DnsArgs,
    },
    /// The MX records of DOMAIN, and the Direct Send / connector endpoint when it is Microsoft 365.
    Mx {
        domain: String,
        #[command(flatten)]
        dns: DnsArgs,
    },
    /// Whether a certificate (PEM) suits a Microsoft 365 certificate connector for DOMAIN.
    Cert {
        file: PathBuf,
        /// The accepted domain the connector is for.
        #[arg(long)]
        domain: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    DirectSend,
    Connector,
    ClientSubmission,
}

#[derive(Debug, clap::Args)]
pub struct DnsArgs {
    /// Ask this name server (IP:PORT, or IP for port 53) instead of the system's resolver.
    #[arg(long, value_name = "IP:PORT", value_parser = parse_server)]
    pub dns_server: Option<SocketAddr>,
}

fn parse_server(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("{text:?} is not IP:PORT or IP"))
}

/// Runs the check, prints its report, returns the exit status.
pub fn run(command: CheckCommand) -> u8 {
    if let CheckCommand::Cert { file, domain } = &command {
        return match cert_report(file, domain.as_deref(), SystemTime::now()) {
            Ok((text, ok)) => {
                print!("{text}");
                u8::from(!ok)
            }
            Err(e) => {
                eprintln!("smarthost: {e}");
                2
            }
        };
    }
    let runtime = match super::runtime() {
        Some(r) => r,
        None => return 2,
    };
    runtime.block_on(async {
        let server = match &command {
            CheckCommand::Spf { dns, .. }
            | CheckCommand::Dnsbl { dns, .. }
            | CheckCommand::Mx { dns, .. } => dns.dns_server,
            CheckCommand::Cert { .. } => None,
        };
        let resolver = match DnsResolver::new(server) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("smarthost: {e}");
                return 2;
            }
        };
        let (text, ok) = match command {
            CheckCommand::Spf {
                domain, ip, mode, ..
            } => spf_report(&resolver, &domain, ip, mode).await,
            CheckCommand::Dnsbl { ip, lists, .. } => dnsbl_report(&resolver, ip, &lists).await,
            CheckCommand::Mx { domain, .. } => mx_report(&resolver, &domain).await,
            CheckCommand::Cert { .. } => unreachable!("handled above"),
        };
        print!("{text}");
        u8::from(!ok)
    })
}

/// The SPF report; `true` on pass.
pub async fn spf_report<L: crate::check::dns::Lookup>(
    dns: &L,
    domain: &str,
    ip: IpAddr,
    mode: Option<Mode>,
) -> (String, bool) {
    let outcome = spf::check(dns, domain, ip).await;
    let mut out = String::new();
    let _ = writeln!(out, "SPF of {domain} for {ip}: {}", outcome.result);
    let _ = writeln!(out, "Why:      {}", outcome.reason);
    let _ = writeln!(
        out,
        "Records looked at ({} DNS look-ups of 10):",
        outcome.lookups
    );
    for entry in &outcome.chain {
        let indent = "  ".repeat(entry.depth + 1);
        match &entry.record {
            Ok(record) => {
                let _ = writeln!(out, "{indent}{}: {record}", entry.domain);
            }
            Err(note) => {
                let _ = writeln!(out, "{indent}{}: ({note})", entry.domain);
            }
        }
    }
    let pass = outcome.result == SpfResult::Pass;
    let sends_direct = matches!(mode, Some(Mode::DirectSend | Mode::Connector));
    if outcome.result == SpfResult::TempError {
        let _ = writeln!(
            out,
            "What to do: the DNS did not answer; try again, or ask another server with --dns-server"
        );
    } else if !pass || sends_direct {
        let covered = pass;
        match spf::suggested_record(outcome.record.as_deref(), ip, covered) {
            Some(record) => {
                let _ = writeln!(
                    out,
                    "What to do: publish this TXT record at {domain}{}:\n  {record}",
                    if outcome.record.is_some() {
                        " (it replaces the existing one)"
                    } else {
                        ""
                    }
                );
            }
            None if outcome.result == SpfResult::PermError => {
                let _ = writeln!(
                    out,
                    "What to do: the record lists the address, but receivers give up on it: fix \
                     the error above"
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "The record already lists {ip} and include:{}",
                    spf::MICROSOFT_INCLUDE
                );
            }
        }
        if mode == Some(Mode::ClientSubmission) {
            let _ = writeln!(
                out,
                "(With client submission Microsoft 365 sends from its own servers: \
                 include:{} is what matters.)",
                spf::MICROSOFT_INCLUDE
            );
        }
    }
    (out, pass)
}

/// The block-list report; `true` when no list lists the address and all answered.
pub async fn dnsbl_report<L: crate::check::dns::Lookup>(
    dns: &L,
    ip: IpAddr,
    lists: &[String],
) -> (String, bool) {
    let lists: Vec<String> = if lists.is_empty() {
        dnsbl::DEFAULT_LISTS.iter().map(|s| s.to_string()).collect()
    } else {
        lists.to_vec()
    };
    let mut out = String::new();
    let mut clean = true;
    for list in &lists {
        match dnsbl::query(dns, list, ip).await {
            dnsbl::Listing::NotListed => {
                let _ = writeln!(out, "{list}: not listed");
            }
            dnsbl::Listing::Listed { answers, reason } => {
                clean = false;
                let _ = writeln!(out, "{list}: LISTED");
                for (answer, meaning) in answers {
                    let _ = writeln!(out, "  {answer}: {meaning}");
                }
                if let Some(reason) = reason {
                    let _ = writeln!(out, "  reason given: {reason}");
                }
            }
            dnsbl::Listing::Refused(why) => {
                clean = false;
                let _ = writeln!(out, "{list}: not answered: {why}");
            }
            dnsbl::Listing::Error(e) => {
                clean = false;
                let _ = writeln!(out, "{list}: no answer ({e})");
            }
        }
    }
    let _ = writeln!(
        out,
        "Microsoft's own block list cannot be asked by DNS: if Microsoft 365 answers \
         5.7.606-5.7.649 (\"banned sending IP\") or \"blocked using FBLW15\", request delisting \
         at https://sender.office.com"
    );
    (out, clean)
}

/// The MX report; `true` when the domain's mail goes to Microsoft 365.
pub async fn mx_report<L: crate::check::dns::Lookup>(dns: &L, domain: &str) -> (String, bool) {
    let mut out = String::new();
    let records = match mx::records(dns, domain).await {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(out, "MX of {domain}: no answer ({e})");
            return (out, false);
        }
    };
    if records.is_empty() {
        let _ = writeln!(out, "MX of {domain}: none (the domain receives no mail)");
        return (out, false);
    }
    let _ = writeln!(out, "MX of {domain}:");
    for (preference, host) in &records {
        let _ = writeln!(out, "  {preference:>5} {host}");
    }
    let derived = mx::derived_endpoint(domain);
    match records.iter().find(|(_, h)| mx::is_microsoft(h)) {
        Some((_, host)) => {
            let _ = writeln!(out, "Microsoft 365: yes");
            let _ = writeln!(out, "Direct Send / connector endpoint: {host}:25");
            if *host == derived {
                let _ = writeln!(
                    out,
                    "It equals the one derived from tenant_domain = \"{domain}\" ({derived})."
                );
            } else {
                let _ = writeln!(
                    out,
                    "It differs from the one derived from tenant_domain = \"{domain}\" \
                     ({derived}): set host = \"{host}\" in the route."
                );
            }
            (out, true)
        }
        None => {
            let _ = writeln!(
                out,
                "Microsoft 365: no MX is *.mail.protection.outlook.com: Direct Send and \
                 connectors to {derived} reach this domain only if it is an accepted domain of \
                 the tenant"
            );
            (out, false)
        }
    }
}

/// The certificate report; `true` when it suits a certificate connector.
pub fn cert_report(
    file: &std::path::Path,
    domain: Option<&str>,
    now: SystemTime,
) -> Result<(String, bool), String> {
    let info = cert::inspect(file, domain, now)?;
    let mut out = String::new();
    let _ = writeln!(out, "Subject:  {}", info.subject);
    let _ = writeln!(
        out,
        "SANs:     {}",
        if info.sans.is_empty() {
            "(none)".to_string()
        } else {
            info.sans.join(", ")
        }
    );
    let _ = writeln!(
        out,
        "Issuer:   {}{}",
        info.issuer,
        if info.self_signed {
            " (self-signed)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "Valid:    {} to {} ({})",
        date(info.not_before),
        date(info.not_after),
        if info.days_left < 0 {
            "expired".to_string()
        } else {
            format!("{} days left", info.days_left)
        }
    );
    let _ = writeln!(out, "Key:      {}", info.key);
    if info.count > 1 {
        let _ = writeln!(
            out,
            "Chain:    {} more certificate(s) in the file",
            info.count - 1
        );
    }
    let what = match domain {
        Some(d) => format!("a Microsoft 365 certificate connector for {d}"),
        None => "a Microsoft 365 certificate connector (no --domain: names not checked)".into(),
    };
    let ok = match &info.verdict {
        Ok(notes) => {
            let _ = writeln!(out, "Suitable for {what}: yes");
            for note in notes {
                let _ = writeln!(out, "  - {note}");
            }
            true
        }
        Err(why) => {
            let _ = writeln!(out, "Suitable for {what}: no\n  - {why}");
            false
        }
    };
    let _ = writeln!(
        out,
        "(The private key is not checked here: check-config checks the pair of a route's files.)"
    );
    Ok((out, ok))
}
