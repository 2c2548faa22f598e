//! In-process stand-in for Meta's Graph API (the WhatsApp Cloud API served
//! directly by `graph.facebook.com/{version}`) and for Meta's media CDN
//! (`lookaside.fbsbx.com`).
//!
//! Two real hyper 1.x HTTP/1.1 servers bound to `127.0.0.1:0`: the Graph
//! server ([`MockGraph::url`]) and the CDN server ([`MockGraph::cdn_url`]).
//! Every request is read completely, recorded ([`MockGraph::requests`],
//! [`MockGraph::cdn_requests`]) and only then answered. A Graph request is
//! answered from the FIFO of scripted one-off answers first
//! ([`MockGraph::push`], [`MockGraph::push_delay`]: each queued item is
//! consumed by exactly one request), otherwise like Graph would (see
//! [`graph_answer`]). Dropping the [`MockGraph`] aborts both accept loops and
//! every connection task.
//!
//! The mock knows a fixed set of [`GraphAccount`]s. A request's bearer token
//! selects the accounts that have it as `access_token` (usually one; a token
//! shared by several numbers, like a system-user token of one WABA, selects
//! all of them), and only their phone-number ids, WABA ids, app ids, media,
//! upload sessions and handles are visible to it.
//!
//! The CDN demands `Authorization: Bearer <access_token>` of the account that
//! owns the phone number the object belongs to: for media the number it was
//! uploaded to (or given to [`MockGraph::add_media`]), for a profile picture
//! the number whose profile it was set on. No or an unknown token -> 401;
//! a known token of another account -> 401 as well; an unknown object -> 404.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

use super::mock_upstream::{
    check_added_media, cloud_keys_check, is_mime, read_request, sha256_hex, Recorded,
};

/// How long [`MockGraph::wait_for_requests`] waits before panicking.
const WAIT_FOR_REQUESTS_TIMEOUT: Duration = Duration::from_secs(10);

/// The `fbtrace_id` of every error body: fixed, so tests can compare a whole
/// answer with [`graph_error`].
pub const FBTRACE_ID: &str = "AmockGraphTrace4Tests00";

/// Message of the 401 answer (and the `www-authenticate` header).
pub const INVALID_TOKEN_MESSAGE: &str = "Invalid OAuth access token - Cannot parse access token";

/// Everything after `mid=<id>` in the CDN url of media ([`MockGraph::media_url`]).
const MEDIA_URL_TAIL: &str = "&ext=1700000000&hash=ATsecret%3D&source=getMedia";

/// The `hash` of [`MEDIA_URL_TAIL`] exactly as sent; the CDN refuses (403) a
/// media url whose `hash` arrives otherwise (e.g. decoded or re-encoded on
/// the way), as a signed URL would be.
const MEDIA_URL_HASH: &str = "ATsecret%3D";

/// Generated ids are these bases plus the mock's counter (digit strings as Graph's).
const MEDIA_ID_BASE: u64 = 2_621_233_374_848_000;
const TEMPLATE_ID_BASE: u64 = 920_070_352_646_000;
const PICTURE_ID_BASE: u64 = 5_530_000_000;

/// The fields a business profile can have (besides `messaging_product`).
const PROFILE_FIELDS: [&str; 7] = [
    "about",
    "address",
    "description",
    "email",
    "profile_picture_url",
    "websites",
    "vertical",
];

/// Default page size of `GET /{waba-id}/message_templates`.
const TEMPLATES_PAGE: usize = 25;

/// One WhatsApp Business phone number as Graph knows it.
#[derive(Clone, Debug)]
pub struct GraphAccount {
    /// e.g. "106540352242922"
    pub phone_number_id: String,
    /// e.g. "102290129340398"
    pub waba_id: String,
    /// The bearer token Graph accepts for this number.
    pub access_token: String,
    /// e.g. "v23.0"
    pub graph_version: String,
    /// e.g. "1234567890"
    pub app_id: String,
}

impl GraphAccount {
    /// An account with made-up ids derived from `n` (0, 1, ...), token
    /// `token-<n>`, version v23.0: distinct `n` give disjoint accounts.
    pub fn example(n: u64) -> GraphAccount {
        GraphAccount {
            phone_number_id: (106_540_352_242_922 + n).to_string(),
            waba_id: (102_290_129_340_398 + n).to_string(),
            access_token: format!("EAAGmock{n}token"),
            graph_version: "v23.0".to_owned(),
            app_id: (1_234_567_890 + n).to_string(),
        }
    }
}

/// Graph's error body:
/// `{"error":{"message","type":"OAuthException","code","error_subcode"?,"fbtrace_id"}}`
/// (`fbtrace_id` is always [`FBTRACE_ID`]).
pub fn graph_error(code: i64, subcode: Option<i64>, message: &str) -> Value {
    let mut error = json!({
        "message": message,
        "type": "OAuthException",
        "code": code,
    });
    if let Some(subcode) = subcode {
        error["error_subcode"] = json!(subcode);
    }
    error["fbtrace_id"] = json!(FBTRACE_ID);
    json!({ "error": error })
}

/// Graph's message for an id the token cannot see (`method`: GET, POST, DELETE).
pub fn unsupported_request_message(method: &str, id: &str) -> String {
    format!(
        "Unsupported {} request. Object with ID '{id}' does not exist, cannot be loaded due to missing permissions, or does not support this operation. Please read the Graph API documentation at https://developers.facebook.com/docs/graph-api",
        method.to_ascii_lowercase()
    )
}

struct StoredMedia {
    phone_number_id: String,
    mime: String,
    bytes: Bytes,
}

