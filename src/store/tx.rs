//! A write transaction begun by hand on a pooled connection.
//!
//! sqlx's own `Transaction` returns its connection to the pool after a failed COMMIT or
//! ROLLBACK with its idea of the transaction depth out of step with the database (SQLite rolls
//! back by itself on a full disk; the follow-up ROLLBACK then fails), and every later BEGIN on
//! that connection fails: the service stays wedged until restart. Here a connection goes back
//! to the pool only after a COMMIT or ROLLBACK that succeeded; any other way out (an error, a
//! dropped transaction) closes it, which rolls back whatever it still held, and the pool opens
//! a fresh one.

use std::future::Future;
use std::pin::Pin;

use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool, Postgres, Sqlite};

use super::StoreError;

/// A database whose connections run one plain SQL statement (`BEGIN`, `COMMIT`, `ROLLBACK`).
/// Concrete per backend: a generic bound on sqlx's `Executor` does not survive `async_trait`.
pub trait RawSql: Database {
    /// Runs `sql` on `conn`.
    fn run<'a>(
        conn: &'a mut Self::Connection,
        sql: &'static str,
    ) -> Pin<Box<dyn Future<Output = Result<(), sqlx::Error>> + Send + 'a>>;
}

impl RawSql for Sqlite {
    fn run<'a>(
        conn: &'a mut Self::Connection,
        sql: &'static str,
    ) -> Pin<Box<dyn Future<Output = Result<(), sqlx::Error>> + Send + 'a>> {
        Box::pin(async move { sqlx::Executor::execute(conn, sql).await.map(|_| ()) })
    }
}

impl RawSql for Postgres {
    fn run<'a>(
        conn: &'a mut Self::Connection,
        sql: &'static str,
    ) -> Pin<Box<dyn Future<Output = Result<(), sqlx::Error>> + Send + 'a>> {
        Box::pin(async move { sqlx::Executor::execute(conn, sql).await.map(|_| ()) })
    }
}

/// A connection inside a transaction this module began.
pub struct TxConn<DB: Database> {
    conn: Option<PoolConnection<DB>>,
}

impl<DB: RawSql> TxConn<DB> {
    /// Acquires a connection and runs `begin` (`BEGIN`, `BEGIN IMMEDIATE`) on it.
    pub async fn begin(pool: &Pool<DB>, begin: &'static str) -> Result<TxConn<DB>, StoreError> {
        let mut conn = pool.acquire().await?;
        if let Err(e) = DB::run(&mut conn, begin).await {
            conn.close_on_drop();
            return Err(e.into());
        }
        Ok(TxConn { conn: Some(conn) })
    }

    /// The connection, for the transaction's statements.
    ///
    /// # Panics
    /// Never: the connection is only taken by `commit` and `rollback`, which consume `self`.
    #[expect(clippy::expect_used, reason = "an invariant of the type")]
    pub fn conn(&mut self) -> &mut DB::Connection {
        self.conn
            .as_mut()
            .expect("a live transaction has its connection")
    }

    /// COMMIT. On an error the connection is closed, never reused: its state is unknown, and
    /// so may be the outcome (the caller finds out on another connection).
    pub async fn commit(self) -> Result<(), StoreError> {
        self.finish("COMMIT").await
    }

    /// ROLLBACK; on an error the connection is closed (which rolls back).
    pub async fn rollback(self) {
        let _ = self.finish("ROLLBACK").await;
    }

    async fn finish(mut self, sql: &'static str) -> Result<(), StoreError> {
        let Some(mut conn) = self.conn.take() else {
            return Ok(());
        };
        match DB::run(&mut conn, sql).await {
            Ok(()) => Ok(()),
            Err(e) => {
                conn.close_on_drop();
                Err(e.into())
            }
        }
    }
}

impl<DB: Database> Drop for TxConn<DB> {
    fn drop(&mut self) {
        // Dropped mid-transaction (an error, a cancelled task): closing rolls back.
        if let Some(conn) = self.conn.as_mut() {
            conn.close_on_drop();
        }
    }
}
