//! Typed configuration read from the environment (and from the TOML file named by
//! `CHECKOUT_CONFIG`; the environment wins), validated once at startup. Every
//! problem is reported, each naming its variable; a misspelt variable is one of
//! them ([`variables`]); secrets cannot be printed.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::json;
use url::Url;

use crate::telemetry::{LogConfig, LogFormat};

mod database;
mod logging;
mod reader;
mod source;
mod variables;

pub use database::{DatabaseUrl, DbSettings, database_settings};
pub use logging::log_config;
pub use source::{CONFIG_FILE_VAR, Problem, Source};
pub use variables::{VARIABLES, Variable, help, is_known, unknown_variables};

use database::read_db;
use reader::Reader;

/// The shortest `JWT_SECRET` accepted: HS256 keys below 256 bits can be brute-forced.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

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

pub use crate::telemetry::trace::OtelSettings;

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

/// Reads the sandbox gateway's URL and key.
fn read_sandbox(reader: &mut Reader<'_>) -> (Option<Url>, Option<PaymentProvider>) {
    let url = reader.required("PAYMENT_GATEWAY_URL");
    let url = reader.dependency_url("PAYMENT_GATEWAY_URL", url);
    let api_key = reader
        .required("PAYMENT_API_KEY")
        .and_then(|key| reader.header_safe("PAYMENT_API_KEY", key));
    (url, api_key.map(|key| PaymentProvider::Sandbox { api_key: key }))
}

/// Reads where spans are exported, if anywhere.
fn read_otel(reader: &mut Reader<'_>) -> Option<OtelSettings> {
    reader
        .optional("OTEL_EXPORTER_OTLP_ENDPOINT")
        .map(str::to_string)
        .and_then(|url| reader.http_url("OTEL_EXPORTER_OTLP_ENDPOINT", Some(url)))
        .map(|endpoint| OtelSettings {
            endpoint,
            service_name: reader
                .optional("OTEL_SERVICE_NAME")
                .map_or_else(|| crate::telemetry::SERVICE.to_string(), |name| name.trim().to_string()),
        })
}

/// The `OTEL_*` settings alone, for the log pipeline that starts before the rest is
/// validated (a bad value is reported by validation).
pub fn otel_settings(source: &Source) -> Option<OtelSettings> {
    read_otel(&mut Reader {
        source,
        problems: Vec::new(),
    })
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
        let otel = read_otel(&mut reader);
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
    use secrecy::ExposeSecret as _;

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
