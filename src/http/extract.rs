//! Extractors that turn a request into checked values, rejecting with the app's own
//! error shape: the caller's identity from the bearer token, a JSON object body
//! (415, 413 and 400 as the contract says), path IDs, and typed fields.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header;
use axum::http::request::Parts;
use http_body_util::BodyExt as _;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

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

/// A request body that must be a JSON object, if there is a body at all: its size and
/// media type are checked when it is extracted, and it is parsed (into an [`Object`]
/// that borrows from it) when the handler asks for it, before anything else.
pub struct JsonBody(Option<Bytes>);

impl JsonBody {
    /// The object, or 400 if it is not JSON, not an object, or no body (or `null`)
    /// was sent.
    pub fn require(&self) -> Result<Object<'_>, ApiError> {
        self.or_none()?
            .ok_or_else(|| ApiError::InvalidJson("the body is empty or null".into()))
    }

    /// The object, or an empty one if no body (or `null`) was sent; 400 if it is not
    /// JSON or not an object.
    pub fn or_empty(&self) -> Result<Object<'_>, ApiError> {
        Ok(self.or_none()?.unwrap_or_default())
    }

    fn or_none(&self) -> Result<Option<Object<'_>>, ApiError> {
        match &self.0 {
            None => Ok(None),
            Some(bytes) => Object::parse(bytes),
        }
    }
}

/// A JSON object's members as sent, keys and strings borrowed from the body unless
/// they hold escapes. Only what the API's fields can be is kept: nested arrays and
/// objects are checked for syntax and skipped.
#[derive(Debug, Default)]
pub struct Object<'a>(Vec<(Cow<'a, str>, Member<'a>)>);

/// One member's value.
#[derive(Debug)]
pub enum Member<'a> {
    /// `null`.
    Null,
    /// A string.
    Str(Cow<'a, str>),
    /// A number.
    Number(Number),
    /// `true`, `false`, an array or an object.
    Other,
}

impl<'a> Object<'a> {
    /// Parses a body: `None` for `null`, 400 for anything that is not a JSON object.
    pub fn parse(bytes: &'a [u8]) -> Result<Option<Self>, ApiError> {
        match serde_json::from_slice::<TopLevel<'a>>(bytes) {
            Ok(TopLevel::Object(object)) => Ok(Some(object)),
            Ok(TopLevel::Null) => Ok(None),
            Ok(TopLevel::Other) => Err(ApiError::InvalidJson("it is valid JSON but not an object".into())),
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

    /// The member named `name`; of repeated names, the last, as JSON parsers commonly do.
    pub fn get(&self, name: &str) -> Option<&Member<'a>> {
        self.0
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, member)| member)
    }
}

/// A whole body: an object, `null`, or any other JSON value (refused).
enum TopLevel<'a> {
    Object(Object<'a>),
    Null,
    Other,
}

/// A string, borrowed from the input when it holds no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(text)))
            }
            fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text.to_string())))
            }
            fn visit_string<E>(self, text: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// A value read to its end and dropped. Unlike serde's `IgnoredAny`, which
/// serde_json reads by a faster path that words some errors differently (an
/// unfinished number is a "syntax error" there), it is read as any value is, so a
/// malformed body is refused with the same words wherever its fault lies.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SkipVisitor;
        impl<'de> Visitor<'de> for SkipVisitor {
            type Value = Skip;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
                while map.next_entry::<Skip, Skip>()?.is_some() {}
                Ok(Skip)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
                while seq.next_element::<Skip>()?.is_some() {}
                Ok(Skip)
            }
            fn visit_unit<E>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_none<E>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
                Ok(Skip)
            }
        }
        deserializer.deserialize_any(SkipVisitor)
    }
}

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TopLevelVisitor;
        impl<'de> Visitor<'de> for TopLevelVisitor {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(4));
                while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
                    members.push((key, map.next_value::<Member<'de>>()?));
                }
                Ok(TopLevel::Object(Object(members)))
            }
            fn visit_unit<E>(self) -> Result<TopLevel<'de>, E> {
                Ok(TopLevel::Null)
            }
            fn visit_none<E>(self) -> Result<TopLevel<'de>, E> {
                Ok(TopLevel::Null)
            }
            // Any other value is read to its end, so that its syntax is checked too.
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TopLevel<'de>, A::Error> {
                while seq.next_element::<Skip>()?.is_some() {}
                Ok(TopLevel::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<TopLevel<'de>, E> {
                Ok(TopLevel::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<TopLevel<'de>, E> {
                Ok(TopLevel::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<TopLevel<'de>, E> {
                Ok(TopLevel::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<TopLevel<'de>, E> {
                Ok(TopLevel::Other)
            }
            fn visit_str<E>(self, _: &str) -> Result<TopLevel<'de>, E> {
                Ok(TopLevel::Other)
            }
        }
        deserializer.deserialize_any(TopLevelVisitor)
    }
}

