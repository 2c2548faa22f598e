//! The Cloud API client: pooled HTTP(S) connections (rustls), URLs under the configured root,
//! header hygiene, same-origin 308 redirects, gzip decoding, connect timeout and an overall
//! deadline for every exchange.

use crate::error::MediaFetch;
use crate::link_guard::{self, GuardedResolver, LinkPolicy};
use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use flate2::read::GzDecoder;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::body::{full, ProxyBody};
use crate::config::{Config, UpstreamRoot};
use crate::error::{ProxyError, Unreadable};
use crate::translate::dryrun;

/// HTTP statuses are 100 to 599 (RFC 9110, 15); hyper parses up to 999. Anything outside is
/// a broken upstream, never passed on to the client.
fn checked_status(status: StatusCode) -> Result<StatusCode, ProxyError> {
    if (100..=599).contains(&status.as_u16()) {
        Ok(status)
    } else {
        Err(unreadable(Unreadable::Status(status.as_u16())))
    }
}

/// hyper's read buffer for upstream answers: room for the capped head (and at least the 8 KiB
/// hyper needs), so a head past `--max-header-bytes` fails the exchange.
fn upstream_header_buffer(max_header_bytes: usize) -> usize {
    max_header_bytes.max(8192)
}

/// Redirect hops followed before the answer is taken as it is.
const MAX_REDIRECTS: usize = 5;

/// A decoded upstream answer.
#[derive(Debug)]
pub struct CloudAnswer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

type Pool = Client<HttpsConnector<HttpConnector>, ProxyBody>;
/// Fetches on a client's behalf: addresses checked after DNS (see [`crate::link_guard`]).
type LinkClient = Client<HttpsConnector<HttpConnector<GuardedResolver>>, ProxyBody>;

/// Which serving thread's connection pool a request uses: the one of the thread serving it,
/// handed down explicitly from the server (a pooled connection is driven by a task on the
/// runtime that opened it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lane(pub usize);

/// One request's dealings with upstream: the pool it uses, and the status upstream last
/// answered, recorded here as soon as it is known (so a log line has it even when the answer
/// then turns out unusable). Owned by the request, handed to every call it makes.
#[derive(Debug, Default)]
pub struct UpstreamCall {
    lane: Lane,
    status: std::sync::atomic::AtomicU16,
}

impl UpstreamCall {
    pub fn new(lane: Lane) -> Self {
        UpstreamCall {
            lane,
            status: std::sync::atomic::AtomicU16::new(0),
        }
    }

