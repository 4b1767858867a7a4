//! An entry as it is stored and exported: the hashed fields plus the sealed payload, the entry
//! hash, the signature and the signing key's id. Pure: no I/O.

use crate::crypto::{KeyId, SealedPayload, Signature};
use crate::entry::{Entry, EntryHash};

/// One row of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The hashed fields.
    pub entry: Entry,
    /// The sealed payload; `None` once purged (the chain commits to its digest, not to it).
    pub payload: Option<SealedPayload>,
    /// The stored entry hash.
    pub entry_hash: EntryHash,
    /// Ed25519 signature over the entry hash's signature message.
    pub signature: Signature,
    /// Which key made the signature.
    pub key_id: KeyId,
}
