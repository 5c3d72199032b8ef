//! Reading the configuration again while the relay runs (`SIGHUP`, `smarthost reload`).
//!
//! A reload builds everything new first (routes with their transports, listener policies with their
//! certificates read again) and only then puts it in place, so a configuration with errors changes
//! nothing. What it applies is used by sessions accepted and delivery attempts started afterwards;
//! open sessions and attempts in progress finish with what they started with, and no connection is
//! dropped.
//!
//! Applied: routes (router, transports, mailbox throttles; a throttle whose mailbox and limits are
//! unchanged keeps its counts), the queue's retry schedule and bounce settings, `[limits]` except
//! `max_connections`, `[[user]]`s, `[auth_lockout]` (a change starts the counts over), and the
//! policy of each listener whose `address` is unchanged (relay_from, allow/deny, auth flags, limits,
//! TLS settings and certificates). Needs a restart (logged as a warning naming the key, the running
//! value kept): listener addresses added or removed, `data_dir`, `hostname`,
//! `limits.max_connections`, `queue.max_concurrent_deliveries`, `queue.min_free_space`, `[admin]`,
//! `[logs]`.

use crate::clock::Clock;
use crate::config::{Config, load_file};
use crate::deliver::Transporter;
use crate::ingest::Ingest;
use crate::policy::lockout::Lockout;
use crate::policy::users::UserDb;
use crate::queue::Queue;
use crate::route::Router;
use crate::server::{Live, ServerContext};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    pub path: PathBuf,
    pub routes: usize,
    /// Listeners whose policy was replaced.
    pub listeners: usize,
    /// Changed keys that keep their running value until a restart.
    pub restart_needed: Vec<String>,
}

impl fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "configuration reloaded from {}: {} {}, {} {}; open sessions keep their settings until they end",
            self.path.display(),
            self.routes,
            if self.routes == 1 { "route" } else { "routes" },
            self.listeners,
            if self.listeners == 1 {
                "listener"
            } else {
                "listeners"
            },
        )?;
        for key in &self.restart_needed {
            write!(
                f,
                "\n{key} changed: takes effect after a restart (the running value stays)"
            )?;
        }
        Ok(())
    }
}

/// What a reload needs from the running relay.
pub(super) struct Reloader {
    /// The file the relay was started with (`serve --config`); `None`: the built-in configuration.
    pub(super) path: Mutex<Option<PathBuf>>,
    /// The configuration the relay started with: what needs a restart is compared with it. The lock
    /// also makes reloads one at a time.
    pub(super) started: Mutex<Config>,
    /// The `[auth_lockout]` settings in force (a change replaces the lockout table).
    pub(super) lockout_config: Mutex<crate::config::AuthLockout>,
    pub(super) queue: Queue,
    pub(super) live: Arc<Live>,
    pub(super) ingest: Ingest,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) log: crate::logs::LogSink,
}

impl fmt::Debug for Reloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl crate::control::Reload for Reloader {
    fn reload(&self) -> Result<String, String> {
        self.reload_configured().map(|summary| summary.to_string())
    }
}

impl Reloader {
    /// Reloads the file the relay was started with.
    pub(super) fn reload_configured(&self) -> Result<ReloadSummary, String> {
        let path = self
            .path
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match path {
            Some(path) => self.reload(&path),
            None => {
                let message = "configuration not reloaded: this relay was started without --config \
                               (the built-in configuration), so there is no file to read again";
                tracing::warn!("{message}");
                Err(message.to_string())
            }
        }
    }

