//! Exactly-once appends: an append may carry a client's idempotency key. The writer records
//! the key in the append's own transaction, so the key exists if and only if the append was
//! committed; a later request with the same key (a retry after a timeout, a crash, an unclear
//! answer, on any instance) is answered with the original result and writes nothing.
//!
//! What is kept is the key's SHA-256 (clients may put anything in a key), a digest of the
//! request's clear parts (those that are stored in clear anyway: stream, event types and
//! versions, metadata, which events name a subject, plus the version expectation) and the
//! range of entries. The personal parts, data and subject identifiers, are never digested or
//! stored for this: a retry's are compared with the stored entries themselves, opened under
//! their subject's key. Once a subject is erased its events can no longer be compared, and a
//! retry that matches everything else gets the original result.

use sha2::{Digest, Sha256};

use super::{AppendError, AppendRequest, Appended, ExpectedVersion, Ledger, ReadEvent};
use crate::entry::EntryHash;
use crate::store::IdempotencyRow;

/// Longest idempotency key, in characters.
pub const MAX_KEY_CHARS: usize = 255;

/// A client's idempotency key, checked for shape; only its hash is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdempotencyKey([u8; 32]);

/// A key of the wrong shape. The key is not quoted: it is the client's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Idempotency-Key must be 1 to {MAX_KEY_CHARS} visible ASCII characters")]
pub struct BadIdempotencyKey;

impl IdempotencyKey {
    /// Checks a key (1 to 255 visible ASCII characters, as the header field allows) and hashes
    /// it.
    pub fn parse(key: &[u8]) -> Result<IdempotencyKey, BadIdempotencyKey> {
        if key.is_empty() || key.len() > MAX_KEY_CHARS || !key.iter().all(u8::is_ascii_graphic) {
            return Err(BadIdempotencyKey);
        }
        let mut h = Sha256::new();
        h.update(b"auditledger idempotency key v1\0");
        h.update(key);
        Ok(IdempotencyKey(h.finalize().into()))
    }

    /// The stored form.
    #[must_use]
    pub fn hash(&self) -> [u8; 32] {
        self.0
    }
}

/// SHA-256 of the request's clear parts: what a retry must repeat exactly.
#[must_use]
pub fn request_digest(request: &AppendRequest) -> [u8; 32] {
    let expected = match request.expected {
        ExpectedVersion::Any => serde_json::Value::from("any"),
        ExpectedVersion::NoStream => serde_json::Value::from("no_stream"),
        ExpectedVersion::Exact(v) => serde_json::Value::from(v),
    };
    let events: Vec<serde_json::Value> = request
        .events
        .iter()
        .map(|e| {
            serde_json::json!({
                "type": e.event_type.as_str(),
                "schema_version": e.schema_version,
                "metadata": e.metadata,
                "has_subject": e.subject.is_some(),
            })
        })
        .collect();
    let clear = serde_json::json!({
        "stream": request.stream.as_str(),
        "expected": expected,
        "events": events,
    });
    let mut h = Sha256::new();
    h.update(b"auditledger idempotent request v1\0");
    h.update(clear.to_string().as_bytes());
    h.finalize().into()
}

impl Ledger {
    /// The answer to a request whose key `row` records: the original result if the request is
    /// the same, `IdempotencyKeyReused` if not.
    pub(super) async fn replay(
        &self,
        row: &IdempotencyRow,
        request: &AppendRequest,
    ) -> Result<Appended, AppendError> {
        let unavailable = |e: &dyn std::fmt::Display| {
            tracing::error!(error = %e, "could not read the entries of an idempotency key");
            AppendError::Unavailable("could not read the original append".to_owned())
        };
        if row.request_digest != request_digest(request) {
            return Err(AppendError::IdempotencyKeyReused);
        }
        let count = row.last_seq.0 - row.first_seq.0 + 1;
        if count != request.events.len() as u64 {
            return Err(AppendError::IdempotencyKeyReused);
        }
        let rows = self
            .store
            .read_global(
                row.first_seq,
                Some(row.last_seq),
                u32::try_from(count).unwrap_or(u32::MAX),
            )
            .await
            .map_err(|e| unavailable(&e))?;
        let stored = self.open_rows(rows).await.map_err(|e| unavailable(&e))?;
        if stored.len() as u64 != count {
            return Err(unavailable(&"the recorded entries are not all there"));
        }
        for (event, new) in stored.iter().zip(&request.events) {
            if !self.same_personal_parts(event, new).await? {
                return Err(AppendError::IdempotencyKeyReused);
            }
        }
        let last = &stored[stored.len() - 1].record.entry.header;
        Ok(Appended {
            first_seq: row.first_seq,
            last_seq: row.last_seq,
            stream_version: last.stream_version,
            entries: stored
                .iter()
                .map(|e| (e.record.entry.header.seq, e.record.entry_hash))
                .collect::<Vec<(_, EntryHash)>>(),
            replayed: true,
        })
    }

    /// Whether a stored event has the new event's subject and data. An erased event has
    /// neither any more: it matches, since all that can still be compared (its clear parts,
    /// in the digest) did.
    async fn same_personal_parts(
        &self,
        stored: &ReadEvent,
        new: &super::NewEvent,
    ) -> Result<bool, AppendError> {
        if stored.erased {
            return Ok(true);
        }
        if let Some(identifier) = &new.subject {
            let mac = self.index.index(identifier);
            let handle = self.vault.subject(&mac).await.map_err(|e| {
                tracing::error!(error = %e, "could not resolve a subject for an idempotency key");
                AppendError::Unavailable("could not read the original append".to_owned())
            })?;
            if handle.is_none() || handle != stored.record.entry.header.subject {
                return Ok(false);
            }
        }
        let Some(data) = &stored.data else {
            return Ok(false);
        };
        let new_data: serde_json::Value = match serde_json::from_slice(&new.data) {
            Ok(v) => v,
            Err(_) => return Ok(false),
        };
        Ok(*data == new_data)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_are_visible_ascii_of_bounded_length() {
        assert!(IdempotencyKey::parse(b"order-42/retry").is_ok());
        assert!(IdempotencyKey::parse(&[b'k'; MAX_KEY_CHARS]).is_ok());
        for bad in [
            &b""[..],
            &[b'k'; MAX_KEY_CHARS + 1],
            b"with space",
            b"tab\t",
            "é".as_bytes(),
        ] {
            assert_eq!(IdempotencyKey::parse(bad), Err(BadIdempotencyKey));
        }
        assert_ne!(
            IdempotencyKey::parse(b"a").unwrap(),
            IdempotencyKey::parse(b"b").unwrap()
        );
    }
}
