//! Clients of the dependencies. Each call goes through the dependency's circuit
//! breaker, has a connect timeout and a total timeout, is counted in the
//! `upstream_*` metrics, and ends in one place, [`Upstream::call`], that classifies
//! every answer as DESIGN §3 says:
//!
//! - what the caller's reader accepts (a charge, a decline, a stock conflict) is
//!   its business answer, and proves the dependency up;
//! - a connection failure, a timeout, a broken or oversized answer, 5xx, 429 and
//!   408, and an answer the reader cannot parse mean the dependency is unavailable
//!   (503, with its own `Retry-After` when it sent one) and count toward opening
//!   the breaker;
//! - any other status means our request or configuration is wrong: 401 and 403
//!   are [`UpstreamErrorKind::Auth`], the rest [`UpstreamErrorKind::Contract`]
//!   (500s that never open the breaker: the dependency answered).
//!
//! A new dependency is a [`Dependency`] variant, an [`UpstreamSettings`] in the
//! configuration, and a module here whose methods build requests and read answers
//! through an [`Upstream`].

pub mod inventory;
pub mod payment;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use tokio::time::Instant;
use tracing::Instrument as _;
use url::Url;

use crate::client::{self, Answer, Client, Failure, Request};
use crate::clock::{self, Clock};
use crate::config::UpstreamSettings;
use crate::ops::metrics::Metrics;
use crate::resilience::{CircuitBreaker, Dependency, Outcome, Transition};

pub use inventory::InventoryService;

/// The short retry advice for transient failures that carry no better one.
pub const SHORT_BACKOFF: Duration = Duration::from_secs(1);

/// The longest `Retry-After` passed on from a dependency.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

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
    /// The answer was longer than [`client::MAX_ANSWER_BYTES`].
    TooLarge,
    /// 5xx, 429 or 408: down or overloaded.
    Unavailable {
        /// The status it answered.
        status: u16,
        /// Its own `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// 401 or 403: it refused this service's credentials.
    Auth(u16),
    /// Another status this client does not expect: our request and its API disagree.
    Contract(u16),
    /// An answer that could not be understood.
    Malformed(String),
    /// This service could not form the request (a bug here, not there); nothing was sent.
    InvalidRequest(String),
    /// This process is out of file descriptors (or memory) and could not even try:
    /// the fault is here, not there, and the breaker does not count it.
    LocalResources(String),
}

