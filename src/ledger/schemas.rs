//! The registry of event versions (`crate::upcast` holds the steps and rules): registrations
//! are the ledger's own entries in `auditledger:schemas`, and each instance keeps them in
//! memory, re-reading the stream when it is at most [`REFRESH`] old, so a registration made
//! through another instance takes effect there within that time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::{
    AppendError, AppendRequest, Direction, ExpectedVersion, Ledger, NewEvent, ReadError, RowFilter,
    SeqRange,
};
use crate::entry::{EventType, StreamId};
use crate::upcast::{BadRegistration, Registration, SCHEMA_REGISTERED, SCHEMAS_STREAM};

/// How stale an instance's copy of the registry may be.
pub const REFRESH: Duration = Duration::from_secs(1);

/// Registered types by name.
pub type Types = HashMap<String, Arc<Registered>>;

/// The registry as one instance knows it.
#[derive(Default)]
pub struct Registry {
    types: Arc<Types>,
    /// The schemas stream's next version to read.
    next_version: u64,
    checked: Option<Instant>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registry({} types)", self.types.len())
    }
}

/// A registration with its JSON Schemas compiled.
pub struct Registered {
    /// The registration.
    pub registration: Registration,
    /// Compiled schemas by version.
    validators: HashMap<u32, jsonschema::Validator>,
}

/// Why a write does not fit its type's registration.
#[derive(Debug, thiserror::Error)]
pub enum WriteRefused {
    /// A version above the latest registered.
    #[error("schema_version {given} is not registered for this type (the latest is {latest})")]
    UnknownVersion {
        /// Sent.
        given: u32,
        /// Registered.
        latest: u32,
    },
    /// The data breaks the version's JSON Schema. Names the schema's rule, never the data: a
    /// pointer into the data would quote its keys, which may be personal data.
    #[error("data does not satisfy the JSON Schema of version {version}: rule `{rule}`")]
    Schema {
        /// The version.
        version: u32,
        /// JSON pointer into the schema (the admin's text, not the client's).
        rule: String,
    },
}

/// Why a registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// Refused.
    #[error(transparent)]
    Bad(#[from] BadRegistration),
    /// Another registration of the type committed meanwhile.
    #[error("another registration of this type was made meanwhile; read it and retry")]
    Conflict,
    /// Reading failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Appending failed.
    #[error(transparent)]
    Append(AppendError),
}

impl Registered {
    fn compile(registration: Registration) -> Result<Registered, BadRegistration> {
        let mut validators = HashMap::new();
        for v in &registration.versions {
            if let Some(schema) = &v.schema {
                let compiled = jsonschema::validator_for(schema).map_err(|e| {
                    BadRegistration::Invalid(format!(
                        "versions[{}].schema is not a valid JSON Schema: {e}",
                        v.version - 1
                    ))
                })?;
                validators.insert(v.version, compiled);
            }
        }
        Ok(Registered {
            registration,
            validators,
        })
    }

    /// Whether data written as `version` fits.
    ///
    /// # Errors
    /// An unknown version, or data that breaks the version's schema.
    pub fn check_write(&self, version: u32, data: &Value) -> Result<(), WriteRefused> {
        let latest = self.registration.latest();
        if version > latest {
            return Err(WriteRefused::UnknownVersion {
                given: version,
                latest,
            });
        }
        if let Some(v) = self.validators.get(&version)
            && let Some(e) = v.iter_errors(data).next()
        {
            return Err(WriteRefused::Schema {
                version,
                rule: e.schema_path().to_string(),
            });
        }
        Ok(())
    }
}

impl Ledger {
    fn schemas_stream() -> StreamId {
        StreamId::parse(SCHEMAS_STREAM).unwrap_or_else(|_| unreachable!("a valid stream id"))
    }

