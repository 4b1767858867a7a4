//! The crypto stages of an append — seal, chain hash, sign — on events made up for a benchmark,
//! shared by `benches/append.rs` (stage costs beside the end-to-end cells) and
//! `benches/limits.rs` (the machine's limits). Each stage is timed over the whole set of
//! events, on the calling thread.

use std::time::{Duration, Instant};

use auditledger::crypto::{DataKey, KeyRef, LedgerSigningKey, Signature, seal};
use auditledger::entry::{
    Entry, EntryHash, EntryHeader, EventType, GENESIS_PREV_HASH, LedgerId, Metadata, Seq, StreamId,
    SubjectHandle,
};
use auditledger::record::Record;

/// A made-up header for entry `i`, in one of 1,000 streams. `realistic: false` is the small
/// event the stage table of docs/PERFORMANCE.md has always used (one metadata pair, no
/// subject); `true` is the ~1 KB event of issue 13 (two metadata pairs and a subject handle, as
/// benches/scripts/append.lua sends).
///
/// # Panics
/// Never: the stream id and event type are valid by construction.
#[must_use]
pub fn header(i: u64, realistic: bool) -> EntryHeader {
    let metadata = if realistic {
        Metadata::from([
            ("source".to_owned(), "bench-gateway".to_owned()),
            ("request_id".to_owned(), format!("{i}")),
        ])
    } else {
        Metadata::from([("source".to_owned(), "bench".to_owned())])
    };
    EntryHeader {
        ledger_id: Some(LedgerId([0x55; 16])),
        seq: Seq(i),
        stream_id: StreamId::parse(&format!("bench-{}", i % 1000)).unwrap(),
        stream_version: i / 1000,
        event_type: EventType::parse(if realistic {
            "PaymentCaptured"
        } else {
            "PaymentInitiated"
        })
        .unwrap(),
        schema_version: 1,
        subject: realistic.then(|| {
            let mut h = [0u8; 16];
            h[..8].copy_from_slice(&(i % 1000).to_le_bytes());
            SubjectHandle(h)
        }),
        recorded_at_micros: 1_795_340_718_123_456,
        metadata,
    }
}

/// The keys the stages use: one data key (as for one subject) and one signing key.
pub struct Keys {
    pub data: DataKey,
    pub key_ref: KeyRef,
    pub signing: LedgerSigningKey,
}

impl Keys {
    #[must_use]
    pub fn generate() -> Keys {
        Keys {
            data: DataKey::generate(),
            key_ref: KeyRef::System([1; 16]),
            signing: LedgerSigningKey::generate(),
        }
    }
}

/// Wall time of each stage over `events` events, one core.
pub struct StageTimes {
    pub events: usize,
    pub seal: Duration,
    pub hash: Duration,
    pub sign: Duration,
}

impl StageTimes {
    /// Microseconds per event of a stage's total.
    #[must_use]
    pub fn per_event_us(&self, d: Duration) -> f64 {
        #[expect(clippy::cast_precision_loss, reason = "a count of events")]
        let n = self.events as f64;
        d.as_secs_f64() * 1e6 / n
    }
}

/// Seals `data` into each header's entry, chains the entries and signs them, each stage timed
/// on its own over all of them; returns the times and the finished records (for a store).
#[must_use]
pub fn run(keys: &Keys, headers: Vec<EntryHeader>, data: &[u8]) -> (StageTimes, Vec<Record>) {
    let events = headers.len();
    let t = Instant::now();
    let sealed: Vec<_> = headers
        .iter()
        .map(|h| seal(&keys.data, &keys.key_ref, &h.payload_aad(), data))
        .collect();
    let seal_t = t.elapsed();

    let t = Instant::now();
    let mut prev = GENESIS_PREV_HASH;
    let mut entries = Vec::with_capacity(events);
    for (h, p) in headers.into_iter().zip(&sealed) {
        let e = Entry {
            header: h,
            payload_digest: p.digest(),
            prev_hash: prev,
        };
        prev = e.hash();
        entries.push((e, prev));
    }
    let hash_t = t.elapsed();

    let t = Instant::now();
    let sigs: Vec<Signature> = entries
        .iter()
        .map(|(_, h)| keys.signing.sign_entry(h))
        .collect();
    let sign_t = t.elapsed();

    let records = entries
        .into_iter()
        .zip(sealed)
        .zip(sigs)
        .map(|(((entry, entry_hash), payload), signature)| Record {
            entry,
            payload: Some(payload),
            entry_hash,
            signature,
            key_id: keys.signing.key_id(),
        })
        .collect();
    (
        StageTimes {
            events,
            seal: seal_t,
            hash: hash_t,
            sign: sign_t,
        },
        records,
    )
}

/// The whole crypto work of `headers.len()` events in one pass, as one worker would do it:
/// each event sealed, chained onto the previous one and signed. Returns the last entry hash
/// and signature (so that nothing is optimised away).
#[must_use]
pub fn seal_hash_sign(
    keys: &Keys,
    headers: Vec<EntryHeader>,
    data: &[u8],
) -> (EntryHash, Signature) {
    let mut prev = GENESIS_PREV_HASH;
    let mut last = Signature([0; 64]);
    for h in headers {
        let payload = seal(&keys.data, &keys.key_ref, &h.payload_aad(), data);
        let e = Entry {
            header: h,
            payload_digest: payload.digest(),
            prev_hash: prev,
        };
        prev = e.hash();
        last = keys.signing.sign_entry(&prev);
    }
    (prev, last)
}
