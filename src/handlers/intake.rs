//! Body intake: JSON bodies read whole within their limit and time, and refused bodies read
//! and thrown away so the client sees its error instead of a reset connection.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::config::Config;
use crate::error::ProxyError;

/// Reads the whole body, refusing more than the configured limit (by `Content-Length` up
/// front, and by counting for chunked bodies) and giving up after the body read timeout.
pub(super) async fn read_body(
    config: &Config,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Bytes, ProxyError> {
    let limit = config.max_body_bytes;
    read_limited(headers, body, limit, config.body_read_timeout, || {
        ProxyError::BodyTooLarge { limit }
    })
    .await
}

/// Reads a whole body of at most `limit` bytes (declared or counted; past it: `too_large()`)
/// that must arrive `within` the given time.
pub(super) async fn read_limited(
    headers: &HeaderMap,
    mut body: Incoming,
    limit: usize,
    within: Duration,
    too_large: impl Fn() -> ProxyError,
) -> Result<Bytes, ProxyError> {
    if content_length(headers).is_some_and(|n| n > limit as u64) {
        discard(body, within);
        return Err(too_large());
    }
    let read = async {
        // A body usually arrives as one frame, which is then answered without a copy.
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut seen = 0;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(ProxyError::BodyRead)?.into_data() else {
                continue;
            };
            seen += data.len();
            if seen > limit {
                return Err(too_large());
            }
            chunks.push(data);
        }
        Ok(match chunks.len() {
            1 => chunks.swap_remove(0),
            _ => Bytes::from(chunks.concat()),
        })
    };
    let read = tokio::time::timeout(within, read).await;
    match read {
        Err(_) => Err(ProxyError::BodyTimeout { after: within }),
        Ok(Err(error @ ProxyError::BodyRead(_))) => Err(error),
        Ok(Err(refused)) => {
            discard(body, within);
            Err(refused)
        }
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

/// Refused bodies are read this far at most before the connection is closed instead.
const DISCARD_LIMIT: usize = 256 * 1024 * 1024;

/// Reads and throws away the rest of a refused body while the refusal is sent. Closing a
/// socket with unread data resets the connection, and a client still sending loses the
/// answer (it sees a broken pipe instead of the 413).
pub(super) fn discard(mut body: Incoming, within: Duration) {
    tokio::spawn(async move {
        let drain = async {
            let mut seen = 0;
            while let Some(Ok(frame)) = body.frame().await {
                seen += frame.data_ref().map_or(0, Bytes::len);
                if seen > DISCARD_LIMIT {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(within, drain).await;
    });
}

pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}
