//! Integration tests: the real service, real databases (SQLite and PostgreSQL), real
//! HTTP to the sandbox dependencies, and the real binary where a process matters.

mod checkout;
mod cli;
mod crash;
mod errors;
mod fuzz;
mod helpers;
mod incident;
mod ops;
mod reconcile;
mod shop;
mod store;
