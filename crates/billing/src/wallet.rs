//! Wallets: the admission authority. Each account (a user, or a key with a credit limit)
//! has a `limit` (its durable balance as last committed) and `held` (live reservations
//! plus charges settled but not yet committed); what it may still spend is
//! `limit - held`. Reserve, settle and release are single atomic operations: under a
//! lock in process, or one Lua script in Redis shared by every instance. The counter
//! only ever errs on the conservative side; the database's conditional updates are the
//! final guard that no balance goes below zero.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_redis::Pool;
use deadpool_redis::redis::{self, Script};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use store::Shared;
use store::entities::{api_key, user};

use crate::BillingError;

/// Whose money an operation concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Account {
    User(i64),
    /// A key with a credit limit; keys without one have no account.
    Key(i64),
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    limit: i64,
    held: i64,
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
    reserve: Script,
    settle: Script,
    flushed: Script,
    credit: Script,
    reclaim: Script,
}

/// The admission authority for every account.
pub struct Wallet {
    db: DatabaseConnection,
    backend: Backend,
    /// This process's name in the lease registry.
    instance: String,
    next_lease: AtomicU64,
    heartbeat: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{:x}", std::process::id(), nanos)
}

// Redis Lua numbers are doubles, and how Redis prints one varies by version (`-0`,
// `1e+08`): every value handed to HINCRBY goes through `int()`, which prints a whole
// number, and zero increments are skipped. `held` never goes below zero.
const LUA_PRELUDE: &str = r"
local function int(x) return string.format('%d', x) end
local function lease(hash, id, amount)
  if hash == '' then return end
  if amount > 0 then
    redis.call('HSET', hash, id, int(amount) .. '|' .. table.concat(KEYS, ','))
  else
    redis.call('HDEL', hash, id)
  end
end
local function add_held(key, delta)
  if delta == 0 then return end
  local held = tonumber(redis.call('HGET', key, 'held') or '0') + delta
  if held < 0 then held = 0 end
  redis.call('HSET', key, 'held', int(held))
end
";

const RESERVE: &str = r"
local amt = tonumber(ARGV[1])
for i = 1, #KEYS do
  local lim = redis.call('HGET', KEYS[i], 'limit')
  if not lim then return -i end
  local held = tonumber(redis.call('HGET', KEYS[i], 'held') or '0')
  if tonumber(lim) - held < amt then return 0 end
end
for i = 1, #KEYS do add_held(KEYS[i], amt) end
lease(ARGV[2], ARGV[3], amt)
return 1
";

const SETTLE: &str = r"
local reserved = tonumber(ARGV[1])
local charge = tonumber(ARGV[2])
for i = 1, #KEYS do
  local lim = redis.call('HGET', KEYS[i], 'limit')
  if lim then
    local held = tonumber(redis.call('HGET', KEYS[i], 'held') or '0')
    local avail = tonumber(lim) - held + reserved
    if avail < charge then charge = avail end
  end
end
if charge < 0 then charge = 0 end
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then add_held(KEYS[i], charge - reserved) end
end
lease(ARGV[3], ARGV[4], charge)
return charge
";

const FLUSHED: &str = r"
local pending = tonumber(ARGV[1])
local charged = tonumber(ARGV[2])
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    add_held(KEYS[i], -pending)
    if charged ~= 0 then
      local lim = tonumber(redis.call('HGET', KEYS[i], 'limit') or '0') - charged
      redis.call('HSET', KEYS[i], 'limit', int(lim))
    end
  end
end
lease(ARGV[3], ARGV[4], 0)
return 1
";

/// Gives back everything a dead instance still held: each lease is `amount|accounts`.
const RECLAIM: &str = r"
local entries = redis.call('HGETALL', KEYS[1])
local n = 0
for i = 1, #entries, 2 do
  local amount, accounts = string.match(entries[i + 1], '^(%-?%d+)|(.*)$')
  if amount then
    for acct in string.gmatch(accounts, '[^,]+') do
      if redis.call('EXISTS', acct) == 1 then add_held(acct, -tonumber(amount)) end
    end
    n = n + 1
  end
end
redis.call('DEL', KEYS[1])
return n
";

const CREDIT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 and tonumber(ARGV[1]) ~= 0 then
  local lim = tonumber(redis.call('HGET', KEYS[1], 'limit') or '0') + tonumber(ARGV[1])
  redis.call('HSET', KEYS[1], 'limit', int(lim))
