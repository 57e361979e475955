//! Every variable the service reads, with its default and meaning: the one list
//! behind `checkout serve --help`, the keys a `CHECKOUT_CONFIG` file may set, and
//! the check that a misspelt variable (`PAYMNET_TIMEOUT_MS`) stops the start
//! instead of being ignored.

use super::Problem;

/// One variable.
#[derive(Clone, Copy, Debug)]
pub struct Variable {
    /// Its name.
    pub name: &'static str,
    /// Its default, or `required` / `none`.
    pub default: &'static str,
    /// What it sets.
    pub about: &'static str,
}

const fn var(name: &'static str, default: &'static str, about: &'static str) -> Variable {
    Variable { name, default, about }
}

/// Every variable, required ones first.
pub const VARIABLES: &[Variable] = &[
    var(
        "DATABASE_URL",
        "required",
        "sqlite://PATH or postgres://USER:PASSWORD@HOST/DB",
    ),
    var(
        "PAYMENT_GATEWAY_URL",
        "required (sandbox)",
        "the payment gateway's base URL",
    ),
    var(
        "PAYMENT_API_KEY",
        "required (sandbox)",
        "the payment gateway's API key (secret)",
    ),
    var("INVENTORY_SERVICE_URL", "required", "the inventory service's base URL"),
    var(
        "JWT_SECRET",
        "required",
        "HS256 key of bearer tokens, at least 32 bytes (secret)",
    ),
    var("HOST", "0.0.0.0", "address to listen on"),
    var("PORT", "3000", "port to listen on"),
    var("DB_POOL_MAX", "10", "most database connections"),
    var(
        "DB_ACQUIRE_TIMEOUT_MS",
        "2000",
        "longest wait for a free database connection",
    ),
    var(
        "DB_STATEMENT_TIMEOUT_MS",
        "5000",
        "longest a database statement may run",
    ),
    var(
        "PAYMENT_CONNECT_TIMEOUT_MS",
        "1000",
        "bound on connecting to the payment gateway",
    ),
    var("PAYMENT_TIMEOUT_MS", "5000", "bound on a whole payment call"),
    var(
        "INVENTORY_CONNECT_TIMEOUT_MS",
        "1000",
        "bound on connecting to the inventory service",
    ),
    var("INVENTORY_TIMEOUT_MS", "3000", "bound on a whole inventory call"),
    var(
        "PAYMENT_BREAKER_FAILURE_THRESHOLD",
        "5",
        "consecutive failures that open the payment circuit",
    ),
    var(
        "PAYMENT_BREAKER_RECOVERY_MS",
        "30000",
        "how long the payment circuit stays open",
    ),
    var(
        "INVENTORY_BREAKER_FAILURE_THRESHOLD",
        "3",
        "consecutive failures that open the inventory circuit",
    ),
    var(
        "INVENTORY_BREAKER_RECOVERY_MS",
        "15000",
        "how long the inventory circuit stays open",
    ),
    var("REQUEST_TIMEOUT_MS", "10000", "bound on a whole request"),
    var(
        "MAX_IN_FLIGHT",
        "1024",
        "requests served at once before new ones get 503",
    ),
    var("MAX_BODY_BYTES", "65536", "largest request body"),
    var(
        "HEADER_READ_TIMEOUT_MS",
        "5000",
        "bound on receiving a request's headers",
    ),
    var(
        "BODY_READ_TIMEOUT_MS",
        "10000",
        "bound on receiving a request's body (then 408)",
    ),
    var(
        "KEEPALIVE_IDLE_TIMEOUT_MS",
        "60000",
        "an idle keep-alive connection is closed after this",
    ),
    var(
        "MAX_CONNECTIONS",
        "10000",
        "most open client connections; more are closed at once",
    ),
    var("LOG_LEVEL", "info", "trace, debug, info, warn or error"),
    var("LOG_FORMAT", "json", "json or pretty"),
    var(
        "LOG_DIR",
        "none (stdout only)",
        "also write logs to checkout.log in this directory",
    ),
    var(
        "LOG_MAX_FILES",
        "7",
        "log files kept in LOG_DIR, the current one included",
    ),
    var(
        "LOG_MAX_FILE_BYTES",
        "104857600",
        "a log file is rotated at this size (and daily)",
    ),
    var(
        "ALERT_WEBHOOK_URL",
        "none",
        "where firing and resolved alerts are POSTed",
    ),
    var(
        "MIGRATE_ON_START",
        "false",
        "apply pending migrations instead of refusing to start",
    ),
    var(
        "SHUTDOWN_TIMEOUT_MS",
        "15000",
        "longest wait for requests in flight on SIGTERM",
    ),
    var(
        "SHUTDOWN_DRAIN_DELAY_MS",
        "5000",
        "serve on after SIGTERM while readiness fails",
    ),
    var("RESOURCES_INTERVAL_MS", "60000", "period of the resources log record"),
    var("ALERT_EVAL_INTERVAL_MS", "5000", "period of alert evaluation"),
    var("JWT_MAX_TTL_SECONDS", "86400", "longest a token may be valid"),
    var("JWT_ISSUER", "none", "the iss tokens must carry, if set"),
    var("JWT_AUDIENCE", "none", "an aud tokens must carry, if set"),
    var(
        "INSTANCE_ID",
        "<hostname>:<PORT>",
        "this instance's name in alerts and records",
    ),
    var("PAYMENT_PROVIDER", "sandbox", "sandbox or stripe"),
    var(
        "STRIPE_SECRET_KEY",
        "required (stripe)",
        "Stripe's secret API key, sk_... (secret)",
    ),
    var(
        "STRIPE_WEBHOOK_SECRET",
        "required (stripe)",
        "the webhook endpoint's signing secret, whsec_... (secret)",
    ),
    var("STRIPE_API_BASE", "https://api.stripe.com", "Stripe's API base URL"),
    var(
        "STRIPE_ACTION_TIMEOUT_MS",
        "3600000",
        "a payment still waiting for the buyer is cancelled after this",
    ),
    var(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "none (no export)",
        "OTLP/HTTP collector to send spans to",
    ),
    var(
        "OTEL_SERVICE_NAME",
        "checkout-service",
        "service.name of exported spans",
    ),
];

