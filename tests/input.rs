//! The API takes exactly what was sent (issue 10): JSON bodies only as `application/json`, one
//! object and nothing after it, numbers kept exactly or refused, `data` an object as declared,
//! and every error problem+json, including a path that is not UTF-8. Whatever is refused writes
//! nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Server, one_event, workdir};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn post(
    s: &Server,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> (StatusCode, String, Value) {
    let mut r = s.client.post(s.url(path)).body(body.to_owned());
    if let Some(ct) = content_type {
        r = r.header("content-type", ct);
    }
    let r = r.send().await.unwrap();
    let status = r.status();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, r.json().await.unwrap_or(Value::Null))
}

async fn entries(s: &Server) -> usize {
    s.all_events().await.len()
}

#[tokio::test]
async fn only_json_bodies_are_taken() {
    let dir = workdir();
    let s = Server::start(dir.path(), &[]).await;
    let body = one_event("Paid", json!({"amount": 1})).to_string();
    let path = "/v1/streams/ct-1/events";
    // What a web page can make a browser send across sites without asking.
    for ct in [
        None,
        Some("text/plain"),
        Some("text/plain; charset=utf-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/json; charset=latin1"),
        Some("application/jsonx"),
    ] {
        let (st, content_type, v) = post(&s, path, ct, &body).await;
        assert_eq!(st, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}: {v}");
        assert_eq!(content_type, "application/problem+json");
        assert_eq!(v["type"], "urn:auditledger:problem:unsupported-media-type");
        let erase = json!({"subject": "someone", "reason": "r", "request_ref": "x"}).to_string();
        let (st, _, _) = post(&s, "/v1/subjects/erase", ct, &erase).await;
        assert_eq!(st, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}");
        let (st, _, _) = post(&s, "/v1/subjects/export", ct, r#"{"subject": "someone"}"#).await;
        assert_eq!(st, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}");
    }
    assert_eq!(entries(&s).await, 0);
    for ct in [
        "application/json",
        "Application/JSON; charset=UTF-8",
        "application/json;charset=\"utf-8\"",
    ] {
        let (st, _, v) = post(&s, path, Some(ct), &body).await;
        assert_eq!(st, StatusCode::CREATED, "{ct}: {v}");
    }
    s.terminate().await;
}

#[tokio::test]
async fn a_body_is_one_object_and_nothing_else() {
    let dir = workdir();
    let s = Server::start(dir.path(), &[]).await;
    let one = one_event("Paid", json!({"amount": 1})).to_string();
    let path = "/v1/streams/shape-1/events";
    let cases: Vec<(String, StatusCode, &str)> = vec![
        (
            format!("{one}{one}"),
            StatusCode::BAD_REQUEST,
            "after the JSON value",
        ),
        (
            format!("{one} x"),
            StatusCode::BAD_REQUEST,
            "after the JSON value",
        ),
        (
            format!("[{one}]"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "must be a JSON object",
        ),
        (
            r#"["any", [{"type": "Paid", "data": {}}]]"#.to_owned(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "must be a JSON object",
        ),
        (
            r#"{"events": [["Paid", 1, null, {}]]}"#.to_owned(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "events[0] must be a JSON object",
        ),
        (
            r#"{"events": [{"type": "Paid", "data": "text"}]}"#.to_owned(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "events[0].data must be a JSON object",
        ),
        (
            r#"{"events": [{"type": "Paid", "data": [1, 2]}]}"#.to_owned(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "events[0].data must be a JSON object",
        ),
        (
            r#"{"events": [{"type": "Paid", "data": null}]}"#.to_owned(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "events[0].data must be a JSON object",
        ),
        (
            "\"just a string\"".to_owned(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "must be a JSON object",
        ),
        (String::new(), StatusCode::BAD_REQUEST, "not valid JSON"),
        // serde_json keeps the last of two equal keys: what is sealed would not be what was sent.
        (
            r#"{"events": [{"type": "Paid", "data": {"amount": 1, "amount": 1000}}]}"#.to_owned(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "same key twice",
        ),
        (
            r#"{"events": [{"type": "Paid", "data": {"l": [{"k": 1, "k": 2}]}}]}"#.to_owned(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "same key twice",
        ),
        (
            r#"{"events": [{"type": "Paid", "data": {}, "metadata": {"m": "a", "m": "b"}}]}"#
                .to_owned(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "same key twice",
        ),
    ];
    for (body, status, says) in cases {
        let (st, ct, v) = post(&s, path, Some("application/json"), &body).await;
        assert_eq!(st, status, "{body}: {v}");
        assert_eq!(ct, "application/problem+json", "{body}");
        assert!(v["detail"].as_str().unwrap().contains(says), "{body}: {v}");
    }
    let erase = json!({"subject": "someone", "reason": "r", "request_ref": "x"}).to_string();
    let (st, _, v) = post(
        &s,
        "/v1/subjects/erase",
        Some("application/json"),
        &format!("{erase}{erase}"),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, _, v) = post(
        &s,
        "/v1/subjects/erase",
        Some("application/json"),
        r#"["someone", "r", "x"]"#,
    )
    .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(entries(&s).await, 0, "nothing refused was written");
    s.terminate().await;
}

#[tokio::test]
async fn numbers_are_kept_exactly_or_refused() {
    let dir = workdir();
    let s = Server::start(dir.path(), &[]).await;
    let path = "/v1/streams/num-1/events";
    for n in [
        "123456789012345678901234567890",
        "18446744073709551616",
        "-9223372036854775809",
        "3.14159265358979323846264338",
    ] {
        let body = format!(r#"{{"events": [{{"type": "Measured", "data": {{"v": {n}}}}}]}}"#);
        let (st, _, v) = post(&s, path, Some("application/json"), &body).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{n}: {v}");
        assert!(
            v["detail"]
                .as_str()
                .unwrap()
                .contains("cannot be kept exactly"),
            "{v}"
        );
        assert!(
            !v["detail"].as_str().unwrap().contains(n),
            "the number is not quoted"
        );
    }
    assert_eq!(entries(&s).await, 0);
    // Numbers a 64-bit integer or a double holds exactly come back exactly.
    let body = r#"{"events": [{"type": "Measured", "data": {"a": 9007199254740993, "b": 18446744073709551615, "c": -9223372036854775808, "d": 0.1, "e": 1.5e300, "f": -0.0}}]}"#;
    let (st, _, v) = post(&s, path, Some("application/json"), body).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (_, _, page) = s.get("/v1/streams/num-1/events").await;
    let data = &page["events"][0]["data"];
    assert_eq!(data["a"].as_u64(), Some(9_007_199_254_740_993));
    assert_eq!(data["b"].as_u64(), Some(u64::MAX));
    assert_eq!(data["c"].as_i64(), Some(i64::MIN));
    assert_eq!(data["d"].as_f64(), Some(0.1));
    assert_eq!(data["e"].as_f64(), Some(1.5e300));
    s.terminate().await;
}

#[tokio::test]
async fn every_error_is_problem_json() {
    let dir = workdir();
    let s = Server::start(dir.path(), &[]).await;
    // A path that is not UTF-8, a bad erasure seq, an unknown job, a bad query.
    for path in [
        "/v1/streams/%FF%FE/events",
        "/v1/subjects/erasures/not-a-number",
        "/v1/audit/verify/jobs/%FF",
        "/v1/events?limit=x",
        "/v1/streams/s/events?from_version=-1",
        "/nowhere",
    ] {
        let (st, ct, v) = s.get(path).await;
        assert!(st.is_client_error(), "{path}: {st}");
        assert_eq!(ct, "application/problem+json", "{path}: {v}");
        assert_eq!(v["status"], st.as_u16(), "{path}");
    }
    let (st, ct, _) = post(&s, "/v1/streams/%FF/events", Some("application/json"), "{}").await;
    assert_eq!(
        (st, ct.as_str()),
        (StatusCode::BAD_REQUEST, "application/problem+json")
    );
    s.terminate().await;
}
