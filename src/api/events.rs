//! Appending and reading events.

use std::collections::BTreeMap;
use std::fmt;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use zeroize::Zeroizing;

use super::AppState;
use super::audited;
use super::auth::Caller;
use super::error::ApiError;
use super::json::{self, JsonBody};
use super::params::{BodyPosition, Count, MAX_POSITION, Position};
use crate::access::record::AccessAction;
use crate::entry::{
    EventType, MAX_METADATA_PAIRS, MAX_METADATA_VALUE_BYTES, MAX_NAME_BYTES, Seq, StreamId,
};
use crate::identifiers::{self, Identifiers};
use crate::ledger::compensation::{self, Compensation, RESERVED_METADATA_PREFIX, Target};
use crate::ledger::{
    AppendRequest, AsOf, Direction, ExpectedVersion, IdempotencyKey, NewEvent, ReadEvent,
    RowFilter, SYSTEM_STREAM_PREFIX, SeqRange, next_cursor,
};
use crate::timefmt::{format_micros, parse_rfc3339};
use axum::Extension;

/// Most events returned by one read.
pub const MAX_READ_LIMIT: u32 = 1000;
/// Events returned by a read that names no limit.
pub const DEFAULT_READ_LIMIT: u32 = 100;
/// Most events in one append request.
pub const MAX_EVENTS_PER_REQUEST: usize = 10_000;

/// The expected version as JSON: a non-negative integer, `"any"` or `"no_stream"`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExpectedVersionIn(ExpectedVersion);

impl<'de> Deserialize<'de> for ExpectedVersionIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ExpectedVersionIn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a non-negative integer, "any" or "no_stream""#)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                if v > MAX_POSITION {
                    return Err(E::custom(format!("must be at most {MAX_POSITION}")));
                }
                Ok(ExpectedVersionIn(ExpectedVersion::Exact(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom("must not be negative"))
                    .and_then(|v| self.visit_u64(v))
            }
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss,
                reason = "only a whole number within range is converted, and then exactly"
            )]
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                // JSON Schema's `integer` includes 1.0.
                if v.fract() != 0.0 || v < 0.0 || v > MAX_POSITION as f64 {
                    return Err(E::invalid_value(de::Unexpected::Float(v), &self));
                }
                self.visit_u64(v as u64)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "any" => Ok(ExpectedVersionIn(ExpectedVersion::Any)),
                    "no_stream" => Ok(ExpectedVersionIn(ExpectedVersion::NoStream)),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

fn expected_version_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .maximum(Some(MAX_POSITION))
                .description(Some("the stream's last event must have this version")),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["any", "no_stream"]))
                .description(Some("any: no check; no_stream: the stream must be empty")),
        )
        .build()
        .into()
}

fn schema_version_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(1))
        .maximum(Some(u32::MAX))
        .default(Some(1.into()))
        .into()
}

fn metadata_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            Type::Object,
            Type::Null,
        ]))
        .max_properties(Some(MAX_METADATA_PAIRS))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(MAX_NAME_BYTES)),
        ))
        .additional_properties(Some(AdditionalProperties::RefOr(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(MAX_METADATA_VALUE_BYTES))
                .into(),
        )))
        .build()
        .into()
}

/// Body of an append.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendBody {
    /// Optimistic-concurrency check; default `"any"`.
    #[serde(default)]
    #[schema(schema_with = expected_version_schema)]
    expected_version: ExpectedVersionIn,
    /// One or more events (at most 10,000), committed together or not at all.
    #[schema(min_items = 1, max_items = 10_000)]
    events: Vec<EventIn>,
}

fn one() -> Count {
    Count(1)
}

