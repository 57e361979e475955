//! The `checkout` command line: one binary, one subcommand per task. Each subcommand
//! is a library function in [`crate::commands`] or [`crate::demo`], so tests call them
//! the way `main` does. Exit codes: 0 success, 1 startup or validation failure, 2 usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A checkout API for online shops that fails honestly.
#[derive(Debug, Parser)]
#[command(name = "checkout", version = crate::telemetry::version(), about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything on this machine: SQLite, the demo catalog, the sandbox payment
    /// gateway and inventory service, and a token to try it with.
    Demo {
        /// Port of the API (bound on 127.0.0.1).
        #[arg(long, default_value_t = 3000)]
        port: u16,
        /// SQLite file to use.
        #[arg(long, default_value = "./checkout-demo.db")]
        db: PathBuf,
        /// Ports of the sandbox payment gateway and inventory service.
        #[arg(long, value_name = "PAYMENT,INVENTORY", default_value = "4010,4020", value_parser = parse_port_pair)]
        sandbox_ports: (u16, u16),
        /// JSON log records on stdout (as `serve` writes them) instead of in
        /// ./checkout-demo-logs.
        #[arg(long)]
        json_logs: bool,
    },
    /// Run the production server, configured from the environment; validates the
    /// configuration, the database and its schema before binding the port.
    #[command(after_help = crate::config::help())]
    Serve,
    /// Run the startup validation of `serve` and exit 0 (valid) or 1, without serving.
    #[command(after_help = crate::config::help())]
    Check,
    /// Apply pending migrations to DATABASE_URL and print the schema version.
    Migrate,
    /// Manage the product catalog in DATABASE_URL.
    Catalog {
        /// The catalog operation.
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Run the sandbox payment gateway and inventory service.
    Sandbox {
        /// Address to bind.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// Port of the payment gateway.
        #[arg(long, default_value_t = 4010)]
        payment_port: u16,
        /// Port of the inventory service.
        #[arg(long, default_value_t = 4020)]
        inventory_port: u16,
        /// Catalog file the inventory takes its stock from (the demo catalog if absent).
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// API key the gateway accepts (generated and printed if absent).
        #[arg(long, env = "PAYMENT_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
    },
    /// Say why 500s are happening: read JSON logs (and a live instance), walk the
    /// decision tree, print the category, the evidence and the fix.
    Triage {
        /// Log files (plain or gzip); `-` reads standard input.
        #[arg(long, num_args = 1.., value_name = "FILE", required_unless_present = "url")]
        logs: Vec<String>,
        /// A running instance to read /metrics, /health and /alerts from.
        #[arg(long, value_name = "http://host:port")]
        url: Option<String>,
        /// Only the last stretch of the logs, such as 30m (ending at the newest record).
        #[arg(long, value_parser = parse_ttl)]
        since: Option<std::time::Duration>,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
        /// Print this error's record and every other record of its request.
        #[arg(long, value_name = "ERR-...", requires = "logs")]
        error_id: Option<String>,
    },
    /// Print a bearer token for a user, signed with JWT_SECRET.
    Token {
        /// The user (the token's `sub`).
        #[arg(long)]
        user: String,
        /// How long the token is valid, such as 15m, 1h or 7d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: std::time::Duration,
    },
}

/// Catalog operations.
#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Load products (sku, name, priceCents, currency) from a JSON file, all or none.
    Import {
        /// The catalog file: {"products": [{"sku", "name", "priceCents", "currency"}]}.
        file: PathBuf,
    },
}

fn parse_port_pair(text: &str) -> Result<(u16, u16), String> {
    let (a, b) = text
        .split_once(',')
        .ok_or_else(|| "expected two ports separated by a comma, such as 4010,4020".to_string())?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|_| format!("'{p}' is not a port number"))
    };
    Ok((port(a)?, port(b)?))
}

fn parse_ttl(text: &str) -> Result<std::time::Duration, String> {
    let ttl = crate::clock::parse_duration(text)?;
    if ttl.is_zero() {
        return Err("the ttl must be longer than zero".into());
    }
    Ok(ttl)
}

/// Runs a parsed command line to completion.
pub fn run(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("STARTUP_FAILURE: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Demo {
                port,
                db,
                sandbox_ports,
                json_logs,
            } => {
                crate::demo::run(crate::demo::DemoOptions {
                    port,
                    db,
                    sandbox_ports,
                    json_logs,
                })
                .await
            }
            Command::Serve => crate::commands::serve().await,
            Command::Check => crate::commands::check().await,
            Command::Migrate => crate::commands::migrate().await,
            Command::Catalog {
                command: CatalogCommand::Import { file },
            } => crate::commands::import_catalog(&file).await,
            Command::Sandbox {
                host,
                payment_port,
                inventory_port,
                catalog,
                api_key,
            } => crate::commands::sandbox(host, payment_port, inventory_port, catalog, api_key).await,
            Command::Token { user, ttl } => crate::commands::token(&user, ttl),
            Command::Triage {
                logs,
                url,
                since,
                json,
                error_id,
            } => {
                crate::commands::triage(&crate::triage::Options {
                    logs,
                    url,
                    since,
                    json,
                    error_id,
                })
                .await
            }
        }
    });
    // Background work (log writers, pools) must not keep a finished command alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sandbox_ports_and_ttls_parse() {
        assert_eq!(parse_port_pair("4010,4020"), Ok((4010, 4020)));
        assert!(parse_port_pair("4010").is_err());
        assert!(parse_port_pair("4010,x").is_err());
        assert_eq!(parse_ttl("1h"), Ok(std::time::Duration::from_secs(3600)));
        assert!(parse_ttl("0s").is_err());
    }
}
