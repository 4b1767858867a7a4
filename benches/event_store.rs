//! Issue 12's performance figures with a light load generator: the service binary as its own
//! process, driven from this one (tokio tasks, not a process per client), realistic events
//! (~500 bytes of data, a subject each), access control on.
//!
//! 1. Live delivery: SUBSCRIBERS SSE subscribers while WRITERS appenders offer RATE events/s (open
//!    loop: a request every interval, answered or not) in
//!    100-event requests; latency = arrival minus the event's `recorded_at` (stamped before the
//!    commit, so it includes the commit).
//! 2. Loading a 10,000-event stream with a snapshot 100 events back.
//! 3. Catch-up: one subscriber from seq 0.
//! 4. Decrypting reads of 1,000-event pages, one client: the global log (`GET /v1/events`)
//!    and streams of 1,000 events (`GET /v1/streams/{id}/events`), each page with its access
//!    entry.
//!
//! Beside them, measured in the same run on the same cores: what opening alone costs (the
//! sealed payloads of such events opened on every core, nothing else), the limit no read can
//! pass.
//!
//! `cargo bench --bench event_store` (env: RATE, SUBSCRIBERS, WRITERS, SECONDS, CATCHUP,
//! SERVE_FLAGS).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::too_many_lines,
    reason = "a benchmark program"
)]

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_auditledger");

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn events(n: usize, stream: usize, first: usize) -> Value {
    let pad = "x".repeat(380);
    let list: Vec<Value> = (0..n)
        .map(|i| {
            json!({"type": "PaymentCaptured",
                   "subject": format!("customer-{stream}-{}@example.com", (first + i) % 20),
                   "data": {"amount_cents": 1000 + i, "currency": "EUR", "card_last4": "4242", "note": pad},
                   "metadata": {"source": "bench"}})
        })
        .collect();
    json!({ "events": list })
}

fn now_micros() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap()
}

/// CPU seconds (user + system) a process has used so far, from /proc (Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "an index"
    )]
    let i = ((v.len() as f64 * p) as usize).min(v.len() - 1);
    v[i]
}

/// Reads SSE from `url` until `until`; returns the latencies (ms) of the events it got.
async fn subscriber(client: reqwest::Client, url: String, until: Instant) -> Vec<f64> {
    let mut r = client.get(url).send().await.unwrap();
    let mut lat = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let key = b"\"recorded_at\":\"";
    while Instant::now() < until {
        let Ok(Ok(Some(chunk))) = tokio::time::timeout(Duration::from_millis(200), r.chunk()).await
        else {
            continue;
        };
        let now = now_micros();
        buf.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(off) = buf[start..].iter().position(|b| *b == b'\n') {
            let line = &buf[start..start + off];
            start += off + 1;
            if line.starts_with(b"data:")
                && let Some(k) = line.windows(key.len()).position(|w| w == key)
            {
                let ts = std::str::from_utf8(&line[k + key.len()..k + key.len() + 27]).unwrap();
                let at = auditledger::timefmt::parse_rfc3339(ts).unwrap();
                lat.push((now - at) as f64 / 1000.0);
            }
        }
        buf.drain(..start);
    }
    lat
}

/// Reads each page at `urls` in turn, one client: the events they held and events/s.
async fn read_pages(client: &reqwest::Client, urls: impl Iterator<Item = String>) -> (u64, f64) {
    let key = b"\"entry_hash\":";
    let t = Instant::now();
    let mut n = 0;
    for url in urls {
        let body = client.get(url).send().await.unwrap().bytes().await.unwrap();
        n += body.windows(key.len()).filter(|w| w == key).count() as u64;
    }
    (n, n as f64 / t.elapsed().as_secs_f64())
}

