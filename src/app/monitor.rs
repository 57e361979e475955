//! The service watching itself: every `ALERT_EVAL_INTERVAL_MS` the alert rules are
//! evaluated against the traffic windows and the resource readings, and each alert
//! that fires or resolves is logged (`event:"alert"`), counted and posted to
//! `ALERT_WEBHOOK_URL`; every `RESOURCES_INTERVAL_MS` a `resources` record snapshots
//! what runs out, so a log file alone is enough to triage.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tracing::instrument::WithSubscriber as _;

use crate::app::App;
use crate::ops::alerts::{AlertStatus, Inputs, State};
use crate::ops::webhook;

/// The window error rates and latency are judged over.
pub const ALERT_WINDOW: Duration = Duration::from_secs(300);

/// The window the latency baseline is taken from, before the alert window.
pub const BASELINE_WINDOW: Duration = Duration::from_secs(3600);

/// The window pool use is averaged over.
const POOL_WINDOW_MS: i64 = 60_000;

/// How much of that window samples must cover before the average means anything: a
/// moment of full use (at startup, say) is not saturation.
const POOL_MIN_COVERAGE_MS: i64 = 30_000;

/// The directory whose filesystem holds the logs (the working directory without
/// `LOG_DIR`).
pub fn log_directory(app: &App) -> PathBuf {
    app.settings.log.dir.clone().unwrap_or_else(|| PathBuf::from("."))
}

/// The directories whose filesystems the disk alert and readiness watch: the
/// logs', and the database's when it is a local file.
pub fn watched_paths(app: &App) -> Vec<PathBuf> {
    watched_paths_of(&app.settings)
}

/// [`watched_paths`] from the settings alone.
pub fn watched_paths_of(settings: &crate::config::Settings) -> Vec<PathBuf> {
    let logs = settings.log.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let mut paths = vec![logs];
    if let crate::config::DatabaseUrl::Sqlite { path } = &settings.db.url {
        let dir = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), PathBuf::from);
        if !paths.contains(&dir) {
            paths.push(dir);
        }
    }
    paths
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Pool use over the last minute, one sample per evaluation.
#[derive(Default)]
pub struct PoolSamples(VecDeque<(i64, f64)>);

impl PoolSamples {
    /// Adds a sample; returns the average over the window once the samples cover
    /// enough of it.
    fn push(&mut self, now_ms: i64, in_use: f64) -> Option<f64> {
        self.0.push_back((now_ms, in_use));
        while self.0.len() > 1 && self.0.front().is_some_and(|(t, _)| *t < now_ms - POOL_WINDOW_MS) {
            self.0.pop_front();
        }
        let oldest = self.0.front().map_or(now_ms, |(t, _)| *t);
        (now_ms - oldest >= POOL_MIN_COVERAGE_MS)
            .then(|| self.0.iter().map(|(_, v)| v).sum::<f64>() / self.0.len() as f64)
    }
}

/// Measures everything the rules look at.
pub fn inputs(app: &App, pool: &mut PoolSamples) -> Inputs {
    let now = app.clock.now_ms();
    let recent = app.traffic.last(ALERT_WINDOW);
    let baseline = app
        .traffic
        .between(now - ms(ALERT_WINDOW + BASELINE_WINDOW), now - ms(ALERT_WINDOW));
    let snapshot = app.store.pool_snapshot();
    let in_use = if snapshot.max == 0 {
        0.0
    } else {
        f64::from(snapshot.active) / f64::from(snapshot.max)
    };
    Inputs {
        critical_error_ratio: recent.critical.error_ratio(),
        standard_error_ratio: recent.standard.error_ratio(),
        pool_in_use: pool.push(now, in_use),
        memory_available: app.probe.memory().map(|m| 1.0 - m.usage_ratio()),
        disk_used: watched_paths(app)
            .iter()
            .filter_map(|path| app.probe.disk(path))
            .map(|d| d.usage_ratio)
            .reduce(f64::max),
        fds_used: app
            .probe
            .file_descriptors()
            .filter(|fds| fds.max > 0)
            .map(|fds| fds.open as f64 / fds.max as f64),
        p99_seconds: recent.p99.map(|d| d.as_secs_f64()),
        baseline_p99_seconds: baseline.p99.map(|d| d.as_secs_f64()),
    }
}

