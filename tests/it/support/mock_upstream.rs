//! In-process stand-in for 360dialog's Cloud API host (`waba-v2.360dialog.io`).
//!
//! A real hyper 1.x HTTP/1.1 server bound to `127.0.0.1:0`. Every request is
//! read completely (or until the client stops sending: a body cut short is
//! recorded as far as it arrived), recorded, and then answered according to
//! a scripted [`Behaviour`]: first from a FIFO queue ([`MockUpstream::push`]),
//! otherwise from the default ([`MockUpstream::set_default`], initially
//! [`Behaviour::LikeWabaV2`]).
//!
//! Dropping the [`MockUpstream`] aborts the accept loop and every connection
//! task, which closes all sockets (including stalled ones).
//!
//! Media: [`Behaviour::LikeWabaV2`] keeps a media store (filled by
//! `POST /media` uploads or [`MockUpstream::add_media`]) and serves it like
//! Cloud API + 360dialog do: `GET /<media id>` answers the metadata with a
//! lookaside URL ([`MockUpstream::media_url`]), and
//! `GET /whatsapp_business/attachments/?mid=<id>&...` streams the bytes.

/// Meta's OpenAPI key table for Cloud sends (`tests/data/`): the mock refuses what Cloud would.
#[path = "../../data/cloud_keys_check.rs"]
pub mod cloud_keys_check;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::io::{self, IoSlice, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{
    HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, LOCATION,
    TRANSFER_ENCODING,
};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::rt::ReadBufCursor;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};

/// How long [`MockUpstream::wait_for_requests`] waits before panicking.
const WAIT_FOR_REQUESTS_TIMEOUT: Duration = Duration::from_secs(10);

/// Streamed response bodies (media downloads, the byte behaviours) are
/// handed to hyper in pieces of at most this size.
const CHUNK_SIZE: usize = 64 * 1024;

/// Media ids handed out by `POST /media` are this number plus a per-mock
/// counter (1, 2, ...), i.e. digit strings like Cloud API's.
const MEDIA_ID_BASE: u64 = 1_037_543_291_543_636;

/// Everything after `mid=<id>` in the lookaside URL of [`MockUpstream::media_url`].
/// It holds `&`, a percent-encoded `/` and `=`, and a raw `=` inside a value,
/// so tests notice any re-encoding or re-ordering on the way through.
const MEDIA_URL_QUERY_TAIL: &str = "&ext=1700000000&hash=ATs%2Fsecret%3D%3D&x=a=b";

/// One request as the mock received it (body fully read).
///
/// If the connection ended before the declared `content-length` (or the
/// final chunk) arrived, `body` is what did arrive; compare it with
/// `declared_length`.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The parts of a `multipart/form-data` body in order (`None` for any
    /// other content type). `Some(vec![])` if the body could not be parsed
    /// as multipart ([`Behaviour::LikeWabaV2`] then answers 400).
    pub multipart: Option<Vec<Part>>,
    /// The request came with `transfer-encoding: chunked`.
    pub chunked: bool,
    /// The request's `content-length` header, if it had one.
    pub declared_length: Option<u64>,
}

/// One part of a recorded `multipart/form-data` body.
#[derive(Clone, Debug)]
pub struct Part {
    /// `name` of the part's content-disposition.
    pub name: String,
    /// `filename` of the part's content-disposition, if any.
    pub filename: Option<String>,
    /// The part's own `content-type` header, exactly as sent.
    pub content_type: Option<String>,
    pub data: Bytes,
}

impl Recorded {
    /// The body parsed as JSON. Panics with the request line and the raw body
    /// if the body is not valid JSON.
    pub fn json(&self) -> Value {
        match serde_json::from_slice(&self.body) {
            Ok(v) => v,
            Err(e) => panic!(
                "mock upstream: body of `{} {}` is not JSON ({e}); content-type: {:?}; body ({} bytes): {:?}",
                self.method,
                self.path_and_query,
                self.headers.get(CONTENT_TYPE),
                self.body.len(),
                String::from_utf8_lossy(&self.body),
            ),
        }
    }

    /// Path without the query string.
    pub fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query.as_str(), |(p, _)| p)
    }

    /// A header value as a string (`None` if absent or not visible ASCII).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The first multipart part called `name` (`None` if the body was not
    /// multipart or has no such part).
    pub fn part(&self, name: &str) -> Option<&Part> {
        self.multipart.as_ref()?.iter().find(|p| p.name == name)
    }
}