/// A resumable-upload session (`POST /{app-id}/uploads`).
struct Session {
    token: String,
    app_id: String,
    sig: String,
    file_length: u64,
    file_type: String,
    file_name: Option<String>,
    /// Bytes received (0 until the upload, then `file_length`).
    offset: u64,
}

/// A file handle issued by `POST /upload:<session>`.
struct Handle {
    token: String,
    mime: String,
    bytes: Bytes,
}

/// A profile picture, served by the CDN.
struct Picture {
    phone_number_id: String,
    mime: String,
    bytes: Bytes,
}

/// A one-off scripted answer ([`MockGraph::push`], [`MockGraph::push_delay`]).
enum Scripted {
    Answer(StatusCode, Value),
    Delay(Duration),
}

struct State {
    queue: VecDeque<Scripted>,
    recorded: Vec<Recorded>,
    cdn_recorded: Vec<Recorded>,
    media: HashMap<String, StoredMedia>,
    /// Per phone-number id.
    profiles: HashMap<String, Map<String, Value>>,
    /// Per WABA id, in creation order.
    templates: HashMap<String, Vec<Value>>,
    /// Per session id (without `upload:` and without `?sig=`).
    sessions: HashMap<String, Session>,
    handles: HashMap<String, Handle>,
    pictures: HashMap<String, Picture>,
}

struct Shared {
    accounts: Vec<GraphAccount>,
    cdn_addr: SocketAddr,
    state: Mutex<State>,
    recorded_changed: Notify,
    counter: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not turn every later call into a
        // poison panic that hides the original failure.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// 1, 2, 3, ... per mock: makes every generated id unique.
    fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn cdn_url(&self) -> String {
        format!("http://{}", self.cdn_addr)
    }

    fn account_of_phone(&self, phone_number_id: &str) -> Option<&GraphAccount> {
        self.accounts
            .iter()
            .find(|a| a.phone_number_id == phone_number_id)
    }
}

/// The mock Graph API and CDN. See the module docs.
pub struct MockGraph {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: [JoinHandle<()>; 2],
}

impl fmt::Debug for MockGraph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockGraph")
            .field("addr", &self.addr)
            .field("cdn_addr", &self.shared.cdn_addr)
            .finish_non_exhaustive()
    }
}

async fn bind() -> (TcpListener, SocketAddr) {
    let listener = match TcpListener::bind(("127.0.0.1", 0)).await {
        Ok(l) => l,
        Err(e) => panic!("mock graph: cannot bind 127.0.0.1:0: {e}"),
    };
    match listener.local_addr() {
        Ok(addr) => (listener, addr),
        Err(e) => panic!("mock graph: no local address: {e}"),
    }
}

impl MockGraph {
    /// Binds both servers on `127.0.0.1:0` and starts serving. Each phone
    /// number starts with a business profile (about "Hello from Graph",
    /// vertical "OTHER", ...), each WABA with two APPROVED templates
    /// (`hello_world` en_US and `order_update` en with `{{1}}`).
    ///
    /// Panics on an empty token or version, or a phone-number id given twice.
    /// Must be called inside a tokio runtime.
    pub async fn start(accounts: Vec<GraphAccount>) -> MockGraph {
        for (i, a) in accounts.iter().enumerate() {
            if a.access_token.is_empty() || a.graph_version.is_empty() {
                panic!("mock graph: account {a:?} needs an access_token and a graph_version");
            }
            if accounts[..i]
                .iter()
                .any(|b| b.phone_number_id == a.phone_number_id)
            {
                panic!(
                    "mock graph: phone_number_id {} given twice",
                    a.phone_number_id
                );
            }
        }
        let (graph_listener, addr) = bind().await;
        let (cdn_listener, cdn_addr) = bind().await;
        let mut state = State {
            queue: VecDeque::new(),
            recorded: Vec::new(),
            cdn_recorded: Vec::new(),
            media: HashMap::new(),
            profiles: HashMap::new(),
            templates: HashMap::new(),
            sessions: HashMap::new(),
            handles: HashMap::new(),
            pictures: HashMap::new(),
        };
        let shared_counter = AtomicU64::new(0);
        let next = || shared_counter.fetch_add(1, Ordering::SeqCst) + 1;
        for a in &accounts {
            state
                .profiles
                .insert(a.phone_number_id.clone(), initial_profile());
            if !state.templates.contains_key(&a.waba_id) {
                let templates = initial_templates(next(), next());
                state.templates.insert(a.waba_id.clone(), templates);
            }
        }
        let shared = Arc::new(Shared {
            accounts,
            cdn_addr,
            state: Mutex::new(state),
            recorded_changed: Notify::new(),
            counter: shared_counter,
        });
        let tasks = [
            tokio::spawn(accept_loop(
                graph_listener,
                Arc::clone(&shared),
                Server::Graph,
            )),
            tokio::spawn(accept_loop(cdn_listener, Arc::clone(&shared), Server::Cdn)),
        ];
        MockGraph {
            addr,
            shared,
            tasks,
        }
    }

    /// `http://127.0.0.1:PORT`: the Graph base WITHOUT version (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT2` of the CDN server (no trailing slash).
    pub fn cdn_url(&self) -> String {
        self.shared.cdn_url()
    }

    /// `127.0.0.1:PORT2` of the CDN server.
    pub fn cdn_authority(&self) -> String {
        self.shared.cdn_addr.to_string()
    }

    pub fn accounts(&self) -> &[GraphAccount] {
        &self.shared.accounts
    }

