//! A circuit breaker on tokio's clock, so its tests run on a paused clock.
//!
//! `Closed` counts consecutive unhealthy outcomes and opens at the threshold.
//! `Open` rejects every call until the recovery time has passed, and says exactly
//! how long is left (the `Retry-After` a client is given). Then `HalfOpen` lets one
//! probe through at a time: a healthy probe closes the circuit, an unhealthy one
//! opens it again for another recovery period.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::Outcome;

/// The three states, as reported by `/health` and the `circuit_breaker_state` metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow; failures are counted.
    Closed,
    /// Calls are rejected without being attempted.
    Open,
    /// One probe call at a time is let through.
    HalfOpen,
}

impl BreakerState {
    /// `CLOSED`, `OPEN` or `HALF_OPEN`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "CLOSED",
            BreakerState::Open => "OPEN",
            BreakerState::HalfOpen => "HALF_OPEN",
        }
    }

    /// 0 closed, 1 open, 2 half-open: the `circuit_breaker_state` gauge.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A call refused because the circuit is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// How long until a probe will be let through.
    pub retry_after: Duration,
}

/// A change of state, reported to the breaker's observer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The breaker's name.
    pub name: &'static str,
    /// State before.
    pub from: BreakerState,
    /// State after.
    pub to: BreakerState,
}

/// Receives every transition (to log it and count it), outside the breaker's lock.
pub type Observer = Arc<dyn Fn(Transition) + Send + Sync>;

#[derive(Clone, Copy, Debug)]
enum State {
    Closed {
        failures: u32,
    },
    /// `since` is when the circuit last left `Closed`, kept across probe failures.
    Open {
        until: Instant,
        since: Instant,
    },
    HalfOpen {
        probing: bool,
        since: Instant,
    },
}

impl State {
    fn public(self) -> BreakerState {
        match self {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

/// How long a caller is told to wait while a probe is in flight.
const PROBE_IN_FLIGHT_RETRY: Duration = Duration::from_secs(1);

/// Counts unhealthy outcomes of calls to one dependency and fails fast when it is down.
pub struct CircuitBreaker {
    name: &'static str,
    failure_threshold: u32,
    recovery: Duration,
    state: Mutex<State>,
    observer: Option<Observer>,
}

impl CircuitBreaker {
    /// A closed breaker that opens after `failure_threshold` consecutive unhealthy
    /// outcomes and stays open for `recovery`.
    pub fn new(name: &'static str, failure_threshold: u32, recovery: Duration) -> Self {
        Self {
            name,
            failure_threshold: failure_threshold.max(1),
            recovery,
            state: Mutex::new(State::Closed { failures: 0 }),
            observer: None,
        }
    }

    /// Reports every transition to `observer`.
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The breaker's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a plain value updated in single assignments; a panic elsewhere
        // while holding the lock cannot leave it half-written.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn notify(&self, from: BreakerState, to: BreakerState) {
        if from != to
            && let Some(observer) = &self.observer
        {
            observer(Transition {
                name: self.name,
                from,
                to,
            });
        }
    }

    /// The current state. An open circuit whose recovery time has passed still reads
    /// `Open` until a call arrives to probe it.
    pub fn state(&self) -> BreakerState {
        self.lock().public()
    }

    /// How long the circuit has been away from `Closed`, if it is.
    pub fn open_for(&self) -> Option<Duration> {
        match *self.lock() {
            State::Closed { .. } => None,
            State::Open { since, .. } | State::HalfOpen { since, .. } => Some(Instant::now() - since),
        }
    }

    /// Whether a call would be let through now, without claiming the probe slot: for
    /// failing fast before doing work that needs the dependency.
    pub fn check(&self) -> Result<(), Rejected> {
        match *self.lock() {
            State::Closed { .. } => Ok(()),
            State::Open { until, .. } => {
                let now = Instant::now();
                if now >= until {
                    Ok(())
                } else {
                    Err(Rejected {
                        retry_after: until - now,
                    })
                }
            }
            State::HalfOpen { probing: false, .. } => Ok(()),
            State::HalfOpen { probing: true, .. } => Err(Rejected {
                retry_after: PROBE_IN_FLIGHT_RETRY,
            }),
        }
    }

    /// Asks to make a call. The permit must be given the call's outcome; a permit
    /// dropped without one (the call was cancelled) frees the probe slot.
    pub fn try_acquire(&self) -> Result<Permit<'_>, Rejected> {
        let mut state = self.lock();
        let now = Instant::now();
        let (permit, transition) = match *state {
            State::Closed { .. } => (self.permit(false), None),
            State::Open { until, since } => {
                if now < until {
                    return Err(Rejected {
                        retry_after: until - now,
                    });
                }
                // Open → HalfOpen: the recovery time is over; this call is the probe.
                *state = State::HalfOpen { probing: true, since };
                (self.permit(true), Some((BreakerState::Open, BreakerState::HalfOpen)))
            }
            State::HalfOpen { probing: false, since } => {
                *state = State::HalfOpen { probing: true, since };
                (self.permit(true), None)
            }
            State::HalfOpen { probing: true, .. } => {
                return Err(Rejected {
                    retry_after: PROBE_IN_FLIGHT_RETRY,
                });
            }
        };
        drop(state);
        if let Some((from, to)) = transition {
            self.notify(from, to);
        }
        Ok(permit)
    }

    fn permit(&self, probe: bool) -> Permit<'_> {
        Permit {
            breaker: self,
            probe,
            recorded: false,
        }
    }

