//! RFC 6962 / RFC 9162 Merkle tree over the log. Pure: no I/O.
//!
//! Leaf `i` of the tree is entry `seq = i`; its leaf bytes are the entry's 32-byte
//! `entry_hash`. Hashing follows RFC 6962 §2.1:
//! `leaf = SHA-256(0x00 || leaf bytes)`, `node = SHA-256(0x01 || left || right)`, and the root
//! of the empty tree is `SHA-256("")`.
//!
//! Storage model: a *perfect subtree* `NodeId { level, index }` covers leaves
//! `[index << level, (index + 1) << level)`. Every perfect subtree's hash is stored once, when
//! its last leaf is appended ([`CompactRange::append`] reports them), so appending is O(1)
//! amortised and O(log n) at worst. Any other subtree that a proof needs is split into at most
//! log2(n) perfect subtrees ([`decompose`]) and folded ([`fold`]), so every proof for any tree
//! size costs O(log n) stored reads.

use std::fmt;

use crate::crypto::sha256_parts;

/// Prefix of a leaf hash (RFC 6962 §2.1).
pub const LEAF_HASH_PREFIX: u8 = 0x00;
/// Prefix of an interior node hash (RFC 6962 §2.1).
pub const NODE_HASH_PREFIX: u8 = 0x01;

/// A node of the tree: a leaf hash, an interior node hash or a root.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MerkleHash(pub [u8; 32]);

impl MerkleHash {
    /// Lowercase hex.
    #[must_use]
    pub fn to_hex(&self) -> String {
        crate::entry::encode_hex(&self.0)
    }

    /// Parses exactly 64 lowercase hex digits.
    #[must_use]
    pub fn from_hex(s: &str) -> Option<MerkleHash> {
        let mut out = [0u8; 32];
        crate::entry::decode_hex_exact(s, &mut out).then_some(MerkleHash(out))
    }
}

impl fmt::Debug for MerkleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MerkleHash({})", self.to_hex())
    }
}

/// `SHA-256(0x00 || leaf bytes)`.
#[must_use]
pub fn leaf_hash(leaf_bytes: &[u8]) -> MerkleHash {
    MerkleHash(sha256_parts(&[&[LEAF_HASH_PREFIX], leaf_bytes]))
}

/// `SHA-256(0x01 || left || right)`.
#[must_use]
pub fn node_hash(left: &MerkleHash, right: &MerkleHash) -> MerkleHash {
    MerkleHash(sha256_parts(&[&[NODE_HASH_PREFIX], &left.0, &right.0]))
}

/// Root of the empty tree: `SHA-256("")`.
#[must_use]
pub fn empty_root() -> MerkleHash {
    MerkleHash(sha256_parts(&[]))
}

/// A perfect subtree: `level` 0 is a leaf; it covers `[index << level, (index + 1) << level)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    /// Height above the leaves.
    pub level: u8,
    /// Position among the subtrees of that level.
    pub index: u64,
}

/// The perfect subtrees that exactly cover `[begin, end)`, left to right, largest first.
/// Every range a proof asks for starts at a multiple of a power of two at least as large as
/// the range, so this greedy split always yields aligned subtrees.
#[must_use]
pub fn decompose(begin: u64, end: u64) -> Vec<NodeId> {
    let mut out = Vec::new();
    let mut at = begin;
    while at < end {
        let remaining = end - at;
        // The largest power of two that fits and keeps `at` aligned.
        let mut level = remaining.ilog2();
        if at != 0 {
            level = level.min(at.trailing_zeros());
        }
        out.push(NodeId {
            level: u8::try_from(level).unwrap_or(63),
            index: at >> level,
        });
        at += 1u64 << level;
    }
    out
}

/// Hash of a range from the hashes of its [`decompose`]d subtrees, folded right to left as
/// RFC 6962's MTH does; the empty range is [`empty_root`].
#[must_use]
pub fn fold(hashes: &[MerkleHash]) -> MerkleHash {
    let Some((last, rest)) = hashes.split_last() else {
        return empty_root();
    };
    rest.iter().rev().fold(*last, |acc, h| node_hash(h, &acc))
}

