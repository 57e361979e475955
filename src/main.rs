//! The `checkout` binary: parses the command line and runs it.

use std::process::ExitCode;

use clap::Parser as _;

/// mimalloc: a request makes a few dozen short-lived allocations, which it serves
/// faster than the system allocator, and it returns memory after a burst.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    checkout_service::cli::run(checkout_service::cli::Cli::parse())
}