/// Evaluates once and announces every change.
pub fn evaluate(app: &Arc<App>, pool: &mut PoolSamples) -> Vec<AlertStatus> {
    let inputs = inputs(app, pool);
    let changed = app.alerts.evaluate(&inputs, app.clock.now_ms());
    for alert in &changed {
        announce(app, alert);
    }
    changed
}

fn announce(app: &Arc<App>, alert: &AlertStatus) {
    let firing = alert.state == State::Firing;
    app.metrics
        .alerts_firing
        .with_label_values(&[alert.name, alert.severity.as_str()])
        .set(i64::from(firing));
    let state = if firing { "firing" } else { "resolved" };
    let value = alert.value.map_or_else(|| "no data".to_string(), |v| format!("{v:.4}"));
    if firing {
        tracing::warn!(
            event = "alert",
            alertName = alert.name,
            severity = alert.severity.as_str(),
            state,
            value = alert.value,
            threshold = alert.threshold,
            "alert {} ({}) is firing: {} (value {value}, threshold {})",
            alert.name,
            alert.severity.as_str(),
            alert.summary,
            alert.threshold
        );
    } else {
        tracing::info!(
            event = "alert",
            alertName = alert.name,
            severity = alert.severity.as_str(),
            state,
            value = alert.value,
            threshold = alert.threshold,
            "alert {} ({}) resolved (value {value})",
            alert.name,
            alert.severity.as_str()
        );
    }
    if app.webhook.is_some() {
        let external = format!("http://{}:{}", app.settings.host, app.settings.port);
        let body = webhook::payload(alert, crate::telemetry::SERVICE, &app.settings.instance_id, &external);
        let name = alert.name;
        let app = app.clone();
        tokio::spawn(
            async move {
                if let Some(hook) = &app.webhook
                    && let Err(error) = hook.send(&body).await
                {
                    tracing::warn!(
                        event = "alert_webhook_failed",
                        alertName = name,
                        error = %format!("{error:#}"),
                        "could not post the alert to ALERT_WEBHOOK_URL"
                    );
                }
            }
            .with_current_subscriber(),
        );
    }
}

/// Evaluates the alert rules every `ALERT_EVAL_INTERVAL_MS` until `stop`.
pub async fn run_alerts(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut pool = PoolSamples::default();
    loop {
        evaluate(&app, &mut pool);
        tokio::select! {
            () = tokio::time::sleep(app.settings.alert_eval_interval) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Writes the `resources` record.
pub fn log_resources(app: &App) {
    let pool = app.store.pool_snapshot();
    let memory = app.probe.memory();
    let disks: Vec<_> = watched_paths(app)
        .iter()
        .filter_map(|path| app.probe.disk(path))
        .collect();
    let fds = app.probe.file_descriptors();
    let minute = app.traffic.last(Duration::from_secs(60)).total();
    tracing::info!(
        event = "resources",
        pool = json!({
            "active": pool.active,
            "idle": pool.idle,
            "max": pool.max,
            "pending": pool.pending,
            "acquireTimeouts": app.store.acquire_timeouts(),
        })
        .to_string(),
        memory = json!(memory.map(|m| json!({
            "rssBytes": m.rss_bytes,
            "usedBytes": m.used_bytes,
            "limitBytes": m.limit_bytes,
            "usageRatio": m.usage_ratio(),
            "source": m.source,
        })))
        .to_string(),
        disk = json!(disks.iter().max_by(|a, b| a.usage_ratio.total_cmp(&b.usage_ratio))).to_string(),
        disks = json!(disks).to_string(),
        fds = json!(fds).to_string(),
        requests = json!({"lastMinute": minute.requests, "errors5xxLastMinute": minute.errors_5xx}).to_string(),
        "resource snapshot"
    );
}

/// Writes the `resources` record every `RESOURCES_INTERVAL_MS` until `stop`.
pub async fn run_resources(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(app.settings.resources_interval) => log_resources(&app),
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_use_is_judged_only_over_enough_of_the_last_minute() {
        let mut samples = PoolSamples::default();
        assert_eq!(samples.push(0, 1.0), None, "one busy moment is not saturation");
        assert_eq!(samples.push(20_000, 1.0), None);
        let average = samples.push(40_000, 0.4).expect("40 s covered");
        assert!((average - 0.8).abs() < 1e-9, "{average}");
        assert_eq!(
            samples.push(110_000, 0.0),
            None,
            "after a silent minute, coverage starts again"
        );
    }
}
