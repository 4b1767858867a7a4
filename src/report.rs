//! The signed verification report of `GET /v1/audit/verify`. Pure: no I/O.
//!
//! ```text
//! message = "auditledger/audit-report/v2\0" || ledger_id (16) || u64 signed_at_size
//!           || u64 from_seq || u8 has_to || u64 to_seq (0 if none)
//!           || u64 entries_checked || u64 checkpoints_checked || u8 ok
//!           || u8 has_failure [|| u64 seq || str kind || str detail]
//!           || i64 verified_at (µs) || str statement
//! ```

use serde::{Deserialize, Serialize};

use crate::crypto::{LedgerSigningKey, PublicKey, Signature, SignatureError};
use crate::entry::LedgerId;
use crate::timefmt::{format_micros, parse_canonical_micros};
use crate::verify::Failure;

/// Domain separation for the report signature.
pub const REPORT_DOMAIN: &[u8] = b"auditledger/audit-report/v2\0";

/// What a verification run found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditReport {
    /// The ledger verified.
    pub ledger_id: LedgerId,
    /// The ledger's size when the report was signed: the report's position for the signing
    /// key's range (it is signed by the key that signs entry `signed_at_size`).
    pub signed_at_size: u64,
    /// First seq checked.
    pub from_seq: u64,
    /// Last seq checked (inclusive), if any.
    pub to_seq: Option<u64>,
    /// Entries that passed.
    pub entries_checked: u64,
    /// Checkpoints that passed.
    pub checkpoints_checked: u64,
    /// The first failure, if any.
    pub first_failure: Option<Failure>,
    /// When, µs since the Unix epoch.
    pub verified_at_micros: i64,
    /// What an ok proved and what it could not, in sentences (empty on a failure).
    pub statement: String,
}

fn put_str(m: &mut Vec<u8>, s: &str) {
    m.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
    m.extend_from_slice(s.as_bytes());
}

impl AuditReport {
    /// The signed message.
    #[must_use]
    pub fn message(&self) -> Vec<u8> {
        let mut m = REPORT_DOMAIN.to_vec();
        m.extend_from_slice(&self.ledger_id.0);
        m.extend_from_slice(&self.signed_at_size.to_be_bytes());
        m.extend_from_slice(&self.from_seq.to_be_bytes());
        m.push(u8::from(self.to_seq.is_some()));
        m.extend_from_slice(&self.to_seq.unwrap_or(0).to_be_bytes());
        m.extend_from_slice(&self.entries_checked.to_be_bytes());
        m.extend_from_slice(&self.checkpoints_checked.to_be_bytes());
        m.push(u8::from(self.first_failure.is_none()));
        match &self.first_failure {
            None => m.push(0),
            Some(f) => {
                m.push(1);
                m.extend_from_slice(&f.seq.0.to_be_bytes());
                put_str(&mut m, f.kind.as_str());
                put_str(&mut m, &f.detail);
            }
        }
        m.extend_from_slice(&self.verified_at_micros.to_be_bytes());
        put_str(&mut m, &self.statement);
        m
    }

    /// Signs the report.
    #[must_use]
    pub fn sign(&self, key: &LedgerSigningKey) -> SignedReport {
        let signature = key.sign_message(&self.message());
        SignedReport {
            ledger_id: self.ledger_id.to_hex(),
            signed_at_size: self.signed_at_size,
            from_seq: self.from_seq,
            to_seq: self.to_seq,
            entries_checked: self.entries_checked,
            checkpoints_checked: self.checkpoints_checked,
            ok: self.first_failure.is_none(),
            first_failure: self.first_failure.as_ref().map(|f| FailureJson {
                seq: f.seq.0,
                kind: f.kind.as_str().to_owned(),
                detail: f.detail.clone(),
            }),
            verified_at: format_micros(self.verified_at_micros),
            statement: self.statement.clone(),
            key_id: key.key_id().to_hex(),
            signature: signature.to_hex(),
        }
    }
}

/// The first failure, on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct FailureJson {
    /// Position of the bad entry.
    pub seq: u64,
    /// What is wrong (docs/FORMAT.md §5 names every kind).
    pub kind: String,
    /// A sentence for a person.
    pub detail: String,
}

/// A signed report, on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct SignedReport {
    /// The ledger verified, 32 hex digits.
    pub ledger_id: String,
    /// The ledger's size when signed (the report's position for the key's range).
    pub signed_at_size: u64,
    /// First seq checked.
    pub from_seq: u64,
    /// Last seq checked, or null if the range held no entry.
    pub to_seq: Option<u64>,
    /// Entries that passed.
    pub entries_checked: u64,
    /// Checkpoints that passed.
    pub checkpoints_checked: u64,
    /// Whether everything held.
    pub ok: bool,
    /// The first failure, or null.
    pub first_failure: Option<FailureJson>,
    /// RFC 3339, UTC, µs.
    pub verified_at: String,
    /// What an ok proved and what it could not, one sentence per line (empty on a failure).
    pub statement: String,
    /// Signing key id.
    pub key_id: String,
    /// Ed25519 signature over the report message, hex.
    pub signature: String,
}

impl SignedReport {
    /// Checks the report against the keys an auditor trusts: its key must be trusted at the
    /// report's position (`signed_at_size`), and its signature must verify.
    ///
    /// # Errors
    /// `unknown_key`, `key_out_of_range` or `bad_signature`, at the report's position.
    pub fn verify_trusted(&self, keys: &crate::verify::TrustedKeys) -> Result<(), Failure> {
        let id = crate::crypto::KeyId::from_hex(&self.key_id).map_err(|_| {
            Failure::new(
                crate::entry::Seq(self.signed_at_size),
                crate::verify::FailureKind::UnknownKey,
                "the report's key_id is malformed",
            )
        })?;
        let key = keys.key_at(&id, self.signed_at_size)?;
        self.verify(key).map_err(|_| {
            Failure::new(
                crate::entry::Seq(self.signed_at_size),
                crate::verify::FailureKind::BadSignature,
                "the report's signature does not verify",
            )
        })
    }

    /// Checks the report's signature under `key`.
    pub fn verify(&self, key: &PublicKey) -> Result<(), SignatureError> {
        let failure = match &self.first_failure {
            None => None,
            Some(f) => Some(Failure {
                seq: crate::entry::Seq(f.seq),
                kind: crate::verify::FailureKind::parse(&f.kind).ok_or(SignatureError::Invalid)?,
                detail: f.detail.clone(),
            }),
        };
        let report = AuditReport {
            ledger_id: LedgerId::from_hex(&self.ledger_id).map_err(|_| SignatureError::Invalid)?,
            signed_at_size: self.signed_at_size,
            from_seq: self.from_seq,
            to_seq: self.to_seq,
            entries_checked: self.entries_checked,
            checkpoints_checked: self.checkpoints_checked,
            first_failure: failure,
            verified_at_micros: parse_canonical_micros(&self.verified_at)
                .ok_or(SignatureError::Invalid)?,
            statement: self.statement.clone(),
        };
        let sig = Signature::from_hex(&self.signature)?;
        key.verify_message(&report.message(), &sig)
    }
}
