//! Opening the database (SQLite file or Postgres) and applying the migrations.

use std::time::Duration;

use migrations::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};

use crate::StoreError;

/// The embedded default: a SQLite file next to the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/tollgate.db?mode=rwc";

/// The longest a query waits for a pooled Postgres connection. sqlx keeps retrying a
/// refused connection until this deadline, so it is also how long a call can take to
/// learn that the database is down (with 10 s, admin calls during an outage hung 10 s
/// before their 503). sea-orm maps `connect_timeout` to the same sqlx setting.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// SQLite is a local file that cannot go away: a wait for one of its few pooled
/// connections is contention (a writer holding the lock), so it may wait longer.
const SQLITE_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects, tunes SQLite (WAL, several pooled connections), and migrates.
pub async fn connect(url: &str) -> Result<DatabaseConnection, StoreError> {
    open(url, 4).await
}

/// Connects for the ledger writer, which runs one batch at a time: on SQLite its pool
/// holds a single connection. sqlx hands a released connection back on a task of its
/// own, so a sequential user of a larger pool still cycles through every connection,
/// each with a driver thread and a page cache filled with the same table tails.
/// Measured with bench/run.sh under plain load: three SQLite driver threads busy
/// before, one after. A Postgres writer keeps the usual pool (its connections' memory
/// is the server's, and a broken one is replaced without waiting for the others).
pub async fn connect_writer(url: &str) -> Result<DatabaseConnection, StoreError> {
    open(url, 1).await
}

/// Opens a pool of at most `sqlite_connections` on SQLite (16 on Postgres) and
/// migrates.
async fn open(url: &str, sqlite_connections: u32) -> Result<DatabaseConnection, StoreError> {
    let sqlite = url.starts_with("sqlite:");
    if sqlite {
        ensure_sqlite_dir(url)?;
    }
    let mut options = ConnectOptions::new(url.to_owned());
    if sqlite {
        // Every pooled connection: WAL, a bounded page cache (1 MiB, not SQLite's 2 MiB
        // default) and a busy timeout instead of immediate "database is locked".
        // Temporary data in memory: a multi-row INSERT inside the ledger writer's
        // transaction keeps a statement journal (each page it changes, as it was), and
        // past 64 KiB SQLite spilled that to a temporary file made and unlinked per
        // batch: about 290 `pwrite`s per commit (strace at one connection).
        options.map_sqlx_sqlite_opts(|o| {
            o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .pragma("cache_size", "-1024")
                .pragma("temp_store", "memory")
        });
    }
    if !sqlite && loopback_without_tls_choice(url) {
        // sqlx's default (`prefer`) does a TLS handshake on every new connection; to a
        // local server it protects nothing and took 90-100 ms a connection (measured on
        // the bench's cold start: 514 ms, two pools opening). An explicit `sslmode` in
        // the URL or `PGSSLMODE` is always obeyed.
        options.map_sqlx_postgres_opts(|o| o.ssl_mode(sea_orm::sqlx::postgres::PgSslMode::Disable));
    }
    let acquire = if sqlite {
        SQLITE_ACQUIRE_TIMEOUT
    } else {
        ACQUIRE_TIMEOUT
    };
    options
        .max_connections(if sqlite { sqlite_connections } else { 16 })
        .min_connections(1)
        .connect_timeout(acquire)
        .acquire_timeout(acquire)
        .sqlx_logging(false);
    let db = Database::connect(options).await?;
    if db.get_database_backend() == DbBackend::Sqlite {
        for pragma in ["PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL"] {
            db.execute_raw(Statement::from_string(DbBackend::Sqlite, pragma))
                .await?;
        }
    }
    Migrator::up(&db, None).await?;
    Ok(db)
}

/// Whether a database error means the database could not serve (connection refused or
/// lost, no pooled connection within the acquire timeout, or a server that is shutting
/// down, starting, full of connections or read-only: see [`UNAVAILABLE_SQLSTATES`]).
pub fn is_unreachable(e: &sea_orm::DbErr) -> bool {
    use sea_orm::sqlx::Error as SqlxError;
    use sea_orm::{DbErr, RuntimeErr};
    let sqlx_unreachable = |e: &RuntimeErr| match e {
        RuntimeErr::SqlxError(e) => match e.as_ref() {
            SqlxError::Io(_)
            | SqlxError::PoolTimedOut
            | SqlxError::PoolClosed
            | SqlxError::WorkerCrashed => true,
            SqlxError::Database(db) => db.code().is_some_and(|code| unavailable_sqlstate(&code)),
            _ => false,
        },
        _ => false,
    };
    match e {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(e) | DbErr::Query(e) => sqlx_unreachable(e),
        _ => false,
    }
}

