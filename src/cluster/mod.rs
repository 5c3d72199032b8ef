//! Several relays, one mailbox budget (issue 9): per-mailbox limits shared through Redis.
//!
//! Microsoft counts per mailbox whatever the number of relays, so with `[cluster]` every node asks
//! the same Redis before it sends:
//! - rate limits (messages and recipients per window, the pause after a throttling reply) are Lua
//!   scripts over sorted sets ([`scripts`]): remove what left the window, count, add when under the
//!   limit or answer how long to wait, all in one atomic step, on Redis's clock;
//! - connection slots are leases: members of a sorted set scored by their expiry, taken atomically
//!   (remove expired, count, add), renewed every third of `lease_ttl` while the connection is open,
//!   removed when it closes. A node that crashes stops renewing: its slots free by themselves.
//!
//! Redis unreachable (an error, or no answer within `timeout`): the node falls back to its own
//! share of each limit, `limit / expected_nodes` (at least 1), and to what the other nodes were last
//! seen holding; a warning is logged once, `smarthost_cluster_redis_up` turns 0 and
//! `smarthost_cluster_fallbacks_total` counts the switch. Nothing fails because of Redis: mail over a
//! limit waits as it always does. When Redis answers again the node writes its open connections and
//! the messages it sent meanwhile into Redis, waits two maintenance ticks so that the other nodes do
//! the same, and then resumes the shared limits (logged).
//!
//! Each node keeps its own spool and queue; only limits are shared.

mod scripts;
mod slots;

pub use slots::{Lease, Slots};

use crate::config::{ClusterConfig, Config, MailboxLimits, Rate, RouteConfig, Transport};
use crate::deliver::Transporter;
use crate::deliver::throttle::{MailboxThrottle, mailbox_key};
use redis::Value;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

const UP: u8 = 0;
const DOWN: u8 = 1;
const REJOINING: u8 = 2;

/// A handle to the shared limits; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("redis", &self.inner.config.redis.display())
            .field("node", &self.inner.node)
            .field("mode", &self.mode_name())
            .finish()
    }
}

struct Inner {
    config: ClusterConfig,
    node: String,
    /// `node:random`: this process's name in Redis members, so a restarted node never mistakes
    /// the leases of its previous life for its own.
    instance: String,
    scripts: scripts::Scripts,
    conn: Mutex<Option<ConnectionManager>>,
    mode: AtomicU8,
    rejoined_at: Mutex<Option<Instant>>,
    views: Mutex<HashMap<String, Arc<View>>>,
    slots: Mutex<HashMap<String, Arc<Slots>>>,
    ids: AtomicU64,
    tick: Duration,
}

/// What this node knows about one mailbox: its own recent transactions (the fallback window, at
/// `limit / expected_nodes`), its open connections, and what the other nodes held when last seen.
pub struct View {
    key: String,
    state: Mutex<ViewState>,
    /// Wakes a node-local waiter for a connection slot when one of ours is released.
    released: tokio::sync::Notify,
}

struct ViewState {
    /// This node's window with the fallback limits; also records what Redis granted.
    local: Arc<MailboxThrottle>,
    limits: MailboxLimits,
    /// Redis's clock minus ours (ms).
    offset: i64,
    /// The other nodes' messages in the window (Redis time), oldest first.
    others_messages: Vec<u64>,
    others_recipients: u64,
    /// The other nodes' leases' expiries (Redis time).
    others_leases: Vec<u64>,
    own_leases: BTreeSet<u64>,
    /// Another node found every connection slot taken, until this moment (our clock): idle
    /// connections close rather than wait for reuse.
    wanted_until: u64,
    /// This node's shared reservations in flight (id → recipients): renewed in Redis until stamped.
    pending: BTreeMap<u64, u32>,
}

impl fmt::Debug for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("View").field("key", &self.key).finish()
    }
}

