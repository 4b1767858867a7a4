//! Auditor endpoints: server-side verification (a signed report; a job for large ranges) and
//! export bundles for the offline verifier.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::ApiError;
use super::params::Position;
use crate::audit::{AuditError, BeyondHead, Snapshot, verify_snapshot};
use crate::entry::Seq;
use crate::report::SignedReport;

/// Ranges up to this many entries are verified within the request; larger ones run as a job.
pub const SYNC_VERIFY_MAX_ENTRIES: u64 = 100_000;
/// Verification jobs that may run at once.
pub const MAX_RUNNING_JOBS: usize = 2;
/// Finished jobs kept for polling.
const MAX_KEPT_JOBS: usize = 100;

/// A verification job.
#[derive(Debug)]
pub struct Job {
    total: u64,
    checked: Arc<AtomicU64>,
    result: Mutex<Option<Result<SignedReport, String>>>,
}

/// Verification jobs, in memory (a restart forgets them; run the verification again).
#[derive(Debug, Default)]
pub struct Jobs(Mutex<HashMap<String, Arc<Job>>>);

impl Jobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Job>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn lock_result(job: &Job) -> std::sync::MutexGuard<'_, Option<Result<SignedReport, String>>> {
    job.result.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Query of a verification.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct VerifyQuery {
    /// First seq (default 0).
    from_seq: Option<Position>,
    /// Last seq, inclusive (default: the head when the run starts).
    to_seq: Option<Position>,
    /// Run as a job even if the range is small.
    #[serde(rename = "async")]
    run_async: Option<bool>,
}

/// A verification job's state.
#[derive(Serialize, ToSchema)]
pub struct JobOut {
    /// Job id.
    job_id: String,
    /// `running`, `done` or `failed` (could not run; `error` says why).
    status: &'static str,
    /// Entries verified so far.
    entries_checked: u64,
    /// Entries to verify.
    entries_total: u64,
    /// The signed report once done.
    report: Option<SignedReport>,
    /// Why the job could not run.
    error: Option<String>,
    /// Where to poll.
    poll: String,
}

fn job_out(id: &str, job: &Job) -> JobOut {
    let result = lock_result(job).clone();
    let (status, report, error) = match result {
        None => ("running", None, None),
        Some(Ok(r)) => ("done", Some(r), None),
        Some(Err(e)) => ("failed", None, Some(e)),
    };
    JobOut {
        job_id: id.to_owned(),
        status,
        entries_checked: job.checked.load(Ordering::Relaxed),
        entries_total: job.total,
        report,
        error,
        poll: format!("/v1/audit/verify/jobs/{id}"),
    }
}

/// `from_seq` (default 0) and `to_seq` (default: the head), in order.
fn seq_range(from: Option<u64>, to: Option<u64>) -> Result<(Seq, Option<Seq>), ApiError> {
    let from = Seq(from.unwrap_or(0));
    let to = to.map(Seq);
    if to.is_some_and(|t| t < from) {
        return Err(ApiError::BadRequest("to_seq is below from_seq".to_owned()));
    }
    Ok((from, to))
}

/// Signs a verification's report with the key that signs now, at a position inside its range.
fn sign(state: &AppState, outcome: crate::audit::Verification) -> SignedReport {
    let active = state.0.ledger.signing_key();
    let mut report = outcome.report;
    report.signed_at_size = report.signed_at_size.max(active.first_seq);
    report.statement = match &outcome.proven {
        Some(p) => {
            crate::bundle::describe(p, crate::bundle::Source::Database, report.signed_at_size)
                .join("\n")
        }
        None => String::new(),
    };
    report.sign(&active.key)
}

/// A range beyond the head is the caller's mistake: 400, nothing signed.
fn beyond_head(e: BeyondHead) -> ApiError {
    ApiError::BadRequest(e.to_string())
}

fn audit_error(e: AuditError) -> ApiError {
    match e {
        AuditError::BeyondHead(e) => beyond_head(e),
        other => ApiError::Internal(other.to_string()),
    }
}

/// Verify the stored ledger: digests, hashes, links, signatures, and the Merkle root of every
/// stored checkpoint in range. Small ranges answer with the signed report (200); large ones
/// (or `async=true`) start a job (202) to poll.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit", params(VerifyQuery),
    responses(
        (status = 200, description = "Signed verification report", body = SignedReport),
        (status = 202, description = "Started as a job; poll it", body = JobOut),
        (status = 400, description = "Bad range: to_seq below from_seq, or from_seq beyond the head (more than the number of entries)", content_type = "application/problem+json"),
        (status = 429, description = "Too many verification jobs running; retry after the Retry-After seconds", content_type = "application/problem+json"),
    ))]
