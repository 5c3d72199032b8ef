//! The SMTP log in the W3C extended format, as IIS SMTP wrote it (`LogFiles\SMTPSVC1`), so that
//! administrators' scripts (the seed's PowerShell export: drop `#Software`/`#Version`/`#Date`,
//! header from `#Fields:`, split on single spaces) keep working on our files.
//!
//! Files: `data_dir/logs/smtpsvc-YYYYMMDD.log`, one per UTC day; the header block is written when a
//! file is created. One line per inbound command (with our reply) and per outbound command and
//! response (`OutboundConnectionCommand`, `OutboundConnectionResponse` in `cs-username`).
//!
//! Invariants:
//! - Every line has exactly [`FIELD_COUNT`] space-separated fields: spaces (and any whitespace or
//!   control character) inside a value become `+`, an empty value is `-`.
//! - Nothing secret is logged: AUTH is logged with its mechanism only, SASL exchanges and replies to
//!   AUTH upstream with the reply code only (the callers pass nothing else).
//! - Logging never slows or blocks a session: lines go through a bounded channel to a writer thread
//!   with a buffered file (flushed every second and at shutdown); when the channel is full the line
//!   is dropped and counted ([`LogSink::dropped`]).
//! - Retention: files whose name's date is more than `retention_days` days before today are deleted
//!   at start-up and once a day (`0`: kept forever).

use std::borrow::Cow;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};
use time::{Date, OffsetDateTime};

/// The `#Fields:` of every file (IIS's SMTP set).
pub const FIELDS: &str = "date time c-ip cs-username s-sitename s-computername s-ip s-port cs-method cs-uri-stem cs-uri-query sc-status sc-win32-status sc-bytes cs-bytes time-taken cs-version cs-host cs(User-Agent) cs(Cookie) cs(Referer)";
/// How many fields [`FIELDS`] names; every line has exactly this many.
pub const FIELD_COUNT: usize = 21;
/// `s-sitename`: IIS's name of the first SMTP virtual server.
pub const SITE_NAME: &str = "SMTPSVC1";
/// `cs-username` of a reply from an upstream.
pub const OUTBOUND_RESPONSE: &str = "OutboundConnectionResponse";
/// `cs-username` of a command to an upstream.
pub const OUTBOUND_COMMAND: &str = "OutboundConnectionCommand";
/// Lines waiting for the writer; beyond this they are dropped.
const CAPACITY: usize = 16 * 1024;
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// `data_dir/logs`.
pub fn log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("logs")
}

/// `smtpsvc-YYYYMMDD.log` for a UTC date.
pub fn file_name(date: Date) -> String {
    format!(
        "smtpsvc-{:04}{:02}{:02}.log",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// The date in a `smtpsvc-YYYYMMDD.log` name.
pub fn date_of_file_name(name: &str) -> Option<Date> {
    let digits = name.strip_prefix("smtpsvc-")?.strip_suffix(".log")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = digits[..4].parse().ok()?;
    let month: u8 = digits[4..6].parse().ok()?;
    let day: u8 = digits[6..].parse().ok()?;
    Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()
}

/// `YYYY-MM-DD HH:MM:SS` (the `date time` fields and `#Date:`).
pub fn format_timestamp(at: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// A value as one field: `-` when empty, whitespace and control characters as `+`.
pub fn escape(value: &str) -> Cow<'_, str> {
    if value.is_empty() {
        return Cow::Borrowed("-");
    }
    if !value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Cow::Borrowed(value);
    }
    Cow::Owned(
        value
            .chars()
            .map(|c| {
                if c.is_whitespace() || c.is_control() {
                    '+'
                } else {
                    c
                }
            })
            .collect(),
    )
}

/// One inbound command and our reply to it.
#[derive(Debug, Clone)]
pub struct InboundEntry<'a> {
    pub client_ip: IpAddr,
    /// The client's HELO/EHLO name (IIS logs it as `cs-username`).
    pub helo: Option<&'a str>,
    /// The address the client connected to.
    pub server_ip: Option<IpAddr>,
    /// The command verb (`EHLO`, `MAIL`, ...); `-` when unknown.
    pub verb: &'a str,
    /// What followed the verb; for AUTH only the mechanism. Logged as `+argument`.
    pub argument: &'a str,
    /// The code of our (last) reply.
    pub status: u16,
    pub reply_bytes: u64,
    pub command_bytes: u64,
    pub took: Duration,
}

