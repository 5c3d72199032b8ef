//! The control socket: queue management against a running relay (`smarthost queue ...`,
//! `smarthost badmail ...`).
//!
//! The relay listens on a Unix domain socket, `data_dir/control.sock`, with mode 0600: only the user the
//! relay runs as (and root) may manage the queue. Each connection carries one request and one response,
//! each a single line of JSON ([`Request`], [`Response`]). A request line is at most
//! [`MAX_REQUEST_LINE`] bytes.
//!
//! Start-up: a socket file that nobody answers on is stale (a relay that was killed) and is replaced;
//! one that answers belongs to another relay on the same `data_dir`, and the new relay refuses to start,
//! since two relays on one spool would recover (and delete) each other's files in progress.
//!
//! On platforms without Unix domain sockets the server does nothing and the client says so.

pub mod client;
mod handler;
mod protocol;
pub mod server;

pub use handler::{ControlHandler, Reload};
pub use protocol::{MAX_REQUEST_LINE, Request, Response};

use std::path::{Path, PathBuf};

/// The control socket of the relay whose data directory is `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}
