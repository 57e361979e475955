//! Alert rules evaluated in-process, from the article's table: error rates over
//! sliding windows (rates, never raw counts), pool, memory and disk use, and p99
//! latency against its own trailing baseline. The same rules ship as Prometheus
//! rules in `deploy/prometheus/alerts.yml`. Evaluation is a pure step from inputs
//! and a time to state changes, so it is tested without a clock at all.

use std::sync::Mutex;

use serde::Serialize;

/// Who should hear about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Wake someone up.
    Page,
    /// Look at it during working hours.
    Ticket,
}

impl Severity {
    /// `page` or `ticket`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Page => "page",
            Severity::Ticket => "ticket",
        }
    }
}

/// Whether an alert is firing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// The condition does not hold.
    Inactive,
    /// The condition holds.
    Firing,
}

/// What a rule watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// 5xx share of the critical path over the error window.
    CriticalErrorRatio,
    /// 5xx share of every other business route over the error window.
    StandardErrorRatio,
    /// Connections in use over the pool's maximum, averaged over the last minute.
    PoolInUse,
    /// Memory still available under the limit, as a share.
    MemoryAvailable,
    /// Used share of the fullest filesystem watched (the database's, the logs').
    DiskUsed,
    /// Open file descriptors over their limit.
    FdsUsed,
    /// p99 latency over the error window, against a multiple of the trailing baseline.
    LatencyOverBaseline,
}

/// One alert rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// The alert's name (several rules may share one, at different severities).
    pub name: &'static str,
    /// Severity when firing.
    pub severity: Severity,
    /// What it watches.
    pub signal: Signal,
    /// Fires above this (below, for available memory); for latency, the multiple of
    /// the baseline.
    pub threshold: f64,
    /// One line for people.
    pub summary: &'static str,
}

/// p99 below this is never "degraded", whatever its baseline: a few milliseconds
/// wander too much to alert on.
pub const LATENCY_FLOOR_SECONDS: f64 = 0.005;

/// The article's alert table.
pub fn rules() -> Vec<Rule> {
    use Severity::{Page, Ticket};
    use Signal::*;
    vec![
        Rule {
            name: "CheckoutErrorRateCritical",
            severity: Page,
            signal: CriticalErrorRatio,
            threshold: 0.01,
            summary: "More than 1% of checkouts answered 5xx over 5 minutes",
        },
        Rule {
            name: "ErrorRateHigh",
            severity: Ticket,
            signal: StandardErrorRatio,
            threshold: 0.05,
            summary: "More than 5% of other API requests answered 5xx over 5 minutes",
        },
        Rule {
            name: "DbPoolSaturated",
            severity: Ticket,
            signal: PoolInUse,
            threshold: 0.80,
            summary: "More than 80% of database connections in use",
        },
        Rule {
            name: "DbPoolSaturated",
            severity: Page,
            signal: PoolInUse,
            threshold: 0.95,
            summary: "More than 95% of database connections in use",
        },
        Rule {
            name: "MemoryLow",
            severity: Ticket,
            signal: MemoryAvailable,
            threshold: 0.20,
            summary: "Less than 20% of memory available",
        },
        Rule {
            name: "DiskFilling",
            severity: Ticket,
            signal: DiskUsed,
            threshold: 0.85,
            summary: "A filesystem of the database or the logs is more than 85% full",
        },
        Rule {
            name: "DiskFilling",
            severity: Page,
            signal: DiskUsed,
            threshold: 0.95,
            summary: "A filesystem of the database or the logs is more than 95% full",
        },
        Rule {
            name: "FileDescriptorsExhausted",
            severity: Ticket,
            signal: FdsUsed,
            threshold: 0.80,
            summary: "More than 80% of the file descriptor limit is in use",
        },
        Rule {
            name: "FileDescriptorsExhausted",
            severity: Page,
            signal: FdsUsed,
            threshold: 0.95,
            summary: "More than 95% of the file descriptor limit is in use: new connections are refused",
        },
        Rule {
            name: "LatencyDegraded",
            severity: Ticket,
            signal: LatencyOverBaseline,
            threshold: 5.0,
            summary: "p99 latency is more than 5 times its trailing one-hour p99",
        },
    ]
}

