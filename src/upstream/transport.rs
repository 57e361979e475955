//! The HTTP/1.1 transport under the dependency clients: keep-alive connections to one
//! origin, over TCP or TLS, kept in a small pool; and calls that report whether their
//! request can have been written, which decides whether a failed charge may be undone.

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HOST, HeaderValue, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use reqwest::Url;
use rustls::pki_types::ServerName;
use rustls_platform_verifier::BuilderVerifierExt as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Most bytes read from one answer. Every answer this service expects is a small
/// JSON document; a dependency sending more is misbehaving, and is not read further.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// A request body.
pub type Body = Full<Bytes>;

type BoxError = Box<dyn StdError + Send + Sync>;

/// An answer, status and body read in full.
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// Body bytes.
    pub body: Bytes,
}

/// How a call failed.
#[derive(Debug)]
pub enum Failure {
    /// The request was certainly not written: no connection (TCP or TLS) could be
    /// made in time, or the connection closed before taking the request.
    NotSent(BoxError),
    /// The request was, or may have been, written, and no answer came in time.
    TimedOut,
    /// The request was, or may have been, written, and the connection broke before
    /// the whole answer arrived.
    Lost(BoxError),
    /// The answer's body was longer than [`MAX_ANSWER_BYTES`].
    TooLarge,
}

/// Says what happened; the cause, if any, is the error's source, so that a cause
/// chain names each link once.
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NotSent(_) => f.write_str("the request was not sent"),
            Failure::TimedOut => f.write_str("no answer in time"),
            Failure::Lost(_) => f.write_str("the connection broke before the answer was complete"),
            Failure::TooLarge => write!(f, "the answer is longer than {MAX_ANSWER_BYTES} bytes"),
        }
    }
}

impl StdError for Failure {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Failure::NotSent(cause) | Failure::Lost(cause) => Some(cause.as_ref()),
            Failure::TimedOut | Failure::TooLarge => None,
        }
    }
}

/// A connection not doing anything, and since when.
struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// Where connections go.
enum Target {
    Name(String),
    Addr(IpAddr),
}

/// Connections to one origin (scheme, host and port) and the calls made over them.
pub struct Transport {
    target: Target,
    port: u16,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// The `Host` header: the URL's host, and its port unless it is the scheme's default.
    authority: HeaderValue,
    /// The base URL's path without its trailing slash; request paths are appended.
    base_path: String,
    user_agent: HeaderValue,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    pool: Mutex<Pool>,
}

/// The connections not in use, and the calls waiting for one.
#[derive(Default)]
struct Pool {
    /// Most recently used last: calls take the warmest connection, and the ones
    /// left at the bottom run out their idle time.
    idle: Vec<Idle>,
    /// Calls that found no idle connection and are making one; a connection handed
    /// back meanwhile goes to the first of them still waiting.
    waiting: VecDeque<oneshot::Sender<SendRequest<Body>>>,
}

/// How a transport connects and how long it keeps connections.
pub struct Options {
    /// Bound on making a connection, TLS handshake included.
    pub connect_timeout: Duration,
    /// A connection idle for longer is closed instead of reused.
    pub idle_timeout: Duration,
    /// Most idle connections kept; a burst beyond them leaves no more open after it.
    pub max_idle: usize,
    /// The `User-Agent` header.
    pub user_agent: &'static str,
}