/// One event to append.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    /// Event type: 1 to 128 characters of `A-Z a-z 0-9 _ - . :`. Chained in plaintext and kept
    /// for ever: must not name a person (refused with 422 if it contains a `subject` of the
    /// request, in any case or width).
    #[serde(rename = "type")]
    #[schema(pattern = "^[A-Za-z0-9_.:-]+$", min_length = 1, max_length = 128)]
    event_type: String,
    /// Schema version of the event type, from 1; default 1.
    #[serde(default = "one")]
    #[schema(schema_with = schema_version_schema)]
    schema_version: Count,
    /// The data subject's own identifier (e.g. a customer id, an e-mail address): the only
    /// field where it may appear. Never stored. At least 3 characters after Unicode NFKC
    /// normalisation and case folding.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    subject: Option<String>,
    /// Event data: a JSON object (any members), encrypted at rest. Numbers must be exact as
    /// sent: integers within 64 bits, other numbers with at most 17 significant digits
    /// (send larger or more precise values as strings); otherwise 422.
    #[schema(value_type = Object)]
    data: serde_json::Value,
    /// Plaintext metadata, kept for ever (no personal data): an object of at most 64 string
    /// values of at most 1024 characters, under keys of 1 to 128 characters. Refused with 422
    /// if a key or value contains a `subject` of the request, in any case or width.
    #[serde(default)]
    #[schema(schema_with = metadata_schema)]
    metadata: Option<BTreeMap<String, String>>,
    /// A compensating event: the seq of an earlier event of the same stream that this one
    /// corrects. It must exist and its subject must not be erased (422 otherwise). Kept in the
    /// entry's metadata as `auditledger:corrects`, so it is chained and signed.
    #[serde(default)]
    corrects: Option<BodyPosition>,
    /// Like `corrects`, for an event that reverses (undoes) an earlier one. At most one of the
    /// two.
    #[serde(default)]
    reverses: Option<BodyPosition>,
}

/// Reply to a committed append.
#[derive(Serialize, ToSchema)]
pub struct AppendResponse {
    /// Seq of the first event.
    first_seq: u64,
    /// Seq of the last event.
    last_seq: u64,
    /// The stream's version after the append.
    stream_version: u64,
    /// Each event's seq and entry hash.
    entries: Vec<AppendedEntry>,
    /// True when this append took the stream past a multiple of its snapshot interval (100
    /// events by default, `serve --snapshot-every`): time to `PUT` a snapshot.
    snapshot_due: bool,
}

/// One appended entry.
#[derive(Serialize, ToSchema)]
pub struct AppendedEntry {
    /// Global position.
    seq: u64,
    /// Entry hash, lowercase hex.
    entry_hash: String,
}

/// An event as read back.
#[derive(Serialize, ToSchema)]
pub struct EventOut {
    /// Global position.
    pub seq: u64,
    /// Stream.
    pub stream_id: String,
    /// Position in the stream, from 0.
    pub stream_version: u64,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Schema version: the type's latest registered version when the event was upcast to it
    /// (the default), else the stored one.
    pub schema_version: u32,
    /// The version the event is stored as, when it was upcast on read (`raw=true` turns
    /// upcasting off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_schema_version: Option<u32>,
    /// Subject handle (32 hex digits), or null.
    pub subject: Option<String>,
    /// Server time of the append, RFC 3339, UTC, microseconds.
    pub recorded_at: String,
    /// Plaintext metadata.
    pub metadata: BTreeMap<String, String>,
    /// Decrypted event data (a JSON object; that of a legacy event may be any JSON value);
    /// null when erased.
    #[schema(value_type = Option<Object>, nullable)]
    pub data: serde_json::Value,
    /// True when the data's key was destroyed (crypto-shredded).
    pub erased: bool,
    /// SHA-256 of the sealed payload, hex.
    pub payload_digest: String,
    /// Entry hash, hex.
    pub entry_hash: String,
    /// Previous entry's hash, hex.
    pub prev_hash: String,
    /// Ed25519 signature, hex.
    pub signature: String,
    /// Signing key id, hex.
    pub key_id: String,
    /// The seq of the earlier event of the stream this one corrects, or null.
    pub corrects: Option<u64>,
    /// The seq of the earlier event of the stream this one reverses, or null.
    pub reverses: Option<u64>,
    /// With `with_corrections=true` on a stream read: the later events of the stream that
    /// correct or reverse this one, oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corrected_by: Option<Vec<CorrectionRef>>,
}

/// A later event that compensates an event.
#[derive(Clone, Serialize, ToSchema)]
pub struct CorrectionRef {
    /// Its seq.
    pub seq: u64,
    /// `corrects` or `reverses`.
    pub kind: String,
}

