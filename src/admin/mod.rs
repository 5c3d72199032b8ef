//! The admin HTTP server (issue 6): a versioned JSON API under `/api/v1/`, Prometheus metrics at
//! `/metrics`, and a page for people at `/`.
//!
//! Off unless `[admin] enabled = true`; on loopback (`127.0.0.1:8025`) unless configured otherwise.
//! Everything but the page needs `Authorization: Bearer <token>` (compared in constant time); the page
//! is static and asks for the token itself. Queue and badmail actions go through the same
//! [`ControlHandler`] as the control socket, so the command line and the API behave alike.

mod api;
pub mod metrics;
mod redact;

use crate::config::{AdminConfig, Config, Secret};
use crate::control::ControlHandler;
use crate::ingest::Ingest;
use crate::queue::Queue;
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the API handlers need from the running relay.
pub struct AdminContext {
    pub handler: Arc<ControlHandler>,
    pub queue: Queue,
    pub ingest: Ingest,
    pub config: Arc<Config>,
    /// The SMTP listeners' bound addresses.
    pub listeners: Vec<SocketAddr>,
    pub started: Instant,
    token: Secret,
}

impl AdminContext {
    /// `None` when the configuration has no token (then the server is not started).
    pub fn new(
        handler: Arc<ControlHandler>,
        queue: Queue,
        ingest: Ingest,
        config: Arc<Config>,
        listeners: Vec<SocketAddr>,
    ) -> Option<Self> {
        let token = config.admin.token.clone()?;
        Some(AdminContext {
            handler,
            queue,
            ingest,
            config,
            listeners,
            started: Instant::now(),
            token,
        })
    }
}

/// Binds the admin address when `[admin]` is enabled: a busy port stops the start like a listener's.
pub async fn bind(config: &AdminConfig) -> anyhow::Result<Option<TcpListener>> {
    if !config.enabled {
        return Ok(None);
    }
    let listener = TcpListener::bind(config.address)
        .await
        .with_context(|| format!("cannot listen on {} for [admin]", config.address))?;
    Ok(Some(listener))
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    context: AdminContext,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin API listening");
    }
    let app = api::router(Arc::new(context));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

/// The admin server's bound address and its task, when `listener` (from [`bind`]) is there.
pub type Started = (
    Option<SocketAddr>,
    Option<tokio::task::JoinHandle<std::io::Result<()>>>,
);

/// Starts serving on `listener` (from [`bind`]); nothing when the admin server is not enabled.
pub fn spawn(
    listener: Option<TcpListener>,
    config: Config,
    handler: Arc<ControlHandler>,
    queue: Queue,
    ingest: Ingest,
    listeners: Vec<SocketAddr>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Started> {
    let Some(listener) = listener else {
        return Ok((None, None));
    };
    let addr = listener.local_addr()?;
    let context = AdminContext::new(handler, queue, ingest, Arc::new(config), listeners)
        .context("[admin] is enabled without a token")?;
    Ok((
        Some(addr),
        Some(tokio::spawn(serve(listener, context, shutdown))),
    ))
}

/// Constant-time comparison of the presented token with the configured one (both hashed first, so
/// neither the content nor the length leaks through timing).
fn token_matches(presented: &str, expected: &Secret) -> bool {
    let a = ring::digest::digest(&ring::digest::SHA256, presented.as_bytes());
    let b = ring::digest::digest(&ring::digest::SHA256, expected.expose().as_bytes());
    a.as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        let secret = Secret::new("s3cret-token");
        assert!(token_matches("s3cret-token", &secret));
        assert!(!token_matches("s3cret-tokem", &secret));
        assert!(!token_matches("", &secret));
        assert!(!token_matches("s3cret-token ", &secret));
    }
}
