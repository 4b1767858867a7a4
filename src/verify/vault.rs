//! The key vault against the chain: a data key may be absent only for a subject whose erasure
//! entry is in the chain, and must be absent for every such subject. Pure: the caller lists the
//! vault's key references; the chain (not the database's own erasure table) says who was erased.

use std::collections::HashSet;
use std::hash::BuildHasher;

use super::invariants::Invariants;
use super::{Failure, FailureKind};
use crate::crypto::KeyRef;
use crate::entry::Seq;

/// Checks the vault's key references against a whole ledger's history (from seq 0: erasures
/// before a partial range are unknown, so a partial range cannot be checked this way).
///
/// # Errors
/// The earliest finding: a key missing without an erasure (`missing_key`, at the first entry
/// that needs it), or an erased subject's key present again (`restored_erased_key`, at the
/// erasure entry).
pub fn check<S: BuildHasher>(
    invariants: &Invariants,
    vault: &HashSet<KeyRef, S>,
) -> Result<(), Failure> {
    let Some(seen) = invariants.key_refs() else {
        return Ok(());
    };
    let mut findings: Vec<Failure> = Vec::new();
    for (id, seq) in &seen.system {
        if !vault.contains(&KeyRef::System(*id)) {
            findings.push(Failure::new(
                *seq,
                FailureKind::MissingKey,
                format!(
                    "the system data key {} is missing from the vault, so entries sealed under it cannot be read; no erasure explains it",
                    hex::encode(id)
                ),
            ));
        }
    }
    for (handle, seq) in &seen.subjects {
        let erased = invariants.erased().contains_key(handle);
        if !erased && !vault.contains(&KeyRef::Subject(*handle)) {
            findings.push(Failure::new(
                *seq,
                FailureKind::MissingKey,
                format!(
                    "the data key of subject {} is missing from the vault, but no erasure of that subject is in the chain",
                    handle.to_hex()
                ),
            ));
        }
    }
    for (handle, seq) in invariants.erased() {
        if vault.contains(&KeyRef::Subject(*handle)) {
            findings.push(Failure::new(
                *seq,
                FailureKind::RestoredErasedKey,
                format!(
                    "subject {} was erased at seq {seq}, but its data key is in the vault again",
                    handle.to_hex()
                ),
            ));
        }
    }
    match findings.into_iter().min_by_key(|f| f.seq) {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

/// Whether `from` allows a vault check (the whole history is needed).
#[must_use]
pub fn checkable_from(from: Seq) -> bool {
    from.0 == 0
}