/// One scripted behaviour; each variant's doc comment says which scenario it exists for.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Answer like waba-v2 does for the path (see "default answers" in
    /// [`like_waba_v2`]) — the happy path of ordinary proxy tests.
    LikeWabaV2,
    /// Answer exactly this status, extra headers and body bytes — for
    /// arbitrary upstream answers (odd content types, non-JSON errors, ...).
    /// Headers are appended in order, so repeated names are kept.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// Answer JSON (content-type application/json) — for scripted upstream
    /// successes and Graph API errors.
    Json { status: u16, body: Value },
    /// Answer JSON gzip-compressed with `content-encoding: gzip` — for
    /// checking that the proxy decodes (or passes through) compressed bodies.
    GzipJson { status: u16, body: Value },
    /// Never answer (hold the request open until the mock is dropped) — for upstream timeouts.
    Stall,
    /// Wait for the given Duration then behave like the inner behaviour — slow upstream.
    Delay(Duration, Box<Behaviour>),
    /// Wait until `MockUpstream::release()` is called, then behave like LikeWabaV2 — for graceful-shutdown tests.
    WaitForRelease,
    /// Close the connection without any response bytes (connection reset / closed before message completed).
    CloseWithoutAnswer,
    /// Answer 308 with `location: <given path or absolute url>` and empty body
    /// — for checking the proxy does not blindly follow / leak redirects.
    Redirect308(String),
    /// Send status, headers and `content-length: declared_len`, then the
    /// bytes of `send` (shorter than `declared_len`), and once those really
    /// went out on the socket cut the connection — for "upstream dies
    /// mid-download": the client gets the head and exactly `send`, then an
    /// incomplete-body error. `headers` must not set content-length or
    /// transfer-encoding.
    ResetMidBody {
        status: u16,
        headers: Vec<(String, String)>,
        declared_len: u64,
        send: Bytes,
    },
    /// Send status, `content-length: declared_len` and the bytes of `send`, then
    /// nothing more, ever — for "upstream stalls mid-body" (the proxy's
    /// deadline must end it).
    StallMidBody {
        status: u16,
        declared_len: u64,
        send: Bytes,
    },
    /// Answer `body` with `transfer-encoding: chunked` (no content-length) —
    /// for downloads whose length is only known from the media metadata.
    /// `headers` must not set content-length or transfer-encoding.
    BytesChunked {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// Answer `body` gzip-compressed with `content-encoding: gzip` (and the
    /// compressed length as content-length) — for gzip-encoded media
    /// downloads. `headers` must not set content-length or content-encoding.
    GzipBytes {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
}

impl Behaviour {
    /// Panics (in the test that scripts it) if the behaviour could not be
    /// turned into a valid HTTP response, instead of failing obscurely inside
    /// a server task later.
    fn validate(&self) {
        match self {
            Behaviour::Respond {
                status, headers, ..
            } => {
                check_status(*status);
                check_headers("Respond", headers, &[]);
            }
            Behaviour::ResetMidBody {
                status,
                headers,
                declared_len,
                send,
            } => {
                check_status(*status);
                check_headers(
                    "ResetMidBody",
                    headers,
                    &["content-length", "transfer-encoding"],
                );
                if send.len() as u64 >= *declared_len {
                    panic!(
                        "mock upstream: Behaviour::ResetMidBody must send fewer bytes than it declares (send {} bytes, declared_len {declared_len})",
                        send.len()
                    );
                }
            }
            Behaviour::StallMidBody {
                status,
                declared_len,
                send,
            } => {
                check_status(*status);
                if send.len() as u64 >= *declared_len {
                    panic!("mock upstream: Behaviour::StallMidBody must send fewer bytes than it declares");
                }
            }
            Behaviour::BytesChunked {
                status, headers, ..
            } => {
                check_status(*status);
                check_headers(
                    "BytesChunked",
                    headers,
                    &["content-length", "transfer-encoding"],
                );
            }
            Behaviour::GzipBytes {
                status, headers, ..
            } => {
                check_status(*status);
                check_headers(
                    "GzipBytes",
                    headers,
                    &["content-length", "content-encoding"],
                );
            }
            Behaviour::Json { status, .. } | Behaviour::GzipJson { status, .. } => {
                check_status(*status)
            }
            Behaviour::Redirect308(location) => {
                if HeaderValue::from_str(location).is_err() {
                    panic!(
                        "mock upstream: invalid location {location:?} in Behaviour::Redirect308"
                    );
                }
            }
            Behaviour::Delay(_, inner) => inner.validate(),
            Behaviour::LikeWabaV2
            | Behaviour::Stall
            | Behaviour::WaitForRelease
            | Behaviour::CloseWithoutAnswer => {}
        }
    }
}

fn check_status(status: u16) {
    if StatusCode::from_u16(status).is_err() {
        panic!("mock upstream: invalid HTTP status {status}");
    }
}

/// Panics unless every header is valid and none of `reserved` (lower case)
/// is among them.
fn check_headers(variant: &str, headers: &[(String, String)], reserved: &[&str]) {
    for (name, value) in headers {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            panic!("mock upstream: invalid header name {name:?} in Behaviour::{variant}");
        }
        if HeaderValue::from_str(value).is_err() {
            panic!("mock upstream: invalid value {value:?} for header {name:?} in Behaviour::{variant}");
        }
        if reserved.iter().any(|r| name.eq_ignore_ascii_case(r)) {
            panic!("mock upstream: Behaviour::{variant} sets {name:?} itself; do not script it");
        }
    }
}

