//! Typed configuration read from the environment (and from the TOML file named by
//! `CHECKOUT_CONFIG`; the environment wins), validated once at startup. Every
//! problem is reported, each naming its variable; a misspelt variable is one of
//! them ([`variables`]); secrets cannot be printed.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use tracing_subscriber::filter::LevelFilter;

use crate::telemetry::{LogConfig, LogFormat};

/// The variable that names an optional TOML configuration file.
pub const CONFIG_FILE_VAR: &str = "CHECKOUT_CONFIG";

mod variables;

pub use variables::{VARIABLES, Variable, help, is_known, unknown_variables};

/// The shortest `JWT_SECRET` accepted: HS256 keys below 256 bits can be brute-forced.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// One configuration problem; its text follows `STARTUP_FAILURE: `.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem(pub String);

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Raw configuration values by variable name.
#[derive(Clone, Debug, Default)]
pub struct Source {
    values: HashMap<String, String>,
}

impl Source {
    /// Reads the process environment, over the file named by `CHECKOUT_CONFIG` if
    /// any; a variable that looks meant for the service but is not one it reads
    /// is a problem.
    pub fn from_env() -> (Source, Vec<Problem>) {
        let env = |key: &str| std::env::var(key).ok();
        let (source, mut problems) = Self::from_lookup(env);
        let names: Vec<String> = std::env::vars_os()
            .filter_map(|(name, _)| name.into_string().ok())
            .collect();
        problems.extend(unknown_variables(names.iter().map(String::as_str)));
        (source, problems)
    }

    /// Like [`Source::from_env`], but reads variables through `lookup` (for tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> (Source, Vec<Problem>) {
        let mut problems = Vec::new();
        let mut values = HashMap::new();
        if let Some(path) = lookup(CONFIG_FILE_VAR).filter(|p| !p.is_empty()) {
            match read_config_file(&path) {
                Ok(file_values) => values.extend(file_values),
                Err(problem) => problems.push(problem),
            }
        }
        for variable in VARIABLES {
            if let Some(value) = lookup(variable.name) {
                values.insert(variable.name.to_string(), value);
            }
        }
        (Source { values }, problems)
    }

    /// A source holding exactly `pairs`.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Source {
        Source {
            values: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
        }
    }

    /// Sets `key`, replacing any earlier value.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.values.insert(key.to_string(), value.into());
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }
}

fn read_config_file(path: &str) -> Result<HashMap<String, String>, Problem> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Problem(if e.kind() == std::io::ErrorKind::NotFound {
            format!("Configuration file '{path}' named by {CONFIG_FILE_VAR} does not exist.")
        } else {
            format!("Configuration file '{path}' named by {CONFIG_FILE_VAR} cannot be read: {e}.")
        })
    })?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        Problem(format!(
            "Configuration file '{path}' named by {CONFIG_FILE_VAR} is not valid TOML: {}",
            e.message()
        ))
    })?;
    let mut values = HashMap::new();
    for (key, value) in table {
        let upper = key.to_ascii_uppercase();
        if !is_known(&upper) || key != key.to_ascii_lowercase() {
            return Err(Problem(format!(
                "Configuration file '{path}' sets unknown key '{key}' (keys are the variable names in lower case)."
            )));
        }
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => {
                return Err(Problem(format!(
                    "Configuration file '{path}' sets '{key}' to a value that is not a string, integer or boolean."
                )));
            }
        };
        values.insert(upper, text);
    }
    Ok(values)
}

/// Where the data lives.
#[derive(Clone)]
pub enum DatabaseUrl {
    /// An SQLite file (created if missing).
    Sqlite {
        /// Path of the database file.
        path: PathBuf,
    },
    /// A PostgreSQL server; the URL may carry a password, so it is kept secret.
    Postgres(SecretString),
}

