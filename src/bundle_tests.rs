//! The bundle's own claims and its text, checked: each finding of issue 8 about bundles.
#![allow(clippy::unwrap_used, clippy::panic)]

use super::*;
use crate::crypto::LedgerSigningKey;
use crate::entry::SubjectHandle;
use crate::verify::testkit::Builder;

fn ledger() -> Builder {
    let mut b = Builder::new(LedgerSigningKey::generate());
    for i in 0..7u8 {
        b.event("s", (i % 3 == 0).then_some(SubjectHandle([i; 16])));
    }
    b
}

fn trusting(b: &Builder) -> TrustedKeys {
    let mut k = TrustedKeys::new();
    k.insert(b.key.public_key());
    k
}

fn check(
    keys: TrustedKeys,
    trusted: Option<CheckpointJson>,
    lines: &[String],
) -> Result<Summary, Stop> {
    let mut v = BundleVerifier::new(keys, trusted)?;
    for l in lines {
        v.feed(l)?;
    }
    v.finish()
}

impl From<UnusableInput> for Stop {
    fn from(u: UnusableInput) -> Stop {
        Stop::Unusable(u)
    }
}

fn tampered(r: Result<Summary, Stop>) -> (u64, FailureKind) {
    match r {
        Err(Stop::Tampered(f)) => (f.seq.0, f.kind),
        other => panic!("expected tampering, got {other:?}"),
    }
}

fn unusable(r: Result<Summary, Stop>) -> String {
    match r {
        Err(Stop::Unusable(u)) => u.to_string(),
        other => panic!("expected unusable input, got {other:?}"),
    }
}

fn edit(line: &str, f: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
    f(&mut v);
    serde_json::to_string(&serde_json::from_value::<BundleLine>(v).unwrap()).unwrap()
}

#[test]
fn a_clean_bundle_verifies_and_says_what_it_proved() {
    let b = ledger();
    let s = check(trusting(&b), None, &b.bundle(3)).unwrap();
    assert_eq!((s.proven.entries, s.proven.checkpoints), (7, 2));
    assert_eq!(s.proven.uncovered_tail, 1);
    let words = s.describe().join("\n");
    assert!(words.contains("cut-off tail"), "{words}");
    assert!(
        words.contains("the last 1 entry is covered by no checkpoint"),
        "{words}"
    );
}

#[test]
fn a_cut_tail_with_an_adjusted_footer_contradicts_the_header() {
    let b = ledger();
    let mut lines = b.bundle(3);
    // Drop the last entry (seq 6) and fix the footer, leaving the header's to_seq at 6.
    let footer = lines.pop().unwrap();
    lines.pop();
    lines.push(edit(&footer, |v| v["entries"] = 6.into()));
    assert_eq!(
        tampered(check(trusting(&b), None, &lines)),
        (6, FailureKind::Truncated)
    );
}

#[test]
fn a_deleted_or_repeated_checkpoint_line_is_named() {
    let b = ledger();
    let lines = b.bundle(2);
    let cps: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("{\"kind\":\"checkpoint\""))
        .collect();
    let mut deleted = lines.clone();
    deleted.remove(cps[0]);
    let footer = deleted.pop().unwrap();
    deleted.push(edit(&footer, |v| v["checkpoints"] = 2.into()));
    assert_eq!(
        tampered(check(trusting(&b), None, &deleted)),
        (3, FailureKind::MissingCheckpoint)
    );
    let mut repeated = lines.clone();
    repeated.insert(cps[1], lines[cps[1]].clone());
    assert_eq!(
        tampered(check(trusting(&b), None, &repeated)),
        (3, FailureKind::DuplicateCheckpoint)
    );
}

#[test]
fn a_key_line_with_a_swapped_public_key_is_caught_when_the_auditor_names_the_key() {
    let b = ledger();
    let mut lines = b.bundle(3);
    let other = LedgerSigningKey::generate().public_key();
    lines[1] = edit(&lines[1], |v| {
        v["public_key"] = hex::encode(other.to_bytes()).into();
    });
    assert_eq!(
        tampered(check(trusting(&b), None, &lines)),
        (0, FailureKind::KeyLineMismatch)
    );
}