    fn record(&self, probe: bool, outcome: Outcome) {
        let mut state = self.lock();
        let from = state.public();
        let now = Instant::now();
        match (*state, probe, outcome) {
            // Closed: a healthy answer resets the count.
            (State::Closed { .. }, _, Outcome::Healthy) => *state = State::Closed { failures: 0 },
            // Closed: an unhealthy one counts, and opens the circuit at the threshold.
            (State::Closed { failures }, _, Outcome::Unhealthy) => {
                let failures = failures + 1;
                *state = if failures >= self.failure_threshold {
                    State::Open {
                        until: now + self.recovery,
                        since: now,
                    }
                } else {
                    State::Closed { failures }
                };
            }
            // HalfOpen: the probe succeeded, so the dependency is back.
            (State::HalfOpen { .. }, true, Outcome::Healthy) => *state = State::Closed { failures: 0 },
            // HalfOpen: the probe failed; wait a whole recovery period again.
            (State::HalfOpen { since, .. }, true, Outcome::Unhealthy) => {
                *state = State::Open {
                    until: now + self.recovery,
                    since,
                }
            }
            // Outcomes of calls let through before the circuit opened say nothing
            // about the dependency now; only the probe decides.
            (State::Open { .. } | State::HalfOpen { .. }, _, _) => {}
        }
        let to = state.public();
        drop(state);
        self.notify(from, to);
    }

    fn abandon_probe(&self) {
        let mut state = self.lock();
        if let State::HalfOpen { probing: true, since } = *state {
            *state = State::HalfOpen { probing: false, since };
        }
    }
}

/// Leave to make one call. Report its outcome with [`Permit::record`].
#[must_use = "a permit must be given the call's outcome"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    recorded: bool,
}

impl Permit<'_> {
    /// Reports how the call went.
    pub fn record(mut self, outcome: Outcome) {
        self.recorded = true;
        self.breaker.record(self.probe, outcome);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.recorded && self.probe {
            self.breaker.abandon_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Seen = Arc<Mutex<Vec<(BreakerState, BreakerState)>>>;

    fn breaker() -> (CircuitBreaker, Seen) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let breaker = CircuitBreaker::new("payment", 3, Duration::from_secs(30)).with_observer(Arc::new(move |t| {
            sink.lock().expect("test lock").push((t.from, t.to));
        }));
        (breaker, seen)
    }

    fn fail(breaker: &CircuitBreaker) {
        breaker.try_acquire().expect("let through").record(Outcome::Unhealthy);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_threshold_of_consecutive_failures() {
        let (breaker, seen) = breaker();
        fail(&breaker);
        fail(&breaker);
        breaker.try_acquire().expect("closed").record(Outcome::Healthy);
        fail(&breaker);
        fail(&breaker);
        assert_eq!(breaker.state(), BreakerState::Closed, "a success resets the count");
        fail(&breaker);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(
            *seen.lock().expect("test lock"),
            vec![(BreakerState::Closed, BreakerState::Open)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_circuit_fails_fast_and_reports_the_real_time_left() {
        let (breaker, _) = breaker();
        (0..3).for_each(|_| fail(&breaker));
        let rejected = breaker.try_acquire().err().expect("open");
        assert_eq!(rejected.retry_after, Duration::from_secs(30));
        tokio::time::advance(Duration::from_millis(12_500)).await;
        let rejected = breaker.try_acquire().err().expect("still open");
        assert_eq!(rejected.retry_after, Duration::from_millis(17_500));
        assert_eq!(breaker.check().err(), Some(rejected));
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_exactly_one_probe_and_closes_on_success() {
        let (breaker, seen) = breaker();
        (0..3).for_each(|_| fail(&breaker));
        tokio::time::advance(Duration::from_secs(30)).await;
        let probe = breaker.try_acquire().expect("the probe");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let second = breaker.try_acquire().err().expect("one probe at a time");
        assert_eq!(second.retry_after, PROBE_IN_FLIGHT_RETRY);
        probe.record(Outcome::Healthy);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.open_for().is_none());
        assert_eq!(
            *seen.lock().expect("test lock"),
            vec![
                (BreakerState::Closed, BreakerState::Open),
                (BreakerState::Open, BreakerState::HalfOpen),
                (BreakerState::HalfOpen, BreakerState::Closed),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_a_full_recovery_period() {
        let (breaker, _) = breaker();
        (0..3).for_each(|_| fail(&breaker));
        tokio::time::advance(Duration::from_secs(31)).await;
        fail(&breaker);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(
            breaker.check().err().map(|r| r.retry_after),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            breaker.open_for(),
            Some(Duration::from_secs(31)),
            "open since the first opening"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_frees_the_slot() {
        let (breaker, _) = breaker();
        (0..3).for_each(|_| fail(&breaker));
        tokio::time::advance(Duration::from_secs(30)).await;
        drop(breaker.try_acquire().expect("the probe"));
        assert!(breaker.try_acquire().is_ok(), "another probe may go");
    }

    #[tokio::test(start_paused = true)]
    async fn late_outcomes_of_calls_made_before_opening_change_nothing() {
        let (breaker, _) = breaker();
        let slow = breaker.try_acquire().expect("closed");
        (0..3).for_each(|_| fail(&breaker));
        slow.record(Outcome::Healthy);
        assert_eq!(breaker.state(), BreakerState::Open);
    }
}
