//! Wallets: the admission authority. Each account (a user, or a key with a credit limit)
//! has a `limit` (its durable balance as last committed, with that commit's revision)
//! and `held` (live reservations plus charges settled but not yet committed); what it
//! may still spend is `limit - held`. Reserve, settle and release are single atomic
//! operations: under a lock in process, or one Lua script in Redis shared by every
//! instance.
//!
//! The counter may only ever be more conservative than the database. Two rules keep it
//! so, whatever crashes: `limit` is never moved by a delta, only *set* to a database
//! state together with its revision (`users.rev`, `api_keys.rev`), and a newer revision
//! always wins, so a lost, late or repeated update cannot leave it above the truth; and
//! every amount in `held` belongs to a lease, removed at most once, so a hold given back
//! twice (by its instance and by the instance that reclaimed it) counts once. Counters
//! are set from the database at start and every [`REFRESH`], and before the holds of a
//! dead instance are reclaimed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_redis::Pool;
use deadpool_redis::redis::{self, Script};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect};
use store::Shared;
use store::entities::{api_key, user};

use crate::BillingError;
use crate::turns::Turns;

/// How often every counter is set again from the database.
pub const REFRESH: Duration = Duration::from_secs(10);

/// Waits between tries of following a commit the wallet could not take at once.
pub const RETRIES: [Duration; 4] = [
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(2),
    Duration::from_secs(5),
];

/// Whose money an operation concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Account {
    User(i64),
    /// A key with a credit limit; keys without one have no account.
    Key(i64),
}

/// An account's committed state in the database: what it may spend, at a revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Synced {
    pub account: Account,
    /// The balance (user) or `credit_limit - used` (key).
    pub limit: i64,
    /// The row's `rev` after the change that produced `limit`.
    pub rev: i64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    limit: i64,
    held: i64,
    rev: i64,
}

impl Slot {
    fn sync(&mut self, limit: i64, rev: i64) {
        if rev > self.rev {
            self.limit = limit;
            self.rev = rev;
        }
    }
}

/// The link a hot-path command ran on, to report its result to.
struct HotLink<'a> {
    link: &'a store::RedisLink,
    tag: store::cache::LinkTag,
}

impl HotLink<'_> {
    fn checked<T>(&self, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        self.link.checked(self.tag, result)
    }
}

/// A hold whose charge the writer committed, for [`Wallet::flushed_many`].
#[derive(Clone, Copy, Debug)]
pub struct Committed {
    pub user_id: i64,
    /// The key's account, when the key has a credit limit.
    pub key_id: Option<i64>,
    pub lease: u64,
    pub pending: i64,
}

/// Money reserved for one request, to be settled or released exactly once.
#[derive(Debug)]
#[must_use = "a hold must be settled or released"]
pub struct Hold {
    pub user_id: i64,
    /// Set when the key has a credit limit.
    pub key_id: Option<i64>,
    pub amount: i64,
    /// This hold's lease in Redis (what a dead instance's holds are reclaimed by).
    pub lease: u64,
}

enum Backend {
    Memory(Mutex<HashMap<Account, Slot>>),
    Redis {
        pool: Pool,
        prefix: String,
        scripts: Box<Scripts>,
    },
}

/// The Lua scripts, hashed once.
struct Scripts {
    repost: Script,
    reserve: Script,
    settle: Script,
    flushed: Script,
    sync: Script,
    reclaim: Script,
}

/// The admission authority for every account.
pub struct Wallet {
    /// Redis: the hot path's per-thread connections (reserve, settle, release).
    link: Option<store::RedisLink>,
    /// Redis: this instance's lease hash (made once, not per request).
    lease_key: String,
    db: DatabaseConnection,
    backend: Backend,
    /// This process's name in the lease registry.
    instance: String,
    next_lease: AtomicU64,
    maintenance: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Releases and flushes Redis did not take, retried until it does.
    deferred: Mutex<Vec<Deferred>>,
    /// Redis only: this instance's holds and pending charges still leased, by lease,
    /// so that they can be posted again if Redis loses its data.
    live: Mutex<HashMap<u64, (Vec<Account>, i64)>>,
    /// Redis only: settlements waiting for the one `SETTLE` call in flight.
    settles: Turns<Settling>,
    /// Redis only: reservations waiting for the one `RESERVE` call in flight.
    reserves: Turns<Reserving>,
    /// Redis only: the data generation this instance last saw (`{prefix}:epoch`); a
    /// different or missing one means Redis lost its data since.
    epoch: Mutex<String>,
}

/// A release, or the end of a pending charge, that Redis did not take (it was
/// unreachable). Dropped, its amount would stay in `held` for as long as this instance
/// lives (its lease is never reclaimed), locking that much of the customer's money;
/// kept, it is applied when Redis answers again. Applying it late is safe: `FLUSHED`
/// acts only while its lease is still there, and takes a database state only if newer.
struct Deferred {
    accounts: Vec<Account>,
    lease: u64,
    pending: i64,
    synced: Vec<Synced>,
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{:x}", std::process::id(), nanos)
}

// Redis Lua numbers are doubles, and how Redis prints one varies by version (`-0`,
// `1e+08`): every value written goes through `int()`, which prints a whole number, and
// zero increments are skipped. `held` never goes below zero, and only an account that
// exists holds anything (`add_held` leaves a missing one missing). An account's hash
// always has its `held` field (`sync` makes the account with it), so reading `held`
// also tells whether the account exists; `held_of` asks `EXISTS` only for a hash
// without one. Every `redis.call` costs the single Redis thread about half a microsecond, and
// these scripts run three times per request: they read and write each field once.
const LUA_PRELUDE: &str = r"
local function int(x) return string.format('%d', x) end
local function set_lease(hash, id, amount)
  if hash == '' then return end
  if amount > 0 then
    redis.call('HSET', hash, id, int(amount) .. '|' .. table.concat(KEYS, ','))
  else
    redis.call('HDEL', hash, id)
  end
end
local function held_of(key, raw)
  if raw then return tonumber(raw) end
  if redis.call('EXISTS', key) == 1 then return 0 end
  return nil
end
local function add_held(key, delta)
  if delta == 0 then return end
  local held = held_of(key, redis.call('HGET', key, 'held'))
  if not held then return end
  held = held + delta
  if held < 0 then held = 0 end
  redis.call('HSET', key, 'held', int(held))
end
local function sync(key, limit, rev)
  local cur = redis.call('HGET', key, 'rev')
  if (not cur) or tonumber(rev) > tonumber(cur) then
    redis.call('HSET', key, 'limit', int(tonumber(limit)), 'rev', int(tonumber(rev)))
  end
  if redis.call('HEXISTS', key, 'held') == 0 then redis.call('HSET', key, 'held', '0') end
end
";

/// Holds for a batch of requests, each all or nothing on its own accounts, in order:
/// a later hold sees what an earlier one of the same account took. Each account is
/// read and written once, whatever number of holds the batch has, and every lease goes
/// in one `HSET` after the accounts (as before batching, a write that fails midway
/// leaves `held` too high, never a lease whose amount `held` lacks). KEYS: the accounts.
/// ARGV: lease hash, number of holds, then per hold its lease id, amount and its
/// accounts' positions in KEYS (the second 0 when it has one). Answers per hold: 1
/// held, 0 short, -1 or -2 its first or second account missing.
const RESERVE: &str = r"
local hash, n = ARGV[1], tonumber(ARGV[2])
local limit, held, moved = {}, {}, {}
for i = 1, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'limit', 'held')
  if v[1] then limit[i], held[i] = tonumber(v[1]), tonumber(v[2] or '0') end
