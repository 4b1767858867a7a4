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
/// Default hours a repeated erasure request gets its first receipt back.
pub const DEFAULT_ERASURE_TOMBSTONE_HOURS: u64 = 24;
/// Default entries between checkpoints.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 1000;
/// Default seconds between checkpoints of a growing log.
pub const DEFAULT_CHECKPOINT_INTERVAL_SECS: u64 = 60;
/// Default PostgreSQL pool size.
pub const DEFAULT_DATABASE_POOL_SIZE: u32 = 10;
/// Default keys (or links) re-wrapped per transaction during a KEK epoch rotation.
pub const DEFAULT_KEK_REWRAP_BATCH: u32 = 250;
/// Default time a client has to send a request's headers.
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 10;
/// Default time a client has to send a request's body.
pub const DEFAULT_BODY_TIMEOUT_SECS: u64 = 30;
/// Default cap on open connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default time requests in progress get to finish at shutdown.
pub const DEFAULT_SHUTDOWN_DEADLINE_SECS: u64 = 10;
/// Default idempotency window: 24 hours.
pub const DEFAULT_IDEMPOTENCY_WINDOW_HOURS: f64 = 24.0;
/// The SQLite file inside the data directory.
pub const DATABASE_FILE: &str = "ledger.db";

/// Where keys and data live.
#[derive(Args, Clone, Debug)]
pub struct Dirs {
    /// Directory of the SQLite database (ignored with --database-url).
    #[arg(long, env = "AUDITLEDGER_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Directory of the signing key, key-encryption key and index key.
    #[arg(long, env = "AUDITLEDGER_KEYS_DIR", default_value = "./keys")]
    pub keys_dir: PathBuf,
    /// PostgreSQL instead of the embedded SQLite: `postgres://user@host:5432/db`.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Connections in the PostgreSQL pool.
    #[arg(long, env = "AUDITLEDGER_DATABASE_POOL_SIZE", default_value_t = DEFAULT_DATABASE_POOL_SIZE)]
    pub database_pool_size: u32,
    /// The SQLite quota in MiB (`serve --sqlite-max-db-mib`); not a flag of the other commands.
    #[arg(skip)]
    pub sqlite_max_db_mib: Option<u64>,
}

