//! In-process stand-in for 360dialog's Cloud API host (`waba-v2.360dialog.io`).
//!
//! A real hyper 1.x HTTP/1.1 server bound to `127.0.0.1:0`. Every request is
//! read completely, recorded, and then answered according to a scripted
//! [`Behaviour`]: first from a FIFO queue ([`MockUpstream::push`]), otherwise
//! from the default ([`MockUpstream::set_default`], initially
//! [`Behaviour::LikeWabaV2`]).
//!
//! Dropping the [`MockUpstream`] aborts the accept loop and every connection
//! task, which closes all sockets (including stalled ones).

use std::collections::VecDeque;
use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, LOCATION};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};

/// How long [`MockUpstream::wait_for_requests`] waits before panicking.
const WAIT_FOR_REQUESTS_TIMEOUT: Duration = Duration::from_secs(10);

/// One request as the mock received it (body fully read).
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
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
                for (name, value) in headers {
                    if HeaderName::from_bytes(name.as_bytes()).is_err() {
                        panic!("mock upstream: invalid header name {name:?} in Behaviour::Respond");
                    }
                    if HeaderValue::from_str(value).is_err() {
                        panic!("mock upstream: invalid value {value:?} for header {name:?} in Behaviour::Respond");
                    }
                }
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

struct State {
    queue: VecDeque<Behaviour>,
    default: Behaviour,
    recorded: Vec<Recorded>,
}

struct Shared {
    state: Mutex<State>,
    recorded_changed: Notify,
    released: watch::Sender<bool>,
    connections: AtomicUsize,
    message_counter: AtomicU64,
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
            }),
            recorded_changed: Notify::new(),
            released,
            connections: AtomicUsize::new(0),
            message_counter: AtomicU64::new(0),
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
    let service = service_fn(move |req| handle(Arc::clone(&shared), req));
    // Errors here are expected: CloseWithoutAnswer, clients hanging up, ...
    let _ = http1::Builder::new()
        .keep_alive(true)
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), service)
        .await;
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
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, CloseConnection> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(CloseConnection("request body could not be read")),
    };
    let recorded = Recorded {
        method: parts.method.as_str().to_owned(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
        headers: parts.headers,
        body,
    };

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
        Behaviour::LikeWabaV2 => Ok(like_waba_v2(&shared, &recorded)),
        Behaviour::Respond {
            status,
            headers,
            body,
        } => {
            let mut resp = Response::new(Full::new(body));
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
            Ok(resp)
        }
        Behaviour::Json { status, body } => Ok(json_response(status_code(status), &body)),
        Behaviour::GzipJson { status, body } => {
            let mut resp = Response::new(Full::new(gzip(&body.to_string())));
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
            Ok(like_waba_v2(&shared, &recorded))
        }
        Behaviour::CloseWithoutAnswer => Err(CloseConnection("Behaviour::CloseWithoutAnswer")),
        Behaviour::Redirect308(location) => {
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
            if let Ok(value) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(LOCATION, value);
            }
            Ok(resp)
        }
    }
}

fn status_code(status: u16) -> StatusCode {
    // Validated when the behaviour was scripted.
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn gzip(text: &str) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(text.as_bytes());
    Bytes::from(encoder.finish().unwrap_or_default())
}

fn graph_error(status: StatusCode, details: &str) -> Response<Full<Bytes>> {
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
/// - `POST /messages`: `"status":"read"` -> `{"success":true}`; otherwise the
///   Cloud API send answer with `wamid.MOCK<n>` (n counts from 1 per mock);
///   missing/invalid JSON or no `to` -> 400 Graph error code 100;
/// - `GET /v1/configs/templates...` -> one approved template `hello`;
/// - `DELETE /<id>` -> `{"success":true}`;
/// - `GET /whatsapp_business_profile` -> a profile; `POST` -> `{"success":true}`;
/// - anything else -> 404 Graph error code 2500.
fn like_waba_v2(shared: &Shared, req: &Recorded) -> Response<Full<Bytes>> {
    if !req.headers.contains_key("d360-api-key") {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"meta": {"success": false, "http_code": 401, "developer_message": "Invalid api key"}}),
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
        ("DELETE", _) if single_segment => json_response(StatusCode::OK, &json!({"success": true})),
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({
                "error": {
                    "message": "Unknown path components",
                    "type": "OAuthException",
                    "code": 2500,
                    "fbtrace_id": "AbCdEf"
                }
            }),
        ),
    }
}
