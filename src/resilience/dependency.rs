//! What a failure is blamed on: each dependency the service calls, the database,
//! and the server itself. A new dependency (a shipping-rate service, say) is a new
//! variant here, and its name is what a 503's `dependency` field and the
//! `dependency` labels of metrics and records carry.

use std::fmt;

/// What a 503 blames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dependency {
    /// The payment gateway (the sandbox, or Stripe).
    PaymentGateway,
    /// The inventory service.
    InventoryService,
    /// The database.
    Database,
    /// This server: overloaded, too slow, or shutting down.
    Server,
}

impl Dependency {
    /// The name clients and logs see: `paymentGateway`, `inventoryService`, `database`, `server`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dependency::PaymentGateway => "paymentGateway",
            Dependency::InventoryService => "inventoryService",
            Dependency::Database => "database",
            Dependency::Server => "server",
        }
    }

    /// The name in prose.
    pub fn describe(self) -> &'static str {
        match self {
            Dependency::PaymentGateway => "payment gateway",
            Dependency::InventoryService => "inventory service",
            Dependency::Database => "database",
            Dependency::Server => "server",
        }
    }
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}
