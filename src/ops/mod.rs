//! Operating the service: metrics.

pub mod metrics;
