//! The one HTTP client stack of the service: hyper-util's pooled client, over
//! hyper-rustls for `https` URLs, used for the dependencies, the alert webhook, the
//! trace export and `triage --url`; a request type that says what a call sends
//! ([`Request`]); and the one thing the pool does not say for us, classified here:
//! whether a failed call can have reached its server ([`Failure`]), which decides
//! whether a failed charge may be undone.
//!
//! The pool is hyper-util's, without reqwest's layers over it: on the checkout
//! ceiling (`examples/checkout_ceiling.rs`, three calls per request) those layers
//! cost 24 µs of CPU per request (65 µs against 41 µs) and 37% of its requests/s
//! on one core (`docs/performance.md`). What reqwest did besides is done here: the
//! `User-Agent`, JSON, form and query encoding, a connect timeout, a total
//! deadline, no proxy from the environment, no redirects followed.

use std::error::Error as StdError;
use std::sync::Once;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT};
use http::{HeaderMap, Method, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;
use url::Url;

/// An error from below, kept whole as the cause of a [`Failure`].
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Most bytes read from one answer. Every answer this service expects is a small
/// JSON document; a server sending more is misbehaving, and is not read further.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// `checkout-service/<version>`, the `User-Agent` of every call.
pub const AGENT: &str = concat!("checkout-service/", env!("CARGO_PKG_VERSION"));

/// `Idempotency-Key`, which the payment providers read.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// How long an unused connection is kept for reuse, unless a client says otherwise.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Installs the process-wide TLS crypto provider (ring) once, before any client exists.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Fails only if a provider is already installed, which is what we want anyway.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A pooled HTTP/1.1 client with the service's defaults: servers verified against
/// the platform's trusted roots (`SSL_CERT_FILE` names a private CA's), no proxy
/// from the environment, connections made within a connect timeout. Cloning it
/// shares its pool.
#[derive(Clone, Debug)]
pub struct Client {
    pool: hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Client {
    /// A client whose connections are made within `connect_timeout`, keeping a few
    /// idle connections per server.
    pub fn new(connect_timeout: Duration) -> Result<Self, BoxError> {
        Self::pooled(connect_timeout, IDLE_TIMEOUT, 8)
    }

    /// A client keeping at most `max_idle` unused connections per server, each for
    /// at most `idle_timeout`.
    pub fn pooled(connect_timeout: Duration, idle_timeout: Duration, max_idle: usize) -> Result<Self, BoxError> {
        install_crypto_provider();
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_platform_verifier(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let pool = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(idle_timeout)
            .pool_max_idle_per_host(max_idle)
            .build(connector);
        Ok(Self { pool })
    }

    /// Sends `request` and reads its whole answer (at most [`MAX_ANSWER_BYTES`]) by
    /// `deadline`.
    pub async fn call(&self, request: Request, deadline: Instant) -> Result<Answer, Failure> {
        let request = request.into_http().map_err(Failure::Invalid)?;
        let exchange = async {
            let response = self.pool.request(request).await.map_err(classify)?;
            let status = response.status();
            let retry_after = response.headers().get(RETRY_AFTER).cloned();
            let mut incoming = response.into_body();
            let mut body = BytesMut::new();
            while let Some(frame) = incoming.frame().await {
                let frame = frame.map_err(|error| Failure::Lost(error.into()))?;
                if let Ok(chunk) = frame.into_data() {
                    if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                        return Err(Failure::TooLarge);
                    }
                    body.extend_from_slice(&chunk);
                }
            }
            Ok(Answer {
                status,
                retry_after,
                body: body.freeze(),
            })
        };
        tokio::time::timeout_at(deadline, exchange)
            .await
            .unwrap_or(Err(Failure::TimedOut))
    }
}

/// What one call sends: a method, a URL, headers and a body. Encoding a body or a
/// header that cannot be sent is remembered, and the call fails without sending.
#[derive(Debug)]
pub struct Request {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Bytes,
    invalid: Option<String>,
}

impl Request {
    /// A request with no headers of its own and no body.
    pub fn new(method: Method, url: Url) -> Self {
        Self {
            method,
            url,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            invalid: None,
        }
    }

    /// `GET url`.
    pub fn get(url: Url) -> Self {
        Self::new(Method::GET, url)
    }

    /// `POST url`.
    pub fn post(url: Url) -> Self {
        Self::new(Method::POST, url)
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The URL, query included.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The headers set so far.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.headers
    }

    /// Sets header `name` to `value` (text that is not a valid header value makes
    /// the request invalid).
    pub fn header<V>(mut self, name: HeaderName, value: V) -> Self
    where
        V: TryInto<HeaderValue>,
        V::Error: std::fmt::Display,
    {
        match value.try_into() {
            Ok(value) => {
                self.headers.insert(name, value);
            }
            Err(error) => self.invalid = Some(format!("header {name} cannot be sent: {error}")),
        }
        self
    }

    /// `Authorization: Bearer <token>`, marked sensitive.
    pub fn bearer(self, token: &HeaderValue) -> Self {
        self.header(AUTHORIZATION, token.clone())
    }

    /// The query pairs, percent-encoded, added to the URL's.
    pub fn query(mut self, pairs: &[(&str, &str)]) -> Self {
        self.url.query_pairs_mut().extend_pairs(pairs);
        self
    }

    /// A JSON body.
    pub fn json<T: serde::Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => {
                self.headers
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                self.body = body.into();
            }
            Err(error) => self.invalid = Some(format!("the body cannot be written as JSON: {error}")),
        }
        self
    }

    /// An `application/x-www-form-urlencoded` body of `pairs`.
    pub fn form<K: AsRef<str>, V: AsRef<str>>(mut self, pairs: &[(K, V)]) -> Self {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs.iter().map(|(k, v)| (k.as_ref(), v.as_ref())))
            .finish();
        self.headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        self.body = body.into();
        self
    }

    /// A body of raw bytes, its type set apart with [`Request::header`].
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    fn into_http(mut self) -> Result<http::Request<Full<Bytes>>, BoxError> {
        if let Some(why) = self.invalid {
            return Err(why.into());
        }
        let uri: Uri = self.url.as_str().parse()?;
        self.headers
            .entry(USER_AGENT)
            .or_insert(HeaderValue::from_static(AGENT));
        let mut request = http::Request::new(Full::new(self.body));
        *request.method_mut() = self.method;
        *request.uri_mut() = uri;
        *request.headers_mut() = self.headers;
        Ok(request)
    }
}