impl<'de> Deserialize<'de> for Member<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A member's own object is skipped like an array: no field of the API is one.
        struct MemberVisitor;
        impl<'de> Visitor<'de> for MemberVisitor {
            type Value = Member<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Member<'de>, A::Error> {
                while map.next_entry::<Skip, Skip>()?.is_some() {}
                Ok(Member::Other)
            }
            fn visit_unit<E>(self) -> Result<Member<'de>, E> {
                Ok(Member::Null)
            }
            fn visit_none<E>(self) -> Result<Member<'de>, E> {
                Ok(Member::Null)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Member<'de>, E> {
                Ok(Member::Other)
            }
            fn visit_u64<E>(self, n: u64) -> Result<Member<'de>, E> {
                Ok(Member::Number(n.into()))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Member<'de>, E> {
                Ok(Member::Number(n.into()))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Member<'de>, E> {
                // JSON has no NaN or infinity, so a parsed float always makes a number.
                Ok(Number::from_f64(n).map_or(Member::Other, Member::Number))
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Member<'de>, E> {
                Ok(Member::Str(Cow::Borrowed(text)))
            }
            fn visit_str<E>(self, text: &str) -> Result<Member<'de>, E> {
                Ok(Member::Str(Cow::Owned(text.to_string())))
            }
            fn visit_string<E>(self, text: String) -> Result<Member<'de>, E> {
                Ok(Member::Str(Cow::Owned(text)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Member<'de>, A::Error> {
                while seq.next_element::<Skip>()?.is_some() {}
                Ok(Member::Other)
            }
        }
        deserializer.deserialize_any(MemberVisitor)
    }
}

fn is_json(content_type: &str) -> bool {
    // What nearly every client sends, decided without splitting and trimming.
    if content_type.eq_ignore_ascii_case("application/json") {
        return true;
    }
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
        let bytes = match read_body(body, limit).await {
            Ok(bytes) => bytes,
            Err(BodyError::TooLarge) => return Err(ApiError::PayloadTooLarge(limit)),
            Err(BodyError::Broken) => return Err(ApiError::InvalidJson("the body could not be read".into())),
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(None));
        }
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        Ok(JsonBody(Some(bytes)))
    }
}

/// Why a request body could not be read.
enum BodyError {
    /// It is longer than the limit.
    TooLarge,
    /// The connection failed while it was being read.
    Broken,
}

/// Reads a body of at most `limit` bytes, refusing it as soon as it passes the
/// limit. A body that arrives in one piece, as a small request's does, is kept as
/// it came, without a copy.
async fn read_body(mut body: Body, limit: usize) -> Result<Bytes, BodyError> {
    let mut first = Bytes::new();
    let mut joined: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| BodyError::Broken)?.into_data() else {
            continue; // trailers
        };
        if first.len() + joined.len() + data.len() > limit {
            return Err(BodyError::TooLarge);
        }
        if first.is_empty() && joined.is_empty() {
            first = data;
        } else {
            if joined.is_empty() {
                joined.reserve(first.len() + data.len());
                joined.extend_from_slice(&std::mem::take(&mut first));
            }
            joined.extend_from_slice(&data);
        }
    }
    Ok(if joined.is_empty() { first } else { Bytes::from(joined) })
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
pub struct Fields<'a>(pub &'a Object<'a>);

