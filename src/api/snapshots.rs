//! Aggregate snapshots: `PUT /v1/streams/{stream_id}/snapshots` stores a client-built state,
//! `GET /v1/streams/{stream_id}/load` returns the newest usable snapshot and the events after it.

use axum::Extension;
use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use zeroize::Zeroizing;

use super::AppState;
use super::audited;
use super::auth::Caller;
use super::error::ApiError;
use super::events::{EventOut, check_limit, parse_stream_id};
use super::json::{self, JsonBody};
use super::params::{BodyPosition, Position};
use crate::access::record::AccessAction;
use crate::ledger::{SYSTEM_STREAM_PREFIX, SnapshotError};

/// Body of a snapshot.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotBody {
    /// The stream version the state was built up to (inclusive): an event of the stream must
    /// have it.
    stream_version: BodyPosition,
    /// The aggregate's state: a JSON object, sealed at rest under the keys of the stream's
    /// subjects (or the system key when it has none).
    #[schema(value_type = Object)]
    state: serde_json::Value,
}

/// A stored snapshot.
#[derive(Serialize, ToSchema)]
pub struct SnapshotStored {
    /// The stream.
    stream_id: String,
    /// The version it was built up to.
    stream_version: u64,
}

/// A snapshot as loaded.
#[derive(Serialize, ToSchema)]
pub struct SnapshotOut {
    /// The version it was built up to.
    stream_version: u64,
    /// The state as stored by the client.
    #[schema(value_type = Object)]
    state: serde_json::Value,
}

/// A stream loaded for rebuilding its aggregate.
#[derive(Serialize, ToSchema)]
pub struct LoadedStream {
    /// The stream.
    stream_id: String,
    /// The newest snapshot at or before `stream_version` that opens, or null (then `events`
    /// start at version 0).
    snapshot: Option<SnapshotOut>,
    /// The events after the snapshot, in order, up to `stream_version`.
    events: Vec<EventOut>,
    /// The version loaded up to (the one asked for, or the stream's last); null for an empty
    /// stream.
    stream_version: Option<u64>,
    /// When the events after the snapshot are more than `limit`: the `from_version` of the rest
    /// (read them with `GET /v1/streams/{stream_id}/events`); otherwise null.
    next_from_version: Option<u64>,
}

/// Query of a load.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LoadQuery {
    /// Load the stream as of this version (default: its last).
    version: Option<Position>,
    /// Most events to return after the snapshot, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

fn snapshot_error(e: SnapshotError) -> ApiError {
    match e {
        SnapshotError::NoSuchVersion(_) => ApiError::NotFound(e.to_string()),
        SnapshotError::SubjectErased | SnapshotError::TooManySubjects => {
            ApiError::Invalid(e.to_string())
        }
        // Logged with its kind where it was found; the body names the seq only.
        SnapshotError::Untrusted(f) => ApiError::Integrity { seq: f.seq.0 },
        SnapshotError::Read(r) => r.into(),
        SnapshotError::Task(_) => ApiError::Internal(e.to_string()),
    }
}

