//! Operating the service: health, metrics, and readings of the resources that run
//! out. Nothing here knows about checkouts.

pub mod health;
pub mod metrics;
pub mod resources;
