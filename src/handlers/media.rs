//! Media: uploads streamed into Cloud's multipart form, downloads streamed from the url Cloud
//! hands out. Bodies flow through; neither is ever collected. Nothing is retried: 360dialog
//! blocks the media endpoint for an hour after 5 failures.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::time::Duration;

use tokio::time::{timeout_at, Instant};

use super::{content_length, translate_answer, Reply, RequestContext};
use crate::body::{Activity, MediaDownload, MultipartUpload, UploadFailure, UploadOutcome};
use crate::error::{MediaFetch, ProxyError, Unreadable};
use crate::handlers::AppState;
use crate::routes::Route;
use crate::translate::errors::{onprem_error_for, OnPremError};
use crate::translate::media::{
    check_upload_size, cloud_media_info, multipart_upload_framing, upload_kind, MediaKind,
};
use crate::translate::request::media_path;
use crate::translate::TranslateError;
use crate::upstream::CloudAnswer;

/// `POST /v1/media`: the raw body becomes the `file` part of Cloud's multipart upload.
pub(super) async fn upload(
    state: &AppState,
    context: &RequestContext,
    parts: &Parts,
    headers: HeaderMap,
    body: Incoming,
) -> Result<Reply, ProxyError> {
    let (kind, declared) = match checked_upload(&parts.headers) {
        Ok(checked) => checked,
        Err(refused) => {
            super::discard(body, state.config.body_read_timeout);
            return Err(refused);
        }
    };
    let deadline = Instant::now() + state.config.media_timeout;
    let answer = stream_to_cloud(state, context, &kind, declared, body, headers, deadline).await?;
    translate_answer(&Route::UploadMedia, &answer, state)
}

/// The media kind `Content-Type` names, and the declared length, already checked against the
/// kind's limit: refused before upstream is bothered.
pub(super) fn checked_upload(headers: &HeaderMap) -> Result<(MediaKind, Option<u64>), ProxyError> {
    let rejected = |e: TranslateError| ProxyError::Rejected(onprem_error_for(&e));
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let kind = upload_kind(content_type).map_err(rejected)?;
    let declared = content_length(headers);
    if let Some(length) = declared {
        check_upload_size(&kind, length).map_err(rejected)?;
    }
    // An empty file would reach Cloud as an empty part; On-Premise refused it.
    if declared == Some(0) {
        return Err(empty_upload());
    }
    Ok((kind, declared))
}

fn empty_upload() -> ProxyError {
    ProxyError::Rejected(OnPremError::new(400, 1009, "the media upload is empty"))
}

/// Streams `file` into Cloud's multipart upload and reads Cloud's answer. A file that turns
/// out too large or incomplete is an error even if Cloud already answered.
async fn stream_to_cloud(
    state: &AppState,
    context: &RequestContext,
    kind: &MediaKind,
    declared: Option<u64>,
    file: Incoming,
    mut headers: HeaderMap,
    deadline: Instant,
) -> Result<CloudAnswer, ProxyError> {
    let rejected = |e: TranslateError| ProxyError::Rejected(onprem_error_for(&e));
    let boundary = format!("waba-onprem-proxy-{}", uuid::Uuid::new_v4().simple());
    let framing = multipart_upload_framing(kind, &boundary);
    let outcome = UploadOutcome::default();
    // Bytes moving from the client (or media host) count as activity; a stall in either
    // direction, or upstream sitting on its answer, ends the transfer after the idle timeout.
    let activity = Activity::default();
    let multipart = MultipartUpload::new(
        Bytes::from(framing.head),
        file,
        Bytes::from(framing.tail),
        kind.limit,
        declared,
        outcome.clone(),
        activity.clone(),
    );
    if let Ok(value) = HeaderValue::from_str(&framing.content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    // The length is the body's own (exact size hint) or chunked; never a stale header.
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    let exchange = async {
        let response = state
            .upstream
            .open(
                &context.upstream,
                Method::POST,
                "/media",
                headers,
                multipart.boxed_unsync(),
            )
            .await?;
        state.upstream.read_answer(response).await
    };
    let idle = state.config.media_idle_timeout;
    let result = tokio::select! {
        result = timeout_at(deadline, exchange) => result.map_err(|_| ProxyError::UpstreamTimeout {
            after: state.config.media_timeout,
        }),
        () = activity.idle_for(idle) => Err(ProxyError::UpstreamTimeout { after: idle }),
    };
    // Checked first: whatever upstream said, a cut-off upload is not a success.
    match outcome.failure() {
        Some(UploadFailure::TooLarge { limit }) => {
            return Err(rejected(TranslateError::TooLarge {
                what: format!("{} media", kind.mime),
                limit,
            }))
        }
        Some(UploadFailure::Empty) => return Err(empty_upload()),
        Some(UploadFailure::Incomplete) => {
            return Err(ProxyError::Rejected(OnPremError::new(
                400,
                1009,
                "the upload ended before all of its bytes arrived",
            )))
        }
        None => {}
    }
    result?
}

/// What became of a provider link.
pub(super) enum Uploaded {
    Id(String),
    /// Cloud refused the upload: its error, translated, is the answer to the send.
    Refused(Reply),
}

/// Fetches a client's media link (with its provider's credentials) and streams it into a
/// Cloud upload, under the same limits as a client upload.
pub(super) async fn fetch_and_upload(
    state: &AppState,
    context: &RequestContext,
    link: Uri,
    fetch_headers: HeaderMap,
    client_headers: HeaderMap,
    deadline: Instant,
) -> Result<Uploaded, ProxyError> {
    let head_by = deadline.min(Instant::now() + state.config.media_idle_timeout);
    let fetched = timeout_at(head_by, state.upstream.fetch(link, fetch_headers))
        .await
        .map_err(|_| ProxyError::MediaFetch(MediaFetch::Timeout))?
        .map_err(|e| match e {
            ProxyError::UpstreamConnect(e) | ProxyError::UpstreamFailed(e) => {
                ProxyError::MediaFetch(MediaFetch::Transport(e))
            }
            other => other,
        })?;
    if !fetched.status().is_success() {
        return Err(ProxyError::MediaFetch(MediaFetch::Status(
            fetched.status().as_u16(),
        )));
    }
    let (kind, declared) = checked_upload(fetched.headers())?;
    let mut headers = client_headers;
    headers.remove(header::CONTENT_TYPE);
    let answer = stream_to_cloud(
        state,
        context,
        &kind,
        declared,
        fetched.into_body(),
        headers,
        deadline,
    )
    .await?;
    if !answer.status.is_success() {
        return translate_answer(&Route::UploadMedia, &answer, state).map(Uploaded::Refused);
    }
    let id = serde_json::from_slice::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_owned))
        .ok_or_else(|| {
            ProxyError::UpstreamUnreadable(Unreadable::Shape(TranslateError::missing("id")))
        })?;
    Ok(Uploaded::Id(id))
}

