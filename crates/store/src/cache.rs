//! State shared between gateway instances in real time: counters with a time window
//! (rate limits, login attempts), short-lived flags (revoked sessions), and the
//! invalidation bus. In-process when `REDIS_URL` is unset, Redis otherwise.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use deadpool_redis::redis::{self, AsyncCommands};
use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};
use futures_util::StreamExt;
use tokio::sync::{broadcast, mpsc};

use crate::StoreError;

/// `give_back` in Redis: DECR only a live, positive counter (DECR keeps its TTL).
const GIVE_BACK: &str = r"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then return redis.call('DECR', KEYS[1]) end
return 0
";

/// A counter's or slot's name, written on the stack: the relay names one per request
/// (`rpm:7`, `tpm:7:29000000`), and a name that does not fit is kept on the heap.
#[derive(Clone)]
pub struct Name(NameText);

#[derive(Clone)]
enum NameText {
    Inline([u8; 56], u8),
    Heap(String),
}

impl Name {
    pub fn new(text: std::fmt::Arguments<'_>) -> Name {
        use std::io::Write;
        let mut buf = [0_u8; 56];
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        let written = cursor
            .write_fmt(text)
            .ok()
            .and_then(|()| u8::try_from(cursor.position()).ok());
        match written {
            // Only whole `str`s are written, so the bytes are UTF-8.
            Some(len) if std::str::from_utf8(&buf[..usize::from(len)]).is_ok() => {
                Name(NameText::Inline(buf, len))
            }
            _ => Name(NameText::Heap(text.to_string())),
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            NameText::Inline(buf, len) => {
                std::str::from_utf8(&buf[..usize::from(*len)]).unwrap_or("")
            }
            NameText::Heap(s) => s,
        }
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

/// A Redis key written straight into a command from its parts (no `String` per call):
/// `KeyArg(format_args!("{prefix}:c:{name}"))`.
pub struct KeyArg<'a>(pub std::fmt::Arguments<'a>);

impl redis::ToRedisArgs for KeyArg<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        use std::io::Write;
        let mut buf = [0_u8; 128];
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        match cursor.write_fmt(self.0) {
            Ok(()) => {
                let len = usize::try_from(cursor.position()).unwrap_or(0);
                out.write_arg(&buf[..len]);
            }
            // Longer than the buffer (a long prefix).
            Err(_) => out.write_arg(self.0.to_string().as_bytes()),
        }
    }
}

impl redis::ToSingleRedisArg for KeyArg<'_> {}

/// Connections for the relay's hot path (the wallet's reserve and settle): one
/// multiplexed connection per thread, made on first use and dropped after an error that
/// may have broken it.
///
/// The pool pings a connection (`UNWATCH` + `PING`, a round trip) every time it hands
/// one out, and its connections are driven by a task on whichever runtime opened them:
/// a reserve or a settle cost two round trips and a cross-thread hand-off each. Per
/// thread, a command is one round trip driven where it was sent.
#[derive(Clone)]
pub struct RedisLink {
    client: redis::Client,
    /// Tells this link's connections from another's in the thread's cache.
    id: usize,
}

static NEXT_LINK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Tells one cached connection from another (a replacement gets a new tag).
static NEXT_TAG: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    /// (link id, tag, connection) for this thread.
    static LINKS: std::cell::RefCell<Vec<(usize, u64, redis::aio::MultiplexedConnection)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A command's wait, and a connection's, before Redis counts as unreachable.
const LINK_TIMEOUT: Duration = Duration::from_secs(2);

/// Which connection a command ran on, for [`RedisLink::checked`].
#[derive(Clone, Copy, Debug)]
pub struct LinkTag(u64);

