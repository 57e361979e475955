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
use crate::ops::alerts::Engine;
use crate::ops::health::HealthMonitor;
use crate::ops::metrics::Metrics;
use crate::ops::resources::{ResourceProbe, SystemProbe};
use crate::ops::webhook::Webhook;
use crate::ops::window::{Clock, SystemClock, Traffic};
use crate::store::Store;
use crate::store::migrations::expected_version;
use crate::telemetry;
use crate::upstream::{InventoryService, PaymentGateway};

/// How many new connections may wait to be accepted. With the 128 that a plain
/// bind gets, a burst of clients (a load balancer's, or a busy instance's calls to a
/// dependency) overflows the queue, and each connection attempt dropped is retried
/// by its client only a second later.
pub const BACKLOG: u32 = 1024;

/// Listens on `addr` with a [`BACKLOG`]-long queue.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Most inventory calls made after answering that are in progress at once. Any
/// beyond them is left to the reconciler (each is owed in its attempt either way),
/// so a slow inventory service builds a backlog in the database, not in memory.
pub const SETTLING_AT_ONCE: usize = 64;

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
    /// Bounds the inventory calls made after answering (see [`SETTLING_AT_ONCE`]).
    pub settling: Arc<Semaphore>,
    /// Names this process in attempt leases: `inst_...`.
    pub instance: String,
    /// The OpenAPI document, rendered once.
    pub openapi: String,
    /// The clock of traffic windows and alerts.
    pub clock: Arc<dyn Clock>,
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
    pub clock: Option<Arc<dyn Clock>>,
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
        let clock = overrides.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let probe = overrides.probe.unwrap_or_else(|| Arc::new(SystemProbe));
        let webhook = settings
            .alert_webhook_url
            .clone()
            .map(Webhook::new)
            .transpose()
            .context("failed to build the alert webhook client")?;
        Ok(Arc::new(App {
            settings,
            store,
            payment,
            inventory,
            auth,
            metrics,
            health: Arc::new(HealthMonitor::new(probe.as_ref())),
            in_flight,
            settling: Arc::new(Semaphore::new(SETTLING_AT_ONCE)),
            instance: random_id("inst_"),
            openapi,
            traffic: Traffic::new(clock.clone()),
            clock,
            probe,
            alerts: Engine::default(),
            webhook,
        }))
    }

    /// The breakers, for health reports.
    pub fn breakers(&self) -> [&crate::resilience::CircuitBreaker; 2] {
        [self.payment.upstream().breaker(), self.inventory.upstream().breaker()]
    }

    /// API requests being served right now (health and metrics are not counted).
    pub fn requests_in_flight(&self) -> usize {
        self.settings.max_in_flight - self.in_flight.available_permits()
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
    let router = crate::http::router(app.clone(), dispatch.clone());
    start_with_router(app, listener, dispatch, router)
}

/// Like [`start`], serving `router` (the API's routes, with or without additions).
pub fn start_with_router(
    app: Arc<App>,
    listener: TcpListener,
    dispatch: Dispatch,
    router: axum::Router,
) -> anyhow::Result<Running> {
    let addr = listener.local_addr()?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let server =
        tokio::spawn(serve(app.clone(), router, listener, shutdown_rx, dispatch.clone()).with_subscriber(dispatch));
    Ok(Running {
        addr,
        app,
        shutdown,
        server,
    })
}

async fn serve(
    app: Arc<App>,
    router: axum::Router,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    dispatch: Dispatch,
) -> anyhow::Result<()> {
    let (stop_tasks, tasks_stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    spawn_background(&app, &mut tasks, tasks_stop_rx, &dispatch);

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
            // Keep accepting while draining: the load balancer gets a 503 from
            // readiness and new API requests get 503, instead of refused connections.
            app.health.start_draining();
            let deadline = tokio::time::Instant::now() + app.settings.shutdown_timeout;
            tracing::info!(
                event = "shutdown",
                timeoutMs = app.settings.shutdown_timeout.as_millis() as u64,
                inFlight = app.requests_in_flight() as u64,
                "draining: readiness now fails; waiting for requests in flight"
            );
            tokio::select! {
                result = &mut server => return finish(&app, result.map_err(anyhow::Error::from), stop_tasks, tasks).await,
                () = wait_for_idle(&app, deadline) => {}
            }
            if app.requests_in_flight() > 0 {
                tracing::warn!(
                    event = "shutdown_timeout",
                    inFlight = app.requests_in_flight() as u64,
                    "requests were still in flight after SHUTDOWN_TIMEOUT_MS; stopping anyway (unfinished checkouts are settled by the reconciler)"
                );
            }
            drain_tx.send_replace(true);
            // Idle keep-alive connections close at once; give busy ones a moment.
            let grace = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(250));
            match tokio::time::timeout(grace, &mut server).await {
                Ok(result) => result.map_err(anyhow::Error::from),
                Err(_) => Ok(()),
            }
        }
    };
    finish(&app, result, stop_tasks, tasks).await
}

/// Returns once no API request is in flight, or at `deadline`.
async fn wait_for_idle(app: &App, deadline: tokio::time::Instant) {
    while app.requests_in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Stops the background tasks and closes the database.
async fn finish(
    app: &App,
    result: anyhow::Result<()>,
    stop_tasks: watch::Sender<bool>,
    mut tasks: JoinSet<()>,
) -> anyhow::Result<()> {
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
        app.probe.clone(),
        app.settings.db.acquire_timeout,
        Duration::from_secs(1),
        stop.clone(),
    );
    tasks.spawn(
        probe
            .instrument(tracing::info_span!("health_monitor"))
            .with_subscriber(dispatch.clone()),
    );
    tasks.spawn(crate::reconcile::run(app.clone(), stop.clone()).with_subscriber(dispatch.clone()));
    tasks.spawn(crate::monitor::run_alerts(app.clone(), stop.clone()).with_subscriber(dispatch.clone()));
    tasks.spawn(crate::monitor::run_resources(app.clone(), stop).with_subscriber(dispatch.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_queue_of_a_listener_not_accepting() {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0))).expect("listen");
        let address = listener.local_addr().expect("address");
        // Well over the 128 of a plain bind: past a full queue, a connect would hang.
        let connects =
            (0..300).map(|_| tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(address)));
        let connected = futures_util::future::join_all(connects)
            .await
            .into_iter()
            .filter(|result| matches!(result, Ok(Ok(_))))
            .count();
        assert_eq!(connected, 300);
        drop(listener);
    }
}