/// A cheap handle to the log: clone it freely. [`LogSink::disabled`] (the default) logs nothing.
#[derive(Clone, Default)]
pub struct LogSink {
    inner: Option<Arc<Shared>>,
}

struct Shared {
    tx: SyncSender<Msg>,
    dropped: AtomicU64,
    /// `s-computername`.
    computer: String,
}

enum Msg {
    Line { at: OffsetDateTime, rest: String },
    Stop,
}

impl fmt::Debug for LogSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogSink")
            .field("enabled", &self.is_enabled())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl LogSink {
    pub fn disabled() -> Self {
        LogSink::default()
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Lines dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |s| s.dropped.load(Ordering::Relaxed))
    }

    pub fn inbound(&self, e: &InboundEntry<'_>) {
        let Some(shared) = &self.inner else { return };
        let query = if e.argument.is_empty() {
            String::new()
        } else {
            format!("+{}", e.argument)
        };
        let rest = fields(&[
            &e.client_ip.to_string(),
            e.helo.unwrap_or(""),
            SITE_NAME,
            &shared.computer,
            &e.server_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            "0",
            e.verb,
            "",
            &query,
            &e.status.to_string(),
            "0",
            &e.reply_bytes.to_string(),
            &e.command_bytes.to_string(),
            &e.took.as_millis().to_string(),
            "SMTP",
            "",
            "",
            "",
            "",
        ]);
        self.send(shared, rest);
    }

    /// A command sent to an upstream: the verb and its argument (never a secret: callers pass the
    /// mechanism only for AUTH).
    pub fn outbound_command(&self, upstream: SocketAddr, verb: &str, argument: &str) {
        let Some(shared) = &self.inner else { return };
        let rest = fields(&[
            &upstream.ip().to_string(),
            OUTBOUND_COMMAND,
            SITE_NAME,
            &shared.computer,
            "",
            &upstream.port().to_string(),
            verb,
            "",
            argument,
            "0",
            "0",
            &verb.len().to_string(),
            "0",
            "0",
            "SMTP",
            "",
            "",
            "",
            "",
        ]);
        self.send(shared, rest);
    }

    /// A reply from an upstream (`text`: code and text on one line), `took` since the command.
    pub fn outbound_response(
        &self,
        upstream: SocketAddr,
        text: &str,
        reply_bytes: usize,
        took: Duration,
    ) {
        let Some(shared) = &self.inner else { return };
        let rest = fields(&[
            &upstream.ip().to_string(),
            OUTBOUND_RESPONSE,
            SITE_NAME,
            &shared.computer,
            "",
            &upstream.port().to_string(),
            "",
            "",
            text,
            "0",
            "0",
            &reply_bytes.to_string(),
            "0",
            &took.as_millis().to_string(),
            "SMTP",
            "",
            "",
            "",
            "",
        ]);
        self.send(shared, rest);
    }

    fn send(&self, shared: &Shared, rest: String) {
        let msg = Msg::Line {
            at: OffsetDateTime::now_utc(),
            rest,
        };
        match shared.tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The fields after `date time`, escaped and joined.
fn fields(values: &[&str; FIELD_COUNT - 2]) -> String {
    let mut out = String::with_capacity(160);
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&escape(value));
    }
    out
}

/// The writer thread; [`LogWriter::shutdown`] writes what is queued, flushes and stops it.
pub struct LogWriter {
    tx: SyncSender<Msg>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogWriter").finish_non_exhaustive()
    }
}