end
local function check(i, amt, missing)
  if not limit[i] then return missing end
  if limit[i] - held[i] < amt then return 0 end
  return 1
end
local out, leases = {}, {}
for j = 0, n - 1 do
  local at = 3 + 4 * j
  local id, amt = ARGV[at], tonumber(ARGV[at + 1])
  local a, b = tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  local r = check(a, amt, -1)
  if r == 1 and b > 0 then r = check(b, amt, -2) end
  if r == 1 and amt > 0 then
    held[a], moved[a] = held[a] + amt, true
    local accounts = KEYS[a]
    if b > 0 then
      held[b], moved[b] = held[b] + amt, true
      accounts = accounts .. ',' .. KEYS[b]
    end
    leases[#leases + 1] = id
    leases[#leases + 1] = int(amt) .. '|' .. accounts
  end
  out[j + 1] = r
end
for i = 1, #KEYS do
  if moved[i] then redis.call('HSET', KEYS[i], 'held', int(held[i])) end
end
if hash ~= '' and #leases > 0 then redis.call('HSET', hash, unpack(leases)) end
return out
";

/// Holds become pending charges. When a hold's lease is gone (this instance was
/// taken for dead and its holds were given back), its pending charge is held anew.
/// Writing the lease tells whether it was there: `HSET` answers 0 for a field it
/// replaced, `HDEL` 1 for a field it removed. Each account's `held` moves once for
/// the whole batch. KEYS: the accounts. ARGV: lease hash, number of holds, then per
/// hold its lease id, the amount held, the charge and its accounts' positions in KEYS
/// (the second 0 when it has one).
const SETTLE: &str = r"
local hash, n = ARGV[1], tonumber(ARGV[2])
local delta = {}
for i = 1, #KEYS do delta[i] = 0 end
for j = 0, n - 1 do
  local at = 3 + 5 * j
  local id, reserved, charge = ARGV[at], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  local a, b = tonumber(ARGV[at + 3]), tonumber(ARGV[at + 4])
  local had = false
  if hash ~= '' then
    if charge > 0 then
      local accounts = KEYS[a]
      if b > 0 then accounts = accounts .. ',' .. KEYS[b] end
      had = redis.call('HSET', hash, id, int(charge) .. '|' .. accounts) == 0
    else
      had = redis.call('HDEL', hash, id) == 1
    end
  end
  local d = charge - reserved
  if not had then d = charge end
  delta[a] = delta[a] + d
  if b > 0 then delta[b] = delta[b] + d end
end
for i = 1, #KEYS do add_held(KEYS[i], delta[i]) end
return n
";

/// Holds or pending charges leave `held` (each only if its lease is still there: never
/// twice), and each account takes the database state given with it, if newer. One call
/// ends a whole batch: each lease is read and removed in one command, and each account
/// is read and written once, whatever number of its holds the batch ends.
/// KEYS: the accounts. ARGV: lease hash, number of holds, `limit, rev` per account
/// ('' when none), then per hold its lease id and its accounts' positions in KEYS
/// (the second 0 when it has one).
const FLUSHED: &str = r"
local hash, n = ARGV[1], tonumber(ARGV[2])
local base = 3 + 2 * #KEYS
local release = {}
for i = 1, #KEYS do release[i] = 0 end
local ids = {}
for j = 1, n do ids[j] = ARGV[base + 3 * (j - 1)] end
local total = 0
if n > 0 then
  local leases = redis.call('HMGET', hash, unpack(ids))
  local gone, seen = {}, {}
  for j = 1, n do
    local lease = leases[j]
    if lease and not seen[ids[j]] then
      seen[ids[j]] = true
      gone[#gone + 1] = ids[j]
      local amount = tonumber(string.match(lease, '^(%-?%d+)|')) or 0
      total = total + amount
      local a = tonumber(ARGV[base + 3 * (j - 1) + 1])
      local b = tonumber(ARGV[base + 3 * (j - 1) + 2])
      release[a] = release[a] + amount
      if b > 0 then release[b] = release[b] + amount end
    end
  end
  if #gone > 0 then redis.call('HDEL', hash, unpack(gone)) end
end
for i = 1, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'held', 'rev')
  local held = held_of(KEYS[i], v[1])
  if held then
    local fields = {}
    if release[i] ~= 0 or not v[1] then
      held = held - release[i]
      if held < 0 then held = 0 end
      fields[1], fields[2] = 'held', int(held)
    end
    local lim, rev = ARGV[1 + 2 * i], ARGV[2 + 2 * i]
    if lim ~= '' and ((not v[2]) or tonumber(rev) > tonumber(v[2])) then
      fields[#fields + 1] = 'limit'
      fields[#fields + 1] = int(tonumber(lim))
      fields[#fields + 1] = 'rev'
      fields[#fields + 1] = int(tonumber(rev))
    end
    if #fields > 0 then redis.call('HSET', KEYS[i], unpack(fields)) end
  end
end
return total
";

/// Posts a live hold again after Redis lost its data (unless its lease is there).
/// ARGV: lease hash, lease id, amount.
const REPOST: &str = r"
if redis.call('HEXISTS', ARGV[1], ARGV[2]) == 1 then return 0 end
local amt = tonumber(ARGV[3])
for i = 1, #KEYS do add_held(KEYS[i], amt) end
set_lease(ARGV[1], ARGV[2], amt)
return 1
";

/// ARGV: `limit, rev` per account.
const SYNC: &str = r"
for i = 1, #KEYS do sync(KEYS[i], ARGV[2 * i - 1], ARGV[2 * i]) end
return #KEYS
";

/// Gives back everything a dead instance still held: each lease is `amount|accounts`.
/// KEYS[2], when given, is the instance's announcement: if it is back (a long stall,
/// not a death), nothing is reclaimed.
const RECLAIM: &str = r"
if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local entries = redis.call('HGETALL', KEYS[1])
local n = 0
for i = 1, #entries, 2 do
  local amount, accounts = string.match(entries[i + 1], '^(%-?%d+)|(.*)$')
  if amount then
    for acct in string.gmatch(accounts, '[^,]+') do
      add_held(acct, -tonumber(amount))
    end
    n = n + 1
  end
end
redis.call('DEL', KEYS[1])
return n
";

fn script(body: &str) -> Script {
    Script::new(&format!("{LUA_PRELUDE}{body}"))
}

impl Wallet {
    /// A wallet on the backend `shared` uses (Redis when configured).
    pub fn new(db: DatabaseConnection, shared: &Shared) -> Self {
        let backend = match shared.redis_pool() {
            Some((pool, prefix)) => Backend::Redis {
                pool: pool.clone(),
                prefix: prefix.to_owned(),
                scripts: Box::new(Scripts {
                    repost: script(REPOST),
                    reserve: script(RESERVE),
                    settle: script(SETTLE),
                    flushed: script(FLUSHED),
                    sync: script(SYNC),
                    reclaim: script(RECLAIM),
                }),
            },
            None => Backend::Memory(Mutex::new(HashMap::new())),
        };
        let instance = uuid_like();
        let lease_key = match &backend {
            Backend::Memory(_) => String::new(),
            Backend::Redis { prefix, .. } => format!("{prefix}:lease:{instance}"),
        };
        Wallet {
            link: shared.redis_link().cloned(),
            lease_key,
            db,
            backend,
            instance,
            next_lease: AtomicU64::new(1),
            maintenance: Mutex::new(Vec::new()),
            deferred: Mutex::new(Vec::new()),
            live: Mutex::new(HashMap::new()),
            settles: Turns::new(SETTLE_CHUNK),
            reserves: Turns::new(RESERVE_CHUNK),
            epoch: Mutex::new(String::new()),
        }
    }

    /// This instance's lease hash in Redis ("" in process: nothing to lease).
    fn lease_key(&self) -> &str {
        &self.lease_key
    }

    /// The hot path's Redis connection for this thread.
    async fn hot_conn(
        &self,
    ) -> Result<(HotLink<'_>, redis::aio::MultiplexedConnection), BillingError> {
        let link = self
            .link
            .as_ref()
            .ok_or_else(|| BillingError::Store(store::StoreError::Config("no redis".into())))?;
        let (conn, tag) = link.conn().await?;
        Ok((HotLink { link, tag }, conn))
    }

    /// Starts the background upkeep: every [`REFRESH`] the counters are set again from
    /// the database; with Redis, this instance is announced every `ttl / 3` and the
    /// holds of instances that stopped announcing themselves (crashed with requests in
    /// flight) are given back — what they held was never charged.
    pub fn start_maintenance(self: &Arc<Self>, ttl: Duration) {
        let me = Arc::clone(self);
        let refresh = tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = me.refresh().await {
                    tracing::warn!(error = ?e, "wallet refresh from the database failed");
                }
            }
        });
        let mut tasks = lock(&self.maintenance);
        tasks.push(refresh);
        if let Backend::Redis { .. } = &self.backend {
            let me = Arc::clone(self);
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval((ttl / 3).max(Duration::from_millis(100)));
                loop {
                    tick.tick().await;
                    me.retry_deferred().await;
                    if let Err(e) = me.heartbeat_once(ttl).await {
                        tracing::warn!(error = ?e, "wallet lease heartbeat failed");
                    }
                }
            }));
        }
    }

    async fn heartbeat_once(&self, ttl: Duration) -> Result<(), BillingError> {
        let Backend::Redis {
            pool,
            prefix,
            scripts,
        } = &self.backend
        else {
            return Ok(());
        };
        self.recover_if_lost().await?;
        let mut conn = pool.get().await?;
        let registry = format!("{prefix}:instances");
        let () = redis::pipe()
            .cmd("SET")
            .arg(format!("{prefix}:alive:{}", self.instance))
            .arg(1)
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            .ignore()
            .cmd("SADD")
            .arg(&registry)
            .arg(&self.instance)
            .ignore()
            .query_async(&mut conn)
            .await?;
        let instances: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&registry)
            .query_async(&mut conn)
            .await?;
        let mut refreshed = false;
        for other in instances.iter().filter(|i| **i != self.instance) {
            let alive: bool = redis::cmd("EXISTS")
                .arg(format!("{prefix}:alive:{other}"))
                .query_async(&mut conn)
                .await?;
            if alive {
                continue;
            }
            // The dead instance may have committed charges it never took off the
            // counters: set them from the database first, so giving its holds back
            // cannot leave a counter above the balance.
            if !refreshed {
                self.refresh().await?;
                refreshed = true;
            }
            let reclaimed: i64 = scripts
                .reclaim
                .key(format!("{prefix}:lease:{other}"))
                .key(format!("{prefix}:alive:{other}"))
                .invoke_async(&mut conn)
                .await?;
            if reclaimed < 0 {
                continue;
            }
            let _: i64 = redis::cmd("SREM")
                .arg(&registry)
                .arg(other)
                .query_async(&mut conn)
                .await?;
            if reclaimed > 0 {
                tracing::warn!(instance = %other, holds = reclaimed, "gave back the holds of an instance that stopped");
            }
        }
        Ok(())
    }

    /// Stops the upkeep and the announcement (as a crash would): this instance's holds
    /// are reclaimed by the others once its announcement expires.
    pub async fn stop_heartbeat(&self) {
        for task in lock(&self.maintenance).drain(..) {
            task.abort();
        }
        if let Backend::Redis { pool, prefix, .. } = &self.backend
            && let Ok(mut conn) = pool.get().await
        {
            let _: Result<i64, _> = redis::cmd("DEL")
                .arg(format!("{prefix}:alive:{}", self.instance))
                .query_async(&mut conn)
                .await;
        }
    }

    /// Leaves cleanly at shutdown (after the writer flushed): anything still leased
    /// is given back, and the instance leaves the registry.
    pub async fn leave(&self) {
        self.stop_heartbeat().await;
        if let Backend::Redis {
            pool,
            prefix,
            scripts,
        } = &self.backend
            && let Ok(mut conn) = pool.get().await
        {
            let _: Result<i64, _> = scripts
                .reclaim
                .key(self.lease_key())
                .invoke_async(&mut conn)
                .await;
            let _: Result<i64, _> = redis::cmd("SREM")
                .arg(format!("{prefix}:instances"))
                .arg(&self.instance)
                .query_async(&mut conn)
                .await;
        }
    }

    /// Sets every account from the database (a newer revision wins; what accounts
    /// hold is kept). Runs at start, every [`REFRESH`], and before reclaiming.
    pub async fn refresh(&self) -> Result<usize, BillingError> {
        let users: Vec<(i64, i64, i64)> = user::Entity::find()
            .select_only()
            .columns([user::Column::Id, user::Column::Balance, user::Column::Rev])
            .into_tuple()
            .all(&self.db)
            .await?;
        let keys: Vec<(i64, Option<i64>, i64, i64)> = api_key::Entity::find()
            .select_only()
            .columns([
                api_key::Column::Id,
                api_key::Column::CreditLimit,
                api_key::Column::Used,
                api_key::Column::Rev,
            ])
            .filter(api_key::Column::CreditLimit.is_not_null())
            .filter(api_key::Column::Status.ne("deleted"))
            .into_tuple()
            .all(&self.db)
            .await?;
        let mut items: Vec<Synced> = users
            .into_iter()
            .map(|(id, balance, rev)| Synced {
                account: Account::User(id),
                limit: balance,
                rev,
            })
            .collect();
        items.extend(keys.into_iter().filter_map(|(id, limit, used, rev)| {
            limit.map(|l| Synced {
                account: Account::Key(id),
                limit: l - used,
                rev,
            })
        }));
        self.sync(&items).await?;
        Ok(items.len())
    }

    /// Applies committed database states to their accounts (creating missing ones):
    /// an account takes a state only when its revision is newer than the one it has.
    pub async fn sync(&self, items: &[Synced]) -> Result<(), BillingError> {
        match &self.backend {
            Backend::Memory(slots) => {
                let mut slots = lock(slots);
                for s in items {
                    slots
                        .entry(s.account)
                        .or_insert(Slot {
                            limit: s.limit,
                            held: 0,
                            rev: s.rev,
                        })
                        .sync(s.limit, s.rev);
                }
            }
            Backend::Redis {
                pool,
                prefix,
                scripts,
            } => {
                let mut conn = pool.get().await?;
                for chunk in items.chunks(200) {
                    let mut inv = scripts.sync.prepare_invoke();
                    for s in chunk {
                        inv.key(AccountKey {
                            prefix,
                            account: s.account,
                        });
                        inv.arg(s.limit).arg(s.rev);
                    }
                    let _: i64 = inv.invoke_async(&mut conn).await?;
                }
            }
        }
        Ok(())
    }

    /// Forgets a key account (its credit limit was removed).
    pub async fn remove(&self, acct: Account) -> Result<(), BillingError> {
        match &self.backend {
            Backend::Memory(slots) => {
                lock(slots).remove(&acct);
            }
            Backend::Redis { pool, prefix, .. } => {
                let mut conn = pool.get().await?;
                let _: i64 = redis::cmd("DEL")
                    .arg(redis_key(prefix, acct))
                    .query_async(&mut conn)
                    .await?;
            }
        }
        Ok(())
    }

    /// Reserves `amount` against the user and, when given, the limited key; all or
    /// nothing. `Insufficient` when either cannot cover it.
    pub async fn reserve(
        &self,
        user_id: i64,
        key_id: Option<i64>,
        amount: i64,
    ) -> Result<Hold, BillingError> {
        let amount = amount.max(0);
        let accounts = accounts_of(user_id, key_id);
        let lease = self.next_lease.fetch_add(1, Ordering::Relaxed);
        for _ in 0..3 {
            let tried = self
                .try_reserve(Ending::of(user_id, key_id, lease), &accounts, amount)
                .await;
            if let Err(BillingError::Store(e)) = &tried
                && e.is_unavailable()
            {
                // The script may have reached Redis and run after the answer timed out:
                // its hold is given back once Redis answers (a no-op if it never ran).
                self.defer(Deferred {
                    accounts: accounts.clone(),
                    lease,
                    pending: amount,
                    synced: Vec::new(),
                });
            }
            match tried? {
                Reserve::Done => {
                    self.track(lease, &accounts, amount);
                    return Ok(Hold {
                        user_id,
                        key_id,
                        amount,
                        lease,
                    });
                }
                Reserve::Short => return Err(BillingError::Insufficient),
                Reserve::Missing(acct) => {
                    // A missing account may mean Redis lost its data: then every
                    // account is set again and the live holds are posted again first.
                    // Boxed: rare, and their futures (7 KB) would make every reserve's
                    // that large.
                    Box::pin(self.recover_if_lost()).await?;
                    Box::pin(self.load_missing(acct)).await?;
                }
            }
        }
        Err(BillingError::Insufficient)
    }

    /// Turns a hold into a pending charge of `cost`, never more than the hold (what
    /// was held is the most a request may cost), and returns the amount to charge.
    pub async fn settle(&self, hold: Hold, cost: i64) -> Result<i64, BillingError> {
        let accounts = accounts_of(hold.user_id, hold.key_id);
        let charge = cost.clamp(0, hold.amount);
        if cost > hold.amount {
            crate::metrics::OVER_HOLD.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                user.id = hold.user_id,
                cost,
                held = hold.amount,
                "a request cost more than its hold; charged the hold"
            );
        }
        match &self.backend {
            Backend::Memory(slots) => {
                let mut slots = lock(slots);
                for a in &accounts {
                    if let Some(s) = slots.get_mut(a) {
                        s.held = (s.held + charge - hold.amount).max(0);
                    }
                }
                Ok(charge)
            }
            Backend::Redis { .. } => {
                let settling = Settling {
                    end: Ending::of(hold.user_id, hold.key_id, hold.lease),
                    reserved: hold.amount,
                    charge,
                };
                self.settles
                    // A settlement whose caller is gone still happened: nothing to undo.
                    .take(settling, |all| self.send_settles(all), &|_, _| {})
                    .await?;
                if let Some(live) = lock(&self.live).get_mut(&hold.lease) {
                    live.1 = charge;
                }
                Ok(charge)
            }
        }
    }

    /// One `SETTLE` call for `all`.
    async fn send_settles(&self, all: Vec<Settling>) -> Result<Vec<i64>, BillingError> {
        let Backend::Redis {
            prefix, scripts, ..
        } = &self.backend
        else {
            return Ok(Vec::new());
        };
        let ends = all.iter().map(|s| &s.end);
        let (mut call, places) = holds_call(&scripts.settle, prefix, self.lease_key(), ends);
        for (s, (user, key)) in all.iter().zip(places) {
            call.arg(s.end.lease)
                .arg(s.reserved)
                .arg(s.charge)
                .arg(user)
                .arg(key);
        }
        let (link, mut conn) = self.hot_conn().await?;
        let _: i64 = link.checked(call.invoke_async(&mut conn).await)?;
        Ok(Vec::new())
    }

    /// Gives a hold back untouched (the request failed). While Redis is unreachable
    /// the release is kept and applied when it answers (see [`Wallet::retry_deferred`]).
    pub async fn release(&self, hold: Hold) -> Result<(), BillingError> {
        let accounts = accounts_of(hold.user_id, hold.key_id);
        self.apply_flushed(&accounts, hold.lease, hold.amount, &[])
            .await
    }

    /// Records that a pending charge (or a debit's hold) was committed: it leaves
    /// `held`, and the accounts take the database states `synced` it produced.
    pub async fn flushed(
        &self,
        user_id: i64,
        key_id: Option<i64>,
        lease: u64,
        pending: i64,
        synced: &[Synced],
    ) -> Result<(), BillingError> {
        self.apply_flushed(&accounts_of(user_id, key_id), lease, pending, synced)
            .await
    }

    /// [`Wallet::flushed`] for every hold of a committed batch, one `FLUSHED` call per
    /// [`FLUSH_CHUNK`] holds: the writer commits hundreds of charges per batch, and a
    /// round trip each held it far below the relay's rate; one script call per hold
    /// was a third of the Redis work per request.
    pub async fn flushed_many(
        &self,
        holds: &[Committed],
        synced: &[Synced],
    ) -> Result<(), BillingError> {
        let Backend::Redis {
            pool,
            prefix,
            scripts,
        } = &self.backend
        else {
            for h in holds {
                self.apply_flushed(
                    &accounts_of(h.user_id, h.key_id),
                    h.lease,
                    h.pending,
                    synced,
                )
                .await?;
            }
            return Ok(());
        };
        if holds.is_empty() {
            return Ok(());
        }
        {
            let mut live = lock(&self.live);
            for h in holds {
                live.remove(&h.lease);
            }
        }
        let mut pool_conn = None;
        for (done, chunk) in holds.chunks(FLUSH_CHUNK).enumerate() {
            let ends: Vec<Ending> = chunk
                .iter()
                .map(|h| Ending::of(h.user_id, h.key_id, h.lease))
                .collect();
            let sent: Result<i64, BillingError> = async {
                let conn = match &mut pool_conn {
                    Some(c) => c,
                    None => pool_conn.insert(pool.get().await?),
                };
                let call = flushed_call(&scripts.flushed, prefix, self.lease_key(), &ends, synced);
                Ok(call.invoke_async(conn).await?)
            }
            .await;
            match sent {
                Ok(_) => {}
                Err(BillingError::Store(e)) if e.is_unavailable() => {
                    let left = &holds[done * FLUSH_CHUNK..];
                    tracing::warn!(error = ?e, holds = left.len(), "redis unreachable; the wallet updates are retried until it answers");
                    for h in left {
                        self.defer(Deferred {
                            accounts: accounts_of(h.user_id, h.key_id),
                            lease: h.lease,
                            pending: h.pending,
                            synced: synced.to_vec(),
                        });
                    }
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// What an account may still spend (for display and tests).
    pub async fn available(&self, acct: Account) -> Result<Option<i64>, BillingError> {
        match &self.backend {
            Backend::Memory(slots) => Ok(lock(slots).get(&acct).map(|s| s.limit - s.held)),
            Backend::Redis { pool, prefix, .. } => {
                let mut conn = pool.get().await?;
                let (limit, held): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
                    .arg(redis_key(prefix, acct))
                    .arg("limit")
                    .arg("held")
                    .query_async(&mut conn)
                    .await?;
                Ok(limit.map(|l| l - held.unwrap_or(0)))
            }
        }
    }

    async fn try_reserve(
        &self,
        end: Ending,
        accounts: &[Account],
        amount: i64,
    ) -> Result<Reserve, BillingError> {
        let r = match &self.backend {
            Backend::Memory(slots) => {
                let mut slots = lock(slots);
                for a in accounts {
                    match slots.get(a) {
                        None => return Ok(Reserve::Missing(*a)),
                        Some(s) if s.limit - s.held < amount => return Ok(Reserve::Short),
                        Some(_) => {}
                    }
                }
                for a in accounts {
                    if let Some(s) = slots.get_mut(a) {
                        s.held += amount;
                    }
                }
                return Ok(Reserve::Done);
            }
            Backend::Redis { .. } => {
                let mine = Reserving { end, amount };
                self.reserves
                    .take(mine, |all| self.send_reserves(all), &|r, answer| {
                        self.unclaimed_hold(r, answer)
                    })
                    .await?
            }
        };
        Ok(match r {
            1 => Reserve::Done,
            n if n < 0 => {
                let idx = usize::try_from(-n - 1).unwrap_or(0);
                Reserve::Missing(accounts.get(idx).copied().unwrap_or(accounts[0]))
            }
            _ => Reserve::Short,
        })
    }

    /// A hold that `RESERVE` made (`Some(1)`) or may have made (`None`) for a request
    /// that is gone (its client went away while it waited): it is given back, as a
    /// release Redis did not take, so its money is not locked for this instance's life.
    fn unclaimed_hold(&self, r: Reserving, answer: Option<i64>) {
        if r.amount > 0 && answer.is_none_or(|n| n == 1) {
            self.defer(Deferred {
                accounts: std::iter::once(r.end.user).chain(r.end.key).collect(),
                lease: r.end.lease,
                pending: r.amount,
                synced: Vec::new(),
            });
        }
    }

    /// One `RESERVE` call for `all`: each one's answer, in order.
    async fn send_reserves(&self, all: Vec<Reserving>) -> Result<Vec<i64>, BillingError> {
        let Backend::Redis {
            prefix, scripts, ..
        } = &self.backend
        else {
            return Ok(Vec::new());
        };
        let ends = all.iter().map(|r| &r.end);
        let (mut call, places) = holds_call(&scripts.reserve, prefix, self.lease_key(), ends);
        for (r, (user, key)) in all.iter().zip(places) {
            call.arg(r.end.lease).arg(r.amount).arg(user).arg(key);
        }
        let (link, mut conn) = self.hot_conn().await?;
        Ok(link.checked(call.invoke_async(&mut conn).await)?)
    }

    /// Applies a release or flush now, or, when Redis is unreachable, keeps it to be
    /// applied once Redis answers (then it is not an error: it will happen).
    async fn apply_flushed(
        &self,
        accounts: &[Account],
        lease: u64,
        pending: i64,
        synced: &[Synced],
    ) -> Result<(), BillingError> {
        // No longer live, whether Redis takes the update now or later.
        lock(&self.live).remove(&lease);
        match self
            .apply_flushed_now(accounts, lease, pending, synced)
            .await
        {
            Err(BillingError::Store(e)) if e.is_unavailable() => {
                tracing::warn!(error = ?e, lease, "redis unreachable; the wallet update is retried until it answers");
                self.defer(Deferred {
                    accounts: accounts.to_vec(),
                    lease,
                    pending,
                    synced: synced.to_vec(),
                });
                Ok(())
            }
            other => other,
        }
    }

    /// Remembers a hold this instance leased in Redis.
    fn track(&self, lease: u64, accounts: &[Account], amount: i64) {
        if let Backend::Redis { .. } = &self.backend {
            lock(&self.live).insert(lease, (accounts.to_vec(), amount));
        }
    }

    /// Redis only: when Redis lost its data since this instance last looked (its
    /// generation key is gone or was made anew), every account is set again from the
    /// database and this instance's live holds are posted again — what DESIGN.md calls
    /// rebuilding the counters from the database and the holds of live instances.
    /// Every instance does the same for its own holds at its next look.
    pub async fn recover_if_lost(&self) -> Result<(), BillingError> {
        let Backend::Redis {
            pool,
            prefix,
            scripts,
        } = &self.backend
        else {
            return Ok(());
        };
        let key = format!("{prefix}:epoch");
        let mut conn = pool.get().await?;
        let seen: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
        if seen.as_deref().is_some_and(|s| *s == *lock(&self.epoch)) {
            return Ok(());
        }
        let _: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(uuid_like())
            .arg("NX")
            .query_async(&mut conn)
            .await?;
        let now: String = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
        drop(conn);
        self.refresh().await?;
        let held: Vec<(u64, (Vec<Account>, i64))> = lock(&self.live)
            .iter()
            .map(|(l, h)| (*l, h.clone()))
            .collect();
        let mut conn = pool.get().await?;
        let mut posted = 0_i64;
        for (lease, (accounts, amount)) in &held {
            let mut inv = scripts.repost.prepare_invoke();
            for a in accounts {
                inv.key(AccountKey {
                    prefix,
                    account: *a,
                });
            }
            posted += inv
                .arg(self.lease_key())
                .arg(*lease)
                .arg(*amount)
                .invoke_async::<i64>(&mut conn)
                .await?;
        }
        drop(conn);
        // A hold that ended while it was being posted again must not stay posted.
        for (lease, (accounts, amount)) in held {
            if !lock(&self.live).contains_key(&lease) {
                self.apply_flushed_now(&accounts, lease, amount, &[])
                    .await?;
            }
        }
        if posted > 0 {
            tracing::warn!(
                holds = posted,
                "redis lost its data: live holds posted again"
            );
        }
        *lock(&self.epoch) = now;
        Ok(())
    }

    fn defer(&self, update: Deferred) {
        lock(&self.deferred).push(update);
    }

    /// Applies the updates Redis did not take, keeping those it still refuses.
    pub async fn retry_deferred(&self) {
        let pending = std::mem::take(&mut *lock(&self.deferred));
        if pending.is_empty() {
            return;
        }
        let mut kept = Vec::new();
        let mut applied = 0_usize;
        for d in pending {
            match self
                .apply_flushed_now(&d.accounts, d.lease, d.pending, &d.synced)
                .await
            {
                Ok(()) => applied += 1,
                Err(_) => kept.push(d),
            }
        }
        if applied > 0 {
            tracing::info!(
                applied,
                left = kept.len(),
                "deferred wallet updates applied"
            );
        }
        lock(&self.deferred).extend(kept);
    }

    async fn apply_flushed_now(
        &self,
        accounts: &[Account],
        lease: u64,
        pending: i64,
        synced: &[Synced],
    ) -> Result<(), BillingError> {
        let state_of = |a: &Account| synced.iter().find(|s| s.account == *a);
        match &self.backend {
            Backend::Memory(slots) => {
                let mut slots = lock(slots);
                for a in accounts {
                    if let Some(s) = slots.get_mut(a) {
                        s.held = (s.held - pending).max(0);
                        if let Some(st) = state_of(a) {
                            s.sync(st.limit, st.rev);
                        }
                    }
                }
                Ok(())
            }
            Backend::Redis {
                pool: _,
                prefix,
                scripts,
            } => {
                let (link, mut conn) = self.hot_conn().await?;
                let Some(&user) = accounts.first() else {
                    return Ok(());
                };
                let end = [Ending {
                    user,
                    key: accounts.get(1).copied(),
                    lease,
                }];
                let call = flushed_call(&scripts.flushed, prefix, self.lease_key(), &end, synced);
                let _: i64 = link.checked(call.invoke_async(&mut conn).await)?;
                Ok(())
            }
        }
    }

    /// An account unknown to the wallet (made outside the API, or lost with Redis)
    /// is loaded from the database; an account that no longer exists gets limit 0.
    async fn load_missing(&self, acct: Account) -> Result<(), BillingError> {
        let state = self.read_state(acct).await?;
        tracing::info!(account = ?acct, "wallet account loaded from the database");
        self.sync(&[state]).await
    }

    /// An account's committed state, read from the database (limit 0 when the user or
    /// key no longer exists or has no credit limit).
    async fn read_state(&self, acct: Account) -> Result<Synced, BillingError> {
        let (limit, rev) = match acct {
            Account::User(id) => user::Entity::find_by_id(id)
                .one(&self.db)
                .await?
                .map_or((0, 0), |u| (u.balance, u.rev)),
            Account::Key(id) => api_key::Entity::find_by_id(id)
                .one(&self.db)
                .await?
                .and_then(|k| k.credit_limit.map(|l| (l - k.used, k.rev)))
                .unwrap_or((0, 0)),
        };
        Ok(Synced {
            account: acct,
            limit,
            rev,
        })
    }

    /// The committed states of a user and (when limited) its key, read from the
    /// database: what a commit whose own answer was lost left behind.
    pub async fn read_states(
        &self,
        user_id: i64,
        key_id: Option<i64>,
    ) -> Result<Vec<Synced>, BillingError> {
        let mut out = Vec::with_capacity(2);
        for acct in accounts_of(user_id, key_id) {
            out.push(self.read_state(acct).await?);
        }
        Ok(out)
    }

    /// Bumps a key's revision and sets its account from the database: after its credit
    /// limit changed (a key whose limit was removed loses its account).
    pub async fn resync_key(&self, key_id: i64) -> Result<(), BillingError> {
        use sea_orm::ExprTrait;
        use sea_orm::sea_query::Expr;
        let rows = api_key::Entity::update_many()
            .col_expr(api_key::Column::Rev, Expr::col(api_key::Column::Rev).add(1))
            .filter(api_key::Column::Id.eq(key_id))
            .exec_with_returning(&self.db)
            .await?;
        match rows
            .first()
            .and_then(|k| k.credit_limit.map(|l| (l - k.used, k.rev)))
        {
            Some((limit, rev)) => {
                self.sync(&[Synced {
                    account: Account::Key(key_id),
                    limit,
                    rev,
                }])
                .await
            }
            None => self.remove(Account::Key(key_id)).await,
        }
    }
}

enum Reserve {
    Done,
    Short,
    Missing(Account),
}

/// Most holds one `FLUSHED` call ends (its arguments stay far below Lua's stack limit).
const FLUSH_CHUNK: usize = 200;

/// One hold to end with `FLUSHED`: its accounts and its lease.
#[derive(Clone, Copy)]
struct Ending {
    user: Account,
    key: Option<Account>,
    lease: u64,
}

impl Ending {
    fn of(user_id: i64, key_id: Option<i64>, lease: u64) -> Self {
        Ending {
            user: Account::User(user_id),
            key: key_id.map(Account::Key),
            lease,
        }
    }
}

/// The `FLUSHED` call that ends `holds` and gives their accounts the states in `synced`.
fn flushed_call<'s>(
    script: &'s Script,
    prefix: &str,
    lease_key: &str,
    holds: &[Ending],
    synced: &[Synced],
) -> redis::ScriptInvocation<'s> {
    let (accounts, places) = positions(holds);
    let mut call = script.prepare_invoke();
    call.arg(lease_key).arg(holds.len());
    for a in &accounts {
        call.key(AccountKey {
            prefix,
            account: *a,
        });
        match synced.iter().find(|s| s.account == *a) {
            Some(st) => call.arg(st.limit).arg(st.rev),
            None => call.arg("").arg(""),
        };
    }
    for (h, (user, key)) in holds.iter().zip(places) {
        call.arg(h.lease).arg(user).arg(key);
    }
    call
}

/// A `RESERVE` or `SETTLE` call for `holds`: the lease hash and their number as its
/// first arguments, their distinct accounts as its KEYS; and each hold's accounts as
/// positions in those, for the arguments that follow.
fn holds_call<'s, 'a>(
    script: &'s Script,
    prefix: &str,
    lease_key: &str,
    holds: impl ExactSizeIterator<Item = &'a Ending>,
) -> (redis::ScriptInvocation<'s>, Vec<(usize, usize)>) {
    let n = holds.len();
    let (accounts, places) = positions(holds);
    let mut call = script.prepare_invoke();
    call.arg(lease_key).arg(n);
    for a in &accounts {
        call.key(AccountKey {
            prefix,
            account: *a,
        });
    }
    (call, places)
}

/// The distinct accounts of `holds` (the script's KEYS), and each hold's accounts as
/// positions in them (from 1; the key's 0 when it has none).
fn positions<'a>(
    holds: impl IntoIterator<Item = &'a Ending>,
) -> (Vec<Account>, Vec<(usize, usize)>) {
    let mut accounts: Vec<Account> = Vec::with_capacity(2);
    let mut place = |a: Account| match accounts.iter().position(|x| *x == a) {
        Some(i) => i + 1,
        None => {
            accounts.push(a);
            accounts.len()
        }
    };
    let places = holds
        .into_iter()
        .map(|h| (place(h.user), h.key.map_or(0, &mut place)))
        .collect();
    (accounts, places)
}