    /// The url `GET /{v}/{media-id}` reports for media `id`, exactly:
    /// `<cdn_url>/whatsapp_business/attachments/?mid=<id>&ext=1700000000&hash=ATsecret%3D&source=getMedia`.
    pub fn media_url(&self, id: &str) -> String {
        media_url(&self.shared, id)
    }

    /// Requests to the Graph server so far, in arrival order. A request is
    /// recorded once its body is complete and BEFORE it is answered (so
    /// delayed ones appear at once).
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().recorded.clone()
    }

    /// Requests to the CDN server so far, in arrival order.
    pub fn cdn_requests(&self) -> Vec<Recorded> {
        self.shared.lock().cdn_recorded.clone()
    }

    /// All Graph requests once at least `n` have been recorded. Panics after
    /// 10 s (tokio time) with what did arrive.
    pub async fn wait_for_requests(&self, n: usize) -> Vec<Recorded> {
        self.wait_for(n, Server::Graph).await
    }

    /// All CDN requests once at least `n` have been recorded. Panics after 10 s.
    pub async fn wait_for_cdn_requests(&self, n: usize) -> Vec<Recorded> {
        self.wait_for(n, Server::Cdn).await
    }

    async fn wait_for(&self, n: usize, server: Server) -> Vec<Recorded> {
        let recorded = || {
            let state = self.shared.lock();
            match server {
                Server::Graph => state.recorded.clone(),
                Server::Cdn => state.cdn_recorded.clone(),
            }
        };
        let wait = async {
            loop {
                // Register interest before checking, so a request recorded
                // between the check and the await is not missed.
                let notified = self.shared.recorded_changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let now = recorded();
                if now.len() >= n {
                    return now;
                }
                notified.await;
            }
        };
        match tokio::time::timeout(WAIT_FOR_REQUESTS_TIMEOUT, wait).await {
            Ok(recorded) => recorded,
            Err(_) => {
                let got: Vec<String> = recorded()
                    .iter()
                    .map(|r| format!("{} {}", r.method, r.path_and_query))
                    .collect();
                panic!(
                    "mock graph ({server:?} server): waited {WAIT_FOR_REQUESTS_TIMEOUT:?} for {n} request(s), but only {} arrived: {got:?}",
                    got.len(),
                );
            }
        }
    }

    /// The next Graph request not yet served by a queued item gets exactly
    /// this answer (content-type application/json), after being recorded,
    /// whatever it is (no authentication either). FIFO, shared with
    /// [`MockGraph::push_delay`]. Panics on an invalid status.
    pub fn push(&self, status: u16, body: Value) {
        let status = match StatusCode::from_u16(status) {
            Ok(s) => s,
            Err(_) => panic!("mock graph: invalid HTTP status {status}"),
        };
        self.shared
            .lock()
            .queue
            .push_back(Scripted::Answer(status, body));
    }

    /// The next Graph request not yet served by a queued item is answered
    /// only after `delay`, then normally. FIFO, shared with [`MockGraph::push`].
    pub fn push_delay(&self, delay: Duration) {
        self.shared.lock().queue.push_back(Scripted::Delay(delay));
    }

    /// Stores (or replaces) media `id` of number `phone_number_id` as if it
    /// had been uploaded there. Panics on an unknown number, an id that is
    /// not ASCII letters, digits, `_`, `-`, `.`, or a mime that is not a
    /// valid header value.
    pub fn add_media(&self, phone_number_id: &str, id: &str, mime: &str, bytes: Bytes) {
        if self.shared.account_of_phone(phone_number_id).is_none() {
            panic!("mock graph: add_media for unknown phone_number_id {phone_number_id:?}");
        }
        check_added_media("mock graph", id, mime);
        self.shared.lock().media.insert(
            id.to_owned(),
            StoredMedia {
                phone_number_id: phone_number_id.to_owned(),
                mime: mime.to_owned(),
                bytes,
            },
        );
    }

    /// Media `id` as `(mime, bytes)`, if stored (and not deleted).
    pub fn media(&self, id: &str) -> Option<(String, Bytes)> {
        self.shared
            .lock()
            .media
            .get(id)
            .map(|m| (m.mime.clone(), m.bytes.clone()))
    }

    /// The current business profile of the number: an object of the set
    /// fields (without `messaging_product`). Panics on an unknown number.
    pub fn profile(&self, phone_number_id: &str) -> Value {
        match self.shared.lock().profiles.get(phone_number_id) {
            Some(p) => Value::Object(p.clone()),
            None => {
                panic!("mock graph: no profile for unknown phone_number_id {phone_number_id:?}")
            }
        }
    }

    /// The templates of the WABA in creation order (empty for an unknown WABA).
    pub fn templates(&self, waba_id: &str) -> Vec<Value> {
        self.shared
            .lock()
            .templates
            .get(waba_id)
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for MockGraph {
    fn drop(&mut self) {
        // Each accept task owns the JoinSet of its connection tasks: aborting
        // it drops the set, which aborts them and closes every socket.
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn initial_profile() -> Map<String, Value> {
    let profile = json!({
        "about": "Hello from Graph",
        "description": "A mock business on the Cloud API",
        "email": "shop@example.com",
        "vertical": "OTHER",
        "websites": ["https://shop.example.com/"]
    });
    match profile {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn initial_templates(first: u64, second: u64) -> Vec<Value> {
    vec![
        json!({
            "name": "hello_world",
            "components": [
                {"type": "HEADER", "format": "TEXT", "text": "Hello"},
                {"type": "BODY", "text": "This greeting comes from the mock Graph API."},
                {"type": "FOOTER", "text": "Mock business"}
            ],
            "language": "en_US",
            "status": "APPROVED",
            "category": "UTILITY",
            "id": (TEMPLATE_ID_BASE + first).to_string()
        }),
        json!({
            "name": "order_update",
            "components": [
                {"type": "BODY", "text": "Your order {{1}} is on its way.",
                 "example": {"body_text": [["A-1001"]]}}
            ],
            "language": "en",
            "status": "APPROVED",
            "category": "UTILITY",
            "id": (TEMPLATE_ID_BASE + second).to_string()
        }),
    ]
}

fn media_url(shared: &Shared, id: &str) -> String {
    format!(
        "{}/whatsapp_business/attachments/?mid={id}{MEDIA_URL_TAIL}",
        shared.cdn_url()
    )
}

#[derive(Clone, Copy, Debug)]
enum Server {
    Graph,
    Cdn,
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, server: Server) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(stream, Arc::clone(&shared), server));
                }
                // e.g. EMFILE; keep accepting, the test will notice anyway.
                Err(e) => eprintln!("mock graph: accept failed: {e}"),
            },
            // Reap finished connection tasks so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, shared: Arc<Shared>, server: Server) {
    let service = service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move {
            Ok::<_, Infallible>(match server {
                Server::Graph => graph_handle(&shared, req).await,
                Server::Cdn => cdn_handle(&shared, req).await,
            })
        }
    });
    // Errors here are expected: clients hanging up, the mock being dropped, ...
    let _ = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

