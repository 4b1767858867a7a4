//! Making, listing and revoking API tokens: shared by `auditledger token` and `/v1/tokens`.
//! The format and the checks are in the pure core (`access::token`).

use serde::Serialize;

use crate::access::{Roles, token};
use crate::entry::StreamId;
use crate::store::{Store, StoreError, TokenRow};
use crate::timefmt::{format_micros, now_micros};

/// Longest token name, in characters.
pub const MAX_NAME_CHARS: usize = 128;
/// Most stream prefixes on one token.
pub const MAX_PREFIXES: usize = 32;

/// What a new token is to be, validated.
#[derive(Clone, Debug)]
pub struct TokenSpec {
    /// A name for people (not a secret; shown in lists).
    pub name: String,
    /// At least one role.
    pub roles: Roles,
    /// Stream-id prefixes it is limited to; empty: none.
    pub stream_prefixes: Vec<String>,
    /// Lifetime, µs; `None`: until revoked.
    pub lifetime_micros: Option<i64>,
}

impl TokenSpec {
    /// Validates a request for a token.
    ///
    /// # Errors
    /// What is wrong, as a sentence naming the field (never quoting a prefix or name).
    pub fn parse(
        name: Option<&str>,
        roles: &[String],
        prefixes: &[String],
        expires: Option<&str>,
    ) -> Result<TokenSpec, String> {
        let roles = Roles::parse_list(&roles.join(",")).map_err(|e| e.to_string())?;
        if roles.is_empty() {
            return Err("a token needs at least one role".to_owned());
        }
        let name = name.unwrap_or("").trim().to_owned();
        if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(format!(
                "name: at most {MAX_NAME_CHARS} characters, no control characters"
            ));
        }
        if prefixes.len() > MAX_PREFIXES {
            return Err(format!("streams: at most {MAX_PREFIXES} prefixes"));
        }
        for p in prefixes {
            if StreamId::parse(p).is_err() {
                return Err(
                    "streams: each prefix is 1-128 characters of A-Z a-z 0-9 _ - . :".to_owned(),
                );
            }
            if p.starts_with(crate::ledger::SYSTEM_STREAM_PREFIX) {
                return Err("streams: auditledger: streams are the ledger's own".to_owned());
            }
        }
        let lifetime_micros = expires.map(token::parse_lifetime).transpose()?;
        Ok(TokenSpec {
            name,
            roles,
            stream_prefixes: prefixes.to_vec(),
            lifetime_micros,
        })
    }
}

/// Makes a token and stores its hash; the token is in the result and nowhere else.
pub async fn create(
    store: &dyn Store,
    spec: &TokenSpec,
    created_by: &str,
) -> Result<(token::IssuedToken, TokenRow), StoreError> {
    let issued = token::generate();
    let now = now_micros();
    let row = TokenRow {
        id: issued.id.as_str().to_owned(),
        name: spec.name.clone(),
        secret_hash: issued.secret_hash.to_vec(),
        roles: spec.roles.to_string(),
        stream_prefixes: spec.stream_prefixes.join("\n"),
        created_at: now,
        created_by: created_by.to_owned(),
        expires_at: spec.lifetime_micros.map(|l| now.saturating_add(l)),
        revoked_at: None,
        revoked_by: None,
        create_recorded: 0,
        revoke_recorded: 0,
    };
    store.insert_token(&row).await?;
    Ok((issued, row))
}

/// A token as lists show it: never its secret or hash.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct TokenView {
    /// Public id (the part after `alt1_`).
    pub id: String,
    /// Name.
    pub name: String,
    /// Roles.
    pub roles: Vec<String>,
    /// Stream-id prefixes it is limited to (empty: every stream).
    pub stream_prefixes: Vec<String>,
    /// RFC 3339.
    pub created_at: String,
    /// Token id of the admin who made it, or `cli`.
    pub created_by: String,
    /// RFC 3339, or null: until revoked.
    pub expires_at: Option<String>,
    /// RFC 3339, or null.
    pub revoked_at: Option<String>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
    /// `active`, `expired` or `revoked`.
    pub status: &'static str,
}

impl TokenView {
    /// The view of a stored token at `now`.
    #[must_use]
    pub fn of(row: &TokenRow, now: i64) -> TokenView {
        let status = if row.revoked_at.is_some() {
            "revoked"
        } else if token::usable(None, row.expires_at, now) {
            "active"
        } else {
            "expired"
        };
        TokenView {
            id: row.id.clone(),
            name: row.name.clone(),
            roles: row
                .roles
                .split(',')
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .collect(),
            stream_prefixes: row.prefixes(),
            created_at: format_micros(row.created_at),
            created_by: row.created_by.clone(),
            expires_at: row.expires_at.map(format_micros),
            revoked_at: row.revoked_at.map(format_micros),
            revoked_by: row.revoked_by.clone(),
            status,
        }
    }
}
