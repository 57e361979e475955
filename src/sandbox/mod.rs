//! The sandbox dependencies: a payment gateway and an inventory service that behave
//! like real ones over real HTTP, so demos, tests and benchmarks exercise the real
//! clients, timeouts and breakers. `checkout sandbox` runs them as a process; `demo`
//! and the tests run them in-process.
//!
//! They are served by their own accept loop rather than `axum::serve`, because two
//! faults act below HTTP: `refuse` drops each connection without an answer and
//! `hang` holds a request until its connection is dropped. The `/_control` routes
//! are exempt from both, so a test can always switch the faults off again.

pub mod faults;
pub mod inventory;
pub mod payment;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt as _;

use crate::catalog::Catalog;
use faults::Faults;

/// Where and how to run the sandbox.
#[derive(Clone, Debug)]
pub struct SandboxOptions {
    /// Address to bind.
    pub host: IpAddr,
    /// Payment gateway port (0 picks a free one).
    pub payment_port: u16,
    /// Inventory service port (0 picks a free one).
    pub inventory_port: u16,
    /// The API key the gateway accepts.
    pub api_key: String,
    /// Where the inventory's stock comes from.
    pub catalog: Catalog,
}

/// A running sandbox. Dropping it stops both servers.
pub struct Sandbox {
    /// Where the payment gateway listens.
    pub payment_addr: SocketAddr,
    /// Where the inventory service listens.
    pub inventory_addr: SocketAddr,
    /// The gateway's faults (also reachable over HTTP).
    pub payment_faults: Arc<Faults>,
    /// The inventory's faults (also reachable over HTTP).
    pub inventory_faults: Arc<Faults>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Sandbox {
    /// Binds both ports and starts serving.
    pub async fn start(options: SandboxOptions) -> anyhow::Result<Sandbox> {
        let bind = |port: u16, what: &'static str| {
            let addr = SocketAddr::new(options.host, port);
            async move {
                crate::server::listen(addr).with_context(|| format!("cannot listen on {addr} for the sandbox {what}"))
            }
        };
        let payment_listener = bind(options.payment_port, "payment gateway").await?;
        let inventory_listener = bind(options.inventory_port, "inventory service").await?;
        let payment_faults = Arc::new(Faults::default());
        let inventory_faults = Arc::new(Faults::default());
        let (shutdown, _) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let sandbox_addrs = (payment_listener.local_addr()?, inventory_listener.local_addr()?);
        tasks.spawn(serve(
            payment_listener,
            payment::router(options.api_key.clone(), payment_faults.clone()),
            payment_faults.clone(),
            shutdown.subscribe(),
        ));
        tasks.spawn(serve(
            inventory_listener,
            inventory::router(&options.catalog, inventory_faults.clone()),
            inventory_faults.clone(),
            shutdown.subscribe(),
        ));
        Ok(Sandbox {
            payment_addr: sandbox_addrs.0,
            inventory_addr: sandbox_addrs.1,
            payment_faults,
            inventory_faults,
            shutdown,
            tasks,
        })
    }

    /// The gateway's base URL.
    pub fn payment_url(&self) -> String {
        format!("http://{}", self.payment_addr)
    }

    /// The inventory's base URL.
    pub fn inventory_url(&self) -> String {
        format!("http://{}", self.inventory_addr)
    }

    /// Stops both servers and drops every connection.
    pub async fn stop(mut self) {
        self.shutdown.send_replace(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// A request refused by a fault: returning it makes the connection close unanswered.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by an injected fault")
    }
}

impl std::error::Error for Dropped {}

fn is_control(path: &str) -> bool {
    path.starts_with("/_control/")
}

async fn serve(listener: TcpListener, router: Router, faults: Arc<Faults>, mut shutdown: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let faults = faults.clone();
        let mut connection_shutdown = shutdown.clone();
        connections.spawn(async move {
            let request_shutdown = connection_shutdown.clone();
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let router = router.clone();
                let faults = faults.clone();
                let mut shutdown = request_shutdown.clone();
                async move {
                    if !is_control(request.uri().path()) && (faults.refuse() || faults.hang(&mut shutdown).await) {
                        return Err(Dropped);
                    }
                    let response = router.oneshot(request.map(Body::new)).await;
                    let response: axum::response::Response = match response {
                        Ok(response) => response,
                        Err(never) => match never {},
                    };
                    Ok::<_, Dropped>(response)
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = connection_shutdown.changed() => {}
            }
        });
        while connections.try_join_next().is_some() {}
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}
