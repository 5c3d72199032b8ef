//! `smarthost test upstream`: prints the steps of `check::upstream::test_route` for one route, as a
//! table or (`--json`) as one JSON object. Exit status 0 when no step failed, 1 otherwise, 2 when the
//! test could not run (configuration errors, no such route).

use crate::check::upstream::{self, Options, Report, Verdict};
use crate::config::{self, Config};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Subcommand)]
pub enum TestCommand {
    /// Connect to a route's upstream step by step (DNS, TCP, banner, EHLO, TLS and certificate,
    /// OAuth token, AUTH, MAIL FROM, RCPT TO, then RSET) and say what fails and how to fix it.
    /// Nothing is sent unless --send. Exit status 0 when no step failed, 1 otherwise.
    Upstream(UpstreamArgs),
}

#[derive(Debug, clap::Args)]
pub struct UpstreamArgs {
    /// The configuration file (default: the built-in configuration, which has no upstream).
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The route to test (default: the route for domains = ["*"], or the only SMTP/Graph route).
    #[arg(long, value_name = "NAME")]
    pub route: Option<String>,
    /// Send a small test message to --to instead of ending with RSET.
    #[arg(long, requires = "to")]
    pub send: bool,
    /// The recipient (default: a placeholder at the route's domain; only RCPT TO is tried).
    #[arg(long, value_name = "ADDR")]
    pub to: Option<String>,
    /// The envelope sender (default: the route's rewrite_sender or login).
    #[arg(long, value_name = "ADDR")]
    pub from: Option<String>,
    /// Print the report as JSON (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// Runs the command and prints; returns the exit status.
pub fn run(command: TestCommand) -> u8 {
    let TestCommand::Upstream(args) = command;
    let config = match load(args.config.as_ref()) {
        Ok(c) => c,
        Err(status) => return status,
    };
    let route = match upstream::select_route(&config, args.route.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("smarthost: {e}");
            return 2;
        }
    };
    let options = Options {
        helo_name: config.hostname.clone(),
        from: args.from.clone(),
        to: args.to.clone(),
        send: args.send,
    };
    let runtime = match super::runtime() {
        Some(r) => r,
        None => return 2,
    };
    let report = runtime.block_on(upstream::test_route(route, &options));
    if args.json {
        match serde_json::to_string_pretty(&serde_json::json!({
            "route": report.route,
            "target": report.target,
            "checks": report.checks,
            "passed": report.passed(),
            "steps": report.steps,
        })) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("smarthost: {e}");
                return 2;
            }
        }
    } else {
        print!("{}", render(&report));
    }
    u8::from(!report.passed())
}

/// Loads `--config` (printing its errors) or the built-in configuration.
pub(crate) fn load(path: Option<&PathBuf>) -> Result<Config, u8> {
    match path {
        Some(path) => config::load_file(path).map_err(|errors| {
            eprint!("{errors}");
            eprintln!(
                "smarthost: {}: the configuration has errors",
                path.display()
            );
            2
        }),
        None => Ok(config::default_config()),
    }
}

/// The report as printed: a header, one line per step (with its fix below), a verdict line.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Route {:?}: {}", report.route, report.target);
    let _ = writeln!(out, "Checks: {}", report.checks);
    let _ = writeln!(out);
    let width = report
        .steps
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(0);
    for step in &report.steps {
        let _ = writeln!(
            out,
            "  {:<4}  {:<width$}  {:>8}  {}",
            step.verdict.to_string(),
            step.name,
            elapsed(step.elapsed, step.verdict),
            step.detail
        );
        if let Some(fix) = &step.fix {
            let label = step.verdict.advice_label();
            let _ = writeln!(
                out,
                "  {:<4}  {:<width$}  {:>8}  {label}: {fix}",
                "", "", ""
            );
        }
    }
    let count = |v: Verdict| report.steps.iter().filter(|s| s.verdict == v).count();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Result: {} ({} OK, {} WARN, {} FAIL, {} SKIP)",
        if report.passed() { "PASS" } else { "FAIL" },
        count(Verdict::Ok),
        count(Verdict::Warn),
        count(Verdict::Fail),
        count(Verdict::Skip),
    );
    out
}

fn elapsed(d: Duration, verdict: Verdict) -> String {
    if verdict == Verdict::Skip {
        return "-".into();
    }
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 10_000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}
