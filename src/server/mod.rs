//! The SMTP listeners: binding, accept loop, connect-time policy, connection limits, graceful
//! shutdown (after tokio-rs/mini-redis).
//!
//! [`run`] takes already-bound listeners and a shutdown signal, so tests bind `127.0.0.1:0`. On
//! shutdown it stops accepting; sessions waiting for a command are told `421` and closed, sessions
//! in the middle of DATA may finish within [`SHUTDOWN_GRACE`]; then the rest are cut (their messages
//! were never acknowledged, so the clients will send them again).
//!
//! A new connection is checked in this order, each refusal logged:
//! 1. `allow_from`/`deny_from`: `554 5.7.1 <ip> is not allowed to connect`, closed (IIS: Connection
//!    control).
//! 2. `[limits] max_connections` over all listeners: `421 4.7.0 ... Too many connections`.
//! 3. the listener's `max_connections_per_ip`: `421 4.7.0 Too many connections from your address`.
//! 4. on a listener with `require_auth`, an address locked out for failed AUTH: `421 4.7.0`
//!    (nothing could be done there without AUTH). Elsewhere such a client keeps its session and
//!    only AUTH is refused, so that a device relaying by `relay_from` from the same address goes on.
//!
//! On an implicit-TLS listener a refused client is simply closed: it expects a handshake, not text.

mod access;
mod session;
mod stream;
pub mod tls;

use crate::clock::Clock;
use crate::config::{Limits, ListenerConfig, ListenerTls, canonical_ip};
use crate::ingest::Ingest;
use crate::policy::lockout::Lockout;
use crate::policy::users::UserDb;
use crate::route::Router;
use crate::smtp::Reply;
use access::ConnectionsPerIp;
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tls::InboundTls;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

/// How long sessions in DATA may go on after shutdown was asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// What every session needs to know.
#[derive(Debug)]
pub struct ServerContext {
    pub hostname: String,
    pub limits: Limits,
    pub router: Router,
    pub ingest: Ingest,
    /// The `[[user]]`s of inbound AUTH.
    pub users: Arc<UserDb>,
    /// Failed AUTH per client address, over all listeners.
    pub lockout: Arc<Lockout>,
    /// For the lockout (tests drive it with a manual clock).
    pub clock: Arc<dyn Clock>,
    /// The W3C extended log (one line per command and reply); disabled when `[logs] w3c = false`.
    pub log: crate::logs::LogSink,
}

/// A listener as sessions see it: its configuration and what was built from it.
#[derive(Debug)]
struct Listener {
    config: ListenerConfig,
    /// Present unless `tls = "none"`.
    tls: Option<InboundTls>,
    per_ip: Arc<ConnectionsPerIp>,
}

/// One bound listener, ready for [`run`].
#[derive(Debug)]
pub struct BoundListener {
    listener: TcpListener,
    state: Arc<Listener>,
}

/// What a configuration reload replaces on the SMTP side: the context and each listener's policy.
/// A session takes both when it is accepted and keeps them until it ends.
#[derive(Debug)]
pub struct Live {
    context: RwLock<Arc<ServerContext>>,
    /// In the order of the bound listeners.
    listeners: RwLock<Vec<Arc<Listener>>>,
}

impl Live {
    /// The live state of `listeners` (before [`run`] takes them).
    pub fn new(context: ServerContext, listeners: &[BoundListener]) -> Arc<Live> {
        Arc::new(Live {
            context: RwLock::new(Arc::new(context)),
            listeners: RwLock::new(listeners.iter().map(|l| l.state.clone()).collect()),
        })
    }

    /// The context new sessions get.
    pub fn context(&self) -> Arc<ServerContext> {
        self.context
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn listener(&self, index: usize) -> Arc<Listener> {
        self.listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner)[index]
            .clone()
    }

    /// The configurations of the listeners in use, in the order they were bound.
    pub fn listener_configs(&self) -> Vec<ListenerConfig> {
        self.listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|l| l.config.clone())
            .collect()
    }

    /// Builds the new state of every listener in use from its configuration in `configs` (matched
    /// by `address`), reading certificates again. Nothing changes yet; an error names the listener.
    /// A listener in use that `configs` lacks keeps its state, and listeners in `configs` with an
    /// address not in use are left out: a restart unbinds or binds them.
    pub fn prepare(&self, configs: &[ListenerConfig]) -> Result<PreparedListeners, String> {
        let current = self
            .listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut prepared = Vec::new();
        for old in &current {
            let Some(config) = configs.iter().find(|c| c.address == old.config.address) else {
                // Removed from the file: it runs as it did until a restart.
                prepared.push(old.clone());
                continue;
            };
            let tls = match (config.tls, &config.certificate, &config.private_key) {
                (ListenerTls::None, _, _) => None,
                (_, Some(certificate), Some(private_key)) => Some(
                    InboundTls::load(certificate, private_key, config.min_tls)
                        .map_err(|e| format!("listener {}: {e}", config.address))?,
                ),
                _ => {
                    return Err(format!(
                        "listener {}: TLS needs `certificate` and `private_key`",
                        config.address
                    ));
                }
            };
            let per_ip = if config.max_connections_per_ip == old.config.max_connections_per_ip {
                old.per_ip.clone()
            } else {
                ConnectionsPerIp::new(config.max_connections_per_ip)
            };
            prepared.push(Arc::new(Listener {
                config: config.clone(),
                tls,
                per_ip,
            }));
        }
        Ok(PreparedListeners(prepared))
    }

    /// Puts a new context and the prepared listeners in place for sessions accepted from now on.
    pub fn apply(&self, context: ServerContext, listeners: PreparedListeners) {
        *self
            .listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner) = listeners.0;
        *self.context.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(context);
    }
}

