//! Payload sealing: XAES-256-GCM under a data key, bound to the entry's header.
//!
//! A sealed payload is `version (1) || key kind (1) || key ref (16) || nonce || ciphertext ||
//! tag (16)`. The key kind says whether the key is the system key (0) or a subject's key (1);
//! the key ref names it (the system key's id, or the subject handle). The associated data is the
//! entry header's encoding, so a ciphertext moved into another entry does not open. Two versions
//! exist, told apart by the first byte:
//!
//! - **v2** (written by [`seal`]): a 24-byte nonce and XAES-256-GCM (C2SP; see
//!   [`crate::crypto`]'s `xaes` module): each seal derives its own AES-256-GCM key from the data
//!   key and the nonce's first half, and encrypts under it with the nonce's second half.
//! - **v1** (read by [`open`], written only by [`seal_v1_with_nonce`] for vectors): a 12-byte
//!   nonce and AES-256-GCM directly under the data key.
//!
//! **Bounds.** v2 nonces are 192 bits from the operating system's random source, and nothing
//! else limits how many payloads one key may seal: the probability that any two of `q` seals
//! under one key share a nonce is at most `q² / 2^193` (below 2^-98 for a century of seals at
//! 50,000 per second, ≈ 2^47.2 seals; 2^-33 at 2^80 seals). Each derived key seals about one
//! payload, so AES-GCM's per-key limits on data volume do not accumulate either. v1's random
//! 96-bit nonces were bounded to 2^32 seals per key (NIST SP 800-38D §8.3), a bound nothing
//! counted; v1 payloads are only read now, so it no longer applies to anything being sealed.

use std::fmt;

use aes_gcm::Nonce;
use aes_gcm::aead::{Aead, Payload};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::crypto::keys::{DataKey, NONCE_LEN, TAG_LEN};
use crate::crypto::xaes::XAES_NONCE_LEN;
use crate::entry::{PayloadDigest, SUBJECT_HANDLE_LEN, SubjectHandle};

/// Version byte of a legacy sealed payload: AES-256-GCM, 12-byte random nonce. Read only.
pub const SEALED_V1: u8 = 1;
/// Version byte of the sealed payloads [`seal`] writes: XAES-256-GCM, 24-byte random nonce.
pub const SEALED_V2: u8 = 2;
/// Bytes in the nonce of a v2 sealed payload.
pub const SEAL_NONCE_LEN: usize = XAES_NONCE_LEN;
/// Bytes in the nonce of a v1 sealed payload.
pub const SEAL_V1_NONCE_LEN: usize = NONCE_LEN;
/// Bytes in a key kind and key ref.
const KEY_REF_LEN: usize = 1 + SUBJECT_HANDLE_LEN;

/// Which data key sealed a payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyRef {
    /// The system key, named by its 16-byte id.
    System([u8; SUBJECT_HANDLE_LEN]),
    /// A subject's key, named by the subject's handle.
    Subject(SubjectHandle),
}

impl KeyRef {
    /// Kind byte followed by the 16-byte reference.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 1 + SUBJECT_HANDLE_LEN] {
        let mut out = [0u8; 1 + SUBJECT_HANDLE_LEN];
        let (kind, id) = match self {
            KeyRef::System(id) => (0, id),
            KeyRef::Subject(h) => (1, &h.0),
        };
        out[0] = kind;
        out[1..].copy_from_slice(id);
        out
    }

    /// Parses what [`KeyRef::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<KeyRef, SealError> {
        let (kind, rest) = bytes.split_first().ok_or(SealError::Malformed)?;
        let id: [u8; SUBJECT_HANDLE_LEN] = rest.try_into().map_err(|_| SealError::Malformed)?;
        match kind {
            0 => Ok(KeyRef::System(id)),
            1 => Ok(KeyRef::Subject(SubjectHandle(id))),
            _ => Err(SealError::Malformed),
        }
    }
}

/// Why a sealed payload did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Not a sealed payload of a known version.
    #[error("malformed sealed payload")]
    Malformed,
    /// The tag does not verify: wrong key, changed bytes, or moved to another entry.
    #[error("sealed payload fails authentication")]
    Tampered,
}

/// A sealed payload, as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedPayload(pub Vec<u8>);

