//! The Pickup folder (IIS `mailroot\Pickup`): a file dropped into `data_dir/pickup` is a message
//! to send. It is read by [`parse_pickup`] (envelope from `x-sender:`/`x-receiver:` lines or from
//! `From:`/`To:`/`Cc:`/`Bcc:`; see [`parse`] for the rules) and handed to [`Ingest::submit`], the
//! path SMTP uses, with the origin `pickup`.
//!
//! Files being written. Names that begin with `.` or end in `.tmp` (any case) are never read:
//! write under such a name and rename when done (what IIS's own writers and our drop transport
//! do). Any other regular file is read only once its size and modification time have stayed the
//! same for `settle` (2 s by default), and again checked unchanged after reading; a writer that
//! pauses longer than that in the middle of a file can still be read half-way, which is why the
//! rename is the safe way. Subdirectories, symbolic links and other special files are ignored.
//!
//! Invariants:
//! - A file is removed only after it is durable elsewhere: in the spool (`submit` returned `Ok`) or
//!   in Badmail ([`Badmail::store`] returned `Ok`). Before removing, the watcher checks that the
//!   name still refers to the file it read (same inode, size and modification time); a file
//!   replaced meanwhile is left to be read as a new one.
//! - A file that cannot be used (not a message, no sender, no recipients, a bad address, larger
//!   than `max_size`) goes to Badmail as `pickup-<file name>` with a reason that names the file.
//!   Badmail holds the content as it would have been queued (CRLF, without envelope lines and
//!   `Bcc:`, whose addresses are in the record) when the file could be read as a message, and the
//!   original bytes otherwise (then no recipients are recorded, so it cannot be resubmitted).
//! - When the spool or Badmail cannot take a file (disk full), it stays and is tried again after
//!   `retry`. A file queued or badmailed whose removal fails is left alone while unchanged (an
//!   error is logged once): it would be sent a second time after a restart, never lost.
//! - A file larger than both `max_size` and 256 MiB is not read at all (it would have to be copied
//!   into Badmail through memory): it stays where it is and an error is logged once.
//! - Files are handled oldest first (modification time, then name), one at a time. Errors are
//!   logged and never stop the watcher; it stops when the shutdown signal turns `true`, never in
//!   the middle of a file.
//! - `Date:` and `Message-ID:` are added when the file has none (as a submission agent does).

mod address;
mod parse;

pub use address::parse_address_list;
pub use parse::{PickupMessage, Rejected, parse_pickup};

use crate::bounce::badmail::{Badmail, BadmailRecipient, BadmailRecord};
use crate::ingest::{Ingest, Origin, Submission};
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::time::Instant;

/// Files larger than this (and than `max_size`) are not read: see the module documentation.
const READ_MAX: u64 = 256 * 1024 * 1024;

/// Where and how to watch.
#[derive(Debug, Clone)]
pub struct PickupConfig {
    /// The folder; `data_dir/pickup` in the relay.
    pub dir: PathBuf,
    /// How often the folder is listed.
    pub poll: Duration,
    /// How long a file's size and modification time must stay the same before it is read.
    pub settle: Duration,
    /// How long a file waits after the spool or Badmail could not take it.
    pub retry: Duration,
    /// Largest message (bytes, as it would be queued); larger files go to Badmail.
    pub max_size: u64,
    /// For the `Message-ID:` added to files without one.
    pub hostname: String,
}

impl PickupConfig {
    pub const DEFAULT_POLL: Duration = Duration::from_secs(1);
    pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);
    pub const DEFAULT_RETRY: Duration = Duration::from_secs(30);

    /// `data_dir/pickup` with the default durations.
    pub fn new(data_dir: &Path, hostname: &str, max_size: u64) -> PickupConfig {
        PickupConfig {
            dir: data_dir.join("pickup"),
            poll: Self::DEFAULT_POLL,
            settle: Self::DEFAULT_SETTLE,
            retry: Self::DEFAULT_RETRY,
            max_size,
            hostname: hostname.to_string(),
        }
    }

    /// Creates the folder (the relay does this at start, so that a bad path stops it early).
    pub fn create_dir(&self) -> io::Result<()> {
        fs::create_dir_all(&self.dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot create the Pickup folder {}: {e}",
                    self.dir.display()
                ),
            )
        })
    }
}

