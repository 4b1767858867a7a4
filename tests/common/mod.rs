//! Test harness: the real `auditledger` binary, started on port 0 in a fresh directory of its
//! own, driven over HTTP.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::needless_pass_by_value, reason = "test code")]

pub mod sse;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_auditledger");

/// A running server process.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub dir: PathBuf,
    /// Sends the harness's token (every role) with every request, unless the server runs with
    /// `--insecure-no-auth`.
    pub client: reqwest::Client,
    /// That token.
    pub token: Option<String>,
}

/// Every role: what the harness's own token holds.
pub const ALL_ROLES: &str = "writer,reader,auditor,privacy_officer,admin";

/// A token made with `auditledger token create` beside the running server in `dir` (same
/// `--data-dir` and database as `extra` and `database_url` name).
pub fn create_token(
    dir: &Path,
    extra: &[&str],
    database_url: Option<&str>,
    roles: &str,
    more: &[&str],
) -> String {
    let mut args = vec!["token", "create", "--role", roles];
    if let Some(i) = extra.iter().position(|a| *a == "--data-dir") {
        args.extend(["--data-dir", extra[i + 1]]);
    }
    args.extend(more);
    let mut command = std::process::Command::new(BIN);
    command
        .args(&args)
        .current_dir(dir)
        .env_remove("AUDITLEDGER_DATA_DIR")
        .env_remove("DATABASE_URL");
    if let Some(url) = database_url {
        command.env("DATABASE_URL", url);
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "token create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The harness's all-roles token for the ledger in `dir`, made once and kept in the
/// directory (a restarted server, or a second instance on the same database, reuses it).
fn harness_token(dir: &Path, extra: &[&str], database_url: Option<&str>) -> String {
    let file = dir.join(match database_url {
        Some(url) => format!(
            "harness-{}.token",
            url.len() + url.bytes().map(usize::from).sum::<usize>()
        ),
        None => "harness.token".to_owned(),
    });
    if let Ok(t) = std::fs::read_to_string(&file) {
        return t;
    }
    let token = create_token(
        dir,
        extra,
        database_url,
        ALL_ROLES,
        &["--name", "test-harness"],
    );
    std::fs::write(&file, &token).unwrap();
    token
}

/// A client that sends `token` with every request.
pub fn client_with(token: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
    }
    // A server that stops answering fails the test instead of stalling CI.
    // Idle connections are dropped before the server's header deadline (10 s) closes
    // them, as a well-behaved client does, so no request races a closing connection.
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .pool_idle_timeout(Duration::from_secs(5))
        .default_headers(headers)
        .build()
        .unwrap()
}

/// A fresh working directory for one test.
pub fn workdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("auditledger-test-")
        .tempdir()
        .unwrap()
}

impl Server {
    /// Starts `auditledger serve --bind 127.0.0.1:0` in `dir`, plus `extra` flags.
    pub async fn start(dir: &Path, extra: &[&str]) -> Server {
        Server::start_with_log(dir, extra, "warn").await
    }

    /// As `start`, logging at `level` into `dir/server.log`.
    pub async fn start_with_log(dir: &Path, extra: &[&str], level: &str) -> Server {
        Server::start_full(dir, extra, level, None).await
    }

