//! A valid bundle, changed at random, must either be rejected by the offline verifier or
//! verify to exactly the same content: the same entries (every field an auditor reads), the
//! same checkpoints, the same key lines and header claims. What must never happen is an "ok"
//! for a bundle that says something else than the ledger did (issue 8, item 10).
//!
//! The bundle is built in memory by the pure core (tests/support/forge.rs): 11 entries in
//! three streams, two subjects, an erasure, three checkpoints. The auditor's configuration is
//! the strong one: the ledger's public key is trusted directly (`--public-key`).
//!
//! "Content" is what a generic JSON reader sees in the lines the verifier accepted: each line
//! parsed as a JSON value (a repeated key keeps its last value, as most readers do), entries,
//! checkpoints and key lines compared whole, the header's claims; see [`content`].
//!
//! A change of a field is written the way the exporter writes lines (see [`write_line`]), so
//! that it reaches the checks of values and is not merely refused for not being canonical text;
//! byte-level changes and repeated JSON keys exercise the refusal of non-canonical text.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(
    clippy::cast_possible_truncation,
    clippy::too_many_lines,
    reason = "test code"
)]

#[path = "support/forge.rs"]
mod forge;

use auditledger::bundle::{BundleLine, BundleVerifier, Footer, Stop, Summary};
use auditledger::crypto::LedgerSigningKey;
use auditledger::verify::TrustedKeys;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};

fn original() -> String {
    forge::bundle_text(
        &forge::small_ledger(),
        &LedgerSigningKey::from_seed(&forge::SEED),
    )
}

fn trusted_keys() -> TrustedKeys {
    let mut keys = TrustedKeys::new();
    keys.insert(LedgerSigningKey::from_seed(&forge::SEED).public_key());
    keys
}

/// Feeds `text` the way `verify-bundle` reads a file: line by line, newline and a trailing CR
/// stripped.
fn verify(text: &str) -> Result<Summary, Stop> {
    let mut verifier = BundleVerifier::new(trusted_keys(), None).map_err(Stop::Unusable)?;
    for line in text.split_inclusive('\n') {
        verifier.feed(line.trim_end_matches(['\n', '\r']))?;
    }
    verifier.finish()
}

/// What an auditor reads out of an accepted bundle: the header's claims (without
/// `exported_at`, which no one can check), the key lines and the checkpoints (each as a
/// multiset: their order is not content, a repeated one is), and the entries in order. The
/// footer only counts lines and is left out; blank lines are ignored. Values are compared as
/// the text they hold: FORMAT.md gives every value one spelling, so another spelling of the same
/// bytes or instant (upper-case hex, `+00:00`) is other content.
fn content(text: &str) -> Vec<Value> {
    let mut header = Vec::new();
    let mut keys = Vec::new();
    let mut entries = Vec::new();
    let mut checkpoints = Vec::new();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut v: Value = serde_json::from_str(l).unwrap_or_else(|_| json!({"unparsable": l}));
        match v["kind"].as_str() {
            Some("header") => {
                if let Some(o) = v.as_object_mut() {
                    o.remove("exported_at");
                }
                header.push(v);
            }
            Some("key") => keys.push(v),
            Some("checkpoint") => checkpoints.push(v),
            Some("footer") => {}
            _ => entries.push(v),
        }
    }
    keys.sort_by_key(Value::to_string);
    checkpoints.sort_by_key(Value::to_string);
    header
        .into_iter()
        .chain(keys)
        .chain(entries)
        .chain(checkpoints)
        .collect()
}

