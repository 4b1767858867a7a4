//! Storage of API tokens, legal holds and signed reports (migration 0008). The SQL is the same
//! on both backends (`$n` placeholders, which SQLite takes too), so one macro implements
//! [`AccessStore`] for each.

use async_trait::async_trait;

use super::StoreError;
use crate::entry::{Seq, SubjectHandle};

/// A stored API token (never the token itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRow {
    /// Public id, 16 hex digits.
    pub id: String,
    /// A name for people.
    pub name: String,
    /// SHA-256(domain || secret).
    pub secret_hash: Vec<u8>,
    /// Comma-separated roles.
    pub roles: String,
    /// Newline-separated stream-id prefixes; empty: every stream.
    pub stream_prefixes: String,
    /// When created, µs.
    pub created_at: i64,
    /// Token id of the admin who created it, or `cli`.
    pub created_by: String,
    /// When it stops working, µs.
    pub expires_at: Option<i64>,
    /// When revoked, µs.
    pub revoked_at: Option<i64>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
    /// Whether its creation is in the ledger (1) or not yet (0).
    pub create_recorded: i64,
    /// Whether its revocation is in the ledger.
    pub revoke_recorded: i64,
}

super::from_row!(TokenRow {
    id: String,
    name: String,
    secret_hash: Vec<u8>,
    roles: String,
    stream_prefixes: String,
    created_at: i64,
    created_by: String,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    revoked_by: Option<String>,
    create_recorded: i64,
    revoke_recorded: i64,
});

/// Columns of `api_tokens`, in [`TokenRow`]'s order.
pub(crate) const TOKEN_COLUMNS: &str = "id, name, secret_hash, roles, stream_prefixes, created_at, \
     created_by, expires_at, revoked_at, revoked_by, create_recorded, revoke_recorded";

