//! How a report is signed, and how anyone checks it.
//!
//! The signed JSON document is
//!
//! ```text
//! {"report": R, "report_sha256": hex(SHA-256(canonical(R))),
//!  "signature": {"alg": "Ed25519", "key_id": K, "signed_at_size": N, "value": hex(sig)}}
//! ```
//!
//! where `canonical(R)` is R as JSON with object keys sorted (by their UTF-8 bytes), no
//! whitespace, strings escaped as serde_json (and Python's `json.dumps(ensure_ascii=False)`)
//! escape them; a report holds only strings, integers, arrays, objects and nulls. The signed
//! message is
//!
//! ```text
//! "auditledger/compliance-report/v1\0" || ledger_id (16 bytes) || u64 N (big-endian) || SHA-256(canonical(R))
//! ```
//!
//! and the key must be trusted at position N (the ledger's size when it was signed), as for
//! every other signature of the ledger. CSV and HTML renditions name `report_sha256`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Report;
use crate::crypto::{LedgerSigningKey, Signature, sha256_parts};
use crate::entry::LedgerId;
use crate::verify::TrustedKeys;

/// Domain separation of a report signature.
pub const COMPLIANCE_REPORT_DOMAIN: &[u8] = b"auditledger/compliance-report/v1\0";

/// The signature block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportSignature {
    /// `Ed25519`.
    pub alg: String,
    /// The signing key's id.
    pub key_id: String,
    /// The ledger's size when signed.
    pub signed_at_size: u64,
    /// The signature, hex.
    pub value: String,
}

/// A signed report, as served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedComplianceReport {
    /// The report.
    pub report: Report,
    /// SHA-256 of its canonical JSON, hex.
    pub report_sha256: String,
    /// The signature.
    pub signature: ReportSignature,
}

/// Canonical JSON of a value: keys sorted, no whitespace.
#[must_use]
pub fn canonical(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(&Value::String(k.clone()), out);
                out.push(b':');
                write_canonical(&map[k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

fn message(ledger_id: &LedgerId, signed_at_size: u64, digest: &[u8; 32]) -> Vec<u8> {
    let mut m = COMPLIANCE_REPORT_DOMAIN.to_vec();
    m.extend_from_slice(&ledger_id.0);
    m.extend_from_slice(&signed_at_size.to_be_bytes());
    m.extend_from_slice(digest);
    m
}

/// Signs a report of ledger `ledger_id` at size `signed_at_size`.
///
/// # Errors
/// The report does not serialize (it always does).
pub fn sign(
    report: Report,
    ledger_id: &LedgerId,
    signed_at_size: u64,
    key: &LedgerSigningKey,
) -> Result<SignedComplianceReport, serde_json::Error> {
    let digest = sha256_parts(&[&canonical(&serde_json::to_value(&report)?)]);
    let signature = key.sign_message(&message(ledger_id, signed_at_size, &digest));
    Ok(SignedComplianceReport {
        report,
        report_sha256: hex::encode(digest),
        signature: ReportSignature {
            alg: "Ed25519".to_owned(),
            key_id: key.key_id().to_hex(),
            signed_at_size,
            value: signature.to_hex(),
        },
    })
}

/// Checks a signed report document against the keys an auditor trusts; returns the report.
///
/// # Errors
/// Why it is not a valid signed report of a trusted key, as a sentence.
pub fn verify(document: &[u8], keys: &TrustedKeys) -> Result<Report, String> {
    let doc: Value =
        serde_json::from_slice(document).map_err(|e| format!("not a JSON document: {e}"))?;
    let report_value = doc.get("report").ok_or("no report member")?;
    let digest = sha256_parts(&[&canonical(report_value)]);
    let signed: SignedComplianceReport =
        serde_json::from_value(doc.clone()).map_err(|e| format!("not a signed report: {e}"))?;
    if signed.report_sha256 != hex::encode(digest) {
        return Err("report_sha256 is not the SHA-256 of the report".to_owned());
    }
    let ledger_id = LedgerId::from_hex(&signed.report.ledger_id)
        .map_err(|_| "the report's ledger_id is malformed".to_owned())?;
    let key_id = crate::crypto::KeyId::from_hex(&signed.signature.key_id)
        .map_err(|_| "the signature's key_id is malformed".to_owned())?;
    let key = keys
        .key_at(&key_id, signed.signature.signed_at_size)
        .map_err(|f| f.detail)?;
    let sig = Signature::from_hex(&signed.signature.value)
        .map_err(|_| "the signature is malformed".to_owned())?;
    key.verify_message(
        &message(&ledger_id, signed.signature.signed_at_size, &digest),
        &sig,
    )
    .map_err(|_| "the signature does not verify".to_owned())?;
    Ok(signed.report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn canonical_sorts_keys_and_drops_whitespace() {
        let v: Value =
            serde_json::from_str(r#"{"b": [1, {"d": null, "c": "é\n"}], "a": "x"}"#).unwrap();
        assert_eq!(
            String::from_utf8(canonical(&v)).unwrap(),
            "{\"a\":\"x\",\"b\":[1,{\"c\":\"é\\n\",\"d\":null}]}"
        );
    }
}