/// The measurements rules are evaluated against; `None` means no data, which never fires.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inputs {
    /// 5xx share of the critical path over the window.
    pub critical_error_ratio: Option<f64>,
    /// 5xx share of the other business routes over the window.
    pub standard_error_ratio: Option<f64>,
    /// Pool in use, averaged over the last minute.
    pub pool_in_use: Option<f64>,
    /// Memory available, as a share of the limit.
    pub memory_available: Option<f64>,
    /// Used share of the fullest filesystem watched.
    pub disk_used: Option<f64>,
    /// Open file descriptors over their limit.
    pub fds_used: Option<f64>,
    /// p99 latency over the window, seconds.
    pub p99_seconds: Option<f64>,
    /// p99 latency over the trailing hour before the window, seconds.
    pub baseline_p99_seconds: Option<f64>,
}

/// An alert as `/alerts` lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AlertStatus {
    /// Alert name.
    pub name: &'static str,
    /// Severity.
    pub severity: Severity,
    /// Firing or not.
    pub state: State,
    /// The measured value at the last evaluation.
    pub value: Option<f64>,
    /// The value it is compared with.
    pub threshold: f64,
    /// When it last changed state (RFC 3339), if it ever did.
    pub since: Option<String>,
    /// One line for people.
    #[serde(skip)]
    pub summary: &'static str,
    /// When it last changed state, Unix milliseconds.
    #[serde(skip)]
    pub since_ms: Option<i64>,
    /// When its latest firing began, Unix milliseconds: kept once it resolves, so
    /// that the resolution names the firing it ends.
    #[serde(skip)]
    pub fired_ms: Option<i64>,
}

/// Evaluates the rules and remembers their states.
pub struct Engine {
    rules: Vec<Rule>,
    states: Mutex<Vec<AlertStatus>>,
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new(rules())
    }
}

impl Engine {
    /// An engine for `rules`, every alert inactive.
    pub fn new(rules: Vec<Rule>) -> Self {
        let states = rules
            .iter()
            .map(|rule| AlertStatus {
                name: rule.name,
                severity: rule.severity,
                state: State::Inactive,
                value: None,
                threshold: rule.threshold,
                since: None,
                summary: rule.summary,
                since_ms: None,
                fired_ms: None,
            })
            .collect();
        Engine {
            rules,
            states: Mutex::new(states),
        }
    }

