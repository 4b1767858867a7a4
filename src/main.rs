//! The `auditledger` command line. Parsing and dispatch only; the work is in `cli`.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's malloc: buffers allocated on one thread and freed on another
/// (request bodies, sealed payloads, rows) made glibc's arenas consolidate constantly.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = auditledger::cli::Cli::parse();
    auditledger::cli::init_tracing();
    auditledger::cli::run(cli)
}
