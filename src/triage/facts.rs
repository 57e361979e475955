//! What triage learns from a stream of records, in bounded memory: volume over time,
//! 5xx grouped by class and normalized message, startups and deploys, startup
//! failures, the worst resource readings, breaker transitions and alerts.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::read::{DiskFields, FdFields, MemoryFields, PoolFields, Record};
use crate::clock::parse_rfc3339_ms;

/// Most distinct error groups kept; further ones are counted together.
const MAX_GROUPS: usize = 1000;
/// Most endpoints and sample IDs kept per group.
const MAX_ENDPOINTS: usize = 8;
const MAX_SAMPLES: usize = 3;
/// Most startups, failures, transitions and alerts kept (the latest ones).
const MAX_EVENTS: usize = 200;

/// The resolution of the volume timeline.
pub const VOLUME_INTERVAL_MS: i64 = 10_000;

/// Requests and server errors in one interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Volume {
    /// Requests answered.
    pub requests: u64,
    /// Of which 5xx.
    pub errors_5xx: u64,
}

/// 5xx errors of one kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// The error class.
    pub error_class: String,
    /// The message with numbers and identifiers replaced.
    pub message: String,
    /// The innermost cause of the first sample.
    pub cause: Option<String>,
    /// Status sent.
    pub status: u16,
    /// What a 503 blamed.
    pub dependency: Option<String>,
    /// How many.
    pub count: u64,
    /// First one, Unix milliseconds.
    pub first_ms: i64,
    /// Last one, Unix milliseconds.
    pub last_ms: i64,
    /// Where they happened.
    pub endpoints: BTreeSet<String>,
    /// Error IDs to look up.
    pub sample_ids: Vec<String>,
}

/// A successful start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Startup {
    /// When.
    pub at_ms: i64,
    /// The build.
    pub version: String,
    /// Schema version it found.
    pub schema_version: Option<i64>,
}

/// A start that failed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartupFailure {
    /// When.
    pub at_ms: i64,
    /// The build.
    pub version: String,
    /// The `STARTUP_FAILURE` line.
    pub message: String,
}

/// A state change seen in the logs (breaker or alert).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// When.
    pub at_ms: i64,
    /// What changed (dependency or alert name).
    pub subject: String,
    /// New state (`OPEN`, `firing`, ...).
    pub state: String,
    /// Extra detail (old state, severity).
    pub detail: String,
}

/// A reading and when it was taken.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading<T> {
    /// When.
    pub at_ms: i64,
    /// The value.
    pub value: T,
}

/// Everything learned from the records.
#[derive(Debug, Default)]
pub struct Facts {
    /// Records read.
    pub records: u64,
    /// Lines that were not records.
    pub skipped: u64,
    /// First and last record time.
    pub first_ms: Option<i64>,
    /// Last record time.
    pub last_ms: Option<i64>,
    /// Volume per 10 seconds (keys are interval starts, Unix milliseconds).
    pub volume: BTreeMap<i64, Volume>,
    /// Business requests answered.
    pub requests: u64,
    /// Of which 4xx.
    pub errors_4xx: u64,
    /// Of which 5xx.
    pub errors_5xx: u64,
    /// 5xx by kind.
    pub groups: Vec<Group>,
    group_index: HashMap<(String, String), usize>,
    /// 5xx beyond the group limit.
    pub ungrouped: u64,
    /// Successful starts.
    pub startups: Vec<Startup>,
    /// Failed starts.
    pub startup_failures: Vec<StartupFailure>,
    /// Breaker transitions.
    pub breakers: Vec<Change>,
    /// Alerts fired and resolved.
    pub alerts: Vec<Change>,
    /// The pool reading with the most callers waiting (then the fullest).
    pub worst_pool: Option<Reading<PoolFields>>,
    /// The latest pool reading.
    pub latest_pool: Option<Reading<PoolFields>>,
    /// The highest memory use.
    pub worst_memory: Option<Reading<MemoryFields>>,
    /// The highest disk use.
    pub worst_disk: Option<Reading<DiskFields>>,
    /// The highest descriptor use.
    pub worst_fds: Option<Reading<FdFields>>,
}

