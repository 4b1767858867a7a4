//! Durable named subscriptions: `/v1/subscriptions/{name}` with an acknowledged position,
//! at-least-once delivery by leases, competing consumers (`crate::subscription::durable`).

use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use super::events::EventOut;
use super::json::{self, JsonBody};
use super::params::BodyPosition;
use super::subscribe::Delivered;
use crate::entry::{EventType, StreamId};
use crate::ledger::DurableError;
use crate::store::subscriptions::SubscriptionRow;
use crate::timefmt::format_micros;

/// Longest lease a consumer may ask for.
const MAX_LEASE_MS: u64 = 3_600_000;
/// Longest a poll may wait for new events.
const MAX_WAIT_MS: u64 = 30_000;

/// Body of a subscription's creation.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// Only events of streams whose id starts with this (erasures are delivered whatever it is).
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_.:-]+$", min_length = 1, max_length = 128)]
    stream_prefix: Option<String>,
    /// Only events of this type.
    #[serde(default, rename = "type")]
    #[schema(pattern = "^[A-Za-z0-9_.:-]+$", min_length = 1, max_length = 128)]
    event_type: Option<String>,
    /// Where delivery starts (default 0, the start of the log).
    #[serde(default)]
    from_seq: Option<BodyPosition>,
}

/// A subscription.
#[derive(Serialize, ToSchema)]
pub struct SubscriptionView {
    /// Its name.
    name: String,
    /// Stream prefix filter.
    stream_prefix: Option<String>,
    /// Event type filter.
    #[serde(rename = "type")]
    event_type: Option<String>,
    /// Every seq below it is acknowledged.
    position: u64,
    /// Leases handed out and not yet folded into the position.
    leases: usize,
}

/// Query of a poll.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PollQuery {
    /// Most events to hand out, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    max: Option<u32>,
    /// How long the consumer holds them before they are handed out again, in ms (default
    /// 30,000; at most 3,600,000).
    #[param(minimum = 1, maximum = 3_600_000)]
    lease_ms: Option<u64>,
    /// When there is nothing new, wait up to this long for it, in ms (default 0; at most
    /// 30,000).
    #[param(minimum = 0, maximum = 30_000)]
    wait_ms: Option<u64>,
}

/// One message of a poll.
#[derive(Serialize, ToSchema)]
pub struct DurableMessage {
    /// `event` or `erasure`.
    kind: String,
    /// Its seq.
    seq: u64,
    /// The event (for `event`).
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<EventOut>,
    /// The erased subject's handle (for `erasure`).
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
}

/// What a poll hands out.
#[derive(Serialize, ToSchema)]
pub struct PollReply {
    /// Acknowledge it with this once processed; null when there was nothing new.
    lease_id: Option<String>,
    /// When the lease expires and its messages are handed out again (RFC 3339).
    expires_at: Option<String>,
    /// The messages, in seq order.
    messages: Vec<DurableMessage>,
}

/// Body of an acknowledgement.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    /// The lease to acknowledge.
    #[schema(min_length = 1, max_length = 64)]
    lease_id: String,
}

/// Reply to an acknowledgement.
#[derive(Serialize, ToSchema)]
pub struct AckReply {
    /// The subscription's position after it.
    position: u64,
}

fn parse_name(raw: &str) -> Result<String, ApiError> {
    StreamId::parse(raw)
        .map(|n| n.as_str().to_owned())
        .map_err(|e| ApiError::BadRequest(format!("name {e}")))
}

fn durable_error(e: DurableError) -> ApiError {
    match e {
        DurableError::NoSuchSubscription => ApiError::NotFound(e.to_string()),
        DurableError::LeaseGone => ApiError::Conflict(e.to_string()),
        DurableError::Contended => ApiError::Unavailable(e.to_string()),
        DurableError::Read(r) => r.into(),
    }
}

fn view(row: &SubscriptionRow, leases: usize) -> SubscriptionView {
    SubscriptionView {
        name: row.name.clone(),
        stream_prefix: row.stream_prefix.clone(),
        event_type: row.event_type.clone(),
        position: row.position,
        leases,
    }
}

/// Create a durable subscription.
#[utoipa::path(
    put, path = "/v1/subscriptions/{name}", tag = "events",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9_.:-]+$", min_length = 1, max_length = 128, description = "The subscription")),
    request_body = CreateBody,
    responses(
        (status = 201, description = "Created", body = SubscriptionView),
        (status = 200, description = "It already exists with these filters", body = SubscriptionView),
        (status = 400, description = "Malformed request", content_type = "application/problem+json"),
        (status = 409, description = "It exists with other filters", content_type = "application/problem+json"),
        (status = 422, description = "Invalid body", content_type = "application/problem+json"),
    )
)]
pub async fn create_subscription(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<SubscriptionView>), ApiError> {
    let Path(raw) = path?;
    let name = parse_name(&raw)?;
    let b: CreateBody = json::parse(&body)?;
    if let Some(p) = &b.stream_prefix {
        StreamId::parse(p).map_err(|e| ApiError::Invalid(format!("stream_prefix {e}")))?;
        caller.require_stream(p)?;
    }
    if let Some(t) = &b.event_type {
        EventType::parse(t).map_err(|e| ApiError::Invalid(format!("type {e}")))?;
    }
    let row = SubscriptionRow {
        name,
        stream_prefix: b.stream_prefix,
        event_type: b.event_type,
        position: b.from_seq.map_or(0, |p| p.0),
        version: 0,
    };
    let (created, existing) = state.0.ledger.create_subscription(&row).await?;
    if created {
        return Ok((StatusCode::CREATED, Json(view(&existing, 0))));
    }
    if existing.stream_prefix != row.stream_prefix || existing.event_type != row.event_type {
        return Err(ApiError::Conflict(
            "a subscription of that name exists with other filters".to_owned(),
        ));
    }
    Ok((StatusCode::OK, Json(view(&existing, 0))))
}