struct Media {
    mime: String,
    bytes: Bytes,
}

struct State {
    queue: VecDeque<Behaviour>,
    default: Behaviour,
    recorded: Vec<Recorded>,
    media: HashMap<String, Media>,
}

struct Shared {
    state: Mutex<State>,
    recorded_changed: Notify,
    released: watch::Sender<bool>,
    connections: AtomicUsize,
    message_counter: AtomicU64,
    media_counter: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not turn every later call into a
        // poison panic that hides the original failure.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The mock server. See the module docs.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MockUpstream {
    /// Binds `127.0.0.1:0` and starts serving; default behaviour is
    /// [`Behaviour::LikeWabaV2`]. Must be called inside a tokio runtime.
    pub async fn start() -> MockUpstream {
        let listener = match TcpListener::bind(("127.0.0.1", 0)).await {
            Ok(l) => l,
            Err(e) => panic!("mock upstream: cannot bind 127.0.0.1:0: {e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("mock upstream: no local address: {e}"),
        };
        let (released, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                default: Behaviour::LikeWabaV2,
                recorded: Vec::new(),
                media: HashMap::new(),
            }),
            recorded_changed: Notify::new(),
            released,
            connections: AtomicUsize::new(0),
            message_counter: AtomicU64::new(0),
            media_counter: AtomicU64::new(0),
        });
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        MockUpstream {
            addr,
            shared,
            accept_task,
        }
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queues a behaviour: the next request not yet served by a queued
    /// behaviour consumes it (FIFO). When the queue is empty the default applies.
    pub fn push(&self, b: Behaviour) {
        b.validate();
        self.shared.lock().queue.push_back(b);
    }

    /// Replaces the behaviour used when the queue is empty.
    pub fn set_default(&self, b: Behaviour) {
        b.validate();
        self.shared.lock().default = b;
    }

    /// Everything received so far, in arrival order. A request is recorded
    /// once its body is complete and BEFORE its behaviour runs, so stalled,
    /// delayed and closed-without-answer requests appear too.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().recorded.clone()
    }

    /// Resolves with all recorded requests once at least `n` have been
    /// recorded. Panics after 10 s (tokio time) with what did arrive.
    pub async fn wait_for_requests(&self, n: usize) -> Vec<Recorded> {
        let wait = async {
            loop {
                // Register interest before checking, so a request recorded
                // between the check and the await is not missed.
                let notified = self.shared.recorded_changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let state = self.shared.lock();
                    if state.recorded.len() >= n {
                        return state.recorded.clone();
                    }
                }
                notified.await;
            }
        };
        match tokio::time::timeout(WAIT_FOR_REQUESTS_TIMEOUT, wait).await {
            Ok(recorded) => recorded,
            Err(_) => {
                let got: Vec<String> = self
                    .requests()
                    .iter()
                    .map(|r| format!("{} {}", r.method, r.path_and_query))
                    .collect();
                panic!(
                    "mock upstream at {}: waited {:?} for {n} request(s), but only {} arrived: {got:?}",
                    self.addr,
                    WAIT_FOR_REQUESTS_TIMEOUT,
                    got.len(),
                );
            }
        }
    }

    /// Lets all `WaitForRelease` requests (current and future) proceed.
    pub fn release(&self) {
        self.shared.released.send_replace(true);
    }

    /// Number of TCP connections accepted so far.
    pub fn connections_accepted(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Stores (or replaces) a media object as if it had been uploaded, so
    /// [`Behaviour::LikeWabaV2`] serves its metadata and bytes. `id` must be
    /// non-empty ASCII letters, digits, `_`, `-` or `.` (Cloud uses digits),
    /// `mime` a valid header value.
    pub fn add_media(&self, id: &str, mime: &str, bytes: Bytes) {
        check_added_media("mock upstream", id, mime);
        self.shared.lock().media.insert(
            id.to_owned(),
            Media {
                mime: mime.to_owned(),
                bytes,
            },
        );
    }

    /// The stored media object `id` as `(mime, bytes)`, if there is one.
    pub fn media(&self, id: &str) -> Option<(String, Bytes)> {
        self.shared
            .lock()
            .media
            .get(id)
            .map(|m| (m.mime.clone(), m.bytes.clone()))
    }

    /// The URL `GET /<id>` reports for media `id`, exactly:
    /// `https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=<id>&ext=1700000000&hash=ATs%2Fsecret%3D%3D&x=a=b`.
    /// With 360dialog the client fetches the same path and query from the
    /// waba-v2 host (with its `D360-API-KEY`).
    pub fn media_url(id: &str) -> String {
        format!("https://lookaside.fbsbx.com{}", media_path_and_query(id))
    }
}

