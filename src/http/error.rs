//! The one error type at the HTTP edge, [`ApiError`], and how each variant becomes a
//! response: the status and code of the contract's error table, a message written
//! for the client, and nothing internal. Building the response has no side effect:
//! the error's code, and for a 5xx its cause ([`ErrorReport`]), travel in an
//! [`ErrorOutcome`] response extension, and the request middleware writes the
//! access record and the single ERROR record from it.

use std::borrow::Cow;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::Rng;

use crate::auth::AuthError;
use crate::clock::{self, Clock};
pub use crate::resilience::Dependency;
use crate::service::ServiceError;
use crate::store::StoreError;
use crate::upstream::UpstreamError;

/// `X-Error-Id`: the error ID of a 5xx, also in its body and its log record.
pub static X_ERROR_ID: HeaderName = HeaderName::from_static("x-error-id");

/// `ERR-`, Unix milliseconds, `-`, six characters of `[0-9A-Z]`.
pub fn new_error_id() -> String {
    const CHARS: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut id = format!("ERR-{}-", Clock::system().now_ms());
    // Six base-36 digits of one 64-bit draw: 36^6 is a 2^-33 part of its range,
    // so the digits are as good as uniform.
    let mut bits: u64 = rand::rng().random();
    for _ in 0..6 {
        id.push(char::from(CHARS[(bits % 36) as usize]));
        bits /= 36;
    }
    id
}

pub use crate::upstream::SHORT_BACKOFF;

