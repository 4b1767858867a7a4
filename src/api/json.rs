//! Request bodies: size limit, JSON parsing with the failing field's path in the message.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The body, or 413 over the limit / 400 if it could not be read.
pub fn body(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!("request body exceeds {limit} bytes"))
        } else {
            ApiError::BadRequest(r.body_text())
        }
    })
}

/// Parses JSON into `T`: 400 if it is not JSON, 422 naming the field if it is the wrong shape.
///
/// Messages never quote what the client sent, so an identifier in a body cannot leak into a
/// reply: serde's own messages do (`invalid type: string "…"`, ``unknown field `…` ``), and
/// the path of a failing value includes the client's map keys (`metadata.<key>`), so both are
/// rewritten by [`safe_path`] and [`safe_message`].
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
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

/// Checks a free-text field's length in bytes.
pub fn check_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::Invalid(format!("{field} must not be empty")));
    }
    if value.len() > max {
        return Err(ApiError::Invalid(format!(
            "{field} must be at most {max} bytes"
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
}
