//! The worked example of docs/FORMAT.md, reproduced from its inputs. The expected values are
//! read out of FORMAT.md itself, so the document and the code cannot drift apart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use auditledger::crypto::{
    DataKey, KeyRef, LedgerSigningKey, SealedPayload, seal_v1_with_nonce, seal_with_nonce,
};
use auditledger::entry::{
    Entry, EntryHeader, EventType, GENESIS_PREV_HASH, LedgerId, Metadata, Seq, StreamId,
};

/// The ledger identity of the worked example and the vectors: `55` × 16.
const LEDGER: LedgerId = LedgerId([0x55; 16]);
use auditledger::timefmt::parse_rfc3339;

/// Finds the line `` `name`: `hex` `` in FORMAT.md's worked example.
fn documented(name: &str) -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/FORMAT.md")).unwrap();
    let key = format!("- `{name}`:");
    let line = doc
        .lines()
        .find(|l| l.starts_with(&key))
        .unwrap_or_else(|| panic!("FORMAT.md has no line starting with {key}"));
    line[key.len()..].trim().trim_matches('`').to_owned()
}

struct Example {
    aad: Vec<u8>,
    sealed: Vec<u8>,
    entry: Entry,
    signing: LedgerSigningKey,
}

fn example() -> Example {
    example_of(Some(LEDGER))
}

/// The worked example as a v2 entry of ledger `55` × 16, or (`None`) as a legacy v1 entry.
fn example_of(ledger_id: Option<LedgerId>) -> Example {
    let header = EntryHeader {
        ledger_id,
        seq: Seq(0),
        stream_id: StreamId::parse("account-42").unwrap(),
        stream_version: 0,
        event_type: EventType::parse("AccountOpened").unwrap(),
        schema_version: 1,
        subject: None,
        recorded_at_micros: parse_rfc3339("2026-11-22T09:45:18.123456Z").unwrap(),
        metadata: Metadata::from([("source".to_owned(), "core-banking".to_owned())]),
    };
    let aad = header.payload_aad();
    let key = DataKey::from_slice(&[0x11; 32]).unwrap();
    let key_ref = KeyRef::System([0x22; 16]);
    let plaintext = br#"{"owner":"ACME"}"#;
    // A v2 entry carries a payload as the service seals it now (v2, 24-byte nonce 00 01 … 17);
    // the legacy v1 entry one as the service sealed it then (v1, nonce `33` × 12).
    let sealed: SealedPayload = if ledger_id.is_some() {
        let nonce = std::array::from_fn(|i| u8::try_from(i).unwrap());
        seal_with_nonce(&key, &key_ref, &aad, plaintext, nonce)
    } else {
        seal_v1_with_nonce(&key, &key_ref, &aad, plaintext, [0x33; 12])
    };
    let entry = Entry {
        header: header.clone(),
        payload_digest: sealed.digest(),
        prev_hash: GENESIS_PREV_HASH,
    };
    Example {
        aad,
        sealed: sealed.0,
        entry,
        signing: LedgerSigningKey::from_seed(&[0x44; 32]),
    }
}

#[test]
fn the_worked_example_in_format_md_is_reproduced_byte_for_byte() {
    let ex = example();
    let hash = ex.entry.hash();
    let sig = ex.signing.sign_entry(&hash);
    let actual = [
        ("payload_aad", hex::encode(&ex.aad)),
        ("sealed_payload", hex::encode(&ex.sealed)),
        ("payload_digest", ex.entry.payload_digest.to_hex()),
        ("encoding", hex::encode(ex.entry.encode())),
        ("entry_hash", hash.to_hex()),
        (
            "public_key",
            hex::encode(ex.signing.public_key().to_bytes()),
        ),
        ("key_id", ex.signing.key_id().to_hex()),
        ("signature", sig.to_hex()),
    ];
    if std::env::var_os("PRINT_VECTOR").is_some() {
        for (name, value) in &actual {
            println!("- `{name}`: `{value}`");
        }
    }
    for (name, value) in &actual {
        assert_eq!(
            &documented(name),
            value,
            "FORMAT.md's {name} differs from the code"
        );
    }
    assert!(ex.signing.public_key().verify_entry(&hash, &sig).is_ok());
}

#[test]
fn the_legacy_v1_example_in_format_md_is_reproduced() {
    let ex = example_of(None);
    let hash = ex.entry.hash();
    let actual = [
        ("v1_sealed_payload", hex::encode(&ex.sealed)),
        ("v1_payload_digest", ex.entry.payload_digest.to_hex()),
        ("v1_encoding", hex::encode(ex.entry.encode())),
        ("v1_entry_hash", hash.to_hex()),
        ("v1_signature", ex.signing.sign_entry(&hash).to_hex()),
    ];
    for (name, value) in &actual {
        assert_eq!(
            &documented(name),
            value,
            "FORMAT.md's {name} differs from the code"
        );
    }
}

