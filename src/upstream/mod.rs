//! HTTP clients for the payment gateway and the inventory service. Each call has a
//! connect timeout and a total timeout, goes through the dependency's circuit
//! breaker, is counted in the `upstream_*` metrics, and fails with a typed
//! [`UpstreamError`] that says whether the dependency is unavailable (503) or
//! misbehaved (500), and whether the request can have reached it at all.

pub mod inventory;
pub mod payment;
pub mod transport;

use std::fmt;
use std::sync::{Arc, Once};
use std::time::Duration;

use hyper::{Method, Request};
use tokio::time::Instant;

use crate::clock;
use crate::config::UpstreamSettings;
use crate::error::{Dependency, SHORT_BACKOFF};
use crate::ops::metrics::Metrics;
use crate::resilience::{CircuitBreaker, Outcome, Transition};

pub use inventory::InventoryService;
pub use payment::PaymentGateway;
pub use transport::{Answer, Body};
use transport::{Failure, Transport};

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
    /// This service could not form the request (a bug here, not there); nothing was sent.
    InvalidRequest(String),
}

impl fmt::Display for UpstreamErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Written piece by piece: every fail-fast 503 formats this one.
            UpstreamErrorKind::CircuitOpen { retry_after } => {
                f.write_str("circuit is open; next probe in ")?;
                f.write_str(itoa::Buffer::new().format(clock::whole_millis(*retry_after)))?;
                f.write_str("ms")
            }
            UpstreamErrorKind::Connect => f.write_str("could not be connected to"),
            UpstreamErrorKind::Timeout(after) => write!(f, "did not answer within {}ms", clock::whole_millis(*after)),
            UpstreamErrorKind::ConnectionLost => f.write_str("dropped the connection before answering"),
            UpstreamErrorKind::ServerError(status) => write!(f, "answered with server error {status}"),
            UpstreamErrorKind::UnexpectedStatus(401 | 403) => {
                f.write_str("rejected this service's credentials (check the API key)")
            }
            UpstreamErrorKind::UnexpectedStatus(status) => write!(f, "answered with unexpected status {status}"),
            UpstreamErrorKind::Malformed(why) => write!(f, "sent a response that could not be parsed: {why}"),
            UpstreamErrorKind::InvalidRequest(why) => write!(f, "could not be sent a valid request: {why}"),
        }
    }
}

/// A failed call to a dependency: `payment gateway circuit is open; ...`.
#[derive(Debug)]
pub struct UpstreamError {
    /// Which dependency.
    pub dependency: Dependency,
    /// How it failed.
    pub kind: UpstreamErrorKind,
    source: Option<Failure>,
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dependency.describe())?;
        f.write_str(" ")?;
        fmt::Display::fmt(&self.kind, f)
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|failure| failure as &(dyn std::error::Error + 'static))
    }
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
            UpstreamErrorKind::CircuitOpen { .. } | UpstreamErrorKind::Connect | UpstreamErrorKind::InvalidRequest(_)
        )
    }

    /// True when the dependency is down or overloaded (503) rather than broken (500).
    pub fn is_unavailable(&self) -> bool {
        !matches!(
            self.kind,
            UpstreamErrorKind::UnexpectedStatus(_)
                | UpstreamErrorKind::Malformed(_)
                | UpstreamErrorKind::InvalidRequest(_)
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
            UpstreamErrorKind::InvalidRequest(_) => "UpstreamInvalidRequest",
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
            UpstreamErrorKind::InvalidRequest(_) => "invalid_request",
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

/// How long an unused connection to a dependency is kept for reuse.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Most unused connections kept per dependency: enough for a busy instance's calls
/// to reuse connections; a burst beyond it leaves no more open after it.
const MAX_IDLE: usize = 128;

/// One dependency: its transport, breaker and metrics.
pub struct Upstream {
    dependency: Dependency,
    transport: Transport,
    timeout: Duration,
    breaker: CircuitBreaker,
    metrics: Arc<Metrics>,
}

impl Upstream {
    /// A client with the settings' timeouts and breaker; breaker transitions are
    /// logged and counted.
    pub fn new(dependency: Dependency, settings: &UpstreamSettings, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let transport = Transport::new(
            &settings.url,
            transport::Options {
                connect_timeout: settings.connect_timeout,
                idle_timeout: IDLE_TIMEOUT,
                max_idle: MAX_IDLE,
                user_agent: concat!("checkout-service/", env!("CARGO_PKG_VERSION")),
            },
        )?;
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
            transport,
            timeout: settings.timeout,
            breaker,
            metrics,
        })
    }

    /// The dependency's circuit breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// A request for `path` (with any query) under the dependency's base URL.
    pub fn request(&self, method: Method, path: &str) -> hyper::http::request::Builder {
        self.transport.request(method, path)
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

    /// Sends `request` (built with [`Upstream::request`]) through the breaker and reads
    /// the whole answer within the dependency's timeout. 5xx answers are returned as
    /// errors; every other status is the caller's to read.
    pub async fn send(&self, request: hyper::http::Result<Request<Body>>) -> Result<Answer, UpstreamError> {
        let name = self.dependency.as_str();
        let request = match request {
            Ok(request) => request,
            Err(error) => {
                let error = UpstreamError::new(self.dependency, UpstreamErrorKind::InvalidRequest(error.to_string()));
                self.metrics
                    .upstream_requests
                    .with_label_values(&[name, error.outcome_label()])
                    .inc();
                return Err(error);
            }
        };
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
        let result = self.transport.call(request, started + self.timeout).await;
        let elapsed = started.elapsed();
        let result = match result {
            Ok(answer) if answer.status.is_server_error() => Err(UpstreamError::new(
                self.dependency,
                UpstreamErrorKind::ServerError(answer.status.as_u16()),
            )),
            Ok(answer) => Ok(answer),
            Err(failure) => {
                let kind = match &failure {
                    Failure::NotSent(_) => UpstreamErrorKind::Connect,
                    Failure::TimedOut => UpstreamErrorKind::Timeout(self.timeout),
                    Failure::Lost(_) => UpstreamErrorKind::ConnectionLost,
                    Failure::TooLarge => UpstreamErrorKind::Malformed(failure.to_string()),
                };
                Err(UpstreamError {
                    dependency: self.dependency,
                    kind,
                    source: Some(failure),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_error_names_the_dependency_then_what_went_wrong() {
        let open = UpstreamError::new(
            Dependency::PaymentGateway,
            UpstreamErrorKind::CircuitOpen {
                retry_after: Duration::from_micros(29_993_400),
            },
        );
        assert_eq!(
            open.to_string(),
            "payment gateway circuit is open; next probe in 29993ms"
        );
        let slow = UpstreamError::new(
            Dependency::InventoryService,
            UpstreamErrorKind::Timeout(Duration::from_millis(3_000)),
        );
        assert_eq!(slow.to_string(), "inventory service did not answer within 3000ms");
        assert!(std::error::Error::source(&slow).is_none());
    }
}
