//! One pass over the log's entry headers (up to a checkpoint), counting what every report
//! needs; then each report's tables from the counts.

use std::collections::BTreeMap;

use super::{DayCount, Period, Report, ReportKind, SummaryItem, Table, item, table};
use crate::access::record::{
    ACCESS_STREAM, AccessAction, AccessOutcome, AccessRecord, HOLD_PLACED, HOLD_RELEASED,
    HOLDS_STREAM, HoldRecord, POLICIES_STREAM, RetentionPolicy,
};
use crate::entry::EntryHeader;
use crate::timefmt::format_micros;
use crate::verify::invariants::{ERASURE_STREAM, SUBJECT_ERASED, SYSTEM_STREAM_PREFIX};

/// Microseconds per day.
const DAY_MICROS: i64 = 86_400_000_000;

/// `YYYY-MM-DD` of a time.
fn day(t: i64) -> String {
    format_micros(t).chars().take(10).collect()
}

/// The prefix of a stream id that groups it in the activity report: up to and including the
/// first `-`, `:`, `.` or `_` after its first character, or the whole id.
#[must_use]
pub fn stream_prefix(stream: &str) -> &str {
    match stream
        .char_indices()
        .skip(1)
        .find(|(_, c)| matches!(c, '-' | ':' | '.' | '_'))
    {
        Some((i, c)) => &stream[..i + c.len_utf8()],
        None => stream,
    }
}

/// Client events of one type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeStats {
    /// Up to the checkpoint.
    pub total: u64,
    /// In the period.
    pub in_period: u64,
    /// Naming a subject (up to the checkpoint).
    pub with_subject: u64,
    /// The oldest: seq and time.
    pub oldest: Option<(u64, i64)>,
    /// The newest time.
    pub newest: Option<i64>,
    /// Stream prefixes it appears in.
    pub prefixes: std::collections::BTreeSet<String>,
}

/// Access entries of one token, role, action and outcome in the period.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessStats {
    /// Requests.
    pub requests: u64,
    /// Events whose personal data was disclosed.
    pub events: u64,
    /// Subjects (summed over requests).
    pub subjects: u64,
    /// First and last time.
    pub first: Option<i64>,
    /// Last time.
    pub last: Option<i64>,
}

/// An erasure, or a refused one, in the period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErasureFact {
    /// Seq of its entry (the `SubjectErased` entry, or the access entry of the refusal).
    pub seq: u64,
    /// When.
    pub at: i64,
    /// The subject's handle, hex.
    pub subject: String,
    /// Refused: the hold's seq and case reference, the erasure's request reference, the token
    /// that asked.
    pub refused: Option<[String; 4]>,
}

/// A hold placed or released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldFact {
    /// Seq of its entry.
    pub seq: u64,
    /// When.
    pub at: i64,
    /// Placed (true) or released.
    pub placed: bool,
    /// What it records.
    pub record: HoldRecord,
}

/// What one pass over the log counted.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    /// The report's period.
    pub period: Period,
    /// Entries scanned (all, up to the checkpoint).
    pub entries: u64,
    /// Client events in the period.
    pub events_in_period: u64,
    /// The ledger's own entries in the period.
    pub own_entries_in_period: u64,
    /// Client events per day in the period.
    pub per_day: BTreeMap<String, u64>,
    /// Client events per (type, stream prefix, day) in the period.
    pub activity: BTreeMap<(String, String, String), u64>,
    /// Client events per type.
    pub types: BTreeMap<String, TypeStats>,
    /// Access entries per (token, role, action, outcome) in the period.
    pub access: BTreeMap<(String, String, AccessAction, AccessOutcome), AccessStats>,
    /// Erasures and refused erasures in the period, in seq order.
    pub erasures: Vec<ErasureFact>,
    /// Holds in force at the checkpoint, by handle.
    pub holds: BTreeMap<String, HoldFact>,
    /// Holds placed and released in the period.
    pub hold_changes: Vec<HoldFact>,
    /// The policy in force per event type, with its entry's seq and time.
    pub policies: BTreeMap<String, (RetentionPolicy, u64, i64)>,
    /// Seqs of erasures of a subject whose hold the chain shows in force: the service refuses
    /// them, so one here means the `legal_holds` table was tampered with.
    pub erased_under_hold: Vec<u64>,
}

