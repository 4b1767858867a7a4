//! Roles, operations, and the decision whether a token may run an operation.
//!
//! Every `/v1` route is an [`Operation`]; [`Operation::route`] is the only map from a method
//! and route to an operation, and [`Operation::roles`] the only statement of who may run it.
//! A route missing from the table is refused to every token (the API answers 404 only to a
//! caller who may use some operation).

use std::fmt;

/// What a token may be allowed to do. A token holds one or more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Appends events.
    Writer,
    /// Reads streams and the log, decrypted.
    Reader,
    /// Verification, proofs, checkpoints, keys, export bundles, reports: never decrypted
    /// personal data.
    Auditor,
    /// Erasure, subject access export, legal holds.
    PrivacyOfficer,
    /// Tokens, signing-key rotation, retention policies.
    Admin,
}

impl Role {
    /// Every role, in the order the documentation lists them.
    pub const ALL: [Role; 5] = [
        Role::Writer,
        Role::Reader,
        Role::Auditor,
        Role::PrivacyOfficer,
        Role::Admin,
    ];

    /// The role's name on the wire and on the command line.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Writer => "writer",
            Role::Reader => "reader",
            Role::Auditor => "auditor",
            Role::PrivacyOfficer => "privacy_officer",
            Role::Admin => "admin",
        }
    }

    /// Parses a role's name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of roles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Roles(u8);

/// A role name that is not one of [`Role::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}; roles are writer, reader, auditor, privacy_officer and admin")]
pub struct UnknownRole(pub String);

impl Roles {
    /// Every role.
    #[must_use]
    pub fn all() -> Roles {
        Role::ALL.into_iter().collect()
    }