/// Everything that can go wrong in a request, by the answer it gets.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the checkout body lacks required fields.
    MissingRequiredFields(Vec<&'static str>),
    /// 400: the body is not JSON, or not a JSON object.
    InvalidJson(String),
    /// 400: a field has the wrong type, length or range.
    InvalidField {
        /// The field (or header) at fault.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// 401: the bearer token is missing, malformed, badly signed or expired.
    Unauthenticated(AuthError),
    /// 403: the request acts for another user.
    Forbidden,
    /// 404: no such route.
    NotFound,
    /// 404: the cart has no line for this SKU.
    LineNotFound(String),
    /// 404: no such cart (for this caller).
    CartNotFound,
    /// 404: no such order.
    OrderNotFound,
    /// 404: no such product.
    UnknownSku(String),
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 409: checkout of a cart without items.
    CartEmpty,
    /// 409: the cart is being checked out by another request.
    CheckoutInProgress,
    /// 409: items can only change while the cart is open.
    CartNotOpen(&'static str),
    /// 409: the product is priced in another currency than the cart.
    CurrencyMismatch(String),
    /// 409: the cart would exceed its size limits.
    CartLimitExceeded(String),
    /// 409: the inventory cannot reserve these SKUs.
    InventoryConflict(Vec<String>),
    /// 402: the card was declined.
    PaymentDeclined(String),
    /// 413: the body exceeds `MAX_BODY_BYTES`.
    PayloadTooLarge(usize),
    /// 408: the body did not arrive within `BODY_READ_TIMEOUT_MS`.
    RequestTimeout(Duration),
    /// 415: a body was sent without a JSON content type.
    UnsupportedMediaType,
    /// 422: an `Idempotency-Key` replayed with a different body.
    IdempotencyKeyReused,
    /// 503: a dependency is down, slow, or its circuit is open; or this server is
    /// overloaded or shutting down.
    Unavailable {
        /// What failed.
        dependency: Dependency,
        /// When retrying makes sense.
        retry_after: Duration,
        /// A short name for logs and metrics (`CircuitOpen`, `DbPoolExhausted`, ...).
        class: &'static str,
        /// The cause, for the log.
        cause: anyhow::Error,
    },
    /// 500: anything unexpected, panics included.
    Internal {
        /// A short name for logs and metrics.
        class: &'static str,
        /// The dependency involved (one that refused our credentials or our
        /// request), for the log; the client is not told.
        dependency: Option<Dependency>,
        /// The cause, for the log.
        cause: anyhow::Error,
    },
}

impl ApiError {
    /// A 500 for `cause`, grouped under `class`.
    pub fn internal(class: &'static str, cause: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal {
            class,
            dependency: None,
            cause: cause.into(),
        }
    }

    /// A 503 blaming `dependency`.
    pub fn unavailable(
        dependency: Dependency,
        retry_after: Duration,
        class: &'static str,
        cause: impl Into<anyhow::Error>,
    ) -> Self {
        ApiError::Unavailable {
            dependency,
            retry_after,
            class,
            cause: cause.into(),
        }
    }

    /// An invalid field.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        ApiError::InvalidField {
            field,
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MissingRequiredFields(_) | ApiError::InvalidJson(_) | ApiError::InvalidField { .. } => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound
            | ApiError::LineNotFound(_)
            | ApiError::CartNotFound
            | ApiError::OrderNotFound
            | ApiError::UnknownSku(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::CartEmpty
            | ApiError::CheckoutInProgress
            | ApiError::CartNotOpen(_)
            | ApiError::CurrencyMismatch(_)
            | ApiError::CartLimitExceeded(_)
            | ApiError::InventoryConflict(_) => StatusCode::CONFLICT,
            ApiError::PaymentDeclined(_) => StatusCode::PAYMENT_REQUIRED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error` code of the body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MissingRequiredFields(_) => "MISSING_REQUIRED_FIELDS",
            ApiError::InvalidJson(_) => "INVALID_JSON",
            ApiError::InvalidField { .. } => "INVALID_FIELD",
            ApiError::Unauthenticated(_) => "UNAUTHENTICATED",
            ApiError::Forbidden => "FORBIDDEN",
            ApiError::NotFound | ApiError::LineNotFound(_) => "NOT_FOUND",
            ApiError::CartNotFound => "CART_NOT_FOUND",
            ApiError::OrderNotFound => "ORDER_NOT_FOUND",
            ApiError::UnknownSku(_) => "UNKNOWN_SKU",
            ApiError::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ApiError::CartEmpty => "CART_EMPTY",
            ApiError::CheckoutInProgress => "CHECKOUT_IN_PROGRESS",
            ApiError::CartNotOpen(_) => "CART_NOT_OPEN",
            ApiError::CurrencyMismatch(_) => "CURRENCY_MISMATCH",
            ApiError::CartLimitExceeded(_) => "CART_LIMIT_EXCEEDED",
            ApiError::InventoryConflict(_) => "INVENTORY_CONFLICT",
            ApiError::PaymentDeclined(_) => "PAYMENT_DECLINED",
            ApiError::PayloadTooLarge(_) => "PAYLOAD_TOO_LARGE",
            ApiError::RequestTimeout(_) => "REQUEST_TIMEOUT",
            ApiError::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            ApiError::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            ApiError::Unavailable { .. } => "SERVICE_TEMPORARILY_UNAVAILABLE",
            ApiError::Internal { .. } => "INTERNAL_SERVER_ERROR",
        }
    }

    fn message(&self) -> Cow<'static, str> {
        match self {
            ApiError::MissingRequiredFields(_) => "cartId, paymentToken, and userId are all required".into(),
            ApiError::InvalidJson(why) => format!("The request body must be a JSON object: {why}").into(),
            ApiError::InvalidField { field, message } => format!("Field '{field}' {message}").into(),
            ApiError::Unauthenticated(why) => format!("A valid bearer token is required: {why}").into(),
            ApiError::Forbidden => "You may not act on behalf of another user or on their carts and orders.".into(),
            ApiError::NotFound => "No such route.".into(),
            ApiError::LineNotFound(sku) => format!("The cart has no line for SKU '{sku}'.").into(),
            ApiError::CartNotFound => "No such cart.".into(),
            ApiError::OrderNotFound => "No such order.".into(),
            ApiError::UnknownSku(sku) => format!("No product has SKU '{sku}'.").into(),
            ApiError::MethodNotAllowed => "This route does not support that method.".into(),
            ApiError::CartEmpty => "The cart has no items to check out.".into(),
            ApiError::CheckoutInProgress => {
                "This cart is being checked out by another request; wait for it to finish.".into()
            }
            ApiError::CartNotOpen(status) => format!("The cart is {status}, so its items can no longer change.").into(),
            ApiError::CurrencyMismatch(why) | ApiError::CartLimitExceeded(why) => format!("{why}.").into(),
            ApiError::InventoryConflict(_) => "One or more items in your cart are no longer available".into(),
            ApiError::PaymentDeclined(_) => {
                "Your payment was declined. Please check your card details and try again.".into()
            }
            ApiError::PayloadTooLarge(limit) => format!("The request body is larger than {limit} bytes.").into(),
            ApiError::RequestTimeout(limit) => format!(
                "The request body did not arrive within {}ms.",
                clock::whole_millis(*limit)
            )
            .into(),
            ApiError::UnsupportedMediaType => "Send the request body as application/json.".into(),
            ApiError::IdempotencyKeyReused => {
                "This Idempotency-Key was already used with a different request body.".into()
            }
            ApiError::Unavailable {
                dependency,
                retry_after,
                ..
            } => {
                let seconds = retry_after_seconds(*retry_after);
                let what = match dependency {
                    Dependency::PaymentGateway => "Payment processing is",
                    Dependency::InventoryService => "Inventory checks are",
                    Dependency::Database | Dependency::Server => "The service is",
                };
                let unit = if seconds == 1 { "second" } else { "seconds" };
                format!("{what} temporarily unavailable. Please try again in {seconds} {unit}.").into()
            }
            ApiError::Internal { .. } => "An unexpected error occurred. Please try again or contact support.".into(),
        }
    }

    /// The JSON body, all but `errorId`.
    fn body(&self) -> ErrorJson<'_> {
        let mut body = ErrorJson {
            error: self.code(),
            message: self.message(),
            ..ErrorJson::default()
        };
        match self {
            ApiError::MissingRequiredFields(fields) => body.fields = Some(fields),
            ApiError::InvalidField { field, .. } => body.field = Some(field),
            ApiError::InventoryConflict(skus) => body.unavailable_skus = Some(skus),
            ApiError::PaymentDeclined(code) => body.decline_code = Some(code),
            ApiError::Unavailable {
                dependency,
                retry_after,
                ..
            } => {
                body.retry_after_seconds = Some(retry_after_seconds(*retry_after));
                body.dependency = Some(dependency.as_str());
            }
            _ => {}
        }
        body
    }

    fn into_report(self, error_id: String) -> Option<ErrorReport> {
        let status = self.status().as_u16();
        match self {
            ApiError::Unavailable {
                dependency,
                class,
                cause,
                ..
            } => Some(ErrorReport {
                error_id,
                status,
                class,
                dependency: Some(dependency),
                chain: chain(&cause),
            }),
            ApiError::Internal {
                class,
                dependency,
                cause,
            } => Some(ErrorReport {
                error_id,
                status,
                class,
                dependency,
                chain: chain(&cause),
            }),
            _ => None,
        }
    }
}

/// Whole seconds, rounded up, at least 1: the `Retry-After` header and `retryAfterSeconds`.
pub fn retry_after_seconds(duration: Duration) -> u64 {
    clock::whole_millis(duration).div_ceil(1000).max(1)
}

fn chain(error: &anyhow::Error) -> Vec<String> {
    error.chain().map(ToString::to_string).collect()
}

/// What the request middleware logs for a 5xx, in its [`ErrorOutcome`].
#[derive(Clone, Debug)]
pub struct ErrorReport {
    /// The error ID sent to the client.
    pub error_id: String,
    /// The status sent.
    pub status: u16,
    /// A short name grouping errors of one kind.
    pub class: &'static str,
    /// The dependency a 503 blames, or that a 500 involved.
    pub dependency: Option<Dependency>,
    /// The cause and every cause beneath it, outermost first.
    pub chain: Vec<String>,
}

/// What the request middleware records of an error answer: rides in the
/// response's extensions, as one entry whatever the error.
#[derive(Clone, Debug)]
pub struct ErrorOutcome {
    /// The body's `error` code, for the access record.
    pub code: &'static str,
    /// For a 5xx, what its ERROR record says.
    pub report: Option<ErrorReport>,
}

/// The body of every error answer (see `ErrorBody` in the API document).
#[derive(Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorJson<'a> {
    error: &'static str,
    message: Cow<'static, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fields: Option<&'a [&'static str]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unavailable_skus: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decline_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dependency: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_id: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code();
        let error_id = status.is_server_error().then(new_error_id);
        let mut body = self.body();
        body.error_id = error_id.as_deref();
        let bytes = serde_json::to_vec(&body).expect("an error body is strings and numbers");
        let retry_after = body.retry_after_seconds;
        drop(body);
        let mut response = Response::new(Body::from(bytes));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let ApiError::Unauthenticated(why) = &self {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(why.challenge()));
        }
        if let ApiError::RequestTimeout(_) = &self {
            // The rest of the body may still be on its way: the connection cannot
            // carry another request.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let report = error_id.and_then(|id| self.into_report(id));
        if let Some(report) = &report
            && let Ok(value) = HeaderValue::from_str(&report.error_id)
        {
            headers.insert(X_ERROR_ID.clone(), value);
        }
        response.extensions_mut().insert(ErrorOutcome { code, report });
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        if error.is_unavailable() {
            ApiError::unavailable(Dependency::Database, SHORT_BACKOFF, error.class(), error)
        } else {
            ApiError::internal(error.class(), error)
        }
    }
}

impl From<UpstreamError> for ApiError {
    fn from(error: UpstreamError) -> Self {
        if error.is_unavailable() {
            ApiError::unavailable(error.blamed(), error.retry_after(), error.class(), error)
        } else {
            ApiError::internal(error.class(), error)
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::CartNotFound => ApiError::CartNotFound,
            ServiceError::Forbidden => ApiError::Forbidden,
            ServiceError::CartEmpty => ApiError::CartEmpty,
            ServiceError::CheckoutInProgress => ApiError::CheckoutInProgress,
            ServiceError::InventoryConflict(skus) => ApiError::InventoryConflict(skus),
            ServiceError::PaymentDeclined(code) => ApiError::PaymentDeclined(code),
            ServiceError::Store { ref source, .. } if source.is_unavailable() => {
                ApiError::unavailable(Dependency::Database, SHORT_BACKOFF, source.class(), error)
            }
            ServiceError::Store { ref source, .. } => ApiError::internal(source.class(), error),
            ServiceError::Upstream { ref source, .. } if source.is_unavailable() => {
                let (dependency, retry_after, class) = (source.blamed(), source.retry_after(), source.class());
                ApiError::unavailable(dependency, retry_after, class, error)
            }
            ServiceError::Upstream { ref source, .. } => ApiError::Internal {
                class: source.class(),
                dependency: Some(source.blamed()),
                cause: error.into(),
            },
            ServiceError::Bug { class, cause } => ApiError::internal(class, cause),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_in_the_documented_enum_of_its_status() {
        let every = [
            ApiError::MissingRequiredFields(vec!["cartId"]),
            ApiError::InvalidJson("x".into()),
            ApiError::invalid("quantity", "must be 1..=1000"),
            ApiError::Unauthenticated(crate::auth::AuthError::Missing),
            ApiError::Forbidden,
            ApiError::NotFound,
            ApiError::LineNotFound("SKU-MUG".into()),
            ApiError::CartNotFound,
            ApiError::OrderNotFound,
            ApiError::UnknownSku("SKU-X".into()),
            ApiError::MethodNotAllowed,
            ApiError::CartEmpty,
            ApiError::CheckoutInProgress,
            ApiError::CartNotOpen("COMPLETED"),
            ApiError::CurrencyMismatch("EUR".into()),
            ApiError::CartLimitExceeded("lines".into()),
            ApiError::InventoryConflict(vec![]),
            ApiError::PaymentDeclined("generic_decline".into()),
            ApiError::PayloadTooLarge(1),
            ApiError::RequestTimeout(Duration::from_secs(1)),
            ApiError::UnsupportedMediaType,
            ApiError::IdempotencyKeyReused,
            ApiError::unavailable(Dependency::Server, SHORT_BACKOFF, "Test", anyhow::anyhow!("x")),
            ApiError::internal("Test", anyhow::anyhow!("x")),
        ];
        for error in every {
            let (status, code) = (error.status().as_u16(), error.code());
            let documented = super::super::openapi::CODES
                .iter()
                .find(|(s, _)| *s == status)
                .map(|(_, codes)| *codes)
                .unwrap_or_default();
            assert!(documented.contains(&code), "{status} {code} is not documented");
        }
    }

    #[test]
    fn a_503_says_what_is_unavailable_and_when_to_retry() {
        let message = |dependency, millis| {
            ApiError::unavailable(
                dependency,
                Duration::from_millis(millis),
                "Test",
                anyhow::anyhow!("down"),
            )
            .message()
        };
        assert_eq!(
            message(Dependency::PaymentGateway, 2_500),
            "Payment processing is temporarily unavailable. Please try again in 3 seconds."
        );
        assert_eq!(
            message(Dependency::InventoryService, 1_000),
            "Inventory checks are temporarily unavailable. Please try again in 1 second."
        );
        assert_eq!(
            message(Dependency::Database, 0),
            "The service is temporarily unavailable. Please try again in 1 second."
        );
    }

    #[test]
    fn error_ids_have_the_documented_shape() {
        let id = new_error_id();
        let parts: Vec<_> = id.split('-').collect();
        assert_eq!(parts.len(), 3, "{id}");
        assert_eq!(parts[0], "ERR");
        assert!(parts[1].parse::<i64>().is_ok_and(|ms| ms > 1_700_000_000_000), "{id}");
        assert_eq!(parts[2].len(), 6);
        assert!(
            parts[2].bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()),
            "{id}"
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_at_least_one() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(17_001)), 18);
        assert_eq!(retry_after_seconds(Duration::from_secs(30)), 30);
    }

    #[test]
    fn a_client_error_names_its_code_and_reports_nothing() {
        let response = ApiError::MissingRequiredFields(vec!["cartId"]).into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let outcome = response.extensions().get::<ErrorOutcome>().expect("an error outcome");
        assert_eq!(outcome.code, "MISSING_REQUIRED_FIELDS");
        assert!(outcome.report.is_none());
        assert!(response.headers().get(&X_ERROR_ID).is_none());
    }

    #[test]
    fn every_cause_of_a_chain_is_written_out_whole() {
        let long = "x".repeat(300);
        let cause = anyhow::anyhow!("{long}")
            .context("short")
            .context(format!("with {}", 7));
        assert_eq!(chain(&cause), vec!["with 7".to_string(), "short".to_string(), long]);
    }

    #[test]
    fn a_server_error_carries_its_cause_out_of_band_only() {
        let cause = anyhow::anyhow!("column user_tier does not exist").context("failed to load cart");
        let response = ApiError::internal("DbQueryError", cause).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let outcome = response.extensions().get::<ErrorOutcome>().expect("an error outcome");
        assert_eq!(outcome.code, "INTERNAL_SERVER_ERROR");
        let report = outcome.report.clone().expect("a report");
        assert_eq!(
            report.chain,
            vec!["failed to load cart", "column user_tier does not exist"]
        );
        assert_eq!(
            response.headers().get(&X_ERROR_ID).and_then(|v| v.to_str().ok()),
            Some(report.error_id.as_str())
        );
    }
}
