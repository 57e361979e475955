//! The Prometheus rules and the Grafana dashboard refer only to series the service
//! exports (or to recording rules defined beside them), so they cannot drift apart.

use std::collections::BTreeSet;

use checkout_service::ops::metrics::Metrics;
use serde_json::Value;

/// Names used as series selectors in a PromQL expression: identifiers outside
/// label matchers, range brackets and `by (...)` lists that are not function calls.
fn selectors(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "and",
        "or",
        "unless",
        "offset",
        "on",
        "ignoring",
        "bool",
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let skip_to = |mut i: usize, close: char| {
        while i < chars.len() && chars[i] != close {
            i += if chars[i] == '"' {
                chars[i + 1..].iter().position(|c| *c == '"').map_or(1, |p| p + 2)
            } else {
                1
            };
        }
        i + 1
    };
    let mut found = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip_to(i + 1, '}');
        } else if c == '[' {
            i = skip_to(i + 1, ']');
        } else if c == '"' {
            i = skip_to(i + 1, '"');
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let opens_paren = chars.get(next) == Some(&'(');
            if (word == "by" || word == "without") && opens_paren {
                i = skip_to(next + 1, ')');
            } else if !opens_paren && !KEYWORDS.contains(&word.as_str()) {
                found.insert(word);
            }
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    found
}

fn exported() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for name in Metrics::new().names() {
        for suffix in ["", "_bucket", "_sum", "_count"] {
            names.insert(format!("{name}{suffix}"));
        }
    }
    names
}

/// (recording rules, every expression) of the rules file, read line by line.
fn rules() -> (BTreeSet<String>, Vec<String>) {
    let text = std::fs::read_to_string("deploy/prometheus/alerts.yml").expect("rules file");
    let mut records = BTreeSet::new();
    let mut exprs = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- record: ") {
            records.insert(name.trim().to_string());
        } else if let Some(expr) = trimmed.strip_prefix("expr: ") {
            if expr.trim() == "|" {
                let indent = lines.peek().map_or(0, |l| l.len() - l.trim_start().len());
                let mut block = String::new();
                while let Some(next) = lines.peek() {
                    if next.trim().is_empty() || next.len() - next.trim_start().len() < indent {
                        break;
                    }
                    block.push_str(next.trim());
                    block.push(' ');
                    lines.next();
                }
                exprs.push(block);
            } else {
                exprs.push(expr.to_string());
            }
        }
    }
    (records, exprs)
}

#[test]
fn the_prometheus_rules_use_only_exported_series() {
    let exported = exported();
    let (records, exprs) = rules();
    assert!(records.len() >= 5 && exprs.len() >= 15, "{records:?} {}", exprs.len());
    for expr in &exprs {
        for name in selectors(expr) {
            assert!(
                exported.contains(&name) || records.contains(&name),
                "{name} in `{expr}` is not exported"
            );
        }
    }
}

#[test]
fn the_dashboard_uses_only_exported_series_and_recording_rules() {
    let exported = exported();
    let (records, _) = rules();
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string("deploy/grafana/checkout-service.json").expect("dashboard"))
            .expect("the dashboard is JSON");
    let mut used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for name in selectors(expr) {
                assert!(
                    exported.contains(&name) || records.contains(&name),
                    "{name} in `{expr}` is not exported"
                );
                used.insert(name);
            }
        }
    }
    for name in Metrics::new().names() {
        assert!(
            used.iter().any(|u| u == &name || u.starts_with(&format!("{name}_"))),
            "the dashboard shows no panel for {name}"
        );
    }
}

#[test]
fn the_selector_scanner_finds_series_and_skips_functions() {
    let found = selectors(
        r#"histogram_quantile(0.99, sum by (le, route) (rate(http_request_duration_seconds_bucket{route!~"/health.*"}[5m]))) > 5 * checkout:error_ratio:rate1h"#,
    );
    assert_eq!(
        found,
        BTreeSet::from([
            "http_request_duration_seconds_bucket".to_string(),
            "checkout:error_ratio:rate1h".to_string()
        ])
    );
}