/// Watches the folder until `shutdown` turns `true` (or its sender is gone).
pub async fn run(
    config: PickupConfig,
    ingest: Ingest,
    badmail: Arc<Badmail>,
    mut shutdown: watch::Receiver<bool>,
) {
    tracing::info!(dir = %config.dir.display(), "watching the Pickup folder");
    let poll = config.poll;
    let mut watcher = Watcher {
        config,
        ingest,
        badmail,
        seen: HashMap::new(),
        dir_failing: false,
    };
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        watcher.poll(&shutdown).await;
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    tracing::debug!("Pickup folder watcher stopped");
}

/// What identifies one version of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    size: u64,
    modified: Option<SystemTime>,
    /// (device, inode): a file renamed over the old name is another file.
    #[cfg(unix)]
    inode: (u64, u64),
}

fn identity(meta: &fs::Metadata) -> Identity {
    #[cfg(unix)]
    use std::os::unix::fs::MetadataExt;
    Identity {
        size: meta.len(),
        modified: meta.modified().ok(),
        #[cfg(unix)]
        inode: (meta.dev(), meta.ino()),
    }
}

/// A regular file found in the folder.
#[derive(Debug, Clone)]
struct Found {
    name: OsString,
    identity: Identity,
}

/// What the watcher remembers of a file between polls.
#[derive(Debug)]
struct Seen {
    identity: Identity,
    /// When this version was first seen.
    since: Instant,
    /// Not before then (after the spool or Badmail could not take it).
    not_before: Option<Instant>,
    /// Left alone while unchanged (handled but not removable, or too large to read).
    stuck: bool,
}

struct Watcher {
    config: PickupConfig,
    ingest: Ingest,
    badmail: Arc<Badmail>,
    seen: HashMap<OsString, Seen>,
    /// The folder could not be listed at the last poll (logged once until it can again).
    dir_failing: bool,
}

impl Watcher {
    /// One look at the folder: handles every file that has settled.
    async fn poll(&mut self, shutdown: &watch::Receiver<bool>) {
        let dir = self.config.dir.clone();
        let found = match blocking(move || scan(&dir)).await {
            Ok(found) => {
                self.dir_failing = false;
                found
            }
            Err(e) => {
                if !self.dir_failing {
                    tracing::error!(dir = %self.config.dir.display(), error = %e, "cannot list the Pickup folder; trying again");
                    self.dir_failing = true;
                }
                let _ = self.config.create_dir();
                return;
            }
        };
        let now = Instant::now();
        let present: HashSet<&OsString> = found.iter().map(|f| &f.name).collect();
        self.seen.retain(|name, _| present.contains(name));
        let mut ready = Vec::new();
        for file in found {
            let seen = self.seen.entry(file.name.clone()).or_insert_with(|| Seen {
                identity: file.identity.clone(),
                since: now,
                not_before: None,
                stuck: false,
            });
            if seen.identity != file.identity {
                *seen = Seen {
                    identity: file.identity.clone(),
                    since: now,
                    not_before: None,
                    stuck: false,
                };
                continue;
            }
            let waiting = seen.stuck
                || seen.not_before.is_some_and(|at| now < at)
                || now.duration_since(seen.since) < self.config.settle;
            if !waiting {
                ready.push(file);
            }
        }
        ready.sort_by(|a, b| (a.identity.modified, &a.name).cmp(&(b.identity.modified, &b.name)));
        for file in ready {
            if *shutdown.borrow() {
                return;
            }
            self.handle(file).await;
        }
    }

    /// Queues one settled file, or moves it to Badmail.
    async fn handle(&mut self, file: Found) {
        let shown = shown_name(&file.name);
        let path = self.config.dir.join(&file.name);
        if file.identity.size > READ_MAX.max(self.config.max_size) {
            tracing::error!(
                file = %shown,
                size = file.identity.size,
                max = self.config.max_size,
                "Pickup file is larger than the message size limit and too large to copy into \
                 Badmail; it is left in the Pickup folder, move it away"
            );
            self.set(&file.name, |seen| seen.stuck = true);
            return;
        }
        let read_path = path.clone();
        let max_size = self.config.max_size;
        // Reading and parsing both take time on a large file: off the runtime's threads.
        let read = blocking(move || {
            let (bytes, identity) = read_file(&read_path)?;
            let checked = check(&bytes, max_size);
            Ok((bytes, identity, checked))
        });
        let (bytes, read_identity, checked) = match read.await {
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.seen.remove(&file.name);
                return;
            }
            Err(e) => {
                tracing::warn!(file = %shown, error = %e, retry = ?self.config.retry, "cannot read Pickup file; trying again later");
                self.defer(&file.name);
                return;
            }
        };
        if read_identity != file.identity || bytes.len() as u64 != file.identity.size {
            // Still being written: wait until it settles again.
            self.seen.remove(&file.name);
            return;
        }