type Answer = Response<Full<Bytes>>;

fn json_response(status: StatusCode, body: &Value) -> Answer {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn ok(body: Value) -> Answer {
    json_response(StatusCode::OK, &body)
}

/// 400 with Graph error code 100 (no subcode).
fn bad(message: &str) -> Answer {
    json_response(StatusCode::BAD_REQUEST, &graph_error(100, None, message))
}

/// 400 with Graph error 100/33: `id` does not exist for this token.
fn unsupported(method: &str, id: &str) -> Answer {
    json_response(
        StatusCode::BAD_REQUEST,
        &graph_error(100, Some(33), &unsupported_request_message(method, id)),
    )
}

fn unauthorized() -> Answer {
    let mut resp = json_response(
        StatusCode::UNAUTHORIZED,
        &graph_error(190, None, INVALID_TOKEN_MESSAGE),
    );
    resp.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static(
            "OAuth \"Facebook Platform\" \"invalid_token\" \"Invalid OAuth access token - Cannot parse access token\"",
        ),
    );
    resp
}

fn unknown_path(path: &str) -> Answer {
    bad(&format!("Unknown path components: {path}"))
}

/// The token of `Authorization: <scheme> <token>` if the scheme is `scheme`
/// (case-insensitive).
fn auth_token<'a>(req: &'a Recorded, scheme: &str) -> Option<&'a str> {
    let (given, token) = req.header("authorization")?.trim().split_once(' ')?;
    let token = token.trim();
    (given.eq_ignore_ascii_case(scheme) && !token.is_empty()).then_some(token)
}

fn query_pairs(req: &Recorded) -> Vec<(String, String)> {
    let query = req.path_and_query.split_once('?').map_or("", |(_, q)| q);
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn graph_handle(shared: &Shared, req: Request<Incoming>) -> Answer {
    let (recorded, multipart_error) = read_request(req).await;
    // Picking the scripted item and recording happen under one lock, so the
    // n-th recorded request is the one that consumed the n-th queued item.
    let scripted = {
        let mut state = shared.lock();
        state.recorded.push(recorded.clone());
        state.queue.pop_front()
    };
    shared.recorded_changed.notify_waiters();
    match scripted {
        Some(Scripted::Answer(status, body)) => return json_response(status, &body),
        Some(Scripted::Delay(delay)) => tokio::time::sleep(delay).await,
        None => {}
    }
    graph_answer(shared, &recorded, multipart_error.as_deref())
}

/// What the request may see: the token and the accounts it selects.
struct Ctx<'a> {
    shared: &'a Shared,
    req: &'a Recorded,
    token: &'a str,
    scope: Vec<&'a GraphAccount>,
    query: Vec<(String, String)>,
}

impl Ctx<'_> {
    fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn owns_phone(&self, id: &str) -> bool {
        self.scope.iter().any(|a| a.phone_number_id == id)
    }

    fn owns_waba(&self, id: &str) -> bool {
        self.scope.iter().any(|a| a.waba_id == id)
    }

    fn owns_app(&self, id: &str) -> bool {
        self.scope.iter().any(|a| a.app_id == id)
    }

    fn method(&self) -> &str {
        &self.req.method
    }

    /// The body as a JSON object, or the message of the 400 answer.
    fn json_object(&self) -> Result<Map<String, Value>, String> {
        match serde_json::from_slice(&self.req.body) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err("(#100) The request body must be a JSON object.".to_owned()),
            Err(e) => Err(format!("(#100) Invalid JSON body: {e}")),
        }
    }
}

/// `messaging_product` must be there and be `whatsapp`; else the message of the 400 answer.
fn check_messaging_product(value: Option<&Value>) -> Result<(), &'static str> {
    match value.and_then(Value::as_str) {
        None => Err("(#100) The parameter messaging_product is required."),
        Some("whatsapp") => Ok(()),
        Some(_) => Err("(#100) Param messaging_product must be 'whatsapp'."),
    }
}

