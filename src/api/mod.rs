//! The HTTP API (v1): one route table, one error policy, the OpenAPI document generated from
//! the handlers. Only this module knows HTTP.

pub mod admin;
pub mod audit;
pub mod audited;
pub mod auth;
pub mod checkpoints;
pub mod durable;
pub mod error;
pub mod events;
pub mod feed;
pub mod json;
pub mod models;
mod numbers;
pub mod openapi;
pub mod ops;
pub mod params;
pub mod reports;
pub mod schemas;
pub mod snapshots;
pub mod subjects;
pub mod subscribe;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use tower_http::trace::TraceLayer;

use crate::ledger::Ledger;
use error::ApiError;

/// Size limits on input.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest `data` of one event, serialized, in bytes.
    pub max_event_bytes: usize,
    /// Largest request body, in bytes.
    pub max_request_bytes: usize,
    /// How long a request body may take to arrive in full.
    pub body_timeout: std::time::Duration,
}

/// What every handler shares.
#[derive(Debug)]
pub struct App {
    /// The ledger.
    pub ledger: Ledger,
    /// Input limits.
    pub limits: Limits,
    /// Verification jobs.
    pub jobs: audit::Jobs,
    /// What the ledger is verified against: the keys and identity the keys directory records
    /// (as of start; see [`App::trust`]).
    pub trust: crate::audit::AuditTrust,
    /// The keys directory, re-read for each verification: a rotation (by this instance or
    /// another sharing the directory) retires a key there and names the new one.
    pub keys_dir: Option<std::path::PathBuf>,
    /// Whether `/v1` needs tokens.
    pub auth: auth::AuthMode,
    /// Whether audited requests append access entries (always, but for measuring their cost).
    pub access_entries: bool,
    /// When the append response says a snapshot is due.
    pub snapshot_intervals: crate::snapshot::Intervals,
    /// Subscribers' buffers and deadlines.
    pub subscriptions: crate::subscription::Limits,
    /// Live entries opened once for every subscriber of this process.
    pub feed: feed::Feed,
}

impl App {
    /// The keys and identity to verify against now: the keys directory as it is (after any
    /// rotation), never the database.
    ///
    /// # Errors
    /// The keys directory cannot be read.
    pub fn trust(&self) -> Result<crate::audit::AuditTrust, crate::keyfiles::KeyFileError> {
        let Some(dir) = &self.keys_dir else {
            return Ok(self.trust.clone());
        };
        Ok(crate::audit::AuditTrust {
            keys: crate::keyfiles::trusted_keys(dir)?,
            ledger_id: self.trust.ledger_id,
        })
    }
}

/// Handler state.
#[derive(Clone, Debug)]
pub struct AppState(pub Arc<App>);

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi::document())
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such resource".to_owned())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The route table.
pub fn router(state: AppState) -> Router {
    let body_limit = state.0.limits.max_request_bytes;
    Router::new()
        .route(
            "/v1/streams/{stream_id}/events",
            get(events::read_stream).post(events::append),
        )
        .route(
            "/v1/streams/{stream_id}/snapshots",
            put(snapshots::put_snapshot),
        )
        .route("/v1/streams/{stream_id}/load", get(snapshots::load_stream))
        .route("/v1/events", get(events::read_global))
        .route("/v1/subscribe", get(subscribe::subscribe))
        .route("/v1/streams", get(models::catalogue))
        .route("/v1/stats/events", get(models::counts))
        .route(
            "/v1/subscriptions/{name}",
            get(durable::read_subscription).put(durable::create_subscription),
        )
        .route(
            "/v1/subscriptions/{name}/poll",
            post(durable::poll_subscription),
        )
        .route(
            "/v1/subscriptions/{name}/ack",
            post(durable::ack_subscription),
        )
        .route(
            "/v1/schemas/{event_type}",
            get(schemas::read_schema).put(schemas::register_schema),
        )
        .route("/v1/subjects/erase", post(subjects::erase))
        .route("/v1/subjects/export", post(subjects::export))
        .route("/v1/subjects/hold", post(subjects::hold))
        .route("/v1/subjects/release", post(subjects::release))
        .route("/v1/subjects/erasures", get(subjects::erasures))
        .route(
            "/v1/subjects/erasures/{erasure_seq}",
            get(subjects::erasure),
        )
        .route("/v1/keys", get(ops::keys))
        .route("/v1/keys/rotate", post(admin::rotate_key))
        .route(
            "/v1/tokens",
            get(admin::list_tokens).post(admin::create_token),
        )
        .route("/v1/tokens/{token_id}/revoke", post(admin::revoke_token))
        .route("/v1/policies", get(admin::list_policies))
        .route(
            "/v1/policies/{event_type}",
            axum::routing::put(admin::set_policy),
        )
        .route("/v1/checkpoints/latest", get(checkpoints::latest))
        .route(
            "/v1/checkpoints",
            get(checkpoints::list).post(checkpoints::create),
        )
        .route("/v1/proofs/inclusion", get(checkpoints::inclusion))
        .route("/v1/proofs/consistency", get(checkpoints::consistency))
        .route("/v1/audit/verify", get(audit::verify))
        .route("/v1/audit/verify/jobs/{job_id}", get(audit::job))
        .route("/v1/export", get(audit::export))
        .route("/v1/audit/reports/{kind}", get(reports::report))
        .route(
            "/v1/audit/reports/signed/{sha256}",
            get(reports::signed_report),
        )
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
