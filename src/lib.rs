//! checkout-service: a checkout API for online shops that fails honestly.

pub mod clock;
pub mod config;
pub mod domain;
pub mod store;
pub mod telemetry;
