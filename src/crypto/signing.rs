//! Ed25519 signing keys and the one verification rule used everywhere.
//!
//! Signing is RFC 8032 Ed25519 (deterministic). Verification follows ZIP-215, as
//! `ed25519-consensus` implements it, for every signature — single or in a batch — so the
//! server, `verify` and `verify-bundle` never disagree about an entry: under ZIP-215 a batch
//! accepts exactly what one-at-a-time verification accepts. Every signature this service makes
//! is also valid under strict RFC 8032.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use crate::crypto::sha256_parts;
use crate::entry::{EntryHash, signature_message};

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Length of a key id in bytes (16 hex digits).
pub const KEY_ID_LEN: usize = 8;
const KEY_ID_DOMAIN: &[u8] = b"auditledger/key-id/v1\0";

/// Names a signing key: the first 8 bytes of SHA-256 over a domain tag and the public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl KeyId {
    /// Lowercase hex, 16 digits.
    #[must_use]
    pub fn to_hex(&self) -> String {
        crate::entry::encode_hex(&self.0)
    }

    /// Parses 16 hex digits.
    pub fn from_hex(s: &str) -> Result<KeyId, SignatureError> {
        let mut out = [0u8; KEY_ID_LEN];
        if !crate::entry::decode_hex_exact(s, &mut out) {
            return Err(SignatureError::MalformedKeyId);
        }
        Ok(KeyId(out))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.to_hex())
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// An Ed25519 signature over an entry's signature message.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; SIGNATURE_LEN]);

impl Signature {
    /// Lowercase hex, 128 digits.
    #[must_use]
    pub fn to_hex(&self) -> String {
        crate::entry::encode_hex(&self.0)
    }

    /// Takes exactly 64 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Signature, SignatureError> {
        <[u8; SIGNATURE_LEN]>::try_from(bytes)
            .map(Signature)
            .map_err(|_| SignatureError::MalformedSignature)
    }

    /// Parses 128 hex digits.
    pub fn from_hex(s: &str) -> Result<Signature, SignatureError> {
        let mut out = [0u8; SIGNATURE_LEN];
        if !crate::entry::decode_hex_exact(s, &mut out) {
            return Err(SignatureError::MalformedSignature);
        }
        Ok(Signature(out))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", self.to_hex())
    }
}

/// Why a signature or key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Not 32 bytes, or not a valid curve point.
    #[error("malformed public key")]
    MalformedPublicKey,
    /// Not 64 bytes.
    #[error("malformed signature")]
    MalformedSignature,
    /// Not 16 hex digits.
    #[error("malformed key id")]
    MalformedKeyId,
    /// Well-formed, but not a valid signature of this message under this key.
    #[error("signature does not verify")]
    Invalid,
}

/// A public signing key, as published in `GET /v1/keys` and the export.
#[derive(Clone, Copy)]
pub struct PublicKey {
    bytes: [u8; 32],
    key: ed25519_consensus::VerificationKey,
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for PublicKey {}

impl PublicKey {
    /// Parses 32 bytes of a compressed Edwards point.
    pub fn from_bytes(bytes: &[u8]) -> Result<PublicKey, SignatureError> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| SignatureError::MalformedPublicKey)?;
        let key = ed25519_consensus::VerificationKey::try_from(arr)
            .map_err(|_| SignatureError::MalformedPublicKey)?;
        Ok(PublicKey { bytes: arr, key })
    }

    #[expect(
        clippy::expect_used,
        reason = "a public key derived from a seed by ed25519-dalek is always a valid point"
    )]
    fn from_dalek(key: &VerifyingKey) -> PublicKey {
        PublicKey::from_bytes(&key.to_bytes()).expect("derived public key is a valid point")
    }

    /// The 32 key bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 32] {
        self.bytes
    }

    /// This key's id.
    #[must_use]
    pub fn key_id(&self) -> KeyId {
        let h = sha256_parts(&[KEY_ID_DOMAIN, &self.bytes]);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&h[..KEY_ID_LEN]);
        KeyId(id)
    }

    /// Checks `signature` over the signature message of `entry_hash`, by ZIP-215.
    pub fn verify_entry(
        &self,
        entry_hash: &EntryHash,
        signature: &Signature,
    ) -> Result<(), SignatureError> {
        self.verify_message(&signature_message(entry_hash), signature)
    }

    /// Checks `signature` over an arbitrary (already domain-separated) message, by ZIP-215.
    pub fn verify_message(
        &self,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), SignatureError> {
        let sig = ed25519_consensus::Signature::from(signature.0);
        self.key
            .verify(&sig, message)
            .map_err(|_| SignatureError::Invalid)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.bytes))
    }
}

