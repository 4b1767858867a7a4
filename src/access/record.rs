//! The ledger's own entries about access, legal holds and retention policies.
//!
//! Each is an entry in a stream of its own (below), appended by the service, never by a client
//! (the API refuses `auditledger:` streams). Their facts are in the entry's metadata, in clear
//! and covered by the entry hash, so an auditor reads them from an export bundle without any
//! key; they hold no personal data: subjects appear only by handle, tokens only by id. Their
//! payload is `{}` sealed under the system key, except an access entry's, which lists the
//! handles whose data a read decrypted.

use crate::entry::{Metadata, SubjectHandle};

/// Access entries: one per request that decrypts personal data, exports or erases a subject,
/// changes a hold or a token, or rotates the signing key.
pub const ACCESS_STREAM: &str = "auditledger:access";
/// Event type of an access entry.
pub const ACCESS_RECORDED: &str = "AccessRecorded";
/// Legal holds placed and released.
pub const HOLDS_STREAM: &str = "auditledger:legal-holds";
/// Event type of a hold.
pub const HOLD_PLACED: &str = "LegalHoldPlaced";
/// Event type of a release.
pub const HOLD_RELEASED: &str = "LegalHoldReleased";
/// Retention policies and declared purposes, per event type.
pub const POLICIES_STREAM: &str = "auditledger:retention-policies";
/// Event type of a policy.
pub const POLICY_SET: &str = "RetentionPolicySet";

/// What an access entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AccessAction {
    /// Read a stream's events, decrypted.
    ReadStream,
    /// Read the global log, decrypted.
    ReadLog,
    /// Subject access export (GDPR Art. 15).
    ExportSubject,
    /// Erasure (GDPR Art. 17).
    EraseSubject,
    /// Legal hold placed.
    PlaceHold,
    /// Legal hold released.
    ReleaseHold,
    /// Token created.
    CreateToken,
    /// Token revoked.
    RevokeToken,
    /// Signing key rotated.
    RotateSigningKey,
}

impl AccessAction {
    /// Every action.
    pub const ALL: [AccessAction; 9] = [
        AccessAction::ReadStream,
        AccessAction::ReadLog,
        AccessAction::ExportSubject,
        AccessAction::EraseSubject,
        AccessAction::PlaceHold,
        AccessAction::ReleaseHold,
        AccessAction::CreateToken,
        AccessAction::RevokeToken,
        AccessAction::RotateSigningKey,
    ];

    /// Its name in the entry.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            AccessAction::ReadStream => "read_stream",
            AccessAction::ReadLog => "read_log",
            AccessAction::ExportSubject => "export_subject",
            AccessAction::EraseSubject => "erase_subject",
            AccessAction::PlaceHold => "place_hold",
            AccessAction::ReleaseHold => "release_hold",
            AccessAction::CreateToken => "create_token",
            AccessAction::RevokeToken => "revoke_token",
            AccessAction::RotateSigningKey => "rotate_signing_key",
        }
    }

    /// Parses its name.
    #[must_use]
    pub fn parse(s: &str) -> Option<AccessAction> {
        AccessAction::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Whether the action discloses personal data (what a HIPAA access review looks at).
    #[must_use]
    pub fn discloses(self) -> bool {
        matches!(
            self,
            AccessAction::ReadStream | AccessAction::ReadLog | AccessAction::ExportSubject
        )
    }
}

/// How an audited request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AccessOutcome {
    /// Done.
    Ok,
    /// Refused by a rule of the ledger (an erasure of a subject under hold, a hold already
    /// placed).
    Refused,
    /// No such subject or token.
    NotFound,
    /// The service failed.
    Failed,
}

impl AccessOutcome {
    /// Its name in the entry.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            AccessOutcome::Ok => "ok",
            AccessOutcome::Refused => "refused",
            AccessOutcome::NotFound => "not_found",
            AccessOutcome::Failed => "failed",
        }
    }

    /// Parses its name.
    #[must_use]
    pub fn parse(s: &str) -> Option<AccessOutcome> {
        [
            AccessOutcome::Ok,
            AccessOutcome::Refused,
            AccessOutcome::NotFound,
            AccessOutcome::Failed,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }
}

/// Who acted: a token by id and the role it acted in; `cli` for the command line on the
/// host, `anonymous` under `--insecure-no-auth`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Actor {
    /// Token id, `cli` or `anonymous`.
    pub token_id: String,
    /// The role it acted in (`operator` for `cli`).
    pub role: String,
}

/// The facts of one access entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessRecord {
    /// Who.
    pub actor: Actor,
    /// What.
    pub action: AccessAction,
    /// With what result.
    pub outcome: AccessOutcome,
    /// The stream read, if one.
    pub stream: Option<String>,
    /// The subject exported, erased or held, by handle.
    pub subject: Option<SubjectHandle>,
    /// First and last seq of what was read.
    pub range: Option<(u64, u64)>,
    /// Events whose personal data was decrypted.
    pub events: u64,
    /// Distinct subjects among them.
    pub subjects: u64,
    /// What else it acted on: a token id, a hold's or an erasure's seq.
    pub target: Option<String>,
    /// The caller's reference (an erasure's `request_ref`, a hold's case reference); for a
    /// token change, the token's roles.
    pub reference: Option<String>,
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "takes counts and strings alike"
)]
fn put(m: &mut Metadata, k: &str, v: impl ToString) {
    m.insert(k.to_owned(), v.to_string());
}

