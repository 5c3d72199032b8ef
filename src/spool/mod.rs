//! The spool: durable storage of accepted messages. It is the truth; the in-memory queue is an index
//! rebuilt from it at start-up.
//!
//! Layout below `data_dir/spool/`:
//! - `queue/<id>.msg`: one file per message, written once and never changed: a first line
//!   `SMARTHOST-SPOOL-1 <n>`, the envelope as it was at acceptance (`n` bytes of JSON, [`Envelope`]),
//!   a CRLF, then the message content as it will be delivered (our `Received:` header, then the
//!   client's data, CRLF line endings). Files of earlier versions have no first line (all content)
//!   and always an `.env` beside them; they are still read.
//! - `queue/<id>.env`: the envelope and the delivery state when it has changed since acceptance
//!   (JSON): recipients each with its own state, attempts, next attempt. Written (temporary file,
//!   fsync, rename) after an attempt that leaves work to do and by queue commands, so a retry
//!   rewrites only this small file. When it exists it wins over the envelope inside `.msg`.
//! - `queue/*.tmp`: files being written; removed at start-up.
//! - `free/<n>.free`: content files of finished messages (at most [`FREE_KEPT`]), moved here by
//!   [`Spool::remove`] to be written over by a later message: the new content from the start, the
//!   file cut to its length, synced, then renamed to `queue/<id>.msg`. Until then such a file
//!   still holds the old message's bytes, under the same permissions as the queue. Taken back at
//!   start-up. Reusing files instead of creating and deleting one per message is what the
//!   file system charges least for (BENCHMARKS.md).
//!
//! Entries that cannot be read are reported by [`Spool::recover`] and moved to Badmail by the caller
//! (`bounce::badmail`), never deleted.
//!
//! A message counts as accepted, and only then gets its `250`, when `<id>.msg.tmp` (or a kept
//! `free/` file) has been written and fsynced, renamed to `<id>.msg`, and the `queue/` directory
//! has been fsynced: one file, one data sync and one rename per message (the envelope used to be a second file with its own
//! sync; creating files is what costs most on ext4, see BENCHMARKS.md). A `.tmp` was never
//! accepted (the writer crashed before the rename) and is removed at start-up. Directory fsyncs of
//! concurrent writers are shared (group commit): each writer waits until a directory fsync that
//! started after its rename has finished.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A new queue id: microseconds since the epoch and a per-process counter, in hex. Ids sort by
/// arrival time and are unique within one spool as long as the clock does not go back by more than
/// the counter's 65,536 ids per microsecond.
pub fn new_queue_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xffff;
    format!("{micros:013X}{n:04X}")
}

/// A queue id is 17 upper-case hex digits; anything else is refused before it reaches a path.
pub fn is_queue_id(id: &str) -> bool {
    id.len() == 17
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

/// The envelope of one message and the state of its delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: String,
    /// Unix seconds when the message was accepted.
    pub received_at: u64,
    /// Envelope sender; empty for the null sender `<>`.
    pub sender: String,
    pub recipients: Vec<Recipient>,
    /// Size of the `.msg` file in bytes.
    pub size: u64,
    pub smtputf8: bool,
    pub eight_bit: bool,
    /// Where the message came from, for logs and queue listings (e.g. `smtp 10.0.0.21 scanner1`).
    pub origin: String,
    /// Delivery attempts made so far.
    #[serde(default)]
    pub attempts: u32,
    /// Unix seconds of the next attempt (0: as soon as possible).
    #[serde(default)]
    pub next_attempt: u64,
    /// Held by an administrator: not delivered until released.
    #[serde(default)]
    pub held: bool,
    /// The one delay notice has been sent.
    #[serde(default)]
    pub delay_notified: bool,
    /// The most recent attempts, oldest first (at most [`HISTORY_KEPT`]).
    #[serde(default)]
    pub history: Vec<AttemptRecord>,
}

/// Attempts kept in an envelope's history.
pub const HISTORY_KEPT: usize = 20;

/// One delivery attempt in a message's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Unix seconds when the attempt ended.
    pub at: u64,
    /// (recipient, outcome) for every recipient tried, e.g. `deferred: ... said "451 4.7.500 ..."`.
    pub results: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    #[serde(flatten)]
    pub state: RecipientState,
}

