//! The read models' tables (`crate::projections` holds the fold). A delta is applied with the
//! position it covers in one transaction, guarded by the position it started from.

use super::StoreError;
use crate::projections::Delta;

/// A stream in the catalogue.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct CatalogueRow {
    /// The stream.
    pub stream_id: String,
    /// How many events it has.
    pub events: u64,
    /// Its first seq.
    pub first_seq: u64,
    /// Its last seq.
    pub last_seq: u64,
    /// Its last version.
    pub last_version: u64,
    /// When its last event was recorded, µs since the epoch.
    #[serde(skip)]
    pub last_recorded_at: i64,
}

/// Storage of the read models.
#[async_trait::async_trait]
pub trait ProjectionStore {
    /// Every entry below it is counted.
    async fn projection_position(&self) -> Result<u64, StoreError>;

    /// Adds `delta`, which covers `[from, to)`, if the position is still `from`; `false` if
    /// another maintainer got there first (nothing is applied).
    async fn apply_projection(&self, from: u64, to: u64, delta: &Delta)
    -> Result<bool, StoreError>;

    /// Empties the read models and sets their position to 0.
    async fn reset_projections(&self) -> Result<(), StoreError>;

    /// Streams of the catalogue whose id starts with `prefix`, after `after`, in id order.
    async fn catalogue(
        &self,
        prefix: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<CatalogueRow>, StoreError>;

    /// Events per type and day, for days in `[from_day, to_day]`.
    async fn type_day_counts(
        &self,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<(String, String, u64)>, StoreError>;
}

/// Implements [`ProjectionStore`] for a store whose pools for reading and writing are the named
/// fields.
macro_rules! impl_projection_store {
    ($ty:ty, $read:ident, $write:ident) => {
        #[async_trait::async_trait]
        impl $crate::store::projections::ProjectionStore for $ty {
            async fn projection_position(&self) -> Result<u64, $crate::store::StoreError> {
                let p: Option<i64> = sqlx::query_scalar(
                    "SELECT position FROM projection_positions WHERE name = $1",
                )
                .bind($crate::projections::NAME)
                .fetch_optional(&self.$read)
                .await?;
                Ok(p.map_or(0, $crate::store::to_u64))
            }

            async fn apply_projection(
                &self,
                from: u64,
                to: u64,
                delta: &$crate::projections::Delta,
            ) -> Result<bool, $crate::store::StoreError> {
                use $crate::store::to_i64;
                let mut tx = self.$write.begin().await?;
                let moved = sqlx::query(
                    "UPDATE projection_positions SET position = $1 WHERE name = $2 AND position = $3",
                )
                .bind(to_i64(to))
                .bind($crate::projections::NAME)
                .bind(to_i64(from))
                .execute(&mut *tx)
                .await?;
                if moved.rows_affected() != 1 {
                    return Ok(false);
                }
                for (id, s) in &delta.streams {
                    sqlx::query(
                        "INSERT INTO stream_catalogue (stream_id, events, first_seq, last_seq, \
                         last_version, last_recorded_at) VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (stream_id) DO UPDATE SET \
                         events = stream_catalogue.events + excluded.events, \
                         last_seq = excluded.last_seq, last_version = excluded.last_version, \
                         last_recorded_at = excluded.last_recorded_at",
                    )
                    .bind(id)
                    .bind(to_i64(s.events))
                    .bind(to_i64(s.first_seq))
                    .bind(to_i64(s.last_seq))
                    .bind(to_i64(s.last_version))
                    .bind(s.last_recorded_at)
                    .execute(&mut *tx)
                    .await?;
                }
                for ((subject, stream), s) in &delta.subjects {
                    sqlx::query(
                        "INSERT INTO subject_streams (subject, stream_id, events, first_seq, \
                         last_seq) VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (subject, stream_id) DO UPDATE SET \
                         events = subject_streams.events + excluded.events, \
                         last_seq = excluded.last_seq",
                    )
                    .bind(subject.to_vec())
                    .bind(stream)
                    .bind(to_i64(s.events))
                    .bind(to_i64(s.first_seq))
                    .bind(to_i64(s.last_seq))
                    .execute(&mut *tx)
                    .await?;
                }
                for ((event_type, day), n) in &delta.type_days {
                    sqlx::query(
                        "INSERT INTO type_day_counts (event_type, day, events) VALUES ($1, $2, $3) \
                         ON CONFLICT (event_type, day) DO UPDATE SET \
                         events = type_day_counts.events + excluded.events",
                    )
                    .bind(event_type)
                    .bind(day)
                    .bind(to_i64(*n))
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn reset_projections(&self) -> Result<(), $crate::store::StoreError> {
                let mut tx = self.$write.begin().await?;
                for table in ["stream_catalogue", "subject_streams", "type_day_counts"] {
                    sqlx::query(&format!("DELETE FROM {table}"))
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query("UPDATE projection_positions SET position = 0 WHERE name = $1")
                    .bind($crate::projections::NAME)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn catalogue(
                &self,
                prefix: &str,
                after: &str,
                limit: i64,
            ) -> Result<Vec<$crate::store::projections::CatalogueRow>, $crate::store::StoreError>
            {
                let rows: Vec<(String, i64, i64, i64, i64, i64)> = sqlx::query_as(
                    "SELECT stream_id, events, first_seq, last_seq, last_version, last_recorded_at \
                     FROM stream_catalogue WHERE stream_id > $1 AND substr(stream_id, 1, $2) = $3 \
                     ORDER BY stream_id LIMIT $4",
                )
                .bind(after)
                .bind(i32::try_from(prefix.len()).unwrap_or(i32::MAX))
                .bind(prefix)
                .bind(limit)
                .fetch_all(&self.$read)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(stream_id, e, f, l, v, at)| $crate::store::projections::CatalogueRow {
                        stream_id,
                        events: $crate::store::to_u64(e),
                        first_seq: $crate::store::to_u64(f),
                        last_seq: $crate::store::to_u64(l),
                        last_version: $crate::store::to_u64(v),
                        last_recorded_at: at,
                    })
                    .collect())
            }

            async fn type_day_counts(
                &self,
                from_day: &str,
                to_day: &str,
            ) -> Result<Vec<(String, String, u64)>, $crate::store::StoreError> {
                let rows: Vec<(String, String, i64)> = sqlx::query_as(
                    "SELECT event_type, day, events FROM type_day_counts \
                     WHERE day >= $1 AND day <= $2 ORDER BY day, event_type",
                )
                .bind(from_day)
                .bind(to_day)
                .fetch_all(&self.$read)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(t, d, n)| (t, d, $crate::store::to_u64(n)))
                    .collect())
            }
        }
    };
}

pub(crate) use impl_projection_store;
