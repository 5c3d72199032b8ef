//! The Lua scripts that keep the shared limits atomic in Redis. Every script reads Redis's own
//! clock (`TIME`), so nodes whose clocks differ still agree on the windows. Keys are per mailbox,
//! with a hash tag so that a Redis Cluster keeps them on one shard:
//!
//! - `smarthost:{<mailbox>}:msgs`  sorted set, one member per message (`<instance>:<id>`), scored
//!   by the moment the transaction ended (ms);
//! - `smarthost:{<mailbox>}:rcpts` sorted set, one member per transaction
//!   (`<instance>:<id>:<recipients>`), scored the same way;
//! - `smarthost:{<mailbox>}:pause` the moment (ms) until which nobody sends as the mailbox, after a
//!   throttling reply (expires by itself);
//! - `smarthost:{<mailbox>}:conns` sorted set of connection leases (`<instance>:L<id>`), scored by
//!   the moment the lease expires unless renewed;
//! - `smarthost:{<mailbox>}:wanted` the instance that found every slot taken, for one second: the
//!   other nodes close their idle connections instead of keeping them for reuse.
//!
//! Every key has a PEXPIRE a little longer than its window or lease, so nothing grows forever.

/// Redis's clock in milliseconds; shared by every script.
const NOW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"#;

/// Reserve one transaction: KEYS msgs, rcpts, pause; ARGV id, message count (0: no limit), message
/// window ms, recipient count (0: no limit), recipient window ms, recipients, in-flight time ms.
/// A granted transaction is scored `now + in-flight time` (it counts in every window until it
/// ended), renewed by its node while in flight and stamped with its end by RESTAMP; a node that
/// dies mid-transaction stops renewing, and the entry ages out like any other.
/// KEYS[4] is the mailbox's `wanted` key (a node waiting for a connection slot).
/// Returns {granted 1/0, wait ms, now, recipients in window, kind, wanted by, msg member, score, ...}.
const RESERVE: &str = r#"
local id = ARGV[1]
local mc, mw = tonumber(ARGV[2]), tonumber(ARGV[3])
local rc, rw = tonumber(ARGV[4]), tonumber(ARGV[5])
local n = tonumber(ARGV[6])
local pending = tonumber(ARGV[7])
local msgs = {}
if mc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - mw)
  msgs = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
end
local rtotal = 0
local rlist = {}
if rc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - rw)
  rlist = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  for i = 1, #rlist, 2 do
    rtotal = rtotal + tonumber(string.match(rlist[i], ':(%d+)$') or '1')
  end
end
local wanted = redis.call('GET', KEYS[4]) or ''
local function reply(ok, wait, kind)
  local out = {ok, wait, now, rtotal, kind, wanted}
  for i = 1, #msgs do out[#out + 1] = msgs[i] end
  return out
end
local paused = tonumber(redis.call('GET', KEYS[3]) or '0')
if paused > now then
  return reply(0, paused - now, 'pause')
end
-- An entry scored in the future is a transaction still in flight: it frees the window only once
-- it ended (and was stamped), so ask again soon.
local function wait_for(score, w)
  if score > now then return 200 end
  return math.max(1, score + w - now)
end
if mc > 0 and #msgs / 2 >= mc then
  local idx = #msgs / 2 - mc
  return reply(0, wait_for(tonumber(msgs[idx * 2 + 2]), mw), 'messages')
end
if rc > 0 then
  local needed = math.min(n, rc)
  if rtotal + needed > rc then
    local freed, wait = 0, 1
    for i = 1, #rlist, 2 do
      freed = freed + tonumber(string.match(rlist[i], ':(%d+)$') or '1')
      wait = wait_for(tonumber(rlist[i + 1]), rw)
      if rtotal - freed + needed <= rc then break end
    end
    return reply(0, wait, 'recipients')
  end