/// Whether a transaction lost a race with another writer and may simply be run again:
/// SQLite's `SQLITE_BUSY` family (5, and 517 `BUSY_SNAPSHOT`: a read transaction cannot
/// become a write one after another connection committed, whatever the busy timeout),
/// `SQLITE_LOCKED` (6), Postgres's serialization failure (`40001`) and deadlock (`40P01`).
pub fn is_contended(e: &sea_orm::DbErr) -> bool {
    use sea_orm::sqlx::Error as SqlxError;
    use sea_orm::{DbErr, RuntimeErr};
    let (DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))) = e else {
        return false;
    };
    let SqlxError::Database(db) = e.as_ref() else {
        return false;
    };
    db.code().is_some_and(|code| match code.len() {
        // A Postgres SQLSTATE.
        5 => matches!(code.as_ref(), "40001" | "40P01"),
        // A SQLite result code; its low byte is the primary code.
        _ => code.parse::<u32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6)),
    })
}

/// Postgres SQLSTATEs of a server that cannot serve for now, whatever the query:
/// `57P01` admin shutdown, `57P02` crash shutdown, `57P03` cannot connect now (starting
/// up), `53300` too many connections, `25006` read-only transaction (a replica after a
/// failover). Class `08` (connection exceptions) counts too.
const UNAVAILABLE_SQLSTATES: [&str; 5] = ["57P01", "57P02", "57P03", "53300", "25006"];

fn unavailable_sqlstate(code: &str) -> bool {
    UNAVAILABLE_SQLSTATES.contains(&code) || code.starts_with("08")
}

/// True when the database answers a trivial query.
pub async fn ping(db: &DatabaseConnection) -> bool {
    db.ping().await.is_ok()
}

/// Whether a Postgres URL names a loopback host (`localhost`, `127.x`, `::1`, or a
/// Unix socket directory) and leaves the TLS mode unsaid (no `sslmode` parameter, no
/// `PGSSLMODE` in the environment).
fn loopback_without_tls_choice(url: &str) -> bool {
    if url.contains("sslmode=") || std::env::var_os("PGSSLMODE").is_some() {
        return false;
    }
    let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    match host {
        // No host: libpq's default, the local Unix socket.
        "" | "localhost" => true,
        h => h
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
    }
}

