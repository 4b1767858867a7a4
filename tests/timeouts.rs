//! Slow clients cannot hold the service (issue 10): a request's headers and its body each have
//! a deadline, open connections are capped (more wait, and are served once a slot frees), and a
//! shutdown finishes within its deadline whatever a client is still sending.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Server, one_event, workdir};
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr(s: &Server) -> String {
    s.base.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, stream.read_to_end(&mut out))
        .await
        .expect("the server kept the connection open past its deadline");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn half_sent_headers_are_cut_off() {
    let dir = workdir();
    let s = Server::start(dir.path(), &["--header-timeout-secs", "1"]).await;
    let mut c = TcpStream::connect(addr(&s)).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    read_to_close(&mut c, Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_secs(4));
    s.terminate().await;
}

#[tokio::test]
async fn a_trickled_body_is_cut_off_and_writes_nothing() {
    let dir = workdir();
    let s = Server::start(dir.path(), &["--body-timeout-secs", "2"]).await;
    let body = one_event("Paid", json!({"amount": 1})).to_string();
    let mut c = TcpStream::connect(addr(&s)).await.unwrap();
    let head = format!(
        "POST /v1/streams/slow/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    // One byte every half second: never idle for long, but never done in time.
    let (mut read, mut write) = c.into_split();
    let bytes = body.into_bytes();
    let trickle = tokio::spawn(async move {
        for b in &bytes[..bytes.len() - 1] {
            if write.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(6), read.read_to_end(&mut answer))
        .await
        .expect("the body deadline did not cut the trickle off");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
    trickle.abort();
    assert!(s.all_events().await.is_empty(), "nothing of it was written");
    s.terminate().await;
}

#[tokio::test]
async fn connections_are_capped_and_slow_ones_make_room() {
    let dir = workdir();
    let s = Server::start(
        dir.path(),
        &["--max-connections", "4", "--header-timeout-secs", "2"],
    )
    .await;
    // Four connections that never finish their headers take every slot.
    let mut hogs = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(addr(&s)).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        hogs.push(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A fifth client waits; once the hogs time out it is served.
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        reqwest::Client::new().get(s.url("/healthz")).send(),
    )
    .await
    .expect("the fifth client was never served")
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1),
        "served after {waited:?}: the cap did not hold"
    );
    drop(hogs);
    s.terminate().await;
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_slow_upload() {
    let dir = workdir();
    let s = Server::start(
        dir.path(),
        &[
            "--shutdown-deadline-secs",
            "1",
            "--body-timeout-secs",
            "120",
        ],
    )
    .await;
    let mut c = TcpStream::connect(addr(&s)).await.unwrap();
    c.write_all(
        b"POST /v1/streams/slow/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"ev",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let status = s.terminate().await;
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    // The upload got no acknowledgement.
    let answer = read_to_close(&mut c, Duration::from_secs(2)).await;
    assert!(!answer.contains("201"), "{answer}");
}

#[tokio::test]
async fn a_long_export_read_slowly_is_not_cut_off() {
    let dir = workdir();
    let s = Server::start(
        dir.path(),
        &["--header-timeout-secs", "1", "--body-timeout-secs", "1"],
    )
    .await;
    // About a megabyte of bundle: more than the socket buffers hold, so the server is still
    // writing while the client dawdles.
    let events: Vec<serde_json::Value> = (0..100)
        .map(|i| json!({"type": "Bulk", "data": {"i": i, "pad": "x".repeat(8000)}}))
        .collect();
    for _ in 0..2 {
        let (status, body) = s.append("bulk", &json!({ "events": events })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let mut response = s.client.get(s.url("/v1/export")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut bundle = Vec::new();
    bundle.extend_from_slice(&response.chunk().await.unwrap().unwrap());
    // Longer than both request deadlines together.
    tokio::time::sleep(Duration::from_secs(3)).await;
    while let Some(chunk) = response.chunk().await.unwrap() {
        bundle.extend_from_slice(&chunk);
    }
    let bundle = String::from_utf8(bundle).unwrap();
    let footer: serde_json::Value = serde_json::from_str(bundle.lines().last().unwrap()).unwrap();
    assert_eq!(footer["kind"], "footer");
    assert_eq!(footer["entries"], 200);
    assert!(bundle.len() > 1_000_000, "{}", bundle.len());
    assert!(s.terminate().await.success());
}
