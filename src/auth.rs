//! Bearer tokens: HS256 JWTs signed with `JWT_SECRET`, whose `sub` claim is the user
//! (DESIGN §7a). Only HS256 is accepted (so `alg: none` and algorithm confusion are
//! refused); `exp` is required, and lies at most `JWT_MAX_TTL_SECONDS` after now
//! (and after `iat`); `nbf` and `iat` are honoured with 60 s of leeway; a `crit`
//! header is refused, since this service understands no extension; `iss` and `aud`
//! are checked when `JWT_ISSUER` and `JWT_AUDIENCE` are set and ignored otherwise.
//! Times are read from the service's [`Clock`], so tests move them instead of
//! sleeping.

use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::domain::UserId;

/// The leeway given to `nbf` and `iat` for clocks that differ a little (`exp` has
/// none: a token is never used past the moment its issuer set).
pub const LEEWAY: Duration = Duration::from_secs(60);

/// The default longest lifetime of a token (`JWT_MAX_TTL_SECONDS`).
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(86_400);

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
}

/// Why a token was refused; the text is safe to send to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("send an Authorization: Bearer <token> header")]
    Missing,
    /// Not a JWT, or not an HS256 one, or missing claims.
    #[error("the token is malformed")]
    Malformed,
    /// Signed with another key.
    #[error("the token's signature is not valid")]
    BadSignature,
    /// Past its `exp`.
    #[error("the token has expired")]
    Expired,
    /// Before its `nbf`, or issued (`iat`) in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// Valid for longer than `JWT_MAX_TTL_SECONDS`.
    #[error("the token is valid for longer than this service allows")]
    TooLong,
    /// A `crit` header names an extension this service does not understand.
    #[error("the token requires an extension this service does not support")]
    UnsupportedExtension,
    /// `iss` or `aud` is not the one configured.
    #[error("the token was not issued for this service")]
    WrongAudience,
}

impl AuthError {
    /// The `WWW-Authenticate` header of the 401 (RFC 6750): `error="invalid_token"`
    /// when a token was sent.
    pub fn challenge(self) -> &'static str {
        match self {
            AuthError::Missing => r#"Bearer realm="checkout-service""#,
            _ => r#"Bearer realm="checkout-service", error="invalid_token""#,
        }
    }
}

/// What a token must satisfy beyond its signature.
#[derive(Clone, Debug)]
pub struct TokenRules {
    /// The longest a token may be valid (`JWT_MAX_TTL_SECONDS`).
    pub max_ttl: Duration,
    /// The `iss` required, if any (`JWT_ISSUER`).
    pub issuer: Option<String>,
    /// The `aud` required, if any (`JWT_AUDIENCE`).
    pub audience: Option<String>,
}

impl Default for TokenRules {
    fn default() -> Self {
        Self {
            max_ttl: DEFAULT_MAX_TTL,
            issuer: None,
            audience: None,
        }
    }
}

/// How many verified tokens are remembered before the memory starts over.
const REMEMBERED: usize = 10_000;

/// What a token's signature vouches for, once checked.
#[derive(Clone)]
struct Verified {
    user: UserId,
    exp: u64,
    iat: Option<u64>,
    nbf: Option<u64>,
}

/// Issues and verifies tokens with one secret.
///
/// A client sends the same token with every request: a token whose signature and
/// claims were checked is remembered by its exact text (signature included), and
/// only its times are checked again, on every use. The same text always verifies
/// the same way under one key; only tokens that verified are remembered, and at
/// most [`REMEMBERED`] of them.
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    max_ttl: u64,
    clock: Clock,
    verified: std::sync::Mutex<std::collections::HashMap<Box<str>, Verified>>,
}

impl Auth {
    /// Keys derived from `secret`, the default rules, the system clock.
    pub fn new(secret: &SecretString) -> Self {
        Self::with_rules(secret, &TokenRules::default(), Clock::system())
    }