fn largest_power_of_two_below(n: u64) -> u64 {
    // n >= 2 here: the largest k = 2^i with k < n.
    1u64 << (n - 1).ilog2()
}

/// Why a proof cannot be built for these parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The leaf is not in a tree of that size.
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange {
        /// Leaf index.
        index: u64,
        /// Tree size.
        size: u64,
    },
    /// The first tree is larger than the second, or empty.
    #[error("no consistency proof from tree size {from} to {to}")]
    BadSizes {
        /// First size.
        from: u64,
        /// Second size.
        to: u64,
    },
    /// A node the proof needs was not supplied.
    #[error("missing node {0:?}")]
    MissingNode(NodeId),
}

/// The leaf ranges whose hashes make up the inclusion proof of `index` in a tree of `size`,
/// bottom-up (RFC 6962 §2.1.1, PATH).
pub fn inclusion_ranges(index: u64, size: u64) -> Result<Vec<(u64, u64)>, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut out = Vec::new();
    let (mut m, mut a, mut b) = (index, 0, size);
    // Iterative PATH: collect siblings top-down, then reverse.
    while b - a > 1 {
        let k = largest_power_of_two_below(b - a);
        if m < k {
            out.push((a + k, b));
            b = a + k;
        } else {
            out.push((a, a + k));
            m -= k;
            a += k;
        }
    }
    out.reverse();
    Ok(out)
}

/// The leaf ranges whose hashes make up the consistency proof from `from` to `to`, in proof
/// order (RFC 6962 §2.1.2, PROOF / SUBPROOF). Empty when the sizes are equal.
pub fn consistency_ranges(from: u64, to: u64) -> Result<Vec<(u64, u64)>, ProofError> {
    if from == 0 || from > to {
        return Err(ProofError::BadSizes { from, to });
    }
    let mut out = Vec::new();
    let (mut m, mut a, mut b, mut complete) = (from, 0, to, true);
    while m != b - a {
        let k = largest_power_of_two_below(b - a);
        if m <= k {
            out.push((a + k, b));
            b = a + k;
        } else {
            out.push((a, a + k));
            m -= k;
            a += k;
            complete = false;
        }
    }
    if !complete {
        out.push((a, b));
    }
    out.reverse();
    Ok(out)
}

/// The hashes of `ranges`, built from perfect-subtree hashes that `lookup` supplies.
pub fn range_hashes(
    ranges: &[(u64, u64)],
    mut lookup: impl FnMut(NodeId) -> Option<MerkleHash>,
) -> Result<Vec<MerkleHash>, ProofError> {
    ranges
        .iter()
        .map(|&(a, b)| {
            let parts = decompose(a, b)
                .into_iter()
                .map(|id| lookup(id).ok_or(ProofError::MissingNode(id)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(fold(&parts))
        })
        .collect()
}

/// The perfect subtrees whose hashes `range_hashes` will ask for.
#[must_use]
pub fn nodes_needed(ranges: &[(u64, u64)]) -> Vec<NodeId> {
    let mut ids: Vec<NodeId> = ranges.iter().flat_map(|&(a, b)| decompose(a, b)).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Why an inclusion proof was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InclusionVerifyError {
    /// The leaf index is not below the tree size.
    #[error("leaf index out of range")]
    IndexOutOfRange,
    /// The path is too long or too short for the index and size.
    #[error("proof has the wrong length")]
    MalformedProof,
    /// The path leads to another root.
    #[error("proof leads to a different root")]
    RootMismatch,
}

/// Verifies an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &MerkleHash,
    proof: &[MerkleHash],
    root: &MerkleHash,
) -> Result<(), InclusionVerifyError> {
    if index >= size {
        return Err(InclusionVerifyError::IndexOutOfRange);
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(InclusionVerifyError::MalformedProof);
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(InclusionVerifyError::MalformedProof);
    }
    if r != *root {
        return Err(InclusionVerifyError::RootMismatch);
    }
    Ok(())
}

/// Why a consistency proof was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsistencyVerifyError {
    /// The first size is zero or larger than the second.
    #[error("sizes admit no consistency proof")]
    BadSizes,
    /// The path is too long or too short for the sizes.
    #[error("proof has the wrong length")]
    MalformedProof,
    /// The path does not reproduce both roots.
    #[error("proof does not lead to both roots")]
    RootMismatch,
}

/// Verifies a consistency proof between two tree heads (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    root1: &MerkleHash,
    root2: &MerkleHash,
    proof: &[MerkleHash],
) -> Result<(), ConsistencyVerifyError> {
    if size1 > size2 {
        return Err(ConsistencyVerifyError::BadSizes);
    }
    if size1 == size2 {
        if !proof.is_empty() {
            return Err(ConsistencyVerifyError::MalformedProof);
        }
        return if root1 == root2 {
            Ok(())
        } else {
            Err(ConsistencyVerifyError::RootMismatch)
        };
    }
    if size1 == 0 {
        return Err(ConsistencyVerifyError::BadSizes);
    }
    if proof.is_empty() {
        return Err(ConsistencyVerifyError::MalformedProof);
    }
    let mut path: Vec<MerkleHash> = Vec::with_capacity(proof.len() + 1);
    if size1.is_power_of_two() {
        path.push(*root1);
    }
    path.extend_from_slice(proof);
    let (mut f, mut s) = (size1 - 1, size2 - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if s == 0 {
            return Err(ConsistencyVerifyError::MalformedProof);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ConsistencyVerifyError::MalformedProof);
    }
    if fr != *root1 || sr != *root2 {
        return Err(ConsistencyVerifyError::RootMismatch);
    }
    Ok(())
}