        match checked {
            Ok(mut message) => {
                message.add_missing_headers(&rfc2822_now(), &self.message_id());
                let submission = Submission {
                    sender: message.sender.clone(),
                    recipients: message.recipients.clone(),
                    smtputf8: message.smtputf8(),
                    origin: Origin {
                        source: "pickup",
                        client_ip: None,
                        helo: None,
                        protocol: "local",
                    },
                };
                match self.ingest.submit(submission, message.content).await {
                    Ok(queue_id) => {
                        tracing::info!(file = %shown, queue_id = %queue_id, from = %message.sender, recipients = message.recipients.len(), "Pickup file queued");
                        self.remove(&file, path, &format!("queued as {queue_id}"))
                            .await;
                    }
                    Err(e) => {
                        tracing::warn!(file = %shown, error = %e, retry = ?self.config.retry, "cannot queue Pickup file now; it stays in the Pickup folder and is tried again later");
                        self.defer(&file.name);
                    }
                }
            }
            Err(rejected) => {
                let reason = format!("Pickup file `{shown}`: {}", rejected.reason);
                let record = BadmailRecord {
                    name: String::new(),
                    id: badmail_id(&file.name),
                    sender: rejected.sender.clone().unwrap_or_default(),
                    recipients: rejected
                        .recipients
                        .iter()
                        .map(|address| BadmailRecipient {
                            address: address.clone(),
                            state: "pending".to_string(),
                            detail: Some("not queued: the Pickup file was refused".to_string()),
                        })
                        .collect(),
                    reason: reason.clone(),
                    attempts: 0,
                    received_at: 0,
                    badmailed_at: crate::spool::unix_now(),
                    resubmitted: Vec::new(),
                };
                let content = rejected.content.unwrap_or(bytes);
                let badmail = self.badmail.clone();
                match blocking(move || badmail.store(&record, &content)).await {
                    Ok(name) => {
                        tracing::warn!(file = %shown, badmail = %name, %reason, "Pickup file moved to Badmail");
                        self.remove(&file, path, &format!("moved to Badmail as {name}"))
                            .await;
                    }
                    Err(e) => {
                        tracing::error!(file = %shown, error = %e, %reason, retry = ?self.config.retry, "cannot move Pickup file to Badmail; it stays in the Pickup folder and is tried again later");
                        self.defer(&file.name);
                    }
                }
            }
        }
    }

    /// Removes a file that is now durable elsewhere, if the name still refers to what was read.
    async fn remove(&mut self, file: &Found, path: PathBuf, done: &str) {
        let shown = shown_name(&file.name);
        let expected = file.identity.clone();
        let dir = self.config.dir.clone();
        let removed = blocking(move || {
            if identity(&fs::symlink_metadata(&path)?) != expected {
                return Ok(false);
            }
            fs::remove_file(&path)?;
            // Best effort: a removal lost in a crash means the file is sent again, not lost.
            if let Err(e) = crate::spool::sync_dir(&dir) {
                tracing::debug!(error = %e, "cannot sync the Pickup folder");
            }
            Ok(true)
        })
        .await;
        match removed {
            Ok(true) => {
                self.seen.remove(&file.name);
            }
            Ok(false) => {
                tracing::warn!(file = %shown, "Pickup file {done}, but the file changed after it was read; the new version will be read as a new file");
                self.seen.remove(&file.name);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.seen.remove(&file.name);
            }
            Err(e) => {
                tracing::error!(file = %shown, error = %e, "Pickup file {done}, but it cannot be removed; it is left alone until it changes, remove it by hand or it is sent again after a restart");
                self.set(&file.name, |seen| seen.stuck = true);
            }
        }
    }

    fn defer(&mut self, name: &OsStr) {
        let at = Instant::now() + self.config.retry;
        self.set(name, |seen| seen.not_before = Some(at));
    }

    fn set(&mut self, name: &OsStr, change: impl FnOnce(&mut Seen)) {
        if let Some(seen) = self.seen.get_mut(name) {
            change(seen);
        }
    }

    fn message_id(&self) -> String {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let host = if self.config.hostname.is_empty() {
            "localhost"
        } else {
            &self.config.hostname
        };
        format!("<{millis}.{:08x}.pickup@{host}>", rand::random::<u32>())
    }
}

