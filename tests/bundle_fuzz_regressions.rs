//! Every input under tests/vectors/fuzz-crashes/ made the bundle verifier panic: found by
//! `cargo fuzz`, or (`handmade-…`) written by hand where a fuzzer cannot go (docs/FUZZING.md
//! says which, with the panic and where). Each is fed again exactly as its fuzz target feeds
//! it; the verifier must answer (ok, tampered or unusable) without panicking. Pure core only.
//!
//! A file named `bundle_trusted-…` came from the `bundle_trusted` target (the key with seed
//! `44` × 32 trusted, and the first line as the trusted checkpoint if it is one); any other
//! name, from the `bundle` target (no trusted key).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use auditledger::bundle::BundleVerifier;
use auditledger::checkpoint::CheckpointJson;
use auditledger::crypto::LedgerSigningKey;
use auditledger::verify::TrustedKeys;

/// As fuzz/fuzz_targets/bundle.rs.
fn feed_as_bundle_target(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(mut verifier) = BundleVerifier::new(TrustedKeys::new(), None) else {
        return;
    };
    for line in text.split('\n') {
        if verifier.feed(line).is_err() {
            return;
        }
    }
    let _ = verifier.finish();
}

/// As fuzz/fuzz_targets/bundle_trusted.rs.
fn feed_as_bundle_trusted_target(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n').peekable();
    let trusted = lines
        .peek()
        .and_then(|first| serde_json::from_str::<CheckpointJson>(first).ok());
    if trusted.is_some() {
        lines.next();
    }
    let mut keys = TrustedKeys::new();
    keys.insert(LedgerSigningKey::from_seed(&[0x44; 32]).public_key());
    let Ok(mut verifier) = BundleVerifier::new(keys, trusted) else {
        return;
    };
    for line in lines {
        if verifier.feed(line).is_err() {
            return;
        }
    }
    let _ = verifier.finish();
}

fn crash_inputs() -> Vec<PathBuf> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/fuzz-crashes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
        .collect();
    files.sort();
    files
}

#[test]
fn no_saved_fuzz_input_makes_the_bundle_verifier_panic() {
    let mut panicked = Vec::new();
    let files = crash_inputs();
    for path in &files {
        let data = std::fs::read(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let trusted = name.starts_with("bundle_trusted-");
        let outcome = std::panic::catch_unwind(|| {
            if trusted {
                feed_as_bundle_trusted_target(&data);
            } else {
                feed_as_bundle_target(&data);
            }
        });
        if outcome.is_err() {
            panicked.push(name);
        }
    }
    assert!(
        panicked.is_empty(),
        "{} of {} saved inputs still panic the verifier (see docs/FUZZING.md): {}",
        panicked.len(),
        files.len(),
        panicked.join(", ")
    );
}
