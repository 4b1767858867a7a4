//! Checkpoints (signed tree heads). Pure: no I/O.
//!
//! ```text
//! message   = "auditledger/checkpoint/v1\0" || u64 tree_size || root_hash (32)
//!             || last_entry_hash (32; zeros for the empty tree) || i64 timestamp (µs)
//! signature = Ed25519-Sign(signing key, message)
//! ```
//!
//! A checkpoint commits to the whole log up to `tree_size` through the Merkle root, and to its
//! last entry directly. Kept outside the database (by witnesses, by an auditor), it is what
//! exposes a truncated tail or a database restored from an older copy.

use serde::{Deserialize, Serialize};

use crate::crypto::{KeyId, LedgerSigningKey, PublicKey, Signature};
use crate::entry::EntryHash;
use crate::merkle::MerkleHash;
use crate::timefmt::{format_micros, parse_rfc3339};

/// Domain separation for the checkpoint signature.
pub const CHECKPOINT_DOMAIN: &[u8] = b"auditledger/checkpoint/v1\0";

/// A signed tree head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Number of entries covered (the Merkle tree size).
    pub tree_size: u64,
    /// Merkle root over entries `0..tree_size`.
    pub root_hash: MerkleHash,
    /// `entry_hash` of entry `tree_size - 1` (zeros when empty).
    pub last_entry_hash: EntryHash,
    /// When it was made, µs since the Unix epoch.
    pub timestamp_micros: i64,
    /// The signing key.
    pub key_id: KeyId,
    /// Signature over [`Checkpoint::message`].
    pub signature: Signature,
}

/// Why a checkpoint was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// A field that does not parse.
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    /// The signing key is not the one given.
    #[error("checkpoint signed by key {0}, which is not trusted")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("checkpoint signature does not verify")]
    BadSignature,
}

/// The signed message of a tree head.
#[must_use]
pub fn message(
    tree_size: u64,
    root_hash: &MerkleHash,
    last_entry_hash: &EntryHash,
    timestamp_micros: i64,
) -> Vec<u8> {
    let mut m = CHECKPOINT_DOMAIN.to_vec();
    m.extend_from_slice(&tree_size.to_be_bytes());
    m.extend_from_slice(&root_hash.0);
    m.extend_from_slice(&last_entry_hash.0);
    m.extend_from_slice(&timestamp_micros.to_be_bytes());
    m
}

impl Checkpoint {
    /// Signs a new tree head.
    #[must_use]
    pub fn sign(
        key: &LedgerSigningKey,
        tree_size: u64,
        root_hash: MerkleHash,
        last_entry_hash: EntryHash,
        timestamp_micros: i64,
    ) -> Checkpoint {
        let signature = key.sign_message(&message(
            tree_size,
            &root_hash,
            &last_entry_hash,
            timestamp_micros,
        ));
        Checkpoint {
            tree_size,
            root_hash,
            last_entry_hash,
            timestamp_micros,
            key_id: key.key_id(),
            signature,
        }
    }

    /// The signed message.
    #[must_use]
    pub fn message(&self) -> Vec<u8> {
        message(
            self.tree_size,
            &self.root_hash,
            &self.last_entry_hash,
            self.timestamp_micros,
        )
    }

    /// Checks the signature under `key`, which must be the key the checkpoint names.
    pub fn verify(&self, key: &PublicKey) -> Result<(), CheckpointError> {
        if key.key_id() != self.key_id {
            return Err(CheckpointError::UnknownKey(self.key_id.to_hex()));
        }
        key.verify_message(&self.message(), &self.signature)
            .map_err(|_| CheckpointError::BadSignature)
    }

    /// The JSON form the API, witnesses and bundles use.
    #[must_use]
    pub fn to_json(&self) -> CheckpointJson {
        CheckpointJson {
            tree_size: self.tree_size,
            root_hash: self.root_hash.to_hex(),
            last_entry_hash: self.last_entry_hash.to_hex(),
            timestamp: format_micros(self.timestamp_micros),
            key_id: self.key_id.to_hex(),
            signature: self.signature.to_hex(),
        }
    }
}

/// A checkpoint on the wire: hashes and signature in hex, time in RFC 3339 with microseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct CheckpointJson {
    /// Entries covered.
    pub tree_size: u64,
    /// Merkle root, hex.
    pub root_hash: String,
    /// Hash of the last covered entry, hex.
    pub last_entry_hash: String,
    /// RFC 3339, UTC, six fractional digits (the exact signed µs value).
    pub timestamp: String,
    /// Signing key id, hex.
    pub key_id: String,
    /// Ed25519 signature over the checkpoint message, hex.
    pub signature: String,
}

impl CheckpointJson {
    /// Parses the wire form.
    pub fn parse(&self) -> Result<Checkpoint, CheckpointError> {
        Ok(Checkpoint {
            tree_size: self.tree_size,
            root_hash: MerkleHash::from_hex(&self.root_hash)
                .ok_or(CheckpointError::Malformed("root_hash"))?,
            last_entry_hash: EntryHash::from_hex(&self.last_entry_hash)
                .map_err(|_| CheckpointError::Malformed("last_entry_hash"))?,
            timestamp_micros: parse_rfc3339(&self.timestamp)
                .ok_or(CheckpointError::Malformed("timestamp"))?,
            key_id: KeyId::from_hex(&self.key_id)
                .map_err(|_| CheckpointError::Malformed("key_id"))?,
            signature: Signature::from_hex(&self.signature)
                .map_err(|_| CheckpointError::Malformed("signature"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_checkpoint_round_trips_through_json_and_its_signature_binds_every_field() {
        let key = LedgerSigningKey::generate();
        let cp = Checkpoint::sign(
            &key,
            42,
            MerkleHash([3; 32]),
            EntryHash([4; 32]),
            1_795_340_718_123_456,
        );
        assert!(cp.verify(&key.public_key()).is_ok());
        let back = cp.to_json().parse().unwrap();
        assert_eq!(back, cp);
        let mut other = cp.clone();
        other.tree_size = 41;
        assert_eq!(
            other.verify(&key.public_key()),
            Err(CheckpointError::BadSignature)
        );
        let mut other = cp.clone();
        other.root_hash.0[0] ^= 1;
        assert_eq!(
            other.verify(&key.public_key()),
            Err(CheckpointError::BadSignature)
        );
        assert!(matches!(
            cp.verify(&LedgerSigningKey::generate().public_key()),
            Err(CheckpointError::UnknownKey(_))
        ));
    }
}