    /// Keys derived from `secret`, checking `rules` on `clock`.
    pub fn with_rules(secret: &SecretString, rules: &TokenRules, clock: Clock) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        // Times are checked here, on the service's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &rules.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        if let Some(audience) = &rules.audience {
            validation.set_audience(&[audience]);
            validation.validate_aud = true;
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
            max_ttl: rules.max_ttl.as_secs(),
            clock,
            verified: std::sync::Mutex::default(),
        }
    }

    /// A token for `user` that expires after `ttl`.
    pub fn issue(&self, user: &UserId, ttl: Duration) -> anyhow::Result<String> {
        let now = self.clock.now_secs();
        let claims = Claims {
            sub: user.as_str().to_string(),
            exp: now.saturating_add(ttl.as_secs()),
            iat: Some(now),
            nbf: None,
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// The user a token speaks for.
    pub fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        let remembered = self.remembered().get(token).cloned();
        let verified = match remembered {
            Some(verified) => verified,
            None => {
                let verified = self.check_signature(token)?;
                let mut remembered = self.remembered();
                if remembered.len() >= REMEMBERED {
                    remembered.clear();
                }
                remembered.insert(token.into(), verified.clone());
                verified
            }
        };
        self.check_times(&verified)?;
        Ok(verified.user)
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<Box<str>, Verified>> {
        // A map of finished entries: a panic elsewhere cannot leave one half-written.
        self.verified.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The header, the signature and the claims that never change.
    fn check_signature(&self, token: &str) -> Result<Verified, AuthError> {
        if has_critical_extensions(token)? {
            return Err(AuthError::UnsupportedExtension);
        }
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => AuthError::WrongAudience,
                _ => AuthError::Malformed,
            })?;
        let claims = data.claims;
        Ok(Verified {
            user: UserId::parse(&claims.sub).map_err(|_| AuthError::Malformed)?,
            exp: claims.exp,
            iat: claims.iat,
            nbf: claims.nbf,
        })
    }

    /// The token's times, against the service's clock now.
    fn check_times(&self, token: &Verified) -> Result<(), AuthError> {
        let now = self.clock.now_secs();
        let leeway = LEEWAY.as_secs();
        if token.exp <= now {
            return Err(AuthError::Expired);
        }
        if token.nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway))
            || token.iat.is_some_and(|iat| iat > now.saturating_add(leeway))
        {
            return Err(AuthError::NotYetValid);
        }
        let longest = now.saturating_add(self.max_ttl).saturating_add(leeway);
        if token.exp > longest
            || token
                .iat
                .is_some_and(|iat| token.exp.saturating_sub(iat) > self.max_ttl)
        {
            return Err(AuthError::TooLong);
        }
        Ok(())
    }

    /// The user named by an `Authorization` header value.
    pub fn verify_header(&self, header: Option<&str>) -> Result<UserId, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let (scheme, token) = header.trim().split_once(' ').ok_or(AuthError::Missing)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Missing);
        }
        self.verify(token.trim())
    }
}

