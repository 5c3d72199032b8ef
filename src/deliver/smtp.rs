//! The SMTP client transport: delivers a message to the route's upstream (Microsoft 365 client
//! submission, a connector endpoint, or any SMTP server).
//!
//! Invariants:
//! - At most `max_connections` connections to the upstream are open at once, idle ones included
//!   (Microsoft counts open connections per mailbox, not busy ones). Each connection owns a permit;
//!   with `[cluster]` also a lease of its mailbox's shared slots ([`crate::cluster::Slots`]), so
//!   the limit holds over all nodes.
//! - TLS certificates and host names are always verified (see [`tls`]).
//! - One result per recipient, in order. Nothing the upstream does makes `deliver` fail as a whole:
//!   set-up problems (DNS, TCP, TLS, AUTH, a 5xx greeting) defer every recipient, because they are about
//!   the relay's configuration or network, not about the message.
//! - After a clean transaction the connection is kept for [`IDLE_REUSE`] and reused (after RSET) by the
//!   next delivery on the route, as Postfix's connection cache does; otherwise it is closed with QUIT.
//!   With PIPELINING the RSET goes in the same write as MAIL, RCPT and DATA (no round trip of its
//!   own); without it, it is a round trip before MAIL. New connections send no RSET.
//! - A reused connection that fails its RSET (write error, lost, any non-2xx reply such as `421`) costs
//!   the message nothing: no recipient is decided from it, it is closed without QUIT (it may be in DATA
//!   after a pipelined group) and the message goes to the next idle connection, else a new one. Each
//!   retry uses up an idle connection and a new connection owes no RSET, so the retries end.
//! - XOAUTH2: a 5xx to AUTH drops the access token and the connection; one more connection with a new
//!   token follows at once (tokens can be revoked or refused before they expire). A second refusal
//!   defers the recipients with the upstream's reply.

mod connection;
pub(crate) mod setup;
pub(crate) mod tls;
pub(crate) mod wire;

use super::{OutboundMessage, RecipientResult};
use crate::config::{Credential, SmtpRoute};
use crate::deliver::oauth::TokenProvider;
use connection::{Connection, Upstream};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tracing::{Instrument, debug, info};

/// How long a connection stays open waiting for the next message.
pub const IDLE_REUSE: Duration = Duration::from_secs(5);

/// How often an idle connection holding a shared slot (`[cluster]`) looks whether another node
/// waits for it.
const CLUSTER_IDLE_CHECK: Duration = Duration::from_millis(100);

/// How often the reaper looks for connections idle longer than [`IDLE_REUSE`] (without `[cluster]`).
const REAP_EVERY: Duration = Duration::from_secs(1);

pub struct SmtpTransport {
    upstream: Arc<Upstream>,
    /// One permit per open connection.
    slots: Arc<Semaphore>,
    idle: Arc<IdlePool>,
    /// The mailbox's connection slots shared with other nodes (`[cluster]`).
    cluster_slots: std::sync::OnceLock<Arc<crate::cluster::Slots>>,
}

/// What an open connection holds: its permit, and its shared slot with `[cluster]`.
struct Permit {
    _local: OwnedSemaphorePermit,
    lease: Option<crate::cluster::Lease>,
}

