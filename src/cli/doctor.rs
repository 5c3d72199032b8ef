//! `smarthost doctor`: runs `check::doctor` and prints its findings as a table (or JSON). Exit status
//! 0 when nothing failed (warnings allowed), 1 when a finding is a FAIL, 2 when it could not run.

use crate::check::doctor::{self, Finding, Options};
use crate::check::upstream::Verdict;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// The configuration file (default: the built-in configuration).
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub dns: crate::cli::check::DnsArgs,
    /// The address Microsoft 365 sees this relay connect from, to evaluate SPF of Direct Send and
    /// connector senders (without it, the record to check is named).
    #[arg(long, value_name = "IP")]
    pub public_ip: Option<IpAddr>,
    /// Do not connect to the upstreams (only the local checks).
    #[arg(long)]
    pub no_connect: bool,
    /// Print the findings as JSON (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// Runs doctor and prints; returns the exit status.
pub fn run(args: &DoctorArgs) -> u8 {
    let options = Options {
        config: args.config.clone(),
        dns_server: args.dns.dns_server,
        public_ip: args.public_ip,
        no_connect: args.no_connect,
    };
    let runtime = match super::runtime() {
        Some(r) => r,
        None => return 2,
    };
    let findings = runtime.block_on(doctor::run(&options));
    if args.json {
        match serde_json::to_string_pretty(&serde_json::json!({
            "passed": !doctor::any_failed(&findings),
            "findings": findings,
        })) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("smarthost: {e}");
                return 2;
            }
        }
    } else {
        print!("{}", render(&findings));
    }
    u8::from(doctor::any_failed(&findings))
}

/// The findings as a table: verdict, area, check, detail; the fix on the line below.
pub fn render(findings: &[Finding]) -> String {
    let area_w = findings
        .iter()
        .map(|f| f.area.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let check_w = findings
        .iter()
        .map(|f| f.check.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<4}  {:<area_w$}  {:<check_w$}  DETAIL",
        "", "AREA", "CHECK"
    );
    for f in findings {
        let _ = writeln!(
            out,
            "{:<4}  {:<area_w$}  {:<check_w$}  {}",
            f.verdict.to_string(),
            f.area,
            f.check,
            f.detail
        );
        if let Some(fix) = &f.fix {
            let label = f.verdict.advice_label();
            let _ = writeln!(
                out,
                "{:<4}  {:<area_w$}  {:<check_w$}  {label}: {fix}",
                "", "", ""
            );
        }
    }
    let count = |v: Verdict| findings.iter().filter(|f| f.verdict == v).count();
    let _ = writeln!(
        out,
        "\n{} ({} OK, {} WARN, {} FAIL, {} SKIP)",
        if doctor::any_failed(findings) {
            "Problems found: fix the FAIL lines above."
        } else {
            "No problems found."
        },
        count(Verdict::Ok),
        count(Verdict::Warn),
        count(Verdict::Fail),
        count(Verdict::Skip)
    );
    out
}