/// Whether the token's header has a non-empty `crit` list (RFC 7515 §4.1.11).
fn has_critical_extensions(token: &str) -> Result<bool, AuthError> {
    let header = token.split('.').next().ok_or(AuthError::Malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed)?;
    let header: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    Ok(match header.get("crit") {
        None => false,
        Some(serde_json::Value::Array(names)) => !names.is_empty(),
        // Present but not a list of names: malformed, and refused all the same.
        Some(_) => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn auth(secret: &str) -> Auth {
        Auth::with_rules(
            &SecretString::from(secret.to_string()),
            &TokenRules::default(),
            Clock::tokio(),
        )
    }

    fn user() -> UserId {
        UserId::parse("usr_456").expect("valid user")
    }

    fn now() -> u64 {
        Clock::system().now_secs()
    }

    fn encode(claims: &serde_json::Value, secret: &str, alg: Algorithm) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret.as_bytes())).expect("encode")
    }

    fn signed(claims: serde_json::Value) -> String {
        encode(&claims, SECRET, Algorithm::HS256)
    }

    #[test]
    fn issued_tokens_verify_to_their_user() {
        let auth = auth(SECRET);
        let token = auth.issue(&user(), Duration::from_secs(60)).expect("issue");
        assert_eq!(auth.verify(&token), Ok(user()));
        assert_eq!(auth.verify_header(Some(&format!("Bearer {token}"))), Ok(user()));
        assert_eq!(auth.verify_header(Some(&format!("bearer  {token}"))), Ok(user()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_remembered_token_still_expires_on_the_services_clock() {
        let verifier = auth(SECRET);
        let token = verifier.issue(&user(), Duration::from_secs(10)).expect("issue");
        assert_eq!(verifier.verify(&token), Ok(user()));
        assert_eq!(verifier.remembered().len(), 1);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(verifier.verify(&token), Ok(user()), "from memory");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(verifier.verify(&token), Err(AuthError::Expired));
        let forged = auth("another-secret-another-secret-xx").issue(&user(), Duration::from_secs(60));
        assert_eq!(verifier.verify(&forged.expect("issue")), Err(AuthError::BadSignature));
        assert_eq!(verifier.remembered().len(), 1, "only verified tokens are remembered");
        let tampered = format!("{}x", &token[..token.len() - 1]);
        assert_ne!(verifier.verify(&tampered), Ok(user()), "other text is verified afresh");
    }

    #[test]
    fn tokens_not_valid_yet_or_valid_too_long_are_refused() {
        let auth = auth(SECRET);
        let now = now();
        let future_nbf = signed(serde_json::json!({"sub": "usr_456", "exp": now + 600, "nbf": now + 120}));
        assert_eq!(auth.verify(&future_nbf), Err(AuthError::NotYetValid));
        let skewed_nbf = signed(serde_json::json!({"sub": "usr_456", "exp": now + 600, "nbf": now + 30}));
        assert_eq!(
            auth.verify(&skewed_nbf),
            Ok(user()),
            "30 s of skew is within the leeway"
        );
        let future_iat = signed(serde_json::json!({"sub": "usr_456", "exp": now + 600, "iat": now + 120}));
        assert_eq!(auth.verify(&future_iat), Err(AuthError::NotYetValid));
        let year_9999 = signed(serde_json::json!({"sub": "usr_456", "exp": 253_402_300_799_u64}));
        assert_eq!(auth.verify(&year_9999), Err(AuthError::TooLong));
        let long_lived = signed(serde_json::json!({"sub": "usr_456", "exp": now + 3600, "iat": now - 86_400}));
        assert_eq!(
            auth.verify(&long_lived),
            Err(AuthError::TooLong),
            "exp - iat is over the limit"
        );
    }

    #[test]
    fn audiences_and_issuers_are_checked_only_when_configured() {
        let now = now();
        let from_idp = signed(serde_json::json!({
            "sub": "usr_456", "exp": now + 600, "iss": "https://idp.example", "aud": ["shop", "other"]
        }));
        assert_eq!(
            auth(SECRET).verify(&from_idp),
            Ok(user()),
            "ignored when not configured"
        );
        let strict = |issuer: &str, audience: &str| {
            Auth::with_rules(
                &SecretString::from(SECRET.to_string()),
                &TokenRules {
                    issuer: Some(issuer.into()),
                    audience: Some(audience.into()),
                    ..TokenRules::default()
                },
                Clock::system(),
            )
        };
        assert_eq!(strict("https://idp.example", "shop").verify(&from_idp), Ok(user()));
        assert_eq!(
            strict("https://idp.example", "admin").verify(&from_idp),
            Err(AuthError::WrongAudience)
        );
        assert_eq!(
            strict("https://evil.example", "shop").verify(&from_idp),
            Err(AuthError::WrongAudience)
        );
        let bare = signed(serde_json::json!({"sub": "usr_456", "exp": now + 600}));
        assert_eq!(
            strict("https://idp.example", "shop").verify(&bare),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn a_critical_extension_is_refused() {
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some("JWT".into());
        let claims = serde_json::json!({"sub": "usr_456", "exp": now() + 600});
        let token =
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(SECRET.as_bytes())).expect("encode");
        let (_, rest) = token.split_once('.').expect("a JWT");
        let crit = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"alg":"HS256","typ":"JWT","crit":["exp-ext"],"exp-ext":1}"#);
        assert_eq!(
            auth(SECRET).verify(&format!("{crit}.{rest}")),
            Err(AuthError::UnsupportedExtension)
        );
    }

    #[test]
    fn tokens_signed_with_another_key_or_algorithm_or_none_are_rejected() {
        let now = now();
        let token = auth("another-secret-another-secret-xx")
            .issue(&user(), Duration::from_secs(60))
            .expect("issue");
        assert_eq!(auth(SECRET).verify(&token), Err(AuthError::BadSignature));
        let none_header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!(r#"{{"sub":"usr_456","exp":{}}}"#, now + 60));
        assert_eq!(
            auth(SECRET).verify(&format!("{none_header}.{claims}.")),
            Err(AuthError::Malformed)
        );
        let hs512 = encode(
            &serde_json::json!({"sub": "usr_456", "exp": now + 60}),
            SECRET,
            Algorithm::HS512,
        );
        assert_eq!(auth(SECRET).verify(&hs512), Err(AuthError::Malformed));
        let no_exp = signed(serde_json::json!({"sub": "usr_456"}));
        assert_eq!(auth(SECRET).verify(&no_exp), Err(AuthError::Malformed));
        let no_sub = signed(serde_json::json!({"exp": now + 60}));
        assert_eq!(auth(SECRET).verify(&no_sub), Err(AuthError::Malformed));
        assert_eq!(auth(SECRET).verify_header(None), Err(AuthError::Missing));
        assert_eq!(
            auth(SECRET).verify_header(Some("Basic dXNlcjpwYXNz")),
            Err(AuthError::Missing)
        );
        assert_eq!(auth(SECRET).verify("not-a-jwt"), Err(AuthError::Malformed));
    }

    #[test]
    fn only_a_sent_token_is_called_invalid_in_the_challenge() {
        assert_eq!(AuthError::Missing.challenge(), r#"Bearer realm="checkout-service""#);
        assert!(AuthError::Expired.challenge().ends_with(r#"error="invalid_token""#));
    }
}
