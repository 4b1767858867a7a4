//! Rollback protection that does not depend on the witness kind: the service remembers in its
//! keys directory what it last published, and at start refuses a database that is behind it or
//! differs from it, recomputing the root from the entries rather than trusting stored nodes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::too_many_lines, reason = "test code")]

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, Env, PgDb, Server, one_event, wait_until};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

async fn fill(s: &Server, tag: &str, n: usize) {
    for i in 0..n {
        let (status, body) = s
            .append(
                &format!("{tag}-{}", i % 2),
                &one_event(tag, json!({"i": i})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
}

/// A webhook witness on loopback that keeps what it is sent.
async fn webhook() -> (String, Arc<Mutex<Vec<Value>>>) {
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let sink = Arc::clone(&sink);
            async move {
                sink.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (hook, received)
}

/// A copy of a stopped ledger's database: an old backup, to be restored later.
enum Backup {
    Sqlite(Vec<u8>),
    Postgres(PgDb),
}

async fn back_up(env: &Env) -> Backup {
    match &env.pg {
        None => Backup::Sqlite(std::fs::read(env.path().join("data/ledger.db")).unwrap()),
        Some(pg) => {
            use sqlx::Connection;
            let copy = PgDb::create().await;
            let mut admin = sqlx::PgConnection::connect(&common::postgres_admin_url())
                .await
                .unwrap();
            for sql in [
                format!("DROP DATABASE {}", copy.name),
                format!("CREATE DATABASE {} TEMPLATE {}", copy.name, pg.name),
            ] {
                sqlx::query(&sql).execute(&mut admin).await.unwrap();
            }
            admin.close().await.unwrap();
            Backup::Postgres(copy)
        }
    }
}

/// Puts a backup in place of the (stopped) ledger's database.
fn restore(env: &mut Env, backup: Backup) {
    match backup {
        Backup::Sqlite(bytes) => {
            let db = env.path().join("data/ledger.db");
            for stale in ["data/ledger.db-wal", "data/ledger.db-shm"] {
                let _ = std::fs::remove_file(env.path().join(stale));
            }
            std::fs::write(db, bytes).unwrap();
        }
        Backup::Postgres(copy) => env.pg = Some(copy),
    }
}

/// Runs `serve` and requires it to refuse to start; returns what it said. A server that
/// starts listening instead fails the test at once.
async fn serve_refuses(env: &Env, flags: &[&str]) -> String {
    let mut command = tokio::process::Command::new(common::BIN);
    command
        .args(["serve", "--bind", "127.0.0.1:0"])
        .args(flags)
        .current_dir(env.path())
        .env("RUST_LOG", "warn")
        .env_remove("AUDITLEDGER_DATA_DIR")
        .env_remove("AUDITLEDGER_KEYS_DIR")
        .env_remove("DATABASE_URL");
    if let Some(pg) = &env.pg {
        command.env("DATABASE_URL", &pg.url);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = child.stderr.take().unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            assert!(
                !line.starts_with("auditledger listening"),
                "the server started on a database it should have refused: {line}"
            );
        }
        let status = child.wait().await.unwrap();
        let mut err = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut err)
            .await
            .unwrap();
        assert_eq!(status.code(), Some(2), "{err}");
        err
    })
    .await
    .expect("serve neither refused nor started within 60 s")
}

fn published_state(env: &Env) -> Value {
    serde_json::from_str(&std::fs::read_to_string(env.path().join("keys/published.json")).unwrap())
        .unwrap()
}

async fn a_database_restored_from_an_older_copy_is_refused_with_only_a_webhook_witness(b: Backend) {
    let (hook, received) = webhook().await;
    let published = |size: u64| {
        let received = Arc::clone(&received);
        async move || {
            received
                .lock()
                .unwrap()
                .iter()
                .any(|p| p["checkpoint"]["tree_size"] == size)
        }
    };
    let flags = ["--witness-webhook", hook.as_str()];
    let mut env = Env::new(b).await;
    let s = env.serve(&flags).await;
    fill(&s, "old", 5).await;
    s.post_raw("/v1/checkpoints", "").await;
    wait_until(
        "the publication of checkpoint 5",
        Duration::from_secs(10),
        published(5),
    )
    .await;
    s.terminate().await;
    let backup = back_up(&env).await;

    let s = env.serve(&flags).await;
    fill(&s, "new", 5).await;
    s.post_raw("/v1/checkpoints", "").await;
    wait_until(
        "the publication of checkpoint 10",
        Duration::from_secs(10),
        published(10),
    )
    .await;
    let (_, _, latest) = s.get("/v1/checkpoints/latest").await;
    s.terminate().await;
    // What was published is remembered outside the database, as the checkpoint's JSON.
    assert_eq!(published_state(&env), latest);
    let current = back_up(&env).await;

    restore(&mut env, backup);
    let err = serve_refuses(&env, &flags).await;
    assert!(
        err.contains("the database holds 5 entries, but checkpoint 10")
            && err.contains("truncated or restored from an older copy")
            && err.contains("published.json"),
        "{err}"
    );
    // The memory is the service's, not the witness's: without any witness flag, the same.
    let err = serve_refuses(&env, &[]).await;
    assert!(
        err.contains("truncated or restored from an older copy"),
        "{err}"
    );
    // Nothing was published from the old copy.
    assert!(
        !received
            .lock()
            .unwrap()
            .iter()
            .any(|p| p["checkpoint"]["tree_size"] == 6)
    );

    // The database the service last published from is served again, and publications go on
    // proving consistency with the last one.
    restore(&mut env, current);
    let s = env.serve(&flags).await;
    fill(&s, "more", 2).await;
    s.post_raw("/v1/checkpoints", "").await;
    wait_until(
        "the publication of checkpoint 12",
        Duration::from_secs(10),
        published(12),
    )
    .await;
    let last = received.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last["previous"]["tree_size"], 10, "{last}");
    s.terminate().await;

    // A record that cannot be read is not taken as "nothing was published".
    std::fs::write(env.path().join("keys/published.json"), "{\"tree_size\":").unwrap();
    let err = serve_refuses(&env, &[]).await;
    assert!(err.contains("published.json is not a checkpoint"), "{err}");
}