#[test]
fn text_that_is_not_exactly_the_exporters_is_refused() {
    let b = ledger();
    let lines = b.bundle(3);
    let entry = lines[2].clone();
    let decoy = entry.replacen(
        "{\"kind\":\"entry\",",
        "{\"kind\":\"entry\",\"data\":{\"x\":1},",
        1,
    );
    let dup = entry.replacen(
        "\"metadata\":{}",
        "\"metadata\":{\"a\":\"1\",\"a\":\"2\"}",
        1,
    );
    let upper = edit(&entry, |v| {
        let s = v["signature"].as_str().unwrap().to_uppercase();
        v["signature"] = s.into();
    });
    let offset = edit(&entry, |v| {
        v["recorded_at"] = "1970-01-01T01:00:00.001000+01:00".into();
    });
    let spaced = entry.replacen(',', ", ", 1);
    for (what, bad) in [
        ("decoy field", decoy),
        ("duplicate key", dup),
        ("spaces", spaced),
    ] {
        let mut l = lines.clone();
        l[2] = bad;
        let why = unusable(check(trusting(&b), None, &l));
        assert!(why.contains("line 3"), "{what}: {why}");
    }
    for bad in [upper, offset] {
        let mut l = lines.clone();
        l[2] = bad;
        assert_eq!(
            tampered(check(trusting(&b), None, &l)),
            (0, FailureKind::MalformedRecord)
        );
    }
    let mut blank = lines.clone();
    blank.insert(3, String::new());
    assert!(unusable(check(trusting(&b), None, &blank)).contains("blank"));
    let mut after = lines.clone();
    after.push(lines[2].clone());
    assert!(unusable(check(trusting(&b), None, &after)).contains("after the footer"));
}

#[test]
fn the_genesis_rule_holds_for_a_bundle_from_seq_0() {
    let b = ledger();
    let mut lines = b.bundle(3);
    lines[0] = edit(&lines[0], |v| v["prev_hash"] = "11".repeat(32).into());
    assert_eq!(
        tampered(check(trusting(&b), None, &lines)),
        (0, FailureKind::BundleMismatch)
    );
}

#[test]
fn hostile_headers_do_not_panic() {
    let b = ledger();
    let lines = b.bundle(3);
    for f in [
        |v: &mut serde_json::Value| v["from_seq"] = u64::MAX.into(),
        |v: &mut serde_json::Value| {
            v["from_seq"] = u64::MAX.into();
            v["to_seq"] = u64::MAX.into();
            v["ledger_size"] = u64::MAX.into();
        },
        |v: &mut serde_json::Value| v["merkle_frontier"] = serde_json::json!(["00".repeat(32)]),
        |v: &mut serde_json::Value| v["to_seq"] = serde_json::Value::Null,
    ] {
        let mut l = lines.clone();
        l[0] = edit(&l[0], f);
        assert!(check(trusting(&b), None, &l).is_err());
    }
}

fn partial(b: &Builder, from: u64) -> Vec<String> {
    use crate::merkle::{CompactRange, leaf_hash};
    let mut tree = CompactRange::new();
    for r in &b.records[..usize::try_from(from).unwrap()] {
        tree.append(leaf_hash(&r.entry_hash.0), |_, _| {});
    }
    let prev = b.records[usize::try_from(from).unwrap() - 1].entry_hash;
    let all = b.bundle(100);
    let mut lines = vec![edit(&all[0], |v| {
        v["from_seq"] = from.into();
        v["prev_hash"] = prev.to_hex().into();
        v["merkle_frontier"] = serde_json::json!(
            tree.nodes()
                .iter()
                .map(|(_, h)| h.to_hex())
                .collect::<Vec<_>>()
        );
    })];
    lines.push(all[1].clone());
    lines.extend(
        all[2 + usize::try_from(from).unwrap()..all.len() - 1]
            .iter()
            .cloned(),
    );
    lines.push(format!(
        "{{\"kind\":\"footer\",\"entries\":{},\"checkpoints\":0}}",
        b.records.len() as u64 - from
    ));
    lines
}

#[test]
fn a_partial_bundle_verifies_against_a_trusted_checkpoint_of_its_start() {
    let b = ledger();
    let full = b.bundle(4);
    let cp_line = full
        .iter()
        .find(|l| l.starts_with("{\"kind\":\"checkpoint\""))
        .unwrap();
    let BundleLine::Checkpoint(cp) = serde_json::from_str(cp_line).unwrap() else {
        panic!()
    };
    assert_eq!(cp.tree_size, 4);
    // The bundle starts at 4: the kept checkpoint of size 4 confirms where it starts.
    let s = check(trusting(&b), Some(cp.clone()), &partial(&b, 4)).unwrap();
    assert_eq!(s.proven.trusted_checkpoint_matched, Some(4));
    // A bundle that starts after the kept checkpoint cannot be related to it: unusable, not
    // tampered.
    assert!(unusable(check(trusting(&b), Some(cp), &partial(&b, 5))).contains("export from seq 4"));
}

