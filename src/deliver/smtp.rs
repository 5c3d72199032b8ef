//! The SMTP client transport: delivers a message to the route's upstream (Microsoft 365 client
//! submission, a connector endpoint, or any SMTP server).
//!
//! Invariants:
//! - At most `max_connections` connections to the upstream are open at once, idle ones included
//!   (Microsoft counts open connections per mailbox, not busy ones). Each connection owns a permit.
//! - TLS certificates and host names are always verified (see [`tls`]).
//! - One result per recipient, in order. Nothing the upstream does makes `deliver` fail as a whole:
//!   set-up problems (DNS, TCP, TLS, AUTH, a 5xx greeting) defer every recipient, because they are about
//!   the relay's configuration or network, not about the message.
//! - After a clean transaction the connection is kept for [`IDLE_REUSE`] and reused (after RSET) by the
//!   next delivery on the route, as Postfix's connection cache does; otherwise it is closed with QUIT.
//! - XOAUTH2: a 5xx to AUTH drops the access token and the connection; one more connection with a new
//!   token follows at once (tokens can be revoked or refused before they expire). A second refusal
//!   defers the recipients with the upstream's reply.

mod connection;
mod setup;
pub(crate) mod tls;
mod wire;

use super::{OutboundMessage, RecipientResult};
use crate::config::{Credential, SmtpRoute};
use crate::deliver::oauth::TokenProvider;
use connection::{Connection, Upstream};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tracing::{Instrument, debug, info};

/// How long a connection stays open waiting for the next message.
pub const IDLE_REUSE: Duration = Duration::from_secs(5);

pub struct SmtpTransport {
    upstream: Arc<Upstream>,
    /// One permit per open connection.
    slots: Arc<Semaphore>,
    idle: Arc<IdlePool>,
}

impl fmt::Debug for SmtpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let route = &self.upstream.route;
        f.debug_struct("SmtpTransport")
            .field("host", &route.host)
            .field("port", &route.port)
            .field("tls", &route.tls)
            .field("max_connections", &route.max_connections)
            .finish()
    }
}

impl SmtpTransport {
    /// Builds the TLS configuration once; an unreadable `ca_file` is a start-up error naming the file.
    /// Routes with OAuth credentials get the shared [`TokenProvider`] of their credential (a bad
    /// certificate or key is a start-up error too).
    pub fn new(route: &SmtpRoute, helo_name: String) -> anyhow::Result<Self> {
        Self::with_log(route, helo_name, crate::logs::LogSink::disabled())
    }

    /// [`SmtpTransport::new`] writing every command and reply to the W3C log `log`.
    pub fn with_log(
        route: &SmtpRoute,
        helo_name: String,
        log: crate::logs::LogSink,
    ) -> anyhow::Result<Self> {
        let config =
            tls::client_config_with_cert(route.ca_file.as_deref(), route.client_cert.as_ref())?;
        let tokens = match route.auth.as_ref().map(|auth| &auth.credential) {
            Some(Credential::OAuth(oauth)) => Some(TokenProvider::shared(oauth)?),
            _ => None,
        };
        Ok(SmtpTransport {
            upstream: Arc::new(Upstream {
                route: route.clone(),
                helo_name,
                tls: tokio_rustls::TlsConnector::from(config),
                tokens,
                log,
            }),
            slots: Arc::new(Semaphore::new(route.max_connections.max(1))),
            idle: Arc::new(IdlePool::default()),
        })
    }

    pub async fn deliver(&self, msg: &OutboundMessage<'_>) -> Vec<RecipientResult> {
        if msg.recipients.is_empty() {
            return Vec::new();
        }
        let span =
            tracing::info_span!("smtp", queue_id = msg.queue_id, host = %self.upstream.route.host);
        async {
            let (mut conn, permit) = match self.checkout().await {
                Ok(pair) => pair,
                Err(failure) => {
                    info!("{}", failure.reason);
                    return vec![failure.result(); msg.recipients.len()];
                }
            };
            let tx = conn.send_transaction(msg).await;
            if tx.reusable {
                self.park(conn, permit);
            } else {
                // The permit goes with the connection: it counts until the socket is closed.
                tokio::spawn(
                    async move {
                        conn.quit().await;
                        drop(permit);
                    }
                    .in_current_span(),
                );
            }
            tx.results
        }
        .instrument(span)
        .await
    }

