//! `GET /v1/audit/reports/{kind}`: compliance reports, computed from the log up to a checkpoint
//! (made now if the log grew since the last), signed, kept by their hash, rendered as JSON,
//! CSV or HTML. The counting is the pure `compliance` module's; this is the I/O around it.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::error::ApiError;
use crate::audit::{Snapshot, verify_snapshot};
use crate::compliance::render::{self, SignedRef};
use crate::compliance::scan::{Heading, IntegrityFacts, Receipts, build};
use crate::compliance::sign::{SignedComplianceReport, sign};
use crate::compliance::{CheckpointRef, Period, ReportKind, Scan};
use crate::entry::Seq;
use crate::timefmt::{format_micros, now_micros};

/// Rows read per query while scanning.
const SCAN_CHUNK_ROWS: u32 = 10_000;
/// Microseconds per day.
const DAY_MICROS: i64 = 86_400_000_000;

/// Query of a report.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// Start of the period (inclusive): RFC 3339, or a date `YYYY-MM-DD` (its start, UTC).
    /// Default: the first entry.
    from: Option<String>,
    /// End of the period: RFC 3339 (exclusive), or a date `YYYY-MM-DD` (its end, UTC).
    /// Default: the checkpoint.
    to: Option<String>,
    /// `json` (default, signed), `csv` or `html` (printable).
    format: Option<String>,
}

/// A time or a date; a date stands for its start, or (`end`) for the start of the next day.
fn parse_bound(field: &str, s: &str, end: bool) -> Result<i64, ApiError> {
    if let Some(t) = crate::timefmt::parse_rfc3339(s) {
        return Ok(t);
    }
    if s.len() == 10
        && let Some(t) = crate::timefmt::parse_rfc3339(&format!("{s}T00:00:00Z"))
    {
        return Ok(if end { t + DAY_MICROS } else { t });
    }
    Err(ApiError::BadRequest(format!(
        "{field}: expected an RFC 3339 time (2026-11-24T00:00:00Z) or a date (2026-11-24)"
    )))
}

/// A compliance report: `integrity`, `erasures`, `access`, `activity`, `retention` or
/// `processing` (docs/REPORTS.md), for a period, against a checkpoint, signed.
#[utoipa::path(
    get, path = "/v1/audit/reports/{kind}", tag = "reports", operation_id = "report",
    params(
        ("kind" = String, Path, description = "integrity, erasures, access, activity, retention or processing"),
        ReportQuery,
    ),
    responses(
        (status = 200, description = "The signed report (JSON), or a rendition naming it (CSV, HTML)",
            content(
                (serde_json::Value = "application/json"),
                (String = "text/csv"),
                (String = "text/html"),
            )),
        (status = 404, description = "No such report kind", content_type = "application/problem+json"),
    )
)]
pub async fn report(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(kind) = path?;
    let Some(kind) = ReportKind::parse(&kind) else {
        return Err(ApiError::NotFound(
            "no such report; reports are integrity, erasures, access, activity, retention and \
             processing"
                .to_owned(),
        ));
    };
    let Query(q) = query?;
    let period = Period {
        from: q
            .from
            .as_deref()
            .map(|s| parse_bound("from", s, false))
            .transpose()?,
        to: q
            .to
            .as_deref()
            .map(|s| parse_bound("to", s, true))
            .transpose()?,
    };
    if let (Some(f), Some(t)) = (period.from, period.to)
        && f >= t
    {
        return Err(ApiError::BadRequest("from must be before to".to_owned()));
    }
    let format = q.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "csv" | "html") {
        return Err(ApiError::BadRequest("format: json, csv or html".to_owned()));
    }
    let signed = generate(&state, kind, period).await?;
    let body = serde_json::to_vec(&signed).map_err(|e| ApiError::Internal(e.to_string()))?;
    let digest: [u8; 32] = hex::decode(&signed.report_sha256)
        .ok()
        .and_then(|d| d.try_into().ok())
        .ok_or_else(|| ApiError::Internal("a report hash is malformed".to_owned()))?;
    state
        .0
        .ledger
        .store()
        .insert_signed_report(&digest, kind.as_str(), now_micros(), &body)
        .await?;
    let reference = SignedRef {
        report_sha256: signed.report_sha256.clone(),
        fetch_path: format!("/v1/audit/reports/signed/{}", signed.report_sha256),
    };
    let name = format!(
        "auditledger-{}-{}",
        kind.as_str(),
        &signed.report.generated_at[..10]
    );
    Ok(match format {
        "csv" => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{name}.csv\""),
                ),
            ],
            render::csv(&signed.report, &reference),
        )
            .into_response(),
        "html" => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8".to_owned())],
            render::html(&signed.report, &reference),
        )
            .into_response(),
        _ => (
            [(header::CONTENT_TYPE, "application/json".to_owned())],
            body,
        )
            .into_response(),
    })
}

/// A signed report handed out earlier, by its `report_sha256`: what a CSV or HTML report names.
#[utoipa::path(
    get, path = "/v1/audit/reports/signed/{sha256}", tag = "reports", operation_id = "signed_report",
    params(("sha256" = String, Path, description = "The report's report_sha256, 64 hex digits")),
    responses(
        (status = 200, description = "The signed report", body = serde_json::Value),
        (status = 404, description = "No report with this hash", content_type = "application/problem+json"),
    )
)]
pub async fn signed_report(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(sha) = path?;
    let mut digest = [0u8; 32];
    if !crate::entry::decode_hex_exact(&sha, &mut digest) {
        return Err(ApiError::BadRequest(
            "sha256: 64 lowercase hex digits".to_owned(),
        ));
    }
    match state.0.ledger.store().signed_report(&digest).await? {
        Some(body) => Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response()),
        None => Err(ApiError::NotFound(
            "no report with this hash was generated here".to_owned(),
        )),
    }
}