/// One random change to a bundle's text.
#[derive(Clone, Debug)]
enum Mutation {
    FlipByte {
        at: Index,
        mask: u8,
    },
    InsertByte {
        at: Index,
        byte: u8,
    },
    DeleteByte {
        at: Index,
    },
    DeleteLine {
        line: Index,
    },
    DuplicateLine {
        line: Index,
    },
    SwapLines {
        a: Index,
        b: Index,
    },
    MoveLine {
        from: Index,
        to: Index,
    },
    SetField {
        line: Index,
        field: Index,
        value: Value,
    },
    /// Gives a field the value the same field has on another line of the same kind.
    CopyFieldFromSibling {
        line: Index,
        field: Index,
        other: Index,
    },
    AddField {
        line: Index,
        name: String,
        value: Value,
    },
    RemoveField {
        line: Index,
        field: Index,
    },
    DuplicateKey {
        line: Index,
        field: Index,
        value: Value,
    },
    UppercaseHex {
        line: Index,
        field: Index,
    },
    NonCanonicalTime {
        line: Index,
        style: u8,
    },
    CutTailAdjustFooter {
        keep: Index,
    },
    DeleteCheckpointLine {
        which: Index,
    },
    LineAfterFooter {
        line: Index,
    },
}

impl Mutation {
    fn class(&self) -> &'static str {
        match self {
            Mutation::FlipByte { .. } => "flip_byte",
            Mutation::InsertByte { .. } => "insert_byte",
            Mutation::DeleteByte { .. } => "delete_byte",
            Mutation::DeleteLine { .. } => "delete_line",
            Mutation::DuplicateLine { .. } => "duplicate_line",
            Mutation::SwapLines { .. } => "swap_lines",
            Mutation::MoveLine { .. } => "move_line",
            Mutation::SetField { .. } => "set_field",
            Mutation::CopyFieldFromSibling { .. } => "copy_field_from_sibling",
            Mutation::AddField { .. } => "add_field",
            Mutation::RemoveField { .. } => "remove_field",
            Mutation::DuplicateKey { .. } => "duplicate_json_key",
            Mutation::UppercaseHex { .. } => "uppercase_hex",
            Mutation::NonCanonicalTime { .. } => "non_canonical_timestamp",
            Mutation::CutTailAdjustFooter { .. } => "cut_tail_adjust_footer",
            Mutation::DeleteCheckpointLine { .. } => "delete_checkpoint_line",
            Mutation::LineAfterFooter { .. } => "line_after_footer",
        }
    }

    fn apply(&self, text: &str) -> String {
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let join = |lines: &[String]| {
            lines
                .iter()
                .flat_map(|l| [l.as_str(), "\n"])
                .collect::<String>()
        };
        let object = |l: &str| serde_json::from_str::<serde_json::Map<String, Value>>(l).unwrap();
        match self {
            Mutation::FlipByte { at, mask } => {
                let mut bytes = text.as_bytes().to_vec();
                let i = at.index(bytes.len());
                bytes[i] ^= mask;
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Mutation::InsertByte { at, byte } => {
                let mut bytes = text.as_bytes().to_vec();
                bytes.insert(at.index(bytes.len() + 1), *byte);
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Mutation::DeleteByte { at } => {
                let mut bytes = text.as_bytes().to_vec();
                bytes.remove(at.index(bytes.len()));
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Mutation::DeleteLine { line } => {
                lines.remove(line.index(lines.len()));
                join(&lines)
            }
            Mutation::DuplicateLine { line } => {
                let i = line.index(lines.len());
                lines.insert(i, lines[i].clone());
                join(&lines)
            }
            Mutation::SwapLines { a, b } => {
                let (a, b) = (a.index(lines.len()), b.index(lines.len()));
                lines.swap(a, b);
                join(&lines)
            }
            Mutation::MoveLine { from, to } => {
                let l = lines.remove(from.index(lines.len()));
                lines.insert(to.index(lines.len() + 1), l);
                join(&lines)
            }
            Mutation::SetField { line, field, value } => {
                let i = line.index(lines.len());
                let mut o = object(&lines[i]);
                let key = o.keys().nth(field.index(o.len())).unwrap().clone();
                o.insert(key, value.clone());
                lines[i] = write_line(o);
                join(&lines)
            }
            Mutation::CopyFieldFromSibling { line, field, other } => {
                let i = line.index(lines.len());
                let mut o = object(&lines[i]);
                let key = o.keys().nth(field.index(o.len())).unwrap().clone();
                let siblings: Vec<usize> = (0..lines.len())
                    .filter(|&j| j != i && object(&lines[j])["kind"] == o["kind"])
                    .collect();
                if siblings.is_empty() {
                    return text.to_owned();
                }
                let from = object(&lines[siblings[other.index(siblings.len())]]);
                if let Some(v) = from.get(&key) {
                    o.insert(key, v.clone());
                }
                lines[i] = write_line(o);
                join(&lines)
            }
            Mutation::AddField { line, name, value } => {
                let i = line.index(lines.len());
                let mut o = object(&lines[i]);
                o.insert(name.clone(), value.clone());
                lines[i] = write_line(o);
                join(&lines)
            }
            Mutation::RemoveField { line, field } => {
                let i = line.index(lines.len());
                let mut o = object(&lines[i]);
                let key = o.keys().nth(field.index(o.len())).unwrap().clone();
                o.remove(&key);
                lines[i] = write_line(o);
                join(&lines)
            }
            Mutation::DuplicateKey { line, field, value } => {
                // Text-level: `{…,"k":old,"k":new}`. serde_json's Value cannot hold this.
                let i = line.index(lines.len());
                let o = object(&lines[i]);
                let key = o.keys().nth(field.index(o.len())).unwrap().clone();
                let l = &lines[i];
                let close = l.rfind('}').unwrap();
                lines[i] = format!("{},{}:{}}}", &l[..close], Value::String(key), value);
                join(&lines)
            }
            Mutation::UppercaseHex { line, field } => {
                let i = line.index(lines.len());
                let mut o = object(&lines[i]);
                let hex_fields: Vec<String> = o
                    .iter()
                    .filter(|(_, v)| {
                        v.as_str().is_some_and(|s| {
                            s.len() >= 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
                        })
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                if hex_fields.is_empty() {
                    return text.to_owned();
                }
                let key = hex_fields[field.index(hex_fields.len())].clone();
                let upper = o[&key].as_str().unwrap().to_ascii_uppercase();
                o.insert(key, Value::String(upper));
                lines[i] = write_line(o);
                join(&lines)
            }
            Mutation::NonCanonicalTime { line, style } => {
                let i = line.index(lines.len());
                let mut o = object(&lines[i]);
                for key in ["recorded_at", "timestamp", "exported_at"] {
                    if let Some(s) = o.get(key).and_then(Value::as_str) {
                        // Same instant, other spellings RFC 3339 allows.
                        let base = s.trim_end_matches('Z');
                        let spelled = match style % 4 {
                            0 => format!("{base}+00:00"),
                            1 => format!("{base}000Z"),
                            2 => format!("{}z", base.replace('T', "t")),
                            _ => format!("{base}-00:00"),
                        };
                        o.insert(key.to_owned(), Value::String(spelled));
                    }
                }
                lines[i] = write_line(o);
                join(&lines)
            }
            Mutation::CutTailAdjustFooter { keep } => {
                // Keep the header, the key line and the first `keep` entries (with the
                // checkpoints among them); write a footer that counts what is left.
                let entries = lines
                    .iter()
                    .filter(|l| l.contains(r#""kind":"entry""#))
                    .count();
                let keep = keep.index(entries);
                let mut out = Vec::new();
                let (mut e, mut c) = (0u64, 0u64);
                for l in &lines {
                    if l.contains(r#""kind":"entry""#) {
                        if e as usize == keep {
                            break;
                        }
                        e += 1;
                    } else if l.contains(r#""kind":"checkpoint""#) {
                        c += 1;
                    } else if l.contains(r#""kind":"footer""#) {
                        break;
                    }
                    out.push(l.clone());
                }
                out.push(
                    serde_json::to_string(&BundleLine::Footer(Footer {
                        entries: e,
                        checkpoints: c,
                    }))
                    .unwrap(),
                );
                join(&out)
            }
            Mutation::DeleteCheckpointLine { which } => {
                let cps: Vec<usize> = (0..lines.len())
                    .filter(|&j| lines[j].contains(r#""kind":"checkpoint""#))
                    .collect();
                lines.remove(cps[which.index(cps.len())]);
                let n = cps.len() - 1;
                let footer = lines.len() - 1;
                let mut f = object(&lines[footer]);
                f.insert("checkpoints".to_owned(), json!(n));
                lines[footer] = write_line(f);
                join(&lines)
            }
            Mutation::LineAfterFooter { line } => {
                let i = line.index(lines.len());
                lines.push(lines[i].clone());
                join(&lines)
            }
        }
    }
}

/// A changed line as the exporter would write it, when it still is a bundle line: a change of
/// a value must be looked at by the verifier, not refused for its spelling (the verifier
/// refuses any line that is not exactly `serde_json::to_string` of its `BundleLine` as exit 2
/// before looking at anything). A value that no longer fits the line's type (an unknown field,
/// a number for a string, a field removed) cannot be written canonically and stays as the
/// generic JSON text, which must be refused.
fn write_line(o: serde_json::Map<String, Value>) -> String {
    let v = Value::Object(o);
    match serde_json::from_value::<BundleLine>(v.clone()) {
        Ok(line) => serde_json::to_string(&line).unwrap(),
        Err(_) => v.to_string(),
    }
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(json!(0)),
        Just(json!(1)),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!(1.5)),
        Just(json!("")),
        Just(json!(true)),
        Just(json!([])),
        Just(json!({})),
        Just(json!({"owner": "mallory"})),
        Just(json!("00".repeat(32))),
        "[a-z0-9:]{0,12}".prop_map(Value::String),
    ]
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("data".to_owned()),
        Just("erased".to_owned()),
        Just("note".to_owned()),
        Just("ledger_id".to_owned()),
        Just("kind".to_owned()),
        Just("seq".to_owned()),
        "[a-z_]{1,10}",
    ]
}

/// Each class of change, on its own (the survey below counts them class by class).
fn classes() -> Vec<BoxedStrategy<Mutation>> {
    let i = any::<Index>;
    vec![
        (i(), 1u8..=255)
            .prop_map(|(at, mask)| Mutation::FlipByte { at, mask })
            .boxed(),
        (i(), any::<u8>())
            .prop_map(|(at, byte)| Mutation::InsertByte { at, byte })
            .boxed(),
        i().prop_map(|at| Mutation::DeleteByte { at }).boxed(),
        i().prop_map(|line| Mutation::DeleteLine { line }).boxed(),
        i().prop_map(|line| Mutation::DuplicateLine { line })
            .boxed(),
        (i(), i())
            .prop_map(|(a, b)| Mutation::SwapLines { a, b })
            .boxed(),
        (i(), i())
            .prop_map(|(from, to)| Mutation::MoveLine { from, to })
            .boxed(),
        (i(), i(), value())
            .prop_map(|(line, field, value)| Mutation::SetField { line, field, value })
            .boxed(),
        (i(), i(), i())
            .prop_map(|(line, field, other)| Mutation::CopyFieldFromSibling { line, field, other })
            .boxed(),
        (i(), field_name(), value())
            .prop_map(|(line, name, value)| Mutation::AddField { line, name, value })
            .boxed(),
        (i(), i())
            .prop_map(|(line, field)| Mutation::RemoveField { line, field })
            .boxed(),
        (i(), i(), value())
            .prop_map(|(line, field, value)| Mutation::DuplicateKey { line, field, value })
            .boxed(),
        (i(), i())
            .prop_map(|(line, field)| Mutation::UppercaseHex { line, field })
            .boxed(),
        (i(), any::<u8>())
            .prop_map(|(line, style)| Mutation::NonCanonicalTime { line, style })
            .boxed(),
        i().prop_map(|keep| Mutation::CutTailAdjustFooter { keep })
            .boxed(),
        i().prop_map(|which| Mutation::DeleteCheckpointLine { which })
            .boxed(),
        i().prop_map(|line| Mutation::LineAfterFooter { line })
            .boxed(),
    ]
}

fn any_mutation() -> impl Strategy<Value = Mutation> {
    proptest::strategy::Union::new(classes())
}

/// `None` if the changed bundle is rejected or verifies to the same content; otherwise what
/// differs, for the failure message.
fn wrong_ok(original: &str, changed: &str) -> Option<String> {
    let Ok(summary) = verify(changed) else {
        return None;
    };
    let expected = verify(original).unwrap();
    let (before, after) = (content(original), content(changed));
    if summary == expected && before == after {
        return None;
    }
    if newest_checkpoints_dropped_and_said(&before, &after, &expected, &summary)
        || unconfirmable_claims_changed_and_said(&before, &after, &expected, &summary)
    {
        return None;
    }
    let first_diff = before
        .iter()
        .zip(&after)
        .position(|(a, b)| a != b)
        .unwrap_or(before.len().min(after.len()));
    Some(format!(
        "verified ok but says something else: summary {summary:?} (original {expected:?}); \
         {} lines vs {} originally; first differing line {first_diff}: {} (originally {})",
        after.len(),
        before.len(),
        after
            .get(first_diff)
            .map_or("<none>".to_owned(), Value::to_string),
        before
            .get(first_diff)
            .map_or("<none>".to_owned(), Value::to_string),
    ))
}

/// The one change a bundle cannot show: its newest checkpoints removed (with the footer
/// counting what is left). The header is not signed and no entry names a checkpoint, so only a
/// kept checkpoint makes it harmless (see the test below). It is accepted only when the "ok" says
/// exactly that: every other line the same, the remaining checkpoints the oldest ones, and the
/// summary reporting fewer checkpoints and the longer tail no checkpoint covers, in words too.
fn newest_checkpoints_dropped_and_said(
    before: &[Value],
    after: &[Value],
    expected: &Summary,
    summary: &Summary,
) -> bool {
    let is_cp = |v: &&Value| v["kind"] == "checkpoint";
    let others = |c: &[Value]| c.iter().filter(|v| !is_cp(v)).cloned().collect::<Vec<_>>();
    let cps = |c: &[Value]| c.iter().filter(is_cp).cloned().collect::<Vec<_>>();
    let size = |v: &Value| v["tree_size"].as_u64().unwrap_or(u64::MAX);
    if others(before) != others(after) {
        return false;
    }
    let (was, is) = (cps(before), cps(after));
    let kept_up_to = is.iter().map(size).max();
    let oldest: Vec<Value> = was
        .iter()
        .filter(|v| kept_up_to.is_some_and(|k| size(v) <= k))
        .cloned()
        .collect();
    if is.len() >= was.len() || is != oldest {
        return false;
    }
    let mut said = expected.clone();
    said.proven.checkpoints = is.len() as u64;
    said.proven.last_checkpoint = kept_up_to;
    let end = expected.proven.range.map_or(0, |(_, last)| last + 1);
    said.proven.uncovered_tail = end - kept_up_to.unwrap_or(expected.proven.start.0);
    let tail = format!(
        "coverage: the last {} entries are covered by no checkpoint",
        said.proven.uncovered_tail
    );
    *summary == said && summary.describe().iter().any(|l| l.starts_with(&tail))
}

/// The two claims a bundle makes about what lies after its last entry, which nothing in it can
/// confirm (a genuine export of a prefix makes them): a larger ledger size in the header, and a
/// key line's retirement after the last entry. Accepted only when the "ok" states each as the
/// bundle's claim, everything else the same.
fn unconfirmable_claims_changed_and_said(
    before: &[Value],
    after: &[Value],
    expected: &Summary,
    summary: &Summary,
) -> bool {
    if before.len() != after.len() {
        return false;
    }
    let words = summary.describe();
    let mut restored = after.to_vec();
    for (was, is) in before.iter().zip(restored.iter_mut()) {
        if was == is {
            continue;
        }
        let (field, said) = match is["kind"].as_str() {
            Some("header") => (
                "ledger_size",
                is["ledger_size"].as_u64().is_some_and(|n| {
                    n == summary.ledger_size
                        && words.iter().any(|l| {
                            l.starts_with(&format!(
                                "range: the ledger held {n} entries (the header's claim)"
                            ))
                        })
                }),
            ),
            Some("key") => (
                "last_seq",
                is["last_seq"].as_u64().is_some_and(|n| {
                    summary
                        .retired_after
                        .iter()
                        .any(|(id, at)| *at == n && is["key_id"] == id.as_str())
                }),
            ),
            _ => return false,
        };
        if !said {
            return false;
        }
        is[field] = was[field].clone();
    }
    let mut unsaid = summary.clone();
    unsaid.ledger_size = expected.ledger_size;
    unsaid.retired_after.clear();
    restored == before && unsaid == *expected
}

#[test]
fn dropping_the_newest_checkpoint_is_stated_and_harmless_against_a_kept_one() {
    let ledger = forge::small_ledger();
    let text = original();
    let dropped: String = text
        .lines()
        .filter(|l| !(l.contains(r#""kind":"checkpoint""#) && l.contains(r#""tree_size":10"#)))
        .map(|l| {
            if l.contains(r#""kind":"footer""#) {
                r#"{"kind":"footer","entries":11,"checkpoints":2}"#.to_owned()
            } else {
                l.to_owned()
            }
        })
        .flat_map(|l| [l, "\n".to_owned()])
        .collect();
    let summary = verify(&dropped).unwrap();
    assert_eq!(
        (summary.proven.checkpoints, summary.proven.uncovered_tail),
        (2, 4)
    );
    assert!(
        summary
            .describe()
            .iter()
            .any(|l| l.starts_with("coverage: the last 4 entries"))
    );
    // With the checkpoint of size 10 kept by the auditor, the missing line hides nothing: the
    // entries are proven to extend it.
    let kept = ledger
        .checkpoints
        .iter()
        .find(|c| c.tree_size == 10)
        .unwrap();
    let mut verifier = BundleVerifier::new(trusted_keys(), Some(kept.to_json())).unwrap();
    for l in dropped.lines() {
        verifier.feed(l).unwrap();
    }
    assert_eq!(
        verifier.finish().unwrap().proven.trusted_checkpoint_matched,
        Some(10)
    );
}

#[test]
fn the_unchanged_bundle_verifies_with_every_entry_and_checkpoint() {
    let summary = verify(&original()).unwrap();
    assert_eq!(
        (
            summary.proven.entries,
            summary.proven.checkpoints,
            summary.proven.range
        ),
        (11, 3, Some((0, 10)))
    );
}

#[test]
fn a_partial_export_verifies_from_its_header() {
    let text = forge::partial_bundle_text(
        &forge::small_ledger(),
        &LedgerSigningKey::from_seed(&forge::SEED),
        5,
    );
    let summary = verify(&text).unwrap();
    assert_eq!(
        (
            summary.proven.entries,
            summary.proven.checkpoints,
            summary.proven.range
        ),
        (6, 2, Some((5, 10)))
    );
}

#[test]
fn the_fuzz_seed_corpus_is_these_bundles() {
    // fuzz/corpus/<target>/*.ndjson are these bundles; `AUDITLEDGER_WRITE_FUZZ_SEED=1` rewrites
    // them after a format change.
    let ledger = forge::small_ledger();
    let key = LedgerSigningKey::from_seed(&forge::SEED);
    let seeds = [
        ("small-ledger.ndjson", forge::bundle_text(&ledger, &key)),
        (
            "small-ledger-from-5.ndjson",
            forge::partial_bundle_text(&ledger, &key, 5),
        ),
    ];
    // bundle_trusted reads a first line that is a checkpoint's JSON as the trusted checkpoint.
    let trusted = |size: u64| {
        let cp = ledger
            .checkpoints
            .iter()
            .find(|c| c.tree_size == size)
            .unwrap();
        serde_json::to_string(&cp.to_json()).unwrap() + "\n"
    };
    let trusted_seeds = [
        (
            "trusted-10-full.ndjson",
            trusted(10) + &forge::bundle_text(&ledger, &key),
        ),
        (
            "trusted-7-from-7.ndjson",
            trusted(7) + &forge::partial_bundle_text(&ledger, &key, 7),
        ),
    ];
    for (target, target_seeds) in [("bundle", &seeds), ("bundle_trusted", &trusted_seeds)] {
        for (name, text) in target_seeds {
            let path = format!("{}/fuzz/corpus/{target}/{name}", env!("CARGO_MANIFEST_DIR"));
            if std::env::var_os("AUDITLEDGER_WRITE_FUZZ_SEED").is_some() {
                std::fs::create_dir_all(std::path::Path::new(&path).parent().unwrap()).unwrap();
                std::fs::write(&path, text).unwrap();
            }
            assert_eq!(
                &std::fs::read_to_string(&path).unwrap(),
                text,
                "{path} is stale: rerun with AUDITLEDGER_WRITE_FUZZ_SEED=1"
            );
        }
    }
}

proptest! {
    #![proptest_config(Config { cases: 256, failure_persistence: None, ..Config::default() })]

    #[test]
    fn a_changed_bundle_is_rejected_or_verifies_to_the_same_content(m in any_mutation()) {
        let original = original();
        let changed = m.apply(&original);
        if let Some(why) = wrong_ok(&original, &changed) {
            prop_assert!(false, "{} ({m:?}): {why}", m.class());
        }
    }
}

/// The same property, class by class, with a fixed seed: the failure lists every class of
/// change that gets a wrong "ok" today, with one example each, instead of the one case
/// proptest shrinks to.
#[test]
fn no_class_of_change_gets_a_wrong_ok() {
    const PER_CLASS: usize = 64;
    let original = original();
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let mut failing = Vec::new();
    for class in classes() {
        let mut wrong = 0;
        let mut example = None;
        let mut name = "";
        for _ in 0..PER_CLASS {
            let m = class.new_tree(&mut runner).unwrap().current();
            name = m.class();
            let changed = m.apply(&original);
            if let Some(why) = wrong_ok(&original, &changed) {
                wrong += 1;
                example.get_or_insert(format!("{m:?}: {why}"));
            }
        }
        if let Some(example) = example {
            failing.push(format!(
                "{name}: {wrong} of {PER_CLASS} verified ok with other content; e.g. {example}"
            ));
        }
    }
    assert!(
        failing.is_empty(),
        "{} classes of change get a wrong ok:\n{}",
        failing.len(),
        failing.join("\n")
    );
}

/// The changes `unconfirmable_claims_changed_and_said` lets through: each verifies only with its
/// claim stated, and a claim of a retirement within the bundle is refused.
#[test]
fn claims_after_the_last_entry_verify_only_as_stated_claims() {
    let text = original();
    let edit_line = |kind: &str, field: &str, value: Value| -> String {
        text.lines()
            .map(|l| {
                let mut o: serde_json::Map<String, Value> = serde_json::from_str(l).unwrap();
                if o["kind"] == kind {
                    o.insert(field.to_owned(), value.clone());
                    format!("{}\n", write_line(o))
                } else {
                    format!("{l}\n")
                }
            })
            .collect()
    };
    let bigger = edit_line("header", "ledger_size", json!(u64::MAX));
    assert!(verify(&bigger).is_ok());
    assert_eq!(wrong_ok(&text, &bigger), None);
    for claim in [u64::MAX, 10, 0] {
        let retired = edit_line("key", "last_seq", json!(claim));
        assert!(verify(&retired).is_err(), "last_seq {claim}");
    }
}
