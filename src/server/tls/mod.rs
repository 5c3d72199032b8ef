//! Inbound TLS: a listener's certificate and key, and the handshake of STARTTLS (RFC 3207) or
//! implicit TLS (RFC 8314).
//!
//! One implementation per build, behind [`InboundTls`]: OpenSSL (feature `legacy-tls`, on by
//! default, OpenSSL built from source), the only one that still speaks TLS 1.0 and 1.1 to old
//! devices (`min_tls = "1.0"`); rustls without the feature, which the configuration then limits to
//! TLS 1.2 and 1.3.
//!
//! Invariants:
//! - The certificate and key are read when the configuration is loaded (so `check-config` reports a
//!   bad file against its line), when the relay starts, and again whenever either file changes:
//!   every handshake first compares both files' modification time and size (two `stat`s, nothing
//!   next to a handshake) with those of the pair in use. A renewed certificate is thus used without a
//!   restart. A change that does not load (a half-copied file, a key that does not match) keeps the
//!   previous pair in use and is logged once per change.
//! - `min_tls` 1.2 and 1.3 use modern suites only; 1.0 and 1.1 add the old CBC suites at OpenSSL
//!   security level 0, because that is what the devices that need those versions have.

#[cfg(feature = "legacy-tls")]
mod openssl;
mod pem;
#[cfg(not(feature = "legacy-tls"))]
mod rustls;

#[cfg(feature = "legacy-tls")]
use self::openssl as backend;
#[cfg(not(feature = "legacy-tls"))]
use self::rustls as backend;

use crate::config::TlsVersion;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;
use tokio::net::TcpStream;

/// An established inbound TLS connection.
pub use backend::TlsStream;

/// Whether this build can accept TLS 1.0 and 1.1 (`min_tls` below 1.2).
pub const SUPPORTS_LEGACY_TLS: bool = cfg!(feature = "legacy-tls");

pub const LEGACY_UNAVAILABLE: &str = "TLS 1.0 and 1.1 need the OpenSSL backend, and this smarthost \
     was built without the `legacy-tls` feature";

/// What was negotiated, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.3`, `TLSv1.2`, `TLSv1.1`, `TLSv1`.
    pub version: String,
    /// The cipher suite's name as the backend spells it.
    pub cipher: String,
}

/// A listener's TLS server side: certificate, key, oldest version, and the reload on change.
pub struct InboundTls {
    certificate: PathBuf,
    private_key: PathBuf,
    min: TlsVersion,
    state: Mutex<State>,
}

struct State {
    stamp: Stamp,
    acceptor: Arc<backend::Acceptor>,
    /// The stamp of files that failed to load, so the failure is logged once, not per handshake.
    failed: Option<Stamp>,
}

/// Modification time and size of the certificate and the key file.
type Stamp = [Option<(SystemTime, u64)>; 2];

impl std::fmt::Debug for InboundTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundTls")
            .field("certificate", &self.certificate)
            .field("private_key", &self.private_key)
            .field("min", &self.min)
            .finish()
    }
}

impl InboundTls {
    /// Loads the pair; the error is a sentence naming the file.
    pub fn load(
        certificate: &Path,
        private_key: &Path,
        min: TlsVersion,
    ) -> Result<InboundTls, String> {
        let stamp = stamp(certificate, private_key);
        let (acceptor, _) = build(certificate, private_key, min)?;
        Ok(InboundTls {
            certificate: certificate.to_path_buf(),
            private_key: private_key.to_path_buf(),
            min,
            state: Mutex::new(State {
                stamp,
                acceptor: Arc::new(acceptor),
                failed: None,
            }),
        })
    }

    /// The TLS handshake as the server, on a connection that has just accepted (implicit TLS) or
    /// answered `220` to STARTTLS. The caller bounds it with a timeout.
    pub async fn accept(&self, stream: TcpStream) -> io::Result<(TlsStream, TlsInfo)> {
        let acceptor = self.current();
        backend::accept(&acceptor, stream).await
    }

    /// The acceptor for the files as they are now: reloaded when they changed.
    fn current(&self) -> Arc<backend::Acceptor> {
        let now = stamp(&self.certificate, &self.private_key);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if now == state.stamp || state.failed == Some(now) {
            return state.acceptor.clone();
        }
        match build(&self.certificate, &self.private_key, self.min) {
            Ok((acceptor, _)) => {
                tracing::info!(
                    certificate = %self.certificate.display(),
                    "certificate files changed: new certificate loaded"
                );
                state.acceptor = Arc::new(acceptor);
                state.stamp = now;
                state.failed = None;
            }
            Err(error) => {
                tracing::error!(
                    certificate = %self.certificate.display(),
                    %error,
                    "certificate files changed but cannot be loaded: still using the previous certificate"
                );
                state.failed = Some(now);
            }
        }
        state.acceptor.clone()
    }
}

/// What `check-config` and the loader ask: does the pair load as `serve` would load it? `Ok` holds
/// warnings (expired or expiring certificate).
pub fn check(
    certificate: &Path,
    private_key: &Path,
    min: TlsVersion,
    now: SystemTime,
) -> Result<Vec<String>, String> {
    let (_, pair) = build(certificate, private_key, min)?;
    Ok(pem::validity_warnings(&pair, now))
}

fn build(
    certificate: &Path,
    private_key: &Path,
    min: TlsVersion,
) -> Result<(backend::Acceptor, pem::Pair), String> {
    let pair = pem::read_pair(certificate, private_key)?;
    let acceptor = backend::acceptor(&pair, min).map_err(|e| {
        format!(
            "{} and {}: {e}",
            certificate.display(),
            private_key.display()
        )
    })?;
    Ok((acceptor, pair))
}

fn stamp(certificate: &Path, private_key: &Path) -> Stamp {
    let one = |path: &Path| {
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    };
    [one(certificate), one(private_key)]
}

/// A hint for the log when a handshake fails, for the causes an administrator can fix here.
pub fn handshake_hint(error: &str, min: TlsVersion) -> Option<&'static str> {
    let lower = error.to_ascii_lowercase();
    let version = lower.contains("unsupported protocol")
        || lower.contains("version too low")
        || lower.contains("protocolversion")
        || lower.contains("protocol version");
    if version && min >= TlsVersion::Tls12 {
        return Some(
            "the client may speak only TLS 1.0 or 1.1: if it cannot be updated, set \
             min_tls = \"1.0\" on this listener",
        );
    }
    if lower.contains("no shared cipher") || lower.contains("no cipher") {
        return Some("the client and this listener have no cipher suite in common");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_failures_get_a_hint_when_the_administrator_can_act() {
        let cases = [
            (
                "error:0A000102:SSL routines:tls_early_post_process_client_hello:unsupported protocol",
                TlsVersion::Tls12,
                Some("min_tls = \"1.0\""),
            ),
            (
                "received fatal alert: ProtocolVersion",
                TlsVersion::Tls13,
                Some("min_tls = \"1.0\""),
            ),
            (
                "error:0A000102:SSL routines::unsupported protocol",
                TlsVersion::Tls10,
                None,
            ),
            (
                "error:0A0000C1:SSL routines::no shared cipher",
                TlsVersion::Tls10,
                Some("no cipher suite in common"),
            ),
            ("unexpected eof while reading", TlsVersion::Tls12, None),
        ];
        for (error, min, expected) in cases {
            let hint = handshake_hint(error, min);
            match expected {
                Some(fragment) => assert!(
                    hint.is_some_and(|h| h.contains(fragment)),
                    "{error}: {hint:?}"
                ),
                None => assert_eq!(hint, None, "{error}"),
            }
        }
    }
}
