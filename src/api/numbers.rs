//! Numbers kept exactly as sent. Event data is parsed with serde_json, which turns an integer
//! beyond 64 bits, or a decimal with more digits than a double holds, into the nearest double:
//! the value sealed, hashed and signed would then differ from the one the client sent, silently.
//! Such a number is found here, in the raw body, and the request refused (422) instead.
//!
//! A number is exact when the value serde_json parses from it prints back as the same decimal
//! value (`1.50` and `1.5`, `1e2` and `100.0` are the same value; `12345678901234567890123` and
//! `1.2345678901234568e22` are not).

/// The byte offset of the first number in `json` (a valid JSON text) that does not survive
/// parsing exactly, if any.
#[must_use]
pub fn first_inexact_number(json: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                i += 1;
                while i < json.len() {
                    match json[i] {
                        b'\\' => i += 2,
                        b'"' => {
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < json.len()
                    && matches!(json[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                if !is_exact(&json[start..i]) {
                    return Some(start);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// Whether the number `token` parses (as serde_json parses numbers) to a value that prints
/// back as the same decimal value.
fn is_exact(token: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(token) else {
        return false;
    };
    let Ok(number) = serde_json::from_str::<serde_json::Number>(text) else {
        return false;
    };
    let sent = decimal(text);
    sent.is_some() && sent == decimal(&number.to_string())
}

/// A JSON number's value as (negative, significant digits, power of ten); zero is
/// `(false, "", 0)`. `None` if the exponent is out of range.
fn decimal(text: &str) -> Option<(bool, String, i64)> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(p) => (&rest[..p], rest[p + 1..].parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut exponent = exponent.checked_sub(i64::try_from(frac.len()).ok()?)?;
    let mut digits = format!("{int}{frac}").trim_start_matches('0').to_owned();
    while digits.ends_with('0') {
        digits.pop();
        exponent = exponent.checked_add(1)?;
    }
    if digits.is_empty() {
        return Some((false, String::new(), 0));
    }
    Some((negative, digits, exponent))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    fn exact(json: &str) -> bool {
        first_inexact_number(json.as_bytes()).is_none()
    }

    #[test]
    fn numbers_a_double_or_a_64_bit_integer_holds_are_exact() {
        for n in [
            "0",
            "-0",
            "0.0",
            "-0.0",
            "1",
            "-1",
            "1.5",
            "1.50",
            "1e2",
            "1E+2",
            "100.0",
            "0.1",
            "0.30000000000000004",
            "9007199254740993",
            "18446744073709551615",
            "-9223372036854775808",
            "1.7976931348623157e308",
            "5e-324",
            "123.456e-7",
        ] {
            assert!(exact(n), "{n}");
            assert!(exact(&format!(r#"{{"a": [{n}, "x"]}}"#)), "{n}");
        }
    }

    #[test]
    fn numbers_that_would_be_rounded_are_found() {
        for (n, at) in [
            ("18446744073709551616", 0),
            ("-9223372036854775809", 0),
            ("123456789012345678901234567890", 0),
            ("3.141592653589793238462643", 0),
            ("0.1000000000000000000000001", 0),
            ("0e99999999999999999999", 0),
        ] {
            assert_eq!(first_inexact_number(n.as_bytes()), Some(at), "{n}");
        }
        let body = r#"{"s": "99999999999999999999999", "n": 1, "big": 99999999999999999999999}"#;
        assert_eq!(
            first_inexact_number(body.as_bytes()),
            Some(body.rfind(": ").unwrap() + 2)
        );
    }

    #[test]
    fn digits_inside_strings_are_not_numbers() {
        assert!(exact(
            r#"{"a": "123456789012345678901234567890", "b\"": "1e999"}"#
        ));
    }

    proptest! {
        #[test]
        fn every_double_as_printed_is_exact(x in any::<f64>().prop_filter("finite", |x| x.is_finite())) {
            let printed = serde_json::to_string(&x).unwrap();
            prop_assert!(exact(&printed), "{}", printed);
        }

        #[test]
        fn every_64_bit_integer_is_exact(i in any::<i64>(), u in any::<u64>()) {
            prop_assert!(exact(&i.to_string()));
            prop_assert!(exact(&u.to_string()));
        }

        #[test]
        fn integers_beyond_64_bits_are_refused(u in any::<u64>(), extra in 1u32..1000) {
            let big = u128::from(u) + u128::from(u64::MAX) + u128::from(extra);
            prop_assume!(big % 10 != 0);
            prop_assert!(!exact(&big.to_string()));
        }
    }
}
