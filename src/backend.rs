//! Choosing and opening the storage backend for a command, with the lock that goes with it.
//!
//! | access      | SQLite                                   | PostgreSQL                               |
//! |-------------|------------------------------------------|------------------------------------------|
//! | serve       | creates the data dir; exclusive file lock | shared advisory lock, held while serving |
//! | maintenance | exclusive file lock (no server running)   | exclusive advisory lock (no instance up) |
//! | read-only   | no lock (WAL readers beside the server)   | no lock                                  |
//! | admin       | no lock (token table, beside the server)  | no lock                                  |

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::config::Dirs;
use crate::store::{PostgresStore, SqliteStore, Store};

/// How a command uses the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `serve`: read and write; other servers may share a PostgreSQL database.
    Serve,
    /// `rotate-kek`: read and write, with no server running.
    Maintenance,
    /// `verify`, `export`: read only, beside running servers.
    ReadOnly,
    /// `token`: small writes to tables the ledger's chain does not cover, beside running
    /// servers (SQLite's busy timeout queues them behind the server's writer).
    Admin,
}

/// Held for as long as the command runs.
#[derive(Debug)]
pub enum OwnerLock {
    /// The SQLite data directory's lock file.
    File(fs::File),
    /// A PostgreSQL connection holding an advisory lock.
    Postgres(sqlx::pool::PoolConnection<sqlx::Postgres>),
    /// A task that keeps a server's shared advisory lock held, re-taking it on a new
    /// connection if PostgreSQL drops the one holding it.
    PostgresKeeper(LockKeeper),
    /// Nothing to hold.
    None,
}

/// How often the serve lock's connection is checked: it bounds how long a dropped lock goes
/// unnoticed, and a `SELECT 1` per interval per instance costs nothing.
const LOCK_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// How often taking the lock again is retried while PostgreSQL refuses (one warning each).
const LOCK_RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// Keeps the serve lock for as long as it lives.
#[derive(Debug)]
pub struct LockKeeper(tokio::task::JoinHandle<()>);

impl Drop for LockKeeper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn keep_serve_lock(
    store: PostgresStore,
    mut conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
) -> LockKeeper {
    LockKeeper(tokio::spawn(async move {
        loop {
            tokio::time::sleep(LOCK_CHECK_INTERVAL).await;
            if sqlx::query("SELECT 1").execute(&mut *conn).await.is_ok() {
                continue;
            }
            // The session that held the lock is gone, and the lock with it: without it,
            // `rotate-kek` would not see this server. Take it again.
            tracing::warn!("lost the connection holding the running-server lock; taking it again");
            loop {
                match store.hold_serve_lock().await {
                    Ok(c) => {
                        conn = c;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot take the running-server lock yet");
                        tokio::time::sleep(LOCK_RETRY_INTERVAL).await;
                    }
                }
            }
        }
    }))
}

/// Closes the store and gives up the lock, in the order each backend needs.
pub async fn close(store: &dyn Store, lock: OwnerLock) {
    match lock {
        // The data directory stays locked until the database is closed (WAL checkpointed).
        lock @ OwnerLock::File(_) => {
            store.close().await;
            drop(lock);
        }
        // A pooled connection holds the PostgreSQL lock: give it back first, or closing the
        // pool waits for it (for ever, if PostgreSQL already dropped that connection).
        lock => {
            drop(lock);
            store.close().await;
        }
    }
}

/// Opens the backend `dirs` names (PostgreSQL if `database_url` is set, else SQLite).
pub async fn open(dirs: &Dirs, access: Access) -> anyhow::Result<(Arc<dyn Store>, OwnerLock)> {
    if let Some(url) = &dirs.database_url {
        let store = PostgresStore::open(url, dirs.database_pool_size)
            .await
            .context("cannot open the PostgreSQL database (check --database-url)")?;
        let lock = match access {
            Access::Serve => OwnerLock::PostgresKeeper(keep_serve_lock(
                store.clone(),
                store.hold_serve_lock().await?,
            )),
            Access::Maintenance => match store.try_exclusive_serve_lock().await? {
                Some(conn) => OwnerLock::Postgres(conn),
                None => bail!(
                    "an auditledger server is running on this database; stop every instance first"
                ),
            },
            Access::ReadOnly | Access::Admin => OwnerLock::None,
        };
        return Ok((Arc::new(store), lock));
    }
    let db = dirs.database_path();
    match access {
        Access::Serve => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dirs.data_dir)
                .with_context(|| {
                    format!("cannot create data directory {}", dirs.data_dir.display())
                })?;
            let lock = crate::lockfile::lock_data_dir(&dirs.data_dir)?;
            let fresh = !db.exists();
            let store = SqliteStore::open(&db, dirs.sqlite_max_db_bytes())
                .await
                .with_context(|| format!("cannot open database {}", db.display()))?;
            if fresh {
                println!("created database {}", db.display());
            }
            Ok((Arc::new(store), OwnerLock::File(lock)))
        }
        Access::Maintenance => {
            if !db.exists() {
                bail!("no ledger database at {}", db.display());
            }
            let lock = crate::lockfile::lock_data_dir(&dirs.data_dir)?;
            let store = SqliteStore::open(&db, dirs.sqlite_max_db_bytes())
                .await
                .with_context(|| format!("cannot open database {}", db.display()))?;
            Ok((Arc::new(store), OwnerLock::File(lock)))
        }
        Access::Admin => {
            // The first admin token may be made before the first start: the database is
            // created as `serve` would create it (the service records the token at its start).
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dirs.data_dir)
                .with_context(|| {
                    format!("cannot create data directory {}", dirs.data_dir.display())
                })?;
            let store = SqliteStore::open(&db, None)
                .await
                .with_context(|| format!("cannot open database {}", db.display()))?;
            Ok((Arc::new(store), OwnerLock::None))
        }
        Access::ReadOnly => {
            if !db.exists() {
                bail!("no ledger database at {}", db.display());
            }
            let store = SqliteStore::open_read_only(&db)
                .await
                .with_context(|| format!("cannot open database {}", db.display()))?;
            Ok((Arc::new(store), OwnerLock::None))
        }
    }
}