impl Dirs {
    /// Path of the SQLite database file.
    #[must_use]
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join(DATABASE_FILE)
    }

    /// The SQLite quota in bytes, if one is set.
    #[must_use]
    pub fn sqlite_max_db_bytes(&self) -> Option<u64> {
        self.sqlite_max_db_mib.map(|m| m.saturating_mul(1 << 20))
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
        default_value_t = DEFAULT_ERASURE_TOMBSTONE_HOURS
    )]
    pub erasure_tombstone_hours: u64,
    /// Make a checkpoint in the commit that takes the log this many entries past the last one.
    #[arg(long, env = "AUDITLEDGER_CHECKPOINT_EVERY", default_value_t = DEFAULT_CHECKPOINT_EVERY)]
    pub checkpoint_every: u64,
    /// Also make a checkpoint this often, in seconds, if the log grew.
    #[arg(
        long,
        env = "AUDITLEDGER_CHECKPOINT_INTERVAL_SECS",
        default_value_t = DEFAULT_CHECKPOINT_INTERVAL_SECS
    )]
    pub checkpoint_interval_secs: u64,
    /// Publish every checkpoint as a file in this directory (a witness).
    #[arg(long, env = "AUDITLEDGER_WITNESS_DIR")]
    pub witness_dir: Option<PathBuf>,
    /// POST every checkpoint as JSON to this https:// (or http://) URL (a witness).
    #[arg(long, env = "AUDITLEDGER_WITNESS_WEBHOOK")]
    pub witness_webhook: Option<String>,
    /// PEM file of CA certificates to trust for the webhook, besides the built-in public
    /// roots: for a witness behind a private CA.
    #[arg(long, env = "AUDITLEDGER_WITNESS_WEBHOOK_CA")]
    pub witness_webhook_ca: Option<PathBuf>,
    /// Most events committed in one transaction (group commit).
    #[arg(long, env = "AUDITLEDGER_MAX_BATCH_EVENTS", default_value_t = DEFAULT_MAX_BATCH_EVENTS)]
    pub max_batch_events: usize,
    /// Prepare each batch of appends while the one before commits (on by default; off only to
    /// measure what it gains).
    #[arg(long, env = "AUDITLEDGER_PIPELINE", default_value_t = true, action = clap::ArgAction::Set, hide = true)]
    pub pipeline: bool,
    /// Length of a KEK epoch, in hours (fractions allowed). When it ends a new epoch starts,
    /// the live keys are re-wrapped under it, and the old epoch's KEK is destroyed: every
    /// erasure's `forgotten_by` is the end of its epoch plus an hour.
    #[arg(
        long,
        env = "AUDITLEDGER_KEK_EPOCH_HOURS",
        default_value_t = crate::epochs::DEFAULT_EPOCH_HOURS,
        value_parser = parse_epoch_hours
    )]
    pub kek_epoch_hours: f64,
    /// Keys (or links) re-wrapped per transaction while an epoch rotates; appends go on
    /// between transactions.
    #[arg(long, env = "AUDITLEDGER_KEK_REWRAP_BATCH", default_value_t = DEFAULT_KEK_REWRAP_BATCH)]
    pub kek_rewrap_batch: u32,
    /// How long an append's `Idempotency-Key` is kept, in hours (fractions allowed): a retry
    /// with the same key within this window returns the original result and writes nothing.
    #[arg(
        long,
        env = "AUDITLEDGER_IDEMPOTENCY_WINDOW_HOURS",
        default_value_t = DEFAULT_IDEMPOTENCY_WINDOW_HOURS,
        value_parser = parse_epoch_hours
    )]
    pub idempotency_window_hours: f64,
    /// How long a client may take to send a request's headers, in seconds; a connection that
    /// has not sent them in full by then is closed.
    #[arg(long, env = "AUDITLEDGER_HEADER_TIMEOUT_SECS", default_value_t = DEFAULT_HEADER_TIMEOUT_SECS)]
    pub header_timeout_secs: u64,
    /// How long a client may take to send a request's body in full, in seconds (a total, not
    /// an idle timeout: a trickle is cut off too). The request is answered 408 and nothing of
    /// it is written.
    #[arg(long, env = "AUDITLEDGER_BODY_TIMEOUT_SECS", default_value_t = DEFAULT_BODY_TIMEOUT_SECS)]
    pub body_timeout_secs: u64,
    /// Most connections open at once. Beyond it, new connections wait in the listen backlog
    /// until one closes.
    #[arg(long, env = "AUDITLEDGER_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// On SIGTERM or Ctrl-C, how long requests in progress may take to finish, in seconds.
    /// After it, the ones still running are dropped, never acknowledged (their appends are
    /// committed or not, as the writer got to them), and the process exits.
    #[arg(long, env = "AUDITLEDGER_SHUTDOWN_DEADLINE_SECS", default_value_t = DEFAULT_SHUTDOWN_DEADLINE_SECS)]
    pub shutdown_deadline_secs: u64,
    /// SQLite only: a quota on the database file, in MiB. Writes that would grow it further
    /// fail as on a full disk (503; `/readyz` not ready) until space is freed inside it.
    #[arg(long, env = "AUDITLEDGER_SQLITE_MAX_DB_MIB")]
    pub sqlite_max_db_mib: Option<u64>,
    /// Serve every `/v1` endpoint without a token, to anyone who reaches the port, with every
    /// role. For a local trial only; a warning is logged at every start.
    #[arg(long, env = "AUDITLEDGER_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// How often the append response says a snapshot of the stream is due: `N` events for
    /// every stream, or `PREFIX=N` for streams whose id starts with PREFIX (the longest wins);
    /// 0 is never. Repeat the flag or separate rules with commas. Default 100.
    #[arg(long, env = "AUDITLEDGER_SNAPSHOT_EVERY", value_delimiter = ',')]
    pub snapshot_every: Vec<String>,
    /// Messages buffered per subscriber (tests).
    #[arg(long, hide = true, default_value_t = crate::subscription::BUFFERED)]
    pub subscriber_buffer: usize,
    /// Seconds a subscriber may leave its buffer full before it is cut off (tests).
    #[arg(long, hide = true, default_value_t = crate::subscription::SLOW_CLIENT_SECS)]
    pub slow_subscriber_secs: u64,
    /// Milliseconds between a subscriber's re-reads of the log without a commit notice (tests).
    #[arg(long, hide = true, default_value_t = crate::subscription::POLL_MS)]
    pub subscription_poll_ms: u64,
    /// Do not append access entries. Only for measuring what they cost (docs/PERFORMANCE.md):
    /// without them the service cannot show who read personal data.
    #[arg(long, hide = true)]
    pub benchmark_without_access_entries: bool,
}