/// Starts the writer for `dir` (created if missing). `computer` is `s-computername` (the relay's
/// host name); `retention_days` 0 keeps files forever.
pub fn start(
    dir: PathBuf,
    computer: &str,
    retention_days: u32,
) -> io::Result<(LogSink, LogWriter)> {
    std::fs::create_dir_all(&dir)?;
    let (tx, rx) = sync_channel(CAPACITY);
    let mut files = Files {
        dir,
        current: None,
        retention_days,
        cleaned_on: None,
        failing: false,
    };
    files.clean_up(OffsetDateTime::now_utc().date());
    let thread = std::thread::Builder::new()
        .name("w3c-log".into())
        .spawn(move || run(rx, files))?;
    let sink = LogSink {
        inner: Some(Arc::new(Shared {
            tx: tx.clone(),
            dropped: AtomicU64::new(0),
            computer: computer.to_string(),
        })),
    };
    Ok((
        sink,
        LogWriter {
            tx,
            thread: Some(thread),
        },
    ))
}

impl LogWriter {
    /// Writes every line sent before this call, flushes and stops the thread (blocking).
    pub fn stop(mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// [`LogWriter::stop`] off the async threads.
    pub async fn shutdown(self) {
        let _ = tokio::task::spawn_blocking(move || self.stop()).await;
    }
}

fn run(rx: Receiver<Msg>, mut files: Files) {
    let mut next_flush = Instant::now() + FLUSH_EVERY;
    loop {
        let wait = next_flush.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Msg::Line { at, rest }) => files.write(at, &rest),
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => {
                files.flush();
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() >= next_flush {
            files.flush();
            files.clean_up(OffsetDateTime::now_utc().date());
            next_flush = Instant::now() + FLUSH_EVERY;
        }
    }
}

struct Files {
    dir: PathBuf,
    current: Option<(Date, BufWriter<File>)>,
    retention_days: u32,
    /// The day retention last ran.
    cleaned_on: Option<Date>,
    /// Set after a write error was reported, until a write succeeds (one warning per streak).
    failing: bool,
}

impl Files {
    fn write(&mut self, at: OffsetDateTime, rest: &str) {
        let result = self
            .file_for(at)
            .and_then(|file| writeln!(file, "{} {rest}", format_timestamp(at)));
        self.note(result);
    }

    /// The open file for `at`'s date: another date (midnight UTC) closes the current one.
    fn file_for(&mut self, at: OffsetDateTime) -> io::Result<&mut BufWriter<File>> {
        let date = at.date();
        if self.current.as_ref().is_some_and(|(d, _)| *d != date)
            && let Some((_, mut old)) = self.current.take()
        {
            old.flush()?;
        }
        if self.current.is_none() {
            let path = self.dir.join(file_name(date));
            std::fs::create_dir_all(&self.dir)?;
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            let mut file = BufWriter::with_capacity(64 * 1024, file);
            if file.get_ref().metadata()?.len() == 0 {
                write!(
                    file,
                    "#Software: smarthost {}\n#Version: 1.0\n#Date: {}\n#Fields: {FIELDS}\n",
                    env!("CARGO_PKG_VERSION"),
                    format_timestamp(at)
                )?;
            }
            self.current = Some((date, file));
        }
        Ok(&mut self.current.as_mut().expect("opened above").1)
    }

    fn flush(&mut self) {
        if let Some((_, file)) = self.current.as_mut() {
            let result = file.flush();
            self.note(result);
        }
    }

    fn note(&mut self, result: io::Result<()>) {
        match result {
            Ok(()) => self.failing = false,
            Err(e) if !self.failing => {
                self.failing = true;
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write the W3C log");
            }
            Err(_) => {}
        }
    }