fn num(m: &Metadata, k: &str) -> Option<u64> {
    m.get(k).and_then(|v| v.parse().ok())
}

fn handle(m: &Metadata, k: &str) -> Option<SubjectHandle> {
    m.get(k).and_then(|v| SubjectHandle::from_hex(v).ok())
}

impl AccessRecord {
    /// A record with nothing read yet.
    #[must_use]
    pub fn new(actor: Actor, action: AccessAction, outcome: AccessOutcome) -> AccessRecord {
        AccessRecord {
            actor,
            action,
            outcome,
            stream: None,
            subject: None,
            range: None,
            events: 0,
            subjects: 0,
            target: None,
            reference: None,
        }
    }

    /// The record of a successful read that disclosed `d`.
    #[must_use]
    pub fn disclosing(actor: Actor, action: AccessAction, d: &Disclosure) -> AccessRecord {
        let mut record = AccessRecord::new(actor, action, AccessOutcome::Ok);
        record.range = d.range;
        record.events = d.events;
        record.subjects = d.subjects.len() as u64;
        record
    }

    /// The entry's metadata.
    #[must_use]
    pub fn to_metadata(&self) -> Metadata {
        let mut m = Metadata::new();
        put(&mut m, "action", self.action.as_str());
        put(&mut m, "outcome", self.outcome.as_str());
        put(&mut m, "token_id", &self.actor.token_id);
        put(&mut m, "role", &self.actor.role);
        put(&mut m, "events", self.events);
        put(&mut m, "subjects", self.subjects);
        if let Some(s) = &self.stream {
            put(&mut m, "stream", s);
        }
        if let Some(h) = self.subject {
            put(&mut m, "subject_handle", h.to_hex());
        }
        if let Some((from, to)) = self.range {
            put(&mut m, "from_seq", from);
            put(&mut m, "to_seq", to);
        }
        if let Some(t) = &self.target {
            put(&mut m, "target", t);
        }
        if let Some(r) = &self.reference {
            put(&mut m, "reference", r);
        }
        m
    }

    /// Reads an access entry's metadata back; `None` if it is not one.
    #[must_use]
    pub fn from_metadata(m: &Metadata) -> Option<AccessRecord> {
        Some(AccessRecord {
            actor: Actor {
                token_id: m.get("token_id")?.clone(),
                role: m.get("role")?.clone(),
            },
            action: AccessAction::parse(m.get("action")?)?,
            outcome: AccessOutcome::parse(m.get("outcome")?)?,
            stream: m.get("stream").cloned(),
            subject: handle(m, "subject_handle"),
            range: num(m, "from_seq").zip(num(m, "to_seq")),
            events: num(m, "events")?,
            subjects: num(m, "subjects")?,
            target: m.get("target").cloned(),
            reference: m.get("reference").cloned(),
        })
    }
}

/// A legal hold placed or released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldRecord {
    /// The subject, by handle.
    pub subject: SubjectHandle,
    /// The case reference (e.g. litigation or investigation number).
    pub reference: String,
    /// Why (e.g. `GDPR Art. 17(3)(e)`); never personal data.
    pub reason: String,
    /// Who placed or released it.
    pub actor: Actor,
    /// For a release: the seq of the hold it ends.
    pub hold_seq: Option<u64>,
}

impl HoldRecord {
    /// The entry's metadata.
    #[must_use]
    pub fn to_metadata(&self) -> Metadata {
        let mut m = Metadata::new();
        put(&mut m, "subject_handle", self.subject.to_hex());
        put(&mut m, "reference", &self.reference);
        put(&mut m, "reason", &self.reason);
        put(&mut m, "token_id", &self.actor.token_id);
        put(&mut m, "role", &self.actor.role);
        if let Some(s) = self.hold_seq {
            put(&mut m, "hold_seq", s);
        }
        m
    }

    /// Reads a hold or release entry's metadata back.
    #[must_use]
    pub fn from_metadata(m: &Metadata) -> Option<HoldRecord> {
        Some(HoldRecord {
            subject: handle(m, "subject_handle")?,
            reference: m.get("reference")?.clone(),
            reason: m.get("reason").cloned().unwrap_or_default(),
            actor: Actor {
                token_id: m.get("token_id")?.clone(),
                role: m.get("role")?.clone(),
            },
            hold_seq: num(m, "hold_seq"),
        })
    }
}

