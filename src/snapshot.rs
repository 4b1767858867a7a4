//! Aggregate snapshots: a client-built state of a stream at a version, kept beside the chain
//! (never part of it) so that loading an aggregate reads the snapshot and only the events after
//! it. Pure: how a snapshot is sealed and opened, and when one is due.
//!
//! A snapshot holds whatever the stream's events held, so it is sealed under **every** subject
//! key of the stream's events up to its version, one layer per key (sorted by handle, innermost
//! first), or under the system key when they name no subject. Which subjects those are, the
//! stream's signed entries say, once verified (`crate::verify::stream`): never the database's
//! `subject` column alone. Erasing any one of those subjects destroys a key the snapshot needs:
//! it can no longer be opened, as the events cannot. Each layer's AAD binds the stream, the
//! version and the layer, so a snapshot copied to another stream or version, or a layer
//! swapped, fails to open and is ignored — a snapshot is never trusted, only used when it
//! opens. The AAD also binds the list of keys it is sealed under (stored beside it, so that a
//! load asks the vault for exactly those keys instead of reading the whole stream to find its
//! subjects): a list altered to drop a subject, or a snapshot re-sealed under fewer keys, does
//! not open.

use crate::crypto::{DataKey, KeyRef, SealError, SealedPayload, open, seal, sha256_parts};
use zeroize::Zeroizing;

/// Domain of a snapshot layer's AAD.
const AAD_DOMAIN: &[u8] = b"auditledger/snapshot/v1\0";
/// A layer's plaintext starts with this byte when it is the state itself...
const STATE: u8 = 0;
/// ...and with this one when it is the next layer in.
const LAYER: u8 = 1;
/// Most layers a snapshot may have (subjects of one stream).
pub const MAX_LAYERS: usize = 64;

/// Default number of events between snapshots.
pub const DEFAULT_INTERVAL: u64 = 100;

/// The key list as stored: each key reference's bytes, innermost layer first.
#[must_use]
pub fn encode_keys(keys: &[KeyRef]) -> Vec<u8> {
    keys.iter().flat_map(KeyRef::to_bytes).collect()
}

/// The key list back from its stored bytes; `None` if malformed.
#[must_use]
pub fn decode_keys(bytes: &[u8]) -> Option<Vec<KeyRef>> {
    let n = KeyRef::System([0; 16]).to_bytes().len();
    if bytes.is_empty() || !bytes.len().is_multiple_of(n) || bytes.len() / n > MAX_LAYERS {
        return None;
    }
    bytes
        .chunks(n)
        .map(|c| KeyRef::from_bytes(c).ok())
        .collect()
}

