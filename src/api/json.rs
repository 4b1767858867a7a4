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
/// Messages never quote string values, so an identifier in a body cannot leak into a reply.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        };
        if inner.is_syntax() || inner.is_eof() {
            ApiError::BadRequest(format!("request body is not valid JSON: {msg}"))
        } else {
            ApiError::Invalid(msg)
        }
    })
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
