//! checkout-service: a checkout API for online shops that fails honestly.

pub mod app;
pub mod auth;
pub mod catalog;
pub mod checkout;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod demo;
pub mod domain;
pub mod error;
pub mod http;
pub mod ops;
pub mod resilience;
pub mod sandbox;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod upstream;
