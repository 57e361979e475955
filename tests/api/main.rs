//! Integration tests: the real service, real databases (SQLite and PostgreSQL), real
//! HTTP to the sandbox dependencies, and the real binary where a process matters.

mod alerts;
mod checkout;
mod cli;
mod crash;
mod deploy;
mod disk;
mod edges;
mod errors;
mod fleet;
mod fuzz;
mod helpers;
mod incident;
mod layout;
mod matrix;
mod ops;
mod reconcile;
mod shop;
mod status_page;
mod store;
mod stripe;
mod tls;
mod traces;
mod triage;
