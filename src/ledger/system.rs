//! The ledger's own entries that go through the group commit like any append: access
//! entries, retention policies, and the recording of token changes. Clients cannot write
//! them: the API refuses every `auditledger:` stream, and only this module names them.

use std::collections::BTreeSet;

use serde_json::json;
use zeroize::Zeroizing;

use super::{
    AppendError, AppendRequest, Appended, ExpectedVersion, IdempotencyKey, Ledger, NewEvent,
};
use crate::access::RetentionPolicy;
use crate::access::record::{
    ACCESS_RECORDED, ACCESS_STREAM, AccessAction, AccessOutcome, AccessRecord, Actor,
    POLICIES_STREAM, POLICY_SET,
};
use crate::entry::{EventType, Metadata, Seq, StreamId, SubjectHandle};
use crate::store::StoreError;

/// Why the ledger's own entry could not be appended.
fn internal(e: impl std::fmt::Display) -> AppendError {
    AppendError::Unavailable(e.to_string())
}

/// The request that appends one of the ledger's own entries (never a client's: no API path
/// reaches here with a client's stream).
fn own_request(
    stream: &str,
    event_type: &str,
    metadata: Metadata,
    data: &serde_json::Value,
    idempotency: Option<&str>,
) -> Result<AppendRequest, AppendError> {
    Ok(AppendRequest {
        stream: StreamId::parse(stream).map_err(internal)?,
        expected: ExpectedVersion::Any,
        events: vec![NewEvent {
            event_type: EventType::parse(event_type).map_err(internal)?,
            schema_version: 1,
            subject: None,
            data: Zeroizing::new(serde_json::to_vec(data).map_err(internal)?),
            metadata,
        }],
        idempotency: idempotency
            .map(|k| IdempotencyKey::parse(k.as_bytes()))
            .transpose()
            .map_err(|_| internal("an idempotency key of the ledger's own is malformed"))?,
    })
}

/// The request that appends an access entry: its facts in the metadata, `handles` (the
/// subjects whose data was decrypted) in its payload, sealed under the system key.
pub(super) fn access_request(
    mut record: AccessRecord,
    handles: &BTreeSet<SubjectHandle>,
    idempotency: Option<&str>,
) -> Result<AppendRequest, AppendError> {
    if record.subjects == 0 {
        record.subjects = handles.len() as u64;
    }
    let data = json!({
        "subject_handles": handles.iter().map(SubjectHandle::to_hex).collect::<Vec<_>>(),
    });
    own_request(
        ACCESS_STREAM,
        ACCESS_RECORDED,
        record.to_metadata(),
        &data,
        idempotency,
    )
}

impl Ledger {
    /// Appends one of the ledger's own entries.
    async fn append_own(
        &self,
        stream: &str,
        event_type: &str,
        metadata: Metadata,
        data: serde_json::Value,
        idempotency: Option<&str>,
    ) -> Result<Appended, AppendError> {
        self.append(own_request(
            stream,
            event_type,
            metadata,
            &data,
            idempotency,
        )?)
        .await
    }

    /// Appends an access entry; `handles` are the subjects whose data the request decrypted
    /// (sealed in the entry's payload under the system key; the metadata counts them).
    /// Returns its seq.
    pub async fn record_access(
        &self,
        record: AccessRecord,
        handles: &BTreeSet<SubjectHandle>,
        idempotency: Option<&str>,
    ) -> Result<Seq, AppendError> {
        let action = record.action;
        let appended = self
            .append(access_request(record, handles, idempotency)?)
            .await;
        let outcome = if appended.is_ok() {
            "appended"
        } else {
            "failed"
        };
        metrics::counter!(
            crate::telemetry::ACCESS_ENTRIES,
            "action" => action.as_str(),
            "outcome" => outcome
        )
        .increment(1);
        appended.map(|a| a.first_seq)
    }

    /// Records a retention policy; returns its entry's seq.
    pub async fn set_retention_policy(&self, policy: &RetentionPolicy) -> Result<Seq, AppendError> {
        self.append_own(
            POLICIES_STREAM,
            POLICY_SET,
            policy.to_metadata(),
            json!({}),
            None,
        )
        .await
        .map(|a| a.first_seq)
    }

    /// Appends an access entry for every token created or revoked (through the API or the
    /// command line, while the service ran or not) that is not in the ledger yet; returns how
    /// many. An idempotency key per change keeps two instances, or a crash between the append
    /// and the mark, from recording one twice.
    pub async fn record_token_changes(&self) -> Result<usize, AppendError> {
        let changes = self
            .store()
            .unrecorded_token_changes()
            .await
            .map_err(|e: StoreError| internal(e))?;
        let mut done = 0;
        for row in changes {
            let mut pending = Vec::new();
            if row.create_recorded == 0 {
                pending.push((AccessAction::CreateToken, row.created_by.clone(), false));
            }
            if row.revoked_at.is_some() && row.revoke_recorded == 0 {
                let by = row.revoked_by.clone().unwrap_or_else(|| "cli".to_owned());
                pending.push((AccessAction::RevokeToken, by, true));
            }
            for (action, by, revocation) in pending {
                let role = if by == "cli" { "operator" } else { "admin" };
                let mut record = AccessRecord::new(
                    Actor {
                        token_id: by,
                        role: role.to_owned(),
                    },
                    action,
                    AccessOutcome::Ok,
                );
                record.target = Some(row.id.clone());
                record.reference = Some(row.roles.clone());
                let key = format!("auditledger:{}:{}", action.as_str(), row.id);
                self.record_access(record, &BTreeSet::new(), Some(&key))
                    .await?;
                self.store()
                    .mark_token_recorded(&row.id, revocation)
                    .await
                    .map_err(internal)?;
                done += 1;
            }
        }
        Ok(done)
    }
}