impl SealedPayload {
    /// SHA-256 of the sealed bytes: what the chain commits to.
    #[must_use]
    pub fn digest(&self) -> PayloadDigest {
        PayloadDigest(crate::crypto::sha256_parts(&[&self.0]))
    }

    /// The key that sealed it, from a v1 or v2 payload.
    pub fn key_ref(&self) -> Result<KeyRef, SealError> {
        self.parts().map(|p| p.key_ref)
    }

    /// The sealed format version: [`SEALED_V1`] or [`SEALED_V2`].
    pub fn version(&self) -> Result<u8, SealError> {
        self.parts().map(|p| p.version)
    }

    /// Splits a well-formed payload of either version into its fields.
    fn parts(&self) -> Result<Parts<'_>, SealError> {
        let (&version, rest) = self.0.split_first().ok_or(SealError::Malformed)?;
        let nonce_len = match version {
            SEALED_V1 => SEAL_V1_NONCE_LEN,
            SEALED_V2 => SEAL_NONCE_LEN,
            _ => return Err(SealError::Malformed),
        };
        if rest.len() < KEY_REF_LEN + nonce_len + TAG_LEN {
            return Err(SealError::Malformed);
        }
        let (key_ref, rest) = rest.split_at(KEY_REF_LEN);
        let (nonce, ct) = rest.split_at(nonce_len);
        Ok(Parts {
            version,
            key_ref: KeyRef::from_bytes(key_ref)?,
            nonce,
            ct,
        })
    }
}

/// The fields of a sealed payload; `nonce` has the length its version calls for.
struct Parts<'a> {
    version: u8,
    key_ref: KeyRef,
    nonce: &'a [u8],
    ct: &'a [u8],
}

impl fmt::Debug for SealedPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedPayload({} bytes)", self.0.len())
    }
}

