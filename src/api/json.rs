//! Request bodies, taken exactly as sent: `application/json` only (415), within the size limit
//! (413) and the body deadline (408), one JSON object and nothing after it (400 / 422), and
//! every number representable exactly (422), so that what is sealed and signed is what the
//! client sent. Parse errors name the failing field, never its content.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::{self, DeserializeOwned, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::AppState;
use super::error::ApiError;
use super::numbers::first_inexact_number;

/// A request body that is declared `application/json`, read in full within the size limit
/// and the body deadline.
pub struct JsonBody(pub Bytes);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<JsonBody, ApiError> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let limits = state.0.limits;
        let read = Bytes::from_request(req, state);
        let body = tokio::time::timeout(limits.body_timeout, read)
            .await
            .map_err(|_| ApiError::BodyTimeout(limits.body_timeout))?;
        body.map(JsonBody).map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge(format!(
                    "request body exceeds {} bytes",
                    limits.max_request_bytes
                ))
            } else {
                ApiError::BadRequest(r.body_text())
            }
        })
    }
}

/// `application/json`, with at most a `charset=utf-8` parameter (JSON is UTF-8, RFC 8259).
/// Anything else, a form or `text/plain` above all, is refused: a browser sends those across
/// sites without asking, so accepting them would let any web page append or erase.
fn is_json(value: Option<&axum::http::HeaderValue>) -> bool {
    let Some(Ok(text)) = value.map(axum::http::HeaderValue::to_str) else {
        return false;
    };
    let mut parts = text.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|t| t.eq_ignore_ascii_case("application/json"))
    {
        return false;
    }
    parts.all(|p| {
        p.split_once('=').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("charset")
                && v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        })
    })
}

/// Parses a request body into `T`: 400 if it is not one JSON value and nothing else, 422 if it
/// is not an object (nor, in an append, each of its `events`), if a number in it cannot be
/// kept exactly, or naming the field if it is the wrong shape.
///
/// Messages never quote what the client sent, so an identifier in a body cannot leak into a
/// reply: serde's own messages do (`invalid type: string "…"`, ``unknown field `…` ``), and
/// the path of a failing value includes the client's map keys (`metadata.<key>`), so both are
/// rewritten by [`safe_path`] and [`safe_message`].
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    check_shape(bytes)?;
    if let Some(offset) = first_inexact_number(bytes) {
        return Err(ApiError::Invalid(format!(
            "the number at byte {offset} cannot be kept exactly: integers must fit in 64 bits \
             (-9223372036854775808 to 18446744073709551615) and other numbers must be exact \
             as IEEE 754 doubles print them (at most 17 significant digits); send larger or \
             more precise values as strings"
        )));
    }
    from_slice(bytes)
}

/// The request's shape before its fields: one object, nothing after it, and (for an append)
/// each element of `events` an object. serde would otherwise accept an array in place of an
/// object (a struct's fields in order) and ignore whatever follows the first value.
fn check_shape(bytes: &[u8]) -> Result<(), ApiError> {
    // The well-formed body, by far the common case, is checked without tracking paths (which
    // costs as much as the check); only a body that fails is walked again for the message.
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    if Shape::deserialize(&mut *de).is_ok() && de.end().is_ok() {
        return Ok(());
    }
    let syntax = |inner: &serde_json::Error| {
        let what = if inner.to_string().starts_with("trailing characters") {
            "there is data after the JSON value"
        } else {
            "it is not valid JSON"
        };
        ApiError::BadRequest(format!(
            "request body: {what} (at line {} column {})",
            inner.line(),
            inner.column()
        ))
    };
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    if let Err(e) = serde_path_to_error::deserialize::<_, Shape>(&mut *de) {
        let path = e.path().to_string();
        let inner = e.into_inner();
        return Err(if inner.is_syntax() || inner.is_eof() {
            syntax(&inner)
        } else if inner.to_string().starts_with(DUPLICATE_KEY) {
            // The key is the client's text: only its position is given.
            ApiError::Invalid(format!(
                "{DUPLICATE_KEY} (at line {} column {}): keys must be unique, or the value \
                 kept would not be the one sent",
                inner.line(),
                inner.column()
            ))
        } else if path == "." || path.is_empty() {
            ApiError::Invalid("the request body must be a JSON object".to_owned())
        } else {
            ApiError::Invalid(format!("{path} must be a JSON object"))
        });
    }
    de.end().map_err(|e| syntax(&e))
}