/// Routes that are not business traffic.
pub fn is_operational(endpoint: &str) -> bool {
    let path = endpoint.split_once(' ').map_or(endpoint, |(_, path)| path);
    path.starts_with("/health")
        || path.starts_with("/status")
        || matches!(path, "/metrics" | "/alerts" | "/openapi.json")
}

/// Replaces what varies between occurrences of the same error (numbers, IDs,
/// durations) so they group together.
pub fn normalize(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for word in message.split_inclusive(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '(' | ')')) {
        let (core, tail) = word.split_at(
            word.trim_end_matches(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '(' | ')'))
                .len(),
        );
        let is_id = ["cart_", "att_", "ord_", "txn_", "req_", "usr_", "inst_", "re_"]
            .iter()
            .any(|p| core.trim_matches(|c| c == '\'' || c == '"').starts_with(p))
            || core.starts_with("ERR-");
        if is_id {
            out.push_str("{id}");
        } else if core.chars().any(|c| c.is_ascii_digit()) {
            let mut last_digit = false;
            for c in core.chars() {
                if c.is_ascii_digit() {
                    if !last_digit {
                        out.push_str("{n}");
                    }
                    last_digit = true;
                } else {
                    out.push(c);
                    last_digit = false;
                }
            }
        } else {
            out.push_str(core);
        }
        out.push_str(tail);
    }
    out
}

impl Facts {
    /// Takes one record into account.
    pub fn add(&mut self, record: &Record<'_>) {
        let Some(at) = record.timestamp.as_deref().and_then(parse_rfc3339_ms) else {
            self.skipped += 1;
            return;
        };
        self.records += 1;
        self.first_ms = Some(self.first_ms.map_or(at, |first| first.min(at)));
        self.last_ms = Some(self.last_ms.map_or(at, |last| last.max(at)));
        let version = record.version.as_deref().unwrap_or("unknown");
        match record.event.as_deref() {
            Some("access") => self.add_access(record, at),
            Some("error") => self.add_error(record, at),
            Some("startup") => push_bounded(
                &mut self.startups,
                Startup {
                    at_ms: at,
                    version: version.to_string(),
                    schema_version: record.schema_version,
                },
            ),
            Some("startup_failure") => push_bounded(
                &mut self.startup_failures,
                StartupFailure {
                    at_ms: at,
                    version: version.to_string(),
                    message: record.message.as_deref().unwrap_or_default().to_string(),
                },
            ),
            Some("circuit_breaker_transition") => push_bounded(
                &mut self.breakers,
                Change {
                    at_ms: at,
                    subject: record.dependency.as_deref().unwrap_or("unknown").to_string(),
                    state: record.to.as_deref().unwrap_or_default().to_string(),
                    detail: record.from.as_deref().unwrap_or_default().to_string(),
                },
            ),
            Some("alert") => push_bounded(
                &mut self.alerts,
                Change {
                    at_ms: at,
                    subject: record.alert_name.as_deref().unwrap_or("unknown").to_string(),
                    state: record.state.as_deref().unwrap_or_default().to_string(),
                    detail: record.severity.as_deref().unwrap_or_default().to_string(),
                },
            ),
            Some("resources") => self.add_resources(record, at),
            _ => {}
        }
    }

    fn add_access(&mut self, record: &Record<'_>, at: i64) {
        let endpoint = record.endpoint.as_deref().unwrap_or_default();
        if is_operational(endpoint) {
            return;
        }
        let status = record.status.unwrap_or(0);
        self.requests += 1;
        let interval = self.volume.entry(at - at.rem_euclid(VOLUME_INTERVAL_MS)).or_default();
        interval.requests += 1;
        if status >= 500 {
            interval.errors_5xx += 1;
            self.errors_5xx += 1;
        } else if status >= 400 {
            self.errors_4xx += 1;
        }
    }

