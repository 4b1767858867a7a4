//! Data subjects: erasure (GDPR Art. 17) and access (Art. 15). The identifier travels only in
//! request bodies, never in a URL, so no access log or proxy keeps it.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use zeroize::Zeroizing;

use super::AppState;
use super::error::ApiError;
use super::events::{EventOut, MAX_READ_LIMIT, MAX_SUBJECT_BYTES};
use super::json;
use crate::checkpoint::CheckpointJson;
use crate::entry::Seq;
use crate::identifiers::Identifiers;
use crate::ledger::{EraseError, EraseRequest};
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
    subject: String,
    /// Why, e.g. `GDPR Art. 17(1)(a)`. Chained in plaintext and kept for ever: no personal data;
    /// refused (422) if it contains the identifier in any case, width or accent.
    reason: String,
    /// Your reference for the request (ticket number). Chained in plaintext and kept for ever:
    /// no personal data; refused (422) if it contains the identifier.
    request_ref: String,
}

/// Body of a subject access request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportBody {
    /// The subject's own identifier.
    subject: String,
    /// First seq to return (default 0).
    #[serde(default)]
    from_seq: u64,
    /// Most events to return, 1 to 1000 (default 1000).
    #[serde(default)]
    limit: Option<u32>,
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
        "no subject with this identifier is known: it was never named in an event, or it was erased"
            .to_owned(),
    )
}

/// Erase a subject by destroying its data key (crypto-shredding).
#[utoipa::path(
    post, path = "/v1/subjects/erase", tag = "subjects",
    request_body = EraseBody,
    responses(
        (status = 200, description = "Erased (or erased before: the first receipt)", body = ReceiptOut),
        (status = 404, description = "Unknown subject", content_type = "application/problem+json"),
        (status = 422, description = "Invalid request, or the identifier in reason or request_ref \
            (the reply names the field, never its content)", content_type = "application/problem+json"),
    )
)]
pub async fn erase(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ReceiptOut>, ApiError> {
    let body = json::body(body, state.0.limits.max_request_bytes)?;
    let parsed: EraseBody = json::parse(&body)?;
    let subject = Zeroizing::new(parsed.subject);
    json::check_text("subject", &subject, MAX_SUBJECT_BYTES)?;
    json::check_text("reason", &parsed.reason, MAX_REASON_BYTES)?;
    json::check_text("request_ref", &parsed.request_ref, MAX_REQUEST_REF_BYTES)?;
    // Any identifier is accepted here, however short (one appended before the length rule
    // must stay erasable), and every one is checked: reason and reference are chained in
    // plaintext and kept for ever. The reply names the field, never its content.
    let identifier = Identifiers::new([subject.as_str()]);
    for (field, text) in [
        ("reason", &parsed.reason),
        ("request_ref", &parsed.request_ref),
    ] {
        if identifier.appear_in(text) {
            return Err(ApiError::Invalid(format!(
                "{field} contains the subject identifier (compared without regard to case, \
                 width or accents): it is chained in plaintext and kept for ever"
            )));
        }
    }
    let request = EraseRequest {
        subject,
        reason: parsed.reason,
        request_ref: parsed.request_ref,
    };
    match state.0.ledger.erase(request).await {
        Ok(receipt) => Ok(Json(receipt.into())),
        Err(EraseError::UnknownSubject) => Err(unknown_subject()),
        Err(EraseError::Unavailable) => Err(ApiError::Unavailable(
            "the erasure could not be committed; nothing was changed, retry".to_owned(),
        )),
        Err(EraseError::ShuttingDown) => Err(ApiError::Unavailable(
            "the service is shutting down; retry".to_owned(),
        )),
    }
}

/// Export every event of a subject, decrypted (subject access request).
#[utoipa::path(
    post, path = "/v1/subjects/export", tag = "subjects",
    request_body = ExportBody,
    responses(
        (status = 200, description = "The subject's events", body = SubjectExport),
        (status = 404, description = "Unknown subject", content_type = "application/problem+json"),
    )
)]
pub async fn export(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SubjectExport>, ApiError> {
    let body = json::body(body, state.0.limits.max_request_bytes)?;
    let parsed: ExportBody = json::parse(&body)?;
    let subject = Zeroizing::new(parsed.subject);
    json::check_text("subject", &subject, MAX_SUBJECT_BYTES)?;
    let limit = parsed.limit.unwrap_or(MAX_READ_LIMIT);
    if limit == 0 || limit > MAX_READ_LIMIT {
        return Err(ApiError::Invalid(format!(
            "limit must be between 1 and {MAX_READ_LIMIT}"
        )));
    }
    let Some((handle, events)) = state
        .0
        .ledger
        .export_subject(&subject, Seq(parsed.from_seq), limit)
        .await?
    else {
        return Err(unknown_subject());
    };
    let next_from_seq = (events.len() == limit as usize)
        .then(|| events.last().map(|e| e.record.entry.header.seq.0 + 1))
        .flatten();
    Ok(Json(SubjectExport {
        subject_handle: handle.to_hex(),
        events: events.into_iter().map(EventOut::from).collect(),
        next_from_seq,
    }))
}
