//! The subcommands: `serve`, `keygen`, `verify`. Errors reach the user as one plain sentence
//! and a non-zero exit code, never a panic.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

mod token;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, App, AppState, Limits};
use crate::config::{Dirs, ServeConfig};
use crate::entry::Seq;
use crate::keyfiles;
use crate::ledger::{Ledger, LedgerConfig, LedgerKeys};
use crate::store::Store;
use crate::vault::Vault;
use crate::verify::TrustedKeys;

/// auditledger: a tamper-evident, crypto-shredding audit ledger.
#[derive(Parser, Debug)]
#[command(name = "auditledger", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the service (creates keys and the database on first start).
    Serve(ServeConfig),
    /// Create a new set of keys; refuses to overwrite existing ones.
    Keygen {
        /// Directory to create the keys in.
        #[arg(long, env = "AUDITLEDGER_KEYS_DIR", default_value = "./keys")]
        keys_dir: PathBuf,
    },
    /// End the current KEK epoch now: start a new one, re-wrap every live key and subject link
    /// under it, delete the old epoch's tombstones and destroy its KEK. Works while the service
    /// runs (it does the work in the background; this waits) or while it is stopped.
    /// Resumable: after an interruption, run it again.
    RotateKek {
        #[command(flatten)]
        dirs: Dirs,
        /// Keys re-wrapped per transaction (service stopped).
        #[arg(long, default_value_t = crate::config::DEFAULT_KEK_REWRAP_BATCH)]
        batch_size: u32,
        /// Length of the new epoch, in hours (service stopped; a running service uses its own).
        #[arg(long, env = "AUDITLEDGER_KEK_EPOCH_HOURS", default_value_t = crate::epochs::DEFAULT_EPOCH_HOURS)]
        kek_epoch_hours: f64,
        /// How long to wait for a running service to finish.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        /// Stop after this many batches, as an interruption would (for testing resumption).
        #[arg(long, hide = true)]
        stop_after_batches: Option<u64>,
    },
    /// Rebuild the read models (stream catalogue, subject index, counts by type and day) from
    /// the log, from scratch. Works beside the running service (which then keeps them up) and
    /// with none.
    RebuildProjections {
        #[command(flatten)]
        dirs: Dirs,
    },
    /// Create, list and revoke API tokens. Works beside the running service (a revocation
    /// holds at once on every instance) and with none.
    Token {
        #[command(subcommand)]
        action: token::TokenAction,
    },
    /// Hand signing over to a new Ed25519 key, recorded in the chain (an entry signed by the old
    /// key and countersigned by the new one). Works while the service runs (every instance that
    /// shares this keys directory switches) or while it is stopped. Resumable.
    RotateSigningKey {
        #[command(flatten)]
        dirs: Dirs,
        /// How long to wait for a running service to record the rotation.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
    /// Write an export bundle (NDJSON: entries with sealed payloads, checkpoints, public keys).
    Export {
        #[command(flatten)]
        dirs: Dirs,
        /// The bundle file to write; `-` writes it to standard output (and the summary to
        /// standard error).
        #[arg(long)]
        out: PathBuf,
        /// First seq to export.
        #[arg(long, default_value_t = 0)]
        from_seq: u64,
        /// Last seq to export (default: the head).
        #[arg(long)]
        to_seq: Option<u64>,
    },
    /// Verify an export bundle offline: no database, no server.
    /// Exit 0: all hold; 1: tampering found; 2: unusable input.
    VerifyBundle {
        /// The bundle file.
        file: PathBuf,
        /// Trust this public key file (64 hex digits); may be repeated. Without it, the keys
        /// inside the bundle are used, and the output says so.
        #[arg(long = "public-key")]
        public_keys: Vec<PathBuf>,
        /// A checkpoint kept from earlier (the JSON of GET /v1/checkpoints/latest): the bundle
        /// must contain its history, which catches a cut-off tail or a rolled-back database.
        #[arg(long)]
        trusted_checkpoint: Option<PathBuf>,
    },
    /// Verify every entry of the database: digests, hashes, links, signatures, checkpoints.
    /// Exit 0: all hold; 1: tampering found; 2: could not verify.
    Verify {
        #[command(flatten)]
        dirs: Dirs,
        /// Trust this public key file (64 hex digits) too; may be repeated.
        #[arg(long = "public-key")]
        public_keys: Vec<PathBuf>,
    },
}

