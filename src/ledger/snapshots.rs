//! Storing and loading aggregate snapshots (`crate::snapshot` holds the rules: sealing under
//! every subject key of the stream, opening, when one is due).

use std::collections::HashMap;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::{Direction, Ledger, ReadError, RowFilter, SeqRange};
use crate::audit::AuditTrust;
use crate::crypto::{DataKey, KeyRef, SealedPayload};
use crate::entry::{StreamId, SubjectHandle};
use crate::snapshot::{self, Unusable};
use crate::store::EntryRow;
use crate::timefmt::now_micros;
use crate::verify::Failure;

/// How many stored snapshots a load tries, newest first, before replaying from the start.
const TRIED_PER_LOAD: i64 = 3;

/// Why a snapshot was not stored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The stream has no event at that version.
    #[error("the stream has no event at version {0}")]
    NoSuchVersion(u64),
    /// A subject of the stream's events was erased: a snapshot would outlive the erasure.
    #[error(
        "a subject of this stream's events has been erased: a snapshot could hold what the \
         erasure removed, so none is stored; load the stream from its events"
    )]
    SubjectErased,
    /// More subjects than a snapshot has layers.
    #[error("the stream's events name more than {} subjects", snapshot::MAX_LAYERS)]
    TooManySubjects,
    /// An entry of the stream up to the version does not verify, so the subjects a snapshot
    /// must be sealed under are not known: the database was tampered with.
    #[error("the stream's entries do not verify: {0}")]
    Untrusted(Failure),
    /// Reading failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The verification task failed.
    #[error("verifying the stream's entries failed: {0}")]
    Task(String),
}

/// A stream loaded for rebuilding an aggregate.
pub struct Loaded {
    /// The newest usable snapshot at or before the version asked for: its version and state.
    pub snapshot: Option<(u64, Zeroizing<Vec<u8>>)>,
    /// The events after it, up to the version asked for (at most the limit).
    pub rows: Vec<EntryRow>,
    /// The version loaded up to: the one asked for or the stream's last; `None` if empty.
    pub version: Option<u64>,
    /// Snapshots skipped because they did not open.
    pub ignored: usize,
    /// The subjects whose data the snapshot holds (what its access entry counts).
    pub snapshot_subjects: Vec<SubjectHandle>,
}

impl Ledger {
    /// The data keys of `stream`'s subjects up to `version` (innermost layer first), or the
    /// system key when there are none. The subjects are those the stream's signed entries
    /// name, verified against `trust` (see `verified_streams`), never the `subject` column as
    /// stored: a database writer could clear it while the snapshot is sealed.
    async fn snapshot_keys(
        &self,
        stream: &StreamId,
        version: u64,
        trust: &AuditTrust,
    ) -> Result<Vec<(KeyRef, Arc<DataKey>)>, SnapshotError> {
        let subjects = self.verified_subjects(stream, version, trust).await?;
        let mut keys = Vec::with_capacity(subjects.len().max(1));
        for handle in subjects {
            let key_ref = KeyRef::Subject(handle);
            // No key: the subject was erased (or its key deleted, which `verify` reports).
            let key = self
                .vault
                .key(&key_ref)
                .await
                .map_err(ReadError::from)?
                .ok_or(SnapshotError::SubjectErased)?;
            keys.push((key_ref, key));
        }
        if keys.is_empty() {
            let (r, k) = self.vault.system_key();
            keys.push((r, k));
        }
        Ok(keys)
    }

    /// The last version of `stream` at or before `at_most`, if it has one.
    async fn version_at_most(
        &self,
        stream: &StreamId,
        at_most: Option<u64>,
    ) -> Result<Option<u64>, ReadError> {
        let rows = self
            .filtered_rows(&RowFilter {
                stream: Some(stream.clone()),
                event_type: None,
                seqs: SeqRange::ALL,
                from: at_most,
                direction: Direction::Backward,
                limit: 1,
            })
            .await?;
        Ok(rows.first().map(EntryRow::stream_version))
    }

