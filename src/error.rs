//! [`ProxyError`], everything that can go wrong in the shell, and the one function that decides
//! which On-Premise error (and HTTP status) each becomes.
//!
//! Errors *returned by* the Cloud API are not here: they are data, translated by
//! `translate::errors`. Internal detail is logged once at the edge and never sent to clients.

use std::time::Duration;

use crate::translate::errors::OnPremError;
use crate::translate::TranslateError;

/// A transport error from whichever client made the connection.
pub type TransportError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The pure core refused the request (bad JSON, missing field, unknown route, ...).
    #[error("request rejected: {}", .0.details)]
    Rejected(OnPremError),
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("request body could not be read: {0}")]
    BodyRead(#[source] hyper::Error),
    #[error("request body not received within {after:?}")]
    BodyTimeout { after: Duration },
    #[error("upstream unreachable: {0}")]
    UpstreamConnect(#[source] TransportError),
    /// The connection broke after the request was sent (reset, closed early).
    #[error("upstream exchange failed: {0}")]
    UpstreamFailed(#[source] TransportError),
    #[error("upstream did not answer within {after:?}")]
    UpstreamTimeout { after: Duration },
    #[error("upstream reply unreadable: {0}")]
    UpstreamUnreadable(#[source] Unreadable),
    /// A media provider's host could not give us the media a send links to.
    #[error("media provider fetch failed: {0}")]
    MediaFetch(#[source] MediaFetch),
    /// The proxy's database could not be read or written; the cause is kept for the log.
    #[error("database: {0}")]
    Storage(#[from] crate::db::DbError),
    /// `--upstream dry-run` cannot simulate this call (media transfers, fetches).
    #[error("not simulated in dry-run mode: {0}")]
    NotInDryRun(&'static str),
    /// Our bug: a request we built was invalid.
    #[error("internal error: {0}")]
    Internal(#[source] http::Error),
}

/// Why an upstream answer could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    #[error("body: {0}")]
    Body(#[source] hyper::Error),
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("gzip: {0}")]
    Gzip(#[source] std::io::Error),
    #[error("{0}")]
    Shape(#[source] TranslateError),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("redirect not followed: {0}")]
    Redirect(&'static str),
}

/// Why fetching a provider link failed.
#[derive(Debug, thiserror::Error)]
pub enum MediaFetch {
    #[error("the media host answered HTTP {0}")]
    Status(u16),
    #[error("the media host could not be reached: {0}")]
    Transport(#[source] TransportError),
    #[error("the media host did not answer in time")]
    Timeout,
    /// A literal address the link policy refuses (a resolved one fails as `Transport`).
    #[error("{0} is not an address links may be fetched from (see --link-fetch-block)")]
    Refused(std::net::IpAddr),
}

impl ProxyError {
    /// The single place that decides status and code: caused by the client -> 4xx, upstream
    /// unreachable -> 503, upstream broken -> 502, upstream too slow -> 504, our bug -> 500.
    pub fn to_onprem(&self) -> OnPremError {
        match self {
            ProxyError::Rejected(error) => error.clone(),
            ProxyError::BodyTooLarge { limit } => OnPremError::new(
                413,
                1009,
                format!("request body is larger than the limit of {limit} bytes"),
            ),
            ProxyError::BodyRead(_) => {
                OnPremError::new(400, 1009, "request body could not be read")
            }
            ProxyError::BodyTimeout { after } => OnPremError::new(
                408,
                1009,
                format!(
                    "request body was not received within {} ms",
                    after.as_millis()
                ),
            ),
            ProxyError::UpstreamConnect(_) => {
                OnPremError::new(503, 1011, "the Cloud API upstream could not be reached")
            }
            ProxyError::UpstreamFailed(_) => OnPremError::new(
                502,
                1000,
                "the connection to the Cloud API upstream broke before it answered",
            ),
            ProxyError::UpstreamTimeout { after } => OnPremError::new(
                504,
                1011,
                format!(
                    "the Cloud API upstream did not answer within {} ms",
                    after.as_millis()
                ),
            ),
            ProxyError::UpstreamUnreadable(cause) => OnPremError::new(
                502,
                1000,
                format!("upstream reply could not be read: {cause}"),
            ),
            // On-Premise reported links it could not fetch as 400 "Media download error".
            ProxyError::MediaFetch(cause) => OnPremError::new(
                400,
                400,
                format!("the media link could not be fetched with its provider: {cause}"),
            ),
            // A database outage is passing: Service not ready, like On-Premise before its
            // database came up, and clients retry.
            ProxyError::Storage(_) => OnPremError::new(
                503,
                1011,
                "the proxy's database is unavailable; retry shortly",
            ),
            ProxyError::NotInDryRun(what) => OnPremError::new(
                501,
                1000,
                format!("dry run: {what} is not simulated; it would be sent to the Cloud API"),
            ),
            ProxyError::Internal(_) => OnPremError::new(500, 1014, "internal error in the proxy"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(e: ProxyError) -> (u16, i64) {
        let e = e.to_onprem();
        (e.status, e.code)
    }

    #[test]
    fn each_variant_has_its_status() {
        let rejected = OnPremError::new(404, 1006, "no such endpoint");
        assert_eq!(status(ProxyError::Rejected(rejected)), (404, 1006));
        assert_eq!(status(ProxyError::BodyTooLarge { limit: 1 }), (413, 1009));
        assert_eq!(
            status(ProxyError::BodyTimeout {
                after: Duration::from_secs(1)
            }),
            (408, 1009)
        );
        assert_eq!(
            status(ProxyError::UpstreamTimeout {
                after: Duration::from_secs(1)
            }),
            (504, 1011)
        );
        let unreadable = Unreadable::TooLarge { limit: 1 };
        assert_eq!(
            status(ProxyError::UpstreamUnreadable(unreadable)),
            (502, 1000)
        );
        let redirect = Unreadable::Redirect("other host");
        assert_eq!(
            status(ProxyError::UpstreamUnreadable(redirect)),
            (502, 1000)
        );
        assert_eq!(
            status(ProxyError::MediaFetch(MediaFetch::Status(404))),
            (400, 400)
        );
        assert_eq!(
            status(ProxyError::MediaFetch(MediaFetch::Timeout)),
            (400, 400)
        );
        let db = crate::db::DbError::Other("disk full".to_owned());
        assert_eq!(status(ProxyError::Storage(db)), (503, 1011));
        let internal = http::Request::builder().uri("\n").body(()).unwrap_err();
        assert_eq!(status(ProxyError::Internal(internal)), (500, 1014));
    }
    // UpstreamConnect and UpstreamFailed wrap errors only hyper can make; their statuses are
    // pinned by the integration tests (refused port, reset). BodyRead is a client that went
    // away mid-body: nobody is left to read its 400.
}