/// Read a durable subscription's position.
#[utoipa::path(
    get, path = "/v1/subscriptions/{name}", tag = "events",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9_.:-]+$", min_length = 1, max_length = 128, description = "The subscription")),
    responses(
        (status = 200, description = "The subscription", body = SubscriptionView),
        (status = 400, description = "Malformed name", content_type = "application/problem+json"),
        (status = 404, description = "No such subscription", content_type = "application/problem+json"),
    )
)]
pub async fn read_subscription(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let Path(raw) = path?;
    let name = parse_name(&raw)?;
    let (row, leases) = state
        .0
        .ledger
        .subscription(&name)
        .await?
        .ok_or_else(|| durable_error(DurableError::NoSuchSubscription))?;
    Ok(Json(view(&row, leases.len())))
}

/// Take the next messages of a durable subscription, under a lease.
#[utoipa::path(
    post, path = "/v1/subscriptions/{name}/poll", tag = "events",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9_.:-]+$", min_length = 1, max_length = 128, description = "The subscription"), PollQuery),
    responses(
        (status = 200, description = "Messages under a lease (none when there is nothing \
            new). Unacknowledged when the lease expires, they are handed out again to the next \
            poll of any consumer: at-least-once", body = PollReply),
        (status = 400, description = "Bad parameter", content_type = "application/problem+json"),
        (status = 404, description = "No such subscription", content_type = "application/problem+json"),
        (status = 503, description = "Too many consumers at once; retry", content_type = "application/problem+json"),
    )
)]
pub async fn poll_subscription(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<PollQuery>, QueryRejection>,
) -> Result<Json<PollReply>, ApiError> {
    let Path(raw) = path?;
    let name = parse_name(&raw)?;
    let Query(q) = query?;
    let max = q.max.unwrap_or(100);
    if !(1..=1000).contains(&max) {
        return Err(ApiError::BadRequest("max must be 1 to 1000".to_owned()));
    }
    let lease_ms = q.lease_ms.unwrap_or(30_000);
    if !(1..=MAX_LEASE_MS).contains(&lease_ms) {
        return Err(ApiError::BadRequest(format!(
            "lease_ms must be 1 to {MAX_LEASE_MS}"
        )));
    }
    let wait_ms = q.wait_ms.unwrap_or(0);
    if wait_ms > MAX_WAIT_MS {
        return Err(ApiError::BadRequest(format!(
            "wait_ms must be at most {MAX_WAIT_MS}"
        )));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    let mut commits = state.0.ledger.commits();
    let polled = loop {
        commits.borrow_and_update();
        let polled = state
            .0
            .ledger
            .poll_subscription(&name, max, Duration::from_millis(lease_ms))
            .await
            .map_err(durable_error)?;
        if polled.lease.is_some() || tokio::time::Instant::now() >= deadline {
            break polled;
        }
        let wait = tokio::time::timeout_at(deadline, commits.changed());
        if !matches!(wait.await, Ok(Ok(()))) {
            // One last look at the deadline (or if notices stopped).
            break state
                .0
                .ledger
                .poll_subscription(&name, max, Duration::from_millis(lease_ms))
                .await
                .map_err(durable_error)?;
        }
    };
    let messages = super::subscribe::deliver(&state, &caller, &polled.filter, polled.rows)
        .await?
        .into_iter()
        .map(|d| match d {
            Delivered::Event(e) => DurableMessage {
                kind: "event".to_owned(),
                seq: e.seq,
                event: Some(*e),
                subject: None,
            },
            Delivered::Erasure { seq, subject } => DurableMessage {
                kind: "erasure".to_owned(),
                seq,
                event: None,
                subject,
            },
        })
        .collect();
    Ok(Json(PollReply {
        lease_id: polled.lease.as_ref().map(|l| l.id.clone()),
        expires_at: polled.lease.as_ref().map(|l| format_micros(l.expires_at)),
        messages,
    }))
}

/// Acknowledge a lease: its messages are processed.
#[utoipa::path(
    post, path = "/v1/subscriptions/{name}/ack", tag = "events",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9_.:-]+$", min_length = 1, max_length = 128, description = "The subscription")),
    request_body = AckBody,
    responses(
        (status = 200, description = "Acknowledged", body = AckReply),
        (status = 400, description = "Malformed request", content_type = "application/problem+json"),
        (status = 404, description = "No such subscription", content_type = "application/problem+json"),
        (status = 409, description = "The lease is not held (expired and handed out again, or \
            already acknowledged)", content_type = "application/problem+json"),
        (status = 422, description = "Invalid body", content_type = "application/problem+json"),
        (status = 503, description = "Too many consumers at once; retry", content_type = "application/problem+json"),
    )
)]
pub async fn ack_subscription(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody,
) -> Result<Json<AckReply>, ApiError> {
    let Path(raw) = path?;
    let name = parse_name(&raw)?;
    let b: AckBody = json::parse(&body)?;
    let position = state
        .0
        .ledger
        .ack_subscription(&name, &b.lease_id)
        .await
        .map_err(durable_error)?;
    Ok(Json(AckReply { position }))
}
