//! The ledger entry, its canonical binary encoding and its hash.
//!
//! This module is part of the pure core: no I/O, no database, no async. It is the first thing an
//! auditor reads, and docs/FORMAT.md specifies the same encoding byte for byte.
//!
//! An entry is encoded as (all integers big-endian, every variable-length field length-prefixed,
//! fixed field order, so that no two distinct entries share an encoding):
//!
//! ```text
//! u8      format version (2; legacy 1 has no ledger id)
//! [16]    ledger id (v2 only)
//! u64     seq
//! str     stream_id
//! u64     stream_version
//! str     event_type
//! u32     schema_version
//! u8      subject present (0 or 1), then 16 bytes of subject handle if 1
//! i64     recorded_at, microseconds since the Unix epoch, UTC
//! u32     metadata pair count, then per pair: str key, str value (keys strictly ascending)
//! [32]    payload_digest
//! [32]    prev_hash
//! ```
//! where `str` is a u32 byte length followed by that many bytes of UTF-8.
//! `entry_hash = SHA-256(ENTRY_HASH_DOMAIN || encoding)`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::crypto::sha256_parts;

/// The encoding version this code writes: v2 binds the ledger's identity into every entry.
pub const FORMAT_VERSION: u8 = 2;
/// The legacy encoding version, without a ledger identity; still read (a v1 prefix of an
/// upgraded ledger), never written.
pub const FORMAT_VERSION_V1: u8 = 1;
/// Domain separation for the entry hash: nothing else this system hashes starts with it.
pub const ENTRY_HASH_DOMAIN: &[u8] = b"auditledger/entry-hash/v1\0";
/// Domain separation for the signed message over an entry hash.
pub const ENTRY_SIGNATURE_DOMAIN: &[u8] = b"auditledger/entry-signature/v1\0";
/// Domain separation for the AES-GCM associated data that binds a payload to its header.
pub const PAYLOAD_AAD_DOMAIN: &[u8] = b"auditledger/payload-aad/v1\0";
/// `prev_hash` of the entry at seq 0.
pub const GENESIS_PREV_HASH: EntryHash = EntryHash([0; 32]);
/// Length of a SHA-256 digest.
pub const HASH_LEN: usize = 32;
/// Length of a subject handle.
pub const SUBJECT_HANDLE_LEN: usize = 16;
/// Length of a ledger identifier.
pub const LEDGER_ID_LEN: usize = 16;
/// Longest stream id, event type or metadata key, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest metadata value, in bytes.
pub const MAX_METADATA_VALUE_BYTES: usize = 1024;
/// Most metadata pairs on one event.
pub const MAX_METADATA_PAIRS: usize = 64;

/// Global position of an entry in the log: dense, from 0, and the Merkle leaf index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    /// The position after this one (saturating: no ledger reaches 2^64 entries, and a hostile
    /// input claiming to must not overflow a verifier).
    #[must_use]
    pub fn next(self) -> Seq {
        Seq(self.0.saturating_add(1))
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Lowercase hex of `bytes`: what `hex::encode` writes, without its iterator of characters
/// (a page of 1,000 events shows seven hex values per event; that iterator was 5 % of the
/// service's time reading pages).
#[must_use]
pub fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Decodes exactly `out.len()` bytes of lowercase hex: the only spelling this format writes,
/// so the only one it reads (upper-case or other spellings of the same bytes are refused).
pub fn decode_hex_exact(s: &str, out: &mut [u8]) -> bool {
    s.len() == out.len() * 2
        && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && hex::decode_to_slice(s, out).is_ok()
}

macro_rules! hash_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub [u8; HASH_LEN]);

        impl $name {
            /// Lowercase hex, as the API and the export show it.
            #[must_use]
            pub fn to_hex(&self) -> String {
                encode_hex(&self.0)
            }

            /// Parses 64 hex digits.
            pub fn from_hex(s: &str) -> Result<Self, DecodeError> {
                let mut out = [0u8; HASH_LEN];
                if !decode_hex_exact(s, &mut out) {
                    return Err(DecodeError::BadHex(stringify!($name)));
                }
                Ok(Self(out))
            }

            /// Takes exactly 32 bytes, as stored.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, DecodeError> {
                <[u8; HASH_LEN]>::try_from(bytes)
                    .map(Self)
                    .map_err(|_| DecodeError::BadLength(stringify!($name)))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }
    };
}

hash_newtype!(
    /// SHA-256 over an entry's canonical encoding; what the next entry chains to.
    EntryHash
);
hash_newtype!(
    /// SHA-256 of a sealed payload. The chain commits to this, not to the ciphertext, so that a
    /// ciphertext can be purged without breaking verification.
    PayloadDigest
);

