//! The subjects of a stream for a snapshot's PUT, from its verified entries
//! (`crate::verify::stream` decides what verifies), and what this instance remembers of them.
//!
//! Verifying a stream costs one signature check per entry (~10,000 for a 10,000-event stream).
//! A signed entry never changes, so what was verified once stays true: each stream's progress
//! is kept in memory, and a PUT verifies only the entries after it. The memory is bounded by
//! clearing it when it holds more than [`REMEMBERED_STREAMS`] streams (each is small: the
//! subjects it names, at most `snapshot::MAX_LAYERS + 1`); a stream forgotten is verified again
//! from its start at its next PUT. Nothing about erasure is remembered: the vault answers that
//! at every PUT.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::snapshots::SnapshotError;
use super::{Ledger, ReadError};
use crate::audit::AuditTrust;
use crate::entry::{StreamId, SubjectHandle};
use crate::record::Record;
use crate::snapshot::MAX_LAYERS;
use crate::store::EntryRow;
use crate::verify::stream::{StreamSubjects, SubjectsUnknown};

/// Streams whose verified subjects are remembered before the memory is cleared.
const REMEMBERED_STREAMS: usize = 10_000;
/// Entries read and verified at a time.
const ENTRIES_PER_PAGE: u32 = 1_000;

/// How far this instance has verified each stream's entries, and the subjects they name.
#[derive(Debug, Default)]
pub(super) struct VerifiedStreams(Mutex<HashMap<StreamId, StreamSubjects>>);

impl VerifiedStreams {
    /// What is remembered of `stream`, or nothing verified yet.
    fn get(&self, stream: &StreamId) -> StreamSubjects {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(stream)
            .cloned()
            .unwrap_or_else(|| StreamSubjects::new(stream.clone(), MAX_LAYERS))
    }

    /// Remembers `verified`, unless a concurrent PUT got further along the same stream.
    fn keep(&self, verified: StreamSubjects) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map
            .get(verified.stream())
            .is_some_and(|known| known.next_version() >= verified.next_version())
        {
            return;
        }
        if map.len() >= REMEMBERED_STREAMS && !map.contains_key(verified.stream()) {
            map.clear();
        }
        map.insert(verified.stream().clone(), verified);
    }
}

impl Ledger {
    /// The subjects `stream`'s entries name up to `version`, sorted, from entries verified
    /// against `trust` (the keys directory's keys and the ledger's identity): those verified
    /// by an earlier PUT, then the rest, a page at a time, on a blocking thread.
    ///
    /// # Errors
    /// An entry that does not verify (logged), more subjects than a snapshot has layers, a
    /// version the stream does not reach, or a store failure.
    pub(super) async fn verified_subjects(
        &self,
        stream: &StreamId,
        version: u64,
        trust: &AuditTrust,
    ) -> Result<Vec<SubjectHandle>, SnapshotError> {
        let mut verified = self.verified_streams.get(stream);
        let mut outcome = Ok(());
        while outcome.is_ok() && verified.next_version() <= version {
            let (back, result) = self.verify_page(verified, version, trust).await?;
            verified = back;
            outcome = result;
        }
        // What verified before a failure stays true.
        let subjects = verified.at(version);
        self.verified_streams.keep(verified);
        outcome?;
        match subjects {
            Ok(s) => Ok(s),
            Err(SubjectsUnknown::TooMany { .. }) => Err(SnapshotError::TooManySubjects),
            // The loop ends only past `version` or on a failure, returned above.
            Err(SubjectsUnknown::NotVerified { .. }) => Err(SnapshotError::NoSuchVersion(version)),
        }
    }

    /// Reads the next page of `stream`'s entries up to `version` and verifies it into
    /// `verified`, which comes back with the outcome.
    async fn verify_page(
        &self,
        mut verified: StreamSubjects,
        version: u64,
        trust: &AuditTrust,
    ) -> Result<(StreamSubjects, Result<(), SnapshotError>), SnapshotError> {
        let from = verified.next_version();
        let limit = u32::try_from((version - from).saturating_add(1))
            .unwrap_or(u32::MAX)
            .min(ENTRIES_PER_PAGE);
        let rows = self
            .store
            .read_stream(verified.stream(), from, limit)
            .await
            .map_err(ReadError::from)?;
        if rows.is_empty() {
            // Gone since the PUT found the version (or deleted): nothing to seal for.
            return Ok((verified, Err(SnapshotError::NoSuchVersion(version))));
        }
        let records = rows
            .into_iter()
            .map(EntryRow::into_record)
            .collect::<Result<Vec<Record>, _>>()
            .map_err(ReadError::from)?;
        let keys = trust.keys.clone();
        let ledger_id = trust.ledger_id;
        let (verified, result) = tokio::task::spawn_blocking(move || {
            let result = verified.extend(&records, &keys, ledger_id);
            (verified, result)
        })
        .await
        .map_err(|e| SnapshotError::Task(e.to_string()))?;
        let result = result.map_err(|f| {
            // The stream id is the client's text: not logged (api::error's policy).
            tracing::error!(
                seq = f.seq.0,
                kind = %f.kind,
                detail = %f.detail,
                "an entry of a stream does not verify; its snapshot is refused"
            );
            SnapshotError::Untrusted(f)
        });
        Ok((verified, result))
    }
}
