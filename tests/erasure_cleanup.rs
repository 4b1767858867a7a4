//! Cleaning the live store after an erasure runs outside the writer, never stalls appends, is
//! retried until it succeeds (also at start-up after a crash), and shows its state; on
//! PostgreSQL every instance drops an erased subject's key from its cache within a stated bound.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(
    clippy::needless_pass_by_value,
    clippy::too_many_lines,
    reason = "test code"
)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use auditledger::crypto::KeyRef;
use auditledger::entry::SubjectHandle;
use common::{Backend, Env, metric, wait_until};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;

/// What "stays fast" means here: far below the 10 s a blocked checkpoint used to cost, far
/// above any commit on a loaded test machine. A correctness bound, not a benchmark.
const FAST: Duration = Duration::from_secs(2);
/// How long cleaning may take once nothing blocks it (retries back off to 5 s at most).
const CLEANED_WITHIN: Duration = Duration::from_secs(15);

fn subject_event(subject: &str, data: Value) -> Value {
    json!({"events": [{"type": "CustomerUpdated", "subject": subject, "data": data}]})
}

fn erase_body(subject: &str) -> String {
    json!({"subject": subject, "reason": "GDPR Art. 17(1)(a)", "request_ref": "DSR-7"}).to_string()
}

/// Every file under `dir` except the keys, as (path, bytes).
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().unwrap() != "keys" {
                out.extend(files_under(&path));
            }
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path.display().to_string(), bytes));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Files under `dir` holding `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    files_under(dir)
        .into_iter()
        .filter(|(_, bytes)| contains(bytes, needle))
        .map(|(p, _)| p)
        .collect()
}

/// The wrapped data key of the subject with `handle` (hex), as the vault table holds it.
async fn wrapped_key(env: &Env, handle: &str) -> Vec<u8> {
    let mut key_ref = vec![1u8];
    key_ref.extend(hex::decode(handle).unwrap());
    match &env.pg {
        None => {
            let db = common::raw_db(env.path()).await;
            let w = sqlx::query_scalar("SELECT wrapped FROM data_keys WHERE key_ref = ?")
                .bind(&key_ref)
                .fetch_one(&db)
                .await
                .unwrap();
            db.close().await;
            w
        }
        Some(pg) => {
            let mut conn = sqlx::PgConnection::connect(&pg.url).await.unwrap();
            let w = sqlx::query_scalar("SELECT wrapped FROM data_keys WHERE key_ref = $1")
                .bind(&key_ref)
                .fetch_one(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
            w
        }
    }
}

/// A connection of another process (a backup, a report, an operator's `sqlite3` session)
/// holding a read transaction open on the SQLite database. Read-only, so that closing it
/// never checkpoints the WAL itself.
async fn sqlite_reader(dir: &Path) -> sqlx::SqliteConnection {
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join("data/ledger.db"))
        .read_only(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM data_keys")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(
        n >= 2,
        "the reader sees the system key and the subject's key"
    );
    conn
}

async fn release_sqlite_reader(mut conn: sqlx::SqliteConnection) {
    sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

async fn uncleaned(env: &Env) -> i64 {
    env.sql_count("SELECT COUNT(*) FROM erased_subjects WHERE cleaned_at IS NULL")
        .await
}

fn server_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
}

#[tokio::test]
async fn a_long_sqlite_reader_neither_stalls_appends_nor_keeps_the_key_once_it_ends() {
    let env = Env::new(Backend::Sqlite).await;
    let s = env.serve(&[]).await;
    let (status, _) = s
        .append("crm", &subject_event("carol@example.com", json!({"x": 1})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let handle = s.all_events().await[0]["subject"]
        .as_str()
        .unwrap()
        .to_owned();
    let wrapped = wrapped_key(&env, &handle).await;

    let reader = sqlite_reader(env.path()).await;
    // The erasure and the append after it come back at commit speed, reader or not.
    let started = Instant::now();
    let (status, receipt) = s
        .post_raw("/v1/subjects/erase", erase_body("carol@example.com"))
        .await;
    let erase_took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{receipt}");
    assert!(
        erase_took < FAST,
        "the erasure took {erase_took:?} with a reader open"
    );
    for i in 0..5 {
        let started = Instant::now();
        let (status, _) = s
            .append("after", &common::one_event("After", json!({"i": i})))
            .await;
        let took = started.elapsed();
        assert_eq!(status, StatusCode::CREATED);
        assert!(took < FAST, "append {i} took {took:?} with a reader open");
    }

    // While the reader holds its snapshot, the WAL keeps the key and the erasure says so.
    wait_until(
        "the blocked cleanup to show in the log and the metrics",
        CLEANED_WITHIN,
        async || {
            let text = s.metrics().await;
            metric(&text, "auditledger_erasure_cleanup_blocked_total").unwrap_or(0) >= 1
                && server_log(env.path()).contains("cleanup")
        },
    )
    .await;
    let text = s.metrics().await;
    assert_eq!(
        metric(&text, "auditledger_erasure_cleanup_pending"),
        Some(1),
        "{text}"
    );
    assert!(
        contains(
            &std::fs::read(env.path().join("data/ledger.db-wal")).unwrap(),
            &wrapped
        ),
        "the WAL still holds the wrapped key while the reader is open"
    );
    assert_eq!(uncleaned(&env).await, 1, "not marked cleaned while blocked");

    // The reader ends: soon the WAL is truncated, no file holds the key, and it is recorded.
    release_sqlite_reader(reader).await;
    wait_until(
        "the erasure to be marked cleaned",
        CLEANED_WITHIN,
        async || uncleaned(&env).await == 0,
    )
    .await;
    assert_eq!(
        files_holding(env.path(), &wrapped),
        Vec::<String>::new(),
        "the wrapped key is gone from every file"
    );
    let cleaned_at = env
        .sql_count("SELECT cleaned_at FROM erased_subjects")
        .await;
    let erased_at = env.sql_count("SELECT erased_at FROM erased_subjects").await;
    assert!(cleaned_at >= erased_at);
    let text = s.metrics().await;
    assert_eq!(
        metric(&text, "auditledger_erasure_cleanup_pending"),
        Some(0),
        "{text}"
    );
    s.terminate().await;
}

#[tokio::test]
async fn a_crash_between_the_erasure_commit_and_the_cleanup_is_repaired_at_start() {
    let env = Env::new(Backend::Sqlite).await;
    let s = env.serve(&[]).await;
    s.append("crm", &subject_event("dave@example.com", json!({"x": 1})))
        .await;
    let handle = s.all_events().await[0]["subject"]
        .as_str()
        .unwrap()
        .to_owned();
    let wrapped = wrapped_key(&env, &handle).await;
    // A reader keeps the cleanup from finishing; the server dies right after the commit.
    let reader = sqlite_reader(env.path()).await;
    let (status, _) = s
        .post_raw("/v1/subjects/erase", erase_body("dave@example.com"))
        .await;
    assert_eq!(status, StatusCode::OK);
    s.kill9().await;
    release_sqlite_reader(reader).await;
    assert!(
        !files_holding(env.path(), &wrapped).is_empty(),
        "precondition: the crash left the wrapped key in the WAL"
    );

    // At start the cleaner finds the uncleaned erasure and truncates the WAL.
    let s = env.serve(&[]).await;
    wait_until(
        "the restarted server to clean after the interrupted erasure",
        CLEANED_WITHIN,
        async || files_holding(env.path(), &wrapped).is_empty(),
    )
    .await;
    wait_until(
        "the erasure to be marked cleaned",
        CLEANED_WITHIN,
        async || uncleaned(&env).await == 0,
    )
    .await;
    s.terminate().await;
}

#[tokio::test]
async fn an_old_postgres_snapshot_holds_the_cleanup_back_until_it_ends() {
    let env = Env::new(Backend::Postgres).await;
    let s = env.serve(&[]).await;
    s.append("crm", &subject_event("erin@example.com", json!({"x": 1})))
        .await;
    // A session that began before the erasure can still see the key's row.
    let url = &env.pg.as_ref().unwrap().url;
    let mut old = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut old)
        .await
        .unwrap();
    sqlx::query("SELECT 1 FROM data_keys LIMIT 1")
        .execute(&mut old)
        .await
        .unwrap();

    let started = Instant::now();
    let (status, receipt) = s
        .post_raw("/v1/subjects/erase", erase_body("erin@example.com"))
        .await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    assert!(started.elapsed() < FAST);
    assert_eq!(
        env.sql_count("SELECT COUNT(*) FROM erased_subjects WHERE cleanup_xid IS NOT NULL")
            .await,
        1,
        "the erasure records its transaction id"
    );
    wait_until(
        "the blocked cleanup to be logged and counted",
        CLEANED_WITHIN,
        async || {
            metric(
                &s.metrics().await,
                "auditledger_erasure_cleanup_blocked_total",
            )
            .unwrap_or(0)
                >= 1
                && server_log(env.path()).contains("cleanup")
        },
    )
    .await;
    let log = server_log(env.path());
    assert!(
        log.contains("pid"),
        "the warning names the blocking backend: {log}"
    );
    assert_eq!(
        uncleaned(&env).await,
        1,
        "not cleaned while the snapshot lives"
    );

    sqlx::query("COMMIT").execute(&mut old).await.unwrap();
    old.close().await.unwrap();
    wait_until(
        "the erasure to be marked cleaned",
        CLEANED_WITHIN,
        async || uncleaned(&env).await == 0,
    )
    .await;
    assert_eq!(
        metric(&s.metrics().await, "auditledger_erasure_cleanup_pending"),
        Some(0)
    );
    s.terminate().await;
}

/// Copies a keys directory (every file, whatever its layout), as instances behind one load
/// balancer share their keys.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

async fn start_instance(dir: &Path, database_url: &str) -> auditledger::cli::Service {
    let mut config = auditledger::config::ServeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.join("data"),
        dir.join("keys"),
    );
    config.dirs.database_url = Some(database_url.to_owned());
    // In-process instances: no token to make beside them; this test is about key caches.
    config.insecure_no_auth = true;
    auditledger::cli::Service::start(&config).await.unwrap()
}

/// Both instances run in this process, so the test can look into the second one's key cache.
#[tokio::test]
async fn every_postgres_instance_drops_an_erased_key_within_the_stated_bound() {
    let pg = common::PgDb::create().await;
    let first_dir = common::workdir();
    let first = start_instance(first_dir.path(), &pg.url).await;
    let second_dir = common::workdir();
    copy_dir(
        &first_dir.path().join("keys"),
        &second_dir.path().join("keys"),
    );
    let second = start_instance(second_dir.path(), &pg.url).await;
    let client = common::client_with(None);

    let bound = Duration::from_millis(auditledger::ledger::CACHES_CLEARED_WITHIN_MS);
    for (round, subject) in ["xena@example.com", "yves@example.com"]
        .into_iter()
        .enumerate()
    {
        let r = client
            .post(format!("http://{}/v1/streams/crm/events", first.addr))
            .json(&subject_event(subject, json!({"round": round})))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let seq = r.json::<Value>().await.unwrap()["first_seq"]
            .as_u64()
            .unwrap();
        // The second instance reads the subject's event, and so holds its key.
        let page: Value = client
            .get(format!(
                "http://{}/v1/events?from_seq={seq}&limit=1",
                second.addr
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let event = &page["events"][0];
        assert_eq!(event["data"]["round"], round);
        let handle = SubjectHandle::from_hex(event["subject"].as_str().unwrap()).unwrap();
        let key = KeyRef::Subject(handle);
        assert!(second.app.ledger.vault().is_cached(&key));

        if round == 1 {
            // The notification channel is lost: the poll still forgets within the bound.
            let mut admin = sqlx::PgConnection::connect(&pg.url).await.unwrap();
            let cut: i64 = sqlx::query_scalar(
                "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
            )
            .fetch_one(&mut admin)
            .await
            .unwrap();
            assert!(cut >= 2, "each instance listens ({cut} listeners cut)");
            admin.close().await.unwrap();
        }

        // The first instance erases the subject...
        let r = client
            .post(format!("http://{}/v1/subjects/erase", first.addr))
            .header("content-type", "application/json")
            .body(erase_body(subject))
            .send()
            .await
            .unwrap();
        let acknowledged = Instant::now();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(!first.app.ledger.vault().is_cached(&key));
        // ...and within the bound the second no longer holds the key.
        while second.app.ledger.vault().is_cached(&key) {
            assert!(
                acknowledged.elapsed() < bound,
                "round {round}: the second instance still holds the erased key after {:?}",
                acknowledged.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let page: Value = client
            .get(format!(
                "http://{}/v1/events?from_seq={seq}&limit=1",
                second.addr
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(page["events"][0]["erased"], true);
        assert!(!second.app.ledger.vault().is_cached(&key));
    }
    first.stop().await.unwrap();
    second.stop().await.unwrap();
}

/// The writer remembers the keys a batch created when it answers the batch's callers, which,
/// with batches pipelined, can be well after the commit: time enough for another instance to
/// erase the new subject and for this one to forget its key. Remembering it then must not put
/// the erased key back (nothing would ever forget it again).
#[tokio::test]
async fn a_key_remembered_after_its_subject_was_erased_stays_forgotten() {
    let dir = common::workdir();
    let mut config = auditledger::config::ServeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("data"),
        dir.path().join("keys"),
    );
    config.insecure_no_auth = true;
    let s = auditledger::cli::Service::start(&config).await.unwrap();
    let client = common::client_with(None);
    let r = client
        .post(format!("http://{}/v1/streams/crm/events", s.addr))
        .json(&subject_event("zoe@example.com", json!({"n": 1})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let page: Value = client
        .get(format!("http://{}/v1/events?from_seq=0&limit=1", s.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let handle = SubjectHandle::from_hex(page["events"][0]["subject"].as_str().unwrap()).unwrap();
    let key = KeyRef::Subject(handle);
    let r = client
        .post(format!("http://{}/v1/subjects/erase", s.addr))
        .header("content-type", "application/json")
        .body(erase_body("zoe@example.com"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let vault = s.app.ledger.vault();
    assert!(vault.is_destroyed(&key));
    // The late remember of the batch that created the subject.
    vault.remember(
        key,
        std::sync::Arc::new(auditledger::crypto::DataKey::generate()),
    );
    assert!(
        !vault.is_cached(&key),
        "an erased subject's key is back in memory"
    );
    s.stop().await.unwrap();
}