impl From<ReadEvent> for EventOut {
    fn from(e: ReadEvent) -> EventOut {
        let r = e.record;
        let h = r.entry.header;
        let compensation = Compensation::read(&h.metadata);
        EventOut {
            corrects: match compensation {
                Some(Compensation::Corrects(s)) => Some(s),
                _ => None,
            },
            reverses: match compensation {
                Some(Compensation::Reverses(s)) => Some(s),
                _ => None,
            },
            corrected_by: None,
            stored_schema_version: None,
            seq: h.seq.0,
            stream_id: h.stream_id.to_string(),
            stream_version: h.stream_version,
            event_type: h.event_type.to_string(),
            schema_version: h.schema_version,
            subject: h.subject.map(|s| s.to_hex()),
            recorded_at: format_micros(h.recorded_at_micros),
            metadata: h.metadata,
            data: e.data.unwrap_or(serde_json::Value::Null),
            erased: e.erased,
            payload_digest: r.entry.payload_digest.to_hex(),
            entry_hash: r.entry_hash.to_hex(),
            prev_hash: r.entry.prev_hash.to_hex(),
            signature: r.signature.to_hex(),
            key_id: r.key_id.to_hex(),
        }
    }
}

/// Events rendered from this many on are rendered on a blocking thread, spread over every
/// core; fewer in place (see `ledger::PARALLEL_OPEN_ROWS`: the same reason).
const PARALLEL_RENDER_EVENTS: usize = 512;

/// `render` of each event, in order: on every core when there are many (a page of 1,000 events
/// is about a megabyte of JSON, which one runtime thread would otherwise write alone).
///
/// # Errors
/// The first event `render` fails on, in order.
pub(super) async fn render_each<R: Send + 'static>(
    events: Vec<EventOut>,
    render: impl Fn(EventOut) -> Result<R, ApiError> + Send + Sync + 'static,
) -> Result<Vec<R>, ApiError> {
    let rendered: Vec<Result<R, ApiError>> = if events.len() >= PARALLEL_RENDER_EVENTS {
        tokio::task::spawn_blocking(move || {
            use rayon::prelude::*;
            events.into_par_iter().map(render).collect()
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
    } else {
        events.into_iter().map(render).collect()
    };
    rendered.into_iter().collect()
}

/// Each event's JSON, exactly as serialising it in the page would write it (compact).
async fn rendered(events: Vec<EventOut>) -> Result<Vec<Box<RawValue>>, ApiError> {
    render_each(events, |e| {
        serde_json::value::to_raw_value(&e).map_err(|e| ApiError::Internal(e.to_string()))
    })
    .await
}

/// A page of a stream.
#[derive(Serialize, ToSchema)]
pub struct StreamPage {
    /// The stream.
    stream_id: String,
    /// Events in stream order (newest first with `direction=backward`).
    #[schema(value_type = Vec<EventOut>)]
    events: Vec<Box<RawValue>>,
    /// `from_version` for the next page in the same direction (pass the same filters), or null
    /// at the end.
    next_from_version: Option<u64>,
}

/// A page of the global log.
#[derive(Serialize, ToSchema)]
pub struct LogPage {
    /// Events in seq order (newest first with `direction=backward`).
    #[schema(value_type = Vec<EventOut>)]
    events: Vec<Box<RawValue>>,
    /// `from_seq` for the next page in the same direction (pass the same filters), or null at
    /// the end.
    next_from_seq: Option<u64>,
}

/// Which way a page runs.
#[derive(Clone, Copy, Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DirectionIn {
    /// Oldest first (the default).
    #[default]
    Forward,
    /// Newest first: "the last N events".
    Backward,
}

/// Query of a stream read.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// First stream version to return (default 0; with `direction=backward`, the newest
    /// version to return, default the stream's last).
    from_version: Option<Position>,
    /// Most events to return, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Time travel: the stream as it stood right after this seq was appended (a whole number),
    /// or at this time (RFC 3339, inclusive).
    as_of: Option<String>,
    /// Only events of this type.
    #[serde(rename = "type")]
    #[param(
        rename = "type",
        pattern = "^[A-Za-z0-9_.:-]+$",
        min_length = 1,
        max_length = 128
    )]
    event_type: Option<String>,
    /// Only events recorded at or after this time (RFC 3339).
    from_time: Option<String>,
    /// Only events recorded before this time (RFC 3339, exclusive).
    to_time: Option<String>,
    /// `forward` (default) or `backward`.
    #[param(inline)]
    direction: Option<DirectionIn>,
    /// Show each event with the later events of the stream that correct or reverse it
    /// (`corrected_by`).
    with_corrections: Option<bool>,
    /// Return events as stored, without upcasting them to their type's latest version.
    raw: Option<bool>,
}