impl Scan {
    /// A scan for `period`.
    #[must_use]
    pub fn new(period: Period) -> Scan {
        Scan {
            period,
            ..Scan::default()
        }
    }

    /// Counts an access entry of the period.
    fn add_access(&mut self, seq: u64, at: i64, r: AccessRecord) {
        if r.action == AccessAction::EraseSubject && r.outcome == AccessOutcome::Refused {
            let subject = r.subject.map(|s| s.to_hex()).unwrap_or_default();
            // Entries come in seq order: the hold that refused it is in force here.
            let hold_reference = self
                .holds
                .get(&subject)
                .map(|h| h.record.reference.clone())
                .unwrap_or_default();
            self.erasures.push(ErasureFact {
                seq,
                at,
                subject,
                refused: Some([
                    r.target.clone().unwrap_or_default(),
                    hold_reference,
                    r.reference.clone().unwrap_or_default(),
                    r.actor.token_id.clone(),
                ]),
            });
        }
        let s = self
            .access
            .entry((r.actor.token_id, r.actor.role, r.action, r.outcome))
            .or_default();
        s.requests += 1;
        s.events += r.events;
        s.subjects += r.subjects;
        s.first.get_or_insert(at);
        s.last = Some(at);
    }

    /// Counts an erasure; one erasing a subject under hold is an anomaly, in or out of the
    /// period.
    fn add_erasure(&mut self, h: &EntryHeader, in_period: bool) {
        let (seq, at, m) = (h.seq.0, h.recorded_at_micros, &h.metadata);
        let subject = h.subject.map(|s| s.to_hex()).unwrap_or_default();
        if self.holds.remove(&subject).is_some() {
            self.erased_under_hold.push(seq);
        }
        if !in_period {
            return;
        }
        // The erasure entry is its own access record: it names the token that asked.
        if let (Some(token), Some(role)) = (m.get("token_id"), m.get("role")) {
            let s = self
                .access
                .entry((
                    token.clone(),
                    role.clone(),
                    AccessAction::EraseSubject,
                    AccessOutcome::Ok,
                ))
                .or_default();
            s.requests += 1;
            s.subjects += 1;
            s.first.get_or_insert(at);
            s.last = Some(at);
        }
        self.erasures.push(ErasureFact {
            seq,
            at,
            subject: h.subject.map(|s| s.to_hex()).unwrap_or_default(),
            refused: None,
        });
    }

    /// Counts one entry. Entries come in seq order.
    pub fn add(&mut self, h: &EntryHeader) {
        self.entries += 1;
        let at = h.recorded_at_micros;
        let in_period = self.period.contains(at);
        let stream = h.stream_id.as_str();
        if !stream.starts_with(SYSTEM_STREAM_PREFIX) {
            self.add_client(h, in_period);
            return;
        }
        if in_period {
            self.own_entries_in_period += 1;
        }
        let seq = h.seq.0;
        let m = &h.metadata;
        match (stream, h.event_type.as_str()) {
            (ACCESS_STREAM, _) => {
                if in_period && let Some(r) = AccessRecord::from_metadata(m) {
                    self.add_access(seq, at, r);
                }
            }
            (ERASURE_STREAM, SUBJECT_ERASED) => self.add_erasure(h, in_period),
            (HOLDS_STREAM, t @ (HOLD_PLACED | HOLD_RELEASED)) => {
                let Some(record) = HoldRecord::from_metadata(m) else {
                    return;
                };
                let fact = HoldFact {
                    seq,
                    at,
                    placed: t == HOLD_PLACED,
                    record,
                };
                let handle = fact.record.subject.to_hex();
                if fact.placed {
                    self.holds.insert(handle, fact.clone());
                } else {
                    self.holds.remove(&handle);
                }
                if in_period {
                    self.hold_changes.push(fact);
                }
            }
            (POLICIES_STREAM, _) => {
                if let Some(p) = RetentionPolicy::from_metadata(m) {
                    self.policies.insert(p.event_type.clone(), (p, seq, at));
                }
            }
            _ => {}
        }
    }

