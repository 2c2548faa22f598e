//! Connection-affine upstream: each client connection keeps its own upstream connection for
//! its JSON exchanges, so a request needs no pool checkout (a lock, a lookup by host, the
//! connector cloned and boxed futures per request).
//!
//! An On-Premise client sends one request at a time per connection (HTTP/1.1 without
//! pipelining), so one upstream connection per client connection is enough. When a client
//! connection closes, its upstream connection goes back to its serving thread's idle list, and
//! a new client connection takes one from there before opening another: clients that open a
//! connection per request (common with PHP and curl) do not pay a TCP and TLS handshake to
//! Cloud per send. A request that a closed connection never sent is sent once more on a fresh
//! one (one that was sent is never repeated: a send must not go out twice).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use tower_service::Service;

use super::Upstream;
use crate::body::ProxyBody;
use crate::error::ProxyError;

/// Upstream connections idle on one serving thread, between client connections, with when
/// each went idle.
pub type IdleList = Arc<Mutex<Vec<(Instant, http1::SendRequest<ProxyBody>)>>>;

/// Idle upstream connections kept per serving thread at most.
const MAX_IDLE: usize = 256;
/// How long a connection may sit in the idle list: past it, a NAT or load balancer may have
/// dropped it silently, and a send written into it would be lost without a retry (as hyper's
/// own pool, which keeps idle connections 90 s).
const IDLE_FOR: Duration = Duration::from_secs(60);

/// One client connection's upstream connection, when it has one that is idle.
pub struct Affinity {
    idle: Mutex<Option<http1::SendRequest<ProxyBody>>>,
    /// Where it goes when the client connection closes, and where one comes from first.
    thread: IdleList,
}

impl Drop for Affinity {
    fn drop(&mut self) {
        let kept = self
            .idle
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(sender) = kept.filter(|s| !s.is_closed()) {
            let mut list = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
            list.retain(|(since, s)| !s.is_closed() && since.elapsed() < IDLE_FOR);
            if list.len() < MAX_IDLE {
                list.push((Instant::now(), sender));
            }
        }
    }
}

impl std::fmt::Debug for Affinity {
    // (Nothing to show: connections.)
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Affinity")
    }
}

impl Affinity {
    /// A client connection's own, drawing on its serving thread's idle connections.
    pub fn new(thread: IdleList) -> Affinity {
        Affinity {
            idle: Mutex::new(None),
            thread,
        }
    }

    fn take(&self) -> Option<http1::SendRequest<ProxyBody>> {
        let own = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .filter(|sender| !sender.is_closed());
        own.or_else(|| {
            let mut list = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
            while let Some((since, sender)) = list.pop() {
                if !sender.is_closed() && since.elapsed() < IDLE_FOR {
                    return Some(sender);
                }
            }
            None
        })
    }

    fn keep(&self, sender: http1::SendRequest<ProxyBody>) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.is_none() {
            *idle = Some(sender);
        }
    }
}

impl Upstream {
    /// Sends `request` on the client connection's own upstream connection (opened when it
    /// has none), and returns the answer's head; the body streams as usual.
    pub(super) async fn send_affine(
        &self,
        affinity: &Affinity,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut request = request;
        // On the wire: the path alone, the host in `Host` (what a pooled client does itself).
        let target = request.uri().clone();
        if let Some(authority) = target.authority() {
            if let Ok(host) = http::HeaderValue::from_str(authority.as_str()) {
                request
                    .headers_mut()
                    .entry(http::header::HOST)
                    .or_insert(host);
            }
        }
        if let Some(path) = target.path_and_query() {
            *request.uri_mut() = Uri::from(path.clone());
        }
        let mut fresh = false;
        loop {
            let mut sender = match affinity.take() {
                Some(sender) => sender,
                None => {
                    fresh = true;
                    self.connect(&target).await?
                }
            };
            if sender.ready().await.is_err() {
                if fresh {
                    return Err(ProxyError::UpstreamConnect(
                        "the new upstream connection closed at once".into(),
                    ));
                }
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    affinity.keep(sender);
                    return Ok(response);
                }
                Err(mut failed) => match failed.take_message() {
                    // Never written: a kept connection that had closed. Once more, fresh.
                    Some(unsent) if !fresh => request = unsent,
                    // Never written on a fresh connection either: upstream is not taking
                    // requests (a retry by the client is safe).
                    Some(_) => {
                        return Err(ProxyError::UpstreamConnect(Box::new(failed.into_error())))
                    }
                    None => return Err(ProxyError::UpstreamFailed(Box::new(failed.into_error()))),
                },
            }
        }
    }

    /// A new HTTP/1.1 connection to `uri`'s host, driven by a task on this thread.
    async fn connect(&self, uri: &Uri) -> Result<http1::SendRequest<ProxyBody>, ProxyError> {
        let mut connector = self.connector.clone();
        let io = connector
            .call(uri.clone())
            .await
            .map_err(ProxyError::UpstreamConnect)?;
        let (sender, connection) = http1::Builder::new()
            .max_buf_size(self.header_buffer)
            .handshake(io)
            .await
            .map_err(|e| ProxyError::UpstreamConnect(Box::new(e)))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }
}