/// Query of a global read.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// First seq to return (default 0; with `direction=backward`, the newest seq to return,
    /// default the last).
    from_seq: Option<Position>,
    /// Most events to return, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Time travel: the log as it stood right after this seq was appended (a whole number), or
    /// at this time (RFC 3339, inclusive).
    as_of: Option<String>,
    /// Only events of this type.
    #[serde(rename = "type")]
    #[param(
        rename = "type",
        pattern = "^[A-Za-z0-9_.:-]+$",
        min_length = 1,
        max_length = 128
    )]
    event_type: Option<String>,
    /// Only events recorded at or after this time (RFC 3339).
    from_time: Option<String>,
    /// Only events recorded before this time (RFC 3339, exclusive).
    to_time: Option<String>,
    /// `forward` (default) or `backward`.
    #[param(inline)]
    direction: Option<DirectionIn>,
    /// Return events as stored, without upcasting them to their type's latest version.
    raw: Option<bool>,
}

/// The filters a read shares between a stream and the log, checked.
struct Filters {
    range: SeqRange,
    event_type: Option<EventType>,
    direction: Direction,
}

fn parse_time(name: &str, raw: &str) -> Result<i64, ApiError> {
    parse_rfc3339(raw).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "{name} must be an RFC 3339 time such as 2026-01-31T12:00:00Z"
        ))
    })
}

fn parse_as_of(raw: &str) -> Result<AsOf, ApiError> {
    if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        return raw
            .parse::<u64>()
            .ok()
            .filter(|s| *s <= MAX_POSITION)
            .map(AsOf::Seq)
            .ok_or_else(|| {
                ApiError::BadRequest(format!("as_of: a seq must be at most {MAX_POSITION}"))
            });
    }
    parse_time("as_of", raw).map(AsOf::Time).map_err(|_| {
        ApiError::BadRequest(
            "as_of must be a seq (a whole number) or an RFC 3339 time such as \
             2026-01-31T12:00:00Z"
                .to_owned(),
        )
    })
}

async fn filters(
    state: &AppState,
    as_of: Option<&str>,
    event_type: Option<&str>,
    from_time: Option<&str>,
    to_time: Option<&str>,
    direction: Option<DirectionIn>,
) -> Result<Filters, ApiError> {
    let as_of = as_of.map(parse_as_of).transpose()?;
    let event_type = event_type
        .map(|t| EventType::parse(t).map_err(|e| ApiError::BadRequest(format!("type {e}"))))
        .transpose()?;
    let from_time = from_time.map(|t| parse_time("from_time", t)).transpose()?;
    let to_time = to_time.map(|t| parse_time("to_time", t)).transpose()?;
    if let (Some(f), Some(t)) = (from_time, to_time)
        && f > t
    {
        return Err(ApiError::BadRequest(
            "from_time must not be after to_time".to_owned(),
        ));
    }
    let range = state.0.ledger.read_range(as_of, from_time, to_time).await?;
    Ok(Filters {
        range,
        event_type,
        direction: match direction.unwrap_or_default() {
            DirectionIn::Forward => Direction::Forward,
            DirectionIn::Backward => Direction::Backward,
        },
    })
}

pub(super) fn parse_stream_id(raw: &str) -> Result<StreamId, ApiError> {
    StreamId::parse(raw).map_err(|e| ApiError::BadRequest(format!("stream_id {e}")))
}

/// Longest subject identifier, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 256;

pub(super) fn check_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit.unwrap_or(DEFAULT_READ_LIMIT) {
        0 => Err(ApiError::BadRequest("limit must be at least 1".to_owned())),
        l if l > MAX_READ_LIMIT => Err(ApiError::BadRequest(format!(
            "limit must be at most {MAX_READ_LIMIT}"
        ))),
        l => Ok(l),
    }
}

