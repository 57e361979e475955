//! The real `checkout` binary as a process: startup validation, the admin commands,
//! SIGTERM draining, the sandbox, and the demo's printed curl flow run in a shell.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use checkout_service::domain::ids::random_id;
use checkout_service::store::migrations::expected_version;

use crate::helpers::*;
use crate::on_both_backends;

const EXPECTED_MISSING: [&str; 5] = [
    "STARTUP_FAILURE: Required environment variable 'DATABASE_URL' is not set.",
    "STARTUP_FAILURE: Required environment variable 'PAYMENT_GATEWAY_URL' is not set.",
    "STARTUP_FAILURE: Required environment variable 'PAYMENT_API_KEY' is not set.",
    "STARTUP_FAILURE: Required environment variable 'INVENTORY_SERVICE_URL' is not set.",
    "STARTUP_FAILURE: Required environment variable 'JWT_SECRET' is not set.",
];

pub fn checkout(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut command = Command::new(binary());
    clean_env(&mut command);
    command.args(args).kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// Runs to completion (bounded): exit code, stdout, stderr.
pub async fn run(args: &[&str], env: &[(&str, String)]) -> (i32, String, String) {
    let output = tokio::time::timeout(Duration::from_secs(60), checkout(args, env).output())
        .await
        .expect("the command finishes")
        .expect("the command runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// A running `checkout` process whose output lines are collected as they come.
pub struct Process {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// The tasks reading both streams; they end at the streams' end.
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Process {
    pub fn spawn(mut command: Command) -> Process {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn checkout");
        let collect = |stream: Box<dyn tokio::io::AsyncRead + Unpin + Send>| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            let reader = tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    sink.lock().expect("lines").push(line);
                }
            });
            (lines, reader)
        };
        let (stdout, out_reader) = collect(Box::new(child.stdout.take().expect("stdout")));
        let (stderr, err_reader) = collect(Box::new(child.stderr.take().expect("stderr")));
        Process {
            child,
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
        }
    }

    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().expect("lines").clone()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().expect("lines").clone()
    }

    /// Waits (up to 30 s) until `url` answers 200; otherwise fails, showing what the
    /// process printed.
    pub async fn wait_until_serving(&self, url: &str) {
        let client = http_client();
        let up = eventually(Duration::from_secs(30), || async {
            client.get(url).send().await.is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(up, "{url} never answered 200: {:?}\n{:?}", self.stderr(), self.stdout());
    }

    /// The process's ID.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    pub fn signal(&self, signal: i32) {
        let pid = self.child.id().expect("running") as i32;
        // SAFETY: sending a signal to a child we spawned and still own.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Waits for the process to exit and for its last output lines to be read.
    pub async fn exit_code(&mut self, limit: Duration) -> i32 {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .expect("the process exits in time")
            .expect("wait");
        // What it wrote just before exiting may still be in the pipes.
        for reader in self.readers.drain(..) {
            let read = tokio::time::timeout(Duration::from_secs(5), reader).await;
            assert!(matches!(read, Ok(Ok(()))), "the output is read to its end");
        }
        status.code().unwrap_or(-1)
    }
}

pub async fn wait_until_serving(client: &reqwest::Client, url: &str) {
    let up = eventually(Duration::from_secs(30), || async {
        client.get(url).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(up, "{url} never answered 200");
}

pub async fn migrated_database(backend: Backend) -> TestDb {
    let db = TestDb::new(backend).await;
    let (code, out, err) = run(&["migrate"], &[("DATABASE_URL", db.url.clone())]).await;
    assert_eq!(code, 0, "{out}{err}");
    db
}

/// A migrated database holding the demo catalog, imported by `checkout catalog import`.
pub async fn stocked_database(backend: Backend) -> TestDb {
    let db = migrated_database(backend).await;
    let catalog = std::env::current_dir().expect("cwd").join("catalog/demo.json");
    let (code, _, stderr) = run(
        &["catalog", "import", catalog.to_str().expect("path")],
        &[("DATABASE_URL", db.url.clone())],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    db
}

#[tokio::test]
async fn serve_without_configuration_names_every_missing_variable_and_never_binds() {
    let port = free_port();
    let (code, stdout, stderr) = run(&["serve"], &[("PORT", port.to_string())]).await;
    assert_eq!(code, 1);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines, EXPECTED_MISSING);
    let failures: Vec<_> = json_lines(&stdout)
        .into_iter()
        .filter(|r| r["event"] == "startup_failure")
        .collect();
    assert_eq!(failures.len(), 5);
    assert_eq!(failures[2]["message"], EXPECTED_MISSING[2]);
    assert_eq!(failures[2]["level"], "ERROR");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the port was never bound"
    );
}

#[tokio::test]
async fn a_dead_database_is_reported_alongside_bad_configuration() {
    let (code, _, stderr) = run(
        &["check"],
        &[
            ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere".into()),
            ("DB_ACQUIRE_TIMEOUT_MS", "500".into()),
            ("JWT_SECRET", "short".into()),
            ("PAYMENT_GATEWAY_URL", "not a url".into()),
        ],
    )
    .await;
    assert_eq!(code, 1);
    for expected in [
        "STARTUP_FAILURE: Required environment variable 'PAYMENT_API_KEY' is not set.",
        "STARTUP_FAILURE: Environment variable 'JWT_SECRET' must be at least 32 bytes long (it is 5).",
        "STARTUP_FAILURE: Environment variable 'PAYMENT_GATEWAY_URL' is not a valid URL",
        "STARTUP_FAILURE: Cannot use the database at postgres://postgres@127.0.0.1:1/nowhere: Connection refused (os error 111).",
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with(expected)),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(!stderr.contains("short"), "secrets are never echoed");
}

/// The one `STARTUP_FAILURE` line `check` prints for `database_url`.
async fn database_failure(database_url: &str) -> String {
    let (code, _, stderr) = run(
        &["check"],
        &[
            ("DATABASE_URL", database_url.to_string()),
            ("PAYMENT_GATEWAY_URL", "http://127.0.0.1:9".into()),
            ("PAYMENT_API_KEY", "sk_test".into()),
            ("INVENTORY_SERVICE_URL", "http://127.0.0.1:9".into()),
            ("JWT_SECRET", JWT_SECRET.into()),
            ("DB_ACQUIRE_TIMEOUT_MS", "3000".into()),
        ],
    )
    .await;
    assert_eq!(code, 1, "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("STARTUP_FAILURE: ")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0].to_string()
}

#[tokio::test]
async fn a_database_that_cannot_be_used_is_reported_in_its_own_words() {
    let missing = std::env::temp_dir().join(random_id("no-such-dir-")).join("checkout.db");
    let url = format!("sqlite://{}", missing.display());
    assert_eq!(
        database_failure(&url).await,
        format!(
            "STARTUP_FAILURE: Cannot use the database at {url}: unable to open database file (SQLite code 14); \
             {} cannot be written to: No such file or directory (os error 2).",
            missing.parent().expect("a directory").display()
        )
    );
    if !postgres_available().await {
        return;
    }
    let refused = format!("postgres://postgres@127.0.0.1:{}/postgres", free_port());
    assert_eq!(
        database_failure(&refused).await,
        format!("STARTUP_FAILURE: Cannot use the database at {refused}: Connection refused (os error 111).")
    );
    let absent = "postgres://postgres@127.0.0.1:5432/no_such_database";
    assert_eq!(
        database_failure(absent).await,
        format!(
            "STARTUP_FAILURE: Cannot use the database at {absent}: \
             database \"no_such_database\" does not exist (SQLSTATE 3D000)."
        )
    );
}

#[tokio::test]
async fn a_wrong_postgres_password_is_reported_in_its_own_words() {
    if !postgres_available().await {
        return;
    }
    // A role of the test's own that must give a password over TCP.
    let role = random_id("checkout_pw_");
    let admin = postgres_admin_url();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE \"{role}\" LOGIN PASSWORD 'right-password'"
    )))
    .execute(&mut conn)
    .await
    .expect("create role");
    let hba: String = sqlx::query_scalar("SHOW hba_file")
        .fetch_one(&mut conn)
        .await
        .expect("hba_file");
    let trusted = std::fs::read_to_string(&hba).unwrap_or_default().contains("trust");
    let url = format!("postgres://{role}:wrong-password@127.0.0.1:5432/postgres");
    let line = database_failure(&url).await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE \"{role}\"")))
        .execute(&mut conn)
        .await;
    if trusted && !line.contains("password authentication failed") {
        // This server trusts every local connection: no password is ever asked for.
        eprintln!("PostgreSQL trusts 127.0.0.1: the wrong-password case is SKIPPED");
        return;
    }
    let redacted = format!("postgres://{role}:***@127.0.0.1:5432/postgres");
    assert_eq!(
        line,
        format!(
            "STARTUP_FAILURE: Cannot use the database at {redacted}: \
             password authentication failed for user \"{role}\" (SQLSTATE 28P01)."
        )
    );
}