/// The right edge of a tree: the perfect subtrees covering `[0, size)`. Enough to append
/// leaves and to compute the root, in O(log n) memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactRange {
    size: u64,
    nodes: Vec<(NodeId, MerkleHash)>,
}

impl CompactRange {
    /// The empty tree.
    #[must_use]
    pub fn new() -> CompactRange {
        CompactRange::default()
    }

    /// A tree of `size` leaves from the hashes of `decompose(0, size)`, in that order.
    pub fn from_hashes(size: u64, hashes: &[MerkleHash]) -> Result<CompactRange, ProofError> {
        let ids = decompose(0, size);
        if ids.len() != hashes.len() {
            // The first subtree with no hash, or (too many hashes) the last one there is.
            let at = ids
                .get(hashes.len())
                .or(ids.last())
                .copied()
                .unwrap_or(NodeId { level: 0, index: 0 });
            return Err(ProofError::MissingNode(at));
        }
        Ok(CompactRange {
            size,
            nodes: ids.into_iter().zip(hashes.iter().copied()).collect(),
        })
    }

    /// Leaves so far.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The perfect subtrees of the right edge, left to right (`decompose(0, size)`).
    #[must_use]
    pub fn nodes(&self) -> &[(NodeId, MerkleHash)] {
        &self.nodes
    }

    /// Appends a leaf hash; `on_node` hears of every perfect subtree this completes (the leaf
    /// itself included), so the caller can store them.
    pub fn append(&mut self, leaf: MerkleHash, mut on_node: impl FnMut(NodeId, MerkleHash)) {
        let id = NodeId {
            level: 0,
            index: self.size,
        };
        on_node(id, leaf);
        self.nodes.push((id, leaf));
        while self.nodes.len() >= 2 {
            let (right_id, right) = self.nodes[self.nodes.len() - 1];
            let (left_id, left) = self.nodes[self.nodes.len() - 2];
            if left_id.level != right_id.level {
                break;
            }
            self.nodes.truncate(self.nodes.len() - 2);
            let parent = NodeId {
                level: left_id.level + 1,
                index: left_id.index >> 1,
            };
            let hash = node_hash(&left, &right);
            on_node(parent, hash);
            self.nodes.push((parent, hash));
        }
        // Saturating: a hostile size near 2^64 must not overflow a verifier.
        self.size = self.size.saturating_add(1);
    }

    /// The root hash of the tree so far.
    #[must_use]
    pub fn root(&self) -> MerkleHash {
        let hashes: Vec<MerkleHash> = self.nodes.iter().map(|(_, h)| *h).collect();
        fold(&hashes)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// Known-answer vectors: tests/vectors/rfc6962-merkle.json names its source.
    fn vectors() -> serde_json::Value {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/vectors/rfc6962-merkle.json"
        ))
        .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn h(s: &serde_json::Value) -> MerkleHash {
        MerkleHash::from_hex(s.as_str().unwrap()).unwrap()
    }

