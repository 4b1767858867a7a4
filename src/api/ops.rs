//! Operations endpoints and the published signing keys.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::ApiError;

/// Liveness and readiness.
#[derive(Serialize, ToSchema)]
pub struct Status {
    /// `ok` or `ready`.
    status: &'static str,
}

/// Operational metrics in the Prometheus text format (see `telemetry` for each metric).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::telemetry::render(),
    )
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Status)))]
pub async fn healthz() -> Json<Status> {
    Json(Status { status: "ok" })
}

/// Readiness: the database answers, the writer takes appends, and the last write succeeded
/// (after a failed write, the service retries a small write every second and is ready again
/// once one commits).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Status),
        (status = 503, description = "Not ready", content_type = "application/problem+json"),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Status>, ApiError> {
    if !state.0.ledger.is_writable() {
        return Err(ApiError::Unavailable(
            "the writer is not running".to_owned(),
        ));
    }
    if let Some(reason) = state.0.ledger.write_failure() {
        return Err(ApiError::Unavailable(format!(
            "the service cannot write: {reason}; it retries every second"
        )));
    }
    state
        .0
        .ledger
        .store()
        .ping()
        .await
        .map_err(|_| ApiError::Unavailable("the database does not answer".to_owned()))?;
    Ok(Json(Status { status: "ready" }))
}

/// A public signing key and the range of entries it signed.
#[derive(Serialize, ToSchema)]
pub struct KeyOut {
    /// Key id: first 8 bytes of SHA-256("auditledger/key-id/v1\0" || public key), hex.
    key_id: String,
    /// Always `ed25519`.
    algorithm: &'static str,
    /// 32-byte public key, hex.
    public_key: String,
    /// First seq it signed, or null if it has signed nothing yet.
    first_seq: Option<u64>,
    /// Last seq it signed (for the active key, the current head), or null.
    last_seq: Option<u64>,
    /// Whether this key signs new entries.
    active: bool,
}

/// The published keys.
#[derive(Serialize, ToSchema)]
pub struct KeysOut {
    /// Keys in the order they became active.
    keys: Vec<KeyOut>,
}

/// Public signing keys with their validity ranges.
#[utoipa::path(get, path = "/v1/keys", tag = "keys",
    responses((status = 200, description = "Signing keys", body = KeysOut)))]
pub async fn keys(State(state): State<AppState>) -> Result<Json<KeysOut>, ApiError> {
    let ledger = &state.0.ledger;
    let active_id = ledger.signing_key().key.key_id().to_hex();
    let keys = crate::export::key_lines(ledger.store().as_ref())
        .await?
        .into_iter()
        .map(|k| KeyOut {
            active: k.key_id == active_id,
            key_id: k.key_id,
            algorithm: "ed25519",
            public_key: k.public_key,
            first_seq: k.first_seq,
            last_seq: k.last_seq,
        })
        .collect();
    Ok(Json(KeysOut { keys }))
}
