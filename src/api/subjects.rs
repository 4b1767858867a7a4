//! Data subjects: erasure (GDPR Art. 17) and access (Art. 15). The identifier travels only in
//! request bodies, never in a URL, so no access log or proxy keeps it.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use zeroize::Zeroizing;

use std::collections::BTreeSet;

use axum::Extension;
use axum::http::StatusCode;

use super::AppState;
use super::audited;
use super::auth::Caller;
use super::error::ApiError;
use super::events::{EventOut, MAX_READ_LIMIT, MAX_SUBJECT_BYTES};
use super::json::{self, JsonBody};
use super::params::{BodyPosition, Count};
use crate::access::record::{AccessAction, AccessOutcome};
use crate::checkpoint::CheckpointJson;
use crate::entry::Seq;
use crate::identifiers::Identifiers;
use crate::ledger::{EraseError, EraseRequest, ErasureState, ErasureView};
use crate::ledger::{HoldError, HoldRequest};
use crate::receipt::ReceiptJson;

/// Longest erasure reason, in bytes.
pub const MAX_REASON_BYTES: usize = 1000;
/// Longest request reference, in bytes.
pub const MAX_REQUEST_REF_BYTES: usize = 200;

/// Body of an erasure request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EraseBody {
    /// The subject's own identifier, as given when its events were appended.
    #[schema(min_length = 1, max_length = 256)]
    subject: String,
    /// Why, e.g. `GDPR Art. 17(1)(a)`. Chained in plaintext and kept for ever: no personal data;
    /// refused (422) if it contains the identifier in any case, width or accent.
    #[schema(min_length = 1, max_length = 1000)]
    reason: String,
    /// Your reference for the request (ticket number). Chained in plaintext and kept for ever:
    /// no personal data; refused (422) if it contains the identifier.
    #[schema(min_length = 1, max_length = 200)]
    request_ref: String,
}

/// Body of a subject access request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportBody {
    /// The subject's own identifier.
    #[schema(min_length = 1, max_length = 256)]
    subject: String,
    /// First seq to return (default 0).
    #[serde(default)]
    from_seq: BodyPosition,
    /// Most events to return, 1 to 1000 (default 1000).
    #[serde(default)]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<Count>,
}

/// A signed erasure receipt.
#[derive(Serialize, ToSchema)]
pub struct ReceiptOut {
    /// The ledger's identity (32 hex digits), which the signature binds.
    ledger_id: String,
    /// The erased subject's handle (32 hex digits).
    subject_handle: String,
    /// When the key was destroyed (RFC 3339, UTC, µs).
    erased_at: String,
    /// Seq of the `SubjectErased` entry.
    erasure_seq: u64,
    /// Its entry hash, hex.
    erasure_entry_hash: String,
    /// Your request reference.
    request_ref: String,
    /// Signing key id.
    key_id: String,
    /// Ed25519 signature over the receipt message (docs/FORMAT.md), hex.
    signature: String,
    /// The KEK epoch current at the erasure (signed).
    epoch: u32,
    /// When that epoch's KEK is due to be destroyed, RFC 3339 (signed): from then on no copy
    /// of the database — backup, WAL, replica — gives back the subject's key or links their
    /// identifier to the handle. `GET /v1/subjects/erasures/{erasure_seq}` shows the progress.
    forgotten_by: String,
    /// Every other instance drops the subject's key from memory within this many ms.
    caches_cleared_within_ms: u64,
    /// A checkpoint whose tree ends with the erasure entry.
    checkpoint: Option<CheckpointJson>,
    /// Inclusion proof of the erasure entry (leaf `erasure_seq`) in that checkpoint, hex.
    inclusion_proof: Vec<String>,
}

impl From<ReceiptJson> for ReceiptOut {
    fn from(r: ReceiptJson) -> ReceiptOut {
        ReceiptOut {
            ledger_id: r.ledger_id,
            subject_handle: r.subject_handle,
            erased_at: r.erased_at,
            erasure_seq: r.erasure_seq,
            erasure_entry_hash: r.erasure_entry_hash,
            request_ref: r.request_ref,
            key_id: r.key_id,
            signature: r.signature,
            epoch: r.epoch,
            forgotten_by: r.forgotten_by,
            caches_cleared_within_ms: r.caches_cleared_within_ms,
            checkpoint: r.checkpoint,
            inclusion_proof: r.inclusion_proof,
        }
    }
}