/// Seals `plaintext` under `key`, bound to `aad`, as a v2 payload with a fresh random 192-bit
/// nonce. No count of seals per key needs keeping: see the module documentation for the bound.
#[must_use]
pub fn seal(key: &DataKey, key_ref: &KeyRef, aad: &[u8], plaintext: &[u8]) -> SealedPayload {
    let mut nonce = [0u8; SEAL_NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    seal_with_nonce(key, key_ref, aad, plaintext, nonce)
}

/// Seals a v2 payload with a caller-chosen nonce. Only for reproducible test vectors: a nonce
/// used twice under one key breaks the confidentiality and authenticity of both payloads.
#[must_use]
pub fn seal_with_nonce(
    key: &DataKey,
    key_ref: &KeyRef,
    aad: &[u8],
    plaintext: &[u8],
    nonce: [u8; SEAL_NONCE_LEN],
) -> SealedPayload {
    // Encryption only fails for messages beyond 2^36 bytes; payloads are capped far below.
    let ct = key
        .xaes()
        .encrypt(&nonce, plaintext, aad)
        .unwrap_or_default();
    assemble(SEALED_V2, key_ref, &nonce, &ct)
}

/// Seals a legacy v1 payload (AES-256-GCM directly under `key`, 96-bit nonce) with a
/// caller-chosen nonce: only for test vectors of ledgers written before v2. Random 96-bit nonces
/// allow at most 2^32 seals per key; the service never writes v1.
#[must_use]
pub fn seal_v1_with_nonce(
    key: &DataKey,
    key_ref: &KeyRef,
    aad: &[u8],
    plaintext: &[u8],
    nonce: [u8; SEAL_V1_NONCE_LEN],
) -> SealedPayload {
    // As above: encryption cannot fail for a capped payload.
    let ct = key
        .cipher()
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .unwrap_or_default();
    assemble(SEALED_V1, key_ref, &nonce, &ct)
}

fn assemble(version: u8, key_ref: &KeyRef, nonce: &[u8], ct: &[u8]) -> SealedPayload {
    let mut out = Vec::with_capacity(1 + KEY_REF_LEN + nonce.len() + ct.len());
    out.push(version);
    out.extend_from_slice(&key_ref.to_bytes());
    out.extend_from_slice(nonce);
    out.extend_from_slice(ct);
    SealedPayload(out)
}

/// Opens a sealed payload of either version with `key` and the `aad` it must be bound to.
pub fn open(
    key: &DataKey,
    sealed: &SealedPayload,
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let parts = sealed.parts()?;
    if parts.version == SEALED_V1 {
        return key
            .cipher()
            .decrypt(
                Nonce::from_slice(parts.nonce),
                Payload { msg: parts.ct, aad },
            )
            .map(Zeroizing::new)
            .map_err(|_| SealError::Tampered);
    }
    let nonce: &[u8; SEAL_NONCE_LEN] = parts.nonce.try_into().map_err(|_| SealError::Malformed)?;
    key.xaes()
        .decrypt(nonce, parts.ct, aad)
        .map_err(|_| SealError::Tampered)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The worked example's header AAD (docs/FORMAT.md §7), for known answers.
    const EXAMPLE_AAD: &str = "61756469746c65646765722f7061796c6f61642d6161642f763100025555555555555555555555555555555500000000000000000000000a6163636f756e742d343200000000000000000000000d4163636f756e744f70656e65640000000100000660da55c129c00000000100000006736f757263650000000c636f72652d62616e6b696e67";

    #[test]
    fn a_payload_opens_only_with_its_key_and_its_header() {
        let k = DataKey::generate();
        let r = KeyRef::System([3; 16]);
        let s = seal(&k, &r, b"header-1", b"{\"amount\":5}");
        assert_eq!(s.key_ref().unwrap(), r);
        assert_eq!(s.version().unwrap(), SEALED_V2);
        assert_eq!(s.0.len(), 1 + 17 + 24 + 12 + 16);
        assert_eq!(&*open(&k, &s, b"header-1").unwrap(), b"{\"amount\":5}");
        assert_eq!(open(&k, &s, b"header-2"), Err(SealError::Tampered));
        assert_eq!(
            open(&DataKey::generate(), &s, b"header-1"),
            Err(SealError::Tampered)
        );
        assert_eq!(
            open(&k, &SealedPayload(vec![1, 2]), b""),
            Err(SealError::Malformed)
        );
    }

    #[test]
    fn every_changed_byte_of_a_v2_payload_fails_to_open_or_names_another_key() {
        let k = DataKey::from_slice(&[7; 32]).unwrap();
        let r = KeyRef::Subject(SubjectHandle([9; 16]));
        let s = seal(&k, &r, b"aad", b"data");
        for i in 0..s.0.len() {
            let mut bent = s.clone();
            bent.0[i] ^= 1;
            match i {
                // Version 2 -> 3: unknown.
                0 => assert_eq!(open(&k, &bent, b"aad"), Err(SealError::Malformed)),
                // The key ref is not in the AAD (the chain's payload digest commits to it, and
                // the header fixes which key an entry needs): a changed ref names another key.
                1..=17 => assert_ne!(bent.key_ref().unwrap(), r, "byte {i}"),
                // Nonce, ciphertext, tag.
                _ => assert_eq!(
                    open(&k, &bent, b"aad"),
                    Err(SealError::Tampered),
                    "byte {i}"
                ),
            }
        }
        // A payload passed off as v1 (same bytes, version byte 1) does not open.
        let mut v1 = s.clone();
        v1.0[0] = SEALED_V1;
        assert_eq!(open(&k, &v1, b"aad"), Err(SealError::Tampered));
        // Truncated below the v2 minimum: malformed, not tampered.
        let short = SealedPayload(s.0[..1 + 17 + 24 + 15].to_vec());
        assert_eq!(short.key_ref(), Err(SealError::Malformed));
        assert_eq!(open(&k, &short, b"aad"), Err(SealError::Malformed));
    }

    #[test]
    fn an_empty_plaintext_seals_to_the_minimum_length() {
        let k = DataKey::generate();
        let s = seal(&k, &KeyRef::System([0; 16]), b"", b"");
        assert_eq!(s.0.len(), 58);
        assert!(open(&k, &s, b"").unwrap().is_empty());
        let v1 = seal_v1_with_nonce(&k, &KeyRef::System([0; 16]), b"", b"", [0; 12]);
        assert_eq!(v1.0.len(), 46);
        assert!(open(&k, &v1, b"").unwrap().is_empty());
    }

    #[test]
    fn key_ref_reads_both_versions_and_refuses_others() {
        let k = DataKey::generate();
        let r = KeyRef::Subject(SubjectHandle([4; 16]));
        let v2 = seal(&k, &r, b"", b"x");
        let v1 = seal_v1_with_nonce(&k, &r, b"", b"x", [5; 12]);
        assert_eq!(v2.key_ref().unwrap(), r);
        assert_eq!(v1.key_ref().unwrap(), r);
        assert_eq!(v1.version().unwrap(), SEALED_V1);
        for version in [0u8, 3, 0xff] {
            let mut other = v2.clone();
            other.0[0] = version;
            assert_eq!(other.key_ref(), Err(SealError::Malformed));
        }
        let mut bad_kind = v2.clone();
        bad_kind.0[1] = 2;
        assert_eq!(bad_kind.key_ref(), Err(SealError::Malformed));
    }

    /// A v1 payload as the code before v2 wrote it (docs/FORMAT.md §7 before v2 sealing: key
    /// `11` x 32, nonce `33` x 12, the worked example's v2 header as AAD) still opens.
    #[test]
    fn a_v1_payload_written_before_v2_still_opens() {
        let k = DataKey::from_slice(&[0x11; 32]).unwrap();
        let aad = hex::decode(EXAMPLE_AAD).unwrap();
        let old = SealedPayload(hex::decode("010022222222222222222222222222222222333333333333333333333333ffa13d31a4f7070e889aaa2eea6ec155c72b3710f556a37074dcd77417056b6d").unwrap());
        assert_eq!(old.key_ref().unwrap(), KeyRef::System([0x22; 16]));
        assert_eq!(&*open(&k, &old, &aad).unwrap(), br#"{"owner":"ACME"}"#);
        let rebuilt = seal_v1_with_nonce(
            &k,
            &KeyRef::System([0x22; 16]),
            &aad,
            br#"{"owner":"ACME"}"#,
            [0x33; 12],
        );
        assert_eq!(rebuilt, old);
        assert_eq!(open(&k, &old, b"another header"), Err(SealError::Tampered));
    }

    /// Random 192-bit nonces: 100,000 seals under one key, and no derived AES-256-GCM key and
    /// nonce pair occurs twice (nor, for that matter, any nonce).
    #[test]
    fn many_seals_under_one_key_never_repeat_a_derived_key_and_nonce() {
        use std::collections::HashSet;
        const SEALS: usize = 100_000;
        let k = DataKey::generate();
        let x = k.xaes();
        let r = KeyRef::System([1; 16]);
        let mut seen = HashSet::with_capacity(SEALS);
        for _ in 0..SEALS {
            let s = seal(&k, &r, b"h", b"");
            let nonce: [u8; SEAL_NONCE_LEN] = s.parts().unwrap().nonce.try_into().unwrap();
            assert!(seen.insert(x.derivation(&nonce)));
        }
        assert_eq!(seen.len(), SEALS);
    }

    /// Reads `` - `name`: `hex` `` from docs/FORMAT.md.
    fn documented(name: &str) -> String {
        let doc = include_str!("../../docs/FORMAT.md");
        let key = format!("- `{name}`:");
        let line = doc.lines().find(|l| l.starts_with(&key)).unwrap();
        line[key.len()..].trim().trim_matches('`').to_owned()
    }

    /// The sealed-payload vector of docs/FORMAT.md §3.3, derivation steps included.
    #[test]
    fn the_sealed_payload_vector_in_format_md_is_reproduced() {
        let key = DataKey::from_slice(&[0x11; 32]).unwrap();
        let nonce: [u8; SEAL_NONCE_LEN] = std::array::from_fn(|i| u8::try_from(i).unwrap());
        let aad = hex::decode(EXAMPLE_AAD).unwrap();
        let plaintext = br#"{"owner":"ACME"}"#;
        let sealed = seal_with_nonce(&key, &KeyRef::System([0x22; 16]), &aad, plaintext, nonce);
        let (kx, nx) = key.xaes().derivation(&nonce);
        let actual = [
            ("seal_v2_nonce", hex::encode(nonce)),
            ("seal_v2_derived_key", hex::encode(kx)),
            ("seal_v2_gcm_nonce", hex::encode(nx)),
            ("sealed_payload", hex::encode(&sealed.0)),
        ];
        if std::env::var_os("PRINT_VECTOR").is_some() {
            for (name, value) in &actual {
                println!("- `{name}`: `{value}`");
            }
        }
        for (name, value) in &actual {
            assert_eq!(&documented(name), value, "FORMAT.md's {name}");
        }
        assert_eq!(&*open(&key, &sealed, &aad).unwrap(), plaintext);
    }
}
