//! Time as the ledger records it: microseconds since the Unix epoch, UTC, shown as RFC 3339.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

/// Now, in microseconds since the Unix epoch.
#[must_use]
pub fn now_micros() -> i64 {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000).unwrap_or(i64::MAX)
}

/// `2026-11-22T09:45:18.123456Z`: RFC 3339, UTC, always six fractional digits.
#[must_use]
pub fn format_micros(micros: i64) -> String {
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| micros.to_string())
}

/// Parses an RFC 3339 time into microseconds since the Unix epoch.
#[must_use]
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000).ok()
}

/// Parses a time written exactly as [`format_micros`] writes it
/// (`YYYY-MM-DDTHH:MM:SS.ffffffZ`): the only spelling a signed or hashed time has on the wire,
/// so any other spelling of the same instant is refused.
#[must_use]
pub fn parse_canonical_micros(s: &str) -> Option<i64> {
    let micros = parse_rfc3339(s)?;
    (format_micros(micros) == s).then_some(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_with_microseconds() {
        let m = 1_763_804_718_123_456;
        let s = format_micros(m);
        assert_eq!(s, "2025-11-22T09:45:18.123456Z");
        assert_eq!(parse_rfc3339(&s), Some(m));
        assert_eq!(parse_canonical_micros(&s), Some(m));
        for other in [
            "2025-11-22T09:45:18.123456000Z",
            "2025-11-22T10:45:18.123456+01:00",
            "2025-11-22T09:45:18.123456z",
            "2025-11-22t09:45:18.123456Z",
        ] {
            assert_eq!(parse_canonical_micros(other), None, "{other}");
        }
    }
}
