//! The adversarial corpus (tests/vectors/adversarial.json), run for real: a small realistic
//! ledger is written through the real server on each backend, each case changes a copy of it
//! the way an operator with write access could (SQL on the database, an edited export bundle,
//! entries re-signed with the ledger's own signing key), and then runs `auditledger verify`,
//! `GET /v1/audit/verify` or `auditledger verify-bundle` and compares outcome, kind and seq
//! with what the case expects.
//!
//! Every case runs; the test fails once, at the end, listing each case that did not get what
//! it expects. A case that needs something this build lacks (`"requires"`) is reported as
//! pending and counts as a failure: nothing is skipped silently.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::too_many_lines,
    reason = "test code"
)]

mod common;
#[path = "support/forge.rs"]
mod forge;

use std::path::Path;

use auditledger::bundle::BundleLine;
use auditledger::crypto::{DataKey, KeyRef, LedgerSigningKey, seal};
use auditledger::entry::{EntryHash, StreamId};
use auditledger::merkle::{CompactRange, leaf_hash};
use common::{Backend, Env, PgDb, Server, one_event, workdir};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value, json};

// ---------------------------------------------------------------------------------------------
// The corpus

#[derive(Deserialize)]
struct Corpus {
    cases: Vec<Case>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    backend: String,
    change: Value,
    expect: Expect,
    why: String,
    #[serde(default)]
    requires: Option<String>,
    #[serde(default)]
    run: Value,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    verifier: String,
    outcome: String,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    seq: Option<u64>,
    /// Text the verifier's output (or the refusing server's log) must contain.
    #[serde(default)]
    detail: Option<String>,
}

fn corpus() -> Vec<Case> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/adversarial.json"
    ))
    .unwrap();
    serde_json::from_str::<Corpus>(&text).unwrap().cases
}

/// Failure kinds: FORMAT.md §5 (v1) and the format v2 design.
const KINDS: &[&str] = &[
    "seq_mismatch",
    "broken_link",
    "payload_digest_mismatch",
    "entry_hash_mismatch",
    "unknown_key",
    "bad_signature",
    "malformed_record",
    "bad_checkpoint_signature",
    "checkpoint_mismatch",
    "truncated",
    "restored_erased_key",
    "missing_payload",
    "missing_key",
    "payload_key_mismatch",
    "key_out_of_range",
    "bad_key_rotation",
    "ledger_mismatch",
    "time_reversal",
    "stream_version_gap",
    "reserved_stream",
    "erased_handle_reused",
    "missing_checkpoint",
    "duplicate_checkpoint",
    "key_line_mismatch",
    "bundle_mismatch",
];
/// Kinds the runner gives an unusable outcome: the export or the server refused, the API
/// answered 400, or a verifier exited 2.
const UNUSABLE_KINDS: &[&str] = &[
    "export_refused",
    "server_refused",
    "bad_request",
    "unusable",
];

#[test]
fn the_adversarial_corpus_is_well_formed() {
    let cases = corpus();
    let mut names = std::collections::BTreeSet::new();
    for c in &cases {
        assert!(names.insert(c.name.clone()), "{}: name repeated", c.name);
        assert!(
            ["sqlite", "postgres", "bundle", "both"].contains(&c.backend.as_str()),
            "{}: backend {}",
            c.name,
            c.backend
        );
        assert!(
            ["verify", "api", "verify-bundle"].contains(&c.expect.verifier.as_str()),
            "{}: verifier {}",
            c.name,
            c.expect.verifier
        );
        assert!(!c.why.is_empty(), "{}: no why", c.name);
        match c.expect.outcome.as_str() {
            "ok" => assert!(
                c.expect.kind.is_none() && c.expect.seq.is_none(),
                "{}",
                c.name
            ),
            "tampered" => {
                let kind = c.expect.kind.as_deref().unwrap_or("");
                assert!(KINDS.contains(&kind), "{}: kind {kind:?}", c.name);
            }
            "unusable" => {
                if let Some(k) = &c.expect.kind {
                    assert!(UNUSABLE_KINDS.contains(&k.as_str()), "{}: kind {k}", c.name);
                }
            }
            other => panic!("{}: outcome {other}", c.name),
        }
        assert!(
            c.backend != "bundle" || c.expect.verifier == "verify-bundle",
            "{}: a bundle case is checked by verify-bundle",
            c.name
        );
        assert!(c.change["op"].is_string(), "{}: change without op", c.name);
    }
}

// ---------------------------------------------------------------------------------------------
// The ledger every case starts from

struct Event {
    stream: &'static str,
    ty: &'static str,
    subject: Option<&'static str>,
    data: Value,
}

