//! The OpenAPI document is valid OpenAPI 3.1, every operation's real responses match what it
//! declares, and schemathesis (every check, a bounded number of examples) finds nothing
//! (issue 10). The tools come from PyPI, installed by tests/api_schema/run.sh; without Python
//! or the network this test fails, it never skips.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

#[test]
fn the_openapi_document_is_valid_honest_and_survives_schemathesis() {
    let out = std::process::Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/api_schema/run.sh"
        ))
        .arg(common::BIN)
        .output()
        .expect("bash runs");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("every real response matches its declared schema"),
        "{text}"
    );
    assert!(text.contains("passed"), "{text}");
    assert!(!text.contains("failed"), "{text}");
}