impl fmt::Display for UpstreamErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamErrorKind::CircuitOpen { retry_after } => {
                write!(
                    f,
                    "circuit is open; next probe in {}ms",
                    clock::whole_millis(*retry_after)
                )
            }
            UpstreamErrorKind::Connect => f.write_str("could not be connected to"),
            UpstreamErrorKind::Timeout(after) => write!(f, "did not answer within {}ms", clock::whole_millis(*after)),
            UpstreamErrorKind::ConnectionLost => f.write_str("dropped the connection before answering"),
            UpstreamErrorKind::TooLarge => write!(f, "sent an answer longer than {} bytes", client::MAX_ANSWER_BYTES),
            UpstreamErrorKind::Unavailable {
                status,
                retry_after: Some(after),
            } => write!(f, "answered {status}, asking to retry after {}s", after.as_secs()),
            UpstreamErrorKind::Unavailable { status, .. } => write!(f, "answered {status}"),
            UpstreamErrorKind::Auth(status) => {
                write!(
                    f,
                    "refused this service's credentials with {status} (check its API key)"
                )
            }
            UpstreamErrorKind::Contract(status) => {
                write!(
                    f,
                    "answered {status}, which this client does not expect (the two disagree on its API)"
                )
            }
            UpstreamErrorKind::Malformed(why) => write!(f, "sent an answer that could not be read: {why}"),
            UpstreamErrorKind::InvalidRequest(why) => write!(f, "could not be sent a valid request: {why}"),
            UpstreamErrorKind::LocalResources(why) => {
                write!(f, "could not be called: this process is out of resources ({why})")
            }
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
        write!(f, "{} {}", self.dependency.describe(), self.kind)
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
    /// An error of `kind` from `dependency`, without a cause beneath it.
    pub fn new(dependency: Dependency, kind: UpstreamErrorKind) -> Self {
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
            UpstreamErrorKind::CircuitOpen { .. }
                | UpstreamErrorKind::Connect
                | UpstreamErrorKind::InvalidRequest(_)
                | UpstreamErrorKind::LocalResources(_)
        )
    }

    /// What the failure is blamed on: the dependency, or this server when it could
    /// not even make the call.
    pub fn blamed(&self) -> Dependency {
        match self.kind {
            UpstreamErrorKind::LocalResources(_) => Dependency::Server,
            _ => self.dependency,
        }
    }

    /// True when the dependency certainly did not act on the request: it was never
    /// sent, or the answer was a 4xx (a charge answered 429 was not made).
    pub fn was_refused(&self) -> bool {
        self.was_not_sent()
            || matches!(
                self.kind,
                UpstreamErrorKind::Auth(_) | UpstreamErrorKind::Contract(400..=499)
            )
            || matches!(self.kind, UpstreamErrorKind::Unavailable { status: 400..=499, .. })
    }

    /// True when the dependency is down or overloaded (503) rather than our request
    /// or configuration being wrong (500).
    pub fn is_unavailable(&self) -> bool {
        !matches!(
            self.kind,
            UpstreamErrorKind::Auth(_) | UpstreamErrorKind::Contract(_) | UpstreamErrorKind::InvalidRequest(_)
        )
    }

    /// Whether the failure says the dependency is unhealthy (it counts toward
    /// opening the breaker).
    fn outcome(&self) -> Outcome {
        if self.is_unavailable() {
            Outcome::Unhealthy
        } else {
            Outcome::Healthy
        }
    }

    /// When a retry makes sense: the real time left for an open circuit, the
    /// dependency's own `Retry-After`, or a short backoff.
    pub fn retry_after(&self) -> Duration {
        match self.kind {
            UpstreamErrorKind::CircuitOpen { retry_after } => retry_after,
            UpstreamErrorKind::Unavailable {
                retry_after: Some(after),
                ..
            } => after,
            _ => SHORT_BACKOFF,
        }
    }

    /// A short name for logs and metrics (`errorClass`).
    pub fn class(&self) -> &'static str {
        match self.kind {
            UpstreamErrorKind::CircuitOpen { .. } => "CircuitOpen",
            UpstreamErrorKind::Connect => "UpstreamConnectFailed",
            UpstreamErrorKind::Timeout(_) => "UpstreamTimeout",
            UpstreamErrorKind::ConnectionLost => "UpstreamConnectionLost",
            UpstreamErrorKind::TooLarge | UpstreamErrorKind::Malformed(_) => "UpstreamMalformedResponse",
            UpstreamErrorKind::Unavailable { status: 500.., .. } => "UpstreamServerError",
            UpstreamErrorKind::Unavailable { .. } => "UpstreamOverloaded",
            UpstreamErrorKind::Auth(_) => "UpstreamAuthError",
            UpstreamErrorKind::Contract(_) => "UpstreamContractError",
            UpstreamErrorKind::InvalidRequest(_) => "UpstreamInvalidRequest",
            UpstreamErrorKind::LocalResources(_) => "ResourcesExhausted",
        }
    }

    /// The `outcome` label of `upstream_requests_total`.
    fn outcome_label(&self) -> &'static str {
        match self.kind {
            UpstreamErrorKind::CircuitOpen { .. } => "circuit_open",
            UpstreamErrorKind::Connect => "connect_error",
            UpstreamErrorKind::Timeout(_) => "timeout",
            UpstreamErrorKind::ConnectionLost => "connection_lost",
            UpstreamErrorKind::TooLarge | UpstreamErrorKind::Malformed(_) => "malformed",
            UpstreamErrorKind::Unavailable { status: 500.., .. } => "server_error",
            UpstreamErrorKind::Unavailable { .. } => "overloaded",
            UpstreamErrorKind::Auth(_) => "auth_error",
            UpstreamErrorKind::Contract(_) => "contract_error",
            UpstreamErrorKind::InvalidRequest(_) => "invalid_request",
            UpstreamErrorKind::LocalResources(_) => "local_resources",
        }
    }
}

/// Every `outcome` label value of `upstream_requests_total`.
pub const OUTCOMES: &[&str] = &[
    "success",
    "business_answer",
    "circuit_open",
    "connect_error",
    "timeout",
    "connection_lost",
    "malformed",
    "server_error",
    "overloaded",
    "auth_error",
    "contract_error",
    "invalid_request",
    "local_resources",
];

