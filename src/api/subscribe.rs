//! `GET /v1/subscribe`: Server-Sent Events from a position in the log, catch-up then live
//! (`crate::subscription` holds the rules: what is sent, erasure announcements, resuming, slow
//! clients).

use std::convert::Infallible;

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::AppState;
use super::audited;
use super::auth::Caller;
use super::error::ApiError;
use super::events::EventOut;
use super::feed::{self, Feed, Prepared};
use super::params::Position;
use crate::access::record::{AccessAction, Disclosure};
use crate::entry::{EventType, Seq};
use crate::ledger::live::Registration;
use crate::store::EntryRow;
use crate::subscription::{self, Delivery, Filter};

/// Query of a subscription.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SubscribeQuery {
    /// First seq to deliver (default 0). A `Last-Event-ID` header takes precedence: delivery
    /// resumes after it.
    from_seq: Option<Position>,
    /// Only events of streams whose id starts with this. Erasures are announced whatever it is.
    #[param(pattern = "^[A-Za-z0-9_.:-]+$", min_length = 1, max_length = 128)]
    stream_prefix: Option<String>,
    /// Only events of this type.
    #[serde(rename = "type")]
    #[param(
        rename = "type",
        pattern = "^[A-Za-z0-9_.:-]+$",
        min_length = 1,
        max_length = 128
    )]
    event_type: Option<String>,
}

/// Subscribe to the log as Server-Sent Events.
#[utoipa::path(
    get, path = "/v1/subscribe", tag = "events",
    params(SubscribeQuery, ("Last-Event-ID" = Option<String>, Header, description = "The seq of \
        the last event received: delivery resumes after it")),
    responses(
        (status = 200, description = "An SSE stream. `event` messages carry an event as the \
            reads show it (erased ones without data), with its seq as the SSE id; `erasure` \
            messages announce an erasure (`{seq, subject}`, the subject's handle), whatever the \
            filters; a final `lagged` message (`{resume_from}`) ends the stream of a client \
            that stopped taking messages. Catch-up from the position, then live.",
            content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad parameter or Last-Event-ID", content_type = "application/problem+json"),
    )
)]
pub async fn subscribe(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    query: Result<Query<SubscribeQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    if let Some(p) = &q.stream_prefix {
        if p.is_empty() || p.len() > 128 {
            return Err(ApiError::BadRequest(
                "stream_prefix must be 1 to 128 characters".to_owned(),
            ));
        }
        caller.require_stream(p)?;
    }
    if let Some(t) = &q.event_type {
        EventType::parse(t).map_err(|e| ApiError::BadRequest(format!("type {e}")))?;
    }
    let last_id = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("?"));
    let from = subscription::start(last_id, q.from_seq.map(|p| p.0))
        .map_err(|e| ApiError::BadRequest(e.to_owned()))?;
    let filter = Filter {
        stream_prefix: q.stream_prefix,
        event_type: q.event_type,
    };
    // At most `buffered` messages wait: in chunks of up to CHUNK (smaller when the buffer is).
    let buffered = state.0.subscriptions.buffered.max(1);
    let chunk = CHUNK.min(buffered);
    let (tx, rx) = mpsc::channel::<Chunk>(buffered / chunk);
    let (final_tx, final_rx) = oneshot::channel::<Bytes>();
    tokio::spawn(produce(
        state.clone(),
        caller,
        filter,
        (from, chunk),
        tx,
        final_tx,
    ));
    let out = Outgoing {
        state,
        rx,
        pending: std::collections::VecDeque::new(),
        final_rx: Some(final_rx),
        done: false,
    };
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream::unfold(out, Outgoing::next)),
    )
        .into_response())
}

/// Messages handed to a connection at a time (one write for many small messages).
const CHUNK: usize = 100;
/// A comment sent on an idle connection this often, so that proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Prepared messages on their way to a connection.
type Chunk = Vec<Arc<Prepared>>;

