//! Admin endpoints: tokens (`/v1/tokens`), retention policies (`/v1/policies`) and signing-key
//! rotation (`/v1/keys/rotate`). Every change is in the ledger: a token change as an access
//! entry (appended before the answer), a policy as its own entry, a rotation as the rotation
//! entry plus an access entry naming who asked.

use std::collections::BTreeSet;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::audited;
use super::auth::Caller;
use super::error::ApiError;
use super::json::{self, JsonBody};
use crate::access::RetentionPolicy;
use crate::access::record::{AccessAction, AccessOutcome, POLICIES_STREAM};
use crate::entry::{EventType, StreamId};
use crate::timefmt::now_micros;
use crate::tokens::{TokenSpec, TokenView};

/// Body of `POST /v1/tokens`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    /// One or more of writer, reader, auditor, privacy_officer, admin.
    #[schema(min_items = 1)]
    roles: Vec<String>,
    /// A name for people (no personal data).
    #[schema(max_length = 128)]
    name: Option<String>,
    /// Lifetime such as `90d`, `12h`, `1y`; absent: until revoked.
    expires: Option<String>,
    /// Stream-id prefixes the token is limited to; absent or empty: every stream.
    #[serde(default)]
    stream_prefixes: Vec<String>,
}

/// A new token: the only time it is shown.
#[derive(Serialize, ToSchema)]
pub struct NewTokenOut {
    /// The bearer token. Shown once: only its hash is kept.
    token: String,
    /// What is stored about it.
    #[serde(flatten)]
    view: TokenView,
}

/// Tokens.
#[derive(Serialize, ToSchema)]
pub struct TokenList {
    /// Newest first; never a secret.
    tokens: Vec<TokenView>,
}

/// Record the token changes not yet in the ledger; the request fails if that fails.
async fn record_token_changes(state: &AppState) -> Result<(), ApiError> {
    if !state.0.access_entries {
        return Ok(());
    }
    state
        .0
        .ledger
        .record_token_changes()
        .await
        .map(|_| ())
        .map_err(|e| {
            tracing::error!(error = %e, "a token change could not be recorded in the ledger");
            ApiError::Unavailable(
                "the token change is made but not yet recorded in the ledger; the service retries \
             every second"
                    .to_owned(),
            )
        })
}

/// List tokens.
#[utoipa::path(get, path = "/v1/tokens", tag = "admin", operation_id = "list_tokens",
    responses((status = 200, description = "Tokens", body = TokenList)))]
pub async fn list_tokens(State(state): State<AppState>) -> Result<Json<TokenList>, ApiError> {
    let now = now_micros();
    let rows = state.0.ledger.store().tokens().await?;
    Ok(Json(TokenList {
        tokens: rows.iter().map(|r| TokenView::of(r, now)).collect(),
    }))
}

/// Create a token; the answer holds it, once.
#[utoipa::path(post, path = "/v1/tokens", tag = "admin", operation_id = "create_token",
    request_body = TokenBody,
    responses((status = 201, description = "Created", body = NewTokenOut)))]
pub async fn create_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<NewTokenOut>), ApiError> {
    let parsed: TokenBody = json::parse(&body)?;
    let spec = TokenSpec::parse(
        parsed.name.as_deref(),
        &parsed.roles,
        &parsed.stream_prefixes,
        parsed.expires.as_deref(),
    )
    .map_err(ApiError::Invalid)?;
    let (issued, row) =
        crate::tokens::create(state.0.ledger.store().as_ref(), &spec, &caller.token_id).await?;
    record_token_changes(&state).await?;
    Ok((
        StatusCode::CREATED,
        Json(NewTokenOut {
            token: issued.token.as_str().to_owned(),
            view: TokenView::of(&row, now_micros()),
        }),
    ))
}

/// Revoke a token: every instance refuses it from the next request on.
#[utoipa::path(post, path = "/v1/tokens/{token_id}/revoke", tag = "admin", operation_id = "revoke_token",
    params(("token_id" = String, Path, description = "The token's id (16 hex digits)")),
    responses(
        (status = 200, description = "Revoked", body = TokenView),
        (status = 404, description = "No active token with this id", content_type = "application/problem+json"),
    ))]
pub async fn revoke_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<TokenView>, ApiError> {
    let Path(id) = path?;
    if crate::access::token::TokenId::parse(&id).is_none() {
        return Err(ApiError::BadRequest(
            "token_id: 16 lowercase hex digits".to_owned(),
        ));
    }
    let store = state.0.ledger.store();
    if !store
        .revoke_token(&id, &caller.token_id, now_micros())
        .await?
    {
        return Err(ApiError::NotFound("no active token has this id".to_owned()));
    }
    record_token_changes(&state).await?;
    let row = store
        .token(&id)
        .await?
        .ok_or_else(|| ApiError::Internal("a revoked token vanished".to_owned()))?;
    Ok(Json(TokenView::of(&row, now_micros())))
}

/// Body of `PUT /v1/policies/{event_type}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    /// How long events of the type are to be kept, in days (e.g. 2190 for HIPAA's six years,
    /// 365 for PCI DSS's twelve months).
    #[schema(minimum = 1, maximum = 36500)]
    retention_days: u32,
    /// Why events of the type are processed (GDPR Art. 30(1)(b)). No personal data.
    #[schema(min_length = 1, max_length = 1000)]
    purpose: String,
    /// Legal basis, e.g. `GDPR Art. 6(1)(c)`.
    #[schema(max_length = 200)]
    legal_basis: Option<String>,
    /// Categories of personal data in the events, e.g. `name, card number`.
    #[schema(max_length = 1000)]
    data_categories: Option<String>,
}