async fn post(client: reqwest::Client, url: String, body: Value) {
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

#[tokio::main]
async fn main() {
    let rate = env_or("RATE", 10_000);
    let subscribers = env_or("SUBSCRIBERS", 10);
    let seconds = env_or("SECONDS", 10);
    let catchup = env_or("CATCHUP", 200_000);
    let dir = tempfile::tempdir().unwrap();
    let token = String::from_utf8(
        std::process::Command::new(BIN)
            .args([
                "token",
                "create",
                "--role",
                "writer,reader",
                "--name",
                "bench",
            ])
            .current_dir(dir.path())
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let extra = std::env::var("SERVE_FLAGS").unwrap_or_default();
    let mut child = tokio::process::Command::new(BIN)
        .args(["serve", "--bind", "127.0.0.1:0"])
        .args(extra.split_whitespace())
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("the service did not start");
        if let Some(rest) = line.strip_prefix("auditledger listening on http://") {
            break format!("http://{}", rest.split_whitespace().next().unwrap());
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    let append = |path: String, body: Value| post(client.clone(), format!("{base}{path}"), body);
    println!(
        "# auditledger event-store benchmark, light generator ({} cores)",
        std::thread::available_parallelism().map_or(0, usize::from)
    );

    // 2. Load.
    for first in (0..10_000).step_by(1000) {
        append("/v1/streams/agg-1/events".into(), events(1000, 1, first)).await;
    }
    let r = client
        .put(format!("{base}/v1/streams/agg-1/snapshots"))
        .header("content-type", "application/json")
        .body(json!({"stream_version": 9899, "state": {"balance_cents": 123_456, "note": "x".repeat(380)}}).to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let mut times = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        let body: Value = client
            .get(format!("{base}/v1/streams/agg-1/load"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(body["events"].as_array().unwrap().len(), 100);
    }
    println!(
        "load, 10,000-event stream, snapshot 100 back: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (300 loads, one client)",
        pct(&mut times, 0.5),
        pct(&mut times, 0.99),
        pct(&mut times, 1.0)
    );

    // 1. Live delivery.
    let head: Value = client
        .get(format!(
            "{base}/v1/events?direction=backward&limit=1&raw=true"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let from = head["events"][0]["seq"].as_u64().unwrap() + 1;
    let until = Instant::now() + Duration::from_secs(seconds + 3);
    let subs: Vec<_> = (0..subscribers)
        .map(|_| {
            tokio::spawn(subscriber(
                client.clone(),
                format!("{base}/v1/subscribe?from_seq={from}&stream_prefix=live-"),
                until,
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let writers = env_or("WRITERS", 4);
    let service_pid = child.id().unwrap();
    let (service_cpu, own_cpu, wall) = (
        cpu_seconds(service_pid),
        cpu_seconds(std::process::id()),
        Instant::now(),
    );
    let per_writer = rate / writers;
    let stop = Instant::now() + Duration::from_secs(seconds);
    // Open loop: each writer starts a request every interval whether or not the one before has
    // been answered (as many independent clients would), so the rate asked is the rate offered
    // and a slow answer shows as latency, not as a lower rate.
    let apps: Vec<_> = (0..writers)
        .map(|w| {
            let (client, base) = (client.clone(), base.clone());
            tokio::spawn(async move {
                let interval = Duration::from_secs_f64(100.0 / per_writer as f64);
                let mut next = Instant::now();
                let mut posts = Vec::new();
                #[expect(clippy::cast_possible_truncation, reason = "a stream number")]
                let w = w as usize;
                while Instant::now() < stop {
                    posts.push(tokio::spawn(post(
                        client.clone(),
                        format!("{base}/v1/streams/live-{w}/events"),
                        events(100, w, 0),
                    )));
                    next += interval;
                    tokio::time::sleep_until(next.into()).await;
                }
                let mut sent = 0u64;
                for p in posts {
                    p.await.unwrap();
                    sent += 100;
                }
                sent
            })
        })
        .collect();
    let mut sent = 0;
    for a in apps {
        sent += a.await.unwrap();
    }
    let answered = wall.elapsed().as_secs_f64();
    let mut lat = Vec::new();
    let mut counts = Vec::new();
    for s in subs {
        let l = s.await.unwrap();
        counts.push(l.len());
        lat.extend(l);
    }
    let wall = wall.elapsed().as_secs_f64();
    println!(
        "live: CPU used, in cores: service {:.2}, this generator {:.2} (of {} cores)",
        (cpu_seconds(service_pid) - service_cpu) / wall,
        (cpu_seconds(std::process::id()) - own_cpu) / wall,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "live: {sent} events offered in {seconds} s ({:.0}/s), the last answered after {answered:.1} s; {subscribers} subscribers received {}-{} each; latency from recorded_at: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        sent as f64 / seconds as f64,
        counts.iter().min().unwrap_or(&0),
        counts.iter().max().unwrap_or(&0),
        pct(&mut lat.clone(), 0.5),
        pct(&mut lat.clone(), 0.99),
        pct(&mut lat, 1.0)
    );

    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in metrics.lines().filter(|l| {
        [
            "auditledger_commits_total",
            "auditledger_commit_seconds_sum",
            "auditledger_access_entries_total{action=\"read_log\"",
            "auditledger_subscribers_lagged_total",
            "auditledger_stale_batches_total",
        ]
        .iter()
        .any(|m| l.starts_with(m))
    }) {
        println!("live: service metric {line}");
    }

    let (p50, p99, n) = bucket_quantiles(&metrics, "auditledger_live_delivery_seconds");
    println!(
        "live: from commit to the subscriber's connection (service histogram, {n} parts of up to 64 KB, each counted at its oldest event): p50 <= {p50} ms, p99 <= {p99} ms"
    );

    // 3. Catch-up.
    let mut have = from + sent;
    let mut k = 0;
    while have < catchup {
        append(format!("/v1/streams/live-c{k}/events"), events(1000, 3, 0)).await;
        have += 1000;
        k += 1;
    }
    let mut r = client
        .get(format!("{base}/v1/subscribe?from_seq=0"))
        .send()
        .await
        .unwrap();
    let t = Instant::now();
    let (mut n, mut buf) = (0u64, Vec::<u8>::new());
    'outer: while let Some(chunk) = r.chunk().await.unwrap() {
        buf.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(off) = buf[start..].iter().position(|b| *b == b'\n') {
            let line = &buf[start..start + off];
            start += off + 1;
            if line.starts_with(b"id:") {
                n += 1;
                let seq: u64 = std::str::from_utf8(&line[3..])
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                if seq + 1000 >= have {
                    break 'outer;
                }
            }
        }
        buf.drain(..start);
    }
    let dt = t.elapsed().as_secs_f64();
    drop(r);
    let catchup_rate = n as f64 / dt;
    let limit = open_limit();
    println!(
        "catch-up: {n} events in {dt:.2} s = {catchup_rate:.0} events/s, one subscriber ({:.3} of the open limit)",
        catchup_rate / limit
    );

    // 4. Decrypting reads of 1,000-event pages.
    let pages = env_or("READ_PAGES", 100).min(have / 1000);
    let (n, log_rate) = read_pages(
        &client,
        (0..pages).map(|p| format!("{base}/v1/events?from_seq={}&limit=1000", p * 1000)),
    )
    .await;
    let (in_streams, stream_rate) = read_pages(
        &client,
        (0..k.min(pages)).map(|c| format!("{base}/v1/streams/live-c{c}/events?limit=1000")),
    )
    .await;
    println!(
        "reads, 1,000-event pages, one client: log {log_rate:.0} events/s ({n} events, {:.3} of the open limit), streams {stream_rate:.0} events/s ({in_streams} events, {:.3})",
        log_rate / limit,
        stream_rate / limit
    );
    println!(
        "open limit (same run): {limit:.0} events/s: sealed payloads of these events (~500 bytes) opened on {} threads, nothing else",
        rayon::current_num_threads()
    );
    child.kill().await.ok();
}

/// The bucket bounds (ms) under which half and 99 % of a Prometheus histogram's observations
/// fall, and how many there were.
fn bucket_quantiles(metrics: &str, name: &str) -> (String, String, u64) {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(String, u64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            Some((le.to_owned(), count.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0, |b| b.1);
    let at = |q: f64| {
        buckets
            .iter()
            .find(|(_, c)| *c as f64 >= q * total as f64)
            .map_or_else(
                || "?".to_owned(),
                |(le, _)| {
                    le.parse::<f64>()
                        .map_or_else(|_| le.clone(), |s| format!("{}", s * 1000.0))
                },
            )
    };
    (at(0.5), at(0.99), total)
}

/// Events per second that opening their sealed payloads alone reaches on every core (rayon):
/// what no decrypting read can exceed on this machine.
fn open_limit() -> f64 {
    use auditledger::crypto::{DataKey, KeyRef, open, seal};
    use rayon::prelude::*;
    let key = DataKey::generate();
    let key_ref = KeyRef::Subject(auditledger::entry::SubjectHandle([7; 16]));
    let data = events(1, 0, 0)["events"][0]["data"].to_string();
    let aad = [0u8; 120];
    let sealed = seal(&key, &key_ref, &aad, data.as_bytes());
    let n = 200_000;
    let t = Instant::now();
    let opened = (0..n)
        .into_par_iter()
        .filter(|_| open(&key, &sealed, &aad).is_ok())
        .count();
    assert_eq!(opened, n);
    n as f64 / t.elapsed().as_secs_f64()
}
