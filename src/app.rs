//! The running service: its parts ([`App`]), its background tasks, and the server
//! with graceful shutdown. `serve`, `demo` and the tests all start it through
//! [`start`], on a listener they bound, with the log pipeline they chose.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::instrument::WithSubscriber as _;
use tracing::{Dispatch, Instrument as _};

use crate::auth::Auth;
use crate::config::Settings;
use crate::domain::ids::random_id;
use crate::error::Dependency;
use crate::ops::health::HealthMonitor;
use crate::ops::metrics::Metrics;
use crate::store::Store;
use crate::store::migrations::expected_version;
use crate::telemetry;
use crate::upstream::{InventoryService, PaymentGateway};

/// Everything a request or a background task needs.
pub struct App {
    /// Validated configuration.
    pub settings: Settings,
    /// The database.
    pub store: Arc<Store>,
    /// The payment gateway client.
    pub payment: PaymentGateway,
    /// The inventory service client.
    pub inventory: InventoryService,
    /// Token verification.
    pub auth: Auth,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Readiness state.
    pub health: Arc<HealthMonitor>,
    /// Bounds requests in flight (`MAX_IN_FLIGHT`).
    pub in_flight: Semaphore,
    /// Names this process in attempt leases: `inst_...`.
    pub instance: String,
    /// The OpenAPI document, rendered once.
    pub openapi: String,
}

impl App {
    /// Builds the parts from validated settings. Opens no connection.
    pub fn build(settings: Settings) -> anyhow::Result<Arc<App>> {
        let metrics = Arc::new(Metrics::new());
        let store = Arc::new(Store::connect_lazy(&settings.db).context("failed to prepare the database pool")?);
        let payment = PaymentGateway::new(&settings.payment, settings.payment_api_key.clone(), metrics.clone())
            .context("failed to build the payment gateway client")?;
        let inventory = InventoryService::new(&settings.inventory, metrics.clone())
            .context("failed to build the inventory client")?;
        metrics
            .build_info
            .with_label_values(&[
                telemetry::version(),
                telemetry::GIT_COMMIT,
                &expected_version().to_string(),
            ])
            .set(1);
        let auth = Auth::new(&settings.jwt_secret);
        let in_flight = Semaphore::new(settings.max_in_flight);
        let openapi = crate::http::openapi_json();
        Ok(Arc::new(App {
            settings,
            store,
            payment,
            inventory,
            auth,
            metrics,
            health: Arc::new(HealthMonitor::default()),
            in_flight,
            instance: random_id("inst_"),
            openapi,
        }))
    }

    /// The breakers, for health reports.
    pub fn breakers(&self) -> [&crate::resilience::CircuitBreaker; 2] {
        [self.payment.upstream().breaker(), self.inventory.upstream().breaker()]
    }

    /// Which dependency a breaker guards.
    pub fn dependencies() -> [Dependency; 2] {
        [Dependency::PaymentGateway, Dependency::InventoryService]
    }
}

/// A server started by [`start`].
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    /// The app being served.
    pub app: Arc<App>,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Asks the server to drain and stop, without waiting.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Drains and stops the server and its background tasks; returns when done.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.begin_shutdown();
        self.wait().await
    }

    /// Waits for the server to stop.
    pub async fn wait(self) -> anyhow::Result<()> {
        match self.server.await {
            Ok(result) => result,
            Err(join) => Err(anyhow::anyhow!("the server task failed: {join}")),
        }
    }
}

/// Serves `app` on `listener`, logging through `dispatch`, with its background tasks.
pub fn start(app: Arc<App>, listener: TcpListener, dispatch: Dispatch) -> anyhow::Result<Running> {
    let addr = listener.local_addr()?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let server = tokio::spawn(serve(app.clone(), listener, shutdown_rx, dispatch.clone()).with_subscriber(dispatch));
    Ok(Running {
        addr,
        app,
        shutdown,
        server,
    })
}

async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    dispatch: Dispatch,
) -> anyhow::Result<()> {
    let (stop_tasks, tasks_stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    spawn_background(&app, &mut tasks, tasks_stop_rx, &dispatch);

    let router = crate::http::router(app.clone(), dispatch.clone());
    let (drain_tx, mut drain_rx) = watch::channel(false);
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        let _ = drain_rx.wait_for(|draining| *draining).await;
    });
    let mut server = std::pin::pin!(server.into_future());

    let stop_requested = async {
        // The guard `wait_for` returns is not Send; drop it at once.
        let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
    };
    let result = tokio::select! {
        result = &mut server => result.map_err(anyhow::Error::from),
        () = stop_requested => {
            app.health.start_draining();
            tracing::info!(
                event = "shutdown",
                timeoutMs = app.settings.shutdown_timeout.as_millis() as u64,
                "draining: readiness now fails; waiting for requests in flight"
            );
            drain_tx.send_replace(true);
            match tokio::time::timeout(app.settings.shutdown_timeout, &mut server).await {
                Ok(result) => result.map_err(anyhow::Error::from),
                Err(_) => {
                    tracing::warn!(
                        event = "shutdown_timeout",
                        inFlight = (app.settings.max_in_flight - app.in_flight.available_permits()) as u64,
                        "requests were still in flight after SHUTDOWN_TIMEOUT_MS; stopping anyway (unfinished checkouts are settled by the reconciler)"
                    );
                    Ok(())
                }
            }
        }
    };
    stop_tasks.send_replace(true);
    let stopped = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if stopped.is_err() {
        tasks.abort_all();
    }
    app.store.close().await;
    tracing::info!(event = "stopped", "server stopped");
    result
}

fn spawn_background(app: &Arc<App>, tasks: &mut JoinSet<()>, stop: watch::Receiver<bool>, dispatch: &Dispatch) {
    let health = app.health.clone();
    let probe = health.run(
        app.store.clone(),
        app.settings.db.acquire_timeout,
        Duration::from_secs(1),
        stop.clone(),
    );
    tasks.spawn(
        probe
            .instrument(tracing::info_span!("health_monitor"))
            .with_subscriber(dispatch.clone()),
    );
}
