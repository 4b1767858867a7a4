//! Symmetric keys: data keys (DEKs) that seal payloads, the key-encryption key (KEK) that wraps
//! them for the key vault, and the subject index key. All live in zeroizing buffers, none has a
//! `Debug` that prints bytes, none is `Clone`.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::crypto::seal::KeyRef;
use crate::crypto::sha256_parts;
use crate::crypto::xaes::Xaes256Gcm;
use crate::entry::{SUBJECT_HANDLE_LEN, SubjectHandle};

/// Bytes in an AES-256 key.
pub const KEY_LEN: usize = 32;
/// Bytes in an AES-GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Bytes in an AES-GCM tag.
pub const TAG_LEN: usize = 16;
/// Bytes in a wrapped data key: nonce, ciphertext, tag.
pub const WRAPPED_KEY_LEN: usize = NONCE_LEN + KEY_LEN + TAG_LEN;
const KEK_ID_DOMAIN: &[u8] = b"auditledger/kek-id/v1\0";
const WRAP_AAD_DOMAIN: &[u8] = b"auditledger/dek-wrap/v1\0";
const TOMBSTONE_DOMAIN: &[u8] = b"auditledger/erasure-tombstone/v1\0";
const LINK_AAD_DOMAIN: &[u8] = b"auditledger/subject-link/v1\0";
const TOMBSTONE_AAD_DOMAIN: &[u8] = b"auditledger/tombstone-receipt/v1\0";

/// Why a key could not be built, wrapped or unwrapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Key material of the wrong length.
    #[error("key material must be {KEY_LEN} bytes")]
    BadLength,
    /// A wrapped key that does not open under this KEK: the wrong KEK, or a tampered row.
    #[error("wrapped key does not open under this key-encryption key")]
    UnwrapFailed,
}

fn random_key() -> Zeroizing<[u8; KEY_LEN]> {
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    rand::rngs::OsRng.fill_bytes(k.as_mut());
    k
}

fn key_from_slice(bytes: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    if bytes.len() != KEY_LEN {
        return Err(KeyError::BadLength);
    }
    k.copy_from_slice(bytes);
    Ok(k)
}

/// An AES-256 data key that seals payloads: one per subject, plus one system key.
pub struct DataKey(Zeroizing<[u8; KEY_LEN]>);

impl DataKey {
    /// A fresh random key.
    #[must_use]
    pub fn generate() -> DataKey {
        DataKey(random_key())
    }

    /// A data key from 32 bytes of key material (test vectors; keys are otherwise generated).
    pub fn from_slice(bytes: &[u8]) -> Result<DataKey, KeyError> {
        key_from_slice(bytes).map(DataKey)
    }

    /// AES-256-GCM under this key itself: opens legacy v1 sealed payloads.
    pub(crate) fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(self.0.as_ref().into())
    }

    /// XAES-256-GCM under this key: seals and opens v2 sealed payloads.
    pub(crate) fn xaes(&self) -> Xaes256Gcm {
        Xaes256Gcm::new(&self.0)
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// Short public name of a KEK, stored beside every key it wraps (so rotation knows what is done).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KekId(pub [u8; 8]);

impl KekId {
    /// Lowercase hex.
    #[must_use]
    pub fn to_hex(&self) -> String {
        crate::entry::encode_hex(&self.0)
    }
}

impl fmt::Debug for KekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KekId({})", self.to_hex())
    }
}

impl fmt::Display for KekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A data key wrapped under a KEK: `nonce || AES-256-GCM(kek, dek, aad = domain || key_ref)`.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey(pub Vec<u8>);

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedKey({} bytes)", self.0.len())
    }
}

/// The key-encryption key. Lives outside the database; wraps every data key in the vault.
pub struct Kek(Zeroizing<[u8; KEY_LEN]>);

impl Kek {
    /// A fresh random KEK.
    #[must_use]
    pub fn generate() -> Kek {
        Kek(random_key())
    }

