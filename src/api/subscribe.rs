//! `GET /v1/subscribe`: Server-Sent Events from a position in the log, catch-up then live
//! (`crate::subscription` holds the rules: what is sent, erasure announcements, resuming, slow
//! clients).

use std::convert::Infallible;

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::AppState;
use super::audited;
use super::auth::Caller;
use super::error::ApiError;
use super::events::EventOut;
use super::params::Position;
use crate::access::record::AccessAction;
use crate::entry::{EventType, Seq};
use crate::store::EntryRow;
use crate::subscription::{self, Delivery, Filter};

/// Entries read from the log at a time.
const PAGE: u32 = 1000;

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
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
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
    let (tx, rx) = mpsc::channel::<Event>(state.0.subscriptions.buffered);
    let (final_tx, final_rx) = oneshot::channel::<Event>();
    tokio::spawn(produce(state, caller, filter, from, tx, final_tx));
    let events = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) });
    let last = stream::once(final_rx).filter_map(|r| async move { r.ok() });
    Ok(Sse::new(events.chain(last).map(Ok)).keep_alive(KeepAlive::default()))
}

/// Reads the log from `next` and sends what the filter admits, until the client goes away or
/// falls behind.
async fn produce(
    state: AppState,
    caller: Caller,
    filter: Filter,
    mut next: u64,
    tx: mpsc::Sender<Event>,
    final_tx: oneshot::Sender<Event>,
) {
    let mut commits = state.0.ledger.commits();
    // A subscriber re-reads the log this often even without a commit notice (a notice lost
    // with a PostgreSQL connection, or a commit by another process on SQLite).
    let limits = state.0.subscriptions;
    metrics::gauge!("auditledger_subscribers").increment(1);
    loop {
        commits.borrow_and_update();
        let rows = match state.0.ledger.global_rows(Seq(next), PAGE).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "a subscription could not read the log; it ends");
                break;
            }
        };
        let full = rows.len() == PAGE as usize;
        if let Some(last) = rows.last() {
            next = last.disclosure_fields().0 + 1;
        }
        let messages = match messages(&state, &caller, &filter, rows).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "a subscription could not deliver; it ends");
                break;
            }
        };
        for (seq, message) in messages {
            match tokio::time::timeout(limits.slow_client, tx.send(message)).await {
                Ok(Ok(())) => {}
                // The client went away.
                Ok(Err(_)) => return gone(),
                Err(_) => {
                    metrics::counter!("auditledger_subscribers_lagged_total").increment(1);
                    let _ = final_tx.send(
                        Event::default()
                            .event("lagged")
                            .data(json!({ "resume_from": seq }).to_string()),
                    );
                    return gone();
                }
            }
        }
        if !full {
            tokio::select! {
                changed = commits.changed() => if changed.is_err() { break },
                () = tokio::time::sleep(limits.poll) => {}
                () = tx.closed() => break,
            }
        }
    }
    gone();
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

/// The SSE messages for `rows`, in seq order, each with its seq.
async fn messages(
    state: &AppState,
    caller: &Caller,
    filter: &Filter,
    rows: Vec<EntryRow>,
) -> Result<Vec<(u64, Event)>, ApiError> {
    deliver(state, caller, filter, rows)
        .await?
        .into_iter()
        .map(|d| {
            let seq = d.seq();
            let (name, data) = match d {
                Delivered::Event(e) => ("event", serde_json::to_string(&e)),
                Delivered::Erasure { seq, subject } => (
                    "erasure",
                    Ok(json!({"seq": seq, "subject": subject}).to_string()),
                ),
            };
            let data = data.map_err(|e| ApiError::Internal(e.to_string()))?;
            Ok((
                seq,
                Event::default().event(name).id(seq.to_string()).data(data),
            ))
        })
        .collect()
}
