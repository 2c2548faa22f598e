//! The profile photo, the two parts that are not plain JSON: reading the image itself
//! (streamed from the url Cloud gives), and setting it through Cloud's resumable upload
//! (`/uploads` -> `/upload:<id>` -> `profile_picture_handle`).

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Uri};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::time::{timeout_at, Instant};

use super::{translate_answer, Reply, RequestContext};
use crate::error::{ProxyError, Unreadable};
use crate::handlers::AppState;
use crate::routes::Route;
use crate::translate::errors::{onprem_error_for, OnPremError};
use crate::translate::profile::{
    cloud_profile_picture_url, cloud_upload_handle, cloud_upload_session_path,
};
use crate::translate::TranslateError;

const PHOTO_URL_QUERY: &str = "/whatsapp_business_profile?fields=profile_picture_url";

fn unreadable(e: TranslateError) -> ProxyError {
    ProxyError::UpstreamUnreadable(Unreadable::Shape(e))
}

fn json_of(body: &[u8]) -> Result<Value, ProxyError> {
    serde_json::from_slice(body).map_err(|e| {
        unreadable(TranslateError::invalid(
            "response",
            format!("is not JSON ({e})"),
        ))
    })
}

/// `GET /v1/settings/profile/photo` without `format=link`: the image bytes themselves.
pub(super) async fn stream_photo(
    state: &AppState,
    context: &RequestContext,
    headers: HeaderMap,
) -> Result<Reply, ProxyError> {
    let route = Route::PhotoGet { link: false };
    let answer = state
        .upstream
        .exchange(
            &context.upstream,
            Method::GET,
            PHOTO_URL_QUERY,
            &headers,
            None,
        )
        .await?;
    if !answer.status.is_success() {
        return translate_answer(&route, &answer, state);
    }
    let url = cloud_profile_picture_url(&json_of(&answer.body)?).map_err(unreadable)?;
    if url.is_empty() {
        return Err(ProxyError::Rejected(OnPremError::new(
            404,
            1006,
            "no profile photo is set",
        )));
    }
    let uri: Uri = url.parse().map_err(|_| {
        unreadable(TranslateError::invalid(
            "profile_picture_url",
            "is not a URL",
        ))
    })?;
    let deadline = Instant::now() + state.config.media_timeout;
    let idle = state.config.media_idle_timeout;
    let response = timeout_at(
        deadline.min(Instant::now() + idle),
        state.upstream.fetch_picture(&context.upstream, uri),
    )
    .await
    .map_err(|_| ProxyError::UpstreamTimeout {
        after: idle.min(state.config.media_timeout),
    })??;
    if !response.status().is_success() {
        return Err(ProxyError::UpstreamUnreadable(Unreadable::Status(
            response.status().as_u16(),
        )));
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("image/jpeg"));
    Ok(super::media::relay_media(
        response,
        content_type,
        None,
        deadline,
        idle,
    ))
}

/// `POST /v1/settings/profile/photo`: raw jpeg/png (at most 5 MiB, so it is read whole: the
/// first upload step needs its length) -> the three Cloud calls.
pub(super) async fn upload_photo(
    state: &AppState,
    context: &RequestContext,
    parts: &Parts,
    headers: HeaderMap,
    body: Incoming,
) -> Result<Reply, ProxyError> {
    let rejected = |e: TranslateError| ProxyError::Rejected(onprem_error_for(&e));
    let checked = super::media::checked_upload(&parts.headers).and_then(|(kind, _)| {
        if kind.mime == "image/jpeg" || kind.mime == "image/png" {
            Ok(kind)
        } else {
            Err(rejected(TranslateError::invalid(
                "Content-Type",
                "must be image/jpeg or image/png for a profile photo",
            )))
        }
    });
    let kind = match checked {
        Ok(kind) => kind,
        Err(refused) => {
            super::discard(body, state.config.body_read_timeout);
            return Err(refused);
        }
    };
    let limit = usize::try_from(kind.limit).unwrap_or(usize::MAX);
    let photo = super::intake::read_limited(
        &parts.headers,
        body,
        limit,
        state.config.media_timeout,
        || {
            rejected(TranslateError::TooLarge {
                what: format!("{} profile photo", kind.mime),
                limit: kind.limit,
            })
        },
    )
    .await?;
    if photo.is_empty() {
        return Err(rejected(TranslateError::missing(
            "request body (the image)",
        )));
    }

    let route = Route::PhotoPost;
    let session = format!(
        "/uploads?file_name=profile.{}&file_length={}&file_type={}",
        kind.extension,
        photo.len(),
        kind.mime
    );
    let opened = state
        .upstream
        .exchange(&context.upstream, Method::POST, &session, &headers, None)
        .await?;
    if !opened.status.is_success() {
        return translate_answer(&route, &opened, state);
    }
    let upload_path = cloud_upload_session_path(&json_of(&opened.body)?).map_err(unreadable)?;

    let mut upload_headers = headers.clone();
    upload_headers.insert("file_offset", HeaderValue::from_static("0"));
    upload_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind.mime));
    let uploaded = state
        .upstream
        .exchange(
            &context.upstream,
            Method::POST,
            &upload_path,
            &upload_headers,
            Some(photo),
        )
        .await?;
    if !uploaded.status.is_success() {
        return translate_answer(&route, &uploaded, state);
    }
    let handle = cloud_upload_handle(&json_of(&uploaded.body)?).map_err(unreadable)?;

    let set = json!({"messaging_product": "whatsapp", "profile_picture_handle": handle});
    let answer = state
        .upstream
        .exchange(
            &context.upstream,
            Method::POST,
            "/whatsapp_business_profile",
            &headers,
            Some(Bytes::from(set.to_string())),
        )
        .await?;
    translate_answer(&route, &answer, state)
}
