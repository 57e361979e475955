//! Extractors that turn a request into checked values, rejecting with the app's own
//! error shape: the caller's identity from the bearer token, a JSON object body
//! (415, 413 and 400 as the contract says), path IDs, and typed fields.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header;
use axum::http::request::Parts;
use http_body_util::{BodyExt as _, Limited};
use serde_json::{Map, Value};

use crate::app::App;
use crate::domain::{IdError, MAX_FIELD_CHARS, UserId};
use crate::error::ApiError;
use crate::telemetry;

/// The user the bearer token speaks for.
pub struct AuthUser(pub UserId);

impl FromRequestParts<Arc<App>> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let user = app
            .auth
            .verify_header(header)
            .map_err(|why| ApiError::Unauthenticated(auth_reason(why)))?;
        telemetry::record_request_field("userId", user.as_str());
        Ok(AuthUser(user))
    }
}

fn auth_reason(error: crate::auth::AuthError) -> &'static str {
    use crate::auth::AuthError;
    match error {
        AuthError::Missing => "send an Authorization: Bearer <token> header",
        AuthError::Malformed => "the token is malformed",
        AuthError::BadSignature => "the token's signature is not valid",
        AuthError::Expired => "the token has expired",
    }
}

/// A request body that must be a JSON object, if there is a body at all.
pub struct JsonBody(Option<Map<String, Value>>);

impl JsonBody {
    /// The object, or 400 if no body (or `null`) was sent.
    pub fn require(self) -> Result<Map<String, Value>, ApiError> {
        self.0
            .ok_or_else(|| ApiError::InvalidJson("the body is empty or null".into()))
    }

    /// The object, or an empty one if no body was sent.
    pub fn or_empty(self) -> Map<String, Value> {
        self.0.unwrap_or_default()
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

impl FromRequest<Arc<App>> for JsonBody {
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
        let body: Body = request.into_body();
        let bytes = match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                return Err(ApiError::PayloadTooLarge(limit));
            }
            Err(_) => return Err(ApiError::InvalidJson("the body could not be read".into())),
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(None));
        }
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(object)) => Ok(JsonBody(Some(object))),
            Ok(Value::Null) => Ok(JsonBody(None)),
            Ok(_) => Err(ApiError::InvalidJson("it is valid JSON but not an object".into())),
            Err(error) => Err(ApiError::InvalidJson(format!(
                "it is not valid JSON ({} at line {}, column {})",
                match error.classify() {
                    serde_json::error::Category::Eof => "unexpected end",
                    serde_json::error::Category::Syntax => "syntax error",
                    serde_json::error::Category::Data | serde_json::error::Category::Io => "unreadable value",
                },
                error.line(),
                error.column()
            ))),
        }
    }
}

/// The one path parameter of a route, as a string of at most 256 characters.
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

/// Typed access to a request object's fields, with errors that name the field.
pub struct Fields<'a>(pub &'a Map<String, Value>);

impl Fields<'_> {
    /// A string field: `Ok(None)` when missing, null or blank; 400 when not a string
    /// or longer than 256 characters.
    pub fn string(&self, name: &'static str) -> Result<Option<&str>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
            Some(Value::String(text)) if text.chars().count() > MAX_FIELD_CHARS => {
                Err(ApiError::invalid(name, "must be at most 256 characters"))
            }
            Some(Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(ApiError::invalid(name, "must be a string")),
        }
    }

    /// An optional string field: `Ok(None)` when missing or null, but 400 when present
    /// and blank, not a string, or longer than 256 characters.
    pub fn optional_string(&self, name: &'static str) -> Result<Option<&str>, ApiError> {
        match self.0.get(name) {
            Some(Value::String(text)) if text.trim().is_empty() => Err(ApiError::invalid(name, "must not be blank")),
            _ => self.string(name),
        }
    }

    /// A whole-number field in `range` (`3` or `3.0`, as JSON Schema counts integers):
    /// `Ok(None)` when missing or null.
    pub fn integer(&self, name: &'static str, range: std::ops::RangeInclusive<i64>) -> Result<Option<i64>, ApiError> {
        let message = || format!("must be a whole number from {} to {}", range.start(), range.end());
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(number)) => {
                let whole = number.as_i64().or_else(|| {
                    number
                        .as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
                        .map(|f| f as i64)
                });
                match whole {
                    Some(value) if range.contains(&value) => Ok(Some(value)),
                    _ => Err(ApiError::invalid(name, message())),
                }
            }
            Some(_) => Err(ApiError::invalid(name, message())),
        }
    }
}

/// Maps an identifier that failed to parse to a 400 naming its field.
pub fn invalid_id(field: &'static str) -> impl FnOnce(IdError) -> ApiError {
    move |error| ApiError::invalid(field, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn json_media_types_are_recognised_in_any_case_with_parameters() {
        for json in [
            "application/json",
            "Application/JSON; charset=utf-8",
            " application/problem+json ",
            "application/vnd.shop+JSON;v=2",
        ] {
            assert!(is_json(json), "{json}");
        }
        for other in [
            "text/plain",
            "application/jsonx",
            "json",
            "text/json",
            "application/x-json5",
            "",
            "/json",
        ] {
            assert!(!is_json(other), "{other}");
        }
    }
}
