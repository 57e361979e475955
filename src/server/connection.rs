//! One client connection and the bounds on its waits (DESIGN §7a): a request's
//! headers must arrive within `HEADER_READ_TIMEOUT_MS` of its first byte (or of the
//! connection, for a new one that sends nothing), and a keep-alive connection idle
//! for `KEEPALIVE_IDLE_TIMEOUT_MS` is closed. hyper's own header timeout also runs
//! while a keep-alive connection is idle between requests, which would make the two
//! bounds one; so the connection's reads are watched here ([`Watched`]) and the
//! service marks when a request is being handled ([`Phase`]).
//!
//! Writes are watched too: a client that takes none of its answer (a full socket
//! buffer that does not drain) for `KEEPALIVE_IDLE_TIMEOUT_MS` has its connection
//! closed. hyper has no bound of its own there, so a client that stopped reading
//! would otherwise hold its connection, and one of `MAX_CONNECTIONS`, for good; with
//! this bound it holds it no longer than a client that keeps one idle.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Where a connection is between requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for a request's first byte, since a moment: a new connection, or a
    /// kept-alive one after its last answer.
    Waiting { fresh: bool },
    /// A request's head is arriving.
    ReadingHead,
    /// Requests are being handled; their own bounds apply.
    Handling,
}

/// What the connection and the service handling its requests share.
pub(crate) struct Shared {
    phase: Mutex<(Phase, Instant)>,
    /// Requests being handled on the connection (HTTP/1.1 has one at a time, but
    /// a pipelined client may send the next head before the answer).
    handling: AtomicUsize,
}

impl Shared {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            phase: Mutex::new((Phase::Waiting { fresh: true }, Instant::now())),
            handling: AtomicUsize::new(0),
        })
    }

    fn phase(&self) -> (Phase, Instant) {
        *self.phase.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = (phase, Instant::now());
    }

    /// A request's head has arrived and its handling begins.
    pub(crate) fn request_started(&self) {
        self.handling.fetch_add(1, Ordering::AcqRel);
        self.set(Phase::Handling);
    }

    /// A request's answer is ready; once none is left the connection waits again.
    pub(crate) fn request_finished(&self) {
        if self.handling.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.set(Phase::Waiting { fresh: false });
        }
    }

    /// Whether a request is being handled: closing the connection otherwise loses
    /// nothing a client has sent whole.
    pub(crate) fn is_handling(&self) -> bool {
        self.phase().0 == Phase::Handling
    }
}

/// The two bounds of a connection's waits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    /// From a request's first byte (or a new connection) to its whole head.
    pub(crate) header_read: Duration,
    /// From an answer to the next request's first byte.
    pub(crate) keepalive_idle: Duration,
}

/// A connection's reads and writes, failing with `TimedOut` once the current wait
/// has run past its bound, which makes hyper close the connection.
pub(crate) struct Watched<T> {
    io: T,
    shared: Arc<Shared>,
    bounds: Bounds,
    timer: Pin<Box<Sleep>>,
    /// Runs while writes wait for the client to take what was sent before; made
    /// only when one does.
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl<T> Watched<T> {
    pub(crate) fn new(io: T, shared: Arc<Shared>, bounds: Bounds) -> Self {
        Self {
            io,
            shared,
            bounds,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            write_timer: None,
        }
    }

    /// Passes on what a write or a flush came to, bounding how long the client may
    /// leave it waiting: from the first write that could not go on, until one does.
    fn bound_write<R>(&mut self, cx: &mut Context<'_>, done: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if done.is_ready() {
            self.write_timer = None;
            return done;
        }
        let bound = self.bounds.keepalive_idle;
        let timer = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(bound)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took none of its answer in time",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// When the current wait must end, if it has a bound here.
    fn deadline(&self) -> Option<Instant> {
        let (phase, since) = self.shared.phase();
        match phase {
            Phase::Waiting { fresh: true } | Phase::ReadingHead => Some(since + self.bounds.header_read),
            Phase::Waiting { fresh: false } => Some(since + self.bounds.keepalive_idle),
            Phase::Handling => None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && matches!(this.shared.phase().0, Phase::Waiting { .. }) {
                    this.shared.set(Phase::ReadingHead);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                let Some(deadline) = this.deadline() else {
                    return Poll::Pending;
                };
                if this.timer.deadline() != deadline {
                    this.timer.as_mut().reset(deadline);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent no whole request in time",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let done = Pin::new(&mut self.io).poll_write(cx, buf);
        self.bound_write(cx, done)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let done = Pin::new(&mut self.io).poll_flush(cx);
        self.bound_write(cx, done)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let done = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.bound_write(cx, done)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn bounds() -> Bounds {
        Bounds {
            header_read: Duration::from_secs(5),
            keepalive_idle: Duration::from_secs(60),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_that_sends_nothing_ends_at_the_header_bound() {
        let (client, server) = tokio::io::duplex(64);
        let shared = Shared::new();
        let mut watched = Watched::new(server, shared, bounds());
        let started = Instant::now();
        let mut buffer = [0u8; 8];
        let error = watched.read(&mut buffer).await.expect_err("timed out");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_waits_its_own_bound_and_a_request_none() {
        let (mut client, server) = tokio::io::duplex(64);
        let shared = Shared::new();
        let mut watched = Watched::new(server, shared.clone(), bounds());
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
        let mut buffer = [0u8; 64];
        let _ = watched.read(&mut buffer).await.expect("the head");
        shared.request_started();
        // While handling, reads wait as long as they must.
        let waiting = tokio::time::timeout(Duration::from_secs(600), watched.read(&mut buffer)).await;
        assert!(waiting.is_err(), "no bound while a request is handled");
        shared.request_finished();
        let started = Instant::now();
        let error = watched.read(&mut buffer).await.expect_err("idle too long");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_the_client_never_takes_ends_at_the_keep_alive_bound() {
        let (client, server) = tokio::io::duplex(64);
        let mut watched = Watched::new(server, Shared::new(), bounds());
        let started = Instant::now();
        let error = watched.write_all(&[b'a'; 1024]).await.expect_err("never taken");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_taken_slowly_but_steadily_is_written_whole() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut watched = Watched::new(server, Shared::new(), bounds());
        // The client takes 64 bytes every 50 s: each wait is under the bound, all
        // of them together far over it.
        let reader = tokio::spawn(async move {
            let mut taken = Vec::new();
            let mut buffer = [0u8; 64];
            while taken.len() < 1024 {
                tokio::time::sleep(Duration::from_secs(50)).await;
                let n = client.read(&mut buffer).await.expect("read");
                taken.extend_from_slice(&buffer[..n]);
            }
            taken.len()
        });
        watched.write_all(&[b'a'; 1024]).await.expect("written whole");
        assert_eq!(reader.await.expect("join"), 1024);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_trickles_in_ends_at_the_header_bound_from_its_first_byte() {
        let (mut client, server) = tokio::io::duplex(64);
        let shared = Shared::new();
        shared.request_started();
        shared.request_finished();
        let mut watched = Watched::new(server, shared, bounds());
        tokio::time::advance(Duration::from_secs(30)).await;
        client.write_all(b"G").await.expect("write");
        let mut buffer = [0u8; 64];
        let _ = watched.read(&mut buffer).await.expect("a byte");
        let started = Instant::now();
        let error = watched.read(&mut buffer).await.expect_err("too slow");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