/// Verifies many entry signatures at once (ZIP-215 batch verification: accepts exactly when
/// every signature would verify alone). Returns `false` if any fails; find which by single
/// verification.
#[must_use]
pub fn verify_entries_batch(items: &[(&PublicKey, &EntryHash, &Signature)]) -> bool {
    let mut batch = ed25519_consensus::batch::Verifier::new();
    for (key, hash, sig) in items {
        let message = signature_message(hash);
        batch.queue((
            key.key.into(),
            ed25519_consensus::Signature::from(sig.0),
            &message,
        ));
    }
    batch.verify(rand::rngs::OsRng).is_ok()
}

/// The ledger's private signing key. Zeroized on drop; no `Debug` bytes, no `Clone`.
pub struct LedgerSigningKey {
    key: SigningKey,
    public: PublicKey,
}

impl LedgerSigningKey {
    /// A fresh key from the operating system's random source.
    #[must_use]
    pub fn generate() -> LedgerSigningKey {
        Self::from_signing_key(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// Rebuilds a key from its 32-byte seed.
    #[must_use]
    pub fn from_seed(seed: &[u8; 32]) -> LedgerSigningKey {
        Self::from_signing_key(SigningKey::from_bytes(seed))
    }

    fn from_signing_key(key: SigningKey) -> LedgerSigningKey {
        let public = PublicKey::from_dalek(&key.verifying_key());
        LedgerSigningKey { key, public }
    }

    /// The 32-byte seed, for writing the key file; zeroized when dropped.
    #[must_use]
    pub fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.key.to_bytes())
    }

    /// The public half.
    #[must_use]
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The key's id.
    #[must_use]
    pub fn key_id(&self) -> KeyId {
        self.public.key_id()
    }

    /// Signs the signature message of `entry_hash`.
    #[must_use]
    pub fn sign_entry(&self, entry_hash: &EntryHash) -> Signature {
        self.sign_message(&signature_message(entry_hash))
    }

    /// Signs an arbitrary (already domain-separated) message.
    #[must_use]
    pub fn sign_message(&self, message: &[u8]) -> Signature {
        Signature(self.key.sign(message).to_bytes())
    }
}

impl fmt::Debug for LedgerSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LedgerSigningKey({})", self.key_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_own_hash_and_key() {
        let k = LedgerSigningKey::generate();
        let h = EntryHash([9; 32]);
        let sig = k.sign_entry(&h);
        assert_eq!(k.public_key().verify_entry(&h, &sig), Ok(()));
        assert_eq!(
            k.public_key().verify_entry(&EntryHash([8; 32]), &sig),
            Err(SignatureError::Invalid)
        );
        let other = LedgerSigningKey::generate();
        assert_eq!(
            other.public_key().verify_entry(&h, &sig),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn batch_verification_agrees_with_single_verification() {
        let k = LedgerSigningKey::generate();
        let pk = k.public_key();
        let hashes: Vec<EntryHash> = (0..50u8).map(|i| EntryHash([i; 32])).collect();
        let mut sigs: Vec<Signature> = hashes.iter().map(|h| k.sign_entry(h)).collect();
        let items = |sigs: &[Signature]| -> bool {
            let v: Vec<_> = hashes.iter().zip(sigs).map(|(h, s)| (&pk, h, s)).collect();
            verify_entries_batch(&v)
        };
        assert!(items(&sigs));
        sigs.swap(3, 4);
        assert!(!items(&sigs));
        assert!(pk.verify_entry(&hashes[3], &sigs[3]).is_err());
    }

    #[test]
    fn debug_output_shows_no_key_bytes() {
        let k = LedgerSigningKey::from_seed(&[7; 32]);
        let shown = format!("{k:?}");
        assert!(!shown.contains(&hex::encode([7u8; 32])));
        assert!(shown.contains(&k.key_id().to_hex()));
    }
}
