//! The server that runs an [`App`]: the listener and its connections, the HTTP
//! pipeline, the background tasks (health probe, reconciler, alerts, resource
//! records) and graceful shutdown. `serve`, `demo` and the tests all start it
//! through [`start`], on a listener they bound, with the log pipeline they chose.
//!
//! Connections are accepted here rather than by `axum::serve`, for the inbound
//! bounds of DESIGN §7a: at most `MAX_CONNECTIONS` open (one more is closed at once
//! with a 503), headers and idle keep-alive bounded in time ([`connection`]) and a
//! request's head in size ([`MAX_HEAD_BYTES`]), and a descriptor shortage (EMFILE)
//! survived by backing off, counted and logged at most once a second.
//!
//! Shutdown (DESIGN §7): readiness fails at once while the server keeps serving for
//! `SHUTDOWN_DRAIN_DELAY_MS`, so a load balancer moves traffic away first; then it
//! stops accepting, closes connections between requests, lets requests in flight
//! finish (up to `SHUTDOWN_TIMEOUT_MS`) and stops its tasks. A second request to
//! stop skips the delay.

mod connection;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt as _;
use tracing::instrument::WithSubscriber as _;
use tracing::{Dispatch, Instrument as _};

use crate::app::{App, monitor};
use connection::{Bounds, Shared, Watched};

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

/// A server started by [`start`].
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    /// The app being served.
    pub app: Arc<App>,
    stop: Stopper,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Asks a server to stop, from anywhere.
#[derive(Clone)]
pub struct Stopper(Arc<watch::Sender<u32>>);

impl Stopper {
    /// Asks the server to drain and stop, without waiting; asked again, it skips
    /// what is left of the drain delay.
    pub fn begin_shutdown(&self) {
        self.0.send_modify(|asked| *asked += 1);
    }
}

impl Running {
    /// Asks the server to drain and stop, without waiting; asked again, it skips
    /// what is left of the drain delay.
    pub fn begin_shutdown(&self) {
        self.stop.begin_shutdown();
    }

    /// A handle that asks this server to stop.
    pub fn stopper(&self) -> Stopper {
        self.stop.clone()
    }

    /// Drains and stops the server and its background tasks, skipping the drain
    /// delay; returns when done.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.begin_shutdown();
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
    let (stop, stop_rx) = watch::channel(0);
    let server =
        tokio::spawn(serve(app.clone(), router, listener, stop_rx, dispatch.clone()).with_subscriber(dispatch));
    Ok(Running {
        addr,
        app,
        stop: Stopper(Arc::new(stop)),
        server,
    })
}

