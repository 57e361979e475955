//! The running service's state, [`App`]: its parts and its background work, built
//! from validated settings. The server (`server`) serves it; [`monitor`] watches it.

pub mod monitor;

use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::Semaphore;

use crate::auth::Auth;
use crate::clock::Clock;
use crate::config::Settings;
use crate::domain::ids::random_id;
use crate::ops::alerts::Engine;
use crate::ops::health::HealthMonitor;
use crate::ops::metrics::Metrics;
use crate::ops::resources::{ResourceProbe, SystemProbe};
use crate::ops::webhook::Webhook;
use crate::ops::window::Traffic;
use crate::service::{Checkout, Timing};
use crate::store::Store;
use crate::store::migrations::expected_version;
use crate::telemetry;
use crate::upstream::InventoryService;

/// Everything a request or a background task needs.
pub struct App {
    /// Validated configuration.
    pub settings: Settings,
    /// The database.
    pub store: Arc<Store>,
    /// Checkouts and their reconciliation.
    pub checkout: Arc<Checkout>,
    /// Token verification.
    pub auth: Auth,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Readiness state.
    pub health: Arc<HealthMonitor>,
    /// Bounds requests in flight (`MAX_IN_FLIGHT`).
    pub in_flight: Semaphore,
    /// The clock of every rule that depends on time.
    pub clock: Clock,
    /// Where memory, disk and descriptor readings come from.
    pub probe: Arc<dyn ResourceProbe>,
    /// Sliding windows of traffic and the latest server errors.
    pub traffic: Traffic,
    /// Alert rules and their states.
    pub alerts: Engine,
    /// Where alerts are announced, if anywhere.
    pub webhook: Option<Webhook>,
}

/// Replacements for the parts that read the outside world, for tests that must
/// control time or resource readings.
#[derive(Default)]
pub struct Overrides {
    /// Instead of the system clock.
    pub clock: Option<Clock>,
    /// Instead of reading the real process and filesystem.
    pub probe: Option<Arc<dyn ResourceProbe>>,
}

impl App {
    /// Builds the parts from validated settings. Opens no connection.
    pub fn build(settings: Settings) -> anyhow::Result<Arc<App>> {
        App::build_with(settings, Overrides::default())
    }

    /// Like [`App::build`], with some parts replaced.
    pub fn build_with(settings: Settings, overrides: Overrides) -> anyhow::Result<Arc<App>> {
        let clock = overrides.clock.unwrap_or_else(Clock::system);
        let probe = overrides.probe.unwrap_or_else(|| Arc::new(SystemProbe));
        let metrics = Arc::new(Metrics::new());
        let store = Arc::new(Store::connect_lazy(&settings.db).context("failed to prepare the database pool")?);
        let payment =
            crate::upstream::payment::build(&settings.provider, &settings.payment, metrics.clone(), clock.clone())
                .context("failed to build the payment provider's client")?;
        let inventory = InventoryService::new(&settings.inventory, metrics.clone(), clock.clone())
            .context("failed to build the inventory client")?;
        metrics
            .build_info
            .with_label_values(&[
                telemetry::version(),
                telemetry::GIT_COMMIT,
                &expected_version().to_string(),
            ])
            .set(1);
        let webhook = settings
            .alert_webhook_url
            .clone()
            .map(Webhook::new)
            .transpose()
            .context("failed to build the alert webhook client")?;
        let checkout = Arc::new(Checkout::new(
            store.clone(),
            payment,
            Arc::new(inventory),
            random_id("inst_"),
            clock.clone(),
            Timing::from_settings(&settings),
            metrics.clone(),
        ));
        Ok(Arc::new(App {
            auth: Auth::with_rules(&settings.jwt_secret, &settings.token_rules, clock.clone()),
            in_flight: Semaphore::new(settings.max_in_flight),
            health: Arc::new(HealthMonitor::new(probe.as_ref(), monitor::watched_paths_of(&settings))),
            traffic: Traffic::new(clock.clone()),
            alerts: Engine::default(),
            settings,
            store,
            checkout,
            metrics,
            clock,
            probe,
            webhook,
        }))
    }

    /// The breakers, for health reports.
    pub fn breakers(&self) -> [&crate::resilience::CircuitBreaker; 2] {
        [
            self.checkout.payment.upstream().breaker(),
            self.checkout.inventory.upstream().breaker(),
        ]
    }

    /// API requests being served right now (health and metrics are not counted).
    pub fn requests_in_flight(&self) -> usize {
        self.settings.max_in_flight - self.in_flight.available_permits()
    }
}