    /// As `start`, on PostgreSQL when `database_url` is given.
    pub async fn start_full(
        dir: &Path,
        extra: &[&str],
        level: &str,
        database_url: Option<&str>,
    ) -> Server {
        // Tests of access control pass `--auth`: the server then requires tokens, and the
        // harness makes one with every role. Every other test is about the ledger itself and
        // runs with `--insecure-no-auth` (whose access entries name `anonymous`), so that its
        // seqs are those of its own requests.
        let secured = extra.contains(&"--auth");
        let mut flags: Vec<&str> = extra.iter().copied().filter(|a| *a != "--auth").collect();
        if !secured {
            flags.push("--insecure-no-auth");
        }
        let extra = &flags[..];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .unwrap();
        // The harness's token is made before the server starts, so that the server records
        // its creation at start-up (seq 0 of a new ledger), never in the middle of a test.
        let token = (!extra.contains(&"--insecure-no-auth"))
            .then(|| harness_token(dir, extra, database_url));
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .args(["--bind", "127.0.0.1:0"])
            .args(extra)
            .current_dir(dir)
            .env("RUST_LOG", level)
            .env_remove("AUDITLEDGER_DATA_DIR")
            .env_remove("AUDITLEDGER_KEYS_DIR")
            .env_remove("DATABASE_URL");
        if let Some(url) = database_url {
            command.env("DATABASE_URL", url);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.strip_prefix("auditledger listening on http://") {
                    return rest.split_whitespace().next().unwrap().to_owned();
                }
            }
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            panic!("server exited before listening; log:\n{log}");
        })
        .await
        .expect("server did not start within 30 s");
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Server {
            child,
            base: format!("http://{addr}"),
            dir: dir.to_owned(),
            client: client_with(token.as_deref()),
            token,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// POSTs a JSON body to a stream; returns status and parsed body.
    pub async fn append(&self, stream: &str, body: &Value) -> (StatusCode, Value) {
        self.post_raw(&format!("/v1/streams/{stream}/events"), body.to_string())
            .await
    }

    /// POSTs raw bytes; returns status and parsed body (Null if not JSON).
    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let r = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Sends `method` to a path with an optional JSON body; returns status and parsed body
    /// (Null if not JSON).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.client.request(method, self.url(path));
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = r.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// GETs a path; returns status, content type and parsed body.
    pub async fn get(&self, path: &str) -> (StatusCode, String, Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, ct, r.json().await.unwrap_or(Value::Null))
    }

    /// Every event of the global log, paging through it, but the access entries (which
    /// reading personal data itself appends, so that two reads of the same ledger would
    /// otherwise differ).
    pub async fn all_events(&self) -> Vec<Value> {
        self.all_entries()
            .await
            .into_iter()
            .filter(|e| e["stream_id"] != "auditledger:access")
            .collect()
    }

    /// Every entry of the global log, access entries included.
    pub async fn all_entries(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut from = 0;
        loop {
            let (status, _, page) = self
                .get(&format!("/v1/events?from_seq={from}&limit=1000"))
                .await;
            assert_eq!(status, StatusCode::OK, "{page}");
            out.extend(page["events"].as_array().unwrap().iter().cloned());
            match page["next_from_seq"].as_u64() {
                Some(n) => from = n,
                None => return out,
            }
        }
    }

    /// Waits (at most 60 s) until `stream` holds at least `n` events: tests that interrupt a
    /// load wait for real progress instead of sleeping a guessed time, which a loaded CI
    /// machine can make too short.
    pub async fn wait_for_stream(&self, stream: &str, n: usize) {
        let path = format!("/v1/streams/{stream}/events?limit=1000");
        wait_until(
            &format!("stream {stream} to reach {n} events"),
            Duration::from_secs(60),
            async || {
                let (status, _, page) = self.get(&path).await;
                status == StatusCode::OK && page["events"].as_array().map_or(0, Vec::len) >= n
            },
        )
        .await;
    }

    /// The server's `/metrics`, as Prometheus text.
    pub async fn metrics(&self) -> String {
        let r = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.text().await.unwrap()
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn terminate(mut self) -> ExitStatus {
        signal(&self.child, "TERM");
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("server did not stop within 30 s after SIGTERM")
            .unwrap()
    }

    /// SIGKILL: the process dies at once, mid-whatever.
    pub async fn kill9(mut self) {
        signal(&self.child, "KILL");
        let _ = self.child.wait().await;
    }
}

