//! Build script: stamps the binary with the git commit it was built from, so every
//! log record and the `build_info` metric tie an error to a deploy.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=CHECKOUT_GIT_COMMIT");
    let commit = std::env::var("CHECKOUT_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=CHECKOUT_GIT_COMMIT={commit}");

    // Rebuild when HEAD moves: the branch switches, or the branch gets a new commit.
    let head = Path::new(".git/HEAD");
    if head.exists() {
        println!("cargo:rerun-if-changed=.git/HEAD");
        if let Ok(contents) = std::fs::read_to_string(head)
            && let Some(reference) = contents.trim().strip_prefix("ref: ")
        {
            println!("cargo:rerun-if-changed=.git/{reference}");
        }
    }
}

fn git_commit() -> Option<String> {
    let output = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let commit = String::from_utf8(output.stdout).ok()?.trim().to_string();
    (!commit.is_empty()).then_some(commit)
}
