//! The `checkout` binary: parses the command line and runs it.

use std::process::ExitCode;

use clap::Parser as _;

/// A request makes a few dozen short-lived allocations; with mimalloc they cost
/// about half of what they cost in the system allocator (counted with callgrind on
/// the benchmark's routes, `docs/performance.md`).
#[global_allocator]
static ALLOCATOR: checkout_service::alloc::MiMalloc = checkout_service::alloc::MiMalloc;

fn main() -> ExitCode {
    // Errors are reported by their cause chain, never by a backtrace, so capturing
    // one for every error (anyhow does when RUST_BACKTRACE is set) is pure cost on
    // the paths that fail fast. Panics keep their backtraces. An operator's own
    // RUST_LIB_BACKTRACE setting wins.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: nothing else runs yet; no other thread can be reading the environment.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    checkout_service::cli::run(checkout_service::cli::Cli::parse())
}
