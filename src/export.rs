//! Writing export bundles (format: `bundle`), streamed in constant memory: rows are read a
//! chunk at a time and each line is handed to a channel as soon as it is made. The HTTP
//! endpoint streams the channel as the response body; `auditledger export` writes it to a file.

use axum::body::Bytes;
use tokio::sync::mpsc;

use crate::bundle::{BUNDLE_FORMAT, BundleLine, EntryLine, Footer, Header, KeyLine};
use crate::entry::{LedgerId, Seq};
use crate::merkle::MerkleHash;
use crate::store::{Store, StoreError};
use crate::timefmt::{format_micros, now_micros};

/// Rows read per query.
const EXPORT_CHUNK_ROWS: u32 = 1000;

/// The signing keys that have signed entries, each with the exact seq range it signed (first
/// entry; the rotation entry that retired it, or null while current), ordered by first seq.
pub async fn key_lines(store: &dyn Store) -> Result<Vec<KeyLine>, StoreError> {
    let mut rows = store.signing_keys().await?;
    rows.retain(|r| r.first_seq.is_some());
    rows.sort_by_key(|r| r.first_seq);
    Ok(rows
        .iter()
        .map(|r| {
            KeyLine::new(
                &r.public_key,
                r.first_seq.map(|s| s.0),
                r.last_seq.map(|s| s.0),
            )
        })
        .collect())
}

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The receiver went away (client disconnected).
    #[error("the reader went away")]
    Closed,
    /// The range starts beyond the head; nothing was written.
    #[error(transparent)]
    BeyondHead(#[from] crate::audit::BeyondHead),
}

async fn send(out: &mpsc::Sender<Bytes>, line: &BundleLine) -> Result<(), ExportError> {
    let mut bytes = serde_json::to_vec(line).map_err(|e| StoreError::Conflict(e.to_string()))?;
    bytes.push(b'\n');
    out.send(Bytes::from(bytes))
        .await
        .map_err(|_| ExportError::Closed)
}

/// Writes the bundle of entries `from..=to` (to defaults to the head as of now).
pub async fn write_bundle(
    store: &dyn Store,
    ledger_id: LedgerId,
    from: Seq,
    to: Option<Seq>,
    out: mpsc::Sender<Bytes>,
) -> Result<Footer, ExportError> {
    let head = store.head().await?.map(|h| h.seq);
    let size = head.map_or(0, |h| h.0 + 1);
    if from.0 > size {
        return Err(crate::audit::BeyondHead { from, size }.into());
    }
    let last = match (head, to) {
        (None, _) => None,
        (Some(h), Some(t)) => Some(h.min(t)),
        (Some(h), None) => Some(h),
    }
    .filter(|l| *l >= from);
    let (prev_hash, frontier) = crate::audit::range_start(store, from).await?;
    let frontier: Vec<String> = frontier.iter().map(MerkleHash::to_hex).collect();
    send(
        &out,
        &BundleLine::Header(Header {
            format: BUNDLE_FORMAT.to_owned(),
            ledger_id: ledger_id.to_hex(),
            from_seq: from.0,
            to_seq: last.map(|l| l.0),
            ledger_size: size,
            exported_at: format_micros(now_micros()),
            prev_hash: prev_hash.to_hex(),
            merkle_frontier: frontier,
        }),
    )
    .await?;
    // A rotation after the bundle's last entry is not the bundle's to state, since nothing in
    // it could confirm it: as far as the bundle shows, the key is still the current one
    // (FORMAT.md §12.4).
    let end = last.map_or(from.0, |l| l.0 + 1);
    for mut key in key_lines(store).await? {
        if key.last_seq.is_some_and(|l| l >= end) {
            key.last_seq = None;
        }
        send(&out, &BundleLine::Key(key)).await?;
    }
    let mut footer = Footer {
        entries: 0,
        checkpoints: 0,
    };
    let Some(last) = last else {
        send(&out, &BundleLine::Footer(footer.clone())).await?;
        return Ok(footer);
    };
    let mut next = from;
    let mut next_cp_size = from.0 + 1;
    while next <= last {
        let rows = store
            .read_global(next, Some(last), EXPORT_CHUNK_ROWS)
            .await?;
        if rows.is_empty() {
            break;
        }
        let chunk_end = next.0 + rows.len() as u64;
        // Checkpoints completed by this chunk, placed right after their last entry.
        let mut cps = store
            .checkpoints(next_cp_size, chunk_end, u32::MAX)
            .await?
            .into_iter()
            .peekable();
        for row in rows {
            // A row that does not decode is still exported as stored where possible; here it
            // cannot be, so the export stops and the bundle lacks its footer.
            let record = row.into_record().map_err(StoreError::from)?;
            let seq = record.entry.header.seq;
            send(&out, &BundleLine::Entry(EntryLine::from_record(&record))).await?;
            footer.entries += 1;
            while let Some(cp) = cps.next_if(|c| c.tree_size <= seq.0 + 1) {
                send(&out, &BundleLine::Checkpoint(cp.to_json())).await?;
                footer.checkpoints += 1;
            }
            next = seq.next();
        }
        next_cp_size = next.0 + 1;
    }
    send(&out, &BundleLine::Footer(footer.clone())).await?;
    Ok(footer)
}
