//! The Badmail folder: mail that could not be delivered and could not be bounced either (a bounce
//! that failed, a message from the null sender), and spool entries that could not be read. As in
//! IIS's `Badmail`, each entry has a message file, a readable reason file and an envelope file.
//!
//! Layout of `data_dir/badmail/`, one entry per message, named after its queue id (`NAME`):
//! - `NAME.bad`: the message content as it was stored in the spool;
//! - `NAME.bdr`: why it is here, for people: queue id, dates, sender, every recipient with its
//!   state and last reply, attempts, and a line per resubmission;
//! - `NAME.bdp`: the envelope as JSON ([`BadmailRecord`]), for listing and resubmitting;
//! - `NAME.env-unreadable`: only for a spool entry that could not be read: its envelope file as
//!   it was found.
//!
//! Invariants: nothing in the folder is overwritten or deleted automatically. A name already in use
//! (by any of the files above) gets `-1`, `-2`, ...; files are linked into place without replacing
//! anything. The only changes after an entry is stored are a resubmission, which rewrites `.bdp`
//! and appends to `.bdr`. Every file is written to a temporary file and fsynced before it appears
//! under its name, and the directory is fsynced before a store returns: when [`Badmail::store`]
//! returns `Ok`, the caller may remove the message from the spool.
//!
//! Text read back for display ([`Badmail::show`]) has its control characters replaced, so that a
//! hostile header or reply cannot drive the administrator's terminal.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