impl Fields<'_> {
    /// A string field: `Ok(None)` when missing, null or blank; 400 when not a string
    /// or longer than 256 characters.
    pub fn string(&self, name: &'static str) -> Result<Option<&str>, ApiError> {
        match self.0.get(name) {
            None | Some(Member::Null) => Ok(None),
            Some(Member::Str(text)) if text.trim().is_empty() => Ok(None),
            Some(Member::Str(text)) if text.chars().count() > MAX_FIELD_CHARS => {
                Err(ApiError::invalid(name, "must be at most 256 characters"))
            }
            Some(Member::Str(text)) => Ok(Some(text)),
            Some(_) => Err(ApiError::invalid(name, "must be a string")),
        }
    }

    /// An optional string field: `Ok(None)` when missing or null, but 400 when present
    /// and blank, not a string, or longer than 256 characters.
    pub fn optional_string(&self, name: &'static str) -> Result<Option<&str>, ApiError> {
        match self.0.get(name) {
            Some(Member::Str(text)) if text.trim().is_empty() => Err(ApiError::invalid(name, "must not be blank")),
            _ => self.string(name),
        }
    }

    /// A whole-number field in `range` (`3` or `3.0`, as JSON Schema counts integers):
    /// `Ok(None)` when missing or null.
    pub fn integer(&self, name: &'static str, range: std::ops::RangeInclusive<i64>) -> Result<Option<i64>, ApiError> {
        let message = || format!("must be a whole number from {} to {}", range.start(), range.end());
        match self.0.get(name) {
            None | Some(Member::Null) => Ok(None),
            Some(Member::Number(number)) => {
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
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    fn streamed(pieces: &[&'static str]) -> Body {
        let frames: Vec<Result<Bytes, std::io::Error>> =
            pieces.iter().map(|p| Ok(Bytes::from_static(p.as_bytes()))).collect();
        Body::from_stream(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_body_in_pieces_is_joined_and_one_piece_is_kept_as_it_came() {
        let joined = read_body(streamed(&["{\"a\":", "", "1}"]), 64).await;
        assert_eq!(joined.ok().as_deref(), Some(&b"{\"a\":1}"[..]));
        let whole = read_body(streamed(&["", "{}"]), 64).await;
        assert_eq!(whole.ok().as_deref(), Some(&b"{}"[..]));
        let empty = read_body(streamed(&[]), 64).await;
        assert_eq!(empty.ok().as_deref(), Some(&b""[..]));
    }

    #[tokio::test]
    async fn a_body_is_refused_once_its_pieces_pass_the_limit() {
        assert!(read_body(streamed(&["12345", "67890"]), 10).await.is_ok());
        assert!(matches!(
            read_body(streamed(&["12345", "678901"]), 10).await,
            Err(BodyError::TooLarge)
        ));
        assert!(matches!(
            read_body(streamed(&["12345678901"]), 10).await,
            Err(BodyError::TooLarge)
        ));
        let broken = Body::from_stream(futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"{")),
            Err(std::io::Error::other("reset")),
        ]));
        assert!(matches!(read_body(broken, 10).await, Err(BodyError::Broken)));
    }

    /// What the body meant when it was parsed into a `serde_json::Value`: the
    /// classification and field values the handlers saw before, or the error text.
    fn as_before(bytes: &[u8]) -> Result<Option<Vec<(String, String)>>, String> {
        let message = |error: ApiError| format!("{error:?}");
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => Ok(Some(
                map.into_iter()
                    .map(|(key, value)| {
                        let seen = match value {
                            Value::Null => "null".to_string(),
                            Value::String(text) => format!("str {text}"),
                            Value::Number(number) => format!("number {number}"),
                            _ => "other".to_string(),
                        };
                        (key, seen)
                    })
                    .collect(),
            )),
            Ok(Value::Null) => Ok(None),
            Ok(_) => Err(message(ApiError::InvalidJson(
                "it is valid JSON but not an object".into(),
            ))),
            Err(error) => Err(message(ApiError::InvalidJson(format!(
                "it is not valid JSON ({} at line {}, column {})",
                match error.classify() {
                    serde_json::error::Category::Eof => "unexpected end",
                    serde_json::error::Category::Syntax => "syntax error",
                    _ => "unreadable value",
                },
                error.line(),
                error.column()
            )))),
        }
    }

    fn as_now(bytes: &[u8]) -> Result<Option<Vec<(String, String)>>, String> {
        let object = Object::parse(bytes).map_err(|error| format!("{error:?}"))?;
        Ok(object.map(|object| {
            let mut keys: Vec<String> = object.0.iter().map(|(key, _)| key.to_string()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .map(|key| {
                    let seen = match object.get(&key).expect("present") {
                        Member::Null => "null".to_string(),
                        Member::Str(text) => format!("str {text}"),
                        Member::Number(number) => format!("number {number}"),
                        Member::Other => "other".to_string(),
                    };
                    (key, seen)
                })
                .collect()
        }))
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e12f64..1e12).prop_map(Value::from),
            "[a-z\"\\\u{0}-\u{1f}é☃]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("[a-zA-Z\"]{0,6}", inner), 0..6)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn bodies_mean_what_they_meant_as_serde_json_values(value in json_value()) {
            let text = value.to_string();
            prop_assert_eq!(as_now(text.as_bytes()), as_before(text.as_bytes()), "{}", text);
        }

        #[test]
        fn malformed_bodies_are_refused_with_the_same_words(text in "[{}\\[\\]\":,a-fl-nr-u0-9 .+\\-\\\\\t\u{0}é]{0,24}") {
            prop_assert_eq!(as_now(text.as_bytes()), as_before(text.as_bytes()), "{}", text);
        }
    }

    #[test]
    fn keys_and_strings_borrow_from_the_body_unless_escaped_and_the_last_repeat_wins() {
        let body = br#"{"cartId":"c1","cart\u0049d":"c2","userId":"u\"1","nested":{"cartId":"no"},"n":[1,{"a":2}]}"#;
        let object = Object::parse(body).expect("valid").expect("an object");
        assert!(matches!(object.get("cartId"), Some(Member::Str(text)) if text == "c2"));
        assert!(matches!(object.get("userId"), Some(Member::Str(Cow::Owned(text))) if text == "u\"1"));
        assert!(matches!(
            &object.0[0],
            (Cow::Borrowed("cartId"), Member::Str(Cow::Borrowed("c1")))
        ));
        assert!(matches!(object.get("nested"), Some(Member::Other)));
        assert!(matches!(object.get("n"), Some(Member::Other)));
        assert!(object.get("missing").is_none());
    }

    #[test]
    fn what_is_not_an_object_is_refused_and_null_is_no_body() {
        assert!(Object::parse(b"null").expect("valid").is_none());
        for other in [&b"[1,2]"[..], b"\"text\"", b"12", b"true"] {
            let error = Object::parse(other).expect_err("not an object");
            assert!(format!("{error:?}").contains("not an object"), "{error:?}");
        }
        let error = Object::parse(b"[1, {\"a\": }]").expect_err("not JSON");
        assert!(
            format!("{error:?}").contains("syntax error at line 1, column 11"),
            "{error:?}"
        );
    }

    #[test]
    fn a_body_cut_off_inside_a_nested_value_is_an_unexpected_end() {
        for cut in [&b"[0."[..], b"{\"a\": [1e", b"{\"a\": {\"b\": -", b"{\"a\": [\"x"] {
            let error = Object::parse(cut).expect_err("unfinished");
            assert!(format!("{error:?}").contains("unexpected end"), "{error:?}");
        }
    }

    #[test]
    fn json_media_types_are_recognised_in_any_case_with_parameters() {
        use super::is_json;
        for json in [
            "application/json",
            "APPLICATION/JSON",
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
