//! XAES-256-GCM, as C2SP specifies it (<https://c2sp.org/XAES-256-GCM>): AES-256-GCM with a
//! 192-bit nonce, safe to draw at random for any number of messages under one key.
//!
//! For each message a fresh AES-256-GCM key is derived from the input key and the first 96 bits
//! of the nonce, with the NIST SP 800-108r1 counter-mode KDF over CMAC-AES-256 (label `X`, the
//! nonce half as context, a 16-bit counter, no length field); that key then encrypts with the
//! last 96 bits of the nonce as an ordinary AES-256-GCM nonce. Because every CMAC input is a
//! single complete block, the whole derivation is three AES-256 block encryptions under the
//! input key:
//!
//! ```text
//! L  = AES-256(K, 0^128)
//! K1 = L << 1, xor 0x87 into the last byte if the top bit of L was set   (CMAC subkey)
//! M1 = 00 01 58 00 || N[0..12],  M2 = 00 02 58 00 || N[0..12]
//! Kx = AES-256(K, M1 xor K1) || AES-256(K, M2 xor K1)
//! Nx = N[12..24]
//! ```
//!
//! Every intermediate that depends on the key (L, K1, Kx) lives in a zeroizing buffer; the AES
//! key schedules are wiped on drop by the `aes` crate's `zeroize` feature.

use aes::Aes256;
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockEncrypt, KeyInit};
use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use crate::crypto::keys::KEY_LEN;

/// Bytes in an XAES-256-GCM nonce (192 bits).
pub const XAES_NONCE_LEN: usize = 24;
/// Bytes of the nonce that feed the key derivation; the rest is the AES-256-GCM nonce.
const DERIVATION_NONCE_LEN: usize = 12;
/// Bytes of the AES-256-GCM nonce: the nonce's second half.
const GCM_NONCE_LEN: usize = XAES_NONCE_LEN - DERIVATION_NONCE_LEN;
const BLOCK_LEN: usize = 16;
/// The KDF's label: the ASCII letter `X`.
const LABEL: u8 = 0x58;
/// CMAC's reduction constant for 128-bit blocks (NIST SP 800-38B §5.3).
const CMAC_RB: u8 = 0x87;

/// Why an XAES-256-GCM operation failed: encryption of an over-long message, or a ciphertext
/// that does not authenticate. Deliberately carries nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct XaesError;

/// An XAES-256-GCM key: the AES-256 key schedule of the input key and its CMAC subkey K1
/// (steps 1 and 2 of the C2SP derivation, shared by every message under the key).
pub(crate) struct Xaes256Gcm {
    cipher: Aes256,
    k1: Zeroizing<[u8; BLOCK_LEN]>,
}

impl Xaes256Gcm {
    /// Prepares `key` for sealing and opening.
    pub(crate) fn new(key: &[u8; KEY_LEN]) -> Xaes256Gcm {
        let cipher = Aes256::new(GenericArray::from_slice(key));
        let mut l = Zeroizing::new([0u8; BLOCK_LEN]);
        cipher.encrypt_block(GenericArray::from_mut_slice(l.as_mut()));
        let mut k1 = Zeroizing::new([0u8; BLOCK_LEN]);
        for i in 0..BLOCK_LEN {
            let next_top = l.get(i + 1).map_or(0, |b| b >> 7);
            k1[i] = (l[i] << 1) | next_top;
        }
        // Without branching on the secret bit: 0xff when the top bit of L is set, else 0.
        let mask = (l[0] >> 7).wrapping_neg();
        k1[BLOCK_LEN - 1] ^= CMAC_RB & mask;
        Xaes256Gcm { cipher, k1 }
    }

    /// Steps 3 to 5: the AES-256-GCM key Kx for a nonce whose first half is `context`.
    fn derived_key(&self, context: &[u8; DERIVATION_NONCE_LEN]) -> Zeroizing<[u8; KEY_LEN]> {
        let mut kx = Zeroizing::new([0u8; KEY_LEN]);
        for (counter, half) in (1u8..).zip(kx.chunks_exact_mut(BLOCK_LEN)) {
            half[..4].copy_from_slice(&[0, counter, LABEL, 0]);
            half[4..].copy_from_slice(context);
            for (b, k) in half.iter_mut().zip(self.k1.iter()) {
                *b ^= k;
            }
            self.cipher
                .encrypt_block(GenericArray::from_mut_slice(half));
        }
        kx
    }

    /// The AES-256-GCM cipher under Kx, and Nx (step 6).
    fn derive(&self, nonce: &[u8; XAES_NONCE_LEN]) -> (Aes256Gcm, Nonce<U12>) {
        let (context, gcm_nonce) = split_nonce(nonce);
        let kx = self.derived_key(&context);
        (
            Aes256Gcm::new(GenericArray::from_slice(kx.as_ref())),
            gcm_nonce.into(),
        )
    }

