//! The subcommands other than `demo`: `serve`, `check`, `migrate`, `catalog import`,
//! `sandbox`, `token` and `triage`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use secrecy::SecretString;

use crate::app::App;
use crate::auth::Auth;
use crate::catalog::Catalog;
use crate::config::{self, MIN_JWT_SECRET_BYTES, Problem, Source};
use crate::domain::UserId;
use crate::domain::ids::random_id;
use crate::sandbox::{Sandbox, SandboxOptions};
use crate::startup::{self, Validated};
use crate::store::Store;
use crate::store::migrations::expected_version;
use crate::telemetry::{self, Telemetry};

fn failure() -> ExitCode {
    ExitCode::from(1)
}

/// Starts the process's log pipeline from the `LOG_*` settings of `source`, with
/// records on stdout too when `stdout` (always, without `LOG_DIR`).
pub fn init_telemetry(source: &Source, stdout: bool) -> Result<Telemetry, ExitCode> {
    let (mut log, _) = config::log_config(source);
    log.stdout = stdout || log.dir.is_none();
    let otel = config::otel_settings(source);
    let log = match telemetry::init(&log, otel.as_ref()) {
        Ok(telemetry) => telemetry,
        // LOG_DIR is unusable: its problem is reported by validation; log to stdout.
        Err(_) => telemetry::init(
            &telemetry::LogConfig {
                dir: None,
                stdout: true,
                ..log
            },
            otel.as_ref(),
        )
        .map_err(|error| {
            eprintln!("STARTUP_FAILURE: cannot write logs: {error}");
            failure()
        })?,
    };
    let _ = tracing::dispatcher::set_global_default(log.dispatch.clone());
    Ok(log)
}

