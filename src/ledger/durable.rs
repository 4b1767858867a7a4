//! Durable named subscriptions over the store (`crate::subscription::durable` holds the rules).

use std::time::Duration;

use rand::RngCore;

use super::{Ledger, ReadError};
use crate::entry::Seq;
use crate::store::EntryRow;
use crate::store::subscriptions::{SubscriptionChange, SubscriptionRow};
use crate::subscription::durable::{self, Lease, Next};
use crate::subscription::{Delivery, Filter};
use crate::timefmt::now_micros;

/// Entries scanned per poll when the filter admits few of them.
const SCAN: u32 = 1000;
/// Attempts before a poll or acknowledgement gives up on concurrent updates.
const ATTEMPTS: usize = 20;

/// Why a durable-subscription request failed.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    /// No subscription of that name.
    #[error("no subscription of that name")]
    NoSuchSubscription,
    /// The lease is not held: expired and handed out again, or already acknowledged.
    #[error(
        "this lease is not held: it expired and its events were handed out again (they will \
         be acknowledged by whoever got them), or it was already acknowledged"
    )]
    LeaseGone,
    /// Too many concurrent updates.
    #[error("too many consumers updated this subscription at once; retry")]
    Contended,
    /// Reading or writing failed.
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// What a poll hands out.
pub struct Polled {
    /// The lease covering `rows` (none when there was nothing new).
    pub lease: Option<Lease>,
    /// The entries of the lease the filter admits: events and erasures, in seq order.
    pub rows: Vec<EntryRow>,
    /// The subscription's filter.
    pub filter: Filter,
}

fn filter_of(row: &SubscriptionRow) -> Filter {
    Filter {
        stream_prefix: row.stream_prefix.clone(),
        event_type: row.event_type.clone(),
    }
}

fn admitted(filter: &Filter, row: &EntryRow) -> bool {
    let (_, stream, _) = row.disclosure_fields();
    filter.classify(stream, row.event_type_str()) != Delivery::Skip
}

fn lease_id() -> String {
    let mut b = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

impl Ledger {
    /// Creates a subscription; `Ok(false)` if one of that name exists (with its row).
    ///
    /// # Errors
    /// A store failure.
    pub async fn create_subscription(
        &self,
        row: &SubscriptionRow,
    ) -> Result<(bool, SubscriptionRow), ReadError> {
        let created = self.store.create_subscription(row, now_micros()).await?;
        let existing = self
            .store
            .subscription(&row.name)
            .await?
            .map_or_else(|| row.clone(), |(r, _)| r);
        Ok((created, existing))
    }

    /// A subscription and its leases.
    ///
    /// # Errors
    /// A store failure.
    pub async fn subscription(
        &self,
        name: &str,
    ) -> Result<Option<(SubscriptionRow, Vec<Lease>)>, ReadError> {
        Ok(self.store.subscription(name).await?)
    }

    /// Hands the next range of `name` to a consumer for `lease`: an expired lease's range
    /// again, or at most `max` new entries the filter admits.
    ///
    /// # Errors
    /// No such subscription, contention, or a store failure.
    pub async fn poll_subscription(
        &self,
        name: &str,
        max: u32,
        lease: Duration,
    ) -> Result<Polled, DurableError> {
        for _ in 0..ATTEMPTS {
            let (row, leases) = self
                .store
                .subscription(name)
                .await
                .map_err(ReadError::from)?
                .ok_or(DurableError::NoSuchSubscription)?;
            let filter = filter_of(&row);
            let now = now_micros();
            let expires_at =
                now.saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX));
            let mut change = SubscriptionChange {
                position: row.position,
                ..SubscriptionChange::default()
            };
            let (new, rows) = match durable::next(row.position, &leases, now) {
                Next::Redeliver { expired, from, to } => {
                    let span = u32::try_from(to - from + 1).unwrap_or(u32::MAX);
                    let rows: Vec<EntryRow> = self
                        .global_rows(Seq(from), span)
                        .await?
                        .into_iter()
                        .filter(|r| admitted(&filter, r))
                        .collect();
                    change.delete.push(expired);
                    let l = Lease {
                        id: lease_id(),
                        from,
                        to,
                        expires_at,
                        acked: false,
                    };
                    (l, rows)
                }
                Next::From(start) => {
                    let scanned = self.global_rows(Seq(start), SCAN).await?;
                    let Some(last) = scanned.last().map(|r| r.disclosure_fields().0) else {
                        return Ok(Polled {
                            lease: None,
                            rows: Vec::new(),
                            filter,
                        });
                    };
                    let mut to = last;
                    let mut rows = Vec::new();
                    for r in scanned {
                        if admitted(&filter, &r) {
                            let seq = r.disclosure_fields().0;
                            rows.push(r);
                            if rows.len() == max as usize {
                                to = seq;
                                break;
                            }
                        }
                    }
                    // Nothing admitted in the scanned range: it is passed over at once.
                    let acked = rows.is_empty();
                    let l = Lease {
                        id: lease_id(),
                        from: start,
                        to,
                        expires_at,
                        acked,
                    };
                    (l, rows)
                }
            };
            let mut all: Vec<Lease> = leases
                .into_iter()
                .filter(|l| !change.delete.contains(&l.id))
                .collect();
            all.push(new.clone());
            let (position, folded) = durable::advance(row.position, &all);
            change.position = position;
            if !folded.contains(&new.id) {
                change.insert = Some(new.clone());
            }
            change
                .delete
                .extend(folded.into_iter().filter(|id| *id != new.id));
            if self
                .store
                .update_subscription(name, row.version, &change)
                .await
                .map_err(ReadError::from)?
            {
                let handed = (!new.acked).then_some(new);
                return Ok(Polled {
                    lease: handed,
                    rows,
                    filter,
                });
            }
        }
        Err(DurableError::Contended)
    }

    /// Acknowledges a lease; returns the subscription's position after it.
    ///
    /// # Errors
    /// No such subscription, a lease not held, contention, or a store failure.
    pub async fn ack_subscription(&self, name: &str, lease_id: &str) -> Result<u64, DurableError> {
        for _ in 0..ATTEMPTS {
            let (row, mut leases) = self
                .store
                .subscription(name)
                .await
                .map_err(ReadError::from)?
                .ok_or(DurableError::NoSuchSubscription)?;
            let Some(lease) = leases.iter_mut().find(|l| l.id == lease_id && !l.acked) else {
                return Err(DurableError::LeaseGone);
            };
            lease.acked = true;
            let (position, folded) = durable::advance(row.position, &leases);
            let change = SubscriptionChange {
                position,
                ack: (!folded.iter().any(|id| id == lease_id)).then(|| lease_id.to_owned()),
                delete: folded,
                insert: None,
            };
            if self
                .store
                .update_subscription(name, row.version, &change)
                .await
                .map_err(ReadError::from)?
            {
                return Ok(position);
            }
        }
        Err(DurableError::Contended)
    }
}
