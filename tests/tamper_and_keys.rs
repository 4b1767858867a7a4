//! Tampering with the database by plain SQL is found by `verify`, named by seq and kind; key
//! files that are missing, damaged or wrong stop the service with a clear message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(
    clippy::cast_possible_truncation,
    clippy::needless_pass_by_value,
    clippy::too_many_lines,
    reason = "test code"
)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Server, one_event, raw_db, run_cli, workdir};
use serde_json::json;

async fn ledger_of(n: u64) -> tempfile::TempDir {
    let dir = workdir();
    let s = Server::start(dir.path(), &[]).await;
    for i in 0..n {
        s.append(&format!("s-{}", i % 3), &one_event("E", json!({"i": i})))
            .await;
    }
    assert!(s.terminate().await.success());
    dir
}

async fn tamper(dir: &std::path::Path, sql: &[&str]) {
    let db = raw_db(dir).await;
    // An attacker with file access can drop the append-only triggers first.
    sqlx::query("DROP TRIGGER entries_no_update")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("DROP TRIGGER entries_no_delete")
        .execute(&db)
        .await
        .unwrap();
    for s in sql {
        sqlx::query(s).execute(&db).await.unwrap();
    }
    db.close().await;
}

fn verify_fails_at(dir: &std::path::Path, seq: u64, kind: &str) {
    let (code, out, err) = run_cli(dir, &["verify"]);
    assert_eq!(code, 1, "verify must exit 1 on tampering: {out}{err}");
    assert!(
        out.contains(&format!("FAILED at seq {seq}: {kind}")),
        "expected failure at seq {seq} ({kind}), got: {out}"
    );
}

#[tokio::test]
async fn the_database_itself_refuses_updates_and_deletes_of_entries() {
    let dir = ledger_of(3).await;
    let db = raw_db(dir.path()).await;
    let upd = sqlx::query("UPDATE entries SET stream_version = 9 WHERE seq = 1")
        .execute(&db)
        .await;
    assert!(upd.unwrap_err().to_string().contains("append-only"));
    let del = sqlx::query("DELETE FROM entries WHERE seq = 1")
        .execute(&db)
        .await;
    assert!(del.unwrap_err().to_string().contains("append-only"));
}

#[tokio::test]
async fn editing_one_header_column_makes_verify_name_that_seq() {
    let dir = ledger_of(10).await;
    assert_eq!(run_cli(dir.path(), &["verify"]).0, 0);
    tamper(
        dir.path(),
        &["UPDATE entries SET event_type = 'Forged' WHERE seq = 4"],
    )
    .await;
    verify_fails_at(dir.path(), 4, "entry_hash_mismatch");
}