    /// Deletes `smtpsvc-*.log` files older than the retention (once per day).
    fn clean_up(&mut self, today: Date) {
        if self.retention_days == 0 || self.cleaned_on == Some(today) {
            return;
        }
        self.cleaned_on = Some(today);
        let Some(oldest) = today.checked_sub(time::Duration::days(i64::from(self.retention_days)))
        else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(date) = name.to_str().and_then(date_of_file_name) else {
                continue;
            };
            if date < oldest {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => {
                        tracing::info!(file = %entry.path().display(), "old W3C log deleted (retention_days)")
                    }
                    Err(e) => {
                        tracing::warn!(file = %entry.path().display(), error = %e, "cannot delete an old W3C log")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_as_iis_does() {
        assert_eq!(escape(""), "-");
        assert_eq!(escape("a b\tc"), "a+b+c");
        assert_eq!(escape("FROM:<x@y>"), "FROM:<x@y>");
        assert_eq!(FIELDS.split(' ').count(), FIELD_COUNT);
    }

    #[test]
    fn file_names_carry_the_utc_date() {
        let date = Date::from_calendar_date(2026, time::Month::November, 9).unwrap();
        assert_eq!(file_name(date), "smtpsvc-20261109.log");
        assert_eq!(date_of_file_name("smtpsvc-20261109.log"), Some(date));
        assert_eq!(date_of_file_name("smtpsvc-2026110.log"), None);
        assert_eq!(date_of_file_name("other-20261109.log"), None);
    }

    #[test]
    fn lines_have_every_field_and_old_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let today = OffsetDateTime::now_utc().date();
        let old = logs.join(file_name(today - time::Duration::days(31)));
        let kept = logs.join(file_name(today - time::Duration::days(29)));
        std::fs::write(&old, "x").unwrap();
        std::fs::write(&kept, "x").unwrap();
        let (sink, writer) = start(logs.clone(), "RELAY01", 30).unwrap();
        assert!(!old.exists() && kept.exists());
        sink.inbound(&InboundEntry {
            client_ip: "10.0.0.21".parse().unwrap(),
            helo: Some("scanner1"),
            server_ip: Some("10.0.0.5".parse().unwrap()),
            verb: "MAIL",
            argument: "FROM:<scan@contoso.com> SIZE=5",
            status: 250,
            reply_bytes: 46,
            command_bytes: 31,
            took: Duration::ZERO,
        });
        sink.outbound_response(
            "52.96.1.2:587".parse().unwrap(),
            "220 ... Microsoft ESMTP MAIL Service ready",
            96,
            Duration::from_millis(31),
        );
        sink.outbound_command("52.96.1.2:587".parse().unwrap(), "EHLO", "RELAY01");
        writer.stop();
        let text = std::fs::read_to_string(logs.join(file_name(today))).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("#Software: smarthost "));
        assert_eq!(lines[1], "#Version: 1.0");
        assert!(lines[2].starts_with("#Date: "));
        assert_eq!(lines[3], format!("#Fields: {FIELDS}"));
        let rest = |line: &str| line.splitn(3, ' ').nth(2).unwrap().to_string();
        assert_eq!(
            rest(lines[4]),
            "10.0.0.21 scanner1 SMTPSVC1 RELAY01 10.0.0.5 0 MAIL - +FROM:<scan@contoso.com>+SIZE=5 250 0 46 31 0 SMTP - - - -"
        );
        assert_eq!(
            rest(lines[5]),
            "52.96.1.2 OutboundConnectionResponse SMTPSVC1 RELAY01 - 587 - - 220+...+Microsoft+ESMTP+MAIL+Service+ready 0 0 96 0 31 SMTP - - - -"
        );
        assert_eq!(
            rest(lines[6]),
            "52.96.1.2 OutboundConnectionCommand SMTPSVC1 RELAY01 - 587 EHLO - RELAY01 0 0 4 0 0 SMTP - - - -"
        );
        for line in &lines[4..] {
            assert_eq!(line.split(' ').count(), FIELD_COUNT, "{line}");
        }
    }
}