/// A retention policy and declared purpose for one event type (GDPR Art. 30, HIPAA, PCI DSS).
/// Nothing is deleted because of it: it is stated in reports, next to the oldest entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// The event type it covers.
    pub event_type: String,
    /// How long entries of the type are to be kept, in days.
    pub retention_days: u32,
    /// Why the events are processed.
    pub purpose: String,
    /// The legal basis (e.g. `GDPR Art. 6(1)(c)`), if stated.
    pub legal_basis: Option<String>,
    /// Categories of personal data in the events, if stated.
    pub data_categories: Option<String>,
    /// Who set it.
    pub actor: Actor,
}

impl RetentionPolicy {
    /// The entry's metadata.
    #[must_use]
    pub fn to_metadata(&self) -> Metadata {
        let mut m = Metadata::new();
        put(&mut m, "event_type", &self.event_type);
        put(&mut m, "retention_days", self.retention_days);
        put(&mut m, "purpose", &self.purpose);
        if let Some(b) = &self.legal_basis {
            put(&mut m, "legal_basis", b);
        }
        if let Some(c) = &self.data_categories {
            put(&mut m, "data_categories", c);
        }
        put(&mut m, "token_id", &self.actor.token_id);
        put(&mut m, "role", &self.actor.role);
        m
    }

    /// Reads a policy entry's metadata back.
    #[must_use]
    pub fn from_metadata(m: &Metadata) -> Option<RetentionPolicy> {
        Some(RetentionPolicy {
            event_type: m.get("event_type")?.clone(),
            retention_days: m.get("retention_days")?.parse().ok()?,
            purpose: m.get("purpose")?.clone(),
            legal_basis: m.get("legal_basis").cloned(),
            data_categories: m.get("data_categories").cloned(),
            actor: Actor {
                token_id: m.get("token_id")?.clone(),
                role: m.get("role")?.clone(),
            },
        })
    }
}

/// What one read disclosed: the events whose personal data it decrypted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Disclosure {
    /// First and last seq among them.
    pub range: Option<(u64, u64)>,
    /// How many.
    pub events: u64,
    /// Their subjects.
    pub subjects: std::collections::BTreeSet<SubjectHandle>,
}

impl Disclosure {
    /// Counts one event read back: it discloses personal data when it names a subject, its
    /// data was decrypted (not erased), and it is a client's event (the ledger's own entries
    /// name subjects by handle but hold no personal data).
    pub fn count(
        &mut self,
        seq: u64,
        stream: &str,
        subject: Option<SubjectHandle>,
        decrypted: bool,
    ) {
        let Some(subject) = subject else { return };
        if !decrypted || stream.starts_with(crate::verify::invariants::SYSTEM_STREAM_PREFIX) {
            return;
        }
        self.events += 1;
        self.subjects.insert(subject);
        self.range = Some(match self.range {
            None => (seq, seq),
            Some((a, b)) => (a.min(seq), b.max(seq)),
        });
    }

    /// Whether anything was disclosed (else no access entry is due).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        // A loaded snapshot discloses its subjects without any event.
        self.events == 0 && self.subjects.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn access_records_round_trip_through_metadata() {
        let mut r = AccessRecord::new(
            Actor {
                token_id: "0123456789abcdef".into(),
                role: "reader".into(),
            },
            AccessAction::ReadStream,
            AccessOutcome::Ok,
        );
        r.stream = Some("billing-1".into());
        r.range = Some((3, 9));
        r.events = 4;
        r.subjects = 2;
        assert_eq!(AccessRecord::from_metadata(&r.to_metadata()), Some(r));
    }

    #[test]
    fn only_decrypted_client_events_with_a_subject_are_disclosed() {
        let mut d = Disclosure::default();
        d.count(1, "billing-1", None, true);
        d.count(2, "billing-1", Some(SubjectHandle([1; 16])), false);
        d.count(
            3,
            "auditledger:subject-erasures",
            Some(SubjectHandle([1; 16])),
            true,
        );
        assert!(d.is_empty());
        d.count(7, "billing-1", Some(SubjectHandle([1; 16])), true);
        d.count(5, "billing-2", Some(SubjectHandle([2; 16])), true);
        d.count(6, "billing-2", Some(SubjectHandle([2; 16])), true);
        assert_eq!((d.events, d.subjects.len(), d.range), (3, 2, Some((5, 7))));
    }

    #[test]
    fn holds_and_policies_round_trip() {
        let actor = Actor {
            token_id: "cli".into(),
            role: "operator".into(),
        };
        let h = HoldRecord {
            subject: SubjectHandle([7; 16]),
            reference: "case-1".into(),
            reason: "GDPR Art. 17(3)(e)".into(),
            actor: actor.clone(),
            hold_seq: Some(4),
        };
        assert_eq!(HoldRecord::from_metadata(&h.to_metadata()), Some(h));
        let p = RetentionPolicy {
            event_type: "PaymentAuthorized".into(),
            retention_days: 365,
            purpose: "fraud prevention".into(),
            legal_basis: None,
            data_categories: Some("card holder name".into()),
            actor,
        };
        assert_eq!(RetentionPolicy::from_metadata(&p.to_metadata()), Some(p));
    }
}