on_both_backends!(
    async fn a_database_behind_the_schema_is_refused_unless_told_to_migrate(backend) {
        let db = TestDb::new(backend).await;
        let sandbox = start_sandbox().await;
        let mut env = process_env(&db.url, &sandbox, free_port());
        for command in ["check", "serve"] {
            let (code, _, stderr) = run(&[command], &env).await;
            assert_eq!(code, 1, "{command}");
            assert_eq!(
                stderr.trim(),
                format!(
                    "STARTUP_FAILURE: database schema is at version 0 but this build needs {}; run 'checkout migrate'",
                    expected_version()
                )
            );
        }
        env.push(("MIGRATE_ON_START", "true".into()));
        let (code, stdout, stderr) = run(&["check"], &env).await;
        assert_eq!(code, 0, "{stderr}");
        let ok = format!("OK: configuration valid, database reachable, schema at version {}", expected_version());
        assert_eq!(stdout.lines().last(), Some(ok.as_str()));
        let (code, _, _) = run(&["check"], &env[..env.len() - 1]).await;
        assert_eq!(code, 0, "migrated for good");
    }
);

#[tokio::test]
async fn migrate_prints_the_version_and_catalog_import_is_all_or_nothing() {
    let db = TestDb::new(Backend::Sqlite).await;
    let env = [("DATABASE_URL", db.url.clone())];
    let printed = format!("schema version {}", expected_version());
    let (code, stdout, _) = run(&["migrate"], &env).await;
    assert_eq!((code, stdout.starts_with(&printed)), (0, true), "{stdout}");
    let (code, stdout, _) = run(&["migrate"], &env).await;
    assert_eq!(
        (code, stdout.starts_with(&printed)),
        (0, true),
        "migrate twice is harmless"
    );

    let dir = db.dir().expect("sqlite dir");
    let good = dir.join("good.json");
    std::fs::write(
        &good,
        json!({"products": [
            {"sku": "SKU-A", "name": "A", "priceCents": 100, "currency": "USD"},
            {"sku": "SKU-B", "name": "B", "priceCents": 250, "currency": "EUR"},
        ]})
        .to_string(),
    )
    .expect("write");
    let (code, stdout, stderr) = run(&["catalog", "import", good.to_str().expect("path")], &env).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("imported 2 products"), "{stdout}");

    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        json!({"products": [
            {"sku": "SKU-A", "name": "A renamed", "priceCents": 1, "currency": "USD"},
            {"sku": "SKU-C", "name": "C", "priceCents": -1, "currency": "USD"},
        ]})
        .to_string(),
    )
    .expect("write");
    let (code, _, stderr) = run(&["catalog", "import", bad.to_str().expect("path")], &env).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("products[1].priceCents"), "{stderr}");

    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&db.url)
        .await
        .expect("connect");
    let names: Vec<(String, String)> = sqlx::query_as("SELECT sku, name FROM products ORDER BY sku")
        .fetch_all(&mut conn)
        .await
        .expect("query");
    assert_eq!(
        names,
        vec![("SKU-A".into(), "A".into()), ("SKU-B".into(), "B".into())],
        "nothing changed"
    );

    let (code, _, stderr) = run(&["catalog", "import", "/no/such/file.json"], &env).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot read"), "{stderr}");
}

