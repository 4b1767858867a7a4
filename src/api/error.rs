//! The HTTP error policy, in one place:
//!
//! - every error is an RFC 9457 `application/problem+json` body with a stable `type` URN;
//! - bad input is a 4xx whose `detail` says what is wrong and names the field, and nothing is
//!   written;
//! - a 5xx says nothing internal: the cause is logged once, here, and the body stays generic;
//! - no secret, plaintext or subject identifier ever goes into a body or a log line; nor does
//!   any text the client chose that could be one (a stream id, an event type, a metadata key
//!   or value, a reason): a 4xx names the field and says what is wrong with it, never quotes
//!   it (see also `json::parse`).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::ledger::{AppendError, ExpectedVersion, ReadError};

/// Prefix of every problem `type`.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:auditledger:problem:";

/// An error as the API reports it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed request: unparseable JSON, a bad query parameter, a bad path segment.
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed but invalid content (a missing or wrongly typed field).
    #[error("{0}")]
    Invalid(String),
    /// Over a configured size limit.
    #[error("{0}")]
    TooLarge(String),
    /// No such resource.
    #[error("{0}")]
    NotFound(String),
    /// Wrong method for the path.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A body that is not declared `application/json`.
    #[error(
        "the request body must be sent as Content-Type: application/json \
         (optionally with charset=utf-8)"
    )]
    UnsupportedMediaType,
    /// The body did not arrive in full within the body deadline.
    #[error("the request body did not arrive within {} s", .0.as_secs_f64())]
    BodyTimeout(std::time::Duration),
    /// Optimistic-concurrency conflict.
    #[error("version conflict")]
    VersionConflict {
        /// What was expected.
        expected: ExpectedVersion,
        /// What the stream is at.
        actual: Option<u64>,
    },
    /// Temporarily unable to serve (shutting down, database unavailable); safe to retry.
    #[error("{0}")]
    Unavailable(String),
    /// A bounded resource the client competes for is full (running verification jobs): the
    /// client's own load, so a 429 with `Retry-After`, not a fault of the service.
    #[error("{0}")]
    Busy(String),
    /// A commit's answer was lost and its outcome could not be found out.
    #[error(
        "the append was sent to the database but its answer was lost, and the service could not \
         find out whether it was committed: retry with the same Idempotency-Key (which returns \
         the original result if it was); without a key, read the stream before retrying"
    )]
    OutcomeUnknown,
    /// An idempotency key already recorded for a different request.
    #[error(
        "this Idempotency-Key was already used for a different request (another stream, \
         expectation, event or data); use a new key for a new append"
    )]
    IdempotencyKeyReused,
    /// The stored ledger is inconsistent at `seq`: evidence of tampering or corruption.
    #[error("integrity failure at seq {seq}")]
    Integrity {
        /// Where.
        seq: u64,
    },
    /// No valid token: missing, malformed, unknown, revoked or expired (one answer for all).
    #[error(
        "a valid token is required: send Authorization: Bearer <token> \
         (tokens are made with `auditledger token create`)"
    )]
    Unauthorized,
    /// The token is valid but may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// A rule of the ledger refuses the request as it stands (e.g. a hold already placed).
    #[error("{0}")]
    Conflict(String),
    /// An erasure refused because the subject is under a legal hold (GDPR Art. 17(3)).
    #[error(
        "the subject is under a legal hold (reference {reference}, placed by the entry at seq \
         {hold_seq}); it cannot be erased until the hold is released"
    )]
    Held {
        /// Seq of the hold's entry.
        hold_seq: u64,
        /// The hold's case reference.
        reference: String,
    },
    /// Anything else; the cause is logged, not shown.
    #[error("internal error")]
    Internal(String),
}

