//! The drop transport: each message becomes `<queue id>.eml` in a folder, the zero-configuration default.
//! Like IIS's Drop folder, the file starts with `x-sender:` and one `x-receiver:` line per recipient, so it
//! can be read back as a Pickup file. The file appears whole (temporary name, fsync, rename).

use super::{OutboundMessage, RecipientResult};
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug)]
pub struct DropTransport {
    path: PathBuf,
}

impl DropTransport {
    pub fn new(path: PathBuf) -> Self {
        DropTransport { path }
    }

    pub async fn deliver(&self, msg: &OutboundMessage<'_>) -> Vec<RecipientResult> {
        let mut file = Vec::with_capacity(msg.content.len() + 256);
        file.extend_from_slice(format!("x-sender: {}\r\n", msg.sender).as_bytes());
        for rcpt in msg.recipients {
            file.extend_from_slice(format!("x-receiver: {rcpt}\r\n").as_bytes());
        }
        file.extend_from_slice(msg.content);
        let dir = self.path.clone();
        let name = format!("{}.eml", msg.queue_id);
        let written = tokio::task::spawn_blocking(move || write_durably(&dir, &name, &file)).await;
        let result = match written {
            Ok(Ok(path)) => RecipientResult::Delivered {
                reply: format!("written to {}", path.display()),
            },
            Ok(Err(e)) => RecipientResult::Deferred {
                reason: format!("cannot write to drop folder {}: {e}", self.path.display()),
            },
            Err(e) => RecipientResult::Deferred {
                reason: format!("drop writer failed: {e}"),
            },
        };
        vec![result; msg.recipients.len()]
    }
}

fn write_durably(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    drop(f);
    std::fs::rename(&tmp, &target)?;
    crate::spool::sync_dir(dir)?;
    Ok(target)
}