    /// Reads `path` and applies it; on any error nothing changes and the errors are returned.
    pub(super) fn reload(&self, path: &Path) -> Result<ReloadSummary, String> {
        let started = self.started.lock().unwrap_or_else(PoisonError::into_inner);
        tracing::info!(file = %path.display(), "reading the configuration again");
        let config = load_file(path).map_err(|errors| refuse(errors.to_string()))?;
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        // Build everything first; only then put it in place.
        let transporters = config
            .routes
            .iter()
            .map(|route| {
                Transporter::from_route_logged(route, &started.hostname, &self.log)
                    .map_err(|e| format!("{}: route {}: {e:#}", path.display(), route.name))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(refuse)?;
        let listeners = self
            .live
            .prepare(&config.listeners)
            .map_err(|e| refuse(format!("{}: {e}", path.display())))?;

        let restart_needed = restart_needed(&started, &config);
        let current = self.live.context();
        let mut lockout_config = self
            .lockout_config
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let lockout = if *lockout_config == config.auth_lockout {
            current.lockout.clone()
        } else {
            tracing::info!("auth_lockout changed: failed AUTH attempts are counted anew");
            *lockout_config = config.auth_lockout.clone();
            Arc::new(Lockout::new(config.auth_lockout.clone()))
        };
        let router = Router::new(config.routes.clone());
        let context = ServerContext {
            hostname: current.hostname.clone(),
            limits: config.limits.clone(),
            router: router.clone(),
            ingest: self.ingest.clone(),
            users: Arc::new(UserDb::new(&config.users)),
            lockout,
            clock: self.clock.clone(),
            log: self.log.clone(),
        };
        let summary = ReloadSummary {
            path: path.to_path_buf(),
            routes: config.routes.len(),
            listeners: listeners.len(),
            restart_needed,
        };
        self.queue
            .reload(router, transporters, config.queue.clone());
        self.live.apply(context, listeners);
        for key in &summary.restart_needed {
            tracing::warn!(
                key = %key,
                "configuration reloaded, but {key} changed: takes effect after a restart (the running value stays)"
            );
        }
        tracing::info!(
            file = %path.display(),
            routes = summary.routes,
            listeners = summary.listeners,
            "configuration reloaded: new sessions and delivery attempts use it; open sessions keep their settings"
        );
        Ok(summary)
    }
}

/// Logs every error of a configuration that is refused, and returns them for the caller.
fn refuse(errors: String) -> String {
    for line in errors.lines() {
        tracing::warn!(
            error = %line,
            "configuration not reloaded: the running configuration stays"
        );
    }
    format!(
        "configuration not reloaded: the running configuration stays\n{}",
        errors.trim_end()
    )
}

/// The keys that changed between the running configuration and `new` but apply only at start.
fn restart_needed(running: &Config, new: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    let addresses = |c: &Config| {
        let mut a: Vec<_> = c.listeners.iter().map(|l| l.address).collect();
        a.sort();
        a
    };
    let (old_addrs, new_addrs) = (addresses(running), addresses(new));
    for added in new_addrs.iter().filter(|a| !old_addrs.contains(a)) {
        keys.push(format!("listener {added} (added)"));
    }
    for removed in old_addrs.iter().filter(|a| !new_addrs.contains(a)) {
        keys.push(format!(
            "listener {removed} (removed; it keeps its previous settings)"
        ));
    }
    if running.data_dir != new.data_dir {
        keys.push("data_dir".into());
    }
    if running.hostname != new.hostname {
        keys.push("hostname".into());
    }
    if running.limits.max_connections != new.limits.max_connections {
        keys.push("limits.max_connections".into());
    }
    if running.queue.max_concurrent_deliveries != new.queue.max_concurrent_deliveries {
        keys.push("queue.max_concurrent_deliveries".into());
    }
    if running.queue.min_free_space != new.queue.min_free_space {
        keys.push("queue.min_free_space".into());
    }
    let admin = |c: &Config| {
        (
            c.admin.enabled,
            c.admin.address,
            c.admin.token.as_ref().map(|t| t.expose().to_string()),
        )
    };
    if admin(running) != admin(new) {
        keys.push("[admin]".into());
    }
    if running.logs != new.logs {
        keys.push("[logs]".into());
    }
    let cluster = |c: &Config| {
        c.cluster.as_ref().map(|c| {
            (
                c.redis.clone(),
                c.password.clone(),
                c.expected_nodes,
                c.lease_ttl,
                c.timeout,
            )
        })
    };
    if cluster(running) != cluster(new) || running.node != new.node {
        keys.push("[cluster]".into());
    }
    keys
}
