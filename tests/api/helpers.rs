//! Test helpers: `spawn_app` starts the real service in-process on port 0 with its own
//! sandbox dependencies (real HTTP), its own database (a fresh SQLite file or a fresh
//! PostgreSQL database) and its logs captured in memory.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use checkout_service::app::{App, Overrides};
use checkout_service::catalog::Catalog;
use checkout_service::config::{Settings, Source};
use checkout_service::domain::UserId;
use checkout_service::domain::ids::random_id;
use checkout_service::sandbox::{Sandbox, SandboxOptions};
use checkout_service::server::Running;
use checkout_service::store::Store;
use checkout_service::telemetry::{self, MemorySink};
use serde_json::{Value, json};
use sqlx::Connection as _;

/// The two supported databases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs an async test body once on SQLite and once on PostgreSQL, as two tests.
#[macro_export]
macro_rules! on_both_backends {
    ($(#[$meta:meta])* async fn $name:ident($backend:ident) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body($backend: $crate::helpers::Backend) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_sqlite() {
                body($crate::helpers::Backend::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_postgres() {
                if $crate::helpers::postgres_available().await {
                    body($crate::helpers::Backend::Postgres).await
                }
            }
        }
    };
}

/// The server that holds the per-test PostgreSQL databases.
pub fn postgres_admin_url() -> String {
    std::env::var("CHECKOUT_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Whether PostgreSQL tests can run. Without a server they are skipped only when
/// `CHECKOUT_SKIP_POSTGRES=1` (set by `scripts/test` after saying so); otherwise a
/// missing server fails the test, so CI cannot pass without running them.
pub async fn postgres_available() -> bool {
    static REACHABLE: tokio::sync::OnceCell<bool> = tokio::sync::OnceCell::const_new();
    let reachable = *REACHABLE
        .get_or_init(|| async {
            let connect = sqlx::PgConnection::connect(&postgres_admin_url());
            matches!(tokio::time::timeout(Duration::from_secs(3), connect).await, Ok(Ok(_)))
        })
        .await;
    if reachable {
        return true;
    }
    if std::env::var("CHECKOUT_SKIP_POSTGRES").as_deref() == Ok("1") {
        eprintln!("skipped: PostgreSQL is not reachable at {}", postgres_admin_url());
        return false;
    }
    panic!(
        "PostgreSQL is not reachable at {} (set CHECKOUT_TEST_POSTGRES_URL, or run scripts/test, which skips these tests when there is no server)",
        postgres_admin_url()
    );
}

/// A database of one test's own, removed when dropped.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Dir(PathBuf),
    Postgres { admin: String, name: String },
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(random_id("checkout-test-"));
                std::fs::create_dir_all(&dir).expect("create a temporary directory");
                TestDb {
                    backend,
                    url: format!("sqlite://{}", dir.join("checkout.db").display()),
                    cleanup: Cleanup::Dir(dir),
                }
            }
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let name = random_id("checkout_test_");
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .expect("connect to PostgreSQL");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                    .execute(&mut conn)
                    .await
                    .expect("create a test database");
                let mut url = reqwest::Url::parse(&admin).expect("admin URL");
                url.set_path(&name);
                TestDb {
                    backend,
                    url: url.to_string(),
                    cleanup: Cleanup::Postgres { admin, name },
                }
            }
        }
    }

    /// The SQLite file's directory (SQLite only).
    pub fn dir(&self) -> Option<&PathBuf> {
        match &self.cleanup {
            Cleanup::Dir(dir) => Some(dir),
            Cleanup::Postgres { .. } => None,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Postgres { admin, name } => {
                let (admin, name) = (admin.clone(), name.clone());
                // Drop runs inside the test's runtime, which cannot block on itself.
                let _ = std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .ok()?;
                    runtime.block_on(async {
                        let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                        sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut conn).await.ok()
                    })
                })
                .join();
            }
        }
    }
}

pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123";
pub const API_KEY: &str = "sk_test_4eC39HqLyjWDarjtT1zdp7dc";

