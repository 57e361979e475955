//! Prometheus metrics, in a registry owned by each app instance (so tests running
//! several apps in one process never mix their counts). Labels are bounded: routes
//! are templates, outcomes and classes come from fixed sets.

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Latency buckets in seconds, from a fast rejection to the longest request timeout.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every series the service exports.
pub struct Metrics {
    registry: Registry,
    /// `http_requests_total{method,route,status}`.
    pub http_requests: IntCounterVec,
    /// `http_request_duration_seconds{method,route}`.
    pub http_duration: HistogramVec,
    /// `upstream_requests_total{dependency,outcome}`.
    pub upstream_requests: IntCounterVec,
    /// `upstream_request_duration_seconds{dependency}`.
    pub upstream_duration: HistogramVec,
    /// `circuit_breaker_state{dependency}`: 0 closed, 1 open, 2 half-open.
    pub breaker_state: IntGaugeVec,
    /// `circuit_breaker_transitions_total{dependency,to}`.
    pub breaker_transitions: IntCounterVec,
    /// `db_pool_connections{state}`: active, idle.
    pub db_pool_connections: IntGaugeVec,
    /// `db_pool_max_connections`.
    pub db_pool_max: IntGauge,
    /// `db_pool_pending_acquires`.
    pub db_pool_pending: IntGauge,
    /// `db_pool_acquire_timeouts_total`.
    pub db_pool_acquire_timeouts: IntCounter,
    /// `memory_usage_ratio`: used over the limit (cgroup limit when there is one).
    pub memory_usage_ratio: Gauge,
    /// `disk_usage_ratio{path}`: used share of the filesystems holding the logs and
    /// the database.
    pub disk_usage_ratio: GaugeVec,
    /// `errors_total{error_class}`: every 5xx, by class.
    pub errors: IntCounterVec,
    /// `checkout_total{outcome}`.
    pub checkouts: IntCounterVec,
    /// `build_info{version,git_commit,schema_version}`, always 1.
    pub build_info: IntGaugeVec,
    /// `reconciler_actions_total{action}`: what the reconciler did to unfinished checkouts.
    pub reconciler_actions: IntCounterVec,
    /// `alerts_firing{alertname,severity}`: 1 while the in-process alert fires.
    pub alerts_firing: IntGaugeVec,
    /// `http_connections`: client connections open now.
    pub connections: IntGauge,
    /// `http_connections_rejected_total`: connections closed at once, over `MAX_CONNECTIONS`.
    pub connections_rejected: IntCounter,
    /// `http_accept_errors_total`: failures to accept a connection (out of file descriptors, say).
    pub accept_errors: IntCounter,
    /// `http_requests_in_flight`: API requests being handled now.
    pub requests_in_flight: IntGauge,
    /// `log_records_dropped_total{level}`: records a log output could not keep up with.
    pub log_records_dropped: IntCounterVec,
    /// `otel_spans_dropped_total`: spans the export queue or the collector did not take.
    pub spans_dropped: IntCounter,
}

/// Every `outcome` of `checkout_total`.
pub const CHECKOUT_OUTCOMES: &[&str] = &[
    "confirmed",
    "requires_action",
    "already_completed",
    "replayed",
    "declined",
    "inventory_conflict",
    "unavailable",
    "error",
    "rejected",
];

/// The dependencies with a breaker, as `dependency` labels.
const BREAKER_DEPENDENCIES: &[&str] = &["paymentGateway", "inventoryService"];

/// Every breaker state, as `to` labels.
const BREAKER_STATES: &[&str] = &["CLOSED", "OPEN", "HALF_OPEN"];

/// Every log level, as `level` labels.
const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];