impl DatabaseUrl {
    /// Parses `sqlite://PATH`, `sqlite:PATH` or `postgres://...` / `postgresql://...`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(rest) = text.strip_prefix("sqlite://").or_else(|| text.strip_prefix("sqlite:")) {
            let path = rest.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err("an sqlite:// URL needs a file path, as in sqlite://./checkout.db".into());
            }
            return Ok(DatabaseUrl::Sqlite {
                path: PathBuf::from(path),
            });
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Url::parse(text).map_err(|e| format!("it is not a valid URL ({e})"))?;
            return Ok(DatabaseUrl::Postgres(SecretString::from(text.to_string())));
        }
        Err("it must start with sqlite:// or postgres://".into())
    }

    /// The URL with any password replaced by `***`, safe to log.
    pub fn redacted(&self) -> String {
        match self {
            DatabaseUrl::Sqlite { path } => format!("sqlite://{}", path.display()),
            DatabaseUrl::Postgres(secret) => match Url::parse(secret.expose_secret()) {
                Ok(mut url) => {
                    if url.password().is_some() {
                        let _ = url.set_password(Some("***"));
                    }
                    url.to_string()
                }
                Err(_) => "postgres://***".to_string(),
            },
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Database pool bounds.
#[derive(Clone, Debug)]
pub struct DbSettings {
    /// Where the data lives.
    pub url: DatabaseUrl,
    /// Most connections the pool opens.
    pub pool_max: u32,
    /// Longest wait for a free connection before answering 503.
    pub acquire_timeout: Duration,
    /// Longest a statement may run.
    pub statement_timeout: Duration,
}

/// Circuit breaker thresholds for one dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long the circuit stays open before it lets one probe through.
    pub recovery: Duration,
}

/// How to reach one HTTP dependency.
#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    /// Base URL.
    pub url: Url,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Bound on a whole call.
    pub timeout: Duration,
    /// Circuit breaker thresholds.
    pub breaker: BreakerSettings,
}

/// The payment provider and what it needs.
#[derive(Clone, Debug)]
pub enum PaymentProvider {
    /// The sandbox gateway's API (`PAYMENT_GATEWAY_URL`), the default.
    Sandbox {
        /// Sent as `Authorization: Bearer <key>`.
        api_key: SecretString,
    },
    /// Stripe's PaymentIntents (`STRIPE_API_BASE`).
    Stripe(StripeSettings),
}

/// What `PAYMENT_PROVIDER=stripe` needs.
#[derive(Clone, Debug)]
pub struct StripeSettings {
    /// `sk_...`, sent as `Authorization: Bearer <key>`.
    pub secret_key: SecretString,
    /// `whsec_...`, the key of webhook signatures.
    pub webhook_secret: SecretString,
    /// A payment waiting for the buyer (3-D Secure) is cancelled after this.
    pub action_timeout: Duration,
}

/// Spans exported over OTLP/HTTP.
#[derive(Clone, Debug)]
pub struct OtelSettings {
    /// The collector's base URL; spans go to `<endpoint>/v1/traces`.
    pub endpoint: Url,
    /// `service.name` of every span.
    pub service_name: String,
}

/// Everything `serve` needs, validated.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Database location and pool bounds.
    pub db: DbSettings,
    /// The payment provider's API: its URL, timeouts and breaker.
    pub payment: UpstreamSettings,
    /// Which payment provider, with its secrets.
    pub provider: PaymentProvider,
    /// The inventory service.
    pub inventory: UpstreamSettings,
    /// HS256 key for bearer tokens.
    pub jwt_secret: SecretString,
    /// What tokens must satisfy beyond their signature.
    pub token_rules: crate::auth::TokenRules,
    /// Address to bind.
    pub host: IpAddr,
    /// Port to bind (0 picks a free one).
    pub port: u16,
    /// This instance's name in alerts and records (`INSTANCE_ID`).
    pub instance_id: String,
    /// Bound on a whole request.
    pub request_timeout: Duration,
    /// Requests served at once before new ones are shed with 503.
    pub max_in_flight: usize,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Bound on receiving a request's headers.
    pub header_read_timeout: Duration,
    /// Bound on receiving a request's body.
    pub body_read_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    pub keepalive_idle_timeout: Duration,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// Logging.
    pub log: LogConfig,
    /// Where firing and resolved alerts are POSTed.
    pub alert_webhook_url: Option<Url>,
    /// Apply pending migrations at startup instead of refusing to start.
    pub migrate_on_start: bool,
    /// Longest wait for in-flight requests on SIGTERM.
    pub shutdown_timeout: Duration,
    /// How long the server keeps serving after SIGTERM, readiness failing.
    pub shutdown_drain_delay: Duration,
    /// Period of the `resources` log record.
    pub resources_interval: Duration,
    /// Period of alert evaluation.
    pub alert_eval_interval: Duration,
    /// Period of the reconciler's sweep for unfinished checkouts.
    pub reconcile_interval: Duration,
    /// How often the gateway is asked again for a charge that may land late.
    pub recheck_interval: Duration,
    /// Span export, when configured.
    pub otel: Option<OtelSettings>,
}

