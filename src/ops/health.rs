//! Health: a background monitor probes the database and reads memory once a second,
//! so `/health` answers from memory in microseconds, even when the database hangs
//! and no matter how many load balancers poll it. Liveness checks nothing external.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;

use super::resources::ResourceProbe;
use crate::resilience::{BreakerState, CircuitBreaker};
use crate::store::Store;

/// Memory use above this share of the limit makes the instance unhealthy.
pub const MEMORY_UNHEALTHY_RATIO: f64 = 0.90;

/// A circuit open longer than this makes the instance unhealthy.
pub const BREAKER_UNHEALTHY_AFTER: Duration = Duration::from_secs(300);

/// What the last probe found.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    /// `None` if the database answered, else why not.
    pub db_error: Option<String>,
    /// Memory use against its limit, 0 to 1.
    pub memory_ratio: Option<f64>,
}

/// Keeps the latest probe and the draining flag.
pub struct HealthMonitor {
    latest: watch::Sender<Probe>,
    draining: AtomicBool,
    closing: AtomicBool,
}

impl HealthMonitor {
    /// A monitor whose first report is complete before the first probe: the database
    /// was checked by startup validation, and memory is read now.
    pub fn new(resources: &dyn ResourceProbe) -> Self {
        Self {
            latest: watch::Sender::new(Probe {
                db_error: None,
                memory_ratio: resources.memory().map(|m| m.usage_ratio()),
            }),
            draining: AtomicBool::new(false),
            closing: AtomicBool::new(false),
        }
    }
}

/// The answer for `/health` and `/health/ready`.
pub struct Report {
    /// Whether the load balancer should send traffic here.
    pub healthy: bool,
    /// The response body.
    pub body: Value,
}

impl HealthMonitor {
    /// Probes once: `SELECT 1` bounded by `timeout`, then memory.
    pub async fn probe(&self, store: &Store, resources: &dyn ResourceProbe, timeout: Duration) {
        let db_error = match store.ping(timeout).await {
            Ok(()) => None,
            Err(crate::store::StoreError::TimedOut(after) | crate::store::StoreError::PoolExhausted(after)) => {
                Some(format!("Connection timeout after {}ms", after.as_millis()))
            }
            Err(error) => Some(format!("Database unreachable: {error}")),
        };
        let memory_ratio = resources.memory().map(|m| m.usage_ratio());
        self.latest.send_replace(Probe { db_error, memory_ratio });
    }

    /// Probes every `interval` until `stop` turns true.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<Store>,
        resources: Arc<dyn ResourceProbe>,
        timeout: Duration,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            self.probe(&store, resources.as_ref(), timeout).await;
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Marks the instance as shutting down: readiness fails from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether the instance is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Marks the end of the drain delay: the server stops accepting, and requests
    /// still arriving on open connections are turned away.
    pub fn stop_accepting(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Whether the drain delay is over.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// The readiness verdict and its body, in the seed's format.
    pub fn report(&self, breakers: &[&CircuitBreaker]) -> Report {
        let probe = self.latest.borrow().clone();
        let mut reasons: Vec<String> = Vec::new();
        if let Some(error) = &probe.db_error {
            reasons.push(error.clone());
        }
        let memory_pct = probe.memory_ratio.map(|r| (r * 100.0).round() as u64);
        if let Some(ratio) = probe.memory_ratio
            && ratio > MEMORY_UNHEALTHY_RATIO
        {
            reasons.push(format!("Memory use is {}% of the limit", (ratio * 100.0).round()));
        }
        let mut states = serde_json::Map::new();
        for breaker in breakers {
            let state = breaker.state();
            states.insert(breaker.name().to_string(), json!(state.as_str()));
            if state != BreakerState::Closed
                && let Some(open_for) = breaker.open_for()
                && open_for > BREAKER_UNHEALTHY_AFTER
            {
                reasons.push(format!(
                    "The {} circuit has been open for {}s",
                    breaker.name(),
                    open_for.as_secs()
                ));
            }
        }
        if self.is_draining() {
            reasons.push("The server is shutting down".to_string());
        }
        let healthy = reasons.is_empty();
        let mut body = json!({
            "status": if healthy { "healthy" } else { "unhealthy" },
            "db": if probe.db_error.is_none() { "connected" } else { "unreachable" },
            "memoryUsagePct": memory_pct,
            "config": "loaded",
            "circuitBreakers": states,
        });
        if !healthy {
            body["error"] = json!(reasons.join("; "));
            body["reasons"] = json!(reasons);
        }
        if self.is_draining() {
            body["draining"] = json!(true);
        }
        Report { healthy, body }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::resources::SystemProbe;
    use crate::resilience::Outcome;

    #[tokio::test(start_paused = true)]
    async fn an_open_circuit_is_reported_at_once_but_unhealthy_only_after_five_minutes() {
        let monitor = HealthMonitor::new(&SystemProbe);
        let breaker = CircuitBreaker::new("paymentGateway", 1, Duration::from_secs(30));
        breaker.try_acquire().expect("closed").record(Outcome::Unhealthy);
        let report = monitor.report(&[&breaker]);
        assert!(report.healthy, "{}", report.body);
        assert_eq!(report.body["circuitBreakers"]["paymentGateway"], "OPEN");

        // Probes keep failing: the circuit reopens each time and stays away from CLOSED.
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(30)).await;
            breaker.try_acquire().expect("the probe").record(Outcome::Unhealthy);
        }
        assert!(
            monitor.report(&[&breaker]).healthy,
            "exactly five minutes is not longer than five"
        );
        {
            tokio::time::advance(Duration::from_secs(30)).await;
            breaker.try_acquire().expect("the probe").record(Outcome::Unhealthy);
        }
        let report = monitor.report(&[&breaker]);
        assert!(!report.healthy);
        assert_eq!(report.body["status"], "unhealthy");
        assert!(
            report.body["error"]
                .as_str()
                .is_some_and(|e| e.contains("paymentGateway circuit has been open for 330s")),
            "{}",
            report.body
        );

        tokio::time::advance(Duration::from_secs(30)).await;
        breaker.try_acquire().expect("the probe").record(Outcome::Healthy);
        assert!(
            monitor.report(&[&breaker]).healthy,
            "closing the circuit makes it healthy again"
        );
    }

    #[test]
    fn draining_makes_readiness_fail() {
        let monitor = HealthMonitor::new(&SystemProbe);
        assert!(monitor.report(&[]).healthy);
        monitor.start_draining();
        let report = monitor.report(&[]);
        assert!(!report.healthy);
        assert_eq!(report.body["draining"], true);
    }
}
