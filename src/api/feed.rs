//! Messages prepared once for many subscribers: each entry of the log opened, upcast and
//! rendered as an SSE message a single time, and the live feed that keeps the newest of them
//! for every live subscriber of this process to share.
//!
//! What a prepared message may hold is decrypted data, so three rules keep it from outliving
//! an erasure (`crate::subscription::at_send` is the rule, [`render`] applies it):
//! - each message that holds data under a subject key remembers how much the key vault had
//!   forgotten when it was opened, and is checked again at the moment it is handed to the
//!   connection: a message whose key was destroyed since goes out erased, and if the vault
//!   emptied its cache since (it may not know of an erasure made elsewhere) nothing more goes
//!   out on that connection;
//! - the feed drops everything it keeps as soon as the vault forgets anything;
//! - the feed keeps at most [`RING`] entries, and nothing while no one subscribes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use serde_json::json;
use tokio::sync::{Notify, watch};

use super::events::EventOut;
use super::{App, AppState};
use crate::crypto::KeyRef;
use crate::entry::{Seq, SubjectHandle};
use crate::ledger::ReadError;
use crate::record::Record;
use crate::store::EntryRow;
use crate::subscription::{AtSend, Delivery, Filter, Forgetting, at_send};

/// Entries the live feed keeps: a subscriber further behind reads the database instead.
pub const RING: usize = 16_384;
/// Bytes of messages the live feed keeps at most: fewer entries when they are large (an event
/// may hold up to a MiB; 16,384 of them would be 16 GiB).
pub const RING_BYTES: usize = 64 << 20;
/// Entries read from the log at a time.
pub const PAGE: u32 = 1000;
/// Entries a live subscriber takes from the feed at a time: each take costs an access entry,
/// whose commit the subscriber waits for, so a subscriber that took only a page per commit
/// would fall behind appends of more than a page per commit and never catch up.
pub const LIVE_TAKE: usize = 8192;

/// One entry as subscribers are sent it.
#[derive(Debug)]
pub struct Prepared {
    /// Its seq.
    pub seq: u64,
    /// Its stream.
    pub stream_id: String,
    /// Its type.
    pub event_type: String,
    /// Its subject, if any.
    pub subject: Option<SubjectHandle>,
    /// Whether its data was decrypted (what an access entry counts).
    pub decrypted: bool,
    /// The message.
    pub message: Message,
    /// When its batch's commit returned, where the feed took it from the writer.
    pub committed: Option<Instant>,
}

/// An SSE message, ready to send.
#[derive(Debug)]
pub enum Message {
    /// Nothing to send: a ledger entry the feed does not open (the ledger's own streams are
    /// delivered only to subscriptions that ask for them, which read the database).
    None,
    /// A message that holds nothing an erasure takes away: an erasure's announcement, an event
    /// under the system key, an event already erased.
    Fixed(Bytes),
    /// An event whose data its subject's key opened.
    Personal {
        /// The key.
        key: KeyRef,
        /// How much the vault had forgotten before the key was asked for.
        opened: Forgetting,
        /// The message.
        frame: Bytes,
    },
}

impl Prepared {
    /// What `filter` does with it.
    #[must_use]
    pub fn delivery(&self, filter: &Filter) -> Delivery {
        if matches!(self.message, Message::None) {
            return Delivery::Skip;
        }
        filter.classify(&self.stream_id, &self.event_type)
    }
}

/// An SSE message: `event: name`, `id: seq`, and `data` (one line of JSON).
fn frame(name: &str, seq: u64, data: &str) -> Bytes {
    let written: Result<Bytes, std::convert::Infallible> = framed(name, seq, |out| {
        out.extend_from_slice(data.as_bytes());
        Ok(())
    });
    match written {
        Ok(bytes) => bytes,
        Err(never) => match never {},
    }
}