fn events() -> Vec<Option<Event>> {
    let e = |stream, ty, subject, data| {
        Some(Event {
            stream,
            ty,
            subject,
            data,
        })
    };
    vec![
        e(
            "acct-1",
            "AccountOpened",
            Some("alice"),
            json!({"owner": "alice"}),
        ),
        e(
            "acct-2",
            "AccountOpened",
            Some("bob"),
            json!({"owner": "bob"}),
        ),
        e(
            "acct-1",
            "FundsDeposited",
            Some("alice"),
            json!({"amount": 100}),
        ),
        e("auth", "LoginSucceeded", None, json!({"ip": "10.0.0.1"})),
        e(
            "acct-2",
            "FundsDeposited",
            Some("bob"),
            json!({"amount": 7}),
        ),
        e("auth", "LoginFailed", None, json!({"ip": "10.0.0.2"})),
        e(
            "acct-3",
            "AccountOpened",
            Some("carol"),
            json!({"owner": "carol"}),
        ),
        None, // seq 7: bob is erased
        e(
            "acct-1",
            "FundsWithdrawn",
            Some("alice"),
            json!({"amount": 30}),
        ),
        e("auth", "LoginSucceeded", None, json!({"ip": "10.0.0.3"})),
        e(
            "acct-3",
            "FundsDeposited",
            Some("carol"),
            json!({"amount": 12}),
        ),
        e(
            "acct-1",
            "FundsDeposited",
            Some("alice"),
            json!({"amount": 5}),
        ),
    ]
}