impl Permit {
    /// Whether the connection may wait idle for the next message (see [`crate::cluster::Lease`]).
    fn keep_idle(&self) -> bool {
        self.lease
            .as_ref()
            .is_none_or(crate::cluster::Lease::keep_idle)
    }
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
            cluster_slots: std::sync::OnceLock::new(),
        })
    }

    /// From now on every connection also holds one of `slots` (shared with the other nodes).
    pub fn join_cluster(&self, slots: Arc<crate::cluster::Slots>) {
        let _ = self.cluster_slots.set(slots);
    }

    pub async fn deliver(&self, msg: &OutboundMessage<'_>) -> Vec<RecipientResult> {
        if msg.recipients.is_empty() {
            return Vec::new();
        }
        let span =
            tracing::info_span!("smtp", queue_id = msg.queue_id, host = %self.upstream.route.host);
        async {
            let (conn, permit, tx) = loop {
                let (mut conn, permit, reused) = match self.checkout().await {
                    Ok(checked_out) => checked_out,
                    Err(failure) => {
                        info!("{}", failure.reason);
                        return vec![failure.result(); msg.recipients.len()];
                    }
                };
                match conn.send_transaction(msg, reused).await {
                    Ok(tx) => break (conn, permit, tx),
                    Err(stale) => {
                        // Only a reused (idle) connection can be stale, and each one is taken from
                        // the pool once: this loop ends at the latest with a new connection.
                        debug_assert!(reused, "a new connection owes no RSET");
                        debug!("idle connection not reusable: {}", stale.reason);
                        conn.abandon();
                        drop(permit);
                    }
                }
            };
            if tx.reusable && permit.keep_idle() {
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

    /// An idle connection, or a new one once a slot is free; true for an idle one, which owes the
    /// upstream an RSET before its next transaction ([`Connection::send_transaction`] sends it,
    /// pipelined when it can).
    async fn checkout(&self) -> Result<(Connection, Permit, bool), connection::Failure> {
        loop {
            // Registered before looking, so a connection parked in between wakes us.
            let parked = self.idle.parked.notified();
            tokio::pin!(parked);
            parked.as_mut().enable();
            while let Some(idle) = self.idle.take() {
                let Idle {
                    conn,
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
                debug!("reusing connection {conn:?}");
                return Ok((conn, permit, true));
            }
            tokio::select! {
                permit = self.acquire_slot() => {
                    let conn = self.connect().await?;
                    return Ok((conn, permit, false));
                }
                () = &mut parked => continue,
            }
        }
    }

    /// A local permit, then (with `[cluster]`) a shared slot of the mailbox.
    async fn acquire_slot(&self) -> Permit {
        let local = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let lease = match self.cluster_slots.get() {
            Some(slots) => Some(slots.acquire().await),
            None => None,
        };
        Permit {
            _local: local,
            lease,
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

    fn park(&self, conn: Connection, permit: Permit) {
        // With `[cluster]` an idle connection looks often whether another node waits for its slot.
        let every = if permit.lease.is_some() {
            CLUSTER_IDLE_CHECK
        } else {
            REAP_EVERY
        };
        if self.idle.put(conn, permit) {
            // One reaper per pool while it has idle connections, not one timer task per parked
            // connection: at 2,000 messages a second those were 10,000 live tasks and 40 MB
            // (found with heaptrack, issue 8).
            let pool = Arc::downgrade(&self.idle);
            tokio::spawn(IdlePool::reap(pool, every).in_current_span());
        }
    }
}

struct Idle {
    conn: Connection,
    permit: Permit,
    since: Instant,
}

#[derive(Default)]
struct IdlePool {
    conns: Mutex<Conns>,
    /// Wakes deliveries waiting for a slot when a connection becomes idle.
    parked: Notify,
}

#[derive(Default)]
struct Conns {
    idle: Vec<Idle>,
    /// A reaper task is running (it stops when the pool is empty).
    reaping: bool,
}

impl IdlePool {
    /// Parks a connection; true when the caller must start the reaper.
    fn put(&self, conn: Connection, permit: Permit) -> bool {
        let mut conns = self.lock();
        conns.idle.push(Idle {
            conn,
            permit,
            since: Instant::now(),
        });
        let start = !conns.reaping;
        conns.reaping = true;
        drop(conns);
        self.parked.notify_waiters();
        start
    }

    /// Ends (QUIT) the connections idle longer than [`IDLE_REUSE`], and with `[cluster]` those
    /// whose shared slot another node waits for, until the pool is empty or the transport is gone.
    async fn reap(pool: std::sync::Weak<IdlePool>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            let Some(pool) = pool.upgrade() else { return };
            let (expired, done) = {
                let mut conns = pool.lock();
                let (old, keep): (Vec<Idle>, Vec<Idle>) = std::mem::take(&mut conns.idle)
                    .into_iter()
                    .partition(|idle| {
                        idle.since.elapsed() >= IDLE_REUSE || !idle.permit.keep_idle()
                    });
                conns.idle = keep;
                // Decided under the lock: a connection parked after this starts a new reaper.
                let done = conns.idle.is_empty();
                if done {
                    conns.reaping = false;
                }
                (old, done)
            };
            drop(pool);
            for idle in expired {
                idle.conn.quit().await;
            }
            if done {
                return;
            }
        }
    }

    /// The most recently used connection first: it is the least likely to have timed out.
    fn take(&self) -> Option<Idle> {
        self.lock().idle.pop()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Conns> {
        // A panic while holding the lock cannot leave the Vec inconsistent.
        self.conns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