/// The envelope and history of a badmail entry (`NAME.bdp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadmailRecord {
    /// The entry's name in the folder: the queue id, with `-1`, `-2`, ... when that was taken.
    /// Chosen by [`Badmail::store`]; what the caller puts here is ignored.
    #[serde(default)]
    pub name: String,
    /// The queue id the message had.
    pub id: String,
    /// Envelope sender; empty for the null sender `<>`.
    pub sender: String,
    pub recipients: Vec<BadmailRecipient>,
    /// Why the message is here, for people.
    pub reason: String,
    pub attempts: u32,
    /// Unix seconds when the message was accepted (0: unknown).
    pub received_at: u64,
    /// Unix seconds when it was moved here.
    pub badmailed_at: u64,
    /// (unix seconds, new queue id) for every resubmission.
    #[serde(default)]
    pub resubmitted: Vec<(u64, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadmailRecipient {
    pub address: String,
    /// `pending`, `delivered`, `deferred` or `failed`.
    pub state: String,
    /// The last reply or reason for this recipient.
    pub detail: Option<String>,
}

/// The files of an entry, by extension.
const EXTENSIONS: [&str; 4] = ["bad", "bdr", "bdp", "env-unreadable"];
/// [`Badmail::show`] returns at most this much of a message's header section.
const HEADERS_MAX: u64 = 1024 * 1024;
/// Longest entry name accepted.
const NAME_MAX: usize = 100;

/// The Badmail folder of one data directory.
#[derive(Debug)]
pub struct Badmail {
    dir: PathBuf,
    /// Held while a name is chosen and its first file linked, so that two stores never pick the
    /// same name; and while `.bdp` is rewritten.
    writing: Mutex<()>,
}

impl Badmail {
    /// Opens `data_dir/badmail`, creating it if needed.
    pub fn open(data_dir: &Path) -> io::Result<Badmail> {
        let dir = data_dir.join("badmail");
        fs::create_dir_all(&dir)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        Ok(Badmail {
            dir,
            writing: Mutex::new(()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps a message that could not be delivered nor bounced. Returns the entry's name. When this
    /// returns `Ok`, the entry is durable.
    pub fn store(&self, record: &BadmailRecord, content: &[u8]) -> io::Result<String> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let name = self.free_name(&record.id);
        let mut record = record.clone();
        record.name = name.clone();
        self.write_new(&name, "bad", content)?;
        self.write_new(&name, "bdr", describe(&record, None).as_bytes())?;
        self.write_new(&name, "bdp", &to_json(&record)?)?;
        sync_dir(&self.dir)?;
        Ok(name)
    }

    /// Moves a spool entry that cannot be read here (start-up recovery): its content file `msg`
    /// becomes `NAME.bad` and its envelope file `env` becomes `NAME.env-unreadable`, both by
    /// rename; `.bdr` and `.bdp` (sender and recipients unknown) are written. `reason` says what is
    /// wrong with the entry (the record's reason is "the spool entry could not be read: {reason}").
    /// The source directories are fsynced last, so a crash leaves the files in one place or the
    /// other, never in none.
    pub fn store_unreadable(
        &self,
        id: &str,
        reason: &str,
        msg: Option<&Path>,
        env: Option<&Path>,
    ) -> io::Result<String> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let name = self.free_name(id);
        let record = BadmailRecord {
            name: name.clone(),
            id: id.to_string(),
            sender: String::new(),
            recipients: Vec::new(),
            reason: format!("the spool entry could not be read: {reason}"),
            attempts: 0,
            received_at: received_at_of(id),
            badmailed_at: crate::spool::unix_now(),
            resubmitted: Vec::new(),
        };
        let mut moved = Vec::new();
        let mut stored_envelope = false;
        if let Some(source) = msg {
            // A spool file keeps the envelope of acceptance in front of the content: the .bad file
            // gets the message alone (so it can be resubmitted), the envelope goes beside it.
            match fs::read(source)
                .ok()
                .and_then(|bytes| match crate::spool::split_stored(&bytes) {
                    Ok((Some(envelope), content)) => Some((envelope.to_vec(), content.to_vec())),
                    _ => None,
                }) {
                Some((envelope, content)) => {
                    self.write_new(&name, "bad", &content)?;
                    if env.is_none() {
                        self.write_new(&name, "env-unreadable", &envelope)?;
                        stored_envelope = true;
                    }
                    fs::remove_file(source)?;
                }
                None => self.move_new(source, &self.path(&name, "bad"))?,
            }
            moved.push(source);
        }
        if let Some(source) = env {
            self.move_new(source, &self.path(&name, "env-unreadable"))?;
            moved.push(source);
        }
        let files = Unreadable {
            content: msg.is_some(),
            envelope: env.is_some() || stored_envelope,
        };
        self.write_new(&name, "bdr", describe(&record, Some(files)).as_bytes())?;
        self.write_new(&name, "bdp", &to_json(&record)?)?;
        sync_dir(&self.dir)?;
        let sources: BTreeSet<&Path> = moved.iter().filter_map(|path| path.parent()).collect();
        for source_dir in sources {
            sync_dir(source_dir)?;
        }
        Ok(name)
    }

    /// Every entry, oldest first. An entry whose `.bdp` cannot be read is still listed, from its
    /// `.bdr` (its reason then says what is wrong), so that nothing here goes unseen.
    pub fn list(&self) -> io::Result<Vec<BadmailRecord>> {
        let mut names = BTreeSet::new();
        for entry in fs::read_dir(&self.dir)? {
            let file_name = entry?.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            if let Some((name, ext)) = file_name.split_once('.')
                && EXTENSIONS.contains(&ext)
                && check_name(name).is_ok()
            {
                names.insert(name.to_string());
            }
        }
        let mut records: Vec<BadmailRecord> = names.iter().map(|name| self.record(name)).collect();
        records.sort_by(|a, b| (a.badmailed_at, &a.name).cmp(&(b.badmailed_at, &b.name)));
        Ok(records)
    }

    /// One entry: its record, its `.bdr` text, and the header section of its message (line ends
    /// as `\n`, control characters replaced); empty texts for missing files.
    pub fn show(&self, name: &str) -> io::Result<(BadmailRecord, String, String)> {
        self.check_entry(name)?;
        let record = self.record(name);
        let reason = match fs::read(self.path(name, "bdr")) {
            Ok(bytes) => printable(&bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(self.error(name, "bdr", e)),
        };
        let headers = match File::open(self.path(name, "bad")) {
            Ok(file) => {
                let mut start = Vec::new();
                file.take(HEADERS_MAX).read_to_end(&mut start)?;
                let end = memchr::memmem::find(&start, b"\r\n\r\n")
                    .map(|at| at + 2)
                    .or_else(|| memchr::memmem::find(&start, b"\n\n").map(|at| at + 1))
                    .unwrap_or(start.len());
                printable(&start[..end])
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(self.error(name, "bad", e)),
        };
        Ok((record, reason, headers))
    }

    /// The envelope and the content to queue again. Refused (`InvalidData`) when the envelope is
    /// unknown: an unreadable `.bdp`, or an entry from an unreadable spool entry.
    pub fn read_for_resubmit(&self, name: &str) -> io::Result<(BadmailRecord, Vec<u8>)> {
        self.check_entry(name)?;
        let record = self.read_record(name)?;
        if record.recipients.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "badmail entry {name} cannot be resubmitted: it has no recipients (its spool \
                     entry could not be read); see {name}.bdr"
                ),
            ));
        }
        let content = fs::read(self.path(name, "bad")).map_err(|e| self.error(name, "bad", e))?;
        Ok((record, content))
    }

    /// Records that the entry was queued again as `new_id`. The entry stays.
    pub fn mark_resubmitted(&self, name: &str, new_id: &str, now: u64) -> io::Result<()> {
        self.check_entry(name)?;
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let mut record = self.read_record(name)?;
        let new_id = clean(new_id);
        record.resubmitted.push((now, new_id.clone()));
        self.write_replacing(&self.path(name, "bdp"), &to_json(&record)?)?;
        let mut bdr = OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.path(name, "bdr"))
            .map_err(|e| self.error(name, "bdr", e))?;
        writeln!(bdr, "Resubmitted {} as queue id {new_id}", date(now))?;
        bdr.sync_data()?;
        sync_dir(&self.dir)
    }

    fn path(&self, name: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{name}.{ext}"))
    }

    fn in_use(&self, name: &str) -> bool {
        EXTENSIONS
            .iter()
            .any(|ext| fs::symlink_metadata(self.path(name, ext)).is_ok())
    }

    /// The entry name for `id`: the id itself (restricted to the characters names may have), or
    /// with `-1`, `-2`, ... when that is in use. Called with `writing` held.
    fn free_name(&self, id: &str) -> String {
        let mut base: String = id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(NAME_MAX - 8)
            .collect();
        if base.is_empty() {
            base = "unnamed".to_string();
        }
        (0u64..)
            .map(|n| {
                if n == 0 {
                    base.clone()
                } else {
                    format!("{base}-{n}")
                }
            })
            .find(|name| !self.in_use(name))
            .expect("some suffix is free")
    }

    /// A valid name of an existing entry, or an error that says which it is not.
    fn check_entry(&self, name: &str) -> io::Result<()> {
        check_name(name)?;
        if self.in_use(name) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no badmail entry named {name} in {}", self.dir.display()),
            ))
        }
    }

    /// The record from `.bdp`, or one pieced together from `.bdr` and the files' times.
    fn record(&self, name: &str) -> BadmailRecord {
        self.read_record(name)
            .unwrap_or_else(|e| self.fallback_record(name, &e.to_string()))
    }

    fn read_record(&self, name: &str) -> io::Result<BadmailRecord> {
        let bytes = fs::read(self.path(name, "bdp")).map_err(|e| self.error(name, "bdp", e))?;
        let mut record: BadmailRecord = serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("badmail entry {name}: {name}.bdp is not a valid record: {e}"),
            )
        })?;
        record.name = name.to_string();
        Ok(record)
    }

    fn fallback_record(&self, name: &str, problem: &str) -> BadmailRecord {
        let bdr = fs::read(self.path(name, "bdr"))
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        let line = |label: &str| {
            bdr.lines()
                .find_map(|line| line.strip_prefix(label))
                .map(|value| value.trim().to_string())
        };
        let sender = line("Sender:")
            .and_then(|value| {
                let inner = value.strip_prefix('<')?;
                Some(inner[..inner.find('>')?].to_string())
            })
            .unwrap_or_default();
        let reason = match line("Reason:") {
            Some(reason) => format!("{reason} ({problem})"),
            None => problem.to_string(),
        };
        let badmailed_at = EXTENSIONS
            .iter()
            .filter_map(|ext| fs::metadata(self.path(name, ext)).ok()?.modified().ok())
            .filter_map(|time| time.duration_since(UNIX_EPOCH).ok())
            .map(|since| since.as_secs())
            .min()
            .unwrap_or(0);
        BadmailRecord {
            name: name.to_string(),
            id: line("Queue ID:").unwrap_or_else(|| name.to_string()),
            sender,
            recipients: Vec::new(),
            reason,
            attempts: 0,
            received_at: 0,
            badmailed_at,
            resubmitted: Vec::new(),
        }
    }

    /// Writes `NAME.ext` through a temporary file, never replacing an existing file.
    fn write_new(&self, name: &str, ext: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.path(name, ext);
        let tmp = tmp_path(&path);
        write_synced(&tmp, bytes)?;
        let linked = link_new(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        linked.map_err(|e| self.error(name, ext, e))
    }

    /// Replaces a file atomically (only `.bdp`, when an entry is resubmitted).
    fn write_replacing(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let tmp = tmp_path(path);
        write_synced(&tmp, bytes)?;
        fs::rename(&tmp, path)
    }

    /// Moves `source` to `target`, which must not exist; across file systems by copy, fsync, and
    /// removing the source.
    fn move_new(&self, source: &Path, target: &Path) -> io::Result<()> {
        if fs::symlink_metadata(target).is_ok() {
            return Err(exists(target));
        }
        match fs::rename(source, target) {
            Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
                let tmp = tmp_path(target);
                fs::copy(source, &tmp)?;
                // Opened for writing: Windows flushes only a handle with write access.
                File::options().write(true).open(&tmp)?.sync_all()?;
                let linked = link_new(&tmp, target);
                let _ = fs::remove_file(&tmp);
                linked?;
                sync_dir(&self.dir)?;
                fs::remove_file(source)
            }
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!(
                    "cannot move {} to {}: {e}",
                    source.display(),
                    target.display()
                ),
            )),
            Ok(()) => Ok(()),
        }
    }

    fn error(&self, name: &str, ext: &str, e: io::Error) -> io::Error {
        io::Error::new(
            e.kind(),
            format!(
                "badmail entry {name}: {}: {e}",
                self.path(name, ext).display()
            ),
        )
    }
}