/// Pseudonymous, random 128-bit handle of a data subject. Never the subject's own identifier.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubjectHandle(pub [u8; SUBJECT_HANDLE_LEN]);

impl SubjectHandle {
    /// Lowercase hex.
    #[must_use]
    pub fn to_hex(&self) -> String {
        encode_hex(&self.0)
    }

    /// Parses 32 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, DecodeError> {
        let mut out = [0u8; SUBJECT_HANDLE_LEN];
        if !decode_hex_exact(s, &mut out) {
            return Err(DecodeError::BadHex("SubjectHandle"));
        }
        Ok(Self(out))
    }

    /// Takes exactly 16 bytes, as stored.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, DecodeError> {
        <[u8; SUBJECT_HANDLE_LEN]>::try_from(bytes)
            .map(Self)
            .map_err(|_| DecodeError::BadLength("SubjectHandle"))
    }
}

impl fmt::Debug for SubjectHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubjectHandle({})", self.to_hex())
    }
}

/// A ledger's identity: 16 random bytes fixed at its first start. Every v2 entry, checkpoint,
/// receipt and report binds it, so two ledgers that share a signing key cannot be passed off
/// as one another.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LedgerId(pub [u8; LEDGER_ID_LEN]);

impl LedgerId {
    /// Lowercase hex, 32 digits.
    #[must_use]
    pub fn to_hex(&self) -> String {
        encode_hex(&self.0)
    }

    /// Parses exactly 32 lowercase hex digits.
    pub fn from_hex(s: &str) -> Result<Self, DecodeError> {
        let mut out = [0u8; LEDGER_ID_LEN];
        if !decode_hex_exact(s, &mut out) {
            return Err(DecodeError::BadHex("LedgerId"));
        }
        Ok(Self(out))
    }

    /// Takes exactly 16 bytes, as stored.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, DecodeError> {
        <[u8; LEDGER_ID_LEN]>::try_from(bytes)
            .map(Self)
            .map_err(|_| DecodeError::BadLength("LedgerId"))
    }
}

impl fmt::Debug for LedgerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LedgerId({})", self.to_hex())
    }
}

impl fmt::Display for LedgerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Why a name (stream id, event type, metadata key) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty string.
    #[error("must not be empty")]
    Empty,
    /// Longer than [`MAX_NAME_BYTES`].
    #[error("must be at most {MAX_NAME_BYTES} bytes")]
    TooLong,
    /// A character outside `A-Z a-z 0-9 _ - . :`.
    #[error("may contain only ASCII letters, digits and _ - . :")]
    BadCharacter,
}

fn check_name(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong);
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
    {
        return Err(NameError::BadCharacter);
    }
    Ok(())
}

macro_rules! name_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Checks the name's rules; only a parsed value can be built.
            pub fn parse(s: &str) -> Result<Self, NameError> {
                check_name(s)?;
                Ok(Self(s.to_owned()))
            }

            /// The name as text.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_newtype!(
    /// The aggregate an event belongs to: 1 to 128 characters of `A-Z a-z 0-9 _ - . :`.
    StreamId
);
name_newtype!(
    /// The event's type, such as `PaymentInitiated`; same character rules as [`StreamId`].
    EventType
);

/// Plaintext metadata: string keys to string values, kept sorted so it encodes one way only.
/// It must hold no personal data; it is never encrypted and survives erasure.
pub type Metadata = BTreeMap<String, String>;

/// Everything about an entry that the payload's encryption is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryHeader {
    /// The ledger this entry belongs to; `None` only for a legacy v1 entry (encoded without it).
    pub ledger_id: Option<LedgerId>,
    /// Global position.
    pub seq: Seq,
    /// Stream the event belongs to.
    pub stream_id: StreamId,
    /// Position in that stream, from 0.
    pub stream_version: u64,
    /// Event type.
    pub event_type: EventType,
    /// Version of the event type's schema.
    pub schema_version: u32,
    /// Pseudonymous data subject, if the event has one.
    pub subject: Option<SubjectHandle>,
    /// Server time of the append, microseconds since the Unix epoch, UTC.
    pub recorded_at_micros: i64,
    /// Plaintext metadata.
    pub metadata: Metadata,
}

/// The hashed part of an entry: its header, the digest of its sealed payload and its link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Header fields.
    pub header: EntryHeader,
    /// SHA-256 of the sealed payload.
    pub payload_digest: PayloadDigest,
    /// `entry_hash` of the entry at `seq - 1`, or [`GENESIS_PREV_HASH`].
    pub prev_hash: EntryHash,
}