end
return 1
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
                    reserve: script(RESERVE),
                    settle: script(SETTLE),
                    flushed: script(FLUSHED),
                    credit: script(CREDIT),
                    reclaim: script(RECLAIM),
                }),
            },
            None => Backend::Memory(Mutex::new(HashMap::new())),
        };
        Wallet {
            db,
            backend,
            instance: uuid_like(),
            next_lease: AtomicU64::new(1),
            heartbeat: Mutex::new(None),
        }
    }

    /// This instance's lease hash in Redis ("" in process: nothing to lease).
    fn lease_key(&self) -> String {
        match &self.backend {
            Backend::Memory(_) => String::new(),
            Backend::Redis { prefix, .. } => format!("{prefix}:lease:{}", self.instance),
        }
    }

    /// Redis only: announces this instance every `ttl / 3`, and gives back the holds
    /// of instances that stopped announcing themselves (crashed with requests in
    /// flight) — what they held was never charged, so it must not stay held.
    pub fn start_leases(self: &Arc<Self>, ttl: Duration) {
        let Backend::Redis { .. } = &self.backend else {
            return;
        };
        let me = Arc::clone(self);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval((ttl / 3).max(Duration::from_millis(100)));
            loop {
                tick.tick().await;
                if let Err(e) = me.heartbeat_once(ttl).await {
                    tracing::warn!(error = ?e, "wallet lease heartbeat failed");
                }
            }
        });
        *lock(&self.heartbeat) = Some(task);
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
        for other in instances.iter().filter(|i| **i != self.instance) {
            let alive: bool = redis::cmd("EXISTS")
                .arg(format!("{prefix}:alive:{other}"))
                .query_async(&mut conn)
                .await?;
            if alive {
                continue;
            }
            let reclaimed: i64 = scripts
                .reclaim
                .key(format!("{prefix}:lease:{other}"))
                .invoke_async(&mut conn)
                .await?;
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

    /// Stops announcing this instance (as a crash would): its holds are reclaimed by
    /// the others once its announcement expires.
    pub async fn stop_heartbeat(&self) {
        if let Some(task) = lock(&self.heartbeat).take() {
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

    /// Loads every account from the database. In Redis, accounts that other instances
    /// already hold are kept as they are.
    pub async fn load_all(&self) -> Result<(), BillingError> {
        let users = user::Entity::find().all(&self.db).await?;
        let keys = api_key::Entity::find()
            .filter(api_key::Column::CreditLimit.is_not_null())
            .filter(api_key::Column::Status.ne("deleted"))
            .all(&self.db)
            .await?;
        let mut accounts: Vec<(Account, i64)> = users
            .iter()
            .map(|u| (Account::User(u.id), u.balance))
            .collect();
        accounts.extend(
            keys.iter()
                .filter_map(|k| k.credit_limit.map(|l| (Account::Key(k.id), l - k.used))),
        );
        match &self.backend {
            Backend::Memory(slots) => {
                let mut slots = lock(slots);
                for (acct, limit) in accounts {
                    slots.entry(acct).or_insert(Slot { limit, held: 0 });
                }
            }
            Backend::Redis { pool, prefix, .. } => {
                let mut conn = pool.get().await?;
                for chunk in accounts.chunks(500) {
                    let mut pipe = redis::pipe();
                    for (acct, limit) in chunk {
                        let k = redis_key(prefix, *acct);
                        pipe.hset_nx(&k, "limit", *limit).ignore();
                        pipe.hset_nx(&k, "held", 0).ignore();
                    }
                    let () = pipe.query_async(&mut conn).await?;
                }
            }
        }
        Ok(())
    }

    /// Sets an account's limit (a new user, or a key whose credit limit changed),
    /// keeping whatever it holds.
    pub async fn set_limit(&self, acct: Account, limit: i64) -> Result<(), BillingError> {
        match &self.backend {
            Backend::Memory(slots) => {
                lock(slots).entry(acct).or_default().limit = limit;
            }
            Backend::Redis { pool, prefix, .. } => {
                init_slot(pool, prefix, acct, limit, true).await?;
            }
        }
        Ok(())
    }

    /// Moves an account's limit by `delta` (a key's credit limit changed), keeping
    /// what it holds; creates the account with `create_with` when it has none.
    pub async fn adjust_limit(
        &self,
        acct: Account,
        delta: i64,
        create_with: i64,
    ) -> Result<(), BillingError> {
        match &self.backend {
            Backend::Memory(slots) => {
                let mut slots = lock(slots);
                match slots.get_mut(&acct) {
                    Some(s) => s.limit += delta,
                    None => {
                        slots.insert(
                            acct,
                            Slot {
                                limit: create_with,
                                held: 0,
                            },
                        );
                    }
                }
            }
            Backend::Redis {
                pool,
                prefix,
                scripts,
            } => {
                let mut conn = pool.get().await?;
                let k = redis_key(prefix, acct);
                let exists: bool = redis::cmd("EXISTS").arg(&k).query_async(&mut conn).await?;
                if exists {
                    let _: i64 = scripts
                        .credit
                        .key(&k)
                        .arg(delta)
                        .invoke_async(&mut conn)
                        .await?;
                } else {
                    drop(conn);
                    init_slot(pool, prefix, acct, create_with, false).await?;
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
            match self.try_reserve(&accounts, amount, lease).await? {
                Reserve::Done => {
                    return Ok(Hold {
                        user_id,
                        key_id,
                        amount,
                        lease,
                    });
                }
                Reserve::Short => return Err(BillingError::Insufficient),
                Reserve::Missing(acct) => self.load_missing(acct).await?,
            }
        }
        Err(BillingError::Insufficient)
    }

    /// Turns a hold into a pending charge of `cost` (capped at what the accounts can
    /// still cover) and returns the amount that will be charged.
    pub async fn settle(&self, hold: Hold, cost: i64) -> Result<i64, BillingError> {
        let accounts = accounts_of(hold.user_id, hold.key_id);
        let cost = cost.max(0);
        match &self.backend {
            Backend::Memory(slots) => {
                let mut slots = lock(slots);
                let mut charge = cost;
                for a in &accounts {
                    if let Some(s) = slots.get(a) {
                        charge = charge.min(s.limit - s.held + hold.amount);
                    }
                }
                let charge = charge.max(0);
                for a in &accounts {
                    if let Some(s) = slots.get_mut(a) {
                        s.held = (s.held + charge - hold.amount).max(0);
                    }
                }
                Ok(charge)
            }
            Backend::Redis {
                pool,
                prefix,
                scripts,
            } => {
                let mut conn = pool.get().await?;
                let mut inv = scripts.settle.prepare_invoke();
                for a in &accounts {
                    inv.key(redis_key(prefix, *a));
                }
                let charge: i64 = inv
                    .arg(hold.amount)
                    .arg(cost)
                    .arg(self.lease_key())
                    .arg(hold.lease)
                    .invoke_async(&mut conn)
                    .await?;
                Ok(charge)
            }
        }
    }

    /// Gives a hold back untouched (the request failed).
    pub async fn release(&self, hold: Hold) -> Result<(), BillingError> {
        let accounts = accounts_of(hold.user_id, hold.key_id);
        self.apply_flushed(&accounts, hold.lease, hold.amount, 0)
            .await
    }

    /// Records that a pending charge was committed: it leaves `held`, and what was
    /// actually charged leaves `limit`.
    pub async fn flushed(
        &self,
        user_id: i64,
        key_id: Option<i64>,
        lease: u64,
        pending: i64,
        charged: i64,
    ) -> Result<(), BillingError> {
        self.apply_flushed(&accounts_of(user_id, key_id), lease, pending, charged)
            .await
    }

    /// Adds committed credits (mint, transfer in, redemption) to a user's limit.
    pub async fn credit(&self, user_id: i64, amount: i64) -> Result<(), BillingError> {
        let acct = Account::User(user_id);
        match &self.backend {
            Backend::Memory(slots) => {
                if let Some(s) = lock(slots).get_mut(&acct) {
                    s.limit += amount;
                }
            }
            Backend::Redis {
                pool,
                prefix,
                scripts,
            } => {
                let mut conn = pool.get().await?;
                let _: i64 = scripts
                    .credit
                    .key(redis_key(prefix, acct))
                    .arg(amount)
                    .invoke_async(&mut conn)
                    .await?;
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
        accounts: &[Account],
        amount: i64,
        lease: u64,
    ) -> Result<Reserve, BillingError> {
        match &self.backend {
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
                Ok(Reserve::Done)
            }
            Backend::Redis {
                pool,
                prefix,
                scripts,
            } => {
                let mut conn = pool.get().await?;
                let mut inv = scripts.reserve.prepare_invoke();
                for a in accounts {
                    inv.key(redis_key(prefix, *a));
                }
                let r: i64 = inv
                    .arg(amount)
                    .arg(self.lease_key())
                    .arg(lease)
                    .invoke_async(&mut conn)
                    .await?;
                Ok(match r {
                    1 => Reserve::Done,
                    0 => Reserve::Short,
                    n => {
                        let idx = usize::try_from(-n - 1).unwrap_or(0);
                        Reserve::Missing(accounts.get(idx).copied().unwrap_or(accounts[0]))
                    }
                })
            }
        }
    }

    async fn apply_flushed(
        &self,
        accounts: &[Account],
        lease: u64,
        pending: i64,
        charged: i64,
    ) -> Result<(), BillingError> {
        match &self.backend {
            Backend::Memory(slots) => {
                let mut slots = lock(slots);
                for a in accounts {
                    if let Some(s) = slots.get_mut(a) {
                        s.held = (s.held - pending).max(0);
                        s.limit -= charged;
                    }
                }
                Ok(())
            }
            Backend::Redis {
                pool,
                prefix,
                scripts,
            } => {
                let mut conn = pool.get().await?;
                let mut inv = scripts.flushed.prepare_invoke();
                for a in accounts {
                    inv.key(redis_key(prefix, *a));
                }
                let _: i64 = inv
                    .arg(pending)
                    .arg(charged)
                    .arg(self.lease_key())
                    .arg(lease)
                    .invoke_async(&mut conn)
                    .await?;
                Ok(())
            }
        }
    }

    /// An account unknown to the wallet (made outside the API, or lost with Redis)
    /// is loaded from the database; an account that no longer exists gets limit 0.
    async fn load_missing(&self, acct: Account) -> Result<(), BillingError> {
        let limit = match acct {
            Account::User(id) => user::Entity::find_by_id(id)
                .one(&self.db)
                .await?
                .map_or(0, |u| u.balance),
            Account::Key(id) => api_key::Entity::find_by_id(id)
                .one(&self.db)
                .await?
                .and_then(|k| k.credit_limit.map(|l| l - k.used))
                .unwrap_or(0),
        };
        tracing::info!(account = ?acct, "wallet account loaded from the database");
        match &self.backend {
            Backend::Memory(slots) => {
                lock(slots).entry(acct).or_insert(Slot { limit, held: 0 });
            }
            Backend::Redis { pool, prefix, .. } => {
                init_slot(pool, prefix, acct, limit, false).await?;
            }
        }
        Ok(())
    }
}

enum Reserve {
    Done,
    Short,
    Missing(Account),
}

fn accounts_of(user_id: i64, key_id: Option<i64>) -> Vec<Account> {
    let mut v = vec![Account::User(user_id)];
    if let Some(k) = key_id {
        v.push(Account::Key(k));
    }
    v
}

/// Creates an account in Redis with `held` 0; its `limit` is set, or (with
/// `overwrite` false) only set when the account has none yet.
async fn init_slot(
    pool: &Pool,
    prefix: &str,
    acct: Account,
    limit: i64,
    overwrite: bool,
) -> Result<(), BillingError> {
    let mut conn = pool.get().await?;
    let k = redis_key(prefix, acct);
    let mut pipe = redis::pipe();
    pipe.atomic();
    if overwrite {
        pipe.hset(&k, "limit", limit).ignore();
    } else {
        pipe.hset_nx(&k, "limit", limit).ignore();
    }
    let () = pipe
        .hset_nx(&k, "held", 0)
        .ignore()
        .query_async(&mut conn)
        .await?;
    Ok(())
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

    async fn wallet() -> Wallet {
        let db = store::db::connect("sqlite::memory:").await.unwrap();
        Wallet::new(db, &Shared::memory())
    }

    #[tokio::test]
    async fn concurrent_reservations_never_exceed_the_limit() {
        let w = Arc::new(wallet().await);
        w.set_limit(Account::User(1), 1_000).await.unwrap();
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
        w.set_limit(Account::User(1), 1_000).await.unwrap();
        w.set_limit(Account::Key(7), 50).await.unwrap();
        assert!(w.reserve(1, Some(7), 60).await.is_err());
        // All or nothing: the user's side was not touched by the refusal.
        assert_eq!(w.available(Account::User(1)).await.unwrap(), Some(1_000));
        let h = w.reserve(1, Some(7), 50).await.unwrap();
        w.release(h).await.unwrap();
        assert_eq!(w.available(Account::Key(7)).await.unwrap(), Some(50));
    }

    #[tokio::test]
    async fn settling_moves_the_hold_to_a_pending_charge_capped_at_what_is_left() {
        let w = wallet().await;
        w.set_limit(Account::User(1), 100).await.unwrap();
        let h = w.reserve(1, None, 40).await.unwrap();
        // Cheaper than reserved: the rest is free again at once.
        assert_eq!(w.settle(h, 25).await.unwrap(), 25);
        assert_eq!(w.available(Account::User(1)).await.unwrap(), Some(75));
        // Dearer than everything left: capped.
        let h = w.reserve(1, None, 10).await.unwrap();
        assert_eq!(w.settle(h, 500).await.unwrap(), 75);
        assert_eq!(w.available(Account::User(1)).await.unwrap(), Some(0));
        // The commit moves pending charges from `held` to the limit.
        w.flushed(1, None, 0, 100, 100).await.unwrap();
        assert_eq!(w.available(Account::User(1)).await.unwrap(), Some(0));
        w.credit(1, 30).await.unwrap();
        assert_eq!(w.available(Account::User(1)).await.unwrap(), Some(30));
    }
}