/// SIGTERM and SIGINT, listened for from the moment [`Signals::listen`] is called
/// (so a signal that arrives before [`Signals::next`] is awaited still counts).
pub struct Signals {
    terminate: Option<tokio::signal::unix::Signal>,
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Starts listening.
    pub fn listen() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Self {
            terminate: signal(SignalKind::terminate()).ok(),
            interrupt: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// Returns at the next SIGTERM or SIGINT.
    pub async fn next(&mut self) {
        async fn receive(signal: &mut Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        if self.terminate.is_none() && self.interrupt.is_none() {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
        tokio::select! {
            () = receive(&mut self.terminate) => {}
            () = receive(&mut self.interrupt) => {}
        }
    }
}

/// Returns at the first SIGTERM or SIGINT after it is called.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    let mut signals = Signals::listen();
    async move { signals.next().await }
}

/// Binds, logs the `startup` record, serves until a signal, and drains.
pub async fn run_server(validated: Validated, telemetry: &Telemetry, announce: impl FnOnce(SocketAddr)) -> ExitCode {
    let Validated {
        settings,
        schema_version,
    } = validated;
    // Before serving: a SIGTERM that follows the first answer must find a handler.
    let mut signals = Signals::listen();
    let addr = SocketAddr::new(settings.host, settings.port);
    let config = settings.redacted().to_string();
    let app = match App::build(settings) {
        Ok(app) => app,
        Err(error) => {
            startup::report(&[Problem(format!("{error:#}"))]);
            return failure();
        }
    };
    let listener = match crate::server::listen(addr) {
        Ok(listener) => listener,
        Err(error) => {
            startup::report(&[Problem(format!("Cannot listen on {addr}: {error}."))]);
            return failure();
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(
        event = "startup",
        gitCommit = telemetry::GIT_COMMIT,
        schemaVersion = schema_version,
        address = %bound,
        pid = std::process::id(),
        config = config.as_str(),
        "checkout-service {} listening on {bound}",
        telemetry::version()
    );
    // An operator watching the output sees the process is up at once.
    telemetry.flush();
    let running = match crate::server::start(app, listener, telemetry.dispatch.clone()) {
        Ok(running) => running,
        Err(error) => {
            startup::report(&[Problem(format!("{error:#}"))]);
            return failure();
        }
    };
    announce(bound);
    signals.next().await;
    tracing::info!(event = "signal", "shutdown requested");
    running.begin_shutdown();
    let stop_again = running.stopper();
    let stopped = running.wait();
    tokio::pin!(stopped);
    let result = tokio::select! {
        result = &mut stopped => result,
        () = signals.next() => {
            tracing::info!(event = "signal", "shutdown requested again: skipping the rest of the drain delay");
            stop_again.begin_shutdown();
            stopped.await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(event = "server_error", error = %format!("{error:#}"), "the server stopped with an error");
            failure()
        }
    }
}

/// `checkout serve`.
pub async fn serve() -> ExitCode {
    let (source, file_problems) = Source::from_env();
    let mut telemetry = match init_telemetry(&source, true) {
        Ok(telemetry) => telemetry,
        Err(code) => return code,
    };
    let code = match startup::validate(&source, file_problems).await {
        Ok(validated) => run_server(validated, &telemetry, |_| {}).await,
        Err(problems) => {
            startup::report(&problems);
            failure()
        }
    };
    telemetry.finish_export().await;
    code
}

/// `checkout check`.
pub async fn check() -> ExitCode {
    let (source, file_problems) = Source::from_env();
    let telemetry = match init_telemetry(&source, true) {
        Ok(telemetry) => telemetry,
        Err(code) => return code,
    };
    match startup::validate(&source, file_problems).await {
        Ok(validated) => {
            telemetry.flush();
            println!(
                "OK: configuration valid, database reachable, schema at version {}",
                validated.schema_version
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            startup::report(&problems);
            failure()
        }
    }
}

fn open_database() -> Result<(Store, String), ExitCode> {
    let (source, problems) = Source::from_env();
    let db = config::database_settings(&source).map_err(|found| {
        for problem in problems.iter().chain(found.iter()) {
            eprintln!("error: {problem}");
        }
        failure()
    })?;
    let name = db.url.redacted();
    let store = Store::connect_lazy(&db).map_err(|error| {
        eprintln!("error: cannot open the database {name}: {error}");
        failure()
    })?;
    Ok((store, name))
}

/// `checkout migrate`.
pub async fn migrate() -> ExitCode {
    let (store, name) = match open_database() {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let result = store.migrate().await;
    store.close().await;
    match result {
        Ok(version) => {
            println!("schema version {version} ({name})");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: migrating {name} failed: {error:#}");
            failure()
        }
    }
}

/// `checkout catalog import FILE`.
pub async fn import_catalog(file: &Path) -> ExitCode {
    let catalog = match Catalog::load(file) {
        Ok(catalog) => catalog,
        Err(problems) => {
            eprintln!("error: {} was not imported; nothing changed:", file.display());
            for problem in problems {
                eprintln!("  - {problem}");
            }
            return failure();
        }
    };
    let (store, name) = match open_database() {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let result = async {
        let status = store.schema_status().await?;
        if status.version != expected_version() {
            anyhow::bail!(
                "the database schema is at version {} but this build needs {}; run 'checkout migrate' first",
                status.version,
                expected_version()
            );
        }
        store
            .upsert_products(&catalog.products, crate::clock::Clock::system().now_ms())
            .await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    store.close().await;
    match result {
        Ok(()) => {
            println!("imported {} products into {name}", catalog.products.len());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!(
                "error: importing {} into {name} failed; nothing changed: {error:#}",
                file.display()
            );
            failure()
        }
    }
}

/// `checkout sandbox`.
pub async fn sandbox(
    host: IpAddr,
    payment_port: u16,
    inventory_port: u16,
    catalog: Option<PathBuf>,
    api_key: Option<String>,
) -> ExitCode {
    let (source, _) = Source::from_env();
    let _telemetry = match init_telemetry(&source, true) {
        Ok(telemetry) => telemetry,
        Err(code) => return code,
    };
    let catalog = match catalog {
        None => Catalog::demo(),
        Some(path) => match Catalog::load(&path) {
            Ok(catalog) => catalog,
            Err(problems) => {
                eprintln!("error: the catalog {} cannot be used:", path.display());
                for problem in problems {
                    eprintln!("  - {problem}");
                }
                return failure();
            }
        },
    };
    let generated = api_key.is_none();
    let api_key = api_key
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| random_id("sk_sandbox_"));
    let stop = shutdown_signal();
    let sandbox = match Sandbox::start(SandboxOptions {
        host,
        payment_port,
        inventory_port,
        api_key: api_key.clone(),
        catalog,
    })
    .await
    {
        Ok(sandbox) => sandbox,
        Err(error) => {
            eprintln!("STARTUP_FAILURE: {error:#}");
            return failure();
        }
    };
    tracing::info!(
        event = "sandbox_started",
        paymentUrl = sandbox.payment_url(),
        inventoryUrl = sandbox.inventory_url(),
        "sandbox payment gateway on {}, inventory service on {}",
        sandbox.payment_url(),
        sandbox.inventory_url()
    );
    eprintln!("sandbox payment gateway: {}", sandbox.payment_url());
    eprintln!("sandbox inventory service: {}", sandbox.inventory_url());
    if generated {
        eprintln!("PAYMENT_API_KEY={api_key}");
    }
    stop.await;
    sandbox.stop().await;
    ExitCode::SUCCESS
}

/// `checkout token`.
pub fn token(user: &str, ttl: Duration) -> ExitCode {
    let (source, problems) = Source::from_env();
    for problem in &problems {
        eprintln!("error: {problem}");
    }
    let Some(secret) = source.get("JWT_SECRET").filter(|s| !s.is_empty()) else {
        eprintln!("error: Required environment variable 'JWT_SECRET' is not set.");
        return failure();
    };
    if secret.len() < MIN_JWT_SECRET_BYTES {
        eprintln!("error: JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes long.");
        return failure();
    }
    let user = match UserId::parse(user) {
        Ok(user) => user,
        Err(why) => {
            eprintln!("error: --user {why}");
            return ExitCode::from(2);
        }
    };
    match Auth::new(&SecretString::from(secret.to_string())).issue(&user, ttl) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: cannot sign the token: {error}");
            failure()
        }
    }
}

/// `checkout triage`. Exits 0 whatever the category; 1 only if the logs cannot be read.
pub async fn triage(options: &crate::triage::Options) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match crate::triage::run(options, &mut stdout).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            failure()
        }
    }
}
