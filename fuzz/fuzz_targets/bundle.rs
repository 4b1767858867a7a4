//! Arbitrary bytes, split into lines, fed to the bundle verifier with no trusted key (it then
//! trusts the bundle's own key lines, as `verify-bundle` without `--public-key` does). Whatever
//! the input, the verifier must answer (ok, tampered or unusable) and never panic.
#![no_main]

use auditledger::bundle::BundleVerifier;
use auditledger::verify::TrustedKeys;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // `verify-bundle` reads lines of UTF-8; invalid bytes become U+FFFD here, so the parser
    // still sees every other byte.
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
});
