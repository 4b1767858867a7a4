//! Compliance reports: what each report counts, how it is signed, and how it is printed.
//! Pure: the service feeds entry headers in (`scan`), and gets back a [`Report`] that it signs
//! (`sign`) and renders (`render`). Every decision about what an entry counts as — an
//! erasure, a refused erasure, a disclosure, a hold in force, a policy in force — is made here.
//!
//! Memory grows with what the report shows (event types, stream prefixes, days, tokens,
//! erasures and holds in the period), never with the number of entries scanned.

pub mod render;
pub mod scan;
pub mod sign;

use serde::{Deserialize, Serialize};

pub use scan::Scan;

/// The reports the service gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportKind {
    /// Verification result, checkpoints and witnesses, signing keys.
    Integrity,
    /// Erasures and refused erasures, with receipts and holds.
    Erasures,
    /// Who read or exported personal data, per token and role.
    Access,
    /// Events by type, stream prefix and day.
    Activity,
    /// Retention policies, holds, oldest entries per event type.
    Retention,
    /// Record of processing activities.
    Processing,
}

impl ReportKind {
    /// Every kind.
    pub const ALL: [ReportKind; 6] = [
        ReportKind::Integrity,
        ReportKind::Erasures,
        ReportKind::Access,
        ReportKind::Activity,
        ReportKind::Retention,
        ReportKind::Processing,
    ];

    /// Its name in the URL.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::Integrity => "integrity",
            ReportKind::Erasures => "erasures",
            ReportKind::Access => "access",
            ReportKind::Activity => "activity",
            ReportKind::Retention => "retention",
            ReportKind::Processing => "processing",
        }
    }

    /// Parses its name.
    #[must_use]
    pub fn parse(s: &str) -> Option<ReportKind> {
        ReportKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Its title.
    #[must_use]
    pub fn title(self) -> &'static str {
        match self {
            ReportKind::Integrity => "Ledger integrity",
            ReportKind::Erasures => "Erasures and refused erasures",
            ReportKind::Access => "Access to personal data",
            ReportKind::Activity => "Activity",
            ReportKind::Retention => "Retention and legal holds",
            ReportKind::Processing => "Record of processing activities",
        }
    }

    /// What it serves.
    #[must_use]
    pub fn serves(self) -> &'static str {
        match self {
            ReportKind::Integrity => {
                "Integrity of audit records: HIPAA 45 CFR 164.312(b)-(c), PCI DSS 10.3 (protect audit logs from modification)"
            }
            ReportKind::Erasures => {
                "Right to erasure and its exceptions: GDPR Art. 17(1) and 17(3), accountability Art. 5(2)"
            }
            ReportKind::Access => {
                "Access review: HIPAA 45 CFR 164.312(b) and 164.308(a)(1)(ii)(D), PCI DSS 10.2.1.1, GDPR Art. 15(1)(c) recipients"
            }
            ReportKind::Activity => "Audit trail activity: PCI DSS 10.2, HIPAA 45 CFR 164.312(b)",
            ReportKind::Retention => {
                "Storage limitation and retention: GDPR Art. 5(1)(e), HIPAA 45 CFR 164.316(b)(2) (6 years), PCI DSS 10.5.1 (12 months)"
            }
            ReportKind::Processing => "Record of processing activities: GDPR Art. 30(1)",
        }
    }
}

/// The period a report covers: `from <= recorded_at < to`, either end open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Period {
    /// Start, µs (inclusive).
    pub from: Option<i64>,
    /// End, µs (exclusive).
    pub to: Option<i64>,
}

impl Period {
    /// Whether `t` (µs) is in the period.
    #[must_use]
    pub fn contains(&self, t: i64) -> bool {
        self.from.is_none_or(|f| t >= f) && self.to.is_none_or(|e| t < e)
    }
}

/// The checkpoint a report was computed against: it covers entries `0..tree_size`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRef {
    /// Entries covered.
    pub tree_size: u64,
    /// Merkle root, hex.
    pub root_hash: String,
    /// When signed, RFC 3339.
    pub timestamp: String,
}

/// One line of a report's summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryItem {
    /// What.
    pub label: String,
    /// Its value.
    pub value: String,
}

/// A table of a report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    /// Stable id (for programs).
    pub id: String,
    /// Title (for people).
    pub title: String,
    /// Column names.
    pub columns: Vec<String>,
    /// Rows, each as many cells as columns.
    pub rows: Vec<Vec<String>>,
}

/// Events on one day.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayCount {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// Client events recorded that day.
    pub events: u64,
}

/// A compliance report. Every value is a string or an integer, so its canonical JSON (sorted
/// keys, no spaces) is the same in every language: what the signature covers (`sign`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// `integrity`, `erasures`, ...
    pub kind: String,
    /// Title.
    pub title: String,
    /// The regulations it serves.
    pub serves: String,
    /// The ledger, 32 hex digits.
    pub ledger_id: String,
    /// Period start, RFC 3339, or null (from the first entry).
    pub period_from: Option<String>,
    /// Period end (exclusive), RFC 3339, or null (up to the checkpoint).
    pub period_to: Option<String>,
    /// When generated, RFC 3339.
    pub generated_at: String,
    /// What it was computed against.
    pub checkpoint: CheckpointRef,
    /// The figures at the top.
    pub summary: Vec<SummaryItem>,
    /// The tables.
    pub sections: Vec<Table>,
    /// Client events per day in the period (the chart).
    pub events_per_day: Vec<DayCount>,
}

/// A summary line.
#[must_use]
#[expect(
    clippy::needless_pass_by_value,
    reason = "takes counts and strings alike"
)]
pub fn item(label: &str, value: impl ToString) -> SummaryItem {
    SummaryItem {
        label: label.to_owned(),
        value: value.to_string(),
    }
}

/// A table.
#[must_use]
pub fn table(id: &str, title: &str, columns: &[&str], rows: Vec<Vec<String>>) -> Table {
    Table {
        id: id.to_owned(),
        title: title.to_owned(),
        columns: columns.iter().map(|c| (*c).to_owned()).collect(),
        rows,
    }
}
