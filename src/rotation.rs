//! Signing-key rotation entries. Pure: no I/O.
//!
//! A rotation is an ordinary entry in the ledger's own stream [`KEYS_STREAM`], of type
//! [`SIGNING_KEY_ROTATED`], signed by the key that was active until then (the old key). Its
//! plaintext metadata names the new key and carries the new key's countersignature:
//!
//! ```text
//! metadata: new_key_id       = key id of the new public key (16 hex)
//!           new_public_key   = the new Ed25519 public key (64 hex)
//!           countersignature = Ed25519-Sign(new key, message) (128 hex)
//! message = "auditledger/key-rotation/v2\0" || ledger_id (16) || u64 seq || prev_hash (32)
//!           || old_public_key (32) || new_public_key (32)
//! ```
//!
//! where `seq` and `prev_hash` are the rotation entry's own. The old key's signature over the
//! entry says "I hand over to this key here"; the countersignature says "the new key accepts,
//! at exactly this point of exactly this history". From `seq + 1` on only the new key signs.

use crate::crypto::{KeyId, LedgerSigningKey, PublicKey, Signature};
use crate::entry::{EntryHash, LedgerId, Metadata, Seq};

/// The ledger's own stream of signing-key rotations.
pub const KEYS_STREAM: &str = "auditledger:signing-keys";
/// Event type of a rotation entry.
pub const SIGNING_KEY_ROTATED: &str = "SigningKeyRotated";
/// Domain separation for the countersignature.
pub const ROTATION_DOMAIN: &[u8] = b"auditledger/key-rotation/v2\0";
/// Metadata key: the new key's id.
pub const META_NEW_KEY_ID: &str = "new_key_id";
/// Metadata key: the new public key.
pub const META_NEW_PUBLIC_KEY: &str = "new_public_key";
/// Metadata key: the new key's countersignature.
pub const META_COUNTERSIGNATURE: &str = "countersignature";

/// Why a rotation entry is not a valid hand-over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotationError {
    /// The metadata is not exactly the three fields, canonically written.
    #[error("rotation metadata malformed: {0}")]
    Malformed(&'static str),
    /// `new_key_id` is not the id of `new_public_key`.
    #[error("new_key_id does not name new_public_key")]
    KeyIdMismatch,
    /// The new key does not rotate to itself.
    #[error("a key cannot rotate to itself")]
    SameKey,
    /// The countersignature does not verify under the new key.
    #[error("the new key's countersignature does not verify")]
    BadCountersignature,
}

/// Where in which history the hand-over happens: what the countersignature binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationPoint {
    /// The ledger.
    pub ledger_id: LedgerId,
    /// The rotation entry's seq.
    pub seq: Seq,
    /// The rotation entry's `prev_hash`.
    pub prev_hash: EntryHash,
    /// The key that signs the rotation entry and retires with it.
    pub old_key: PublicKey,
}

/// A parsed hand-over to a new key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// The key that signs from the next entry on.
    pub new_key: PublicKey,
    /// Its signature over the [`countersign_message`].
    pub countersignature: Signature,
}

/// The message the new key signs.
#[must_use]
pub fn countersign_message(point: &RotationPoint, new_key: &PublicKey) -> Vec<u8> {
    let mut m = Vec::with_capacity(ROTATION_DOMAIN.len() + 16 + 8 + 32 + 32 + 32);
    m.extend_from_slice(ROTATION_DOMAIN);
    m.extend_from_slice(&point.ledger_id.0);
    m.extend_from_slice(&point.seq.0.to_be_bytes());
    m.extend_from_slice(&point.prev_hash.0);
    m.extend_from_slice(&point.old_key.to_bytes());
    m.extend_from_slice(&new_key.to_bytes());
    m
}

impl Rotation {
    /// The new key's acceptance of the hand-over at `point`.
    #[must_use]
    pub fn countersign(new_key: &LedgerSigningKey, point: &RotationPoint) -> Rotation {
        let public = new_key.public_key();
        Rotation {
            new_key: public,
            countersignature: new_key.sign_message(&countersign_message(point, &public)),
        }
    }