/// Listener states built by [`Live::prepare`], waiting for [`Live::apply`].
#[derive(Debug)]
pub struct PreparedListeners(Vec<Arc<Listener>>);

impl PreparedListeners {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl BoundListener {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Binds every listener and loads its certificate. Must be called inside the tokio runtime.
///
/// An IPv6 wildcard (`[::]:25`) takes IPv4 clients too (dual stack), unless another listener has an
/// IPv4 address on the same port; then each takes its own family (as `[::]` and `0.0.0.0` together
/// would otherwise conflict).
pub fn bind(configs: &[ListenerConfig]) -> anyhow::Result<Vec<BoundListener>> {
    let mut bound = Vec::new();
    for config in configs {
        let tls = match (config.tls, &config.certificate, &config.private_key) {
            (ListenerTls::None, _, _) => None,
            (_, Some(certificate), Some(private_key)) => Some(
                InboundTls::load(certificate, private_key, config.min_tls)
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("listener {}", config.address))?,
            ),
            _ => anyhow::bail!(
                "listener {}: TLS needs `certificate` and `private_key`",
                config.address
            ),
        };
        let address = config.address;
        let v6_only = address.is_ipv6()
            && configs
                .iter()
                .any(|other| other.address.is_ipv4() && other.address.port() == address.port());
        let listener = listen(address, v6_only).map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::PermissionDenied if address.port() < 1024 => {
                    " (ports below 1024 need root or the CAP_NET_BIND_SERVICE capability, e.g. \
                     `setcap cap_net_bind_service=+ep` on the binary, or AmbientCapabilities= in \
                     the systemd unit)"
                }
                std::io::ErrorKind::AddrInUse => {
                    " (another program listens there already: IIS SMTP, Postfix, another \
                     smarthost?)"
                }
                std::io::ErrorKind::AddrNotAvailable => {
                    " (no network interface of this machine has that address)"
                }
                _ => "",
            };
            anyhow::anyhow!("cannot listen on {address}: {e}{hint}")
        })?;
        bound.push(BoundListener {
            listener,
            state: Arc::new(Listener {
                config: config.clone(),
                tls,
                per_ip: ConnectionsPerIp::new(config.max_connections_per_ip),
            }),
        });
    }
    Ok(bound)
}

fn listen(address: SocketAddr, v6_only: bool) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    // As tokio and std do on Unix: a restart must not wait for old connections' TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(v6_only)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Raises this process's soft limit of open files to its hard limit (Unix) and returns the limit
/// now in force (`None`: unlimited or unknown).
///
/// Hardening finding (issue 8): every inbound connection is a file descriptor, and the usual soft
/// limit is 1024 (systemd's default even when the hard limit is 524288), so without this a relay
/// with `max_connections` near or above that (1000 by default) had `accept` fail with EMFILE from
/// about the 1000th client on: the client hung in the kernel's backlog instead of getting a banner
/// or a 421.
/// The hard limit is the administrator's ceiling; raising the soft one up to it needs no privilege.
#[cfg(unix)]
pub fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current?;
    if limit.maximum.is_some_and(|hard| hard <= current) {
        return Some(current);
    }
    // An unlimited hard limit cannot be the soft limit of files (Linux refuses more than
    // fs.nr_open, macOS more than OPEN_MAX, 10240): then try large finite values, and keep the
    // current one if they are refused too.
    let candidates = match limit.maximum {
        Some(hard) => vec![hard],
        None => vec![1 << 20, 1 << 16, 10_240],
    };
    for wanted in candidates {
        let raised = Rlimit {
            current: Some(wanted),
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            tracing::debug!(
                from = current,
                to = wanted,
                "raised the open files soft limit"
            );
            return Some(wanted);
        }
    }
    Some(current)
}

/// Not Unix: nothing to raise.
#[cfg(not(unix))]
pub fn raise_open_files_limit() -> Option<u64> {
    None
}

/// File descriptors kept for everything but sessions: listeners, spool and log files, upstream
/// connections, the control socket, the admin server.
const RESERVED_FILES: u64 = 256;