/// `/whatsapp_business/attachments/?mid=<id>&...` (see [`MockUpstream::media_url`]).
fn media_path_and_query(id: &str) -> String {
    format!("/whatsapp_business/attachments/?mid={id}{MEDIA_URL_QUERY_TAIL}")
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        // The connection tasks live in a JoinSet owned by the accept task;
        // aborting the accept task drops the JoinSet, which aborts them all
        // and so closes every socket (and the listener).
        self.accept_task.abort();
    }
}

/// An `http://127.0.0.1:PORT` URL where nothing listens (the port was bound
/// and released again, so connecting is refused).
pub async fn closed_port_url() -> String {
    let listener = match TcpListener::bind(("127.0.0.1", 0)).await {
        Ok(l) => l,
        Err(e) => panic!("closed_port_url: cannot bind 127.0.0.1:0: {e}"),
    };
    let port = match listener.local_addr() {
        Ok(a) => a.port(),
        Err(e) => panic!("closed_port_url: no local address: {e}"),
    };
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    connections.spawn(serve_connection(stream, Arc::clone(&shared)));
                }
                // e.g. EMFILE; keep accepting, the test will notice anyway.
                Err(e) => eprintln!("mock upstream: accept failed: {e}"),
            },
            // Reap finished connection tasks so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let flushes = Arc::new(FlushWatch::default());
    let io = FlushTrackingIo {
        inner: TokioIo::new(stream),
        flushes: Arc::clone(&flushes),
    };
    let service = service_fn(move |req| handle(Arc::clone(&shared), Arc::clone(&flushes), req));
    // Errors here are expected: CloseWithoutAnswer, ResetMidBody, clients hanging up, ...
    let _ = http1::Builder::new()
        .keep_alive(true)
        .header_read_timeout(None)
        .serve_connection(io, service)
        .await;
}

/// Counts the completed flushes of one connection. Hyper flushes the
/// underlying IO only after every buffered byte was written to it, so a
/// flush completed after a response body handed over its last bytes means
/// those bytes are on the wire (see [`MockBody`]'s abort).
#[derive(Default)]
struct FlushWatch {
    completed: AtomicU64,
    waiting: Mutex<Option<Waker>>,
}

impl FlushWatch {
    fn completed(&self) -> u64 {
        self.completed.load(Ordering::SeqCst)
    }

    fn wake_me(&self, waker: &Waker) {
        *self.waiting.lock().unwrap_or_else(PoisonError::into_inner) = Some(waker.clone());
    }

