//! The Cloud API (or the BSP serving it): requests carry the client's key, so they go only to
//! paths under the configured root, and redirects are followed only to the same origin.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::{
    checked_status, client_error, decode_body, unreadable, CloudAnswer, Lane, Pool, Upstream,
    UpstreamCall, MAX_REDIRECTS,
};
use crate::body::{full, ProxyBody};
use crate::error::{ProxyError, Unreadable};

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