/// What one reply of Redis said about a mailbox (`None`: the reply did not say).
struct Observed<'a> {
    redis_now: i64,
    local_now: u64,
    leases: Option<&'a [Value]>,
    messages: Option<&'a [Value]>,
    recipients_total: Option<i64>,
    wanted_by: Option<&'a Value>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn local_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl View {
    /// The node's own window (fallback limits).
    pub fn local(&self) -> Arc<MailboxThrottle> {
        lock(&self.state).local.clone()
    }

    /// The other nodes' messages still in a window of `window` ms ([`crate::config::Rate::window_millis`])
    /// at `now` (our clock), oldest first.
    pub fn others_messages(&self, now: u64, window: u64) -> Vec<u64> {
        let state = lock(&self.state);
        state
            .others_messages
            .iter()
            .map(|&at| (at as i64 - state.offset).max(0) as u64)
            .filter(|&at| at + window > now)
            .collect()
    }

    /// The other nodes' recipients in the recipient window when last seen.
    pub fn others_recipients(&self) -> u64 {
        lock(&self.state).others_recipients
    }

    fn own_member(instance: &str, id: u64) -> String {
        format!("{instance}:{id}")
    }

    /// Takes what Redis answered: its clock, the leases and the messages in the window.
    fn observe(&self, instance: &str, seen: Observed<'_>) {
        let Observed {
            redis_now,
            local_now,
            leases,
            messages,
            recipients_total,
            wanted_by,
        } = seen;
        let own = format!("{instance}:");
        let wanted = wanted_by
            .map(text)
            .filter(|by| !by.is_empty() && by != instance);
        let pairs = |list: &[Value]| -> Vec<(String, u64)> {
            list.chunks(2)
                .filter(|pair| pair.len() == 2)
                .map(|pair| (text(&pair[0]), int(&pair[1]).max(0) as u64))
                .filter(|(member, _)| !member.starts_with(&own))
                .collect()
        };
        let mut state = lock(&self.state);
        if wanted.is_some() {
            state.wanted_until = local_now + 1000;
        }
        if redis_now > 0 {
            state.offset = redis_now - local_now as i64;
        }
        if let Some(leases) = leases {
            state.others_leases = pairs(leases).into_iter().map(|(_, at)| at).collect();
        }
        if let Some(messages) = messages {
            let mut others: Vec<u64> = pairs(messages).into_iter().map(|(_, at)| at).collect();
            others.sort_unstable();
            state.others_messages = others;
        }
        if let Some(total) = recipients_total {
            let (_, own_recipients) = state.local.entries(local_now);
            let own_sum: i64 = own_recipients.iter().map(|e| e.2 as i64).sum();
            state.others_recipients = (total - own_sum).max(0) as u64;
        }
    }

    /// Whether another node is waiting for a connection slot of this mailbox.
    pub(crate) fn wanted_elsewhere(&self) -> bool {
        lock(&self.state).wanted_until > local_millis()
    }

    /// A shared reservation ended (or was abandoned): no longer renewed.
    pub(crate) fn forget_pending(&self, id: u64) {
        lock(&self.state).pending.remove(&id);
    }

    /// Whether this node may open one more connection by itself (Redis unreachable): fewer than
    /// its share, and the other nodes' last known leases leave room.
    fn fallback_allows(&self, limit: usize, nodes: u32, now: u64) -> bool {
        let state = lock(&self.state);
        let own = state.own_leases.len();
        let others = state
            .others_leases
            .iter()
            .filter(|&&expiry| (expiry as i64 - state.offset) > now as i64)
            .count();
        own < fallback_count(limit, nodes) && own + others < limit
    }
}

/// `limit / nodes`, rounded down, at least 1.
pub fn fallback_count(limit: usize, nodes: u32) -> usize {
    (limit / nodes.max(1) as usize).max(1)
}

/// Each rate of `limits` divided by `nodes` (rounded down, at least 1).
pub fn fallback_limits(limits: &MailboxLimits, nodes: u32) -> MailboxLimits {
    let divide = |rate: Option<Rate>| {
        rate.map(|r| Rate {
            count: (r.count / nodes.max(1)).max(1),
            per: r.per,
        })
    };
    MailboxLimits {
        message_rate: divide(limits.message_rate),
        recipient_rate: divide(limits.recipient_rate),
        ..limits.clone()
    }
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        Value::Double(d) => *d as i64,
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .map_or(0, |f| f as i64),
        Value::SimpleString(s) => s.parse::<f64>().map_or(0, |f| f as i64),
        _ => 0,
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

fn array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        _ => Vec::new(),
    }
}

