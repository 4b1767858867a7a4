//! Lookups served from the read models (`crate::projections`), which trail the log by at most
//! their lag (`auditledger_projection_lag_entries`): the stream catalogue and event counts by
//! type and day.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::ApiError;
use crate::store::projections::CatalogueRow;

/// Query of the catalogue.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CatalogueQuery {
    /// Only streams whose id starts with this.
    #[param(max_length = 128)]
    prefix: Option<String>,
    /// Streams after this id (the previous page's `next_after`).
    #[param(max_length = 128)]
    after: Option<String>,
    /// Most streams, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// A page of the catalogue.
#[derive(Serialize, ToSchema)]
pub struct CataloguePage {
    /// Streams in id order.
    streams: Vec<CatalogueRow>,
    /// `after` for the next page, or null at the end.
    next_after: Option<String>,
    /// The read models count every entry below this seq.
    position: u64,
}

/// Query of the counts.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CountsQuery {
    /// First day, `YYYY-MM-DD` (UTC; default the first).
    #[param(pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    from: Option<String>,
    /// Last day, inclusive (default the last).
    #[param(pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    to: Option<String>,
}

/// Events of one type on one day.
#[derive(Serialize, ToSchema)]
pub struct DayCount {
    /// The event type.
    #[serde(rename = "type")]
    event_type: String,
    /// The UTC day.
    day: String,
    /// How many.
    events: u64,
}

/// Counts by type and day.
#[derive(Serialize, ToSchema)]
pub struct Counts {
    /// By day, then type.
    counts: Vec<DayCount>,
    /// The read models count every entry below this seq.
    position: u64,
}

fn check_day(name: &str, d: &str) -> Result<(), ApiError> {
    let ok = d.len() == 10
        && d.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "{name} must be a day, YYYY-MM-DD"
        )))
    }
}

/// The stream catalogue.
#[utoipa::path(
    get, path = "/v1/streams", tag = "events",
    params(CatalogueQuery),
    responses(
        (status = 200, description = "Streams with their event counts and last positions", body = CataloguePage),
        (status = 400, description = "Bad parameter", content_type = "application/problem+json"),
    )
)]
pub async fn catalogue(
    State(state): State<AppState>,
    query: Result<Query<CatalogueQuery>, QueryRejection>,
) -> Result<Json<CataloguePage>, ApiError> {
    let Query(q) = query?;
    let limit = super::events::check_limit(q.limit)?;
    let prefix = q.prefix.unwrap_or_default();
    let after = q.after.unwrap_or_default();
    if prefix.len() > 128 || after.len() > 128 {
        return Err(ApiError::BadRequest(
            "prefix and after are at most 128 characters".to_owned(),
        ));
    }
    let store = state.0.ledger.store();
    let position = store
        .projection_position()
        .await
        .map_err(crate::ledger::ReadError::from)?;
    let streams = store
        .catalogue(&prefix, &after, i64::from(limit))
        .await
        .map_err(crate::ledger::ReadError::from)?;
    let next_after = (streams.len() == limit as usize)
        .then(|| streams.last().map(|s| s.stream_id.clone()))
        .flatten();
    Ok(Json(CataloguePage {
        streams,
        next_after,
        position,
    }))
}

/// Event counts by type and day.
#[utoipa::path(
    get, path = "/v1/stats/events", tag = "events",
    params(CountsQuery),
    responses(
        (status = 200, description = "Counts by UTC day and event type", body = Counts),
        (status = 400, description = "Bad parameter", content_type = "application/problem+json"),
    )
)]
pub async fn counts(
    State(state): State<AppState>,
    query: Result<Query<CountsQuery>, QueryRejection>,
) -> Result<Json<Counts>, ApiError> {
    let Query(q) = query?;
    let from = q.from.unwrap_or_else(|| "0000-00-00".to_owned());
    let to = q.to.unwrap_or_else(|| "9999-99-99".to_owned());
    check_day("from", &from)?;
    check_day("to", &to)?;
    let store = state.0.ledger.store();
    let position = store
        .projection_position()
        .await
        .map_err(crate::ledger::ReadError::from)?;
    let counts = store
        .type_day_counts(&from, &to)
        .await
        .map_err(crate::ledger::ReadError::from)?
        .into_iter()
        .map(|(event_type, day, events)| DayCount {
            event_type,
            day,
            events,
        })
        .collect();
    Ok(Json(Counts { counts, position }))
}