/// An answer: its status, its `Retry-After` if any, and its body read in full.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// The `Retry-After` header, as sent.
    pub retry_after: Option<HeaderValue>,
    /// Body bytes.
    pub body: Bytes,
}

/// How a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The request could not be made: a URL, header or body that cannot be sent.
    #[error("the request could not be made")]
    Invalid(#[source] BoxError),
    /// The request was certainly not sent: no connection (TCP or TLS) could be made.
    #[error("the request was not sent")]
    NotSent(#[source] BoxError),
    /// The request was, or may have been, sent, and no whole answer came in time.
    #[error("no answer in time")]
    TimedOut,
    /// The request was, or may have been, sent, and the connection broke before the
    /// whole answer arrived.
    #[error("the connection broke before the answer was complete")]
    Lost(#[source] BoxError),
    /// The answer's body was longer than [`MAX_ANSWER_BYTES`].
    #[error("the answer is longer than {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
}

impl Failure {
    /// Whether the request certainly never reached the server.
    pub fn was_not_sent(&self) -> bool {
        matches!(self, Failure::Invalid(_) | Failure::NotSent(_))
    }
}

fn classify(error: hyper_util::client::legacy::Error) -> Failure {
    if error.is_connect() {
        Failure::NotSent(error.into())
    } else {
        Failure::Lost(error.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    /// A server that answers each connection with `answer` after reading the request,
    /// or closes it at once when `answer` is empty.
    async fn server(answer: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 4096];
                    let _ = stream.read(&mut buffer).await;
                    let _ = stream.write_all(answer).await;
                });
            }
        });
        format!("http://{address}/")
    }

    fn client() -> Client {
        Client::new(Duration::from_millis(500)).expect("a client")
    }

    fn url(text: &str) -> Url {
        text.parse().expect("a URL")
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn nothing_listening_is_a_request_never_sent() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = format!("http://{}/", listener.local_addr().expect("address"));
        drop(listener);
        let failure = client()
            .call(Request::get(url(&address)), soon())
            .await
            .expect_err("refused");
        assert!(failure.was_not_sent(), "{failure:?}");
    }

    #[tokio::test]
    async fn a_connection_closed_after_the_request_is_an_answer_lost() {
        let address = server(b"").await;
        let failure = client()
            .call(Request::post(url(&address)).body("{}"), soon())
            .await
            .expect_err("closed");
        assert!(matches!(failure, Failure::Lost(_)), "{failure:?}");
    }

    #[tokio::test]
    async fn a_silent_server_is_a_timeout_and_a_huge_answer_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = format!("http://{}/", listener.local_addr().expect("address"));
        let _held = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                kept.push(stream);
            }
        });
        let deadline = Instant::now() + Duration::from_millis(300);
        let failure = client()
            .call(Request::get(url(&address)), deadline)
            .await
            .expect_err("silent");
        assert!(matches!(failure, Failure::TimedOut), "{failure:?}");

        let huge: &'static [u8] = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{}",
                MAX_ANSWER_BYTES + 1,
                "x".repeat(MAX_ANSWER_BYTES + 1)
            )
            .into_bytes()
            .into_boxed_slice(),
        );
        let address = server(huge).await;
        let failure = client()
            .call(Request::get(url(&address)), soon())
            .await
            .expect_err("too large");
        assert!(matches!(failure, Failure::TooLarge), "{failure:?}");
    }

    #[tokio::test]
    async fn an_answer_keeps_its_status_headers_and_body() {
        let address = server(b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-length: 2\r\n\r\n{}").await;
        let answer = client()
            .call(Request::get(url(&address)), soon())
            .await
            .expect("an answer");
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(answer.retry_after.expect("sent"), "7");
        assert_eq!(&answer.body[..], b"{}");
    }

    #[tokio::test]
    async fn a_request_carries_its_query_form_body_agent_and_idempotency_key() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = format!("http://{}/v1/refunds", listener.local_addr().expect("address"));
        let seen = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("a connection");
            let mut buffer = vec![0u8; 4096];
            let read = stream.read(&mut buffer).await.expect("the request");
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
            String::from_utf8_lossy(&buffer[..read]).to_string()
        });
        let request = Request::post(url(&address))
            .query(&[("expand[]", "latest_charge")])
            .header(IDEMPOTENCY_KEY, "refund_pi_1")
            .form(&[("payment_intent", "pi 1&2"), ("metadata[cartId]", "cart_1")]);
        let answer = client().call(request, soon()).await.expect("an answer");
        assert_eq!(answer.status, StatusCode::OK);
        let seen = seen.await.expect("the server's task").to_ascii_lowercase();
        assert!(
            seen.starts_with("post /v1/refunds?expand%5b%5d=latest_charge http/1.1\r\n"),
            "{seen}"
        );
        assert!(
            seen.contains(&format!("user-agent: {}\r\n", AGENT.to_ascii_lowercase())),
            "{seen}"
        );
        assert!(seen.contains("idempotency-key: refund_pi_1\r\n"), "{seen}");
        assert!(
            seen.contains("content-type: application/x-www-form-urlencoded\r\n"),
            "{seen}"
        );
        assert!(
            seen.ends_with("\r\n\r\npayment_intent=pi+1%262&metadata%5bcartid%5d=cart_1"),
            "{seen}"
        );
    }

    #[tokio::test]
    async fn a_header_that_cannot_be_sent_fails_the_call_before_any_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = format!("http://{}/", listener.local_addr().expect("address"));
        let request = Request::get(url(&address)).header(IDEMPOTENCY_KEY, "line\nbreak");
        let failure = client().call(request, soon()).await.expect_err("invalid");
        assert!(matches!(failure, Failure::Invalid(_)), "{failure:?}");
        assert!(failure.was_not_sent());
        let nobody = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
        assert!(nobody.is_err(), "no connection was made");
    }
}
