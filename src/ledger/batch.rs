//! One append batch in two halves, so that the writer can overlap them: `prepare` (what it
//! reads, the drafts, sealing, hashing, signing: CPU) and `land` (insert and commit under the
//! writer's lock: the database's time, mostly waiting for the disk).
//!
//! A batch is prepared either inside its own write transaction, or — while the batch before it
//! is still committing — speculatively: from a read transaction without the lock, on top of
//! what the batch in flight will have written (`Carry`). A speculative batch lands only if,
//! under the lock, the chain's head is exactly the entry it was built on (seq and hash) and
//! the KEK epoch it wrapped new keys under is still the current one. Every write to the ledger
//! moves the head, so an equal head means nothing was written since the batch in flight — by
//! this process or another — and what was read without the lock, with the batch in flight laid
//! over it, is what the lock would have shown. Otherwise it is `Stale` and the writer prepares
//! it again under the lock; nothing of it was written.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rand::RngCore;

use super::live::{LiveReader, LiveReaders};
use super::writer::{
    Draft, IdempotencyTag, WriteError, elapsed_ns, extend_tree, load_tree, next_position,
};
use super::{AppendError, AppendRequest, Appended, Committed, StageStats};
use crate::access::record::{AccessAction, AccessRecord, Actor, Disclosure};
use crate::checkpoint::{Checkpoint, CheckpointBinding, TreeHead};
use crate::crypto::{DataKey, KeyRef, LedgerSigningKey, SubjectIndexKey};
use crate::entry::{EntryHash, EntryHeader, LedgerId, Seq, StreamId, SubjectHandle};
use crate::epochs::EpochKek;
use crate::merkle::CompactRange;
use crate::record::Record;
use crate::store::{AppendTx, ChainHead, IdempotencyRow, LinkRow, Store, StoreError, VaultRow};
use crate::subscription::{Delivery, Filter};
use crate::timefmt::now_micros;
use crate::vault::{Vault, VaultError};

/// The live readers a batch covers, its access entries for them, and the access stream's
/// version after them (if it wrote any).
type LiveRecorded = (Vec<Arc<LiveReader>>, u64, Option<(StreamId, u64)>);

/// A request and its idempotency tag, as the writer keeps it until the batch has landed.
pub(super) type Request = (AppendRequest, Option<IdempotencyTag>);

/// What a batch will have written once it commits: what the next batch is built on while it is
/// still in flight.
#[derive(Default)]
pub(super) struct Carry {
    /// The head after the batch (`None`: the ledger is still empty).
    pub head: Option<ChainHead>,
    /// Each stream the batch wrote, at its new version.
    pub versions: HashMap<StreamId, u64>,
    /// Subjects the batch resolved or created, by index MAC.
    pub subjects: HashMap<[u8; 32], (SubjectHandle, Arc<DataKey>)>,
    /// Idempotency keys the batch records.
    pub keys: HashMap<[u8; 32], IdempotencyRow>,
}

/// What became of one request of a prepared batch.
enum Plan {
    /// Its idempotency key is recorded already (by this row's append).
    Duplicate(IdempotencyRow),
    /// Its expected version does not hold: the stream is at `actual`.
    Conflict(Option<u64>),
    /// Its events are among the batch's records.
    New(Appended),
}

/// A batch ready to land: its records built and signed, what else it writes, and what the
/// next batch may build on.
pub(super) struct Prepared {
    /// The head the records continue.
    base: Option<ChainHead>,
    /// Whether it was prepared without the lock (and so must be checked under it).
    speculative: bool,
    plans: Vec<Plan>,
    pub records: Vec<Record>,
    /// New subjects: their links and wrapped keys.
    subjects: Vec<(LinkRow, VaultRow)>,
    /// The epoch new keys were wrapped under, if any were created.
    epoch: Option<String>,
    /// Keys created, to remember in the vault once committed.
    pub created: Vec<(KeyRef, Arc<DataKey>)>,
    idempotency: Vec<IdempotencyRow>,
    /// The live readers whose disclosures of this batch it records (`live`), and how many
    /// access entries that took.
    live: (Vec<Arc<LiveReader>>, u64),
    pub carry: Carry,
}