impl Metrics {
    /// Registers every series.
    pub fn new() -> Self {
        let registry = Registry::new();
        // Registration only fails for duplicate or malformed names, which are fixed
        // in this function.
        fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, collector: T) -> T {
            registry
                .register(Box::new(collector.clone()))
                .expect("metric names are unique and valid");
            collector
        }
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str| register(&registry, IntGauge::new(name, help).expect("valid metric"));
        let ratio = |name: &str, help: &str| register(&registry, Gauge::new(name, help).expect("valid metric"));
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                HistogramVec::new(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()), labels)
                    .expect("valid metric"),
            )
        };
        let metrics = Metrics {
            http_requests: counter_vec(
                "http_requests_total",
                "HTTP requests answered, by method, route template and status.",
                &["method", "route", "status"],
            ),
            http_duration: histogram(
                "http_request_duration_seconds",
                "Time to answer HTTP requests.",
                &["method", "route"],
            ),
            upstream_requests: counter_vec(
                "upstream_requests_total",
                "Calls to dependencies, by outcome.",
                &["dependency", "outcome"],
            ),
            upstream_duration: histogram(
                "upstream_request_duration_seconds",
                "Time taken by calls to dependencies.",
                &["dependency"],
            ),
            breaker_state: gauge_vec(
                "circuit_breaker_state",
                "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
                &["dependency"],
            ),
            breaker_transitions: counter_vec(
                "circuit_breaker_transitions_total",
                "Circuit breaker state changes, by new state.",
                &["dependency", "to"],
            ),
            db_pool_connections: gauge_vec("db_pool_connections", "Database connections by state.", &["state"]),
            db_pool_max: gauge("db_pool_max_connections", "Most connections the pool may open."),
            db_pool_pending: gauge("db_pool_pending_acquires", "Callers waiting for a database connection."),
            db_pool_acquire_timeouts: register(
                &registry,
                IntCounter::new(
                    "db_pool_acquire_timeouts_total",
                    "Times a caller gave up waiting for a database connection.",
                )
                .expect("valid metric"),
            ),
            memory_usage_ratio: ratio(
                "memory_usage_ratio",
                "Memory in use over the limit (the cgroup limit when there is one).",
            ),
            disk_usage_ratio: register(
                &registry,
                GaugeVec::new(
                    Opts::new(
                        "disk_usage_ratio",
                        "Used share of the filesystems holding the logs and the database, by directory.",
                    ),
                    &["path"],
                )
                .expect("valid metric"),
            ),
            errors: counter_vec("errors_total", "Server errors (5xx), by class.", &["error_class"]),
            checkouts: counter_vec("checkout_total", "Checkout requests, by outcome.", &["outcome"]),
            build_info: gauge_vec(
                "build_info",
                "The running build; always 1.",
                &["version", "git_commit", "schema_version"],
            ),
            reconciler_actions: counter_vec(
                "reconciler_actions_total",
                "Unfinished checkout attempts settled by the reconciler, by action.",
                &["action"],
            ),
            alerts_firing: gauge_vec(
                "alerts_firing",
                "1 while the in-process alert is firing.",
                &["alertname", "severity"],
            ),
            connections: gauge("http_connections", "Client connections open now."),
            connections_rejected: register(
                &registry,
                IntCounter::new(
                    "http_connections_rejected_total",
                    "Client connections closed at once because MAX_CONNECTIONS were open.",
                )
                .expect("valid metric"),
            ),
            accept_errors: register(
                &registry,
                IntCounter::new(
                    "http_accept_errors_total",
                    "Failures to accept a client connection (out of file descriptors or memory).",
                )
                .expect("valid metric"),
            ),
            requests_in_flight: gauge("http_requests_in_flight", "API requests being handled now."),
            log_records_dropped: counter_vec(
                "log_records_dropped_total",
                "Log records dropped because a log output could not keep up, by level.",
                &["level"],
            ),
            spans_dropped: register(
                &registry,
                IntCounter::new(
                    "otel_spans_dropped_total",
                    "Spans dropped: the export queue was full, or the collector did not take them.",
                )
                .expect("valid metric"),
            ),
            registry,
        };
        // The process's CPU, memory, descriptors and start time, read by the
        // maintained collector (Linux only).
        #[cfg(target_os = "linux")]
        metrics
            .registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("the process collector's names are unique");
        // Series whose labels are known exist from the start, at 0: an absent
        // series cannot be alerted on.
        for dependency in BREAKER_DEPENDENCIES {
            for state in BREAKER_STATES {
                metrics
                    .breaker_transitions
                    .with_label_values(&[dependency, state])
                    .inc_by(0);
            }
        }
        for outcome in CHECKOUT_OUTCOMES {
            metrics.checkouts.with_label_values(&[outcome]).inc_by(0);
        }
        for level in LOG_LEVELS {
            metrics.log_records_dropped.with_label_values(&[level]).inc_by(0);
        }
        metrics
    }

    /// The name of every series family, registered or not yet observed.
    pub fn names(&self) -> Vec<String> {
        let collectors: [&dyn prometheus::core::Collector; 23] = [
            &self.http_requests,
            &self.http_duration,
            &self.upstream_requests,
            &self.upstream_duration,
            &self.breaker_state,
            &self.breaker_transitions,
            &self.db_pool_connections,
            &self.db_pool_max,
            &self.db_pool_pending,
            &self.db_pool_acquire_timeouts,
            &self.memory_usage_ratio,
            &self.disk_usage_ratio,
            &self.errors,
            &self.checkouts,
            &self.build_info,
            &self.reconciler_actions,
            &self.alerts_firing,
            &self.connections,
            &self.connections_rejected,
            &self.accept_errors,
            &self.requests_in_flight,
            &self.log_records_dropped,
            &self.spans_dropped,
        ];
        #[cfg(target_os = "linux")]
        let process = prometheus::process_collector::ProcessCollector::for_self();
        #[cfg(target_os = "linux")]
        let process_names = prometheus::core::Collector::desc(&process)
            .into_iter()
            .map(|d| d.fq_name.clone());
        #[cfg(not(target_os = "linux"))]
        let process_names = std::iter::empty();
        let mut names: Vec<String> = collectors
            .iter()
            .flat_map(|c| c.desc())
            .map(|d| d.fq_name.clone())
            .chain(process_names)
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The whole registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::with_capacity(16 * 1024);
        // Encoding only fails on a writer error, and a Vec never fails.
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("writing to a Vec cannot fail");
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