/// An event's metadata, checked, with its compensation (if any) under the reserved key.
fn event_metadata(
    i: usize,
    metadata: Option<BTreeMap<String, String>>,
    corrects: Option<BodyPosition>,
    reverses: Option<BodyPosition>,
) -> Result<BTreeMap<String, String>, ApiError> {
    let field = |name: &str| format!("events[{i}].{name}");
    let mut metadata = metadata.unwrap_or_default();
    if metadata
        .keys()
        .any(|k| k.starts_with(RESERVED_METADATA_PREFIX))
    {
        return Err(ApiError::Invalid(format!(
            "{}: keys starting with {RESERVED_METADATA_PREFIX} are the ledger's own (use \
             `corrects` or `reverses` to name an event this one compensates)",
            field("metadata")
        )));
    }
    match (corrects, reverses) {
        (Some(_), Some(_)) => {
            return Err(ApiError::Invalid(format!(
                "{}: an event either corrects or reverses another, not both",
                field("corrects")
            )));
        }
        (Some(c), None) => Compensation::Corrects(c.0).write(&mut metadata),
        (None, Some(r)) => Compensation::Reverses(r.0).write(&mut metadata),
        (None, None) => {}
    }
    if metadata.len() > MAX_METADATA_PAIRS {
        return Err(ApiError::Invalid(format!(
            "{} has more than {MAX_METADATA_PAIRS} keys",
            field("metadata")
        )));
    }
    // Keys are named by their position, never quoted: a key is the client's text and could
    // be an identifier.
    for (j, (k, v)) in metadata.iter().enumerate() {
        if k.is_empty() || k.chars().count() > MAX_NAME_BYTES {
            return Err(ApiError::Invalid(format!(
                "{}: keys must be 1 to {MAX_NAME_BYTES} characters (key {} in sorted order is not)",
                field("metadata"),
                j + 1
            )));
        }
        if v.chars().count() > MAX_METADATA_VALUE_BYTES {
            return Err(ApiError::Invalid(format!(
                "{}: the value of key {} in sorted order is longer than {MAX_METADATA_VALUE_BYTES} characters",
                field("metadata"),
                j + 1
            )));
        }
    }
    Ok(metadata)
}

/// Parses and validates an append body: everything that can be wrong with the input is found
/// here, before the writer sees it.
fn parse_append(
    stream: StreamId,
    body: &[u8],
    max_event_bytes: usize,
) -> Result<AppendRequest, ApiError> {
    let parsed: AppendBody = json::parse(body)?;
    if parsed.events.is_empty() {
        return Err(ApiError::Invalid(
            "events: must contain at least one event".to_owned(),
        ));
    }
    if parsed.events.len() > MAX_EVENTS_PER_REQUEST {
        return Err(ApiError::TooLarge(format!(
            "events: at most {MAX_EVENTS_PER_REQUEST} events per request"
        )));
    }
    let mut events = Vec::with_capacity(parsed.events.len());
    for (i, ev) in parsed.events.into_iter().enumerate() {
        let field = |name: &str| format!("events[{i}].{name}");
        let event_type = EventType::parse(&ev.event_type)
            .map_err(|e| ApiError::Invalid(format!("{} {e}", field("type"))))?;
        if ev.schema_version.0 == 0 {
            return Err(ApiError::Invalid(format!(
                "{} must be at least 1",
                field("schema_version")
            )));
        }
        let subject = ev.subject.map(Zeroizing::new);
        if let Some(s) = &subject {
            json::check_text(&field("subject"), s, MAX_SUBJECT_BYTES)?;
            identifiers::check_identifier(s)
                .map_err(|e| ApiError::Invalid(format!("{} {e}", field("subject"))))?;
        }
        let metadata = event_metadata(i, ev.metadata, ev.corrects, ev.reverses)?;
        if !ev.data.is_object() {
            return Err(ApiError::Invalid(format!(
                "{} must be a JSON object",
                field("data")
            )));
        }
        let data = Zeroizing::new(
            serde_json::to_vec(&ev.data).map_err(|e| ApiError::Internal(e.to_string()))?,
        );
        if data.len() > max_event_bytes {
            return Err(ApiError::TooLarge(format!(
                "{} is {} bytes; the limit is {max_event_bytes}",
                field("data"),
                data.len()
            )));
        }
        events.push(NewEvent {
            subject,
            event_type,
            schema_version: ev.schema_version.0,
            data,
            metadata,
        });
    }
    refuse_identifiers_in_names(&stream, &events)?;
    Ok(AppendRequest {
        stream,
        expected: parsed.expected_version.0,
        events,
        idempotency: None,
    })
}

