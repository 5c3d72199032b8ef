//! The relay's end of the control socket.
//!
//! [`bind`] runs early in start-up (before the spool is recovered), so that a second relay on the same
//! `data_dir` stops before it touches the spool; [`serve`] then answers requests until shutdown, one
//! task per connection, and removes the socket file when it stops.
//!
//! The socket is created under a temporary name, made 0600 and only then linked to its real name, so
//! no other user can connect through the real name in between. Every connection is also checked with
//! the peer's credentials: only the relay's own user and root are served.

use super::handler::ControlHandler;
use super::protocol::{Request, Response};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;

/// What answers requests: the [`ControlHandler`], or a stand-in in tests.
pub(crate) trait Handle: Send + Sync + 'static {
    fn handle(&self, request: Request) -> impl Future<Output = Response> + Send;
}

impl Handle for ControlHandler {
    fn handle(&self, request: Request) -> impl Future<Output = Response> + Send {
        ControlHandler::handle(self, request)
    }
}

/// A bound control socket, not yet answering.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    #[cfg(unix)]
    unix: unix::Bound,
}

impl ControlSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates the control socket at `path` (see [`super::socket_path`]). Fails when another relay answers
/// on it ("another smarthost is already running with this data_dir"); replaces a stale socket file.
pub async fn bind(path: &Path) -> io::Result<ControlSocket> {
    #[cfg(unix)]
    {
        let unix = unix::bind(path).await?;
        Ok(ControlSocket {
            path: path.to_path_buf(),
            unix,
        })
    }
    #[cfg(not(unix))]
    {
        Ok(ControlSocket {
            path: path.to_path_buf(),
        })
    }
}

/// Answers control requests until `shutdown` turns true; then waits briefly for requests in progress
/// and removes the socket file.
pub async fn serve(
    socket: ControlSocket,
    handler: Arc<ControlHandler>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    serve_with(socket, handler, shutdown).await
}