/// Graph's answers (every path is `/{version}/...`):
///
/// - no `Authorization: Bearer <token>` of a known account (`OAuth <token>`
///   for `/upload:<session>` only) -> 401 code 190;
/// - a version other than the token's accounts' -> 400 code 2500;
/// - a body shorter than its content-length or an unparsable multipart
///   body -> 400 code 100;
/// - an id the token's accounts do not own -> 400 100/33;
/// - the endpoints of the task: `{phone}/messages`, `{phone}/media`,
///   `{media}` (GET, DELETE), `{phone}/whatsapp_business_profile` (GET,
///   POST), `{app}/uploads`, `upload:{session}` (POST, and GET for the
///   offset), `{waba}/message_templates` (GET, POST, DELETE);
/// - anything else -> 400 code 100 "Unknown path components".
fn graph_answer(shared: &Shared, req: &Recorded, multipart_error: Option<&str>) -> Answer {
    let path = req.path();
    let mut segments = path.strip_prefix('/').unwrap_or(path).split('/');
    let version = segments.next().unwrap_or_default();
    let rest: Vec<&str> = segments.collect();
    let is_upload_session = matches!(rest.as_slice(), [id] if id.starts_with("upload:"));

    let scheme = if is_upload_session { "OAuth" } else { "Bearer" };
    let Some(token) = auth_token(req, scheme) else {
        return unauthorized();
    };
    let scope: Vec<&GraphAccount> = shared
        .accounts
        .iter()
        .filter(|a| a.access_token == token)
        .collect();
    if scope.is_empty() {
        return unauthorized();
    }
    if !scope.iter().any(|a| a.graph_version == version) {
        return json_response(
            StatusCode::BAD_REQUEST,
            &graph_error(2500, None, &format!("Unknown path components: /{version}")),
        );
    }
    if let Some(declared) = req.declared_length {
        if declared != req.body.len() as u64 {
            return bad(&format!(
                "(#100) The request declared content-length {declared} but its body has {} bytes.",
                req.body.len()
            ));
        }
    }
    if let Some(e) = multipart_error {
        return bad(&format!("(#100) Invalid multipart/form-data body: {e}"));
    }
    let ctx = Ctx {
        shared,
        req,
        token,
        scope,
        query: query_pairs(req),
    };
    let method = req.method.as_str();
    let id = rest.first().copied().unwrap_or_default();
    match (method, rest.as_slice()) {
        ("POST", [_, "messages"]) if ctx.owns_phone(id) => send_message(&ctx, id),
        ("POST", [_, "media"]) if ctx.owns_phone(id) => upload_media(&ctx, id),
        ("GET" | "POST", [_, "whatsapp_business_profile"]) if ctx.owns_phone(id) => {
            if method == "GET" {
                get_profile(&ctx, id)
            } else {
                update_profile(&ctx, id)
            }
        }
        ("POST", [_, "uploads"]) if ctx.owns_app(id) => create_session(&ctx, id),
        ("GET" | "POST", [session]) if is_upload_session => {
            let session = session.trim_start_matches("upload:");
            if method == "GET" {
                session_offset(&ctx, session)
            } else {
                upload_to_session(&ctx, session)
            }
        }
        ("GET" | "POST" | "DELETE", [_, "message_templates"]) if ctx.owns_waba(id) => {
            match method {
                "GET" => list_templates(&ctx, id),
                "POST" => create_template(&ctx, id),
                _ => delete_template(&ctx, id),
            }
        }
        ("GET" | "DELETE", [_]) => media_object(&ctx, id),
        (
            "POST",
            [_, "messages" | "media" | "whatsapp_business_profile" | "uploads" | "message_templates"],
        )
        | ("GET", [_, "whatsapp_business_profile" | "message_templates"])
        | ("DELETE", [_, "message_templates"]) => unsupported(method, id),
        _ => unknown_path(path),
    }
}

/// `POST /{v}/{phone-number-id}/messages`.
fn send_message(ctx: &Ctx<'_>, phone: &str) -> Answer {
    let body = match ctx.json_object() {
        Ok(b) => b,
        Err(message) => return bad(&message),
    };
    if let Err(message) = check_messaging_product(body.get("messaging_product")) {
        return bad(message);
    }
    let body = Value::Object(body);
    // Cloud refuses keys its objects do not have, On-Premise-only ones included.
    let violations = cloud_keys_check::cloud_send_violations(&body);
    if !violations.is_empty() {
        return bad(&format!("(#100) Unexpected key: {}", violations.join(", ")));
    }
    if let Some(status) = body.get("status") {
        if status != "read" {
            return bad("(#100) Param status must be 'read'.");
        }
        return match body.get("message_id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => ok(json!({"success": true})),
            _ => bad("(#100) The parameter message_id is required."),
        };
    }
    let to = match body.get("to") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return bad("(#100) The parameter to is required."),
    };
    let wa_id: String = to.chars().filter(char::is_ascii_digit).collect();
    let n = ctx.shared.next();
    let wamid = format!(
        "wamid.HBgL{}",
        URL_SAFE_NO_PAD.encode(format!("{phone}:{wa_id}:{n}"))
    );
    ok(json!({
        "messaging_product": "whatsapp",
        "contacts": [{"input": to, "wa_id": wa_id}],
        "messages": [{"id": wamid}]
    }))
}