/// Sets up logging to stderr; `RUST_LOG` overrides the default `info,sqlx=warn`. It is a
/// comma-separated list of levels, each for all targets (`debug`) or for one target and its
/// children (`auditledger::api=debug`); one that does not parse leaves the default.
pub fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let default = || {
        "info,sqlx=warn"
            .parse::<tracing_subscriber::filter::Targets>()
            .unwrap_or_default()
    };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(default);
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .finish()
        .with(filter)
        .init();
}

/// Runs a parsed command line.
#[must_use]
pub fn run(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Serve(config) => runtime.block_on(serve(config)).map(|()| ExitCode::SUCCESS),
        Command::Token { action } => runtime.block_on(token::run(action)),
        Command::RebuildProjections { dirs } => runtime.block_on(rebuild_projections(&dirs)),
        Command::Keygen { keys_dir } => keygen(&keys_dir).map(|()| ExitCode::SUCCESS),
        Command::Verify { dirs, public_keys } => runtime.block_on(verify(&dirs, &public_keys)),
        Command::Export {
            dirs,
            out,
            from_seq,
            to_seq,
        } => runtime.block_on(export(&dirs, &out, from_seq, to_seq)),
        Command::VerifyBundle {
            file,
            public_keys,
            trusted_checkpoint,
        } => verify_bundle(&file, &public_keys, trusted_checkpoint.as_deref()),
        Command::RotateSigningKey { dirs, timeout_secs } => {
            runtime.block_on(rotate_signing_key(&dirs, Duration::from_secs(timeout_secs)))
        }
        Command::RotateKek {
            dirs,
            batch_size,
            kek_epoch_hours,
            timeout_secs,
            stop_after_batches,
        } => runtime
            .block_on(crate::rotate::rotate_kek(
                &dirs,
                crate::epochs::rotation::RotationConfig {
                    length: Duration::from_secs_f64(
                        kek_epoch_hours.clamp(0.0001, 87_600.0) * 3600.0,
                    ),
                    batch: batch_size.max(1),
                },
                stop_after_batches,
                Duration::from_secs(timeout_secs),
            ))
            .map(report_rotation),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn report_rotation(outcome: crate::rotate::Rotation) -> ExitCode {
    match outcome {
        crate::rotate::Rotation::Done {
            epoch,
            rewrapped,
            destroyed,
        } => {
            let destroyed: Vec<String> = destroyed.iter().map(ToString::to_string).collect();
            println!(
                "KEK epoch {epoch} is current; {rewrapped} keys and links re-wrapped by this run; \
                 destroyed epochs: [{}].\n\
                 Every copy of what a destroyed epoch wrapped (WAL, backups, replicas) is now \
                 unreadable, erased subjects' keys and links included. Backups of the keys \
                 directory hold destroyed KEKs: delete them too (docs/ERASURE.md).",
                destroyed.join(", ")
            );
            ExitCode::SUCCESS
        }
        crate::rotate::Rotation::Interrupted { rewrapped } => {
            println!(
                "KEK rotation stopped after {rewrapped} keys and links; run `auditledger rotate-kek` again to finish"
            );
            ExitCode::from(3)
        }
    }
}

/// Subscribers' buffers and deadlines.
fn subscription_limits(config: &ServeConfig) -> crate::subscription::Limits {
    crate::subscription::Limits {
        buffered: config.subscriber_buffer.max(1),
        slow_client: Duration::from_secs(config.slow_subscriber_secs.max(1)),
        poll: Duration::from_millis(config.subscription_poll_ms.max(10)),
    }
}

/// The input limits `serve` enforces.
fn limits(config: &ServeConfig) -> Limits {
    Limits {
        max_event_bytes: config.max_event_bytes,
        max_request_bytes: config.max_request_bytes,
        body_timeout: Duration::from_secs(config.body_timeout_secs.max(1)),
    }
}

fn keygen(dir: &Path) -> anyhow::Result<()> {
    let keys = keyfiles::create(dir)?;
    println!(
        "created keys in {} (signing key id {}); back them up: without kek.key the data cannot be read",
        dir.display(),
        keys.signing.key_id()
    );
    Ok(())
}

/// A running service.
pub struct Service {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Shared state, for in-process callers (benchmarks).
    pub app: Arc<App>,
    stop: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    store: Arc<dyn Store>,
    lock: crate::backend::OwnerLock,
    /// Appends the access entries of token changes made with the command line.
    recorder: JoinHandle<()>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Service({})", self.addr)
    }
}