/// Why bytes do not decode to an entry (or a hex field to its type).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Input ended inside a field.
    #[error("truncated encoding")]
    Truncated,
    /// Bytes left after the last field.
    #[error("trailing bytes after the encoding")]
    TrailingBytes,
    /// A version byte this code does not know.
    #[error("unknown format version {0}")]
    UnknownVersion(u8),
    /// A subject flag other than 0 or 1.
    #[error("subject flag must be 0 or 1")]
    BadSubjectFlag,
    /// A string that is not UTF-8.
    #[error("field is not UTF-8")]
    NotUtf8,
    /// A stream id or event type that breaks the name rules.
    #[error("invalid name: {0}")]
    BadName(NameError),
    /// Metadata keys not strictly ascending (which would allow two encodings of one map).
    #[error("metadata keys not strictly ascending")]
    MetadataOrder,
    /// A hex field that is not hex of the right length.
    #[error("{0} is not valid hex of the right length")]
    BadHex(&'static str),
    /// A binary field of the wrong length.
    #[error("{0} has the wrong length")]
    BadLength(&'static str),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl EntryHeader {
    /// The encoding version of this header: 2 with a ledger id, 1 (legacy) without.
    #[must_use]
    pub fn version(&self) -> u8 {
        if self.ledger_id.is_some() {
            FORMAT_VERSION
        } else {
            FORMAT_VERSION_V1
        }
    }

    /// Appends the header fields' encoding (version byte first) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.version());
        if let Some(id) = &self.ledger_id {
            out.extend_from_slice(&id.0);
        }
        out.extend_from_slice(&self.seq.0.to_be_bytes());
        put_str(out, self.stream_id.as_str());
        out.extend_from_slice(&self.stream_version.to_be_bytes());
        put_str(out, self.event_type.as_str());
        out.extend_from_slice(&self.schema_version.to_be_bytes());
        match &self.subject {
            None => out.push(0),
            Some(h) => {
                out.push(1);
                out.extend_from_slice(&h.0);
            }
        }
        out.extend_from_slice(&self.recorded_at_micros.to_be_bytes());
        let pairs = u32::try_from(self.metadata.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&pairs.to_be_bytes());
        // BTreeMap iterates in ascending byte order of the keys, which is what the format fixes.
        for (k, v) in &self.metadata {
            put_str(out, k);
            put_str(out, v);
        }
    }

    /// The associated data under which this entry's payload is sealed: it binds the ciphertext
    /// to this exact header, so a ciphertext copied into another entry fails to open.
    #[must_use]
    pub fn payload_aad(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(PAYLOAD_AAD_DOMAIN);
        self.encode_into(&mut out);
        out
    }
}

impl Entry {
    /// The canonical encoding.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        self.header.encode_into(&mut out);
        out.extend_from_slice(&self.payload_digest.0);
        out.extend_from_slice(&self.prev_hash.0);
        out
    }

    /// `SHA-256(ENTRY_HASH_DOMAIN || encode())`.
    #[must_use]
    pub fn hash(&self) -> EntryHash {
        EntryHash(sha256_parts(&[ENTRY_HASH_DOMAIN, &self.encode()]))
    }

    /// Decodes a canonical encoding, refusing anything that `encode` would not produce.
    pub fn decode(bytes: &[u8]) -> Result<Entry, DecodeError> {
        let mut r = Reader { bytes, pos: 0 };
        let ledger_id = match r.u8()? {
            FORMAT_VERSION => Some(LedgerId(r.array()?)),
            FORMAT_VERSION_V1 => None,
            other => return Err(DecodeError::UnknownVersion(other)),
        };
        let seq = Seq(r.u64()?);
        let stream_id = StreamId::parse(r.str()?).map_err(DecodeError::BadName)?;
        let stream_version = r.u64()?;
        let event_type = EventType::parse(r.str()?).map_err(DecodeError::BadName)?;
        let schema_version = r.u32()?;
        let subject = match r.u8()? {
            0 => None,
            1 => Some(SubjectHandle(r.array()?)),
            _ => return Err(DecodeError::BadSubjectFlag),
        };
        let recorded_at_micros = i64::from_be_bytes(r.array()?);
        let pairs = r.u32()?;
        let mut metadata = Metadata::new();
        let mut last: Option<String> = None;
        for _ in 0..pairs {
            let k = r.str()?.to_owned();
            let v = r.str()?.to_owned();
            if last.as_ref().is_some_and(|l| l.as_bytes() >= k.as_bytes()) {
                return Err(DecodeError::MetadataOrder);
            }
            last = Some(k.clone());
            metadata.insert(k, v);
        }
        let payload_digest = PayloadDigest(r.array()?);
        let prev_hash = EntryHash(r.array()?);
        if r.pos != bytes.len() {
            return Err(DecodeError::TrailingBytes);
        }
        Ok(Entry {
            header: EntryHeader {
                ledger_id,
                seq,
                stream_id,
                stream_version,
                event_type,
                schema_version,
                subject,
                recorded_at_micros,
                metadata,
            },
            payload_digest,
            prev_hash,
        })
    }
}

