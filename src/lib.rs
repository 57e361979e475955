//! checkout-service: a checkout API for online shops that fails honestly. Every
//! response's status tells the truth (4xx for the client, 503 with `Retry-After`
//! when a dependency is down, 500 with an error ID for real bugs), no card is
//! charged twice, no order is lost, and no wait is unbounded.
//!
//! # Layout
//!
//! Lowest first; each module uses only those above it in this list (a test keeps
//! it so).
//!
//! - [`clock`]: the one injectable clock, and time formats (jiff).
//! - [`domain`]: identifiers, money, carts, orders, attempt states, payment tokens
//!   (no I/O); [`catalog`]: the catalog file.
//! - [`client`]: the one HTTP client stack (hyper-util's pooled client, rustls) and
//!   the classification of a call's outcome.
//! - [`telemetry`]: JSON log records on tracing, bounded outputs, rotation; W3C
//!   trace context and the OTLP export of spans.
//! - [`auth`]: bearer tokens; [`config`]: typed settings from the environment,
//!   every problem reported at once.
//! - [`store`]: SQLite and PostgreSQL behind one API and one set of migrations; on
//!   SQLite, the checkout's writes go through a writer thread that commits them
//!   together.
//! - [`resilience`]: the circuit breaker and [`resilience::Dependency`], what a
//!   failure is blamed on (no checkout types); [`ops`]: health, metrics, alert
//!   rules, traffic windows, resource readings (no checkout types).
//! - [`upstream`]: the payment providers (the sandbox gateway, Stripe) behind one
//!   trait, and the inventory client; every answer classified in one place.
//! - [`service`]: the checkout, step by step, and the reconciler that finishes or
//!   undoes what failures leave: a service that knows nothing of HTTP, with its
//!   own error type.
//! - [`app`]: the running service's state, built from settings, and the monitor
//!   that evaluates alerts and logs resources.
//! - [`http`]: routes, extractors, the middleware every request passes through,
//!   and [`http::error::ApiError`], where every failure becomes the contract's
//!   answer.
//! - [`server`]: connections, their bounds, the background tasks and graceful
//!   shutdown.
//! - [`startup`], [`commands`], [`demo`], [`cli`]: the `checkout` binary's
//!   subcommands, each a library function; `main.rs` only parses and dispatches.
//! - [`triage`]: `checkout triage`, the article's decision tree over the logs.
//! - [`sandbox`]: the fake payment gateway and inventory service.
//!
//! # Adding a dependency
//!
//! A new dependency (a shipping-rate service, say) is: a [`resilience::Dependency`]
//! variant (its name in 503s, metrics and records); its URL, timeouts and breaker
//! in [`config`] (`SHIPPING_URL`, `SHIPPING_TIMEOUT_MS`, ... in the variables
//! table); a client module in [`upstream`] whose methods build requests and read
//! answers through an [`upstream::Upstream`] (which brings the breaker, timeouts,
//! metrics and classification); a field of [`service::Checkout`] and the step that
//! calls it; and, if it can fail a checkout, a `ServiceError` step context. The
//! HTTP edge, health, metrics and alerts need no change.
//!
//! # Adding a payment provider
//!
//! A provider (Adyen, say) is a module in [`upstream::payment`] that implements
//! [`upstream::payment::PaymentProvider`] over an [`upstream::Upstream`]: `prepare`
//! (make what a charge needs and return the reference to record first), `charge`,
//! `lookup` (what became of an attempt's payment, for the reconciler), `refund` and
//! `cancel`. Then a `PAYMENT_PROVIDER` value and its settings in [`config`] (its
//! variables in the table), and a branch in [`upstream::payment::build`]. The
//! checkout, the breaker, the timeouts, the reconciler and the crash invariant
//! know only the trait; if the provider announces outcomes by webhook, a route in
//! [`http`] verifies them and calls [`service::Checkout::settle_payment`], as
//! `POST /webhooks/stripe` does.

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
