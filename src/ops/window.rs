//! Sliding windows of traffic: request and 5xx counts and latency, in 10-second
//! buckets over the last 66 minutes, on an injectable clock. Alerts read rates over
//! a window from it, the status page reads an hour of it as a series, and the
//! `resources` record reads the last minute. Also keeps the most recent server
//! errors, for the status page.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::clock::Clock;

/// How a route counts for alerting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteClass {
    /// The critical path, alerted on at a tighter threshold.
    Critical,
    /// Every other business route.
    Standard,
    /// Health, metrics and the like: not counted as traffic.
    Operational,
}

const BUCKET_MS: i64 = 10_000;
const BUCKETS: usize = 400; // 66 minutes and 40 seconds

/// Latency histogram bounds: 0.1 ms growing by a quarter up to about 80 s.
const LATENCY_BOUNDS: usize = 62;

fn latency_bucket(latency: Duration) -> usize {
    let micros = latency.as_micros() as f64;
    if micros <= 100.0 {
        return 0;
    }
    let index = ((micros / 100.0).ln() / 1.25f64.ln()).ceil() as usize;
    index.min(LATENCY_BOUNDS - 1)
}

fn latency_upper_bound(index: usize) -> Duration {
    Duration::from_micros((100.0 * 1.25f64.powi(index as i32)) as u64)
}

/// Requests and server errors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Requests answered.
    pub requests: u64,
    /// Of which 5xx.
    pub errors_5xx: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.errors_5xx += other.errors_5xx;
    }

    /// 5xx over requests, or `None` without requests.
    pub fn error_ratio(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors_5xx as f64 / self.requests as f64)
    }
}

#[derive(Clone)]
struct Bucket {
    start_ms: i64,
    critical: Counts,
    standard: Counts,
    latency: [u32; LATENCY_BOUNDS],
}

impl Bucket {
    fn empty(start_ms: i64) -> Self {
        Bucket {
            start_ms,
            critical: Counts::default(),
            standard: Counts::default(),
            latency: [0; LATENCY_BOUNDS],
        }
    }
}

/// Traffic over a span of time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// The critical path.
    pub critical: Counts,
    /// Every other business route.
    pub standard: Counts,
    /// 99th percentile latency of all business requests.
    pub p99: Option<Duration>,
}

impl Summary {
    /// All business requests.
    pub fn total(&self) -> Counts {
        let mut total = self.critical;
        total.add(&self.standard);
        total
    }
}

/// One point of a series.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// Start of the interval, Unix milliseconds.
    pub t: i64,
    /// Requests in the interval.
    pub requests: u64,
    /// 5xx in the interval.
    pub errors_5xx: u64,
    /// 99th percentile latency in the interval, milliseconds.
    pub p99_ms: Option<f64>,
}

/// A server error, as the status page lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecentError {
    /// The error ID given to the client.
    pub error_id: String,
    /// The error's class.
    pub error_class: &'static str,
    /// Method and route template.
    pub endpoint: String,
    /// Status sent.
    pub status: u16,
    /// The dependency blamed, if one is.
    pub dependency: Option<&'static str>,
    /// When, in Unix milliseconds; shown as RFC 3339 (`at`), formatted only
    /// when someone looks.
    #[serde(rename = "at", serialize_with = "rfc3339")]
    pub at_ms: i64,
}

/// Server errors of one class from one dependency (or none) in the last hour.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorGroup {
    /// The errors' class.
    pub error_class: &'static str,
    /// The dependency blamed, if one is.
    pub dependency: Option<&'static str>,
    /// How many.
    pub count: u64,
    /// The latest one's ID: a sample to look up.
    pub sample_error_id: String,
    /// The latest one's endpoint.
    pub endpoint: String,
    /// The first, in Unix milliseconds (RFC 3339 as `firstAt`).
    #[serde(rename = "firstAt", serialize_with = "rfc3339")]
    pub first_ms: i64,
    /// The latest, in Unix milliseconds (RFC 3339 as `lastAt`).
    #[serde(rename = "lastAt", serialize_with = "rfc3339")]
    pub last_ms: i64,
}

