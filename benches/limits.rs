//! This machine's limits for an append, measured in one run (issue 13): what the service's
//! throughput is reported against. `cargo bench --bench limits`; benches/throughput.sh runs it
//! before driving the service.
//!
//! - **Crypto limit**: per event, seal (`crypto::seal`, the ~900-byte data of
//!   benches/scripts/event_1k.json) + entry hash + Ed25519 signature, on one core and on all
//!   cores (rayon: independent chunks of `CHUNK_EVENTS` events, each sealed, chained and
//!   signed by one worker — a ceiling: the service's chain is one, but hashing is well under a
//!   tenth of the work).
//! - **Batch verification**: the verifiers' path (`crypto::verify_entries_batch`, ed25519-consensus,
//!   `verify::SIGNATURE_BATCH` signatures per batch), on one core and on all cores.
//! - **fsync rate**: 4 KB written + `fdatasync`, in a loop, in a file under `LIMITS_DIR` (default
//!   a temporary directory under the target directory): in place in a preallocated file (as a
//!   recycled WAL is written), and appended to a growing file.
//! - **Stage costs** per event, one core: seal, hash, sign (µs), for the same events.
//!
//! Each figure is printed as one line `limit NAME VALUE`; lines starting with `#` are comments.
//! `LIMITS_SECONDS` (default 2) is the length of each timed measurement.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    reason = "a benchmark program"
)]

mod stages;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use auditledger::crypto::verify_entries_batch;
use auditledger::entry::EntryHeader;
use auditledger::verify::SIGNATURE_BATCH;
use rayon::prelude::*;

/// The ~1 KB event's data, shared with the HTTP load (benches/scripts/append.lua) and the
/// `eventsourcing` peer; each event adds an `"n"` member in front, as they do.
const EVENT_DATA: &str = include_str!("scripts/event_1k.json");
/// Events one rayon task seals, chains and signs in the all-cores crypto measurement.
const CHUNK_EVENTS: usize = 256;
/// Events per round of a measurement (rounds repeat until the measurement's time is up).
const ROUND_EVENTS: usize = 4096;
/// Bytes written before each fdatasync.
const FSYNC_WRITE_BYTES: usize = 4096;
/// Size of the preallocated file the in-place fsync loop writes around in.
const FSYNC_FILE_BYTES: u64 = 16 << 20;

fn event_data(n: u64) -> Vec<u8> {
    let rest = EVENT_DATA.trim().strip_prefix('{').unwrap();
    format!("{{\"n\":{n},{rest}").into_bytes()
}

fn headers(first: u64, n: usize) -> Vec<EntryHeader> {
    (first..first + n as u64)
        .map(|i| stages::header(i, true))
        .collect()
}

/// Runs `round` (which does `ROUND_EVENTS` units of work and returns the time of its timed
/// part) until `budget` of timed work has passed; returns units per second.
fn rate(budget: Duration, mut round: impl FnMut() -> Duration) -> f64 {
    let (mut timed, mut units) = (Duration::ZERO, 0usize);
    while timed < budget {
        timed += round();
        units += ROUND_EVENTS;
    }
    units as f64 / timed.as_secs_f64()
}

fn fsync_rate(path: &PathBuf, budget: Duration, in_place: bool) -> f64 {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .unwrap();
    let block = vec![0xa5u8; FSYNC_WRITE_BYTES];
    if in_place {
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..FSYNC_FILE_BYTES >> 20 {
            file.write_all(&zeros).unwrap();
        }
        file.sync_all().unwrap();
    }
    let (start, mut n, mut offset) = (Instant::now(), 0u64, 0u64);
    while start.elapsed() < budget {
        file.write_all_at(&block, offset).unwrap();
        file.sync_data().unwrap();
        n += 1;
        offset += FSYNC_WRITE_BYTES as u64;
        if in_place && offset >= FSYNC_FILE_BYTES {
            offset = 0;
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(path).unwrap();
    rate
}

fn main() {
    let budget = Duration::from_secs_f64(
        std::env::var("LIMITS_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2.0),
    );
    let cores = rayon::current_num_threads();
    let keys = stages::Keys::generate();
    let data = event_data(12_345_678);
    println!(
        "# auditledger machine limits: {cores} cores ({}), {} s per measurement",
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_owned())
            })
            .unwrap_or_default(),
        budget.as_secs_f64()
    );
    println!("limit cores {cores}");
    println!("limit event_data_bytes {}", data.len());

    // Stage costs, one core (the same code as benches/append.rs's stage table).
    let (times, _) = stages::run(&keys, headers(0, 20_000), &data);
    for (name, d) in [
        ("seal", times.seal),
        ("hash", times.hash),
        ("sign", times.sign),
    ] {
        println!(
            "limit stage_{name}_us_per_event {:.2}",
            times.per_event_us(d)
        );
    }

    // Crypto limit: seal + hash + sign, one core, then all cores.
    let one = rate(budget, || {
        let hs = headers(0, ROUND_EVENTS);
        let t = Instant::now();
        std::hint::black_box(stages::seal_hash_sign(&keys, hs, &data));
        t.elapsed()
    });
    println!("limit crypto_one_core_events_per_s {one:.0}");
    let all = rate(budget, || {
        let chunks: Vec<Vec<EntryHeader>> = (0..ROUND_EVENTS / CHUNK_EVENTS)
            .map(|c| headers((c * CHUNK_EVENTS) as u64, CHUNK_EVENTS))
            .collect();
        let t = Instant::now();
        let out: Vec<_> = chunks
            .into_par_iter()
            .map(|hs| stages::seal_hash_sign(&keys, hs, &data))
            .collect();
        let d = t.elapsed();
        std::hint::black_box(out);
        d
    });
    println!("limit crypto_all_cores_events_per_s {all:.0}");

    // Batch signature verification, as the verifiers do it.
    let (_, records) = stages::run(&keys, headers(0, ROUND_EVENTS), &data);
    let public = keys.signing.public_key();
    let items: Vec<_> = records
        .iter()
        .map(|r| (&public, &r.entry_hash, &r.signature))
        .collect();
    let one = rate(budget, || {
        let t = Instant::now();
        assert!(items.chunks(SIGNATURE_BATCH).all(verify_entries_batch));
        t.elapsed()
    });
    println!("limit verify_batch_one_core_sigs_per_s {one:.0}");
    let all = rate(budget, || {
        let t = Instant::now();
        assert!(items.par_chunks(SIGNATURE_BATCH).all(verify_entries_batch));
        t.elapsed()
    });
    println!("limit verify_batch_all_cores_sigs_per_s {all:.0}");

    // fsync rate, in the filesystem the service's data will be in.
    let dir = std::env::var_os("LIMITS_DIR").map_or_else(
        || tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap(),
        |d| tempfile::tempdir_in(d).unwrap(),
    );
    println!("# fsync measured in {}", dir.path().display());
    let path = dir.path().join("fsync-probe");
    println!("limit fsync_per_s {:.0}", fsync_rate(&path, budget, true));
    println!(
        "limit fsync_append_per_s {:.0}",
        fsync_rate(&path, budget, false)
    );
}
