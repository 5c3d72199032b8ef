//! Connection slots as leases in Redis: a mailbox has at most `limit` connections open over all
//! nodes. A [`Lease`] is held for as long as its connection is open (idle ones included: Microsoft
//! counts open connections), renewed by the cluster's maintenance tick, and released when dropped.

use super::{Cluster, View, fallback_count, int, local_millis, lock, scripts};
use std::sync::Arc;
use std::time::Duration;

/// How often a node waiting for a slot asks Redis again (only one waiter per mailbox and node asks;
/// a slot released on this node wakes it at once).
const POLL: Duration = Duration::from_millis(100);

/// The connection slots of one mailbox.
pub struct Slots {
    cluster: Cluster,
    view: Arc<View>,
    limit: usize,
    /// One local waiter at a time asks Redis.
    turn: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("mailbox", &self.view.key)
            .field("limit", &self.limit)
            .finish()
    }
}

/// One open connection's slot; released when dropped.
pub struct Lease {
    cluster: Cluster,
    view: Arc<View>,
    id: u64,
    limit: usize,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("mailbox", &self.view.key)
            .field("id", &self.id)
            .finish()
    }
}

impl Slots {
    pub(super) fn new(cluster: Cluster, view: Arc<View>, limit: usize) -> Self {
        Slots {
            cluster,
            view,
            limit: limit.max(1),
            turn: tokio::sync::Mutex::new(()),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Waits for a slot: from Redis when it answers, else from this node's share. Cancel-safe: a
    /// lease exists as a guard before anything is awaited, so a dropped future leaves nothing held.
    pub async fn acquire(&self) -> Lease {
        let _turn = self.turn.lock().await;
        let nodes = self.cluster.expected_nodes();
        loop {
            let released = self.view.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.cluster.is_up() {
                match self.try_shared().await {
                    Some(Some(lease)) => return lease,
                    Some(None) => {
                        tokio::select! {
                            () = &mut released => {}
                            () = tokio::time::sleep(POLL) => {}
                        }
                        continue;
                    }
                    None => {}
                }
            }
            if self.view.fallback_allows(self.limit, nodes, local_millis()) {
                let lease = self.lease();
                // Rejoining: Redis learns of it at once.
                self.cluster.note_fallback_reservation(&self.view).await;
                return lease;
            }
            tokio::select! {
                () = &mut released => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// A new lease, counted as this node's from now on (until dropped).
    fn lease(&self) -> Lease {
        let id = self.cluster.inner.ids.fetch_add(1, Ordering::Relaxed);
        lock(&self.view.state).own_leases.insert(id);
        Lease {
            cluster: self.cluster.clone(),
            view: self.view.clone(),
            id,
            limit: self.limit,
        }
    }

    /// `Some(Some(lease))`: Redis granted it; `Some(None)`: all slots taken; `None`: Redis
    /// unreachable.
    async fn try_shared(&self) -> Option<Option<Lease>> {
        // The guard first: a renewal meanwhile includes it, and whatever happens to this future
        // (an error, a time-out, cancellation) the lease is released again.
        let lease = self.lease();
        let member = Lease::member(&self.cluster.inner.instance, lease.id);
        let mut invocation = self.cluster.inner.scripts.acquire.prepare_invoke();
        invocation
            .key(scripts::key(&self.view.key, "conns"))
            .key(scripts::key(&self.view.key, "wanted"))
            .arg(&member)
            .arg(self.limit)
            .arg(self.cluster.inner.config.lease_ttl.as_millis() as u64)
            .arg(&self.cluster.inner.instance);
        let local_now = local_millis();
        let reply = super::array(self.cluster.invoke(invocation).await?);
        let granted = reply.first().is_some_and(|v| int(v) == 1);
        let redis_now = reply.get(1).map_or(0, int);
        self.view.observe(
            &self.cluster.inner.instance,
            super::Observed {
                redis_now,
                local_now,
                leases: Some(reply.get(2..).unwrap_or(&[])),
                messages: None,
                recipients_total: None,
                wanted_by: None,
            },
        );
        Some(granted.then_some(lease))
    }
}

use std::sync::atomic::Ordering;

impl Lease {
    pub(super) fn member(instance: &str, id: u64) -> String {
        format!("{instance}:L{id}")
    }

    /// Whether the connection may stay open idle for the next message. With Redis unreachable only
    /// this node's share of the slots stays open, so that the nodes together stay within the limit.
    /// With Redis answering, only while no other node waits for a slot of the mailbox.
    pub fn keep_idle(&self) -> bool {
        if self.cluster.is_up() {
            return !self.view.wanted_elsewhere();
        }
        lock(&self.view.state).own_leases.len()
            <= fallback_count(self.limit, self.cluster.expected_nodes())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        lock(&self.view.state).own_leases.remove(&self.id);
        self.view.released.notify_waiters();
        if self.cluster.inner.mode.load(Ordering::SeqCst) == super::DOWN {
            // Redis is unreachable: the lease expires there by itself.
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let cluster = self.cluster.clone();
        let key = scripts::key(&self.view.key, "conns");
        let member = Lease::member(&cluster.inner.instance, self.id);
        runtime.spawn(async move {
            let Some(mut conn) = cluster.conn() else {
                return;
            };
            let removed: Result<redis::RedisResult<i64>, _> = tokio::time::timeout(
                cluster.inner.config.timeout,
                redis::cmd("ZREM")
                    .arg(key)
                    .arg(member)
                    .query_async(&mut conn),
            )
            .await;
            match removed {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => cluster.down(&e.to_string()),
                Err(_) => cluster.down("no answer to ZREM in time"),
            }
        });
    }
}
