//! One process at a time owns a data directory for writing: the server, or an offline
//! maintenance command such as `rotate-kek`. `verify` only reads and takes no lock.

use std::fs::{self, File};
use std::path::Path;

/// The lock file inside the data directory.
pub const LOCK_FILE: &str = "ledger.lock";

/// Why the data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("{0} is in use by another auditledger process (a running server?); stop it first")]
    Busy(String),
    /// The lock file could not be opened.
    #[error("cannot open lock file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Takes the data directory's exclusive lock; it is held until the returned file is dropped
/// (or the process dies, whereupon the OS releases it).
pub fn lock_data_dir(dir: &Path) -> Result<File, LockError> {
    let path = dir.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| LockError::Io {
            path: path.display().to_string(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(LockError::Busy(dir.display().to_string())),
        Err(fs::TryLockError::Error(source)) => Err(LockError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}
