//! Bearer tokens: HS256 JWTs signed with `JWT_SECRET`, whose `sub` claim is the user.
//! Only HS256 is accepted (so `alg: none` and algorithm confusion are rejected), and
//! `exp` is required and enforced without leeway.
//!
//! A client sends the same token with every request, so verified tokens are
//! remembered by their exact bytes (signature included) and only their expiry is
//! checked again: the same bytes always verify the same way under one key. Only
//! tokens that verified are remembered, and the cache is bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::domain::UserId;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
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
}

/// How many verified tokens are remembered before the cache starts over.
const VERIFIED_CAPACITY: usize = 10_000;

/// Issues and verifies tokens with one secret.
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Keyed by the token's exact text. A token is some 150 bytes, which SipHash took
    /// longer to hash than the rest of the lookup; foldhash, seeded at random, resists
    /// engineered collisions too, and only tokens whose signature verified get in.
    verified: Mutex<HashMap<Box<str>, (UserId, u64), foldhash::quality::RandomState>>,
}

impl Auth {
    /// Keys derived from `secret`.
    pub fn new(secret: &SecretString) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
            verified: Mutex::new(HashMap::default()),
        }
    }

    /// A token for `user` that expires after `ttl`.
    pub fn issue(&self, user: &UserId, ttl: Duration) -> anyhow::Result<String> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: user.as_str().to_string(),
            exp: now.saturating_add(ttl.as_secs()),
            iat: Some(now),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// The user a token speaks for.
    pub fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some((user, exp)) = self.remembered(token) {
            return if now < exp { Ok(user) } else { Err(AuthError::Expired) };
        }
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                _ => AuthError::Malformed,
            })?;
        let user = UserId::parse(&data.claims.sub).map_err(|_| AuthError::Malformed)?;
        let mut verified = self.verified.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if verified.len() >= VERIFIED_CAPACITY {
            verified.clear();
        }
        verified.insert(token.into(), (user.clone(), data.claims.exp));
        Ok(user)
    }

    fn remembered(&self, token: &str) -> Option<(UserId, u64)> {
        let verified = self.verified.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        verified.get(token).cloned()
    }

    #[cfg(test)]
    fn remembered_tokens(&self) -> usize {
        self.verified.lock().map(|v| v.len()).unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(secret: &str) -> Auth {
        Auth::new(&SecretString::from(secret.to_string()))
    }

    fn user() -> UserId {
        UserId::parse("usr_456").expect("valid user")
    }

    fn encode_claims(claims: &serde_json::Value, secret: &str, alg: Algorithm) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret.as_bytes())).expect("encode")
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn issued_tokens_verify_to_their_user() {
        let auth = auth(SECRET);
        let token = auth.issue(&user(), Duration::from_secs(60)).expect("issue");
        assert_eq!(auth.verify(&token), Ok(user()));
        assert_eq!(auth.verify_header(Some(&format!("Bearer {token}"))), Ok(user()));
        assert_eq!(auth.verify_header(Some(&format!("bearer  {token}"))), Ok(user()));
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let verifier = auth(SECRET);
        let now = jsonwebtoken::get_current_timestamp();
        let soon = encode_claims(
            &serde_json::json!({"sub": "usr_456", "exp": now + 1}),
            SECRET,
            Algorithm::HS256,
        );
        assert_eq!(verifier.verify(&soon), Ok(user()));
        assert_eq!(verifier.remembered_tokens(), 1);
        assert_eq!(verifier.verify(&soon), Ok(user()), "from the cache");
        let forged = auth("another-secret-another-secret-xx").issue(&user(), Duration::from_secs(60));
        assert!(verifier.verify(&forged.expect("issue")).is_err());
        assert_eq!(verifier.remembered_tokens(), 1, "only verified tokens are remembered");
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(verifier.verify(&soon), Err(AuthError::Expired));
        let tampered = format!("{}x", &soon[..soon.len() - 1]);
        assert_ne!(
            verifier.verify(&tampered),
            Ok(user()),
            "other bytes are verified afresh"
        );
    }

    #[test]
    fn tokens_signed_with_another_key_are_rejected() {
        let token = auth("another-secret-another-secret-xx")
            .issue(&user(), Duration::from_secs(60))
            .expect("issue");
        assert_eq!(auth(SECRET).verify(&token), Err(AuthError::BadSignature));
    }

    #[test]
    fn expired_tokens_and_tokens_without_exp_are_rejected() {
        let now = jsonwebtoken::get_current_timestamp();
        let expired = encode_claims(
            &serde_json::json!({"sub": "usr_456", "exp": now - 1}),
            SECRET,
            Algorithm::HS256,
        );
        assert_eq!(auth(SECRET).verify(&expired), Err(AuthError::Expired));
        let no_exp = encode_claims(&serde_json::json!({"sub": "usr_456"}), SECRET, Algorithm::HS256);
        assert_eq!(auth(SECRET).verify(&no_exp), Err(AuthError::Malformed));
        let no_sub = encode_claims(&serde_json::json!({"exp": now + 60}), SECRET, Algorithm::HS256);
        assert_eq!(auth(SECRET).verify(&no_sub), Err(AuthError::Malformed));
    }

    #[test]
    fn unsigned_and_other_algorithm_tokens_are_rejected() {
        use base64_url as b64;
        let now = jsonwebtoken::get_current_timestamp();
        let header = b64(r#"{"alg":"none","typ":"JWT"}"#);
        let claims = b64(&format!(r#"{{"sub":"usr_456","exp":{}}}"#, now + 60));
        assert_eq!(
            auth(SECRET).verify(&format!("{header}.{claims}.")),
            Err(AuthError::Malformed)
        );
        let hs512 = encode_claims(
            &serde_json::json!({"sub": "usr_456", "exp": now + 60}),
            SECRET,
            Algorithm::HS512,
        );
        assert_eq!(auth(SECRET).verify(&hs512), Err(AuthError::Malformed));
        assert_eq!(auth(SECRET).verify_header(None), Err(AuthError::Missing));
        assert_eq!(
            auth(SECRET).verify_header(Some("Basic dXNlcjpwYXNz")),
            Err(AuthError::Missing)
        );
        assert_eq!(auth(SECRET).verify("not-a-jwt"), Err(AuthError::Malformed));
    }

    /// Unpadded base64url, enough to hand-craft a token.
    fn base64_url(text: &str) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = text.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            }
        }
        out
    }
}