/// The redis crate's connection description for `config` (the password from `password_env` or
/// `password_file`).
fn connection_info(config: &ClusterConfig) -> redis::ConnectionInfo {
    let url = &config.redis;
    let addr = if url.tls {
        redis::ConnectionAddr::TcpTls {
            host: url.host.clone(),
            port: url.port,
            insecure: false,
            tls_params: None,
        }
    } else {
        redis::ConnectionAddr::Tcp(url.host.clone(), url.port)
    };
    redis::ConnectionInfo {
        addr,
        redis: redis::RedisConnectionInfo {
            db: url.db,
            username: url.username.clone(),
            password: config.password.as_ref().map(|p| p.expose().to_string()),
            ..Default::default()
        },
    }
}

/// A connection to Redis within `timeout` (twice it for TLS and AUTH), answering PING.
async fn connect(config: &ClusterConfig) -> Result<ConnectionManager, String> {
    let client = redis::Client::open(connection_info(config)).map_err(|e| e.to_string())?;
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(config.timeout)
        .set_response_timeout(config.timeout)
        .set_number_of_retries(1)
        .set_max_delay(500);
    let mut conn = tokio::time::timeout(
        config.timeout * 2,
        ConnectionManager::new_with_config(client, manager_config),
    )
    .await
    .map_err(|_| {
        format!(
            "no answer within {}",
            humantime::format_duration(config.timeout * 2)
        )
    })?
    .map_err(|e| e.to_string())?;
    ping(&mut conn, config.timeout).await?;
    Ok(conn)
}

async fn ping(conn: &mut ConnectionManager, timeout: Duration) -> Result<(), String> {
    let pong: redis::RedisResult<String> =
        tokio::time::timeout(timeout, redis::cmd("PING").query_async(conn))
            .await
            .map_err(|_| format!("no answer within {}", humantime::format_duration(timeout)))?;
    pong.map(|_| ()).map_err(|e| e.to_string())
}

impl Cluster {
    /// Connects (or notes that Redis is unreachable: fallback limits until it answers) and starts
    /// the maintenance task (lease renewal, reconnection). Needs a Tokio runtime.
    pub async fn start(config: &ClusterConfig, node: &str) -> Cluster {
        let instance = format!("{node}:{:08x}", rand::random::<u32>());
        let tick = (config.lease_ttl / 3).clamp(Duration::from_millis(200), Duration::from_secs(1));
        let cluster = Cluster {
            inner: Arc::new(Inner {
                config: config.clone(),
                node: node.to_string(),
                instance,
                scripts: scripts::Scripts::new(),
                conn: Mutex::new(None),
                mode: AtomicU8::new(DOWN),
                rejoined_at: Mutex::new(None),
                views: Mutex::default(),
                slots: Mutex::default(),
                ids: AtomicU64::new(0),
                tick,
            }),
        };
        let metrics = crate::admin::metrics::metrics();
        metrics.cluster_configured.store(true, Ordering::Relaxed);
        match connect(config).await {
            Ok(conn) => {
                *lock(&cluster.inner.conn) = Some(conn);
                cluster.inner.mode.store(UP, Ordering::SeqCst);
                metrics.cluster_redis_up.store(1, Ordering::Relaxed);
                tracing::info!(redis = %config.redis, node, "shared mailbox limits through Redis");
            }
            Err(reason) => {
                metrics.cluster_redis_up.store(0, Ordering::Relaxed);
                metrics.cluster_fallbacks.inc();
                tracing::warn!(
                    redis = %config.redis,
                    %reason,
                    "Redis unreachable: running on fallback limits (each limit / {} expected nodes) until it answers",
                    config.expected_nodes
                );
            }
        }
        tokio::spawn(maintain(Arc::downgrade(&cluster.inner)));
        cluster
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    pub fn expected_nodes(&self) -> u32 {
        self.inner.config.expected_nodes
    }

    /// Shared limits in force (Redis answers).
    pub fn is_up(&self) -> bool {
        self.inner.mode.load(Ordering::SeqCst) == UP
    }

    /// `shared`, `fallback` or `rejoining`.
    pub fn mode_name(&self) -> &'static str {
        match self.inner.mode.load(Ordering::SeqCst) {
            UP => "shared",
            REJOINING => "rejoining",
            _ => "fallback",
        }
    }

    /// The Redis URL as people may see it (never a password).
    pub fn redis_display(&self) -> String {
        self.inner.config.redis.display()
    }