/// How many sessions may be open at once: `max_connections`, or fewer when the open files limit
/// leaves less room. Hardening finding (issue 8): over that limit `accept` fails with EMFILE and a
/// client waits unanswered in the listen backlog; kept under it, a client over the capacity is
/// accepted and hears `421 Too many connections` like any other.
fn session_capacity(max_connections: usize) -> usize {
    #[cfg(unix)]
    let files = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    #[cfg(not(unix))]
    let files: Option<u64> = None;
    let Some(files) = files else {
        return max_connections;
    };
    let room = usize::try_from(files.saturating_sub(RESERVED_FILES))
        .unwrap_or(usize::MAX)
        .max(1);
    if max_connections <= room {
        return max_connections;
    }
    tracing::warn!(
        open_files = files,
        max_connections,
        serving = room,
        "the open files limit leaves room for only {room} connections: clients over it hear 421; \
         raise the hard limit (LimitNOFILE= in the systemd unit, `ulimit -Hn`) to serve \
         max_connections"
    );
    room
}

/// Serves every listener until `shutdown` turns true, then drains sessions.
pub async fn run(listeners: Vec<BoundListener>, live: Arc<Live>, shutdown: watch::Receiver<bool>) {
    let capacity = session_capacity(live.context().limits.max_connections);
    let connections = Arc::new(Semaphore::new(capacity.max(1)));
    let mut sessions = JoinSet::new();
    let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::channel(64);
    let mut acceptors = JoinSet::new();
    for (index, bound) in listeners.into_iter().enumerate() {
        let tx = accepted_tx.clone();
        let mut shutdown = shutdown.clone();
        acceptors.spawn(async move {
            let mut backoff = Duration::from_millis(10);
            loop {
                tokio::select! {
                    _ = shutdown.changed() => if *shutdown.borrow() { return },
                    accepted = bound.listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            backoff = Duration::from_millis(10);
                            if tx.send((stream, peer, index)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(1));
                        }
                    }
                }
            }
        });
    }
    drop(accepted_tx);

    let mut shutdown_rx = shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown_rx.changed() => if *shutdown_rx.borrow() { break },
            next = accepted_rx.recv() => {
                let Some((stream, peer, index)) = next else { break };
                let permit = connections.clone().try_acquire_owned().ok();
                // The policy in force now; a reload later does not change this session's.
                let listener = live.listener(index);
                let context = live.context();
                let shutdown = shutdown.clone();
                sessions.spawn(connection(stream, peer, listener, context, permit, shutdown));
                while sessions.try_join_next().is_some() {}
            }
        }
    }
    acceptors.shutdown().await;
    let open = sessions.len();
    if open > 0 {
        tracing::info!(
            open,
            "waiting for open sessions to finish (those in DATA may complete)"
        );
    }
    if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(5), async {
        while sessions.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(
            open = sessions.len(),
            "closing sessions that did not finish in time"
        );
        sessions.shutdown().await;
    }
}

/// The connect-time checks (see the module docs), then the session.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<Listener>,
    context: Arc<ServerContext>,
    permit: Option<OwnedSemaphorePermit>,
    shutdown: watch::Receiver<bool>,
) {
    let ip = canonical_ip(peer.ip());
    let address = listener.config.address;
    if !access::may_connect(&listener.config, ip) {
        tracing::warn!(client = %peer, listener = %address, "connection refused: address not allowed to connect (allow_from/deny_from)");
        let reply = Reply::new(554, format!("5.7.1 {ip} is not allowed to connect"));
        return session::refuse(stream, &listener, reply).await;
    }
    let Some(permit) = permit else {
        tracing::warn!(client = %peer, listener = %address, max = context.limits.max_connections, "connection refused: too many connections (max_connections)");
        let reply = Reply::new(
            421,
            format!(
                "4.7.0 {} Too many connections, try again later",
                context.hostname
            ),
        );
        return session::refuse(stream, &listener, reply).await;
    };
    let Some(slot) = listener.per_ip.try_take(ip) else {
        tracing::warn!(client = %peer, listener = %address, max = listener.config.max_connections_per_ip, "connection refused: too many connections from this address (max_connections_per_ip)");
        let reply = Reply::new(421, "4.7.0 Too many connections from your address");
        return session::refuse(stream, &listener, reply).await;
    };
    if listener.config.require_auth
        && let Some(until) = context.lockout.is_locked(ip, context.clock.now())
    {
        tracing::warn!(client = %peer, listener = %address, until, "connection refused: address locked out after failed AUTH attempts");
        let reply = Reply::new(
            421,
            "4.7.0 Too many failed authentication attempts from your address, try again later",
        );
        return session::refuse(stream, &listener, reply).await;
    }
    session::handle(stream, peer, listener, context, shutdown).await;
    drop(slot);
    drop(permit);
}
