//! Alert notifications in Alertmanager's webhook format (version 4), so whatever
//! already receives Alertmanager's webhooks can receive these unchanged.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;
use url::Url;

use super::alerts::{AlertStatus, State};
use crate::client::{Client, Request};
use crate::clock::rfc3339_ms;

/// Alertmanager's "no end time".
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// The JSON body announcing that `alert` fired or resolved on `instance`.
pub fn payload(alert: &AlertStatus, service: &str, instance: &str, external_url: &str) -> Value {
    let status = match alert.state {
        State::Firing => "firing",
        State::Inactive => "resolved",
    };
    let changed_at = alert.since_ms.map(rfc3339_ms).unwrap_or_else(|| ZERO_TIME.to_string());
    let fired_at = alert.fired_ms.map(rfc3339_ms).unwrap_or_else(|| changed_at.clone());
    let labels = json!({
        "alertname": alert.name,
        "severity": alert.severity.as_str(),
        "service": service,
        "instance": instance,
    });
    let annotations = json!({
        "summary": alert.summary,
        "description": format!(
            "{}: value {} against threshold {}",
            alert.summary,
            alert.value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.4}")),
            alert.threshold
        ),
    });
    let (starts_at, ends_at) = match alert.state {
        State::Firing => (fired_at, ZERO_TIME.to_string()),
        State::Inactive => (fired_at, changed_at.clone()),
    };
    json!({
        "version": "4",
        "groupKey": format!(
            "{{}}:{{alertname=\"{}\",instance=\"{instance}\",severity=\"{}\"}}",
            alert.name,
            alert.severity.as_str()
        ),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": service,
        "groupLabels": {"alertname": alert.name},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": external_url,
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": starts_at,
            "endsAt": ends_at,
            "generatorURL": format!("{external_url}/alerts"),
            "fingerprint": format!("{:016x}", fingerprint(&[alert.name, alert.severity.as_str(), instance])),
        }],
    })
}

/// A stable identity for an alert (FNV-1a of its labels).
fn fingerprint(labels: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in labels.iter().flat_map(|label| label.bytes().chain([0])) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Posts payloads to one URL, each bounded by a timeout.
pub struct Webhook {
    url: Url,
    client: Client,
}

/// How long one post may take, connection included.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

impl Webhook {
    /// A sender to `url`.
    pub fn new(url: Url) -> anyhow::Result<Self> {
        let client = Client::new(Duration::from_secs(2))
            .map_err(|error| anyhow::anyhow!("cannot make an HTTP client: {error}"))?;
        Ok(Webhook { url, client })
    }

    /// Posts `payload`; fails on a transport error or a non-2xx answer.
    pub async fn send(&self, payload: &Value) -> anyhow::Result<()> {
        let request = Request::post(self.url.clone()).json(payload);
        let answer = self.client.call(request, Instant::now() + SEND_TIMEOUT).await?;
        if !answer.status.is_success() {
            anyhow::bail!("the webhook answered {}", answer.status);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::alerts::Severity;

    #[test]
    fn payloads_follow_alertmanagers_webhook_format() {
        let alert = AlertStatus {
            name: "CheckoutErrorRateCritical",
            severity: Severity::Page,
            state: State::Firing,
            value: Some(0.2),
            threshold: 0.01,
            since: None,
            summary: "More than 1% of checkouts answered 5xx over 5 minutes",
            since_ms: Some(1_732_845_600_000),
            fired_ms: Some(1_732_845_600_000),
        };
        let body = payload(&alert, "checkout-service", "checkout-1", "http://host:3000");
        assert_eq!(body["version"], "4");
        assert_eq!(body["status"], "firing");
        assert_eq!(body["alerts"][0]["labels"]["alertname"], "CheckoutErrorRateCritical");
        assert_eq!(body["alerts"][0]["labels"]["severity"], "page");
        assert_eq!(body["alerts"][0]["labels"]["instance"], "checkout-1");
        assert_eq!(body["alerts"][0]["startsAt"], "2024-11-29T02:00:00.000Z");
        assert_eq!(body["alerts"][0]["endsAt"], ZERO_TIME);
        let resolved = payload(
            &AlertStatus {
                state: State::Inactive,
                value: Some(0.004),
                since_ms: Some(1_732_845_900_000),
                ..alert
            },
            "checkout-service",
            "checkout-1",
            "http://host:3000",
        );
        assert_eq!(resolved["status"], "resolved");
        assert_eq!(
            resolved["alerts"][0]["startsAt"], "2024-11-29T02:00:00.000Z",
            "the firing it ends"
        );
        assert_eq!(resolved["alerts"][0]["endsAt"], "2024-11-29T02:05:00.000Z");
        assert!(
            resolved["alerts"][0]["annotations"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("value 0.0040")),
            "{resolved}"
        );
        assert_eq!(resolved["alerts"][0]["fingerprint"], body["alerts"][0]["fingerprint"]);
    }
}