impl Service {
    /// Opens keys and database (creating them on first start) and starts listening.
    pub async fn start(config: &ServeConfig) -> anyhow::Result<Service> {
        crate::telemetry::install();
        let dirs = &Dirs {
            sqlite_max_db_mib: config.sqlite_max_db_mib,
            ..config.dirs.clone()
        };
        let keys = load_keys_to_serve(dirs)?;
        let (shared, lock) = crate::backend::open(dirs, crate::backend::Access::Serve).await?;
        let store = Arc::clone(&shared);
        if let Some(n) = crate::ledger::rebuild_tree_if_needed(shared.as_ref()).await? {
            println!("rebuilt the Merkle tree over {n} entries");
        }
        // Whatever witnesses are configured now: the record of what was published stays.
        let published_state = dirs.keys_dir.join(crate::witness::PUBLISHED_STATE_FILE);
        crate::witness::check_against_published(
            shared.as_ref(),
            &published_state,
            config.witness_dir.as_deref(),
        )
        .await?;
        let (keys, trust, signing_first_seq) =
            identity_and_keys(dirs, shared.as_ref(), keys).await?;
        let ledger_id = trust.ledger_id;
        let vault = open_vault(config, &shared).await?;
        shared
            .publish_signing_key(&keys.signing.public_key())
            .await?;
        let signing = Arc::new(crate::ledger::SigningCell::new(crate::ledger::ActiveKey {
            key: Arc::new(keys.signing),
            first_seq: signing_first_seq,
        }));
        let publisher = crate::witness::spawn(
            Arc::clone(&shared),
            Arc::clone(&signing),
            crate::witness::WitnessConfig {
                dir: config.witness_dir.clone(),
                webhook: config.witness_webhook.clone(),
                webhook_ca: config.witness_webhook_ca.clone(),
            },
            published_state,
        )?;
        let ledger = Ledger::start(
            Arc::clone(&shared),
            vault,
            LedgerKeys {
                ledger_id,
                signing,
                keys_dir: Some(dirs.keys_dir.clone()),
                index: Arc::new(keys.index),
            },
            LedgerConfig {
                checkpoint_every: config.checkpoint_every,
                checkpoint_interval: Duration::from_secs(config.checkpoint_interval_secs.max(1)),
                max_batch_events: config.max_batch_events,
                pipeline: config.pipeline,
                tombstone_ttl: Duration::from_secs(
                    config.erasure_tombstone_hours.saturating_mul(3600),
                ),
                rotation: config.rotation(),
                idempotency_window: Duration::from_secs_f64(
                    config.idempotency_window_hours * 3600.0,
                ),
            },
            publisher,
        );
        let app = Arc::new(App {
            ledger,
            limits: limits(config),
            jobs: crate::api::audit::Jobs::default(),
            trust,
            keys_dir: Some(dirs.keys_dir.clone()),
            auth: auth_mode(config),
            access_entries: !config.benchmark_without_access_entries,
            snapshot_intervals: crate::snapshot::Intervals::parse(&config.snapshot_every)
                .map_err(anyhow::Error::msg)?,
            subscriptions: subscription_limits(config),
            feed: crate::api::feed::Feed::default(),
        });
        prepare_access_control(config, &app).await?;
        let (addr, stop, server) = listen(config, &app).await?;
        // Never print the database URL: it may carry a password.
        let data = if dirs.database_url.is_some() {
            "PostgreSQL (--database-url)".to_owned()
        } else {
            dirs.data_dir.display().to_string()
        };
        println!(
            "auditledger listening on http://{addr} (keys in {}, data in {data})",
            dirs.keys_dir.display(),
        );
        let _ = std::io::stdout().flush();
        let recorder = tokio::spawn(record_token_changes(Arc::clone(&app)));
        Ok(Service {
            addr,
            app,
            stop,
            server,
            store,
            lock,
            recorder,
        })
    }

    /// Stops listening, lets in-flight requests finish, commits every queued append, closes
    /// the database.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.recorder.abort();
        let _ = self.recorder.await;
        self.stop.cancel();
        self.server.await.context("server task failed")??;
        self.app.ledger.shutdown().await;
        crate::backend::close(self.store.as_ref(), self.lock).await;
        Ok(())
    }
}

/// How often token changes made with the command line are looked for.
const TOKEN_RECORD_INTERVAL: Duration = Duration::from_secs(1);

/// Appends an access entry for every token created or revoked with the command line (or
/// through an instance that failed to record it), now and every second.
async fn record_token_changes(app: Arc<App>) {
    if !app.access_entries {
        return;
    }
    let mut every = tokio::time::interval(TOKEN_RECORD_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match app.ledger.record_token_changes().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "token changes recorded in the ledger"),
            Err(e) => tracing::warn!(error = %e, "cannot record token changes yet"),
        }
    }
}