/// `GET /v1/media/{id}`: look the id up, then stream the bytes from the url Cloud returns,
/// re-rooted on the upstream (path and query byte for byte: the query is a signed secret).
pub(super) async fn download(
    state: &AppState,
    context: &RequestContext,
    media_id: &str,
    headers: HeaderMap,
) -> Result<Reply, ProxyError> {
    let route = Route::DownloadMedia {
        media_id: media_id.to_owned(),
    };
    let lookup = state
        .upstream
        .exchange(
            &context.upstream,
            Method::GET,
            &media_path(media_id),
            &headers,
            None,
        )
        .await?;
    if !lookup.status.is_success() {
        return translate_answer(&route, &lookup, state);
    }
    let info = serde_json::from_slice(&lookup.body)
        .map_err(|e| TranslateError::invalid("media lookup", format!("is not JSON ({e})")))
        .and_then(|v| cloud_media_info(&v))
        .map_err(|e| ProxyError::UpstreamUnreadable(Unreadable::Shape(e)))?;

    let deadline = Instant::now() + state.config.media_timeout;
    let idle = state.config.media_idle_timeout;
    let fetch = state.upstream.open_media(&context.upstream, &info, headers);
    // Nothing moves until the answer's head arrives: the idle timeout bounds the wait.
    let response = timeout_at(deadline.min(Instant::now() + idle), fetch)
        .await
        .map_err(|_| ProxyError::UpstreamTimeout {
            after: idle.min(state.config.media_timeout),
        })??;
    if !response.status().is_success() {
        let answer = state.upstream.read_answer(response).await?;
        return translate_answer(&route, &answer, state);
    }

    let content_type = HeaderValue::from_str(&info.mime_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    Ok(relay_media(
        response,
        content_type,
        info.file_size,
        deadline,
        idle,
    ))
}

/// An upstream media answer relayed to the client as a 200 stream: gzip decoded, and
/// `Content-Length` from upstream, or `known_size` where upstream's is absent or counts
/// compressed bytes.
pub(super) fn relay_media(
    response: http::Response<Incoming>,
    content_type: HeaderValue,
    known_size: Option<u64>,
    deadline: Instant,
    idle: Duration,
) -> Reply {
    let gzip = response
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
    let promised = if gzip {
        known_size
    } else {
        content_length(response.headers()).or(known_size)
    };
    let body = MediaDownload::new(response.into_body(), gzip, promised, deadline, idle);
    let mut reply = Response::new(body.boxed_unsync());
    *reply.status_mut() = StatusCode::OK;
    let reply_headers = reply.headers_mut();
    reply_headers.insert(header::CONTENT_TYPE, content_type);
    if let Some(length) = promised {
        reply_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    Reply::Stream(reply)
}