/// A length in hours (a KEK epoch, the idempotency window): above 0, at most ten years.
fn parse_epoch_hours(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(h) if h.is_finite() && h > 0.0 && h <= 87_600.0 => Ok(h),
        _ => Err("expected a number of hours above 0 and at most 87600".to_owned()),
    }
}

impl ServeConfig {
    /// The epoch settings.
    #[must_use]
    pub fn rotation(&self) -> crate::epochs::rotation::RotationConfig {
        crate::epochs::rotation::RotationConfig {
            length: std::time::Duration::from_secs_f64(self.kek_epoch_hours * 3600.0),
            batch: self.kek_rewrap_batch.max(1),
        }
    }
}

impl ServeConfig {
    /// The defaults `serve` uses when no flag or variable is given, for embedding the service
    /// (benchmarks, tests) without a command line.
    #[must_use]
    pub fn new(bind: SocketAddr, data_dir: PathBuf, keys_dir: PathBuf) -> ServeConfig {
        ServeConfig {
            bind,
            dirs: Dirs {
                data_dir,
                keys_dir,
                database_url: None,
                database_pool_size: DEFAULT_DATABASE_POOL_SIZE,
                sqlite_max_db_mib: None,
            },
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            erasure_tombstone_hours: DEFAULT_ERASURE_TOMBSTONE_HOURS,
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            checkpoint_interval_secs: DEFAULT_CHECKPOINT_INTERVAL_SECS,
            witness_dir: None,
            witness_webhook: None,
            witness_webhook_ca: None,
            max_batch_events: DEFAULT_MAX_BATCH_EVENTS,
            pipeline: true,
            kek_epoch_hours: crate::epochs::DEFAULT_EPOCH_HOURS,
            kek_rewrap_batch: DEFAULT_KEK_REWRAP_BATCH,
            idempotency_window_hours: DEFAULT_IDEMPOTENCY_WINDOW_HOURS,
            header_timeout_secs: DEFAULT_HEADER_TIMEOUT_SECS,
            body_timeout_secs: DEFAULT_BODY_TIMEOUT_SECS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            shutdown_deadline_secs: DEFAULT_SHUTDOWN_DEADLINE_SECS,
            sqlite_max_db_mib: None,
            insecure_no_auth: false,
            snapshot_every: Vec::new(),
            subscriber_buffer: crate::subscription::BUFFERED,
            slow_subscriber_secs: crate::subscription::SLOW_CLIENT_SECS,
            subscription_poll_ms: crate::subscription::POLL_MS,
            benchmark_without_access_entries: false,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::Parser;

    use super::ServeConfig;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        serve: ServeConfig,
    }

    #[test]
    fn the_embedded_defaults_are_the_command_line_defaults() {
        let parsed = Command::try_parse_from(["auditledger", "--bind", "127.0.0.1:0"])
            .unwrap()
            .serve;
        let built = ServeConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            "./data".into(),
            "./keys".into(),
        );
        assert_eq!(format!("{parsed:?}"), format!("{built:?}"));
    }
}
