//! The `auditledger` command line. Parsing and dispatch only; the work is in `cli`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = auditledger::cli::Cli::parse();
    auditledger::cli::init_tracing();
    auditledger::cli::run(cli)
}
