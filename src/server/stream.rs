//! The connection under a session: plain TCP until STARTTLS, TLS after it (or from the start).

use super::tls::TlsStream;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub(super) enum SessionStream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
    /// Only while the plain stream is handed to the TLS handshake, and after a failed one.
    Gone,
}

impl SessionStream {
    /// Takes the plain stream out for the handshake; `None` when TLS is already on.
    pub(super) fn take_plain(&mut self) -> Option<TcpStream> {
        match std::mem::replace(self, SessionStream::Gone) {
            SessionStream::Plain(stream) => Some(stream),
            other => {
                *self = other;
                None
            }
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

impl AsyncRead for SessionStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SessionStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            SessionStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            SessionStream::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for SessionStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SessionStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            SessionStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            SessionStream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SessionStream::Plain(s) => Pin::new(s).poll_flush(cx),
            SessionStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            SessionStream::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SessionStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            SessionStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            SessionStream::Gone => Poll::Ready(Ok(())),
        }
    }
}
