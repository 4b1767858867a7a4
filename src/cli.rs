//! The subcommands: `serve`, `keygen`, `verify`. Errors reach the user as one plain sentence
//! and a non-zero exit code, never a panic.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

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
    /// Re-wrap every data key under a new key-encryption key (the server must be stopped).
    /// Resumable: after an interruption, run it again.
    RotateKek {
        #[command(flatten)]
        dirs: Dirs,
        /// Keys re-wrapped per transaction.
        #[arg(long, default_value_t = 500)]
        batch_size: u32,
        /// Stop after this many batches, as an interruption would (for testing resumption).
        #[arg(long, hide = true)]
        stop_after_batches: Option<u64>,
    },
    /// Write an export bundle (NDJSON: entries with sealed payloads, checkpoints, public keys).
    Export {
        #[command(flatten)]
        dirs: Dirs,
        /// The bundle file to write.
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

/// Sets up logging to stderr; `RUST_LOG` overrides the default `info`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
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
        Command::RotateKek {
            dirs,
            batch_size,
            stop_after_batches,
        } => runtime
            .block_on(crate::rotate::rotate_kek(
                &dirs,
                batch_size,
                stop_after_batches,
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
            rewrapped,
            old_kek_file,
        } => {
            println!(
                "KEK rotated: {rewrapped} data keys re-wrapped; the new KEK is in kek.key.\n\
                 The old KEK was moved to {old_kek_file}. Delete it, and every copy of it, once \
                 you no longer need to read database backups taken before now: from then on \
                 those backups' wrapped keys are useless, erased subjects' included."
            );
            ExitCode::SUCCESS
        }
        crate::rotate::Rotation::Interrupted { rewrapped } => {
            println!(
                "KEK rotation stopped after {rewrapped} data keys; run `auditledger rotate-kek` again to finish"
            );
            ExitCode::from(3)
        }
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
        let dirs = &config.dirs;
        let (keys, created) = keyfiles::load_or_create(&dirs.keys_dir)?;
        if created {
            println!(
                "created keys in {} (signing key id {}); back them up",
                dirs.keys_dir.display(),
                keys.signing.key_id()
            );
        }
        if dirs.keys_dir.join(crate::rotate::NEXT_KEK_FILE).exists() {
            anyhow::bail!(
                "a KEK rotation is in progress ({} exists); run `auditledger rotate-kek` again to finish it before serving",
                dirs.keys_dir.join(crate::rotate::NEXT_KEK_FILE).display()
            );
        }
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
        let vault = Vault::open(Arc::clone(&shared), keys.kek).await?;
        shared
            .publish_signing_key(&keys.signing.public_key())
            .await?;
        let publisher = crate::witness::spawn(
            Arc::clone(&shared),
            keys.signing.public_key(),
            crate::witness::WitnessConfig {
                dir: config.witness_dir.clone(),
                webhook: config.witness_webhook.clone(),
                webhook_ca: config.witness_webhook_ca.clone(),
            },
            published_state,
        )?;
        let ledger = Ledger::start(
            Arc::clone(&shared),
            Arc::new(vault),
            LedgerKeys {
                signing: Arc::new(keys.signing),
                index: Arc::new(keys.index),
            },
            LedgerConfig {
                checkpoint_every: config.checkpoint_every,
                checkpoint_interval: Duration::from_secs(config.checkpoint_interval_secs.max(1)),
                max_batch_events: config.max_batch_events,
                tombstone_ttl: Duration::from_secs(
                    config.erasure_tombstone_hours.saturating_mul(3600),
                ),
            },
            publisher,
        );
        let app = Arc::new(App {
            ledger,
            limits: Limits {
                max_event_bytes: config.max_event_bytes,
                max_request_bytes: config.max_request_bytes,
            },
            jobs: crate::api::audit::Jobs::default(),
        });
        let listener = TcpListener::bind(config.bind)
            .await
            .with_context(|| format!("cannot listen on {}", config.bind))?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let router = api::router(AppState(Arc::clone(&app)));
        let server = tokio::spawn(
            axum::serve(listener, router)
                .with_graceful_shutdown(stop.clone().cancelled_owned())
                .into_future(),
        );
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
        Ok(Service {
            addr,
            app,
            stop,
            server,
            store,
            lock,
        })
    }

    /// Stops listening, lets in-flight requests finish, commits every queued append, closes
    /// the database.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.server.await.context("server task failed")??;
        self.app.ledger.shutdown().await;
        crate::backend::close(self.store.as_ref(), self.lock).await;
        Ok(())
    }
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
    let mut keys = TrustedKeys::new();
    for path in extra {
        keys.insert(keyfiles::read_public_key(path)?);
    }
    let private = dirs.keys_dir.join(keyfiles::SIGNING_KEY_FILE);
    if private.exists() {
        let material = keyfiles::load(&dirs.keys_dir)?;
        keys.insert(material.signing.public_key());
    } else {
        let public = dirs.keys_dir.join(keyfiles::SIGNING_PUB_FILE);
        if public.exists() {
            keys.insert(keyfiles::read_public_key(&public)?);
        }
    }
    if keys.is_empty() {
        anyhow::bail!(
            "no trusted public key: none in {} and no --public-key given",
            dirs.keys_dir.display()
        );
    }
    Ok(keys)
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
    let report =
        crate::audit::verify_snapshot(shared, keys, &snapshot, Seq(0), None, progress).await;
    ticker.abort();
    bar.finish_and_clear();
    store.close().await;
    let report = report?;
    Ok(print_report(&report))
}