/// How long a group of errors is kept after its latest error.
const GROUP_KEPT_MS: i64 = 3_600_000;

fn rfc3339<S: serde::Serializer>(ms: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&crate::clock::rfc3339_ms(*ms))
}

const RECENT_ERRORS: usize = 20;

/// Traffic windows and recent errors.
pub struct Traffic {
    clock: Clock,
    buckets: Mutex<VecDeque<Bucket>>,
    recent: Mutex<VecDeque<RecentError>>,
    groups: Mutex<Vec<ErrorGroup>>,
}

impl Traffic {
    /// Empty windows on `clock`.
    pub fn new(clock: Clock) -> Self {
        Traffic {
            clock,
            buckets: Mutex::new(VecDeque::with_capacity(BUCKETS + 1)),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_ERRORS + 1)),
            groups: Mutex::new(Vec::new()),
        }
    }

    /// The clock the windows run on.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Counts one answered request.
    pub fn record(&self, class: RouteClass, status: u16, latency: Duration) {
        if class == RouteClass::Operational {
            return;
        }
        let now = self.clock.now_ms();
        let start = now - now.rem_euclid(BUCKET_MS);
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.back().is_none_or(|b| b.start_ms < start) {
            buckets.push_back(Bucket::empty(start));
            let oldest = start - BUCKET_MS * (BUCKETS as i64 - 1);
            while buckets.len() > BUCKETS || buckets.front().is_some_and(|b| b.start_ms < oldest) {
                buckets.pop_front();
            }
        }
        // A bucket for `start` exists now; a request stamped before the newest bucket
        // (the clock went back) is counted in the newest one.
        let bucket = buckets.back_mut().expect("a bucket was just ensured");
        let counts = match class {
            RouteClass::Critical => &mut bucket.critical,
            _ => &mut bucket.standard,
        };
        counts.requests += 1;
        if status >= 500 {
            counts.errors_5xx += 1;
        }
        bucket.latency[latency_bucket(latency)] += 1;
    }

    /// Keeps a server error for the status page.
    pub fn record_error(&self, error: RecentError) {
        {
            let mut groups = self.groups.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            groups.retain(|g| error.at_ms - g.last_ms < GROUP_KEPT_MS);
            match groups
                .iter_mut()
                .find(|g| g.error_class == error.error_class && g.dependency == error.dependency)
            {
                Some(group) => {
                    group.count += 1;
                    group.sample_error_id.clone_from(&error.error_id);
                    group.endpoint.clone_from(&error.endpoint);
                    group.last_ms = error.at_ms;
                }
                // Classes and dependencies are names in the code: the groups stay few.
                None => groups.push(ErrorGroup {
                    error_class: error.error_class,
                    dependency: error.dependency,
                    count: 1,
                    sample_error_id: error.error_id.clone(),
                    endpoint: error.endpoint.clone(),
                    first_ms: error.at_ms,
                    last_ms: error.at_ms,
                }),
            }
        }
        let mut recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        recent.push_back(error);
        while recent.len() > RECENT_ERRORS {
            recent.pop_front();
        }
    }

    /// The last hour's server errors by class and dependency, the largest group first.
    pub fn error_groups(&self) -> Vec<ErrorGroup> {
        let now = self.clock.now_ms();
        let mut groups: Vec<ErrorGroup> = self
            .groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|g| now - g.last_ms < GROUP_KEPT_MS)
            .cloned()
            .collect();
        groups.sort_by(|a, b| b.count.cmp(&a.count).then(b.last_ms.cmp(&a.last_ms)));
        groups
    }

    /// The most recent server errors, newest first.
    pub fn recent_errors(&self) -> Vec<RecentError> {
        let recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        recent.iter().rev().cloned().collect()
    }

    /// Traffic over the last `span`.
    pub fn last(&self, span: Duration) -> Summary {
        let now = self.clock.now_ms();
        self.between(now - i64::try_from(span.as_millis()).unwrap_or(i64::MAX), now)
    }

    /// Traffic in buckets that start in `[from_ms, to_ms]`.
    pub fn between(&self, from_ms: i64, to_ms: i64) -> Summary {
        let buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut summary = Summary::default();
        let mut latency = [0u64; LATENCY_BOUNDS];
        // A bucket counts if any of it falls in the span.
        for bucket in buckets
            .iter()
            .filter(|b| b.start_ms + BUCKET_MS > from_ms && b.start_ms <= to_ms)
        {
            summary.critical.add(&bucket.critical);
            summary.standard.add(&bucket.standard);
            for (total, count) in latency.iter_mut().zip(bucket.latency.iter()) {
                *total += u64::from(*count);
            }
        }
        summary.p99 = percentile(&latency, 0.99);
        summary
    }

    /// Points of `step` over the last `span`, oldest first (empty intervals included).
    pub fn series(&self, span: Duration, step: Duration) -> Vec<Point> {
        let step_ms = i64::try_from(step.as_millis()).unwrap_or(BUCKET_MS).max(BUCKET_MS);
        let now = self.clock.now_ms();
        let end = now - now.rem_euclid(step_ms);
        let points = i64::try_from(span.as_millis()).unwrap_or(0) / step_ms;
        (0..points)
            .rev()
            .map(|back| {
                let start = end - back * step_ms;
                let summary = self.between(start, start + step_ms - 1);
                let total = summary.total();
                Point {
                    t: start,
                    requests: total.requests,
                    errors_5xx: total.errors_5xx,
                    p99_ms: summary.p99.map(|d| d.as_secs_f64() * 1000.0),
                }
            })
            .collect()
    }
}

