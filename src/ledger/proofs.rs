//! Merkle proofs for any tree size up to the current one, from stored perfect subtrees:
//! O(log n) reads each.

use crate::entry::{EntryHash, Seq};
use crate::merkle::{self, MerkleHash};
use crate::store::{Store, StoreError};

use super::Ledger;

/// Why a proof was not produced.
#[derive(Debug, thiserror::Error)]
pub enum ProofRequestError {
    /// Parameters that can never be valid (e.g. seq not below tree size).
    #[error("{0}")]
    Invalid(String),
    /// A seq or size beyond the current log.
    #[error("{0}")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An inclusion proof.
#[derive(Debug)]
pub struct InclusionProof {
    /// The entry.
    pub seq: Seq,
    /// The tree size proven against.
    pub tree_size: u64,
    /// The entry's hash (the leaf bytes).
    pub entry_hash: EntryHash,
    /// Its leaf hash.
    pub leaf_hash: MerkleHash,
    /// The root of the tree of that size.
    pub root_hash: MerkleHash,
    /// Audit path, bottom-up.
    pub proof: Vec<MerkleHash>,
}

/// A consistency proof.
#[derive(Debug)]
pub struct ConsistencyProof {
    /// Older size.
    pub from_size: u64,
    /// Newer size.
    pub to_size: u64,
    /// Root at the older size.
    pub from_root: MerkleHash,
    /// Root at the newer size.
    pub to_root: MerkleHash,
    /// The proof, RFC 6962 order.
    pub proof: Vec<MerkleHash>,
}

/// The hashes of leaf ranges, built from stored perfect subtrees fetched in one read
/// (O(log n) rows per range). Shared by the proof endpoints and the witness publisher.
pub async fn stored_range_hashes(
    store: &dyn Store,
    ranges: &[(u64, u64)],
) -> Result<Vec<MerkleHash>, StoreError> {
    let stored = store.merkle_nodes(&merkle::nodes_needed(ranges)).await?;
    merkle::range_hashes(ranges, |id| stored.get(&id).copied())
        .map_err(|e| StoreError::Conflict(e.to_string()))
}

/// Checks a requested tree size against the ledger's current size.
fn check_size(size: u64, current: u64, name: &str) -> Result<(), ProofRequestError> {
    if size == 0 {
        return Err(ProofRequestError::Invalid(format!(
            "{name} must be at least 1"
        )));
    }
    if size > current {
        return Err(ProofRequestError::NotFound(format!(
            "{name} {size} does not exist: the ledger has {current} entries"
        )));
    }
    Ok(())
}

impl Ledger {
    /// The number of entries now: read once per request, so every check sees the same head.
    async fn current_size(&self) -> Result<u64, StoreError> {
        Ok(self.head().await?.map_or(0, |h| h.seq.0 + 1))
    }

    /// Proves entry `seq` is in the tree of `tree_size` entries (default: the current size).
    pub async fn inclusion_proof(
        &self,
        seq: Seq,
        tree_size: Option<u64>,
    ) -> Result<InclusionProof, ProofRequestError> {
        let current = self.current_size().await?;
        let size = tree_size.unwrap_or(current);
        if seq.0 >= size && tree_size.is_some() {
            return Err(ProofRequestError::Invalid(format!(
                "seq {seq} is not below tree_size {size}"
            )));
        }
        if seq.0 >= current {
            return Err(ProofRequestError::NotFound(format!(
                "seq {seq} does not exist: the ledger has {current} entries"
            )));
        }
        check_size(size, current, "tree_size")?;
        let mut ranges = merkle::inclusion_ranges(seq.0, size)
            .map_err(|e| ProofRequestError::Invalid(e.to_string()))?;
        // The root and the leaf itself come from the same read as the path.
        ranges.push((0, size));
        ranges.push((seq.0, seq.0 + 1));
        let mut hashes = stored_range_hashes(self.store.as_ref(), &ranges).await?;
        let leaf_hash = hashes
            .pop()
            .ok_or_else(|| StoreError::Conflict("leaf missing".to_owned()))?;
        let root_hash = hashes
            .pop()
            .ok_or_else(|| StoreError::Conflict("root missing".to_owned()))?;
        let row = self.store.read_global(seq, Some(seq), 1).await?;
        let entry_hash = row
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Conflict("entry missing".to_owned()))?
            .into_record()
            .map_err(StoreError::from)?
            .entry_hash;
        Ok(InclusionProof {
            seq,
            tree_size: size,
            entry_hash,
            leaf_hash,
            root_hash,
            proof: hashes,
        })
    }

    /// Proves the tree of `to_size` entries extends the tree of `from_size` entries.
    pub async fn consistency_proof(
        &self,
        from_size: u64,
        to_size: u64,
    ) -> Result<ConsistencyProof, ProofRequestError> {
        if from_size > to_size {
            return Err(ProofRequestError::Invalid(format!(
                "from_size {from_size} is larger than to_size {to_size}"
            )));
        }
        let current = self.current_size().await?;
        check_size(from_size, current, "from_size")?;
        check_size(to_size, current, "to_size")?;
        let mut ranges = merkle::consistency_ranges(from_size, to_size)
            .map_err(|e| ProofRequestError::Invalid(e.to_string()))?;
        ranges.push((0, from_size));
        ranges.push((0, to_size));
        let mut hashes = stored_range_hashes(self.store.as_ref(), &ranges).await?;
        let to_root = hashes
            .pop()
            .ok_or_else(|| StoreError::Conflict("root missing".to_owned()))?;
        let from_root = hashes
            .pop()
            .ok_or_else(|| StoreError::Conflict("root missing".to_owned()))?;
        Ok(ConsistencyProof {
            from_size,
            to_size,
            from_root,
            to_root,
            proof: hashes,
        })
    }
}
