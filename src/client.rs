//! The one HTTP client stack of the service: reqwest (hyper-util's pooled client),
//! used for the dependencies, the alert webhook and `triage --url`, with this
//! service's TLS setup; and the one thing reqwest does not say for us, classified
//! here: whether a failed call can have reached its server ([`Failure`]), which
//! decides whether a failed charge may be undone.

use std::sync::Once;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderValue, RETRY_AFTER};
use reqwest::{RequestBuilder, StatusCode};
use tokio::time::Instant;

/// Most bytes read from one answer. Every answer this service expects is a small
/// JSON document; a server sending more is misbehaving, and is not read further.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// `checkout-service/<version>`, the `User-Agent` of every call.
pub const USER_AGENT: &str = concat!("checkout-service/", env!("CARGO_PKG_VERSION"));

/// Installs the process-wide TLS crypto provider (ring) once, before any client exists.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Fails only if a provider is already installed, which is what we want anyway.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client builder with the service's defaults: HTTP/1.1, servers verified against
/// the platform's trusted roots (`SSL_CERT_FILE` adds a private CA), no proxy from
/// the environment, connections made within `connect_timeout`.
pub fn builder(connect_timeout: Duration) -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .user_agent(USER_AGENT)
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
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
    /// The request was certainly not sent: it could not be built, or no connection
    /// (TCP or TLS) could be made.
    #[error("the request was not sent")]
    NotSent(#[source] reqwest::Error),
    /// The request was, or may have been, sent, and no whole answer came in time.
    #[error("no answer in time")]
    TimedOut,
    /// The request was, or may have been, sent, and the connection broke before the
    /// whole answer arrived.
    #[error("the connection broke before the answer was complete")]
    Lost(#[source] reqwest::Error),
    /// The answer's body was longer than [`MAX_ANSWER_BYTES`].
    #[error("the answer is longer than {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
}

impl Failure {
    /// Whether the request certainly never reached the server.
    pub fn was_not_sent(&self) -> bool {
        matches!(self, Failure::NotSent(_))
    }
}

fn classify(error: reqwest::Error) -> Failure {
    if error.is_builder() || error.is_connect() {
        Failure::NotSent(error)
    } else if error.is_timeout() {
        Failure::TimedOut
    } else {
        Failure::Lost(error)
    }
}

/// Sends `request` and reads its whole answer (at most [`MAX_ANSWER_BYTES`]) by
/// `deadline`.
pub async fn call(request: RequestBuilder, deadline: Instant) -> Result<Answer, Failure> {
    let (client, request) = request.build_split();
    match request {
        Ok(request) => send(&client, request, deadline).await,
        Err(error) => Err(Failure::NotSent(error)),
    }
}

/// [`call`] for a request already built.
pub async fn send(client: &reqwest::Client, request: reqwest::Request, deadline: Instant) -> Result<Answer, Failure> {
    let exchange = async {
        let response = client.execute(request).await.map_err(classify)?;
        let status = response.status();
        let retry_after = response.headers().get(RETRY_AFTER).cloned();
        let mut response = response;
        let mut body = BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(Failure::TooLarge);
            }
            body.extend_from_slice(&chunk);
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

    fn client() -> reqwest::Client {
        builder(Duration::from_millis(500)).build().expect("a client")
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn nothing_listening_is_a_request_never_sent() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("address"));
        drop(listener);
        let failure = call(client().get(url), soon()).await.expect_err("refused");
        assert!(failure.was_not_sent(), "{failure:?}");
    }

    #[tokio::test]
    async fn a_connection_closed_after_the_request_is_an_answer_lost() {
        let url = server(b"").await;
        let failure = call(client().post(url).body("{}"), soon()).await.expect_err("closed");
        assert!(matches!(failure, Failure::Lost(_)), "{failure:?}");
    }

    #[tokio::test]
    async fn a_silent_server_is_a_timeout_and_a_huge_answer_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("address"));
        let _held = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                kept.push(stream);
            }
        });
        let deadline = Instant::now() + Duration::from_millis(300);
        let failure = call(client().get(url), deadline).await.expect_err("silent");
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
        let url = server(huge).await;
        let failure = call(client().get(url), soon()).await.expect_err("too large");
        assert!(matches!(failure, Failure::TooLarge), "{failure:?}");
    }

    #[tokio::test]
    async fn an_answer_keeps_its_status_headers_and_body() {
        let url = server(b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-length: 2\r\n\r\n{}").await;
        let answer = call(client().get(url), soon()).await.expect("an answer");
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(answer.retry_after.expect("sent"), "7");
        assert_eq!(&answer.body[..], b"{}");
    }
}