/// Sends a signal with kill(1): the crate forbids unsafe code, and std has no signal API.
fn signal(child: &Child, sig: &str) {
    let pid = child.id().expect("child still running");
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// Polls `check` every 50 ms until it holds: for what happens in another process, which a
/// test cannot await. Fails the test, naming `what`, if it does not hold within `within`.
pub async fn wait_until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < within,
            "waited {within:?} in vain for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of metric `name` in `/metrics` text (`Server::metrics`), if it is there as an
/// integer: the line naming exactly `name`, labels included as rendered
/// (`name{label="value"}`). Counters, and gauges holding whole numbers, render as integers;
/// a counter never incremented is absent.
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// How long one CLI command may run in a test.
const CLI_TIMEOUT_SECS: u64 = 180;

/// Runs the binary with `args` in `dir`; returns exit code, stdout and stderr.
pub fn run_cli(dir: &Path, args: &[&str]) -> (i32, String, String) {
    run_cli_full(dir, args, None)
}

/// As `run_cli`, on PostgreSQL when `database_url` is given.
pub fn run_cli_full(
    dir: &Path,
    args: &[&str],
    database_url: Option<&str>,
) -> (i32, String, String) {
    // A hung command fails its test within minutes instead of stalling CI.
    let mut command = std::process::Command::new("timeout");
    command
        .args(["-k", "5", &CLI_TIMEOUT_SECS.to_string(), BIN])
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .env_remove("AUDITLEDGER_DATA_DIR")
        .env_remove("AUDITLEDGER_KEYS_DIR")
        .env_remove("DATABASE_URL");
    if let Some(url) = database_url {
        command.env("DATABASE_URL", url);
    }
    let out = command.stdin(Stdio::null()).output().unwrap();
    assert_ne!(
        out.status.code(),
        Some(124),
        "`auditledger {}` did not finish within {CLI_TIMEOUT_SECS} s; stderr: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One-event append body.
pub fn one_event(ty: &str, data: Value) -> Value {
    serde_json::json!({"events": [{"type": ty, "data": data}]})
}

/// An entry as the database holds it (the columns a test compares).
#[derive(Debug, Clone)]
pub struct EntryRowSeen {
    pub seq: u64,
    pub stream_id: String,
    pub recorded_at: i64,
    pub metadata: Value,
}

/// Opens the test's SQLite database directly, as an attacker with file access would.
pub async fn raw_db(dir: &Path) -> sqlx::SqlitePool {
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join("data/ledger.db"))
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .unwrap()
}

/// Which storage a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default.
    Sqlite,
    /// PostgreSQL at `AUDITLEDGER_TEST_POSTGRES` (default: the local server, database `test`).
    Postgres,
}

/// Where a test creates its own PostgreSQL databases.
pub fn postgres_admin_url() -> String {
    std::env::var("AUDITLEDGER_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A PostgreSQL database of a test's own, dropped when the test ends.
pub struct PgDb {
    pub name: String,
    pub url: String,
}

impl PgDb {
    pub async fn create() -> PgDb {
        use sqlx::Connection;
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!(
            "al_test_{}_{}_{}",
            std::process::id(),
            n,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        let admin = postgres_admin_url();
        // No silent skip: a test that needs PostgreSQL fails when it cannot reach it.
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL is required for this test and unreachable at {admin}: {e}")
            });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap();
        PgDb {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime: use a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_admin_url()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// A test's own working directory, and its own database on the chosen backend.
pub struct Env {
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    pub pg: Option<PgDb>,
}

impl Env {
    pub async fn new(backend: Backend) -> Env {
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(PgDb::create().await),
        };
        Env {
            backend,
            dir: workdir(),
            pg,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn database_url(&self) -> Option<&str> {
        self.pg.as_ref().map(|p| p.url.as_str())
    }

    /// Starts a server on this environment's backend.
    pub async fn serve(&self, extra: &[&str]) -> Server {
        Server::start_full(self.path(), extra, "warn", self.database_url()).await
    }

    /// Starts a server with its own working directory (its own ./keys), on this backend.
    pub async fn serve_in(&self, dir: &Path, extra: &[&str]) -> Server {
        Server::start_full(dir, extra, "warn", self.database_url()).await
    }

    /// Runs the binary on this environment's backend.
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        run_cli_full(self.path(), args, self.database_url())
    }

    /// Runs SQL directly against the backend, as an attacker with database access would.
    pub async fn sql(&self, statements: &[&str]) {
        match &self.pg {
            None => {
                let db = raw_db(self.path()).await;
                for s in statements {
                    sqlx::query(s).execute(&db).await.unwrap();
                }
                db.close().await;
            }
            Some(pg) => {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&pg.url).await.unwrap();
                for s in statements {
                    sqlx::query(s).execute(&mut conn).await.unwrap();
                }
                conn.close().await.unwrap();
            }
        }
    }

    /// The metadata of the ledger's access entries, in seq order.
    pub async fn access_entries(&self) -> Vec<Value> {
        self.entry_rows()
            .await
            .into_iter()
            .filter(|r| r.stream_id == "auditledger:access")
            .map(|r| r.metadata)
            .collect()
    }

    /// Every entry's seq, stream, time and metadata, read from the database, in seq order.
    pub async fn entry_rows(&self) -> Vec<EntryRowSeen> {
        let q = "SELECT seq, stream_id, recorded_at, metadata FROM entries ORDER BY seq";
        let rows: Vec<(i64, String, i64, String)> = match &self.pg {
            None => {
                let db = raw_db(self.path()).await;
                let r = sqlx::query_as(q).fetch_all(&db).await.unwrap();
                db.close().await;
                r
            }
            Some(pg) => {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&pg.url).await.unwrap();
                let r = sqlx::query_as(q).fetch_all(&mut conn).await.unwrap();
                conn.close().await.unwrap();
                r
            }
        };
        rows.into_iter()
            .map(|(seq, stream_id, recorded_at, m)| EntryRowSeen {
                seq: u64::try_from(seq).unwrap(),
                stream_id,
                recorded_at,
                metadata: serde_json::from_str(&m).unwrap(),
            })
            .collect()
    }

    /// A token with `roles` (comma-separated), made with the CLI beside the running server.
    pub fn token(&self, roles: &str, more: &[&str]) -> String {
        create_token(self.path(), &[], self.database_url(), roles, more)
    }

    /// One integer from SQL.
    pub async fn sql_count(&self, query: &str) -> i64 {
        match &self.pg {
            None => {
                let db = raw_db(self.path()).await;
                let n: i64 = sqlx::query_scalar(query).fetch_one(&db).await.unwrap();
                db.close().await;
                n
            }
            Some(pg) => {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&pg.url).await.unwrap();
                let n: i64 = sqlx::query_scalar(query)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                conn.close().await.unwrap();
                n
            }
        }
    }
}

/// Runs each named `async fn name(backend: Backend)` as two tests, `name::sqlite` and
/// `name::postgres`: one conformance suite, both backends.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await;
            }
            #[tokio::test]
            async fn postgres() {
                super::$name($crate::common::Backend::Postgres).await;
            }
        }
    )*};
}