fn auth_mode(config: &ServeConfig) -> crate::api::auth::AuthMode {
    if config.insecure_no_auth {
        crate::api::auth::AuthMode::Insecure
    } else {
        crate::api::auth::AuthMode::Tokens
    }
}

/// Says how the API is protected, and records the token changes made while the service was
/// stopped before the first request is taken.
async fn prepare_access_control(config: &ServeConfig, app: &App) -> anyhow::Result<()> {
    announce_access_control(config, app.ledger.store().as_ref()).await?;
    if app.access_entries {
        app.ledger
            .record_token_changes()
            .await
            .context("cannot record token changes in the ledger")?;
    }
    Ok(())
}

/// Says, at every start, how the API is protected: a warning without authentication, and how
/// to make the first admin token while there is none.
async fn announce_access_control(config: &ServeConfig, store: &dyn Store) -> anyhow::Result<()> {
    if config.insecure_no_auth {
        tracing::warn!(
            "--insecure-no-auth: every /v1 endpoint is open to anyone who reaches the port, \
             with every role; never run like this outside a local trial"
        );
        println!("WARNING: --insecure-no-auth: the API requires no token");
        return Ok(());
    }
    if store.tokens().await?.is_empty() {
        println!(
            "no API token exists yet; every /v1 request will be refused until you create one.\n\
             Create the first admin token (it is shown once) with:\n    \
             auditledger token create --role admin --name first-admin\n\
             run beside this service with the same --data-dir / --database-url."
        );
    }
    Ok(())
}

/// Binds the listener and starts the server loop with the configured limits.
async fn listen(
    config: &ServeConfig,
    app: &Arc<App>,
) -> anyhow::Result<(
    SocketAddr,
    CancellationToken,
    JoinHandle<std::io::Result<()>>,
)> {
    let listener = TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let router = api::router(AppState(Arc::clone(app)));
    let server = tokio::spawn(crate::server::serve(
        listener,
        router,
        crate::server::ServerLimits {
            header_timeout: Duration::from_secs(config.header_timeout_secs.max(1)),
            max_connections: config.max_connections,
            shutdown_deadline: Duration::from_secs(config.shutdown_deadline_secs),
        },
        stop.clone(),
    ));
    Ok((addr, stop, server))
}

/// The key vault, with the KEK epochs brought into agreement with the database first, and the
/// plaintext subject index of a ledger made before epochs sealed.
async fn open_vault(config: &ServeConfig, store: &Arc<dyn Store>) -> anyhow::Result<Arc<Vault>> {
    let dirs = &config.dirs;
    let keyring =
        crate::epochs::prepare(store.as_ref(), &dirs.keys_dir, config.rotation().length).await?;
    let vault = Arc::new(Vault::open(Arc::clone(store), keyring, dirs.keys_dir.clone()).await?);
    let sealed = crate::epochs::seal_legacy_links(store.as_ref(), &vault).await?;
    if sealed > 0 {
        println!("sealed {sealed} subject index rows under the current KEK epoch");
    }
    Ok(vault)
}

/// The keys, created on first start; refuses while a KEK rotation is unfinished.
fn load_keys_to_serve(dirs: &Dirs) -> anyhow::Result<keyfiles::KeyMaterial> {
    let (keys, created) = keyfiles::load_or_create(&dirs.keys_dir)?;
    if created {
        println!(
            "created keys in {} (signing key id {}); back them up",
            dirs.keys_dir.display(),
            keys.signing.key_id()
        );
    }
    // The single-KEK rotation of earlier versions left its new KEK here until it finished.
    let legacy_next = dirs.keys_dir.join("kek.key.next");
    if legacy_next.exists() {
        anyhow::bail!(
            "a KEK rotation started by an earlier version is unfinished ({} exists); finish it with that version's `auditledger rotate-kek` before upgrading",
            legacy_next.display()
        );
    }
    Ok(keys)
}

