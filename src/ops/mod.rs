//! Operating the service: health, metrics, alerts (with their webhook), traffic
//! windows and readings of the resources that run out. Nothing here knows about
//! checkouts.

pub mod alerts;
pub mod health;
pub mod metrics;
pub mod resources;
pub mod webhook;
pub mod window;