impl Prepared {
    /// Whether the batch writes anything (a batch of conflicts and repeats does not).
    pub fn writes(&self) -> bool {
        !self.records.is_empty()
    }
}

/// What a batch needs to be prepared, borrowed from the writer.
pub(super) struct Preparer<'w> {
    pub ledger_id: LedgerId,
    pub vault: &'w Vault,
    pub index: &'w SubjectIndexKey,
    pub signing: &'w Arc<LedgerSigningKey>,
    pub stats: &'w Arc<StageStats>,
    pub idempotency_window_micros: i64,
    /// Subscribers whose disclosures the batch records (`live`).
    pub live: &'w LiveReaders,
}

/// Subjects resolved while preparing one batch.
struct Subjects<'c> {
    carried: &'c HashMap<[u8; 32], (SubjectHandle, Arc<DataKey>)>,
    by_mac: HashMap<[u8; 32], (SubjectHandle, Arc<DataKey>)>,
    /// The links read for the whole batch in one query, and which MACs that query covered
    /// (a MAC it covered without a link is a new subject).
    links: HashMap<[u8; 32], LinkRow>,
    looked_up: std::collections::HashSet<[u8; 32]>,
    new: Vec<(LinkRow, VaultRow)>,
    created: Vec<(KeyRef, Arc<DataKey>)>,
    epoch: Option<Arc<EpochKek>>,
}

impl<'c> Subjects<'c> {
    fn new(carried: &'c HashMap<[u8; 32], (SubjectHandle, Arc<DataKey>)>) -> Self {
        Subjects {
            carried,
            by_mac: HashMap::new(),
            links: HashMap::new(),
            looked_up: std::collections::HashSet::new(),
            new: Vec::new(),
            created: Vec::new(),
            epoch: None,
        }
    }
}

/// The row that records `tag`'s idempotency key already, if one does: in this batch (`keys`),
/// the batch in flight, or the database.
async fn recorded_key(
    reads: &mut dyn AppendTx,
    tag: Option<IdempotencyTag>,
    (keys, carried): (&HashMap<[u8; 32], IdempotencyRow>, &Carry),
    not_before: i64,
) -> Result<Option<IdempotencyRow>, WriteError> {
    let Some(tag) = tag else { return Ok(None) };
    match keys.get(&tag.key_hash).or(carried.keys.get(&tag.key_hash)) {
        Some(row) => Ok(Some(*row)),
        None => Ok(reads.idempotency(&tag.key_hash, not_before).await?),
    }
}

/// The head once `records` (built on `base`) are written.
fn head_after(records: &[Record], base: Option<ChainHead>, recorded_at: i64) -> Option<ChainHead> {
    match records.last() {
        Some(last) => Some(ChainHead {
            seq: last.entry.header.seq,
            entry_hash: last.entry_hash,
            recorded_at_micros: recorded_at,
            key_id: last.key_id,
            rotated_to: None,
        }),
        None => base,
    }
}

/// A batch's drafts as they are made.
struct Drafts {
    next_seq: Seq,
    recorded_at: i64,
    /// The system key, for events without a subject.
    system: (KeyRef, Arc<DataKey>),
    made: Vec<Draft>,
}

