//! The article's decision tree over the facts: did it just start (after a deploy),
//! has it always happened, or did it grow with load? Root causes are looked for
//! before symptoms: a failing start, then a resource that ran out (a pool at its
//! limit behind a wave of other errors is the cause, not the errors), then a deploy
//! the errors followed, then wrong configuration, then a failing dependency, and only
//! then an unhandled exception.

use serde::Serialize;

use super::facts::{Facts, Group};
use super::live::Live;
use crate::clock::rfc3339_ms;

/// The kind of incident.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Errors started with a new version, or a new version cannot start.
    BadDeployment,
    /// The service's own code failed on something it did not expect.
    UnhandledException,
    /// A configuration value is missing or wrong.
    Misconfiguration,
    /// A resource ran out: database connections, memory, disk or descriptors.
    ResourceExhaustion,
    /// A dependency is down or failing.
    DependencyFailure,
    /// No server errors.
    NoProblem,
}

impl Category {
    /// The category as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::BadDeployment => "bad_deployment",
            Category::UnhandledException => "unhandled_exception",
            Category::Misconfiguration => "misconfiguration",
            Category::ResourceExhaustion => "resource_exhaustion",
            Category::DependencyFailure => "dependency_failure",
            Category::NoProblem => "no_problem",
        }
    }

    /// The article's decision output for this category.
    pub fn fix(self) -> &'static str {
        match self {
            Category::BadDeployment => {
                "Roll back to the previous version first, investigate second. Then fix and redeploy with the \
                 migrations applied before the new build starts (`checkout migrate`, then deploy; `checkout check` \
                 in the pipeline refuses a schema mismatch)."
            }
            Category::UnhandledException => {
                "Handle the failure where it happens and return a meaningful error instead of a 500, then fix the \
                 root cause. The top error group names the class and endpoint; `checkout triage --error-id <id>` \
                 shows a sample's whole request."
            }
            Category::Misconfiguration => {
                "Set the missing or wrong configuration value and restart the service. Run `checkout check` in the \
                 deploy pipeline so a bad value fails the deploy instead of serving 500s."
            }
            Category::ResourceExhaustion => {
                "Immediate: scale out or free the resource that ran out (for the database pool: kill idle or \
                 long-running sessions and whatever holds locks). Long term: find the leak or the slow query, then \
                 size the limit (DB_POOL_MAX, memory, disk, ulimit -n); keep the timeouts so requests fail fast \
                 with 503 instead of queueing."
            }
            Category::DependencyFailure => {
                "The dependency is failing and the service is already failing fast with 503 and Retry-After. Check \
                 the dependency's own status and fail over if you can; the circuit closes by itself once a probe \
                 succeeds, and unfinished checkouts are settled by the reconciler."
            }
            Category::NoProblem => "Nothing to fix: no server errors in the window.",
        }
    }
}

/// The conclusion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The category.
    pub category: Category,
    /// One sentence.
    pub summary: String,
    /// When the problem started, Unix milliseconds.
    pub onset_ms: Option<i64>,
    /// The lines that decided it.
    pub evidence: Vec<String>,
    /// The cause, when told apart from symptoms.
    pub root_cause: Option<String>,
    /// Error groups that are symptoms of the root cause.
    pub symptoms: Vec<String>,
    /// What to do.
    pub fix: String,
}

fn at(ms: i64) -> String {
    rfc3339_ms(ms)
}