    /// A KEK from 32 bytes of key material.
    pub fn from_slice(bytes: &[u8]) -> Result<Kek, KeyError> {
        key_from_slice(bytes).map(Kek)
    }

    /// The raw key, for writing the key file.
    #[must_use]
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// This KEK's public id (a hash; reveals nothing usable about the key).
    #[must_use]
    pub fn id(&self) -> KekId {
        let h = sha256_parts(&[KEK_ID_DOMAIN, self.0.as_ref()]);
        let mut id = [0u8; 8];
        id.copy_from_slice(&h[..8]);
        KekId(id)
    }

    fn aad(key_ref: &KeyRef) -> Vec<u8> {
        let mut aad = WRAP_AAD_DOMAIN.to_vec();
        aad.extend_from_slice(&key_ref.to_bytes());
        aad
    }

    /// Wraps `dek`, bound to `key_ref` so a wrapped key moved to another row fails to unwrap.
    #[must_use]
    pub fn wrap(&self, dek: &DataKey, key_ref: &KeyRef) -> WrappedKey {
        let cipher = Aes256Gcm::new(self.0.as_ref().into());
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = Self::aad(key_ref);
        // Encryption with a valid key and in-memory buffers cannot fail; aes-gcm only errors on
        // lengths far beyond a 32-byte key.
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: dek.0.as_ref(),
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(WRAPPED_KEY_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        WrappedKey(out)
    }

    /// Seals `plain` under this KEK: `nonce || AES-256-GCM(kek, plain, aad = domain || context)`.
    fn seal_bytes(&self, domain: &[u8], context: &[u8], plain: &[u8]) -> Vec<u8> {
        let cipher = Aes256Gcm::new(self.0.as_ref().into());
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut aad = domain.to_vec();
        aad.extend_from_slice(context);
        // As in `wrap`: encryption of in-memory buffers this small cannot fail.
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    fn open_bytes(
        &self,
        domain: &[u8],
        context: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(KeyError::UnwrapFailed);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let mut aad = domain.to_vec();
        aad.extend_from_slice(context);
        Aes256Gcm::new(self.0.as_ref().into())
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .map(Zeroizing::new)
            .map_err(|_| KeyError::UnwrapFailed)
    }

    /// Seals the link from an index MAC to a subject handle, so that the index row names the
    /// handle only while this KEK's epoch lives. Bound to `index_mac`: a sealed handle moved to
    /// another row does not open.
    #[must_use]
    pub fn seal_link(&self, handle: &SubjectHandle, index_mac: &[u8; 32]) -> Vec<u8> {
        self.seal_bytes(LINK_AAD_DOMAIN, index_mac, &handle.0)
    }

    /// Opens what [`Kek::seal_link`] sealed for `index_mac`.
    pub fn open_link(
        &self,
        sealed: &[u8],
        index_mac: &[u8; 32],
    ) -> Result<SubjectHandle, KeyError> {
        let plain = self.open_bytes(LINK_AAD_DOMAIN, index_mac, sealed)?;
        let id: [u8; SUBJECT_HANDLE_LEN] = plain
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::UnwrapFailed)?;
        Ok(SubjectHandle(id))
    }

    /// Seals an erasure receipt kept under a tombstone MAC, so that it (and the handle it names)
    /// is readable only while this KEK's epoch lives.
    #[must_use]
    pub fn seal_tombstone(&self, receipt: &[u8], tombstone_mac: &[u8; 32]) -> Vec<u8> {
        self.seal_bytes(TOMBSTONE_AAD_DOMAIN, tombstone_mac, receipt)
    }

    /// Opens what [`Kek::seal_tombstone`] sealed for `tombstone_mac`.
    pub fn open_tombstone(
        &self,
        sealed: &[u8],
        tombstone_mac: &[u8; 32],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        self.open_bytes(TOMBSTONE_AAD_DOMAIN, tombstone_mac, sealed)
    }

    /// Unwraps a key that [`Kek::wrap`] wrapped for `key_ref`.
    pub fn unwrap(&self, wrapped: &WrappedKey, key_ref: &KeyRef) -> Result<DataKey, KeyError> {
        if wrapped.0.len() != WRAPPED_KEY_LEN {
            return Err(KeyError::UnwrapFailed);
        }
        let (nonce, ct) = wrapped.0.split_at(NONCE_LEN);
        let cipher = Aes256Gcm::new(self.0.as_ref().into());
        let aad = Self::aad(key_ref);
        let plain = Zeroizing::new(
            cipher
                .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
                .map_err(|_| KeyError::UnwrapFailed)?,
        );
        key_from_slice(&plain).map(DataKey)
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kek({})", self.id())
    }
}

/// HMAC-SHA256 key that turns a subject's own identifier into the subject index key, so the
/// database never stores the identifier itself.
pub struct SubjectIndexKey(Zeroizing<[u8; KEY_LEN]>);

impl SubjectIndexKey {
    /// A fresh random key.
    #[must_use]
    pub fn generate() -> SubjectIndexKey {
        SubjectIndexKey(random_key())
    }