/// Appends from `writers` tasks to `s` until the deadline or until `s` stops answering;
/// returns every acknowledged (seq, entry_hash).
pub async fn load(
    s: std::sync::Arc<Server>,
    tag: &'static str,
    writers: usize,
    deadline: std::time::Duration,
) -> Vec<(u64, Value)> {
    let acked = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (s, acked) = (std::sync::Arc::clone(&s), std::sync::Arc::clone(&acked));
        tasks.push(tokio::spawn(async move {
            for i in 0..5_000 {
                if started.elapsed() > deadline {
                    break;
                }
                // Every other request goes to a stream both instances write to.
                let stream = if i % 2 == 0 {
                    "shared".to_owned()
                } else {
                    format!("{tag}-{w}")
                };
                let body = serde_json::json!({"events": [
                    {"type": "Load", "data": {"tag": tag, "w": w, "i": i}},
                    {"type": "Load", "data": {"tag": tag, "w": w, "i": i, "second": true}},
                ]});
                let r = s
                    .client
                    .post(s.url(&format!("/v1/streams/{stream}/events")))
                    .json(&body)
                    .timeout(std::time::Duration::from_secs(10))
                    .send()
                    .await;
                let Ok(r) = r else { break };
                if r.status() != StatusCode::CREATED {
                    break;
                }
                let Ok(body) = r.json::<Value>().await else {
                    break;
                };
                let mut a = acked.lock().await;
                for e in body["entries"].as_array().unwrap() {
                    a.push((e["seq"].as_u64().unwrap(), e["entry_hash"].clone()));
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    std::sync::Arc::try_unwrap(acked).unwrap().into_inner()
}

/// Copies a keys directory (the secret files and every epoch KEK) to `to`, as instances that
/// share their keys have them.
pub fn copy_keys(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("epochs")).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
    for entry in std::fs::read_dir(from.join("epochs")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join("epochs").join(path.file_name().unwrap())).unwrap();
    }
}

impl Env {
    /// Rows of three columns (two blobs and a text), as an attacker reading the database (or a
    /// backup of it) sees them.
    pub async fn sql_rows(&self, query: &str) -> Vec<(Vec<u8>, Vec<u8>, String)> {
        match &self.pg {
            None => {
                let db = raw_db(self.path()).await;
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
        }
    }

    /// Every file that holds this environment's database: the SQLite data directory, or the
    /// PostgreSQL database's own relation files and the server's WAL (the test runs as root).
    pub async fn database_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        match &self.pg {
            None => walk(&self.path().join("data"), &mut out),
            Some(pg) => {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&pg.url).await.unwrap();
                let data_dir: String = sqlx::query_scalar("SHOW data_directory")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                let db_dir: String = sqlx::query_scalar(
                    "SELECT 'base/' || oid FROM pg_database WHERE datname = current_database()",
                )
                .fetch_one(&mut conn)
                .await
                .unwrap();
                conn.close().await.unwrap();
                let data_dir = PathBuf::from(data_dir);
                walk(&data_dir.join(db_dir), &mut out);
                walk(&data_dir.join("pg_wal"), &mut out);
            }
        }
        out
    }
}