    /// A tree over `leaves`, with every perfect subtree stored, as the ledger stores it.
    fn build(leaves: &[MerkleHash]) -> (CompactRange, HashMap<NodeId, MerkleHash>) {
        let mut tree = CompactRange::new();
        let mut stored = HashMap::new();
        for l in leaves {
            tree.append(*l, |id, hash| {
                stored.insert(id, hash);
            });
        }
        (tree, stored)
    }

    fn rfc_leaves() -> Vec<MerkleHash> {
        vectors()["leaves"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| leaf_hash(&hex::decode(l.as_str().unwrap()).unwrap()))
            .collect()
    }

    #[test]
    fn roots_match_the_rfc6962_vectors_for_every_prefix() {
        let v = vectors();
        let leaves = rfc_leaves();
        for (size, root) in v["roots"].as_array().unwrap().iter().enumerate() {
            let (tree, stored) = build(&leaves[..size]);
            assert_eq!(tree.root(), h(root), "root of size {size}");
            let by_ranges = range_hashes(&[(0, size as u64)], |id| stored.get(&id).copied());
            assert_eq!(by_ranges.unwrap()[0], h(root));
        }
    }

    #[test]
    fn inclusion_proofs_match_the_rfc6962_vectors_and_verify() {
        let v = vectors();
        let leaves = rfc_leaves();
        let (_, stored) = build(&leaves);
        for case in v["inclusion"].as_array().unwrap() {
            let index = case["leaf_index"].as_u64().unwrap();
            let size = case["tree_size"].as_u64().unwrap();
            let want: Vec<MerkleHash> = case["proof"].as_array().unwrap().iter().map(h).collect();
            let ranges = inclusion_ranges(index, size).unwrap();
            let got = range_hashes(&ranges, |id| stored.get(&id).copied()).unwrap();
            assert_eq!(got, want, "inclusion of {index} in {size}");
            let root = h(&v["roots"][usize::try_from(size).unwrap()]);
            let leaf = leaves[usize::try_from(index).unwrap()];
            assert_eq!(verify_inclusion(index, size, &leaf, &got, &root), Ok(()));
        }
    }

    #[test]
    fn consistency_proofs_match_the_rfc6962_vectors_and_verify() {
        let v = vectors();
        let (_, stored) = build(&rfc_leaves());
        for case in v["consistency"].as_array().unwrap() {
            let m = case["size1"].as_u64().unwrap();
            let n = case["size2"].as_u64().unwrap();
            let want: Vec<MerkleHash> = case["proof"].as_array().unwrap().iter().map(h).collect();
            let got = range_hashes(&consistency_ranges(m, n).unwrap(), |id| {
                stored.get(&id).copied()
            })
            .unwrap();
            assert_eq!(got, want, "consistency {m} -> {n}");
            let r1 = h(&v["roots"][usize::try_from(m).unwrap()]);
            let r2 = h(&v["roots"][usize::try_from(n).unwrap()]);
            assert_eq!(verify_consistency(m, n, &r1, &r2, &got), Ok(()));
        }
    }

