//! The client's byte stream to an upstream: plain TCP or TLS, with reply reading and timed writes.
//! Reply lines may be long (XOAUTH2 challenges, Exchange diagnostics): they are capped at
//! [`MAX_REPLY_LINE`], far above anything a server sends, only to bound memory.

use crate::logs::LogSink;
use crate::smtp::Reply;
use crate::smtp::reply::{ReplyParseError, ReplyParser};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub(crate) const MAX_REPLY_LINE: usize = 64 * 1024;

/// Content is written in pieces of this size, each under its own timeout: a large message on a slow
/// link takes longer than one command timeout, but no piece should.
const WRITE_CHUNK: usize = 64 * 1024;

pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why reading or writing failed. The caller adds who and when.
#[derive(Debug)]
pub(crate) enum WireError {
    Closed,
    Io(io::Error),
    Timeout(Duration),
    Malformed(ReplyParseError),
    LineTooLong,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Closed => f.write_str("connection closed by the upstream"),
            WireError::Io(e) => write!(f, "{e}"),
            WireError::Timeout(d) => {
                write!(f, "no answer within {}", humantime::format_duration(*d))
            }
            WireError::Malformed(e) => write!(f, "{e}"),
            WireError::LineTooLong => write!(f, "reply line longer than {MAX_REPLY_LINE} bytes"),
        }
    }
}

/// A stream plus the bytes read from it but not yet consumed.
pub(crate) struct Wire {
    stream: Stream,
    buf: Vec<u8>,
    /// How far `buf` has been searched for a line end.
    scanned: usize,
    timeout: Duration,
    log: Option<WireLog>,
}

/// The W3C log of one connection: the upstream's address and when the last command went out.
struct WireLog {
    sink: LogSink,
    upstream: SocketAddr,
    since: Instant,
}

impl Wire {
    pub(crate) fn new(stream: Stream, timeout: Duration) -> Self {
        Wire {
            stream,
            buf: Vec::new(),
            scanned: 0,
            timeout,
            log: None,
        }
    }

    /// Logs commands and replies to `sink` (when enabled) as those of `upstream`.
    pub(crate) fn with_log(mut self, sink: &LogSink, upstream: SocketAddr) -> Self {
        if sink.is_enabled() {
            self.log = Some(WireLog {
                sink: sink.clone(),
                upstream,
                since: Instant::now(),
            });
        }
        self
    }

    /// Logs a command line (`OutboundConnectionCommand`). Callers pass what may be logged: AUTH
    /// with its mechanism only, SASL responses never.
    pub(crate) fn log_command(&mut self, line: &str) {
        if let Some(log) = self.log.as_mut() {
            let (verb, argument) = line.split_once(' ').unwrap_or((line, ""));
            log.sink.outbound_command(log.upstream, verb, argument);
            log.since = Instant::now();
        }
    }

    /// Logs a reply (`OutboundConnectionResponse`); `code_only` for replies in an AUTH exchange,
    /// which may carry challenges or echo what was sent.
    pub(crate) fn log_reply(&self, reply: &Reply, code_only: bool) {
        if let Some(log) = self.log.as_ref() {
            let text = if code_only {
                reply.code.to_string()
            } else {
                reply.one_line()
            };
            let bytes = reply.to_wire().len();
            log.sink
                .outbound_response(log.upstream, &text, bytes, log.since.elapsed());
        }
    }

    pub(crate) fn stream(&self) -> &Stream {
        &self.stream
    }

    /// Gives the TCP stream back for a TLS handshake after `220` to STARTTLS. Bytes already received
    /// beyond that reply would have been sent before TLS and read as if protected by it (the STARTTLS
    /// injection attack), so they are an error, not something to carry over.
    pub(crate) fn into_tcp_for_tls(self) -> Result<TcpStream, &'static str> {
        if !self.buf.is_empty() {
            return Err("the upstream sent data after its reply to STARTTLS");
        }
        match self.stream {
            Stream::Plain(tcp) => Ok(tcp),
            Stream::Tls(_) => Err("TLS is already active"),
        }
    }

    /// Reads one complete reply; the whole reply must arrive within the command timeout.
    pub(crate) async fn read_reply(&mut self) -> Result<Reply, WireError> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.read_reply_untimed()).await {
            Ok(result) => result,
            Err(_) => Err(WireError::Timeout(timeout)),
        }
    }

    async fn read_reply_untimed(&mut self) -> Result<Reply, WireError> {
        let mut parser = ReplyParser::new();
        loop {
            let line = self.read_line().await?;
            if let Some(reply) = parser.feed_line(&line).map_err(WireError::Malformed)? {
                return Ok(reply);
            }
        }
    }

    async fn read_line(&mut self) -> Result<String, WireError> {
        loop {
            if let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + pos + 1;
                let line: Vec<u8> = self.buf.drain(..end).collect();
                self.scanned = 0;
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            self.scanned = self.buf.len();
            if self.buf.len() > MAX_REPLY_LINE {
                return Err(WireError::LineTooLong);
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).await.map_err(io_error)?;
            if n == 0 {
                return Err(WireError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Writes and flushes `bytes`, each piece within the command timeout.
    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        let timeout = self.timeout;
        for piece in bytes.chunks(WRITE_CHUNK) {
            match tokio::time::timeout(timeout, self.stream.write_all(piece)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(io_error(e)),
                Err(_) => return Err(WireError::Timeout(timeout)),
            }
        }
        match tokio::time::timeout(timeout, self.stream.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io_error(e)),
            Err(_) => Err(WireError::Timeout(timeout)),
        }
    }

    /// Best effort: the connection is going away anyway.
    pub(crate) async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(self.timeout, self.stream.shutdown()).await;
    }
}

fn io_error(e: io::Error) -> WireError {
    match e.kind() {
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::UnexpectedEof => WireError::Closed,
        _ => WireError::Io(e),
    }
}