/// A configuration for `db` and `sandbox` with every required value set.
pub fn source_for(db: &TestDb, sandbox: &Sandbox) -> Source {
    Source::from_pairs([
        ("DATABASE_URL", db.url.clone()),
        ("PAYMENT_GATEWAY_URL", sandbox.payment_url()),
        ("PAYMENT_API_KEY", API_KEY.to_string()),
        ("INVENTORY_SERVICE_URL", sandbox.inventory_url()),
        ("JWT_SECRET", JWT_SECRET.to_string()),
        ("HOST", "127.0.0.1".to_string()),
        ("PORT", "0".to_string()),
    ])
}

/// The environment of a `checkout serve` process for `database_url` and `sandbox`,
/// with every required value set, listening on 127.0.0.1:`port`.
pub fn process_env(database_url: &str, sandbox: &Sandbox, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", database_url.to_string()),
        ("PAYMENT_GATEWAY_URL", sandbox.payment_url()),
        ("PAYMENT_API_KEY", API_KEY.to_string()),
        ("INVENTORY_SERVICE_URL", sandbox.inventory_url()),
        ("JWT_SECRET", JWT_SECRET.to_string()),
        ("HOST", "127.0.0.1".to_string()),
        ("PORT", port.to_string()),
    ]
}

/// Starts the sandbox dependencies on free ports, stocked from the demo catalog.
pub async fn start_sandbox() -> Sandbox {
    Sandbox::start(SandboxOptions {
        host: [127, 0, 0, 1].into(),
        payment_port: 0,
        inventory_port: 0,
        api_key: API_KEY.to_string(),
        catalog: Catalog::demo(),
    })
    .await
    .expect("start the sandbox")
}

/// Applies the migrations and loads the demo catalog, with setup's own generous
/// bounds: a test's tight database timeouts are for the behaviour under test, not
/// for preparing its database on a busy machine.
pub async fn prepare_database(settings: &Settings) {
    let mut db = settings.db.clone();
    db.acquire_timeout = db.acquire_timeout.max(Duration::from_secs(30));
    db.statement_timeout = db.statement_timeout.max(Duration::from_secs(30));
    let store = Store::connect_lazy(&db).expect("open the database");
    store.migrate().await.expect("migrate");
    store
        .upsert_products(
            &Catalog::demo().products,
            checkout_service::clock::Clock::system().now_ms(),
        )
        .await
        .expect("load the demo catalog");
    store.close().await;
}

/// The service under test.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub app: Arc<App>,
    pub logs: MemorySink,
    /// The app's log pipeline, for work a test does on the app's behalf.
    pub dispatch: tracing::Dispatch,
    pub sandbox: Sandbox,
    pub db: TestDb,
    running: Option<Running>,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// Starts the service with `configure` applied to its configuration.
pub async fn spawn_app_with(backend: Backend, configure: impl FnOnce(&mut Source)) -> TestApp {
    spawn_app_routed(backend, configure, axum::Router::new()).await
}

/// Starts the service with extra routes behind its middleware.
pub async fn spawn_app_routed(
    backend: Backend,
    configure: impl FnOnce(&mut Source),
    extra: axum::Router<Arc<App>>,
) -> TestApp {
    spawn_app_tuned(backend, configure, |_| {}, extra).await
}

/// Starts the service with `configure` applied to its configuration and `tune` to the
/// validated settings (for internals that have no variable, such as the
/// reconciler's period).
pub async fn spawn_app_tuned(
    backend: Backend,
    configure: impl FnOnce(&mut Source),
    tune: impl FnOnce(&mut Settings),
    extra: axum::Router<Arc<App>>,
) -> TestApp {
    spawn_app_full(backend, configure, tune, extra, Overrides::default()).await
}

/// Like [`spawn_app_tuned`], with the clock or the resource readings replaced.
pub async fn spawn_app_full(
    backend: Backend,
    configure: impl FnOnce(&mut Source),
    tune: impl FnOnce(&mut Settings),
    extra: axum::Router<Arc<App>>,
    overrides: Overrides,
) -> TestApp {
    let db = TestDb::new(backend).await;
    let sandbox = start_sandbox().await;
    let mut source = source_for(&db, &sandbox);
    configure(&mut source);
    let mut settings = Settings::from_source(&source).expect("valid test configuration");
    tune(&mut settings);
    prepare_database(&settings).await;
    let logs = MemorySink::default();
    let dispatch = telemetry::capture(logs.clone());
    let app = App::build_with(settings, overrides).expect("build the app");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let router = {
        let (api, _) = checkout_service::http::routes().split_for_parts();
        checkout_service::http::with_middleware(api.merge(extra), app.clone(), dispatch.clone())
    };
    let running =
        checkout_service::server::start_with_router(app.clone(), listener, dispatch.clone(), router).expect("start");
    let base = format!("http://{}", running.addr);
    TestApp {
        base,
        client: http_client(),
        app,
        logs,
        dispatch,
        sandbox,
        db,
        running: Some(running),
    }
}