/// The message, or why not (the size limit applies to the content as it would be queued).
fn check(bytes: &[u8], max_size: u64) -> Result<PickupMessage, Rejected> {
    let message = parse_pickup(bytes)?;
    let size = message.content.len() as u64;
    if size > max_size {
        return Err(Rejected {
            reason: format!(
                "the message is larger than the size limit ({size} bytes; the limit, \
                 limits.max_message_size, is {max_size} bytes)"
            ),
            sender: Some(message.sender),
            recipients: message.recipients,
            content: Some(message.content),
        });
    }
    Ok(message)
}

/// The regular files of the folder that may be messages.
fn scan(dir: &Path) -> io::Result<Vec<Found>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let Ok(entry) = entry else {
            continue;
        };
        let name = entry.file_name();
        if ignored(&name) {
            continue;
        }
        // Not followed: a symbolic link is not a file dropped here.
        match entry.metadata() {
            Ok(meta) if meta.file_type().is_file() => found.push(Found {
                name,
                identity: identity(&meta),
            }),
            _ => {}
        }
    }
    Ok(found)
}

/// Names that are being written (by convention) and are never read.
fn ignored(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with('.') || name.to_ascii_lowercase().ends_with(".tmp")
}

/// The whole file and what it was when read.
fn read_file(path: &Path) -> io::Result<(Vec<u8>, Identity)> {
    let mut file = fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let identity = identity(&file.metadata()?);
    Ok((bytes, identity))
}

/// The file name for logs and reasons: lossy UTF-8, control characters as `?`.
fn shown_name(name: &OsStr) -> String {
    name.to_string_lossy()
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// `pickup-<name>` in the characters Badmail names are made of (letters, digits, `-`).
fn badmail_id(name: &OsStr) -> String {
    let name: String = name
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(60)
        .collect();
    format!("pickup-{name}")
}

fn rfc2822_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_being_written_by_convention_are_ignored() {
        for (name, skip) in [
            ("scan.eml", false),
            ("noextension", false),
            ("tmp", false),
            ("report.tmp.eml", false),
            (".scan.eml", true),
            (".scan.eml.tmp", true),
            ("scan.tmp", true),
            ("SCAN.TMP", true),
            ("scan.Tmp", true),
        ] {
            assert_eq!(ignored(OsStr::new(name)), skip, "{name}");
        }
    }

    #[test]
    fn badmail_ids_use_only_letters_digits_and_dashes() {
        assert_eq!(badmail_id(OsStr::new("scan.eml")), "pickup-scan-eml");
        assert_eq!(
            badmail_id(OsStr::new("Rechnung März 2025.txt")),
            "pickup-Rechnung-M-rz-2025-txt"
        );
        assert_eq!(badmail_id(&OsString::from("x".repeat(100))).len(), 67);
    }

    #[test]
    fn the_size_limit_applies_to_the_content_as_it_would_be_queued() {
        // Envelope lines do not count; CRLF line ends do.
        let file = b"x-sender: a@x.com\nx-receiver: r@y.com\nSubject: s\n\n0123456789012345678\n";
        let queued = parse_pickup(file).unwrap().content.len() as u64;
        assert!(check(file, queued).is_ok());
        let rejected = check(file, queued - 1).unwrap_err();
        assert_eq!(
            rejected.reason,
            format!(
                "the message is larger than the size limit ({queued} bytes; the limit, \
                 limits.max_message_size, is {} bytes)",
                queued - 1
            )
        );
        assert_eq!(rejected.sender.as_deref(), Some("a@x.com"));
        assert_eq!(rejected.recipients, ["r@y.com"]);
        assert!(rejected.content.is_some());
    }

    #[test]
    fn scan_lists_regular_files_only() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.eml"), "x").unwrap();
        fs::write(dir.path().join("b"), "xy").unwrap();
        fs::write(dir.path().join("c.tmp"), "x").unwrap();
        fs::write(dir.path().join(".d"), "x").unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/e.eml"), "x").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.path().join("a.eml"), dir.path().join("link.eml")).unwrap();
        let mut names: Vec<_> = scan(dir.path())
            .unwrap()
            .into_iter()
            .map(|f| (f.name.into_string().unwrap(), f.identity.size))
            .collect();
        names.sort();
        assert_eq!(names, [("a.eml".to_string(), 1), ("b".to_string(), 2)]);
    }
}
