//! The request-body policy every endpoint goes through, decided before any byte of a body is
//! read or parsed:
//!
//! - Each endpoint has a size limit. A body declared larger (`Content-Length`) is refused at
//!   once, unread. hyper sends `100 Continue` only when a body is first polled, so a client
//!   that sent `Expect: 100-continue` gets its 413 (or 401) instead.
//! - A body being read must keep coming: it has [`BodyPolicy::timeout`] to arrive, plus one
//!   second for every [`BodyPolicy::min_rate`] bytes received. Past that the request answers
//!   408. A client that stalls or trickles cannot hold a connection (an fd) for long, and one
//!   that keeps the rate up is bounded by the size limit.
//! - A request whose body was not read to its end is answered with `Connection: close`:
//!   hyper then reads what has already arrived once and closes the connection after the
//!   answer, instead of draining a body nobody wants. The answer goes first; only then does
//!   the connection ([`Lingering`]) read and discard what the client still sends, for at most
//!   [`LINGER_TIME`] and [`LINGER_BYTES`], so that a client busy sending the rest of a refused
//!   body reads its 413 instead of a reset (closing a socket with unread data sends RST).

use std::error::Error;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http_body_util::BodyExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Bytes, Frame, SizeHint};
use hyper::header;
use hyper::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::LimitsConfig;

pub type BoxError = Box<dyn Error + Send + Sync>;

/// The body of a request as the router sees it, whatever produced it (hyper's connection, or
/// a test that calls the router directly).
pub type RequestBody = UnsyncBoxBody<Bytes, BoxError>;

/// How long a body may take to arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPolicy {
    /// Time for the whole body, before any extension.
    pub timeout: Duration,
    /// Bytes per second: every `min_rate` bytes received extend the deadline by one second.
    pub min_rate: u64,
}

impl BodyPolicy {
    pub fn from_limits(limits: &LimitsConfig) -> BodyPolicy {
        BodyPolicy {
            timeout: Duration::from_millis(u64::from(limits.body_timeout_ms)),
            min_rate: (u64::from(limits.body_min_rate_kib) << 10).max(1),
        }
    }

    /// When a body that started at `start` and has delivered `received` bytes must be done.
    fn deadline(&self, start: tokio::time::Instant, received: u64) -> tokio::time::Instant {
        start + self.timeout + Duration::from_secs_f64(received as f64 / self.min_rate as f64)
    }
}

/// Why a body was not read.
#[derive(Debug)]
pub enum BodyError {
    /// Over the endpoint's limit: announced (`declared`), or found while reading.
    TooLarge { declared: Option<u64>, limit: usize },
    /// The body did not arrive within its deadline.
    TimedOut { received: u64, waited: Duration },
    /// The connection failed or the framing was broken.
    Broken(String),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge {
                declared: Some(size),
                limit,
            } => write!(
                f,
                "request body of {size} bytes exceeds the limit of {limit} bytes"
            ),
            BodyError::TooLarge {
                declared: None,
                limit,
            } => write!(f, "request body exceeds the limit of {limit} bytes"),
            BodyError::TimedOut { received, waited } => write!(
                f,
                "the request body stalled: {received} bytes in {:.1} s",
                waited.as_secs_f64()
            ),
            BodyError::Broken(e) => write!(f, "cannot read the body: {e}"),
        }
    }
}

/// The size the client announced for its body: its `Content-Length`, or the body's own exact
/// size (what hyper derives from that header, and what an in-process body knows).
pub fn declared_size<B: Body>(request: &Request<B>) -> Option<u64> {
    let header = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let hint = request.body().size_hint().lower();
    match header {
        Some(h) => Some(h.max(hint)),
        None => (hint > 0).then_some(hint),
    }
}

/// Refuses a body declared larger than `limit` without touching it.
pub fn check_declared<B: Body>(request: &Request<B>, limit: usize) -> Result<(), BodyError> {
    match declared_size(request) {
        Some(size) if size > limit as u64 => Err(BodyError::TooLarge {
            declared: Some(size),
            limit,
        }),
        _ => Ok(()),
    }
}