impl Preparer<'_> {
    /// Prepares `requests` on top of `base` and `carried` (the batch in flight, if any), reading
    /// through `reads`: the batch's own write transaction, or a read transaction without the
    /// lock (`speculative`). Nothing is written through `reads`.
    pub async fn prepare(
        &self,
        reads: &mut dyn AppendTx,
        base: Option<ChainHead>,
        carried: &Carry,
        requests: &[Request],
        speculative: bool,
    ) -> Result<Prepared, WriteError> {
        let (next_seq, prev_hash, recorded_at) = next_position(base);
        let mut out = Drafts {
            next_seq,
            recorded_at,
            system: self.vault.system_key(),
            made: Vec::new(),
        };
        let not_before = recorded_at.saturating_sub(self.idempotency_window_micros);
        let mut subjects = Subjects::new(&carried.subjects);
        let mut versions = self.prefetch(reads, requests, &mut subjects).await?;
        for (stream, v) in &carried.versions {
            if let Some(slot) = versions.get_mut(stream) {
                *slot = Some(*v);
            }
        }
        let mut keys: HashMap<[u8; 32], IdempotencyRow> = HashMap::new();
        let mut written: HashMap<StreamId, u64> = HashMap::new();
        let mut plans = Vec::with_capacity(requests.len());
        for (req, tag) in requests {
            // Before the version check: a retry of a committed append must get its original
            // answer, although its expectation no longer holds.
            if let Some(row) = recorded_key(reads, *tag, (&keys, carried), not_before).await? {
                plans.push(Plan::Duplicate(row));
                continue;
            }
            let current = if let Some(v) = versions.get(&req.stream) {
                *v
            } else {
                let v = reads.stream_version(&req.stream).await?;
                versions.insert(req.stream.clone(), v);
                v
            };
            if !req.expected.admits(current) {
                plans.push(Plan::Conflict(current));
                continue;
            }
            let first_version = current.map_or(0, |v| v + 1);
            let first_seq = out.next_seq;
            self.draft(reads, &mut subjects, &mut out, req, first_version)
                .await?;
            let next_seq = out.next_seq;
            let last_version = first_version + req.events.len() as u64 - 1;
            let last_seq = Seq(next_seq.0 - 1);
            versions.insert(req.stream.clone(), Some(last_version));
            written.insert(req.stream.clone(), last_version);
            if let Some(tag) = tag {
                keys.insert(
                    tag.key_hash,
                    IdempotencyRow {
                        key_hash: tag.key_hash,
                        request_digest: tag.digest,
                        first_seq,
                        last_seq,
                        created_at_micros: recorded_at,
                    },
                );
            }
            plans.push(Plan::New(Appended {
                first_seq,
                last_seq,
                stream_version: last_version,
                entries: (first_seq.0..next_seq.0)
                    .map(|s| (Seq(s), EntryHash([0; 32])))
                    .collect(),
                replayed: false,
            }));
        }
        let live = self
            .record_live_readers(reads, &mut subjects, &mut out, carried, &mut versions)
            .await?;
        if let Some((stream, version)) = live.2 {
            written.insert(stream, version);
        }
        let records = if out.made.is_empty() {
            Vec::new()
        } else {
            build(out.made, prev_hash, self.signing, self.stats).await?
        };
        let head = head_after(&records, base, recorded_at);
        Ok(Prepared {
            base,
            speculative,
            plans,
            records,
            epoch: (!subjects.new.is_empty())
                .then(|| subjects.epoch.as_ref().map(|e| e.kek_id.clone()))
                .flatten(),
            subjects: subjects.new,
            created: subjects.created,
            idempotency: keys.values().copied().collect(),
            live: (live.0, live.1),
            carry: Carry {
                head,
                versions: written,
                subjects: subjects.by_mac,
                keys,
            },
        })
    }

    /// Drafts, after the batch's events, an access entry for each live reader (`live`) that
    /// the batch discloses personal data to: what the reader's filter admits of it, counted as
    /// a read of the log counts it. Returns the readers the batch covers (all those registered,
    /// since a batch that discloses nothing to one has nothing to record for it), the number
    /// of entries, and the access stream's version after them.
    async fn record_live_readers(
        &self,
        reads: &mut dyn AppendTx,
        subjects: &mut Subjects<'_>,
        out: &mut Drafts,
        carried: &Carry,
        versions: &mut HashMap<StreamId, Option<u64>>,
    ) -> Result<LiveRecorded, WriteError> {
        if out.made.is_empty() {
            return Ok((Vec::new(), 0, None));
        }
        let readers = self.live.current(out.made[0].header.seq.0);
        let mut requests = Vec::new();
        let mut recorded: Vec<(&Actor, &Filter)> = Vec::new();
        for reader in &readers {
            // Subscriptions of one token with one filter are sent the same entries: one access
            // entry records what the token was sent.
            let who = (&reader.actor, &reader.filter);
            if recorded.contains(&who) {
                continue;
            }
            recorded.push(who);
            let mut d = Disclosure::default();
            // Not what lies below where the reader goes on from (it will skip that): its
            // position only grows, so this may leave to the reader what it would skip anyway.
            let from = reader.position();
            for h in out.made.iter().map(|draft| &draft.header) {
                let (stream, event_type) = (h.stream_id.as_str(), h.event_type.as_str());
                if h.seq.0 >= from && reader.filter.classify(stream, event_type) == Delivery::Event
                {
                    d.count(h.seq.0, stream, h.subject, true);
                }
            }
            if d.is_empty() {
                continue;
            }
            let record = AccessRecord::disclosing(reader.actor.clone(), AccessAction::ReadLog, &d);
            requests.push(
                super::system::access_request(record, &d.subjects, None)
                    .map_err(|e| WriteError::Internal(e.to_string()))?,
            );
        }
        let Some(stream) = requests.first().map(|r| r.stream.clone()) else {
            return Ok((readers, 0, None));
        };
        let current = match versions.get(&stream) {
            Some(v) => *v,
            None => match carried.versions.get(&stream) {
                Some(v) => Some(*v),
                None => reads.stream_version(&stream).await?,
            },
        };
        let mut version = current.map_or(0, |v| v + 1);
        for req in &requests {
            self.draft(reads, subjects, out, req, version).await?;
            version += 1;
        }
        versions.insert(stream.clone(), Some(version - 1));
        Ok((readers, requests.len() as u64, Some((stream, version - 1))))
    }

    /// Drafts `req`'s events at the next seqs, from `first_version` of its stream on.
    async fn draft(
        &self,
        reads: &mut dyn AppendTx,
        subjects: &mut Subjects<'_>,
        out: &mut Drafts,
        req: &AppendRequest,
        first_version: u64,
    ) -> Result<(), WriteError> {
        for (i, ev) in (0u64..).zip(&req.events) {
            let (subject, key_ref, key) = match &ev.subject {
                None => (None, out.system.0, Arc::clone(&out.system.1)),
                Some(identifier) => {
                    let (handle, key) = self.subject_key(reads, subjects, identifier).await?;
                    (Some(handle), KeyRef::Subject(handle), key)
                }
            };
            out.made.push(Draft {
                header: EntryHeader {
                    ledger_id: Some(self.ledger_id),
                    seq: out.next_seq,
                    stream_id: req.stream.clone(),
                    stream_version: first_version + i,
                    event_type: ev.event_type.clone(),
                    schema_version: ev.schema_version,
                    subject,
                    recorded_at_micros: out.recorded_at,
                    metadata: ev.metadata.clone(),
                },
                data: ev.data.clone(),
                key_ref,
                key,
            });
            out.next_seq = out.next_seq.next();
        }
        Ok(())
    }

    /// Every stream version and subject link a batch needs, read up front in one query each
    /// rather than one round trip per stream and per subject: the versions (`None` for a
    /// stream without events), and the links into `subjects`.
    async fn prefetch(
        &self,
        reads: &mut dyn AppendTx,
        requests: &[Request],
        subjects: &mut Subjects<'_>,
    ) -> Result<HashMap<StreamId, Option<u64>>, WriteError> {
        let mut streams: Vec<StreamId> = requests.iter().map(|(r, _)| r.stream.clone()).collect();
        streams.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        streams.dedup();
        let found = reads.stream_versions(&streams).await?;
        let macs: std::collections::HashSet<[u8; 32]> = requests
            .iter()
            .flat_map(|(r, _)| r.events.iter())
            .filter_map(|e| e.subject.as_deref())
            .map(|identifier| self.index.index(identifier))
            .filter(|mac| !subjects.carried.contains_key(mac))
            .collect();
        if !macs.is_empty() {
            let macs: Vec<[u8; 32]> = macs.into_iter().collect();
            subjects.links = reads.subject_links(&macs).await?;
            subjects.looked_up = macs.into_iter().collect();
        }
        Ok(streams
            .into_iter()
            .map(|s| {
                let v = found.get(&s).copied();
                (s, v)
            })
            .collect())
    }

    /// The data key of the subject named by `identifier`, creating subject and key if new
    /// (their rows are written when the batch lands).
    async fn subject_key(
        &self,
        reads: &mut dyn AppendTx,
        subjects: &mut Subjects<'_>,
        identifier: &str,
    ) -> Result<(SubjectHandle, Arc<DataKey>), WriteError> {
        let mac = self.index.index(identifier);
        if let Some((h, k)) = subjects.by_mac.get(&mac).or(subjects.carried.get(&mac)) {
            let found = (*h, Arc::clone(k));
            subjects.by_mac.insert(mac, (found.0, Arc::clone(&found.1)));
            return Ok(found);
        }
        let link = if subjects.looked_up.contains(&mac) {
            subjects.links.remove(&mac)
        } else {
            reads.subject_link(&mac).await?
        };
        let (handle, key) = if let Some(link) = link {
            let handle = match self.vault.open_link(&link).await {
                // Re-sealed under a new epoch, and the old one destroyed, since the row was
                // read; read it again.
                Err(VaultError::NoSuchKek { .. }) => {
                    let link = reads.subject_link(&mac).await?.ok_or_else(|| {
                        WriteError::Internal("a subject link vanished mid-transaction".to_owned())
                    })?;
                    self.vault.open_link(&link).await?
                }
                other => other?,
            };
            let key = self
                .vault
                .key(&KeyRef::Subject(handle))
                .await?
                .ok_or_else(|| {
                    WriteError::Internal(format!(
                        "subject {} is indexed but its key is missing",
                        handle.to_hex()
                    ))
                })?;
            (handle, key)
        } else {
            let mut id = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut id);
            let handle = SubjectHandle(id);
            let key = Arc::new(DataKey::generate());
            let key_ref = KeyRef::Subject(handle);
            let epoch = self.current_epoch(reads, subjects).await?;
            let row = VaultRow {
                key_ref,
                wrapped: epoch.kek.wrap(&key, &key_ref),
                kek_id: epoch.kek_id.clone(),
            };
            let link = LinkRow {
                index_mac: mac,
                sealed_handle: epoch.kek.seal_link(&handle, &mac),
                kek_id: epoch.kek_id.clone(),
            };
            subjects.new.push((link, row));
            subjects.created.push((key_ref, Arc::clone(&key)));
            (handle, key)
        };
        subjects.by_mac.insert(mac, (handle, Arc::clone(&key)));
        Ok((handle, key))
    }

    /// The epoch new keys are wrapped under: the current one as the database says (under the
    /// lock it cannot be destroyed before the commit; read without it, the batch lands only if
    /// it is still current then), never an epoch this process merely remembers.
    async fn current_epoch(
        &self,
        reads: &mut dyn AppendTx,
        subjects: &mut Subjects<'_>,
    ) -> Result<Arc<EpochKek>, WriteError> {
        if let Some(e) = &subjects.epoch {
            return Ok(Arc::clone(e));
        }
        let row = reads
            .current_epoch()
            .await?
            .ok_or_else(|| WriteError::Internal("no KEK epoch is recorded".to_owned()))?;
        let epoch = self.vault.kek_by_id(&row.kek_id).await?;
        subjects.epoch = Some(Arc::clone(&epoch));
        Ok(epoch)
    }
}

