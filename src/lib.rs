//! checkout-service: a checkout API for online shops that fails honestly.

pub mod catalog;
pub mod clock;
pub mod config;
pub mod domain;
pub mod error;
pub mod ops;
pub mod resilience;
pub mod sandbox;
pub mod store;
pub mod telemetry;
pub mod upstream;
