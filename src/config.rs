//! Configuration of `serve`: each setting a flag with a matching `AUDITLEDGER_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

/// Default largest `data` of one event: 1 MiB.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;
/// Default largest request body: 4 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 << 20;
/// Default most events in one commit.
pub const DEFAULT_MAX_BATCH_EVENTS: usize = 4096;
/// The SQLite file inside the data directory.
pub const DATABASE_FILE: &str = "ledger.db";

/// Where keys and data live.
#[derive(Args, Clone, Debug)]
pub struct Dirs {
    /// Directory of the SQLite database (created on first start).
    #[arg(long, env = "AUDITLEDGER_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Directory of the signing key, key-encryption key and index key.
    #[arg(long, env = "AUDITLEDGER_KEYS_DIR", default_value = "./keys")]
    pub keys_dir: PathBuf,
    /// PostgreSQL instead of the embedded SQLite: `postgres://user@host:5432/db`.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Connections in the PostgreSQL pool.
    #[arg(long, env = "AUDITLEDGER_DATABASE_POOL_SIZE", default_value_t = 10)]
    pub database_pool_size: u32,
}

impl Dirs {
    /// Path of the SQLite database file.
    #[must_use]
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join(DATABASE_FILE)
    }
}

/// Settings of `auditledger serve`.
#[derive(Args, Clone, Debug)]
pub struct ServeConfig {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "AUDITLEDGER_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Where keys and data live.
    #[command(flatten)]
    pub dirs: Dirs,
    /// Largest `data` of one event, in bytes (serialized JSON).
    #[arg(long, env = "AUDITLEDGER_MAX_EVENT_BYTES", default_value_t = DEFAULT_MAX_EVENT_BYTES)]
    pub max_event_bytes: usize,
    /// Largest request body, in bytes.
    #[arg(long, env = "AUDITLEDGER_MAX_REQUEST_BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,
    /// Hours an erasure receipt can be fetched again by repeating the request (0: never).
    /// While it is kept, the receipt links the identifier's HMAC to the erased handle.
    #[arg(
        long,
        env = "AUDITLEDGER_ERASURE_TOMBSTONE_HOURS",
        default_value_t = 24
    )]
    pub erasure_tombstone_hours: u64,
    /// Make a checkpoint in the commit that takes the log this many entries past the last one.
    #[arg(long, env = "AUDITLEDGER_CHECKPOINT_EVERY", default_value_t = 1000)]
    pub checkpoint_every: u64,
    /// Also make a checkpoint this often, in seconds, if the log grew.
    #[arg(
        long,
        env = "AUDITLEDGER_CHECKPOINT_INTERVAL_SECS",
        default_value_t = 60
    )]
    pub checkpoint_interval_secs: u64,
    /// Publish every checkpoint as a file in this directory (a witness).
    #[arg(long, env = "AUDITLEDGER_WITNESS_DIR")]
    pub witness_dir: Option<PathBuf>,
    /// POST every checkpoint as JSON to this https:// (or http://) URL (a witness).
    #[arg(long, env = "AUDITLEDGER_WITNESS_WEBHOOK")]
    pub witness_webhook: Option<String>,
    /// Most events committed in one transaction (group commit).
    #[arg(long, env = "AUDITLEDGER_MAX_BATCH_EVENTS", default_value_t = DEFAULT_MAX_BATCH_EVENTS)]
    pub max_batch_events: usize,
}