/// A retention policy.
#[derive(Serialize, ToSchema)]
pub struct PolicyOut {
    /// The event type.
    event_type: String,
    /// Days.
    retention_days: u32,
    /// Purpose.
    purpose: String,
    /// Legal basis.
    legal_basis: Option<String>,
    /// Categories of personal data.
    data_categories: Option<String>,
    /// Token id of the admin who set it, or `cli`.
    set_by: String,
    /// Seq of the entry that records it.
    seq: u64,
    /// When, RFC 3339.
    set_at: String,
}

/// The policies in force.
#[derive(Serialize, ToSchema)]
pub struct PolicyList {
    /// One per event type: the latest set.
    policies: Vec<PolicyOut>,
}

/// Set the retention policy and declared purpose of an event type. Recorded as a ledger entry;
/// nothing is ever deleted because of it.
#[utoipa::path(put, path = "/v1/policies/{event_type}", tag = "admin", operation_id = "set_policy",
    params(("event_type" = String, Path, description = "The event type")),
    request_body = PolicyBody,
    responses((status = 200, description = "Set", body = PolicyOut)))]
pub async fn set_policy(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody,
) -> Result<Json<PolicyOut>, ApiError> {
    let Path(event_type) = path?;
    EventType::parse(&event_type).map_err(|e| ApiError::BadRequest(format!("event_type {e}")))?;
    let parsed: PolicyBody = json::parse(&body)?;
    if !(1..=36_500).contains(&parsed.retention_days) {
        return Err(ApiError::Invalid(
            "retention_days must be between 1 and 36500".to_owned(),
        ));
    }
    json::check_text("purpose", &parsed.purpose, 1000)?;
    if let Some(b) = &parsed.legal_basis {
        json::check_text("legal_basis", b, 200)?;
    }
    if let Some(c) = &parsed.data_categories {
        json::check_text("data_categories", c, 1000)?;
    }
    let policy = RetentionPolicy {
        event_type,
        retention_days: parsed.retention_days,
        purpose: parsed.purpose,
        legal_basis: parsed.legal_basis,
        data_categories: parsed.data_categories,
        actor: caller.actor(),
    };
    let seq = state.0.ledger.set_retention_policy(&policy).await?;
    Ok(Json(policy_out(policy, seq.0, now_micros())))
}

fn policy_out(p: RetentionPolicy, seq: u64, at: i64) -> PolicyOut {
    PolicyOut {
        event_type: p.event_type,
        retention_days: p.retention_days,
        purpose: p.purpose,
        legal_basis: p.legal_basis,
        data_categories: p.data_categories,
        set_by: p.actor.token_id,
        seq,
        set_at: crate::timefmt::format_micros(at),
    }
}

/// The policies in force, read from their entries.
pub async fn current_policies(
    state: &AppState,
) -> Result<Vec<(RetentionPolicy, u64, i64)>, ApiError> {
    let stream = StreamId::parse(POLICIES_STREAM).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut latest = std::collections::BTreeMap::new();
    let mut from = 0;
    loop {
        let rows = state
            .0
            .ledger
            .store()
            .read_stream(&stream, from, 1000)
            .await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            let record = row
                .into_record()
                .map_err(|m| ApiError::Integrity { seq: m.seq.0 })?;
            let h = record.entry.header;
            from = h.stream_version + 1;
            if let Some(p) = RetentionPolicy::from_metadata(&h.metadata) {
                latest.insert(p.event_type.clone(), (p, h.seq.0, h.recorded_at_micros));
            }
        }
    }
    Ok(latest.into_values().collect())
}

/// The retention policies in force, one per event type.
#[utoipa::path(get, path = "/v1/policies", tag = "admin", operation_id = "list_policies",
    responses((status = 200, description = "Policies", body = PolicyList)))]
pub async fn list_policies(State(state): State<AppState>) -> Result<Json<PolicyList>, ApiError> {
    let policies = current_policies(&state).await?;
    Ok(Json(PolicyList {
        policies: policies
            .into_iter()
            .map(|(p, seq, at)| policy_out(p, seq, at))
            .collect(),
    }))
}

/// A signing-key rotation.
#[derive(Serialize, ToSchema)]
pub struct RotationOut {
    /// Seq of the rotation entry.
    rotation_seq: u64,
    /// The new key's id.
    key_id: String,
}

/// Rotate the signing key: a new key is made in the keys directory and handed over to in the
/// chain (the same as `auditledger rotate-signing-key`).
#[utoipa::path(post, path = "/v1/keys/rotate", tag = "admin", operation_id = "rotate_signing_key",
    responses((status = 200, description = "Rotated", body = RotationOut)))]
pub async fn rotate_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<RotationOut>, ApiError> {
    let Some(dir) = state.0.keys_dir.clone() else {
        return Err(ApiError::Unavailable(
            "this service has no keys directory to rotate in".to_owned(),
        ));
    };
    let next = tokio::task::spawn_blocking(move || crate::keyfiles::prepare_next_signing_key(&dir))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(format!("cannot write the new signing key: {e}")))?;
    let key_id = next.key_id().to_hex();
    let result = state.0.ledger.rotate_signing_key(next).await;
    let outcome = if result.is_ok() {
        AccessOutcome::Ok
    } else {
        AccessOutcome::Failed
    };
    let mut record = audited::about(&caller, AccessAction::RotateSigningKey, outcome, None);
    record.target = Some(key_id.clone());
    audited::record_entry(&state, record, &BTreeSet::new()).await?;
    let seq = result?;
    Ok(Json(RotationOut {
        rotation_seq: seq.0,
        key_id,
    }))
}
