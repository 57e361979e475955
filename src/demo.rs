//! `checkout demo`: the whole system on one machine, for trying it out. SQLite,
//! migrations applied, the demo catalog loaded, the sandbox dependencies in-process,
//! a generated JWT secret (written to a file, so `checkout token` can sign for any
//! user), and a ready-to-paste curl flow on stderr. The JSON log records go to files
//! the banner names, so the terminal stays readable; `--json-logs` sends them to
//! stdout as `serve` does.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use secrecy::SecretString;

use crate::auth::Auth;
use crate::catalog::Catalog;
use crate::commands::{init_telemetry, run_server};
use crate::config::{Problem, Source};
use crate::domain::UserId;
use crate::domain::ids::random_id;
use crate::sandbox::{Sandbox, SandboxOptions};
use crate::startup;
use crate::store::Store;

/// The demo's knobs.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// API port.
    pub port: u16,
    /// SQLite file.
    pub db: PathBuf,
    /// Sandbox payment and inventory ports.
    pub sandbox_ports: (u16, u16),
    /// JSON log records on stdout instead of in files.
    pub json_logs: bool,
}

/// Where the demo's log files go unless `LOG_DIR` says otherwise.
pub const DEMO_LOG_DIR: &str = "./checkout-demo-logs";

/// The user the printed token is for.
pub const DEMO_USER: &str = "usr_456";

/// Runs the demo until Ctrl-C or SIGTERM.
pub async fn run(options: DemoOptions) -> ExitCode {
    let localhost = IpAddr::from([127, 0, 0, 1]);
    let (mut source, file_problems) = Source::from_env();
    let api_key = random_id("sk_demo_");
    let jwt_secret = format!("{}{}", random_id(""), random_id(""));
    let (payment_port, inventory_port) = options.sandbox_ports;
    source.set("DATABASE_URL", format!("sqlite://{}", options.db.display()));
    source.set("PAYMENT_GATEWAY_URL", format!("http://127.0.0.1:{payment_port}"));
    source.set("INVENTORY_SERVICE_URL", format!("http://127.0.0.1:{inventory_port}"));
    source.set("PAYMENT_API_KEY", api_key.clone());
    source.set("JWT_SECRET", jwt_secret.clone());
    source.set("HOST", localhost.to_string());
    source.set("PORT", options.port.to_string());
    source.set("MIGRATE_ON_START", "true");
    // Nothing balances load in front of the demo: stop at once.
    if source.get("SHUTDOWN_DRAIN_DELAY_MS").is_none() {
        source.set("SHUTDOWN_DRAIN_DELAY_MS", "0");
    }
    if !options.json_logs && source.get("LOG_DIR").is_none() {
        source.set("LOG_DIR", DEMO_LOG_DIR);
        if let Err(error) = std::fs::create_dir_all(DEMO_LOG_DIR) {
            eprintln!("STARTUP_FAILURE: cannot create {DEMO_LOG_DIR}: {error}");
            return ExitCode::from(1);
        }
    }
    let mut telemetry = match init_telemetry(&source, options.json_logs) {
        Ok(telemetry) => telemetry,
        Err(code) => return code,
    };
    let secret_file = secret_file(&options.db);
    if let Err(error) = write_secret(&secret_file, &jwt_secret) {
        eprintln!("STARTUP_FAILURE: cannot write {}: {error}", secret_file.display());
        return ExitCode::from(1);
    }
    let catalog = Catalog::demo();
    let sandbox = match Sandbox::start(SandboxOptions {
        host: localhost,
        payment_port,
        inventory_port,
        api_key,
        catalog: catalog.clone(),
    })
    .await
    {
        Ok(sandbox) => sandbox,
        Err(error) => {
            startup::report(&[Problem(format!("{error:#}; choose other ports with --sandbox-ports"))]);
            return ExitCode::from(1);
        }
    };
    let validated = match startup::validate(&source, file_problems).await {
        Ok(validated) => validated,
        Err(problems) => {
            startup::report(&problems);
            sandbox.stop().await;
            return ExitCode::from(1);
        }
    };
    if let Err(error) = load_catalog(&validated.settings.db, &catalog).await {
        startup::report(&[Problem(format!("Cannot load the demo catalog: {error:#}"))]);
        sandbox.stop().await;
        return ExitCode::from(1);
    }
    let token = Auth::new(&SecretString::from(jwt_secret)).issue(
        &UserId::parse(DEMO_USER).expect("the demo user is a valid ID"),
        Duration::from_secs(24 * 3600),
    );
    let logs = (!options.json_logs).then(|| {
        let dir = source.get("LOG_DIR").unwrap_or(DEMO_LOG_DIR);
        PathBuf::from(dir).join("checkout.log")
    });
    let code = run_server(validated, &telemetry, |addr| {
        if let Ok(token) = &token {
            eprintln!(
                "{}",
                banner(&Banner {
                    addr,
                    token,
                    sandbox: &sandbox,
                    logs: logs.as_deref(),
                    secret_file: &secret_file,
                })
            );
        }
    })
    .await;
    sandbox.stop().await;
    telemetry.finish_export().await;
    code
}