/// A body's required shape: an object whose `events`, if an array, holds only objects.
struct Shape;

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Shape, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Shape;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
                let mut keys = KeySet::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if !keys.insert(key.clone()) {
                        return Err(de::Error::custom(DUPLICATE_KEY));
                    }
                    if key == "events" {
                        map.next_value::<Events>()?;
                    } else {
                        map.next_value::<Unique>()?;
                    }
                }
                Ok(Shape)
            }
        }
        d.deserialize_map(V)
    }
}

/// `events`: if an array, of objects (any other type is left to the field's own check).
struct Events;

impl<'de> Deserialize<'de> for Events {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Events, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Events;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("events")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Events, A::Error> {
                while seq.next_element::<AnObject>()?.is_some() {}
                Ok(Events)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Events, A::Error> {
                unique_entries(map)?;
                Ok(Events)
            }
            fn visit_unit<E>(self) -> Result<Events, E> {
                Ok(Events)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Events, E> {
                Ok(Events)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Events, E> {
                Ok(Events)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Events, E> {
                Ok(Events)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Events, E> {
                Ok(Events)
            }
            fn visit_str<E>(self, _: &str) -> Result<Events, E> {
                Ok(Events)
            }
        }
        d.deserialize_any(V)
    }
}

/// Any JSON object, skipped.
struct AnObject;

impl<'de> Deserialize<'de> for AnObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<AnObject, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AnObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<AnObject, A::Error> {
                unique_entries(map)?;
                Ok(AnObject)
            }
        }
        d.deserialize_map(V)
    }
}

/// An object's keys seen so far: a short list while it is short (most objects have a handful
/// of keys, for which hashing each costs more than comparing), a hash set beyond.
#[derive(Default)]
struct KeySet<'de> {
    few: Vec<std::borrow::Cow<'de, str>>,
    many: std::collections::HashSet<std::borrow::Cow<'de, str>>,
}

impl<'de> KeySet<'de> {
    const FEW: usize = 16;

    /// Adds `key`; false if it was there already.
    fn insert(&mut self, key: std::borrow::Cow<'de, str>) -> bool {
        if self.many.is_empty() {
            if self.few.contains(&key) {
                return false;
            }
            if self.few.len() < Self::FEW {
                self.few.push(key);
                return true;
            }
            self.many.extend(self.few.drain(..));
        }
        self.many.insert(key)
    }
}

/// The message of a duplicate key, told apart from serde's own errors.
const DUPLICATE_KEY: &str = "an object has the same key twice";

/// Skips a map's entries, refusing a key that repeats.
fn unique_entries<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    let mut keys = KeySet::default();
    while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
        if !keys.insert(key) {
            return Err(de::Error::custom(DUPLICATE_KEY));
        }
        map.next_value::<Unique>()?;
    }
    Ok(())
}

/// Any JSON value, skipped, whose objects have no key twice: serde_json keeps the last of
/// two equal keys, so the data sealed and signed would silently differ from what was sent.
struct Unique;

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Unique, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Unique;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Unique, A::Error> {
                unique_entries(map)?;
                Ok(Unique)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
                while seq.next_element::<Unique>()?.is_some() {}
                Ok(Unique)
            }
            fn visit_unit<E>(self) -> Result<Unique, E> {
                Ok(Unique)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
                Ok(Unique)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
                Ok(Unique)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
                Ok(Unique)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
                Ok(Unique)
            }
            fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
                Ok(Unique)
            }
        }
        d.deserialize_any(V)
    }
}

fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // As in `check_shape`: paths are tracked only to explain a failure.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let inner_text = e.inner().to_string();
        // serde reports an unknown field at a path that ends with the client's key itself.
        let path = safe_path(e.path(), inner_text.starts_with("unknown field"));
        let inner = e.into_inner();
        let position = format!(" at line {} column {}", inner.line(), inner.column());
        let text = inner_text.strip_suffix(&position).unwrap_or(&inner_text);
        let msg = safe_message(text);
        let msg = if path.is_empty() {
            format!("{msg}{position}")
        } else {
            format!("{path}: {msg}{position}")
        };
        if inner.is_syntax() || inner.is_eof() {
            ApiError::BadRequest(format!("request body is not valid JSON: {msg}"))
        } else {
            ApiError::Invalid(msg)
        }
    })
}