fn ensure_sqlite_dir(url: &str) -> Result<(), StoreError> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    if let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Config(format!("cannot create {}: {e}", dir.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::sync::Arc;

    use sea_orm::sqlx::error::{DatabaseError, ErrorKind};
    use sea_orm::{DbErr, RuntimeErr};

    use super::*;

    /// A database error carrying only a SQLSTATE.
    #[derive(Debug)]
    struct Sqlstate(&'static str);

    impl std::fmt::Display for Sqlstate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for Sqlstate {}

    impl DatabaseError for Sqlstate {
        fn message(&self) -> &str {
            self.0
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> ErrorKind {
            ErrorKind::Other
        }
    }

    fn failed_with(code: &'static str) -> [DbErr; 2] {
        let sqlx = || Arc::new(sea_orm::sqlx::Error::Database(Box::new(Sqlstate(code))));
        [
            DbErr::Query(RuntimeErr::SqlxError(sqlx())),
            DbErr::Exec(RuntimeErr::SqlxError(sqlx())),
        ]
    }

    #[test]
    fn a_postgres_shutting_down_starting_or_full_is_unavailable() {
        // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections,
        // read_only_sql_transaction (a replica after failover), connection_failure.
        for code in ["57P01", "57P02", "57P03", "53300", "25006", "08006"] {
            for e in failed_with(code) {
                assert!(is_unreachable(&e), "{code}");
            }
        }
    }

    #[test]
    fn a_refused_query_is_not_an_outage() {
        // unique_violation, syntax_error, query_canceled.
        for code in ["23505", "42601", "57014"] {
            for e in failed_with(code) {
                assert!(!is_unreachable(&e), "{code}");
            }
        }
        assert!(!is_unreachable(&DbErr::RecordNotFound("x".into())));
    }

    #[test]
    fn a_lost_race_is_told_apart_from_a_refused_query_on_both_databases() {
        let err = |code: &'static str| {
            DbErr::Exec(RuntimeErr::SqlxError(Arc::new(
                sea_orm::sqlx::Error::Database(Box::new(Sqlstate(code))),
            )))
        };
        for code in ["40001", "40P01", "5", "517", "261", "6", "262"] {
            assert!(is_contended(&err(code)), "{code}");
        }
        // Unique violation, insufficient privilege (whose number ends like a busy code
        // would), SQLite's constraint and generic errors.
        for code in ["23505", "42501", "2067", "1", "19"] {
            assert!(!is_contended(&err(code)), "{code}");
        }
    }

    /// A new SQLite file in the temp directory, opened by `open` (given its URL), with a
    /// table `t (id, n)`.
    async fn with_table_t<F, Fut>(name: &str, open: F) -> (std::path::PathBuf, DatabaseConnection)
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<DatabaseConnection, StoreError>>,
    {
        use sea_orm::ConnectionTrait;
        let path = std::env::temp_dir().join(format!(
            "tollgate-store-{name}-{}-{}.db",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let db = open(format!("sqlite://{}?mode=rwc", path.display()))
            .await
            .unwrap();
        db.execute_unprepared("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER)")
            .await
            .unwrap();
        (path, db)
    }

    /// Closes `db` and removes its file, with its WAL and shared-memory files.
    async fn close_and_remove(db: DatabaseConnection, path: &std::path::Path) {
        db.close().await.unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    #[tokio::test]
    async fn sqlites_refusal_to_turn_a_stale_read_into_a_write_is_a_lost_race() {
        use sea_orm::{ConnectionTrait, TransactionTrait};
        let (path, db) = with_table_t("contended", |url| async move { connect(&url).await }).await;
        db.execute_unprepared("INSERT INTO t VALUES (1, 0)")
            .await
            .unwrap();
        let reader = db.begin().await.unwrap();
        reader.execute_unprepared("SELECT n FROM t").await.unwrap();
        // Another connection commits a write after the read began.
        db.execute_unprepared("UPDATE t SET n = n + 1")
            .await
            .unwrap();
        let e = reader
            .execute_unprepared("UPDATE t SET n = n + 10")
            .await
            .unwrap_err();
        assert!(is_contended(&e), "{e:?}");
        assert!(!is_unreachable(&e), "{e:?}");
        drop(reader);
        close_and_remove(db, &path).await;
    }

    #[tokio::test]
    async fn the_writers_pool_opens_one_sqlite_connection_however_fast_batches_follow_each_other() {
        use sea_orm::{ConnectionTrait, TransactionTrait};
        let (path, db) =
            with_table_t("writer", |url| async move { connect_writer(&url).await }).await;
        // Batch after batch, as the writer commits them: each begins as soon as the
        // last one committed, before sqlx has handed its connection back.
        for n in 0..50 {
            let tx = db.begin().await.unwrap();
            tx.execute_unprepared(&format!("INSERT INTO t (n) VALUES ({n})"))
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
        let pool = db.get_sqlite_connection_pool();
        assert_eq!(pool.size(), 1);
        let rows = db
            .query_one_raw(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT COUNT(*) AS n FROM t",
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rows.try_get::<i64>("", "n").unwrap(), 50);
        close_and_remove(db, &path).await;
    }

    #[tokio::test]
    async fn every_pooled_sqlite_connection_keeps_its_temporary_data_in_memory() {
        let (path, db) = with_table_t(
            "temp_store",
            |url| async move { connect_writer(&url).await },
        )
        .await;
        // 2 is MEMORY: no temporary file per multi-row INSERT in a transaction.
        let row = db
            .query_one_raw(Statement::from_string(
                DbBackend::Sqlite,
                "PRAGMA temp_store",
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.try_get_by_index::<i64>(0).unwrap(), 2);
        close_and_remove(db, &path).await;
    }
}
