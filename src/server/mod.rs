//! The SMTP listener: accept loop, connection limit, graceful shutdown (after tokio-rs/mini-redis).
//!
//! [`run`] takes already-bound listeners and a shutdown signal, so tests bind `127.0.0.1:0`. On
//! shutdown it stops accepting; sessions waiting for a command are told `421` and closed, sessions
//! in the middle of DATA may finish within [`SHUTDOWN_GRACE`]; then the rest are cut (their messages
//! were never acknowledged, so the clients will send them again).

mod session;

use crate::config::{Limits, ListenerConfig};
use crate::ingest::Ingest;
use crate::route::Router;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
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
}

/// One bound listener with its configuration.
#[derive(Debug)]
pub struct BoundListener {
    pub listener: TcpListener,
    pub config: ListenerConfig,
}

/// Serves every listener until `shutdown` turns true, then drains sessions.
pub async fn run(
    listeners: Vec<BoundListener>,
    context: Arc<ServerContext>,
    shutdown: watch::Receiver<bool>,
) {
    let connections = Arc::new(Semaphore::new(context.limits.max_connections.max(1)));
    let mut sessions = JoinSet::new();
    let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::channel(64);
    let mut acceptors = JoinSet::new();
    for bound in listeners {
        let config = Arc::new(bound.config);
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
                            if tx.send((stream, peer, config.clone())).await.is_err() {
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
                let Some((stream, peer, config)) = next else { break };
                let permit = connections.clone().try_acquire_owned();
                let context = context.clone();
                let shutdown = shutdown.clone();
                sessions.spawn(async move {
                    match permit {
                        Ok(permit) => {
                            session::handle(stream, peer, config, context, shutdown).await;
                            drop(permit);
                        }
                        Err(_) => session::refuse_busy(stream, peer, &context.hostname).await,
                    }
                });
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