    fn flushed(&self) {
        self.completed.fetch_add(1, Ordering::SeqCst);
        let waker = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The connection's IO, reporting completed flushes to a [`FlushWatch`].
struct FlushTrackingIo<T> {
    inner: T,
    flushes: Arc<FlushWatch>,
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for FlushTrackingIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for FlushTrackingIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = std::task::ready!(Pin::new(&mut self.inner).poll_flush(cx));
        if result.is_ok() {
            self.flushes.flushed();
        }
        Poll::Ready(result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Every response body of the mock: `rest`, handed out in frames of at most
/// `chunk` bytes.
struct MockBody {
    rest: Bytes,
    chunk: usize,
    /// The length announced to hyper, which then sends content-length;
    /// `None`: unknown, so hyper uses chunked transfer encoding.
    length: Option<u64>,
    /// After `rest`: fail the body (hyper then drops the connection).
    abort: Option<Abort>,
    /// After `rest`: never another frame.
    stall: bool,
}

struct Abort {
    flushes: Arc<FlushWatch>,
    /// Flushes completed when the last byte of `rest` had been handed out.
    flushes_at_end: Option<u64>,
}

impl MockBody {
    /// Like `Full`: one frame, content-length.
    fn full(bytes: Bytes) -> MockBody {
        MockBody {
            length: Some(bytes.len() as u64),
            rest: bytes,
            chunk: usize::MAX,
            abort: None,
            stall: false,
        }
    }

    /// Content-length, frames of [`CHUNK_SIZE`].
    fn streamed(bytes: Bytes) -> MockBody {
        MockBody {
            chunk: CHUNK_SIZE,
            ..MockBody::full(bytes)
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = CloseConnection;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, CloseConnection>>> {
        let this = self.get_mut();
        if !this.rest.is_empty() {
            let n = this.rest.len().min(this.chunk);
            return Poll::Ready(Some(Ok(Frame::data(this.rest.split_to(n)))));
        }
        if this.stall {
            return Poll::Pending;
        }
        let Some(abort) = &mut this.abort else {
            return Poll::Ready(None);
        };
        // Failing right away could make hyper drop bytes it has buffered
        // but not written yet; wait for one flush after the last byte.
        abort.flushes.wake_me(cx.waker());
        let now = abort.flushes.completed();
        match abort.flushes_at_end {
            Some(at_end) if now > at_end => {
                Poll::Ready(Some(Err(CloseConnection("Behaviour::ResetMidBody"))))
            }
            Some(_) => Poll::Pending,
            None => {
                abort.flushes_at_end = Some(now);
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.length.is_some() && self.rest.is_empty() && self.abort.is_none() && !self.stall
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// Returned by the service to make hyper drop the connection without
/// writing a single response byte.
#[derive(Debug)]
struct CloseConnection(&'static str);

impl fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mock upstream closes the connection: {}", self.0)
    }
}

impl std::error::Error for CloseConnection {}

async fn handle(
    shared: Arc<Shared>,
    flushes: Arc<FlushWatch>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, CloseConnection> {
    let (recorded, multipart_error) = read_request(req).await;

    // Picking the behaviour and recording happen under one lock, so the
    // n-th recorded request is the one that consumed the n-th queued behaviour.
    let mut behaviour = {
        let mut state = shared.lock();
        let behaviour = match state.queue.pop_front() {
            Some(b) => b,
            None => state.default.clone(),
        };
        state.recorded.push(recorded.clone());
        behaviour
    };
    shared.recorded_changed.notify_waiters();

    while let Behaviour::Delay(duration, inner) = behaviour {
        tokio::time::sleep(duration).await;
        behaviour = *inner;
    }

    match behaviour {
        Behaviour::Delay(..) => unreachable!("delays were unwrapped above"),
        Behaviour::LikeWabaV2 => Ok(like_waba_v2(&shared, &recorded, multipart_error.as_deref())),
        Behaviour::Respond {
            status,
            headers,
            body,
        } => Ok(scripted(status, headers, MockBody::full(body))),
        Behaviour::ResetMidBody {
            status,
            headers,
            declared_len,
            send,
        } => {
            let body = MockBody {
                length: Some(declared_len),
                abort: Some(Abort {
                    flushes,
                    flushes_at_end: None,
                }),
                ..MockBody::streamed(send)
            };
            let mut resp = scripted(status, headers, body);
            resp.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(declared_len));
            Ok(resp)
        }
        Behaviour::StallMidBody {
            status,
            declared_len,
            send,
        } => {
            let body = MockBody {
                length: Some(declared_len),
                stall: true,
                ..MockBody::streamed(send)
            };
            let mut resp = scripted(status, Vec::new(), body);
            resp.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(declared_len));
            Ok(resp)
        }
        Behaviour::BytesChunked {
            status,
            headers,
            body,
        } => {
            let body = MockBody {
                length: None,
                ..MockBody::streamed(body)
            };
            Ok(scripted(status, headers, body))
        }
        Behaviour::GzipBytes {
            status,
            headers,
            body,
        } => {
            let mut resp = scripted(status, headers, MockBody::streamed(gzip(&body)));
            resp.headers_mut()
                .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            Ok(resp)
        }
        Behaviour::Json { status, body } => Ok(json_response(status_code(status), &body)),
        Behaviour::GzipJson { status, body } => {
            let mut resp = Response::new(MockBody::full(gzip(body.to_string().as_bytes())));
            *resp.status_mut() = status_code(status);
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp.headers_mut()
                .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            Ok(resp)
        }
        Behaviour::Stall => std::future::pending().await,
        Behaviour::WaitForRelease => {
            let mut released = shared.released.subscribe();
            // Err only if the sender is gone, i.e. the mock is being torn down.
            if released.wait_for(|r| *r).await.is_err() {
                return Err(CloseConnection("mock dropped while waiting for release"));
            }
            Ok(like_waba_v2(&shared, &recorded, multipart_error.as_deref()))
        }
        Behaviour::CloseWithoutAnswer => Err(CloseConnection("Behaviour::CloseWithoutAnswer")),
        Behaviour::Redirect308(location) => {
            let mut resp = Response::new(MockBody::full(Bytes::new()));
            *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
            if let Ok(value) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(LOCATION, value);
            }
            Ok(resp)
        }
    }
}

/// A scripted status and headers (appended in order) around `body`.
fn scripted(status: u16, headers: Vec<(String, String)>, body: MockBody) -> Response<MockBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status_code(status);
    for (name, value) in headers {
        // Validated when the behaviour was scripted.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            resp.headers_mut().append(name, value);
        }
    }
    resp
}

fn status_code(status: u16) -> StatusCode {
    // Validated when the behaviour was scripted.
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn json_response(status: StatusCode, body: &Value) -> Response<MockBody> {
    let mut resp = Response::new(MockBody::full(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn gzip(bytes: &[u8]) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    Bytes::from(encoder.finish().unwrap_or_default())
}

/// `Some` for a `multipart/form-data` request: its parts, or why they could
/// not be parsed.
pub async fn parse_multipart(
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Result<Vec<Part>, String>> {
    let content_type = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    Some(read_parts(content_type, body.clone()).await)
}

async fn read_parts(content_type: &str, body: Bytes) -> Result<Vec<Part>, String> {
    let boundary = multer::parse_boundary(content_type).map_err(|e| e.to_string())?;
    let stream = futures_util::stream::once(async move { Ok::<Bytes, Infallible>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut parts = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(|e| e.to_string())? {
        let Some(name) = field.name().map(str::to_owned) else {
            return Err(format!("part #{} has no name", parts.len() + 1));
        };
        let filename = field.file_name().map(str::to_owned);
        let content_type = field
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let data = field.bytes().await.map_err(|e| e.to_string())?;
        parts.push(Part {
            name,
            filename,
            content_type,
            data,
        });
    }
    Ok(parts)
}

fn graph_error(status: StatusCode, details: &str) -> Response<MockBody> {
    json_response(
        status,
        &json!({
            "error": {
                "message": "(#100) Invalid parameter",
                "type": "OAuthException",
                "code": 100,
                "error_data": {"messaging_product": "whatsapp", "details": details},
                "fbtrace_id": "AbCdEf"
            }
        }),
    )
}

/// Default answers of waba-v2 (Cloud API via 360dialog, no
/// `/PHONE_NUMBER_ID` in paths):
///
/// - no `d360-api-key` header -> 401 360dialog meta error (checked first);
/// - a body shorter than its declared content-length (the client stopped
///   early), or a multipart/form-data body that does not parse -> 400 Graph
///   error code 100, whatever the path;
/// - `POST /messages`: `"status":"read"` -> `{"success":true}`; otherwise the
///   Cloud API send answer with `wamid.MOCK<n>` (n counts from 1 per mock);
///   missing/invalid JSON, no `to`, or a key Meta's OpenAPI table does not allow there (On-Premise
///   keys such as `provider`, `ttl`, `hsm` included) -> 400 Graph error code 100;
/// - `GET /v1/configs/templates...` -> one approved template `hello`;
/// - `DELETE /<id>` -> `{"success":true}` (and media `<id>` is forgotten);
/// - `GET /whatsapp_business_profile` -> a profile; `POST` -> `{"success":true}`;
/// - `POST /media` (multipart: `messaging_product`=`whatsapp`, `type`=mime,
///   `file` with filename and content-type) -> stores the file under a new
///   digit-string id, `{"id":"<id>"}`; a missing/invalid part -> 400 Graph
///   error code 100 whose details name the part;
/// - `GET /<id>` of stored media -> its metadata (url, mime_type, sha256,
///   file_size, id); `GET /<digits>` otherwise -> 404 Graph error 100/33;
/// - `GET /whatsapp_business/attachments/?mid=<id>&...` -> the stored bytes
///   (content-type: the mime, content-length, 64 KiB frames); unknown `mid`
///   -> 404 Graph error 100/33;
/// - anything else -> 404 Graph error code 2500.
fn like_waba_v2(
    shared: &Shared,
    req: &Recorded,
    multipart_error: Option<&str>,
) -> Response<MockBody> {
    if !req.headers.contains_key("d360-api-key") {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"meta": {"success": false, "http_code": 401, "developer_message": "Invalid api key"}}),
        );
    }
    if let Some(declared) = req.declared_length {
        if declared != req.body.len() as u64 {
            return graph_error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "The request declared content-length {declared} but its body has {} bytes.",
                    req.body.len()
                ),
            );
        }
    }
    if let Some(e) = multipart_error {
        return graph_error(
            StatusCode::BAD_REQUEST,
            &format!("Invalid multipart/form-data body: {e}"),
        );
    }
    let path = req.path();
    let single_segment = path.len() > 1 && !path[1..].contains('/');

    match (req.method.as_str(), path) {
        ("POST", "/messages") => {
            let body: Value = match serde_json::from_slice(&req.body) {
                Ok(v @ Value::Object(_)) => v,
                Ok(_) => {
                    return graph_error(
                        StatusCode::BAD_REQUEST,
                        "Request body must be a JSON object",
                    )
                }
                Err(e) => {
                    return graph_error(StatusCode::BAD_REQUEST, &format!("Invalid JSON body: {e}"))
                }
            };
            if body.get("status").and_then(Value::as_str) == Some("read") {
                return json_response(StatusCode::OK, &json!({"success": true}));
            }
            // Cloud refuses keys its objects do not have ("Unexpected key"), On-Premise-only
            // ones included: every send through the proxy in every test is checked so.
            let violations = cloud_keys_check::cloud_send_violations(&body);
            if !violations.is_empty() {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    &format!("(#100) Unexpected key: {}", violations.join(", ")),
                );
            }
            let to = match body.get("to") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => return graph_error(StatusCode::BAD_REQUEST, "The parameter to is required."),
            };
            let wa_id: String = to.chars().filter(char::is_ascii_digit).collect();
            let n = shared.message_counter.fetch_add(1, Ordering::SeqCst) + 1;
            json_response(
                StatusCode::OK,
                &json!({
                    "messaging_product": "whatsapp",
                    "contacts": [{"input": to, "wa_id": wa_id}],
                    "messages": [{"id": format!("wamid.MOCK{n}"), "message_status": "accepted"}]
                }),
            )
        }
        ("GET", p) if p.starts_with("/v1/configs/templates") => json_response(
            StatusCode::OK,
            &json!({
                "count": 1,
                "filters": {},
                "limit": 1000,
                "offset": 0,
                "sort": ["id"],
                "total": 1,
                "waba_templates": [{
                    "category": "MARKETING",
                    "language": "en",
                    "name": "hello",
                    "namespace": "ns",
                    "status": "approved",
                    "components": []
                }]
            }),
        ),
        ("GET", "/whatsapp_business_profile") => json_response(
            StatusCode::OK,
            &json!({
                "data": [{
                    "about": "Hi",
                    "address": "Main St 1",
                    "description": "Shop",
                    "email": "a@b.co",
                    "messaging_product": "whatsapp",
                    "vertical": "RETAIL",
                    "websites": ["https://a.example"]
                }]
            }),
        ),
        ("POST", "/whatsapp_business_profile") => {
            json_response(StatusCode::OK, &json!({"success": true}))
        }
        ("DELETE", _) if single_segment => {
            shared.lock().media.remove(&path[1..]);
            json_response(StatusCode::OK, &json!({"success": true}))
        }
        ("POST", "/media") => upload_media(shared, req),
        ("GET", "/whatsapp_business/attachments/" | "/whatsapp_business/attachments") => {
            let query = req.path_and_query.split_once('?').map_or("", |(_, q)| q);
            let mid = query
                .split('&')
                .find_map(|pair| pair.strip_prefix("mid="))
                .unwrap_or_default();
            match stored_media(shared, mid) {
                Some((mime, bytes)) => {
                    let len = bytes.len() as u64;
                    let mut resp = Response::new(MockBody::streamed(bytes));
                    // Valid: checked when stored.
                    if let Ok(mime) = HeaderValue::from_str(&mime) {
                        resp.headers_mut().insert(CONTENT_TYPE, mime);
                    }
                    resp.headers_mut()
                        .insert(CONTENT_LENGTH, HeaderValue::from(len));
                    resp
                }
                None => unknown_object(mid),
            }
        }
        ("GET", _) if single_segment => {
            let id = &path[1..];
            match stored_media(shared, id) {
                Some((mime, bytes)) => json_response(
                    StatusCode::OK,
                    &json!({
                        "messaging_product": "whatsapp",
                        "url": MockUpstream::media_url(id),
                        "mime_type": mime,
                        "sha256": sha256_hex(&bytes),
                        "file_size": bytes.len(),
                        "id": id
                    }),
                ),
                None if id.bytes().all(|b| b.is_ascii_digit()) => unknown_object(id),
                None => not_found(),
            }
        }
        _ => not_found(),
    }
}

fn stored_media(shared: &Shared, id: &str) -> Option<(String, Bytes)> {
    shared
        .lock()
        .media
        .get(id)
        .map(|m| (m.mime.clone(), m.bytes.clone()))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Graph's answer for an id that names nothing.
fn unknown_object(id: &str) -> Response<MockBody> {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({
            "error": {
                "message": format!("(#100) Unsupported get request. Object with ID '{id}' does not exist"),
                "type": "GraphMethodException",
                "code": 100,
                "error_subcode": 33,
                "fbtrace_id": "AbC"
            }
        }),
    )
}

/// `POST /media` of [`like_waba_v2`].
fn upload_media(shared: &Shared, req: &Recorded) -> Response<MockBody> {
    let bad = |details: &str| graph_error(StatusCode::BAD_REQUEST, details);
    if req.multipart.is_none() {
        return bad("The request must be multipart/form-data with the parts messaging_product, type and file.");
    }
    match req.part("messaging_product") {
        None => return bad("The parameter messaging_product is required."),
        Some(p) if p.data != "whatsapp" => {
            return bad("Param messaging_product must be 'whatsapp'.")
        }
        Some(_) => {}
    }
    let mime = match req.part("type").map(|p| std::str::from_utf8(&p.data)) {
        None => return bad("The parameter type is required."),
        Some(Ok(t)) if is_mime(t.trim()) => t.trim().to_owned(),
        Some(_) => return bad("Param type must be a MIME type such as image/jpeg."),
    };
    let file = match req.part("file") {
        None => return bad("The parameter file is required."),
        Some(f) => f,
    };
    if file.filename.as_deref().is_none_or(str::is_empty) {
        return bad("Param file must be a file upload with a filename.");
    }
    if file.content_type.as_deref().is_none_or(str::is_empty) {
        return bad("Param file must have a content type.");
    }
    let n = shared.media_counter.fetch_add(1, Ordering::SeqCst) + 1;
    let id = (MEDIA_ID_BASE + n).to_string();
    shared.lock().media.insert(
        id.clone(),
        Media {
            mime,
            bytes: file.data.clone(),
        },
    );
    json_response(StatusCode::OK, &json!({"id": id}))
}

/// `type/subtype`, optionally with parameters, usable as a header value.
pub fn is_mime(s: &str) -> bool {
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    let essence = s.split(';').next().unwrap_or_default().trim();
    HeaderValue::from_str(s).is_ok()
        && essence
            .split_once('/')
            .is_some_and(|(kind, sub)| token(kind) && token(sub))
}

fn not_found() -> Response<MockBody> {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({
            "error": {
                "message": "Unknown path components",
                "type": "OAuthException",
                "code": 2500,
                "fbtrace_id": "AbCdEf"
            }
        }),
    )
}

/// Reads the whole request (what arrived, if the client stops early) and
/// records its parts; the second value says why a multipart/form-data body
/// did not parse.
pub async fn read_request(req: Request<Incoming>) -> (Recorded, Option<String>) {
    let (parts, mut body) = req.into_parts();
    let mut received = BytesMut::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            received.extend_from_slice(&data);
        }
    }
    let body = received.freeze();
    let chunked = parts.headers.get_all(TRANSFER_ENCODING).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
        })
    });
    let declared_length = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let multipart = parse_multipart(&parts.headers, &body).await;
    let multipart_error = match &multipart {
        Some(Err(e)) => Some(e.clone()),
        _ => None,
    };
    let recorded = Recorded {
        method: parts.method.as_str().to_owned(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
        headers: parts.headers,
        body,
        multipart: multipart.map(Result::unwrap_or_default),
        chunked,
        declared_length,
    };
    (recorded, multipart_error)
}

/// What `add_media` of either mock takes: a non-empty id of ASCII letters, digits, `_`, `-`
/// or `.`, and a mime that is a valid header value (else the test is wrong: panic).
pub fn check_added_media(mock: &str, id: &str, mime: &str) {
    let id_ok = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if !id_ok {
        panic!("{mock}: invalid media id {id:?} in add_media");
    }
    if HeaderValue::from_str(mime).is_err() {
        panic!("{mock}: invalid mime {mime:?} in add_media");
    }
}
