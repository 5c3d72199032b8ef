//! `smarthost badmail ...`: the Badmail folder of a running relay (mail that could be neither delivered
//! nor bounced), through its control socket. Exit codes as for `smarthost queue`.

use super::queue::{
    CommandError, Target, ask, format_time, human_duration, plural, printable, sender, to_json,
    unexpected,
};
use crate::bounce::badmail::BadmailRecord;
use crate::control::{Request, Response};
use crate::spool;
use clap::Subcommand;

#[derive(Debug, Clone, Subcommand)]
pub enum BadmailCommand {
    /// Every entry, oldest first, with its reason.
    List {
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One entry: envelope, reason report and the message's headers.
    Show {
        /// The entry's name, as `badmail list` shows it.
        name: String,
    },
    /// Queue the message again, to the recipients it had not reached.
    Resubmit {
        /// The entry's name.
        name: String,
    },
}

/// Runs `smarthost badmail COMMAND` and prints its result on stdout.
pub fn run(target: &Target, command: BadmailCommand) -> Result<(), CommandError> {
    let socket = target.socket_path()?;
    let now = spool::unix_now();
    let request = match &command {
        BadmailCommand::List { .. } => Request::BadmailList,
        BadmailCommand::Show { name } => Request::BadmailShow { name: name.clone() },
        BadmailCommand::Resubmit { name } => Request::BadmailResubmit { name: name.clone() },
    };
    let text = match (&command, ask(&socket, &request)?) {
        (BadmailCommand::List { json: true }, Response::BadmailList(records)) => to_json(&records),
        (BadmailCommand::List { json: false }, Response::BadmailList(records)) => {
            format_list(&records, now)
        }
        (
            BadmailCommand::Show { .. },
            Response::BadmailShow {
                record,
                report,
                headers,
            },
        ) => format_show(&record, &report, &headers, now),
        (_, Response::Ok { message }) => format!("{message}\n"),
        (_, other) => return Err(unexpected(&other)),
    };
    print!("{text}");
    Ok(())
}

pub fn format_list(records: &[BadmailRecord], now: u64) -> String {
    if records.is_empty() {
        return "The Badmail folder is empty.\n".into();
    }
    let mut out = format!("{:<20}  {:>4}  SENDER / RECIPIENTS\n", "NAME", "AGE");
    for r in records {
        let mut notes = vec![match r.attempts {
            1 => "1 attempt".to_string(),
            n => format!("{n} attempts"),
        }];
        if let Some((_, id)) = r.resubmitted.last() {
            notes.push(format!("resubmitted as {}", printable(id)));
        }
        out.push_str(&format!(
            "{:<20}  {:>4}  {}  ({})\n",
            r.name,
            human_duration(now.saturating_sub(r.badmailed_at)),
            sender(&r.sender),
            notes.join(", ")
        ));
        out.push_str(&format!("    why: {}\n", one_line(&r.reason)));
        for rcpt in &r.recipients {
            let mut line = format!("    {:<9}  <{}>", rcpt.state, printable(&rcpt.address));
            if let Some(detail) = &rcpt.detail {
                line.push_str("  ");
                line.push_str(&one_line(detail));
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "\n{} {} in the Badmail folder\n",
        records.len(),
        plural(records.len(), "entry", "entries")
    ));
    out
}

/// The entry's report (`.bdr`, written for people) and the message's headers; a summary of the
/// record stands in for a report that is missing.
pub fn format_show(record: &BadmailRecord, report: &str, headers: &str, now: u64) -> String {
    let mut out = String::new();
    if report.trim().is_empty() {
        out.push_str(&summary(record, now));
    } else {
        out.push_str(&printable(report));
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out.push_str("\nHeaders:\n");
    for line in printable(headers).lines() {
        out.push_str(&format!("  {line}\n"));
    }
    out
}

fn summary(record: &BadmailRecord, now: u64) -> String {
    let mut out = String::new();
    out.push_str(&format!("Badmail entry {}\n\n", record.name));
    out.push_str(&format!("Reason:     {}\n", one_line(&record.reason)));
    out.push_str(&format!("Queue ID:   {}\n", printable(&record.id)));
    if record.received_at > 0 {
        out.push_str(&format!(
            "Accepted:   {}\n",
            format_time(record.received_at)
        ));
    }
    out.push_str(&format!(
        "Badmailed:  {} ({} ago)\n",
        format_time(record.badmailed_at),
        human_duration(now.saturating_sub(record.badmailed_at))
    ));
    out.push_str(&format!("Sender:     {}\n", sender(&record.sender)));
    out.push_str(&format!("Attempts:   {}\n", record.attempts));
    out.push_str("Recipients:\n");
    for rcpt in &record.recipients {
        out.push_str(&format!(
            "  {:<9}  <{}>\n",
            rcpt.state,
            printable(&rcpt.address)
        ));
        if let Some(detail) = &rcpt.detail {
            out.push_str(&format!("             {}\n", one_line(detail)));
        }
    }
    for (at, id) in &record.resubmitted {
        out.push_str(&format!(
            "Resubmitted {} as queue id {}\n",
            format_time(*at),
            printable(id)
        ));
    }
    out
}

fn one_line(text: &str) -> String {
    printable(text)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bounce::badmail::BadmailRecipient;

    const NOW: u64 = 1_750_000_000;

    fn record() -> BadmailRecord {
        BadmailRecord {
            name: "0611F0E2D3C4B0001".into(),
            id: "0611F0E2D3C4B0001".into(),
            sender: String::new(),
            recipients: vec![BadmailRecipient {
                address: "nobody@example.com".into(),
                state: "failed".into(),
                detail: Some("550 5.1.1 User unknown".into()),
            }],
            reason: "a bounce (null sender) failed permanently".into(),
            attempts: 1,
            received_at: NOW - 600,
            badmailed_at: NOW - 120,
            resubmitted: Vec::new(),
        }
    }

    #[test]
    fn list_shows_name_sender_reason_and_recipients() {
        let text = format_list(&[record()], NOW);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "NAME                   AGE  SENDER / RECIPIENTS");
        assert_eq!(lines[1], "0611F0E2D3C4B0001       2m  <>  (1 attempt)");
        assert_eq!(
            lines[2],
            "    why: a bounce (null sender) failed permanently"
        );
        assert_eq!(
            lines[3],
            "    failed     <nobody@example.com>  550 5.1.1 User unknown"
        );
        assert_eq!(lines[5], "1 entry in the Badmail folder");
        assert_eq!(format_list(&[], NOW), "The Badmail folder is empty.\n");
    }

    #[test]
    fn show_prints_the_report_and_headers_or_a_summary_without_report() {
        let text = format_show(
            &record(),
            "Badmail entry X\nReason: 550\n",
            "Subject: Scan\n",
            NOW,
        );
        assert_eq!(
            text,
            "Badmail entry X\nReason: 550\n\nHeaders:\n  Subject: Scan\n"
        );

        let mut r = record();
        r.resubmitted.push((NOW - 10, "0611F0E2D3C4B0099".into()));
        let text = format_show(&r, "", "Subject: Scan\n", NOW);
        for expected in [
            "Badmail entry 0611F0E2D3C4B0001\n",
            "Sender:     <>\n",
            "Reason:     a bounce (null sender) failed permanently\n",
            "  failed     <nobody@example.com>\n             550 5.1.1 User unknown\n",
            "as queue id 0611F0E2D3C4B0099\n",
            "Headers:\n  Subject: Scan\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(format_list(&[r], NOW).contains("resubmitted as 0611F0E2D3C4B0099"));
    }
}