/// A deterministic five-entry ledger: the test vectors of docs/FORMAT.md §9.
fn small_ledger() -> serde_json::Value {
    use auditledger::checkpoint::Checkpoint;
    use auditledger::merkle::{self, CompactRange, NodeId, leaf_hash};
    use std::collections::HashMap;

    let signing = LedgerSigningKey::from_seed(&[0x44; 32]);
    let key = DataKey::from_slice(&[0x11; 32]).unwrap();
    let base = parse_rfc3339("2026-11-22T09:45:18.123456Z").unwrap();
    let mut prev = GENESIS_PREV_HASH;
    let mut tree = CompactRange::new();
    let mut nodes: HashMap<NodeId, auditledger::merkle::MerkleHash> = HashMap::new();
    let mut entries = Vec::new();
    let mut leaves = Vec::new();
    let mut roots = Vec::new();
    for i in 0..5u64 {
        let header = EntryHeader {
            ledger_id: Some(LEDGER),
            seq: Seq(i),
            stream_id: StreamId::parse("account-42").unwrap(),
            stream_version: i,
            event_type: EventType::parse(if i == 0 {
                "AccountOpened"
            } else {
                "FundsDeposited"
            })
            .unwrap(),
            schema_version: 1,
            subject: None,
            recorded_at_micros: base + i64::try_from(i).unwrap() * 1000,
            metadata: Metadata::new(),
        };
        let data = format!(r#"{{"n":{i}}}"#);
        let mut nonce = [0x33; 12];
        nonce[11] = u8::try_from(i).unwrap();
        let sealed = seal_v1_with_nonce(
            &key,
            &KeyRef::System([0x22; 16]),
            &header.payload_aad(),
            data.as_bytes(),
            nonce,
        );
        let entry = Entry {
            header,
            payload_digest: sealed.digest(),
            prev_hash: prev,
        };
        let hash = entry.hash();
        let sig = signing.sign_entry(&hash);
        prev = hash;
        let leaf = leaf_hash(&hash.0);
        tree.append(leaf, |id, h| {
            nodes.insert(id, h);
        });
        leaves.push(leaf.to_hex());
        roots.push(tree.root().to_hex());
        entries.push(serde_json::json!({
            "seq": i, "data": data, "nonce": hex::encode(nonce),
            "sealed_payload": hex::encode(&sealed.0),
            "encoding": hex::encode(entry.encode()),
            "entry_hash": hash.to_hex(), "signature": sig.to_hex(),
        }));
    }
    let lookup = |id| nodes.get(&id).copied();
    let incl = merkle::range_hashes(&merkle::inclusion_ranges(2, 5).unwrap(), lookup).unwrap();
    let cons = merkle::range_hashes(&merkle::consistency_ranges(3, 5).unwrap(), lookup).unwrap();
    let cp = Checkpoint::sign(
        &signing,
        auditledger::checkpoint::CheckpointBinding {
            ledger_id: LEDGER,
            previous_tree_size: 0,
        },
        auditledger::checkpoint::TreeHead {
            tree_size: 5,
            root_hash: tree.root(),
            last_entry_hash: prev,
            timestamp_micros: base + 5000,
        },
    );
    serde_json::json!({
        "source": "generated by tests/format_vector.rs (small_ledger); inputs as in docs/FORMAT.md",
        "ledger_id": LEDGER.to_hex(),
        "public_key": hex::encode(signing.public_key().to_bytes()),
        "key_id": signing.key_id().to_hex(),
        "entries": entries,
        "leaf_hashes": leaves,
        "roots_by_size": roots,
        "inclusion": {"seq": 2, "tree_size": 5, "proof": incl.iter().map(auditledger::merkle::MerkleHash::to_hex).collect::<Vec<_>>()},
        "consistency": {"from_size": 3, "to_size": 5, "proof": cons.iter().map(auditledger::merkle::MerkleHash::to_hex).collect::<Vec<_>>()},
        "checkpoint": cp.to_json(),
        "checkpoint_message": hex::encode(cp.message()),
        "rotation": rotation_vector(&signing, prev),
    })
}

/// A hand-over at seq 5 (after the five entries) from the `44` × 32 key to the key whose seed
/// is `66` × 32: the countersigned message and the metadata of the rotation entry.
fn rotation_vector(
    old: &LedgerSigningKey,
    prev: auditledger::entry::EntryHash,
) -> serde_json::Value {
    use auditledger::rotation::{Rotation, RotationPoint, countersign_message};
    let new = LedgerSigningKey::from_seed(&[0x66; 32]);
    let point = RotationPoint {
        ledger_id: LEDGER,
        seq: Seq(5),
        prev_hash: prev,
        old_key: old.public_key(),
    };
    let rotation = Rotation::countersign(&new, &point);
    serde_json::json!({
        "seq": 5,
        "prev_hash": prev.to_hex(),
        "new_public_key": hex::encode(new.public_key().to_bytes()),
        "countersigned_message": hex::encode(countersign_message(&point, &new.public_key())),
        "metadata": rotation.to_metadata(),
    })
}

#[test]
fn the_small_ledger_vectors_are_reproduced() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/small-ledger.json"
    );
    let built = small_ledger();
    if std::env::var_os("REGENERATE_VECTORS").is_some() {
        std::fs::write(path, serde_json::to_string_pretty(&built).unwrap() + "\n").unwrap();
    }
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(
        built, stored,
        "tests/vectors/small-ledger.json differs from the code"
    );
    // And the documented values appear in FORMAT.md.
    for name in [
        "small_root_5",
        "small_inclusion_2_5",
        "small_consistency_3_5",
    ] {
        let doc = documented(name);
        let want = match name {
            "small_root_5" => built["roots_by_size"][4].as_str().unwrap().to_owned(),
            "small_inclusion_2_5" => built["inclusion"]["proof"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect::<Vec<_>>()
                .join(" "),
            _ => built["consistency"]["proof"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect::<Vec<_>>()
                .join(" "),
        };
        assert_eq!(doc, want, "FORMAT.md's {name}");
    }
}
