//! Durable named subscriptions: their acknowledged position and the leases handed to
//! consumers (`crate::subscription::durable` holds the rules). Every change is one transaction
//! guarded by the row's version, so competing consumers on any instance never take the same
//! range twice.

use super::StoreError;
use crate::subscription::durable::Lease;

/// A subscription as stored.
#[derive(Clone, Debug)]
pub struct SubscriptionRow {
    /// Its name.
    pub name: String,
    /// Stream prefix filter.
    pub stream_prefix: Option<String>,
    /// Event type filter.
    pub event_type: Option<String>,
    /// Every seq below is acknowledged.
    pub position: u64,
    /// Changes with every update (optimistic concurrency).
    pub version: i64,
}

/// One update: the position, leases removed and added, a lease acknowledged.
#[derive(Debug, Default)]
pub struct SubscriptionChange {
    /// New position.
    pub position: u64,
    /// Leases to delete.
    pub delete: Vec<String>,
    /// A lease to add.
    pub insert: Option<Lease>,
    /// A lease to mark acknowledged.
    pub ack: Option<String>,
}

/// Storage of durable subscriptions.
#[async_trait::async_trait]
pub trait SubscriptionStore {
    /// Creates it; `false` if one of that name exists.
    async fn create_subscription(
        &self,
        row: &SubscriptionRow,
        now: i64,
    ) -> Result<bool, StoreError>;

    /// It and its leases.
    async fn subscription(
        &self,
        name: &str,
    ) -> Result<Option<(SubscriptionRow, Vec<Lease>)>, StoreError>;

    /// Applies `change` if the subscription is still at `version`; `false` if another update
    /// came first (the caller reads again and retries).
    async fn update_subscription(
        &self,
        name: &str,
        version: i64,
        change: &SubscriptionChange,
    ) -> Result<bool, StoreError>;
}

/// Implements [`SubscriptionStore`] for a store whose pools for reading and writing are the
/// named fields.
macro_rules! impl_subscription_store {
    ($ty:ty, $read:ident, $write:ident) => {
        #[async_trait::async_trait]
        impl $crate::store::subscriptions::SubscriptionStore for $ty {
            async fn create_subscription(
                &self,
                row: &$crate::store::subscriptions::SubscriptionRow,
                now: i64,
            ) -> Result<bool, $crate::store::StoreError> {
                let done = sqlx::query(
                    "INSERT INTO subscriptions (name, stream_prefix, event_type, position, \
                     version, created_at) VALUES ($1, $2, $3, $4, 0, $5) \
                     ON CONFLICT (name) DO NOTHING",
                )
                .bind(&row.name)
                .bind(&row.stream_prefix)
                .bind(&row.event_type)
                .bind($crate::store::to_i64(row.position))
                .bind(now)
                .execute(&self.$write)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn subscription(
                &self,
                name: &str,
            ) -> Result<
                Option<(
                    $crate::store::subscriptions::SubscriptionRow,
                    Vec<$crate::subscription::durable::Lease>,
                )>,
                $crate::store::StoreError,
            > {
                let row: Option<(String, Option<String>, Option<String>, i64, i64)> =
                    sqlx::query_as(
                        "SELECT name, stream_prefix, event_type, position, version \
                         FROM subscriptions WHERE name = $1",
                    )
                    .bind(name)
                    .fetch_optional(&self.$read)
                    .await?;
                let Some((name, stream_prefix, event_type, position, version)) = row else {
                    return Ok(None);
                };
                let leases: Vec<(String, i64, i64, i64, i32)> = sqlx::query_as(
                    "SELECT lease_id, from_seq, to_seq, expires_at, acked \
                     FROM subscription_leases WHERE name = $1 ORDER BY from_seq",
                )
                .bind(&name)
                .fetch_all(&self.$read)
                .await?;
                Ok(Some((
                    $crate::store::subscriptions::SubscriptionRow {
                        name,
                        stream_prefix,
                        event_type,
                        position: $crate::store::to_u64(position),
                        version,
                    },
                    leases
                        .into_iter()
                        .map(|(id, from, to, expires_at, acked)| {
                            $crate::subscription::durable::Lease {
                                id,
                                from: $crate::store::to_u64(from),
                                to: $crate::store::to_u64(to),
                                expires_at,
                                acked: acked != 0,
                            }
                        })
                        .collect(),
                )))
            }

            async fn update_subscription(
                &self,
                name: &str,
                version: i64,
                change: &$crate::store::subscriptions::SubscriptionChange,
            ) -> Result<bool, $crate::store::StoreError> {
                let mut tx = self.$write.begin().await?;
                let updated = sqlx::query(
                    "UPDATE subscriptions SET position = $1, version = version + 1 \
                     WHERE name = $2 AND version = $3",
                )
                .bind($crate::store::to_i64(change.position))
                .bind(name)
                .bind(version)
                .execute(&mut *tx)
                .await?;
                if updated.rows_affected() != 1 {
                    return Ok(false);
                }
                for id in &change.delete {
                    sqlx::query("DELETE FROM subscription_leases WHERE name = $1 AND lease_id = $2")
                        .bind(name)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                if let Some(id) = &change.ack {
                    sqlx::query(
                        "UPDATE subscription_leases SET acked = 1 WHERE name = $1 AND lease_id = $2",
                    )
                    .bind(name)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
                if let Some(l) = &change.insert {
                    sqlx::query(
                        "INSERT INTO subscription_leases (name, lease_id, from_seq, to_seq, \
                         expires_at, acked) VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(name)
                    .bind(&l.id)
                    .bind($crate::store::to_i64(l.from))
                    .bind($crate::store::to_i64(l.to))
                    .bind(l.expires_at)
                    .bind(i32::from(l.acked))
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(true)
            }
        }
    };
}

pub(crate) use impl_subscription_store;