impl TokenRow {
    /// The stream prefixes as a list.
    #[must_use]
    pub fn prefixes(&self) -> Vec<String> {
        self.stream_prefixes
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// A subject under a legal hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldRow {
    /// The subject.
    pub subject: SubjectHandle,
    /// Seq of its `LegalHoldPlaced` entry.
    pub hold_seq: Seq,
    /// The case reference.
    pub reference: String,
    /// When placed, µs.
    pub placed_at: i64,
}

impl HoldRow {
    pub(crate) fn decode(
        subject: &[u8],
        hold_seq: i64,
        reference: String,
        placed_at: i64,
    ) -> Result<HoldRow, StoreError> {
        Ok(HoldRow {
            subject: SubjectHandle::from_slice(subject)
                .map_err(|_| super::malformed(Seq(super::to_u64(hold_seq)), "legal_holds"))?,
            hold_seq: Seq(super::to_u64(hold_seq)),
            reference,
            placed_at,
        })
    }
}

/// Tokens, holds and reports.
#[async_trait]
pub trait AccessStore: Send + Sync {
    /// The token with this id.
    async fn token(&self, id: &str) -> Result<Option<TokenRow>, StoreError>;
    /// Every token, newest first.
    async fn tokens(&self) -> Result<Vec<TokenRow>, StoreError>;
    /// Stores a new token.
    async fn insert_token(&self, row: &TokenRow) -> Result<(), StoreError>;
    /// Revokes a token; `false` if there is no such token or it was already revoked.
    async fn revoke_token(&self, id: &str, by: &str, at: i64) -> Result<bool, StoreError>;
    /// Tokens whose creation or revocation is not yet in the ledger.
    async fn unrecorded_token_changes(&self) -> Result<Vec<TokenRow>, StoreError>;
    /// Notes that a token's creation (or revocation) is in the ledger.
    async fn mark_token_recorded(&self, id: &str, revocation: bool) -> Result<(), StoreError>;
    /// Every subject under hold.
    async fn legal_holds(&self) -> Result<Vec<HoldRow>, StoreError>;
    /// Keeps a signed report.
    async fn insert_signed_report(
        &self,
        sha256: &[u8; 32],
        kind: &str,
        created_at: i64,
        body: &[u8],
    ) -> Result<(), StoreError>;
    /// A signed report by its SHA-256.
    async fn signed_report(&self, sha256: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError>;
}

/// Implements [`AccessStore`] for a store whose pools for reading and writing are the named
/// fields.
macro_rules! impl_access_store {
    ($ty:ty, $read:ident, $write:ident) => {
        #[async_trait::async_trait]
        impl $crate::store::access::AccessStore for $ty {
            async fn token(
                &self,
                id: &str,
            ) -> Result<Option<$crate::store::access::TokenRow>, $crate::store::StoreError> {
                let sql = format!(
                    "SELECT {} FROM api_tokens WHERE id = $1",
                    $crate::store::access::TOKEN_COLUMNS
                );
                Ok(sqlx::query_as(&sql).bind(id).fetch_optional(&self.$read).await?)
            }

            async fn tokens(
                &self,
            ) -> Result<Vec<$crate::store::access::TokenRow>, $crate::store::StoreError> {
                let sql = format!(
                    "SELECT {} FROM api_tokens ORDER BY created_at DESC, id",
                    $crate::store::access::TOKEN_COLUMNS
                );
                Ok(sqlx::query_as(&sql).fetch_all(&self.$read).await?)
            }

            async fn insert_token(
                &self,
                r: &$crate::store::access::TokenRow,
            ) -> Result<(), $crate::store::StoreError> {
                let sql = format!(
                    "INSERT INTO api_tokens ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                    $crate::store::access::TOKEN_COLUMNS
                );
                sqlx::query(&sql)
                    .bind(&r.id)
                    .bind(&r.name)
                    .bind(&r.secret_hash)
                    .bind(&r.roles)
                    .bind(&r.stream_prefixes)
                    .bind(r.created_at)
                    .bind(&r.created_by)
                    .bind(r.expires_at)
                    .bind(r.revoked_at)
                    .bind(&r.revoked_by)
                    .bind(r.create_recorded)
                    .bind(r.revoke_recorded)
                    .execute(&self.$write)
                    .await?;
                Ok(())
            }

            async fn revoke_token(
                &self,
                id: &str,
                by: &str,
                at: i64,
            ) -> Result<bool, $crate::store::StoreError> {
                let done = sqlx::query(
                    "UPDATE api_tokens SET revoked_at = $1, revoked_by = $2 \
                     WHERE id = $3 AND revoked_at IS NULL",
                )
                .bind(at)
                .bind(by)
                .bind(id)
                .execute(&self.$write)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn unrecorded_token_changes(
                &self,
            ) -> Result<Vec<$crate::store::access::TokenRow>, $crate::store::StoreError> {
                let sql = format!(
                    "SELECT {} FROM api_tokens WHERE create_recorded = 0 \
                     OR (revoked_at IS NOT NULL AND revoke_recorded = 0) ORDER BY created_at, id",
                    $crate::store::access::TOKEN_COLUMNS
                );
                Ok(sqlx::query_as(&sql).fetch_all(&self.$write).await?)
            }

            async fn mark_token_recorded(
                &self,
                id: &str,
                revocation: bool,
            ) -> Result<(), $crate::store::StoreError> {
                let sql = if revocation {
                    "UPDATE api_tokens SET revoke_recorded = 1 WHERE id = $1"
                } else {
                    "UPDATE api_tokens SET create_recorded = 1 WHERE id = $1"
                };
                sqlx::query(sql).bind(id).execute(&self.$write).await?;
                Ok(())
            }

            async fn legal_holds(
                &self,
            ) -> Result<Vec<$crate::store::access::HoldRow>, $crate::store::StoreError> {
                let rows: Vec<(Vec<u8>, i64, String, i64)> = sqlx::query_as(
                    "SELECT subject, hold_seq, reference, placed_at FROM legal_holds ORDER BY hold_seq",
                )
                .fetch_all(&self.$read)
                .await?;
                rows.into_iter()
                    .map(|(s, q, r, p)| $crate::store::access::HoldRow::decode(&s, q, r, p))
                    .collect()
            }

            async fn insert_signed_report(
                &self,
                sha256: &[u8; 32],
                kind: &str,
                created_at: i64,
                body: &[u8],
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query(
                    "INSERT INTO signed_reports (sha256, kind, created_at, body) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (sha256) DO NOTHING",
                )
                .bind(sha256.to_vec())
                .bind(kind)
                .bind(created_at)
                .bind(body)
                .execute(&self.$write)
                .await?;
                Ok(())
            }

            async fn signed_report(
                &self,
                sha256: &[u8; 32],
            ) -> Result<Option<Vec<u8>>, $crate::store::StoreError> {
                Ok(
                    sqlx::query_scalar("SELECT body FROM signed_reports WHERE sha256 = $1")
                        .bind(sha256.to_vec())
                        .fetch_optional(&self.$read)
                        .await?,
                )
            }
        }
    };
}
pub(crate) use impl_access_store;