impl TestApp {
    /// A valid token for `user`.
    pub fn token(&self, user: &str) -> String {
        self.app
            .auth
            .issue(&UserId::parse(user).expect("valid user"), Duration::from_secs(600))
            .expect("issue a token")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs `body` as JSON with `user`'s token.
    pub async fn post(&self, path: &str, user: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(self.token(user))
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    /// GETs one of the operator routes (`/health`, `/alerts`, ...) as JSON, without a token.
    pub async fn operator_json(&self, path: &str) -> Value {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json")
    }

    pub async fn get(&self, path: &str, user: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(self.token(user))
            .send()
            .await
            .expect("request")
    }

    /// Creates a cart for `user` holding `items` (sku, quantity); returns its ID.
    pub async fn cart_with(&self, user: &str, items: &[(&str, i64)]) -> String {
        let response = self.post("/api/carts", user, json!({})).await;
        assert_eq!(response.status(), 201, "create cart");
        let cart: Value = response.json().await.expect("cart json");
        let id = cart["cartId"].as_str().expect("cartId").to_string();
        for (sku, quantity) in items {
            let response = self
                .post(
                    &format!("/api/carts/{id}/items"),
                    user,
                    json!({"sku": sku, "quantity": quantity}),
                )
                .await;
            assert_eq!(response.status(), 200, "add {sku}");
        }
        id
    }

    /// Checks `cart` out for `user` with `token`.
    pub async fn checkout(&self, user: &str, cart: &str, payment_token: &str) -> reqwest::Response {
        self.post(
            "/api/checkout/complete",
            user,
            json!({"cartId": cart, "paymentToken": payment_token, "userId": user}),
        )
        .await
    }

    pub async fn cart(&self, user: &str, cart: &str) -> Value {
        self.get(&format!("/api/carts/{cart}"), user)
            .await
            .json()
            .await
            .expect("cart json")
    }

    /// Sets the payment gateway's faults over HTTP.
    pub async fn payment_faults(&self, faults: Value) {
        let response = self
            .client
            .put(format!("{}/_control/faults", self.sandbox.payment_url()))
            .json(&faults)
            .send()
            .await
            .expect("set faults");
        assert_eq!(response.status(), 200);
    }

    /// Sets the inventory service's faults over HTTP.
    pub async fn inventory_faults(&self, faults: Value) {
        let response = self
            .client
            .put(format!("{}/_control/faults", self.sandbox.inventory_url()))
            .json(&faults)
            .send()
            .await
            .expect("set faults");
        assert_eq!(response.status(), 200);
    }

    /// Every charge and refund the gateway made.
    pub async fn ledger(&self) -> Value {
        self.client
            .get(format!("{}/_control/ledger", self.sandbox.payment_url()))
            .send()
            .await
            .expect("ledger")
            .json()
            .await
            .expect("ledger json")
    }

    /// Units of `sku` available in the sandbox inventory.
    pub async fn stock(&self, sku: &str) -> Value {
        self.client
            .get(format!("{}/v1/stock/{sku}", self.sandbox.inventory_url()))
            .send()
            .await
            .expect("stock")
            .json()
            .await
            .expect("stock json")
    }

    /// Log records with `level`.
    pub fn records_at(&self, level: &str) -> Vec<Value> {
        self.logs
            .records()
            .into_iter()
            .filter(|r| r["level"] == level)
            .collect()
    }

    /// Log records whose `event` is `event`.
    pub fn events(&self, event: &str) -> Vec<Value> {
        self.logs
            .records()
            .into_iter()
            .filter(|r| r["event"] == event)
            .collect()
    }

    /// Waits (up to 5 s) until `count` records of `event` match `filter`; returns them.
    pub async fn wait_for_events(&self, event: &str, count: usize, filter: impl Fn(&Value) -> bool) -> Vec<Value> {
        let matching = || self.events(event).into_iter().filter(|r| filter(r)).collect::<Vec<_>>();
        let arrived = eventually(Duration::from_secs(5), || async { matching().len() >= count }).await;
        assert!(arrived, "expected {count} {event} records, found {:?}", matching());
        matching()
    }

    /// Stops the server, waiting for it.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await.expect("clean shutdown");
        }
    }
}