/// The ledger's identity and keys, checked against the database: the identity agrees, an
/// interrupted rotation is finished, and the signing key is the one the chain names.
async fn identity_and_keys(
    dirs: &Dirs,
    store: &dyn Store,
    keys: keyfiles::KeyMaterial,
) -> anyhow::Result<(keyfiles::KeyMaterial, crate::audit::AuditTrust, u64)> {
    let ledger_id = establish_ledger_id(&dirs.keys_dir, store).await?;
    let keys = finish_interrupted_rotation(&dirs.keys_dir, store, keys).await?;
    let first_seq = check_key_schedule(store, &keys.signing).await?;
    let trust = crate::audit::AuditTrust {
        keys: keyfiles::trusted_keys(&dirs.keys_dir)?,
        ledger_id,
    };
    Ok((keys, trust, first_seq))
}

/// The ledger's identity: the keys directory's `ledger.id` (trusted), which the database must
/// agree with. A new ledger (or one written before identities existed) gets a fresh one in both.
async fn establish_ledger_id(
    keys_dir: &Path,
    store: &dyn Store,
) -> anyhow::Result<crate::entry::LedgerId> {
    let from_keys = keyfiles::read_ledger_id(keys_dir)?;
    let from_db = store.ledger_id().await?;
    let id = match (from_keys, from_db) {
        (Some(k), Some(d)) if k == d => k,
        (Some(k), Some(d)) => anyhow::bail!(
            "the database belongs to ledger {d}, but {} names ledger {k}: refusing to serve another ledger's database with these keys",
            keys_dir.join(keyfiles::LEDGER_ID_FILE).display()
        ),
        (Some(k), None) => store.init_ledger_id(&k).await?,
        (None, Some(d)) => anyhow::bail!(
            "the database belongs to ledger {d}, but {} is missing: restore it from your key backup (it holds the 32 hex digits {d} if this database is the ledger you trust)",
            keys_dir.join(keyfiles::LEDGER_ID_FILE).display()
        ),
        (None, None) => {
            let id = keyfiles::create_ledger_id(keys_dir)?;
            store.init_ledger_id(&id).await?
        }
    };
    Ok(id)
}

