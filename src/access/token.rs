//! Bearer tokens: `alt1_<id>_<secret>`, where `id` is 16 hex digits (public: it names the token
//! in lists, logs and access entries) and `secret` 64 hex digits, 256 random bits. Only
//! `SHA-256(domain || secret)` is stored; a presented token is checked by looking its id up and
//! comparing the hash of its secret in constant time.

use rand::RngCore;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::crypto::sha256_parts;

/// What every token starts with (and its format version).
pub const TOKEN_PREFIX: &str = "alt1_";
/// Domain separation for the stored hash.
pub const TOKEN_HASH_DOMAIN: &[u8] = b"auditledger/api-token/v1\0";
/// Bytes of randomness in a token's secret.
pub const SECRET_BYTES: usize = 32;
/// Bytes of a token's id.
pub const ID_BYTES: usize = 8;

/// A token's public id: 16 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(String);

impl TokenId {
    /// Parses 16 lowercase hex digits.
    #[must_use]
    pub fn parse(s: &str) -> Option<TokenId> {
        let mut out = [0u8; ID_BYTES];
        crate::entry::decode_hex_exact(s, &mut out).then(|| TokenId(s.to_owned()))
    }

    /// The id.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A new token: shown once, then only its hash is kept.
pub struct IssuedToken {
    /// Its id.
    pub id: TokenId,
    /// The whole token, as the client sends it.
    pub token: Zeroizing<String>,
    /// What is stored.
    pub secret_hash: [u8; 32],
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IssuedToken({})", self.id)
    }
}

/// Makes a new token from the operating system's random source.
#[must_use]
pub fn generate() -> IssuedToken {
    let mut id = [0u8; ID_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut id);
    let mut secret = Zeroizing::new([0u8; SECRET_BYTES]);
    rand::rngs::OsRng.fill_bytes(secret.as_mut());
    let id = TokenId(hex::encode(id));
    let token = Zeroizing::new(format!(
        "{TOKEN_PREFIX}{id}_{}",
        Zeroizing::new(hex::encode(secret.as_ref())).as_str()
    ));
    IssuedToken {
        id,
        token,
        secret_hash: secret_hash(&secret),
    }
}

/// The stored form of a secret.
#[must_use]
pub fn secret_hash(secret: &[u8; SECRET_BYTES]) -> [u8; 32] {
    sha256_parts(&[TOKEN_HASH_DOMAIN, secret])
}

/// A presented token, split: its id and its secret. `None` if it is not of the token's shape
/// (which is answered exactly like an unknown token).
#[must_use]
pub fn parse(presented: &str) -> Option<(TokenId, Zeroizing<[u8; SECRET_BYTES]>)> {
    let rest = presented.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret_hex) = rest.split_once('_')?;
    let id = TokenId::parse(id)?;
    let mut secret = Zeroizing::new([0u8; SECRET_BYTES]);
    crate::entry::decode_hex_exact(secret_hex, secret.as_mut()).then_some((id, secret))
}

/// Whether `secret` is the one whose hash is stored, compared in constant time.
#[must_use]
pub fn secret_matches(secret: &[u8; SECRET_BYTES], stored_hash: &[u8]) -> bool {
    let presented = secret_hash(secret);
    stored_hash.len() == presented.len() && bool::from(presented.ct_eq(stored_hash))
}

/// Whether a stored token may be used at `now` (µs): not revoked, and not expired.
#[must_use]
pub fn usable(revoked_at: Option<i64>, expires_at: Option<i64>, now: i64) -> bool {
    revoked_at.is_none() && expires_at.is_none_or(|e| now < e)
}

/// A lifetime such as `90d`, `12h`, `30m`, `2w` or `1y` (365 days), in microseconds.
///
/// # Errors
/// Anything else, or a lifetime of zero or beyond 100 years.
pub fn parse_lifetime(s: &str) -> Result<i64, String> {
    let bad = || format!("{s:?} is not a lifetime such as 30m, 12h, 90d, 2w or 1y");
    let unit = s.chars().last().ok_or_else(bad)?;
    let n: i64 = s[..s.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let secs: i64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        'y' => 365 * 86_400,
        _ => return Err(bad()),
    };
    let total = n.checked_mul(secs).ok_or_else(bad)?;
    if total <= 0 || total > 100 * 365 * 86_400 {
        return Err(format!(
            "{s:?}: a lifetime is between one second and 100 years"
        ));
    }
    Ok(total * 1_000_000)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_generated_token_parses_and_matches_only_itself() {
        let t = generate();
        assert_eq!(t.token.len(), TOKEN_PREFIX.len() + 16 + 1 + 64);
        let (id, secret) = parse(&t.token).unwrap();
        assert_eq!(id, t.id);
        assert!(secret_matches(&secret, &t.secret_hash));
        let other = generate();
        assert!(!secret_matches(&secret, &other.secret_hash));
        assert!(!secret_matches(&secret, &t.secret_hash[..31]));
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        let t = generate();
        for bad in [
            "",
            "alt1_",
            &t.token[1..],
            &t.token.to_uppercase(),
            &format!("{}0", t.token.as_str()),
            &t.token.replace('_', "-"),
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn lifetimes() {
        assert_eq!(parse_lifetime("90d").unwrap(), 90 * 86_400 * 1_000_000);
        assert_eq!(parse_lifetime("1y").unwrap(), 365 * 86_400 * 1_000_000);
        for bad in ["", "d", "0d", "-1d", "5x", "1000y", "1.5d"] {
            assert!(parse_lifetime(bad).is_err(), "{bad}");
        }
        assert!(usable(None, None, 5));
        assert!(usable(None, Some(6), 5));
        assert!(!usable(None, Some(5), 5));
        assert!(!usable(Some(1), None, 5));
    }
}
