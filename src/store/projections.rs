//! The read models' tables (`crate::projections` holds the fold). A delta is applied with the
//! position it covers in one transaction, guarded by the position it started from.

use super::StoreError;
use crate::entry::Seq;
use crate::projections::{Counted, Delta};

/// Rows per multi-row upsert when a delta is applied: 6 values each at most, far below
/// SQLite's and PostgreSQL's limits on bound parameters.
pub const PROJECTION_CHUNK_ROWS: usize = 1000;

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

    /// What the read models count of up to `limit` entries with `seq >= from`, in order (the
    /// log is dense: `[from, from + limit)`). Selects those columns alone, so that the
    /// maintainer neither reads nor decodes payloads, hashes and signatures it has no use for.
    ///
    /// # Errors
    /// The database failed, or a row's counted columns do not decode ([`StoreError::Malformed`],
    /// as [`super::EntryRow::into_record`] would refuse them).
    async fn read_counted(&self, from: Seq, limit: u32) -> Result<Vec<Counted>, StoreError>;

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

            async fn read_counted(
                &self,
                from: $crate::entry::Seq,
                limit: u32,
            ) -> Result<Vec<$crate::projections::Counted>, $crate::store::StoreError> {
                let sql = format!(
                    "SELECT {} FROM entries WHERE seq >= $1 ORDER BY seq LIMIT $2",
                    $crate::store::COUNTED_COLUMNS
                );
                let rows: Vec<$crate::store::CountedColumns> = sqlx::query_as(&sql)
                    .bind($crate::store::to_i64(from.0))
                    .bind(i64::from(limit))
                    .fetch_all(&self.$read)
                    .await?;
                rows.into_iter().map($crate::store::counted).collect()
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
                // One multi-row upsert per table and chunk, not one statement per row: the
                // transaction holds the ledger's single SQLite writer connection, and a chunk
                // of 1-event appends touches thousands of streams.
                let streams: Vec<_> = delta.streams.iter().collect();
                for chunk in streams.chunks($crate::store::projections::PROJECTION_CHUNK_ROWS) {
                    let mut qb = sqlx::QueryBuilder::new(
                        "INSERT INTO stream_catalogue (stream_id, events, first_seq, last_seq, \
                         last_version, last_recorded_at) ",
                    );
                    qb.push_values(chunk, |mut b, (id, s)| {
                        b.push_bind(id.as_str())
                            .push_bind(to_i64(s.events))
                            .push_bind(to_i64(s.first_seq))
                            .push_bind(to_i64(s.last_seq))
                            .push_bind(to_i64(s.last_version))
                            .push_bind(s.last_recorded_at);
                    });
                    qb.push(
                        " ON CONFLICT (stream_id) DO UPDATE SET \
                         events = stream_catalogue.events + excluded.events, \
                         last_seq = excluded.last_seq, last_version = excluded.last_version, \
                         last_recorded_at = excluded.last_recorded_at",
                    );
                    qb.build().execute(&mut *tx).await?;
                }
                let subjects: Vec<_> = delta.subjects.iter().collect();
                for chunk in subjects.chunks($crate::store::projections::PROJECTION_CHUNK_ROWS) {
                    let mut qb = sqlx::QueryBuilder::new(
                        "INSERT INTO subject_streams (subject, stream_id, events, first_seq, \
                         last_seq) ",
                    );
                    qb.push_values(chunk, |mut b, ((subject, stream), s)| {
                        b.push_bind(subject.to_vec())
                            .push_bind(stream.as_str())
                            .push_bind(to_i64(s.events))
                            .push_bind(to_i64(s.first_seq))
                            .push_bind(to_i64(s.last_seq));
                    });
                    qb.push(
                        " ON CONFLICT (subject, stream_id) DO UPDATE SET \
                         events = subject_streams.events + excluded.events, \
                         last_seq = excluded.last_seq",
                    );
                    qb.build().execute(&mut *tx).await?;
                }
                let type_days: Vec<_> = delta.type_days.iter().collect();
                for chunk in type_days.chunks($crate::store::projections::PROJECTION_CHUNK_ROWS) {
                    let mut qb = sqlx::QueryBuilder::new(
                        "INSERT INTO type_day_counts (event_type, day, events) ",
                    );
                    qb.push_values(chunk, |mut b, ((event_type, day), n)| {
                        b.push_bind(event_type.as_str())
                            .push_bind(day.as_str())
                            .push_bind(to_i64(**n));
                    });
                    qb.push(
                        " ON CONFLICT (event_type, day) DO UPDATE SET \
                         events = type_day_counts.events + excluded.events",
                    );
                    qb.build().execute(&mut *tx).await?;
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