/// Every recipient is pending, delivered, deferred or failed (DESIGN: per-recipient state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum RecipientState {
    Pending,
    Delivered { reply: String, at: u64 },
    Deferred { reason: String, at: u64 },
    Failed { reason: String, at: u64 },
}

impl RecipientState {
    /// Delivered and failed recipients are done; the others still need an attempt.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            RecipientState::Delivered { .. } | RecipientState::Failed { .. }
        )
    }
}

impl Envelope {
    pub fn is_done(&self) -> bool {
        self.recipients.iter().all(|r| r.state.is_final())
    }
}

/// An entry found in the spool at start-up.
#[derive(Debug)]
pub enum Recovered {
    Message(Envelope),
    /// Could not be read, for this reason. Its files are still in the queue directory
    /// ([`Spool::entry_paths`]); the caller moves them to Badmail.
    Corrupt {
        id: String,
        reason: String,
    },
}

#[derive(Debug)]
pub struct Spool {
    queue_dir: PathBuf,
    dir_sync: GroupSync,
    /// `spool/free/`: files of finished messages kept to be written over (see [`Spool::remove`]).
    free_dir: PathBuf,
    free: Mutex<Vec<PathBuf>>,
}

/// Files of finished messages kept for reuse. Writing a new message over one, instead of
/// creating a file and later deleting it, spares the file system an inode and its blocks to
/// allocate and free per message (ext4: the inode allocator's scan past recently deleted inodes,
/// the directory lock, and the inode write in every `fdatasync`); see BENCHMARKS.md.
const FREE_KEPT: usize = 64;

impl Spool {
    /// Opens (creating if needed) the spool below `data_dir`.
    pub fn open(data_dir: &Path) -> io::Result<Spool> {
        let queue_dir = data_dir.join("spool").join("queue");
        fs::create_dir_all(&queue_dir).map_err(|e| with_path(e, &queue_dir))?;
        let free_dir = data_dir.join("spool").join("free");
        fs::create_dir_all(&free_dir).map_err(|e| with_path(e, &free_dir))?;
        Ok(Spool {
            queue_dir,
            dir_sync: GroupSync::default(),
            free_dir,
            free: Mutex::new(Vec::new()),
        })
    }

    pub fn queue_dir(&self) -> &Path {
        &self.queue_dir
    }

    /// The content and envelope files of an entry, whether or not they exist.
    pub fn entry_paths(&self, id: &str) -> (PathBuf, PathBuf) {
        (self.msg_path(id), self.env_path(id))
    }

    fn msg_path(&self, id: &str) -> PathBuf {
        self.queue_dir.join(format!("{id}.msg"))
    }

    fn env_path(&self, id: &str) -> PathBuf {
        self.queue_dir.join(format!("{id}.env"))
    }

    /// Stores a new message durably: when this returns `Ok`, the message survives a crash.
    /// `parts` are written one after the other as the content (e.g. a trace header, then the data).
    pub fn store_new(&self, envelope: &Envelope, parts: &[&[u8]]) -> io::Result<()> {
        let msg_path = self.msg_path(&envelope.id);
        let json = serde_json::to_vec(envelope).map_err(io::Error::other)?;
        let content: usize = parts.iter().map(|p| p.len()).sum();
        let mut head = Vec::with_capacity(json.len() + 64);
        head.extend_from_slice(HEADER_MAGIC);
        head.extend_from_slice(json.len().to_string().as_bytes());
        head.extend_from_slice(b"\r\n");
        head.extend_from_slice(&json);
        head.extend_from_slice(b"\r\n");
        let total = (head.len() + content) as u64;
        // A file of a finished message, written over from its start (and cut to this length);
        // else a new `<id>.msg.tmp`. Either way it gets its name only once it is durable.
        let (mut f, from, reused) = match self.reuse_free_file() {
            Some((f, path)) => (f, path, true),
            None => {
                let tmp = self.queue_dir.join(format!("{}.msg.tmp", envelope.id));
                match File::create(&tmp) {
                    Ok(f) => (f, tmp, false),
                    Err(e) => {
                        let _ = fs::remove_file(&tmp);
                        return Err(e);
                    }
                }
            }
        };
        let result = (|| {
            if content <= SMALL_WRITE {
                // One write for a small message: fewer system calls on the hot path.
                let mut all = head;
                all.reserve(content);
                for part in parts {
                    all.extend_from_slice(part);
                }
                f.write_all(&all)?;
            } else {
                f.write_all(&head)?;
                for part in parts {
                    f.write_all(part)?;
                }
            }
            // A kept file may be longer than this message (a new one is exactly as long).
            if reused && f.metadata()?.len() != total {
                f.set_len(total)?;
            }
            f.sync_data()?;
            drop(f);
            fs::rename(&from, &msg_path)?;
            self.sync_queue_dir()
        })();
        if result.is_err() {
            // Nothing was acknowledged; leave no half entry behind.
            let _ = fs::remove_file(&from);
            let _ = fs::remove_file(&msg_path);
        }
        result
    }

