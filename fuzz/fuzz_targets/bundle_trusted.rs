//! As `bundle`, but as an auditor who brings their own trust: the key with seed `44` × 32 (the
//! key of the seed corpus, FORMAT.md's example key) is trusted, and if the input's first line
//! is a checkpoint's JSON it is the trusted checkpoint (`--trusted-checkpoint`). This reaches
//! the paths that relate a bundle to a kept checkpoint. Must never panic.
#![no_main]

use auditledger::bundle::BundleVerifier;
use auditledger::checkpoint::CheckpointJson;
use auditledger::crypto::LedgerSigningKey;
use auditledger::verify::TrustedKeys;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