    fn add_client(&mut self, h: &EntryHeader, in_period: bool) {
        let at = h.recorded_at_micros;
        let prefix = stream_prefix(h.stream_id.as_str());
        let t = self
            .types
            .entry(h.event_type.as_str().to_owned())
            .or_default();
        t.total += 1;
        t.with_subject += u64::from(h.subject.is_some());
        t.oldest.get_or_insert((h.seq.0, at));
        t.newest = Some(at);
        if !t.prefixes.contains(prefix) {
            t.prefixes.insert(prefix.to_owned());
        }
        if in_period {
            t.in_period += 1;
            self.events_in_period += 1;
            let d = day(at);
            *self
                .activity
                .entry((
                    h.event_type.as_str().to_owned(),
                    prefix.to_owned(),
                    d.clone(),
                ))
                .or_default() += 1;
            *self.per_day.entry(d).or_default() += 1;
        }
    }
}

/// What the report is about and against what: everything but the tables.
#[derive(Clone, Debug)]
pub struct Heading {
    /// The ledger, hex.
    pub ledger_id: String,
    /// When generated, µs.
    pub generated_at: i64,
    /// The checkpoint.
    pub checkpoint: super::CheckpointRef,
}

/// The integrity report's facts that do not come from the scan.
#[derive(Clone, Debug, Default)]
pub struct IntegrityFacts {
    /// Whether the verification passed.
    pub ok: bool,
    /// Entries verified.
    pub entries_checked: u64,
    /// Checkpoints verified.
    pub checkpoints_checked: u64,
    /// The first failure, as a sentence.
    pub first_failure: Option<String>,
    /// What an ok proved.
    pub statement: String,
    /// Checkpoints in the period: tree size, root hash, time, key id.
    pub checkpoints: Vec<[String; 4]>,
    /// Signing keys: id, first seq, last seq.
    pub keys: Vec<[String; 3]>,
    /// Witnesses: name, what they hold.
    pub witnesses: Vec<[String; 2]>,
}

/// An erasure's receipt, for the erasures report: key id, signature, request reference,
/// forgotten by; by erasure seq.
pub type Receipts = BTreeMap<u64, [String; 4]>;

fn opt_time(t: Option<i64>) -> String {
    t.map(format_micros).unwrap_or_default()
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "takes counts and strings alike"
)]
fn s(v: impl ToString) -> String {
    v.to_string()
}

/// Builds the report of `kind` from a scan.
#[must_use]
pub fn build(
    kind: ReportKind,
    scan: &Scan,
    heading: &Heading,
    integrity: Option<&IntegrityFacts>,
    receipts: &Receipts,
) -> Report {
    let (summary, sections) = match kind {
        ReportKind::Integrity => integrity_tables(scan, integrity.cloned().unwrap_or_default()),
        ReportKind::Erasures => erasure_tables(scan, receipts),
        ReportKind::Access => access_tables(scan),
        ReportKind::Activity => activity_tables(scan),
        ReportKind::Retention => retention_tables(scan, heading.generated_at),
        ReportKind::Processing => processing_tables(scan),
    };
    Report {
        kind: kind.as_str().to_owned(),
        title: kind.title().to_owned(),
        serves: kind.serves().to_owned(),
        ledger_id: heading.ledger_id.clone(),
        period_from: scan.period.from.map(format_micros),
        period_to: scan.period.to.map(format_micros),
        generated_at: format_micros(heading.generated_at),
        checkpoint: heading.checkpoint.clone(),
        summary,
        sections,
        events_per_day: scan
            .per_day
            .iter()
            .map(|(day, events)| DayCount {
                day: day.clone(),
                events: *events,
            })
            .collect(),
    }
}

type Tables = (Vec<SummaryItem>, Vec<Table>);