/// An HTTP client for tests (the crate uses rustls with the ring provider).
pub fn http_client() -> reqwest::Client {
    checkout_service::client::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Waits up to `limit` for `check` to hold, polling every 20 ms.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A response's status and JSON body.
pub async fn status_and_body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// A token for `user`, signed with the tests' `JWT_SECRET`: for a service started as
/// a process.
pub fn process_token(user: &str) -> String {
    checkout_service::auth::Auth::new(&secrecy::SecretString::from(JWT_SECRET.to_string()))
        .issue(&UserId::parse(user).expect("valid user"), Duration::from_secs(600))
        .expect("issue a token")
}

/// Sends `request` and reads its answer as JSON.
pub async fn json_answer(request: reqwest::RequestBuilder) -> Value {
    request
        .send()
        .await
        .expect("an answer")
        .json()
        .await
        .expect("a JSON body")
}

/// A new cart of `token`'s user on the server at `base`, holding one mug: its ID.
pub async fn cart_with_a_mug(client: &reqwest::Client, base: &str, token: &str) -> String {
    let cart = json_answer(client.post(format!("{base}/api/carts")).bearer_auth(token)).await;
    let cart_id = cart["cartId"].as_str().expect("a cart ID").to_string();
    let added = client
        .post(format!("{base}/api/carts/{cart_id}/items"))
        .bearer_auth(token)
        .json(&json!({"sku": "SKU-MUG", "quantity": 1}))
        .send()
        .await
        .expect("an answer to adding the mug");
    assert_eq!(added.status(), 200, "the mug is added");
    cart_id
}

/// The checkout of `cart` by `user`, paid with the test card, ready to send.
pub fn checkout_request(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    cart: &str,
    user: &str,
) -> reqwest::RequestBuilder {
    client
        .post(format!("{base}/api/checkout/complete"))
        .bearer_auth(token)
        .json(&json!({"cartId": cart, "paymentToken": "tok_visa", "userId": user}))
}

/// The environment variables a test may inherit from the developer's shell that would
/// change a spawned `checkout` process's behaviour.
pub fn clean_env(command: &mut tokio::process::Command) -> &mut tokio::process::Command {
    for variable in checkout_service::config::VARIABLES {
        command.env_remove(variable.name);
    }
    command.env_remove(checkout_service::config::CONFIG_FILE_VAR)
}

static BINARY: OnceLock<PathBuf> = OnceLock::new();

/// The `checkout` binary built for these tests.
pub fn binary() -> &'static PathBuf {
    BINARY.get_or_init(|| PathBuf::from(env!("CARGO_BIN_EXE_checkout")))
}

/// The checkout attempts of `cart`: (id, state), oldest first.
pub async fn attempts_of(db: &TestDb, cart: &str) -> Vec<(String, String)> {
    let sql = "SELECT id, state FROM checkout_attempts WHERE cart_id = $1 ORDER BY created_at_ms, id";
    match db.backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.expect("connect");
            sqlx::query_as(sql)
                .bind(cart)
                .fetch_all(&mut conn)
                .await
                .expect("query")
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
            sqlx::query_as(sql)
                .bind(cart)
                .fetch_all(&mut conn)
                .await
                .expect("query")
        }
    }
}

/// A single number from `sql` (a COUNT, say), which the test wrote itself.
pub async fn count(db: &TestDb, sql: &str) -> i64 {
    let sql = sqlx::AssertSqlSafe(sql.to_string());
    match db.backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.expect("connect");
            sqlx::query_scalar(sql).fetch_one(&mut conn).await.expect("query")
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
            sqlx::query_scalar(sql).fetch_one(&mut conn).await.expect("query")
        }
    }
}