/// Checks a name given from outside (the CLI, the admin API) before it reaches a path.
fn check_name(name: &str) -> io::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= NAME_MAX
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "invalid badmail entry name {name:?}: a name is made of letters, digits and '-', \
                 as the list of entries shows it (e.g. 19C8E1F2A3B4C0001 or 19C8E1F2A3B4C0001-1)"
            ),
        ))
    }
}

/// Which files an entry from an unreadable spool entry has.
#[derive(Clone, Copy)]
struct Unreadable {
    content: bool,
    envelope: bool,
}

/// The `.bdr` text of a new entry.
fn describe(record: &BadmailRecord, unreadable: Option<Unreadable>) -> String {
    let name = &record.name;
    let mut text = String::new();
    let _ = writeln!(text, "Badmail entry {name}");
    text.push('\n');
    match unreadable {
        None => text.push_str(
            "This message could not be delivered, and it could not be returned to its sender\n\
             either. It is kept here; nothing in this folder is deleted automatically.\n",
        ),
        Some(_) => text.push_str(
            "This entry of the spool could not be read when smarthost started, so it was moved\n\
             here instead of being delivered or deleted. Its sender and recipients are unknown:\n\
             it cannot be resubmitted as it is. Read the files below and send the message again\n\
             by other means if it is needed.\n",
        ),
    }
    text.push('\n');
    let _ = writeln!(text, "Reason:     {}", clean(&record.reason));
    text.push('\n');
    let _ = writeln!(text, "Queue ID:   {}", clean(&record.id));
    let accepted = match record.received_at {
        0 => "unknown".to_string(),
        at => date(at),
    };
    let _ = writeln!(text, "Accepted:   {accepted}");
    let _ = writeln!(text, "Badmailed:  {}", date(record.badmailed_at));
    let sender = if record.sender.is_empty() {
        match unreadable {
            Some(_) => "unknown".to_string(),
            None => "<> (none: the message is itself a delivery report)".to_string(),
        }
    } else {
        format!("<{}>", clean(&record.sender))
    };
    let _ = writeln!(text, "Sender:     {sender}");
    if unreadable.is_none() {
        let _ = writeln!(text, "Attempts:   {}", record.attempts);
        text.push_str("\nRecipients:\n");
        if record.recipients.is_empty() {
            text.push_str("  (none recorded)\n");
        }
        for rcpt in &record.recipients {
            let _ = writeln!(text, "  <{}>  {}", clean(&rcpt.address), clean(&rcpt.state));
            if let Some(detail) = &rcpt.detail {
                let _ = writeln!(text, "      {}", clean(detail));
            }
        }
    }
    text.push_str("\nFiles:\n");
    let mut files = Vec::new();
    match unreadable {
        None => files.push(("bad", "the message as it was stored")),
        Some(files_found) => {
            if files_found.content {
                files.push(("bad", "the message content file as it was found"));
            }
            if files_found.envelope {
                files.push((
                    "env-unreadable",
                    "the envelope file as it was found (JSON, possibly damaged)",
                ));
            }
        }
    }
    files.push(("bdr", "this description"));
    files.push(("bdp", "the envelope as JSON, for listing and resubmitting"));
    for (ext, what) in files {
        let _ = writeln!(text, "  {:<24}{what}", format!("{name}.{ext}"));
    }
    text.push('\n');
    text
}