    /// Encrypts `msg` bound to `aad`: ciphertext followed by the 16-byte tag.
    pub(crate) fn encrypt(
        &self,
        nonce: &[u8; XAES_NONCE_LEN],
        msg: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, XaesError> {
        let (cipher, gcm_nonce) = self.derive(nonce);
        cipher
            .encrypt(&gcm_nonce, Payload { msg, aad })
            .map_err(|_| XaesError)
    }

    /// Decrypts what [`Xaes256Gcm::encrypt`] produced, if it authenticates.
    pub(crate) fn decrypt(
        &self,
        nonce: &[u8; XAES_NONCE_LEN],
        ct: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, XaesError> {
        let (cipher, gcm_nonce) = self.derive(nonce);
        cipher
            .decrypt(&gcm_nonce, Payload { msg: ct, aad })
            .map(Zeroizing::new)
            .map_err(|_| XaesError)
    }

    /// The AES-256-GCM key and nonce that `nonce` derives: what must never repeat under one key.
    #[cfg(test)]
    pub(crate) fn derivation(
        &self,
        nonce: &[u8; XAES_NONCE_LEN],
    ) -> ([u8; KEY_LEN], [u8; GCM_NONCE_LEN]) {
        let (context, gcm_nonce) = split_nonce(nonce);
        (*self.derived_key(&context), gcm_nonce)
    }
}

/// The nonce's two halves: the derivation context N[0..12] and the AES-256-GCM nonce N[12..24].
fn split_nonce(nonce: &[u8; XAES_NONCE_LEN]) -> ([u8; DERIVATION_NONCE_LEN], [u8; GCM_NONCE_LEN]) {
    let mut context = [0u8; DERIVATION_NONCE_LEN];
    let mut gcm_nonce = [0u8; GCM_NONCE_LEN];
    context.copy_from_slice(&nonce[..DERIVATION_NONCE_LEN]);
    gcm_nonce.copy_from_slice(&nonce[DERIVATION_NONCE_LEN..]);
    (context, gcm_nonce)
}

/// Known-answer tests from C2SP's XAES-256-GCM.md ("Test vectors" and "Accumulated randomized
/// tests"), at commit 5ba5ee830903e91240fc6f9f3a7a9293d49e69c9 of C2SP/C2SP.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    struct Vector {
        key: [u8; 32],
        k1: &'static str,
        kx: &'static str,
        aad: &'static [u8],
        sealed: &'static str,
    }

    const NONCE: &[u8; 24] = b"ABCDEFGHIJKLMNOPQRSTUVWX";
    const PLAINTEXT: &[u8] = b"XAES-256-GCM";

    fn check(v: &Vector) {
        let x = Xaes256Gcm::new(&v.key);
        assert_eq!(hex::encode(x.k1.as_ref()), v.k1);
        assert_eq!(
            hex::encode(x.derived_key(&split_nonce(NONCE).0).as_ref()),
            v.kx
        );
        let sealed = x.encrypt(NONCE, PLAINTEXT, v.aad).unwrap();
        assert_eq!(hex::encode(&sealed), v.sealed);
        assert_eq!(&*x.decrypt(NONCE, &sealed, v.aad).unwrap(), PLAINTEXT);
    }

    #[test]
    fn c2sp_vector_with_the_top_bit_of_l_clear() {
        check(&Vector {
            key: [0x01; 32],
            k1: "e531954aca063d5b8d9c47a47d4cc6f0",
            kx: "c8612c9ed53fe43e8e005b828a1631a0bbcb6ab2f46514ec4f439fcfd0fa969b",
            aad: b"",
            sealed: "ce546ef63c9cc60765923609b33a9a1974e96e52daf2fcf7075e2271",
        });
    }

    #[test]
    fn c2sp_vector_with_the_top_bit_of_l_set() {
        check(&Vector {
            key: [0x03; 32],
            k1: "23810ec50edb99f374409466ed1f4b7b",
            kx: "e9c621d4cdd9b11b00a6427ad7e559aeedd66b3857646677748f8ca796cb3fd8",
            aad: b"c2sp.org/XAES-256-GCM",
            sealed: "986ec1832593df5443a179437fd083bf3fdb41abd740a21f71eb769d",
        });
    }

    #[test]
    fn a_changed_byte_anywhere_fails_to_open() {
        let x = Xaes256Gcm::new(&[0x03; 32]);
        let sealed = x.encrypt(NONCE, PLAINTEXT, b"aad").unwrap();
        for i in 0..XAES_NONCE_LEN {
            let mut n = *NONCE;
            n[i] ^= 1;
            assert_eq!(x.decrypt(&n, &sealed, b"aad").unwrap_err(), XaesError);
        }
        for i in 0..sealed.len() {
            let mut c = sealed.clone();
            c[i] ^= 0x80;
            assert_eq!(x.decrypt(NONCE, &c, b"aad").unwrap_err(), XaesError);
        }
        assert_eq!(x.decrypt(NONCE, &sealed, b"aaD").unwrap_err(), XaesError);
    }

    /// C2SP's accumulated test: inputs read from one SHAKE-128 stream (empty input), every
    /// ciphertext absorbed by a second SHAKE-128, whose first 32 bytes are the expected hash.
    #[test]
    fn c2sp_accumulated_vector_of_10_000_iterations() {
        use sha3::Shake128;
        use sha3::digest::{ExtendableOutput, Update, XofReader};

        let mut rng = Shake128::default().finalize_xof();
        let mut hash = Shake128::default();
        let mut byte = [0u8; 1];
        for _ in 0..10_000 {
            let mut key = [0u8; 32];
            let mut nonce = [0u8; XAES_NONCE_LEN];
            rng.read(&mut key);
            rng.read(&mut nonce);
            rng.read(&mut byte);
            let mut plaintext = vec![0u8; usize::from(byte[0])];
            rng.read(&mut plaintext);
            rng.read(&mut byte);
            let mut aad = vec![0u8; usize::from(byte[0])];
            rng.read(&mut aad);
            let x = Xaes256Gcm::new(&key);
            let sealed = x.encrypt(&nonce, &plaintext, &aad).unwrap();
            assert_eq!(&*x.decrypt(&nonce, &sealed, &aad).unwrap(), &plaintext[..]);
            hash.update(&sealed);
        }
        let mut out = [0u8; 32];
        hash.finalize_xof().read(&mut out);
        assert_eq!(
            hex::encode(out),
            "e6b9edf2df6cec60c8cbd864e2211b597fb69a529160cd040d56c0c210081939"
        );
    }
}