/// The bundle of `b` cut after `last`, as an export of a ledger of `size` entries writes it.
fn prefix(b: &Builder, last: usize, size: u64) -> Vec<String> {
    let all = b.bundle(100);
    let mut lines = vec![edit(&all[0], |v| {
        v["to_seq"] = (last as u64).into();
        v["ledger_size"] = size.into();
    })];
    lines.extend(all[1..3 + last].iter().cloned());
    lines.push(format!(
        "{{\"kind\":\"footer\",\"entries\":{},\"checkpoints\":0}}",
        last + 1
    ));
    lines
}

fn with_last_seq(lines: &[String], last_seq: Option<u64>) -> Vec<String> {
    let mut l = lines.to_vec();
    l[1] = edit(&l[1], |v| v["last_seq"] = last_seq.into());
    l
}

/// Each of `claims` as the key line's `last_seq` is a key-line mismatch.
fn refused_claims(b: &Builder, lines: &[String], claims: &[u64]) {
    for &claim in claims {
        assert_eq!(
            tampered(check(trusting(b), None, &with_last_seq(lines, Some(claim)))),
            (0, FailureKind::KeyLineMismatch),
            "last_seq {claim}"
        );
    }
}

#[test]
fn a_current_keys_line_says_null_when_the_bundle_reaches_the_ledgers_end() {
    // The whole ledger is in the bundle and no rotation retires the key: its line's last_seq
    // can only be null. Any number claims a retirement the ledger does not have.
    let b = ledger();
    let lines = b.bundle(100);
    assert!(check(trusting(&b), None, &lines).is_ok());
    refused_claims(&b, &lines, &[6, 7, 1000, u64::MAX]);
}

#[test]
fn a_bundle_that_ends_before_a_rotation_names_it_within_the_ledger() {
    // Entries 0..=4 of a ledger of 10, whose key a rotation at 7 retired (after the bundle).
    let b = ledger();
    let lines = prefix(&b, 4, 10);
    // The exporter writes null; an older one wrote the rotation's seq, which the summary
    // states as the bundle's claim.
    assert!(
        check(trusting(&b), None, &with_last_seq(&lines, None))
            .unwrap()
            .retired_after
            .is_empty()
    );
    for claim in [5, 7, 9] {
        let s = check(trusting(&b), None, &with_last_seq(&lines, Some(claim))).unwrap();
        assert_eq!(
            s.retired_after,
            vec![(b.key.public_key().key_id().to_hex(), claim)]
        );
        let words = s.describe().join("\n");
        assert!(
            words.contains(&format!(
                "a rotation at seq {claim}, after its last entry, retired it; not verified here"
            )),
            "{words}"
        );
    }
    // At or before the bundle's last entry, which is no rotation; at or beyond the ledger's size.
    refused_claims(&b, &lines, &[0, 4, 10, u64::MAX]);
}

#[test]
fn a_retirement_claimed_behind_an_inflated_ledger_size_is_said_to_be_a_claim() {
    // Found in review: a whole-ledger bundle (7 entries, no rotation) whose header says the
    // ledger has 2^64 - 1 entries, and whose key line says a rotation after the bundle retired
    // the key. It has the shape of a genuine export of a prefix, so nothing in it can refute
    // either claim; the "ok" must say that both are claims, never state them as facts.
    let b = ledger();
    let lines = b.bundle(100);
    let mut forged = with_last_seq(&lines, Some(u64::MAX - 1));
    forged[0] = edit(&forged[0], |v| v["ledger_size"] = u64::MAX.into());
    let s = check(trusting(&b), None, &forged).unwrap();
    let words = s.describe().join("\n");
    assert!(
        words.contains(&format!(
            "range: the ledger held {} entries (the header's claim); entries from seq 7 on were not verified here",
            u64::MAX
        )),
        "{words}"
    );
    assert!(
        words.contains(&format!(
            "the bundle says a rotation at seq {}, after its last entry, retired it; not verified here",
            u64::MAX - 1
        )),
        "{words}"
    );
    assert!(!words.contains("then retired"), "{words}");
}