/// Control characters (CR and LF among them) become spaces: every value stays on its line.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Text for a terminal: line ends as `\n`, tabs kept, other control characters as `?`.
fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .replace("\r\n", "\n")
        .chars()
        .map(|c| match c {
            '\n' | '\t' => c,
            c if c.is_control() => '?',
            c => c,
        })
        .collect()
}

/// `2026-11-29 10:11:12 UTC`.
fn date(unix: u64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    i64::try_from(unix)
        .ok()
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|at| at.format(format).ok())
        .unwrap_or_else(|| format!("unix time {unix}"))
}

/// A queue id starts with the microseconds of its arrival; other ids tell nothing.
fn received_at_of(id: &str) -> u64 {
    if !crate::spool::is_queue_id(id) {
        return 0;
    }
    u64::from_str_radix(&id[..13], 16).map_or(0, |micros| micros / 1_000_000)
}

fn to_json(record: &BadmailRecord) -> io::Result<Vec<u8>> {
    let mut json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    json.push(b'\n');
    Ok(json)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Gives `tmp` the name `path` unless `path` exists. A hard link never replaces its target; where
/// the file system has no hard links, a rename after checking (the `writing` lock keeps this
/// process's writers apart).
fn link_new(tmp: &Path, path: &Path) -> io::Result<()> {
    match fs::hard_link(tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(exists(path)),
        Err(_) if fs::symlink_metadata(path).is_ok() => Err(exists(path)),
        Err(_) => fs::rename(tmp, path),
    }
}

fn exists(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "{} exists already; badmail never replaces a file",
            path.display()
        ),
    )
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    crate::spool::sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "19C8E1F2A3B4C0001";
    const CONTENT: &[u8] =
        b"Received: from scanner1\r\nSubject: Scan\r\nFrom: <scan@contoso.com>\r\n\r\nbody line\r\n";

    fn record(id: &str, badmailed_at: u64) -> BadmailRecord {
        BadmailRecord {
            name: "ignored".into(),
            id: id.into(),
            sender: String::new(),
            recipients: vec![
                BadmailRecipient {
                    address: "gone@fabrikam.com".into(),
                    state: "failed".into(),
                    detail: Some(
                        "smtp.office365.com[52.96.1.2]:587 said \"550 5.1.1 User unknown\" in \
                         reply to RCPT TO:<gone@fabrikam.com>"
                            .into(),
                    ),
                },
                BadmailRecipient {
                    address: "ok@fabrikam.com".into(),
                    state: "delivered".into(),
                    detail: Some("250 2.1.5 Recipient OK".into()),
                },
            ],
            reason: "the sender is <>: a bounce that could not be delivered is not bounced again"
                .into(),
            attempts: 3,
            received_at: 1_795_947_072,
            badmailed_at,
            resubmitted: Vec::new(),
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn kind(result: io::Result<impl std::fmt::Debug>) -> (io::ErrorKind, String) {
        let e = result.unwrap_err();
        (e.kind(), e.to_string())
    }

    #[test]
    fn an_entry_is_three_files_and_a_taken_name_gets_a_suffix() {
        let data = tempfile::tempdir().unwrap();
        let badmail = Badmail::open(data.path()).unwrap();
        assert_eq!(badmail.dir(), data.path().join("badmail"));
        let first = badmail.store(&record(ID, 100), CONTENT).unwrap();
        assert_eq!(first, ID);
        let second = badmail.store(&record(ID, 200), b"other").unwrap();
        assert_eq!(second, format!("{ID}-1"));
        // Any file of an entry claims its name, even one left alone.
        fs::write(badmail.dir().join(format!("{ID}-2.bdr")), "by hand").unwrap();
        let third = badmail.store(&record(ID, 300), b"third").unwrap();
        assert_eq!(third, format!("{ID}-3"));

        let dir = badmail.dir();
        assert_eq!(fs::read(dir.join(format!("{ID}.bad"))).unwrap(), CONTENT);
        assert_eq!(fs::read(dir.join(format!("{ID}-1.bad"))).unwrap(), b"other");
        assert_eq!(
            fs::read_to_string(dir.join(format!("{ID}-2.bdr"))).unwrap(),
            "by hand"
        );
        let mut expected: Vec<String> = [ID.to_string(), format!("{ID}-1"), format!("{ID}-3")]
            .iter()
            .flat_map(|name| ["bad", "bdp", "bdr"].map(|ext| format!("{name}.{ext}")))
            .collect();
        expected.push(format!("{ID}-2.bdr"));
        expected.sort();
        assert_eq!(files(dir), expected, "no temporary files are left");

        let bdp: BadmailRecord =
            serde_json::from_slice(&fs::read(dir.join(format!("{ID}-1.bdp"))).unwrap()).unwrap();
        let mut want = record(ID, 200);
        want.name = format!("{ID}-1");
        assert_eq!(bdp, want);

        let bdr = fs::read_to_string(dir.join(format!("{ID}.bdr"))).unwrap();
        for line in [
            format!("Badmail entry {ID}"),
            "Reason:     the sender is <>: a bounce that could not be delivered is not bounced again"
                .to_string(),
            format!("Queue ID:   {ID}"),
            "Accepted:   2026-11-29 10:11:12 UTC".to_string(),
            "Badmailed:  1970-01-01 00:01:40 UTC".to_string(),
            "Sender:     <> (none: the message is itself a delivery report)".to_string(),
            "Attempts:   3".to_string(),
            "  <gone@fabrikam.com>  failed".to_string(),
            "      smtp.office365.com[52.96.1.2]:587 said \"550 5.1.1 User unknown\" in reply to \
             RCPT TO:<gone@fabrikam.com>"
                .to_string(),
            "  <ok@fabrikam.com>  delivered".to_string(),
            "      250 2.1.5 Recipient OK".to_string(),
            format!("  {ID}.bad   the message as it was stored"),
        ] {
            assert!(bdr.lines().any(|l| l == line), "{line:?} not in:\n{bdr}");
        }
    }

    #[test]
    fn values_cannot_add_lines_to_the_reason_file() {
        let data = tempfile::tempdir().unwrap();
        let badmail = Badmail::open(data.path()).unwrap();
        let mut rec = record(ID, 1);
        rec.sender = "a@b\r\nAttempts:   0".into();
        rec.reason = "x\nReason: forged".into();
        rec.recipients[0].detail = Some("550 no\r\n  <forged@x>  delivered".into());
        let name = badmail.store(&rec, CONTENT).unwrap();
        let bdr = fs::read_to_string(badmail.dir().join(format!("{name}.bdr"))).unwrap();
        assert_eq!(
            bdr.lines().filter(|l| l.starts_with("Attempts:")).count(),
            1
        );
        assert_eq!(bdr.lines().filter(|l| l.starts_with("Reason:")).count(), 1);
        assert!(
            !bdr.lines()
                .any(|l| l.trim_start().starts_with("<forged@x>")),
            "{bdr}"
        );
    }

    #[test]
    fn list_is_oldest_first_and_shows_entries_with_broken_files() {
        let data = tempfile::tempdir().unwrap();
        let badmail = Badmail::open(data.path()).unwrap();
        let late = badmail
            .store(&record("19C8E1F2A3B4C0003", 300), CONTENT)
            .unwrap();
        let early = badmail
            .store(&record("19C8E1F2A3B4C0001", 100), CONTENT)
            .unwrap();
        let mut rec = record("19C8E1F2A3B4C0002", 200);
        rec.sender = "scan@contoso.com".into();
        let broken = badmail.store(&rec, CONTENT).unwrap();
        fs::write(badmail.dir().join(format!("{broken}.bdp")), "{ not json").unwrap();
        // A message file alone (e.g. written by hand, or a crash between files) is listed too.
        fs::write(badmail.dir().join("LONELY.bad"), CONTENT).unwrap();
        // Temporary files and strangers are not entries.
        fs::write(badmail.dir().join(format!("{early}.bdp.tmp")), "x").unwrap();
        fs::write(badmail.dir().join("notes.txt"), "x").unwrap();
        fs::write(badmail.dir().join("bad name.bad"), "x").unwrap();

        let list = badmail.list().unwrap();
        let names: Vec<&str> = list.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names.len(), 4, "{list:#?}");
        // Entries without a record are dated by their files, i.e. now: last.
        assert_eq!(&names[..2], [early.as_str(), late.as_str()]);
        let fallback = list.iter().find(|r| r.name == broken).unwrap();
        assert_eq!(fallback.id, "19C8E1F2A3B4C0002");
        assert_eq!(fallback.sender, "scan@contoso.com");
        assert!(
            fallback
                .reason
                .starts_with("the sender is <>: a bounce that could not be delivered"),
            "{}",
            fallback.reason
        );
        assert!(
            fallback.reason.contains(".bdp is not a valid record"),
            "{}",
            fallback.reason
        );
        assert!(fallback.badmailed_at > 1_000_000_000);
        let lonely = list.iter().find(|r| r.name == "LONELY").unwrap();
        assert_eq!(lonely.id, "LONELY");
        assert!(lonely.reason.contains("LONELY.bdp"), "{}", lonely.reason);
    }

    #[test]
    fn show_gives_the_record_the_reason_and_the_headers() {
        let data = tempfile::tempdir().unwrap();
        let badmail = Badmail::open(data.path()).unwrap();
        let content = b"Received: from x\r\nSubject: \x1b[31mred\r\n\r\nsecret body\r\n";
        let name = badmail.store(&record(ID, 100), content).unwrap();
        let (rec, bdr, headers) = badmail.show(&name).unwrap();
        assert_eq!(rec.name, name);
        assert_eq!(rec.attempts, 3);
        assert!(bdr.starts_with(&format!("Badmail entry {ID}\n")), "{bdr}");
        assert_eq!(headers, "Received: from x\nSubject: ?[31mred\n");

        fs::remove_file(badmail.dir().join(format!("{name}.bad"))).unwrap();
        let (_, _, headers) = badmail.show(&name).unwrap();
        assert_eq!(headers, "");
    }

    #[test]
    fn resubmitting_keeps_the_entry_and_records_each_time() {
        let data = tempfile::tempdir().unwrap();
        let badmail = Badmail::open(data.path()).unwrap();
        let name = badmail.store(&record(ID, 100), CONTENT).unwrap();
        let (rec, content) = badmail.read_for_resubmit(&name).unwrap();
        assert_eq!(content, CONTENT);
        assert_eq!(rec.recipients.len(), 2);
        badmail
            .mark_resubmitted(&name, "19C8E1F2A3B4C00AA", 1_000)
            .unwrap();
        badmail
            .mark_resubmitted(&name, "19C8E1F2A3B4C00BB\n", 2_000)
            .unwrap();
        let (rec, bdr, _) = badmail.show(&name).unwrap();
        assert_eq!(
            rec.resubmitted,
            [
                (1_000, "19C8E1F2A3B4C00AA".to_string()),
                (2_000, "19C8E1F2A3B4C00BB ".to_string())
            ]
        );
        assert!(
            bdr.ends_with(
                "Resubmitted 1970-01-01 00:16:40 UTC as queue id 19C8E1F2A3B4C00AA\n\
             Resubmitted 1970-01-01 00:33:20 UTC as queue id 19C8E1F2A3B4C00BB \n"
            ),
            "{bdr}"
        );
        assert_eq!(badmail.read_for_resubmit(&name).unwrap().1, CONTENT);
        assert_eq!(files(badmail.dir()).len(), 3);

        // Without a readable envelope there is nothing to resubmit to.
        fs::write(badmail.dir().join(format!("{name}.bdp")), "[]").unwrap();
        let (kind_, message) = kind(badmail.read_for_resubmit(&name));
        assert_eq!(kind_, io::ErrorKind::InvalidData);
        assert!(
            message.contains(&format!("{name}.bdp is not a valid record")),
            "{message}"
        );
        assert_eq!(
            kind(badmail.mark_resubmitted(&name, "X", 1)).0,
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn names_from_outside_are_checked_before_they_reach_a_path() {
        let data = tempfile::tempdir().unwrap();
        let badmail = Badmail::open(data.path()).unwrap();
        fs::write(data.path().join("secret.bad"), "x").unwrap();
        for bad in [
            "",
            "../secret",
            "..",
            "a/b",
            "a\\b",
            "x.bad",
            "a b",
            "\u{e9}",
            &"A".repeat(101),
        ] {
            let (kind_, message) = kind(badmail.show(bad));
            assert_eq!(kind_, io::ErrorKind::InvalidInput, "{bad:?}");
            assert!(message.contains("invalid badmail entry name"), "{message}");
            assert_eq!(
                kind(badmail.read_for_resubmit(bad)).0,
                io::ErrorKind::InvalidInput
            );
            assert_eq!(
                kind(badmail.mark_resubmitted(bad, "X", 1)).0,
                io::ErrorKind::InvalidInput
            );
        }
        let (kind_, message) = kind(badmail.show("19C8E1F2A3B4C0009"));
        assert_eq!(kind_, io::ErrorKind::NotFound);
        assert!(
            message.contains("no badmail entry named 19C8E1F2A3B4C0009"),
            "{message}"
        );
        assert_eq!(
            kind(badmail.read_for_resubmit("nope")).0,
            io::ErrorKind::NotFound
        );
        assert_eq!(
            kind(badmail.mark_resubmitted("nope", "X", 1)).0,
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn a_spool_file_in_badmail_keeps_the_message_alone_and_its_envelope_beside_it() {
        let data = tempfile::tempdir().unwrap();
        let queue = data.path().join("spool/queue");
        fs::create_dir_all(&queue).unwrap();
        let badmail = Badmail::open(data.path()).unwrap();
        let msg = queue.join(format!("{ID}.msg"));
        let mut stored = b"SMARTHOST-SPOOL-1 10\r\n{\"id\":\"x\"}\r\n".to_vec();
        stored.extend_from_slice(CONTENT);
        fs::write(&msg, &stored).unwrap();
        let name = badmail
            .store_unreadable(ID, "message content is 3 bytes", Some(&msg), None)
            .unwrap();
        assert!(!msg.exists());
        let dir = badmail.dir();
        assert_eq!(fs::read(dir.join(format!("{name}.bad"))).unwrap(), CONTENT);
        assert_eq!(
            fs::read(dir.join(format!("{name}.env-unreadable"))).unwrap(),
            b"{\"id\":\"x\"}"
        );
    }

    #[test]
    fn an_unreadable_spool_entry_is_moved_in_whole() {
        let data = tempfile::tempdir().unwrap();
        let queue = data.path().join("spool/queue");
        fs::create_dir_all(&queue).unwrap();
        let badmail = Badmail::open(data.path()).unwrap();
        let msg = queue.join(format!("{ID}.msg"));
        let env = queue.join(format!("{ID}.env"));
        fs::write(&msg, CONTENT).unwrap();
        fs::write(&env, "not json").unwrap();
        let name = badmail
            .store_unreadable(
                ID,
                "envelope file unreadable: expected value",
                Some(&msg),
                Some(&env),
            )
            .unwrap();
        assert_eq!(name, ID);
        assert!(!msg.exists() && !env.exists());
        let dir = badmail.dir();
        assert_eq!(fs::read(dir.join(format!("{ID}.bad"))).unwrap(), CONTENT);
        assert_eq!(
            fs::read(dir.join(format!("{ID}.env-unreadable"))).unwrap(),
            b"not json"
        );
        let (rec, bdr, headers) = badmail.show(&name).unwrap();
        assert_eq!(rec.sender, "");
        assert!(rec.recipients.is_empty());
        assert_eq!(
            rec.reason,
            "the spool entry could not be read: envelope file unreadable: expected value"
        );
        // The queue id tells when it arrived.
        assert_eq!(rec.received_at, 0x19C8E1F2A3B4C / 1_000_000);
        assert!(rec.badmailed_at >= crate::spool::unix_now() - 60);
        assert!(bdr.contains(&format!("{ID}.env-unreadable")), "{bdr}");
        assert!(bdr.contains("Sender:     unknown"), "{bdr}");
        assert!(headers.starts_with("Received: from scanner1\n"));
        let (kind_, message) = kind(badmail.read_for_resubmit(&name));
        assert_eq!(kind_, io::ErrorKind::InvalidData);
        assert!(message.contains("has no recipients"), "{message}");

        // An entry whose content is missing, with an id that is no queue id.
        let env2 = queue.join("odd name.env");
        fs::write(&env2, "{}").unwrap();
        let name2 = badmail
            .store_unreadable("odd name", "message content missing", None, Some(&env2))
            .unwrap();
        assert_eq!(name2, "odd-name");
        let (rec2, bdr2, headers2) = badmail.show(&name2).unwrap();
        assert_eq!((rec2.id.as_str(), rec2.received_at), ("odd name", 0));
        assert!(!bdr2.contains("odd-name.bad"), "{bdr2}");
        assert_eq!(headers2, "");
        assert_eq!(
            files(dir),
            [
                format!("{ID}.bad"),
                format!("{ID}.bdp"),
                format!("{ID}.bdr"),
                format!("{ID}.env-unreadable"),
                "odd-name.bdp".to_string(),
                "odd-name.bdr".to_string(),
                "odd-name.env-unreadable".to_string(),
            ]
        );
        assert_eq!(badmail.list().unwrap().len(), 2);
    }
}