pub async fn verify(
    State(state): State<AppState>,
    query: Result<Query<VerifyQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let (from, to) = seq_range(q.from_seq.map(|p| p.0), q.to_seq.map(|p| p.0))?;
    let store = Arc::clone(state.0.ledger.store());
    // The job verifies this snapshot, so a range that is valid now stays valid for it.
    let snapshot = Snapshot::take(store.as_ref()).await?;
    snapshot.check_from(from).map_err(beyond_head)?;
    let total = snapshot.range_len(from, to);
    let keys = state
        .0
        .trust()
        .map_err(|e| ApiError::Internal(format!("keys directory: {e}")))?;
    if total <= SYNC_VERIFY_MAX_ENTRIES && q.run_async != Some(true) {
        let outcome = verify_snapshot(store, keys, &snapshot, from, to, Arc::default())
            .await
            .map_err(audit_error)?;
        return Ok(Json(sign(&state, outcome)).into_response());
    }
    let mut id_bytes = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut id_bytes);
    let id = hex::encode(id_bytes);
    let job = Arc::new(Job {
        total,
        checked: Arc::default(),
        result: Mutex::new(None),
    });
    {
        let mut jobs = state.0.jobs.lock();
        let running = jobs.values().filter(|j| lock_result(j).is_none()).count();
        if running >= MAX_RUNNING_JOBS {
            return Err(ApiError::Busy(format!(
                "{running} verification jobs are running; poll them or retry later"
            )));
        }
        if jobs.len() >= MAX_KEPT_JOBS {
            jobs.retain(|_, j| lock_result(j).is_none());
        }
        jobs.insert(id.clone(), Arc::clone(&job));
    }
    let (task_job, task_state) = (Arc::clone(&job), state.clone());
    tokio::spawn(async move {
        let checked = Arc::clone(&task_job.checked);
        let outcome = verify_snapshot(store, keys, &snapshot, from, to, checked).await;
        let result = outcome.map(|r| sign(&task_state, r)).map_err(|e| {
            tracing::error!(error = %e, "verification job failed");
            "the verification could not run; the cause has been logged".to_owned()
        });
        *lock_result(&task_job) = Some(result);
    });
    Ok((StatusCode::ACCEPTED, Json(job_out(&id, &job))).into_response())
}

/// Poll a verification job.
#[utoipa::path(get, path = "/v1/audit/verify/jobs/{job_id}", tag = "audit",
    params(("job_id" = String, Path, description = "As returned when the job started")),
    responses(
        (status = 200, description = "The job's state, with the report once done", body = JobOut),
        (status = 404, description = "No such job", content_type = "application/problem+json"),
    ))]
pub async fn job(
    State(state): State<AppState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<JobOut>, ApiError> {
    let Path(id) = path?;
    let job = state
        .0
        .jobs
        .lock()
        .get(&id)
        .cloned()
        .ok_or_else(|| ApiError::NotFound("no verification job has this id".to_owned()))?;
    Ok(Json(job_out(&id, &job)))
}

/// Query of an export.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// First seq (default 0).
    from_seq: Option<Position>,
    /// Last seq, inclusive (default: the head).
    to_seq: Option<Position>,
}

/// Stream an export bundle (NDJSON; docs/FORMAT.md): entries with sealed payloads (never
/// decrypted), the checkpoints they complete, the public keys.
#[utoipa::path(get, path = "/v1/export", tag = "audit", operation_id = "export_bundle", params(ExportQuery),
    responses(
        (status = 200, description = "The bundle, one JSON object per line", content_type = "application/x-ndjson"),
        (status = 400, description = "Bad range: to_seq below from_seq, or from_seq beyond the head (more than the number of entries)", content_type = "application/problem+json"),
    ))]
pub async fn export(
    State(state): State<AppState>,
    query: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let (from, to) = seq_range(q.from_seq.map(|p| p.0), q.to_seq.map(|p| p.0))?;
    let store = Arc::clone(state.0.ledger.store());
    // Refused before the 200 is sent: the ledger only grows, so the export's own check
    // (which would end the body without a footer) does not fail on an intact ledger.
    Snapshot::take(store.as_ref())
        .await?
        .check_from(from)
        .map_err(beyond_head)?;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(64);
    let ledger_id = state.0.ledger.ledger_id();
    tokio::spawn(async move {
        if let Err(e) =
            crate::export::write_bundle(store.as_ref(), ledger_id, from, to, sender).await
        {
            // The body ends without a footer; the verifier reports the bundle incomplete.
            tracing::warn!(error = %e, "export stopped");
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut r| async move {
        r.recv().await.map(|b| (Ok::<Bytes, std::io::Error>(b), r))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}
