//! Everything that leaves the proxy. Three parts, each in its own file:
//! - [`cloud`]: the Cloud API (or its BSP), carrying the client's key: pooled HTTP(S)
//!   connections per serving thread, paths under the configured root, same-origin redirects,
//!   gzip decoding, an overall deadline for every exchange;
//! - [`outbound`]: any other host, on a client's behalf (provider media links, webhook
//!   receivers), never with the key, and only where the link policy allows;
//! - [`dry_run`]: `--upstream dry-run`, the one place that mode lives.
//!
//! This file holds what they share: the client type, answers, header hygiene.

mod affine;
mod cloud;
mod dry_run;
pub mod graph;
mod outbound;

pub use affine::{Affinity, IdleList};
pub use dry_run::{count, DryRun, DryRunReport};

use crate::accounts::Account;
use crate::link_guard::{GuardedResolver, LinkPolicy};
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flate2::read::GzDecoder;
use http::header::{self, HeaderMap, HeaderName};
use http::StatusCode;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::body::ProxyBody;
use crate::config::{Config, Dialect, UpstreamRoot};
use crate::error::{ProxyError, Unreadable};

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
    /// The client connection's own upstream connection (none: the thread's pool is used).
    affinity: Option<Arc<Affinity>>,
    status: std::sync::atomic::AtomicU16,
    /// Graph dialect: the account the client was identified as (its token goes along).
    account: std::sync::OnceLock<Arc<Account>>,
}

impl UpstreamCall {
    pub fn new(lane: Lane) -> Self {
        UpstreamCall {
            lane,
            affinity: None,
            status: std::sync::atomic::AtomicU16::new(0),
            account: std::sync::OnceLock::new(),
        }
    }

    /// A call made for a client connection that keeps its own upstream connection.
    pub fn affine(lane: Lane, affinity: Arc<Affinity>) -> Self {
        UpstreamCall {
            affinity: Some(affinity),
            ..UpstreamCall::new(lane)
        }
    }

    /// Graph dialect: the request acts for `account` (set once, when it is authenticated).
    pub fn act_for(&self, account: Arc<Account>) {
        let _ = self.account.set(account);
    }

    /// The account the request acts for, in the Graph dialect.
    pub fn account(&self) -> Option<&Arc<Account>> {
        self.account.get()
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
    /// Per serving thread: upstream connections idle between client connections.
    idle: Vec<IdleList>,
    /// What the affine connections are opened with (the pools' connector).
    connector: HttpsConnector<HttpConnector>,
    header_buffer: usize,
    root: UpstreamRoot,
    dialect: Dialect,
    /// Graph dialect: the hosts an access token may go to (the root's host is one).
    token_hosts: Vec<String>,
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
            idle: (0..config.serving_threads.max(1))
                .map(|_| IdleList::default())
                .collect(),
            connector: https,
            header_buffer,
            root: config.upstream.clone(),
            dialect: config.dialect,
            token_hosts: config.token_hosts.clone(),
            timeout: config.upstream_timeout,
            max_body_bytes: config.max_upstream_body_bytes,
        }
    }
}

impl Upstream {
    /// A new client connection's link upstream, on serving thread `lane`.
    pub fn affinity(&self, lane: Lane) -> Affinity {
        Affinity::new(self.idle[lane.0 % self.idle.len()].clone())
    }
}

fn client_error(e: hyper_util::client::legacy::Error) -> ProxyError {
    if e.is_connect() {
        ProxyError::UpstreamConnect(Box::new(e))
    } else {
        ProxyError::UpstreamFailed(Box::new(e))
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
    use http::header::HeaderValue;

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
    fn access_tokens_go_only_to_the_allowed_hosts_over_https() {
        let args = [
            "x",
            "--upstream",
            "https://graph.facebook.com",
            "--accounts",
            "a.json",
        ];
        let Ok(crate::config::Cli {
            command: crate::config::Command::Serve(serve),
        }) = crate::config::Cli::parse_with_default(args.map(str::to_owned))
        else {
            panic!("serve arguments");
        };
        let upstream = Upstream::new(&serve.validate().unwrap());
        let carries = |url: &str| upstream.may_carry_token(&url.parse().unwrap());
        assert!(carries(
            "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1"
        ));
        assert!(carries("https://graph.facebook.com/v23.0/1"));
        for refused in [
            "http://lookaside.fbsbx.com/x",
            "https://lookaside.fbsbx.com.evil.example/x",
            "https://evil.example/lookaside.fbsbx.com",
            "https://user@evil.example/x",
        ] {
            assert!(!carries(refused), "{refused}");
        }
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