    /// A kept file of a finished message, opened for writing from its start.
    fn reuse_free_file(&self) -> Option<(File, PathBuf)> {
        loop {
            let path = self.free.lock().expect("spool free list").pop()?;
            match fs::OpenOptions::new().write(true).open(&path) {
                Ok(f) => return Some((f, path)),
                Err(_) => {
                    // Removed behind our back, or not writable: forget it.
                    let _ = fs::remove_file(&path);
                }
            }
        }
    }

    /// Records a changed envelope (delivery state, hold, ...) durably in `<id>.env`.
    pub fn update(&self, envelope: &Envelope) -> io::Result<()> {
        self.write_envelope_file(envelope)?;
        self.sync_queue_dir()
    }

    fn write_envelope_file(&self, envelope: &Envelope) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(envelope).map_err(io::Error::other)?;
        let tmp = self.queue_dir.join(format!("{}.env.tmp", envelope.id));
        let mut f = File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_data()?;
        drop(f);
        fs::rename(&tmp, self.env_path(&envelope.id))
    }

    fn sync_queue_dir(&self) -> io::Result<()> {
        self.dir_sync.sync(|| sync_dir(&self.queue_dir))
    }

    /// The message content, without the envelope stored in front of it.
    pub fn read_content(&self, id: &str) -> io::Result<Vec<u8>> {
        let mut bytes = fs::read(self.msg_path(id))?;
        let offset = match split_stored(&bytes) {
            Ok((_, content)) => bytes.len() - content.len(),
            Err(reason) => return Err(io::Error::new(io::ErrorKind::InvalidData, reason)),
        };
        bytes.drain(..offset);
        Ok(bytes)
    }

    /// The current envelope: `<id>.env` when the state has changed since acceptance, otherwise the
    /// one stored in front of the content.
    pub fn read_envelope(&self, id: &str) -> io::Result<Envelope> {
        match fs::read(self.env_path(id)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let head = read_head(&self.msg_path(id))?;
                head.envelope.ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        "no envelope: neither an .env file nor one stored in the .msg file",
                    )
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Removes a finished message. The content goes first: if the relay stops between the two,
    /// what is left is an envelope without content, which recovery reports (to Badmail), never
    /// an entry that would be delivered a second time. The content file is moved to `spool/free/`
    /// to be written over by a later message while fewer than [`FREE_KEPT`] wait there; otherwise
    /// it is deleted.
    pub fn remove(&self, id: &str) -> io::Result<()> {
        self.remove_entry(id, true)
    }

    /// Removes a message an administrator deleted: like [`Spool::remove`], but its file is deleted
    /// at once, never kept to be written over (its bytes should not linger in `spool/free/`).
    pub fn delete(&self, id: &str) -> io::Result<()> {
        self.remove_entry(id, false)
    }

    fn remove_entry(&self, id: &str, may_keep: bool) -> io::Result<()> {
        let msg = self.msg_path(id);
        let kept = may_keep && self.free.lock().expect("spool free list").len() < FREE_KEPT;
        if kept {
            let free = self.free_dir.join(format!("{}.free", new_queue_id()));
            fs::rename(&msg, &free)?;
            let mut list = self.free.lock().expect("spool free list");
            if list.len() < FREE_KEPT {
                list.push(free);
            } else {
                drop(list);
                fs::remove_file(&free)?;
            }
        } else {
            fs::remove_file(&msg)?;
        }
        match fs::remove_file(self.env_path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Reads the queue directory at start-up: every accepted message, and the entries that cannot
    /// be read. Removes temporary files and content that was never accepted.
    pub fn recover(&self) -> io::Result<Vec<Recovered>> {
        let mut envelopes = Vec::new();
        let mut contents = Vec::new();
        let mut queued_files = HashSet::new();
        for entry in fs::read_dir(&self.queue_dir)? {
            let entry = entry?;
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with(".tmp") {
                fs::remove_file(&path)?;
            } else if let Some(id) = name.strip_suffix(".env") {
                envelopes.push(id.to_string());
            } else if let Some(id) = name.strip_suffix(".msg") {
                contents.push(id.to_string());
                queued_files.insert(file_identity(&entry));
            }
        }
        self.adopt_free_files(&queued_files)?;
        envelopes.sort();
        contents.sort();
        let mut ids: Vec<&String> = envelopes.iter().chain(contents.iter()).collect();
        ids.sort();
        ids.dedup();
        let mut found = Vec::new();
        for id in ids {
            let has_env = envelopes.binary_search(id).is_ok();
            if !has_env {
                // Content of an earlier version whose envelope was never renamed into place: the
                // writer crashed before the message was accepted.
                if matches!(read_head(&self.msg_path(id)), Ok(head) if head.envelope.is_none()) {
                    fs::remove_file(self.msg_path(id))?;
                    continue;
                }
            }
            match self.check_entry(id, has_env) {
                Ok(envelope) => found.push(Recovered::Message(envelope)),
                Err(reason) => found.push(Recovered::Corrupt {
                    id: id.clone(),
                    reason,
                }),
            }
        }
        Ok(found)
    }

    /// Takes the kept files found in `spool/free/` back into the free list (beyond [`FREE_KEPT`]
    /// they are deleted). A file that is also a queued message's (a rename cut short by a crash
    /// on a file system without a journal can leave both names) is left alone: writing over it
    /// or deleting it would damage that message.
    fn adopt_free_files(&self, queued_files: &HashSet<Option<u64>>) -> io::Result<()> {
        let mut list = self.free.lock().expect("spool free list");
        for entry in fs::read_dir(&self.free_dir)? {
            let entry = entry?;
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "free") || list.contains(&path) {
                continue;
            }
            let identity = file_identity(&entry);
            if identity.is_some() && queued_files.contains(&identity) {
                continue;
            }
            if list.len() < FREE_KEPT {
                list.push(path);
            } else {
                fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    fn check_entry(&self, id: &str, has_env: bool) -> Result<Envelope, String> {
        let head = read_head(&self.msg_path(id))
            .map_err(|e| format!("message content missing or unreadable: {e}"))?;
        let envelope = if has_env {
            let bytes = fs::read(self.env_path(id))
                .map_err(|e| format!("envelope file unreadable: {e}"))?;
            serde_json::from_slice::<Envelope>(&bytes)
                .map_err(|e| format!("envelope file unreadable: {e}"))?
        } else {
            head.envelope
                .ok_or_else(|| "no envelope stored with the message".to_string())?
        };
        if envelope.id != id {
            return Err(format!(
                "envelope names id {} but is stored as {id}",
                envelope.id
            ));
        }
        let content = head.file_len - head.header_len;
        if content != envelope.size {
            return Err(format!(
                "message content is {content} bytes, the envelope says {}",
                envelope.size
            ));
        }
        Ok(envelope)
    }
}

/// The first bytes of a `.msg` file of this version.
const HEADER_MAGIC: &[u8] = b"SMARTHOST-SPOOL-1 ";

/// Messages up to this size are written with one system call.
const SMALL_WRITE: usize = 256 * 1024;

/// Splits the bytes of a stored `.msg` file into the envelope stored at acceptance (JSON) and the
/// content. A file of an earlier version (no first line) is all content. Badmail uses this too, so
/// that a spool file moved there keeps only the message.
pub fn split_stored(bytes: &[u8]) -> Result<(Option<&[u8]>, &[u8]), String> {
    let Some(rest) = bytes.strip_prefix(HEADER_MAGIC) else {
        return Ok((None, bytes));
    };
    let line_end = rest
        .iter()
        .take(24)
        .position(|&b| b == b'\r')
        .ok_or("spool header: no length")?;
    let len: usize = std::str::from_utf8(&rest[..line_end])
        .ok()
        .and_then(|n| n.parse().ok())
        .ok_or("spool header: bad length")?;
    let json_start = line_end + 2;
    if rest.get(line_end + 1) != Some(&b'\n')
        || rest.len() < json_start + len + 2
        || &rest[json_start + len..json_start + len + 2] != b"\r\n"
    {
        return Err("spool header: truncated".into());
    }
    Ok((
        Some(&rest[json_start..json_start + len]),
        &rest[json_start + len + 2..],
    ))
}

/// What the start of a `.msg` file says: the stored envelope (none in files of earlier versions),
/// the length of the part before the content, and the file's length.
struct Head {
    envelope: Option<Envelope>,
    header_len: u64,
    file_len: u64,
}

fn read_head(path: &Path) -> io::Result<Head> {
    use std::io::Read;
    let mut f = File::open(path)?;
    let file_len = f.metadata()?.len();
    let mut first = vec![0u8; 64.min(file_len as usize)];
    f.read_exact(&mut first)?;
    if !first.starts_with(HEADER_MAGIC) {
        return Ok(Head {
            envelope: None,
            header_len: 0,
            file_len,
        });
    }
    let invalid = |reason: &str| io::Error::new(io::ErrorKind::InvalidData, reason.to_string());
    let rest = &first[HEADER_MAGIC.len()..];
    let line_end = rest
        .iter()
        .position(|&b| b == b'\r')
        .ok_or_else(|| invalid("spool header: no length"))?;
    let len: u64 = std::str::from_utf8(&rest[..line_end])
        .ok()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| invalid("spool header: bad length"))?;
    let json_start = (HEADER_MAGIC.len() + line_end + 2) as u64;
    let header_len = json_start + len + 2;
    if header_len > file_len || len > 16 * 1024 * 1024 {
        return Err(invalid("spool header: truncated"));
    }
    let mut json = vec![0u8; len as usize + 2];
    f.seek(io::SeekFrom::Start(json_start))?;
    f.read_exact(&mut json)?;
    if !json.ends_with(b"\r\n") {
        return Err(invalid("spool header: truncated"));
    }
    let envelope = serde_json::from_slice(&json[..len as usize])
        .map_err(|e| invalid(&format!("stored envelope unreadable: {e}")))?;
    Ok(Head {
        envelope: Some(envelope),
        header_len,
        file_len,
    })
}

/// The inode number of a directory entry (Unix); `None` where there is none to compare.
fn file_identity(entry: &fs::DirEntry) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirEntryExt;
        Some(entry.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = entry;
        None
    }
}

/// Makes a rename or a new file in `dir` durable (fsync of the directory). Windows cannot open a
/// directory as a file (NTFS journals its metadata): a no-op there.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    if cfg!(unix) {
        File::open(dir)?.sync_all()
    } else {
        Ok(())
    }
}