/// A subject's events.
#[derive(Serialize, ToSchema)]
pub struct SubjectExport {
    /// The subject's handle.
    subject_handle: String,
    /// The subject's events, decrypted, in seq order.
    events: Vec<EventOut>,
    /// `from_seq` for the next page, or null at the end.
    next_from_seq: Option<u64>,
}

fn unknown_subject() -> ApiError {
    ApiError::NotFound(
        "no subject with this identifier is known: it was never named in an event, or it was erased (an erasure's receipt can be fetched again with GET /v1/subjects/erasures?request_ref=...)"
            .to_owned(),
    )
}

/// How far an erasure has got towards being forgotten in every copy of the database.
#[derive(Serialize, ToSchema)]
pub struct ErasureStatusOut {
    /// `key_deleted` (gone from the live tables), `live_cleaned` (and from the live files:
    /// SQLite WAL truncated, PostgreSQL VACUUM done), `forgotten` (every KEK epoch that ever
    /// wrapped the subject's key or link is destroyed: no copy anywhere can give them back).
    state: String,
    /// RFC 3339.
    key_deleted_at: String,
    /// RFC 3339, or null while a reader or an old snapshot holds the live files.
    live_cleaned_at: Option<String>,
    /// RFC 3339, or null until the epoch is destroyed.
    forgotten_at: Option<String>,
    /// When forgetting is promised, RFC 3339 (null for an erasure made before KEK epochs).
    forgotten_by: Option<String>,
    /// The epoch current at the erasure.
    epoch: Option<u32>,
}

/// An erasure: its receipt (as first returned) and its status.
#[derive(Serialize, ToSchema)]
pub struct ErasureOut {
    /// The signed receipt; null for an erasure made before receipts were recorded.
    receipt: Option<ReceiptOut>,
    /// Its progress.
    status: ErasureStatusOut,
}

/// Erasures under one request reference.
#[derive(Serialize, ToSchema)]
pub struct ErasureList {
    /// Oldest first (at most 100).
    erasures: Vec<ErasureOut>,
}

impl From<ErasureView> for ErasureOut {
    fn from(v: ErasureView) -> ErasureOut {
        let state = match v.status.state {
            ErasureState::KeyDeleted => "key_deleted",
            ErasureState::LiveCleaned => "live_cleaned",
            ErasureState::Forgotten => "forgotten",
        };
        ErasureOut {
            receipt: v.receipt.map(ReceiptOut::from),
            status: ErasureStatusOut {
                state: state.to_owned(),
                key_deleted_at: v.status.key_deleted_at,
                live_cleaned_at: v.status.live_cleaned_at,
                forgotten_at: v.status.forgotten_at,
                forgotten_by: v.status.forgotten_by,
                epoch: v.status.epoch,
            },
        }
    }
}

/// Query of `GET /v1/subjects/erasures`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ErasureQuery {
    /// The request reference given when erasing.
    #[param(min_length = 1, max_length = 200)]
    request_ref: String,
}

/// An erasure's receipt and status, by the seq of its `SubjectErased` entry.
#[utoipa::path(
    get, path = "/v1/subjects/erasures/{erasure_seq}", tag = "subjects",
    params(("erasure_seq" = u64, Path, description = "Seq of the SubjectErased entry")),
    responses(
        (status = 200, description = "The erasure", body = ErasureOut),
        (status = 404, description = "No erasure at this seq", content_type = "application/problem+json"),
    )
)]
pub async fn erasure(
    State(state): State<AppState>,
    path: Result<Path<u64>, PathRejection>,
) -> Result<Json<ErasureOut>, ApiError> {
    let Path(seq) = path.map_err(|_| {
        ApiError::BadRequest("erasure_seq must be a non-negative integer".to_owned())
    })?;
    match state.0.ledger.erasure(Seq(seq)).await? {
        Some(view) => Ok(Json(view.into())),
        None => Err(ApiError::NotFound(format!(
            "no erasure has its entry at seq {seq}"
        ))),
    }
}

