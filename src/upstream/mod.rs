//! HTTP clients for the payment gateway and the inventory service. Each call has a
//! connect timeout and a total timeout, goes through the dependency's circuit
//! breaker, is counted in the `upstream_*` metrics, and fails with a typed
//! [`UpstreamError`] that says whether the dependency is unavailable (503) or
//! misbehaved (500), and whether the request can have reached it at all.

pub mod inventory;
pub mod payment;

use std::fmt;
use std::sync::{Arc, Once};
use std::time::Duration;

use reqwest::{RequestBuilder, StatusCode, Url};
use tokio::time::Instant;

use crate::config::UpstreamSettings;
use crate::error::{Dependency, SHORT_BACKOFF};
use crate::ops::metrics::Metrics;
use crate::resilience::{CircuitBreaker, Outcome, Transition};

pub use inventory::InventoryService;
pub use payment::PaymentGateway;

/// How a call to a dependency failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// The circuit is open; the call was not attempted.
    CircuitOpen {
        /// Until a probe will be let through.
        retry_after: Duration,
    },
    /// No connection could be made; the request was not sent.
    Connect,
    /// No answer within the timeout; the request may have been acted on.
    Timeout(Duration),
    /// The connection broke after the request was sent; it may have been acted on.
    ConnectionLost,
    /// A 5xx answer.
    ServerError(u16),
    /// A status this client does not expect (a 401 means a wrong API key).
    UnexpectedStatus(u16),
    /// An answer that could not be understood.
    Malformed(String),
}

impl fmt::Display for UpstreamErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamErrorKind::CircuitOpen { retry_after } => {
                write!(f, "circuit is open; next probe in {}ms", retry_after.as_millis())
            }
            UpstreamErrorKind::Connect => f.write_str("could not be connected to"),
            UpstreamErrorKind::Timeout(after) => write!(f, "did not answer within {}ms", after.as_millis()),
            UpstreamErrorKind::ConnectionLost => f.write_str("dropped the connection before answering"),
            UpstreamErrorKind::ServerError(status) => write!(f, "answered with server error {status}"),
            UpstreamErrorKind::UnexpectedStatus(401 | 403) => {
                f.write_str("rejected this service's credentials (check the API key)")
            }
            UpstreamErrorKind::UnexpectedStatus(status) => write!(f, "answered with unexpected status {status}"),
            UpstreamErrorKind::Malformed(why) => write!(f, "sent a response that could not be parsed: {why}"),
        }
    }
}

/// A failed call to a dependency.
#[derive(Debug, thiserror::Error)]
#[error("{dependency} {kind}")]
pub struct UpstreamError {
    /// Which dependency.
    pub dependency: Dependency,
    /// How it failed.
    pub kind: UpstreamErrorKind,
    #[source]
    source: Option<reqwest::Error>,
}

impl UpstreamError {
    fn new(dependency: Dependency, kind: UpstreamErrorKind) -> Self {
        Self {
            dependency,
            kind,
            source: None,
        }
    }

    /// True when the request certainly never reached the dependency.
    pub fn was_not_sent(&self) -> bool {
        matches!(
            self.kind,
            UpstreamErrorKind::CircuitOpen { .. } | UpstreamErrorKind::Connect
        )
    }

    /// True when the dependency is down or overloaded (503) rather than broken (500).
    pub fn is_unavailable(&self) -> bool {
        !matches!(
            self.kind,
            UpstreamErrorKind::UnexpectedStatus(_) | UpstreamErrorKind::Malformed(_)
        )
    }

    /// When a retry makes sense: the real time left for an open circuit.
    pub fn retry_after(&self) -> Duration {
        match self.kind {
            UpstreamErrorKind::CircuitOpen { retry_after } => retry_after,
            _ => SHORT_BACKOFF,
        }
    }

    /// A short name for logs and metrics.
    pub fn class(&self) -> &'static str {
        match self.kind {
            UpstreamErrorKind::CircuitOpen { .. } => "CircuitOpen",
            UpstreamErrorKind::Connect => "UpstreamConnectFailed",
            UpstreamErrorKind::Timeout(_) => "UpstreamTimeout",
            UpstreamErrorKind::ConnectionLost => "UpstreamConnectionLost",
            UpstreamErrorKind::ServerError(_) => "UpstreamServerError",
            UpstreamErrorKind::UnexpectedStatus(_) => "UpstreamUnexpectedStatus",
            UpstreamErrorKind::Malformed(_) => "UpstreamMalformedResponse",
        }
    }

    /// The `outcome` label of `upstream_requests_total`.
    fn outcome_label(&self) -> &'static str {
        match self.kind {
            UpstreamErrorKind::CircuitOpen { .. } => "circuit_open",
            UpstreamErrorKind::Connect => "connect_error",
            UpstreamErrorKind::Timeout(_) => "timeout",
            UpstreamErrorKind::ConnectionLost => "connection_lost",
            UpstreamErrorKind::ServerError(_) => "server_error",
            UpstreamErrorKind::UnexpectedStatus(_) => "unexpected_status",
            UpstreamErrorKind::Malformed(_) => "malformed",
        }
    }
}

