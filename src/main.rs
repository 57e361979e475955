//! The `checkout` binary: parses the command line and runs it.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    checkout_service::cli::run(checkout_service::cli::Cli::parse())
}
