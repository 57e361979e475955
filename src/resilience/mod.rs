//! Failing fast around dependencies: deciding whether a call's outcome says the
//! dependency is unhealthy ([`Outcome`]) is kept apart from counting those verdicts
//! ([`breaker::CircuitBreaker`]), and what a failure is blamed on ([`Dependency`]).
//! Nothing here knows about checkouts.

pub mod breaker;
pub mod dependency;

pub use breaker::{BreakerState, CircuitBreaker, Permit, Rejected, Transition};
pub use dependency::Dependency;

/// What a finished call says about the health of the dependency that served it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The dependency did its job, including answering "no" (a declined card, an
    /// out-of-stock item, any other 4xx): a business answer proves it is up.
    Healthy,
    /// The dependency timed out, refused or dropped the connection, or answered 5xx.
    Unhealthy,
}