/// As [`frame`], with the data written straight into the message by `write` (no copy of a
/// serialised event on its way in).
fn framed<E>(
    name: &str,
    seq: u64,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<Bytes, E> {
    let mut out = format!("id: {seq}\nevent: {name}\ndata: ").into_bytes();
    write(&mut out)?;
    out.extend_from_slice(b"\n\n");
    Ok(Bytes::from(out))
}

/// The JSON of an event message.
fn frame_data(frame: &[u8]) -> Option<&[u8]> {
    let at = frame.windows(6).position(|w| w == b"data: ")? + 6;
    frame.get(at..frame.len().checked_sub(2)?)
}

/// The erased form of an event message: the data gone, as every read shows an erased event
/// (erased events are not upcast, so the stored schema version is the one shown).
fn erased_frame(seq: u64, opened: &[u8]) -> Option<Bytes> {
    let mut v: serde_json::Value = serde_json::from_slice(frame_data(opened)?).ok()?;
    let o = v.as_object_mut()?;
    o.insert("data".into(), serde_json::Value::Null);
    o.insert("erased".into(), serde_json::Value::Bool(true));
    if let Some(stored) = o.remove("stored_schema_version") {
        o.insert("schema_version".into(), stored);
    }
    Some(frame("event", seq, &v.to_string()))
}

/// An entry to prepare: a row read from the database, or a record of a batch this process
/// has just committed (`ledger::recent`).
pub enum Item {
    /// Read back.
    Row(EntryRow),
    /// As the writer committed it, with when its commit returned.
    Committed(Record, Instant),
}

impl Item {
    /// Its seq, stream, type and subject.
    fn fields(&self) -> (u64, &str, &str, Option<SubjectHandle>) {
        match self {
            Item::Row(row) => {
                let (seq, stream, subject) = row.disclosure_fields();
                (seq, stream, row.event_type_str(), subject)
            }
            Item::Committed(r, _) => {
                let h = &r.entry.header;
                (
                    h.seq.0,
                    h.stream_id.as_str(),
                    h.event_type.as_str(),
                    h.subject,
                )
            }
        }
    }

    /// Decoded, with whether the database marks it erased (a batch just committed is not:
    /// the vault's answer for its key decides, see `Ledger::open_records`). Only what is
    /// opened is decoded: a row the filter skips is not.
    fn decoded(self) -> Result<(Record, bool), super::error::ApiError> {
        match self {
            Item::Row(row) => row
                .into_marked_record()
                .map_err(|e| super::error::ApiError::from(ReadError::from(e))),
            Item::Committed(r, _) => Ok((r, false)),
        }
    }
}

/// Prepares `items`: those `admit` accepts are opened (their access is not recorded here:
/// that is the sender's, per subscriber), upcast and rendered; the others become
/// [`Message::None`].
///
/// # Errors
/// A read or upcast failure.
pub async fn prepare(
    state: &AppState,
    items: Vec<Item>,
    admit: impl Fn(&str, &str) -> Delivery,
) -> Result<Vec<Prepared>, super::error::ApiError> {
    // Read before any key is asked for: a forget after this point is seen at sending.
    let opened = state.0.ledger.vault().forgetting();
    let mut out = Vec::with_capacity(items.len());
    let mut to_open = Vec::new();
    let mut slots = Vec::new();
    for item in items {
        let (seq, stream, event_type, subject) = item.fields();
        let committed = match &item {
            Item::Committed(_, at) => Some(*at),
            Item::Row(_) => None,
        };
        let (stream, event_type) = (stream.to_owned(), event_type.to_owned());
        let message = match admit(&stream, &event_type) {
            Delivery::Skip => Message::None,
            Delivery::Erasure => Message::Fixed(frame(
                "erasure",
                seq,
                &json!({"seq": seq, "subject": subject.map(|s| s.to_hex())}).to_string(),
            )),
            Delivery::Event => {
                slots.push(out.len());
                to_open.push(item.decoded()?);
                Message::None
            }
        };
        out.push(Prepared {
            seq,
            stream_id: stream,
            event_type,
            subject,
            decrypted: false,
            message,
            committed,
        });
    }
    if to_open.is_empty() {
        return Ok(out);
    }
    let opened_events = state.0.ledger.open_records(to_open).await?;
    let keys: Vec<Option<KeyRef>> = opened_events
        .iter()
        .map(|e| {
            e.record
                .payload
                .as_ref()
                .and_then(|p| p.key_ref().ok())
                .filter(|k| matches!(k, KeyRef::Subject(_)) && !e.erased)
        })
        .collect();
    let mut events: Vec<EventOut> = opened_events.into_iter().map(EventOut::from).collect();
    super::events::upcast(state, &mut events).await?;
    let frames = event_frames(events).await?;
    for ((slot, (erased, f)), key) in slots.into_iter().zip(frames).zip(keys) {
        let p = &mut out[slot];
        p.decrypted = !erased;
        p.message = match key {
            Some(key) => Message::Personal {
                key,
                opened,
                frame: f,
            },
            None => Message::Fixed(f),
        };
    }
    Ok(out)
}

/// Each event's message, and whether it is erased.
async fn event_frames(events: Vec<EventOut>) -> Result<Vec<(bool, Bytes)>, super::error::ApiError> {
    super::events::render_each(events, |event| {
        let f = framed("event", event.seq, |out| serde_json::to_writer(out, &event))
            .map_err(|e| super::error::ApiError::Internal(e.to_string()))?;
        Ok((event.erased, f))
    })
    .await
}

/// What a connection is handed for `items`, checked against the vault now; `Err` with what
/// could be sent before a message that must not be (the connection then ends).
pub fn render(state: &AppState, items: &[Arc<Prepared>]) -> Result<Bytes, (Bytes, u64)> {
    let vault = state.0.ledger.vault();
    render_with(items, vault.forgetting(), |key| vault.is_destroyed(key))
}

/// [`render`] with the vault's state given: how much it has forgotten now, and whether it
/// knows a key to be destroyed.
fn render_with(
    items: &[Arc<Prepared>],
    now: Forgetting,
    destroyed: impl Fn(&KeyRef) -> bool,
) -> Result<Bytes, (Bytes, u64)> {
    let mut out = Vec::with_capacity(items.iter().map(|p| p.len()).sum());
    for p in items {
        match &p.message {
            Message::None => {}
            Message::Fixed(f) => out.extend_from_slice(f),
            Message::Personal { key, opened, frame } => {
                match at_send(*opened, now, || destroyed(key)) {
                    AtSend::Send => out.extend_from_slice(frame),
                    AtSend::Erased => match erased_frame(p.seq, frame) {
                        Some(f) => out.extend_from_slice(&f),
                        None => return Err((Bytes::from(out), p.seq)),
                    },
                    AtSend::Stop => return Err((Bytes::from(out), p.seq)),
                }
            }
        }
    }
    Ok(Bytes::from(out))
}

impl Prepared {
    /// The size of its message.
    pub(super) fn len(&self) -> usize {
        match &self.message {
            Message::None => 0,
            Message::Fixed(f) | Message::Personal { frame: f, .. } => f.len(),
        }
    }
}

/// The live feed of this process: the newest prepared entries, shared by live subscribers.
#[derive(Debug)]
pub struct Feed {
    ring: Mutex<Ring>,
    /// The seq after the newest entry kept: bumped as entries are added.
    head: watch::Sender<u64>,
    /// Subscribers using the feed; it reads nothing while there are none.
    users: AtomicUsize,
    wake: Arc<Notify>,
    started: std::sync::Once,
}

#[derive(Debug, Default)]
struct Ring {
    /// Whether it follows the log now (false while no one subscribes, or after a failure).
    active: bool,
    /// The first seq it answers for (it holds every entry from there to `next`).
    first: u64,
    /// The seq after the newest entry held.
    next: u64,
    entries: VecDeque<Arc<Prepared>>,
    /// The size of the messages held.
    bytes: usize,
    /// The vault's forgetting when it was last emptied.
    opened: Forgetting,
}

impl Default for Feed {
    fn default() -> Feed {
        Feed {
            ring: Mutex::new(Ring::default()),
            head: watch::Sender::new(0),
            users: AtomicUsize::new(0),
            wake: Arc::new(Notify::new()),
            started: std::sync::Once::new(),
        }
    }
}

/// A subscriber's hold on the feed: while one is alive the feed follows the log.
pub struct Use(Arc<App>);

impl Drop for Use {
    fn drop(&mut self) {
        self.0.feed.users.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Feed {
    /// Starts following the log (once per process) and counts a subscriber in.
    #[must_use]
    pub fn join(state: &AppState) -> Use {
        let feed = &state.0.feed;
        feed.started.call_once(|| {
            tokio::spawn(follow(Arc::downgrade(&state.0)));
        });
        feed.users.fetch_add(1, Ordering::SeqCst);
        feed.wake.notify_one();
        Use(Arc::clone(&state.0))
    }

    /// Up to `max` entries from `from` on, if the feed holds that position: `Some(empty)` when
    /// `from` is at or past its head (wait for [`Feed::changed`]), `None` when it does not hold
    /// it (read the database).
    #[must_use]
    pub fn take(&self, from: u64, max: usize) -> Option<Vec<Arc<Prepared>>> {
        let ring = self.lock();
        if !ring.active || from < ring.first {
            return None;
        }
        let skip = ring.entries.partition_point(|p| p.seq < from);
        Some(ring.entries.iter().skip(skip).take(max).cloned().collect())
    }

    /// A receiver of the feed's head.
    #[must_use]
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts over at `next`, keeping nothing.
    fn reset(&self, active: bool, next: u64, opened: Forgetting) {
        let mut ring = self.lock();
        *ring = Ring {
            active,
            first: next,
            next,
            entries: VecDeque::new(),
            bytes: 0,
            opened,
        };
        drop(ring);
        self.head.send_replace(next);
    }
}

/// Follows the log for as long as the process runs, while anyone subscribes.
async fn follow(app: Weak<App>) {
    let mut next: Option<u64> = None;
    loop {
        let Some(strong) = app.upgrade() else { return };
        let state = AppState(strong);
        let wake = Arc::clone(&state.0.feed.wake);
        let notified = wake.notified();
        if state.0.feed.users.load(Ordering::SeqCst) == 0 {
            state.0.feed.reset(false, 0, Forgetting::default());
            state.0.ledger.recent().follow(false);
            next = None;
            // Not holding the service while idle.
            drop(state);
            notified.await;
            continue;
        }
        drop(notified);
        let feed = &state.0.feed;
        let mut commits = state.0.ledger.commits();
        commits.borrow_and_update();
        // Made before the count is read: a forget after it wakes the wait below.
        let vault = Arc::clone(state.0.ledger.vault());
        let forgot = vault.forgot();
        let vault_now = vault.forgetting();
        let at = match next {
            Some(n) if feed.lock().opened == vault_now => n,
            // Starting, or the vault forgot something: keep nothing opened before.
            _ => match state.0.ledger.head().await {
                Ok(h) => {
                    let n = next.unwrap_or_else(|| h.map_or(0, |h| h.seq.0 + 1));
                    state.0.ledger.recent().follow(true);
                    feed.reset(true, n, vault_now);
                    n
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the live feed could not read the log's head");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        next = Some(at);
        match step(&state, at).await {
            Ok(Some(n)) => next = Some(n),
            Ok(None) => {
                let poll = state.0.subscriptions.poll;
                drop(state);
                tokio::select! {
                    _ = commits.changed() => {}
                    // Drop what was opened before at once, not at the next commit or poll.
                    () = forgot => {}
                    () = tokio::time::sleep(poll) => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "the live feed could not read the log; subscribers read it themselves");
                state.0.feed.reset(false, 0, Forgetting::default());
                next = None;
                drop(state);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Adds the entries from `at` on: the next position, or `None` when there were none.
async fn step(state: &AppState, at: u64) -> Result<Option<u64>, super::error::ApiError> {
    // The batches this process committed last, as the writer holds them, when they reach on
    // from `at`; the database otherwise (`ledger::recent`).
    let items: Vec<Item> = if let Some(records) = state.0.ledger.recent().from(at, PAGE as usize) {
        records
            .into_iter()
            .map(|(r, at)| Item::Committed(r, at))
            .collect()
    } else {
        let rows = state
            .0
            .ledger
            .global_rows(Seq(at), PAGE)
            .await
            .map_err(|e: ReadError| super::error::ApiError::from(e))?;
        rows.into_iter().map(Item::Row).collect()
    };
    if items.is_empty() {
        return Ok(None);
    }
    // Every client event and every erasure; not the ledger's own entries, which only a
    // subscription that names their stream gets (and it reads the database).
    let prepared = prepare(state, items, |stream, event_type| {
        Filter::default().classify(stream, event_type)
    })
    .await?;
    let feed = &state.0.feed;
    let mut ring = feed.lock();
    if !ring.active || ring.next != at {
        // Reset meanwhile (the vault forgot something): go on from where it stands now.
        return Ok(Some(ring.next));
    }
    let next = prepared.last().map_or(at, |p| p.seq + 1);
    for p in prepared {
        ring.bytes += p.len();
        ring.entries.push_back(Arc::new(p));
    }
    ring.next = next;
    while ring.entries.len() > RING || ring.bytes > RING_BYTES {
        let Some(p) = ring.entries.pop_front() else {
            break;
        };
        ring.first = p.seq + 1;
        ring.bytes -= p.len();
    }
    drop(ring);
    feed.head.send_replace(next);
    Ok(Some(next))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn prepared(seq: u64, message: Message) -> Arc<Prepared> {
        Arc::new(Prepared {
            seq,
            stream_id: "acct-1".into(),
            event_type: "Opened".into(),
            subject: None,
            decrypted: true,
            message,
            committed: None,
        })
    }

    fn data_of(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(frame_data(bytes).unwrap()).unwrap()
    }

    #[test]
    fn a_message_goes_out_as_opened_unless_its_key_was_forgotten_since() {
        let key = KeyRef::Subject(SubjectHandle([7; 16]));
        let opened = Forgetting {
            forgets: 1,
            clears: 0,
        };
        let json = r#"{"seq":5,"data":{"name":"Dora"},"erased":false,"schema_version":2,"stored_schema_version":1}"#;
        let announcement = frame("erasure", 4, r#"{"seq":4,"subject":null}"#);
        let items = vec![
            prepared(3, Message::None),
            prepared(4, Message::Fixed(announcement.clone())),
            prepared(
                5,
                Message::Personal {
                    key,
                    opened,
                    frame: frame("event", 5, json),
                },
            ),
        ];
        // Nothing forgotten since: as opened, without asking the vault.
        let out = render_with(&items, opened, |_| unreachable!("not asked")).unwrap();
        assert_eq!(&out[..announcement.len()], &announcement[..]);
        assert_eq!(data_of(&out[announcement.len()..])["data"]["name"], "Dora");
        // Another key forgotten: as opened.
        let later = Forgetting {
            forgets: 2,
            clears: 0,
        };
        let out = render_with(&items, later, |_| false).unwrap();
        assert_eq!(data_of(&out[announcement.len()..])["data"]["name"], "Dora");
        // Its own key forgotten: erased, as reads show it (not upcast: the stored version).
        let out = render_with(&items, later, |k| *k == key).unwrap();
        let rest = &out[announcement.len()..];
        assert!(rest.starts_with(b"id: 5\nevent: event\ndata: "));
        assert!(!String::from_utf8_lossy(&out).contains("Dora"));
        let v = data_of(rest);
        assert_eq!(v["erased"], true);
        assert!(v["data"].is_null());
        assert_eq!(v["schema_version"], 1);
        assert!(v.get("stored_schema_version").is_none());
        // The cache was emptied: what comes before it, then stop at it.
        let cleared = Forgetting {
            forgets: 1,
            clears: 1,
        };
        let (sent, at) = render_with(&items, cleared, |_| false).unwrap_err();
        assert_eq!(at, 5);
        assert_eq!(&sent[..], &announcement[..]);
    }
}