/// The erasures made under a request reference, with receipts and status: how a receipt lost
/// in transit is fetched again, whatever the tombstone setting.
#[utoipa::path(
    get, path = "/v1/subjects/erasures", tag = "subjects",
    params(ErasureQuery),
    responses(
        (status = 200, description = "The erasures (possibly none)", body = ErasureList),
        (status = 400, description = "Bad query", content_type = "application/problem+json"),
    )
)]
pub async fn erasures(
    State(state): State<AppState>,
    query: Result<Query<ErasureQuery>, QueryRejection>,
) -> Result<Json<ErasureList>, ApiError> {
    let Query(q) = query.map_err(|_| {
        ApiError::BadRequest("expected exactly one query parameter, request_ref".to_owned())
    })?;
    // A query parameter out of shape is a malformed request (400), like one that is missing.
    json::check_text("request_ref", &q.request_ref, MAX_REQUEST_REF_BYTES)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let list = state.0.ledger.erasures_by_ref(&q.request_ref).await?;
    Ok(Json(ErasureList {
        erasures: list.into_iter().map(ErasureOut::from).collect(),
    }))
}

/// Erase a subject by destroying its data key (crypto-shredding).
#[utoipa::path(
    post, path = "/v1/subjects/erase", tag = "subjects",
    request_body = EraseBody,
    responses(
        (status = 200, description = "Erased (or erased before: the first receipt)", body = ReceiptOut),
        (status = 404, description = "Unknown subject", content_type = "application/problem+json"),
        (status = 409, description = "The subject is under a legal hold (hold_seq and hold_reference name it); nothing was erased", content_type = "application/problem+json"),
        (status = 422, description = "Invalid request, or the identifier in reason or request_ref \
            (the reply names the field, never its content)", content_type = "application/problem+json"),
    )
)]
pub async fn erase(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> Result<Json<ReceiptOut>, ApiError> {
    let parsed: EraseBody = json::parse(&body)?;
    let subject = Zeroizing::new(parsed.subject);
    json::check_text("subject", &subject, MAX_SUBJECT_BYTES)?;
    json::check_text("reason", &parsed.reason, MAX_REASON_BYTES)?;
    json::check_text("request_ref", &parsed.request_ref, MAX_REQUEST_REF_BYTES)?;
    // Any identifier is accepted here, however short (one appended before the length rule
    // must stay erasable), and every one is checked: reason and reference are chained in
    // plaintext and kept for ever. The reply names the field, never its content.
    refuse_identifier_in(
        &subject,
        &[
            ("reason", &parsed.reason),
            ("request_ref", &parsed.request_ref),
        ],
    )?;
    let request_ref = parsed.request_ref.clone();
    let request = EraseRequest {
        subject,
        reason: parsed.reason,
        request_ref: parsed.request_ref,
        actor: Some(caller.actor()),
    };
    let result = state.0.ledger.erase(request).await;
    // An erasure done (now, or earlier: a repeated request) is recorded by its own
    // `SubjectErased` entry, which names the token; a refused or unknown one by an access entry.
    let (outcome, handle, target) = match &result {
        Err(EraseError::UnknownSubject) => (AccessOutcome::NotFound, None, None),
        Err(EraseError::Held(h, hold)) => (AccessOutcome::Refused, Some(*h), Some(hold.hold_seq.0)),
        Ok(_) | Err(EraseError::Unavailable | EraseError::ShuttingDown) => {
            (AccessOutcome::Failed, None, None)
        }
    };
    if outcome != AccessOutcome::Failed {
        let mut record = audited::about(&caller, AccessAction::EraseSubject, outcome, handle);
        record.target = target.map(|s| s.to_string());
        record.reference = Some(request_ref);
        audited::record_entry(&state, record, &BTreeSet::new()).await?;
    }
    match result {
        Ok(receipt) => Ok(Json(receipt.into())),
        Err(EraseError::UnknownSubject) => Err(unknown_subject()),
        Err(EraseError::Held(_, hold)) => Err(ApiError::Held {
            hold_seq: hold.hold_seq.0,
            reference: hold.reference,
        }),
        Err(EraseError::Unavailable) => Err(ApiError::Unavailable(
            "the erasure could not be committed; nothing was changed, retry".to_owned(),
        )),
        Err(EraseError::ShuttingDown) => Err(ApiError::Unavailable(
            "the service is shutting down; retry".to_owned(),
        )),
    }
}

/// Refuses (422) a text field that contains the subject's identifier: such fields are chained
/// in plaintext and kept for ever. Names the field, never its content.
fn refuse_identifier_in(subject: &str, fields: &[(&str, &str)]) -> Result<(), ApiError> {
    let identifier = Identifiers::new([subject]);
    for (field, text) in fields {
        if identifier.appear_in(text) {
            return Err(ApiError::Invalid(format!(
                "{field} contains the subject identifier (compared without regard to case, \
                 width or accents): it is chained in plaintext and kept for ever"
            )));
        }
    }
    Ok(())
}

/// Body of a legal hold or its release.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldBody {
    /// The subject's own identifier.
    #[schema(min_length = 1, max_length = 256)]
    subject: String,
    /// Placing: the case reference (litigation, investigation, regulator's request). Chained
    /// in plaintext and kept for ever: no personal data. Ignored when releasing (the hold's
    /// own reference is recorded).
    #[schema(min_length = 1, max_length = 200)]
    reference: Option<String>,
    /// Why, e.g. `GDPR Art. 17(3)(e)`. Chained in plaintext: no personal data.
    #[schema(min_length = 1, max_length = 1000)]
    reason: String,
}