/// The OS error beneath `error` if it says this process is out of file descriptors
/// or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), in its own words.
fn out_of_resources(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && matches!(
                io.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
            )
        {
            return Some(io.to_string());
        }
        cause = current.source();
    }
    None
}

/// What a caller's reader makes of an answer that is not 5xx, 429 or 408.
pub enum Read<T> {
    /// The answer the call was for (a success, or a business "no").
    Done(T),
    /// A status the caller does not expect.
    Unexpected,
    /// An expected status whose body could not be understood.
    Malformed(String),
}

impl<T> Read<T> {
    /// `body` parsed as JSON into `T`, or [`Read::Malformed`].
    pub fn json<U: serde::de::DeserializeOwned>(answer: &Answer, done: impl FnOnce(U) -> T) -> Read<T> {
        match serde_json::from_slice(&answer.body) {
            Ok(parsed) => Read::Done(done(parsed)),
            Err(error) => Read::Malformed(error.to_string()),
        }
    }

    /// The same reading, of what `f` makes of the answer.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Read<U> {
        match self {
            Read::Done(value) => Read::Done(f(value)),
            Read::Unexpected => Read::Unexpected,
            Read::Malformed(why) => Read::Malformed(why),
        }
    }
}

/// One dependency: its client, breaker and metrics.
pub struct Upstream {
    dependency: Dependency,
    client: Client,
    base: Url,
    timeout: Duration,
    breaker: CircuitBreaker,
    metrics: Arc<Metrics>,
    clock: Clock,
}

/// How long an unused connection to a dependency is kept for reuse.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Most unused connections kept per dependency: enough for a busy instance's calls
/// to reuse connections; a burst beyond it leaves no more open after it.
const MAX_IDLE: usize = 128;