    fn add_error(&mut self, record: &Record<'_>, at: i64) {
        let class = record.error_class.as_deref().unwrap_or("Unknown").to_string();
        let message = normalize(record.message.as_deref().unwrap_or_default());
        let key = (class, message);
        let index = match self.group_index.get(&key) {
            Some(index) => *index,
            None if self.groups.len() >= MAX_GROUPS => {
                self.ungrouped += 1;
                return;
            }
            None => {
                self.groups.push(Group {
                    error_class: key.0.clone(),
                    message: key.1.clone(),
                    cause: record
                        .error_chain
                        .as_ref()
                        .and_then(|chain| chain.last())
                        .map(|c| c.to_string()),
                    status: record.status.unwrap_or(500),
                    dependency: record.dependency.as_deref().map(str::to_string),
                    count: 0,
                    first_ms: at,
                    last_ms: at,
                    endpoints: BTreeSet::new(),
                    sample_ids: Vec::new(),
                });
                self.group_index.insert(key, self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        let group = &mut self.groups[index];
        group.count += 1;
        group.first_ms = group.first_ms.min(at);
        group.last_ms = group.last_ms.max(at);
        if let Some(endpoint) = record.endpoint.as_deref()
            && group.endpoints.len() < MAX_ENDPOINTS
        {
            group.endpoints.insert(endpoint.to_string());
        }
        if let Some(id) = record.error_id.as_deref()
            && group.sample_ids.len() < MAX_SAMPLES
        {
            group.sample_ids.push(id.to_string());
        }
    }

    fn add_resources(&mut self, record: &Record<'_>, at: i64) {
        if let Some(pool) = record.pool {
            let worse = self.worst_pool.as_ref().is_none_or(|worst| {
                (pool.pending, pool.active * 1000 / pool.max.max(1))
                    > (worst.value.pending, worst.value.active * 1000 / worst.value.max.max(1))
            });
            if worse {
                self.worst_pool = Some(Reading { at_ms: at, value: pool });
            }
            if self.latest_pool.as_ref().is_none_or(|latest| latest.at_ms <= at) {
                self.latest_pool = Some(Reading { at_ms: at, value: pool });
            }
        }
        if let Some(memory) = &record.memory
            && self
                .worst_memory
                .as_ref()
                .is_none_or(|w| memory.usage_ratio > w.value.usage_ratio)
        {
            self.worst_memory = Some(Reading {
                at_ms: at,
                value: memory.clone(),
            });
        }
        if let Some(disk) = &record.disk
            && self
                .worst_disk
                .as_ref()
                .is_none_or(|w| disk.usage_ratio > w.value.usage_ratio)
        {
            self.worst_disk = Some(Reading {
                at_ms: at,
                value: disk.clone(),
            });
        }
        if let Some(fds) = record.fds {
            let ratio = |f: &FdFields| f.open as f64 / f.max.max(1) as f64;
            if self.worst_fds.as_ref().is_none_or(|w| ratio(&fds) > ratio(&w.value)) {
                self.worst_fds = Some(Reading { at_ms: at, value: fds });
            }
        }
    }

    /// Error groups, largest first.
    pub fn groups_by_size(&self) -> Vec<&Group> {
        let mut groups: Vec<&Group> = self.groups.iter().collect();
        groups.sort_by(|a, b| b.count.cmp(&a.count).then(a.first_ms.cmp(&b.first_ms)));
        groups
    }

    /// When the first 5xx happened.
    pub fn first_error_ms(&self) -> Option<i64> {
        self.groups.iter().map(|g| g.first_ms).min()
    }
}

fn push_bounded<T>(items: &mut Vec<T>, item: T) {
    if items.len() >= MAX_EVENTS {
        items.remove(0);
    }
    items.push(item);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_group_despite_numbers_and_identifiers() {
        assert_eq!(
            normalize("payment gateway circuit is open; next probe in 29967ms"),
            "payment gateway circuit is open; next probe in {n}ms"
        );
        assert_eq!(
            normalize("completed cart cart_84238nsbtfwazdb77aqy names missing order ord_2w0pwt0j2x0qbck815at"),
            "completed cart {id} names missing order {id}"
        );
        assert_eq!(normalize("no such table: order_items"), "no such table: order_items");
    }

    #[test]
    fn operational_routes_are_not_traffic() {
        assert!(is_operational("GET /health/ready"));
        assert!(is_operational("GET /metrics"));
        assert!(!is_operational("POST /api/checkout/complete"));
    }
}
