//! Auditor-side benchmark: `cargo bench --bench audit`.
//!
//! Builds a ledger of `AUDIT_BENCH_ENTRIES` entries (default 1,000,000) through the real
//! append pipeline (in process, no HTTP), then measures:
//! - what the Merkle tree adds to an append (hashing per leaf; stored nodes per entry and the
//!   cost of inserting them);
//! - inclusion and consistency proof latency at that size (p50/p99 over 1,000 random proofs);
//! - export of the whole ledger to a bundle, and `auditledger verify-bundle` on it (the release
//!   binary, as an auditor runs it): entries/s;
//! - server-side verification (`/v1/audit/verify`'s runner) throughput;
//! - the limit both verifiers are compared to, measured in the same run: batch signature
//!   verification alone (ed25519-consensus, ZIP-215, batches of `SIGNATURE_BATCH` on every
//!   core through rayon) over the same entries' signatures, already in memory. Each verifier's
//!   figure is printed as a fraction of it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_precision_loss)]
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::too_many_lines
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use auditledger::cli::Service;
use auditledger::config::ServeConfig;
use auditledger::crypto::{PublicKey, Signature, verify_entries_batch};
use auditledger::entry::{EntryHash, EventType, Seq, StreamId};
use auditledger::ledger::{AppendRequest, ExpectedVersion, NewEvent};
use auditledger::merkle::{CompactRange, leaf_hash};
use auditledger::verify::{SIGNATURE_BATCH, TrustedKeys};
use rand::Rng;
use rayon::prelude::*;
use zeroize::Zeroizing;