async fn append(s: &Server, e: &Event) {
    let mut event = json!({"type": e.ty, "data": e.data, "metadata": {"source": "core-banking"}});
    if let Some(subject) = e.subject {
        event["subject"] = json!(subject);
    }
    let (status, body) = s.append(e.stream, &json!({"events": [event]})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// A webhook witness on loopback that accepts every publication (and keeps none).
async fn webhook_witness() -> String {
    let app = axum::Router::new().route("/hook", axum::routing::post(async || "ok"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    hook
}

/// The ledger every case starts from, and the older copy of its database that rollback cases
/// restore.
struct Base {
    env: Env,
    /// PostgreSQL: the database as it was at tree size 5 (SQLite: `older.db` in the base's
    /// directory).
    older_pg: Option<PgDb>,
    hook: String,
}

/// Flags every server of the corpus runs with: checkpoints every 5 entries, a directory
/// witness in ./witness (when `witness_dir`) and the webhook witness.
fn serve_flags(hook: &str, witness_dir: bool) -> Vec<String> {
    let mut flags = vec!["--checkpoint-every".to_owned(), "5".to_owned()];
    if witness_dir {
        flags.extend(["--witness-dir".to_owned(), "witness".to_owned()]);
    }
    flags.extend(["--witness-webhook".to_owned(), hook.to_owned()]);
    flags
}

/// The ledger of adversarial.json's `ledger`, written through the server (publishing to both
/// witnesses), which is then stopped; the database is also copied as it was at tree size 5.
async fn base_ledger(backend: Backend) -> Base {
    let hook = webhook_witness().await;
    let env = Env::new(backend).await;
    let flags = serve_flags(&hook, true);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut s = env.serve(&flags).await;
    let mut older_pg = None;
    for (i, e) in events().into_iter().enumerate() {
        if i == 5 {
            // The older copy an operator could restore: taken with the server stopped.
            assert!(s.terminate().await.success());
            match &env.pg {
                None => {
                    std::fs::copy(
                        env.path().join("data/ledger.db"),
                        env.path().join("older.db"),
                    )
                    .unwrap();
                }
                Some(pg) => older_pg = Some(pg_copy(&pg.name, "older").await),
            }
            s = env.serve(&flags).await;
        }
        if let Some(e) = e {
            append(&s, &e).await;
        } else {
            let (status, body) = s
                .post_raw(
                    "/v1/subjects/erase",
                    json!({"subject": "bob", "reason": "GDPR Art. 17", "request_ref": "DSR-1"})
                        .to_string(),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }
    let (_, _, page) = s.get("/v1/checkpoints").await;
    let sizes: Vec<u64> = page["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["tree_size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [5, 8], "the corpus's seqs assume these checkpoints");
    // Publication is asynchronous; the rollback cases need checkpoint 8 in the witness.
    let latest = env.path().join("witness/latest.json");
    common::wait_until(
        "the directory witness to hold checkpoint 8",
        std::time::Duration::from_secs(30),
        async || {
            std::fs::read_to_string(&latest)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_some_and(|v| v["checkpoint"]["tree_size"] == 8)
        },
    )
    .await;
    assert!(s.terminate().await.success());
    Base {
        env,
        older_pg,
        hook,
    }
}

fn postgres_admin_url() -> String {
    std::env::var("AUDITLEDGER_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A new PostgreSQL database made from `template`, dropped when the value is.
async fn pg_copy(template: &str, suffix: &str) -> PgDb {
    use sqlx::Connection;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("{template}_{suffix}{n}");
    let admin = postgres_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    PgDb { name, url }
}

/// A copy of the base ledger for one case: its keys, data and witness directories, and on
/// PostgreSQL a database made from the base's as a template. With `older`, the database is the
/// older copy (taken at tree size 5) instead: everything outside the database stays current.
async fn copy_of(base: &Base, older: bool) -> Env {
    let dir = workdir();
    for sub in ["keys", "data", "witness"] {
        if base.env.path().join(sub).exists() {
            let status = std::process::Command::new("cp")
                .arg("-a")
                .arg(base.env.path().join(sub))
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
    }
    let pg = match (&base.env.pg, older) {
        (None, false) => None,
        (None, true) => {
            for stale in ["ledger.db-wal", "ledger.db-shm"] {
                let _ = std::fs::remove_file(dir.path().join("data").join(stale));
            }
            std::fs::copy(
                base.env.path().join("older.db"),
                dir.path().join("data/ledger.db"),
            )
            .unwrap();
            None
        }
        (Some(current), false) => Some(pg_copy(&current.name, "c").await),
        (Some(_), true) => Some(pg_copy(&base.older_pg.as_ref().unwrap().name, "c").await),
    };
    Env {
        backend: base.env.backend,
        dir,
        pg,
    }
}

// ---------------------------------------------------------------------------------------------
// What a verifier said

#[derive(Clone, Debug, PartialEq, Eq)]
struct Got {
    outcome: String,
    kind: Option<String>,
    seq: Option<u64>,
    detail: String,
}

impl Got {
    fn unusable(kind: &str, detail: impl Into<String>) -> Got {
        Got {
            outcome: "unusable".to_owned(),
            kind: Some(kind.to_owned()),
            seq: None,
            detail: detail.into(),
        }
    }

    fn matches(&self, e: &Expect) -> bool {
        self.outcome == e.outcome
            && (e.kind.is_none() || self.kind == e.kind)
            && (e.seq.is_none() || self.seq == e.seq)
            && e.detail
                .as_ref()
                .is_none_or(|d| self.detail.contains(d.as_str()))
    }
}

/// Reads a CLI verifier's answer: exit 0 ok, 1 `FAILED at seq N: kind: …`, 2 unusable.
fn from_cli((code, out, err): (i32, String, String)) -> Got {
    let text = format!("{out}{err}").trim().to_owned();
    match code {
        0 => Got {
            outcome: "ok".to_owned(),
            kind: None,
            seq: None,
            detail: text,
        },
        1 => {
            let failed = text
                .lines()
                .find_map(|l| l.strip_prefix("FAILED at seq "))
                .and_then(|rest| {
                    let (seq, rest) = rest.split_once(": ")?;
                    let kind = rest.split(':').next()?;
                    Some((seq.parse().ok()?, kind.to_owned()))
                });
            Got {
                outcome: "tampered".to_owned(),
                kind: failed.as_ref().map(|f| f.1.clone()),
                seq: failed.map(|f| f.0),
                detail: text,
            }
        }
        2 => Got::unusable("unusable", text),
        other => Got {
            outcome: format!("exit {other}"),
            kind: None,
            seq: None,
            detail: text,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Changes

fn signing_key(dir: &Path) -> LedgerSigningKey {
    let hex_seed = std::fs::read_to_string(dir.join("keys/signing.key")).unwrap();
    let seed: [u8; 32] = hex::decode(hex_seed.trim()).unwrap().try_into().unwrap();
    LedgerSigningKey::from_seed(&seed)
}

/// Statements that drop the append-only triggers, as an attacker with write access can.
fn drop_triggers(backend: Backend) -> Vec<String> {
    let triggers = [
        ("entries_no_update", "entries"),
        ("entries_no_delete", "entries"),
        ("checkpoints_no_update", "checkpoints"),
        ("checkpoints_no_delete", "checkpoints"),
    ];
    triggers
        .iter()
        .map(|(t, table)| match backend {
            Backend::Sqlite => format!("DROP TRIGGER IF EXISTS {t}"),
            Backend::Postgres => format!("DROP TRIGGER IF EXISTS {t} ON {table}"),
        })
        .collect()
}

async fn run_sql(env: &Env, statements: &[String]) {
    let mut all = drop_triggers(env.backend);
    all.extend_from_slice(statements);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    env.sql(&refs).await;
}

fn sql_statements(change: &Value, backend: Backend) -> Vec<String> {
    let list = match backend {
        Backend::Sqlite => change.get("sqlite"),
        Backend::Postgres => change.get("postgres"),
    }
    .or_else(|| change.get("sql"))
    .and_then(Value::as_array)
    .expect("a sql change lists statements");
    list.iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// Rewrites entry `seq` as `set` says and re-signs everything after it (see adversarial.json's
/// `change_ops.forge`).
fn forge(parsed: &mut forge::ParsedBundle, seq: u64, set: &Value, key: &LedgerSigningKey) {
    assert_eq!(parsed.from_seq, 0, "forging needs a bundle from seq 0");
    let i = seq as usize;
    let handle_of = |j: u64| parsed.ledger.records[j as usize].entry.header.subject;
    let new_subject = set["subject_of_seq"]
        .as_u64()
        .map(|j| handle_of(j).unwrap());
    let r = &mut parsed.ledger.records[i];
    let h = &mut r.entry.header;
    if let Some(d) = set["recorded_at_delta_micros"].as_i64() {
        h.recorded_at_micros += d;
    }
    if let Some(d) = set["stream_version_delta"].as_u64() {
        h.stream_version += d;
    }
    if let Some(s) = set["stream_id"].as_str() {
        h.stream_id = StreamId::parse(s).unwrap();
    }
    if let Some(v) = set["stream_version"].as_u64() {
        h.stream_version = v;
    }
    if let Some(p) = set["prev_hash"].as_str() {
        r.entry.prev_hash = EntryHash::from_hex(p).unwrap();
    }
    if let Some(handle) = new_subject {
        // A consistent forgery: the payload sealed under a fresh key named by the handle.
        h.subject = Some(handle);
        let sealed = seal(
            &DataKey::generate(),
            &KeyRef::Subject(handle),
            &h.payload_aad(),
            b"{}",
        );
        r.entry.payload_digest = sealed.digest();
        r.payload = Some(sealed);
    }
    forge::resign_from(&mut parsed.ledger, i, key);
}

fn blob(backend: Backend, bytes: &[u8]) -> String {
    match backend {
        Backend::Sqlite => format!("X'{}'", hex::encode(bytes)),
        Backend::Postgres => format!("decode('{}', 'hex')", hex::encode(bytes)),
    }
}

/// SQL that writes a forged ledger's entries from `from` on, and unless `keep_tree` the
/// checkpoints and the Merkle nodes covering them, over the stored ones.
fn forged_sql(
    ledger: &forge::Ledger,
    from: usize,
    backend: Backend,
    keep_tree: bool,
) -> Vec<String> {
    let b = |bytes: &[u8]| blob(backend, bytes);
    let mut out = Vec::new();
    for r in &ledger.records[from..] {
        let h = &r.entry.header;
        out.push(format!(
            "UPDATE entries SET stream_id = '{}', stream_version = {}, event_type = '{}', subject = {}, recorded_at = {}, payload = {}, payload_digest = {}, prev_hash = {}, entry_hash = {}, signature = {}, key_id = '{}' WHERE seq = {}",
            h.stream_id,
            h.stream_version,
            h.event_type,
            h.subject.map_or("NULL".to_owned(), |s| b(&s.0)),
            h.recorded_at_micros,
            r.payload.as_ref().map_or("NULL".to_owned(), |p| b(&p.0)),
            b(&r.entry.payload_digest.0),
            b(&r.entry.prev_hash.0),
            b(&r.entry_hash.0),
            b(&r.signature.0),
            r.key_id.to_hex(),
            h.seq.0
        ));
    }
    if keep_tree {
        return out;
    }
    for cp in &ledger.checkpoints {
        if cp.tree_size as usize > from {
            out.push(format!(
                "UPDATE checkpoints SET root_hash = {}, last_entry_hash = {}, signature = {}, key_id = '{}' WHERE tree_size = {}",
                b(&cp.root_hash.0),
                b(&cp.last_entry_hash.0),
                b(&cp.signature.0),
                cp.key_id.to_hex(),
                cp.tree_size
            ));
        }
    }
    let mut tree = CompactRange::new();
    let mut nodes = Vec::new();
    for r in &ledger.records {
        tree.append(leaf_hash(&r.entry_hash.0), |id, hash| {
            if id.level >= 1 && (id.index + 1) << id.level > from as u64 {
                nodes.push((id, hash));
            }
        });
    }
    for (id, hash) in nodes {
        out.push(format!(
            "UPDATE merkle_nodes SET hash = {} WHERE level = {} AND idx = {}",
            b(&hash.0),
            id.level,
            id.index
        ));
    }
    out
}

/// A line of a bundle, chosen by kind and either `nth` (0-based, among lines of that kind) or
/// `seq` (entries).
fn find_line(lines: &[String], selector: &Value) -> usize {
    let kind = selector["kind"].as_str().unwrap();
    let mut nth = 0;
    for (i, l) in lines.iter().enumerate() {
        let v: Value = serde_json::from_str(l).unwrap_or(Value::Null);
        if v["kind"] != kind {
            continue;
        }
        if let Some(seq) = selector.get("seq") {
            if v["seq"] == *seq {
                return i;
            }
        } else {
            if Some(nth) == selector["nth"].as_u64() {
                return i;
            }
            nth += 1;
        }
    }
    panic!("no line {selector} in the bundle");
}

fn object(line: &str) -> Map<String, Value> {
    serde_json::from_str(line).unwrap()
}

/// A changed line written as the exporter writes lines (`serde_json::to_string` of the typed
/// `BundleLine`), so that the verifier looks at the changed value: a line that is not exactly
/// that text is refused as unusable (exit 2) before anything else. A line that no longer fits
/// the type (an unknown field, a value of another type) cannot be written so and stays generic
/// JSON text, which must be refused.
fn write_line(o: Map<String, Value>) -> String {
    let v = Value::Object(o);
    match serde_json::from_value::<BundleLine>(v.clone()) {
        Ok(line) => serde_json::to_string(&line).unwrap(),
        Err(_) => v.to_string(),
    }
}

fn count_kind(lines: &[String], kind: &str) -> usize {
    lines
        .iter()
        .filter(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["kind"] == kind))
        .count()
}

/// Applies the `edits` of a bundle change (adversarial.json's `change_ops.bundle`).
fn edit_bundle(text: &str, edits: &[Value]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for edit in edits {
        let (op, arg) = edit.as_object().unwrap().iter().next().unwrap();
        match op.as_str() {
            "delete" => {
                let i = find_line(&lines, &arg["line"]);
                lines.remove(i);
            }
            "duplicate" => {
                let i = find_line(&lines, &arg["line"]);
                lines.insert(i + 1, lines[i].clone());
            }
            "duplicate_to_end" => {
                let i = find_line(&lines, &arg["line"]);
                lines.push(lines[i].clone());
            }
            "swap" => {
                let (a, b) = (find_line(&lines, &arg["a"]), find_line(&lines, &arg["b"]));
                lines.swap(a, b);
            }
            "set_field" | "add_field" => {
                let i = find_line(&lines, &arg["line"]);
                let mut o = object(&lines[i]);
                o.insert(
                    arg["field"].as_str().unwrap().to_owned(),
                    arg["value"].clone(),
                );
                lines[i] = write_line(o);
            }
            "remove_field" => {
                let i = find_line(&lines, &arg["line"]);
                let mut o = object(&lines[i]);
                o.remove(arg["field"].as_str().unwrap());
                lines[i] = write_line(o);
            }
            "replace_suffix" | "uppercase_field" => {
                let i = find_line(&lines, &arg["line"]);
                let mut o = object(&lines[i]);
                let field = arg["field"].as_str().unwrap();
                let old = o[field].as_str().unwrap().to_owned();
                let new = if op == "uppercase_field" {
                    old.to_ascii_uppercase()
                } else {
                    let stem = old.strip_suffix(arg["from"].as_str().unwrap()).unwrap();
                    format!("{stem}{}", arg["to"].as_str().unwrap())
                };
                o.insert(field.to_owned(), Value::String(new));
                lines[i] = write_line(o);
            }
            "duplicate_key" => {
                let i = find_line(&lines, &arg["line"]);
                let close = lines[i].rfind('}').unwrap();
                lines[i] = format!(
                    "{},{}:{}}}",
                    &lines[i][..close],
                    Value::String(arg["field"].as_str().unwrap().to_owned()),
                    arg["value"]
                );
            }
            "replace_text" => {
                let i = find_line(&lines, &arg["line"]);
                let from = arg["from"].as_str().unwrap();
                assert!(lines[i].contains(from), "{from} is not in line {i}");
                lines[i] = lines[i].replacen(from, arg["to"].as_str().unwrap(), 1);
            }
            "append_line" => lines.push(arg["text"].as_str().unwrap().to_owned()),
            "rewrite_generic" => {
                // The same values, written by a generic JSON writer (fields in sorted order).
                let i = find_line(&lines, &arg["line"]);
                lines[i] = Value::Object(object(&lines[i])).to_string();
            }
            "cut_tail" => {
                let keep = arg["keep_entries"].as_u64().unwrap() as usize;
                let mut kept = Vec::new();
                let mut entries = 0;
                for l in &lines {
                    let kind = serde_json::from_str::<Value>(l).unwrap()["kind"].clone();
                    if kind == "entry" {
                        if entries == keep {
                            break;
                        }
                        entries += 1;
                    }
                    if kind != "footer" {
                        kept.push(l.clone());
                    }
                }
                let checkpoints = count_kind(&kept, "checkpoint");
                kept.push(write_line(object(
                    &json!({"kind": "footer", "entries": entries, "checkpoints": checkpoints})
                        .to_string(),
                )));
                lines = kept;
            }
            "fix_footer" => {
                let i = find_line(&lines, &json!({"kind": "footer", "nth": 0}));
                let mut o = object(&lines[i]);
                o.insert("entries".to_owned(), json!(count_kind(&lines, "entry")));
                o.insert(
                    "checkpoints".to_owned(),
                    json!(count_kind(&lines, "checkpoint")),
                );
                lines[i] = write_line(o);
            }
            "set_header" => {
                let i = find_line(&lines, &json!({"kind": "header", "nth": 0}));
                let mut o = object(&lines[i]);
                for (k, v) in arg.as_object().unwrap() {
                    o.insert(k.clone(), v.clone());
                }
                lines[i] = write_line(o);
            }
            other => panic!("unknown bundle edit {other}"),
        }
    }
    lines.iter().flat_map(|l| [l.as_str(), "\n"]).collect()
}

// ---------------------------------------------------------------------------------------------
// Running a case

/// Whether this build has a subcommand.
fn has_command(name: &str) -> bool {
    let dir = workdir();
    common::run_cli(dir.path(), &[name, "--help"]).0 == 0
}

fn export(env: &Env, file: &Path, range: &Value) -> Result<String, Got> {
    let mut args = vec![
        "export".to_owned(),
        "--out".to_owned(),
        file.to_str().unwrap().to_owned(),
    ];
    for flag in ["from_seq", "to_seq"] {
        if let Some(n) = range[flag].as_u64() {
            args.push(format!("--{}", flag.replace('_', "-")));
            args.push(n.to_string());
        }
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = env.cli(&refs);
    if code != 0 {
        return Err(Got::unusable("export_refused", format!("{out}{err}")));
    }
    Ok(std::fs::read_to_string(file).unwrap())
}

/// Rotates the signing key (the design's `rotate-signing-key`), appends `then_append` events,
/// and returns the retired key.
async fn rotate(env: &Env, then_append: u64) -> Result<LedgerSigningKey, Got> {
    let retired = signing_key(env.path());
    let (code, out, err) = env.cli(&["rotate-signing-key"]);
    if code != 0 {
        return Err(Got::unusable(
            "unusable",
            format!("rotate-signing-key failed: {out}{err}"),
        ));
    }
    let s = env.serve(&["--checkpoint-every", "5"]).await;
    for i in 0..then_append {
        let (status, body) = s
            .append("after-rotation", &one_event("E", json!({"i": i})))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    s.terminate().await;
    std::fs::write(
        env.path().join("retired.pub"),
        hex::encode(retired.public_key().to_bytes()),
    )
    .unwrap();
    Ok(retired)
}

/// Another ledger that shares this one's signing key: its keys directory gets a copy of
/// `keys/signing.key` (and the other key files) before its first start (so it draws its own ledger id), and six events
/// of the corpus are written to it (a checkpoint at 5). Returns it, stopped, and its export.
async fn other_ledger_sharing_the_key(env: &Env) -> (Env, String) {
    let other = Env::new(env.backend).await;
    std::fs::create_dir_all(other.path().join("keys")).unwrap();
    // The service refuses a keys directory with some key files missing, so the other key files
    // are shared too; ledger.id (and published.json) are not.
    for file in ["signing.key", "signing.pub", "index.key"] {
        std::fs::copy(
            env.path().join("keys").join(file),
            other.path().join("keys").join(file),
        )
        .unwrap();
    }
    let s = other.serve(&["--checkpoint-every", "5"]).await;
    for e in events().into_iter().flatten().take(6) {
        append(&s, &e).await;
    }
    s.terminate().await;
    let text = export(&other, &other.path().join("other.ndjson"), &Value::Null)
        .expect("the other ledger exports");
    assert_eq!(
        signing_key(other.path()).key_id(),
        signing_key(env.path()).key_id(),
        "the two ledgers share the signing key"
    );
    (other, text)
}

/// Puts the data key rows of the older copy (taken at tree size 5, before bob's erasure) that
/// the database no longer holds back into it: bob's erased key, restored from a backup.
async fn restore_erased_keys(base: &Base, env: &Env) {
    type Row = (Vec<u8>, Vec<u8>, String, i64);
    let query = "SELECT key_ref, wrapped, kek_id, created_at FROM data_keys";
    let rows: Vec<Row> = match &base.older_pg {
        None => {
            let opts = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(base.env.path().join("older.db"))
                .read_only(true);
            let db = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(opts)
                .await
                .unwrap();
            let rows = sqlx::query_as(query).fetch_all(&db).await.unwrap();
            db.close().await;
            rows
        }
        Some(pg) => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&pg.url).await.unwrap();
            let rows = sqlx::query_as(query).fetch_all(&mut conn).await.unwrap();
            conn.close().await.unwrap();
            rows
        }
    };
    let b = |bytes: &[u8]| blob(env.backend, bytes);
    let inserts: Vec<String> = rows
        .iter()
        .map(|(key_ref, wrapped, kek_id, created_at)| {
            format!(
                "INSERT INTO data_keys (key_ref, wrapped, kek_id, created_at) VALUES ({}, {}, '{kek_id}', {created_at}) ON CONFLICT (key_ref) DO NOTHING",
                b(key_ref),
                b(wrapped)
            )
        })
        .collect();
    let before = env.sql_count("SELECT COUNT(*) FROM data_keys").await;
    run_sql(env, &inserts).await;
    let after = env.sql_count("SELECT COUNT(*) FROM data_keys").await;
    assert_eq!(after, before + 1, "exactly bob's erased key comes back");
}

/// Where the rotation entry is.
fn rotation_index(parsed: &forge::ParsedBundle) -> usize {
    parsed
        .ledger
        .records
        .iter()
        .position(|r| r.entry.header.stream_id.as_str() == "auditledger:signing-keys")
        .expect("the rotation is an entry in auditledger:signing-keys")
}

async fn run_case(base: &Base, case: &Case) -> Got {
    if let Some(feature) = &case.requires {
        let available = match feature.as_str() {
            "rotate-signing-key" => has_command("rotate-signing-key"),
            _ => false,
        };
        if !available {
            return Got {
                outcome: "pending".to_owned(),
                kind: None,
                seq: None,
                detail: format!("requires {feature}, which this build does not have"),
            };
        }
    }
    let change = &case.change;
    let op = change["op"].as_str().unwrap();
    let mut env = copy_of(base, op == "restore_older_copy").await;
    let on_bundle = case.expect.verifier == "verify-bundle";
    // The pristine export: what forgeries start from, and where kept checkpoints come from.
    let pristine_file = env.path().join("pristine.ndjson");
    let mut retired = None;
    if op == "rotate_and_resign_with_retired" {
        match rotate(&env, change["then_append"].as_u64().unwrap_or(0)).await {
            Ok(k) => retired = Some(k),
            Err(got) => return got,
        }
    }
    let pristine = export(&env, &pristine_file, &Value::Null).expect("the pristine ledger exports");
    // A ledger sharing the signing key, for the cases that swap something between the two.
    let mut other = None;
    if op == "other_ledger" {
        other = Some(other_ledger_sharing_the_key(&env).await);
    }
    match op {
        "sql" => run_sql(&env, &sql_statements(change, env.backend)).await,
        "restore_erased_key" => restore_erased_keys(base, &env).await,
        "rotate_and_resign_with_retired" if !on_bundle && change["resign"] != false => {
            // The retired key's forgery written into the database.
            let mut parsed = forge::ParsedBundle::parse(&pristine);
            let from = rotation_index(&parsed) + 1;
            forge::resign_from(&mut parsed.ledger, from, retired.as_ref().unwrap());
            run_sql(&env, &forged_sql(&parsed.ledger, from, env.backend, false)).await;
        }
        "other_ledger" if change["use"] == "database" => {
            // The whole database of the other ledger, under this ledger's keys directory.
            let (other_env, _) = other.as_ref().unwrap();
            match &other_env.pg {
                None => {
                    std::fs::remove_dir_all(env.path().join("data")).unwrap();
                    let status = std::process::Command::new("cp")
                        .arg("-a")
                        .arg(other_env.path().join("data"))
                        .arg(env.path())
                        .status()
                        .unwrap();
                    assert!(status.success());
                }
                Some(pg) => env.pg = Some(pg_copy(&pg.name, "o").await),
            }
        }
        "forge" if !on_bundle => {
            let mut parsed = forge::ParsedBundle::parse(&pristine);
            let seq = change["seq"].as_u64().unwrap();
            forge(&mut parsed, seq, &change["set"], &signing_key(env.path()));
            let keep_tree = change["keep_tree"] == true;
            let sql = forged_sql(&parsed.ledger, seq as usize, env.backend, keep_tree);
            run_sql(&env, &sql).await;
            // The forgery must have landed, or an "ok" below would prove nothing.
            let after = export(&env, &env.path().join("forged.ndjson"), &Value::Null)
                .expect("the forged ledger exports");
            assert_eq!(
                forge::ParsedBundle::parse(&after).ledger.records,
                parsed.ledger.records,
                "{}: the forged rows are not what the database holds",
                case.name
            );
        }
        _ => {}
    }

    match case.expect.verifier.as_str() {
        "verify" => from_cli(env.cli(&["verify"])),
        "api" => {
            let (dir, url) = (
                env.path().to_owned(),
                env.pg.as_ref().map(|p| p.url.clone()),
            );
            let flags = serve_flags(&base.hook, case.run["witness_dir"] == true);
            // The harness panics if the server exits before listening: a refusal to start.
            let started = tokio::spawn(async move {
                let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
                Server::start_full(&dir, &flags, "warn", url.as_deref()).await
            })
            .await;
            let Ok(s) = started else {
                let log =
                    std::fs::read_to_string(env.path().join("server.log")).unwrap_or_default();
                return Got::unusable("server_refused", log);
            };
            let query = case.run["query"].as_str().unwrap_or("");
            let (status, _, body) = s.get(&format!("/v1/audit/verify{query}")).await;
            s.terminate().await;
            match status {
                StatusCode::OK if body["ok"] == true => Got {
                    outcome: "ok".to_owned(),
                    kind: None,
                    seq: None,
                    detail: body.to_string(),
                },
                StatusCode::OK => Got {
                    outcome: "tampered".to_owned(),
                    kind: body["first_failure"]["kind"].as_str().map(str::to_owned),
                    seq: body["first_failure"]["seq"].as_u64(),
                    detail: body.to_string(),
                },
                StatusCode::BAD_REQUEST => Got::unusable("bad_request", body.to_string()),
                other => Got::unusable("unusable", format!("HTTP {other}: {body}")),
            }
        }
        "verify-bundle" => {
            let file = env.path().join("case.ndjson");
            let mut text = match export(&env, &file, &case.run["export"]) {
                Ok(t) => t,
                Err(got) => return got,
            };
            match op {
                "forge" => {
                    let mut parsed = forge::ParsedBundle::parse(&text);
                    forge(
                        &mut parsed,
                        change["seq"].as_u64().unwrap(),
                        &change["set"],
                        &signing_key(env.path()),
                    );
                    text = parsed.text();
                    if let Some(then) = change["then"].as_array() {
                        text = edit_bundle(&text, then);
                    }
                }
                "bundle" => text = edit_bundle(&text, change["edits"].as_array().unwrap()),
                "other_ledger" => {
                    let other_text = &other.as_ref().unwrap().1;
                    let other_lines: Vec<String> = other_text.lines().map(str::to_owned).collect();
                    match change["use"].as_str().unwrap() {
                        // The other ledger's whole bundle, presented as this one's.
                        "bundle" => text.clone_from(other_text),
                        // One line of the other ledger in place of this one's.
                        "line" => {
                            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
                            let i = find_line(&lines, &change["line"]);
                            lines[i]
                                .clone_from(&other_lines[find_line(&other_lines, &change["line"])]);
                            text = lines.iter().flat_map(|l| [l.as_str(), "\n"]).collect();
                        }
                        other => panic!("unknown other_ledger use {other}"),
                    }
                }
                "rotate_and_resign_with_retired" if change["resign"] != false => {
                    let mut parsed = forge::ParsedBundle::parse(&text);
                    let rotation = rotation_index(&parsed);
                    forge::resign_from(&mut parsed.ledger, rotation + 1, retired.as_ref().unwrap());
                    text = parsed.text();
                }
                _ => {}
            }
            std::fs::write(&file, &text).unwrap();
            let mut args = vec![
                "verify-bundle".to_owned(),
                file.to_str().unwrap().to_owned(),
            ];
            let keys = case.run["public_keys"].as_str().unwrap_or("ledger");
            if keys != "bundle" {
                args.push("--public-key".to_owned());
                args.push(
                    env.path()
                        .join("keys/signing.pub")
                        .to_str()
                        .unwrap()
                        .to_owned(),
                );
            }
            if keys == "ledger_and_retired" {
                // The retired key with its exact range, as the keys directory records it.
                let id = retired.as_ref().unwrap().key_id();
                args.push("--public-key".to_owned());
                args.push(
                    env.path()
                        .join(format!("keys/retired/{id}.json"))
                        .to_str()
                        .unwrap()
                        .to_owned(),
                );
            }
            if keys == "ledger_and_retired_bare" {
                args.push("--public-key".to_owned());
                args.push(env.path().join("retired.pub").to_str().unwrap().to_owned());
            }
            if let Some(size) = case.run["trusted_checkpoint"].as_u64() {
                let line = pristine
                    .lines()
                    .map(object)
                    .find(|o| o["kind"] == "checkpoint" && o["tree_size"] == size)
                    .expect("the pristine ledger has that checkpoint");
                let mut cp = line;
                cp.remove("kind");
                let path = env.path().join("trusted.json");
                std::fs::write(&path, Value::Object(cp).to_string()).unwrap();
                args.push("--trusted-checkpoint".to_owned());
                args.push(path.to_str().unwrap().to_owned());
            }
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            from_cli(env.cli(&refs))
        }
        other => panic!("unknown verifier {other}"),
    }
}

/// Runs every case of `backends` against a base ledger on `backend`; fails listing each case
/// that did not get what it expects.
async fn run_all(backend: Backend, backends: &[&str], label: &str) {
    let base = base_ledger(backend).await;
    let mut report = Vec::new();
    let mut failed = Vec::new();
    for case in corpus()
        .into_iter()
        .filter(|c| backends.contains(&c.backend.as_str()))
    {
        let got = run_case(&base, &case).await;
        let e = &case.expect;
        let expected = format!(
            "{} {} {}",
            e.outcome,
            e.kind.as_deref().unwrap_or("-"),
            e.seq.map_or("-".to_owned(), |s| s.to_string())
        );
        let actual = format!(
            "{} {} {}",
            got.outcome,
            got.kind.as_deref().unwrap_or("-"),
            got.seq.map_or("-".to_owned(), |s| s.to_string())
        );
        let verdict = if got.outcome == "pending" {
            "PENDING"
        } else if got.matches(e) {
            "pass"
        } else {
            "FAIL"
        };
        let line = format!(
            "{verdict:7} {label}/{} [{}]: expected {expected}, got {actual}",
            case.name, e.verifier
        );
        println!("{line}");
        report.push(line.clone());
        if verdict != "pass" {
            let detail: String = got.detail.chars().take(300).collect();
            failed.push(format!("{line}\n        {detail}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} adversarial cases on {label} did not get what they expect:\n{}\n\nall cases:\n{}",
        failed.len(),
        report.len(),
        failed.join("\n"),
        report.join("\n")
    );
}

#[tokio::test]
async fn adversarial_cases_on_sqlite() {
    run_all(Backend::Sqlite, &["sqlite", "both"], "sqlite").await;
}

#[tokio::test]
async fn adversarial_cases_on_postgres() {
    run_all(Backend::Postgres, &["postgres", "both"], "postgres").await;
}

#[tokio::test]
async fn adversarial_bundle_cases() {
    run_all(Backend::Sqlite, &["bundle"], "bundle").await;
}
