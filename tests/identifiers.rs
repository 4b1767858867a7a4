//! A data subject's identifier never enters the chain: a request that places it (in any letter
//! case, after Unicode NFKC normalisation) in a stream id, an event type, a metadata key or
//! value, or an erasure's reason or request reference is refused with 422, nothing is written,
//! and the refusal echoes neither the identifier nor the field that held it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::too_many_lines, reason = "test code")]

mod common;

use common::{Server, workdir};
use reqwest::StatusCode;
use serde_json::{Value, json};

const CUSTOMER: &str = "customer-000042";
const EMAIL: &str = "fiona.kelvin@example.com";

fn event(ty: &str, subject: Option<&str>, metadata: &Value) -> Value {
    let mut e =
        json!({"type": ty, "data": {"note": "personal data lives here"}, "metadata": metadata});
    if let Some(s) = subject {
        e["subject"] = json!(s);
    }
    e
}

/// Asserts a 422 problem+json whose detail names `field`, and which quotes none of `secrets`
/// (compared without regard to ASCII case).
fn assert_refused(status: StatusCode, problem: &Value, field: &str, secrets: &[&str]) {
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["status"], 422, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains(field),
        "detail {detail:?} should name {field:?}"
    );
    assert_no_echo(problem, secrets);
}

fn assert_no_echo(problem: &Value, secrets: &[&str]) {
    let text = problem.to_string().to_lowercase();
    for s in secrets {
        assert!(
            !text.contains(&s.to_lowercase()),
            "the reply echoes {s:?}: {problem}"
        );
    }
}

async fn seeded() -> (tempfile::TempDir, Server, usize) {
    let dir = workdir();
    let s = Server::start(dir.path(), &[]).await;
    let seed = json!({"events": [event("CustomerCreated", Some(CUSTOMER), &json!({"source": "crm"})),
                                 event("CustomerCreated", Some(EMAIL), &json!({"source": "crm"}))]});
    let (status, body) = s.append("customer-7f3a9c", &seed).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let n = s.all_events().await.len();
    (dir, s, n)
}

#[tokio::test]
async fn an_identifier_in_the_stream_id_is_refused_in_any_case_and_nothing_is_written() {
    let (_dir, s, n) = seeded().await;
    for stream in [
        "customer-000042",
        "orders-CUSTOMER-000042",
        "Customer-000042.history",
    ] {
        let body = json!({"events": [event("OrderPlaced", Some(CUSTOMER), &json!({}))]});
        let (status, problem) = s.append(stream, &body).await;
        assert_refused(status, &problem, "stream id", &[CUSTOMER, stream]);
    }
    assert_eq!(s.all_events().await.len(), n);
    s.terminate().await;
}

#[tokio::test]
async fn an_identifier_in_an_event_type_is_refused_naming_the_event() {
    let (_dir, s, n) = seeded().await;
    // The subject is on the first event, the type that holds it on the second: every subject
    // of the request is checked against every field of the request.
    let body = json!({"events": [
        event("OrderPlaced", Some(CUSTOMER), &json!({})),
        event("Audit.CUSTOMER-000042.Viewed", None, &json!({})),
    ]});
    let (status, problem) = s.append("orders-1", &body).await;
    assert_refused(
        status,
        &problem,
        "events[1].type",
        &[CUSTOMER, "Audit.CUSTOMER-000042.Viewed"],
    );
    assert_eq!(s.all_events().await.len(), n);
    s.terminate().await;
}

#[tokio::test]
async fn an_identifier_in_a_metadata_key_or_value_is_refused_after_nfkc_and_case_folding() {
    let (_dir, s, n) = seeded().await;
    // (placement, metadata, what the reply must not quote)
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        // A value in upper case.
        (
            "metadata value",
            json!({"wh0": "FIONA.KELVIN@EXAMPLE.COM"}),
            vec!["fiona", "wh0"],
        ),
        // Kelvin sign K (U+212A) and the fi ligature (U+FB01): NFKC makes them K and fi.
        (
            "metadata value",
            json!({"wh0": "\u{FB01}ona.\u{212A}elvin@example.com"}),
            vec!["fiona", "\u{FB01}ona", "wh0"],
        ),
        // Fullwidth letters and digits in a key.
        (
            "metadata key",
            json!({"\u{FF26}\u{FF29}\u{FF2F}\u{FF2E}\u{FF21}.kelvin@example.com": "x"}),
            vec!["fiona", "\u{FF26}\u{FF29}", "kelvin"],
        ),
        // Plain, inside a longer key.
        (
            "metadata key",
            json!({"ref-fiona.kelvin@example.com-1": "x"}),
            vec!["fiona", "ref-"],
        ),
    ];
    for (field, metadata, secrets) in cases {
        let body = json!({"events": [event("ContactChanged", Some(EMAIL), &metadata)]});
        let (status, problem) = s.append("contacts-1", &body).await;
        let mut all = secrets.clone();
        all.push(EMAIL);
        assert_refused(status, &problem, field, &all);
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("events[0].metadata"),
            "{problem}"
        );
    }
    assert_eq!(s.all_events().await.len(), n);
    s.terminate().await;
}

#[tokio::test]
async fn sharp_s_and_turkish_dotted_i_variants_are_caught() {
    let (_dir, s, n) = seeded().await;
    let cases = [
        ("STRASSE-7731", "Straße-7731"),
        ("straße-7731", "STRASSE-7731"),
        (
            "ilknur.yilmaz@example.com",
            "\u{130}LKNUR.YILMAZ@EXAMPLE.COM",
        ),
        ("ılknur.yılmaz@example.com", "ILKNUR.YILMAZ@example.com"),
    ];
    for (subject, value) in cases {
        let body =
            json!({"events": [event("ContactChanged", Some(subject), &json!({"v": value}))]});
        let (status, problem) = s.append("contacts-2", &body).await;
        assert_refused(
            status,
            &problem,
            "metadata value",
            &[subject, value, "7731", "lknur"],
        );
    }
    assert_eq!(s.all_events().await.len(), n);
    s.terminate().await;
}