/// `POST /{v}/{phone-number-id}/media` (multipart).
fn upload_media(ctx: &Ctx<'_>, phone: &str) -> Answer {
    let req = ctx.req;
    if req.multipart.is_none() {
        return bad("(#100) The request must be multipart/form-data with the parts messaging_product and file.");
    }
    let product = req
        .part("messaging_product")
        .map(|p| Value::String(String::from_utf8_lossy(&p.data).into_owned()));
    if let Err(message) = check_messaging_product(product.as_ref()) {
        return bad(message);
    }
    let Some(file) = req.part("file") else {
        return bad("(#100) The parameter file is required.");
    };
    if file.filename.as_deref().is_none_or(str::is_empty) {
        return bad("(#100) Param file must be a file upload with a filename.");
    }
    let file_type = file
        .content_type
        .as_deref()
        .map(str::trim)
        .unwrap_or_default();
    if !is_mime(file_type) {
        return bad("(#100) Param file must have a content type.");
    }
    let mime = match req.part("type").map(|p| std::str::from_utf8(&p.data)) {
        None => file_type.to_owned(),
        Some(Ok(t)) if is_mime(t.trim()) => t.trim().to_owned(),
        Some(_) => return bad("(#100) Param type must be a MIME type such as image/jpeg."),
    };
    let id = (MEDIA_ID_BASE + ctx.shared.next()).to_string();
    ctx.shared.lock().media.insert(
        id.clone(),
        StoredMedia {
            phone_number_id: phone.to_owned(),
            mime,
            bytes: file.data.clone(),
        },
    );
    ok(json!({"id": id}))
}

/// `GET` / `DELETE /{v}/{media-id}[?phone_number_id=..]`.
fn media_object(ctx: &Ctx<'_>, id: &str) -> Answer {
    let method = ctx.method();
    let found = {
        let state = ctx.shared.lock();
        state
            .media
            .get(id)
            .filter(|m| ctx.owns_phone(&m.phone_number_id))
            .filter(|m| {
                ctx.query("phone_number_id")
                    .is_none_or(|p| p == m.phone_number_id)
            })
            .map(|m| (m.mime.clone(), m.bytes.clone()))
    };
    let Some((mime, bytes)) = found else {
        return unsupported(method, id);
    };
    if method == "DELETE" {
        ctx.shared.lock().media.remove(id);
        return ok(json!({"success": true}));
    }
    ok(json!({
        "messaging_product": "whatsapp",
        "url": media_url(ctx.shared, id),
        "mime_type": mime,
        "sha256": sha256_hex(&bytes),
        "file_size": bytes.len(),
        "id": id
    }))
}

/// `GET /{v}/{phone-number-id}/whatsapp_business_profile[?fields=a,b]`:
/// the requested fields that are set (all set fields without `fields`).
fn get_profile(ctx: &Ctx<'_>, phone: &str) -> Answer {
    let requested: Vec<&str> = match ctx.query("fields") {
        None => PROFILE_FIELDS.to_vec(),
        Some(fields) => fields
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .collect(),
    };
    if let Some(unknown) = requested
        .iter()
        .find(|f| **f != "messaging_product" && !PROFILE_FIELDS.contains(f))
    {
        return bad(&format!(
            "(#100) Tried accessing nonexisting field ({unknown}) on node type (WhatsAppBusinessProfile)"
        ));
    }
    let profile = ctx
        .shared
        .lock()
        .profiles
        .get(phone)
        .cloned()
        .unwrap_or_default();
    let mut data = Map::new();
    for field in requested {
        if let Some(value) = profile.get(field) {
            data.insert(field.to_owned(), value.clone());
        }
    }
    data.insert("messaging_product".to_owned(), json!("whatsapp"));
    ok(json!({"data": [data]}))
}

/// `POST /{v}/{phone-number-id}/whatsapp_business_profile`. An empty string
/// (or empty `websites`) clears a field.
fn update_profile(ctx: &Ctx<'_>, phone: &str) -> Answer {
    let body = match ctx.json_object() {
        Ok(b) => b,
        Err(message) => return bad(&message),
    };
    if let Err(message) = check_messaging_product(body.get("messaging_product")) {
        return bad(message);
    }
    let mut changes: Vec<(String, Option<Value>)> = Vec::new();
    for (key, value) in &body {
        match key.as_str() {
            "messaging_product" => {}
            "about" | "address" | "description" | "email" | "vertical" => match value {
                Value::String(s) if s.is_empty() => changes.push((key.clone(), None)),
                Value::String(_) => changes.push((key.clone(), Some(value.clone()))),
                _ => return bad(&format!("(#100) Param {key} must be a string.")),
            },
            "websites" => match value {
                Value::Array(sites) if sites.len() <= 2 && sites.iter().all(Value::is_string) => {
                    let value = (!sites.is_empty()).then(|| value.clone());
                    changes.push((key.clone(), value));
                }
                _ => return bad("(#100) Param websites must be an array of at most 2 strings."),
            },
            "profile_picture_handle" => {
                let handle = value.as_str().unwrap_or_default();
                let picture = {
                    let state = ctx.shared.lock();
                    state
                        .handles
                        .get(handle)
                        .filter(|h| h.token == ctx.token)
                        .map(|h| (h.mime.clone(), h.bytes.clone()))
                };
                let Some((mime, bytes)) = picture else {
                    return bad("(#100) Param profile_picture_handle is not a valid file handle.");
                };
                let picture_id = (PICTURE_ID_BASE + ctx.shared.next()).to_string();
                let url = format!("{}/pps/{picture_id}?oe=1700000000", ctx.shared.cdn_url());
                ctx.shared.lock().pictures.insert(
                    picture_id,
                    Picture {
                        phone_number_id: phone.to_owned(),
                        mime,
                        bytes,
                    },
                );
                changes.push(("profile_picture_url".to_owned(), Some(json!(url))));
            }
            _ => return bad(&format!("(#100) Param {key} is not a valid parameter.")),
        }
    }
    let mut state = ctx.shared.lock();
    let profile = state.profiles.entry(phone.to_owned()).or_default();
    for (key, value) in changes {
        match value {
            Some(v) => profile.insert(key, v),
            None => profile.remove(&key),
        };
    }
    ok(json!({"success": true}))
}