/// Computes and signs a report.
async fn generate(
    state: &AppState,
    kind: ReportKind,
    period: Period,
) -> Result<SignedComplianceReport, ApiError> {
    let ledger = &state.0.ledger;
    let store = Arc::clone(ledger.store());
    // A checkpoint of the log as it is now (made if it grew since the last one).
    let checkpoint = ledger.checkpoint().await?;
    let size = checkpoint.as_ref().map_or(0, |c| c.tree_size);
    let mut scan = Scan::new(period);
    let mut next = 0;
    while next < size {
        let rows = store
            .read_global(Seq(next), Some(Seq(size - 1)), SCAN_CHUNK_ROWS)
            .await?;
        if rows.is_empty() {
            return Err(ApiError::Integrity { seq: next });
        }
        for row in rows {
            let record = row
                .into_record()
                .map_err(|m| ApiError::Integrity { seq: m.seq.0 })?;
            scan.add(&record.entry.header);
            next = record.entry.header.seq.0 + 1;
        }
    }
    let integrity = if kind == ReportKind::Integrity {
        Some(integrity_facts(state, period, size).await?)
    } else {
        None
    };
    let mut receipts = Receipts::new();
    if kind == ReportKind::Erasures {
        for e in scan.erasures.iter().filter(|e| e.refused.is_none()) {
            let Some(view) = ledger.erasure(Seq(e.seq)).await? else {
                continue;
            };
            if let Some(r) = view.receipt {
                receipts.insert(
                    e.seq,
                    [r.key_id, r.signature, r.request_ref, r.forgotten_by],
                );
            }
        }
    }
    let heading = Heading {
        ledger_id: ledger.ledger_id().to_hex(),
        generated_at: now_micros(),
        checkpoint: checkpoint.as_ref().map_or_else(
            || CheckpointRef {
                tree_size: 0,
                root_hash: String::new(),
                timestamp: String::new(),
            },
            |c| CheckpointRef {
                tree_size: c.tree_size,
                root_hash: c.root_hash.to_hex(),
                timestamp: format_micros(c.timestamp_micros),
            },
        ),
    };
    let report = build(kind, &scan, &heading, integrity.as_ref(), &receipts);
    let active = ledger.signing_key();
    let signed_at = ledger
        .head()
        .await?
        .map_or(0, |h| h.seq.0 + 1)
        .max(active.first_seq);
    sign(report, &ledger.ledger_id(), signed_at, &active.key)
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Verification of the whole ledger, the checkpoints of the period, the witnesses' state and
/// the signing keys.
async fn integrity_facts(
    state: &AppState,
    period: Period,
    size: u64,
) -> Result<IntegrityFacts, ApiError> {
    let store = Arc::clone(state.0.ledger.store());
    let trust = state
        .0
        .trust()
        .map_err(|e| ApiError::Internal(format!("cannot read the keys directory: {e}")))?;
    let snapshot = Snapshot::take(store.as_ref()).await?;
    let verification = verify_snapshot(
        Arc::clone(&store),
        trust,
        &snapshot,
        Seq(0),
        None,
        Arc::default(),
    )
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let r = verification.report;
    let mut checkpoints = Vec::new();
    let mut from = 1;
    while from <= size {
        let page = store.checkpoints(from, size, 1000).await?;
        let Some(last) = page.last() else { break };
        from = last.tree_size + 1;
        checkpoints.extend(
            page.iter()
                .filter(|c| period.contains(c.timestamp_micros))
                .map(|c| {
                    [
                        c.tree_size.to_string(),
                        c.root_hash.to_hex(),
                        format_micros(c.timestamp_micros),
                        c.key_id.to_hex(),
                    ]
                }),
        );
    }
    let keys = store
        .signing_keys()
        .await?
        .into_iter()
        .map(|k| {
            [
                k.key_id.to_hex(),
                k.first_seq
                    .map_or_else(|| "unused".to_owned(), |s| s.0.to_string()),
                k.last_seq
                    .map_or_else(|| "current".to_owned(), |s| s.0.to_string()),
            ]
        })
        .collect();
    let mut witnesses = Vec::new();
    if let Some(dir) = &state.0.keys_dir {
        let published =
            crate::witness::read_published_state(&dir.join(crate::witness::PUBLISHED_STATE_FILE))
                .ok()
                .flatten();
        witnesses.push([
            "published checkpoints (every configured witness)".to_owned(),
            published.map_or_else(
                || "none published".to_owned(),
                |c| {
                    format!(
                        "latest published: tree size {} at {}",
                        c.tree_size,
                        format_micros(c.timestamp_micros)
                    )
                },
            ),
        ]);
    }
    Ok(IntegrityFacts {
        ok: r.first_failure.is_none(),
        entries_checked: r.entries_checked,
        checkpoints_checked: r.checkpoints_checked,
        first_failure: r
            .first_failure
            .map(|f| format!("seq {}: {} ({})", f.seq, f.kind.as_str(), f.detail)),
        statement: r.statement,
        checkpoints,
        keys,
        witnesses,
    })
}
