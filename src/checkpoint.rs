//! Checkpoints (signed tree heads). Pure: no I/O.
//!
//! ```text
//! message v2 = "auditledger/checkpoint/v2\0" || ledger_id (16) || u64 tree_size
//!              || root_hash (32) || last_entry_hash (32) || i64 timestamp (µs)
//!              || u64 previous_tree_size
//! message v1 = "auditledger/checkpoint/v1\0" || u64 tree_size || root_hash (32)
//!              || last_entry_hash (32) || i64 timestamp (µs)            (legacy; read only)
//! signature  = Ed25519-Sign(signing key, message)
//! ```
//!
//! A checkpoint commits to the whole log up to `tree_size` through the Merkle root, and to its
//! last entry directly. `previous_tree_size` chains each checkpoint to the one before it, so a
//! verifier can tell when one was deleted. Kept outside the database (by witnesses, by an
//! auditor), a checkpoint is what exposes a truncated tail or a database restored from an older
//! copy.

use serde::{Deserialize, Serialize};

use crate::crypto::{KeyId, LedgerSigningKey, PublicKey, Signature};
use crate::entry::{EntryHash, LedgerId};
use crate::merkle::MerkleHash;
use crate::timefmt::{format_micros, parse_canonical_micros};

/// Domain separation for the v2 checkpoint signature.
pub const CHECKPOINT_DOMAIN: &[u8] = b"auditledger/checkpoint/v2\0";
/// Domain separation for the legacy v1 checkpoint signature.
pub const CHECKPOINT_DOMAIN_V1: &[u8] = b"auditledger/checkpoint/v1\0";

/// What a v2 checkpoint binds beyond a v1 one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointBinding {
    /// The ledger it belongs to.
    pub ledger_id: LedgerId,
    /// Tree size of the ledger's previous checkpoint (0 if it is the first).
    pub previous_tree_size: u64,
}

/// A signed tree head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Ledger identity and the previous checkpoint; `None` for a legacy v1 checkpoint.
    pub binding: Option<CheckpointBinding>,
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
    /// A field that does not parse, or is not written the one canonical way.
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    /// The signing key is not the one given.
    #[error("checkpoint signed by key {0}, which is not trusted")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("checkpoint signature does not verify")]
    BadSignature,
}

/// The fields a checkpoint signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeHead {
    /// Number of entries covered.
    pub tree_size: u64,
    /// Merkle root over them.
    pub root_hash: MerkleHash,
    /// Hash of the last one.
    pub last_entry_hash: EntryHash,
    /// When, µs since the Unix epoch.
    pub timestamp_micros: i64,
}

/// The signed message of a tree head.
#[must_use]
pub fn message(binding: Option<&CheckpointBinding>, head: &TreeHead) -> Vec<u8> {
    let mut m = Vec::with_capacity(160);
    match binding {
        Some(b) => {
            m.extend_from_slice(CHECKPOINT_DOMAIN);
            m.extend_from_slice(&b.ledger_id.0);
        }
        None => m.extend_from_slice(CHECKPOINT_DOMAIN_V1),
    }
    m.extend_from_slice(&head.tree_size.to_be_bytes());
    m.extend_from_slice(&head.root_hash.0);
    m.extend_from_slice(&head.last_entry_hash.0);
    m.extend_from_slice(&head.timestamp_micros.to_be_bytes());
    if let Some(b) = binding {
        m.extend_from_slice(&b.previous_tree_size.to_be_bytes());
    }
    m
}

impl Checkpoint {
    /// Signs a new (v2) tree head.
    #[must_use]
    pub fn sign(key: &LedgerSigningKey, binding: CheckpointBinding, head: TreeHead) -> Checkpoint {
        let signature = key.sign_message(&message(Some(&binding), &head));
        Checkpoint {
            binding: Some(binding),
            tree_size: head.tree_size,
            root_hash: head.root_hash,
            last_entry_hash: head.last_entry_hash,
            timestamp_micros: head.timestamp_micros,
            key_id: key.key_id(),
            signature,
        }
    }

    /// The signed fields.
    #[must_use]
    pub fn head(&self) -> TreeHead {
        TreeHead {
            tree_size: self.tree_size,
            root_hash: self.root_hash,
            last_entry_hash: self.last_entry_hash,
            timestamp_micros: self.timestamp_micros,
        }
    }

    /// The signed message.
    #[must_use]
    pub fn message(&self) -> Vec<u8> {
        message(self.binding.as_ref(), &self.head())
    }