/// `POST /{v}/{app-id}/uploads?file_length=<n>&file_type=<mime>[&file_name=..]`:
/// `{"id":"upload:<session>?sig=<sig>"}` (as Graph's, the id carries a query).
fn create_session(ctx: &Ctx<'_>, app_id: &str) -> Answer {
    let file_length = match ctx.query("file_length").map(|l| l.parse::<u64>()) {
        Some(Ok(n)) if n > 0 => n,
        Some(_) => return bad("(#100) Param file_length must be a positive integer."),
        None => return bad("(#100) The parameter file_length is required."),
    };
    let file_type = match ctx.query("file_type") {
        Some(t) if is_mime(t) => t.to_owned(),
        Some(_) => return bad("(#100) Param file_type must be a MIME type."),
        None => return bad("(#100) The parameter file_type is required."),
    };
    let n = ctx.shared.next();
    let session = URL_SAFE_NO_PAD.encode(format!(
        "mock-attachment:{n}?file_length={file_length}&file_type={file_type}"
    ));
    let sig = format!("ARmockSig{n}");
    let id = format!("upload:{session}?sig={sig}");
    ctx.shared.lock().sessions.insert(
        session,
        Session {
            token: ctx.token.to_owned(),
            app_id: app_id.to_owned(),
            sig,
            file_length,
            file_type,
            file_name: ctx.query("file_name").map(str::to_owned),
            offset: 0,
        },
    );
    ok(json!({ "id": id }))
}

/// Whether `session` exists for this token and the request carries its `sig`.
fn session_visible(ctx: &Ctx<'_>, session: &str) -> bool {
    ctx.shared
        .lock()
        .sessions
        .get(session)
        .is_some_and(|s| s.token == ctx.token && ctx.query("sig") == Some(s.sig.as_str()))
}

/// `GET /{v}/upload:<session>?sig=..`: `{"id","file_offset"}`.
fn session_offset(ctx: &Ctx<'_>, session: &str) -> Answer {
    if !session_visible(ctx, session) {
        return unsupported("GET", &format!("upload:{session}"));
    }
    let offset = ctx
        .shared
        .lock()
        .sessions
        .get(session)
        .map_or(0, |s| s.offset);
    ok(json!({"id": format!("upload:{session}"), "file_offset": offset}))
}

/// `POST /{v}/upload:<session>?sig=..` with `file_offset: 0` and exactly
/// `file_length` bytes: `{"h":"<handle>"}`.
fn upload_to_session(ctx: &Ctx<'_>, session: &str) -> Answer {
    if !session_visible(ctx, session) {
        return unsupported("POST", &format!("upload:{session}"));
    }
    match ctx.req.header("file_offset").map(str::trim) {
        Some("0") => {}
        Some(_) => return bad("(#100) Param file_offset must be 0 for this session."),
        None => return bad("(#100) The header file_offset is required."),
    }
    let n = ctx.shared.next();
    let mut state = ctx.shared.lock();
    let Some(s) = state.sessions.get_mut(session) else {
        return unsupported("POST", &format!("upload:{session}"));
    };
    if ctx.req.body.len() as u64 != s.file_length {
        let (want, got) = (s.file_length, ctx.req.body.len());
        return bad(&format!(
            "(#100) The upload has {got} bytes but the session was opened for file_length {want}."
        ));
    }
    s.offset = s.file_length;
    let handle = format!(
        "4:{}:{}:ARmockHandle{n}:e:1700000000:{}:{n}",
        STANDARD.encode(s.file_name.as_deref().unwrap_or("file")),
        STANDARD.encode(&s.file_type),
        s.app_id,
    );
    let stored = Handle {
        token: s.token.clone(),
        mime: s.file_type.clone(),
        bytes: ctx.req.body.clone(),
    };
    state.handles.insert(handle.clone(), stored);
    ok(json!({ "h": handle }))
}

/// `GET /{v}/{waba-id}/message_templates[?limit=..&after=..&name=..]`.
fn list_templates(ctx: &Ctx<'_>, waba: &str) -> Answer {
    let limit = match ctx.query("limit").map(str::parse::<usize>) {
        None => TEMPLATES_PAGE,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => return bad("(#100) Param limit must be a positive integer."),
    };
    let start = match ctx.query("after") {
        None => 0,
        Some(cursor) => match decode_cursor(cursor) {
            Some(last) => last + 1,
            None => return bad("(#100) Param after is not a valid cursor."),
        },
    };
    let all: Vec<Value> = ctx
        .shared
        .lock()
        .templates
        .get(waba)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|t| ctx.query("name").is_none_or(|name| t["name"] == name))
        .collect();
    let page: Vec<Value> = all.iter().skip(start).take(limit).cloned().collect();
    if page.is_empty() {
        return ok(json!({"data": []}));
    }
    let end = start + page.len();
    let mut paging = json!({
        "cursors": {"before": encode_cursor(start), "after": encode_cursor(end - 1)}
    });
    if end < all.len() {
        let mut next = format!(
            "{}{}?limit={limit}&after={}",
            ctx.req
                .header("host")
                .map_or(String::new(), |h| format!("http://{h}")),
            ctx.req.path(),
            encode_cursor(end - 1)
        );
        if let Some(name) = ctx.query("name") {
            next.push_str("&name=");
            next.extend(form_urlencoded::byte_serialize(name.as_bytes()));
        }
        paging["next"] = json!(next);
    }
    ok(json!({"data": page, "paging": paging}))
}