/// Most bytes rendered for the connection at a time (but always one message): what is rendered
/// is out of the vault's reach (the HTTP layer buffers a few hundred KB of it ahead of the
/// socket), so a chunk is rendered a little at a time, each part checked as it is handed over.
const RENDER_BYTES: usize = 64 * 1024;

/// The connection's side: takes chunks, checks each message against the vault at the moment
/// it goes out (`feed::render`), and ends with the producer's final message, if any.
struct Outgoing {
    state: AppState,
    rx: mpsc::Receiver<Chunk>,
    /// Taken from `rx`, not yet rendered.
    pending: std::collections::VecDeque<Arc<Prepared>>,
    final_rx: Option<oneshot::Receiver<Bytes>>,
    done: bool,
}

impl Outgoing {
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, Outgoing)> {
        if self.done {
            return None;
        }
        if self.pending.is_empty() {
            tokio::select! {
                chunk = self.rx.recv() => {
                    let Some(chunk) = chunk else {
                        self.done = true;
                        let last = self.final_rx.take()?.await.ok()?;
                        return Some((Ok(last), self));
                    };
                    self.pending.extend(chunk);
                }
                () = tokio::time::sleep(KEEP_ALIVE) => {
                    return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), self));
                }
            }
        }
        let mut part = Vec::new();
        let mut size = 0;
        while let Some(p) = self.pending.front() {
            if !part.is_empty() && size + p.len() > RENDER_BYTES {
                break;
            }
            size += p.len();
            part.extend(self.pending.pop_front());
        }
        match feed::render(&self.state, &part) {
            Ok(bytes) => {
                if let Some(at) = part.iter().find_map(|p| p.committed) {
                    metrics::histogram!(crate::telemetry::LIVE_DELIVERY_SECONDS)
                        .record(at.elapsed().as_secs_f64());
                }
                Some((Ok(bytes), self))
            }
            Err((sent, resume_from)) => {
                // The vault emptied its cache since these were opened: send what is
                // safe, then end; the client resumes and reads the rest afresh.
                self.done = true;
                let mut all = sent.to_vec();
                all.extend_from_slice(&lagged(resume_from));
                Some((Ok(Bytes::from(all)), self))
            }
        }
    }
}

/// The final message of a subscription cut off at `resume_from`.
fn lagged(resume_from: u64) -> Bytes {
    Bytes::from(format!(
        "event: lagged\ndata: {}\n\n",
        json!({ "resume_from": resume_from })
    ))
}