/// Reads a whole body of at most `limit` bytes under `policy`'s deadline. Call
/// [`check_declared`] first: this only finds an oversized body while reading it.
pub async fn read(
    mut body: RequestBody,
    limit: usize,
    policy: &BodyPolicy,
) -> Result<Bytes, BodyError> {
    let start = tokio::time::Instant::now();
    let mut received: u64 = 0;
    let mut chunks: Vec<Bytes> = Vec::new();
    loop {
        let next = tokio::time::timeout_at(policy.deadline(start, received), body.frame());
        let frame = match next.await {
            Err(_) => {
                return Err(BodyError::TimedOut {
                    received,
                    waited: start.elapsed(),
                });
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyError::Broken(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers carry nothing an endpoint uses.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        received += data.len() as u64;
        if received > limit as u64 {
            return Err(BodyError::TooLarge {
                declared: None,
                limit,
            });
        }
        if !data.is_empty() {
            chunks.push(data);
        }
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut all = Vec::with_capacity(received as usize);
            chunks.iter().for_each(|c| all.extend_from_slice(c));
            Bytes::from(all)
        }
    })
}

/// Whether a request's body was read to its end (or had none): if not, the connection cannot
/// carry another request and the answer says `Connection: close`.
#[derive(Debug, Clone)]
pub struct Completion(Arc<AtomicBool>);

impl Completion {
    pub fn finished(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Boxes a request's body as a [`RequestBody`] that records its own completion.
pub fn track<B>(request: Request<B>) -> (Request<RequestBody>, Completion)
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let done = Arc::new(AtomicBool::new(body.is_end_stream()));
    let tracked = Tracked {
        inner: body.map_err(Into::into).boxed_unsync(),
        done: done.clone(),
    };
    (
        Request::from_parts(parts, tracked.boxed_unsync()),
        Completion(done),
    )
}

struct Tracked {
    inner: RequestBody,
    done: Arc<AtomicBool>,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.done.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How long a connection that answered without reading a whole body keeps reading (and
/// discarding) before it closes: a client that stops sending, or closes, ends it sooner.
pub const LINGER_TIME: Duration = Duration::from_secs(2);
/// How much of such a body it discards at most.
pub const LINGER_BYTES: u64 = 64 << 20;

/// Set for a connection once it answered with `Connection: close` (what the router does when
/// it left a body unread): then its [`Lingering`] stream lingers when it shuts down.
#[derive(Debug, Clone, Default)]
pub struct Linger(Arc<AtomicBool>);

impl Linger {
    /// Arms lingering if `response` closes its connection.
    pub fn watch<B>(&self, response: &Response<B>) {
        let closes = response
            .headers()
            .get(header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        if closes {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    fn armed(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A connection's stream whose shutdown, once [`Linger`] is armed, first sends FIN and then
/// reads and discards the client's remaining bytes (bounded by [`LINGER_TIME`] and
/// [`LINGER_BYTES`]) before the socket closes.
pub struct Lingering<S> {
    inner: S,
    linger: Linger,
    state: LingerState,
}

enum LingerState {
    Open,
    Draining {
        until: Pin<Box<tokio::time::Sleep>>,
        discarded: u64,
    },
    Done,
}

impl<S> Lingering<S> {
    pub fn new(inner: S, linger: Linger) -> Lingering<S> {
        Lingering {
            inner,
            linger,
            state: LingerState::Open,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Lingering<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                LingerState::Open => {
                    ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
                    this.state = if this.linger.armed() {
                        LingerState::Draining {
                            until: Box::pin(tokio::time::sleep(LINGER_TIME)),
                            discarded: 0,
                        }
                    } else {
                        LingerState::Done
                    };
                }
                LingerState::Draining { until, discarded } => {
                    let mut scratch = [0u8; 8192];
                    let mut buf = ReadBuf::new(&mut scratch);
                    let done = match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                        Poll::Ready(Ok(())) if buf.filled().is_empty() => true,
                        Poll::Ready(Ok(())) => {
                            *discarded += buf.filled().len() as u64;
                            *discarded > LINGER_BYTES
                        }
                        Poll::Ready(Err(_)) => true,
                        Poll::Pending => {
                            if until.as_mut().poll(cx).is_pending() {
                                return Poll::Pending;
                            }
                            true
                        }
                    };
                    if done {
                        this.state = LingerState::Done;
                    }
                }
                LingerState::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn policy(timeout_ms: u64) -> BodyPolicy {
        BodyPolicy {
            timeout: Duration::from_millis(timeout_ms),
            min_rate: 1 << 10,
        }
    }

    /// A body that sends `first`, then nothing, ever.
    struct Stalling(Option<Bytes>);

    impl Body for Stalling {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.0.take() {
                Some(first) => Poll::Ready(Some(Ok(Frame::data(first)))),
                None => Poll::Pending,
            }
        }
    }

    /// A body of several frames, all ready.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
        }
    }

    #[tokio::test]
    async fn an_armed_connection_reads_the_rest_before_it_closes() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        // Not armed: shutdown is the plain one.
        let (server, mut client) = tokio::io::duplex(1 << 10);
        let mut stream = Lingering::new(server, Linger::default());
        stream.shutdown().await.unwrap();
        assert_eq!(client.read(&mut [0u8; 8]).await.unwrap(), 0, "FIN");
        // Armed: after FIN it keeps taking what the client sends (more than any buffer
        // holds, so the client would block if nobody read) until the client closes.
        let (server, mut client) = tokio::io::duplex(1 << 10);
        let linger = Linger::default();
        let mut stream = Lingering::new(server, linger.clone());
        let mut answer = Response::new(());
        answer.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        linger.watch(&answer);
        let sender = tokio::spawn(async move {
            let mut fin = [0u8; 1];
            assert_eq!(client.read(&mut fin).await.unwrap(), 0);
            client.write_all(&vec![b'x'; 256 << 10]).await.unwrap();
            drop(client);
        });
        tokio::time::timeout(Duration::from_secs(30), stream.shutdown())
            .await
            .expect("the linger ends when the client closes")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(30), sender)
            .await
            .expect("everything the client sent was taken")
            .unwrap();
    }

    #[test]
    fn declared_size_reads_the_header_or_the_exact_hint() {
        let request = Request::new(Full::new(Bytes::from_static(b"abc")));
        assert_eq!(declared_size(&request), Some(3));
        let request = Request::builder()
            .header("content-length", "2147483648")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(declared_size(&request), Some(2_147_483_648));
        assert!(matches!(
            check_declared(&request, 10),
            Err(BodyError::TooLarge {
                declared: Some(2_147_483_648),
                limit: 10
            })
        ));
        let request = Request::new(Full::new(Bytes::new()));
        assert_eq!(declared_size(&request), None);
        assert!(check_declared(&request, 0).is_ok());
    }

    #[tokio::test]
    async fn a_stalled_body_times_out_and_a_steady_one_does_not() {
        let short = policy(100);
        let stalled = read(
            Stalling(Some(Bytes::from_static(b"0123456789"))).boxed_unsync(),
            1 << 20,
            &short,
        );
        // The outer timeout only detects a hang.
        match tokio::time::timeout(Duration::from_secs(30), stalled).await {
            Ok(Err(BodyError::TimedOut { received, waited })) => {
                assert_eq!(received, 10);
                assert!(waited >= Duration::from_millis(100), "{waited:?}");
            }
            other => panic!("{other:?}"),
        }
        // A body of many chunks within its deadline is whole, in order.
        let body = Chunks((0..4u8).map(|i| Bytes::from(vec![i; 3])).collect()).boxed_unsync();
        let bytes = read(body, 12, &policy(500)).await.unwrap();
        assert_eq!(&bytes[..], &[0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]);
    }

    #[tokio::test]
    async fn a_body_over_its_limit_is_refused_while_reading() {
        let body = Full::new(Bytes::from_static(b"0123456789"))
            .map_err(|e| match e {})
            .boxed_unsync();
        assert!(matches!(
            read(body, 9, &policy(500)).await,
            Err(BodyError::TooLarge {
                declared: None,
                limit: 9
            })
        ));
    }

    #[tokio::test]
    async fn completion_follows_the_body() {
        let (request, done) = track(Request::new(Full::new(Bytes::new())));
        assert!(
            done.finished(),
            "an empty body is finished before it is read"
        );
        drop(request);
        let (request, done) = track(Request::new(Full::new(Bytes::from_static(b"abc"))));
        assert!(!done.finished());
        let bytes = read(request.into_body(), 3, &policy(500)).await.unwrap();
        assert_eq!(&bytes[..], b"abc");
        assert!(done.finished());
    }
}
