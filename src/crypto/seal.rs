//! Payload sealing with AES-256-GCM.
//!
//! A sealed payload is `version (1) || key kind (1) || key ref (16) || nonce (12) || ciphertext
//! || tag (16)`. The key kind says whether the key is the system key (0) or a subject's key (1);
//! the key ref names it (the system key's id, or the subject handle). The associated data is the
//! entry header's encoding, so a ciphertext moved into another entry does not open.
//!
//! Nonces are 96 bits from the operating system's random source. NIST SP 800-38D bounds random
//! nonces to 2^32 seals per key; a subject key seals that subject's events only, and the system
//! key is meant for events without personal data. [`NONCE_BUDGET_PER_KEY`] states the bound.

use std::fmt;

use aes_gcm::Nonce;
use aes_gcm::aead::{Aead, Payload};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::crypto::keys::{DataKey, NONCE_LEN, TAG_LEN};
use crate::entry::{PayloadDigest, SUBJECT_HANDLE_LEN, SubjectHandle};

/// Sealed payload format version.
pub const SEALED_VERSION: u8 = 1;
const HEADER_LEN: usize = 2 + SUBJECT_HANDLE_LEN + NONCE_LEN;
/// Seals allowed under one key with random nonces (NIST SP 800-38D §8.3).
pub const NONCE_BUDGET_PER_KEY: u64 = 1 << 32;

/// Which data key sealed a payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyRef {
    /// The system key, named by its 16-byte id.
    System([u8; SUBJECT_HANDLE_LEN]),
    /// A subject's key, named by the subject's handle.
    Subject(SubjectHandle),
}

impl KeyRef {
    /// Kind byte followed by the 16-byte reference.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 1 + SUBJECT_HANDLE_LEN] {
        let mut out = [0u8; 1 + SUBJECT_HANDLE_LEN];
        let (kind, id) = match self {
            KeyRef::System(id) => (0, id),
            KeyRef::Subject(h) => (1, &h.0),
        };
        out[0] = kind;
        out[1..].copy_from_slice(id);
        out
    }

    /// Parses what [`KeyRef::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<KeyRef, SealError> {
        let (kind, rest) = bytes.split_first().ok_or(SealError::Malformed)?;
        let id: [u8; SUBJECT_HANDLE_LEN] = rest.try_into().map_err(|_| SealError::Malformed)?;
        match kind {
            0 => Ok(KeyRef::System(id)),
            1 => Ok(KeyRef::Subject(SubjectHandle(id))),
            _ => Err(SealError::Malformed),
        }
    }
}

/// Why a sealed payload did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Not a sealed payload of a known version.
    #[error("malformed sealed payload")]
    Malformed,
    /// The tag does not verify: wrong key, changed bytes, or moved to another entry.
    #[error("sealed payload fails authentication")]
    Tampered,
}

/// A sealed payload, as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedPayload(pub Vec<u8>);

impl SealedPayload {
    /// SHA-256 of the sealed bytes: what the chain commits to.
    #[must_use]
    pub fn digest(&self) -> PayloadDigest {
        PayloadDigest(crate::crypto::sha256_parts(&[&self.0]))
    }

    /// The key that sealed it.
    pub fn key_ref(&self) -> Result<KeyRef, SealError> {
        if self.0.len() < HEADER_LEN + TAG_LEN || self.0[0] != SEALED_VERSION {
            return Err(SealError::Malformed);
        }
        KeyRef::from_bytes(&self.0[1..2 + SUBJECT_HANDLE_LEN])
    }
}

impl fmt::Debug for SealedPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedPayload({} bytes)", self.0.len())
    }
}

/// Seals `plaintext` under `key`, bound to `aad`, with a fresh random nonce.
#[must_use]
pub fn seal(key: &DataKey, key_ref: &KeyRef, aad: &[u8], plaintext: &[u8]) -> SealedPayload {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    seal_with_nonce(key, key_ref, aad, plaintext, nonce)
}

/// Seals with a caller-chosen nonce. Only for reproducible test vectors: a nonce used twice
/// under one key breaks AES-GCM's confidentiality and authenticity.
#[must_use]
pub fn seal_with_nonce(
    key: &DataKey,
    key_ref: &KeyRef,
    aad: &[u8],
    plaintext: &[u8],
    nonce: [u8; NONCE_LEN],
) -> SealedPayload {
    // Encryption only fails for messages beyond 2^36 bytes; payloads are capped far below.
    let ct = key
        .cipher()
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER_LEN + ct.len());
    out.push(SEALED_VERSION);
    out.extend_from_slice(&key_ref.to_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    SealedPayload(out)
}

/// Opens a sealed payload with `key` and the `aad` it must be bound to.
pub fn open(
    key: &DataKey,
    sealed: &SealedPayload,
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    sealed.key_ref()?;
    let nonce = &sealed.0[2 + SUBJECT_HANDLE_LEN..HEADER_LEN];
    let ct = &sealed.0[HEADER_LEN..];
    key.cipher()
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map(Zeroizing::new)
        .map_err(|_| SealError::Tampered)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_payload_opens_only_with_its_key_and_its_header() {
        let k = DataKey::generate();
        let r = KeyRef::System([3; 16]);
        let s = seal(&k, &r, b"header-1", b"{\"amount\":5}");
        assert_eq!(s.key_ref().unwrap(), r);
        assert_eq!(&*open(&k, &s, b"header-1").unwrap(), b"{\"amount\":5}");
        assert_eq!(open(&k, &s, b"header-2"), Err(SealError::Tampered));
        assert_eq!(
            open(&DataKey::generate(), &s, b"header-1"),
            Err(SealError::Tampered)
        );
        let mut bent = s.clone();
        let last = bent.0.len() - 1;
        bent.0[last] ^= 1;
        assert_eq!(open(&k, &bent, b"header-1"), Err(SealError::Tampered));
        assert_eq!(
            open(&k, &SealedPayload(vec![1, 2]), b""),
            Err(SealError::Malformed)
        );
    }
}
