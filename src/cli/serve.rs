//! `smarthost serve`: recovers the spool, starts the queue runner and the listeners, and runs until
//! SIGINT or SIGTERM. SIGHUP (or `smarthost reload`) reads the configuration file again
//! (`reload.rs`).

mod reload;

pub use reload::ReloadSummary;

use crate::bounce::badmail::Badmail;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ListenerConfig, ListenerTls, TlsMode, TlsVersion, Transport};
use crate::deliver::Transporter;
use crate::ingest::Ingest;
use crate::ingest::Store;
use crate::policy::lockout::Lockout;
use crate::policy::users::UserDb;
use crate::queue::Queue;
use crate::route::Router;
use crate::server::{self, ServerContext};
use crate::spool::{Recovered, Spool};
use anyhow::Context;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// A relay that is up: its listeners are bound and its queue runs.
pub struct Running {
    /// The addresses actually bound (useful when a listener asked for port 0).
    pub local_addrs: Vec<SocketAddr>,
    pub queue: Queue,
    /// The admin HTTP server's bound address, when `[admin]` is enabled.
    pub admin_addr: Option<SocketAddr>,
    admin: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    shutdown: watch::Sender<bool>,
    /// The W3C log's writer (`[logs] w3c`), stopped last so that every line is written.
    w3c: Option<crate::logs::w3c::LogWriter>,
    server: tokio::task::JoinHandle<()>,
    runner: tokio::task::JoinHandle<()>,
    control: tokio::task::JoinHandle<std::io::Result<()>>,
    pickup: tokio::task::JoinHandle<()>,
    reloader: Arc<reload::Reloader>,
}

impl Running {
    /// Reads the configuration file `path` again and applies what can change while running (see
    /// `reload.rs`); with errors nothing changes and they are returned, one per line. Blocking.
    pub fn reload(&self, path: &std::path::Path) -> Result<ReloadSummary, String> {
        self.reloader.reload(path)
    }

    /// The file that SIGHUP and `smarthost reload` read again (`serve --config`).
    pub fn set_config_path(&self, path: Option<std::path::PathBuf>) {
        *self
            .reloader
            .path
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = path;
    }

    /// Reloads the file set by [`Running::set_config_path`], away from the runtime's workers.
    pub async fn reload_configured(&self) -> Result<ReloadSummary, String> {
        let reloader = self.reloader.clone();
        tokio::task::spawn_blocking(move || reloader.reload_configured())
            .await
            .unwrap_or_else(|e| Err(format!("the reload failed: {e}")))
    }

    /// Stops accepting, lets sessions in DATA finish, waits for attempts in progress.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.server.await;
        let _ = self.runner.await;
        let _ = self.control.await;
        let _ = self.pickup.await;
        if let Some(w3c) = self.w3c {
            w3c.shutdown().await;
        }
        if let Some(admin) = self.admin {
            let _ = admin.await;
        }
    }
}

/// Starts the relay described by `config`.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    start_with_clock(config, Arc::new(SystemClock)).await
}

