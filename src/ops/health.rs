//! Health: a background monitor probes the database and reads memory, file
//! descriptors and disks once a second, so `/health` answers from memory in
//! microseconds, even when the database hangs and no matter how many load
//! balancers poll it. Liveness checks nothing external.
//!
//! Readiness speaks for this instance alone (DESIGN §7): it is `unhealthy` (503)
//! only for what is wrong here (the database unreachable from here, memory, file
//! descriptors or a disk nearly full, draining), and `degraded` (200) while a
//! dependency's circuit is open, since every instance shares that dependency and
//! taking them all out of rotation would turn a partial outage into a total one.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;

use super::resources::{DiskReading, FdReading, ResourceProbe};
use crate::resilience::{BreakerState, CircuitBreaker};
use crate::store::Store;

/// Memory use above this share of the limit makes the instance unhealthy.
pub const MEMORY_UNHEALTHY_RATIO: f64 = 0.90;

/// Open file descriptors above this share of the limit make the instance unhealthy.
pub const FDS_UNHEALTHY_RATIO: f64 = 0.95;

/// A filesystem (the database's, the logs') above this share full makes the
/// instance unhealthy.
pub const DISK_UNHEALTHY_RATIO: f64 = 0.98;

/// What the last probe found.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    /// `None` if the database answered, else why not.
    pub db_error: Option<String>,
    /// Memory use against its limit, 0 to 1.
    pub memory_ratio: Option<f64>,
    /// Open file descriptors and their limit.
    pub fds: Option<FdReading>,
    /// The filesystems watched.
    pub disks: Vec<DiskReading>,
}

/// Keeps the latest probe and the draining flags.
pub struct HealthMonitor {
    latest: watch::Sender<Probe>,
    /// The directories whose filesystems are watched: the logs', the database's.
    paths: Vec<PathBuf>,
    draining: AtomicBool,
    closing: AtomicBool,
}

impl HealthMonitor {
    /// A monitor of the filesystems holding `paths`, whose first report is complete
    /// before the first probe: the database was checked by startup validation, and
    /// the rest is read now.
    pub fn new(resources: &dyn ResourceProbe, paths: Vec<PathBuf>) -> Self {
        Self {
            latest: watch::Sender::new(read(resources, &paths, None)),
            paths,
            draining: AtomicBool::new(false),
            closing: AtomicBool::new(false),
        }
    }
}

