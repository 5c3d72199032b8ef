//! `smarthost logs export`: the W3C log files (`data_dir/logs/smtpsvc-YYYYMMDD.log`) as one CSV
//! file, the way the administrators' PowerShell did it with IIS's logs: the `#Software`, `#Version`
//! and `#Date` lines dropped, the first `#Fields:` line as the header (later ones dropped), every
//! line split on single spaces, every value quoted (as `Export-Csv` writes them). `--outbound` keeps
//! the `OutboundConnectionCommand`/`OutboundConnectionResponse` lines only.
//!
//! `--since` and `--until` are UTC, `YYYY-MM-DD[ HH:MM[:SS]]`, both included: `--until 2026-11-29`
//! means the whole day, `--until "2026-11-29 12:00"` the whole minute.

use super::queue::{CommandError, Target};
use crate::logs::w3c::{self, FIELDS, OUTBOUND_COMMAND, OUTBOUND_RESPONSE};
use clap::{Args, Subcommand};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Subcommand)]
pub enum LogsCommand {
    /// Write the W3C log lines of a time range as CSV (like the IIS log export in PowerShell).
    Export(ExportArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// The first moment to export, UTC: "2026-11-29", "2026-11-29 08:00" or "2026-11-29 08:00:00".
    #[arg(long, value_name = "TIME")]
    pub since: String,
    /// The last moment to export (included), UTC, same forms; default: everything after --since.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only the lines of connections to upstreams (OutboundConnectionCommand/Response).
    #[arg(long)]
    pub outbound: bool,
    /// The CSV file to write ("-": stdout).
    #[arg(long, value_name = "FILE")]
    pub csv: PathBuf,
}

pub fn run(target: &Target, command: LogsCommand) -> Result<(), CommandError> {
    let LogsCommand::Export(args) = command;
    let since = bound(&args.since, false)
        .ok_or_else(|| CommandError::Usage(format!("--since {:?}: {USAGE}", args.since)))?;
    let until = match &args.until {
        Some(text) => Some(
            bound(text, true)
                .ok_or_else(|| CommandError::Usage(format!("--until {text:?}: {USAGE}")))?,
        ),
        None => None,
    };
    let dir = w3c::log_dir(&target.resolve_data_dir()?);
    let filter = Filter {
        since,
        until,
        outbound: args.outbound,
    };
    let written = if args.csv.as_os_str() == "-" {
        let stdout = std::io::stdout();
        export(&dir, &filter, &mut stdout.lock())
    } else {
        let file = std::fs::File::create(&args.csv).map_err(|e| {
            CommandError::Usage(format!("cannot create {}: {e}", args.csv.display()))
        })?;
        let mut out = std::io::BufWriter::new(file);
        export(&dir, &filter, &mut out).and_then(|n| out.flush().map(|()| n))
    }
    .map_err(|e| CommandError::Usage(format!("cannot export the W3C log: {e}")))?;
    if args.csv.as_os_str() != "-" {
        eprintln!("{written} lines written to {}", args.csv.display());
    }
    Ok(())
}

const USAGE: &str =
    "write a UTC time as YYYY-MM-DD, \"YYYY-MM-DD HH:MM\" or \"YYYY-MM-DD HH:MM:SS\"";

/// Which lines to export. Times are `YYYY-MM-DD HH:MM:SS`, compared as text (as written in the log).
#[derive(Debug, Clone)]
pub struct Filter {
    pub since: String,
    pub until: Option<String>,
    pub outbound: bool,
}

/// A time as `YYYY-MM-DD HH:MM:SS`; missing parts are the start of the period, or its end (`end`).
pub fn bound(text: &str, end: bool) -> Option<String> {
    let text = text.trim();
    let (date, time) = text
        .split_once([' ', 'T'])
        .map_or((text, ""), |(d, t)| (d, t.trim()));
    let d: Vec<&str> = date.split('-').collect();
    let t: Vec<&str> = if time.is_empty() {
        Vec::new()
    } else {
        time.split(':').collect()
    };
    let number = |s: &str, len: usize, max: u32| -> Option<u32> {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
            .filter(|n| *n <= max)
    };
    if d.len() != 3 || t.len() > 3 || t.len() == 1 {
        return None;
    }
    let year = number(d[0], 4, 9999)?;
    let month = number(d[1], 2, 12)?;
    let day = number(d[2], 2, 31)?;
    let fill = if end { [23, 59, 59] } else { [0, 0, 0] };
    let hour = t.first().map_or(Some(fill[0]), |s| number(s, 2, 23))?;
    let minute = t.get(1).map_or(Some(fill[1]), |s| number(s, 2, 59))?;
    let second = t.get(2).map_or(Some(fill[2]), |s| number(s, 2, 59))?;
    (month >= 1 && day >= 1)
        .then(|| format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}"))
}

/// Writes the CSV of the log files in `dir` that `filter` selects; returns the number of rows.
pub fn export(dir: &Path, filter: &Filter, out: &mut dyn Write) -> std::io::Result<usize> {
    let first_day = filter.since[..10].replace('-', "");
    let last_day = filter.until.as_ref().map(|u| u[..10].replace('-', ""));
    let mut files: Vec<(String, PathBuf)> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_str()?.to_string();
                w3c::date_of_file_name(&name)?;
                let day = name["smtpsvc-".len().."smtpsvc-".len() + 8].to_string();
                let wanted = day >= first_day && last_day.as_ref().is_none_or(|last| day <= *last);
                wanted.then(|| (name, entry.path()))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    files.sort();

    let mut header: Option<Vec<String>> = None;
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (_, path) in &files {
        let reader = std::io::BufReader::new(std::fs::File::open(path)?);
        for line in reader.lines() {
            let line = line?;
            let line = line.trim_end_matches('\r');
            if let Some(fields) = line.strip_prefix("#Fields: ") {
                if header.is_none() {
                    header = Some(fields.split(' ').map(str::to_string).collect());
                }
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let values: Vec<&str> = line.split(' ').collect();
            if values.len() < 2 {
                continue;
            }
            let at = format!("{} {}", values[0], values[1]);
            if at < filter.since || filter.until.as_ref().is_some_and(|until| at > *until) {
                continue;
            }
            if filter.outbound
                && !values
                    .iter()
                    .any(|v| *v == OUTBOUND_COMMAND || *v == OUTBOUND_RESPONSE)
            {
                continue;
            }
            rows.push(values.into_iter().map(str::to_string).collect());
        }
    }
    let header =
        header.unwrap_or_else(|| FIELDS.split(' ').map(str::to_string).collect::<Vec<_>>());
    write_row(out, &header)?;
    for row in &mut rows {
        // ConvertFrom-Csv: a short line gets empty values, a long one loses what has no name.
        row.resize(header.len(), String::new());
        write_row(out, row)?;
    }
    Ok(rows.len())
}

/// One CSV record, every value quoted (as `Export-Csv` writes them), CRLF.
fn write_row(out: &mut dyn Write, values: &[String]) -> std::io::Result<()> {
    let mut line = String::new();
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push('"');
        line.push_str(&value.replace('"', "\"\""));
        line.push('"');
    }
    line.push_str("\r\n");
    out.write_all(line.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_fill_the_missing_parts() {
        assert_eq!(
            bound("2026-11-29", false).as_deref(),
            Some("2026-11-29 00:00:00")
        );
        assert_eq!(
            bound("2026-11-29", true).as_deref(),
            Some("2026-11-29 23:59:59")
        );
        assert_eq!(
            bound("2026-11-29 08:05", true).as_deref(),
            Some("2026-11-29 08:05:59")
        );
        assert_eq!(
            bound("2026-11-29T08:05:07", false).as_deref(),
            Some("2026-11-29 08:05:07")
        );
        assert_eq!(bound("29.11.2026", false), None);
        assert_eq!(bound("2026-11-29 8", false), None);
        assert_eq!(bound("2026-13-01", false), None);
    }
}