    /// Every alert's current status.
    pub fn statuses(&self) -> Vec<AlertStatus> {
        self.states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Evaluates every rule at `now_ms`; returns the alerts that changed state.
    pub fn evaluate(&self, inputs: &Inputs, now_ms: i64) -> Vec<AlertStatus> {
        let mut states = self.states.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut changed = Vec::new();
        for (rule, status) in self.rules.iter().zip(states.iter_mut()) {
            let (value, threshold, breached) = measure(rule, inputs);
            // With nothing to measure (no traffic in the window), the last value
            // measured stands.
            status.value = value.or(status.value);
            status.threshold = threshold;
            let state = if breached { State::Firing } else { State::Inactive };
            if state != status.state {
                status.state = state;
                if state == State::Firing {
                    status.fired_ms = Some(now_ms);
                }
                status.since_ms = Some(now_ms);
                status.since = Some(crate::clock::rfc3339_ms(now_ms));
                changed.push(status.clone());
            }
        }
        changed
    }
}

/// The rule's value, the threshold it is compared with, and whether it is breached.
fn measure(rule: &Rule, inputs: &Inputs) -> (Option<f64>, f64, bool) {
    let above = |value: Option<f64>| (value, rule.threshold, value.is_some_and(|v| v > rule.threshold));
    match rule.signal {
        Signal::CriticalErrorRatio => above(inputs.critical_error_ratio),
        Signal::StandardErrorRatio => above(inputs.standard_error_ratio),
        Signal::PoolInUse => above(inputs.pool_in_use),
        Signal::DiskUsed => above(inputs.disk_used),
        Signal::FdsUsed => above(inputs.fds_used),
        Signal::MemoryAvailable => {
            let value = inputs.memory_available;
            (value, rule.threshold, value.is_some_and(|v| v < rule.threshold))
        }
        Signal::LatencyOverBaseline => match inputs.baseline_p99_seconds {
            None => (inputs.p99_seconds, f64::INFINITY, false),
            Some(baseline) => {
                let threshold = rule.threshold * baseline.max(LATENCY_FLOOR_SECONDS);
                let value = inputs.p99_seconds;
                (value, threshold, value.is_some_and(|v| v > threshold))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(statuses: &'a [AlertStatus], name: &str, severity: Severity) -> &'a AlertStatus {
        statuses
            .iter()
            .find(|s| s.name == name && s.severity == severity)
            .expect("rule exists")
    }

    #[test]
    fn error_rates_fire_above_their_thresholds_and_resolve_below() {
        let engine = Engine::default();
        let mut inputs = Inputs {
            critical_error_ratio: Some(0.009),
            standard_error_ratio: Some(0.04),
            ..Inputs::default()
        };
        assert!(engine.evaluate(&inputs, 1_000).is_empty());
        inputs.critical_error_ratio = Some(0.011);
        let changed = engine.evaluate(&inputs, 2_000);
        assert_eq!(changed.len(), 1);
        assert_eq!(
            (changed[0].name, changed[0].state),
            ("CheckoutErrorRateCritical", State::Firing)
        );
        assert_eq!(changed[0].since_ms, Some(2_000));
        assert!(engine.evaluate(&inputs, 3_000).is_empty(), "still firing is no change");
        inputs.critical_error_ratio = None;
        let changed = engine.evaluate(&inputs, 4_000);
        assert_eq!(
            (changed[0].name, changed[0].state),
            ("CheckoutErrorRateCritical", State::Inactive)
        );
        inputs.standard_error_ratio = Some(0.051);
        assert_eq!(engine.evaluate(&inputs, 5_000)[0].name, "ErrorRateHigh");
    }

    #[test]
    fn pool_and_disk_have_a_ticket_level_and_a_page_level() {
        let engine = Engine::default();
        let inputs = Inputs {
            pool_in_use: Some(0.9),
            disk_used: Some(0.96),
            ..Inputs::default()
        };
        engine.evaluate(&inputs, 1);
        let statuses = engine.statuses();
        assert_eq!(
            find(&statuses, "DbPoolSaturated", Severity::Ticket).state,
            State::Firing
        );
        assert_eq!(
            find(&statuses, "DbPoolSaturated", Severity::Page).state,
            State::Inactive
        );
        assert_eq!(find(&statuses, "DiskFilling", Severity::Ticket).state, State::Firing);
        assert_eq!(find(&statuses, "DiskFilling", Severity::Page).state, State::Firing);
    }

    #[test]
    fn low_memory_fires_below_its_threshold() {
        let engine = Engine::default();
        engine.evaluate(
            &Inputs {
                memory_available: Some(0.25),
                ..Inputs::default()
            },
            1,
        );
        assert_eq!(
            find(&engine.statuses(), "MemoryLow", Severity::Ticket).state,
            State::Inactive
        );
        engine.evaluate(
            &Inputs {
                memory_available: Some(0.15),
                ..Inputs::default()
            },
            2,
        );
        assert_eq!(
            find(&engine.statuses(), "MemoryLow", Severity::Ticket).state,
            State::Firing
        );
    }

    #[test]
    fn latency_is_judged_against_its_own_baseline_with_a_floor() {
        let engine = Engine::default();
        let mut inputs = Inputs {
            p99_seconds: Some(0.4),
            baseline_p99_seconds: None,
            ..Inputs::default()
        };
        engine.evaluate(&inputs, 1);
        assert_eq!(
            find(&engine.statuses(), "LatencyDegraded", Severity::Ticket).state,
            State::Inactive,
            "no baseline yet"
        );
        inputs.baseline_p99_seconds = Some(0.1);
        engine.evaluate(&inputs, 2);
        assert_eq!(
            find(&engine.statuses(), "LatencyDegraded", Severity::Ticket).state,
            State::Inactive,
            "4x"
        );
        inputs.p99_seconds = Some(0.6);
        engine.evaluate(&inputs, 3);
        let latency = find(&engine.statuses(), "LatencyDegraded", Severity::Ticket).clone();
        assert_eq!(latency.state, State::Firing);
        assert!((latency.threshold - 0.5).abs() < 1e-9);
        inputs.p99_seconds = Some(0.02);
        inputs.baseline_p99_seconds = Some(0.001);
        engine.evaluate(&inputs, 4);
        assert_eq!(
            find(&engine.statuses(), "LatencyDegraded", Severity::Ticket).state,
            State::Inactive,
            "20x of 1 ms is under 5x the 5 ms floor"
        );
    }
}