/// The message an entry's Ed25519 signature is made over.
#[must_use]
pub fn signature_message(entry_hash: &EntryHash) -> Vec<u8> {
    let mut m = Vec::with_capacity(ENTRY_SIGNATURE_DOMAIN.len() + HASH_LEN);
    m.extend_from_slice(ENTRY_SIGNATURE_DOMAIN);
    m.extend_from_slice(&entry_hash.0);
    m
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let s = self
            .bytes
            .get(self.pos..end)
            .ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let len = self.u32()? as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| DecodeError::NotUtf8)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn encode_hex_writes_what_the_hex_crate_writes(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let ours = encode_hex(&bytes);
            prop_assert_eq!(&ours, &hex::encode(&bytes));
            let mut back = vec![0u8; bytes.len()];
            prop_assert!(decode_hex_exact(&ours, &mut back));
            prop_assert_eq!(back, bytes);
        }
    }

    fn sample() -> Entry {
        Entry {
            header: EntryHeader {
                ledger_id: Some(LedgerId([0x5a; 16])),
                seq: Seq(7),
                stream_id: StreamId::parse("account-42").unwrap(),
                stream_version: 3,
                event_type: EventType::parse("PaymentInitiated").unwrap(),
                schema_version: 2,
                subject: Some(SubjectHandle([0xab; 16])),
                recorded_at_micros: 1_700_000_000_123_456,
                metadata: [("source".to_owned(), "core-banking".to_owned())].into(),
            },
            payload_digest: PayloadDigest([1; 32]),
            prev_hash: EntryHash([2; 32]),
        }
    }

    #[test]
    fn decode_refuses_trailing_bytes_and_other_versions() {
        let mut bytes = sample().encode();
        bytes.push(0);
        assert_eq!(Entry::decode(&bytes), Err(DecodeError::TrailingBytes));
        let mut bytes = sample().encode();
        bytes[0] = 3;
        assert_eq!(Entry::decode(&bytes), Err(DecodeError::UnknownVersion(3)));
        let bytes = sample().encode();
        assert_eq!(
            Entry::decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn names_follow_their_rules() {
        assert!(StreamId::parse("a:b.c-d_e9").is_ok());
        assert_eq!(StreamId::parse(""), Err(NameError::Empty));
        assert_eq!(StreamId::parse("a b"), Err(NameError::BadCharacter));
        assert_eq!(StreamId::parse("é"), Err(NameError::BadCharacter));
        assert_eq!(StreamId::parse(&"x".repeat(129)), Err(NameError::TooLong));
    }

    fn name() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_.:-]{1,40}"
    }

    prop_compose! {
        fn any_entry()(
            ledger in proptest::option::of(any::<[u8; 16]>()),
            seq in any::<u64>(),
            stream in name(),
            stream_version in any::<u64>(),
            ty in name(),
            schema_version in any::<u32>(),
            subject in proptest::option::of(any::<[u8; 16]>()),
            recorded_at_micros in any::<i64>(),
            metadata in proptest::collection::btree_map(".{0,12}", ".{0,20}", 0..5),
            digest in any::<[u8; 32]>(),
            prev in any::<[u8; 32]>(),
        ) -> Entry {
            Entry {
                header: EntryHeader {
                    ledger_id: ledger.map(LedgerId),
                    seq: Seq(seq),
                    stream_id: StreamId::parse(&stream).unwrap(),
                    stream_version,
                    event_type: EventType::parse(&ty).unwrap(),
                    schema_version,
                    subject: subject.map(SubjectHandle),
                    recorded_at_micros,
                    metadata,
                },
                payload_digest: PayloadDigest(digest),
                prev_hash: EntryHash(prev),
            }
        }
    }

    proptest! {
        #[test]
        fn decoding_an_encoding_gives_the_entry_back(e in any_entry()) {
            prop_assert_eq!(Entry::decode(&e.encode()).unwrap(), e);
        }

        #[test]
        fn any_one_byte_change_changes_the_hash_or_fails_to_decode(
            e in any_entry(), pos in any::<prop::sample::Index>(), flip in 1u8..=255,
        ) {
            let bytes = e.encode();
            let mut changed = bytes.clone();
            let i = pos.index(changed.len());
            changed[i] ^= flip;
            let h1 = sha256_parts(&[ENTRY_HASH_DOMAIN, &bytes]);
            let h2 = sha256_parts(&[ENTRY_HASH_DOMAIN, &changed]);
            prop_assert_ne!(h1, h2);
            // The encoding is injective: changed bytes never decode to the same entry.
            if let Ok(other) = Entry::decode(&changed) {
                prop_assert_ne!(&other, &e);
                prop_assert_ne!(other.hash(), e.hash());
            }
        }
    }
}
