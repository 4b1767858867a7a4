//! Which key may sign what: the keys an auditor trusts (with the ranges they know), and the
//! key schedule the chain itself declares through its rotation entries. Pure.
//!
//! A signed object has a *position*: an entry at seq `s` is at `s`; a checkpoint of tree size
//! `n` at `n`; a report at its `signed_at_size`. The key valid at position `p` is the key that
//! signs entry `p`, so a key whose entries are `first..=last` may sign checkpoints of sizes
//! `first..=last` (the checkpoint of size `last + 1` already belongs to its successor).
//!
//! Trust comes from the auditor, never from the ledger alone:
//! - a key the auditor names with a range is trusted only inside it;
//! - a key the auditor names without a range is trusted wherever the chain lets it sign;
//! - a key the auditor does not name is *anchored* if a chain of countersigned rotations leads
//!   from it to a key the auditor names: that key countersigned exactly this history. Trust
//!   never flows forward (from a trusted key to the key it hands over to): the holder of a
//!   retired key could otherwise hand over, inside its range, to a key of its own. So the
//!   auditor names the newest key of the history (the current key) or a later one. A key that
//!   ends unanchored is unknown.

use std::collections::BTreeMap;

use crate::crypto::{KeyId, PublicKey};

/// An inclusive range of positions, open-ended when `last` is `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRange {
    /// First position.
    pub first: u64,
    /// Last position, or `None` for a key still in use.
    pub last: Option<u64>,
}

impl KeyRange {
    /// Whether `position` is inside.
    #[must_use]
    pub fn contains(&self, position: u64) -> bool {
        position >= self.first && self.last.is_none_or(|l| position <= l)
    }
}

impl std::fmt::Display for KeyRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.last {
            Some(l) => write!(f, "{}..={l}", self.first),
            None => write!(f, "{}..", self.first),
        }
    }
}

/// A public key an auditor trusts, and the range they trust it for (`None`: wherever the chain
/// lets it sign).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrustedKey {
    /// The key.
    pub key: PublicKey,
    /// Where it may sign, if the auditor knows.
    pub range: Option<KeyRange>,
}

/// The public keys a verifier trusts, by id.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys(BTreeMap<KeyId, TrustedKey>);

impl TrustedKeys {
    /// An empty set.
    #[must_use]
    pub fn new() -> TrustedKeys {
        TrustedKeys::default()
    }

    /// Trusts `key` wherever the chain lets it sign.
    pub fn insert(&mut self, key: PublicKey) {
        self.0.insert(key.key_id(), TrustedKey { key, range: None });
    }

    /// Trusts `key` only for positions in `range`.
    pub fn insert_ranged(&mut self, key: PublicKey, range: KeyRange) {
        self.0.insert(
            key.key_id(),
            TrustedKey {
                key,
                range: Some(range),
            },
        );
    }

    /// The key with this id, if trusted.
    #[must_use]
    pub fn find(&self, id: &KeyId) -> Option<&PublicKey> {
        self.0.get(id).map(|t| &t.key)
    }

    /// The trusted entry for this id.
    #[must_use]
    pub fn get(&self, id: &KeyId) -> Option<&TrustedKey> {
        self.0.get(id)
    }

    /// Whether no key is trusted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every trusted key.
    pub fn iter(&self) -> impl Iterator<Item = &TrustedKey> {
        self.0.values()
    }

    /// At most one key may be trusted without a range: a bare key is trusted at any position
    /// the chain gives it, so two bare keys would let the older one, retired, sign history
    /// after its retirement unnoticed. Retired keys come with their ranges.
    ///
    /// # Errors
    /// A sentence naming the keys, if more than one has no range.
    pub fn check_unambiguous(&self) -> Result<(), String> {
        let bare: Vec<String> = self
            .0
            .iter()
            .filter(|(_, t)| t.range.is_none())
            .map(|(id, _)| id.to_hex())
            .collect();
        if bare.len() > 1 {
            return Err(format!(
                "keys {} are all trusted without a range; trust only the current key bare, and give every retired key with its range (a key line from GET /v1/keys, a bundle, or keys/retired/)",
                bare.join(", ")
            ));
        }
        Ok(())
    }

    /// The key `id` names, if it is trusted at `position` (for a receipt or a report, whose
    /// position is its erasure seq or its `signed_at_size`).
    ///
    /// # Errors
    /// `unknown_key` if it is not trusted; `key_out_of_range` if it is, but not there.
    pub fn key_at(&self, id: &KeyId, position: u64) -> Result<&PublicKey, super::Failure> {
        let seq = crate::entry::Seq(position);
        let t = self.0.get(id).ok_or_else(|| {
            super::Failure::new(
                seq,
                super::FailureKind::UnknownKey,
                format!("signed by key {id}, which is not trusted"),
            )
        })?;
        match t.range {
            Some(r) if !r.contains(position) => Err(super::Failure::new(
                seq,
                super::FailureKind::KeyOutOfRange,
                format!("signed by key {id} at position {position}, outside its range {r}"),
            )),
            _ => Ok(&t.key),
        }
    }
}

/// How a key that signed part of the history came to be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// The auditor named it.
    Direct,
    /// It handed over, through countersigned rotations, to a key the auditor named.
    Anchored,
    /// Neither (a verification that ends with such a key fails).
    Unanchored,
}

/// One key's use in the history verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyUse {
    /// The key.
    pub key_id: KeyId,
    /// First seq it signed in what was verified.
    pub first_seq: u64,
    /// Last seq it signed, if any entry.
    pub last_seq: Option<u64>,
    /// The seq of the rotation entry that retired it, if in what was verified.
    pub retired_at: Option<u64>,
    /// How it is trusted.
    pub trust: Trust,
}
