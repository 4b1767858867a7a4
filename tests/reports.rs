//! Compliance reports (issue 11): each report's figures match the ledger they were computed
//! from, every report is signed and its signature checks offline, CSV and HTML name the signed
//! JSON, and the HTML page renders in headless Chromium to a screenshot and a PDF.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(
    clippy::too_many_lines,
    reason = "each test tells one story, end to end"
)]

mod common;

use std::collections::BTreeMap;

use common::{Backend, Env, Server};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A small ledger with known content: 3 event types over 2 stream prefixes, subjects, reads,
/// a hold that refuses an erasure, the erasure after its release, and two retention policies.
struct Seeded {
    reader_id: String,
    officer_id: String,
    events_by_type: BTreeMap<&'static str, u64>,
}

async fn seed(env: &Env, s: &Server) -> Seeded {
    let reader = env.token("reader", &[]);
    let officer = env.token("privacy_officer", &[]);
    let admin = env.token("admin", &[]);
    let mut events_by_type = BTreeMap::new();
    for i in 0..6 {
        let (stream, ty) = if i % 2 == 0 {
            (format!("billing-{i}"), "PaymentAuthorized")
        } else {
            (format!("patient-{i}"), "RecordViewed")
        };
        let body = json!({"events": [
            {"type": ty, "subject": format!("person{i}@example.com"), "data": {"i": i}},
            {"type": "Noted", "data": {"i": i}},
        ]});
        assert_eq!(s.append(&stream, &body).await.0, StatusCode::CREATED);
        *events_by_type.entry(ty).or_default() += 1;
        *events_by_type.entry("Noted").or_default() += 1;
    }
    let as_ = |t: &str| common::client_with(Some(t));
    // Three reads that disclose personal data: one event each (and one that discloses none).
    for path in [
        "/v1/streams/billing-0/events",
        "/v1/streams/patient-1/events",
        "/v1/streams/billing-2/events",
        "/v1/streams/nothing-here/events",
    ] {
        let r = as_(&reader).get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let post = async |t: &str, path: &str, body: Value| {
        as_(t)
            .post(s.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
    };
    let erase = json!({"subject": "person0@example.com", "reason": "GDPR Art. 17(1)(a)", "request_ref": "DSR-1"});
    assert_eq!(
        post(
            &officer,
            "/v1/subjects/hold",
            json!({"subject": "person0@example.com", "reference": "LIT-1", "reason": "litigation"})
        )
        .await,
        StatusCode::CREATED
    );
    assert_eq!(
        post(&officer, "/v1/subjects/erase", erase.clone()).await,
        StatusCode::CONFLICT
    );
    assert_eq!(
        post(
            &officer,
            "/v1/subjects/release",
            json!({"subject": "person0@example.com", "reason": "closed"})
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        post(&officer, "/v1/subjects/erase", erase).await,
        StatusCode::OK
    );
    assert_eq!(
        post(
            &officer,
            "/v1/subjects/hold",
            json!({"subject": "person1@example.com", "reference": "LIT-2", "reason": "audit"})
        )
        .await,
        StatusCode::CREATED
    );
    for (ty, days, purpose) in [
        ("PaymentAuthorized", 365, "card payments (PCI DSS)"),
        ("RecordViewed", 2190, "treatment (HIPAA)"),
    ] {
        let r = as_(&admin)
            .put(s.url(&format!("/v1/policies/{ty}")))
            .json(&json!({"retention_days": days, "purpose": purpose}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let id = |t: &str| t.split('_').nth(1).unwrap().to_owned();
    Seeded {
        reader_id: id(&reader),
        officer_id: id(&officer),
        events_by_type,
    }
}

fn section<'a>(report: &'a Value, id: &str) -> &'a Vec<Value> {
    report["sections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .unwrap_or_else(|| panic!("no section {id}"))["rows"]
        .as_array()
        .unwrap()
}

fn summary(report: &Value, label: &str) -> String {
    report["summary"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["label"] == label)
        .unwrap_or_else(|| panic!("no summary item {label}"))["value"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Fetches a report as the auditor, checks its signature against the keys directory, returns
/// the report and the body.
async fn fetch(s: &Server, env: &Env, kind: &str, query: &str) -> (Value, Vec<u8>) {
    let r = s
        .client
        .get(s.url(&format!("/v1/audit/reports/{kind}{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.bytes().await.unwrap().to_vec();
    let keys = auditledger::keyfiles::trusted_keys(&env.path().join("keys")).unwrap();
    let report = auditledger::compliance::sign::verify(&body, &keys)
        .unwrap_or_else(|e| panic!("the {kind} report does not verify: {e}"));
    (serde_json::to_value(report).unwrap(), body)
}

async fn each_report_matches_the_ledger_it_was_computed_from(backend: Backend) {
    let env = Env::new(backend).await;
    let s = env.serve(&["--auth"]).await;
    let seeded = seed(&env, &s).await;

    // Activity: events by type.
    let (activity, body) = fetch(&s, &env, "activity", "").await;
    let by_type: BTreeMap<String, u64> = section(&activity, "events_by_type")
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().to_owned(),
                r[1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    let expected: BTreeMap<String, u64> = seeded
        .events_by_type
        .iter()
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect();
    assert_eq!(by_type, expected);
    assert_eq!(summary(&activity, "Client events in the period"), "12");
    let prefixes: Vec<&str> = section(&activity, "events_by_stream_prefix")
        .iter()
        .map(|r| r[0].as_str().unwrap())
        .collect();
    assert_eq!(prefixes, ["billing-", "patient-"]);
    assert_eq!(activity["events_per_day"].as_array().unwrap().len(), 1);
    // The period works: a period that ends before anything was written holds nothing.
    let (empty, _) = fetch(&s, &env, "activity", "?to=2000-01-01").await;
    assert_eq!(summary(&empty, "Client events in the period"), "0");
    assert_eq!(empty["period_to"], "2000-01-02T00:00:00.000000Z");
    // The signed JSON is kept and fetched by its hash, byte for byte.
    let sha = activity_sha(&body);
    let again = s
        .client
        .get(s.url(&format!("/v1/audit/reports/signed/{sha}")))
        .send()
        .await
        .unwrap();
    assert_eq!(again.bytes().await.unwrap().to_vec(), body);

    // Access: the reader's disclosures (three reads of one event each), the officer's erasure.
    let (access, _) = fetch(&s, &env, "access", "").await;
    let per_token = section(&access, "disclosures_per_token");
    let reader_row = per_token
        .iter()
        .find(|r| r[0] == seeded.reader_id.as_str())
        .unwrap();
    assert_eq!(reader_row[1], "reader");
    assert_eq!(reader_row[2], "3", "requests");
    assert_eq!(reader_row[3], "3", "events disclosed");
    let detail = section(&access, "audited_requests");
    let erased_by_officer = detail
        .iter()
        .find(|r| r[0] == seeded.officer_id.as_str() && r[2] == "erase_subject" && r[3] == "ok")
        .unwrap();
    assert_eq!(erased_by_officer[4], "1");

    // Erasures: one done with its receipt, one refused by the hold.
    let (erasures, _) = fetch(&s, &env, "erasures", "").await;
    assert_eq!(summary(&erasures, "Erasures"), "1");
    assert_eq!(summary(&erasures, "Refused erasures (legal hold)"), "1");
    let done = &section(&erasures, "erasures")[0];
    assert_eq!(done[3], "DSR-1");
    assert_eq!(
        done[6].as_str().unwrap().len(),
        128,
        "the receipt's signature"
    );
    let refused = &section(&erasures, "refused_erasures")[0];
    assert_eq!(
        (refused[3].as_str(), refused[5].as_str()),
        (Some("DSR-1"), Some("LIT-1"))
    );
    assert_eq!(section(&erasures, "holds_in_force").len(), 1);
    assert_eq!(section(&erasures, "hold_changes").len(), 3);

    // Retention: policies, holds, oldest entries.
    let (retention, _) = fetch(&s, &env, "retention", "").await;
    assert_eq!(section(&retention, "policies").len(), 2);
    assert_eq!(
        summary(&retention, "Event types without a retention policy"),
        "1"
    );
    assert_eq!(summary(&retention, "Subjects under hold"), "1");
    let oldest = section(&retention, "oldest_entries");
    let payment = oldest.iter().find(|r| r[0] == "PaymentAuthorized").unwrap();
    assert_eq!(
        (payment[1].as_str(), payment[2].as_str()),
        (Some("365"), Some("3"))
    );

    // Processing: purposes declared per type; the undeclared one is named.
    let (processing, _) = fetch(&s, &env, "processing", "").await;
    let rows = section(&processing, "processing_activities");
    let viewed = rows.iter().find(|r| r[0] == "RecordViewed").unwrap();
    assert_eq!(viewed[1], "treatment (HIPAA)");
    assert_eq!(viewed[4], "yes");
    let noted = rows.iter().find(|r| r[0] == "Noted").unwrap();
    assert_eq!(
        (noted[1].as_str(), noted[4].as_str()),
        (Some("not declared"), Some("no"))
    );

    // Integrity: verification passed over every entry; the keys and their ranges.
    let (integrity, _) = fetch(&s, &env, "integrity", "").await;
    assert_eq!(summary(&integrity, "Verification"), "passed");
    let size = integrity["checkpoint"]["tree_size"].as_u64().unwrap();
    assert!(
        summary(&integrity, "Entries verified")
            .parse::<u64>()
            .unwrap()
            >= size
    );
    assert_eq!(section(&integrity, "signing_keys").len(), 1);

    // A tampered report does not verify.
    let mut doc: Value = serde_json::from_slice(&body).unwrap();
    doc["report"]["summary"][0]["value"] = json!("13");
    let keys = auditledger::keyfiles::trusted_keys(&env.path().join("keys")).unwrap();
    assert!(auditledger::compliance::sign::verify(doc.to_string().as_bytes(), &keys).is_err());

    // CSV names the signed JSON.
    let csv = s
        .client
        .get(s.url("/v1/audit/reports/erasures?format=csv"))
        .send()
        .await
        .unwrap();
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = csv.text().await.unwrap();
    assert!(csv.contains("signed_json_sha256,"), "{csv}");
    assert!(csv.contains("GET /v1/audit/reports/signed/"), "{csv}");
    assert!(csv.contains("section,refused_erasures"), "{csv}");
    // Bad input.
    for q in [
        "?from=yesterday",
        "?format=pdf",
        "?from=2030-01-01&to=2020-01-01",
    ] {
        let r = s
            .client
            .get(s.url(&format!("/v1/audit/reports/activity{q}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{q}");
    }
    let r = s
        .client
        .get(s.url("/v1/audit/reports/everything"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Someone with the database deletes the hold row: the erasure goes through, and the
    // erasures report shows an erasure of a subject the chain says is under hold.
    assert_eq!(
        summary(&erasures, "Erasures of a subject under hold (must be none)"),
        "0"
    );
    env.sql(&["DELETE FROM legal_holds"]).await;
    let r = s
        .client
        .post(s.url("/v1/subjects/erase"))
        .json(&json!({"subject": "person1@example.com", "reason": "r", "request_ref": "DSR-2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (erasures, _) = fetch(&s, &env, "erasures", "").await;
    assert_eq!(
        summary(&erasures, "Erasures of a subject under hold (must be none)"),
        "1"
    );
}

fn activity_sha(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["report_sha256"].as_str().unwrap().to_owned()
}

on_both_backends!(each_report_matches_the_ledger_it_was_computed_from);

/// The HTML report is a printable page: rendered by headless Chromium (Debian's `chromium`,
/// which .ci/run installs) to a screenshot and a PDF; its DOM has the summary, the tables and
/// the chart, and it loads nothing from the network. Fails, never skips, without Chromium.
#[tokio::test]
async fn the_html_report_renders_in_chromium_to_a_screenshot_and_a_pdf() {
    let env = Env::new(Backend::Sqlite).await;
    let s = env.serve(&["--auth"]).await;
    seed(&env, &s).await;
    let r = s
        .client
        .get(s.url("/v1/audit/reports/erasures?format=html"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = r.text().await.unwrap();
    for forbidden in ["<script", "src=\"http", "href=\"http", "@import", "url("] {
        assert!(
            !html.contains(forbidden),
            "the page must load nothing: {forbidden}"
        );
    }
    let page = env.path().join("report.html");
    std::fs::write(&page, &html).unwrap();
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("Chromium is not installed: .ci/run installs Debian's chromium package");
    let url = format!("file://{}", page.display());
    let run = |args: &[&str]| {
        let out = std::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
            ])
            .args(args)
            .arg(&url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let dom = String::from_utf8(run(&["--dump-dom"])).unwrap();
    assert!(dom.contains("id=\"summary\""), "the summary");
    assert!(
        dom.contains("Refused erasures (legal hold)"),
        "the summary's figures"
    );
    for table in [
        "erasures",
        "refused_erasures",
        "hold_changes",
        "holds_in_force",
    ] {
        assert!(
            dom.contains(&format!("id=\"{table}\"")),
            "the {table} section"
        );
    }
    assert!(dom.contains("data-section=\"refused_erasures\""), "a table");
    assert!(dom.contains("<svg id=\"events-per-day\""), "the chart");
    assert!(dom.contains("class=\"bar\""), "the chart's bars");
    let png = env.path().join("report.png");
    run(&[
        &format!("--screenshot={}", png.display()),
        "--window-size=1200,1600",
    ]);
    let png = std::fs::read(&png).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    assert!(
        png.len() > 20_000,
        "a screenshot with content, {} bytes",
        png.len()
    );
    let pdf = env.path().join("report.pdf");
    run(&[
        &format!("--print-to-pdf={}", pdf.display()),
        "--no-pdf-header-footer",
    ]);
    let pdf = std::fs::read(&pdf).unwrap();
    assert!(pdf.starts_with(b"%PDF-"), "a PDF");
    assert!(
        pdf.len() > 10_000,
        "a PDF with content, {} bytes",
        pdf.len()
    );
    let pages = pdf.windows(10).filter(|w| w == b"/Type /Pag").count();
    assert!(pages >= 1, "the PDF has pages");
}