impl Transport {
    /// A transport to the origin of `base` (an `http` or `https` URL with a host).
    /// HTTPS servers are verified against the platform's trusted roots.
    pub fn new(base: &Url, options: Options) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let host = base.host_str().context("the URL has no host")?;
        let port = base.port_or_known_default().context("the URL has no port")?;
        // An IPv6 address comes in brackets, as it is written in URLs.
        let target = match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip) => Target::Addr(ip),
            Err(_) => Target::Name(host.to_string()),
        };
        let tls = match base.scheme() {
            "http" => None,
            "https" => {
                let name = match &target {
                    Target::Addr(ip) => ServerName::from(*ip),
                    Target::Name(name) => {
                        ServerName::try_from(name.clone()).context("the host is not a valid TLS name")?
                    }
                };
                let mut config =
                    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                        .with_safe_default_protocol_versions()?
                        .with_platform_verifier()?
                        .with_no_client_auth();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
            }
            other => anyhow::bail!("unsupported URL scheme {other:?}"),
        };
        let authority = match base.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        Ok(Self {
            target,
            port,
            tls,
            authority: HeaderValue::try_from(authority).context("the host cannot be sent in a header")?,
            base_path: base.path().trim_end_matches('/').to_string(),
            user_agent: HeaderValue::from_static(options.user_agent),
            connect_timeout: options.connect_timeout,
            idle_timeout: options.idle_timeout,
            max_idle: options.max_idle,
            pool: Mutex::new(Pool::default()),
        })
    }

    /// A request for `path` (which may carry a query) under the base URL, with the
    /// `Host` and `User-Agent` headers set.
    pub fn request(&self, method: Method, path: &str) -> hyper::http::request::Builder {
        let mut uri = String::with_capacity(self.base_path.len() + path.len());
        uri.push_str(&self.base_path);
        uri.push_str(path);
        Request::builder()
            .method(method)
            .uri(uri)
            .header(HOST, self.authority.clone())
            .header(USER_AGENT, self.user_agent.clone())
    }

    /// Makes one call, ending by `deadline`. A pooled connection that turns out to be
    /// closed hands the request back unsent, and the call moves to the next one.
    pub async fn call(&self, request: Request<Body>, deadline: Instant) -> Result<Answer, Failure> {
        let mut handed_over = false;
        let outcome = tokio::time::timeout_at(deadline, self.exchange(request, &mut handed_over)).await;
        match outcome {
            Ok(result) => result,
            Err(_) if handed_over => Err(Failure::TimedOut),
            Err(_) => Err(Failure::NotSent("no connection was ready in time".into())),
        }
    }

    /// The call itself. `handed_over` is true from the moment the request is given to
    /// a connection until that connection hands it back unwritten.
    async fn exchange(&self, mut request: Request<Body>, handed_over: &mut bool) -> Result<Answer, Failure> {
        loop {
            let (mut sender, reused) = match self.take_idle() {
                Some(sender) => (sender, true),
                None => self.connect_or_take_returned().await?,
            };
            // A pooled connection may still be finishing its last answer, which takes
            // moments; one the server has closed fails here, before taking anything.
            if let Err(closed) = sender.ready().await {
                if reused {
                    continue;
                }
                return Err(Failure::NotSent(closed.into()));
            }
            *handed_over = true;
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let status = response.status();
                    let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                        .collect()
                        .await
                        .map_err(|error| {
                            if error.is::<LengthLimitError>() {
                                Failure::TooLarge
                            } else {
                                Failure::Lost(error)
                            }
                        })?
                        .to_bytes();
                    self.put_back(sender);
                    return Ok(Answer { status, body });
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) if reused => {
                        *handed_over = false;
                        request = unsent;
                    }
                    Some(_) => {
                        *handed_over = false;
                        return Err(Failure::NotSent(error.into_error().into()));
                    }
                    None => return Err(Failure::Lost(error.into_error().into())),
                },
            }
        }
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        // The pool stays consistent whatever panicked while holding the lock.
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection that is still open and fresh.
    fn take_idle(&self) -> Option<SendRequest<Body>> {
        let mut pool = self.pool();
        while let Some(entry) = pool.idle.pop() {
            if !entry.sender.is_closed() && entry.since.elapsed() < self.idle_timeout {
                return Some(entry.sender);
            }
        }
        None
    }

    /// With no idle connection: makes one, and meanwhile takes any that another
    /// call hands back, whichever comes first. A burst of calls beyond the idle
    /// connections then does not fail for a connection the server is slow to
    /// accept (a dropped SYN is sent again only after a second) while the calls
    /// before it are finishing. Returns the connection and whether it was used before.
    async fn connect_or_take_returned(&self) -> Result<(SendRequest<Body>, bool), Failure> {
        let (handing, mut returned) = oneshot::channel();
        self.pool().waiting.push_back(handing);
        let connecting = self.connect();
        tokio::pin!(connecting);
        let taken = tokio::select! {
            biased;
            Ok(sender) = &mut returned => Ok((sender, true)),
            connected = &mut connecting => connected.map(|sender| (sender, false)).map_err(Failure::NotSent),
        };
        // No longer waiting: a connection handed over in the meantime goes back, and
        // this call's place in the queue (and any other call's left by one that has
        // given up) is cleared, so the queue never outgrows the calls in flight.
        returned.close();
        if let Ok(late) = returned.try_recv() {
            self.put_back(late);
        }
        self.pool().waiting.retain(|handing| !handing.is_closed());
        taken
    }

    /// Idle connections still open.
    #[cfg(test)]
    fn idle_open(&self) -> usize {
        self.pool()
            .idle
            .iter()
            .filter(|entry| !entry.sender.is_closed())
            .count()
    }

    /// Calls waiting for a connection.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.pool().waiting.len()
    }

    /// A connection whose call is over: to the first call still waiting for one, or
    /// among the idle ones if there is room.
    fn put_back(&self, mut sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut pool = self.pool();
        while let Some(waiting) = pool.waiting.pop_front() {
            match waiting.send(sender) {
                Ok(()) => return,
                // That call has stopped waiting; try the next.
                Err(back) => sender = back,
            }
        }
        if pool.idle.len() < self.max_idle {
            pool.idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// A new connection, TLS handshake included, within the connect timeout.
    async fn connect(&self) -> Result<SendRequest<Body>, BoxError> {
        let connecting = async {
            let tcp = match &self.target {
                Target::Addr(ip) => TcpStream::connect(SocketAddr::new(*ip, self.port)).await?,
                Target::Name(name) => TcpStream::connect((name.as_str(), self.port)).await?,
            };
            tcp.set_nodelay(true)?;
            match &self.tls {
                None => handshake(tcp).await,
                Some((connector, name)) => handshake(connector.connect(name.clone(), tcp).await?).await,
            }
        };
        match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(result) => result,
            Err(_) => Err(format!("no connection within {}ms", self.connect_timeout.as_millis()).into()),
        }
    }
}