/// Bytes available to us in the file system that holds `path`.
#[cfg(unix)]
pub fn available_space(path: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Not measured on this platform: reported as plenty, so only real write errors refuse mail.
#[cfg(not(unix))]
pub fn available_space(_path: &Path) -> io::Result<u64> {
    Ok(u64::MAX)
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Group commit: many threads need "an fsync that started after my change"; one fsync serves all
/// who arrived before it began.
#[derive(Debug, Default)]
struct GroupSync {
    state: Mutex<GroupState>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct GroupState {
    /// Tickets handed out; a ticket is covered by any sync that starts after it was taken.
    requested: u64,
    /// Every ticket up to this one is durable.
    synced: u64,
    syncing: bool,
}

impl GroupSync {
    fn sync(&self, fsync: impl Fn() -> io::Result<()>) -> io::Result<()> {
        let mut state = self.state.lock().expect("spool sync lock");
        state.requested += 1;
        let ticket = state.requested;
        loop {
            if state.synced >= ticket {
                return Ok(());
            }
            if state.syncing {
                state = self.done.wait(state).expect("spool sync lock");
                continue;
            }
            state.syncing = true;
            let covers = state.requested;
            drop(state);
            let result = fsync();
            state = self.state.lock().expect("spool sync lock");
            state.syncing = false;
            if result.is_ok() {
                state.synced = state.synced.max(covers);
            }
            self.done.notify_all();
            result?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(id: &str, size: u64) -> Envelope {
        Envelope {
            id: id.to_string(),
            received_at: 1,
            sender: "scanner@contoso.com".into(),
            recipients: vec![
                Recipient {
                    address: "a@example.com".into(),
                    state: RecipientState::Pending,
                },
                Recipient {
                    address: "b@example.com".into(),
                    state: RecipientState::Failed {
                        reason: "550 5.1.1 unknown".into(),
                        at: 2,
                    },
                },
            ],
            size,
            smtputf8: false,
            eight_bit: false,
            origin: "test".into(),
            attempts: 0,
            next_attempt: 0,
            held: false,
            delay_notified: false,
            history: Vec::new(),
        }
    }

    #[test]
    fn queue_ids_are_unique_sortable_and_recognised() {
        let ids: Vec<String> = (0..1000).map(|_| new_queue_id()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
        assert!(ids.iter().all(|id| is_queue_id(id)));
        for bad in ["", "../etc/passwd", "0123456789abcdef0", "0123456789ABCDEF"] {
            assert!(!is_queue_id(bad), "{bad}");
        }
    }

    #[test]
    fn stored_message_survives_reopen_with_its_state() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = new_queue_id();
        let env = envelope(&id, 17);
        spool
            .store_new(&env, &[b"Received: x", b"\r\nbody"])
            .unwrap();
        let mut env2 = env.clone();
        env2.attempts = 3;
        env2.recipients[0].state = RecipientState::Deferred {
            reason: "451 try later".into(),
            at: 5,
        };
        spool.update(&env2).unwrap();

        let reopened = Spool::open(dir.path()).unwrap();
        let found = reopened.recover().unwrap();
        assert_eq!(found.len(), 1);
        match &found[0] {
            Recovered::Message(e) => assert_eq!(e, &env2),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            reopened.read_content(&id).unwrap(),
            b"Received: x\r\nbody".to_vec()
        );
        reopened.remove(&id).unwrap();
        assert!(reopened.recover().unwrap().is_empty());
    }

    #[test]
    fn recovery_reports_unreadable_entries_and_drops_unacknowledged_content() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let good = new_queue_id();
        spool.store_new(&envelope(&good, 4), &[b"body"]).unwrap();
        // Content whose envelope never made it: the writer crashed before the rename.
        let orphan = new_queue_id();
        fs::write(spool.queue_dir().join(format!("{orphan}.msg")), b"x").unwrap();
        fs::write(spool.queue_dir().join(format!("{orphan}.env.tmp")), b"{").unwrap();
        // An envelope that is not JSON, and one whose content is truncated.
        let garbled = new_queue_id();
        fs::write(
            spool.queue_dir().join(format!("{garbled}.env")),
            b"not json",
        )
        .unwrap();
        fs::write(spool.queue_dir().join(format!("{garbled}.msg")), b"x").unwrap();
        let truncated = new_queue_id();
        spool
            .store_new(&envelope(&truncated, 4), &[b"body"])
            .unwrap();
        let stored = fs::read(spool.queue_dir().join(format!("{truncated}.msg"))).unwrap();
        fs::write(
            spool.queue_dir().join(format!("{truncated}.msg")),
            &stored[..stored.len() - 2],
        )
        .unwrap();

        let found = spool.recover().unwrap();
        let mut messages = 0;
        let mut corrupt = Vec::new();
        for entry in found {
            match entry {
                Recovered::Message(e) => {
                    assert_eq!(e.id, good);
                    messages += 1;
                }
                Recovered::Corrupt { id, reason } => corrupt.push((id, reason)),
            }
        }
        assert_eq!(messages, 1);
        assert_eq!(corrupt.len(), 2);
        assert!(
            corrupt
                .iter()
                .any(|(id, r)| id == &garbled && r.contains("unreadable"))
        );
        assert!(
            corrupt
                .iter()
                .any(|(id, r)| id == &truncated && r.contains("2 bytes"))
        );
        let left = names_in(spool.queue_dir());
        // The unreadable entries stay where they are until the caller moves them to Badmail;
        // the orphan content and the temporary file are gone.
        let mut expected = vec![
            format!("{good}.msg"),
            format!("{garbled}.env"),
            format!("{garbled}.msg"),
            format!("{truncated}.msg"),
        ];
        expected.sort();
        assert_eq!(left, expected);
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = new_queue_id();
        // A directory where the envelope's temporary file should go makes the write fail.
        fs::create_dir(spool.queue_dir().join(format!("{id}.msg.tmp"))).unwrap();
        assert!(spool.store_new(&envelope(&id, 4), &[b"body"]).is_err());
        assert!(!spool.queue_dir().join(format!("{id}.msg")).exists());
        assert!(!spool.queue_dir().join(format!("{id}.env")).exists());
    }

    #[test]
    fn one_file_per_accepted_message_holds_envelope_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = new_queue_id();
        let env = envelope(&id, 11);
        spool.store_new(&env, &[b"Received:", b" x"]).unwrap();
        assert_eq!(names_in(spool.queue_dir()), vec![format!("{id}.msg")]);
        assert_eq!(spool.read_content(&id).unwrap(), b"Received: x".to_vec());
        assert_eq!(spool.read_envelope(&id).unwrap(), env);
        match &spool.recover().unwrap()[..] {
            [Recovered::Message(e)] => assert_eq!(e, &env),
            other => panic!("unexpected {other:?}"),
        }
        // A later state goes to .env and wins over the stored one.
        let mut later = env.clone();
        later.attempts = 2;
        spool.update(&later).unwrap();
        assert_eq!(spool.read_envelope(&id).unwrap(), later);
        match &spool.recover().unwrap()[..] {
            [Recovered::Message(e)] => assert_eq!(e, &later),
            other => panic!("unexpected {other:?}"),
        }
        spool.remove(&id).unwrap();
        assert_eq!(fs::read_dir(spool.queue_dir()).unwrap().count(), 0);
    }

    #[test]
    fn entries_of_the_earlier_two_file_layout_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = new_queue_id();
        let env = envelope(&id, 4);
        fs::write(spool.queue_dir().join(format!("{id}.msg")), b"body").unwrap();
        fs::write(
            spool.queue_dir().join(format!("{id}.env")),
            serde_json::to_vec_pretty(&env).unwrap(),
        )
        .unwrap();
        match &spool.recover().unwrap()[..] {
            [Recovered::Message(e)] => assert_eq!(e, &env),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(spool.read_content(&id).unwrap(), b"body".to_vec());
        spool.remove(&id).unwrap();
        assert_eq!(fs::read_dir(spool.queue_dir()).unwrap().count(), 0);
    }

    #[test]
    fn an_envelope_left_without_its_content_is_reported_not_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = new_queue_id();
        spool.store_new(&envelope(&id, 4), &[b"body"]).unwrap();
        spool.update(&envelope(&id, 4)).unwrap();
        fs::remove_file(spool.queue_dir().join(format!("{id}.msg"))).unwrap();
        match &spool.recover().unwrap()[..] {
            [Recovered::Corrupt { id: got, reason }] => {
                assert_eq!(got, &id);
                assert!(reason.contains("content missing"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn split_stored_separates_envelope_and_content_and_refuses_truncated_headers() {
        assert_eq!(split_stored(b"plain").unwrap(), (None, &b"plain"[..]));
        let (env, content) = split_stored(b"SMARTHOST-SPOOL-1 2\r\n{}\r\nbody").unwrap();
        assert_eq!(env, Some(&b"{}"[..]));
        assert_eq!(content, b"body");
        for bad in [
            &b"SMARTHOST-SPOOL-1 "[..],
            b"SMARTHOST-SPOOL-1 x\r\n{}\r\n",
            b"SMARTHOST-SPOOL-1 9\r\n{}\r\n",
            b"SMARTHOST-SPOOL-1 2\r\n{}",
        ] {
            assert!(split_stored(bad).is_err(), "{bad:?}");
        }
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_finished_message_file_is_written_over_by_the_next_one_and_cut_to_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let free_dir = dir.path().join("spool/free");
        let long = new_queue_id();
        let long_body = vec![b'L'; 10_000];
        spool
            .store_new(&envelope(&long, 10_000), &[&long_body])
            .unwrap();
        spool.remove(&long).unwrap();
        assert!(names_in(spool.queue_dir()).is_empty());
        let kept = names_in(&free_dir);
        assert_eq!(kept.len(), 1, "{kept:?}");
        #[cfg(unix)]
        let inode = {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(free_dir.join(&kept[0])).unwrap().ino()
        };

        // A shorter message takes that file: only its own bytes are in it, nothing of the old one.
        let short = new_queue_id();
        let env = envelope(&short, 5);
        spool.store_new(&env, &[b"sh", b"ort"]).unwrap();
        assert!(names_in(&free_dir).is_empty());
        assert_eq!(names_in(spool.queue_dir()), vec![format!("{short}.msg")]);
        let path = spool.queue_dir().join(format!("{short}.msg"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            assert_eq!(
                fs::metadata(&path).unwrap().ino(),
                inode,
                "the file was reused"
            );
        }
        let stored = fs::read(&path).unwrap();
        assert!(!stored.windows(2).any(|w| w == b"LL"), "{stored:?}");
        assert_eq!(spool.read_content(&short).unwrap(), b"short".to_vec());
        assert_eq!(spool.read_envelope(&short).unwrap(), env);
        match &Spool::open(dir.path()).unwrap().recover().unwrap()[..] {
            [Recovered::Message(e)] => assert_eq!(e, &env),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_message_an_administrator_deletes_is_not_kept_for_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = new_queue_id();
        spool.store_new(&envelope(&id, 6), &[b"secret"]).unwrap();
        spool.update(&envelope(&id, 6)).unwrap();
        spool.delete(&id).unwrap();
        assert!(names_in(spool.queue_dir()).is_empty());
        assert!(names_in(&dir.path().join("spool/free")).is_empty());
    }

    #[test]
    fn at_most_free_kept_files_wait_and_recovery_takes_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let free_dir = dir.path().join("spool/free");
        let ids: Vec<String> = (0..FREE_KEPT + 5).map(|_| new_queue_id()).collect();
        for id in &ids {
            spool.store_new(&envelope(id, 4), &[b"body"]).unwrap();
        }
        for id in &ids {
            spool.remove(id).unwrap();
        }
        assert_eq!(names_in(&free_dir).len(), FREE_KEPT);
        assert!(names_in(spool.queue_dir()).is_empty());

        // A new process takes them back and writes over them.
        let again = Spool::open(dir.path()).unwrap();
        assert!(again.recover().unwrap().is_empty());
        let id = new_queue_id();
        again.store_new(&envelope(&id, 4), &[b"next"]).unwrap();
        assert_eq!(names_in(&free_dir).len(), FREE_KEPT - 1);
        assert_eq!(again.read_content(&id).unwrap(), b"next".to_vec());
    }

    #[cfg(unix)]
    #[test]
    fn a_kept_file_that_is_also_a_queued_message_is_never_written_over() {
        // What a rename cut short by a crash can leave on a file system without a journal.
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = new_queue_id();
        let env = envelope(&id, 4);
        spool.store_new(&env, &[b"body"]).unwrap();
        let twin = dir.path().join("spool/free").join("X.free");
        fs::hard_link(spool.queue_dir().join(format!("{id}.msg")), &twin).unwrap();

        let again = Spool::open(dir.path()).unwrap();
        assert_eq!(again.recover().unwrap().len(), 1);
        let other = new_queue_id();
        again.store_new(&envelope(&other, 4), &[b"news"]).unwrap();
        assert_eq!(again.read_content(&id).unwrap(), b"body".to_vec());
        assert_eq!(again.read_envelope(&id).unwrap(), env);
        assert!(twin.exists());
    }

    #[test]
    fn group_sync_covers_every_concurrent_writer() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicUsize;
        let sync = Arc::new(GroupSync::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let sync = sync.clone();
                let calls = calls.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        sync.sync(|| {
                            calls.fetch_add(1, Ordering::SeqCst);
                            Ok(())
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let state = sync.state.lock().unwrap();
        assert_eq!(state.requested, 400);
        assert_eq!(state.synced, 400);
        let n = calls.load(Ordering::SeqCst);
        assert!((1..=400).contains(&n));
    }
}
