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
    let sqlite = url.starts_with("sqlite:");
    if sqlite {
        ensure_sqlite_dir(url)?;
    }
    let mut options = ConnectOptions::new(url.to_owned());
    if sqlite {
        // Every pooled connection: WAL, a bounded page cache (1 MiB, not SQLite's 2 MiB
        // default) and a busy timeout instead of immediate "database is locked".
        options.map_sqlx_sqlite_opts(|o| {
            o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .pragma("cache_size", "-1024")
        });
    }
    let acquire = if sqlite {
        SQLITE_ACQUIRE_TIMEOUT
    } else {
        ACQUIRE_TIMEOUT
    };
    options
        .max_connections(if sqlite { 4 } else { 16 })
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

/// Whether a database error means the database could not be reached (connection
/// refused or lost, no pooled connection within the acquire timeout).
pub fn is_unreachable(e: &sea_orm::DbErr) -> bool {
    use sea_orm::{DbErr, RuntimeErr};
    let sqlx_unreachable = |e: &RuntimeErr| match e {
        RuntimeErr::SqlxError(e) => matches!(
            e.as_ref(),
            sea_orm::sqlx::Error::Io(_)
                | sea_orm::sqlx::Error::PoolTimedOut
                | sea_orm::sqlx::Error::PoolClosed
                | sea_orm::sqlx::Error::WorkerCrashed
        ),
        _ => false,
    };
    match e {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(e) | DbErr::Query(e) => sqlx_unreachable(e),
        _ => false,
    }
}

/// True when the database answers a trivial query.
pub async fn ping(db: &DatabaseConnection) -> bool {
    db.ping().await.is_ok()
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
