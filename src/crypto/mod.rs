//! Every cryptographic primitive the ledger uses, and nothing else: only this module names the
//! primitive crates (sha2, hmac, ed25519-dalek, aes, aes-gcm). Pure: no I/O.

mod keys;
mod seal;
mod signing;
mod xaes;

use sha2::{Digest, Sha256};

pub use keys::{DataKey, Kek, KekId, KeyError, SubjectIndexKey, WrappedKey};
pub use seal::{
    KeyRef, SEAL_NONCE_LEN, SEAL_V1_NONCE_LEN, SEALED_V1, SEALED_V2, SealError, SealedPayload,
    open, seal, seal_v1_with_nonce, seal_with_nonce,
};
pub use signing::{
    KeyId, LedgerSigningKey, PublicKey, Signature, SignatureError, verify_entries_batch,
};

/// SHA-256 over the concatenation of `parts`.
#[must_use]
pub fn sha256_parts(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}