    /// Stores a client-built snapshot of `stream` at `version`, sealed under the keys of the
    /// subjects the stream's entries up to it name, as verified against `trust` (the keys
    /// directory's keys and the ledger's identity, never the database's).
    ///
    /// # Errors
    /// No event at that version, an erased subject, too many subjects, an entry that does not
    /// verify, or a store failure.
    pub async fn put_snapshot(
        &self,
        stream: &StreamId,
        version: u64,
        state: &[u8],
        trust: &AuditTrust,
    ) -> Result<(), SnapshotError> {
        if self.version_at_most(stream, Some(version)).await? != Some(version) {
            return Err(SnapshotError::NoSuchVersion(version));
        }
        let keys = self.snapshot_keys(stream, version, trust).await?;
        let refs: Vec<(KeyRef, &DataKey)> = keys.iter().map(|(r, k)| (*r, k.as_ref())).collect();
        let sealed = snapshot::seal_state(stream.as_str(), version, state, &refs);
        let list: Vec<KeyRef> = keys.iter().map(|(r, _)| *r).collect();
        self.store
            .put_snapshot(
                stream.as_str(),
                version,
                &sealed.0,
                &snapshot::encode_keys(&list),
                now_micros(),
            )
            .await
            .map_err(ReadError::from)?;
        Ok(())
    }

    /// Loads `stream` up to `version` (default: its last): the newest snapshot that opens, and
    /// at most `limit` events after it.
    ///
    /// # Errors
    /// A store or vault failure.
    pub async fn load(
        &self,
        stream: &StreamId,
        version: Option<u64>,
        limit: u32,
    ) -> Result<Loaded, ReadError> {
        let Some(version) = self.version_at_most(stream, version).await? else {
            return Ok(Loaded {
                snapshot: None,
                rows: Vec::new(),
                version: None,
                ignored: 0,
                snapshot_subjects: Vec::new(),
            });
        };
        let mut chosen = None;
        let mut ignored = 0;
        let mut snapshot_subjects = Vec::new();
        let candidates = self
            .store
            .snapshots_before(stream.as_str(), version, TRIED_PER_LOAD)
            .await?;
        for (at, sealed, key_list) in candidates {
            // The keys the snapshot names (bound into its sealing): asked of the vault one by
            // one, so a load never reads the stream to find its subjects.
            let Some(list) = snapshot::decode_keys(&key_list) else {
                ignored += 1;
                tracing::warn!(
                    stream_version = at,
                    "a stored snapshot's key list is malformed; it is ignored"
                );
                continue;
            };
            let mut keys: HashMap<KeyRef, Arc<DataKey>> = HashMap::new();
            for r in &list {
                if let Some(k) = self.vault.key(r).await? {
                    keys.insert(*r, k);
                }
            }
            match snapshot::open_state(stream.as_str(), at, &list, &SealedPayload(sealed), |r| {
                keys.get(r).cloned()
            }) {
                Ok(state) => {
                    chosen = Some((at, state));
                    snapshot_subjects = keys
                        .keys()
                        .filter_map(|r| match r {
                            KeyRef::Subject(h) => Some(*h),
                            KeyRef::System(_) => None,
                        })
                        .collect();
                    break;
                }
                Err(why) => {
                    ignored += 1;
                    if why == Unusable::Mismatch {
                        tracing::warn!(
                            stream_version = at,
                            "a stored snapshot does not open for its stream and version \
                             (altered or moved); it is ignored"
                        );
                    }
                }
            }
        }
        metrics::counter!("auditledger_snapshots_ignored_total").increment(ignored as u64);
        let from = chosen.as_ref().map_or(0, |(at, _)| at + 1);
        let wanted = (version + 1).saturating_sub(from);
        let rows = if wanted == 0 {
            Vec::new()
        } else {
            self.filtered_rows(&RowFilter {
                stream: Some(stream.clone()),
                event_type: None,
                seqs: SeqRange::ALL,
                from: Some(from),
                direction: Direction::Forward,
                limit: u32::try_from(wanted).unwrap_or(u32::MAX).min(limit),
            })
            .await?
        };
        Ok(Loaded {
            snapshot: chosen,
            rows,
            version: Some(version),
            ignored,
            snapshot_subjects,
        })
    }
}