/// The service's allocator (src/main.rs), so that the in-process verification allocates as
/// `/v1/audit/verify` does in the service.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn main() {
    let n: u64 = std::env::var("AUDIT_BENCH_ENTRIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = ServeConfig {
        checkpoint_interval_secs: 3600,
        insecure_no_auth: true,
        ..ServeConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            dir.path().join("data"),
            dir.path().join("keys"),
        )
    };
    println!("# auditledger audit benchmark, {n} entries\n");

    // Merkle hashing per leaf, pure.
    let t = Instant::now();
    let mut tree = CompactRange::new();
    let mut nodes = 0u64;
    for i in 0..n {
        tree.append(leaf_hash(&i.to_be_bytes()), |id, _| {
            if id.level > 0 {
                nodes += 1;
            }
        });
    }
    let hash_per_leaf = t.elapsed().as_secs_f64() * 1e9 / n as f64;
    println!("## Merkle tree cost per appended entry\n");
    println!("- hashing (leaf + completed nodes): {hash_per_leaf:.0} ns");
    println!(
        "- stored nodes per entry: {:.3} (levels >= 1; leaves are derived from entries)",
        nodes as f64 / n as f64
    );

    let service = rt.block_on(Service::start(&config)).unwrap();
    let app = Arc::clone(&service.app);
    let t = Instant::now();
    rt.block_on(async {
        let per_request = 1000u64;
        let mut tasks = Vec::new();
        for w in 0..8u64 {
            let app = Arc::clone(&app);
            tasks.push(tokio::spawn(async move {
                let mut r = w;
                while r * per_request < n {
                    let events = (0..per_request.min(n - r * per_request))
                        .map(|i| NewEvent {
                            event_type: EventType::parse("PaymentInitiated").unwrap(),
                            schema_version: 1,
                            subject: None,
                            data: Zeroizing::new(
                                format!(r#"{{"amount":{i},"currency":"EUR"}}"#).into_bytes(),
                            ),
                            metadata: std::collections::BTreeMap::new(),
                        })
                        .collect();
                    app.ledger
                        .append(AppendRequest {
                            stream: StreamId::parse(&format!("bench-{w}")).unwrap(),
                            expected: ExpectedVersion::Any,
                            events,
                            idempotency: None,
                        })
                        .await
                        .unwrap();
                    r += 8;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let build = t.elapsed();
    let stats = app.ledger.stats();
    let insert_us =
        stats.insert_ns.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1000.0 / n as f64;
    println!(
        "- whole pipeline, 1000-event requests, 8 writers, in process: {:.0} events/s ({:.1} s for {n}); insert+commit incl. Merkle nodes and checkpoints: {insert_us:.2} µs/event\n",
        n as f64 / build.as_secs_f64(),
        build.as_secs_f64()
    );

    // Proof latency at full size.
    let size = n;
    let mut rng = rand::thread_rng();
    let mut incl = Vec::new();
    let mut cons = Vec::new();
    rt.block_on(async {
        for _ in 0..1000 {
            let seq = rng.gen_range(0..size);
            let t = Instant::now();
            app.ledger
                .inclusion_proof(Seq(seq), Some(size))
                .await
                .unwrap();
            incl.push(t.elapsed());
            let from = rng.gen_range(1..size);
            let t = Instant::now();
            app.ledger.consistency_proof(from, size).await.unwrap();
            cons.push(t.elapsed());
        }
    });
    println!("## Proof generation at {size} entries (1000 random proofs, in process)\n");
    println!("| proof | p50 | p99 |\n|---|---|---|");
    println!(
        "| inclusion | {:.3} ms | {:.3} ms |",
        pct(&mut incl, 0.5).as_secs_f64() * 1e3,
        pct(&mut incl, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| consistency | {:.3} ms | {:.3} ms |\n",
        pct(&mut cons, 0.5).as_secs_f64() * 1e3,
        pct(&mut cons, 0.99).as_secs_f64() * 1e3
    );

    // The limit: batch signature verification alone, on every core, over the same signatures.
    let public_key = app.ledger.signing_key().key.public_key();
    let signed = rt.block_on(signatures(&app, n));
    let limit = batch_limit(&public_key, &signed);
    let single = {
        let t = Instant::now();
        for c in signed.chunks(SIGNATURE_BATCH).take(40) {
            let items: Vec<_> = c.iter().map(|(h, s)| (&public_key, h, s)).collect();
            assert!(verify_entries_batch(&items));
        }
        (SIGNATURE_BATCH * 40).min(signed.len()) as f64 / t.elapsed().as_secs_f64()
    };
    println!("## Verification\n");
    println!(
        "- limit: batch signature verification alone (ZIP-215, {SIGNATURE_BATCH} per batch, {} rayon threads, {n} signatures in memory): {limit:.0} signatures/s ({single:.0}/s on one thread)",
        rayon::current_num_threads()
    );

    // Server-side verification.
    let mut keys = TrustedKeys::new();
    keys.insert(app.ledger.signing_key().key.public_key());
    let keys = auditledger::audit::AuditTrust {
        keys,
        ledger_id: app.ledger.ledger_id(),
    };
    let t = Instant::now();
    let report = rt
        .block_on(auditledger::audit::verify_range(
            Arc::clone(app.ledger.store()),
            keys,
            Seq(0),
            None,
            Arc::default(),
        ))
        .unwrap();
    let report = report.report;
    assert!(report.first_failure.is_none(), "{:?}", report.first_failure);
    let audit = t.elapsed();
    let server = n as f64 / audit.as_secs_f64();
    println!(
        "- server-side (`/v1/audit/verify` runner, from the database): {server:.0} entries/s = {:.2} of the limit ({:.1} s, {} checkpoints)",
        server / limit,
        audit.as_secs_f64(),
        report.checkpoints_checked
    );

    // Export, then the offline verifier as an auditor runs it.
    let bundle = dir.path().join("bundle.ndjson");
    let ledger_id = app.ledger.ledger_id();
    let t = Instant::now();
    rt.block_on(async {
        let (sender, mut receiver) = tokio::sync::mpsc::channel(256);
        let store = Arc::clone(app.ledger.store());
        let producer = tokio::spawn(async move {
            auditledger::export::write_bundle(store.as_ref(), ledger_id, Seq(0), None, sender).await
        });
        let mut f = std::io::BufWriter::new(std::fs::File::create(&bundle).unwrap());
        while let Some(b) = receiver.recv().await {
            std::io::Write::write_all(&mut f, &b).unwrap();
        }
        producer.await.unwrap().unwrap();
    });
    let export = t.elapsed();
    let bytes = std::fs::metadata(&bundle).unwrap().len();
    println!(
        "- export: {:.0} entries/s ({:.1} s, {:.0} MB, {:.0} bytes/entry)",
        n as f64 / export.as_secs_f64(),
        export.as_secs_f64(),
        bytes as f64 / 1e6,
        bytes as f64 / n as f64
    );
    rt.block_on(service.stop()).unwrap();
    let public = dir.path().join("keys/signing.pub");
    let t = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditledger"))
        .args([
            "verify-bundle",
            bundle.to_str().unwrap(),
            "--public-key",
            public.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let offline = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let offline_rate = n as f64 / offline.as_secs_f64();
    println!(
        "- `auditledger verify-bundle` (release binary, 2 cores, batch signature verification): {offline_rate:.0} entries/s = {:.2} of the limit ({:.1} s)",
        offline_rate / limit,
        offline.as_secs_f64()
    );
    // The limit again, after both: a slow spell of the shared machine shows as a difference.
    let again = batch_limit(&public_key, &signed);
    println!(
        "- limit measured again after both: {again:.0} signatures/s (server-side {:.2}, verify-bundle {:.2} of it)",
        server / again,
        offline_rate / again
    );
    println!("  {}", String::from_utf8_lossy(&out.stdout).trim());
}

/// Every entry's hash and signature, read before anything is timed.
async fn signatures(app: &auditledger::api::App, n: u64) -> Vec<(EntryHash, Signature)> {
    let mut out = Vec::with_capacity(usize::try_from(n).unwrap());
    let mut next = 0;
    while next < n {
        let rows = app
            .ledger
            .store()
            .read_global(Seq(next), None, 10_000)
            .await
            .unwrap();
        next += rows.len() as u64;
        out.extend(rows.into_iter().map(|r| {
            let r = r.into_record().unwrap();
            (r.entry_hash, r.signature)
        }));
    }
    out
}

/// Signatures per second that batch verification alone reaches on every core.
fn batch_limit(public: &PublicKey, signed: &[(EntryHash, Signature)]) -> f64 {
    let t = Instant::now();
    let ok = signed.par_chunks(SIGNATURE_BATCH).all(|c| {
        let items: Vec<_> = c.iter().map(|(h, s)| (public, h, s)).collect();
        verify_entries_batch(&items)
    });
    assert!(ok);
    signed.len() as f64 / t.elapsed().as_secs_f64()
}
