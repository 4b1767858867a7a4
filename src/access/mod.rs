//! Access control and its record. Pure: no I/O, no clock, no database.
//!
//! - [`policy`]: the roles, every operation of the API, which roles may run it, and how a
//!   token's stream prefixes limit it. The one table an auditor reads to know who could do what.
//! - [`token`]: the bearer token's format, its hash, and when a stored token is usable.
//! - [`record`]: the ledger's own entries about access (who read, exported or erased what),
//!   legal holds and retention policies, as metadata that holds no personal data.

pub mod policy;
pub mod record;
pub mod token;

pub use policy::{Decision, Grant, Operation, Role, Roles};
pub use record::{AccessAction, AccessOutcome, AccessRecord, HoldRecord, RetentionPolicy};
