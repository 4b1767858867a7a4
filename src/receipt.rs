//! Erasure receipts: what the service signs when it destroys a subject's key. Pure: no I/O.
//!
//! ```text
//! message = "auditledger/erasure-receipt/v3\0" || ledger_id (16)
//!           || subject_handle (16) || i64 erased_at (µs) || u64 erasure_seq
//!           || erasure_entry_hash (32) || str request_ref || u32 epoch
//!           || i64 forgotten_by (µs)
//! signature = Ed25519-Sign(signing key, message)
//! ```

use serde::{Deserialize, Serialize};

use crate::checkpoint::CheckpointJson;
use crate::crypto::{KeyId, LedgerSigningKey, PublicKey, Signature, SignatureError};
use crate::entry::{EntryHash, LedgerId, Seq, SubjectHandle};

/// Domain separation for the receipt signature.
pub const RECEIPT_DOMAIN: &[u8] = b"auditledger/erasure-receipt/v3\0";

/// The facts an erasure receipt attests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptFacts {
    /// The ledger the erasure happened in.
    pub ledger_id: LedgerId,
    /// The erased subject's handle.
    pub subject_handle: SubjectHandle,
    /// When the key was destroyed, µs since the Unix epoch.
    pub erased_at_micros: i64,
    /// Seq of the `SubjectErased` entry.
    pub erasure_seq: Seq,
    /// Hash of the `SubjectErased` entry.
    pub erasure_entry_hash: EntryHash,
    /// The caller's reference for the request (a ticket number).
    pub request_ref: String,
    /// The KEK epoch current at the erasure: the last that wrapped the subject's key and link.
    pub epoch: u32,
    /// When that epoch's KEK is due to be destroyed, µs: from then on no copy of the database
    /// (backup, WAL, replica) can give back the subject's key or link their identifier.
    pub forgotten_by_micros: i64,
}

impl ReceiptFacts {
    /// The signed message.
    #[must_use]
    pub fn message(&self) -> Vec<u8> {
        let mut m = RECEIPT_DOMAIN.to_vec();
        m.extend_from_slice(&self.ledger_id.0);
        m.extend_from_slice(&self.subject_handle.0);
        m.extend_from_slice(&self.erased_at_micros.to_be_bytes());
        m.extend_from_slice(&self.erasure_seq.0.to_be_bytes());
        m.extend_from_slice(&self.erasure_entry_hash.0);
        let len = u32::try_from(self.request_ref.len()).unwrap_or(u32::MAX);
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(self.request_ref.as_bytes());
        m.extend_from_slice(&self.epoch.to_be_bytes());
        m.extend_from_slice(&self.forgotten_by_micros.to_be_bytes());
        m
    }

    /// Signs the facts.
    #[must_use]
    pub fn sign(&self, key: &LedgerSigningKey) -> (KeyId, Signature) {
        (key.key_id(), key.sign_message(&self.message()))
    }

    /// Checks a receipt against the keys an auditor trusts: `key_id` must be trusted at the
    /// erasure's seq (the key that signed the erasure entry signs its receipt), and the
    /// signature must verify.
    ///
    /// # Errors
    /// `unknown_key`, `key_out_of_range` or `bad_signature`, at the erasure seq.
    pub fn verify_trusted(
        &self,
        keys: &crate::verify::TrustedKeys,
        key_id: &KeyId,
        signature: &Signature,
    ) -> Result<(), crate::verify::Failure> {
        let key = keys.key_at(key_id, self.erasure_seq.0)?;
        self.verify(key, signature).map_err(|_| {
            crate::verify::Failure::new(
                self.erasure_seq,
                crate::verify::FailureKind::BadSignature,
                "the receipt's signature does not verify",
            )
        })
    }

    /// Checks a signature over the facts, by the rule every signature here is checked by.
    pub fn verify(&self, key: &PublicKey, signature: &Signature) -> Result<(), SignatureError> {
        key.verify_message(&self.message(), signature)
    }
}

/// A receipt as the API returns it (hex and RFC 3339 on the wire).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptJson {
    /// The ledger's identity, 32 hex digits (empty in a receipt kept from before v2).
    #[serde(default)]
    pub ledger_id: String,
    /// Subject handle, 32 hex digits.
    pub subject_handle: String,
    /// RFC 3339, UTC, microseconds.
    pub erased_at: String,
    /// Seq of the `SubjectErased` entry.
    pub erasure_seq: u64,
    /// Its entry hash, hex.
    pub erasure_entry_hash: String,
    /// The caller's request reference.
    pub request_ref: String,
    /// Signing key id, hex.
    pub key_id: String,
    /// Ed25519 signature over the receipt message, hex.
    pub signature: String,
    /// The KEK epoch current at the erasure.
    #[serde(default)]
    pub epoch: u32,
    /// When that epoch's KEK is due to be destroyed (RFC 3339): the subject is forgotten by
    /// then in every copy of the database.
    #[serde(default)]
    pub forgotten_by: String,
    /// Every other instance drops the subject's key from memory within this many ms of the
    /// erasure (not part of the signed message: a property of the deployment).
    #[serde(default)]
    pub caches_cleared_within_ms: u64,
    /// A checkpoint whose tree includes the erasure entry (its last leaf).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointJson>,
    /// Inclusion proof of the erasure entry in that checkpoint's tree, hex, bottom-up.
    #[serde(default)]
    pub inclusion_proof: Vec<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_receipt_signature_binds_every_fact() {
        let key = LedgerSigningKey::generate();
        let facts = ReceiptFacts {
            ledger_id: LedgerId([7; 16]),
            subject_handle: SubjectHandle([1; 16]),
            erased_at_micros: 5,
            erasure_seq: Seq(9),
            erasure_entry_hash: EntryHash([2; 32]),
            request_ref: "DSR-1".to_owned(),
            epoch: 3,
            forgotten_by_micros: 77,
        };
        let (id, sig) = facts.sign(&key);
        assert!(facts.verify(&key.public_key(), &sig).is_ok());
        let mut keys = crate::verify::TrustedKeys::new();
        keys.insert_ranged(
            key.public_key(),
            crate::verify::KeyRange {
                first: 0,
                last: Some(8),
            },
        );
        let f = facts.verify_trusted(&keys, &id, &sig).unwrap_err();
        assert_eq!(
            f.kind,
            crate::verify::FailureKind::KeyOutOfRange,
            "seq 9 is after the key's range"
        );
        keys.insert(key.public_key());
        assert!(facts.verify_trusted(&keys, &id, &sig).is_ok());
        let mut other = facts.clone();
        other.erasure_seq = Seq(10);
        assert!(other.verify(&key.public_key(), &sig).is_err());
        let mut other = facts.clone();
        other.ledger_id = LedgerId([8; 16]);
        assert!(other.verify(&key.public_key(), &sig).is_err());
        let mut other = facts.clone();
        other.request_ref = "DSR-2".to_owned();
        assert!(other.verify(&key.public_key(), &sig).is_err());
        let mut other = facts.clone();
        other.epoch = 4;
        assert!(other.verify(&key.public_key(), &sig).is_err());
        let mut other = facts;
        other.forgotten_by_micros = 78;
        assert!(other.verify(&key.public_key(), &sig).is_err());
    }
}
