//! The command line for a newcomer (issue 10): each subcommand's help describes its own flags,
//! and `--out -` means standard output.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Server, one_event, run_cli, workdir};
use reqwest::StatusCode;
use serde_json::json;

#[test]
fn each_subcommand_describes_its_own_flags() {
    let dir = workdir();
    for sub in ["verify", "export", "rotate-kek", "rotate-signing-key"] {
        let (code, out, err) = run_cli(dir.path(), &[sub, "--help"]);
        assert_eq!(code, 0, "{sub}: {err}");
        assert!(!out.contains("created on first start"), "{sub}: {out}");
        assert!(
            !out.contains("--sqlite-max-db-mib"),
            "{sub} does not write a quota: {out}"
        );
        assert!(out.contains("--data-dir"), "{sub}: {out}");
    }
    let (_, out, _) = run_cli(dir.path(), &["serve", "--help"]);
    for flag in [
        "--header-timeout-secs",
        "--body-timeout-secs",
        "--max-connections",
        "--shutdown-deadline-secs",
        "--idempotency-window-hours",
        "--sqlite-max-db-mib",
    ] {
        assert!(out.contains(flag), "serve --help lacks {flag}: {out}");
    }
}

#[tokio::test]
async fn export_to_standard_output() {
    let dir = workdir();
    let s = Server::start(dir.path(), &[]).await;
    let (st, v) = s.append("cli-1", &one_event("Paid", json!({"n": 1}))).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    s.terminate().await;
    let (code, out, err) = run_cli(dir.path(), &["export", "--out", "-"]);
    assert_eq!(code, 0, "{err}");
    assert!(!dir.path().join("-").exists(), "no file named -");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("only NDJSON on standard output"))
        .collect();
    assert!(lines.iter().any(|l| l["kind"] == "entry"), "{out}");
    assert!(err.contains("exported 1 entry"), "{err}");
    // The bundle verifies.
    std::fs::write(dir.path().join("b.ndjson"), &out).unwrap();
    let (code, out, err) = run_cli(
        dir.path(),
        &[
            "verify-bundle",
            "b.ndjson",
            "--public-key",
            "keys/signing.pub",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
}