#[tokio::test]
async fn token_prints_a_jwt_the_service_accepts() {
    let (code, stdout, _) = run(
        &["token", "--user", "usr_9", "--ttl", "5m"],
        &[("JWT_SECRET", JWT_SECRET.into())],
    )
    .await;
    assert_eq!(code, 0);
    let auth = checkout_service::auth::Auth::new(&secrecy::SecretString::from(JWT_SECRET.to_string()));
    assert_eq!(
        auth.verify(stdout.trim()).map(|u| u.to_string()),
        Ok("usr_9".to_string())
    );
    let (code, _, stderr) = run(&["token", "--user", "usr_9"], &[("JWT_SECRET", "short".into())]).await;
    assert_eq!(code, 1, "{stderr}");
    let (code, _, _) = run(
        &["token", "--user", "usr_9", "--ttl", "forever"],
        &[("JWT_SECRET", JWT_SECRET.into())],
    )
    .await;
    assert_eq!(code, 2, "a usage error");
}

#[tokio::test]
async fn every_command_has_help_and_usage_errors_exit_2() {
    for command in [
        vec!["--help"],
        vec!["demo", "--help"],
        vec!["serve", "--help"],
        vec!["check", "--help"],
        vec!["migrate", "--help"],
        vec!["catalog", "import", "--help"],
        vec!["sandbox", "--help"],
        vec!["token", "--help"],
    ] {
        let (code, stdout, _) = run(&command, &[]).await;
        assert_eq!(code, 0, "{command:?}");
        assert!(stdout.contains("Usage: checkout"), "{command:?}: {stdout}");
    }
    for command in [vec!["frobnicate"], vec!["demo", "--port", "x"], vec!["token"], vec![]] {
        let (code, _, _) = run(&command, &[]).await;
        assert_eq!(code, 2, "{command:?}");
    }
}