/// Refuses a request that places one of its subjects' identifiers where it would be chained
/// in plaintext: the stream id, an event type, a metadata key or value (of any event of the
/// request, not only the subject's own). Matching is case-insensitive after Unicode
/// normalisation ([`identifiers`]). The reply names the field, never its content.
fn refuse_identifiers_in_names(stream: &StreamId, events: &[NewEvent]) -> Result<(), ApiError> {
    let subjects = Identifiers::new(
        events
            .iter()
            .filter_map(|e| e.subject.as_ref().map(|s| s.as_str())),
    );
    if subjects.is_empty() {
        return Ok(());
    }
    let refuse = |place: String| {
        ApiError::Invalid(format!(
            "{place} contains the identifier of a subject of this request (compared without \
             regard to case, width or accents): stream ids, event types and metadata are \
             chained in plaintext and kept for ever, so they must be pseudonymous; the \
             identifier belongs in `subject` only, personal data in `data` only"
        ))
    };
    if subjects.appear_in(stream.as_str()) {
        return Err(refuse("the stream id".to_owned()));
    }
    for (i, e) in events.iter().enumerate() {
        if subjects.appear_in(e.event_type.as_str()) {
            return Err(refuse(format!("events[{i}].type")));
        }
        for (j, (k, v)) in e.metadata.iter().enumerate() {
            let j = j + 1;
            if subjects.appear_in(k) {
                return Err(refuse(format!(
                    "events[{i}].metadata: a metadata key (key {j} in sorted order)"
                )));
            }
            if subjects.appear_in(v) {
                return Err(refuse(format!(
                    "events[{i}].metadata: a metadata value (of key {j} in sorted order)"
                )));
            }
        }
    }
    Ok(())
}

/// Refuses a compensating event whose target is missing, in another stream or erased
/// (`compensation::check` is the rule). Checked before the append is queued: an entry never
/// changes stream, and an erasure racing the append is the one case this cannot see.
async fn check_compensations(state: &AppState, request: &AppendRequest) -> Result<(), ApiError> {
    for (i, e) in request.events.iter().enumerate() {
        let Some(c) = Compensation::read(&e.metadata) else {
            continue;
        };
        let rows = state.0.ledger.global_rows(Seq(c.target()), 1).await?;
        let target = rows.first().and_then(|r| {
            let (seq, stream, _) = r.disclosure_fields();
            (seq == c.target()).then_some(Target {
                stream,
                erased: r.erased(),
            })
        });
        compensation::check(c, request.stream.as_str(), target)
            .map_err(|e| ApiError::Invalid(format!("events[{i}].{} {e}", c.kind())))?;
    }
    Ok(())
}

/// Refuses events whose type is registered with a version above its latest, or whose data
/// breaks the JSON Schema of its version (`ledger::schemas`).
async fn check_versions(state: &AppState, request: &AppendRequest) -> Result<(), ApiError> {
    let types = state.0.ledger.schemas(false).await?;
    if types.is_empty() {
        return Ok(());
    }
    for (i, e) in request.events.iter().enumerate() {
        let Some(registered) = types.get(e.event_type.as_str()) else {
            continue;
        };
        let data: serde_json::Value =
            serde_json::from_slice(&e.data).map_err(|e| ApiError::Internal(e.to_string()))?;
        registered
            .check_write(e.schema_version, &data)
            .map_err(|why| ApiError::Invalid(format!("events[{i}]: {why}")))?;
    }
    Ok(())
}

/// Brings each event that is not erased to its type's latest registered version (the stored
/// entry is unchanged; `stored_schema_version` says what it was).
pub(super) async fn upcast(state: &AppState, events: &mut [EventOut]) -> Result<(), ApiError> {
    let types = state.0.ledger.schemas(false).await?;
    if types.is_empty() {
        return Ok(());
    }
    for e in events.iter_mut().filter(|e| !e.erased) {
        let Some(registered) = types.get(&e.event_type) else {
            continue;
        };
        let stored = e.schema_version;
        let (version, data) = registered
            .registration
            .upcast(stored, std::mem::take(&mut e.data));
        e.data = data;
        if version != stored {
            e.schema_version = version;
            e.stored_schema_version = Some(stored);
        }
    }
    Ok(())
}

/// The request header that names an append for exactly-once retries.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The response header that marks an earlier request's result.
const IDEMPOTENCY_REPLAYED: &str = "idempotency-replayed";