#[derive(Serialize)]
struct Problem {
    #[serde(rename = "type")]
    type_: String,
    title: &'static str,
    status: u16,
    detail: String,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

fn expected_json(e: ExpectedVersion) -> Value {
    match e {
        ExpectedVersion::Any => Value::from("any"),
        ExpectedVersion::NoStream => Value::from("no_stream"),
        ExpectedVersion::Exact(v) => Value::from(v),
    }
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            ApiError::Invalid(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-input",
                "Invalid input",
            ),
            ApiError::TooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                "Content too large",
            ),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            ApiError::BodyTimeout(_) => (
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                "Request body timeout",
            ),
            ApiError::VersionConflict { .. } => {
                (StatusCode::CONFLICT, "version-conflict", "Version conflict")
            }
            ApiError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            ApiError::Busy(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-requests",
                "Too many requests",
            ),
            ApiError::OutcomeUnknown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "append-outcome-unknown",
                "Append outcome unknown",
            ),
            ApiError::IdempotencyKeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency key reused",
            ),
            ApiError::Integrity { .. } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "integrity-failure",
                "Ledger integrity failure",
            ),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            ApiError::Held { .. } => (
                StatusCode::CONFLICT,
                "subject-under-legal-hold",
                "Subject under legal hold",
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.parts();
        let mut extra = Map::new();
        let detail = match &self {
            // The stream id is not quoted: it is the client's text (see the policy above).
            ApiError::VersionConflict { expected, actual } => {
                extra.insert("expected_version".into(), expected_json(*expected));
                extra.insert(
                    "actual_version".into(),
                    actual.map_or(Value::from("no_stream"), Value::from),
                );
                let actual = actual.map_or("no events".to_owned(), |v| format!("version {v}"));
                format!(
                    "the stream has {actual}, but the request expected {}",
                    expected_json(*expected)
                )
            }
            ApiError::Integrity { seq } => {
                tracing::error!(seq, "ledger integrity failure while reading");
                extra.insert("seq".into(), Value::from(*seq));
                format!(
                    "the entry at seq {seq} failed an integrity check; run `auditledger verify`"
                )
            }
            ApiError::Held {
                hold_seq,
                reference,
            } => {
                extra.insert("hold_seq".into(), Value::from(*hold_seq));
                extra.insert("hold_reference".into(), Value::from(reference.as_str()));
                self.to_string()
            }
            ApiError::Internal(cause) => {
                tracing::error!(cause = %cause, "internal error");
                "the server failed to handle the request; the cause has been logged".to_owned()
            }
            other => other.to_string(),
        };
        let body = Problem {
            type_: format!("{PROBLEM_TYPE_PREFIX}{slug}"),
            title,
            status: status.as_u16(),
            detail,
            extra,
        };
        let mut response = (status, Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"auditledger\""),
            );
        }
        response
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(r: axum::extract::rejection::PathRejection) -> ApiError {
        // Not `body_text`: it may quote the client's path segment.
        use axum::extract::rejection::PathRejection;
        match r {
            PathRejection::FailedToDeserializePathParams(e) => match e.kind() {
                axum::extract::path::ErrorKind::InvalidUtf8InPathParam { key } => {
                    ApiError::BadRequest(format!("path segment {key} is not valid UTF-8"))
                }
                _ => ApiError::BadRequest("a path segment is not of the expected form".to_owned()),
            },
            _ => ApiError::BadRequest("the path could not be read".to_owned()),
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> ApiError {
        ApiError::BadRequest(r.body_text())
    }
}

impl From<AppendError> for ApiError {
    fn from(e: AppendError) -> ApiError {
        match e {
            AppendError::VersionConflict {
                expected, actual, ..
            } => ApiError::VersionConflict { expected, actual },
            AppendError::Unavailable(_) => ApiError::Unavailable(
                "the ledger could not commit the append; nothing was written, retry".to_owned(),
            ),
            AppendError::ShuttingDown => {
                ApiError::Unavailable("the service is shutting down; retry elsewhere".to_owned())
            }
            AppendError::OutcomeUnknown => ApiError::OutcomeUnknown,
            AppendError::IdempotencyKeyReused => ApiError::IdempotencyKeyReused,
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> ApiError {
        match e {
            ReadError::Malformed(m) => ApiError::Integrity { seq: m.seq.0 },
            ReadError::Tampered { seq, .. } | ReadError::MissingData { seq, .. } => {
                ApiError::Integrity { seq: seq.0 }
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        match e {
            crate::store::StoreError::Malformed(m) => ApiError::Integrity { seq: m.seq.0 },
            other => ApiError::Internal(other.to_string()),
        }
    }
}