/// Collects values and problems while reading a [`Source`].
struct Reader<'a> {
    source: &'a Source,
    problems: Vec<Problem>,
}

impl<'a> Reader<'a> {
    fn required(&mut self, key: &str) -> Option<String> {
        match self.source.get(key) {
            None => {
                self.problems
                    .push(Problem(format!("Required environment variable '{key}' is not set.")));
                None
            }
            Some(value) if value.trim().is_empty() => {
                self.problems
                    .push(Problem(format!("Required environment variable '{key}' is empty.")));
                None
            }
            Some(value) => Some(value.to_string()),
        }
    }

    fn optional(&self, key: &str) -> Option<&'a str> {
        self.source.get(key).filter(|v| !v.trim().is_empty())
    }

    fn number<T>(&mut self, key: &str, default: T, range: std::ops::RangeInclusive<T>) -> T
    where
        T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
    {
        let Some(text) = self.optional(key) else {
            return default;
        };
        match text.trim().parse::<T>() {
            Ok(value) if range.contains(&value) => value,
            _ => {
                self.problems.push(Problem(format!(
                    "Environment variable '{key}' must be a whole number from {} to {}, got '{text}'.",
                    range.start(),
                    range.end()
                )));
                default
            }
        }
    }

    fn millis(&mut self, key: &str, default: u64, range: std::ops::RangeInclusive<u64>) -> Duration {
        Duration::from_millis(self.number(key, default, range))
    }

    fn boolean(&mut self, key: &str, default: bool) -> bool {
        match self.optional(key).map(|v| v.trim().to_ascii_lowercase()) {
            None => default,
            Some(v) if matches!(v.as_str(), "true" | "1" | "yes") => true,
            Some(v) if matches!(v.as_str(), "false" | "0" | "no") => false,
            Some(v) => {
                self.problems.push(Problem(format!(
                    "Environment variable '{key}' must be true or false, got '{v}'."
                )));
                default
            }
        }
    }

    /// A key sent as `Authorization: Bearer <key>`: printable ASCII without spaces.
    fn header_safe(&mut self, key: &str, value: String) -> Option<SecretString> {
        if value.bytes().all(|b| b.is_ascii_graphic()) {
            Some(SecretString::from(value))
        } else {
            self.problems.push(Problem(format!(
                "Environment variable '{key}' must be printable ASCII without spaces (it is sent in an HTTP header)."
            )));
            None
        }
    }

    /// A dependency's base URL: as [`Reader::http_url`], without credentials (the
    /// payment gateway's key has a variable of its own, and no other is sent).
    fn dependency_url(&mut self, key: &str, text: Option<String>) -> Option<Url> {
        let url = self.http_url(key, text)?;
        if !url.username().is_empty() || url.password().is_some() {
            self.problems.push(Problem(format!(
                "Environment variable '{key}' must not carry credentials (user:password@)."
            )));
            return None;
        }
        Some(url)
    }

    fn http_url(&mut self, key: &str, text: Option<String>) -> Option<Url> {
        let text = text?;
        match Url::parse(text.trim()) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Some(url),
            Ok(_) => {
                self.problems.push(Problem(format!(
                    "Environment variable '{key}' must be an http:// or https:// URL with a host."
                )));
                None
            }
            Err(e) => {
                self.problems.push(Problem(format!(
                    "Environment variable '{key}' is not a valid URL ({e})."
                )));
                None
            }
        }
    }
}

/// Reads the sandbox gateway's URL and key.
fn read_sandbox(reader: &mut Reader<'_>) -> (Option<Url>, Option<PaymentProvider>) {
    let url = reader.required("PAYMENT_GATEWAY_URL");
    let url = reader.dependency_url("PAYMENT_GATEWAY_URL", url);
    let api_key = reader
        .required("PAYMENT_API_KEY")
        .and_then(|key| reader.header_safe("PAYMENT_API_KEY", key));
    (url, api_key.map(|key| PaymentProvider::Sandbox { api_key: key }))
}