/// Reads the log from `next` and sends what the filter admits, until the client goes away or
/// falls behind. Live entries come from the process's shared feed, opened once for every
/// subscriber; a subscriber behind the feed (catching up) or asking for the ledger's own
/// entries reads and opens its own.
async fn produce(
    state: AppState,
    caller: Caller,
    filter: Filter,
    (mut next, chunk_size): (u64, usize),
    tx: mpsc::Sender<Chunk>,
    final_tx: oneshot::Sender<Bytes>,
) {
    let feed_use = (!filter.asks_for_ledger_entries()).then(|| Feed::join(&state));
    // From the next batch the writer prepares on, it records what it discloses to this
    // subscriber in the batch itself (`ledger::live`); what it did not, the subscriber does.
    let live = state.0.access_entries.then(|| {
        state
            .0
            .ledger
            .live_readers()
            .register(caller.actor(), filter.clone(), next)
    });
    let mut head = state.0.feed.changed();
    let mut commits = state.0.ledger.commits();
    let limits = state.0.subscriptions;
    // While catching up, the next page's rows are read while this page is opened and sent.
    let mut ahead: Option<ReadAhead> = None;
    metrics::gauge!("auditledger_subscribers").increment(1);
    loop {
        commits.borrow_and_update();
        head.borrow_and_update();
        let rows_ahead = match ahead.take() {
            Some(a) if a.from == next => Some(a.rows),
            Some(a) => {
                a.rows.abort();
                None
            }
            None => None,
        };
        let shared = if rows_ahead.is_some() {
            None
        } else {
            feed_use
                .as_ref()
                .and_then(|_| state.0.feed.take(next, feed::LIVE_TAKE))
        };
        let from_feed = shared.is_some();
        // `scanned`: the position after the last entry looked at, delivered or skipped (a page
        // of entries this subscriber skips must move it on too).
        let (page, full, scanned) = match shared {
            Some(items) => {
                let full = items.len() == feed::LIVE_TAKE;
                let scanned = items.last().map(|p| p.seq + 1);
                let page: Chunk = items
                    .into_iter()
                    .filter(|p| p.delivery(&filter) != Delivery::Skip)
                    .collect();
                if let Err(e) = record(&state, &caller, &filter, &page, live.as_ref()).await {
                    tracing::warn!(error = %e, "a subscription could not record its access; it ends");
                    break;
                }
                (page, full, scanned)
            }
            None => match read_log(
                (&state, &caller, &filter, live.as_ref()),
                next,
                rows_ahead,
                &mut ahead,
            )
            .await
            {
                Ok(read) => read,
                Err(e) => {
                    tracing::warn!(error = %e, "a subscription could not read the log; it ends");
                    break;
                }
            },
        };
        if let Some(scanned) = scanned {
            next = next.max(scanned);
        }
        if let Some(live) = &live {
            live.passed(next);
        }
        for chunk in page.chunks(chunk_size) {
            match tokio::time::timeout(limits.slow_client, tx.send(chunk.to_vec())).await {
                Ok(Ok(())) => {}
                // The client went away.
                Ok(Err(_)) => return gone(),
                Err(_) => {
                    metrics::counter!("auditledger_subscribers_lagged_total").increment(1);
                    let _ = final_tx.send(lagged(chunk[0].seq));
                    return gone();
                }
            }
        }
        if !full {
            tokio::select! {
                changed = commits.changed(), if !from_feed => if changed.is_err() { break },
                changed = head.changed(), if from_feed => if changed.is_err() { break },
                () = tokio::time::sleep(limits.poll) => {}
                () = tx.closed() => break,
            }
        }
    }
    gone();
}

/// Whether the entry at `seq` still has to be recorded for the subscriber: its batch did not
/// record it (`ledger::live`).
fn unrecorded(live: Option<&Registration>, seq: u64) -> bool {
    !live.is_some_and(|l| l.covers(seq))
}

/// Records what `page` discloses to the subscriber (before any of it is sent), where its batch
/// did not.
async fn record(
    state: &AppState,
    caller: &Caller,
    filter: &Filter,
    page: &[Arc<Prepared>],
    live: Option<&Registration>,
) -> Result<(), ApiError> {
    let mut d = Disclosure::default();
    for p in page
        .iter()
        .filter(|p| p.delivery(filter) == Delivery::Event && unrecorded(live, p.seq))
    {
        d.count(p.seq, &p.stream_id, p.subject, p.decrypted);
    }
    audited::record_disclosure(state, caller, AccessAction::ReadLog, None, d).await
}

/// The page of the log from `next` (its rows read ahead, if they were), opened for this
/// subscriber; when it is full, the next page's rows start being read into `ahead`.
async fn read_log(
    (state, caller, filter, live): (&AppState, &Caller, &Filter, Option<&Registration>),
    next: u64,
    rows_ahead: Option<RowsAhead>,
    ahead: &mut Option<ReadAhead>,
) -> Result<(Chunk, bool, Option<u64>), ApiError> {
    let rows = match rows_ahead {
        Some(task) => task
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??,
        None => state.0.ledger.global_rows(Seq(next), feed::PAGE).await?,
    };
    if rows.len() == feed::PAGE as usize
        && let Some(r) = rows.last()
    {
        *ahead = Some(ReadAhead::start(state, r.disclosure_fields().0 + 1));
    }
    read(state, caller, filter, rows, live).await
}