/// Seals, hashes and signs drafts on a blocking thread.
pub(super) async fn build(
    drafts: Vec<Draft>,
    prev_hash: EntryHash,
    signing: &Arc<LedgerSigningKey>,
    stats: &Arc<StageStats>,
) -> Result<Vec<Record>, WriteError> {
    let signing = Arc::clone(signing);
    let stats = Arc::clone(stats);
    tokio::task::spawn_blocking(move || {
        super::writer::build_records(drafts, prev_hash, &signing, &stats)
    })
    .await
    .map_err(|e| WriteError::Internal(format!("record builder failed: {e}")))
}

/// A caller waiting for its append's answer.
pub(super) type Reply = tokio::sync::oneshot::Sender<Result<Committed, AppendError>>;

/// What landing a batch needs: owned, so that it runs as a task of its own while the writer
/// prepares the next batch, and answers its callers the moment their commit returns.
#[derive(Clone)]
pub(super) struct Lander {
    pub store: Arc<dyn Store>,
    pub vault: Arc<Vault>,
    pub signing: Arc<LedgerSigningKey>,
    pub ledger_id: LedgerId,
    pub checkpoint_every: u64,
    pub stats: Arc<StageStats>,
    pub health: Arc<super::health::WriteHealth>,
    /// Newly committed checkpoints go to the witness publisher.
    pub published: Option<tokio::sync::mpsc::UnboundedSender<Checkpoint>>,
    /// Bumped after each commit: wakes this instance's subscribers.
    pub commits: Arc<tokio::sync::watch::Sender<u64>>,
    /// Committed batches kept for the live feed.
    pub recent: Arc<super::recent::Recent>,
}

