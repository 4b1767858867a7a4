//! auditledger: a tamper-evident, crypto-shredding audit ledger and event store.
//!
//! The pure core — [`entry`], [`record`], [`verify`] and [`crypto`] — does no I/O and builds
//! without the `server` feature; it is what an auditor reads and what the offline verifier is
//! made of. Everything else (storage, the append pipeline, HTTP, the command line) sits behind
//! the `server` feature.

pub mod access;
pub mod bundle;
pub mod checkpoint;
pub mod compliance;
pub mod crypto;
pub mod entry;
pub mod identifiers;
pub mod merkle;
pub mod projections;
pub mod receipt;
pub mod record;
pub mod report;
pub mod rotation;
pub mod snapshot;
pub mod subscription;
pub mod timefmt;
pub mod upcast;
pub mod verify;

#[cfg(feature = "server")]
pub mod api;
#[cfg(feature = "server")]
pub mod audit;
#[cfg(feature = "server")]
pub mod backend;
#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod epochs;
#[cfg(feature = "server")]
pub mod export;
#[cfg(feature = "server")]
pub mod keyfiles;
#[cfg(feature = "server")]
pub mod ledger;
#[cfg(feature = "server")]
pub mod lockfile;
#[cfg(feature = "server")]
pub mod rotate;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod telemetry;
#[cfg(feature = "server")]
pub mod tokens;
#[cfg(feature = "server")]
pub mod vault;
#[cfg(feature = "server")]
pub mod witness;
