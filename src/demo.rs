//! `checkout demo`: the whole system on one machine, for trying it out. SQLite,
//! migrations applied, the demo catalog loaded, the sandbox dependencies in-process,
//! a generated JWT secret, and a ready-to-paste curl flow on stderr (stdout keeps
//! carrying JSON logs only).

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
}

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
    let telemetry = match init_telemetry(&source) {
        Ok(telemetry) => telemetry,
        Err(code) => return code,
    };
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
    let code = run_server(validated, &telemetry, |addr| {
        if let Ok(token) = &token {
            eprintln!("{}", banner(addr, token, &sandbox));
        }
    })
    .await;
    sandbox.stop().await;
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

fn banner(addr: SocketAddr, token: &str, sandbox: &Sandbox) -> String {
    let base = format!("http://{addr}");
    format!(
        r#"
checkout-service demo is running at {base}
  sandbox payment gateway {payment}   sandbox inventory {inventory}
  health {base}/health   metrics {base}/metrics   API document {base}/openapi.json

Try a checkout (paste into a shell):

TOKEN='{token}'
CART=$(curl -s -X POST {base}/api/carts -H "Authorization: Bearer $TOKEN" | sed -E 's/.*"cartId":"([^"]+)".*/\1/')
curl -s -X POST {base}/api/carts/$CART/items -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d '{{"sku":"SKU-TSHIRT","quantity":2}}'; echo
curl -s -i -X POST {base}/api/checkout/complete -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -H "Idempotency-Key: $CART" -d "{{\"cartId\":\"$CART\",\"paymentToken\":\"tok_visa\",\"userId\":\"{user}\"}}"

A declined card: paymentToken "tok_chargeDeclined". A payment outage:
curl -s -X PUT {payment}/_control/faults -d '{{"refuse":true}}'   (undo: curl -s -X DELETE {payment}/_control/faults)

Stop with Ctrl-C.
"#,
        payment = sandbox.payment_url(),
        inventory = sandbox.inventory_url(),
        user = DEMO_USER,
    )
}