    #[test]
    fn mutated_proofs_are_rejected() {
        let v = vectors();
        let leaves = rfc_leaves();
        let root8 = h(&v["roots"][8]);
        let root6 = h(&v["roots"][6]);
        let proof: Vec<MerkleHash> = v["inclusion"][2]["proof"]
            .as_array()
            .unwrap()
            .iter()
            .map(h)
            .collect();
        let leaf = leaves[5];
        assert!(verify_inclusion(5, 8, &leaf, &proof, &root8).is_ok());
        // A wrong sibling.
        let mut bad = proof.clone();
        bad[1].0[0] ^= 8;
        assert_eq!(
            verify_inclusion(5, 8, &leaf, &bad, &root8),
            Err(InclusionVerifyError::RootMismatch)
        );
        // A wrong size or index.
        assert!(verify_inclusion(5, 16, &leaf, &proof, &root8).is_err());
        assert!(verify_inclusion(5, 4, &leaf, &proof, &root8).is_err());
        assert!(verify_inclusion(4, 8, &leaf, &proof, &root8).is_err());
        assert_eq!(
            verify_inclusion(8, 8, &leaf, &proof, &root8),
            Err(InclusionVerifyError::IndexOutOfRange)
        );
        // A truncated or extended path.
        assert_eq!(
            verify_inclusion(5, 8, &leaf, &proof[..2], &root8),
            Err(InclusionVerifyError::MalformedProof)
        );
        let mut long = proof.clone();
        long.push(root8);
        assert_eq!(
            verify_inclusion(5, 8, &leaf, &long, &root8),
            Err(InclusionVerifyError::MalformedProof)
        );

        let cproof: Vec<MerkleHash> = v["consistency"][2]["proof"]
            .as_array()
            .unwrap()
            .iter()
            .map(h)
            .collect();
        assert!(verify_consistency(6, 8, &root6, &root8, &cproof).is_ok());
        let mut bad = cproof.clone();
        bad[0].0[0] ^= 16;
        assert_eq!(
            verify_consistency(6, 8, &root6, &root8, &bad),
            Err(ConsistencyVerifyError::RootMismatch)
        );
        assert!(verify_consistency(5, 8, &root6, &root8, &cproof).is_err());
        // A wrong second size (twice or half; 6 -> 7 walks the same shape as 6 -> 8, which is
        // why a checkpoint's signature binds its size to its root).
        assert!(verify_consistency(6, 16, &root6, &root8, &cproof).is_err());
        assert!(verify_consistency(6, 4, &root6, &root8, &cproof).is_err());
        assert!(verify_consistency(6, 8, &root8, &root6, &cproof).is_err());
        assert!(verify_consistency(6, 8, &root6, &root8, &cproof[..2]).is_err());
        assert!(verify_consistency(6, 8, &root6, &root8, &[]).is_err());
        assert_eq!(
            verify_consistency(8, 6, &root8, &root6, &[]),
            Err(ConsistencyVerifyError::BadSizes)
        );
        assert_eq!(
            verify_consistency(0, 6, &empty_root(), &root6, &[]),
            Err(ConsistencyVerifyError::BadSizes)
        );
        assert!(verify_consistency(6, 6, &root6, &root6, &[]).is_ok());
        assert!(verify_consistency(6, 6, &root6, &root8, &[]).is_err());
    }

    #[test]
    fn decomposition_covers_ranges_with_aligned_perfect_subtrees() {
        assert_eq!(decompose(0, 0), vec![]);
        assert_eq!(
            decompose(0, 7),
            vec![
                NodeId { level: 2, index: 0 },
                NodeId { level: 1, index: 2 },
                NodeId { level: 0, index: 6 }
            ]
        );
        assert_eq!(
            decompose(8, 13),
            vec![
                NodeId { level: 2, index: 2 },
                NodeId {
                    level: 0,
                    index: 12
                }
            ]
        );
    }

    proptest! {
        #[test]
        fn every_proof_of_a_random_tree_verifies(size in 1u64..200, a in any::<u64>(), b in any::<u64>()) {
            let leaves: Vec<MerkleHash> = (0..size).map(|i| leaf_hash(&i.to_be_bytes())).collect();
            let usize_of = |x: u64| usize::try_from(x).unwrap();
            let (tree, stored) = build(&leaves);
            let get = |id: NodeId| stored.get(&id).copied();
            let index = a % size;
            let proof = range_hashes(&inclusion_ranges(index, size).unwrap(), get).unwrap();
            prop_assert!(verify_inclusion(index, size, &leaves[usize_of(index)], &proof, &tree.root()).is_ok());
            let m = 1 + b % size;
            let (old, _) = build(&leaves[..usize_of(m)]);
            let cproof = range_hashes(&consistency_ranges(m, size).unwrap(), get).unwrap();
            prop_assert!(verify_consistency(m, size, &old.root(), &tree.root(), &cproof).is_ok());
            // And the compact range rebuilt from stored nodes gives the same root.
            let hashes: Vec<MerkleHash> = decompose(0, m).into_iter().map(|id| stored[&id]).collect();
            prop_assert_eq!(CompactRange::from_hashes(m, &hashes).unwrap().root(), old.root());
        }
    }
}