    /// The shared view of a mailbox (created at first use; its fallback window follows `limits`:
    /// new limits start a new window).
    pub fn view(&self, key: &str, limits: &MailboxLimits) -> Arc<View> {
        self.view_with(key, limits, true)
    }

    fn view_with(&self, key: &str, limits: &MailboxLimits, update: bool) -> Arc<View> {
        let mut views = lock(&self.inner.views);
        let nodes = self.inner.config.expected_nodes;
        let fresh_local = || {
            Arc::new(MailboxThrottle::with_first_id(
                key.to_string(),
                fallback_limits(limits, nodes),
                self.inner.ids.fetch_add(1 << 40, Ordering::Relaxed),
            ))
        };
        if let Some(view) = views.get(key) {
            let mut state = lock(&view.state);
            if update && state.limits != *limits {
                state.limits = limits.clone();
                state.local = fresh_local();
            }
            drop(state);
            return view.clone();
        }
        let view = Arc::new(View {
            key: key.to_string(),
            state: Mutex::new(ViewState {
                local: fresh_local(),
                limits: limits.clone(),
                offset: 0,
                others_messages: Vec::new(),
                others_recipients: 0,
                others_leases: Vec::new(),
                own_leases: BTreeSet::new(),
                pending: BTreeMap::new(),
                wanted_until: 0,
            }),
            released: tokio::sync::Notify::new(),
        });
        views.insert(key.to_string(), view.clone());
        view
    }

    /// The connection slots of a mailbox, `limit` at most over all nodes (the smallest limit of
    /// the routes that send as it).
    pub fn slots(&self, key: &str, limits: &MailboxLimits, limit: usize) -> Arc<Slots> {
        let mut all = lock(&self.inner.slots);
        if let Some(slots) = all.get(key)
            && slots.limit() <= limit
        {
            return slots.clone();
        }
        // The rate limits of the view are the throttle's business (`view`): not changed here.
        let view = self.view_with(key, limits, false);
        let slots = Arc::new(Slots::new(self.clone(), view, limit));
        all.insert(key.to_string(), slots.clone());
        slots
    }

    /// Gives every SMTP and Graph transport of `routes` its mailbox's shared connection (Graph:
    /// request) slots.
    pub fn attach(&self, routes: &[RouteConfig], transporters: &[Arc<Transporter>]) {
        for (route, transporter) in routes.iter().zip(transporters) {
            let key = mailbox_key(route);
            match (&route.transport, transporter.as_ref()) {
                (Transport::Smtp(smtp), Transporter::Smtp(transport)) => {
                    transport.join_cluster(self.slots(&key, &route.limits, smtp.max_connections));
                }
                // Graph requests are counted apart from SMTP connections of the same mailbox.
                (Transport::Graph(graph), Transporter::Graph(transport)) => {
                    transport.join_cluster(self.slots(
                        &format!("graph-{key}"),
                        &route.limits,
                        graph.max_connections,
                    ));
                }
                _ => {}
            }
        }
    }

    fn conn(&self) -> Option<ConnectionManager> {
        lock(&self.inner.conn).clone()
    }

