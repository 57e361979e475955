//! The `checkout` binary: parses the command line and runs it.

use std::process::ExitCode;

use clap::Parser as _;

/// mimalloc: a request makes a few dozen short-lived allocations, which it serves
/// faster than the system allocator, and it returns memory after a burst.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Errors are reported by their cause chains, never by backtraces, so capturing
    // one for every error (anyhow does while RUST_BACKTRACE is set) is pure cost on
    // the paths that fail fast: with it set, a 503 cost three times as much.
    // Panics keep their backtraces. An operator's own RUST_LIB_BACKTRACE wins.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: nothing else runs yet; no other thread can be reading the environment.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    checkout_service::cli::run(checkout_service::cli::Cli::parse())
}