async fn serve(
    app: Arc<App>,
    router: axum::Router,
    listener: TcpListener,
    mut stop: watch::Receiver<u32>,
    dispatch: Dispatch,
) -> anyhow::Result<()> {
    let (stop_tasks, tasks_stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    spawn_background(&app, &mut tasks, tasks_stop_rx, &dispatch);

    let (closing, closing_rx) = watch::channel(false);
    let accepting = tokio::spawn(accept(app.clone(), router, listener, closing_rx).with_subscriber(dispatch.clone()));

    let _ = stop.wait_for(|asked| *asked >= 1).await;
    app.health.start_draining();
    let delay = app.settings.shutdown_drain_delay;
    tracing::info!(
        event = "shutdown",
        drainDelayMs = delay.as_millis() as u64,
        timeoutMs = app.settings.shutdown_timeout.as_millis() as u64,
        inFlight = app.requests_in_flight() as u64,
        "draining: readiness now fails; serving on for the drain delay, then finishing requests in flight"
    );
    let _ = tokio::time::timeout(delay, stop.wait_for(|asked| *asked >= 2)).await;
    app.health.stop_accepting();
    closing.send_replace(true);
    let result = match accepting.await {
        Ok(unfinished) if unfinished > 0 => {
            tracing::warn!(
                event = "shutdown_timeout",
                inFlight = unfinished as u64,
                "connections were still busy after SHUTDOWN_TIMEOUT_MS; stopping anyway (unfinished checkouts are settled by the reconciler)"
            );
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(join) => Err(anyhow::anyhow!("the accept loop failed: {join}")),
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

/// The 503 a connection over `MAX_CONNECTIONS` gets before it is closed.
fn too_many_connections() -> &'static [u8] {
    static ANSWER: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    ANSWER.get_or_init(|| {
        let body = serde_json::json!({
            "error": "SERVICE_TEMPORARILY_UNAVAILABLE",
            "message": "The service is temporarily unavailable. Please try again in 1 second.",
            "retryAfterSeconds": 1,
            "dependency": "server",
        })
        .to_string();
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
             connection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    })
}

/// Accepts connections until `closing` turns true, then waits (up to
/// `SHUTDOWN_TIMEOUT_MS`) for the connections to finish; returns how many were
/// still open when it gave up.
async fn accept(
    app: Arc<App>,
    router: axum::Router,
    listener: TcpListener,
    mut closing: watch::Receiver<bool>,
) -> usize {
    let open = Arc::new(AtomicUsize::new(0));
    let mut connections = JoinSet::new();
    let mut backoff = Duration::ZERO;
    let mut last_logged: Option<Instant> = None;
    let bounds = Bounds {
        header_read: app.settings.header_read_timeout,
        keepalive_idle: app.settings.keepalive_idle_timeout,
    };
    loop {
        let accepted = tokio::select! {
            biased;
            _ = closing.wait_for(|closing| *closing) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, _) = match accepted {
            Ok(accepted) => {
                backoff = Duration::ZERO;
                accepted
            }
            Err(error) => {
                // Out of descriptors (EMFILE, ENFILE) or memory: the listener keeps
                // the connection queued; try again shortly, and say so at most once
                // a second.
                app.metrics.accept_errors.inc();
                if last_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                    last_logged = Some(Instant::now());
                    tracing::error!(
                        event = "accept_failed",
                        error = %error,
                        openConnections = open.load(Ordering::Relaxed) as u64,
                        "cannot accept connections: {error}"
                    );
                }
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = closing.wait_for(|closing| *closing) => break,
                }
                continue;
            }
        };
        if open.load(Ordering::Acquire) >= app.settings.max_connections {
            app.metrics.connections_rejected.inc();
            // Into the socket's buffer, or not at all: never wait on this client.
            let _ = stream.try_write(too_many_connections());
            drop(stream);
            continue;
        }
        open.fetch_add(1, Ordering::AcqRel);
        app.metrics.connections.inc();
        let (app, router, open, closing) = (app.clone(), router.clone(), open.clone(), closing.clone());
        connections.spawn(
            async move {
                serve_connection(stream, router, bounds, closing).await;
                open.fetch_sub(1, Ordering::AcqRel);
                app.metrics.connections.dec();
            }
            .in_current_span(),
        );
    }
    drop(listener);
    let deadline = Instant::now() + app.settings.shutdown_timeout;
    while !connections.is_empty() {
        match tokio::time::timeout_at(deadline, connections.join_next()).await {
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let unfinished = connections.len();
    connections.abort_all();
    unfinished
}

/// Marks a request handled on its connection for as long as it is alive.
struct Handling(Arc<Shared>);

impl Handling {
    fn start(shared: &Arc<Shared>) -> Self {
        shared.request_started();
        Handling(shared.clone())
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// The most a request's head (request line and headers) may take; a longer one is
/// answered 431 by hyper and its connection closed. hyper's default (about 400 KB)
/// would let each of `MAX_CONNECTIONS` connections hold that much memory while its
/// head trickles in; 16 KiB is HAProxy's default buffer, so nothing a load balancer
/// in front passes on is refused here, and a bearer token with trace headers uses a
/// few KiB of it.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Serves one connection until it ends, or until the server closes: then a
/// connection between requests is closed at once, and one handling a request
/// finishes it first.
async fn serve_connection(stream: TcpStream, router: axum::Router, bounds: Bounds, mut closing: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let shared = Shared::new();
    let io = TokioIo::new(Watched::new(stream, shared.clone(), bounds));
    let service_shared = shared.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let router = router.clone();
        let handling = Handling::start(&service_shared);
        async move {
            let response = router.oneshot(request.map(axum::body::Body::new)).await;
            drop(handling);
            Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The bounds on a connection's waits are [`connection`]'s.
    builder
        .keep_alive(true)
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD_BYTES);
    let connection = builder.serve_connection(io, service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = &mut connection => return,
        _ = closing.wait_for(|closing| *closing) => {}
    }
    if !shared.is_handling() {
        return;
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
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
    let checkout = app.checkout.clone();
    let reconcile_stop = stop.clone();
    tasks.spawn(async move { checkout.reconcile(reconcile_stop).await }.with_subscriber(dispatch.clone()));
    tasks.spawn(monitor::run_alerts(app.clone(), stop.clone()).with_subscriber(dispatch.clone()));
    tasks.spawn(monitor::run_resources(app.clone(), stop).with_subscriber(dispatch.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_queue_of_a_listener_not_accepting() {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0))).expect("listen");
        let address = listener.local_addr().expect("address");
        // Well over the 128 of a plain bind: past a full queue, a connect would hang.
        let connects = (0..300).map(|_| tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(address)));
        let connected = futures_util::future::join_all(connects)
            .await
            .into_iter()
            .filter(|result| matches!(result, Ok(Ok(_))))
            .count();
        assert_eq!(connected, 300);
        drop(listener);
    }

    #[test]
    fn the_answer_to_one_connection_too_many_is_well_formed() {
        let text = std::str::from_utf8(too_many_connections()).expect("ASCII");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .and_then(|n| n.parse().ok())
            .expect("a content length");
        assert_eq!(body.len(), length);
        let body: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(body["error"], "SERVICE_TEMPORARILY_UNAVAILABLE");
    }
}
