//! Any other host, on a client's behalf: provider media links and the legacy webhook receivers
//! clients set. Never the client's key (callers pass only the headers meant for that host), and
//! only addresses the link policy allows ([`crate::link_guard`]): literal addresses are checked
//! here, resolved names by the guarded resolver of the outbound client.

use bytes::Bytes;
use http::header::HeaderMap;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::{client_error, Upstream};
use crate::body::full;
use crate::error::{MediaFetch, ProxyError};
use crate::link_guard;

impl Upstream {
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
}
