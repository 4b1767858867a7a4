//! Authentication and authorization of every `/v1` request. Who may do what is decided by the
//! pure core (`access::policy`); this module only finds the token, asks, and refuses. A refusal
//! is counted in `/metrics` and logged with the token's id at most, never the token.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::access::record::Actor;
use crate::access::{Decision, Grant, Operation, Role, Roles, token};
use crate::telemetry;
use crate::timefmt::now_micros;

/// Whether requests need a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// Every `/v1` request needs a valid bearer token.
    Tokens,
    /// `--insecure-no-auth`: every request may do everything, as `anonymous`.
    Insecure,
}

/// The authenticated caller of a `/v1` request, as the handlers see it.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Token id (`anonymous` without authentication).
    pub token_id: String,
    /// What the token may do.
    pub grant: Arc<Grant>,
    /// The role this request runs in.
    pub role: Role,
    /// The operation.
    pub operation: Operation,
}

impl Caller {
    /// Who acts, as access entries record it.
    #[must_use]
    pub fn actor(&self) -> Actor {
        Actor {
            token_id: self.token_id.clone(),
            role: self.role.as_str().to_owned(),
        }
    }

    /// Refuses (403) a stream outside the token's prefixes.
    pub fn require_stream(&self, stream: &str) -> Result<(), ApiError> {
        if self.grant.admits_stream(stream) {
            return Ok(());
        }
        refused(
            403,
            "stream_out_of_scope",
            Some(&self.token_id),
            Some(self.operation),
        );
        Err(ApiError::Forbidden(
            "this token is limited to streams with other prefixes".to_owned(),
        ))
    }
}

fn refused(status: u16, reason: &'static str, token_id: Option<&str>, op: Option<Operation>) {
    metrics::counter!(telemetry::AUTH_REFUSALS, "status" => status.to_string(), "reason" => reason)
        .increment(1);
    tracing::warn!(
        status,
        reason,
        token_id = token_id.unwrap_or("-"),
        operation = op.map_or_else(|| "-".to_owned(), |o| format!("{o:?}")),
        "request refused by access control"
    );
}

/// The middleware: authenticates, decides, and hands the handler a [`Caller`].
pub async fn authorize(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path != "/v1" && !path.starts_with("/v1/") {
        return next.run(request).await;
    }
    let operation = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|m| Operation::route(request.method().as_str(), m.as_str()));
    let (token_id, grant) = match authenticate(&state, request.headers(), operation).await {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    // An authenticated caller on a route that does not exist gets the router's 404 or 405.
    let Some(op) = operation else {
        return next.run(request).await;
    };
    let role = match grant.decide(op) {
        Decision::Allowed(role) => role,
        Decision::MissingRole(needed) => {
            refused(403, "missing_role", Some(&token_id), Some(op));
            let needed: Roles = needed.iter().copied().collect();
            return ApiError::Forbidden(format!(
                "this token lacks the role this needs (one of: {})",
                needed.names().join(", ")
            ))
            .into_response();
        }
        Decision::LimitedToStreams => {
            refused(403, "limited_to_streams", Some(&token_id), Some(op));
            return ApiError::Forbidden(
                "this token is limited to stream prefixes; it may only use endpoints that name \
                 one stream"
                    .to_owned(),
            )
            .into_response();
        }
    };
    request.extensions_mut().insert(Caller {
        token_id,
        grant: Arc::new(grant),
        role,
        operation: op,
    });
    next.run(request).await
}

/// The token's id and grant, or the one 401 every invalid token gets.
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    op: Option<Operation>,
) -> Result<(String, Grant), ApiError> {
    if state.0.auth == AuthMode::Insecure {
        return Ok(("anonymous".to_owned(), Grant::unrestricted()));
    }
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    let Some(presented) = presented else {
        refused(401, "no_token", None, op);
        return Err(ApiError::Unauthorized);
    };
    let Some((id, secret)) = token::parse(presented) else {
        refused(401, "malformed_token", None, op);
        return Err(ApiError::Unauthorized);
    };
    let row = state
        .0
        .ledger
        .store()
        .token(id.as_str())
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot look a token up");
            ApiError::Unavailable("cannot check the token now; retry".to_owned())
        })?;
    // Compare even when the id is unknown, so that the answer takes as long either way.
    let stored = row
        .as_ref()
        .map_or(&[0u8; 32][..], |r| r.secret_hash.as_slice());
    let matches = token::secret_matches(&secret, stored);
    let Some(row) = row.filter(|_| matches) else {
        refused(401, "unknown_token", Some(id.as_str()), op);
        return Err(ApiError::Unauthorized);
    };
    if !token::usable(row.revoked_at, row.expires_at, now_micros()) {
        let reason = if row.revoked_at.is_some() {
            "revoked_token"
        } else {
            "expired_token"
        };
        refused(401, reason, Some(id.as_str()), op);
        return Err(ApiError::Unauthorized);
    }
    let roles = Roles::parse_list(&row.roles).map_err(|e| {
        ApiError::Internal(format!("token {} has an unreadable role list: {e}", row.id))
    })?;
    Ok((
        row.id.clone(),
        Grant {
            roles,
            stream_prefixes: row.prefixes(),
        },
    ))
}