/// Starts HTTP/1.1 on `io`; the connection runs in a task of its own until its
/// sender is dropped or the server closes it. Its errors reach the call in flight.
async fn handshake<T>(io: T) -> Result<SendRequest<Body>, BoxError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// `text` as one path segment or query value: everything but unreserved characters
/// percent-encoded.
pub fn encode_component(text: &str) -> std::borrow::Cow<'_, str> {
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    if text.bytes().all(unreserved) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut encoded = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if unreserved(b) {
            encoded.push(char::from(b));
        } else {
            encoded.push('%');
            encoded.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            encoded.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        }
    }
    std::borrow::Cow::Owned(encoded)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use tokio::io::AsyncReadExt as _;
    use tokio::net::{TcpListener, TcpSocket};

    use super::*;

    fn options() -> Options {
        Options {
            connect_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_secs(30),
            max_idle: 4,
            user_agent: "checkout-service/test",
        }
    }

    fn transport(base: &str) -> Transport {
        Transport::new(&Url::parse(base).expect("URL"), options()).expect("transport")
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    /// What a test server saw: its connections, and each request's head.
    #[derive(Default)]
    struct Seen {
        connections: AtomicUsize,
        heads: Mutex<Vec<String>>,
    }

    /// An HTTP/1.1 server answering every request with `answer(request number)`, and
    /// closing each connection after `per_connection` answers.
    async fn server(per_connection: usize, answer: fn(usize) -> hyper::Response<Body>) -> (String, Arc<Seen>) {
        server_closing_idle(per_connection, None, answer).await
    }

    /// The same, also closing a connection that stays idle for `idle_close`, as a
    /// server's keep-alive timeout does.
    async fn server_closing_idle(
        per_connection: usize,
        idle_close: Option<Duration>,
        answer: fn(usize) -> hyper::Response<Body>,
    ) -> (String, Arc<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}/base/", listener.local_addr().expect("address"));
        let seen = Arc::new(Seen::default());
        let served = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                served.connections.fetch_add(1, Ordering::SeqCst);
                let (seen, left) = (served.clone(), Arc::new(AtomicUsize::new(per_connection)));
                tokio::spawn(async move {
                    let service = service_fn(move |request: hyper::Request<Incoming>| {
                        let (seen, left) = (seen.clone(), left.clone());
                        async move {
                            let head = format!(
                                "{} {} host={} agent={}",
                                request.method(),
                                request.uri(),
                                request.headers()[HOST].to_str().unwrap_or("?"),
                                request.headers()[USER_AGENT].to_str().unwrap_or("?"),
                            );
                            let number = {
                                let mut heads = seen.heads.lock().expect("heads");
                                heads.push(head);
                                heads.len()
                            };
                            let mut response = answer(number);
                            if left.fetch_sub(1, Ordering::SeqCst) == 1 {
                                response
                                    .headers_mut()
                                    .insert("connection", HeaderValue::from_static("close"));
                            }
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    if let Some(idle) = idle_close {
                        builder
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(idle);
                    }
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        (base, seen)
    }

    /// A base URL where nothing listens: a port just bound and let go.
    async fn nothing_listening() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        format!("http://{}", listener.local_addr().expect("address"))
    }

    fn ok(number: usize) -> hyper::Response<Body> {
        hyper::Response::new(Body::from(format!("answer {number}")))
    }

    async fn get(transport: &Transport, path: &str) -> Result<Answer, Failure> {
        let request = transport
            .request(Method::GET, path)
            .body(Body::default())
            .expect("request");
        transport.call(request, soon()).await
    }

    #[tokio::test]
    async fn calls_reuse_one_connection_and_send_the_base_path_host_and_agent() {
        let (base, seen) = server(usize::MAX, ok).await;
        let transport = transport(&base);
        for expected in ["answer 1", "answer 2", "answer 3"] {
            let answer = get(&transport, "/v1/things?key=a%20b").await.expect("answer");
            assert_eq!((answer.status, &answer.body[..]), (StatusCode::OK, expected.as_bytes()));
        }
        assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
        let authority = base.trim_start_matches("http://").trim_end_matches("/base/");
        assert_eq!(
            seen.heads.lock().expect("heads")[0],
            format!("GET /base/v1/things?key=a%20b host={authority} agent=checkout-service/test")
        );
    }

    #[tokio::test]
    async fn a_connection_the_server_closes_after_answering_is_not_reused() {
        let (base, seen) = server(1, ok).await;
        let transport = transport(&base);
        for _ in 0..3 {
            assert_eq!(get(&transport, "/").await.expect("answer").status, StatusCode::OK);
        }
        assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_pooled_connection_the_server_closed_while_idle_is_skipped() {
        let (base, seen) = server_closing_idle(usize::MAX, Some(Duration::from_millis(50)), ok).await;
        let transport = transport(&base);
        assert_eq!(get(&transport, "/").await.expect("answer").status, StatusCode::OK);
        // Wait until the client has seen the server close the idle connection.
        let mut waited = Duration::ZERO;
        while transport.idle_open() > 0 && waited < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += Duration::from_millis(10);
        }
        assert_eq!(transport.idle_open(), 0, "the server closed the idle connection");
        assert_eq!(get(&transport, "/").await.expect("answer").status, StatusCode::OK);
        assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn nothing_listening_means_the_request_was_not_sent() {
        let failure = get(&transport(&nothing_listening().await), "/").await.err();
        assert!(matches!(failure, Some(Failure::NotSent(_))), "{failure:?}");
    }

    /// A listener whose queue is full: Linux drops further connection attempts, so a
    /// connect neither succeeds nor fails until the client gives up.
    async fn full_listener() -> (TcpListener, Vec<std::net::TcpStream>) {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.bind("127.0.0.1:0".parse().expect("address")).expect("bind");
        let listener = socket.listen(0).expect("listen");
        let address = listener.local_addr().expect("address");
        let fillers = (0..2)
            .filter_map(|_| std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).ok())
            .collect();
        (listener, fillers)
    }

    #[tokio::test]
    async fn no_connection_within_the_connect_timeout_is_not_sent_and_ends_long_before_the_deadline() {
        let (listener, _fillers) = full_listener().await;
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let started = Instant::now();
        let failure = get(&transport(&base), "/").await.err();
        assert!(matches!(&failure, Some(Failure::NotSent(_))), "{failure:?}");
        let cause = failure.as_ref().and_then(|f| f.source()).map(ToString::to_string);
        assert_eq!(cause.as_deref(), Some("no connection within 300ms"));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "bounded by the connect timeout"
        );
    }

    #[tokio::test]
    async fn a_call_finding_no_idle_connection_takes_one_handed_back_while_its_connect_stalls() {
        // One connection, accepted and served; after it the listener's queue is full,
        // so any further connect hangs. The first answer takes a moment.
        let socket = TcpSocket::new_v4().expect("socket");
        socket.bind("127.0.0.1:0".parse().expect("address")).expect("bind");
        let listener = socket.listen(0).expect("listen");
        let address = listener.local_addr().expect("address");
        let accepted = Arc::new(tokio::sync::Notify::new());
        let served = accepted.clone();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            served.notify_one();
            let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
            let service = service_fn(move |_: hyper::Request<Incoming>| {
                let slow = first.swap(false, Ordering::SeqCst);
                async move {
                    if slow {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Body::from("served")))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(listener);
        });
        let transport = Transport::new(
            &Url::parse(&format!("http://{address}")).expect("URL"),
            Options {
                connect_timeout: Duration::from_secs(5),
                ..options()
            },
        )
        .expect("transport");
        let first = get(&transport, "/first");
        let second = async {
            accepted.notified().await;
            let _filler = std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200));
            let started = Instant::now();
            (get(&transport, "/second").await, started.elapsed())
        };
        let (first, (second, waited)) = tokio::join!(first, second);
        assert_eq!(&first.expect("first answer").body[..], b"served");
        assert_eq!(&second.expect("second answer").body[..], b"served");
        assert!(
            waited < Duration::from_secs(4),
            "it did not wait out its connect: {waited:?}"
        );
        assert_eq!(transport.waiting(), 0);
    }

    #[tokio::test]
    async fn calls_that_fail_to_connect_leave_nobody_waiting() {
        let transport = transport(&nothing_listening().await);
        let calls = (0..20).map(|_| get(&transport, "/"));
        for failure in futures_util::future::join_all(calls).await {
            assert!(matches!(failure, Err(Failure::NotSent(_))), "{:?}", failure.err());
        }
        assert_eq!(transport.waiting(), 0);
    }

    #[tokio::test]
    async fn a_tls_server_that_never_finishes_its_handshake_is_not_sent() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("https://localhost:{}", listener.local_addr().expect("address").port());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let failure = get(&transport(&base), "/").await.err();
        assert!(matches!(failure, Some(Failure::NotSent(_))), "{failure:?}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out_with_the_request_handed_over() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buffer = [0u8; 1024];
                let _ = stream.read(&mut buffer).await;
                held.push(stream);
            }
        });
        let transport = transport(&base);
        let request = transport
            .request(Method::POST, "/charge")
            .body(Body::from("{}"))
            .expect("request");
        let failure = transport
            .call(request, Instant::now() + Duration::from_millis(500))
            .await
            .err();
        assert!(matches!(failure, Some(Failure::TimedOut)), "{failure:?}");
    }

    #[tokio::test]
    async fn a_connection_dropped_before_the_answer_is_lost_not_unsent() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                // Read the request, then hang up without a word.
                let mut buffer = [0u8; 1024];
                let _ = stream.read(&mut buffer).await;
            }
        });
        let failure = get(&transport(&base), "/").await.err();
        assert!(matches!(failure, Some(Failure::Lost(_))), "{failure:?}");
    }

    #[tokio::test]
    async fn an_answer_over_the_limit_is_refused_and_its_connection_not_kept() {
        fn huge(_: usize) -> hyper::Response<Body> {
            hyper::Response::new(Body::from(vec![b'x'; MAX_ANSWER_BYTES + 1]))
        }
        let (base, seen) = server(usize::MAX, huge).await;
        let transport = transport(&base);
        for _ in 0..2 {
            let failure = get(&transport, "/").await.err();
            assert!(matches!(failure, Some(Failure::TooLarge)), "{failure:?}");
        }
        assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn components_are_sent_as_they_are_when_unreserved_and_percent_encoded_otherwise() {
        assert_eq!(encode_component("att_01abc-X.y~z"), "att_01abc-X.y~z");
        assert_eq!(encode_component("a b/c?d#e%é"), "a%20b%2Fc%3Fd%23e%25%C3%A9");
    }

    #[test]
    fn ipv6_hosts_and_default_ports_make_the_right_host_header() {
        let transport = transport("http://[::1]:8080/");
        assert!(matches!(transport.target, Target::Addr(IpAddr::V6(_))));
        assert_eq!(transport.authority, "[::1]:8080");
        let transport = self::transport("https://payments.example/api");
        assert_eq!(
            (transport.authority.to_str().ok(), transport.port),
            (Some("payments.example"), 443)
        );
        assert_eq!(transport.base_path, "/api");
    }
}