/// The hash of a stored Merkle node (a perfect subtree of height `level` >= 1).
async fn stored_node(env: &Env, level: i64, idx: i64) -> Vec<u8> {
    let sql = "SELECT hash FROM merkle_nodes WHERE level = $1 AND idx = $2";
    match &env.pg {
        None => {
            let db = common::raw_db(env.path()).await;
            let hash: Vec<u8> = sqlx::query_scalar(sql)
                .bind(level)
                .bind(idx)
                .fetch_one(&db)
                .await
                .unwrap();
            db.close().await;
            hash
        }
        Some(pg) => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&pg.url).await.unwrap();
            let hash: Vec<u8> = sqlx::query_scalar(sql)
                .bind(level)
                .bind(idx)
                .fetch_one(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
            hash
        }
    }
}

async fn the_start_check_recomputes_the_root_from_the_entries_not_the_stored_nodes(b: Backend) {
    let mut env = Env::new(b).await;
    let witness = env.path().join("witness");
    let flags = ["--witness-dir", witness.to_str().unwrap()];
    let s = env.serve(&flags).await;
    fill(&s, "a", 4).await;
    s.terminate().await;
    let at_four = back_up(&env).await;
    let s = env.serve(&flags).await;
    fill(&s, "a", 4).await;
    s.post_raw("/v1/checkpoints", "").await;
    let latest = witness.join("latest.json");
    wait_until(
        "the publication of checkpoint 8",
        Duration::from_secs(10),
        async || {
            let published: Value = std::fs::read_to_string(&latest)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            published["checkpoint"]["tree_size"] == 8
        },
    )
    .await;
    s.terminate().await;
    // The root of the 8 published entries, as the stored node covering them holds it.
    let published_root = stored_node(&env, 3, 0).await;

    // A fork: the copy taken at 4 entries, continued with 6 others. This test is about the
    // directory witness's check, so the service's own memory of it goes (an operator who can
    // restore a database may be able to delete a file too; the witness directory is the copy
    // out of their reach).
    restore(&mut env, at_four);
    let _ = std::fs::remove_file(env.path().join("keys/published.json"));
    let s = env.serve(&[]).await;
    fill(&s, "b", 6).await;
    s.terminate().await;
    let err = serve_refuses(&env, &flags).await;
    assert!(err.contains("history was rewritten"), "{err}");

    // The stored node rewritten to the published root: the nodes now agree with the witness,
    // the entries do not.
    let hex = hex::encode(&published_root);
    match b {
        Backend::Sqlite => {
            env.sql(&[&format!(
                "UPDATE merkle_nodes SET hash = x'{hex}' WHERE level = 3 AND idx = 0"
            )])
            .await;
        }
        Backend::Postgres => {
            env.sql(&[&format!(
                "UPDATE merkle_nodes SET hash = decode('{hex}', 'hex') WHERE level = 3 AND idx = 0"
            )])
            .await;
        }
    }
    assert_eq!(stored_node(&env, 3, 0).await, published_root);
    let err = serve_refuses(&env, &flags).await;
    assert!(
        err.contains("the first 8 entries of the database hash to root")
            && err.contains("history was rewritten"),
        "{err}"
    );
}

on_both_backends!(
    a_database_restored_from_an_older_copy_is_refused_with_only_a_webhook_witness,
    the_start_check_recomputes_the_root_from_the_entries_not_the_stored_nodes,
);