    /// The rotation entry's metadata.
    #[must_use]
    pub fn to_metadata(&self) -> Metadata {
        [
            (META_NEW_KEY_ID.to_owned(), self.new_key.key_id().to_hex()),
            (
                META_NEW_PUBLIC_KEY.to_owned(),
                hex::encode(self.new_key.to_bytes()),
            ),
            (
                META_COUNTERSIGNATURE.to_owned(),
                self.countersignature.to_hex(),
            ),
        ]
        .into()
    }

    /// Parses a rotation entry's metadata: exactly the three fields, lowercase hex.
    pub fn from_metadata(metadata: &Metadata) -> Result<Rotation, RotationError> {
        if metadata.len() != 3 {
            return Err(RotationError::Malformed("exactly three fields expected"));
        }
        let field = |k: &'static str| metadata.get(k).ok_or(RotationError::Malformed(k));
        let mut key_bytes = [0u8; 32];
        if !crate::entry::decode_hex_exact(field(META_NEW_PUBLIC_KEY)?, &mut key_bytes) {
            return Err(RotationError::Malformed(META_NEW_PUBLIC_KEY));
        }
        let new_key = PublicKey::from_bytes(&key_bytes)
            .map_err(|_| RotationError::Malformed(META_NEW_PUBLIC_KEY))?;
        let id = KeyId::from_hex(field(META_NEW_KEY_ID)?)
            .map_err(|_| RotationError::Malformed(META_NEW_KEY_ID))?;
        if id != new_key.key_id() {
            return Err(RotationError::KeyIdMismatch);
        }
        let countersignature = Signature::from_hex(field(META_COUNTERSIGNATURE)?)
            .map_err(|_| RotationError::Malformed(META_COUNTERSIGNATURE))?;
        Ok(Rotation {
            new_key,
            countersignature,
        })
    }

    /// Checks the countersignature for a hand-over at `point`.
    pub fn verify(&self, point: &RotationPoint) -> Result<(), RotationError> {
        if self.new_key == point.old_key {
            return Err(RotationError::SameKey);
        }
        self.new_key
            .verify_message(
                &countersign_message(point, &self.new_key),
                &self.countersignature,
            )
            .map_err(|_| RotationError::BadCountersignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(old: &LedgerSigningKey) -> RotationPoint {
        RotationPoint {
            ledger_id: LedgerId([1; 16]),
            seq: Seq(10),
            prev_hash: EntryHash([2; 32]),
            old_key: old.public_key(),
        }
    }

    #[test]
    fn a_countersigned_rotation_round_trips_and_binds_its_point() {
        let old = LedgerSigningKey::generate();
        let new = LedgerSigningKey::generate();
        let r = Rotation::countersign(&new, &point(&old));
        let back = Rotation::from_metadata(&r.to_metadata());
        assert_eq!(back, Ok(r));
        assert_eq!(r.verify(&point(&old)), Ok(()));
        for moved in [
            RotationPoint {
                seq: Seq(11),
                ..point(&old)
            },
            RotationPoint {
                prev_hash: EntryHash([3; 32]),
                ..point(&old)
            },
            RotationPoint {
                ledger_id: LedgerId([4; 16]),
                ..point(&old)
            },
            RotationPoint {
                old_key: LedgerSigningKey::generate().public_key(),
                ..point(&old)
            },
        ] {
            assert_eq!(r.verify(&moved), Err(RotationError::BadCountersignature));
        }
    }

    #[test]
    fn malformed_metadata_is_refused() {
        let old = LedgerSigningKey::generate();
        let new = LedgerSigningKey::generate();
        let r = Rotation::countersign(&new, &point(&old));
        let mut m = r.to_metadata();
        m.insert("extra".to_owned(), "x".to_owned());
        assert!(Rotation::from_metadata(&m).is_err());
        let mut m = r.to_metadata();
        m.insert(
            META_NEW_KEY_ID.to_owned(),
            old.key_id().to_hex(), // names another key
        );
        assert_eq!(
            Rotation::from_metadata(&m),
            Err(RotationError::KeyIdMismatch)
        );
        let mut m = r.to_metadata();
        let upper = m[META_COUNTERSIGNATURE].to_uppercase();
        m.insert(META_COUNTERSIGNATURE.to_owned(), upper);
        assert!(Rotation::from_metadata(&m).is_err());
        let same = Rotation::countersign(&old, &point(&old));
        assert_eq!(same.verify(&point(&old)), Err(RotationError::SameKey));
    }
}