fn human_duration(ms: i64) -> String {
    let seconds = ms.max(0) / 1000;
    match seconds {
        0..=119 => format!("{seconds}s"),
        120..=7199 => format!("{}m {}s", seconds / 60, seconds % 60),
        _ => format!("{}h {}m", seconds / 3600, (seconds % 3600) / 60),
    }
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "n/a".into()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

const DEPENDENCY_CLASSES: &[&str] = &[
    "CircuitOpen",
    "UpstreamConnectFailed",
    "UpstreamTimeout",
    "UpstreamConnectionLost",
    "UpstreamServerError",
    "UpstreamOverloaded",
    "UpstreamMalformedResponse",
    "DbUnreachable",
];

/// What a database says when a query meets a schema it does not match: SQLite's
/// words, and PostgreSQL's SQLSTATEs for an undefined table or column.
const SCHEMA_ERRORS: &[&str] = &[
    "no such table",
    "no such column",
    "has no column named",
    "SQLSTATE 42P01",
    "SQLSTATE 42703",
];

/// Whether a group's cause says the schema does not match the build.
fn is_schema_error(group: &Group) -> bool {
    let text = format!("{} {}", group.message, group.cause.as_deref().unwrap_or_default());
    SCHEMA_ERRORS.iter().any(|words| text.contains(words))
}

fn describe(group: &Group) -> String {
    let endpoints: Vec<&str> = group.endpoints.iter().map(String::as_str).collect();
    let cause = match &group.cause {
        Some(cause) if normalize_eq(cause, &group.message) => String::new(),
        Some(cause) => format!(" (cause: {cause})"),
        None => String::new(),
    };
    format!(
        "{} x{} {}: \"{}\"{cause} on {}, {} to {}, e.g. {}",
        group.error_class,
        group.count,
        group.status,
        group.message,
        if endpoints.is_empty() {
            "-".to_string()
        } else {
            endpoints.join(", ")
        },
        at(group.first_ms),
        at(group.last_ms),
        group.sample_ids.join(", ")
    )
}

fn normalize_eq(cause: &str, message: &str) -> bool {
    super::facts::normalize(cause) == message
}

/// Whether a group says a dependency refused this service's credentials.
fn is_configuration(group: &Group) -> bool {
    group.error_class == "UpstreamAuthError"
}

/// A resource that ran out, as (what, evidence).
fn exhausted(facts: &Facts, live: Option<&Live>) -> Option<(String, String)> {
    let pool_group = facts.groups.iter().find(|g| g.error_class == "DbPoolExhausted");
    let pool = facts
        .worst_pool
        .as_ref()
        .map(|r| (r.at_ms, r.value))
        .or_else(|| live.and_then(|l| l.pool).map(|p| (facts.last_ms.unwrap_or(0), p)));
    if let Some((when, pool)) = pool
        && pool.max > 0
        && (pool.pending > 0 || pool_group.is_some())
        && pool.active * 100 >= pool.max * 95
    {
        return Some((
            "the database connection pool".into(),
            format!(
                "database pool at its limit: {} of {} connections in use, {} callers waiting, {} acquire timeouts so far (at {})",
                pool.active,
                pool.max,
                pool.pending,
                pool.acquire_timeouts,
                at(when)
            ),
        ));
    }
    if let Some(group) = pool_group {
        return Some((
            "the database connection pool".into(),
            format!(
                "{} requests found no free database connection (DbPoolExhausted) between {} and {}",
                group.count,
                at(group.first_ms),
                at(group.last_ms)
            ),
        ));
    }
    let memory = facts
        .worst_memory
        .as_ref()
        .map(|m| (m.at_ms, m.value.usage_ratio, m.value.source.clone()));
    let memory = memory.or_else(|| {
        live.and_then(|l| l.memory_ratio)
            .map(|r| (facts.last_ms.unwrap_or(0), r, "live".into()))
    });
    if let Some((when, ratio, source)) = memory
        && ratio > 0.9
    {
        return Some((
            "memory".into(),
            format!(
                "memory at {:.0}% of its {source} limit (at {})",
                ratio * 100.0,
                at(when)
            ),
        ));
    }
    let disk = facts
        .worst_disk
        .as_ref()
        .map(|d| (d.at_ms, d.value.usage_ratio, d.value.path.clone()));
    let disk = disk.or_else(|| {
        live.and_then(|l| l.disk_ratio)
            .map(|r| (facts.last_ms.unwrap_or(0), r, "the log filesystem".into()))
    });
    if let Some((when, ratio, path)) = disk
        && ratio > 0.95
    {
        return Some((
            "disk space".into(),
            format!("disk of {path} {:.0}% full (at {})", ratio * 100.0, at(when)),
        ));
    }
    let fds = facts
        .worst_fds
        .as_ref()
        .map(|f| (f.at_ms, f.value))
        .or_else(|| live.and_then(|l| l.fds).map(|f| (facts.last_ms.unwrap_or(0), f)));
    if let Some((when, fds)) = fds
        && fds.max > 0
        && fds.open * 100 >= fds.max * 90
    {
        return Some((
            "file descriptors".into(),
            format!("{} of {} file descriptors open (at {})", fds.open, fds.max, at(when)),
        ));
    }
    None
}

/// Requests per second before (up to ten minutes) and after `onset`.
fn volume_around(facts: &Facts, onset: i64, until: i64) -> (f64, f64) {
    let step = super::facts::VOLUME_INTERVAL_MS;
    let start = onset - onset.rem_euclid(step);
    let rate = |from: i64, to: i64| {
        let requests: u64 = facts.volume.range(from..to).map(|(_, v)| v.requests).sum();
        let seconds = ((to - from).max(step)) as f64 / 1000.0;
        requests as f64 / seconds
    };
    let first = facts
        .volume
        .keys()
        .next()
        .copied()
        .unwrap_or(start)
        .max(start - 10 * 60_000);
    let before = if first < start { rate(first, start) } else { 0.0 };
    (before, rate(start, until - until.rem_euclid(step) + step))
}

/// Walks the decision tree.
pub fn decide(facts: &Facts, live: Option<&Live>) -> Verdict {
    let mut evidence = Vec::new();
    let groups = facts.groups_by_size();
    let last_startup = facts.startups.last();

    // Step 2 first when the service cannot even start: what do the startup records say?
    let failing_start = facts
        .startup_failures
        .last()
        .filter(|failure| last_startup.is_none_or(|s| failure.at_ms > s.at_ms));
    if let Some(failure) = failing_start {
        let failures: Vec<_> = facts
            .startup_failures
            .iter()
            .filter(|f| last_startup.is_none_or(|s| f.at_ms > s.at_ms))
            .collect();
        // Each attempt reports the same problems: the most repeated one counts them.
        let mut repeats: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
        for f in &failures {
            *repeats.entry(f.message.as_str()).or_default() += 1;
        }
        let attempts = repeats.values().max().copied().unwrap_or(1);
        evidence.push(format!(
            "the service failed to start ({} startup failure records over {attempts} attempts, last at {}); it is not serving",
            failures.len(),
            at(failure.at_ms)
        ));
        let mut distinct: Vec<&str> = failures.iter().map(|f| f.message.as_str()).collect();
        distinct.sort();
        distinct.dedup();
        for message in &distinct {
            evidence.push(format!("startup: {message}"));
        }
        let previous = last_startup.map(|s| s.version.as_str());
        let new_version = previous.is_some_and(|p| p != failure.version);
        if let Some(previous) = previous.filter(|_| new_version) {
            evidence.push(format!(
                "the failing build is {}, the last one that ran was {previous}",
                failure.version
            ));
        }
        let schema = distinct.iter().any(|m| m.contains("database schema is at version"));
        // Unreachable or silent, not refusing what it was told (a wrong password or
        // database name is configuration).
        let database_down = distinct.iter().all(|m| {
            m.contains("did not answer SELECT 1") || m.contains("Connection refused") || m.contains("(os error")
        });
        let category = if schema || new_version {
            Category::BadDeployment
        } else if database_down {
            Category::DependencyFailure
        } else {
            Category::Misconfiguration
        };
        let summary = match category {
            Category::BadDeployment if schema => format!(
                "The deploy of {} cannot start: its database schema does not match ({}).",
                failure.version,
                distinct
                    .iter()
                    .find(|m| m.contains("schema"))
                    .copied()
                    .unwrap_or_default()
            ),
            Category::BadDeployment => format!("The deploy of {} cannot start: {}", failure.version, distinct[0]),
            Category::DependencyFailure => "The service cannot start because the database does not answer.".into(),
            _ => format!(
                "The service cannot start because of its configuration: {}",
                distinct.join(" ")
            ),
        };
        return Verdict {
            category,
            summary,
            onset_ms: failures.first().map(|f| f.at_ms),
            evidence,
            root_cause: Some(distinct.join(" ")),
            symptoms: Vec::new(),
            fix: category.fix().to_string(),
        };
    }

    if facts.errors_5xx == 0 && groups.is_empty() {
        evidence.push(format!(
            "{} requests, no 5xx; {} client errors (4xx) are the clients' to fix",
            facts.requests, facts.errors_4xx
        ));
        if let Some(live) = live
            && let Some(status) = live.health_status
        {
            evidence.push(format!("live /health answers {status}"));
        }
        return Verdict {
            category: Category::NoProblem,
            summary: format!("No server errors in {} requests.", facts.requests),
            onset_ms: None,
            evidence,
            root_cause: None,
            symptoms: Vec::new(),
            fix: Category::NoProblem.fix().to_string(),
        };
    }

    // Step 1: when did it start, relative to a deploy and to load?
    let onset = facts.first_error_ms().unwrap_or(0);
    let until = facts.last_ms.unwrap_or(onset);
    evidence.push(format!(
        "{} requests, {} answered 5xx ({}), from {} to {}",
        facts.requests,
        facts.errors_5xx,
        percent(facts.errors_5xx, facts.requests),
        at(onset),
        at(groups.iter().map(|g| g.last_ms).max().unwrap_or(onset))
    ));
    let startup = facts.startups.iter().rev().find(|s| s.at_ms <= onset);
    let previous = startup.and_then(|s| {
        facts
            .startups
            .iter()
            .rev()
            .find(|p| p.at_ms < s.at_ms && p.version != s.version)
    });
    let errors_before_startup = startup.is_some_and(|s| groups.iter().any(|g| g.first_ms < s.at_ms));
    let deployed = match (startup, previous) {
        (Some(startup), Some(previous)) if !errors_before_startup => {
            evidence.push(format!(
                "5xx began {} after {} started, deployed over {} (no 5xx before the deploy)",
                human_duration(onset - startup.at_ms),
                startup.version,
                previous.version
            ));
            Some((startup, previous))
        }
        (Some(startup), _) => {
            evidence.push(format!(
                "5xx began {} after the service started as {} (no version change)",
                human_duration(onset - startup.at_ms),
                startup.version
            ));
            None
        }
        (None, _) => {
            evidence
                .push("no startup record before the first 5xx: the errors have been there since the logs begin".into());
            None
        }
    };
    let (before, after) = volume_around(facts, onset, until);
    let grew = before > 0.0 && after > before * 1.5;
    if before > 0.0 {
        evidence.push(format!(
            "request volume {before:.1}/s before the onset, {after:.1}/s after{}",
            if grew { ": it grew with load" } else { "" }
        ));
    }
    for change in &facts.breakers {
        evidence.push(format!(
            "circuit breaker {} went {} -> {} at {}",
            change.subject,
            change.detail,
            change.state,
            at(change.at_ms)
        ));
    }
    for alert in facts.alerts.iter().filter(|a| a.state == "firing") {
        evidence.push(format!(
            "alert {} ({}) fired at {}",
            alert.subject,
            alert.detail,
            at(alert.at_ms)
        ));
    }
    if let Some(live) = live {
        evidence.extend(live.evidence());
    }
    let top = groups.first().copied();
    let stopped = stopped_at(facts, &groups);
    if let Some((when, answered)) = stopped {
        evidence.push(format!(
            "the last 5xx was at {}; {answered} requests answered since without one",
            at(when)
        ));
    }

    // Step 4 before the rest: a resource that ran out is the cause of everything else.
    if let Some((resource, line)) = exhausted(facts, live) {
        evidence.push(line.clone());
        let symptoms: Vec<String> = groups
            .iter()
            .filter(|g| g.error_class != "DbPoolExhausted")
            .map(|g| format!("{} x{}", g.error_class, g.count))
            .collect();
        if !symptoms.is_empty() {
            evidence.push(format!("symptoms of the same cause: {}", symptoms.join(", ")));
        }
        return Verdict {
            category: Category::ResourceExhaustion,
            summary: format!(
                "{} ran out{}; the other errors are its symptoms.",
                capitalize(&resource),
                if grew { " as load grew" } else { "" }
            ),
            onset_ms: Some(onset),
            evidence,
            root_cause: Some(line),
            symptoms,
            fix: Category::ResourceExhaustion.fix().to_string(),
        };
    }

    // Step 2: it just (re)started onto a schema its queries do not match: a bad
    // deployment, whether or not the version changed.
    if let (Some(startup), Some(group)) = (startup, groups.iter().copied().find(|g| is_schema_error(g))) {
        evidence.push(format!(
            "queries fail on the schema since the start at {}: {}",
            at(startup.at_ms),
            group.cause.as_deref().unwrap_or(&group.message)
        ));
        let summary = format!(
            "After {} started at {}, its queries do not match the database schema: {}",
            startup.version,
            at(startup.at_ms),
            group.cause.as_deref().unwrap_or(&group.message)
        );
        return verdict(Category::BadDeployment, summary, onset, evidence, Some(group));
    }

    // Step 2: it just started, with a deploy.
    if let Some((startup, previous)) = deployed {
        let summary = match top {
            Some(group) => format!(
                "5xx started right after deploying {} over {}: {}",
                startup.version,
                previous.version,
                group.cause.as_deref().unwrap_or(&group.message)
            ),
            None => format!("5xx started right after deploying {}.", startup.version),
        };
        return verdict(Category::BadDeployment, summary, onset, evidence, top);
    }

    // Step 3: misconfiguration or an unhandled exception; a failing dependency first.
    if let Some(group) = groups.iter().find(|g| is_configuration(g)) {
        let summary = format!(
            "The {} refuses this service's credentials ({} requests): check its API key, PAYMENT_API_KEY \
             (STRIPE_SECRET_KEY with Stripe).",
            readable_dependency(group.dependency.as_deref().unwrap_or("unknown")),
            group.count
        );
        return verdict(Category::Misconfiguration, summary, onset, evidence, Some(group));
    }
    let dependency_errors: u64 = groups
        .iter()
        .filter(|g| DEPENDENCY_CLASSES.contains(&g.error_class.as_str()))
        .map(|g| g.count)
        .sum();
    let all_errors: u64 = groups.iter().map(|g| g.count).sum();
    if dependency_errors * 2 > all_errors {
        let mut by_dependency: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
        for group in groups
            .iter()
            .filter(|g| DEPENDENCY_CLASSES.contains(&g.error_class.as_str()))
        {
            *by_dependency
                .entry(group.dependency.as_deref().unwrap_or("unknown"))
                .or_default() += group.count;
        }
        let (dependency, count) = by_dependency
            .iter()
            .max_by_key(|(_, c)| **c)
            .map(|(d, c)| (*d, *c))
            .unwrap_or(("unknown", 0));
        let classes: Vec<String> = groups
            .iter()
            .filter(|g| g.dependency.as_deref() == Some(dependency))
            .map(|g| format!("{} x{}", g.error_class, g.count))
            .collect();
        // An open circuit is the breaker's answer to the failures, not a cause: the
        // cause is what the dependency did before it opened.
        let cause = groups
            .iter()
            .copied()
            .find(|g| g.dependency.as_deref() == Some(dependency) && g.error_class != "CircuitOpen");
        let summary = format!(
            "The {} {}: {count} requests answered 503 because of it ({}).",
            readable_dependency(dependency),
            if stopped.is_some() { "was failing" } else { "is failing" },
            classes.join(", ")
        );
        let mut verdict = verdict(
            Category::DependencyFailure,
            with_end(summary, stopped),
            onset,
            evidence,
            cause.or(top),
        );
        verdict.symptoms = groups
            .iter()
            .filter(|g| g.dependency.as_deref() == Some(dependency) && g.error_class == "CircuitOpen")
            .map(|g| format!("{} x{} (the breaker failing fast)", g.error_class, g.count))
            .collect();
        return verdict;
    }
    if let Some(group) = top.filter(|g| g.error_class == "UpstreamContractError") {
        let summary = format!(
            "A bug: the {} refuses this service's requests as not matching its API ({} x{}: {}).",
            readable_dependency(group.dependency.as_deref().unwrap_or("unknown")),
            group.error_class,
            group.count,
            group.cause.as_deref().unwrap_or(&group.message)
        );
        return verdict(
            Category::UnhandledException,
            with_end(summary, stopped),
            onset,
            evidence,
            top,
        );
    }
    let summary = match top {
        Some(group) => format!(
            "Unexpected errors in the service's own handling: {} x{} on {} ({}).",
            group.error_class,
            group.count,
            group.endpoints.iter().next().map(String::as_str).unwrap_or("-"),
            group.cause.as_deref().unwrap_or(&group.message)
        ),
        None => "Unexpected server errors.".to_string(),
    };
    verdict(
        Category::UnhandledException,
        with_end(summary, stopped),
        onset,
        evidence,
        top,
    )
}

/// When the errors stopped, if they did: the last 5xx more than a minute before the
/// logs end, with requests answered since.
fn stopped_at(facts: &Facts, groups: &[&Group]) -> Option<(i64, u64)> {
    let last_error = groups.iter().map(|g| g.last_ms).max()?;
    let end = facts.last_ms?;
    if end - last_error < 60_000 {
        return None;
    }
    let step = super::facts::VOLUME_INTERVAL_MS;
    let since = last_error - last_error.rem_euclid(step) + step;
    let answered: u64 = facts
        .volume
        .range(since..)
        .map(|(_, v)| v.requests - v.errors_5xx)
        .sum();
    let failed: u64 = facts.volume.range(since..).map(|(_, v)| v.errors_5xx).sum();
    (answered > 0 && failed == 0).then_some((last_error, answered))
}

/// `summary`, saying when the problem stopped if it did.
fn with_end(summary: String, stopped: Option<(i64, u64)>) -> String {
    match stopped {
        Some((when, answered)) => format!(
            "{summary} It stopped at {}: no 5xx since, over {answered} requests.",
            at(when)
        ),
        None => summary,
    }
}

fn verdict(category: Category, summary: String, onset: i64, evidence: Vec<String>, top: Option<&Group>) -> Verdict {
    Verdict {
        category,
        summary,
        onset_ms: Some(onset),
        evidence,
        root_cause: top.map(describe),
        symptoms: Vec::new(),
        fix: category.fix().to_string(),
    }
}

fn readable_dependency(name: &str) -> &str {
    match name {
        "paymentGateway" => "payment gateway",
        "inventoryService" => "inventory service",
        "database" => "database",
        other => other,
    }
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().collect::<String>() + chars.as_str(),
        None => String::new(),
    }
}

/// A group as one line, for the report.
pub fn group_line(group: &Group) -> String {
    describe(group)
}