fn read(resources: &dyn ResourceProbe, paths: &[PathBuf], db_error: Option<String>) -> Probe {
    Probe {
        db_error,
        memory_ratio: resources.memory().map(|m| m.usage_ratio()),
        fds: resources.file_descriptors(),
        disks: paths.iter().filter_map(|path| resources.disk(path)).collect(),
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
    /// Probes once: `SELECT 1` bounded by `timeout`, then memory, descriptors and disks.
    pub async fn probe(&self, store: &Store, resources: &dyn ResourceProbe, timeout: Duration) {
        let db_error = match store.ping(timeout).await {
            Ok(()) => None,
            Err(crate::store::StoreError::TimedOut(after) | crate::store::StoreError::PoolExhausted(after)) => {
                Some(format!("Connection timeout after {}ms", after.as_millis()))
            }
            Err(error) => Some(format!("Database unreachable: {}", error.with_causes())),
        };
        self.latest.send_replace(read(resources, &self.paths, db_error));
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

    /// The latest probe.
    pub fn latest(&self) -> Probe {
        self.latest.borrow().clone()
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
        let probe = self.latest();
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
        if let Some(fds) = probe.fds
            && fds.max > 0
            && fds.open as f64 > fds.max as f64 * FDS_UNHEALTHY_RATIO
        {
            reasons.push(format!(
                "{} of {} file descriptors are open (above {}%)",
                fds.open,
                fds.max,
                FDS_UNHEALTHY_RATIO * 100.0
            ));
        }
        for disk in probe.disks.iter().filter(|d| d.usage_ratio > DISK_UNHEALTHY_RATIO) {
            reasons.push(format!(
                "The filesystem holding {} is {}% full",
                disk.path,
                (disk.usage_ratio * 100.0).floor()
            ));
        }
        if self.is_draining() {
            reasons.push("The server is shutting down".to_string());
        }
        let mut states = serde_json::Map::new();
        let mut degraded: Vec<String> = Vec::new();
        for breaker in breakers {
            let state = breaker.state();
            states.insert(breaker.name().to_string(), json!(state.as_str()));
            if state != BreakerState::Closed {
                let open_for = breaker.open_for().unwrap_or_default().as_secs();
                degraded.push(format!("{} circuit open for {open_for}s", breaker.name()));
            }
        }
        let healthy = reasons.is_empty();
        let status = match (healthy, degraded.is_empty()) {
            (false, _) => "unhealthy",
            (true, false) => "degraded",
            (true, true) => "healthy",
        };
        let mut body = json!({
            "status": status,
            "db": if probe.db_error.is_none() { "connected" } else { "unreachable" },
            "memoryUsagePct": memory_pct,
            "config": "loaded",
            "circuitBreakers": states,
        });
        if !degraded.is_empty() {
            body["degradedReasons"] = json!(degraded);
        }
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
    use std::path::Path;
    use std::sync::Mutex;

    use super::*;
    use crate::ops::resources::MemoryReading;
    use crate::resilience::Outcome;

    /// Readings a test sets.
    #[derive(Default)]
    struct Readings {
        fds: Mutex<Option<FdReading>>,
        disk_ratio: Mutex<f64>,
    }

    impl ResourceProbe for Readings {
        fn memory(&self) -> Option<MemoryReading> {
            None
        }
        fn disk(&self, path: &Path) -> Option<DiskReading> {
            let ratio = *self.disk_ratio.lock().expect("test lock");
            Some(DiskReading {
                path: path.display().to_string(),
                total_bytes: 1000,
                available_bytes: ((1.0 - ratio) * 1000.0) as u64,
                usage_ratio: ratio,
            })
        }
        fn file_descriptors(&self) -> Option<FdReading> {
            *self.fds.lock().expect("test lock")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_circuit_degrades_but_never_takes_the_instance_out_of_rotation() {
        let monitor = HealthMonitor::new(&Readings::default(), Vec::new());
        let breaker = CircuitBreaker::new("paymentGateway", 1, Duration::from_secs(30));
        breaker.try_acquire().expect("closed").record(Outcome::Unhealthy);
        // Probes keep failing for ten minutes: the circuit stays away from CLOSED.
        for _ in 0..20 {
            tokio::time::advance(Duration::from_secs(30)).await;
            breaker.try_acquire().expect("the probe").record(Outcome::Unhealthy);
        }
        let report = monitor.report(&[&breaker]);
        assert!(report.healthy, "{}", report.body);
        assert_eq!(report.body["status"], "degraded");
        assert_eq!(report.body["circuitBreakers"]["paymentGateway"], "OPEN");
        assert_eq!(
            report.body["degradedReasons"],
            json!(["paymentGateway circuit open for 600s"])
        );

        tokio::time::advance(Duration::from_secs(30)).await;
        breaker.try_acquire().expect("the probe").record(Outcome::Healthy);
        let report = monitor.report(&[&breaker]);
        assert_eq!(report.body["status"], "healthy");
        assert!(report.body.get("degradedReasons").is_none());
    }

    #[test]
    fn file_descriptors_and_disks_near_their_limits_make_the_instance_unhealthy() {
        let readings = Readings::default();
        *readings.fds.lock().expect("test lock") = Some(FdReading { open: 950, max: 1000 });
        *readings.disk_ratio.lock().expect("test lock") = 0.98;
        let monitor = HealthMonitor::new(&readings, vec![PathBuf::from("/var/lib/checkout")]);
        assert!(monitor.report(&[]).healthy, "exactly at the limits is not above them");

        *readings.fds.lock().expect("test lock") = Some(FdReading { open: 951, max: 1000 });
        *readings.disk_ratio.lock().expect("test lock") = 0.99;
        let monitor = HealthMonitor::new(&readings, vec![PathBuf::from("/var/lib/checkout")]);
        let report = monitor.report(&[]);
        assert!(!report.healthy);
        assert_eq!(report.body["status"], "unhealthy");
        assert_eq!(
            report.body["reasons"],
            json!([
                "951 of 1000 file descriptors are open (above 95%)",
                "The filesystem holding /var/lib/checkout is 99% full"
            ])
        );
    }

    #[test]
    fn draining_makes_readiness_fail() {
        let monitor = HealthMonitor::new(&Readings::default(), Vec::new());
        assert!(monitor.report(&[]).healthy);
        monitor.start_draining();
        let report = monitor.report(&[]);
        assert!(!report.healthy);
        assert_eq!(report.body["draining"], true);
    }
}