/// Reads Stripe's URL, keys and action timeout.
fn read_stripe(reader: &mut Reader<'_>) -> (Option<Url>, Option<PaymentProvider>) {
    let base = reader
        .optional("STRIPE_API_BASE")
        .unwrap_or("https://api.stripe.com")
        .to_string();
    let url = reader.dependency_url("STRIPE_API_BASE", Some(base));
    let secret_key = reader
        .required("STRIPE_SECRET_KEY")
        .and_then(|key| reader.header_safe("STRIPE_SECRET_KEY", key));
    let webhook_secret = reader.required("STRIPE_WEBHOOK_SECRET").map(SecretString::from);
    let action_timeout = reader.millis("STRIPE_ACTION_TIMEOUT_MS", 3_600_000, 1000..=7 * 86_400_000);
    let provider = match (secret_key, webhook_secret) {
        (Some(secret_key), Some(webhook_secret)) => Some(PaymentProvider::Stripe(StripeSettings {
            secret_key,
            webhook_secret,
            action_timeout,
        })),
        _ => None,
    };
    (url, provider)
}

/// This machine's name, for the default `INSTANCE_ID`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Reads `DATABASE_URL` and the `DB_*` bounds.
fn read_db(reader: &mut Reader<'_>) -> Option<DbSettings> {
    let url = reader.required("DATABASE_URL").and_then(|text| {
        DatabaseUrl::parse(text.trim())
            .map_err(|why| {
                reader.problems.push(Problem(format!(
                    "Environment variable 'DATABASE_URL' is not usable: {why}."
                )))
            })
            .ok()
    });
    let pool_max = reader.number("DB_POOL_MAX", 10, 1..=1000);
    let acquire_timeout = reader.millis("DB_ACQUIRE_TIMEOUT_MS", 2000, 1..=600_000);
    let statement_timeout = reader.millis("DB_STATEMENT_TIMEOUT_MS", 5000, 1..=600_000);
    Some(DbSettings {
        url: url?,
        pool_max,
        acquire_timeout,
        statement_timeout,
    })
}

/// The database settings alone, for commands that need nothing else (`migrate`,
/// `catalog import`) and for checking the database when other settings are wrong.
pub fn database_settings(source: &Source) -> Result<DbSettings, Vec<Problem>> {
    let mut reader = Reader {
        source,
        problems: Vec::new(),
    };
    match read_db(&mut reader) {
        Some(db) if reader.problems.is_empty() => Ok(db),
        _ => Err(reader.problems),
    }
}

/// Reads the logging settings alone, falling back to defaults for bad values, so that
/// problems with the rest of the configuration can still be logged.
pub fn log_config(source: &Source) -> (LogConfig, Vec<Problem>) {
    let mut reader = Reader {
        source,
        problems: Vec::new(),
    };
    let defaults = LogConfig::default();
    let level = match reader.optional("LOG_LEVEL").map(|l| l.trim().to_ascii_lowercase()) {
        None => defaults.level,
        Some(level) => match level.as_str() {
            "trace" => LevelFilter::TRACE,
            "debug" => LevelFilter::DEBUG,
            "info" => LevelFilter::INFO,
            "warn" => LevelFilter::WARN,
            "error" => LevelFilter::ERROR,
            _ => {
                reader.problems.push(Problem(format!(
                    "Environment variable 'LOG_LEVEL' must be one of trace, debug, info, warn, error, got '{level}'."
                )));
                defaults.level
            }
        },
    };
    let format = match reader.optional("LOG_FORMAT").map(|f| f.trim().to_ascii_lowercase()) {
        None => defaults.format,
        Some(format) => match format.as_str() {
            "json" => LogFormat::Json,
            "pretty" => LogFormat::Pretty,
            _ => {
                reader.problems.push(Problem(format!(
                    "Environment variable 'LOG_FORMAT' must be json or pretty, got '{format}'."
                )));
                defaults.format
            }
        },
    };
    let dir = reader.optional("LOG_DIR").map(PathBuf::from);
    if let Some(dir) = &dir
        && let Err(problem) = check_log_dir(dir)
    {
        reader.problems.push(problem);
    }
    let max_files = reader.number("LOG_MAX_FILES", defaults.max_files, 1..=10_000);
    let max_file_bytes = reader.number("LOG_MAX_FILE_BYTES", defaults.max_file_bytes, 4096..=u64::MAX);
    let config = LogConfig {
        level,
        format,
        dir,
        max_files,
        max_file_bytes,
        stdout: true,
    };
    (config, reader.problems)
}