on_both_backends!(
    async fn sigterm_turns_readiness_503_at_once_serves_on_through_the_drain_then_exits_0(backend) {
        let db = stocked_database(backend).await;
        let sandbox = start_sandbox().await;
        let port = free_port();
        let mut env = process_env(&db.url, &sandbox, port);
        // Longer than the test: only a second signal ends the delay early.
        env.push(("SHUTDOWN_DRAIN_DELAY_MS", "60000".into()));
        let mut server = Process::spawn(checkout(&["serve"], &env));
        let base = format!("http://127.0.0.1:{port}");
        let client = http_client();
        wait_until_serving(&client, &format!("{base}/health/ready")).await;

        let startup = json_lines(&server.stdout().join("\n"))
            .into_iter()
            .find(|r| r["event"] == "startup")
            .expect("a startup record");
        assert_eq!(startup["schemaVersion"], expected_version());
        assert!(startup["version"].is_string() && startup["gitCommit"].is_string());
        assert_eq!(startup["config"]["jwtSecret"], "***");
        assert_eq!(startup["config"]["paymentApiKey"], "***");

        let token = process_token("usr_1");
        let cart_id = cart_with_a_mug(&client, &base, &token).await;
        sandbox.payment_faults.set(serde_json::from_value(json!({"latencyMs": 2500})).expect("faults"));
        let in_flight = tokio::spawn({
            let (client, base, token) = (client.clone(), base.clone(), token.clone());
            async move {
                checkout_request(&client, &base, &token, &cart_id, "usr_1")
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }
        });
        // The checkout is charging when the signal arrives.
        wait_for_sandbox_requests(&sandbox.payment_url(), "POST /v1/charges", 1).await;
        server.signal(libc::SIGTERM);
        let draining = eventually(Duration::from_secs(2), || async {
            client
                .get(format!("{base}/health/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 503)
        })
        .await;
        assert!(draining, "readiness turns 503 as soon as the signal is handled");
        let ready = client.get(format!("{base}/health/ready")).send().await.expect("readiness answers");
        assert_eq!(ready.status(), 503);
        let ready: Value = ready.json().await.expect("json");
        assert_eq!(ready["draining"], true);
        let live = client.get(format!("{base}/health/live")).send().await.expect("liveness answers");
        assert_eq!(live.status(), 200);
        // During the drain delay the API is served as ever, each answer telling a
        // keep-alive client to reconnect (through the load balancer, elsewhere).
        let served = client.get(format!("{base}/api/products")).send().await.expect("answers");
        assert_eq!(served.status(), 200);
        assert_eq!(served.headers()["connection"], "close");
        // A second signal skips the rest of the delay; the checkout in flight finishes.
        server.signal(libc::SIGTERM);
        assert_eq!(in_flight.await.expect("join").expect("the checkout is answered"), 201);
        assert_eq!(server.exit_code(Duration::from_secs(20)).await, 0);
        let records = json_lines(&server.stdout().join("\n"));
        assert!(records.iter().any(|r| r["event"] == "stopped"));
    }
);

#[tokio::test]
async fn the_sandbox_command_serves_both_dependencies() {
    let (payment, inventory) = (free_port(), free_port());
    let mut sandbox = Process::spawn(checkout(
        &[
            "sandbox",
            "--payment-port",
            &payment.to_string(),
            "--inventory-port",
            &inventory.to_string(),
        ],
        &[("PAYMENT_API_KEY", "sk_cli".into())],
    ));
    let client = http_client();
    wait_until_serving(&client, &format!("http://127.0.0.1:{inventory}/v1/stock/SKU-LIMITED")).await;
    let stock: Value = client
        .get(format!("http://127.0.0.1:{inventory}/v1/stock/SKU-LIMITED"))
        .send()
        .await
        .expect("stock")
        .json()
        .await
        .expect("json");
    assert_eq!(stock["available"], 1);
    let charge = client
        .post(format!("http://127.0.0.1:{payment}/v1/charges"))
        .bearer_auth("sk_cli")
        .header("Idempotency-Key", "k1")
        .json(&json!({"amountCents": 100, "currency": "USD", "token": "tok_visa"}))
        .send()
        .await
        .expect("charge");
    assert_eq!(charge.status(), 200);
    let unauthorized = client
        .post(format!("http://127.0.0.1:{payment}/v1/charges"))
        .bearer_auth("wrong")
        .header("Idempotency-Key", "k2")
        .json(&json!({"amountCents": 100, "currency": "USD", "token": "tok_visa"}))
        .send()
        .await
        .expect("charge");
    assert_eq!(unauthorized.status(), 401);
    sandbox.signal(libc::SIGTERM);
    assert_eq!(sandbox.exit_code(Duration::from_secs(10)).await, 0);
}

#[tokio::test]
async fn the_demo_prints_a_curl_flow_that_checks_out_in_a_shell() {
    let dir = std::env::temp_dir().join(checkout_service::domain::ids::random_id("checkout-demo-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let (port, payment, inventory) = (free_port(), free_port(), free_port());
    let mut command = checkout(
        &[
            "demo",
            "--port",
            &port.to_string(),
            "--sandbox-ports",
            &format!("{payment},{inventory}"),
        ],
        &[],
    );
    command.current_dir(&dir);
    let mut demo = Process::spawn(command);
    let printed = eventually(Duration::from_secs(30), || async {
        demo.stderr().iter().any(|l| l.starts_with("Stop with Ctrl-C"))
    })
    .await;
    assert!(
        printed,
        "the demo printed its banner: {:?} {:?}",
        demo.stderr(),
        demo.stdout()
    );
    assert!(dir.join("checkout-demo.db").exists(), "the default database file");
    let banner = demo.stderr();
    let flow: Vec<&String> = banner
        .iter()
        .filter(|l| l.starts_with("TOKEN=") || l.starts_with("CART=") || l.starts_with("curl "))
        .take(4)
        .collect();
    assert_eq!(flow.len(), 4, "{banner:?}");
    let script = flow.iter().map(|l| l.as_str()).collect::<Vec<_>>().join("\n");
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new("bash").arg("-c").arg(&script).output(),
    )
    .await
    .expect("the flow finishes")
    .expect("bash runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("HTTP/1.1 201 Created"), "{text}");
    assert!(text.contains("\"status\":\"CONFIRMED\""), "{text}");
    for url in ["/status", "/alerts", "/metrics", "/openapi.json"] {
        assert!(
            banner
                .iter()
                .any(|l| l.contains(&format!("http://127.0.0.1:{port}{url}"))),
            "{url}: {banner:?}"
        );
    }
    // The terminal stays readable: the records are in the file the banner names.
    assert!(demo.stdout().is_empty(), "{:?}", demo.stdout());
    let log = dir.join("checkout-demo-logs/checkout.log");
    assert!(
        banner.iter().any(|l| l.contains("./checkout-demo-logs/checkout.log")),
        "{banner:?}"
    );
    let logged = eventually(Duration::from_secs(5), || async {
        std::fs::read_to_string(&log).is_ok_and(|text| text.contains("\"endpoint\":\"POST /api/checkout/complete\""))
    })
    .await;
    assert!(logged, "the checkout is in {}", log.display());
    // A token for another user, signed with the secret the banner points to.
    let minted = banner
        .iter()
        .find(|l| l.starts_with("A token for another user: "))
        .map(|l| {
            l.trim_start_matches("A token for another user: ")
                .replace("checkout token", &format!("{} token", binary().display()))
        })
        .expect("the banner says how to mint a token");
    let other = Command::new("bash")
        .arg("-c")
        .arg(&minted)
        .current_dir(&dir)
        .output()
        .await
        .expect("bash");
    let other_token = String::from_utf8_lossy(&other.stdout).trim().to_string();
    let cart = http_client()
        .post(format!("http://127.0.0.1:{port}/api/carts"))
        .bearer_auth(&other_token)
        .send()
        .await
        .expect("answered");
    assert_eq!(cart.status(), 201, "usr_789's token works: {minted}");
    demo.signal(libc::SIGINT);
    assert_eq!(demo.exit_code(Duration::from_secs(20)).await, 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn log_files_rotate_at_log_max_file_bytes_and_keep_at_most_log_max_files() {
    let db = migrated_database(Backend::Sqlite).await;
    let sandbox = start_sandbox().await;
    let logs = db.dir().expect("sqlite dir").join("logs");
    let port = free_port();
    let mut env = process_env(&db.url, &sandbox, port);
    env.extend([
        ("LOG_DIR", logs.display().to_string()),
        ("LOG_MAX_FILES", "3".into()),
        ("LOG_MAX_FILE_BYTES", "4096".into()),
    ]);
    let mut server = Process::spawn(checkout(&["serve"], &env));
    let client = http_client();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_serving(&client, &format!("{base}/health/live")).await;
    // Some 30 KB of access records: several files' worth.
    for _ in 0..100 {
        client
            .get(format!("{base}/health/live"))
            .send()
            .await
            .expect("answered");
    }
    server.signal(libc::SIGTERM);
    assert_eq!(server.exit_code(Duration::from_secs(20)).await, 0);

    let mut files: Vec<String> = std::fs::read_dir(&logs)
        .expect("read dir")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    files.sort();
    assert_eq!(files, ["checkout.log", "checkout.log.1", "checkout.log.2"]);
    let mut kept = Vec::new();
    for name in ["checkout.log.2", "checkout.log.1", "checkout.log"] {
        let text = std::fs::read_to_string(logs.join(name)).expect("a log file");
        // A file is rotated before the record that would take it past the limit.
        assert!(text.len() <= 4096 + 1024, "{name} holds {} bytes", text.len());
        let records = json_lines(&text);
        assert_eq!(records.len(), text.lines().count(), "{name} holds whole JSON records");
        kept.extend(records);
    }
    assert_eq!(
        kept.last().map(|r| r["event"].clone()),
        Some(json!("stopped")),
        "flushed on exit"
    );
    // The files hold the latest records, in order: the end of what stdout got.
    let stdout = json_lines(&server.stdout().join("\n"));
    assert!(stdout.len() > kept.len());
    assert_eq!(stdout[stdout.len() - kept.len()..], kept[..]);
}

#[tokio::test]
async fn stripe_mode_needs_its_keys_and_not_the_sandbox_gateways() {
    let db = migrated_database(Backend::Sqlite).await;
    let base = [
        ("DATABASE_URL", db.url.clone()),
        ("INVENTORY_SERVICE_URL", "http://127.0.0.1:9".to_string()),
        ("JWT_SECRET", JWT_SECRET.to_string()),
        ("PAYMENT_PROVIDER", "stripe".to_string()),
    ];
    let (code, _, stderr) = run(&["check"], &base).await;
    assert_eq!(code, 1);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("STARTUP_FAILURE")).collect();
    assert_eq!(
        lines,
        [
            "STARTUP_FAILURE: Required environment variable 'STRIPE_SECRET_KEY' is not set.",
            "STARTUP_FAILURE: Required environment variable 'STRIPE_WEBHOOK_SECRET' is not set.",
        ],
        "only Stripe's own variables are missing: {stderr}"
    );
    let mut complete = base.to_vec();
    complete.extend([
        ("STRIPE_SECRET_KEY", "sk_test_0123456789".to_string()),
        ("STRIPE_WEBHOOK_SECRET", "whsec_0123456789".to_string()),
        ("STRIPE_API_BASE", "not a url".to_string()),
    ]);
    let (code, _, stderr) = run(&["check"], &complete).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("STARTUP_FAILURE: Environment variable 'STRIPE_API_BASE' is not a valid URL"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("sk_test_0123456789") && !stderr.contains("whsec_0123456789"),
        "secrets are never echoed"
    );
    complete.pop();
    let (code, stdout, stderr) = run(&["check"], &complete).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
}