    /// The ledger it binds, if v2.
    #[must_use]
    pub fn ledger_id(&self) -> Option<LedgerId> {
        self.binding.map(|b| b.ledger_id)
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
            ledger_id: self.binding.map(|b| b.ledger_id.to_hex()),
            tree_size: self.tree_size,
            root_hash: self.root_hash.to_hex(),
            last_entry_hash: self.last_entry_hash.to_hex(),
            timestamp: format_micros(self.timestamp_micros),
            previous_tree_size: self.binding.map(|b| b.previous_tree_size),
            key_id: self.key_id.to_hex(),
            signature: self.signature.to_hex(),
        }
    }
}

/// A checkpoint on the wire: hashes and signature in lowercase hex, time in RFC 3339 with
/// exactly six fractional digits and `Z`. Unknown fields are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CheckpointJson {
    /// The ledger's identity, 32 hex digits (absent on a legacy v1 checkpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_id: Option<String>,
    /// Entries covered.
    pub tree_size: u64,
    /// Merkle root, hex.
    pub root_hash: String,
    /// Hash of the last covered entry, hex.
    pub last_entry_hash: String,
    /// RFC 3339, UTC, six fractional digits (the exact signed µs value).
    pub timestamp: String,
    /// Tree size of the ledger's previous checkpoint, 0 for the first (absent on v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_tree_size: Option<u64>,
    /// Signing key id, hex.
    pub key_id: String,
    /// Ed25519 signature over the checkpoint message, hex.
    pub signature: String,
}

impl CheckpointJson {
    /// Parses the wire form, refusing any non-canonical spelling.
    pub fn parse(&self) -> Result<Checkpoint, CheckpointError> {
        let binding = match (&self.ledger_id, self.previous_tree_size) {
            (Some(id), Some(previous_tree_size)) => Some(CheckpointBinding {
                ledger_id: LedgerId::from_hex(id)
                    .map_err(|_| CheckpointError::Malformed("ledger_id"))?,
                previous_tree_size,
            }),
            (None, None) => None,
            _ => {
                return Err(CheckpointError::Malformed(
                    "ledger_id and previous_tree_size come together",
                ));
            }
        };
        if binding.is_some_and(|b| b.previous_tree_size >= self.tree_size) {
            return Err(CheckpointError::Malformed(
                "previous_tree_size must be below tree_size",
            ));
        }
        Ok(Checkpoint {
            binding,
            tree_size: self.tree_size,
            root_hash: MerkleHash::from_hex(&self.root_hash)
                .ok_or(CheckpointError::Malformed("root_hash"))?,
            last_entry_hash: EntryHash::from_hex(&self.last_entry_hash)
                .map_err(|_| CheckpointError::Malformed("last_entry_hash"))?,
            timestamp_micros: parse_canonical_micros(&self.timestamp)
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

    fn binding() -> CheckpointBinding {
        CheckpointBinding {
            ledger_id: LedgerId([9; 16]),
            previous_tree_size: 40,
        }
    }

    fn head() -> TreeHead {
        TreeHead {
            tree_size: 42,
            root_hash: MerkleHash([3; 32]),
            last_entry_hash: EntryHash([4; 32]),
            timestamp_micros: 1_795_340_718_123_456,
        }
    }

    #[test]
    fn a_checkpoint_round_trips_through_json_and_its_signature_binds_every_field() {
        let key = LedgerSigningKey::generate();
        let cp = Checkpoint::sign(&key, binding(), head());
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
        let mut other = cp.clone();
        other.binding = Some(CheckpointBinding {
            ledger_id: LedgerId([8; 16]),
            ..binding()
        });
        assert_eq!(
            other.verify(&key.public_key()),
            Err(CheckpointError::BadSignature),
            "another ledger's identity"
        );
        let mut other = cp.clone();
        other.binding = Some(CheckpointBinding {
            previous_tree_size: 39,
            ..binding()
        });
        assert_eq!(
            other.verify(&key.public_key()),
            Err(CheckpointError::BadSignature),
            "another previous checkpoint"
        );
        assert!(matches!(
            cp.verify(&LedgerSigningKey::generate().public_key()),
            Err(CheckpointError::UnknownKey(_))
        ));
    }

    #[test]
    fn non_canonical_json_is_refused() {
        let key = LedgerSigningKey::generate();
        let json = Checkpoint::sign(&key, binding(), head()).to_json();
        let mut upper = json.clone();
        upper.signature = upper.signature.to_uppercase();
        assert_ne!(upper.signature, json.signature);
        assert!(upper.parse().is_err());
        let mut offset = json.clone();
        offset.timestamp = "2026-11-22T10:45:18.123456+01:00".to_owned();
        assert!(offset.parse().is_err());
        let mut half = json.clone();
        half.previous_tree_size = None;
        assert!(half.parse().is_err());
        let text = serde_json::to_string(&json).unwrap();
        let decoy = text.replacen('{', "{\"data\":1,", 1);
        assert!(serde_json::from_str::<CheckpointJson>(&decoy).is_err());
    }
}