/// Most settlements one `SETTLE` call takes.
const SETTLE_CHUNK: usize = 200;

/// Most reservations one `RESERVE` call takes.
const RESERVE_CHUNK: usize = 200;

/// A hold to make with `RESERVE`.
#[derive(Clone, Copy)]
struct Reserving {
    end: Ending,
    amount: i64,
}

/// A hold to settle with `SETTLE`.
#[derive(Clone, Copy)]
struct Settling {
    end: Ending,
    reserved: i64,
    charge: i64,
}

/// An account's Redis key, written straight into the command (no string per call).
struct AccountKey<'a> {
    prefix: &'a str,
    account: Account,
}

impl redis::ToRedisArgs for AccountKey<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        let (kind, id) = match self.account {
            Account::User(id) => ("u", id),
            Account::Key(id) => ("k", id),
        };
        store::cache::KeyArg(format_args!("{}:w:{kind}:{id}", self.prefix)).write_redis_args(out);
    }
}

fn accounts_of(user_id: i64, key_id: Option<i64>) -> Vec<Account> {
    let mut v = vec![Account::User(user_id)];
    if let Some(k) = key_id {
        v.push(Account::Key(k));
    }
    v
}

fn redis_key(prefix: &str, acct: Account) -> String {
    match acct {
        Account::User(id) => format!("{prefix}:w:u:{id}"),
        Account::Key(id) => format!("{prefix}:w:k:{id}"),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A wallet on Redis when `TEST_REDIS_URL` is set (a namespace of its own), else
    /// in process.
    async fn wallet() -> Wallet {
        let db = store::db::connect("sqlite::memory:").await.unwrap();
        let shared = match std::env::var("TEST_REDIS_URL") {
            Ok(url) => {
                let prefix = format!("tgunit:{}", uuid_like());
                Shared::redis(&url, &prefix).await.unwrap()
            }
            Err(_) => Shared::memory(),
        };
        Wallet::new(db, &shared)
    }

    /// A customer in the wallet's database with `balance` at revision `rev`.
    async fn alice(w: &Wallet, balance: i64, rev: i64) -> user::Model {
        use sea_orm::{ActiveModelTrait, ActiveValue::Set};
        let mut u = user::ActiveModel::enabled(
            "alice".into(),
            String::new(),
            store::catalog::Role::Customer,
            "default".into(),
            None,
        );
        (u.balance, u.rev) = (Set(balance), Set(rev));
        u.insert(&w.db).await.unwrap()
    }

    fn state(account: Account, limit: i64, rev: i64) -> Synced {
        Synced {
            account,
            limit,
            rev,
        }
    }

    #[tokio::test]
    async fn concurrent_reservations_never_exceed_the_limit() {
        let w = Arc::new(wallet().await);
        w.sync(&[state(Account::User(1), 1_000, 1)]).await.unwrap();
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let w = Arc::clone(&w);
                tokio::spawn(async move { w.reserve(1, None, 30).await.is_ok() })
            })
            .collect();
        let mut admitted = 0;
        for t in tasks {
            admitted += i32::from(t.await.unwrap());
        }
        assert_eq!(admitted, 33);
        assert_eq!(w.available(Account::User(1)).await.unwrap(), Some(10));
    }

    #[tokio::test]
    async fn a_reservation_needs_both_the_user_and_the_limited_key() {
        let w = wallet().await;
        w.sync(&[
            state(Account::User(1), 1_000, 1),
            state(Account::Key(7), 50, 1),
        ])
        .await
        .unwrap();
        assert!(w.reserve(1, Some(7), 60).await.is_err());
        // All or nothing: the user's side was not touched by the refusal.
        assert_eq!(w.available(Account::User(1)).await.unwrap(), Some(1_000));
        let h = w.reserve(1, Some(7), 50).await.unwrap();
        w.release(h).await.unwrap();
        assert_eq!(w.available(Account::Key(7)).await.unwrap(), Some(50));
    }

    #[tokio::test]
    async fn a_charge_never_exceeds_its_hold_and_the_commit_sets_the_limit() {
        let w = wallet().await;
        w.sync(&[state(Account::User(1), 100, 1)]).await.unwrap();
        let h = w.reserve(1, None, 40).await.unwrap();
        let lease = h.lease;
        // Cheaper than held: the rest is free again at once.
        assert_eq!(w.settle(h, 25).await.unwrap(), 25);
        assert_eq!(w.available(Account::User(1)).await.unwrap(), Some(75));
        // Dearer than held: the hold is the most it can cost.
        let h2 = w.reserve(1, None, 10).await.unwrap();
        let lease2 = h2.lease;
        assert_eq!(w.settle(h2, 500).await.unwrap(), 10);
        assert_eq!(w.available(Account::User(1)).await.unwrap(), Some(65));
        // The commit: the pending charges leave `held`, the balance after them is set.
        w.flushed(1, None, lease, 25, &[state(Account::User(1), 75, 2)])
            .await
            .unwrap();
        w.flushed(1, None, lease2, 10, &[state(Account::User(1), 65, 3)])
            .await
            .unwrap();
        assert_eq!(w.available(Account::User(1)).await.unwrap(), Some(65));
    }

    #[tokio::test]
    async fn an_older_database_state_never_replaces_a_newer_one() {
        let w = wallet().await;
        let u = Account::User(1);
        w.sync(&[state(u, 500, 5)]).await.unwrap();
        // A refresh that read the database before the last commit arrives late.
        w.sync(&[state(u, 900, 4)]).await.unwrap();
        assert_eq!(w.available(u).await.unwrap(), Some(500));
        // The same state twice changes nothing; a newer one wins.
        w.sync(&[state(u, 500, 5)]).await.unwrap();
        w.sync(&[state(u, 300, 6)]).await.unwrap();
        assert_eq!(w.available(u).await.unwrap(), Some(300));
    }

    #[tokio::test]
    async fn a_refresh_sets_every_counter_from_the_database_keeping_what_is_held() {
        let w = wallet().await;
        let alice = alice(&w, 1_000, 3).await;
        // The counter drifted above the database (a commit it never heard of).
        w.sync(&[state(Account::User(alice.id), 5_000, 2)])
            .await
            .unwrap();
        let h = w.reserve(alice.id, None, 100).await.unwrap();
        w.refresh().await.unwrap();
        assert_eq!(
            w.available(Account::User(alice.id)).await.unwrap(),
            Some(900)
        );
        w.release(h).await.unwrap();
        assert_eq!(
            w.available(Account::User(alice.id)).await.unwrap(),
            Some(1_000)
        );
    }

    #[tokio::test]
    async fn a_hold_given_back_twice_counts_once() {
        let w = wallet().await;
        let u = Account::User(1);
        w.sync(&[state(u, 100, 1)]).await.unwrap();
        let h = w.reserve(1, None, 40).await.unwrap();
        let _other = w.reserve(1, None, 30).await.unwrap();
        let lease = h.lease;
        w.release(h).await.unwrap();
        // The same lease flushed again (an instance taken for dead, then back).
        if let Backend::Redis { .. } = &w.backend {
            w.flushed(1, None, lease, 40, &[]).await.unwrap();
            assert_eq!(w.available(u).await.unwrap(), Some(70));
        }
    }

    #[tokio::test]
    async fn a_committed_batch_ends_each_hold_once_and_sets_each_account_to_its_newest_state() {
        let w = wallet().await;
        let (alice, bob, key) = (Account::User(1), Account::User(2), Account::Key(9));
        w.sync(&[
            state(alice, 10_000, 1),
            state(bob, 500, 1),
            state(key, 3_000, 1),
        ])
        .await
        .unwrap();
        // 250 charges (more than one call's worth) from alice, some through her
        // limited key, and one of bob's.
        let mut committed = Vec::new();
        for i in 0..250_i64 {
            let key_id = (i % 2 == 0).then_some(9);
            let h = w.reserve(1, key_id, 20).await.unwrap();
            let lease = h.lease;
            let pending = w.settle(h, 10).await.unwrap();
            committed.push(Committed {
                user_id: 1,
                key_id,
                lease,
                pending,
            });
        }
        let h = w.reserve(2, None, 100).await.unwrap();
        let lease = h.lease;
        committed.push(Committed {
            user_id: 2,
            key_id: None,
            lease,
            pending: w.settle(h, 100).await.unwrap(),
        });
        // A hold still running is not part of the batch.
        let running = w.reserve(1, Some(9), 7).await.unwrap();
        assert_eq!(w.available(alice).await.unwrap(), Some(10_000 - 2_500 - 7));
        assert_eq!(w.available(key).await.unwrap(), Some(3_000 - 1_250 - 7));

        // The commit: alice paid 2,500 (1,250 of it through the key), bob 100.
        w.flushed_many(
            &committed,
            &[
                state(alice, 7_500, 2),
                state(bob, 400, 2),
                state(key, 1_750, 2),
            ],
        )
        .await
        .unwrap();
        assert_eq!(w.available(alice).await.unwrap(), Some(7_500 - 7));
        assert_eq!(w.available(bob).await.unwrap(), Some(400));
        assert_eq!(w.available(key).await.unwrap(), Some(1_750 - 7));

        // The same batch again, with the older states (a retried flush): nothing moves
        // in Redis, where each lease ends once.
        if let Backend::Redis { .. } = &w.backend {
            w.flushed_many(&committed, &[state(alice, 10_000, 1), state(bob, 500, 1)])
                .await
                .unwrap();
            assert_eq!(w.available(alice).await.unwrap(), Some(7_500 - 7));
            assert_eq!(w.available(bob).await.unwrap(), Some(400));
            assert_eq!(w.available(key).await.unwrap(), Some(1_750 - 7));
        }
        w.release(running).await.unwrap();
        assert_eq!(w.available(alice).await.unwrap(), Some(7_500));
        assert_eq!(w.available(key).await.unwrap(), Some(1_750));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn settlements_arriving_together_each_charge_exactly_what_they_cost() {
        let w = Arc::new(wallet().await);
        let (alice, key) = (Account::User(1), Account::Key(9));
        w.sync(&[state(alice, 1_000_000, 1), state(key, 500_000, 1)])
            .await
            .unwrap();
        let mut holds = Vec::new();
        for i in 0..300_i64 {
            let key_id = (i % 3 == 0).then_some(9);
            holds.push((w.reserve(1, key_id, 1_000).await.unwrap(), i));
        }
        // All at once, from two threads: most go in a call with others. Each costs
        // `i`, some more than held (charged the hold), one nothing.
        let tasks: Vec<_> = holds
            .into_iter()
            .map(|(h, i)| {
                let w = Arc::clone(&w);
                let cost = if i % 50 == 0 { 5_000 } else { i };
                tokio::spawn(async move {
                    let key_limited = h.key_id.is_some();
                    let lease = h.lease;
                    let charged = w.settle(h, cost).await.unwrap();
                    assert_eq!(charged, cost.min(1_000));
                    (charged, key_limited, lease)
                })
            })
            .collect();
        let mut settled = Vec::new();
        for t in tasks {
            settled.push(t.await.unwrap());
        }
        let total: i64 = settled.iter().map(|s| s.0).sum();
        let through_key: i64 = settled.iter().filter(|s| s.1).map(|s| s.0).sum();
        assert_eq!(w.available(alice).await.unwrap(), Some(1_000_000 - total));
        assert_eq!(w.available(key).await.unwrap(), Some(500_000 - through_key));
        // The commit ends exactly those pending charges.
        let committed: Vec<Committed> = settled
            .iter()
            .map(|(pending, limited, lease)| Committed {
                user_id: 1,
                key_id: limited.then_some(9),
                lease: *lease,
                pending: *pending,
            })
            .collect();
        w.flushed_many(
            &committed,
            &[
                state(alice, 1_000_000 - total, 2),
                state(key, 500_000 - through_key, 2),
            ],
        )
        .await
        .unwrap();
        assert_eq!(w.available(alice).await.unwrap(), Some(1_000_000 - total));
        assert_eq!(w.available(key).await.unwrap(), Some(500_000 - through_key));
        assert!(w.settles.idle());
    }

    #[tokio::test]
    async fn reservations_arriving_together_each_get_their_own_answer_in_order() {
        use std::future::Future;
        let w = wallet().await;
        let (alice, key) = (Account::User(1), Account::Key(9));
        w.sync(&[state(alice, 1_000, 1), state(key, 250, 1)])
            .await
            .unwrap();
        // A call is in flight: the next fifteen wait, then go in one call, in order.
        // Every other one is through the key, which runs out after two.
        w.reserves.hold_busy();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // (In process there is no call: each is answered at once.)
        let mut waiting = Vec::new();
        let mut answered = Vec::new();
        for i in 0..15_i64 {
            let mut r = Box::pin(w.reserve(1, (i % 2 == 0).then_some(9), 100));
            match r.as_mut().poll(&mut cx) {
                std::task::Poll::Ready(answer) => answered.push(answer),
                std::task::Poll::Pending => waiting.push(r),
            }
        }
        if let Backend::Redis { .. } = &w.backend {
            assert_eq!(w.reserves.waiting(), 15);
        }
        w.reserves.end_call();
        for r in waiting {
            answered.push(r.await);
        }
        let mut held = Vec::new();
        for (i, r) in answered.into_iter().enumerate() {
            match r {
                Ok(h) => held.push((i, h)),
                Err(BillingError::Insufficient) => {}
                Err(e) => panic!("reservation {i}: {e}"),
            }
        }
        let done: Vec<usize> = held.iter().map(|(i, _)| *i).collect();
        assert_eq!(done, [0, 1, 2, 3, 5, 7, 9, 11, 13]);
        assert_eq!(w.available(alice).await.unwrap(), Some(100));
        assert_eq!(w.available(key).await.unwrap(), Some(50));
        assert!(w.reserves.idle());
        for (_, h) in held {
            w.release(h).await.unwrap();
        }
        assert_eq!(w.available(alice).await.unwrap(), Some(1_000));
        assert_eq!(w.available(key).await.unwrap(), Some(250));
    }

    #[tokio::test]
    async fn a_hold_made_for_a_request_that_went_away_while_it_waited_is_given_back() {
        use std::future::Future;
        let w = wallet().await;
        if let Backend::Memory(_) = &w.backend {
            // In process a reservation never waits: there is no such moment.
            return;
        }
        let alice = Account::User(1);
        w.sync(&[state(alice, 1_000, 1)]).await.unwrap();
        w.reserves.hold_busy();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut staying = Box::pin(w.reserve(1, None, 100));
        let mut leaving = Box::pin(w.reserve(1, None, 300));
        assert!(staying.as_mut().poll(&mut cx).is_pending());
        assert!(leaving.as_mut().poll(&mut cx).is_pending());
        // The staying one leads the next call, which takes both; the other's client
        // goes away while the call is in flight.
        w.reserves.end_call();
        assert!(staying.as_mut().poll(&mut cx).is_pending());
        drop(leaving);
        let hold = staying.await.unwrap();
        assert_eq!(w.available(alice).await.unwrap(), Some(600));
        // Its hold is given back with the releases Redis did not take.
        w.retry_deferred().await;
        assert_eq!(w.available(alice).await.unwrap(), Some(900));
        w.release(hold).await.unwrap();
        assert_eq!(w.available(alice).await.unwrap(), Some(1_000));
    }

    #[tokio::test]
    async fn live_holds_are_posted_again_when_redis_loses_its_data() {
        let w = wallet().await;
        let Backend::Redis { pool, prefix, .. } = &w.backend else {
            // In process, the counters live and die with the holds.
            return;
        };
        let alice = alice(&w, 1_000, 1).await.id;
        w.recover_if_lost().await.unwrap();
        let streaming = w.reserve(alice, None, 400).await.unwrap();
        let settled = w.reserve(alice, None, 100).await.unwrap();
        let lease = settled.lease;
        assert_eq!(w.settle(settled, 60).await.unwrap(), 60);

        // Redis restarts empty (this test's namespace only: the server is shared).
        let mut conn = pool.get().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: i64 = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
        drop(conn);

        // The next reservation finds its account gone, and the counters come back with
        // the live hold and the pending charge: 1,000 - 400 - 60 = 540 left.
        assert!(matches!(
            w.reserve(alice, None, 600).await,
            Err(BillingError::Insufficient)
        ));
        assert_eq!(w.available(Account::User(alice)).await.unwrap(), Some(540));
        w.release(streaming).await.unwrap();
        w.flushed(
            alice,
            None,
            lease,
            60,
            &[state(Account::User(alice), 940, 2)],
        )
        .await
        .unwrap();
        assert_eq!(w.available(Account::User(alice)).await.unwrap(), Some(940));
    }
}
