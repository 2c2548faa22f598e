//! One request, end to end: read the (limited) body -> translate -> upstream -> translate back.
//! Every outcome, success or failure, leaves here as an On-Premise-shaped response carrying an
//! `X-Request-Id`, and is logged once (without header values or queries: they carry secrets).

mod console;
mod intake;
mod media;
mod probes;
mod profile;
mod providers;
mod settings;
mod webhooks;

use intake::{content_length, discard, read_body};
use probes::{metrics, readyz};

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;
use tracing::{info, warn};

pub use crate::app::AppState;
use crate::auth::{Unauthenticated, API_KEY_HEADER};
use crate::body::{full, ProxyBody};
use crate::error::{ProxyError, Unreadable};
use crate::metrics::{ErrorLabels, RequestLabels};
use crate::routes::{route, Caller, Intake, Route};
use crate::translate::errors::OnPremError;
use crate::translate::fast;
use crate::translate::request::{cloud_to_onprem_response, onprem_to_cloud_request, Translated};
use crate::upstream::{count, forwarded_request_headers, CloudAnswer, DryRun, UpstreamCall};
pub use console::snapshot_console;

/// Shared by the areas below: where a key's documents are filed.
pub(super) const APPLICATION_SETTINGS: &str = "application_settings";

/// The API key documents are filed under: the key as it goes upstream (after the key map and
/// login tokens), so one channel's state is the same whichever way its client authenticates.
/// In the Graph dialect, the account's own key (`graph:<phone-number id>`).
pub(super) fn api_key<'a>(
    context: &'a RequestContext,
    upstream_headers: &'a HeaderMap,
) -> Result<&'a str, ProxyError> {
    if let Some(account) = context.upstream.account() {
        return Ok(account.owner());
    }
    upstream_headers
        .get(API_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            ProxyError::Rejected(OnPremError::new(
                401,
                1005,
                "the D360-API-KEY header (or a login token) is required",
            ))
        })
}

/// A handler's answer: JSON built from the translation, or a streamed response (media).
enum Reply {
    Json(u16, Value),
    /// A JSON body already written (the hot path), and the message id it reports.
    Written {
        status: u16,
        body: Vec<u8>,
        message_id: Option<String>,
    },
    Stream(Response<ProxyBody>),
}

const REQUEST_ID: &str = "x-request-id";

/// What one request learns on its way and its log line reports, handed explicitly to whatever
/// talks to upstream for it (no task-local or thread-local a reader cannot see).
pub(crate) struct RequestContext {
    /// The serving thread's upstream pool, and the status upstream answered.
    upstream: UpstreamCall,
    /// What the request is known by in logs and reports.
    request_id: String,
}

impl RequestContext {
    fn new(upstream: UpstreamCall, request_id: String) -> Self {
        RequestContext {
            upstream,
            request_id,
        }
    }
}