    /// Runs one script; `None` (and fallback mode) when Redis fails or does not answer in time.
    async fn invoke(&self, invocation: redis::ScriptInvocation<'_>) -> Option<Value> {
        let mut conn = self.conn()?;
        let result = tokio::time::timeout(
            self.inner.config.timeout,
            invocation.invoke_async::<Value>(&mut conn),
        )
        .await;
        match result {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                self.down(&e.to_string());
                None
            }
            Err(_) => {
                self.down(&format!(
                    "no answer within {}",
                    humantime::format_duration(self.inner.config.timeout)
                ));
                None
            }
        }
    }

    /// Redis failed: fallback limits from now on (logged once per outage).
    fn down(&self, reason: &str) {
        let before = self.inner.mode.swap(DOWN, Ordering::SeqCst);
        if before != DOWN {
            let metrics = crate::admin::metrics::metrics();
            metrics.cluster_redis_up.store(0, Ordering::Relaxed);
            metrics.cluster_fallbacks.inc();
            tracing::warn!(
                redis = %self.inner.config.redis,
                %reason,
                "Redis unreachable: running on fallback limits (each limit / {} expected nodes) until it answers again",
                self.inner.config.expected_nodes
            );
        }
    }

    /// Asks Redis for one transaction of `recipients`: `Some(Ok)` granted, `Some(Err((wait ms,
    /// kind)))` over a limit, `None` Redis unreachable.
    pub(crate) async fn reserve(
        &self,
        view: &View,
        limits: &MailboxLimits,
        id: u64,
        recipients: u32,
    ) -> Option<Result<(), (u64, String)>> {
        let (mc, mw) = limits
            .message_rate
            .map_or((0, 0), |r| (r.count, r.window_millis()));
        let (rc, rw) = limits
            .recipient_rate
            .map_or((0, 0), |r| (r.count, r.window_millis()));
        let mut invocation = self.inner.scripts.reserve.prepare_invoke();
        invocation
            .key(scripts::key(&view.key, "msgs"))
            .key(scripts::key(&view.key, "rcpts"))
            .key(scripts::key(&view.key, "pause"))
            .key(scripts::key(&view.key, "wanted"))
            .arg(View::own_member(&self.inner.instance, id))
            .arg(mc)
            .arg(mw)
            .arg(rc)
            .arg(rw)
            .arg(recipients)
            .arg(self.inner.config.lease_ttl.as_millis() as u64);
        let local_now = local_millis();
        // In flight from now on (renewed by the maintenance tick until stamped); recorded before
        // asking, so that a renewal never misses it.
        lock(&view.state).pending.insert(id, recipients);
        let Some(reply) = self.invoke(invocation).await else {
            view.forget_pending(id);
            return None;
        };
        let reply = array(reply);
        if reply.len() < 6 {
            self.down("unexpected reply to the reserve script");
            return None;
        }
        view.observe(
            &self.inner.instance,
            Observed {
                redis_now: int(&reply[2]),
                local_now,
                leases: None,
                messages: Some(&reply[6..]),
                recipients_total: (rc > 0).then(|| int(&reply[3])),
                wanted_by: Some(&reply[5]),
            },
        );
        if int(&reply[0]) == 1 {
            Some(Ok(()))
        } else {
            view.forget_pending(id);
            Some(Err((int(&reply[1]).max(1) as u64, text(&reply[4]))))
        }
    }

    /// Stamps a shared reservation again with Redis's time now (the transaction ended).
    pub(crate) async fn restamp(&self, view: &View, id: u64, recipients: u32) {
        view.forget_pending(id);
        if !self.is_up() {
            // Its entry ages out in Redis by itself.
            return;
        }
        let mut invocation = self.inner.scripts.restamp.prepare_invoke();
        invocation
            .key(scripts::key(&view.key, "msgs"))
            .key(scripts::key(&view.key, "rcpts"))
            .arg(View::own_member(&self.inner.instance, id))
            .arg(recipients);
        let _ = self.invoke(invocation).await;
    }

    /// Every node pauses the mailbox for `backoff` (after a throttling reply). In the background.
    pub(crate) fn pause(&self, view: &Arc<View>, backoff: Duration) {
        if !self.is_up() {
            return;
        }
        let cluster = self.clone();
        let key = scripts::key(&view.key, "pause");
        tokio::spawn(async move {
            let mut invocation = cluster.inner.scripts.pause.prepare_invoke();
            invocation.key(key).arg(backoff.as_millis().max(1) as u64);
            let _ = cluster.invoke(invocation).await;
        });
    }

    /// A transaction granted by the fallback limits: written to Redis at once while rejoining.
    pub(crate) async fn note_fallback_reservation(&self, view: &View) {
        if self.inner.mode.load(Ordering::SeqCst) == REJOINING {
            self.sync_view(view, true).await;
        }
    }

    /// Renews this node's leases of `view` (with `rejoining`: adds them, and writes its recent
    /// messages), and learns what the other nodes hold.
    async fn sync_view(&self, view: &View, rejoining: bool) -> bool {
        let local_now = local_millis();
        let (local, limits, leases, pending) = {
            let state = lock(&view.state);
            (
                state.local.clone(),
                state.limits.clone(),
                state.own_leases.iter().copied().collect::<Vec<_>>(),
                state
                    .pending
                    .iter()
                    .map(|(&id, &n)| (id, n))
                    .collect::<Vec<_>>(),
            )
        };
        let mw = limits.message_rate.map_or(0, |r| r.window_millis());
        let rw = limits.recipient_rate.map_or(0, |r| r.window_millis());
        let instance = &self.inner.instance;
        let mut invocation = self.inner.scripts.sync.prepare_invoke();
        invocation
            .key(scripts::key(&view.key, "conns"))
            .key(scripts::key(&view.key, "msgs"))
            .key(scripts::key(&view.key, "rcpts"))
            .key(scripts::key(&view.key, "wanted"))
            .arg(self.inner.config.lease_ttl.as_millis() as u64)
            .arg(mw)
            .arg(rw)
            .arg(local_now)
            .arg(if rejoining { 1 } else { 0 })
            .arg(leases.len());
        for id in &leases {
            invocation.arg(Lease::member(instance, *id));
        }
        invocation.arg(pending.len());
        for (id, n) in &pending {
            let member = View::own_member(instance, *id);
            invocation.arg(&member).arg(format!("{member}:{n}"));
        }
        // Transactions still in flight are written once they ended (a later tick).
        let (messages, recipients) = if rejoining {
            let (mut messages, mut recipients) = local.entries(local_now);
            messages.retain(|&(_, at)| at <= local_now);
            recipients.retain(|&(_, at, _)| at <= local_now);
            (messages, recipients)
        } else {
            (Vec::new(), Vec::new())
        };
        invocation.arg(messages.len());
        for (id, at) in &messages {
            invocation.arg(View::own_member(instance, *id)).arg(*at);
        }
        invocation.arg(recipients.len());
        for (id, at, n) in &recipients {
            invocation
                .arg(format!("{}:{n}", View::own_member(instance, *id)))
                .arg(*at);
        }
        let Some(reply) = self.invoke(invocation).await else {
            return false;
        };
        let reply = array(reply);
        if reply.len() < 4 {
            self.down("unexpected reply to the sync script");
            return false;
        }
        let lease_values = (int(&reply[3]).max(0) as usize).min(reply.len() - 4);
        view.observe(
            instance,
            Observed {
                redis_now: int(&reply[0]),
                local_now,
                leases: Some(&reply[4..4 + lease_values]),
                messages: (mw > 0).then(|| &reply[4 + lease_values..]),
                recipients_total: (rw > 0).then(|| int(&reply[1])),
                wanted_by: Some(&reply[2]),
            },
        );
        true
    }

    /// One maintenance tick over every mailbox.
    async fn sync_all(&self, rejoining: bool) -> bool {
        let views: Vec<Arc<View>> = lock(&self.inner.views).values().cloned().collect();
        for view in views {
            if !self.sync_view(&view, rejoining).await {
                return false;
            }
        }
        true
    }

    /// Down: a new connection, or the old one answering PING again.
    async fn reconnect(&self) -> bool {
        if let Some(mut conn) = self.conn() {
            return ping(&mut conn, self.inner.config.timeout).await.is_ok();
        }
        match connect(&self.inner.config).await {
            Ok(conn) => {
                *lock(&self.inner.conn) = Some(conn);
                true
            }
            Err(_) => false,
        }
    }

    async fn tick(&self) {
        match self.inner.mode.load(Ordering::SeqCst) {
            UP => {
                self.sync_all(false).await;
            }
            DOWN => {
                // Still down while trying: a Redis that answers PING but refuses the scripts (a
                // read-only replica, say) keeps the node on fallback limits without a log line a
                // second.
                if !self.reconnect().await || !self.sync_all(true).await {
                    return;
                }
                *lock(&self.inner.rejoined_at) = Some(Instant::now());
                self.inner.mode.store(REJOINING, Ordering::SeqCst);
                tracing::info!(
                    redis = %self.inner.config.redis,
                    "Redis answers again: this node's connections and recent messages are written to it; shared limits resume shortly"
                );
            }
            _ => {
                if !self.sync_all(true).await {
                    return;
                }
                let since = lock(&self.inner.rejoined_at).unwrap_or_else(Instant::now);
                if since.elapsed() >= self.inner.tick * 2
                    && self
                        .inner
                        .mode
                        .compare_exchange(REJOINING, UP, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                {
                    crate::admin::metrics::metrics()
                        .cluster_redis_up
                        .store(1, Ordering::Relaxed);
                    tracing::info!(
                        redis = %self.inner.config.redis,
                        "shared limits resumed: Redis is reachable again"
                    );
                }
            }
        }
    }
}

