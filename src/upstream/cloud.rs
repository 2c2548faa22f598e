//! The Cloud API (or the BSP serving it): requests carry the client's key, so they go only to
//! paths under the configured root, and redirects are followed only to the same origin.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::{
    checked_status, client_error, decode_body, graph, unreadable, CloudAnswer, Lane, Pool,
    Upstream, UpstreamCall, MAX_REDIRECTS,
};
use crate::body::{empty, full, ProxyBody};
use crate::config::Dialect;
use crate::error::{ProxyError, Unreadable};
use crate::translate::errors::OnPremError;
use crate::translate::media::CloudMediaInfo;

/// A Graph call made for no account: the caller was not identified (answered like On-Premise
/// answered a missing token).
fn no_account() -> ProxyError {
    ProxyError::Rejected(OnPremError::new(
        401,
        1005,
        "no account in --accounts matches this request's API key or login",
    ))
}

impl Upstream {
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
        let (path, headers) = self.addressed(call, &method, path_and_query, headers)?;
        if let Some(dry_run) = &self.dry_run {
            let answer = dry_run.answer(&method, path_and_query, &path, body.as_deref());
            call.answered(answer.status);
            return Ok(answer);
        }
        let headers = headers.as_ref();
        let uri = self.root.join(&path).map_err(ProxyError::Internal)?;
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
                // One copy of the whole map (its table included), not an insert per header.
                *h = headers.clone();
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
            let response = match &call.affinity {
                Some(affinity) => self.send_affine(affinity, request).await?,
                None => self
                    .pool(call.lane)
                    .request(request)
                    .await
                    .map_err(client_error)?,
            };
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
        let (path, headers) = self.addressed(call, &method, path_and_query, &headers)?;
        let uri = self.root.join(&path).map_err(ProxyError::Internal)?;
        self.send_streamed(call, method, uri, headers.into_owned(), body)
            .await
    }

    /// One request on the serving thread's pool, answered as soon as its head arrives.
    async fn send_streamed(
        &self,
        call: &UpstreamCall,
        method: Method,
        uri: Uri,
        mut headers: HeaderMap,
        body: ProxyBody,
    ) -> Result<http::Response<Incoming>, ProxyError> {
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(h) = request.headers_mut() {
            *h = headers;
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

    /// The dialect spoken upstream.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Where a waba-v2-shaped call goes, with which headers: unchanged for waba-v2 (the
    /// client's key is in `headers`); for Graph, the account's path and its token.
    fn addressed<'a>(
        &self,
        call: &UpstreamCall,
        method: &Method,
        path_and_query: &'a str,
        headers: &'a HeaderMap,
    ) -> Result<(Cow<'a, str>, Cow<'a, HeaderMap>), ProxyError> {
        if self.dialect == Dialect::WabaV2 {
            return Ok((Cow::Borrowed(path_and_query), Cow::Borrowed(headers)));
        }
        let account = call.account().ok_or_else(no_account)?;
        let target = graph::target(account, method, path_and_query).map_err(|e| {
            let (status, code) = match e {
                graph::Unmapped::InvalidId(_) => (404, 1006),
                _ => (501, 1000),
            };
            ProxyError::Rejected(OnPremError::new(status, code, e.to_string()))
        })?;
        let mut headers = headers.clone();
        let authorization = account
            .authorization(target.scheme.as_str())
            .ok_or_else(no_account)?;
        headers.insert(header::AUTHORIZATION, authorization);
        Ok((Cow::Owned(target.path_and_query), Cow::Owned(headers)))
    }

    /// Step two of a media download: the bytes behind the url Cloud gave for the media id.
    /// waba-v2 serves them under its own root (re-rooted: path and query byte for byte, the
    /// query is a signed secret). Graph gives a url on Meta's CDN, fetched with the account's
    /// token, so only from a host in `--token-hosts`.
    pub async fn open_media(
        &self,
        call: &UpstreamCall,
        info: &CloudMediaInfo,
        headers: HeaderMap,
    ) -> Result<http::Response<Incoming>, ProxyError> {
        if self.dialect == Dialect::WabaV2 {
            return self
                .open(call, Method::GET, &info.path_and_query, headers, empty())
                .await;
        }
        let uri: Uri = info
            .url
            .parse()
            .map_err(|_| unreadable(Unreadable::Redirect("the media url is not a URL")))?;
        if !self.may_carry_token(&uri) {
            return Err(unreadable(Unreadable::Redirect(
                "the media url points to a host outside --token-hosts",
            )));
        }
        self.fetch_with_token(call, uri, headers).await
    }

    /// Whether the account's token may go to `uri`: a host in `--token-hosts`, over https
    /// (or http beside an http root: a local test double).
    pub(super) fn may_carry_token(&self, uri: &Uri) -> bool {
        let scheme_ok = uri.scheme() == Some(&http::uri::Scheme::HTTPS)
            || (uri.scheme() == Some(&http::uri::Scheme::HTTP)
                && self.root.scheme == http::uri::Scheme::HTTP);
        let host = uri.host().unwrap_or_default().to_ascii_lowercase();
        self.dialect == Dialect::Graph && scheme_ok && self.token_hosts.contains(&host)
    }

    /// The profile picture behind the url Cloud gave. Meta's picture CDN needs no
    /// credentials, so none go along, except to a host in `--token-hosts` in the Graph dialect
    /// (where Meta may ask for the token, as it does for media).
    pub async fn fetch_picture(
        &self,
        call: &UpstreamCall,
        uri: Uri,
    ) -> Result<http::Response<Incoming>, ProxyError> {
        if self.dry_run.is_none() && self.may_carry_token(&uri) {
            return self.fetch_with_token(call, uri, HeaderMap::new()).await;
        }
        self.fetch(uri, HeaderMap::new()).await
    }

    /// GET `uri` with the account's bearer token; the caller checked the host.
    async fn fetch_with_token(
        &self,
        call: &UpstreamCall,
        uri: Uri,
        mut headers: HeaderMap,
    ) -> Result<http::Response<Incoming>, ProxyError> {
        if self.dry_run.is_some() {
            return Err(ProxyError::NotInDryRun("a media transfer"));
        }
        let account = call.account().ok_or_else(no_account)?;
        let authorization = account.authorization("Bearer").ok_or_else(no_account)?;
        headers.insert(header::AUTHORIZATION, authorization);
        self.send_streamed(call, Method::GET, uri, headers, empty())
            .await
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