pub(crate) async fn serve_with<H: Handle>(
    socket: ControlSocket,
    handler: Arc<H>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    #[cfg(unix)]
    {
        unix::serve(socket.unix, handler, shutdown).await;
        Ok(())
    }
    #[cfg(not(unix))]
    {
        let _ = (socket, handler);
        tracing::warn!(
            "queue management commands (`smarthost queue ...`) are not available on this platform yet"
        );
        let mut shutdown = shutdown;
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(unix)]
mod unix {
    use super::Handle;
    use crate::control::protocol::{MAX_REQUEST_LINE, Request, Response};
    use std::io;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{UnixListener, UnixStream};
    use tokio::sync::watch;
    use tokio::task::JoinSet;

    /// A client has this long to send its request line, and the relay as long to write the response.
    const IO_TIMEOUT: Duration = Duration::from_secs(10);
    /// Connections answered at the same time; more wait in the listen backlog.
    const MAX_CONNECTIONS: usize = 32;
    /// At shutdown, requests in progress get this long to finish.
    const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

    /// The listener; dropping it removes the socket file (if it is still ours), also when start-up
    /// fails after the bind.
    #[derive(Debug)]
    pub(super) struct Bound {
        listener: UnixListener,
        path: PathBuf,
        /// The relay's user: its peers may manage the queue (and root).
        owner_uid: u32,
        /// (device, inode) of the socket file, to remove it at shutdown only if it is still ours.
        identity: (u64, u64),
    }

    pub(super) async fn bind(path: &Path) -> io::Result<Bound> {
        clear_stale(path).await?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "control.sock".into());
        let temp = path.with_file_name(format!(".{name}.{}", std::process::id()));
        let _ = std::fs::remove_file(&temp);
        let listener = UnixListener::bind(&temp).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot create the control socket {}: {e}{}",
                    temp.display(),
                    if e.kind() == io::ErrorKind::InvalidInput {
                        " (a socket path must be shorter than about 100 bytes: use a shorter data_dir)"
                    } else {
                        ""
                    }
                ),
            )
        })?;
        let ready = (|| {
            std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))?;
            let meta = std::fs::metadata(&temp)?;
            // A hard link creates the real name only if it does not exist: two relays starting at
            // the same moment cannot both take it.
            match std::fs::hard_link(&temp, path) {
                Ok(()) => std::fs::remove_file(&temp)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(already_running(path));
                }
                // A file system without hard links: the rename is as good, minus that race.
                Err(_) => std::fs::rename(&temp, path)?,
            }
            Ok((meta.uid(), (meta.dev(), meta.ino())))
        })();
        match ready {
            Ok((owner_uid, identity)) => Ok(Bound {
                listener,
                path: path.to_path_buf(),
                owner_uid,
                identity,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                Err(e)
            }
        }
    }

    impl Drop for Bound {
        fn drop(&mut self) {
            if let Ok(meta) = std::fs::symlink_metadata(&self.path)
                && (meta.dev(), meta.ino()) == self.identity
            {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }

    fn already_running(path: &Path) -> io::Error {
        io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "another smarthost is already running with this data_dir (its control socket {} answers)",
                path.display()
            ),
        )
    }

    /// Removes a socket file left by a relay that is gone; fails if a relay answers on it.
    async fn clear_stale(path: &Path) -> io::Result<()> {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot check the control socket {}: {e}", path.display()),
                ));
            }
        };
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; the relay needs this name for its control socket",
                    path.display()
                ),
            ));
        }
        match tokio::time::timeout(Duration::from_secs(2), UnixStream::connect(path)).await {
            // Connected, or a listener too busy to accept: someone is there.
            Ok(Ok(_)) | Err(_) => Err(already_running(path)),
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "removing stale control socket");
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                }
            }
            Ok(Err(e)) => Err(io::Error::new(
                e.kind(),
                format!("cannot check the control socket {}: {e}", path.display()),
            )),
        }
    }

    pub(super) async fn serve<H: Handle>(
        bound: Bound,
        handler: Arc<H>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        tracing::debug!(path = %bound.path.display(), "control socket ready");
        let mut tasks = JoinSet::new();
        let mut failures = 0u32;
        loop {
            if *shutdown.borrow() {
                break;
            }
            if tasks.len() >= MAX_CONNECTIONS {
                tokio::select! {
                    _ = tasks.join_next() => {}
                    changed = shutdown.changed() => if changed.is_err() { break },
                }
                continue;
            }
            tokio::select! {
                accepted = bound.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        failures = 0;
                        tasks.spawn(connection(stream, handler.clone(), bound.owner_uid));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        failures = (failures + 1).min(6);
                        tracing::warn!(error = %e, "control socket: accept failed");
                        tokio::time::sleep(Duration::from_millis(10 << failures)).await;
                    }
                },
                changed = shutdown.changed() => if changed.is_err() { break },
            }
            while tasks.try_join_next().is_some() {}
        }
        drop(bound);
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
    }

    /// One connection: one request line, one response line.
    async fn connection<H: Handle>(stream: UnixStream, handler: Arc<H>, owner_uid: u32) {
        let uid = stream.peer_cred().ok().map(|cred| cred.uid());
        let (read, mut write) = stream.into_split();
        let response = if !uid.is_some_and(|uid| uid == owner_uid || uid == 0) {
            tracing::warn!(?uid, "control socket: refused a client of another user");
            Response::error(
                "permission denied: only the user the relay runs as, and root, may manage the queue",
            )
        } else {
            match read_request(BufReader::new(read)).await {
                Ok(Some(request)) => {
                    // Changes to the queue are on the record, with who asked.
                    if !matches!(
                        request,
                        Request::List
                            | Request::Show { .. }
                            | Request::BadmailList
                            | Request::BadmailShow { .. }
                    ) {
                        tracing::info!(?uid, ?request, "control request");
                    }
                    handler.handle(request).await
                }
                // Connected and left without a word (e.g. another relay checking that we are here).
                Ok(None) => return,
                Err(message) => Response::error(message),
            }
        };
        let mut line = match serde_json::to_vec(&response) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "control socket: cannot encode the response");
                return;
            }
        };
        line.push(b'\n');
        let written = tokio::time::timeout(IO_TIMEOUT, async {
            write.write_all(&line).await?;
            write.shutdown().await
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::debug!("control socket: client went away before the response was written");
        }
    }

    async fn read_request<R: tokio::io::AsyncRead + Unpin>(
        reader: BufReader<R>,
    ) -> Result<Option<Request>, String> {
        let mut limited = reader.take(MAX_REQUEST_LINE as u64 + 1);
        let mut line = Vec::new();
        match tokio::time::timeout(IO_TIMEOUT, limited.read_until(b'\n', &mut line)).await {
            Err(_) => return Err(format!("no request within {}s", IO_TIMEOUT.as_secs())),
            Ok(Err(e)) => return Err(format!("cannot read the request: {e}")),
            Ok(Ok(0)) => return Ok(None),
            Ok(Ok(_)) => {}
        }
        if line.len() > MAX_REQUEST_LINE {
            return Err(format!(
                "request longer than {} KiB",
                MAX_REQUEST_LINE / 1024
            ));
        }
        serde_json::from_slice(&line).map(Some).map_err(|e| {
            format!("cannot understand the request ({e}); are `smarthost` and the relay the same version?")
        })
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::control::{MAX_REQUEST_LINE, client};
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    /// Answers `list` with an empty queue and anything else with an error naming the request.
    struct Echo;

    impl Handle for Echo {
        async fn handle(&self, request: Request) -> Response {
            match request {
                Request::List => Response::List(Vec::new()),
                other => Response::error(format!("{other:?}")),
            }
        }
    }

    async fn start(
        dir: &Path,
    ) -> (
        PathBuf,
        watch::Sender<bool>,
        tokio::task::JoinHandle<io::Result<()>>,
    ) {
        let path = dir.join("control.sock");
        let socket = bind(&path).await.expect("bind");
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(serve_with(socket, Arc::new(Echo), rx));
        (path, tx, task)
    }

    async fn raw(path: &Path, bytes: &[u8]) -> String {
        let mut stream = UnixStream::connect(path).await.unwrap();
        // The server may answer (and close) before reading all of an oversized request.
        let _ = stream.write_all(bytes).await;
        let mut out = String::new();
        let _ = stream.read_to_string(&mut out).await;
        out
    }

    #[tokio::test]
    async fn socket_is_private_answers_one_request_and_is_removed_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let (path, tx, task) = start(dir.path()).await;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["control.sock"], "temporary name left behind");

        let response = client::request(&path, &Request::List).await.unwrap();
        assert!(matches!(response, Response::List(v) if v.is_empty()));
        let response = client::request(&path, &Request::Show { id: "X".into() })
            .await
            .unwrap();
        assert!(matches!(response, Response::Error { message } if message.contains("Show")));

        tx.send(true).unwrap();
        task.await.unwrap().unwrap();
        assert!(!path.exists(), "socket file left after shutdown");
    }

    #[tokio::test]
    async fn oversized_and_garbled_requests_get_an_error_line() {
        let dir = tempfile::tempdir().unwrap();
        let (path, tx, task) = start(dir.path()).await;
        let huge = vec![b'x'; MAX_REQUEST_LINE + 10];
        let reply = raw(&path, &huge).await;
        assert!(reply.contains("longer than 64 KiB"), "{reply}");
        let reply = raw(&path, b"{\"command\":\"flush\"}\n").await;
        assert!(reply.contains("cannot understand the request"), "{reply}");
        assert!(reply.ends_with('\n'));
        tx.send(true).unwrap();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_second_relay_on_the_same_socket_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let (path, tx, task) = start(dir.path()).await;
        let err = bind(&path).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("another smarthost is already running with this data_dir"),
            "{err}"
        );
        // The first one still answers.
        assert!(matches!(
            client::request(&path, &Request::List).await.unwrap(),
            Response::List(_)
        ));
        tx.send(true).unwrap();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_stale_socket_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let (path, tx, task) = start(dir.path()).await;
        assert!(matches!(
            client::request(&path, &Request::List).await.unwrap(),
            Response::List(_)
        ));
        tx.send(true).unwrap();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_socket_bound_but_never_served_is_removed_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let socket = bind(&path).await.unwrap();
        assert!(path.exists());
        drop(socket);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_regular_file_in_the_way_is_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        std::fs::write(&path, "mine").unwrap();
        let err = bind(&path).await.unwrap_err();
        assert!(err.to_string().contains("is not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "mine");
    }
}