    /// From 32 bytes of key material.
    pub fn from_slice(bytes: &[u8]) -> Result<SubjectIndexKey, KeyError> {
        key_from_slice(bytes).map(SubjectIndexKey)
    }

    /// The raw key, for writing the key file.
    #[must_use]
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// `HMAC-SHA256(index key, identifier)`.
    #[must_use]
    pub fn index(&self, identifier: &str) -> [u8; 32] {
        // HMAC accepts keys of any length, so construction cannot fail.
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_ref()) else {
            return [0; 32];
        };
        mac.update(identifier.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// `HMAC-SHA256(index key, "auditledger/erasure-tombstone/v1\0" || identifier)`: keys the
    /// short-lived erasure tombstone, and differs from [`SubjectIndexKey::index`] so that the
    /// destroyed index row's value appears nowhere after erasure.
    #[must_use]
    pub fn tombstone(&self, identifier: &str) -> [u8; 32] {
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_ref()) else {
            return [0; 32];
        };
        mac.update(TOMBSTONE_DOMAIN);
        mac.update(identifier.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for SubjectIndexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubjectIndexKey(..)")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_wrapped_key_opens_only_under_its_kek_and_for_its_own_row() {
        let kek = Kek::generate();
        let dek = DataKey::generate();
        let r1 = KeyRef::Subject(SubjectHandle([1; 16]));
        let r2 = KeyRef::Subject(SubjectHandle([2; 16]));
        let w = kek.wrap(&dek, &r1);
        assert_eq!(w.0.len(), WRAPPED_KEY_LEN);
        assert!(kek.unwrap(&w, &r1).is_ok());
        assert_eq!(kek.unwrap(&w, &r2).unwrap_err(), KeyError::UnwrapFailed);
        assert_eq!(
            Kek::generate().unwrap(&w, &r1).unwrap_err(),
            KeyError::UnwrapFailed
        );
    }

    #[test]
    fn a_sealed_link_or_tombstone_opens_only_under_its_kek_and_for_its_own_mac() {
        let kek = Kek::generate();
        let h = SubjectHandle([7; 16]);
        let s = kek.seal_link(&h, &[1; 32]);
        assert_eq!(kek.open_link(&s, &[1; 32]).unwrap(), h);
        assert!(kek.open_link(&s, &[2; 32]).is_err());
        assert!(Kek::generate().open_link(&s, &[1; 32]).is_err());
        let t = kek.seal_tombstone(b"{}", &[1; 32]);
        assert_eq!(kek.open_tombstone(&t, &[1; 32]).unwrap().as_slice(), b"{}");
        // Domains differ: a sealed link is not a tombstone.
        assert!(kek.open_tombstone(&s, &[1; 32]).is_err());
    }

    #[test]
    fn debug_output_shows_no_key_bytes() {
        let kek = Kek::from_slice(&[5; 32]).unwrap();
        assert!(!format!("{kek:?}").contains("0505"));
        assert_eq!(format!("{:?}", DataKey::generate()), "DataKey(..)");
    }
}