fn integrity_tables(scan: &Scan, f: IntegrityFacts) -> Tables {
    let summary = vec![
        item("Verification", if f.ok { "passed" } else { "FAILED" }),
        item("Entries verified", f.entries_checked),
        item("Checkpoints verified", f.checkpoints_checked),
        item("Entries up to the checkpoint", scan.entries),
        item("Signing keys", f.keys.len()),
        item(
            "First failure",
            f.first_failure.clone().unwrap_or_else(|| "none".to_owned()),
        ),
    ];
    let mut verification = vec![vec![s("result"), s(if f.ok { "passed" } else { "failed" })]];
    if let Some(fail) = &f.first_failure {
        verification.push(vec![s("first failure"), fail.clone()]);
    }
    for line in f.statement.lines().filter(|l| !l.is_empty()) {
        verification.push(vec![s("statement"), line.to_owned()]);
    }
    let sections = vec![
        table(
            "verification",
            "Verification",
            &["item", "value"],
            verification,
        ),
        table(
            "checkpoints",
            "Checkpoints in the period",
            &["tree_size", "root_hash", "timestamp", "key_id"],
            f.checkpoints.into_iter().map(Vec::from).collect(),
        ),
        table(
            "witnesses",
            "Witnesses",
            &["witness", "state"],
            f.witnesses.into_iter().map(Vec::from).collect(),
        ),
        table(
            "signing_keys",
            "Signing keys and their ranges",
            &["key_id", "first_seq", "last_seq"],
            f.keys.into_iter().map(Vec::from).collect(),
        ),
    ];
    (summary, sections)
}

fn erasure_tables(scan: &Scan, receipts: &Receipts) -> Tables {
    let done: Vec<_> = scan
        .erasures
        .iter()
        .filter(|e| e.refused.is_none())
        .collect();
    let refused: Vec<_> = scan
        .erasures
        .iter()
        .filter(|e| e.refused.is_some())
        .collect();
    let summary = vec![
        item("Erasures", done.len()),
        item("Refused erasures (legal hold)", refused.len()),
        item("Subjects under hold at the checkpoint", scan.holds.len()),
        item("Hold changes in the period", scan.hold_changes.len()),
        item(
            "Erasures of a subject under hold (must be none)",
            scan.erased_under_hold.len(),
        ),
    ];
    let rows = done
        .iter()
        .map(|e| {
            let r = receipts.get(&e.seq).cloned().unwrap_or_default();
            vec![
                s(e.seq),
                format_micros(e.at),
                e.subject.clone(),
                r[2].clone(),
                r[3].clone(),
                r[0].clone(),
                r[1].clone(),
            ]
        })
        .collect();
    let refused_rows = refused
        .iter()
        .map(|e| {
            let [hold_seq, hold_reference, request_ref, token] =
                e.refused.clone().unwrap_or_default();
            vec![
                s(e.seq),
                format_micros(e.at),
                e.subject.clone(),
                request_ref,
                hold_seq,
                hold_reference,
                token,
            ]
        })
        .collect();
    let sections = vec![
        table(
            "erasures",
            "Erasures (signed receipts)",
            &[
                "erasure_seq",
                "erased_at",
                "subject_handle",
                "request_ref",
                "forgotten_by",
                "receipt_key_id",
                "receipt_signature",
            ],
            rows,
        ),
        table(
            "refused_erasures",
            "Erasures refused because of a legal hold",
            &[
                "access_seq",
                "at",
                "subject_handle",
                "request_ref",
                "hold_seq",
                "hold_reference",
                "token_id",
            ],
            refused_rows,
        ),
        hold_changes_table(scan),
        holds_table(scan),
    ];
    (summary, sections)
}

fn hold_changes_table(scan: &Scan) -> Table {
    table(
        "hold_changes",
        "Legal holds placed and released in the period",
        &[
            "seq",
            "at",
            "change",
            "subject_handle",
            "reference",
            "reason",
            "token_id",
        ],
        scan.hold_changes
            .iter()
            .map(|h| {
                vec![
                    s(h.seq),
                    format_micros(h.at),
                    s(if h.placed { "placed" } else { "released" }),
                    h.record.subject.to_hex(),
                    h.record.reference.clone(),
                    h.record.reason.clone(),
                    h.record.actor.token_id.clone(),
                ]
            })
            .collect(),
    )
}