/// Starts the relay with a given clock (tests drive the retry schedule with a manual one).
pub async fn start_with_clock(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    // First: a second relay on this data_dir must stop before it touches the spool.
    let control_socket =
        crate::control::server::bind(&crate::control::socket_path(&config.data_dir)).await?;
    let spool = Arc::new(
        Spool::open(&config.data_dir)
            .with_context(|| format!("cannot open the spool in {}", config.data_dir.display()))?,
    );
    let pickup_config = crate::pickup::PickupConfig::new(
        &config.data_dir,
        &config.hostname,
        config.limits.max_message_size,
    );
    pickup_config.create_dir()?;
    let router = Router::new(config.routes.clone());
    // The W3C log: one sink for the sessions and the SMTP clients of this relay (not process-wide,
    // so that relays started side by side, as in tests, keep their own files).
    let (w3c_sink, w3c) = if config.logs.w3c {
        let dir = crate::logs::w3c::log_dir(&config.data_dir);
        let (sink, writer) =
            crate::logs::w3c::start(dir.clone(), &config.hostname, config.logs.retention_days)
                .with_context(|| format!("cannot start the W3C log in {}", dir.display()))?;
        (sink, Some(writer))
    } else {
        (crate::logs::LogSink::disabled(), None)
    };
    let transporters = config
        .routes
        .iter()
        .map(|route| {
            Transporter::from_route_logged(route, &config.hostname, &w3c_sink)
                .with_context(|| format!("route {}", route.name))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let badmail = Arc::new(Badmail::open(&config.data_dir).with_context(|| {
        format!(
            "cannot open the Badmail folder in {}",
            config.data_dir.display()
        )
    })?);
    let store = Arc::new(Store::new(
        spool.clone(),
        clock.clone(),
        config.hostname.clone(),
        config.queue.min_free_space,
    ));
    // Shared per-mailbox limits (`[cluster]`); an unreachable Redis is a warning, not a failure.
    let cluster = match &config.cluster {
        Some(cluster) => Some(crate::cluster::Cluster::start(cluster, &config.node).await),
        None => None,
    };
    let queue = Queue::with_node(
        store.clone(),
        router.clone(),
        transporters,
        config.queue.clone(),
        badmail.clone(),
        config.node.clone(),
        cluster,
    );

    let recovery_spool = spool.clone();
    let recovered = tokio::task::spawn_blocking(move || recovery_spool.recover())
        .await?
        .context("cannot read the spool")?;
    let mut waiting = 0;
    for entry in recovered {
        match entry {
            Recovered::Message(envelope) => {
                waiting += 1;
                queue.enqueue(envelope, None);
            }
            Recovered::Corrupt { id, reason } => {
                let (msg, env) = spool.entry_paths(&id);
                let msg = msg.exists().then_some(msg);
                let env = env.exists().then_some(env);
                match badmail.store_unreadable(&id, &reason, msg.as_deref(), env.as_deref()) {
                    Ok(name) => {
                        tracing::error!(queue_id = %id, %reason, badmail = %name, "unreadable spool entry moved to Badmail")
                    }
                    Err(e) => {
                        tracing::error!(queue_id = %id, %reason, error = %e, "unreadable spool entry left in the spool: cannot move it to Badmail")
                    }
                }
            }
        }
    }
    if waiting > 0 {
        tracing::info!(messages = waiting, "messages recovered from the spool");
    }

    let listeners = server::bind(&config.listeners)?;
    let local_addrs = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<std::io::Result<Vec<_>>>()?;
    let admin_listener = crate::admin::bind(&config.admin).await?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let ingest = Ingest::new(store, queue.clone());
    let control_handler = Arc::new(crate::control::ControlHandler::new(
        queue.clone(),
        badmail.clone(),
        ingest.clone(),
    ));
    let pickup = tokio::spawn(crate::pickup::run(
        pickup_config,
        ingest.clone(),
        badmail.clone(),
        shutdown_rx.clone(),
    ));
    let control = tokio::spawn(crate::control::server::serve(
        control_socket,
        control_handler.clone(),
        shutdown_rx.clone(),
    ));
    let (admin_addr, admin) = crate::admin::spawn(
        admin_listener,
        config.clone(),
        control_handler.clone(),
        queue.clone(),
        ingest.clone(),
        local_addrs.clone(),
        shutdown_rx.clone(),
    )?;
    let live = server::Live::new(
        ServerContext {
            hostname: config.hostname.clone(),
            limits: config.limits.clone(),
            router,
            ingest: ingest.clone(),
            users: Arc::new(UserDb::new(&config.users)),
            lockout: Arc::new(Lockout::new(config.auth_lockout.clone())),
            clock: clock.clone(),
            log: w3c_sink.clone(),
        },
        &listeners,
    );
    let reloader = Arc::new(reload::Reloader {
        path: std::sync::Mutex::new(None),
        lockout_config: std::sync::Mutex::new(config.auth_lockout.clone()),
        started: std::sync::Mutex::new(config),
        queue: queue.clone(),
        live: live.clone(),
        ingest,
        clock: clock.clone(),
        log: w3c_sink,
    });
    control_handler.set_reload(reloader.clone());
    let runner = tokio::spawn(queue.clone().run(shutdown_rx.clone()));
    let server = tokio::spawn(server::run(listeners, live, shutdown_rx));
    Ok(Running {
        local_addrs,
        queue,
        admin_addr,
        admin,
        shutdown: shutdown_tx,
        w3c,
        server,
        runner,
        control,
        pickup,
        reloader,
    })
}

/// Runs until SIGINT or SIGTERM, printing what a newcomer needs to know first. SIGHUP reads
/// `config_path` again (a relay on the built-in configuration has nothing to read: it says so).
pub async fn run(config: Config, config_path: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let config_for_summary = config.clone();
    // Before the listeners: each connection needs a file descriptor (hardening finding, issue 8;
    // `server::run` keeps max_connections within what the limit allows).
    crate::server::raise_open_files_limit();
    let running = start(config).await?;
    running.set_config_path(config_path);
    // Handlers in place before the summary says the relay is listening: a SIGHUP or SIGTERM sent as
    // soon as it is up must reload or stop it, not kill it by the default action.
    let signals = Signals::install()?;
    // A closed stdout (a service manager, a test that stopped reading) must not stop the relay.
    // With `[logs] json` stdout carries JSON lines only.
    if !config_for_summary.logs.json {
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            describe(&config_for_summary, &running.local_addrs)
        );
    }
    wait_for_stop(&running, signals).await?;
    tracing::info!("shutting down: no new connections; undelivered mail stays in the spool");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

fn describe(config: &Config, bound: &[SocketAddr]) -> String {
    let mut out = String::from("smarthost is running.\n");
    for (l, addr) in config.listeners.iter().zip(bound) {
        out.push_str(&format!(
            "  listening on {addr} ({})\n",
            listener_summary(l)
        ));
    }
    out.push_str(&format!(
        "  spool: {}\n",
        config.data_dir.join("spool").display()
    ));
    for route in &config.routes {
        let domains: Vec<String> = route
            .domains
            .iter()
            .map(|d| match d {
                crate::config::DomainPattern::Any => "*".to_string(),
                crate::config::DomainPattern::Subdomains(s) => format!("*.{s}"),
                crate::config::DomainPattern::Exact(s) => s.clone(),
            })
            .collect();
        let target = match &route.transport {
            Transport::Drop { path } => format!("written as .eml files into {}", path.display()),
            Transport::Graph(g) => format!(
                "sent with Microsoft Graph sendMail as {} ({})",
                g.mailbox, g.base_url
            ),
            Transport::Smtp(s) => format!(
                "sent to {}:{} ({})",
                s.host,
                s.port,
                match s.tls {
                    TlsMode::StartTls => "STARTTLS required",
                    TlsMode::Implicit => "implicit TLS",
                    TlsMode::Opportunistic => "STARTTLS when offered",
                    TlsMode::None => "no TLS",
                }
            ),
        };
        out.push_str(&format!(
            "  mail for {} (route {}): {target}\n",
            domains.join(", "),
            route.name
        ));
    }
    if let Some(cluster) = &config.cluster {
        out.push_str(&format!(
            "  node {}: per-mailbox limits shared with the other nodes through {}\n",
            config.node, cluster.redis
        ));
    }
    if let Some(&addr) = bound.first() {
        out.push_str(&format!(
            "Send a test message:\n  swaks --server {} --port {} --from you@example.com --to someone@example.com\n  curl smtp://{addr} --mail-from you@example.com --mail-rcpt someone@example.com --upload-file message.eml\n",
            addr.ip(),
            addr.port(),
        ));
    }
    out
}

/// "STARTTLS (TLS 1.2+), AUTH after TLS, relay allowed from 10.0.0.0/8 or after AUTH".
fn listener_summary(l: &ListenerConfig) -> String {
    let min = match l.min_tls {
        TlsVersion::Tls10 => "1.0",
        TlsVersion::Tls11 => "1.1",
        TlsVersion::Tls12 => "1.2",
        TlsVersion::Tls13 => "1.3",
    };
    let mut parts = Vec::new();
    match l.tls {
        ListenerTls::None => {}
        ListenerTls::StartTls => parts.push(format!("STARTTLS (TLS {min}+)")),
        ListenerTls::Implicit => parts.push(format!("implicit TLS (TLS {min}+)")),
    }
    if l.require_auth {
        parts.push("AUTH required".to_string());
    } else if l.auth && l.allow_plaintext_auth {
        parts.push("AUTH, also without TLS".to_string());
    } else if l.auth {
        parts.push("AUTH after TLS".to_string());
    }
    let relay: Vec<String> = l.relay_from.iter().map(|n| n.to_string()).collect();
    let by_auth = if l.auth { " or after AUTH" } else { "" };
    if !l.require_auth {
        parts.push(if relay.is_empty() {
            format!("relay allowed from nobody{by_auth}")
        } else {
            format!("relay allowed from {}{by_auth}", relay.join(", "))
        });
    }
    if !l.allow_from.is_empty() || !l.deny_from.is_empty() {
        parts.push("connections restricted by allow_from/deny_from".to_string());
    }
    parts.join(", ")
}

/// The stop and reload signals, registered before the relay announces that it listens.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                hangup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }
}

/// Waits for SIGINT or SIGTERM; each SIGHUP meanwhile reloads the configuration (its outcome is
/// logged by the reload).
async fn wait_for_stop(running: &Running, signals: Signals) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let Signals {
            mut term,
            mut hangup,
        } = signals;
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => return Ok(r?),
                _ = term.recv() => return Ok(()),
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let _ = running.reload_configured().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (running, signals);
        tokio::signal::ctrl_c().await?;
        Ok(())
    }
}
