//! `smarthost queue ...`: look at and manage the queue of a running relay through its control socket
//! (the `mailq` / `postqueue` / `postsuper` of smarthost).
//!
//! Exit codes: 0 done; 1 the relay refused (unknown id, message busy, ...); 2 bad arguments or
//! configuration, or no relay to ask.

use crate::config;
use crate::control::{self, Request, Response};
use crate::queue::view::{MessageDetail, MessageInfo, RecipientInfo};
use crate::spool;
use clap::{Args, Subcommand};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// Which relay to talk to: the one whose `data_dir` holds the control socket.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// The relay's configuration file; its data_dir holds the control socket
    /// (default: the built-in configuration, data_dir ./smarthost-data).
    #[arg(long, short, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The relay's data directory (instead of the one in the configuration).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum QueueCommand {
    /// Every message in the queue with its recipients' state, oldest first (like mailq).
    List {
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One message: envelope, recipients, headers and attempt history.
    Show {
        /// The queue id, as `queue list` shows it.
        id: String,
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Try to deliver a message (or every message that is not held) now.
    Retry {
        /// The queue id.
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        /// Every message in the queue that is not held.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Keep a message from being delivered until it is released.
    Hold { id: String },
    /// Let a held message be delivered again.
    Release { id: String },
    /// Remove a message from the queue without telling its sender.
    Delete { id: String },
    /// Give up on a message: its undelivered recipients fail and the sender gets a bounce.
    Bounce { id: String },
}

/// Why a command did not succeed; [`CommandError::exit_code`] is what the process exits with.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The relay answered that it cannot do it (unknown id, ...).
    #[error("{0}")]
    Relay(String),
    /// Bad arguments or configuration, or no relay to ask.
    #[error("{0}")]
    Usage(String),
}

impl CommandError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CommandError::Relay(_) => 1,
            CommandError::Usage(_) => 2,
        }
    }
}

impl Target {
    /// The control socket of the relay this command is about.
    pub fn socket_path(&self) -> Result<PathBuf, CommandError> {
        Ok(control::socket_path(&self.resolve_data_dir()?))
    }

    pub(crate) fn resolve_data_dir(&self) -> Result<PathBuf, CommandError> {
        if let Some(dir) = &self.data_dir {
            return Ok(dir.clone());
        }
        let Some(path) = &self.config else {
            return Ok(config::default_config().data_dir);
        };
        match config::load_file(path) {
            Ok(config) => Ok(config.data_dir),
            // The file may be valid only in the service's environment (a `password_env` set there,
            // a `password_file` only the service user can read): all we need is its data_dir.
            Err(errors) => raw_data_dir(path).ok_or_else(|| {
                CommandError::Usage(format!(
                    "{errors}{}: the configuration has errors; fix it or name the data directory with --data-dir DIR",
                    path.display()
                ))
            }),
        }
    }
}

/// `data_dir` as written in a configuration file that does not validate as a whole.
fn raw_data_dir(path: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(path).ok()?;
    let table: toml::Table = text.parse().ok()?;
    let dir = table.get("data_dir")?.as_str()?;
    (!dir.trim().is_empty()).then(|| PathBuf::from(dir))
}

/// Sends one request from a short-lived runtime of its own (the commands are one round trip).
pub(crate) fn ask(socket: &Path, request: &Request) -> Result<Response, CommandError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CommandError::Usage(format!("cannot start the runtime: {e}")))?;
    match runtime.block_on(control::client::request(socket, request)) {
        Ok(Response::Error { message }) => Err(CommandError::Relay(message)),
        Ok(response) => Ok(response),
        Err(e) => Err(CommandError::Usage(format!("{e:#}"))),
    }
}

pub(crate) fn unexpected(response: &Response) -> CommandError {
    let kind = serde_json::to_value(response)
        .ok()
        .and_then(|v| v.get("response").and_then(|r| r.as_str()).map(String::from))
        .unwrap_or_default();
    CommandError::Usage(format!(
        "the relay gave an unexpected answer ({kind}); are `smarthost` and the running relay the same version?"
    ))
}