impl Upstream {
    /// A client with the settings' timeouts and breaker; breaker transitions are
    /// logged and counted.
    pub fn new(
        dependency: Dependency,
        settings: &UpstreamSettings,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let client = Client::pooled(settings.connect_timeout, IDLE_TIMEOUT, MAX_IDLE)
            .map_err(|error| anyhow::anyhow!("cannot make an HTTP client: {error}"))?;
        let name = dependency.as_str();
        metrics.breaker_state.with_label_values(&[name]).set(0);
        let observer_metrics = metrics.clone();
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
            client,
            base: settings.url.clone(),
            timeout: settings.timeout,
            breaker,
            metrics,
            clock,
        })
    }

    /// The dependency's circuit breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Which dependency this is.
    pub fn dependency(&self) -> Dependency {
        self.dependency
    }

    /// A request for `segments` (each percent-encoded) under the base URL.
    pub fn request(&self, method: Method, segments: &[&str]) -> Request {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        Request::new(method, url)
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

    /// Sends `request` through the breaker, reads the whole answer within the
    /// dependency's timeout, and classifies it (see the module documentation);
    /// `read` makes the caller's sense of the statuses it expects.
    pub async fn call<T>(&self, request: Request, read: impl FnOnce(&Answer) -> Read<T>) -> Result<T, UpstreamError> {
        let permit = match self.breaker.try_acquire() {
            Ok(permit) => permit,
            Err(rejected) => {
                let error = UpstreamError::new(
                    self.dependency,
                    UpstreamErrorKind::CircuitOpen {
                        retry_after: rejected.retry_after,
                    },
                );
                self.count(error.outcome_label(), None);
                return Err(error);
            }
        };
        let started = Instant::now();
        let mut outcome = "success";
        let mut request = request;
        let (span, propagation) = crate::telemetry::trace::dependency_call(
            self.dependency.as_str(),
            request.method().as_str(),
            request.url(),
        );
        let headers = request.headers_mut();
        if let Ok(value) = http::HeaderValue::try_from(propagation.traceparent) {
            headers.insert("traceparent", value);
        }
        if let Ok(value) = http::HeaderValue::try_from(propagation.request_id) {
            headers.insert("x-request-id", value);
        }
        let sent = self
            .client
            .call(request, started + self.timeout)
            .instrument(span.clone())
            .await;
        if let Ok(answer) = &sent {
            span.record("http.response.status_code", u64::from(answer.status.as_u16()));
        }
        let result = match sent {
            Ok(answer) => {
                if !answer.status.is_success() {
                    outcome = "business_answer";
                }
                self.classify(&answer, read)
            }
            Err(failure) => {
                let kind = match &failure {
                    Failure::Invalid(error) => UpstreamErrorKind::InvalidRequest(error.to_string()),
                    Failure::NotSent(error) if let Some(why) = out_of_resources(error.as_ref()) => {
                        UpstreamErrorKind::LocalResources(why)
                    }
                    Failure::NotSent(_) => UpstreamErrorKind::Connect,
                    Failure::TimedOut => UpstreamErrorKind::Timeout(self.timeout),
                    Failure::Lost(_) => UpstreamErrorKind::ConnectionLost,
                    Failure::TooLarge => UpstreamErrorKind::TooLarge,
                };
                Err(UpstreamError {
                    dependency: self.dependency,
                    kind,
                    source: Some(failure),
                })
            }
        };
        match &result {
            // Not the dependency's doing: no verdict on it (a probe's turn is given back).
            Err(error) if matches!(error.kind, UpstreamErrorKind::LocalResources(_)) => drop(permit),
            Ok(_) => permit.record(Outcome::Healthy),
            Err(error) => permit.record(error.outcome()),
        }
        if let Err(error) = &result {
            outcome = error.outcome_label();
            span.record("otel.status_code", "error");
        }
        self.count(outcome, Some(started.elapsed()));
        result
    }

    fn classify<T>(&self, answer: &Answer, read: impl FnOnce(&Answer) -> Read<T>) -> Result<T, UpstreamError> {
        let status = answer.status;
        let fail = |kind| Err(UpstreamError::new(self.dependency, kind));
        if status.is_server_error() || matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT) {
            return fail(UpstreamErrorKind::Unavailable {
                status: status.as_u16(),
                retry_after: self.retry_after(answer),
            });
        }
        match read(answer) {
            Read::Done(value) => Ok(value),
            Read::Malformed(why) => fail(UpstreamErrorKind::Malformed(why)),
            Read::Unexpected if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                fail(UpstreamErrorKind::Auth(status.as_u16()))
            }
            Read::Unexpected => fail(UpstreamErrorKind::Contract(status.as_u16())),
        }
    }

    /// The answer's `Retry-After`, in seconds or as an HTTP date, at most an hour.
    fn retry_after(&self, answer: &Answer) -> Option<Duration> {
        let text = answer.retry_after.as_ref()?.to_str().ok()?.trim();
        let after = match text.parse::<u64>() {
            Ok(seconds) => Duration::from_secs(seconds),
            Err(_) => {
                let at = clock::parse_http_date_ms(text)?;
                Duration::from_millis(u64::try_from(at - self.clock.now_ms()).unwrap_or(0))
            }
        };
        Some(after.min(MAX_RETRY_AFTER))
    }

    fn count(&self, outcome: &str, elapsed: Option<Duration>) {
        let name = self.dependency.as_str();
        self.metrics.upstream_requests.with_label_values(&[name, outcome]).inc();
        if let Some(elapsed) = elapsed {
            self.metrics
                .upstream_duration
                .with_label_values(&[name])
                .observe(elapsed.as_secs_f64());
        }
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

    #[test]
    fn every_4xx_is_a_refusal_and_only_auth_and_contract_errors_are_500s() {
        let error = |kind| UpstreamError::new(Dependency::PaymentGateway, kind);
        let throttled = error(UpstreamErrorKind::Unavailable {
            status: 429,
            retry_after: Some(Duration::from_secs(7)),
        });
        assert!(throttled.was_refused() && throttled.is_unavailable());
        assert_eq!(throttled.retry_after(), Duration::from_secs(7));
        let down = error(UpstreamErrorKind::Unavailable {
            status: 503,
            retry_after: None,
        });
        assert!(!down.was_refused() && down.is_unavailable());
        assert_eq!(down.retry_after(), SHORT_BACKOFF);
        for kind in [UpstreamErrorKind::Auth(401), UpstreamErrorKind::Contract(404)] {
            let wrong = error(kind);
            assert!(wrong.was_refused() && !wrong.is_unavailable(), "{wrong}");
            assert_eq!(wrong.outcome(), Outcome::Healthy, "{wrong}");
        }
        assert!(!error(UpstreamErrorKind::ConnectionLost).was_refused());
    }
}