async fn load_catalog(db: &crate::config::DbSettings, catalog: &Catalog) -> anyhow::Result<()> {
    let store = Store::connect_lazy(db)?;
    let result = store
        .upsert_products(&catalog.products, crate::clock::Clock::system().now_ms())
        .await;
    store.close().await;
    Ok(result?)
}

/// The file holding the demo's JWT secret: beside its database.
fn secret_file(db: &std::path::Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".jwt-secret");
    db.with_file_name(name)
}

/// Writes the secret readable by its owner only.
fn write_secret(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(secret.as_bytes())
}

/// What the banner tells.
struct Banner<'a> {
    addr: SocketAddr,
    token: &'a str,
    sandbox: &'a Sandbox,
    logs: Option<&'a std::path::Path>,
    secret_file: &'a std::path::Path,
}

fn banner(b: &Banner<'_>) -> String {
    let base = format!("http://{}", b.addr);
    let logs = match b.logs {
        Some(file) => format!(
            "Logs (JSON lines) go to {file}; `checkout triage --logs {file}` reads them.\n\
             Run the demo with --json-logs to have them on stdout instead.",
            file = file.display()
        ),
        None => "Logs (JSON lines) go to stdout.".to_string(),
    };
    format!(
        r#"
checkout-service demo is running at {base}
  status page  {base}/status        alerts  {base}/alerts
  metrics      {base}/metrics       API     {base}/openapi.json
  health       {base}/health
  sandbox payment gateway {payment}   sandbox inventory {inventory}
{logs}

Try a checkout (paste into a shell):

TOKEN='{token}'
CART=$(curl -s -X POST {base}/api/carts -H "Authorization: Bearer $TOKEN" | sed -E 's/.*"cartId":"([^"]+)".*/\1/')
curl -s -X POST {base}/api/carts/$CART/items -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d '{{"sku":"SKU-TSHIRT","quantity":2}}'; echo
curl -s -i -X POST {base}/api/checkout/complete -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -H "Idempotency-Key: pay-$(date +%s%N)" -d "{{\"cartId\":\"$CART\",\"paymentToken\":\"tok_visa\",\"userId\":\"{user}\"}}"

Each payment attempt gets a key of its own: resend a request that timed out with
the same key, but pay again (say, after a declined card) with a new one.

A declined card: paymentToken "tok_chargeDeclined". A payment outage:
curl -s -X PUT {payment}/_control/faults -d '{{"refuse":true}}'   (undo: curl -s -X DELETE {payment}/_control/faults)
A token for another user: JWT_SECRET=$(cat {secret}) checkout token --user usr_789

Stop with Ctrl-C.
"#,
        token = b.token,
        payment = b.sandbox.payment_url(),
        inventory = b.sandbox.inventory_url(),
        user = DEMO_USER,
        secret = b.secret_file.display(),
    )
}