/// Counts a request in flight for exactly as long as its work runs, whatever way it ends.
struct InFlight<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves one request. hyper drives it to its end even when the client half-closes or goes
/// away while it waits (connections support half-close), so a send that was forwarded is never
/// cut off halfway: cancelling it would not un-send it, and the client's retry would duplicate
/// the message.
pub async fn handle(
    state: Arc<AppState>,
    request: Request<Incoming>,
    upstream: UpstreamCall,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let request_id = request_id(request.headers());
    let method = request.method().clone();
    // A `Uri` clone shares its bytes: path and query are borrowed from it, not copied.
    let uri = request.uri().clone();
    let path = uri.path();
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    let route = route(method.as_str(), path_and_query);
    let route_name = route.name();
    let in_flight = InFlight::enter(&state.metrics.in_flight);

    let context = RequestContext::new(upstream, request_id);
    let request_id = context.request_id.as_str();
    let reply = serve(&state, request, request_id, route, path_and_query, &context).await;
    let upstream_status = context.upstream.status();
    // What a send became, in its log line: a trace of every message that reached Cloud, also
    // when its client is no longer there to hear the answer.
    let mut message_id = match &reply {
        Ok(Reply::Json(_, body)) => body
            .pointer("/messages/0/id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    };
    let mut response = match reply {
        Ok(Reply::Json(status, body)) => json_response(status, &body),
        Ok(Reply::Written {
            status,
            body,
            message_id: id,
        }) => {
            message_id = id;
            written_response(status, body)
        }
        Ok(Reply::Stream(response)) => response,
        Err(error) => {
            let onprem = error.to_onprem();
            // Details can quote client input: escaped, so no one can forge log lines.
            let logged = error.to_string().escape_debug().to_string();
            if matches!(error, ProxyError::Rejected(_)) {
                info!(request_id = %request_id, error = %logged, "request rejected");
            } else {
                warn!(request_id = %request_id, error = %logged, "request failed");
            }
            state
                .metrics
                .errors
                .get_or_create(&ErrorLabels { code: onprem.code })
                .inc();
            if let Some(readiness) = state.readiness() {
                readiness.record(|report| {
                    count(
                        &mut report.refused,
                        format!("{route_name}: {}", onprem.details),
                    );
                });
            }
            json_response(onprem.status, &onprem.to_body(&state.config.meta))
        }
    };
    drop(in_flight);
    let status = response.status().as_u16();
    if let Some(readiness) = state.readiness() {
        readiness.record(|report| {
            count(&mut report.requests, format!("{route_name} {status}"));
        });
    }
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            route: route_name,
            status,
        })
        .inc();
    if let Ok(id) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert(REQUEST_ID, id);
    }
    info!(
        request_id = %request_id,
        method = %method,
        path = %path,
        route = route_name,
        upstream_status,
        status,
        message_id = message_id.as_deref(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    Ok(response)
}

async fn serve(
    state: &AppState,
    request: Request<Incoming>,
    request_id: &str,
    route: Route,
    path_and_query: &str,
    context: &RequestContext,
) -> Result<Reply, ProxyError> {
    let method = request.method().as_str().to_owned();
    let (parts, incoming) = request.into_parts();
    if let Err(refused) = check_head(&parts, state.config.max_header_bytes) {
        discard(incoming, state.config.body_read_timeout);
        return Err(refused);
    }
    // The route's policy: who may call it, then what body it takes.
    let headers = match route.caller() {
        Caller::Client => {
            let mut headers = upstream_headers(&parts, request_id);
            match state.auth.authenticate(&mut headers).await {
                Ok(Some(account)) => context.upstream.act_for(account),
                Ok(None) => {}
                Err(refused) => {
                    discard(incoming, state.config.body_read_timeout);
                    return Err(match refused {
                        Unauthenticated::UnknownToken => ProxyError::Rejected(OnPremError::new(
                            401,
                            1005,
                            "the login token is unknown or expired; log in again",
                        )),
                        Unauthenticated::NoAccount => ProxyError::Rejected(OnPremError::new(
                            401,
                            1005,
                            "no account in --accounts matches this request's API key or login",
                        )),
                        Unauthenticated::Storage(cause) => ProxyError::Storage(cause),
                    });
                }
            }
            headers
        }
        Caller::Admin => {
            if let Err(refused) = webhooks::admin_allowed(state, &parts.headers) {
                discard(incoming, state.config.body_read_timeout);
                return Err(refused);
            }
            HeaderMap::new()
        }
        Caller::Anyone | Caller::Cloud => HeaderMap::new(),
    };
    let mut body = match route.intake() {
        Intake::Json => read_body(&state.config, &parts.headers, incoming).await?,
        Intake::Stream => {
            return serve_stream(state, context, &route, &parts, headers, incoming).await
        }
        Intake::Nothing => Bytes::new(),
    };

    // One dispatch over every route: adding one that the compiler does not see handled fails
    // the build.
    match &route {
        Route::Login => settings::login(state, &parts.headers).await,
        Route::Logout => settings::logout(state, &parts.headers).await,
        Route::AdminStats | Route::AdminDead | Route::AdminReplay { .. } => {
            webhooks::admin(state, &route, parts.uri.query()).await
        }
        Route::AdminDryRunReport => Ok(dry_run_report(state)),
        Route::Console => console::page(state, &parts.headers, parts.uri.query()).await,
        Route::ConsoleCss => console::css(state),
        Route::ConsoleLogin if method == "GET" => console::login_form(state),
        Route::ConsoleLogin => console::login(state, &body),
        Route::ConsoleReplay => console::replay(state, &parts.headers, &body).await,
        Route::Healthz => Ok(Reply::Json(200, serde_json::json!({"status": "alive"}))),
        Route::WebhookVerification => webhooks::verification(state, parts.uri.query()),
        Route::Metrics => Ok(metrics(state).await),
        Route::Readyz => Ok(readyz(state).await),
        Route::DownloadMedia { media_id } => {
            media::download(state, context, media_id, headers).await
        }
        Route::PhotoGet { link: false } => profile::stream_photo(state, context, headers).await,
        Route::MediaProviders { name } => {
            providers::manage(state, context, &method, name.as_deref(), &headers, &body).await
        }
        Route::ApplicationSettings => {
            settings::application(state, context, &method, &headers, &body).await
        }
        Route::WebhookConfig => webhooks::config(state, context, &method, &headers, &body).await,
        Route::SendMessage => {
            // Only sends that name a provider are parsed here; every other send is parsed once,
            // by the translation.
            if body.windows(10).any(|w| w == b"\"provider\"") {
                if let Ok(message) = crate::translate::parse_body(&body) {
                    match providers::resolve_provider_links(state, context, &headers, message)
                        .await?
                    {
                        None => {}
                        Some(Ok(by_id)) => body = Bytes::from(by_id.to_string()),
                        Some(Err(refused)) => return Ok(refused),
                    }
                }
            }
            translate_and_forward(
                state,
                context,
                &route,
                &method,
                path_and_query,
                &headers,
                &body,
            )
            .await
        }
        Route::MarkRead { .. }
        | Route::DeleteMedia { .. }
        | Route::BusinessProfileGet
        | Route::BusinessProfilePost
        | Route::AboutGet
        | Route::AboutPatch
        | Route::PhotoGet { link: true }
        | Route::PhotoDelete
        | Route::Contacts
        | Route::Health
        | Route::PassThrough
        | Route::NotOnCloud
        | Route::NotYetSupported
        | Route::InvalidSegment
        | Route::NotFound => {
            translate_and_forward(
                state,
                context,
                &route,
                &method,
                path_and_query,
                &headers,
                &body,
            )
            .await
        }
        // Streamed routes were served above.
        Route::UploadMedia | Route::PhotoPost | Route::InboundWebhook { .. } => {
            Err(ProxyError::Rejected(OnPremError::new(
                500,
                1000,
                "internal error: a streamed route reached the JSON dispatch",
            )))
        }
    }
}

/// The routes whose body streams through instead of being read whole.
async fn serve_stream(
    state: &AppState,
    context: &RequestContext,
    route: &Route,
    parts: &Parts,
    headers: HeaderMap,
    incoming: Incoming,
) -> Result<Reply, ProxyError> {
    match route {
        Route::UploadMedia => media::upload(state, context, parts, headers, incoming).await,
        Route::PhotoPost => profile::upload_photo(state, context, parts, headers, incoming).await,
        Route::InboundWebhook { channel } => {
            webhooks::inbound(state, channel, &parts.headers, incoming).await
        }
        other => Err(ProxyError::Rejected(OnPremError::new(
            500,
            1000,
            format!("internal error: {} takes no streamed body", other.name()),
        ))),
    }
}

fn dry_run_report(state: &AppState) -> Reply {
    let dry_run = state.upstream.dry_run();
    let report = dry_run.map(DryRun::report).unwrap_or_default();
    let body = serde_json::to_value(&report).unwrap_or_default();
    Reply::Json(
        200,
        serde_json::json!({"dry_run": dry_run.is_some(), "report": body}),
    )
}

/// The common path: translate the On-Premise request, answer locally or forward it to Cloud,
/// and translate the answer back.
async fn translate_and_forward(
    state: &AppState,
    context: &RequestContext,
    route: &Route,
    method: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Reply, ProxyError> {
    // The common sends take the hot path, which says what it left behind for the console's
    // readiness report (the dry run's report takes the general path's view of every send).
    if matches!(route, Route::SendMessage) && state.upstream.dry_run().is_none() {
        if let Some((cloud, dropped)) = fast::onprem_to_cloud_send_reporting(body) {
            if let Some(readiness) = state.readiness() {
                record_dropped(readiness, route, context, dropped.fields());
            }
            let answer = timed_exchange(
                state,
                context,
                Method::POST,
                "/messages",
                headers,
                Some(Bytes::from(cloud)),
            )
            .await?;
            if answer.status.is_success() {
                if let Some((body, id)) =
                    fast::cloud_to_onprem_send_response(&answer.body, &state.config.meta)
                {
                    return Ok(Reply::Written {
                        status: 201,
                        body,
                        message_id: Some(id),
                    });
                }
            }
            return translate_answer(route, &answer, state);
        }
    }
    let translated =
        onprem_to_cloud_request(route, method, path_and_query, body, &state.config.meta)
            .map_err(ProxyError::Rejected)?;
    let cloud = match translated {
        Translated::Local { status, body } => return Ok(Reply::Json(status, body)),
        Translated::Upstream(cloud) => cloud,
    };
    if let Some(readiness) = state.readiness() {
        if let (Ok(onprem), Some(cloud_body)) = (crate::translate::parse_body(body), &cloud.body) {
            let dropped = crate::translate::dryrun::dropped_fields(&onprem, cloud_body);
            record_dropped(readiness, route, context, dropped);
        }
    }
    // serde_json's writer straight into bytes (`to_string` goes through `Display`: about 2 %
    // of a send in the profile). Writing a `Value` to memory cannot fail.
    let body = cloud
        .body
        .as_ref()
        .map(|b| Bytes::from(serde_json::to_vec(b).unwrap_or_default()));
    let method = Method::from_bytes(cloud.method.as_bytes()).unwrap_or(Method::POST);
    let mut answer = timed_exchange(state, context, method, &cloud.path, headers, body).await?;
    if matches!(route, Route::PassThrough)
        && state.upstream.dialect() == crate::config::Dialect::Graph
        && answer.status.is_success()
    {
        // Graph's template management answers in its own shape; clients read 360dialog's.
        if let Ok(parsed) = serde_json::from_slice::<Value>(&answer.body) {
            let reshaped = crate::translate::templates::graph_to_360_templates(
                cloud.method,
                cloud.body.as_ref(),
                parsed,
            );
            answer.body = Bytes::from(serde_json::to_vec(&reshaped).unwrap_or_default());
        }
    }
    translate_answer(route, &answer, state)
}

/// Counts the On-Premise fields a request's translation left behind, with its id as the
/// example.
fn record_dropped(
    readiness: &DryRun,
    route: &Route,
    context: &RequestContext,
    fields: Vec<String>,
) {
    if fields.is_empty() {
        return;
    }
    readiness.record(|report| {
        for field in fields {
            let field = count(
                &mut report.dropped_fields,
                format!("{}: {field}", route.name()),
            );
            report
                .dropped_examples
                .entry(field)
                .or_insert_with(|| context.request_id.clone());
        }
    });
}

/// An upstream exchange, its time observed in the upstream latency histogram.
async fn timed_exchange(
    state: &AppState,
    context: &RequestContext,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: Option<Bytes>,
) -> Result<CloudAnswer, ProxyError> {
    let started = Instant::now();
    let answer = state
        .upstream
        .exchange(&context.upstream, method, path, headers, body)
        .await;
    state
        .metrics
        .upstream_seconds
        .observe(started.elapsed().as_secs_f64());
    answer
}

/// What every request head must be before anything else looks at it: headers within
/// `--max-header-bytes` (else 431, they would travel upstream verbatim), and for HTTP/1.1
/// exactly one valid `Host` (RFC 9112, 3.2: else 400).
fn check_head(parts: &Parts, max_header_bytes: usize) -> Result<(), ProxyError> {
    let size: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > max_header_bytes {
        return Err(ProxyError::Rejected(OnPremError::new(
            431,
            1009,
            format!("request headers are larger than {max_header_bytes} bytes"),
        )));
    }
    if parts.version == http::Version::HTTP_11 {
        let mut hosts = parts.headers.get_all(header::HOST).iter();
        let valid = match (hosts.next(), hosts.next()) {
            (Some(host), None) => host
                .to_str()
                .ok()
                .and_then(|h| h.parse::<http::uri::Authority>().ok())
                .is_some_and(|a| !a.as_str().contains('@') && !a.host().is_empty()),
            _ => false,
        };
        if !valid {
            return Err(ProxyError::Rejected(OnPremError::new(
                400,
                1009,
                "an HTTP/1.1 request needs exactly one valid Host header",
            )));
        }
    }
    Ok(())
}

/// The client's end-to-end headers plus our request id, as sent upstream.
fn upstream_headers(parts: &Parts, request_id: &str) -> HeaderMap {
    let mut headers = forwarded_request_headers(&parts.headers);
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, id);
    }
    headers
}