    fn answered(&self, status: StatusCode) {
        self.status
            .store(status.as_u16(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The status upstream last answered, if it answered at all.
    pub fn status(&self) -> Option<u16> {
        Some(self.status.load(std::sync::atomic::Ordering::Relaxed)).filter(|s| *s != 0)
    }
}

/// Dry-run mode: nothing leaves the machine. Cloud's answers are synthesized (ids
/// `wamid.DRYRUN...`), and what the proxy saw is counted for `GET /admin/dry-run/report`.
#[derive(Debug)]
pub struct DryRun {
    serial: std::sync::atomic::AtomicU64,
    report: std::sync::Mutex<DryRunReport>,
}

impl Default for DryRun {
    fn default() -> Self {
        DryRun {
            serial: std::sync::atomic::AtomicU64::new(1),
            report: std::sync::Mutex::default(),
        }
    }
}

/// Counts for `GET /admin/dry-run/report`: requests by route and status, refusals by reason, and
/// the On-Premise fields that did not reach the Cloud request.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct DryRunReport {
    pub requests: std::collections::BTreeMap<String, u64>,
    pub refused: std::collections::BTreeMap<String, u64>,
    pub dropped_fields: std::collections::BTreeMap<String, u64>,
}

impl DryRun {
    /// Changes the report (a poisoned lock only means a panic elsewhere: the counts stand).
    pub fn record(&self, change: impl FnOnce(&mut DryRunReport)) {
        change(
            &mut self
                .report
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
    }

    /// A copy of the report as it stands.
    pub fn report(&self) -> DryRunReport {
        self.report
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Logs the Cloud request that would have been sent (secrets masked, no query) and
    /// synthesizes Cloud's answer.
    fn answer(&self, method: &Method, path_and_query: &str, body: Option<&[u8]>) -> CloudAnswer {
        let serial = self
            .serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body = body.and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok());
        let path = path_and_query.split('?').next().unwrap_or("");
        let logged = body.as_ref().map(dryrun::redacted).unwrap_or_default();
        tracing::info!(method = %method, path = %path, body = %logged, "dry run: Cloud request not sent");
        let (status, answer) =
            dryrun::synthetic_cloud_answer(method.as_str(), path_and_query, body.as_ref(), serial);
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        CloudAnswer {
            status,
            headers: HeaderMap::new(),
            body: Bytes::from(answer.to_string()),
        }
    }
}

pub struct Upstream {
    /// One pool per serving thread. A pooled connection is driven by a task on the runtime
    /// that opened it; sharing one pool across threads made most requests hand over to, and
    /// wake, another thread (measured: about a third more CPU per request).
    pools: Vec<Pool>,
    links: LinkClient,
    link_policy: LinkPolicy,
    /// `--upstream dry-run`: the one place the mode lives. Nothing is sent; Cloud's answers
    /// are synthesized and what the proxy saw is reported.
    dry_run: Option<DryRun>,
    root: UpstreamRoot,
    timeout: Duration,
    max_body_bytes: usize,
}

impl Upstream {
    pub fn new(config: &Config) -> Upstream {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let mut guarded =
            HttpConnector::new_with_resolver(GuardedResolver::new(config.link_fetch_block));
        guarded.enforce_http(false);
        guarded.set_nodelay(true);
        guarded.set_connect_timeout(Some(config.connect_timeout));
        // An answer whose head outgrows this is refused (502), not buffered without end.
        let header_buffer = upstream_header_buffer(config.max_header_bytes);
        let links = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .http1_max_buf_size(header_buffer)
            .build(
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_webpki_roots()
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(guarded),
            );
        let pools = (0..config.serving_threads.max(1))
            .map(|_| {
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .http1_max_buf_size(header_buffer)
                    .build(https.clone())
            })
            .collect();
        Upstream {
            pools,
            links,
            link_policy: config.link_fetch_block,
            dry_run: config.dry_run.then(DryRun::default),
            root: config.upstream.clone(),
            timeout: config.upstream_timeout,
            max_body_bytes: config.max_upstream_body_bytes,
        }
    }

    /// Sends one request and reads the whole (decoded) answer, all within the deadline.
    /// `headers` are the end-to-end headers to send (see [`forwarded_request_headers`]).
    pub async fn exchange(
        &self,
        call: &UpstreamCall,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Option<Bytes>,
    ) -> Result<CloudAnswer, ProxyError> {
        if let Some(dry_run) = &self.dry_run {
            let answer = dry_run.answer(&method, path_and_query, body.as_deref());
            call.answered(answer.status);
            return Ok(answer);
        }
        let uri = self
            .root
            .join(path_and_query)
            .map_err(ProxyError::Internal)?;
        match tokio::time::timeout(self.timeout, self.follow(call, method, uri, headers, body))
            .await
        {
            Ok(answer) => answer,
            Err(_) => Err(ProxyError::UpstreamTimeout {
                after: self.timeout,
            }),
        }
    }

    async fn follow(
        &self,
        call: &UpstreamCall,
        method: Method,
        mut uri: Uri,
        headers: &HeaderMap,
        body: Option<Bytes>,
    ) -> Result<CloudAnswer, ProxyError> {
        let mut hops = 0;
        loop {
            let mut request = Request::builder().method(method.clone()).uri(uri.clone());
            if let Some(h) = request.headers_mut() {
                h.extend(headers.iter().map(|(k, v)| (k.clone(), v.clone())));
                h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
                if body.is_some() && !h.contains_key(header::CONTENT_TYPE) {
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                }
            }
            let request = request
                .body(full(body.clone().unwrap_or_default()))
                .map_err(ProxyError::Internal)?;
            let response = self
                .pool(call.lane)
                .request(request)
                .await
                .map_err(client_error)?;
            let status = checked_status(response.status())?;
            call.answered(status);
            // 307/308 keep method and body; Cloud answers 308 when a path moved.
            if matches!(
                status,
                StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT
            ) {
                if hops == MAX_REDIRECTS {
                    return Err(unreadable(Unreadable::Redirect("too many redirects")));
                }
                uri = self.redirect_target(&uri, response.headers())?;
                hops += 1;
                continue;
            }
            return self.read_answer(response).await;
        }
    }

    fn pool(&self, lane: Lane) -> &Pool {
        &self.pools[lane.0 % self.pools.len()]
    }

    /// The dry-run mode's state, when the proxy runs in it.
    pub fn dry_run(&self) -> Option<&DryRun> {
        self.dry_run.as_ref()
    }

    /// Whether upstream accepts a TCP connection within `timeout` (always, in dry-run mode:
    /// nothing is sent there).
    pub async fn reachable(&self, timeout: Duration) -> bool {
        if self.dry_run.is_some() {
            return true;
        }
        let port = self.root.authority.port_u16().unwrap_or(
            if self.root.scheme == http::uri::Scheme::HTTPS {
                443
            } else {
                80
            },
        );
        let connect = tokio::net::TcpStream::connect((self.root.authority.host(), port));
        matches!(tokio::time::timeout(timeout, connect).await, Ok(Ok(_)))
    }

    /// Sends a request whose body streams (media), returning as soon as the answer's head
    /// arrives. No redirects: a streamed body cannot be sent twice. The caller bounds time.
    pub async fn open(
        &self,
        call: &UpstreamCall,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: ProxyBody,
    ) -> Result<http::Response<Incoming>, ProxyError> {
        if self.dry_run.is_some() {
            return Err(ProxyError::NotInDryRun("a media transfer"));
        }
        let uri = self
            .root
            .join(path_and_query)
            .map_err(ProxyError::Internal)?;
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(h) = request.headers_mut() {
            *h = headers;
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        }
        let request = request.body(body).map_err(ProxyError::Internal)?;
        let response = self
            .pool(call.lane)
            .request(request)
            .await
            .map_err(client_error)?;
        call.answered(checked_status(response.status())?);
        Ok(response)
    }

    /// A GET to any host (a client's media link), through the same pool and TLS settings.
    pub async fn fetch(
        &self,
        uri: Uri,
        headers: HeaderMap,
    ) -> Result<http::Response<Incoming>, ProxyError> {
        if self.dry_run.is_some() {
            return Err(ProxyError::NotInDryRun("fetching a link"));
        }
        self.check_literal(&uri)?;
        let mut request = Request::builder().method(Method::GET).uri(uri);
        if let Some(h) = request.headers_mut() {
            *h = headers;
        }
        let request = request
            .body(crate::body::empty())
            .map_err(ProxyError::Internal)?;
        self.links.request(request).await.map_err(client_error)
    }

    /// An address written into a URL is connected to without asking the resolver, so the link
    /// policy is checked on it here.
    fn check_literal(&self, uri: &Uri) -> Result<(), ProxyError> {
        let literal = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<std::net::IpAddr>().ok());
        match literal.filter(|ip| link_guard::refuses(self.link_policy, *ip)) {
            Some(ip) => Err(ProxyError::MediaFetch(MediaFetch::Refused(ip))),
            None => Ok(()),
        }
    }

    /// POSTs bytes to any URL (a legacy webhook receiver) and drains the answer; the status
    /// is all that matters. Receivers are URLs clients set, so they go through the same link
    /// policy as media links: a client cannot make the proxy post to a metadata service.
    pub async fn post_absolute(
        &self,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<StatusCode, ProxyError> {
        self.check_literal(&uri)?;
        let mut request = Request::builder().method(Method::POST).uri(uri);
        if let Some(h) = request.headers_mut() {
            *h = headers;
        }
        let request = request.body(full(body)).map_err(ProxyError::Internal)?;
        let response = self.links.request(request).await.map_err(client_error)?;
        let status = response.status();
        // Read (a bounded amount of) the answer so the connection can be reused.
        let _ = Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await;
        Ok(status)
    }

    /// Reads a whole (JSON) answer, bounded in size and gzip-decoded.
    pub async fn read_answer(
        &self,
        response: http::Response<Incoming>,
    ) -> Result<CloudAnswer, ProxyError> {
        let (parts, incoming) = response.into_parts();
        let limited = Limited::new(incoming, self.max_body_bytes);
        let raw = match limited.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                return Err(unreadable(match e.downcast::<hyper::Error>() {
                    Ok(e) => Unreadable::Body(*e),
                    Err(_) => Unreadable::TooLarge {
                        limit: self.max_body_bytes,
                    },
                }))
            }
        };
        let body = decode_body(&parts.headers, raw, self.max_body_bytes)?;
        Ok(CloudAnswer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    fn redirect_target(&self, current: &Uri, headers: &HeaderMap) -> Result<Uri, ProxyError> {
        let location = headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(unreadable(Unreadable::Redirect(
                "no usable Location header",
            )))?;
        if location.starts_with('/') {
            return Uri::builder()
                .scheme(current.scheme_str().unwrap_or("https"))
                .authority(current.authority().map(|a| a.as_str()).unwrap_or_default())
                .path_and_query(location)
                .build()
                .map_err(|_| unreadable(Unreadable::Redirect("invalid Location header")));
        }
        let target: Uri = location
            .parse()
            .map_err(|_| unreadable(Unreadable::Redirect("invalid Location header")))?;
        if self.root.is_same_origin(&target) {
            Ok(target)
        } else {
            // The client's API key would travel along: never to another host.
            Err(unreadable(Unreadable::Redirect(
                "Location points to another host",
            )))
        }
    }
}

fn client_error(e: hyper_util::client::legacy::Error) -> ProxyError {
    if e.is_connect() {
        ProxyError::UpstreamConnect(e)
    } else {
        ProxyError::UpstreamFailed(e)
    }
}

fn unreadable(cause: Unreadable) -> ProxyError {
    ProxyError::UpstreamUnreadable(cause)
}

/// Undoes `Content-Encoding: gzip`; the decoded size is bounded like the raw one.
fn decode_body(headers: &HeaderMap, raw: Bytes, limit: usize) -> Result<Bytes, ProxyError> {
    let gzipped = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim().eq_ignore_ascii_case("gzip") || v.trim().eq_ignore_ascii_case("x-gzip")
        });
    if !gzipped || raw.is_empty() {
        return Ok(raw);
    }
    let mut decoded = Vec::with_capacity(raw.len() * 4);
    GzDecoder::new(&raw[..])
        .take(limit as u64 + 1)
        .read_to_end(&mut decoded)
        .map_err(|e| unreadable(Unreadable::Gzip(e)))?;
    if decoded.len() > limit {
        return Err(unreadable(Unreadable::TooLarge { limit }));
    }
    Ok(Bytes::from(decoded))
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1); a proxy must
/// not forward them in either direction.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// The client's headers as they go upstream: end-to-end ones only (the `D360-API-KEY` value
/// untouched), minus those describing the client's body, which the proxy rewrites.
pub fn forwarded_request_headers(client: &HeaderMap) -> HeaderMap {
    let mut headers = client.clone();
    strip_hop_by_hop(&mut headers);
    for name in [
        header::HOST,
        header::CONTENT_LENGTH,
        header::CONTENT_TYPE,
        header::ACCEPT_ENCODING,
        header::CONTENT_ENCODING,
        header::EXPECT,
        HeaderName::from_static("digest"),
        HeaderName::from_static("content-md5"),
    ] {
        headers.remove(name);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("d360-api-key", HeaderValue::from_static("key"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["d360-api-key"]);
    }

    #[test]
    fn forwarded_headers_keep_the_api_key_and_drop_what_the_proxy_sets() {
        let mut h = HeaderMap::new();
        h.insert("D360-Api-Key", HeaderValue::from_static("SeCrEt"));
        h.insert("host", HeaderValue::from_static("proxy:8080"));
        h.insert("content-length", HeaderValue::from_static("12"));
        h.insert("x-custom", HeaderValue::from_static("kept"));
        let out = forwarded_request_headers(&h);
        assert_eq!(out.get("d360-api-key").unwrap(), "SeCrEt");
        assert_eq!(out.get("x-custom").unwrap(), "kept");
        assert!(out.get("host").is_none() && out.get("content-length").is_none());
    }

    #[test]
    fn gzip_bodies_are_decoded_and_bounded() {
        use flate2::write::GzEncoder;
        use std::io::Write;
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&[b'a'; 1000]).unwrap();
        let gz = Bytes::from(enc.finish().unwrap());
        let mut h = HeaderMap::new();
        h.insert("content-encoding", HeaderValue::from_static("gzip"));
        assert_eq!(decode_body(&h, gz.clone(), 1000).unwrap().len(), 1000);
        assert!(decode_body(&h, gz, 999).is_err());
    }
}
