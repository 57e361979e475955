//! A look at a running instance (`--url`): its `/metrics`, `/health` and `/alerts`,
//! each bounded by a short timeout, so triage sees the resources as they are now.

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use url::Url;

use super::read::{FdFields, PoolFields};
use crate::client::{Client, Request};

/// How long each read may take, connection included.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// What a running instance says about itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Live {
    /// The base URL asked.
    pub url: String,
    /// Pool figures from `/metrics`.
    pub pool: Option<PoolFields>,
    /// Memory use from `/metrics`.
    pub memory_ratio: Option<f64>,
    /// Disk use from `/metrics`.
    pub disk_ratio: Option<f64>,
    /// Descriptors from `/metrics`.
    pub fds: Option<FdFields>,
    /// Breakers that are not closed: (dependency, state).
    pub breakers: Vec<(String, String)>,
    /// Status of `/health`.
    pub health_status: Option<u16>,
    /// Why `/health` is unhappy.
    pub health_error: Option<String>,
    /// Alerts firing: "name (severity)".
    pub firing: Vec<String>,
    /// What could not be read.
    pub problems: Vec<String>,
}

impl Live {
    /// The lines this adds to the evidence.
    pub fn evidence(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(status) = self.health_status {
            lines.push(format!(
                "live {}/health answers {status}{}",
                self.url,
                self.health_error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
            ));
        }
        for (dependency, state) in &self.breakers {
            lines.push(format!("live: the {dependency} circuit is {state}"));
        }
        for alert in &self.firing {
            lines.push(format!("live: alert {alert} is firing"));
        }
        for problem in &self.problems {
            lines.push(format!("live: {problem}"));
        }
        lines
    }
}

/// One sample value of `name` with all `labels` (a `key="value"` list) in a Prometheus text body.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, label_text) = match series.split_once('{') {
            Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            return None;
        }
        let matches = labels.iter().all(|(key, expected)| {
            label_text
                .split(',')
                .any(|pair| pair == format!("{key}=\"{expected}\""))
        });
        if matches { value.parse().ok() } else { None }
    })
}

/// Series of `name` with their `label` value: (label value, sample).
fn by_label(metrics: &str, name: &str, label: &str) -> Vec<(String, f64)> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let labels = series.split_once('{')?.1.trim_end_matches('}');
            let found = labels.split(',').find_map(|pair| {
                pair.strip_prefix(&format!("{label}=\""))
                    .map(|v| v.trim_end_matches('"').to_string())
            })?;
            Some((found, value.parse().ok()?))
        })
        .collect()
}

/// Reads `/metrics`, `/health` and `/alerts` of the instance at `url`.
pub async fn fetch(url: &str) -> Live {
    let base = url.trim_end_matches('/').to_string();
    let mut live = Live {
        url: base.clone(),
        ..Live::default()
    };
    let client = match Client::new(Duration::from_secs(2)) {
        Ok(client) => client,
        Err(error) => {
            live.problems.push(format!("cannot make an HTTP client: {error}"));
            return live;
        }
    };
    let read = |path: &'static str| {
        let client = &client;
        let url = format!("{base}{path}");
        async move {
            let url = Url::parse(&url).map_err(|error| format!("{url} is not a URL: {error}"))?;
            client
                .call(Request::get(url.clone()), Instant::now() + READ_TIMEOUT)
                .await
                .map_err(|failure| format!("{url} could not be read: {:#}", anyhow::Error::new(failure)))
        }
    };
    match read("/metrics").await {
        Ok(answer) => {
            let text = String::from_utf8_lossy(&answer.body);
            let number = |name: &str, labels: &[(&str, &str)]| sample(&text, name, labels);
            if let (Some(active), Some(max)) = (
                number("db_pool_connections", &[("state", "active")]),
                number("db_pool_max_connections", &[]),
            ) {
                live.pool = Some(PoolFields {
                    active: active as u64,
                    idle: number("db_pool_connections", &[("state", "idle")]).unwrap_or(0.0) as u64,
                    max: max as u64,
                    pending: number("db_pool_pending_acquires", &[]).unwrap_or(0.0) as u64,
                    acquire_timeouts: number("db_pool_acquire_timeouts_total", &[]).unwrap_or(0.0) as u64,
                });
            }
            live.memory_ratio = number("memory_usage_ratio", &[]);
            live.disk_ratio = by_label(&text, "disk_usage_ratio", "path")
                .into_iter()
                .map(|(_, ratio)| ratio)
                .reduce(f64::max);
            if let (Some(open), Some(max)) = (number("process_open_fds", &[]), number("process_max_fds", &[])) {
                live.fds = Some(FdFields {
                    open: open as u64,
                    max: max as u64,
                });
            }
            live.breakers = by_label(&text, "circuit_breaker_state", "dependency")
                .into_iter()
                .filter(|(_, state)| *state != 0.0)
                .map(|(dependency, state)| (dependency, if state == 1.0 { "OPEN" } else { "HALF_OPEN" }.to_string()))
                .collect();
        }
        Err(problem) => live.problems.push(problem),
    }
    match read("/health").await {
        Ok(answer) => {
            live.health_status = Some(answer.status.as_u16());
            let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
            live.health_error = body["error"].as_str().map(str::to_string);
        }
        Err(problem) => live.problems.push(problem),
    }
    if let Ok(answer) = read("/alerts").await {
        let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        live.firing = body["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "firing")
            .map(|a| {
                format!(
                    "{} ({})",
                    a["name"].as_str().unwrap_or("?"),
                    a["severity"].as_str().unwrap_or("?")
                )
            })
            .collect();
    }
    live
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_name_and_labels() {
        let text = "# HELP x\ndb_pool_connections{state=\"active\"} 3\ndb_pool_connections{state=\"idle\"} 0\n\
                    db_pool_max_connections 3\ncircuit_breaker_state{dependency=\"paymentGateway\"} 1\n";
        assert_eq!(sample(text, "db_pool_connections", &[("state", "active")]), Some(3.0));
        assert_eq!(sample(text, "db_pool_max_connections", &[]), Some(3.0));
        assert_eq!(sample(text, "db_pool_pending_acquires", &[]), None);
        assert_eq!(
            by_label(text, "circuit_breaker_state", "dependency"),
            vec![("paymentGateway".to_string(), 1.0)]
        );
    }
}