fn percentile(histogram: &[u64; LATENCY_BOUNDS], quantile: f64) -> Option<Duration> {
    let total: u64 = histogram.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (total as f64 * quantile).ceil() as u64;
    let mut seen = 0;
    for (index, count) in histogram.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(latency_upper_bound(index));
        }
    }
    Some(latency_upper_bound(LATENCY_BOUNDS - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Windows on tokio's clock: the tests run paused and move it with `advance`.
    fn traffic() -> Traffic {
        Traffic::new(Clock::tokio())
    }

    async fn advance(by: Duration) {
        tokio::time::advance(by).await;
    }

    #[tokio::test(start_paused = true)]
    async fn rates_cover_exactly_the_window() {
        let traffic = traffic();
        for _ in 0..90 {
            traffic.record(RouteClass::Critical, 201, Duration::from_millis(5));
        }
        for _ in 0..10 {
            traffic.record(RouteClass::Critical, 503, Duration::from_millis(5));
        }
        traffic.record(RouteClass::Standard, 500, Duration::from_millis(5));
        traffic.record(RouteClass::Operational, 503, Duration::from_millis(5));
        let summary = traffic.last(Duration::from_secs(300));
        assert_eq!(
            summary.critical,
            Counts {
                requests: 100,
                errors_5xx: 10
            }
        );
        assert_eq!(summary.critical.error_ratio(), Some(0.1));
        assert_eq!(
            summary.standard,
            Counts {
                requests: 1,
                errors_5xx: 1
            }
        );
        advance(Duration::from_secs(311)).await;
        assert_eq!(
            traffic.last(Duration::from_secs(300)),
            Summary::default(),
            "it slid out"
        );
        assert_eq!(traffic.last(Duration::from_secs(3600)).critical.requests, 100);
    }

    #[tokio::test(start_paused = true)]
    async fn p99_comes_from_the_histogram_within_a_quarter() {
        let traffic = traffic();
        for _ in 0..980 {
            traffic.record(RouteClass::Standard, 200, Duration::from_millis(2));
        }
        for _ in 0..20 {
            traffic.record(RouteClass::Standard, 200, Duration::from_millis(400));
        }
        let p99 = traffic.last(Duration::from_secs(60)).p99.expect("data");
        assert!(
            p99 >= Duration::from_millis(400) && p99 <= Duration::from_millis(500),
            "{p99:?}"
        );
        assert_eq!(
            traffic.last(Duration::from_secs(60)).p99,
            traffic.last(Duration::from_secs(10)).p99
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_hour_of_history_is_kept_and_older_is_dropped() {
        let traffic = traffic();
        traffic.record(RouteClass::Standard, 200, Duration::from_millis(1));
        advance(Duration::from_secs(3600)).await;
        traffic.record(RouteClass::Standard, 200, Duration::from_millis(1));
        assert_eq!(traffic.last(Duration::from_secs(3610)).standard.requests, 2);
        advance(Duration::from_secs(3600)).await;
        traffic.record(RouteClass::Standard, 200, Duration::from_millis(1));
        assert_eq!(
            traffic.last(Duration::from_secs(24 * 3600)).standard.requests,
            2,
            "at most ~66 minutes"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_series_has_one_point_per_step_including_quiet_ones() {
        let traffic = traffic();
        traffic.record(RouteClass::Critical, 500, Duration::from_millis(3));
        advance(Duration::from_secs(120)).await;
        traffic.record(RouteClass::Standard, 200, Duration::from_millis(3));
        let series = traffic.series(Duration::from_secs(3600), Duration::from_secs(60));
        assert_eq!(series.len(), 60);
        assert_eq!(series.iter().map(|p| p.requests).sum::<u64>(), 2);
        assert_eq!(series.iter().map(|p| p.errors_5xx).sum::<u64>(), 1);
        assert!(series.windows(2).all(|w| w[1].t - w[0].t == 60_000));
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_latest_errors_are_kept_newest_first() {
        let traffic = traffic();
        for n in 0..25 {
            traffic.record_error(RecentError {
                error_id: format!("ERR-{n}"),
                error_class: "X",
                endpoint: "GET /".into(),
                status: 500,
                dependency: None,
                at_ms: 1_732_845_600_000 + n,
            });
        }
        let recent = traffic.recent_errors();
        assert_eq!(recent.len(), RECENT_ERRORS);
        assert_eq!(recent[0].error_id, "ERR-24");
        let shown = serde_json::to_value(&recent[0]).expect("a recent error serializes");
        assert_eq!(shown["at"], "2024-11-29T02:00:00.024Z");
        assert_eq!(shown["errorClass"], "X");
    }

    #[tokio::test(start_paused = true)]
    async fn errors_are_grouped_by_class_and_dependency_for_an_hour() {
        let traffic = traffic();
        let error = |n: u32, class: &'static str, dependency: Option<&'static str>| RecentError {
            error_id: format!("ERR-{n}"),
            error_class: class,
            endpoint: "POST /api/checkout/complete".into(),
            status: 503,
            dependency,
            at_ms: traffic.clock().now_ms(),
        };
        for n in 0..20 {
            traffic.record_error(error(n, "CircuitOpen", Some("paymentGateway")));
        }
        traffic.record_error(error(20, "UpstreamTimeout", Some("paymentGateway")));
        traffic.record_error(error(21, "CircuitOpen", Some("inventoryService")));
        let groups = traffic.error_groups();
        assert_eq!(groups.len(), 3);
        assert_eq!(
            (groups[0].error_class, groups[0].dependency, groups[0].count),
            ("CircuitOpen", Some("paymentGateway"), 20)
        );
        assert_eq!(groups[0].sample_error_id, "ERR-19", "the latest as the sample");
        tokio::time::advance(Duration::from_secs(3601)).await;
        assert!(traffic.error_groups().is_empty(), "an hour later they are gone");
    }
}