/// A legal hold placed or released.
#[derive(Serialize, ToSchema)]
pub struct HoldOut {
    /// The subject's handle.
    subject_handle: String,
    /// Seq of the `LegalHoldPlaced` entry.
    hold_seq: u64,
    /// The hold's case reference.
    reference: String,
    /// Seq of the `LegalHoldReleased` entry, when released.
    release_seq: Option<u64>,
}

/// Put a subject under a legal hold: its erasure is refused (409) until the hold is released.
#[utoipa::path(
    post, path = "/v1/subjects/hold", tag = "subjects", operation_id = "place_hold",
    request_body = HoldBody,
    responses(
        (status = 201, description = "Placed", body = HoldOut),
        (status = 404, description = "Unknown subject", content_type = "application/problem+json"),
        (status = 409, description = "Already under hold", content_type = "application/problem+json"),
    )
)]
pub async fn hold(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<HoldOut>), ApiError> {
    change_hold(state, caller, body, true)
        .await
        .map(|out| (StatusCode::CREATED, out))
}

/// Release a subject's legal hold.
#[utoipa::path(
    post, path = "/v1/subjects/release", tag = "subjects", operation_id = "release_hold",
    request_body = HoldBody,
    responses(
        (status = 200, description = "Released", body = HoldOut),
        (status = 404, description = "Unknown subject", content_type = "application/problem+json"),
        (status = 409, description = "Not under hold", content_type = "application/problem+json"),
    )
)]
pub async fn release(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> Result<Json<HoldOut>, ApiError> {
    change_hold(state, caller, body, false).await
}

async fn change_hold(
    state: AppState,
    caller: Caller,
    body: axum::body::Bytes,
    place: bool,
) -> Result<Json<HoldOut>, ApiError> {
    let parsed: HoldBody = json::parse(&body)?;
    let subject = Zeroizing::new(parsed.subject);
    json::check_text("subject", &subject, MAX_SUBJECT_BYTES)?;
    json::check_text("reason", &parsed.reason, MAX_REASON_BYTES)?;
    let reference = match (place, parsed.reference) {
        (true, None) => {
            return Err(ApiError::Invalid(
                "reference: a hold needs its case reference".to_owned(),
            ));
        }
        (_, Some(r)) => {
            json::check_text("reference", &r, MAX_REQUEST_REF_BYTES)?;
            r
        }
        (false, None) => String::new(),
    };
    refuse_identifier_in(
        &subject,
        &[("reason", &parsed.reason), ("reference", &reference)],
    )?;
    let result = state
        .0
        .ledger
        .hold(HoldRequest {
            subject,
            reference,
            reason: parsed.reason,
            actor: caller.actor(),
            place,
        })
        .await;
    let action = if place {
        AccessAction::PlaceHold
    } else {
        AccessAction::ReleaseHold
    };
    let (outcome, handle, target, reference) = match &result {
        Ok(d) => (
            AccessOutcome::Ok,
            Some(d.subject),
            Some(d.seq.0),
            Some(d.reference.clone()),
        ),
        Err(HoldError::UnknownSubject) => (AccessOutcome::NotFound, None, None, None),
        Err(HoldError::AlreadyHeld(h, row)) => (
            AccessOutcome::Refused,
            Some(*h),
            Some(row.hold_seq.0),
            Some(row.reference.clone()),
        ),
        Err(HoldError::NotHeld(h)) => (AccessOutcome::Refused, Some(*h), None, None),
        Err(HoldError::Unavailable | HoldError::ShuttingDown) => {
            (AccessOutcome::Failed, None, None, None)
        }
    };
    if outcome != AccessOutcome::Failed {
        let mut record = audited::about(&caller, action, outcome, handle);
        record.target = target.map(|s| s.to_string());
        record.reference = reference;
        audited::record_entry(&state, record, &BTreeSet::new()).await?;
    }
    match result {
        Ok(d) => Ok(Json(HoldOut {
            subject_handle: d.subject.to_hex(),
            hold_seq: d.hold_seq.0,
            reference: d.reference,
            release_seq: (!place).then_some(d.seq.0),
        })),
        Err(HoldError::UnknownSubject) => Err(unknown_subject()),
        Err(HoldError::AlreadyHeld(_, row)) => Err(ApiError::Conflict(format!(
            "the subject is already under a legal hold (reference {}, placed by the entry at seq {})",
            row.reference, row.hold_seq
        ))),
        Err(HoldError::NotHeld(_)) => Err(ApiError::Conflict(
            "the subject is not under a legal hold".to_owned(),
        )),
        Err(HoldError::Unavailable) => Err(ApiError::Unavailable(
            "the hold could not be committed; nothing was changed, retry".to_owned(),
        )),
        Err(HoldError::ShuttingDown) => Err(ApiError::Unavailable(
            "the service is shutting down; retry".to_owned(),
        )),
    }
}

/// Export every event of a subject, decrypted (subject access request).
#[utoipa::path(
    post, path = "/v1/subjects/export", tag = "subjects", operation_id = "export_subject",
    request_body = ExportBody,
    responses(
        (status = 200, description = "The subject's events", body = SubjectExport),
        (status = 404, description = "Unknown subject", content_type = "application/problem+json"),
    )
)]
pub async fn export(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> Result<Json<SubjectExport>, ApiError> {
    let parsed: ExportBody = json::parse(&body)?;
    let subject = Zeroizing::new(parsed.subject);
    json::check_text("subject", &subject, MAX_SUBJECT_BYTES)?;
    let limit = parsed.limit.map_or(MAX_READ_LIMIT, |c| c.0);
    if limit == 0 || limit > MAX_READ_LIMIT {
        return Err(ApiError::Invalid(format!(
            "limit must be between 1 and {MAX_READ_LIMIT}"
        )));
    }
    let Some((handle, events)) = state
        .0
        .ledger
        .export_subject(&subject, Seq(parsed.from_seq.0), limit)
        .await?
    else {
        let record = audited::about(
            &caller,
            AccessAction::ExportSubject,
            AccessOutcome::NotFound,
            None,
        );
        audited::record_entry(&state, record, &BTreeSet::new()).await?;
        return Err(unknown_subject());
    };
    let disclosed = audited::disclosure(&events);
    let mut record = audited::about(
        &caller,
        AccessAction::ExportSubject,
        AccessOutcome::Ok,
        Some(handle),
    );
    record.range = disclosed.range;
    record.events = disclosed.events;
    audited::record_entry(&state, record, &disclosed.subjects).await?;
    let next_from_seq = (events.len() == limit as usize)
        .then(|| events.last().map(|e| e.record.entry.header.seq.0 + 1))
        .flatten();
    Ok(Json(SubjectExport {
        subject_handle: handle.to_hex(),
        events: events.into_iter().map(EventOut::from).collect(),
        next_from_seq,
    }))
}