end
if mc > 0 then
  redis.call('ZADD', KEYS[1], now + pending, id)
  redis.call('PEXPIRE', KEYS[1], mw + pending + 60000)
  msgs[#msgs + 1] = id
  msgs[#msgs + 1] = tostring(now + pending)
end
if rc > 0 then
  redis.call('ZADD', KEYS[2], now + pending, id .. ':' .. n)
  redis.call('PEXPIRE', KEYS[2], rw + pending + 60000)
  rtotal = rtotal + n
end
return reply(1, 0, 'ok')
"#;

/// Stamp a reservation with the moment its transaction ended: KEYS msgs, rcpts; ARGV id, recipients.
const RESTAMP: &str = r#"
redis.call('ZADD', KEYS[1], 'XX', now, ARGV[1])
redis.call('ZADD', KEYS[2], 'XX', now, ARGV[1] .. ':' .. ARGV[2])
return now
"#;

/// Nobody sends as the mailbox for a while: KEYS pause; ARGV backoff ms.
const PAUSE: &str = r#"
local backoff = tonumber(ARGV[1])
local untilt = now + backoff
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < untilt then redis.call('SET', KEYS[1], untilt, 'PX', backoff) end
return untilt
"#;

/// Take a connection slot: KEYS conns, wanted; ARGV lease member, limit, ttl ms, this node's
/// instance (written to `wanted` when every slot is taken).
/// Expired leases (a crashed node's) are removed first. Returns {granted 1/0, now, member, expiry, ...}
/// with the leases in force (the new one included).
const ACQUIRE: &str = r#"
local limit, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ok = 0
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
  ok = 1
else
  -- Tell the nodes holding slots idle that someone waits (they close idle connections).
  redis.call('SET', KEYS[2], ARGV[4], 'PX', 1000)
end
local out = {ok, now}
local list = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #list do out[#out + 1] = list[i] end
return out
"#;

/// Renew this node's leases and (when rejoining after an outage) write what it sent meanwhile;
/// return what the other nodes hold. KEYS conns, msgs, rcpts; ARGV ttl ms, message window ms (0:
/// none), recipient window ms (0: none), the node's clock (ms), 1 when rejoining (leases are added;
/// otherwise only renewed, so a lease released meanwhile stays released), then a count and that
/// many lease members, a count and that many (message member, recipient member) pairs of
/// transactions in flight, a count and that many (message member, local stamp) pairs, a count and that many
/// (recipient member, local stamp) pairs.
/// KEYS[4] is the `wanted` key. Returns {now, recipients in window, wanted by, 2 x leases, lease
/// member, expiry, ..., msg member, score, ...}.
const SYNC: &str = r#"
local ttl, mw, rw = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local off = now - tonumber(ARGV[4])
local force = ARGV[5] == '1'
local i = 6
local nl = tonumber(ARGV[i]); i = i + 1
for k = 1, nl do
  if force then
    redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
  else
    redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i])
  end
  i = i + 1
end
if nl > 0 then redis.call('PEXPIRE', KEYS[1], ttl * 2) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
-- Transactions still in flight: their entries stay ahead of the clock.
local np = tonumber(ARGV[i]); i = i + 1
for k = 1, np do
  for _, pair in ipairs({{KEYS[2], ARGV[i]}, {KEYS[3], ARGV[i + 1]}}) do
    local cur = redis.call('ZSCORE', pair[1], pair[2])
    if cur and tonumber(cur) > now then redis.call('ZADD', pair[1], now + ttl, pair[2]) end
  end
  i = i + 2
end
local function push(key, w)
  local count = tonumber(ARGV[i]); i = i + 1
  for k = 1, count do
    local m, s = ARGV[i], tonumber(ARGV[i + 1]) + off
    i = i + 2
    local cur = redis.call('ZSCORE', key, m)
    if not cur or tonumber(cur) < s then redis.call('ZADD', key, s, m) end
  end
  if count > 0 and w > 0 then redis.call('PEXPIRE', key, w + 60000) end
end
push(KEYS[2], mw)
push(KEYS[3], rw)
local rtotal = 0
if rw > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - rw)
  local rlist = redis.call('ZRANGE', KEYS[3], 0, -1)
  for j = 1, #rlist do
    rtotal = rtotal + tonumber(string.match(rlist[j], ':(%d+)$') or '1')
  end
end
local leases = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local out = {now, rtotal, redis.call('GET', KEYS[4]) or '', #leases}
for j = 1, #leases do out[#out + 1] = leases[j] end
if mw > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - mw)
  local msgs = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  for j = 1, #msgs do out[#out + 1] = msgs[j] end
end
return out
"#;

/// The scripts, hashed once (EVALSHA, with EVAL when Redis does not know them yet).
pub struct Scripts {
    pub reserve: redis::Script,
    pub restamp: redis::Script,
    pub pause: redis::Script,
    pub acquire: redis::Script,
    pub sync: redis::Script,
}

impl Scripts {
    pub fn new() -> Self {
        let script = |body: &str| redis::Script::new(&format!("{NOW}{body}"));
        Scripts {
            reserve: script(RESERVE),
            restamp: script(RESTAMP),
            pause: script(PAUSE),
            acquire: script(ACQUIRE),
            sync: script(SYNC),
        }
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

/// The key of `kind` (`msgs`, `rcpts`, `pause`, `conns`) for a mailbox key (`mailbox:user@domain`).
pub fn key(mailbox: &str, kind: &str) -> String {
    format!("smarthost:{{{mailbox}}}:{kind}")
}