/// Rows of the log being read ahead.
type RowsAhead = tokio::task::JoinHandle<Result<Vec<EntryRow>, crate::ledger::ReadError>>;

/// The rows of the page after the current one, being read.
struct ReadAhead {
    /// Their first seq.
    from: u64,
    rows: RowsAhead,
}

impl ReadAhead {
    fn start(state: &AppState, from: u64) -> ReadAhead {
        let state = state.clone();
        ReadAhead {
            from,
            rows: tokio::spawn(
                async move { state.0.ledger.global_rows(Seq(from), feed::PAGE).await },
            ),
        }
    }
}

/// A page of the log's `rows` opened for this subscriber alone (its access entry appended
/// while the rows are opened); whether the page was full; the position after its last row.
async fn read(
    state: &AppState,
    caller: &Caller,
    filter: &Filter,
    rows: Vec<EntryRow>,
    live: Option<&Registration>,
) -> Result<(Chunk, bool, Option<u64>), ApiError> {
    let full = rows.len() == feed::PAGE as usize;
    let scanned = rows.last().map(|r| r.disclosure_fields().0 + 1);
    let mut d = Disclosure::default();
    for r in &rows {
        let (seq, stream, subject) = r.disclosure_fields();
        if filter.classify(stream, r.event_type_str()) == Delivery::Event && unrecorded(live, seq) {
            d.count(seq, stream, subject, !r.erased());
        }
    }
    let (recorded, prepared) = tokio::join!(
        audited::record_disclosure(state, caller, AccessAction::ReadLog, None, d),
        feed::prepare(
            state,
            rows.into_iter().map(feed::Item::Row).collect(),
            |s, t| filter.classify(s, t)
        )
    );
    recorded?;
    let page = prepared?
        .into_iter()
        .filter(|p| p.delivery(filter) != Delivery::Skip)
        .map(Arc::new)
        .collect();
    Ok((page, full, scanned))
}

fn gone() {
    metrics::gauge!("auditledger_subscribers").decrement(1);
}

/// What a subscriber is sent for one entry.
pub(super) enum Delivered {
    /// An event, as reads show it.
    Event(Box<EventOut>),
    /// An erasure's announcement: its seq and the subject's handle.
    Erasure { seq: u64, subject: Option<String> },
}

impl Delivered {
    fn seq(&self) -> u64 {
        match self {
            Delivered::Event(e) => e.seq,
            Delivered::Erasure { seq, .. } => *seq,
        }
    }
}

/// What `rows` deliver under `filter`, in seq order: events the filter admits (decrypted, their
/// access recorded first, upcast) and erasure announcements. Shared by live and durable
/// subscriptions.
pub(super) async fn deliver(
    state: &AppState,
    caller: &Caller,
    filter: &Filter,
    rows: Vec<EntryRow>,
) -> Result<Vec<Delivered>, ApiError> {
    let mut out = Vec::new();
    let mut events = Vec::new();
    for row in rows {
        let (seq, stream, subject) = row.disclosure_fields();
        match filter.classify(stream, row.event_type_str()) {
            Delivery::Skip => {}
            Delivery::Erasure => out.push(Delivered::Erasure {
                seq,
                subject: subject.map(|s| s.to_hex()),
            }),
            Delivery::Event => events.push(row),
        }
    }
    if !events.is_empty() {
        let opened =
            audited::open_recorded(state, caller, AccessAction::ReadLog, None, events).await?;
        let mut outs: Vec<EventOut> = opened.into_iter().map(EventOut::from).collect();
        super::events::upcast(state, &mut outs).await?;
        out.extend(outs.into_iter().map(|e| Delivered::Event(Box::new(e))));
    }
    out.sort_by_key(Delivered::seq);
    Ok(out)
}