fn encode_cursor(index: usize) -> String {
    URL_SAFE_NO_PAD.encode(format!("mock-cursor:{index}"))
}

fn decode_cursor(cursor: &str) -> Option<usize> {
    let raw = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    std::str::from_utf8(&raw)
        .ok()?
        .strip_prefix("mock-cursor:")?
        .parse()
        .ok()
}

/// `POST /{v}/{waba-id}/message_templates`.
fn create_template(ctx: &Ctx<'_>, waba: &str) -> Answer {
    let body = match ctx.json_object() {
        Ok(b) => b,
        Err(message) => return bad(&message),
    };
    let text = |key: &str| {
        body.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let Some(name) = text("name") else {
        return bad("(#100) The parameter name is required.");
    };
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return bad(
            "(#100) Param name may only contain lowercase letters, digits and underscores.",
        );
    }
    let category = match text("category") {
        None => return bad("(#100) The parameter category is required."),
        Some(c @ ("MARKETING" | "UTILITY" | "AUTHENTICATION")) => c,
        Some(_) => {
            return bad(
                "(#100) Param category must be one of {MARKETING, UTILITY, AUTHENTICATION}.",
            )
        }
    };
    let Some(language) = text("language") else {
        return bad("(#100) The parameter language is required.");
    };
    let components = match body.get("components") {
        Some(Value::Array(c)) if !c.is_empty() => c.clone(),
        Some(_) => return bad("(#100) Param components must be a non-empty array."),
        None => return bad("(#100) The parameter components is required."),
    };
    let id = (TEMPLATE_ID_BASE + ctx.shared.next()).to_string();
    let mut state = ctx.shared.lock();
    let templates = state.templates.entry(waba.to_owned()).or_default();
    if templates
        .iter()
        .any(|t| t["name"] == name && t["language"] == language)
    {
        return json_response(
            StatusCode::BAD_REQUEST,
            &graph_error(
                100,
                Some(2_388_024),
                "Content in this language already exists",
            ),
        );
    }
    templates.push(json!({
        "name": name,
        "components": components,
        "language": language,
        "status": "PENDING",
        "category": category,
        "id": id
    }));
    ok(json!({"id": id, "status": "PENDING", "category": category}))
}

/// `DELETE /{v}/{waba-id}/message_templates?name=<name>`: every language of it.
fn delete_template(ctx: &Ctx<'_>, waba: &str) -> Answer {
    let Some(name) = ctx.query("name").filter(|n| !n.is_empty()) else {
        return bad("(#100) The parameter name is required.");
    };
    let mut state = ctx.shared.lock();
    let templates = state.templates.entry(waba.to_owned()).or_default();
    let before = templates.len();
    templates.retain(|t| t["name"] != name);
    if templates.len() == before {
        return bad(&format!(
            "(#100) Message template \"{name}\" can't be deleted because it doesn't exist."
        ));
    }
    ok(json!({"success": true}))
}

/// A small text/plain answer of the CDN.
fn cdn_text(status: StatusCode, text: &'static str) -> Answer {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

async fn cdn_handle(shared: &Shared, req: Request<Incoming>) -> Answer {
    let (recorded, _) = read_request(req).await;
    shared.lock().cdn_recorded.push(recorded.clone());
    shared.recorded_changed.notify_waiters();
    cdn_answer(shared, &recorded)
}

/// The CDN: `GET /whatsapp_business/attachments/?mid=<id>&...` (media) and
/// `GET /pps/<picture id>?...` (profile pictures) with the owning account's
/// bearer token (see the module docs); a media url whose `hash` is not
/// exactly as issued -> 403.
fn cdn_answer(shared: &Shared, req: &Recorded) -> Answer {
    if req.method != "GET" {
        return cdn_text(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed\n");
    }
    let token = auth_token(req, "Bearer");
    if !shared
        .accounts
        .iter()
        .any(|a| Some(a.access_token.as_str()) == token)
    {
        return cdn_text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
    }
    let path = req.path();
    let query = req.path_and_query.split_once('?').map_or("", |(_, q)| q);
    let object = if path == "/whatsapp_business/attachments/" {
        let mid = query_pairs(req)
            .into_iter()
            .find(|(k, _)| k == "mid")
            .map(|(_, v)| v)
            .unwrap_or_default();
        let state = shared.lock();
        let found = state
            .media
            .get(&mid)
            .map(|m| (m.phone_number_id.clone(), m.mime.clone(), m.bytes.clone()));
        let signed = format!("hash={MEDIA_URL_HASH}");
        if found.is_some() && !query.split('&').any(|p| p == signed) {
            return cdn_text(StatusCode::FORBIDDEN, "URL signature mismatch\n");
        }
        found
    } else if let Some(picture) = path.strip_prefix("/pps/") {
        shared
            .lock()
            .pictures
            .get(picture)
            .map(|p| (p.phone_number_id.clone(), p.mime.clone(), p.bytes.clone()))
    } else {
        None
    };
    let Some((phone, mime, bytes)) = object else {
        return cdn_text(StatusCode::NOT_FOUND, "Not found\n");
    };
    let owner_token = shared
        .account_of_phone(&phone)
        .map(|a| a.access_token.as_str());
    if owner_token != token {
        return cdn_text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
    }
    let mut resp = Response::new(Full::new(bytes));
    if let Ok(mime) = HeaderValue::from_str(&mime) {
        resp.headers_mut().insert(CONTENT_TYPE, mime);
    }
    resp
}