/// `1 entry`, `2 entries`.
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn print_report(report: &crate::report::AuditReport) -> ExitCode {
    match &report.first_failure {
        None => {
            match report.to_seq {
                None => println!("ok: the ledger is empty"),
                Some(to) => println!(
                    "ok: {} verified (seq {} to {to}), {} verified",
                    count(report.entries_checked, "entry", "entries"),
                    report.from_seq,
                    count(report.checkpoints_checked, "checkpoint", "checkpoints")
                ),
            }
            ExitCode::SUCCESS
        }
        Some(f) => {
            println!("FAILED at seq {}: {}: {}", f.seq, f.kind, f.detail);
            println!("entries before seq {} passed", f.seq);
            ExitCode::from(1)
        }
    }
}

async fn export(dirs: &Dirs, out: &Path, from: u64, to: Option<u64>) -> anyhow::Result<ExitCode> {
    let (store, _lock) = crate::backend::open(dirs, crate::backend::Access::ReadOnly).await?;
    let snapshot = crate::audit::Snapshot::take(store.as_ref()).await?;
    if let Err(e) = snapshot.check_from(Seq(from)) {
        store.close().await;
        return Err(anyhow::Error::new(e).context("nothing exported"));
    }
    let total = snapshot.range_len(Seq(from), to.map(Seq));
    let file = fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    let (sender, mut receiver) = tokio::sync::mpsc::channel(256);
    let producer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            crate::export::write_bundle(store.as_ref(), Seq(from), to.map(Seq), sender).await
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
    writer.get_ref().sync_all()?;
    bar.finish_and_clear();
    store.close().await;
    println!(
        "exported {} and {} to {}",
        count(footer.entries, "entry", "entries"),
        count(footer.checkpoints, "checkpoint", "checkpoints"),
        out.display()
    );
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
        keys.insert(keyfiles::read_public_key(path)?);
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
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .with_context(|| format!("cannot read {}", file.display()))?;
        if n == 0 {
            break;
        }
        bar.inc(n as u64);
        if let Err(s) = verifier.feed(line.trim_end_matches(['\n', '\r'])) {
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
            if summary.keys_from_bundle {
                println!(
                    "note: verified with the public keys inside the bundle; pass --public-key with a key you obtained independently to rule out a re-signed bundle"
                );
            }
            let range = summary
                .range
                .map_or("no entries".to_owned(), |(a, b)| format!("seq {a} to {b}"));
            println!(
                "ok: {} ({range}) and {} verified; signatures batch-verified on {} threads",
                count(summary.entries, "entry", "entries"),
                count(summary.checkpoints, "checkpoint", "checkpoints"),
                rayon::current_num_threads()
            );
            if let Some(size) = summary.trusted_checkpoint_matched {
                println!("ok: the trusted checkpoint at tree size {size} is part of this history");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(crate::bundle::Stop::Tampered(f)) => {
            println!("FAILED at seq {}: {}: {}", f.seq, f.kind, f.detail);
            Ok(ExitCode::from(1))
        }
        Err(crate::bundle::Stop::Unusable(u)) => Ok(unusable(&u)),
    }
}