/// The path of a failing value, cut before the first key that is the client's rather than a
/// field name of ours: a key of a map nested in a map (`events[0].metadata.<key>` stops at
/// `events[0].metadata`). Struct fields sit at the top level or in an array element; a map
/// inside a map is a free-form object such as `metadata`.
/// With `ends_in_client_key`, the last key is dropped too (an unknown field's own name).
fn safe_path(path: &serde_path_to_error::Path, ends_in_client_key: bool) -> String {
    use serde_path_to_error::Segment;
    let mut segments: Vec<&Segment> = path.iter().collect();
    if ends_in_client_key && matches!(segments.last(), Some(Segment::Map { .. })) {
        segments.pop();
    }
    let mut out = String::new();
    let mut parent_is_map = false;
    for segment in segments {
        match segment {
            Segment::Seq { index } => {
                out.push('[');
                out.push_str(&index.to_string());
                out.push(']');
                parent_is_map = false;
            }
            Segment::Map { key } if !parent_is_map => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
                parent_is_map = true;
            }
            // A client's key, an enum variant the client named, or an unknown segment.
            Segment::Map { .. } | Segment::Enum { .. } | Segment::Unknown => break,
        }
    }
    out
}

/// serde's message without the client's text in it. The part after `, expected` is ours (a
/// visitor's expectation or a list of our field names) and kept; before it, only the kind of
/// error and of the unexpected value are kept (`invalid type: string`, `unknown field`).
fn safe_message(text: &str) -> String {
    // `missing field `x`` and `duplicate field `x`` name one of our struct's fields.
    if text.starts_with("missing field `") || text.starts_with("duplicate field `") {
        return text.to_owned();
    }
    let (head, expected) = match text.split_once(", expected ") {
        Some((head, expected)) => (head, Some(expected)),
        None => (text, None),
    };
    let head = match head.split_once(": ") {
        // `invalid type: string "x"`, `invalid value: integer `5``: keep the value's kind.
        Some((kind, unexpected)) => {
            let what: String = unexpected
                .chars()
                .take_while(|c| c.is_ascii_alphabetic() || *c == ' ')
                .collect();
            let what = what.split_whitespace().next().unwrap_or("");
            if what.is_empty() {
                kind.to_owned()
            } else {
                format!("{kind}: {what}")
            }
        }
        // `unknown field `x``, `unknown variant `x``: cut at the first quote.
        None => head
            .split(['`', '"', '\''])
            .next()
            .unwrap_or("")
            .trim_end()
            .to_owned(),
    };
    match expected {
        Some(expected) => format!("{head}, expected {expected}"),
        None => head,
    }
}

/// Checks a free-text field's length in characters (Unicode scalar values, as JSON Schema's
/// `maxLength` counts them, so that the OpenAPI document states the rule exactly).
pub fn check_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::Invalid(format!("{field} must not be empty")));
    }
    if value.chars().count() > max {
        return Err(ApiError::Invalid(format!(
            "{field} must be at most {max} characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "only parsed")]
    struct Body {
        n: u32,
        #[serde(default)]
        m: BTreeMap<String, String>,
    }

    fn detail(json: &str) -> String {
        parse::<Body>(json.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn messages_name_the_field_but_quote_no_client_text() {
        let secret = "fiona.kelvin@example.com";
        for (json, names) in [
            (
                format!(r#"{{"n": "{secret}"}}"#),
                "n: invalid type: string, expected u32",
            ),
            (
                format!(r#"{{"n": 1, "m": {{"{secret}": 5}}}}"#),
                "m: invalid type: integer, expected a string",
            ),
            (
                format!(r#"{{"n": 1, "{secret}": 5}}"#),
                "unknown field, expected `n` or `m`",
            ),
        ] {
            let d = detail(&json);
            assert!(d.starts_with(names), "{d}");
            assert!(!d.contains("fiona"), "{d}");
        }
        assert!(detail("{}").starts_with("missing field `n`"));
    }

    #[test]
    fn a_repeated_key_is_refused_however_many_keys_come_before_it() {
        for keys in [1, KeySet::FEW - 1, KeySet::FEW, KeySet::FEW + 1, 100] {
            let mut members: Vec<String> = (0..keys).map(|i| format!(r#""k{i}": {i}"#)).collect();
            for repeated in [0, keys / 2, keys - 1] {
                members.push(format!(r#""k{repeated}": 0"#));
                let json = format!(r#"{{"n": 1, "x": {{{}}}}}"#, members.join(", "));
                assert!(
                    check_shape(json.as_bytes()).is_err(),
                    "{keys} keys, k{repeated} again"
                );
                members.pop();
            }
            let json = format!(r#"{{"n": 1, "x": {{{}}}}}"#, members.join(", "));
            assert!(check_shape(json.as_bytes()).is_ok(), "{keys} distinct keys");
        }
    }
}
