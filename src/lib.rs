//! checkout-service: a checkout API for online shops that fails honestly. Every
//! response's status tells the truth (4xx for the client, 503 with `Retry-After`
//! when a dependency is down, 500 with an error ID for real bugs), no card is
//! charged twice, no order is lost, and no wait is unbounded.
//!
//! # Layout
//!
//! - [`cli`], [`commands`], [`demo`]: the `checkout` binary's subcommands, each a
//!   library function; `main.rs` only parses and dispatches.
//! - [`config`], [`startup`]: typed settings from the environment, validated before
//!   the port is bound, every problem reported at once.
//! - [`app`]: the running service, its background tasks and graceful shutdown.
//! - [`http`]: routes, extractors and the middleware every request passes through;
//!   [`error`] maps each failure to the contract's status, code and headers.
//! - [`checkout`]: the checkout flow, step by step, resumable after any failure;
//!   [`reconcile`]: the background task that finishes or undoes what failures left.
//! - [`domain`]: identifiers, money, carts, orders and attempt states (no I/O).
//! - [`store`]: SQLite and PostgreSQL behind one set of operations and migrations.
//! - [`upstream`]: the payment gateway and inventory clients, with typed errors.
//! - [`resilience`]: outcome classification and the circuit breaker (no checkout types).
//! - [`ops`]: health, metrics, alert rules, traffic windows and resource readings
//!   (no checkout types); [`monitor`]: the tasks that evaluate alerts and log
//!   resources for this service.
//! - [`telemetry`]: JSON log records, sinks and rotation; [`clock`]: time formats;
//!   [`json`]: JSON strings written as serde_json writes them, faster.
//! - [`auth`]: HS256 bearer tokens; [`alloc`]: the binary's global allocator.
//! - [`triage`]: `checkout triage`, the article's decision tree over the logs.
//! - [`sandbox`], [`catalog`]: the fake payment gateway and inventory service, and
//!   the catalog file they and `catalog import` read.

pub mod app;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod client;
pub mod clock;
pub mod commands;
pub mod config;
pub mod demo;
pub mod domain;
pub mod http;
pub mod ops;
pub mod resilience;
pub mod sandbox;
pub mod server;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod triage;
pub mod upstream;