/// How a batch's landing ended.
pub(super) enum Landing {
    /// Committed (or, writing nothing, confirmed) and its callers answered; whether it wrote.
    Done(bool),
    /// Prepared without the lock on a state that no longer holds: nothing was written; to be
    /// prepared again under the lock.
    Stale(Vec<Request>, Vec<Reply>),
    /// Rolled back (or its outcome lost): its callers are still to be answered.
    Failed(Vec<Reply>, WriteError),
}

impl Lander {
    /// Inserts and commits `prepared` in `tx` (already holding the lock, the batch prepared in
    /// it), or, with no `tx`, in a transaction of its own after checking that the batch still
    /// continues the head; then answers its callers. `key_marked`: whether the signing key's
    /// first use is recorded.
    pub async fn land(
        self,
        tx: Option<Box<dyn AppendTx>>,
        mut prepared: Prepared,
        (requests, replies): (Vec<Request>, Vec<Reply>),
        key_marked: bool,
    ) -> Landing {
        let checkpoint = match self.commit(tx, &prepared, key_marked).await {
            Ok(Some(checkpoint)) => checkpoint,
            Ok(None) => return Landing::Stale(requests, replies),
            Err(e) => return Landing::Failed(replies, e),
        };
        self.health.succeeded();
        // Before subscribers are woken: what they are sent of this batch is recorded already.
        if let (Some(first), Some(last)) = (prepared.records.first(), prepared.records.last()) {
            let (first, last) = (first.entry.header.seq.0, last.entry.header.seq.0);
            for reader in &prepared.live.0 {
                reader.cover(first, last);
            }
            if prepared.live.1 > 0 {
                metrics::counter!(
                    crate::telemetry::ACCESS_ENTRIES,
                    "action" => AccessAction::ReadLog.as_str(),
                    "outcome" => "appended"
                )
                .increment(prepared.live.1);
            }
        }
        for (key_ref, key) in prepared.created.drain(..) {
            self.vault.remember(key_ref, key);
        }
        if let Some(cp) = checkpoint {
            publish(self.published.as_ref(), cp);
        }
        // After the batch's readers are covered and its new keys cached, before the commit is
        // announced: the live feed, woken by it, finds the batch here.
        self.recent.committed(&prepared.records);
        let wrote = prepared.writes();
        for (reply, answer) in replies.into_iter().zip(answers(&mut prepared, requests)) {
            let _ = reply.send(answer);
        }
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
        Landing::Done(wrote)
    }

