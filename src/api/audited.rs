//! Access entries for audited requests. An audited request's answer is sent only once its
//! access entry is committed: if it cannot be, the request fails (503) and nothing it read is
//! disclosed, so the access report never misses a disclosure.

use std::collections::BTreeSet;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use crate::access::record::{AccessAction, AccessOutcome, AccessRecord, Disclosure};
use crate::entry::{Seq, SubjectHandle};
use crate::ledger::ReadEvent;
use crate::store::EntryRow;

/// What `events` disclosed.
#[must_use]
pub fn disclosure(events: &[ReadEvent]) -> Disclosure {
    let mut d = Disclosure::default();
    for e in events {
        let h = &e.record.entry.header;
        d.count(h.seq.0, h.stream_id.as_str(), h.subject, e.data.is_some());
    }
    d
}

/// What `rows` are about to disclose once opened: every row of a subject not erased. (A
/// payload that then fails to open is an integrity error: the request fails, and the entry has
/// counted it anyway, erring on the side of the record.)
#[must_use]
pub fn disclosure_of_rows(rows: &[EntryRow]) -> Disclosure {
    let mut d = Disclosure::default();
    for r in rows {
        let (seq, stream, subject) = r.disclosure_fields();
        d.count(seq, stream, subject, !r.erased());
    }
    d
}

/// Reads rows and discloses them: the access entry is appended while the payloads are
/// decrypted, and the answer waits for both, so that the commit's latency hides behind the
/// decryption instead of adding to it.
pub async fn open_recorded(
    state: &AppState,
    caller: &Caller,
    action: AccessAction,
    stream: Option<&str>,
    rows: Vec<EntryRow>,
) -> Result<Vec<ReadEvent>, ApiError> {
    let d = disclosure_of_rows(&rows);
    open_disclosing(state, caller, action, stream, rows, d).await
}

/// As [`open_recorded`], recording `d` (what `rows` disclose, and more: a loaded snapshot's
/// subjects).
pub async fn open_disclosing(
    state: &AppState,
    caller: &Caller,
    action: AccessAction,
    stream: Option<&str>,
    rows: Vec<EntryRow>,
    d: Disclosure,
) -> Result<Vec<ReadEvent>, ApiError> {
    let (recorded, opened) = tokio::join!(
        record_disclosure(state, caller, action, stream, d),
        state.0.ledger.open_rows(rows)
    );
    recorded?;
    Ok(opened?)
}

/// Records what a read disclosed, if anything.
pub async fn record_disclosure(
    state: &AppState,
    caller: &Caller,
    action: AccessAction,
    stream: Option<&str>,
    d: Disclosure,
) -> Result<(), ApiError> {
    if d.is_empty() {
        return Ok(());
    }
    let mut record = AccessRecord::disclosing(caller.actor(), action, &d);
    record.stream = stream.map(str::to_owned);
    record_entry(state, record, &d.subjects).await.map(|_| ())
}

/// Appends an access entry; `None` when access entries are switched off (measurements only).
pub async fn record_entry(
    state: &AppState,
    record: AccessRecord,
    handles: &BTreeSet<SubjectHandle>,
) -> Result<Option<Seq>, ApiError> {
    if !state.0.access_entries {
        return Ok(None);
    }
    state
        .0
        .ledger
        .record_access(record, handles, None)
        .await
        .map(Some)
        .map_err(|e| {
            tracing::error!(error = %e, "an access entry could not be appended; the request fails");
            ApiError::Unavailable(
                "the access could not be recorded in the ledger, so nothing is disclosed; retry"
                    .to_owned(),
            )
        })
}

/// A record of `action` by `caller` with `outcome`, about `subject`.
#[must_use]
pub fn about(
    caller: &Caller,
    action: AccessAction,
    outcome: AccessOutcome,
    subject: Option<SubjectHandle>,
) -> AccessRecord {
    let mut r = AccessRecord::new(caller.actor(), action, outcome);
    r.subject = subject;
    r
}
