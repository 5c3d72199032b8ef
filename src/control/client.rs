//! The command line's end of the control socket: one request, one response.

use super::protocol::{Request, Response};
use std::path::Path;

/// Sends `req` to the relay listening on `socket` and returns its response. Fails when no relay answers
/// there, or when its answer cannot be read; an answer that says the request failed is
/// [`Response::Error`], not an `Err`.
pub async fn request(socket: &Path, req: &Request) -> anyhow::Result<Response> {
    #[cfg(unix)]
    {
        unix::request(socket, req).await
    }
    #[cfg(not(unix))]
    {
        let _ = req;
        anyhow::bail!(
            "cannot reach the relay at {}: queue management from the command line is not available on this platform yet",
            socket.display()
        )
    }
}

#[cfg(unix)]
mod unix {
    use super::{Request, Response};
    use anyhow::Context;
    use std::io;
    use std::path::Path;
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixStream;

    /// Generous: a long queue listing, or a bounce that writes its DSN to the spool.
    const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);

    pub(super) async fn request(socket: &Path, req: &Request) -> anyhow::Result<Response> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| unreachable(socket, &e))?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        write
            .write_all(&line)
            .await
            .with_context(|| format!("cannot send the request to {}", socket.display()))?;
        let mut reader = BufReader::new(read);
        let mut answer = Vec::new();
        let n = tokio::time::timeout(RESPONSE_TIMEOUT, reader.read_until(b'\n', &mut answer))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the relay at {} did not answer within {}s",
                    socket.display(),
                    RESPONSE_TIMEOUT.as_secs()
                )
            })?
            .with_context(|| format!("cannot read the answer from {}", socket.display()))?;
        if n == 0 {
            anyhow::bail!(
                "the relay at {} closed the connection without an answer",
                socket.display()
            );
        }
        serde_json::from_slice(&answer).with_context(|| {
            "cannot understand the relay's answer; are `smarthost` and the running relay the same version?"
        })
    }

    fn unreachable(socket: &Path, e: &io::Error) -> anyhow::Error {
        match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => anyhow::anyhow!(
                "cannot reach the relay at {}: is `smarthost serve` running with this data_dir?",
                socket.display()
            ),
            io::ErrorKind::PermissionDenied => anyhow::anyhow!(
                "cannot reach the relay at {}: permission denied; run this as the user smarthost runs as, or as root",
                socket.display()
            ),
            _ => anyhow::anyhow!("cannot reach the relay at {}: {e}", socket.display()),
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_relay_names_the_socket_and_asks_whether_serve_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let err = request(&path, &Request::List).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot reach the relay at {}: is `smarthost serve` running with this data_dir?",
                path.display()
            )
        );
        // A socket file that nobody listens on says the same.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let err = request(&path, &Request::List).await.unwrap_err();
        assert!(err.to_string().contains("is `smarthost serve` running"));
    }
}