#[tokio::test]
async fn an_identifier_in_an_erasure_reason_or_reference_is_refused_and_nothing_is_erased() {
    let (_dir, s, n) = seeded().await;
    let cases = [
        ("reason", "asked by CUSTOMER-000042", "DSR-1"),
        ("reason", "asked by \u{FF43}ustomer-000042", "DSR-1"),
        ("request_ref", "GDPR Art. 17(1)(a)", "Customer-000042/1"),
        (
            "request_ref",
            "GDPR Art. 17(1)(a)",
            "\u{FF23}\u{FF35}\u{FF33}\u{FF34}OMER-000042",
        ),
    ];
    for (field, reason, request_ref) in cases {
        let (status, problem) = s
            .post_raw(
                "/v1/subjects/erase",
                json!({"subject": CUSTOMER, "reason": reason, "request_ref": request_ref})
                    .to_string(),
            )
            .await;
        let offending = if field == "reason" {
            reason
        } else {
            request_ref
        };
        assert_refused(status, &problem, field, &[CUSTOMER, offending, "000042"]);
    }
    assert_eq!(s.all_events().await.len(), n);
    // The subject was not erased: its data still decrypts.
    let (status, export) = s
        .post_raw(
            "/v1/subjects/export",
            json!({"subject": CUSTOMER}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{export}");
    assert_eq!(export["events"][0]["erased"], false);
    s.terminate().await;
}

#[tokio::test]
async fn a_legitimate_request_with_pseudonymous_names_still_passes() {
    let (_dir, s, n) = seeded().await;
    let body = json!({"events": [
        event("CustomerUpdated", Some(CUSTOMER), &json!({"source": "crm", "customer_ref": "7f3a9c"})),
        event("ContactChanged", Some(EMAIL), &json!({"channel": "e-mail"})),
    ]});
    let (status, ok) = s.append("customer-7f3a9c", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{ok}");
    assert_eq!(s.all_events().await.len(), n + 2);
    let (status, receipt) = s
        .post_raw(
            "/v1/subjects/erase",
            json!({"subject": CUSTOMER, "reason": "GDPR Art. 17(1)(a)", "request_ref": "DSR-2024-001"})
                .to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    s.terminate().await;
}

#[tokio::test]
async fn an_identifier_too_short_to_tell_apart_from_text_is_refused_at_append() {
    let (_dir, s, n) = seeded().await;
    for subject in ["7", "ab", "\u{301}\u{301}\u{301}\u{301}"] {
        let body = json!({"events": [event("OrderPlaced", Some(subject), &json!({}))]});
        let (status, problem) = s.append("orders-2", &body).await;
        assert_refused(status, &problem, "events[0].subject", &[]);
    }
    assert_eq!(s.all_events().await.len(), n);
    // An erasure accepts any identifier (one appended before the rule must stay erasable),
    // and still checks it, however short: "q" is in the reference "Q-1".
    let (status, problem) = s
        .post_raw(
            "/v1/subjects/erase",
            json!({"subject": "q", "reason": "GDPR Art. 17", "request_ref": "Q-1"}).to_string(),
        )
        .await;
    assert_refused(status, &problem, "request_ref", &["Q-1"]);
    let (status, problem) = s
        .post_raw(
            "/v1/subjects/erase",
            json!({"subject": "q", "reason": "GDPR Art. 17", "request_ref": "R-1"}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    s.terminate().await;
}

#[tokio::test]
async fn other_refusals_do_not_echo_submitted_values() {
    let (_dir, s, n) = seeded().await;
    let secret = "fiona.kelvin@example.com";
    let bodies = [
        // A metadata value of the wrong type under a key that is an identifier.
        json!({"events": [{"type": "A", "data": {}, "metadata": {secret: 5}}]}).to_string(),
        // A metadata value over the limit under such a key.
        json!({"events": [{"type": "A", "data": {}, "metadata": {secret: "x".repeat(2000)}}]})
            .to_string(),
        // A string where a number was expected.
        json!({"events": [{"type": "A", "data": {}, "schema_version": secret}]}).to_string(),
        json!({"expected_version": secret, "events": [{"type": "A", "data": {}}]}).to_string(),
        // An unknown field named like an identifier.
        json!({"events": [{"type": "A", "data": {}, secret: 1}]}).to_string(),
        json!({secret: 1, "events": [{"type": "A", "data": {}}]}).to_string(),
        // A type with a bad character.
        json!({"events": [{"type": secret, "data": {}}]}).to_string(),
    ];
    for body in bodies {
        let (status, problem) = s.post_raw("/v1/streams/s-1/events", body.clone()).await;
        assert!(status.is_client_error(), "{body}: {problem}");
        assert_no_echo(&problem, &[secret, "fiona"]);
    }
    let (status, problem) = s
        .post_raw(
            "/v1/subjects/erase",
            json!({"subject": secret, "reason": 1, "request_ref": "x"}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_no_echo(&problem, &[secret, "fiona"]);
    // A version conflict does not quote the stream id.
    let stale = json!({"expected_version": "no_stream", "events": [{"type": "A", "data": {}}]});
    let (status, problem) = s.append("customer-7f3a9c", &stale).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_no_echo(&problem, &["customer-7f3a9c", "7f3a9c"]);
    assert_eq!(s.all_events().await.len(), n);
    s.terminate().await;
}