/// Append events to a stream.
#[utoipa::path(
    post, path = "/v1/streams/{stream_id}/events", tag = "events",
    params(("stream_id" = String, Path, pattern = "^[A-Za-z0-9_.:-]+$", min_length = 1, max_length = 128, description = "1-128 chars of A-Z a-z 0-9 _ - . :. \
        Kept for ever in plaintext, so pseudonymous: your own surrogate key (`customer-7f3a9c`), \
        never an e-mail address or a customer number people know; refused with 422 if it \
        contains a `subject` of the request"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]+$", min_length = 1, max_length = 255, description = "1-255 visible ASCII \
        characters chosen by the client, unique per intended append (a UUID). A request with a \
        key already recorded (within the idempotency window, 24 hours by default) gets the \
        original 201 with `Idempotency-Replayed: true` and writes nothing; the same key with \
        a different request gets 422. Not kept in clear (SHA-256), so it may be anything.")),
    request_body = AppendBody,
    responses(
        (status = 201, description = "Committed durably (or, with `Idempotency-Replayed: true`, \
            committed earlier by a request with the same idempotency key)", body = AppendResponse,
            headers(("Idempotency-Replayed" = String, description = "`true` when this is the \
            original result of an earlier request with the same key"))),
        (status = 400, description = "Malformed request or idempotency key", content_type = "application/problem+json"),
        (status = 409, description = "Version conflict", content_type = "application/problem+json"),
        (status = 413, description = "Over a size limit", content_type = "application/problem+json"),
        (status = 422, description = "Invalid event, or a subject's identifier in the stream id, \
            a type or metadata (the reply names the field, never its content), or an idempotency \
            key already used for a different request (type `idempotency-key-reused`)", content_type = "application/problem+json"),
        (status = 503, description = "Type `unavailable`: not committed, nothing was written; \
            retry. Type `append-outcome-unknown`: the commit's answer was lost and the service \
            could not find out whether it took effect; retry with the same idempotency key \
            (without one, read the stream first)", content_type = "application/problem+json"),
    )
)]
pub async fn append(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    headers: axum::http::HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, axum::http::HeaderMap, Json<AppendResponse>), ApiError> {
    let Path(stream_id) = path?;
    let stream = parse_stream_id(&stream_id)?;
    if stream.as_str().starts_with(SYSTEM_STREAM_PREFIX) {
        return Err(ApiError::BadRequest(format!(
            "stream_id: streams starting with {SYSTEM_STREAM_PREFIX} are the ledger's own"
        )));
    }
    caller.require_stream(stream.as_str())?;
    let idempotency = headers
        .get(IDEMPOTENCY_KEY)
        .map(|v| IdempotencyKey::parse(v.as_bytes()))
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let mut request = parse_append(stream, &body, state.0.limits.max_event_bytes)?;
    check_compensations(&state, &request).await?;
    check_versions(&state, &request).await?;
    request.idempotency = idempotency;
    let events_appended = request.events.len() as u64;
    let done = state.0.ledger.append(request).await?;
    let after = done.stream_version + 1;
    let snapshot_due = crate::snapshot::due(
        state.0.snapshot_intervals.for_stream(&stream_id),
        after.saturating_sub(events_appended),
        after,
    );
    let mut reply_headers = axum::http::HeaderMap::new();
    if done.replayed {
        reply_headers.insert(
            IDEMPOTENCY_REPLAYED,
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok((
        StatusCode::CREATED,
        reply_headers,
        Json(AppendResponse {
            first_seq: done.first_seq.0,
            last_seq: done.last_seq.0,
            stream_version: done.stream_version,
            snapshot_due,
            entries: done
                .entries
                .into_iter()
                .map(|(seq, h)| AppendedEntry {
                    seq: seq.0,
                    entry_hash: h.to_hex(),
                })
                .collect(),
        }),
    ))
}

/// Read a stream's events, decrypted.
#[utoipa::path(
    get, path = "/v1/streams/{stream_id}/events", tag = "events",
    params(("stream_id" = String, Path, pattern = "^[A-Za-z0-9_.:-]+$", min_length = 1, max_length = 128, description = "The stream"), StreamQuery),
    responses(
        (status = 200, description = "A page of the stream", body = StreamPage),
        (status = 400, description = "Bad parameter", content_type = "application/problem+json"),
    )
)]
pub async fn read_stream(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Json<StreamPage>, ApiError> {
    let Path(stream_id) = path?;
    let stream = parse_stream_id(&stream_id)?;
    caller.require_stream(stream.as_str())?;
    let Query(q) = query?;
    let limit = check_limit(q.limit)?;
    let f = filters(
        &state,
        q.as_of.as_deref(),
        q.event_type.as_deref(),
        q.from_time.as_deref(),
        q.to_time.as_deref(),
        q.direction,
    )
    .await?;
    let filter = RowFilter {
        stream: Some(stream.clone()),
        event_type: f.event_type,
        seqs: f.range,
        from: q.from_version.map(|p| p.0),
        direction: f.direction,
        limit,
    };
    let rows = state.0.ledger.filtered_rows(&filter).await?;
    let events = audited::open_recorded(
        &state,
        &caller,
        AccessAction::ReadStream,
        Some(stream.as_str()),
        rows,
    )
    .await?;
    let next_from_version = next_cursor(
        f.direction,
        events.last().map(|e| e.record.entry.header.stream_version),
        events.len() == limit as usize,
    );
    let mut events: Vec<EventOut> = events.into_iter().map(EventOut::from).collect();
    if q.raw != Some(true) {
        upcast(&state, &mut events).await?;
    }
    if q.with_corrections == Some(true)
        && let Some(first) = events.iter().map(|e| e.seq).min()
    {
        let mut by_target: BTreeMap<u64, Vec<CorrectionRef>> = BTreeMap::new();
        for (seq, c) in state.0.ledger.compensations(&stream, Seq(first)).await? {
            by_target
                .entry(c.target())
                .or_default()
                .push(CorrectionRef {
                    seq: seq.0,
                    kind: c.kind().to_owned(),
                });
        }
        for e in &mut events {
            e.corrected_by = Some(by_target.remove(&e.seq).unwrap_or_default());
        }
    }
    Ok(Json(StreamPage {
        stream_id: stream.to_string(),
        events: rendered(events).await?,
        next_from_version,
    }))
}

/// Read the global log, decrypted.
#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    params(LogQuery),
    responses(
        (status = 200, description = "A page of the log", body = LogPage),
        (status = 400, description = "Bad parameter", content_type = "application/problem+json"),
    )
)]
pub async fn read_global(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Json<LogPage>, ApiError> {
    let Query(q) = query?;
    let limit = check_limit(q.limit)?;
    let f = filters(
        &state,
        q.as_of.as_deref(),
        q.event_type.as_deref(),
        q.from_time.as_deref(),
        q.to_time.as_deref(),
        q.direction,
    )
    .await?;
    let filter = RowFilter {
        stream: None,
        event_type: f.event_type,
        seqs: f.range,
        from: q.from_seq.map(|p| p.0),
        direction: f.direction,
        limit,
    };
    let rows = state.0.ledger.filtered_rows(&filter).await?;
    let events = audited::open_recorded(&state, &caller, AccessAction::ReadLog, None, rows).await?;
    let next_from_seq = next_cursor(
        f.direction,
        events.last().map(|e| e.record.entry.header.seq.0),
        events.len() == limit as usize,
    );
    let mut events: Vec<EventOut> = events.into_iter().map(EventOut::from).collect();
    if q.raw != Some(true) {
        upcast(&state, &mut events).await?;
    }
    Ok(Json(LogPage {
        events: rendered(events).await?,
        next_from_seq,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event(seq: u64) -> EventOut {
        EventOut {
            seq,
            stream_id: "acct-1".to_owned(),
            stream_version: seq,
            event_type: "Deposited".to_owned(),
            schema_version: 2,
            stored_schema_version: seq.is_multiple_of(2).then_some(1),
            subject: Some("ab".repeat(16)),
            recorded_at: "2026-12-07T23:00:00.000001Z".to_owned(),
            metadata: BTreeMap::from([("k\"\n".to_owned(), "v\u{2028}é".to_owned())]),
            data: serde_json::json!({"amount": 1.5, "note": "a \"quoted\" \\ line\n", "n": [1, null]}),
            erased: false,
            payload_digest: "01".repeat(32),
            entry_hash: "02".repeat(32),
            prev_hash: "03".repeat(32),
            signature: "04".repeat(64),
            key_id: "05".repeat(8),
            corrects: Some(1),
            reverses: None,
            corrected_by: seq.is_multiple_of(3).then(|| {
                vec![CorrectionRef {
                    seq: seq + 1,
                    kind: "corrects".to_owned(),
                }]
            }),
        }
    }

    /// The page as it was written before events were rendered apart: serialised whole.
    #[derive(Serialize)]
    struct Whole {
        events: Vec<EventOut>,
        next_from_seq: Option<u64>,
    }

    #[tokio::test]
    async fn a_page_rendered_on_every_core_is_the_page_serialised_whole() {
        for n in [0, 1, 63, 64, 200] {
            let whole = serde_json::to_string(&Whole {
                events: (0..n).map(event).collect(),
                next_from_seq: Some(n),
            })
            .unwrap();
            let page = serde_json::to_string(&LogPage {
                events: rendered((0..n).map(event).collect()).await.unwrap(),
                next_from_seq: Some(n),
            })
            .unwrap();
            assert_eq!(page, whole, "{n} events");
        }
    }
}