fn holds_table(scan: &Scan) -> Table {
    table(
        "holds_in_force",
        "Legal holds in force at the checkpoint",
        &[
            "hold_seq",
            "placed_at",
            "subject_handle",
            "reference",
            "reason",
        ],
        scan.holds
            .values()
            .map(|h| {
                vec![
                    s(h.seq),
                    format_micros(h.at),
                    h.record.subject.to_hex(),
                    h.record.reference.clone(),
                    h.record.reason.clone(),
                ]
            })
            .collect(),
    )
}

fn access_tables(scan: &Scan) -> Tables {
    let mut per_token: BTreeMap<(&str, &str), AccessStats> = BTreeMap::new();
    let mut disclosed = 0;
    let mut requests = 0;
    for ((token, role, action, _), st) in &scan.access {
        requests += st.requests;
        if action.discloses() {
            disclosed += st.events;
            let t = per_token.entry((token, role)).or_default();
            t.requests += st.requests;
            t.events += st.events;
            t.subjects += st.subjects;
            t.first = t.first.min(st.first).or(t.first).or(st.first);
            t.last = t.last.max(st.last);
        }
    }
    let summary = vec![
        item("Audited requests", requests),
        item("Events whose personal data was disclosed", disclosed),
        item(
            "Tokens that read or exported personal data",
            per_token.len(),
        ),
    ];
    let review = per_token
        .iter()
        .map(|((token, role), st)| {
            vec![
                s(token),
                s(role),
                s(st.requests),
                s(st.events),
                s(st.subjects),
                opt_time(st.first),
                opt_time(st.last),
            ]
        })
        .collect();
    let detail = scan
        .access
        .iter()
        .map(|((token, role, action, outcome), st)| {
            vec![
                token.clone(),
                role.clone(),
                s(action.as_str()),
                s(outcome.as_str()),
                s(st.requests),
                s(st.events),
                s(st.subjects),
            ]
        })
        .collect();
    let sections = vec![
        table(
            "disclosures_per_token",
            "Who read or exported personal data (per token and role)",
            &[
                "token_id", "role", "requests", "events", "subjects", "first", "last",
            ],
            review,
        ),
        table(
            "audited_requests",
            "Every audited request, per token, role, action and outcome",
            &[
                "token_id", "role", "action", "outcome", "requests", "events", "subjects",
            ],
            detail,
        ),
    ];
    (summary, sections)
}

fn activity_tables(scan: &Scan) -> Tables {
    let summary = vec![
        item("Client events in the period", scan.events_in_period),
        item(
            "Ledger's own entries in the period",
            scan.own_entries_in_period,
        ),
        item(
            "Event types",
            scan.types.values().filter(|t| t.in_period > 0).count(),
        ),
        item("Days with events", scan.per_day.len()),
    ];
    let mut by_type: BTreeMap<&str, u64> = BTreeMap::new();
    let mut by_prefix: BTreeMap<&str, u64> = BTreeMap::new();
    for ((t, p, _), n) in &scan.activity {
        *by_type.entry(t).or_default() += n;
        *by_prefix.entry(p).or_default() += n;
    }
    let sections = vec![
        table(
            "events_by_type",
            "Events by type",
            &["event_type", "events"],
            by_type.iter().map(|(t, n)| vec![s(t), s(n)]).collect(),
        ),
        table(
            "events_by_stream_prefix",
            "Events by stream prefix",
            &["stream_prefix", "events"],
            by_prefix.iter().map(|(p, n)| vec![s(p), s(n)]).collect(),
        ),
        table(
            "events_by_day",
            "Events by day",
            &["day", "events"],
            scan.per_day
                .iter()
                .map(|(d, n)| vec![d.clone(), s(n)])
                .collect(),
        ),
        table(
            "events_by_type_prefix_day",
            "Events by type, stream prefix and day",
            &["event_type", "stream_prefix", "day", "events"],
            scan.activity
                .iter()
                .map(|((t, p, d), n)| vec![t.clone(), p.clone(), d.clone(), s(n)])
                .collect(),
        ),
    ];
    (summary, sections)
}

