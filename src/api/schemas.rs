//! `PUT /v1/schemas/{event_type}` registers an event type's versions and upcast steps (admin);
//! `GET` reads them. Registrations are ledger entries (`auditledger:schemas`).

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::ApiError;
use super::json::{self, JsonBody};
use crate::entry::EventType;
use crate::ledger::{RegisterError, Types};
use crate::upcast::Registration;

/// An event type's registration.
#[derive(Serialize, ToSchema)]
pub struct SchemaView {
    /// The event type.
    event_type: String,
    /// Its latest version: what reads return unless `raw=true`.
    latest_version: u32,
    /// The versions, with their upcast steps and schemas, as registered.
    #[schema(value_type = Vec<Object>)]
    versions: serde_json::Value,
}

fn parse_type(raw: &str) -> Result<EventType, ApiError> {
    EventType::parse(raw).map_err(|e| ApiError::BadRequest(format!("event_type {e}")))
}

fn view(event_type: &str, r: &Registration) -> SchemaView {
    SchemaView {
        event_type: event_type.to_owned(),
        latest_version: r.latest(),
        versions: serde_json::to_value(&r.versions).unwrap_or_default(),
    }
}

/// Register an event type's versions and upcast steps.
#[utoipa::path(
    put, path = "/v1/schemas/{event_type}", tag = "admin",
    params(("event_type" = String, Path, pattern = "^[A-Za-z0-9_.:-]+$", min_length = 1, max_length = 128, description = "The event type")),
    request_body(content = Object, description = "`{\"versions\": [{\"version\": 1, \"schema\"?: {…}}, \
        {\"version\": 2, \"upcast\": [{\"rename\": {\"from\": \"amount\", \"to\": \"amount_cents\"}}], \
        \"schema\"?: {…}}]}`. Steps: `add` {field, value}, `rename` {from, to}, `remove` {field}, \
        `move` {from, to}, `map` {field, table, default?}; fields are dotted paths. A new \
        registration must keep every version already registered unchanged."),
    responses(
        (status = 200, description = "Registered (a ledger entry)", body = SchemaView),
        (status = 400, description = "Malformed request or event type", content_type = "application/problem+json"),
        (status = 409, description = "Another registration of the type was made meanwhile", content_type = "application/problem+json"),
        (status = 422, description = "Versions out of order, an unknown step, a bad path or \
            JSON Schema, or a registered version changed", content_type = "application/problem+json"),
    )
)]
pub async fn register_schema(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody,
) -> Result<Json<SchemaView>, ApiError> {
    let Path(raw) = path?;
    let event_type = parse_type(&raw)?;
    let registration: Registration = json::parse(&body)?;
    let (_, registered) = state
        .0
        .ledger
        .register_schema(&event_type, registration)
        .await
        .map_err(|e| match e {
            RegisterError::Bad(b) => ApiError::Invalid(b.to_string()),
            RegisterError::Conflict => ApiError::Conflict(e.to_string()),
            RegisterError::Read(r) => r.into(),
            RegisterError::Append(a) => a.into(),
        })?;
    Ok(Json(view(event_type.as_str(), &registered)))
}

/// Read an event type's registration.
#[utoipa::path(
    get, path = "/v1/schemas/{event_type}", tag = "admin",
    params(("event_type" = String, Path, pattern = "^[A-Za-z0-9_.:-]+$", min_length = 1, max_length = 128, description = "The event type")),
    responses(
        (status = 200, description = "The registration", body = SchemaView),
        (status = 400, description = "Malformed event type", content_type = "application/problem+json"),
        (status = 404, description = "Nothing registered for the type", content_type = "application/problem+json"),
    )
)]
pub async fn read_schema(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<SchemaView>, ApiError> {
    let Path(raw) = path?;
    let event_type = parse_type(&raw)?;
    let types: std::sync::Arc<Types> = state.0.ledger.schemas(false).await?;
    let r = types
        .get(event_type.as_str())
        .ok_or_else(|| ApiError::NotFound("nothing is registered for this type".to_owned()))?;
    Ok(Json(view(event_type.as_str(), &r.registration)))
}