impl RedisLink {
    fn new(client: redis::Client) -> Self {
        RedisLink {
            client,
            id: NEXT_LINK.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// This thread's connection (made now if it has none), with its tag.
    pub async fn conn(&self) -> Result<(redis::aio::MultiplexedConnection, LinkTag), StoreError> {
        let cached = LINKS.with(|l| {
            l.borrow()
                .iter()
                .find(|(id, _, _)| *id == self.id)
                .map(|(_, tag, c)| (c.clone(), LinkTag(*tag)))
        });
        if let Some(found) = cached {
            return Ok(found);
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(LINK_TIMEOUT))
            .set_response_timeout(Some(LINK_TIMEOUT));
        // Boxed: connecting is rare, and its future (about 2 KB) would otherwise make
        // every future that awaits a command that large, copied on every move.
        let conn = Box::pin(
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await?;
        let tag = NEXT_TAG.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        LINKS.with(|l| {
            let mut l = l.borrow_mut();
            l.retain(|(id, _, _)| *id != self.id);
            l.push((self.id, tag, conn.clone()));
        });
        Ok((conn, LinkTag(tag)))
    }

    /// Passes a command's result on; after an error that may have broken the
    /// connection (I/O, a drop, a timeout) or that says it reached a node that cannot
    /// serve writes (a replica after a failover), that connection is forgotten and the
    /// next command connects again. Only the connection the command ran on (`tag`) is
    /// forgotten: the task may have moved to another thread since it took it.
    ///
    /// The command that met the broken connection is not sent again (a reserve that
    /// did reach Redis would then hold twice): right after Redis restarts, the first
    /// command on each thread's old connection fails as unavailable (503, retry).
    pub fn checked<T>(&self, tag: LinkTag, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        use redis::{ErrorKind, ServerErrorKind};
        if let Err(e) = &result
            && (e.is_io_error()
                || e.is_connection_dropped()
                || e.is_timeout()
                || e.is_unrecoverable_error()
                || matches!(
                    e.kind(),
                    ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
                ))
        {
            LINKS.with(|l| {
                l.borrow_mut()
                    .retain(|(id, t, _)| !(*id == self.id && *t == tag.0))
            });
        }
        result
    }
}

/// In-process or Redis-backed shared state.
pub enum Shared {
    /// One instance: everything lives in this process.
    Memory(MemoryShared),
    /// Many instances: counters, flags and the bus live in Redis.
    Redis(Box<RedisShared>),
}

/// The in-process backend.
pub struct MemoryShared {
    counters: Mutex<HashMap<String, (i64, Instant)>>,
    /// Slots taken per key: member -> when it lapses.
    slots: Mutex<HashMap<String, HashMap<String, Instant>>>,
    bus: broadcast::Sender<String>,
}

/// Takes a slot of `KEYS[1]` (a sorted set of members by lapse time, Redis's clock)
/// unless `ARGV[1]` are taken: lapsed ones are dropped first. 1 taken, 0 full.
const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
";

/// [`ACQUIRE`], hashed once.
static ACQUIRE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(ACQUIRE));

/// The Redis backend: a pool for commands and a client for the pub/sub connection.
pub struct RedisShared {
    pool: Pool,
    client: redis::Client,
    link: RedisLink,
    prefix: String,
}

impl Shared {
    /// The in-process backend.
    pub fn memory() -> Self {
        let (bus, _) = broadcast::channel(64);
        Shared::Memory(MemoryShared {
            counters: Mutex::new(HashMap::new()),
            slots: Mutex::new(HashMap::new()),
            bus,
        })
    }

    /// Connects to Redis (pool with bounded waits) and checks it with PING.
    /// `prefix` namespaces every key and the bus channel.
    pub async fn redis(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let mut cfg = deadpool_redis::Config::from_url(url);
        let mut pool_cfg = PoolConfig::new(32);
        pool_cfg.timeouts = Timeouts {
            wait: Some(Duration::from_secs(2)),
            create: Some(Duration::from_secs(2)),
            recycle: Some(Duration::from_secs(2)),
        };
        cfg.pool = Some(pool_cfg);
        let pool = cfg
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| StoreError::Config(format!("redis pool: {e}")))?;
        let client = redis::Client::open(url)?;
        let shared = Shared::Redis(Box::new(RedisShared {
            pool,
            link: RedisLink::new(client.clone()),
            client,
            prefix: prefix.to_owned(),
        }));
        shared.ping().await?;
        Ok(shared)
    }

    /// The Redis pool and key prefix, when Redis is configured.
    pub fn redis_pool(&self) -> Option<(&Pool, &str)> {
        match self {
            Shared::Memory(_) => None,
            Shared::Redis(r) => Some((&r.pool, &r.prefix)),
        }
    }

    /// The hot path's per-thread connections, when Redis is configured.
    pub fn redis_link(&self) -> Option<&RedisLink> {
        match self {
            Shared::Memory(_) => None,
            Shared::Redis(r) => Some(&r.link),
        }
    }

    /// Checks the backend answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Shared::Memory(_) => Ok(()),
            Shared::Redis(r) => {
                let mut conn = r.pool.get().await?;
                let _: String = redis::cmd("PING").query_async(&mut conn).await?;
                Ok(())
            }
        }
    }

    /// Adds one to the counter `key` in its current window of `window` length and
    /// returns the new count. The window starts with the first increment.
    pub async fn incr(&self, key: &str, window: Duration) -> Result<i64, StoreError> {
        self.add(key, 1, window).await
    }

    /// Takes one of `limit` slots of `key` for `member`, lapsing after `ttl` (a holder
    /// that died gives its slot back then); false when all are taken.
    pub async fn acquire(
        &self,
        key: &str,
        member: &str,
        limit: u32,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        match self {
            Shared::Memory(m) => {
                let now = Instant::now();
                let mut slots = m.slots.lock().unwrap_or_else(|e| e.into_inner());
                if !slots.contains_key(key) {
                    slots.insert(key.to_owned(), HashMap::new());
                }
                let Some(taken) = slots.get_mut(key) else {
                    return Ok(false);
                };
                taken.retain(|_, until| *until > now);
                if taken.len() >= usize::try_from(limit).unwrap_or(usize::MAX) {
                    return Ok(false);
                }
                taken.insert(member.to_owned(), now + ttl);
                Ok(true)
            }
            Shared::Redis(r) => {
                let (mut conn, tag) = r.link.conn().await?;
                let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
                let mut call = ACQUIRE_SCRIPT.prepare_invoke();
                call.key(KeyArg(format_args!("{}:z:{key}", r.prefix)))
                    .arg(limit)
                    .arg(ms)
                    .arg(member);
                let got: i64 = r.link.checked(tag, call.invoke_async(&mut conn).await)?;
                Ok(got == 1)
            }
        }
    }

    /// Gives back the slot `member` took of `key`.
    pub async fn release(&self, key: &str, member: &str) -> Result<(), StoreError> {
        match self {
            Shared::Memory(m) => {
                let mut slots = m.slots.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(taken) = slots.get_mut(key) {
                    taken.remove(member);
                    if taken.is_empty() {
                        slots.remove(key);
                    }
                }
                Ok(())
            }
            Shared::Redis(r) => {
                let (mut conn, tag) = r.link.conn().await?;
                let mut zrem = redis::cmd("ZREM");
                zrem.arg(KeyArg(format_args!("{}:z:{key}", r.prefix)))
                    .arg(member);
                let _: i64 = r.link.checked(tag, zrem.query_async(&mut conn).await)?;
                Ok(())
            }
        }
    }

    /// Adds `amount` to the counter `key` in its current window of `window` length and
    /// returns the new count. The window starts with the first addition.
    pub async fn add(&self, key: &str, amount: i64, window: Duration) -> Result<i64, StoreError> {
        match self {
            Shared::Memory(m) => {
                let now = Instant::now();
                let mut counters = m.counters.lock().unwrap_or_else(|e| e.into_inner());
                if counters.len() > 100_000 {
                    counters.retain(|_, (_, until)| *until > now);
                }
                if !counters.contains_key(key) {
                    counters.insert(key.to_owned(), (0, now + window));
                }
                let Some(entry) = counters.get_mut(key) else {
                    return Ok(0);
                };
                if entry.1 <= now {
                    *entry = (0, now + window);
                }
                entry.0 += amount;
                Ok(entry.0)
            }
            Shared::Redis(r) => {
                // On the hot path (a key's rpm): the per-thread connection.
                let (mut conn, tag) = r.link.conn().await?;
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .incr(KeyArg(format_args!("{}:c:{key}", r.prefix)), amount)
                    .expire(
                        KeyArg(format_args!("{}:c:{key}", r.prefix)),
                        window.as_secs().max(1) as i64,
                    )
                    .arg("NX")
                    .ignore();
                let (count,): (i64,) = r.link.checked(tag, pipe.query_async(&mut conn).await)?;
                Ok(count)
            }
        }
    }

    /// Reads a counter without changing it (0 when absent or expired).
    pub async fn count(&self, key: &str) -> Result<i64, StoreError> {
        match self {
            Shared::Memory(m) => {
                let counters = m.counters.lock().unwrap_or_else(|e| e.into_inner());
                Ok(counters
                    .get(key)
                    .filter(|(_, until)| *until > Instant::now())
                    .map_or(0, |(n, _)| *n))
            }
            Shared::Redis(r) => {
                // Boxed for the same reason as a link's connect.
                let mut conn = Box::pin(r.pool.get()).await?;
                let mut get = redis::cmd("GET");
                get.arg(KeyArg(format_args!("{}:c:{key}", r.prefix)));
                let n: Option<i64> = get.query_async(&mut conn).await?;
                Ok(n.unwrap_or(0))
            }
        }
    }

    /// Takes back one increment of the counter `key` (a login that succeeded was not a
    /// failure). Never goes below zero, never revives an expired window, and keeps the
    /// window's end.
    pub async fn give_back(&self, key: &str) -> Result<(), StoreError> {
        match self {
            Shared::Memory(m) => {
                let mut counters = m.counters.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((n, until)) = counters.get_mut(key)
                    && *until > Instant::now()
                    && *n > 0
                {
                    *n -= 1;
                }
                Ok(())
            }
            Shared::Redis(r) => {
                let mut conn = r.pool.get().await?;
                let _: i64 = redis::Script::new(GIVE_BACK)
                    .key(format!("{}:c:{key}", r.prefix))
                    .invoke_async(&mut conn)
                    .await?;
                Ok(())
            }
        }
    }

    /// Forgets a counter.
    pub async fn reset(&self, key: &str) -> Result<(), StoreError> {
        match self {
            Shared::Memory(m) => {
                m.counters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(key);
                Ok(())
            }
            Shared::Redis(r) => {
                let mut conn = r.pool.get().await?;
                let _: i64 = conn.del(format!("{}:c:{key}", r.prefix)).await?;
                Ok(())
            }
        }
    }

    /// Tells every instance (this one included) that `topic` changed.
    pub async fn publish(&self, topic: &str) -> Result<(), StoreError> {
        match self {
            Shared::Memory(m) => {
                // No receiver is not an error: nobody needed telling.
                let _ = m.bus.send(topic.to_owned());
                Ok(())
            }
            Shared::Redis(r) => {
                let mut conn = r.pool.get().await?;
                let _: i64 = conn.publish(format!("{}:bus", r.prefix), topic).await?;
                Ok(())
            }
        }
    }

    /// Receives every published topic. For Redis this spawns a task holding the
    /// pub/sub connection, reconnecting after a second when it drops.
    pub fn subscribe(&self) -> mpsc::Receiver<String> {
        let (tx, rx) = mpsc::channel(64);
        match self {
            Shared::Memory(m) => {
                let mut bus = m.bus.subscribe();
                tokio::spawn(async move {
                    loop {
                        match bus.recv().await {
                            Ok(topic) => {
                                if tx.send(topic).await.is_err() {
                                    break;
                                }
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => {
                                if tx.send("all".to_owned()).await.is_err() {
                                    break;
                                }
                            }
                            Err(broadcast::error::RecvError::Closed) => break,
                        }
                    }
                });
            }
            Shared::Redis(r) => {
                let client = r.client.clone();
                let channel = format!("{}:bus", r.prefix);
                tokio::spawn(async move {
                    while !tx.is_closed() {
                        if let Err(e) = pump_redis_bus(&client, &channel, &tx).await {
                            tracing::warn!(error = %e, "invalidation bus disconnected; reconnecting");
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        // Whatever was published while we were away is unknown: reload all.
                        if tx.send("all".to_owned()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        }
        rx
    }
}

async fn pump_redis_bus(
    client: &redis::Client,
    channel: &str,
    tx: &mpsc::Sender<String>,
) -> Result<(), StoreError> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    let mut messages = pubsub.into_on_message();
    while let Some(msg) = messages.next().await {
        let topic: String = msg.get_payload()?;
        if tx.send(topic).await.is_err() {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_too_long_for_the_stack_is_kept_whole() {
        let short = Name::new(format_args!("rpm:{}", 7));
        assert!(matches!(short.0, NameText::Inline(..)));
        assert_eq!(&*short, "rpm:7");
        let long = "x".repeat(80);
        let name = Name::new(format_args!("slot:{long}"));
        assert!(matches!(name.0, NameText::Heap(_)));
        assert_eq!(&*name, format!("slot:{long}"));
        let accented = Name::new(format_args!("é{}", "ü".repeat(40)));
        assert_eq!(&*accented, format!("é{}", "ü".repeat(40)));
    }

    #[test]
    fn a_key_argument_is_one_argument_whatever_its_length() {
        use redis::ToRedisArgs;
        let long = "p".repeat(200);
        for prefix in ["tollgate", long.as_str()] {
            let args = KeyArg(format_args!("{prefix}:c:{}", "rpm:7")).to_redis_args();
            assert_eq!(args, vec![format!("{prefix}:c:rpm:7").into_bytes()]);
        }
    }

    #[tokio::test]
    async fn a_memory_counter_counts_within_its_window_and_restarts_after() {
        let shared = Shared::memory();
        let w = Duration::from_millis(50);
        assert_eq!(shared.incr("k", w).await.unwrap(), 1);
        assert_eq!(shared.incr("k", w).await.unwrap(), 2);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(shared.incr("k", w).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_given_back_increment_lowers_a_live_counter_but_never_below_zero() {
        let shared = Shared::memory();
        let w = Duration::from_secs(60);
        shared.incr("k", w).await.unwrap();
        shared.incr("k", w).await.unwrap();
        shared.give_back("k").await.unwrap();
        assert_eq!(shared.count("k").await.unwrap(), 1);
        shared.give_back("k").await.unwrap();
        shared.give_back("k").await.unwrap();
        shared.give_back("absent").await.unwrap();
        assert_eq!(shared.count("k").await.unwrap(), 0);
        assert_eq!(shared.count("absent").await.unwrap(), 0);
    }
}