fn retention_tables(scan: &Scan, now: i64) -> Tables {
    let mut beyond = 0;
    let rows: Vec<Vec<String>> = scan
        .types
        .iter()
        .map(|(t, st)| {
            let policy = scan.policies.get(t);
            let days = policy.map(|(p, _, _)| p.retention_days);
            let (oldest_seq, oldest_at) = st.oldest.unwrap_or_default();
            let age_days = (now - oldest_at) / DAY_MICROS;
            let past = days.is_some_and(|d| age_days > i64::from(d));
            beyond += u64::from(past);
            vec![
                t.clone(),
                days.map_or_else(|| s("none"), s),
                s(st.total),
                s(oldest_seq),
                format_micros(oldest_at),
                s(age_days),
                s(if past { "yes" } else { "no" }),
            ]
        })
        .collect();
    let summary = vec![
        item("Event types in use", scan.types.len()),
        item(
            "Event types without a retention policy",
            scan.types
                .keys()
                .filter(|t| !scan.policies.contains_key(*t))
                .count(),
        ),
        item(
            "Event types whose oldest entry is past its retention",
            beyond,
        ),
        item("Subjects under hold", scan.holds.len()),
        item("Entries deleted because of retention", 0),
    ];
    let policies = scan
        .policies
        .values()
        .map(|(p, seq, at)| {
            vec![
                p.event_type.clone(),
                s(p.retention_days),
                p.purpose.clone(),
                s(seq),
                format_micros(*at),
                p.actor.token_id.clone(),
            ]
        })
        .collect();
    let sections = vec![
        table(
            "policies",
            "Retention policies in force",
            &[
                "event_type",
                "retention_days",
                "purpose",
                "set_by_seq",
                "set_at",
                "set_by_token",
            ],
            policies,
        ),
        table(
            "oldest_entries",
            "Oldest entry per event type",
            &[
                "event_type",
                "retention_days",
                "entries",
                "oldest_seq",
                "oldest_at",
                "age_days",
                "past_retention",
            ],
            rows,
        ),
        holds_table(scan),
    ];
    (summary, sections)
}

fn processing_tables(scan: &Scan) -> Tables {
    let rows: Vec<Vec<String>> = scan
        .types
        .iter()
        .map(|(t, st)| {
            let p = scan.policies.get(t).map(|(p, _, _)| p);
            vec![
                t.clone(),
                p.map_or_else(|| s("not declared"), |p| p.purpose.clone()),
                p.and_then(|p| p.legal_basis.clone()).unwrap_or_default(),
                p.and_then(|p| p.data_categories.clone())
                    .unwrap_or_default(),
                s(if st.with_subject > 0 { "yes" } else { "no" }),
                p.map_or_else(|| s("not declared"), |p| s(p.retention_days)),
                st.prefixes.iter().cloned().collect::<Vec<_>>().join(" "),
                s(st.total),
                opt_time(st.oldest.map(|o| o.1)),
                opt_time(st.newest),
            ]
        })
        .collect();
    let undeclared = scan
        .types
        .keys()
        .filter(|t| !scan.policies.contains_key(*t))
        .count();
    let summary = vec![
        item("Event types in use", scan.types.len()),
        item(
            "Event types holding personal data",
            scan.types.values().filter(|t| t.with_subject > 0).count(),
        ),
        item("Event types without a declared purpose", undeclared),
        item(
            "Security measures",
            "AES-256-GCM per data subject, SHA-256 hash chain, Ed25519 signatures, crypto-shredding erasure",
        ),
    ];
    let sections = vec![table(
        "processing_activities",
        "Processing activities by event type",
        &[
            "event_type",
            "purpose",
            "legal_basis",
            "data_categories",
            "personal_data",
            "retention_days",
            "stream_prefixes",
            "entries",
            "first_recorded",
            "last_recorded",
        ],
        rows,
    )];
    (summary, sections)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(stream_prefix("billing-42"), "billing-");
        assert_eq!(stream_prefix("orders"), "orders");
        assert_eq!(stream_prefix("-x"), "-x");
        assert_eq!(stream_prefix("a.b-c"), "a.");
    }

    #[test]
    fn periods() {
        let p = Period {
            from: Some(10),
            to: Some(20),
        };
        assert!(!p.contains(9) && p.contains(10) && p.contains(19) && !p.contains(20));
        assert!(Period::default().contains(i64::MIN));
    }
}