/// Runs `program` with `args` from the repository root; returns (success, output).
fn tool_output(program: &std::path::Path, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("{} runs: {error}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn the_dockerfile_passes_hadolint_and_runs_as_a_user_with_a_healthcheck() {
    let dockerfile = std::fs::read_to_string("Dockerfile").expect("Dockerfile");
    let stages = dockerfile.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 2, "multi-stage");
    assert!(
        dockerfile
            .lines()
            .any(|l| l.starts_with("USER ") && !l.contains("root") && l.trim() != "USER 0")
    );
    assert!(
        dockerfile.contains("HEALTHCHECK") && dockerfile.contains("/health/live"),
        "a HEALTHCHECK on /health/live"
    );
    let Some(hadolint) = crate::helpers::test_tool("hadolint") else {
        return;
    };
    let (ok, text) = tool_output(&hadolint, &["Dockerfile"]);
    assert!(ok, "hadolint: {text}");
}

#[test]
fn the_kubernetes_manifests_validate_and_give_a_drain_time_to_finish() {
    let files: Vec<String> = std::fs::read_dir("deploy/kubernetes")
        .expect("deploy/kubernetes")
        .filter_map(|entry| entry.ok().map(|e| e.path().display().to_string()))
        .filter(|path| path.ends_with(".yaml"))
        .collect();
    let deployment = std::fs::read_to_string("deploy/kubernetes/deployment.yaml").expect("deployment");
    // `key: N`, or `- name: KEY` followed by `value: "N"`.
    let number = |key: &str| -> u64 {
        let parse = |line: &str| {
            line.rsplit(':')
                .next()
                .and_then(|v| v.trim().trim_matches('"').parse().ok())
        };
        let mut lines = deployment.lines().skip_while(|l| !l.contains(key));
        let line = lines.next().unwrap_or_else(|| panic!("{key}"));
        parse(line)
            .or_else(|| lines.next().and_then(parse))
            .unwrap_or_else(|| panic!("a number for {key}"))
    };
    let grace = number("terminationGracePeriodSeconds") * 1000;
    let drain = number("SHUTDOWN_DRAIN_DELAY_MS") + number("SHUTDOWN_TIMEOUT_MS");
    assert!(
        grace > drain,
        "the grace period ({grace} ms) covers the drain ({drain} ms)"
    );
    for probe in [
        "/health/ready",
        "/health/live",
        "secretRef",
        "resources:",
        "limits:",
        "requests:",
    ] {
        assert!(deployment.contains(probe), "{probe}");
    }
    for kind in [
        "kind: Deployment",
        "kind: Service",
        "kind: PodDisruptionBudget",
        "kind: Secret",
    ] {
        assert!(
            files
                .iter()
                .any(|f| std::fs::read_to_string(f).is_ok_and(|t| t.contains(kind))),
            "{kind} in deploy/kubernetes"
        );
    }
    let Some(validate) = crate::helpers::test_tool("kubernetes-validate") else {
        return;
    };
    let mut args = vec!["--strict"];
    args.extend(files.iter().map(String::as_str));
    let (ok, text) = tool_output(&validate, &args);
    assert!(ok, "kubernetes-validate: {text}");
    assert_eq!(text.matches("passed").count(), files.len(), "{text}");
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string("deploy/systemd/checkout-service.service").expect("unit");
    for setting in [
        "NoNewPrivileges=yes",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "KillSignal=SIGTERM",
    ] {
        assert!(unit.lines().any(|l| l == setting), "{setting}");
    }
    let Some(analyze) = crate::helpers::on_path("systemd-analyze") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI requires systemd-analyze"
        );
        eprintln!("systemd-analyze is not installed: SKIPPED");
        return;
    };
    // systemd-analyze checks that ExecStart's binary exists: point the unit at the
    // binary under test, everything else as shipped.
    let binary = crate::helpers::binary().display().to_string();
    let copy = std::env::temp_dir().join(format!(
        "{}.service",
        checkout_service::domain::ids::random_id("checkout-service-")
    ));
    std::fs::write(&copy, unit.replace("/usr/local/bin/checkout", &binary)).expect("write the unit");
    let (ok, text) = tool_output(&analyze, &["verify", copy.to_str().expect("path")]);
    let _ = std::fs::remove_file(&copy);
    assert!(ok && text.trim().is_empty(), "systemd-analyze verify: {text}");
}