/// Writes a test's figures where `scripts/test` prints them after the run, and to stderr.
pub fn report(name: &str, text: &str) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("reports");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{name}.txt")), format!("{text}\n"));
    eprintln!("{text}");
}

/// Waits (up to 10 s) until the sandbox at `base_url` has received `count` requests
/// to `endpoint` (such as `POST /v1/charges`): the way to know a request under test
/// is in flight, instead of sleeping and hoping.
pub async fn wait_for_sandbox_requests(base_url: &str, endpoint: &str, count: u64) {
    let client = http_client();
    let url = format!("{base_url}/_control/stats");
    let arrived = eventually(Duration::from_secs(10), || async {
        let stats: Value = match client.get(&url).send().await {
            Ok(response) => response.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        stats["byEndpoint"][endpoint].as_u64().unwrap_or(0) >= count
    })
    .await;
    assert!(arrived, "the sandbox never received {count} {endpoint}");
}

/// A local HTTP server that keeps every JSON body POSTed to it.
pub struct WebhookReceiver {
    pub url: String,
    bodies: Arc<std::sync::Mutex<Vec<Value>>>,
}

impl WebhookReceiver {
    pub async fn start() -> WebhookReceiver {
        let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = bodies.clone();
        let router = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let sink = sink.clone();
                async move {
                    sink.lock().expect("bodies").push(body);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, router).await });
        WebhookReceiver { url, bodies }
    }

    pub fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().expect("bodies").clone()
    }

    /// Waits (up to 5 s) for a payload announcing `alertname` at `severity` as `status`.
    pub async fn wait_for(&self, alertname: &str, severity: &str, status: &str) -> Value {
        let found = || {
            self.bodies().into_iter().find(|b| {
                b["status"] == status
                    && b["alerts"][0]["labels"]["alertname"] == alertname
                    && b["alerts"][0]["labels"]["severity"] == severity
            })
        };
        let arrived = eventually(Duration::from_secs(5), || async { found().is_some() }).await;
        assert!(
            arrived,
            "no {status} webhook for {alertname}/{severity}: {:?}",
            self.bodies()
        );
        found().expect("just found")
    }
}

/// Memory and disk readings a test sets by hand, for alerts that cannot be provoked
/// on a shared machine; file descriptors are read for real.
#[derive(Default)]
pub struct SettableProbe {
    /// Memory used, per mille of the limit.
    pub memory_used: std::sync::atomic::AtomicU64,
    /// Disk used, per mille.
    pub disk_used: std::sync::atomic::AtomicU64,
}

impl checkout_service::ops::resources::ResourceProbe for SettableProbe {
    fn memory(&self) -> Option<checkout_service::ops::resources::MemoryReading> {
        let used = self.memory_used.load(std::sync::atomic::Ordering::SeqCst);
        Some(checkout_service::ops::resources::MemoryReading {
            rss_bytes: 50 << 20,
            used_bytes: used << 20,
            limit_bytes: 1000 << 20,
            source: "cgroup",
        })
    }
    fn disk(&self, path: &std::path::Path) -> Option<checkout_service::ops::resources::DiskReading> {
        let used = self.disk_used.load(std::sync::atomic::Ordering::SeqCst);
        Some(checkout_service::ops::resources::DiskReading {
            path: path.display().to_string(),
            total_bytes: 1000 << 20,
            available_bytes: (1000 - used) << 20,
            usage_ratio: used as f64 / 1000.0,
        })
    }
    fn file_descriptors(&self) -> Option<checkout_service::ops::resources::FdReading> {
        checkout_service::ops::resources::file_descriptors()
    }
}

/// A TCP proxy to `target` that can hold back what the server sends, so that a
/// client can be caught waiting for an answer its server has already given.
pub struct HoldingProxy {
    pub port: u16,
    hold: Arc<tokio::sync::watch::Sender<bool>>,
}