    /// The commit of `land`: `None` if the batch is stale; else the checkpoint it made, if one
    /// was due.
    async fn commit(
        &self,
        tx: Option<Box<dyn AppendTx>>,
        prepared: &Prepared,
        key_marked: bool,
    ) -> Result<Option<Option<Checkpoint>>, WriteError> {
        let mut tx = if let Some(tx) = tx {
            tx
        } else {
            let mut tx = self.store.begin_append().await?;
            if !self.still_holds(tx.as_mut(), prepared).await? {
                tx.rollback().await;
                return Ok(None);
            }
            tx
        };
        if !prepared.writes() {
            tx.rollback().await;
            return Ok(Some(None));
        }
        let started = Instant::now();
        for (link, row) in &prepared.subjects {
            tx.insert_subject(link, row).await?;
        }
        let checkpoint = self
            .insert_records(tx.as_mut(), prepared.base, &prepared.records, key_marked)
            .await?;
        tx.insert_idempotency(&prepared.idempotency).await?;
        if let Err(e) = tx.commit().await {
            let last = &prepared.records[prepared.records.len() - 1];
            resolve_lost_commit(
                self.store.as_ref(),
                e,
                last.entry.header.seq,
                last.entry_hash,
            )
            .await?;
        }
        record_commit_metrics(&prepared.records, started);
        self.stats
            .insert_ns
            .fetch_add(elapsed_ns(started), Ordering::Relaxed);
        self.stats
            .entries
            .fetch_add(prepared.records.len() as u64, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        Ok(Some(checkpoint))
    }

    /// Whether a batch prepared without the lock still continues the head: the head is the
    /// entry it was built on (nothing was written since), the next entry is this key's to sign,
    /// and the epoch its new keys are wrapped under is still the current one.
    async fn still_holds(
        &self,
        tx: &mut dyn AppendTx,
        prepared: &Prepared,
    ) -> Result<bool, WriteError> {
        if !prepared.speculative {
            return Err(WriteError::Internal(
                "a batch prepared under the lock landed without it".to_owned(),
            ));
        }
        let head = tx.head().await?;
        let same = match (&head, &prepared.base) {
            (None, None) => true,
            (Some(h), Some(b)) => h.seq == b.seq && h.entry_hash == b.entry_hash,
            _ => false,
        };
        if !same || head.is_some_and(|h| h.next_key() != self.signing.key_id()) {
            return Ok(false);
        }
        if let Some(kek) = &prepared.epoch {
            let current = tx.current_epoch().await?;
            if current.is_none_or(|c| &c.kek_id != kek) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Inserts records and the tree nodes they complete; signs and inserts a checkpoint if one
    /// is due.
    pub async fn insert_records(
        &self,
        tx: &mut dyn AppendTx,
        head: Option<ChainHead>,
        records: &[Record],
        key_marked: bool,
    ) -> Result<Option<Checkpoint>, WriteError> {
        // `head` was read under this transaction's lock: nobody has appended since.
        let mut tree = load_tree(tx, head).await?;
        let nodes = extend_tree(&mut tree, records);
        tx.insert(records).await?;
        tx.insert_merkle_nodes(&nodes).await?;
        if !key_marked {
            tx.mark_signing_key_used(&self.signing.key_id(), records[0].entry.header.seq)
                .await?;
        }
        let last_checkpoint = tx.latest_checkpoint().await?.map_or(0, |c| c.tree_size);
        if tree.size() - last_checkpoint < self.checkpoint_every {
            return Ok(None);
        }
        let last = &records[records.len() - 1];
        let cp = sign_checkpoint(&self.signing, self.ledger_id, &tree, last, last_checkpoint);
        tx.insert_checkpoint(&cp).await?;
        Ok(Some(cp))
    }
}

/// Signs the checkpoint of `tree`, whose last entry is `last`, following the one of size
/// `previous`. Its time is never before its last entry's.
pub(super) fn sign_checkpoint(
    signing: &LedgerSigningKey,
    ledger_id: LedgerId,
    tree: &CompactRange,
    last: &Record,
    previous: u64,
) -> Checkpoint {
    Checkpoint::sign(
        signing,
        CheckpointBinding {
            ledger_id,
            previous_tree_size: previous,
        },
        TreeHead {
            tree_size: tree.size(),
            root_hash: tree.root(),
            last_entry_hash: last.entry_hash,
            timestamp_micros: last.entry.header.recorded_at_micros.max(now_micros()),
        },
    )
}

/// Hands a committed checkpoint to the witness publisher.
pub(super) fn publish(
    published: Option<&tokio::sync::mpsc::UnboundedSender<Checkpoint>>,
    cp: Checkpoint,
) {
    metrics::counter!(crate::telemetry::CHECKPOINTS).increment(1);
    #[expect(clippy::cast_precision_loss, reason = "a tree size as a gauge value")]
    metrics::gauge!(crate::telemetry::CHECKPOINT_TREE_SIZE).set(cp.tree_size as f64);
    if let Some(p) = published {
        let _ = p.send(cp);
    }
}

/// The answers to a landed batch's requests, in order: each entry's hash filled in now that it
/// exists; a repeated request comes back to be compared with the original.
fn answers(prepared: &mut Prepared, requests: Vec<Request>) -> Vec<Result<Committed, AppendError>> {
    let base = prepared.records.first().map_or(0, |r| r.entry.header.seq.0);
    let plans = std::mem::take(&mut prepared.plans);
    let conflicts = plans
        .iter()
        .filter(|p| matches!(p, Plan::Conflict(_)))
        .count() as u64;
    metrics::counter!(crate::telemetry::VERSION_CONFLICTS).increment(conflicts);
    plans
        .into_iter()
        .zip(requests)
        .map(|(plan, (req, _))| match plan {
            Plan::Duplicate(row) => Ok(Committed::Duplicate(row, Box::new(req))),
            Plan::Conflict(actual) => Err(AppendError::VersionConflict {
                stream: req.stream,
                expected: req.expected,
                actual,
            }),
            Plan::New(mut appended) => {
                for (seq, hash) in &mut appended.entries {
                    let idx = usize::try_from(seq.0 - base).unwrap_or(usize::MAX);
                    if let Some(r) = prepared.records.get(idx) {
                        *hash = r.entry_hash;
                    }
                }
                Ok(Committed::New(appended))
            }
        })
        .collect()
}

#[expect(
    clippy::cast_precision_loss,
    reason = "counts and seqs as metric samples"
)]
fn record_commit_metrics(records: &[Record], started: Instant) {
    use crate::telemetry;
    metrics::counter!(telemetry::EVENTS_APPENDED).increment(records.len() as u64);
    metrics::counter!(telemetry::COMMITS).increment(1);
    metrics::histogram!(telemetry::COMMIT_BATCH_EVENTS).record(records.len() as f64);
    metrics::histogram!(telemetry::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
    if let Some(last) = records.last() {
        metrics::gauge!(telemetry::HEAD_SEQ).set(last.entry.header.seq.0 as f64);
    }
}

/// COMMIT of the transaction ending with the entry (`seq`, `hash`) failed: finds out on
/// another connection whether it took effect. `Ok` if it did (the caller goes on as after a
/// commit); the commit's error if it did not (nothing was written); `OutcomeUnknown` if it
/// cannot tell.
pub(super) async fn resolve_lost_commit(
    store: &dyn Store,
    error: StoreError,
    seq: Seq,
    hash: EntryHash,
) -> Result<(), WriteError> {
    let outcome = super::writer::commit_outcome(store, seq, hash).await;
    let label = match outcome {
        Some(true) => "committed",
        Some(false) => "not_committed",
        None => "unknown",
    };
    metrics::counter!(crate::telemetry::COMMIT_OUTCOMES_RESOLVED, "outcome" => label).increment(1);
    tracing::warn!(error = %error, seq = seq.0, outcome = label, "a commit failed; its outcome was looked up");
    match outcome {
        Some(true) => Ok(()),
        Some(false) => Err(error.into()),
        None => Err(WriteError::OutcomeUnknown(error)),
    }
}