    /// Whether the set holds `role`.
    #[must_use]
    pub fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    /// Whether the set is empty.
    #[must_use]
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The roles, in [`Role::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| self.contains(*r))
    }

    /// Parses role names separated by commas (as stored, and as `--role a,b` takes them).
    ///
    /// # Errors
    /// A name that is not a role.
    pub fn parse_list(s: &str) -> Result<Roles, UnknownRole> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| Role::parse(p).ok_or_else(|| UnknownRole(p.to_owned())))
            .collect()
    }

    /// The names, in [`Role::ALL`] order.
    #[must_use]
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Role::as_str).collect()
    }
}

impl FromIterator<Role> for Roles {
    fn from_iter<I: IntoIterator<Item = Role>>(iter: I) -> Roles {
        Roles(iter.into_iter().fold(0, |acc, r| acc | r.bit()))
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

/// Every operation of the `/v1` API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `POST /v1/streams/{stream_id}/events`, `PUT /v1/streams/{stream_id}/snapshots`
    AppendEvents,
    /// `GET /v1/streams/{stream_id}/events`, `GET /v1/streams/{stream_id}/load`
    ReadStream,
    /// `GET /v1/events`, `GET /v1/subscribe`, `/v1/subscriptions/{name}` and its poll and ack
    ReadLog,
    /// `POST /v1/subjects/erase`
    EraseSubject,
    /// `POST /v1/subjects/export`
    ExportSubject,
    /// `GET /v1/subjects/erasures`, `GET /v1/subjects/erasures/{erasure_seq}`
    ErasureReceipts,
    /// `POST /v1/subjects/hold`
    PlaceHold,
    /// `POST /v1/subjects/release`
    ReleaseHold,
    /// `GET /v1/keys`
    Keys,
    /// `POST /v1/keys/rotate`
    RotateSigningKey,
    /// `GET /v1/checkpoints`, `GET /v1/checkpoints/latest`
    ReadCheckpoints,
    /// `POST /v1/checkpoints`
    CreateCheckpoint,
    /// `GET /v1/proofs/inclusion`, `GET /v1/proofs/consistency`
    Proofs,
    /// `GET /v1/audit/verify`, `GET /v1/audit/verify/jobs/{job_id}`
    Verify,
    /// `GET /v1/export`
    ExportBundle,
    /// `GET /v1/audit/reports/{kind}`, `GET /v1/audit/reports/signed/{sha256}`
    Reports,
    /// `GET /v1/tokens`
    ListTokens,
    /// `POST /v1/tokens`
    CreateToken,
    /// `POST /v1/tokens/{token_id}/revoke`
    RevokeToken,
    /// `GET /v1/policies`
    ReadPolicies,
    /// `PUT /v1/policies/{event_type}`
    SetPolicy,
    /// `PUT /v1/schemas/{event_type}`
    RegisterSchema,
    /// `GET /v1/schemas/{event_type}`
    ReadSchemas,
    /// `GET /v1/streams`, `GET /v1/stats/events`
    ReadModels,
}

/// The route table: method, route template (as the router declares it), operation.
pub const ROUTES: &[(&str, &str, Operation)] = &[
    (
        "POST",
        "/v1/streams/{stream_id}/events",
        Operation::AppendEvents,
    ),
    (
        "GET",
        "/v1/streams/{stream_id}/events",
        Operation::ReadStream,
    ),
    (
        "PUT",
        "/v1/streams/{stream_id}/snapshots",
        Operation::AppendEvents,
    ),
    ("GET", "/v1/streams/{stream_id}/load", Operation::ReadStream),
    ("GET", "/v1/events", Operation::ReadLog),
    ("GET", "/v1/subscribe", Operation::ReadLog),
    ("GET", "/v1/streams", Operation::ReadModels),
    ("GET", "/v1/stats/events", Operation::ReadModels),
    ("PUT", "/v1/subscriptions/{name}", Operation::ReadLog),
    ("GET", "/v1/subscriptions/{name}", Operation::ReadLog),
    ("POST", "/v1/subscriptions/{name}/poll", Operation::ReadLog),
    ("POST", "/v1/subscriptions/{name}/ack", Operation::ReadLog),
    ("POST", "/v1/subjects/erase", Operation::EraseSubject),
    ("POST", "/v1/subjects/export", Operation::ExportSubject),
    ("GET", "/v1/subjects/erasures", Operation::ErasureReceipts),
    (
        "GET",
        "/v1/subjects/erasures/{erasure_seq}",
        Operation::ErasureReceipts,
    ),
    ("POST", "/v1/subjects/hold", Operation::PlaceHold),
    ("POST", "/v1/subjects/release", Operation::ReleaseHold),
    ("GET", "/v1/keys", Operation::Keys),
    ("POST", "/v1/keys/rotate", Operation::RotateSigningKey),
    ("GET", "/v1/checkpoints", Operation::ReadCheckpoints),
    ("GET", "/v1/checkpoints/latest", Operation::ReadCheckpoints),
    ("POST", "/v1/checkpoints", Operation::CreateCheckpoint),
    ("GET", "/v1/proofs/inclusion", Operation::Proofs),
    ("GET", "/v1/proofs/consistency", Operation::Proofs),
    ("GET", "/v1/audit/verify", Operation::Verify),
    ("GET", "/v1/audit/verify/jobs/{job_id}", Operation::Verify),
    ("GET", "/v1/export", Operation::ExportBundle),
    ("GET", "/v1/audit/reports/{kind}", Operation::Reports),
    (
        "GET",
        "/v1/audit/reports/signed/{sha256}",
        Operation::Reports,
    ),
    ("GET", "/v1/tokens", Operation::ListTokens),
    ("POST", "/v1/tokens", Operation::CreateToken),
    (
        "POST",
        "/v1/tokens/{token_id}/revoke",
        Operation::RevokeToken,
    ),
    ("GET", "/v1/policies", Operation::ReadPolicies),
    ("PUT", "/v1/policies/{event_type}", Operation::SetPolicy),
    ("PUT", "/v1/schemas/{event_type}", Operation::RegisterSchema),
    ("GET", "/v1/schemas/{event_type}", Operation::ReadSchemas),
];

impl Operation {
    /// The operation a request runs, by its method and matched route template.
    #[must_use]
    pub fn route(method: &str, template: &str) -> Option<Operation> {
        ROUTES
            .iter()
            .find(|(m, t, _)| *m == method && *t == template)
            .map(|(_, _, op)| *op)
    }

    /// The roles that may run it. A token needs any one of them.
    #[must_use]
    pub fn roles(self) -> &'static [Role] {
        use Operation as O;
        match self {
            O::AppendEvents => &[Role::Writer],
            O::ReadStream | O::ReadLog => &[Role::Reader],
            O::EraseSubject | O::ExportSubject | O::PlaceHold | O::ReleaseHold => {
                &[Role::PrivacyOfficer]
            }
            // Receipts and reports hold no personal data; privacy officers file them too.
            O::ErasureReceipts | O::Reports => &[Role::Auditor, Role::PrivacyOfficer],
            O::Keys => &[Role::Auditor, Role::Admin],
            O::ReadCheckpoints | O::CreateCheckpoint | O::Proofs | O::Verify | O::ExportBundle => {
                &[Role::Auditor]
            }
            O::ReadPolicies => &[Role::Admin, Role::Auditor, Role::PrivacyOfficer],
            O::RotateSigningKey
            | O::ListTokens
            | O::CreateToken
            | O::RevokeToken
            | O::SetPolicy
            | O::RegisterSchema => &[Role::Admin],
            // Writers and readers need the versions to write and read; nothing personal.
            O::ReadSchemas => &[Role::Admin, Role::Writer, Role::Reader, Role::Auditor],
            // Stream ids, types and counts: no personal data.
            O::ReadModels => &[Role::Reader, Role::Auditor],
        }
    }

    /// Whether the operation acts on one client stream named in its path: the only
    /// operations a token limited to stream prefixes may run.
    #[must_use]
    pub fn names_stream(self) -> bool {
        matches!(self, Operation::AppendEvents | Operation::ReadStream)
    }
}

/// What a token is allowed: its roles and, if limited, the stream-id prefixes it may touch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Its roles.
    pub roles: Roles,
    /// Stream-id prefixes; empty: no limit.
    pub stream_prefixes: Vec<String>,
}

/// Whether a token may run an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Yes, in this role (the first of the operation's roles the token holds).
    Allowed(Role),
    /// The token holds none of the roles the operation needs.
    MissingRole(&'static [Role]),
    /// The token is limited to stream prefixes, and the operation spans every stream.
    LimitedToStreams,
}

impl Grant {
    /// Everything, everywhere (`--insecure-no-auth`).
    #[must_use]
    pub fn unrestricted() -> Grant {
        Grant {
            roles: Roles::all(),
            stream_prefixes: Vec::new(),
        }
    }

    /// Whether the token may run `op` at all (the stream, for operations naming one, is
    /// checked with [`Grant::admits_stream`] once it is known).
    #[must_use]
    pub fn decide(&self, op: Operation) -> Decision {
        let needed = op.roles();
        let Some(role) = needed.iter().copied().find(|r| self.roles.contains(*r)) else {
            return Decision::MissingRole(needed);
        };
        if !self.stream_prefixes.is_empty() && !op.names_stream() {
            return Decision::LimitedToStreams;
        }
        Decision::Allowed(role)
    }

    /// Whether the token may touch `stream`.
    #[must_use]
    pub fn admits_stream(&self, stream: &str) -> bool {
        self.stream_prefixes.is_empty()
            || self
                .stream_prefixes
                .iter()
                .any(|p| stream.starts_with(p.as_str()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_operation_has_a_route_and_roles() {
        for (m, t, op) in ROUTES {
            assert_eq!(Operation::route(m, t), Some(*op));
            assert!(!op.roles().is_empty());
            assert!(t.starts_with("/v1/"));
        }
    }

    #[test]
    fn auditors_never_read_decrypted_data() {
        for (_, _, op) in ROUTES {
            let decrypts = matches!(
                op,
                Operation::ReadStream | Operation::ReadLog | Operation::ExportSubject
            );
            if decrypts {
                assert!(!op.roles().contains(&Role::Auditor), "{op:?}");
            }
        }
    }

    #[test]
    fn roles_parse_and_print() {
        let r = Roles::parse_list("reader, auditor").unwrap();
        assert!(r.contains(Role::Reader) && r.contains(Role::Auditor));
        assert!(!r.contains(Role::Admin));
        assert_eq!(r.to_string(), "reader,auditor");
        assert!(Roles::parse_list("root").is_err());
        assert_eq!(
            Roles::parse_list(&Roles::all().to_string()).unwrap(),
            Roles::all()
        );
    }

    #[test]
    fn prefixes_limit_to_named_streams() {
        let g = Grant {
            roles: Roles::parse_list("reader,writer").unwrap(),
            stream_prefixes: vec!["billing-".to_owned()],
        };
        assert_eq!(
            g.decide(Operation::ReadStream),
            Decision::Allowed(Role::Reader)
        );
        assert_eq!(g.decide(Operation::ReadLog), Decision::LimitedToStreams);
        assert!(g.admits_stream("billing-7"));
        assert!(!g.admits_stream("hr-7"));
        assert_eq!(
            g.decide(Operation::EraseSubject),
            Decision::MissingRole(&[Role::PrivacyOfficer])
        );
    }
}