/// Runs `smarthost queue COMMAND` and prints its result on stdout.
pub fn run(target: &Target, command: QueueCommand) -> Result<(), CommandError> {
    let socket = target.socket_path()?;
    let now = spool::unix_now();
    let request = match &command {
        QueueCommand::List { .. } => Request::List,
        QueueCommand::Show { id, .. } => Request::Show { id: id.clone() },
        QueueCommand::Retry { all: true, .. } => Request::RetryAll,
        QueueCommand::Retry { id, .. } => Request::Retry {
            id: id.clone().unwrap_or_default(),
        },
        QueueCommand::Hold { id } => Request::Hold { id: id.clone() },
        QueueCommand::Release { id } => Request::Release { id: id.clone() },
        QueueCommand::Delete { id } => Request::Delete { id: id.clone() },
        QueueCommand::Bounce { id } => Request::Bounce { id: id.clone() },
    };
    let response = ask(&socket, &request)?;
    let text = match (&command, response) {
        (QueueCommand::List { json: true }, Response::List(messages)) => to_json(&messages),
        (QueueCommand::List { json: false }, Response::List(messages)) => {
            format_list(&messages, now)
        }
        (QueueCommand::Show { json: true, .. }, Response::Show(detail)) => to_json(&detail),
        (QueueCommand::Show { json: false, .. }, Response::Show(detail)) => {
            format_detail(&detail, now)
        }
        (_, Response::Ok { message }) => format!("{message}\n"),
        (_, other) => return Err(unexpected(&other)),
    };
    print!("{text}");
    Ok(())
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// Lines are kept within this many columns by shortening the last reply (`queue show` has it whole).
const WIDTH: usize = 100;

/// The `mailq`-style listing: one line per message, one indented line per recipient, a summary.
pub fn format_list(messages: &[MessageInfo], now: u64) -> String {
    if messages.is_empty() {
        return "The queue is empty.\n".into();
    }
    let mut out = format!(
        "{:<17}  {:>4}  {:>6}  SENDER / RECIPIENTS\n",
        "QUEUE ID", "AGE", "SIZE"
    );
    let mut pending = 0;
    for m in messages {
        out.push_str(&format!(
            "{:<17}  {:>4}  {:>6}  {}  ({})\n",
            m.id,
            human_duration(now.saturating_sub(m.received_at)),
            human_size(m.size),
            sender(&m.sender),
            status(m, now)
        ));
        for r in &m.recipients {
            if !matches!(r.state.as_str(), "delivered" | "failed") {
                pending += 1;
            }
            let line = format!("    {:<9}  <{}>", r.state, printable(&r.address));
            let line = match &r.detail {
                Some(detail) => {
                    let room = WIDTH.saturating_sub(line.chars().count() + 2).max(20);
                    format!("{line}  {}", shorten(&single_line(detail), room))
                }
                None => line,
            };
            out.push_str(&line);
            out.push('\n');
        }
    }
    // Each node keeps its own spool: say which one this is.
    let node = messages
        .iter()
        .find(|m| !m.node.is_empty())
        .map(|m| format!(" on node {}", printable(&m.node)))
        .unwrap_or_default();
    out.push_str(&format!(
        "\n{} {}, {} {} pending{node}\n",
        messages.len(),
        plural(messages.len(), "message", "messages"),
        pending,
        plural(pending, "recipient", "recipients"),
    ));
    out
}

/// Everything about one message, for `queue show`.
pub fn format_detail(detail: &MessageDetail, now: u64) -> String {
    let m = &detail.info;
    let mut out = String::new();
    out.push_str(&format!("Queue ID:    {}\n", m.id));
    if !m.node.is_empty() {
        out.push_str(&format!("Node:        {}\n", printable(&m.node)));
    }
    out.push_str(&format!(
        "Received:    {} ({} ago) from {}\n",
        format_time(m.received_at),
        human_duration(now.saturating_sub(m.received_at)),
        printable(&m.origin)
    ));
    out.push_str(&format!("Size:        {} bytes\n", m.size));
    out.push_str(&format!("Sender:      {}\n", sender(&m.sender)));
    let mut state = status(m, now);
    if !m.held && !m.active && m.next_attempt > now {
        state.push_str(&format!(" (at {})", format_time(m.next_attempt)));
    }
    out.push_str(&format!("Status:      {state}\n"));
    out.push_str("Recipients:\n");
    for r in &m.recipients {
        out.push_str(&recipient_detail(r));
    }
    out.push_str("Headers:\n");
    for line in printable(&detail.headers).lines() {
        out.push_str(&format!("  {line}\n"));
    }
    out.push_str("History:\n");
    if detail.history.is_empty() {
        out.push_str("  (no delivery attempt yet)\n");
    }
    for attempt in &detail.history {
        out.push_str(&format!("  {}\n", format_time(attempt.at)));
        for (rcpt, outcome) in &attempt.results {
            out.push_str(&format!(
                "    <{}> {}\n",
                printable(rcpt),
                single_line(outcome)
            ));
        }
    }
    out
}

fn recipient_detail(r: &RecipientInfo) -> String {
    let mut out = format!("  {:<9}  <{}>", r.state, printable(&r.address));
    if let Some(at) = r.at {
        out.push_str(&format!("  ({})", format_time(at)));
    }
    out.push('\n');
    if let Some(detail) = &r.detail {
        out.push_str(&format!("             {}\n", single_line(detail)));
    }
    out
}

/// `2 attempts, next try in 12m`, `held`, `delivering now`, ...
fn status(m: &MessageInfo, now: u64) -> String {
    let next = if m.held {
        "held".to_string()
    } else if m.active {
        "delivering now".to_string()
    } else if m.next_attempt <= now {
        "next try now".to_string()
    } else {
        format!("next try in {}", human_duration(m.next_attempt - now))
    };
    match m.attempts {
        0 => format!("not tried yet, {next}"),
        1 => format!("1 attempt, {next}"),
        n => format!("{n} attempts, {next}"),
    }
}

pub(crate) fn sender(address: &str) -> String {
    format!("<{}>", printable(address))
}

pub(crate) fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

/// `45s`, `3m`, `2h`, `1d`: the largest whole unit, like `ps` and `mailq` ages.
pub fn human_duration(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// `812`, `1.2K`, `35M`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["K", "M", "G", "T"];
    if bytes < 1024 {
        return bytes.to_string();
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value < 10.0 {
        format!("{value:.1}{}", UNITS[unit])
    } else {
        format!("{value:.0}{}", UNITS[unit])
    }
}

/// `2025-06-01 10:00:00 UTC`.
pub fn format_time(unix: u64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .map(|t| format!("{t} UTC"))
        .unwrap_or_else(|| unix.to_string())
}

/// Text that came from senders and upstreams, made safe for a terminal: control characters (escape
/// sequences could rewrite the screen) are shown as `\xNN`; tabs and line breaks stay.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text
        .chars()
        .any(|c| c.is_control() && c != '\t' && c != '\n')
    {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\t' | '\n' => out.push(c),
            '\r' => {}
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A multi-line reply on one line.
fn single_line(text: &str) -> String {
    printable(text)
        .split(['\n', '\t'])
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::view::AttemptRecord;

    const NOW: u64 = 1_750_000_000;

    fn message(id: &str, sender: &str, recipients: Vec<RecipientInfo>) -> MessageInfo {
        MessageInfo {
            id: id.into(),
            node: "relay-a".into(),
            received_at: NOW - 180,
            size: 1234,
            sender: sender.into(),
            origin: "smtp 10.0.0.21 scanner1".into(),
            attempts: 2,
            next_attempt: NOW + 12 * 60,
            held: false,
            active: false,
            recipients,
        }
    }

    fn rcpt(address: &str, state: &str, detail: Option<&str>) -> RecipientInfo {
        RecipientInfo {
            address: address.into(),
            state: state.into(),
            detail: detail.map(String::from),
            at: detail.map(|_| NOW - 60),
        }
    }

    #[test]
    fn human_durations_use_the_largest_whole_unit() {
        for (seconds, text) in [
            (0, "0s"),
            (59, "59s"),
            (60, "1m"),
            (3599, "59m"),
            (7200, "2h"),
            (86_399, "23h"),
            (86_400, "1d"),
            (10 * 86_400, "10d"),
        ] {
            assert_eq!(human_duration(seconds), text, "{seconds}");
        }
    }

    #[test]
    fn human_sizes_stay_short() {
        for (bytes, text) in [
            (0, "0"),
            (1023, "1023"),
            (1234, "1.2K"),
            (35 * 1024 * 1024, "35M"),
            (3 * 1024 * 1024 * 1024, "3.0G"),
        ] {
            assert_eq!(human_size(bytes), text, "{bytes}");
        }
    }

    #[test]
    fn list_shows_each_message_its_recipients_and_a_summary() {
        let long = format!("451 4.4.0 {}", "x".repeat(200));
        let mut held = message(
            "0611F0E2D3C4B0002",
            "",
            vec![rcpt("b@example.com", "pending", None)],
        );
        held.held = true;
        held.next_attempt = 0;
        let text = format_list(
            &[
                message(
                    "0611F0E2D3C4B0001",
                    "scanner@contoso.example",
                    vec![
                        rcpt(
                            "boss@example.com",
                            "deferred",
                            Some("connection refused by 127.0.0.1:2525"),
                        ),
                        rcpt("a@example.com", "delivered", Some("250 2.0.0 OK")),
                        rcpt("c@example.com", "deferred", Some(&long)),
                    ],
                ),
                held,
            ],
            NOW,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "QUEUE ID            AGE    SIZE  SENDER / RECIPIENTS"
        );
        assert_eq!(
            lines[1],
            "0611F0E2D3C4B0001    3m    1.2K  <scanner@contoso.example>  (2 attempts, next try in 12m)"
        );
        assert_eq!(
            lines[2],
            "    deferred   <boss@example.com>  connection refused by 127.0.0.1:2525"
        );
        assert_eq!(lines[3], "    delivered  <a@example.com>  250 2.0.0 OK");
        assert!(
            lines[4].ends_with('…') && lines[4].chars().count() == WIDTH,
            "{}",
            lines[4]
        );
        assert_eq!(
            lines[5],
            "0611F0E2D3C4B0002    3m    1.2K  <>  (2 attempts, held)"
        );
        assert_eq!(
            lines.last().unwrap(),
            &"2 messages, 3 recipients pending on node relay-a"
        );
        assert_eq!(format_list(&[], NOW), "The queue is empty.\n");
    }

    #[test]
    fn status_says_what_happens_next() {
        let mut m = message("A", "s@x", Vec::new());
        assert_eq!(status(&m, NOW), "2 attempts, next try in 12m");
        m.active = true;
        assert_eq!(status(&m, NOW), "2 attempts, delivering now");
        m.active = false;
        m.attempts = 0;
        m.next_attempt = NOW;
        assert_eq!(status(&m, NOW), "not tried yet, next try now");
    }

    #[test]
    fn detail_has_envelope_recipients_headers_and_history() {
        let detail = MessageDetail {
            info: message(
                "0611F0E2D3C4B0001",
                "scanner@contoso.example",
                vec![rcpt(
                    "boss@example.com",
                    "deferred",
                    Some("421 4.3.2 try later\nsecond line"),
                )],
            ),
            headers: "Received: from scanner1\r\n\tby relay\r\nSubject: Scan\r\n".into(),
            history: vec![AttemptRecord {
                at: NOW - 60,
                results: vec![(
                    "boss@example.com".into(),
                    "deferred: 421 4.3.2 try later".into(),
                )],
            }],
        };
        let text = format_detail(&detail, NOW);
        for expected in [
            "Queue ID:    0611F0E2D3C4B0001\nNode:        relay-a\n",
            "Sender:      <scanner@contoso.example>\n",
            "from smtp 10.0.0.21 scanner1\n",
            "Status:      2 attempts, next try in 12m (at ",
            "  deferred   <boss@example.com>  (",
            "             421 4.3.2 try later second line\n",
            "Headers:\n  Received: from scanner1\n  \tby relay\n  Subject: Scan\n",
            "History:\n  ",
            "    <boss@example.com> deferred: 421 4.3.2 try later\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn terminal_control_characters_from_senders_are_neutralised() {
        assert_eq!(printable("plain\ttext\n"), "plain\ttext\n");
        assert_eq!(printable("a\u{1b}[2Jb\r\n"), "a\\x1b[2Jb\n");
        let m = message("A", "evil\u{1b}]0;x\u{7}@example.com", Vec::new());
        assert!(!format_list(&[m], NOW).contains('\u{1b}'));
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
    }

    #[test]
    fn a_config_with_errors_still_gives_its_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("smarthost.toml");
        std::fs::write(
            &file,
            "data_dir = \"/var/lib/smarthost\"\nno_such_key = 1\n",
        )
        .unwrap();
        let target = Target {
            config: Some(file.clone()),
            data_dir: None,
        };
        assert_eq!(
            target.socket_path().unwrap(),
            PathBuf::from("/var/lib/smarthost/control.sock")
        );
        std::fs::write(&file, "no_such_key = 1\n").unwrap();
        let err = target.socket_path().unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--data-dir"), "{err}");
        let target = Target {
            config: Some(file),
            data_dir: Some("/srv/relay".into()),
        };
        assert_eq!(
            target.socket_path().unwrap(),
            PathBuf::from("/srv/relay/control.sock")
        );
    }
}