    /// Ends the idle connections with QUIT now (for one-shot callers such as `smarthost send`,
    /// whose runtime ends before the idle timer would).
    pub async fn close(&self) {
        while let Some(idle) = self.idle.take() {
            idle.conn.quit().await;
        }
    }

    /// An idle connection that still answers RSET, or a new one once a slot is free.
    async fn checkout(&self) -> Result<(Connection, OwnedSemaphorePermit), connection::Failure> {
        loop {
            // Registered before looking, so a connection parked in between wakes us.
            let parked = self.idle.parked.notified();
            tokio::pin!(parked);
            parked.as_mut().enable();
            while let Some(idle) = self.idle.take() {
                let Idle {
                    mut conn,
                    permit,
                    since,
                    ..
                } = idle;
                if since.elapsed() > IDLE_REUSE {
                    tokio::spawn(async move {
                        conn.quit().await;
                        drop(permit);
                    });
                    continue;
                }
                match conn.reset().await {
                    Ok(()) => {
                        debug!("reusing connection {conn:?}");
                        return Ok((conn, permit));
                    }
                    Err(failure) => debug!("idle connection not reusable: {}", failure.reason),
                }
            }
            tokio::select! {
                permit = self.slots.clone().acquire_owned() => {
                    let permit = permit.expect("the semaphore is never closed");
                    let conn = self.connect().await?;
                    return Ok((conn, permit));
                }
                () = &mut parked => continue,
            }
        }
    }

    /// A new connection; when the upstream refuses the access token, a second one with a new token.
    async fn connect(&self) -> Result<Connection, connection::Failure> {
        let failure = match Connection::connect(&self.upstream).await {
            Err(failure) if failure.refused_token.is_some() => failure,
            other => return other,
        };
        if let (Some(tokens), Some(token)) = (&self.upstream.tokens, &failure.refused_token) {
            tokens.invalidate(token);
        }
        info!(
            "{}; trying once more with a new access token on a new connection",
            failure.reason
        );
        Connection::connect(&self.upstream)
            .await
            .map_err(|mut again| {
                if again.refused_token.take().is_some() {
                    again
                        .reason
                        .push_str("; a new access token was refused as well");
                }
                again
            })
    }

    fn park(&self, conn: Connection, permit: OwnedSemaphorePermit) {
        let id = self.idle.put(conn, permit);
        let pool = Arc::clone(&self.idle);
        tokio::spawn(
            async move {
                tokio::time::sleep(IDLE_REUSE).await;
                if let Some(idle) = pool.remove(id) {
                    idle.conn.quit().await;
                }
            }
            .in_current_span(),
        );
    }
}

struct Idle {
    id: u64,
    conn: Connection,
    permit: OwnedSemaphorePermit,
    since: Instant,
}

#[derive(Default)]
struct IdlePool {
    conns: Mutex<Vec<Idle>>,
    /// Wakes deliveries waiting for a slot when a connection becomes idle.
    parked: Notify,
    next_id: AtomicU64,
}

impl IdlePool {
    fn put(&self, conn: Connection, permit: OwnedSemaphorePermit) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().push(Idle {
            id,
            conn,
            permit,
            since: Instant::now(),
        });
        self.parked.notify_waiters();
        id
    }

    /// The most recently used connection first: it is the least likely to have timed out.
    fn take(&self) -> Option<Idle> {
        self.lock().pop()
    }

    fn remove(&self, id: u64) -> Option<Idle> {
        let mut conns = self.lock();
        let pos = conns.iter().position(|idle| idle.id == id)?;
        Some(conns.remove(pos))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // A panic while holding the lock cannot leave the Vec inconsistent.
        self.conns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