    /// The registry, re-read if older than [`REFRESH`] (or `force`).
    ///
    /// # Errors
    /// Reading the schemas stream failed.
    pub async fn schemas(&self, force: bool) -> Result<Arc<Types>, ReadError> {
        Ok(self.registry(force).await?.0)
    }

    /// The registry and the schemas stream's next version, read under one lock: a registration
    /// is checked against exactly the state its expected version names.
    async fn registry(&self, force: bool) -> Result<(Arc<Types>, u64), ReadError> {
        let mut registry = self.schemas.lock().await;
        let fresh = registry.checked.is_some_and(|t| t.elapsed() < REFRESH);
        if fresh && !force {
            return Ok((Arc::clone(&registry.types), registry.next_version));
        }
        let mut types: Option<Types> = None;
        loop {
            let rows = self
                .filtered_rows(&RowFilter {
                    stream: Some(Self::schemas_stream()),
                    event_type: None,
                    seqs: SeqRange::ALL,
                    from: Some(registry.next_version),
                    direction: Direction::Forward,
                    limit: 100,
                })
                .await?;
            let full = rows.len() == 100;
            for event in self.open_rows(rows).await? {
                registry.next_version = event.record.entry.header.stream_version + 1;
                let parsed = event.data.as_ref().and_then(|d| {
                    let t = d.get("event_type")?.as_str()?.to_owned();
                    let r: Registration =
                        serde_json::from_value(d.get("registration")?.clone()).ok()?;
                    Some((t, Registered::compile(r).ok()?))
                });
                if let Some((t, r)) = parsed {
                    types
                        .get_or_insert_with(|| (*registry.types).clone())
                        .insert(t, Arc::new(r));
                } else {
                    tracing::error!(
                        seq = event.record.entry.header.seq.0,
                        "a schema registration entry does not parse; it is ignored"
                    );
                }
            }
            if !full {
                break;
            }
        }
        if let Some(t) = types {
            registry.types = Arc::new(t);
        }
        registry.checked = Some(Instant::now());
        Ok((Arc::clone(&registry.types), registry.next_version))
    }

    /// Registers `registration` for `event_type`, as an entry of the schemas stream.
    ///
    /// # Errors
    /// A bad registration, a change to a registered version, a concurrent registration, or a
    /// failed append.
    pub async fn register_schema(
        &self,
        event_type: &EventType,
        registration: Registration,
    ) -> Result<(u64, Registration), RegisterError> {
        // Checked against this state, and appended only if the stream is still at it (any
        // registration committed meanwhile, by any instance, makes this one a conflict).
        let (current, next_version) = self.registry(true).await?;
        let previous = current.get(event_type.as_str());
        registration.check(previous.map(|p| &p.registration))?;
        Registered::compile(registration.clone())?;
        let expected = match next_version {
            0 => ExpectedVersion::NoStream,
            n => ExpectedVersion::Exact(n - 1),
        };
        let mut metadata = std::collections::BTreeMap::new();
        metadata.insert("event_type".to_owned(), event_type.as_str().to_owned());
        metadata.insert(
            "latest_version".to_owned(),
            registration.latest().to_string(),
        );
        let data = json!({"event_type": event_type.as_str(), "registration": &registration});
        let request = AppendRequest {
            stream: Self::schemas_stream(),
            expected,
            events: vec![NewEvent {
                event_type: EventType::parse(SCHEMA_REGISTERED)
                    .unwrap_or_else(|_| unreachable!("a valid type")),
                schema_version: 1,
                subject: None,
                data: Zeroizing::new(serde_json::to_vec(&data).unwrap_or_default()),
                metadata,
            }],
            idempotency: None,
        };
        let appended = match self.append(request).await {
            Ok(a) => a,
            Err(AppendError::VersionConflict { .. }) => return Err(RegisterError::Conflict),
            Err(e) => return Err(RegisterError::Append(e)),
        };
        self.schemas(true).await?;
        Ok((appended.first_seq.0, registration))
    }
}