/// Renews leases every tick, reconnects when Redis was lost; ends with the cluster.
async fn maintain(inner: Weak<Inner>) {
    loop {
        let Some(tick) = inner.upgrade().map(|i| i.tick) else {
            return;
        };
        tokio::time::sleep(tick).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        Cluster { inner }.tick().await;
    }
}

/// One line of `smarthost doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoctorCheck {
    /// `true`: fine. `false`: needs attention (delivery goes on regardless).
    pub ok: bool,
    pub verdict: String,
    pub detail: String,
}

/// Whether the shared limits work: Redis reachable (with TLS and password as configured), or what
/// the relay does without it. Nothing when `[cluster]` is not configured.
pub async fn doctor_check(config: &Config) -> Vec<DoctorCheck> {
    let Some(cluster) = &config.cluster else {
        return Vec::new();
    };
    let url = cluster.redis.display();
    let fallbacks: Vec<String> = config
        .routes
        .iter()
        .filter_map(|route| {
            let rate = route.limits.message_rate?;
            let share = fallback_limits(&route.limits, cluster.expected_nodes).message_rate?;
            Some(format!(
                "route {}: {}/{} messages → {}/{} on each node",
                route.name,
                rate.count,
                humantime::format_duration(rate.per),
                share.count,
                humantime::format_duration(share.per)
            ))
        })
        .collect();
    match connect(cluster).await {
        Ok(mut conn) => {
            let time: redis::RedisResult<Vec<String>> =
                tokio::time::timeout(cluster.timeout, redis::cmd("TIME").query_async(&mut conn))
                    .await
                    .unwrap_or_else(|_| {
                        Err(redis::RedisError::from((
                            redis::ErrorKind::IoError,
                            "no answer in time",
                        )))
                    });
            let detail = match time {
                Ok(_) => format!(
                    "node {} shares per-mailbox limits with the other nodes using {url}",
                    config.node
                ),
                Err(e) => format!("Redis answered PING but not TIME: {e}"),
            };
            vec![DoctorCheck {
                ok: true,
                verdict: format!("shared limits via {url}: OK"),
                detail,
            }]
        }
        Err(reason) => vec![DoctorCheck {
            ok: false,
            verdict: format!(
                "Redis unreachable: running on fallback limits (limit/{})",
                cluster.expected_nodes
            ),
            detail: format!(
                "{url}: {reason}. Delivery goes on with each limit divided by expected_nodes = {}{}",
                cluster.expected_nodes,
                if fallbacks.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", fallbacks.join("; "))
                }
            ),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_divides_and_never_reaches_zero() {
        assert_eq!(fallback_count(3, 2), 1);
        assert_eq!(fallback_count(2, 2), 1);
        assert_eq!(fallback_count(1, 3), 1);
        assert_eq!(fallback_count(10, 3), 3);
        let limits = MailboxLimits {
            message_rate: Some(Rate {
                count: 30,
                per: Duration::from_secs(60),
            }),
            recipient_rate: Some(Rate {
                count: 1,
                per: Duration::from_secs(86_400),
            }),
            ..MailboxLimits::default()
        };
        let share = fallback_limits(&limits, 4);
        assert_eq!(share.message_rate.unwrap().count, 7);
        assert_eq!(share.recipient_rate.unwrap().count, 1);
        assert_eq!(share.recipients_per_message, limits.recipients_per_message);
    }

    #[tokio::test]
    async fn doctor_says_fallback_when_redis_is_unreachable() {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let text = format!(
            "[cluster]\nredis = \"redis://127.0.0.1:{port}/0\"\nnode = \"a\"\nexpected_nodes = 3\n\
             [[listener]]\naddress = \"127.0.0.1:2525\"\n[[route]]\nname = \"r\"\ndomains = [\"*\"]\n\
             transport = \"drop\"\n[route.limits]\nmessage_rate = \"30/1m\"\n"
        );
        let config = crate::config::load_str(&text, "t.toml").unwrap();
        let checks = doctor_check(&config).await;
        assert_eq!(checks.len(), 1);
        assert!(!checks[0].ok);
        assert_eq!(
            checks[0].verdict,
            "Redis unreachable: running on fallback limits (limit/3)"
        );
        assert!(
            checks[0]
                .detail
                .contains("route r: 30/1m messages → 10/1m on each node"),
            "{}",
            checks[0].detail
        );
    }
}