fn aad(stream: &str, version: u64, keys: &[u8; 32], layer: usize) -> Vec<u8> {
    let mut a = Vec::with_capacity(AAD_DOMAIN.len() + 4 + stream.len() + 48);
    a.extend_from_slice(AAD_DOMAIN);
    a.extend_from_slice(
        &u32::try_from(stream.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    a.extend_from_slice(stream.as_bytes());
    a.extend_from_slice(&version.to_be_bytes());
    a.extend_from_slice(keys);
    a.extend_from_slice(&u64::try_from(layer).unwrap_or(u64::MAX).to_be_bytes());
    a
}

fn keys_digest(keys: &[KeyRef]) -> [u8; 32] {
    sha256_parts(&[&encode_keys(keys)])
}

/// Seals `state` for `stream` at `version` under `keys` (innermost first; at least one).
#[must_use]
pub fn seal_state(
    stream: &str,
    version: u64,
    state: &[u8],
    keys: &[(KeyRef, &DataKey)],
) -> SealedPayload {
    let mut inner = Zeroizing::new(Vec::with_capacity(state.len() + 1));
    inner.push(STATE);
    inner.extend_from_slice(state);
    let mut sealed = SealedPayload(Vec::new());
    let refs: Vec<KeyRef> = keys.iter().map(|(r, _)| *r).collect();
    let digest = keys_digest(&refs);
    // Layers are numbered from the outside (0), so that opening knows each one's number.
    for (i, (key_ref, key)) in keys.iter().enumerate() {
        let layer = keys.len() - 1 - i;
        sealed = seal(key, key_ref, &aad(stream, version, &digest, layer), &inner);
        let mut next = Zeroizing::new(Vec::with_capacity(sealed.0.len() + 1));
        next.push(LAYER);
        next.extend_from_slice(&sealed.0);
        inner = next;
    }
    sealed
}

/// Why a snapshot was not used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Unusable {
    /// A key it needs is gone (its subject erased) or unknown.
    #[error("a key it was sealed under is no longer held")]
    KeyGone,
    /// It does not open under its stream and version: moved, altered or corrupt.
    #[error("it does not open for this stream and version")]
    Mismatch,
}

/// Opens a snapshot of `stream` at `version` sealed under `keys` (the stored list, innermost
/// first), asking `key` for each layer's key (outermost first); `None` from `key` means the key
/// is gone. Each layer must be sealed under the list's key for it.
///
/// # Errors
/// Why the snapshot cannot be used; the caller ignores it.
pub fn open_state(
    stream: &str,
    version: u64,
    keys: &[KeyRef],
    sealed: &SealedPayload,
    mut key: impl FnMut(&KeyRef) -> Option<std::sync::Arc<DataKey>>,
) -> Result<Zeroizing<Vec<u8>>, Unusable> {
    let mismatch = |_: SealError| Unusable::Mismatch;
    let digest = keys_digest(keys);
    let mut current = SealedPayload(sealed.0.clone());
    for layer in 0..keys.len().min(MAX_LAYERS) {
        let key_ref = current.key_ref().map_err(mismatch)?;
        if key_ref != keys[keys.len() - 1 - layer] {
            return Err(Unusable::Mismatch);
        }
        let k = key(&key_ref).ok_or(Unusable::KeyGone)?;
        let plain = open(&k, &current, &aad(stream, version, &digest, layer)).map_err(mismatch)?;
        match plain.first() {
            Some(&STATE) => return Ok(Zeroizing::new(plain[1..].to_vec())),
            Some(&LAYER) => current = SealedPayload(plain[1..].to_vec()),
            _ => return Err(Unusable::Mismatch),
        }
    }
    Err(Unusable::Mismatch)
}

/// Whether an append that took a stream from `before` events to `after` events crossed a
/// multiple of `interval`: the append response then says a snapshot is due.
#[must_use]
pub fn due(interval: u64, before: u64, after: u64) -> bool {
    interval > 0 && after / interval > before / interval
}

/// How often a snapshot is due, per stream-id prefix (the longest matching prefix wins).
#[derive(Clone, Debug)]
pub struct Intervals {
    default: u64,
    prefixes: Vec<(String, u64)>,
}

impl Default for Intervals {
    fn default() -> Intervals {
        Intervals {
            default: DEFAULT_INTERVAL,
            prefixes: Vec::new(),
        }
    }
}

impl Intervals {
    /// From rules `N` (every stream) or `PREFIX=N`; 0 means never.
    ///
    /// # Errors
    /// A rule that is neither.
    pub fn parse(rules: &[String]) -> Result<Intervals, String> {
        let mut out = Intervals::default();
        for rule in rules {
            let bad = || format!("snapshot interval `{rule}`: expected N or PREFIX=N");
            match rule.rsplit_once('=') {
                Some((prefix, n)) if !prefix.is_empty() => {
                    out.prefixes
                        .push((prefix.to_owned(), n.trim().parse().map_err(|_| bad())?));
                }
                Some(_) => return Err(bad()),
                None => out.default = rule.trim().parse().map_err(|_| bad())?,
            }
        }
        Ok(out)
    }

    /// The interval for `stream`.
    #[must_use]
    pub fn for_stream(&self, stream: &str) -> u64 {
        self.prefixes
            .iter()
            .filter(|(p, _)| stream.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map_or(self.default, |(_, n)| *n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::entry::SubjectHandle;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn keys(n: u8) -> Vec<(KeyRef, Arc<DataKey>)> {
        (0..n)
            .map(|i| {
                (
                    KeyRef::Subject(SubjectHandle([i; 16])),
                    Arc::new(DataKey::generate()),
                )
            })
            .collect()
    }

    fn refs(ks: &[(KeyRef, Arc<DataKey>)]) -> Vec<KeyRef> {
        ks.iter().map(|(r, _)| *r).collect()
    }

    fn sealed(ks: &[(KeyRef, Arc<DataKey>)], stream: &str, version: u64) -> SealedPayload {
        let refs: Vec<(KeyRef, &DataKey)> = ks.iter().map(|(r, k)| (*r, k.as_ref())).collect();
        seal_state(stream, version, br#"{"balance":5}"#, &refs)
    }

    fn lookup(ks: &[(KeyRef, Arc<DataKey>)]) -> HashMap<KeyRef, Arc<DataKey>> {
        ks.iter().cloned().collect()
    }

    #[test]
    fn opens_under_all_its_keys_and_not_once_one_is_gone() {
        let ks = keys(3);
        let s = sealed(&ks, "acct-1", 99);
        let all = lookup(&ks);
        let state = open_state("acct-1", 99, &refs(&ks), &s, |r| all.get(r).cloned()).unwrap();
        assert_eq!(&state[..], br#"{"balance":5}"#);
        for gone in 0..3 {
            let mut some = lookup(&ks);
            some.remove(&ks[gone].0);
            assert_eq!(
                open_state("acct-1", 99, &refs(&ks), &s, |r| some.get(r).cloned()),
                Err(Unusable::KeyGone),
                "key {gone} erased"
            );
        }
    }

    #[test]
    fn a_snapshot_moved_to_another_stream_or_version_does_not_open() {
        let ks = keys(2);
        let s = sealed(&ks, "acct-1", 99);
        let all = lookup(&ks);
        let get = |r: &KeyRef| all.get(r).cloned();
        let list = refs(&ks);
        assert_eq!(
            open_state("acct-2", 99, &list, &s, get),
            Err(Unusable::Mismatch)
        );
        assert_eq!(
            open_state("acct-1", 98, &list, &s, get),
            Err(Unusable::Mismatch)
        );
        // A list that drops a subject, or a snapshot sealed under fewer keys, does not open.
        assert_eq!(
            open_state("acct-1", 99, &list[1..], &s, get),
            Err(Unusable::Mismatch)
        );
        let fewer = sealed(&ks[1..], "acct-1", 99);
        assert_eq!(
            open_state("acct-1", 99, &list, &fewer, get),
            Err(Unusable::Mismatch)
        );
        assert!(decode_keys(&encode_keys(&list)).is_some_and(|d| d == list));
        assert!(decode_keys(&[1, 2, 3]).is_none());
        let mut flipped = s.clone();
        let end = flipped.0.len() - 1;
        flipped.0[end] ^= 1;
        assert_eq!(
            open_state("acct-1", 99, &list, &flipped, get),
            Err(Unusable::Mismatch)
        );
    }

    #[test]
    fn the_longest_prefix_sets_the_interval() {
        let i = Intervals::parse(&["50".into(), "acct-=10".into(), "acct-vip-=0".into()]).unwrap();
        assert_eq!(i.for_stream("order-1"), 50);
        assert_eq!(i.for_stream("acct-1"), 10);
        assert_eq!(i.for_stream("acct-vip-1"), 0);
        assert_eq!(Intervals::default().for_stream("x"), DEFAULT_INTERVAL);
        assert!(Intervals::parse(&["=5".into()]).is_err());
        assert!(Intervals::parse(&["acct=x".into()]).is_err());
    }

    #[test]
    fn due_every_interval_events() {
        assert!(!due(100, 0, 99));
        assert!(due(100, 99, 100));
        assert!(due(100, 50, 250));
        assert!(!due(100, 100, 199));
        assert!(!due(0, 0, 1000));
    }
}