async fn rotate_signing_key(dirs: &Dirs, timeout: Duration) -> anyhow::Result<ExitCode> {
    let current = keyfiles::load(&dirs.keys_dir)?;
    let next = keyfiles::prepare_next_signing_key(&dirs.keys_dir)?;
    let new_id = next.key_id();
    drop(next);
    match crate::backend::open(dirs, crate::backend::Access::Maintenance).await {
        Ok((store, lock)) => {
            // No service is running: record the rotation here, through the same writer.
            let result = rotate_offline(dirs, Arc::clone(&store), current).await;
            crate::backend::close(store.as_ref(), lock).await;
            let seq = result?;
            print_rotation(dirs, new_id, seq);
        }
        Err(e) => {
            println!(
                "a running service holds the ledger ({e:#}); waiting for it to record the rotation to key {new_id}"
            );
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let done = !dirs.keys_dir.join(keyfiles::NEXT_SIGNING_KEY_FILE).exists()
                    && keyfiles::read_public_key(&dirs.keys_dir.join(keyfiles::SIGNING_PUB_FILE))
                        .is_ok_and(|k| k.key_id() == new_id);
                if done {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    anyhow::bail!(
                        "no service recorded the rotation within {} s; {} stays in place: run this again, or start the service (it rotates at start)",
                        timeout.as_secs(),
                        dirs.keys_dir
                            .join(keyfiles::NEXT_SIGNING_KEY_FILE)
                            .display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let (store, _lock) =
                crate::backend::open(dirs, crate::backend::Access::ReadOnly).await?;
            let seq = crate::store::key_first_seq(store.as_ref(), &new_id)
                .await?
                .map_or(0, |s| s.0.saturating_sub(1));
            store.close().await;
            print_rotation(dirs, new_id, crate::entry::Seq(seq));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_rotation(dirs: &Dirs, new_id: crate::crypto::KeyId, seq: crate::entry::Seq) {
    println!(
        "signing key rotated at seq {seq}: key {new_id} signs from seq {} on; the retired key's public half and exact range are in {}",
        seq.next(),
        dirs.keys_dir.join(keyfiles::RETIRED_DIR).display()
    );
}

async fn rotate_offline(
    dirs: &Dirs,
    store: Arc<dyn Store>,
    keys: keyfiles::KeyMaterial,
) -> anyhow::Result<crate::entry::Seq> {
    let ledger_id = establish_ledger_id(&dirs.keys_dir, store.as_ref()).await?;
    let keys = finish_interrupted_rotation(&dirs.keys_dir, store.as_ref(), keys).await?;
    let Some(next) = keyfiles::read_next_signing_key(&dirs.keys_dir)? else {
        anyhow::bail!("the new signing key disappeared from the keys directory");
    };
    if keys.signing.key_id() == next.key_id() {
        // Finished at start-up just now (an earlier run was interrupted after the commit).
        let seq = crate::store::key_first_seq(store.as_ref(), &next.key_id())
            .await?
            .map_or(0, |s| s.0.saturating_sub(1));
        return Ok(crate::entry::Seq(seq));
    }
    let first_seq = check_key_schedule(store.as_ref(), &keys.signing).await?;
    store
        .publish_signing_key(&keys.signing.public_key())
        .await?;
    let defaults = ServeConfig::new(
        "127.0.0.1:0".parse().context("address")?,
        dirs.data_dir.clone(),
        dirs.keys_dir.clone(),
    );
    let keyring =
        crate::epochs::prepare(store.as_ref(), &dirs.keys_dir, defaults.rotation().length).await?;
    let vault = Vault::open(Arc::clone(&store), keyring, dirs.keys_dir.clone()).await?;
    let ledger = Ledger::start(
        Arc::clone(&store),
        Arc::new(vault),
        LedgerKeys {
            ledger_id,
            signing: Arc::new(crate::ledger::SigningCell::new(crate::ledger::ActiveKey {
                key: Arc::new(keys.signing),
                first_seq,
            })),
            keys_dir: Some(dirs.keys_dir.clone()),
            index: Arc::new(keys.index),
        },
        LedgerConfig {
            checkpoint_every: defaults.checkpoint_every,
            checkpoint_interval: Duration::from_secs(3600),
            max_batch_events: defaults.max_batch_events,
            pipeline: false,
            tombstone_ttl: Duration::ZERO,
            rotation: defaults.rotation(),
            idempotency_window: Duration::from_secs(3600),
        },
        None,
    );
    let result = ledger.rotate_signing_key(next).await;
    ledger.shutdown().await;
    result.map_err(|e| anyhow::anyhow!("the rotation was not recorded: {e}"))
}

/// A rotation committed but not yet reflected in the keys directory (a crash in between):
/// finish it, so the keys directory holds the key the chain names.
async fn finish_interrupted_rotation(
    keys_dir: &Path,
    store: &dyn Store,
    keys: keyfiles::KeyMaterial,
) -> anyhow::Result<keyfiles::KeyMaterial> {
    let Some(head) = store.head().await? else {
        return Ok(keys);
    };
    let wanted = head.next_key();
    if wanted == keys.signing.key_id() {
        return Ok(keys);
    }
    let Some(next) = keyfiles::read_next_signing_key(keys_dir)? else {
        return Ok(keys);
    };
    if next.key_id() != wanted {
        return Ok(keys);
    }
    let rows = store.signing_keys().await?;
    let old = rows.iter().find(|r| r.key_id == keys.signing.key_id());
    let (Some(first), Some(last)) = (old.and_then(|r| r.first_seq), old.and_then(|r| r.last_seq))
    else {
        return Ok(keys);
    };
    keyfiles::finish_rotation(keys_dir, &keys.signing.public_key(), first.0, last.0, &next)?;
    println!("finished the rotation to signing key {wanted} recorded at seq {last}");
    Ok(keyfiles::load(keys_dir)?)
}

/// The signing key must be the one the chain's key schedule names for the next entry (a key
/// changes only by `rotate-signing-key`, which records the hand-over in the chain). Returns the
/// first seq the key signs.
async fn check_key_schedule(
    store: &dyn Store,
    key: &crate::crypto::LedgerSigningKey,
) -> anyhow::Result<u64> {
    let Some(head) = store.head().await? else {
        return Ok(0);
    };
    let ours = key.key_id();
    if head.next_key() != ours {
        anyhow::bail!(
            "the ledger's entries are signed by key {} from seq {} on, but the keys directory holds key {ours}: \
             change signing keys only with `auditledger rotate-signing-key`, or restore the right signing.key",
            head.next_key(),
            head.seq
        );
    }
    let first = crate::store::key_first_seq(store, &ours)
        .await?
        .map_or(head.seq.0 + 1, |s| s.0);
    Ok(first)
}

/// SIGTERM and SIGINT, registered now: a signal that arrives from here on is caught, never
/// left to its default action (which would kill the process without draining).
fn shutdown_signals() -> anyhow::Result<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>
{
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    Ok((term, int))
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    // Before "listening" is announced, so that a stop right after start is graceful too.
    let (mut term, mut int) = shutdown_signals()?;
    let service = Service::start(&config).await?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    println!("shutting down: finishing in-flight appends");
    service.stop().await?;
    println!("stopped");
    Ok(())
}

fn trusted_keys(dirs: &Dirs, extra: &[PathBuf]) -> anyhow::Result<TrustedKeys> {
    let mut keys = keyfiles::trusted_keys(&dirs.keys_dir)?;
    for path in extra {
        keyfiles::trust_key_file(&mut keys, path)?;
    }
    if keys.is_empty() {
        anyhow::bail!(
            "no trusted public key: none in {} and no --public-key given",
            dirs.keys_dir.display()
        );
    }
    keys.check_unambiguous().map_err(|e| anyhow::anyhow!(e))?;
    Ok(keys)
}

/// `rebuild-projections`: empties the read models and folds the whole log into them again.
async fn rebuild_projections(dirs: &Dirs) -> anyhow::Result<ExitCode> {
    let (store, lock) = crate::backend::open(dirs, crate::backend::Access::Admin).await?;
    let size = store.head().await?.map_or(0, |h| h.seq.0 + 1);
    store.reset_projections().await?;
    let bar = progress_bar(size, "entries");
    bar.set_message("rebuilding read models");
    let position = loop {
        let (n, at) = crate::ledger::projector::step(store.as_ref()).await?;
        bar.set_position(at.min(size));
        if n == 0 || at >= size {
            break at;
        }
    };
    bar.finish_and_clear();
    crate::backend::close(store.as_ref(), lock).await;
    eprintln!("rebuilt the read models from {position} entries");
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on stderr; drawn only when stderr is a terminal.
#[must_use]
pub fn progress_bar(len: u64, unit: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
        "{{spinner}} {{msg}} [{{bar:40}}] {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}})"
    )) {
        bar.set_style(style);
    }
    bar
}

async fn verify(dirs: &Dirs, public_keys: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let keys = trusted_keys(dirs, public_keys)?;
    let (shared, _lock) = crate::backend::open(dirs, crate::backend::Access::ReadOnly).await?;
    let ledger_id = if let Some(id) = keyfiles::read_ledger_id(&dirs.keys_dir)? {
        id
    } else {
        let id = shared
            .ledger_id()
            .await?
            .context("neither the keys directory nor the database records the ledger's identity")?;
        println!(
            "note: {} is missing, so the ledger identity {id} was taken from the database itself",
            dirs.keys_dir.join(keyfiles::LEDGER_ID_FILE).display()
        );
        id
    };
    let store = Arc::clone(&shared);
    // Verify the ledger as it is now; appends that land meanwhile are left for next time.
    let snapshot = crate::audit::Snapshot::take(shared.as_ref()).await?;
    let total = snapshot.range_len(Seq(0), None);
    let bar = progress_bar(total, "entries");
    bar.set_message("verifying");
    let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ticker = {
        let (bar, progress) = (bar.clone(), Arc::clone(&progress));
        tokio::spawn(async move {
            loop {
                bar.set_position(progress.load(std::sync::atomic::Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let trust = crate::audit::AuditTrust { keys, ledger_id };
    let outcome =
        crate::audit::verify_snapshot(shared, trust, &snapshot, Seq(0), None, progress).await;
    ticker.abort();
    bar.finish_and_clear();
    store.close().await;
    let outcome = outcome?;
    Ok(print_report(&outcome))
}

/// `1 entry`, `2 entries`.
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn print_report(outcome: &crate::audit::Verification) -> ExitCode {
    let report = &outcome.report;
    match (&report.first_failure, &outcome.proven) {
        (None, Some(proven)) => {
            if report.to_seq.is_none() {
                println!("ok: the ledger is empty");
            }
            for line in crate::bundle::describe(
                proven,
                crate::bundle::Source::Database,
                report.signed_at_size,
            ) {
                println!("{line}");
            }
            println!(
                "vault: every data key the chain needs is present, and no erased subject's key is"
            );
            ExitCode::SUCCESS
        }
        (Some(f), _) => {
            println!("FAILED at seq {}: {}: {}", f.seq, f.kind, f.detail);
            println!("entries before seq {} passed", f.seq);
            ExitCode::from(1)
        }
        (None, None) => {
            println!("UNUSABLE: the verification produced no result");
            ExitCode::from(2)
        }
    }
}

async fn export(dirs: &Dirs, out: &Path, from: u64, to: Option<u64>) -> anyhow::Result<ExitCode> {
    let ledger_id = keyfiles::read_ledger_id(&dirs.keys_dir)?.with_context(|| {
        format!(
            "{} is missing: the bundle must name the ledger's identity",
            dirs.keys_dir.join(keyfiles::LEDGER_ID_FILE).display()
        )
    })?;
    let (store, _lock) = crate::backend::open(dirs, crate::backend::Access::ReadOnly).await?;
    let snapshot = crate::audit::Snapshot::take(store.as_ref()).await?;
    if let Err(e) = snapshot.check_from(Seq(from)) {
        store.close().await;
        return Err(anyhow::Error::new(e).context("nothing exported"));
    }
    let total = snapshot.range_len(Seq(from), to.map(Seq));
    let to_stdout = out.as_os_str() == "-";
    let target: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?)
    };
    let mut writer = std::io::BufWriter::new(target);
    let (sender, mut receiver) = tokio::sync::mpsc::channel(256);
    let producer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            crate::export::write_bundle(store.as_ref(), ledger_id, Seq(from), to.map(Seq), sender)
                .await
        })
    };
    let bar = progress_bar(total, "entries");
    bar.set_message("exporting");
    while let Some(line) = receiver.recv().await {
        if line.starts_with(b"{\"kind\":\"entry\"") {
            bar.inc(1);
        }
        writer
            .write_all(&line)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    let footer = producer.await.context("export task failed")??;
    writer.flush()?;
    drop(writer);
    if !to_stdout {
        // The file is complete on disk before this says so.
        fs::File::open(out)?.sync_all()?;
    }
    bar.finish_and_clear();
    store.close().await;
    let summary = format!(
        "exported {} and {} to {}",
        count(footer.entries, "entry", "entries"),
        count(footer.checkpoints, "checkpoint", "checkpoints"),
        if to_stdout {
            "standard output".to_owned()
        } else {
            out.display().to_string()
        }
    );
    if to_stdout {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    Ok(ExitCode::SUCCESS)
}

fn verify_bundle(
    file: &Path,
    public_keys: &[PathBuf],
    trusted_checkpoint: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    use std::io::BufRead;
    let mut keys = TrustedKeys::new();
    for path in public_keys {
        keyfiles::trust_key_file(&mut keys, path)?;
    }
    let trusted = match trusted_checkpoint {
        None => None,
        Some(p) => {
            let text =
                fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
            Some(
                serde_json::from_str::<crate::checkpoint::CheckpointJson>(&text).with_context(
                    || {
                        format!(
                            "{} is not a checkpoint (the JSON of GET /v1/checkpoints/latest)",
                            p.display()
                        )
                    },
                )?,
            )
        }
    };
    let unusable = |e: &dyn std::fmt::Display| {
        println!("UNUSABLE: {e}");
        ExitCode::from(2)
    };
    let mut verifier = match crate::bundle::BundleVerifier::new(keys, trusted) {
        Ok(v) => v,
        Err(e) => return Ok(unusable(&e)),
    };
    let f = fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let size = f.metadata().map_or(0, |m| m.len());
    let bar = progress_bar(size, "bytes");
    bar.set_message("verifying bundle");
    let mut reader = std::io::BufReader::with_capacity(1 << 20, f);
    let mut line = String::new();
    let mut stop = None;
    let mut line_no = 0u64;
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .with_context(|| format!("cannot read {}", file.display()))?;
        if n == 0 {
            break;
        }
        bar.inc(n as u64);
        line_no += 1;
        // Every line, the last included, ends with exactly one \n (docs/FORMAT.md §12).
        let Some(text) = line.strip_suffix('\n') else {
            stop = Some(crate::bundle::Stop::Unusable(
                crate::bundle::UnusableInput::BadLine {
                    line: line_no,
                    why: "the last line does not end with a newline: the file is cut off"
                        .to_owned(),
                },
            ));
            break;
        };
        if let Err(s) = verifier.feed(text) {
            stop = Some(s);
            break;
        }
    }
    bar.finish_and_clear();
    let outcome = match stop {
        Some(s) => Err(s),
        None => verifier.finish(),
    };
    match outcome {
        Ok(summary) => {
            for line in summary.describe() {
                println!("{line}");
            }
            println!(
                "signatures: batch-verified by ZIP-215 on {} threads",
                rayon::current_num_threads()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(crate::bundle::Stop::Tampered(f)) => {
            println!("FAILED at seq {}: {}: {}", f.seq, f.kind, f.detail);
            Ok(ExitCode::from(1))
        }
        Err(crate::bundle::Stop::Unusable(u)) => Ok(unusable(&u)),
    }
}