#[tokio::test]
async fn editing_metadata_or_time_makes_verify_fail() {
    let dir = ledger_of(6).await;
    tamper(
        dir.path(),
        &["UPDATE entries SET recorded_at = recorded_at + 1 WHERE seq = 2"],
    )
    .await;
    verify_fails_at(dir.path(), 2, "entry_hash_mismatch");
    let dir = ledger_of(6).await;
    tamper(
        dir.path(),
        &[r#"UPDATE entries SET metadata = '{"x":"y"}' WHERE seq = 5"#],
    )
    .await;
    verify_fails_at(dir.path(), 5, "entry_hash_mismatch");
}

#[tokio::test]
async fn editing_a_payload_makes_verify_name_that_seq() {
    let dir = ledger_of(5).await;
    tamper(
        dir.path(),
        &["UPDATE entries SET payload = substr(payload, 1, 40) || CASE WHEN substr(payload, 41, 1) = x'00' THEN x'01' ELSE x'00' END || substr(payload, 42) WHERE seq = 3"],
    )
    .await;
    verify_fails_at(dir.path(), 3, "payload_digest_mismatch");
}

#[tokio::test]
async fn deleting_a_row_makes_verify_name_the_gap() {
    let dir = ledger_of(8).await;
    tamper(dir.path(), &["DELETE FROM entries WHERE seq = 5"]).await;
    verify_fails_at(dir.path(), 5, "seq_mismatch");
}

#[tokio::test]
async fn a_signature_copied_from_another_entry_is_found() {
    let dir = ledger_of(5).await;
    tamper(
        dir.path(),
        &["UPDATE entries SET signature = (SELECT signature FROM entries WHERE seq = 1) WHERE seq = 2"],
    )
    .await;
    verify_fails_at(dir.path(), 2, "bad_signature");
}

#[tokio::test]
async fn a_rehashed_forgery_without_the_signing_key_is_found() {
    // The attacker changes a field and stores a matching entry_hash they cannot sign.
    let dir = ledger_of(4).await;
    tamper(
        dir.path(),
        &["UPDATE entries SET entry_hash = zeroblob(32) WHERE seq = 1"],
    )
    .await;
    verify_fails_at(dir.path(), 1, "entry_hash_mismatch");
    let dir = ledger_of(4).await;
    tamper(
        dir.path(),
        &["UPDATE entries SET key_id = 'zz' WHERE seq = 0"],
    )
    .await;
    verify_fails_at(dir.path(), 0, "malformed_record");
}

#[tokio::test]
async fn verify_with_only_the_public_key_works_and_a_foreign_key_is_untrusted() {
    let dir = ledger_of(3).await;
    // An auditor holding only signing.pub.
    let auditor = workdir();
    std::fs::create_dir(auditor.path().join("keys")).unwrap();
    std::fs::copy(
        dir.path().join("keys/signing.pub"),
        auditor.path().join("keys/signing.pub"),
    )
    .unwrap();
    let data = dir.path().join("data");
    let keys = auditor.path().join("keys");
    let (code, out, _) = run_cli(
        auditor.path(),
        &[
            "verify",
            "--data-dir",
            data.to_str().unwrap(),
            "--keys-dir",
            keys.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    // Someone else's key does not verify this ledger.
    let other = workdir();
    run_cli(other.path(), &["keygen", "--keys-dir", "k"]);
    let (code, out, _) = run_cli(
        other.path(),
        &[
            "verify",
            "--data-dir",
            data.to_str().unwrap(),
            "--keys-dir",
            "k",
        ],
    );
    assert_eq!(code, 1);
    assert!(out.contains("FAILED at seq 0: unknown_key"), "{out}");
}

#[tokio::test]
async fn serve_creates_private_keys_and_keygen_refuses_to_overwrite_them() {
    let dir = ledger_of(1).await;
    for f in ["signing.key", "epochs/1.kek", "index.key"] {
        let mode = std::fs::metadata(dir.path().join("keys").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let before = std::fs::read(dir.path().join("keys/epochs/1.kek")).unwrap();
    let (code, _, err) = run_cli(dir.path(), &["keygen"]);
    assert_ne!(code, 0);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join("keys/epochs/1.kek")).unwrap(),
        before
    );
    let fresh = workdir();
    let (code, out, _) = run_cli(fresh.path(), &["keygen", "--keys-dir", "mykeys"]);
    assert_eq!(code, 0);
    assert!(out.contains("mykeys"));
    assert!(fresh.path().join("mykeys/signing.key").exists());
}

fn serve_fails(dir: &std::path::Path, mention: &str) {
    let (code, out, err) = run_cli(dir, &["serve", "--bind", "127.0.0.1:0"]);
    assert_ne!(code, 0, "serve must refuse to start: {out}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains(mention),
        "error should mention {mention:?}: {err}"
    );
}

#[tokio::test]
async fn missing_damaged_or_wrong_keys_stop_the_service_with_a_clear_message() {
    let dir = ledger_of(2).await;
    let kek = dir.path().join("keys/epochs/1.kek");
    let saved = std::fs::read(&kek).unwrap();

    std::fs::remove_file(&kek).unwrap();
    serve_fails(dir.path(), "epochs/1.kek");

    std::fs::write(&kek, "not a key\n").unwrap();
    serve_fails(dir.path(), "malformed");

    // A well-formed but different KEK: refused at start, before anything is written.
    std::fs::write(&kek, format!("{}\n", "ab".repeat(32))).unwrap();
    let size_before = std::fs::metadata(dir.path().join("data/ledger.db"))
        .unwrap()
        .len();
    serve_fails(
        dir.path(),
        "is not the KEK the database recorded for epoch 1",
    );
    assert_eq!(
        std::fs::metadata(dir.path().join("data/ledger.db"))
            .unwrap()
            .len(),
        size_before
    );

    std::fs::write(&kek, &saved).unwrap();
    std::fs::set_permissions(
        dir.path().join("keys/signing.key"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    // Root reads files whatever their mode, so only check the message when access really fails.
    if std::fs::read(dir.path().join("keys/signing.key")).is_err() {
        serve_fails(dir.path(), "signing.key");
    }
    std::fs::set_permissions(
        dir.path().join("keys/signing.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let s = Server::start(dir.path(), &[]).await;
    assert_eq!(s.all_events().await.len(), 2);
    s.terminate().await;
}

#[tokio::test]
async fn verify_explains_unusable_input_with_exit_code_2() {
    let dir = workdir();
    let (code, _, err) = run_cli(dir.path(), &["verify"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no trusted public key") || err.contains("no ledger"),
        "{err}"
    );
}