fn translate_answer(
    route: &Route,
    answer: &CloudAnswer,
    state: &AppState,
) -> Result<Reply, ProxyError> {
    let (status, body) = cloud_to_onprem_response(
        route,
        answer.status.as_u16(),
        &answer.body,
        &state.config.meta,
    )
    .map_err(|e| ProxyError::UpstreamUnreadable(Unreadable::Shape(e)))?;
    // Throttled: when to come back is upstream's to say, and clients honour it.
    if status == 429 {
        if let Some(retry_after) = answer.headers.get(header::RETRY_AFTER) {
            let mut response = json_response(status, &body);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after.clone());
            return Ok(Reply::Stream(response));
        }
    }
    Ok(Reply::Json(status, body))
}

/// The client's `X-Request-Id` when it is a sane token, else a fresh one: 32 hex digits, a
/// random per-process prefix and a counter (unique without a system call per request).
fn request_id(headers: &HeaderMap) -> String {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 200 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let prefix = *PREFIX.get_or_init(|| fastrand::u64(..));
            format!(
                "{prefix:016x}{:016x}",
                COUNTER.fetch_add(1, Ordering::Relaxed)
            )
        })
}

fn json_response(status: u16, body: &Value) -> Response<ProxyBody> {
    written_response(status, serde_json::to_vec(body).unwrap_or_default())
}

fn written_response(status: u16, bytes: Vec<u8>) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(full(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