/// Installs the process-wide TLS crypto provider (ring) once, before any client exists.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Fails only if a provider is already installed, which is what we want anyway.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// An answer from a dependency, status and body read in full.
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// Body bytes.
    pub body: bytes::Bytes,
}

/// One dependency: its base URL, client, breaker and metrics.
pub struct Upstream {
    dependency: Dependency,
    base: Url,
    client: reqwest::Client,
    timeout: Duration,
    breaker: CircuitBreaker,
    metrics: Arc<Metrics>,
}

impl Upstream {
    /// A client with the settings' timeouts and breaker; breaker transitions are
    /// logged and counted.
    pub fn new(dependency: Dependency, settings: &UpstreamSettings, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            // Enough for a busy instance's calls to reuse connections; a burst
            // beyond it leaves no more idle ones open after it.
            .pool_max_idle_per_host(128)
            .tcp_nodelay(true)
            .user_agent(concat!("checkout-service/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let observer_metrics = metrics.clone();
        let name = dependency.as_str();
        observer_metrics.breaker_state.with_label_values(&[name]).set(0);
        let breaker = CircuitBreaker::new(name, settings.breaker.failure_threshold, settings.breaker.recovery)
            .with_observer(Arc::new(move |t: Transition| {
                observer_metrics
                    .breaker_state
                    .with_label_values(&[t.name])
                    .set(t.to.gauge());
                observer_metrics
                    .breaker_transitions
                    .with_label_values(&[t.name, t.to.as_str()])
                    .inc();
                tracing::warn!(
                    event = "circuit_breaker_transition",
                    dependency = t.name,
                    from = t.from.as_str(),
                    to = t.to.as_str(),
                    "circuit breaker for {} went from {} to {}",
                    t.name,
                    t.from,
                    t.to
                );
            }));
        Ok(Self {
            dependency,
            base: settings.url.clone(),
            client,
            timeout: settings.timeout,
            breaker,
            metrics,
        })
    }

    /// The dependency's circuit breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// `path` joined to the base URL.
    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let base_path = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{base_path}{path}"));
        url
    }

    /// Fails fast if the circuit is open, without using the probe slot.
    pub fn check(&self) -> Result<(), UpstreamError> {
        self.breaker.check().map_err(|rejected| {
            UpstreamError::new(
                self.dependency,
                UpstreamErrorKind::CircuitOpen {
                    retry_after: rejected.retry_after,
                },
            )
        })
    }

    /// Sends a request built by `build` through the breaker and reads the whole answer.
    /// 5xx answers are returned as errors; every other status is the caller's to read.
    pub async fn send(
        &self,
        build: impl FnOnce(&reqwest::Client, Url) -> RequestBuilder,
        path: &str,
    ) -> Result<Answer, UpstreamError> {
        let name = self.dependency.as_str();
        let permit = match self.breaker.try_acquire() {
            Ok(permit) => permit,
            Err(rejected) => {
                let error = UpstreamError::new(
                    self.dependency,
                    UpstreamErrorKind::CircuitOpen {
                        retry_after: rejected.retry_after,
                    },
                );
                self.metrics
                    .upstream_requests
                    .with_label_values(&[name, error.outcome_label()])
                    .inc();
                return Err(error);
            }
        };
        let started = Instant::now();
        let request = build(&self.client, self.url(path));
        let result = async {
            let response = request.send().await?;
            let status = response.status();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>(Answer { status, body })
        }
        .await;
        let elapsed = started.elapsed();
        let result = match result {
            Ok(answer) if answer.status.is_server_error() => Err(UpstreamError::new(
                self.dependency,
                UpstreamErrorKind::ServerError(answer.status.as_u16()),
            )),
            Ok(answer) => Ok(answer),
            Err(error) => {
                let kind = if error.is_connect() {
                    UpstreamErrorKind::Connect
                } else if error.is_timeout() {
                    UpstreamErrorKind::Timeout(self.timeout)
                } else {
                    UpstreamErrorKind::ConnectionLost
                };
                Err(UpstreamError {
                    dependency: self.dependency,
                    kind,
                    source: Some(error),
                })
            }
        };
        permit.record(match &result {
            Ok(_) => Outcome::Healthy,
            Err(_) => Outcome::Unhealthy,
        });
        let outcome = match &result {
            Ok(answer) if answer.status.is_success() => "success",
            Ok(_) => "client_error",
            Err(error) => error.outcome_label(),
        };
        self.metrics.upstream_requests.with_label_values(&[name, outcome]).inc();
        self.metrics
            .upstream_duration
            .with_label_values(&[name])
            .observe(elapsed.as_secs_f64());
        result
    }

    /// An error for an answer this client cannot use.
    pub fn unexpected(&self, answer: &Answer) -> UpstreamError {
        UpstreamError::new(
            self.dependency,
            UpstreamErrorKind::UnexpectedStatus(answer.status.as_u16()),
        )
    }

    /// Parses a JSON body, or reports the answer as malformed.
    pub fn parse<T: serde::de::DeserializeOwned>(&self, answer: &Answer) -> Result<T, UpstreamError> {
        serde_json::from_slice(&answer.body)
            .map_err(|e| UpstreamError::new(self.dependency, UpstreamErrorKind::Malformed(e.to_string())))
    }
}
