//! Whether the service can write. A failed write transaction (a full disk, an I/O error, a lost
//! connection) marks it unable, until a write succeeds: the next append, or the probe the
//! ledger runs every second while writes fail. `/readyz` reports it, so a load balancer stops
//! sending appends to an instance that cannot take them and sends them again once it can.

use std::sync::Mutex;

use crate::store::StoreError;
use crate::telemetry;

/// The outcome of the last write, shared by the writer, the prober and `/readyz`.
#[derive(Debug)]
pub struct WriteHealth {
    failure: Mutex<Option<String>>,
}

impl Default for WriteHealth {
    fn default() -> WriteHealth {
        metrics::gauge!(telemetry::WRITABLE).set(1.0);
        WriteHealth {
            failure: Mutex::new(None),
        }
    }
}

impl WriteHealth {
    /// Records a failed write. `what` names the operation; the reason given to `/readyz` is the
    /// database's own message (never data: statements carry values only as parameters).
    pub fn failed(&self, what: &str, error: &StoreError) {
        let reason = reason(error);
        metrics::counter!(telemetry::WRITE_FAILURES).increment(1);
        metrics::gauge!(telemetry::WRITABLE).set(0.0);
        tracing::error!(operation = what, reason = %reason, "a write failed; the service cannot write until one succeeds");
        *self.lock() = Some(reason);
    }

    /// Records a successful write.
    pub fn succeeded(&self) {
        let mut failure = self.lock();
        if failure.take().is_some() {
            metrics::gauge!(telemetry::WRITABLE).set(1.0);
            tracing::warn!("writes succeed again");
        }
    }

    /// Why the service cannot write, if it cannot.
    #[must_use]
    pub fn failure(&self) -> Option<String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn reason(error: &StoreError) -> String {
    match error {
        StoreError::Database(e) => match e.as_database_error() {
            Some(db) => format!("the database refused the write: {}", db.message()),
            None => match e {
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                    "the database cannot be reached".to_owned()
                }
                _ => "the database failed".to_owned(),
            },
        },
        StoreError::Conflict(_) => "another writer took the same position".to_owned(),
        StoreError::Malformed(_) | StoreError::Migration(_) => {
            "the database is inconsistent".to_owned()
        }
    }
}