/// Store a snapshot of a stream's aggregate.
#[utoipa::path(
    put, path = "/v1/streams/{stream_id}/snapshots", tag = "events",
    params(("stream_id" = String, Path, pattern = "^[A-Za-z0-9_.:-]+$", min_length = 1, max_length = 128, description = "The stream")),
    request_body = SnapshotBody,
    responses(
        (status = 201, description = "Stored (replacing one at the same version). Not part of \
            the chain: snapshots may be deleted or rebuilt at any time", body = SnapshotStored),
        (status = 400, description = "Malformed request", content_type = "application/problem+json"),
        (status = 404, description = "The stream has no event at that version", content_type = "application/problem+json"),
        (status = 413, description = "Over a size limit", content_type = "application/problem+json"),
        (status = 422, description = "Invalid body, or a subject of the stream has been erased \
            (a snapshot could outlive the erasure)", content_type = "application/problem+json"),
        (status = 500, description = "An entry of the stream up to that version does not verify \
            (`integrity-failure`, naming its seq): the subjects whose keys a snapshot needs are \
            not known, so none is stored", content_type = "application/problem+json"),
    )
)]
pub async fn put_snapshot(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<SnapshotStored>), ApiError> {
    let Path(stream_id) = path?;
    let stream = parse_stream_id(&stream_id)?;
    if stream.as_str().starts_with(SYSTEM_STREAM_PREFIX) {
        return Err(ApiError::BadRequest(format!(
            "stream_id: streams starting with {SYSTEM_STREAM_PREFIX} are the ledger's own"
        )));
    }
    caller.require_stream(stream.as_str())?;
    let parsed: SnapshotBody = json::parse(&body)?;
    if !parsed.state.is_object() {
        return Err(ApiError::Invalid("state must be a JSON object".to_owned()));
    }
    let bytes = Zeroizing::new(
        serde_json::to_vec(&parsed.state).map_err(|e| ApiError::Internal(e.to_string()))?,
    );
    let version = parsed.stream_version.0;
    // The keys the stream's entries are verified against: the keys directory's, never the
    // database's.
    let trust = state
        .0
        .trust()
        .map_err(|e| ApiError::Internal(format!("keys directory: {e}")))?;
    state
        .0
        .ledger
        .put_snapshot(&stream, version, &bytes, &trust)
        .await
        .map_err(snapshot_error)?;
    Ok((
        StatusCode::CREATED,
        Json(SnapshotStored {
            stream_id: stream.to_string(),
            stream_version: version,
        }),
    ))
}

/// Load a stream's aggregate: its newest usable snapshot and the events after it, decrypted.
#[utoipa::path(
    get, path = "/v1/streams/{stream_id}/load", tag = "events",
    params(("stream_id" = String, Path, pattern = "^[A-Za-z0-9_.:-]+$", min_length = 1, max_length = 128, description = "The stream"), LoadQuery),
    responses(
        (status = 200, description = "The snapshot (or none) and the events after it. A \
            snapshot that does not open — its subject erased, or altered or moved — is ignored, \
            never trusted", body = LoadedStream),
        (status = 400, description = "Bad parameter", content_type = "application/problem+json"),
    )
)]
pub async fn load_stream(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<LoadQuery>, QueryRejection>,
) -> Result<Json<LoadedStream>, ApiError> {
    let Path(stream_id) = path?;
    let stream = parse_stream_id(&stream_id)?;
    caller.require_stream(stream.as_str())?;
    let Query(q) = query?;
    let limit = check_limit(q.limit)?;
    let loaded = state
        .0
        .ledger
        .load(&stream, q.version.map(|v| v.0), limit)
        .await?;
    let mut disclosure = audited::disclosure_of_rows(&loaded.rows);
    disclosure
        .subjects
        .extend(loaded.snapshot_subjects.iter().copied());
    let opened = audited::open_disclosing(
        &state,
        &caller,
        AccessAction::ReadStream,
        Some(stream.as_str()),
        loaded.rows,
        disclosure,
    )
    .await?;
    let mut events: Vec<EventOut> = opened.into_iter().map(EventOut::from).collect();
    super::events::upcast(&state, &mut events).await?;
    let snapshot = match loaded.snapshot {
        Some((at, bytes)) => Some(SnapshotOut {
            stream_version: at,
            state: serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::Internal(format!("a snapshot's state: {e}")))?,
        }),
        None => None,
    };
    let last = events
        .last()
        .map(|e| e.stream_version)
        .or(snapshot.as_ref().map(|s| s.stream_version));
    let next_from_version = match (last, loaded.version) {
        (Some(l), Some(v)) if l < v => Some(l + 1),
        _ => None,
    };
    Ok(Json(LoadedStream {
        stream_id: stream.to_string(),
        snapshot,
        events,
        stream_version: loaded.version,
        next_from_version,
    }))
}
