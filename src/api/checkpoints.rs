//! Checkpoints (signed tree heads) and Merkle proofs.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::ApiError;
use super::params::Position;
use crate::checkpoint::CheckpointJson;
use crate::entry::Seq;
use crate::ledger::ProofRequestError;
use crate::merkle::MerkleHash;

/// Most checkpoints in one page.
pub const MAX_CHECKPOINT_PAGE: u32 = 1000;

impl From<ProofRequestError> for ApiError {
    fn from(e: ProofRequestError) -> ApiError {
        match e {
            ProofRequestError::Invalid(m) => ApiError::BadRequest(m),
            ProofRequestError::NotFound(m) => ApiError::NotFound(m),
            ProofRequestError::Store(s) => s.into(),
        }
    }
}

/// The newest checkpoint.
#[utoipa::path(get, path = "/v1/checkpoints/latest", tag = "checkpoints",
    responses(
        (status = 200, description = "The newest signed tree head", body = CheckpointJson),
        (status = 404, description = "No checkpoint yet", content_type = "application/problem+json"),
    ))]
pub async fn latest(State(state): State<AppState>) -> Result<Json<CheckpointJson>, ApiError> {
    state
        .0
        .ledger
        .store()
        .latest_checkpoint()
        .await?
        .map(|c| Json(c.to_json()))
        .ok_or_else(|| ApiError::NotFound("no checkpoint has been made yet".to_owned()))
}

/// Make a checkpoint of the current head now (or return the newest, if the log has not grown).
#[utoipa::path(post, path = "/v1/checkpoints", tag = "checkpoints",
    responses(
        (status = 200, description = "A checkpoint covering every entry committed so far", body = CheckpointJson),
        (status = 404, description = "The ledger is empty", content_type = "application/problem+json"),
    ))]
pub async fn create(State(state): State<AppState>) -> Result<Json<CheckpointJson>, ApiError> {
    state
        .0
        .ledger
        .checkpoint()
        .await?
        .map(|c| Json(c.to_json()))
        .ok_or_else(|| ApiError::NotFound("the ledger is empty: nothing to checkpoint".to_owned()))
}

/// Query of the checkpoint list.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Smallest tree size to return (default 0).
    from: Option<Position>,
    /// Most checkpoints to return, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// A page of checkpoints.
#[derive(Serialize, ToSchema)]
pub struct CheckpointPage {
    /// Oldest first.
    checkpoints: Vec<CheckpointJson>,
    /// `from` for the next page, or null at the end.
    next_from: Option<u64>,
}

/// Checkpoints by tree size.
#[utoipa::path(get, path = "/v1/checkpoints", tag = "checkpoints", params(ListQuery),
    responses((status = 200, description = "Checkpoints, oldest first", body = CheckpointPage)))]
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<CheckpointPage>, ApiError> {
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_CHECKPOINT_PAGE {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_CHECKPOINT_PAGE}"
        )));
    }
    let cps = state
        .0
        .ledger
        .store()
        .checkpoints(q.from.map_or(0, |p| p.0), u64::MAX >> 1, limit)
        .await?;
    let next_from = (cps.len() == limit as usize)
        .then(|| cps.last().map(|c| c.tree_size + 1))
        .flatten();
    Ok(Json(CheckpointPage {
        checkpoints: cps
            .iter()
            .map(crate::checkpoint::Checkpoint::to_json)
            .collect(),
        next_from,
    }))
}

/// Query of an inclusion proof.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InclusionQuery {
    /// The entry to prove.
    seq: Position,
    /// Tree size to prove against (default: the current size).
    tree_size: Option<Position>,
}

/// An inclusion proof.
#[derive(Serialize, ToSchema)]
pub struct InclusionOut {
    /// The entry.
    seq: u64,
    /// Tree size proven against.
    tree_size: u64,
    /// The entry's hash: the leaf bytes.
    entry_hash: String,
    /// SHA-256(0x00 || entry_hash).
    leaf_hash: String,
    /// Root of the tree of `tree_size` entries.
    root_hash: String,
    /// Audit path, bottom-up, hex.
    proof: Vec<String>,
}

fn hexes(v: &[MerkleHash]) -> Vec<String> {
    v.iter().map(MerkleHash::to_hex).collect()
}

/// Prove that an entry is in the tree of a given size.
#[utoipa::path(get, path = "/v1/proofs/inclusion", tag = "checkpoints", params(InclusionQuery),
    responses(
        (status = 200, description = "Inclusion proof (RFC 6962 §2.1.1)", body = InclusionOut),
        (status = 400, description = "seq not below tree_size", content_type = "application/problem+json"),
        (status = 404, description = "No such seq or size", content_type = "application/problem+json"),
    ))]
pub async fn inclusion(
    State(state): State<AppState>,
    query: Result<Query<InclusionQuery>, QueryRejection>,
) -> Result<Json<InclusionOut>, ApiError> {
    let Query(q) = query?;
    let p = state
        .0
        .ledger
        .inclusion_proof(Seq(q.seq.0), q.tree_size.map(|p| p.0))
        .await?;
    Ok(Json(InclusionOut {
        seq: p.seq.0,
        tree_size: p.tree_size,
        entry_hash: p.entry_hash.to_hex(),
        leaf_hash: p.leaf_hash.to_hex(),
        root_hash: p.root_hash.to_hex(),
        proof: hexes(&p.proof),
    }))
}

/// Query of a consistency proof.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    /// Older tree size (at least 1).
    #[param(schema_with = crate::api::params::size_schema)]
    from_size: Position,
    /// Newer tree size.
    to_size: Position,
}

/// A consistency proof.
#[derive(Serialize, ToSchema)]
pub struct ConsistencyOut {
    /// Older size.
    from_size: u64,
    /// Newer size.
    to_size: u64,
    /// Root at the older size.
    from_root: String,
    /// Root at the newer size.
    to_root: String,
    /// The proof, RFC 6962 order, hex.
    proof: Vec<String>,
}

/// Prove that the tree of one size is a prefix of the tree of a larger size.
#[utoipa::path(get, path = "/v1/proofs/consistency", tag = "checkpoints", params(ConsistencyQuery),
    responses(
        (status = 200, description = "Consistency proof (RFC 6962 §2.1.2)", body = ConsistencyOut),
        (status = 400, description = "Invalid sizes", content_type = "application/problem+json"),
        (status = 404, description = "No such size", content_type = "application/problem+json"),
    ))]
pub async fn consistency(
    State(state): State<AppState>,
    query: Result<Query<ConsistencyQuery>, QueryRejection>,
) -> Result<Json<ConsistencyOut>, ApiError> {
    let Query(q) = query?;
    let p = state
        .0
        .ledger
        .consistency_proof(q.from_size.0, q.to_size.0)
        .await?;
    Ok(Json(ConsistencyOut {
        from_size: p.from_size,
        to_size: p.to_size,
        from_root: p.from_root.to_hex(),
        to_root: p.to_root.to_hex(),
        proof: hexes(&p.proof),
    }))
}