impl HoldingProxy {
    pub async fn start(target: std::net::SocketAddr) -> HoldingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let hold = Arc::new(tokio::sync::watch::Sender::new(false));
        let holding = hold.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let mut released = holding.subscribe();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                    let mut buffer = vec![0u8; 16 * 1024];
                    loop {
                        let Ok(read) = server_read.read(&mut buffer).await else {
                            return;
                        };
                        if read == 0 || released.wait_for(|held| !held).await.is_err() {
                            return;
                        }
                        if client_write.write_all(&buffer[..read]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        HoldingProxy { port, hold }
    }

    /// Holds back (`true`) or passes on (`false`) what the server sends.
    pub fn hold(&self, held: bool) {
        self.hold.send_replace(held);
    }
}

/// `name` in a directory of the `PATH`.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// A test tool installed from PyPI (localstripe, hadolint, kubernetes-validate):
/// `scripts/test` puts them in a virtualenv and names its `bin` directory in
/// `CHECKOUT_TEST_TOOLS`; otherwise the `PATH` is searched. Without the tool the
/// test is skipped, saying so, except under `CI=true`, where it fails.
pub fn test_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("CHECKOUT_TEST_TOOLS")
        .map(|dir| PathBuf::from(dir).join(name))
        .filter(|candidate| candidate.is_file())
        .or_else(|| on_path(name));
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI requires {name}: scripts/test installs it into a virtualenv"
        );
        eprintln!("{name} is not installed: SKIPPED (scripts/test installs it)");
    }
    found
}

/// The value of one series in a Prometheus text page.
pub fn series(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// `/metrics` of the service at `base`, as text.
pub async fn metrics_of(base: &str) -> String {
    metrics_through(&http_client(), base).await
}

/// `/metrics` of the service at `base`, asked through `client` (and the
/// connections it keeps).
pub async fn metrics_through(client: &reqwest::Client, base: &str) -> String {
    client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// One call a [`Proxy`] forwarded: method, path, `traceparent`, `X-Request-Id`.
pub type Seen = (String, String, Option<String>, Option<String>);

/// Rewrites an answer's body, given the call's method and path.
pub type Rewrite = Arc<dyn Fn(&str, &str, bytes::Bytes) -> bytes::Bytes + Send + Sync>;

/// A proxy in front of a dependency: it forwards every call to `target` (set once
/// the dependency's URL is known), keeps what it saw, and may rewrite answers.
pub struct Proxy {
    pub url: String,
    pub target: Arc<std::sync::Mutex<String>>,
    pub seen: Arc<std::sync::Mutex<Vec<Seen>>>,
}

impl Proxy {
    pub async fn start(rewrite: Option<Rewrite>) -> Proxy {
        use axum::body::Body;
        use axum::extract::Request;
        use axum::response::Response;
        let target = Arc::new(std::sync::Mutex::new(String::new()));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (forward_to, record) = (target.clone(), seen.clone());
        let proxy = axum::Router::new().fallback(move |request: Request| {
            let base = forward_to.lock().expect("target").clone();
            let (record, rewrite) = (record.clone(), rewrite.clone());
            async move {
                let (parts, body) = request.into_parts();
                let header = |name: &str| {
                    parts
                        .headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let path = parts.uri.path().to_string();
                record.lock().expect("seen").push((
                    parts.method.to_string(),
                    path.clone(),
                    header("traceparent"),
                    header("x-request-id"),
                ));
                let body = axum::body::to_bytes(body, 1 << 20).await.expect("body");
                let path_and_query = parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
                let mut forwarded = http_client()
                    .request(parts.method.clone(), format!("{base}{path_and_query}"))
                    .body(body);
                for (name, value) in &parts.headers {
                    if name != "host" && name != "content-length" {
                        forwarded = forwarded.header(name, value);
                    }
                }
                let answer = forwarded.send().await.expect("the dependency answers");
                let mut response = Response::builder().status(answer.status());
                for (name, value) in answer.headers() {
                    if name != "content-length" {
                        response = response.header(name, value);
                    }
                }
                let mut bytes = answer.bytes().await.expect("answer body");
                if let Some(rewrite) = &rewrite {
                    bytes = rewrite(parts.method.as_str(), &path, bytes);
                }
                response.body(Body::from(bytes)).expect("a response")
            }
        });
        tokio::spawn(async move { axum::serve(listener, proxy).await });
        Proxy {
            url: format!("http://{address}"),
            target,
            seen,
        }
    }

    /// Forwards from now on to `url`.
    pub fn forward_to(&self, url: String) {
        *self.target.lock().expect("target") = url;
    }

    /// What it has seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}
