//! Integers as the API takes them, in query strings and in bodies, so that the OpenAPI document
//! can state them exactly: a JSON Schema `integer` is any number with no fractional part, so
//! `1.0` is accepted as 1; positions (seqs, versions, tree sizes) are at most 2^63−1, as the
//! databases store them.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

/// Largest position: `i64::MAX`.
pub const MAX_POSITION: u64 = i64::MAX as u64;

/// A position in a query string: a seq, a stream version, a tree size; 0 to 2^63−1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position(pub u64);

/// A position in a JSON body: a JSON number, never a string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BodyPosition(pub u64);

/// A count or version number in a JSON body that fits 32 bits: 0 to 2^32−1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count(pub u32);

struct Whole {
    max: u64,
    what: &'static str,
    /// Whether digits in a string count (query strings have nothing else).
    strings: bool,
}

impl Visitor<'_> for Whole {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} from 0 to {}", self.what, self.max)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        if v > self.max {
            return Err(E::custom(format!("must be at most {}", self.max)));
        }
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
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
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
        if v.fract() != 0.0 || v < 0.0 || v > self.max as f64 {
            return Err(E::custom(format!(
                "must be a whole number from 0 to {}",
                self.max
            )));
        }
        self.visit_u64(v as u64)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        // Query strings: digits only. In a JSON body a string is not a number.
        if !self.strings {
            return Err(E::invalid_type(de::Unexpected::Str(v), &self));
        }
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(E::custom(format!(
                "must be a whole number from 0 to {}",
                self.max
            )));
        }
        v.parse::<u64>()
            .map_err(|_| E::custom(format!("must be at most {}", self.max)))
            .and_then(|v| self.visit_u64(v))
    }
}

impl<'de> Deserialize<'de> for Position {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Position, D::Error> {
        d.deserialize_any(Whole {
            max: MAX_POSITION,
            what: "a position",
            strings: true,
        })
        .map(Position)
    }
}

impl<'de> Deserialize<'de> for BodyPosition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<BodyPosition, D::Error> {
        d.deserialize_any(Whole {
            max: MAX_POSITION,
            what: "a position",
            strings: false,
        })
        .map(BodyPosition)
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Count, D::Error> {
        d.deserialize_any(Whole {
            max: u64::from(u32::MAX),
            what: "a whole number",
            strings: false,
        })
        .map(|v| Count(u32::try_from(v).unwrap_or(u32::MAX)))
    }
}

fn integer(max: u64) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(0))
        .maximum(Some(max))
        .into()
}

/// A tree size of at least 1.
#[must_use]
pub fn size_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(1))
        .maximum(Some(MAX_POSITION))
        .into()
}

impl PartialSchema for Position {
    fn schema() -> RefOr<Schema> {
        integer(MAX_POSITION)
    }
}

impl ToSchema for Position {}

impl PartialSchema for BodyPosition {
    fn schema() -> RefOr<Schema> {
        integer(MAX_POSITION)
    }
}

impl ToSchema for BodyPosition {}

impl PartialSchema for Count {
    fn schema() -> RefOr<Schema> {
        integer(u64::from(u32::MAX))
    }
}

impl ToSchema for Count {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn whole_numbers_in_range_are_taken_in_any_form() {
        let p = |s: &str| serde_json::from_str::<Position>(s).map(|p| p.0);
        assert_eq!(p("0").unwrap(), 0);
        assert_eq!(p("1.0").unwrap(), 1);
        assert_eq!(p("9223372036854775807").unwrap(), MAX_POSITION);
        for bad in ["9223372036854775808", "-1", "1.5", "\"x\"", "1e300"] {
            assert!(p(bad).is_err(), "{bad}");
        }
        let c = |s: &str| serde_json::from_str::<Count>(s).map(|c| c.0);
        assert_eq!(c("4294967295").unwrap(), u32::MAX);
        assert_eq!(c("446.0").unwrap(), 446);
        assert!(c("4294967296").is_err());
        assert!(c("\"2\"").is_err(), "a string is not a number in a body");
        assert!(serde_json::from_str::<BodyPosition>("\"2\"").is_err());
    }
}
