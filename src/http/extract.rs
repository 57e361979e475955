//! Extractors that turn a request into checked values, rejecting with the app's own
//! error shape: the caller's identity from the bearer token, a JSON body read into
//! its serde type (415, 413, 408 and 400 as the contract says), and path IDs.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header;
use axum::http::request::Parts;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

use super::error::ApiError;
use crate::app::App;
use crate::domain::{IdError, UserId};

/// The user the bearer token speaks for.
pub struct AuthUser(pub UserId);

impl FromRequestParts<Arc<App>> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let user = app.auth.verify_header(header).map_err(ApiError::Unauthenticated)?;
        tracing::Span::current().record("userId", user.as_str());
        Ok(AuthUser(user))
    }
}

/// A request body type: the fields its errors may name.
pub trait RequestBody: DeserializeOwned {
    /// The body's field names, as they are sent.
    const FIELDS: &'static [&'static str];
}

/// A JSON request body read into `T`, if a body was sent: its size and media type
/// are checked, then it is deserialized. No body (or only whitespace, or `null`)
/// is `None`. A body that is not JSON, or not an object, is 400 `INVALID_JSON`; a
/// field of the wrong type or out of range is 400 `INVALID_FIELD` naming it.
pub struct JsonBody<T>(pub Option<T>);

impl<T> JsonBody<T> {
    /// The body, or 400 `INVALID_JSON` when none was sent.
    pub fn require(self) -> Result<T, ApiError> {
        self.0
            .ok_or_else(|| ApiError::InvalidJson("the body is empty or null".into()))
    }
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json")
            || subtype
                .len()
                .checked_sub("+json".len())
                .and_then(|start| subtype.get(start..))
                .is_some_and(|suffix| suffix.eq_ignore_ascii_case("+json")))
}

impl<T: RequestBody> FromRequest<Arc<App>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, app: &Arc<App>) -> Result<Self, Self::Rejection> {
        let limit = app.settings.max_body_bytes;
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.to_str().is_ok_and(is_json));
        // The pipeline has read the body within BODY_READ_TIMEOUT_MS already: this
        // takes it from memory.
        let bytes = read_body(request.into_body(), limit, app.settings.body_read_timeout).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(None));
        }
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        parse::<T>(&bytes).map(JsonBody)
    }
}

/// Reads a body of at most `limit` bytes within `timeout`, refusing it as soon as
/// it passes the limit.
pub(crate) async fn read_body(body: Body, limit: usize, timeout: std::time::Duration) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(ApiError::RequestTimeout(timeout)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<LengthLimitError>() => Err(ApiError::PayloadTooLarge(limit)),
        Ok(Err(_)) => Err(ApiError::InvalidJson("the body could not be read".into())),
    }
}

/// Deserializes `bytes` into `T` (`None` for `null`), with the contract's errors.
pub fn parse<T: RequestBody>(bytes: &[u8]) -> Result<Option<T>, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let error = match serde_path_to_error::deserialize::<_, Option<T>>(&mut deserializer) {
        Ok(value) => match deserializer.end() {
            Ok(()) => return Ok(value),
            Err(trailing) => return Err(invalid_json(&trailing)),
        },
        Err(error) => error,
    };
    let field = error.path().iter().find_map(|segment| match segment {
        Segment::Map { key } => T::FIELDS.iter().find(|name| **name == key.as_str()).copied(),
        _ => None,
    });
    let inner = error.into_inner();
    let message = without_position(&inner);
    Err(match (inner.classify(), field) {
        (serde_json::error::Category::Data, Some(field)) => ApiError::invalid(field, message),
        (serde_json::error::Category::Data, None) if message.starts_with("invalid type") => {
            ApiError::InvalidJson("it is valid JSON but not an object".into())
        }
        (serde_json::error::Category::Data, None) => ApiError::InvalidJson(message),
        _ => invalid_json(&inner),
    })
}

/// 400 `INVALID_JSON` for a body that is not JSON, saying where it went wrong.
fn invalid_json(error: &serde_json::Error) -> ApiError {
    ApiError::InvalidJson(format!(
        "it is not valid JSON ({} at line {}, column {})",
        match error.classify() {
            serde_json::error::Category::Eof => "unexpected end",
            _ => "syntax error",
        },
        error.line(),
        error.column()
    ))
}

/// serde_json's message without the ` at line L column C` it ends with.
fn without_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// The one path parameter of a route, as a string.
pub struct PathId(pub String);

impl FromRequestParts<Arc<App>> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Self::Rejection> {
        let Path(id) = Path::<String>::from_request_parts(parts, app)
            .await
            .map_err(|_| ApiError::invalid("id", "must be valid UTF-8 text"))?;
        Ok(PathId(id))
    }
}

/// The two path parameters of a route (a cart and one of its lines), as strings.
pub struct PathPair(pub String, pub String);

impl FromRequestParts<Arc<App>> for PathPair {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Self::Rejection> {
        let Path((first, second)) = Path::<(String, String)>::from_request_parts(parts, app)
            .await
            .map_err(|_| ApiError::invalid("id", "must be valid UTF-8 text"))?;
        Ok(PathPair(first, second))
    }
}

/// Turns an identifier's rejection into 400 `INVALID_FIELD` naming `field`.
pub fn invalid_id(field: &'static str) -> impl FnOnce(IdError) -> ApiError {
    move |error| ApiError::invalid(field, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Sample {
        cart_id: Option<String>,
        quantity: Option<i64>,
    }

    impl RequestBody for Sample {
        const FIELDS: &'static [&'static str] = &["cartId", "quantity"];
    }

    fn error(body: &str) -> String {
        format!("{:?}", parse::<Sample>(body.as_bytes()).expect_err(body))
    }

    #[test]
    fn a_field_of_the_wrong_type_is_named_and_other_faults_are_invalid_json() {
        assert!(error(r#"{"cartId": 5}"#).contains("field: \"cartId\""));
        assert!(error(r#"{"quantity": 1.5}"#).contains("field: \"quantity\""));
        assert!(error(r#"{"quantity": "3"}"#).contains("field: \"quantity\""));
        assert!(error(r#"{"cartId": {"nested": 1}}"#).contains("field: \"cartId\""));
        assert!(error("[1, 2]").contains("not an object"), "{}", error("[1, 2]"));
        assert!(error("12").contains("not an object"));
        assert!(error(r#"{"cartId": "a"} trailing"#).contains("InvalidJson"));
        assert!(error(r#"{"cartId": "#).contains("unexpected end"));
        assert!(error(r#"{"cartId" "a"}"#).contains("syntax error at line 1, column 11"));
    }

    #[test]
    fn null_is_no_body_and_unknown_fields_are_ignored() {
        assert!(parse::<Sample>(b"null").expect("valid").is_none());
        let sample = parse::<Sample>(br#"{"cartId": "c1", "other": [1, {"a": 2}]}"#)
            .expect("valid")
            .expect("an object");
        assert_eq!(sample.cart_id.as_deref(), Some("c1"));
    }

    #[test]
    fn json_media_types_are_recognised_in_any_case_with_parameters() {
        for json in [
            "application/json",
            "APPLICATION/JSON",
            "Application/JSON; charset=utf-8",
            " application/problem+json ",
            "application/vnd.shop+JSON;v=2",
        ] {
            assert!(is_json(json), "{json}");
        }
        for other in ["text/plain", "application/jsonx", "json", "text/json", "", "/json"] {
            assert!(!is_json(other), "{other}");
        }
    }
}