fn check_log_dir(dir: &std::path::Path) -> Result<(), Problem> {
    let problem = |why: String| {
        Problem(format!(
            "Environment variable 'LOG_DIR' names '{}', which {why}.",
            dir.display()
        ))
    };
    std::fs::create_dir_all(dir).map_err(|e| problem(format!("cannot be created ({e})")))?;
    let probe = dir.join(".checkout-write-test");
    std::fs::write(&probe, b"").map_err(|e| problem(format!("is not writable ({e})")))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

impl Settings {
    /// Validates `source`, reporting every problem found.
    pub fn from_source(source: &Source) -> Result<Settings, Vec<Problem>> {
        let mut reader = Reader {
            source,
            problems: Vec::new(),
        };
        let db = read_db(&mut reader);
        let provider_name = reader
            .optional("PAYMENT_PROVIDER")
            .map_or_else(|| "sandbox".to_string(), |p| p.trim().to_ascii_lowercase());
        let (payment_url, provider) = match provider_name.as_str() {
            "stripe" => read_stripe(&mut reader),
            "sandbox" => read_sandbox(&mut reader),
            other => {
                reader.problems.push(Problem(format!(
                    "Environment variable 'PAYMENT_PROVIDER' must be sandbox or stripe, got '{other}'."
                )));
                (None, None)
            }
        };
        let inventory_url = reader.required("INVENTORY_SERVICE_URL");
        let inventory_url = reader.dependency_url("INVENTORY_SERVICE_URL", inventory_url);
        let jwt_secret = reader.required("JWT_SECRET").and_then(|secret| {
            if secret.len() < MIN_JWT_SECRET_BYTES {
                reader.problems.push(Problem(format!(
                    "Environment variable 'JWT_SECRET' must be at least {MIN_JWT_SECRET_BYTES} bytes long (it is {}).",
                    secret.len()
                )));
                None
            } else {
                Some(SecretString::from(secret))
            }
        });
        let token_rules = crate::auth::TokenRules {
            max_ttl: Duration::from_secs(reader.number("JWT_MAX_TTL_SECONDS", 86_400, 1..=31_536_000)),
            issuer: reader.optional("JWT_ISSUER").map(|v| v.trim().to_string()),
            audience: reader.optional("JWT_AUDIENCE").map(|v| v.trim().to_string()),
        };

        let host = match reader.optional("HOST") {
            None => IpAddr::from([0, 0, 0, 0]),
            Some(text) => text.trim().parse().unwrap_or_else(|_| {
                reader.problems.push(Problem(format!(
                    "Environment variable 'HOST' must be an IP address such as 0.0.0.0 or 127.0.0.1, got '{text}'."
                )));
                IpAddr::from([0, 0, 0, 0])
            }),
        };
        let port = reader.number("PORT", 3000, 0..=65535);
        let instance_id = reader
            .optional("INSTANCE_ID")
            .map(|id| id.trim().to_string())
            .unwrap_or_else(|| format!("{}:{port}", hostname()));
        let payment_connect = reader.millis("PAYMENT_CONNECT_TIMEOUT_MS", 1000, 1..=600_000);
        let payment_timeout = reader.millis("PAYMENT_TIMEOUT_MS", 5000, 1..=600_000);
        let inventory_connect = reader.millis("INVENTORY_CONNECT_TIMEOUT_MS", 1000, 1..=600_000);
        let inventory_timeout = reader.millis("INVENTORY_TIMEOUT_MS", 3000, 1..=600_000);
        let payment_breaker = BreakerSettings {
            failure_threshold: reader.number("PAYMENT_BREAKER_FAILURE_THRESHOLD", 5, 1..=10_000),
            recovery: reader.millis("PAYMENT_BREAKER_RECOVERY_MS", 30_000, 1..=86_400_000),
        };
        let inventory_breaker = BreakerSettings {
            failure_threshold: reader.number("INVENTORY_BREAKER_FAILURE_THRESHOLD", 3, 1..=10_000),
            recovery: reader.millis("INVENTORY_BREAKER_RECOVERY_MS", 15_000, 1..=86_400_000),
        };
        let request_timeout = reader.millis("REQUEST_TIMEOUT_MS", 10_000, 1..=3_600_000);
        let max_in_flight = reader.number("MAX_IN_FLIGHT", 1024, 1..=1_000_000);
        let max_body_bytes = reader.number("MAX_BODY_BYTES", 65_536, 64..=64 * 1024 * 1024);
        let header_read_timeout = reader.millis("HEADER_READ_TIMEOUT_MS", 5000, 1..=600_000);
        let body_read_timeout = reader.millis("BODY_READ_TIMEOUT_MS", 10_000, 1..=600_000);
        let keepalive_idle_timeout = reader.millis("KEEPALIVE_IDLE_TIMEOUT_MS", 60_000, 1..=3_600_000);
        let max_connections = reader.number("MAX_CONNECTIONS", 10_000, 1..=1_000_000);
        let alert_webhook_url = reader
            .optional("ALERT_WEBHOOK_URL")
            .map(str::to_string)
            .and_then(|url| reader.http_url("ALERT_WEBHOOK_URL", Some(url)));
        let migrate_on_start = reader.boolean("MIGRATE_ON_START", false);
        let shutdown_timeout = reader.millis("SHUTDOWN_TIMEOUT_MS", 15_000, 0..=3_600_000);
        let shutdown_drain_delay = reader.millis("SHUTDOWN_DRAIN_DELAY_MS", 5000, 0..=3_600_000);
        let resources_interval = reader.millis("RESOURCES_INTERVAL_MS", 60_000, 100..=86_400_000);
        let alert_eval_interval = reader.millis("ALERT_EVAL_INTERVAL_MS", 5000, 100..=86_400_000);
        let otel = reader
            .optional("OTEL_EXPORTER_OTLP_ENDPOINT")
            .map(str::to_string)
            .and_then(|url| reader.http_url("OTEL_EXPORTER_OTLP_ENDPOINT", Some(url)))
            .map(|endpoint| OtelSettings {
                endpoint,
                service_name: reader
                    .optional("OTEL_SERVICE_NAME")
                    .map_or_else(|| crate::telemetry::SERVICE.to_string(), |name| name.trim().to_string()),
            });
        let (log, log_problems) = log_config(source);
        reader.problems.extend(log_problems);

        let mut problems = reader.problems;
        let (Some(db), Some(payment_url), Some(provider), Some(inventory_url), Some(jwt_secret)) =
            (db, payment_url, provider, inventory_url, jwt_secret)
        else {
            return Err(problems);
        };
        if !problems.is_empty() {
            problems.dedup();
            return Err(problems);
        }
        Ok(Settings {
            db,
            payment: UpstreamSettings {
                url: payment_url,
                connect_timeout: payment_connect,
                timeout: payment_timeout,
                breaker: payment_breaker,
            },
            provider,
            inventory: UpstreamSettings {
                url: inventory_url,
                connect_timeout: inventory_connect,
                timeout: inventory_timeout,
                breaker: inventory_breaker,
            },
            jwt_secret,
            token_rules,
            host,
            port,
            instance_id,
            request_timeout,
            max_in_flight,
            max_body_bytes,
            header_read_timeout,
            body_read_timeout,
            keepalive_idle_timeout,
            max_connections,
            log,
            alert_webhook_url,
            migrate_on_start,
            shutdown_timeout,
            shutdown_drain_delay,
            resources_interval,
            alert_eval_interval,
            reconcile_interval: Duration::from_secs(1),
            recheck_interval: Duration::from_secs(30),
            otel,
        })
    }

    /// The configuration as a JSON object with every secret replaced by `***`,
    /// for the `startup` log record.
    pub fn redacted(&self) -> serde_json::Value {
        let ms = crate::clock::whole_millis;
        let url = |u: &Url| {
            let mut u = u.clone();
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        };
        let fields: BTreeMap<&str, serde_json::Value> = BTreeMap::from([
            ("databaseUrl", json!(self.db.url.redacted())),
            (
                "paymentProvider",
                json!(match self.provider {
                    PaymentProvider::Sandbox { .. } => "sandbox",
                    PaymentProvider::Stripe(_) => "stripe",
                }),
            ),
            ("paymentGatewayUrl", json!(url(&self.payment.url))),
            ("paymentApiKey", json!("***")),
            ("inventoryServiceUrl", json!(url(&self.inventory.url))),
            ("jwtSecret", json!("***")),
            ("host", json!(self.host.to_string())),
            ("port", json!(self.port)),
            ("dbPoolMax", json!(self.db.pool_max)),
            ("dbAcquireTimeoutMs", json!(ms(self.db.acquire_timeout))),
            ("dbStatementTimeoutMs", json!(ms(self.db.statement_timeout))),
            ("paymentConnectTimeoutMs", json!(ms(self.payment.connect_timeout))),
            ("paymentTimeoutMs", json!(ms(self.payment.timeout))),
            ("inventoryConnectTimeoutMs", json!(ms(self.inventory.connect_timeout))),
            ("inventoryTimeoutMs", json!(ms(self.inventory.timeout))),
            (
                "paymentBreakerFailureThreshold",
                json!(self.payment.breaker.failure_threshold),
            ),
            ("paymentBreakerRecoveryMs", json!(ms(self.payment.breaker.recovery))),
            (
                "inventoryBreakerFailureThreshold",
                json!(self.inventory.breaker.failure_threshold),
            ),
            ("inventoryBreakerRecoveryMs", json!(ms(self.inventory.breaker.recovery))),
            ("requestTimeoutMs", json!(ms(self.request_timeout))),
            ("maxInFlight", json!(self.max_in_flight)),
            ("maxBodyBytes", json!(self.max_body_bytes)),
            ("headerReadTimeoutMs", json!(ms(self.header_read_timeout))),
            ("bodyReadTimeoutMs", json!(ms(self.body_read_timeout))),
            ("keepaliveIdleTimeoutMs", json!(ms(self.keepalive_idle_timeout))),
            ("maxConnections", json!(self.max_connections)),
            ("instanceId", json!(self.instance_id)),
            ("jwtMaxTtlSeconds", json!(self.token_rules.max_ttl.as_secs())),
            ("jwtIssuer", json!(self.token_rules.issuer)),
            ("jwtAudience", json!(self.token_rules.audience)),
            ("shutdownDrainDelayMs", json!(ms(self.shutdown_drain_delay))),
            ("logMaxFileBytes", json!(self.log.max_file_bytes)),
            (
                "otelExporterOtlpEndpoint",
                json!(self.otel.as_ref().map(|o| url(&o.endpoint))),
            ),
            ("logLevel", json!(self.log.level.to_string().to_ascii_lowercase())),
            (
                "logFormat",
                json!(if self.log.format == LogFormat::Json {
                    "json"
                } else {
                    "pretty"
                }),
            ),
            ("logDir", json!(self.log.dir.as_ref().map(|d| d.display().to_string()))),
            ("logMaxFiles", json!(self.log.max_files)),
            ("alertWebhookUrl", json!(self.alert_webhook_url.as_ref().map(url))),
            ("migrateOnStart", json!(self.migrate_on_start)),
            ("shutdownTimeoutMs", json!(ms(self.shutdown_timeout))),
            ("resourcesIntervalMs", json!(ms(self.resources_interval))),
            ("alertEvalIntervalMs", json!(ms(self.alert_eval_interval))),
        ]);
        json!(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete() -> Source {
        Source::from_pairs([
            ("DATABASE_URL", "postgres://app:hunter2@127.0.0.1:5432/shop"),
            ("PAYMENT_GATEWAY_URL", "http://127.0.0.1:4010"),
            ("PAYMENT_API_KEY", "sk_test_very_secret"),
            ("INVENTORY_SERVICE_URL", "http://127.0.0.1:4020"),
            ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ])
    }

    #[test]
    fn a_complete_source_gets_the_documented_defaults() {
        let settings = Settings::from_source(&complete()).expect("valid");
        assert_eq!(settings.port, 3000);
        assert_eq!(settings.db.pool_max, 10);
        assert_eq!(settings.db.acquire_timeout, Duration::from_millis(2000));
        assert_eq!(settings.payment.breaker.failure_threshold, 5);
        assert_eq!(settings.inventory.breaker.recovery, Duration::from_secs(15));
        assert_eq!(settings.max_body_bytes, 65_536);
        assert!(!settings.migrate_on_start);
    }

    #[test]
    fn every_missing_variable_is_reported_with_the_exact_message() {
        let problems = Settings::from_source(&Source::default()).expect_err("nothing is set");
        let texts: Vec<_> = problems.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(
            texts,
            vec![
                "Required environment variable 'DATABASE_URL' is not set.",
                "Required environment variable 'PAYMENT_GATEWAY_URL' is not set.",
                "Required environment variable 'PAYMENT_API_KEY' is not set.",
                "Required environment variable 'INVENTORY_SERVICE_URL' is not set.",
                "Required environment variable 'JWT_SECRET' is not set.",
            ]
        );
    }

    #[test]
    fn bad_values_are_all_reported_and_never_echo_secrets() {
        let mut source = complete();
        source.set("JWT_SECRET", "too-short-secret");
        source.set("DB_POOL_MAX", "lots");
        source.set("PAYMENT_GATEWAY_URL", "not a url");
        source.set("LOG_FORMAT", "xml");
        let problems = Settings::from_source(&source).expect_err("invalid");
        assert_eq!(problems.len(), 4, "{problems:?}");
        let all = format!("{problems:?}");
        assert!(all.contains("'JWT_SECRET' must be at least 32 bytes"), "{all}");
        assert!(!all.contains("too-short-secret"), "{all}");
        assert!(all.contains("'DB_POOL_MAX'"), "{all}");
        assert!(all.contains("'PAYMENT_GATEWAY_URL'"), "{all}");
        assert!(all.contains("'LOG_FORMAT'"), "{all}");
    }

    #[test]
    fn dependency_urls_with_credentials_and_keys_unfit_for_a_header_are_refused_unechoed() {
        let mut source = complete();
        source.set("PAYMENT_GATEWAY_URL", "https://shop:pa55word@payments.example");
        source.set("INVENTORY_SERVICE_URL", "http://stock@127.0.0.1:4020");
        source.set("PAYMENT_API_KEY", "sk_live secret\nkey");
        let problems = Settings::from_source(&source).expect_err("invalid");
        let texts: Vec<_> = problems.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(
            texts,
            vec![
                "Environment variable 'PAYMENT_GATEWAY_URL' must not carry credentials (user:password@).",
                "Environment variable 'PAYMENT_API_KEY' must be printable ASCII without spaces \
                 (it is sent in an HTTP header).",
                "Environment variable 'INVENTORY_SERVICE_URL' must not carry credentials (user:password@).",
            ]
        );
        let all = format!("{problems:?}");
        assert!(!all.contains("pa55word") && !all.contains("secret"), "{all}");
    }

    #[test]
    fn redacted_configuration_hides_every_secret() {
        let settings = Settings::from_source(&complete()).expect("valid");
        let text = settings.redacted().to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("sk_test_very_secret"), "{text}");
        assert!(!text.contains("0123456789abcdef"), "{text}");
        assert!(text.contains("postgres://app:***@127.0.0.1:5432/shop"), "{text}");
        assert!(!format!("{settings:?}").contains("hunter2"));
    }

    #[test]
    fn a_config_file_is_read_and_the_environment_wins() {
        let dir = std::env::temp_dir().join(format!("checkout-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("checkout.toml");
        std::fs::write(
            &path,
            "port = 8080\ndb_pool_max = 4\njwt_secret = \"from-the-file-0123456789abcdef0123\"\n",
        )
        .expect("write config");
        let env = complete();
        let path_text = path.display().to_string();
        let (source, problems) = Source::from_lookup(|key| {
            if key == CONFIG_FILE_VAR {
                Some(path_text.clone())
            } else if key == "PORT" {
                Some("9090".into())
            } else {
                env.get(key).map(str::to_string)
            }
        });
        assert!(problems.is_empty(), "{problems:?}");
        let settings = Settings::from_source(&source).expect("valid");
        assert_eq!(settings.port, 9090);
        assert_eq!(settings.db.pool_max, 4);
        assert_eq!(settings.jwt_secret.expose_secret(), "0123456789abcdef0123456789abcdef");

        std::fs::write(&path, "db_pool_mx = 4\n").expect("write config");
        let (_, problems) = Source::from_lookup(|key| (key == CONFIG_FILE_VAR).then(|| path_text.clone()));
        assert!(problems[0].0.contains("unknown key 'db_pool_mx'"), "{problems:?}");
        let missing = dir.join("missing.toml").display().to_string();
        let (_, problems) = Source::from_lookup(|key| (key == CONFIG_FILE_VAR).then(|| missing.clone()));
        assert!(problems[0].0.contains("does not exist"), "{problems:?}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