/// Whether the service reads `name`.
pub fn is_known(name: &str) -> bool {
    VARIABLES.iter().any(|variable| variable.name == name)
}

/// Prefixes the service owns: a variable under one of them must be a known one.
const OWNED_PREFIXES: &[&str] = &[
    "DB",
    "PAYMENT",
    "INVENTORY",
    "LOG",
    "JWT",
    "STRIPE",
    "SHUTDOWN",
    "ALERT",
];

/// A problem for each variable in `names` that looks meant for this service but
/// is not one it reads: it starts with a prefix the service owns, or its first
/// word is one letter away from such a prefix (`PAYMNET_...`). Each names the
/// closest variable the service does read.
pub fn unknown_variables<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<Problem> {
    let mut problems: Vec<Problem> = names
        .into_iter()
        .filter(|name| !is_known(name))
        .filter(|name| {
            let Some((first, _)) = name.split_once('_') else {
                return false;
            };
            OWNED_PREFIXES.iter().any(|prefix| {
                *prefix == first || (prefix.len() >= 4 && strsim::damerau_levenshtein(prefix, first) == 1)
            })
        })
        .map(|name| {
            let closest = VARIABLES
                .iter()
                .min_by_key(|variable| strsim::damerau_levenshtein(variable.name, name))
                .map_or("", |variable| variable.name);
            Problem(format!(
                "Environment variable '{name}' is not one this service reads; did you mean '{closest}'? \
                 (checkout serve --help lists them all)"
            ))
        })
        .collect();
    problems.sort_by(|a, b| a.0.cmp(&b.0));
    problems
}

/// The list `checkout serve --help` ends with.
pub fn help() -> String {
    let width = VARIABLES.iter().map(|v| v.name.len()).max().unwrap_or(0);
    let mut text = String::from(
        "Configuration (environment variables; a TOML file named by CHECKOUT_CONFIG may set the same keys in lower case):\n",
    );
    for variable in VARIABLES {
        text.push_str(&format!(
            "  {:width$}  {} [default: {}]\n",
            variable.name, variable.about, variable.default
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_or_unknown_variable_of_ours_names_the_closest_one() {
        let problems = unknown_variables([
            "PAYMNET_TIMEOUT_MS",
            "DB_POOL_MAXIMUM",
            "PAYMENT_TIMEOUT_MS",
            "HOME",
            "PATH",
            "RUST_LOG",
            "CHECKOUT_CONFIG",
            "DATABSE_URL",
        ]);
        let texts: Vec<&str> = problems.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert!(
            texts[0].starts_with("Environment variable 'DB_POOL_MAXIMUM'"),
            "{texts:?}"
        );
        assert!(texts[0].contains("did you mean 'DB_POOL_MAX'?"), "{texts:?}");
        assert!(texts[1].contains("'PAYMNET_TIMEOUT_MS'"), "{texts:?}");
        assert!(texts[1].contains("did you mean 'PAYMENT_TIMEOUT_MS'?"), "{texts:?}");
    }

    #[test]
    fn the_help_lists_every_variable_with_its_default() {
        let help = help();
        for variable in VARIABLES {
            assert!(help.contains(variable.name), "{}", variable.name);
        }
        assert!(help.contains("[default: 5000]"));
    }
}
