//! Whole requests: a routed On-Premise request -> what goes upstream (or the local answer),
//! and the upstream answer -> what the client gets. Shared by the server and the `translate`
//! command so both always agree.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use super::errors::{cloud_to_onprem_error, onprem_error_for, OnPremError};
use super::{contacts, media, messages, parse_body, profile, Meta, TranslateError};
use crate::routes::Route;

/// What one On-Premise request becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Translated {
    /// A call to the Cloud API.
    Upstream(CloudRequest),
    /// Answered by the proxy itself, no upstream call.
    Local { status: u16, body: Value },
}

#[derive(Debug, Clone, PartialEq)]
pub struct CloudRequest {
    pub method: &'static str,
    /// Path and query relative to the upstream root.
    pub path: String,
    pub body: Option<Value>,
}

impl Translated {
    /// The shape the `translate` command prints and the `requests` fixtures hold:
    /// `{"method","path","body"}`; a local answer has those null plus `answered_locally`.
    pub fn to_value(&self) -> Value {
        match self {
            Translated::Upstream(req) => json!({
                "method": req.method, "path": req.path, "body": req.body
            }),
            Translated::Local { status, body } => json!({
                "method": null, "path": null, "body": null,
                "answered_locally": {"status": status, "body": body}
            }),
        }
    }
}

/// On-Premise request -> Cloud request or local answer. `body` is the raw client body.
pub fn onprem_to_cloud_request(
    route: &Route,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    meta: &Meta,
) -> Result<Translated, OnPremError> {
    let client_error = |e: TranslateError| onprem_error_for(&e);
    match route {
        Route::SendMessage => {
            let body = parse_body(body).map_err(client_error)?;
            let cloud = messages::onprem_to_cloud_send(body).map_err(client_error)?;
            Ok(upstream("POST", "/messages".into(), Some(cloud)))
        }
        Route::MarkRead { message_id } => {
            let body = parse_body(body).map_err(client_error)?;
            let cloud =
                messages::onprem_to_cloud_mark_read(message_id, &body).map_err(client_error)?;
            Ok(upstream("POST", "/messages".into(), Some(cloud)))
        }
        Route::Contacts => {
            let body = parse_body(body).map_err(client_error)?;
            let answer = contacts::onprem_contacts_answer(&body, meta).map_err(client_error)?;
            Ok(Translated::Local {
                status: 200,
                body: answer,
            })
        }
        Route::DeleteMedia { media_id } => Ok(upstream("DELETE", media_path(media_id), None)),
        Route::UploadMedia | Route::DownloadMedia { .. } | Route::MediaProviders { .. } => {
            // Streamed or stateful: the shell handles these itself; `translate` can only say
            // where the first call goes.
            match route {
                Route::UploadMedia => Ok(upstream("POST", "/media".into(), None)),
                Route::DownloadMedia { media_id } => {
                    Ok(upstream("GET", media_path(media_id), None))
                }
                _ => Err(OnPremError::new(
                    501,
                    1000,
                    "media providers are stored by the running proxy; nothing is sent upstream",
                )),
            }
        }
        Route::BusinessProfileGet => Ok(upstream("GET", profile::PROFILE_QUERY.into(), None)),
        Route::BusinessProfilePost => {
            let body = parse_body(body).map_err(client_error)?;
            let cloud = profile::onprem_to_cloud_business_profile(&body).map_err(client_error)?;
            Ok(upstream("POST", PROFILE_PATH.into(), Some(cloud)))
        }
        Route::AboutGet => Ok(upstream(
            "GET",
            format!("{PROFILE_PATH}?fields=about"),
            None,
        )),
        Route::AboutPatch => {
            let body = parse_body(body).map_err(client_error)?;
            let cloud = profile::onprem_to_cloud_about(&body).map_err(client_error)?;
            Ok(upstream("POST", PROFILE_PATH.into(), Some(cloud)))
        }
        // Both forms start by asking for the url; without `format=link` the shell then
        // streams the image from it.
        Route::PhotoGet { .. } => Ok(upstream(
            "GET",
            format!("{PROFILE_PATH}?fields=profile_picture_url"),
            None,
        )),
        Route::PhotoPost => Ok(upstream("POST", "/uploads".into(), None)),
        Route::PhotoDelete => Err(OnPremError::new(
            501,
            1000,
            "removing the profile photo is not possible on the Cloud API",
        )),
        Route::ApplicationSettings
        | Route::Login
        | Route::Logout
        | Route::InboundWebhook { .. }
        | Route::WebhookVerification
        | Route::WebhookConfig
        | Route::AdminStats
        | Route::AdminDead
        | Route::AdminReplay { .. }
        | Route::Healthz
        | Route::Readyz
        | Route::Metrics
        | Route::AdminDryRunReport
        | Route::Console
        | Route::ConsoleCss
        | Route::ConsoleLogin
        | Route::ConsoleReplay => Err(OnPremError::new(
            501,
            1000,
            "answered by the running proxy from its own state; nothing is sent upstream",
        )),
        Route::Health => Ok(Translated::Local {
            status: 200,
            body: json!({"health": {"gateway_status": "connected"}, "meta": meta.to_value()}),
        }),
        Route::PassThrough => {
            let body = parse_body(body).map_err(client_error)?;
            let method = match method {
                "GET" => "GET",
                "POST" => "POST",
                "DELETE" => "DELETE",
                _ => return Err(not_found(method, path_and_query)),
            };
            Ok(upstream(
                method,
                path_and_query.to_owned(),
                Some(body).filter(|b| !b.is_null()),
            ))
        }
        Route::NotOnCloud => Err(OnPremError::new(
            501,
            1000,
            format!(
                "{} is not available after migration to Cloud API",
                path_only(path_and_query)
            ),
        )),
        Route::NotYetSupported => Err(OnPremError::new(
            501,
            1000,
            format!(
                "{method} {} is not supported by this version of waba-onprem-proxy yet",
                path_only(path_and_query)
            ),
        )),
        Route::InvalidSegment => Err(OnPremError::new(
            400,
            1009,
            "a path segment is not valid UTF-8 after percent-decoding",
        )),
        Route::NotFound => Err(not_found(method, path_and_query)),
    }
}

fn upstream(method: &'static str, path: String, body: Option<Value>) -> Translated {
    Translated::Upstream(CloudRequest { method, path, body })
}

const PROFILE_PATH: &str = "/whatsapp_business_profile";

/// `/{id}` with the id percent-encoded: ids are digits from Cloud, but a client's typo must
/// not turn into another path upstream.
pub fn media_path(media_id: &str) -> String {
    format!("/{}", utf8_percent_encode(media_id, PATH_SEGMENT))
}

/// Everything but RFC 3986 unreserved characters is encoded inside a path segment.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn path_only(path_and_query: &str) -> &str {
    path_and_query.split('?').next().unwrap_or("")
}

fn not_found(method: &str, path_and_query: &str) -> OnPremError {
    OnPremError::new(
        404,
        1006,
        format!("no such endpoint: {method} {}", path_only(path_and_query)),
    )
}

/// Cloud answer -> (status, On-Premise body). Cloud errors are translated, never failed on;
/// `Err` means a success answer that could not be read (the caller answers 502).
pub fn cloud_to_onprem_response(
    route: &Route,
    status: u16,
    body: &[u8],
    meta: &Meta,
) -> Result<(u16, Value), TranslateError> {
    if (300..400).contains(&status) {
        return Err(TranslateError::invalid(
            "response",
            format!("is a redirect (HTTP {status}) the proxy does not follow"),
        ));
    }
    if matches!(route, Route::PassThrough)
        && (200..300).contains(&status)
        && body.iter().all(u8::is_ascii_whitespace)
    {
        return Ok((200, json!({ "meta": meta.to_value() })));
    }
    if !(200..300).contains(&status) {
        let mut error = cloud_to_onprem_error(status, body);
        if matches!(
            route,
            Route::DownloadMedia { .. } | Route::DeleteMedia { .. }
        ) && is_unknown_object(status, &error)
        {
            // On-Premise answered 404 for an unknown media id.
            error.status = 404;
            error.code = 1006;
            error.title = "Resource not found".into();
        }
        return Ok((error.status, error.to_body(meta)));
    }
    let parsed: Value = serde_json::from_slice(body)
        .map_err(|e| TranslateError::invalid("response", format!("is not JSON ({e})")))?;
    // Some gateways answer 200 with an error body: it is an error all the same (status from the
    // code table, else 502).
    if parsed
        .get("error")
        .is_some_and(|e| e.is_object() || e.is_string())
    {
        let error = cloud_to_onprem_error(502, body);
        return Ok((error.status, error.to_body(meta)));
    }
    match route {
        // On-Premise answered 201 for a created message.
        Route::SendMessage => Ok((201, messages::cloud_to_onprem_send_response(parsed, meta)?)),
        Route::BusinessProfileGet => Ok((
            200,
            profile::cloud_to_onprem_business_profile(&parsed, meta)?,
        )),
        Route::AboutGet => Ok((200, profile::cloud_to_onprem_about(&parsed, meta)?)),
        Route::PhotoGet { .. } => Ok((200, profile::cloud_to_onprem_photo_link(&parsed, meta)?)),
        Route::MarkRead { .. }
        | Route::DeleteMedia { .. }
        | Route::BusinessProfilePost
        | Route::AboutPatch
        | Route::PhotoPost => Ok((200, messages::cloud_to_onprem_success(&parsed, meta)?)),
        // A created media object, like a created message, was 201 on On-Premise.
        Route::UploadMedia => Ok((201, media::cloud_to_onprem_upload_response(&parsed, meta)?)),
        _ => Ok((status, add_meta(parsed, meta))),
    }
}

/// Cloud says "no such object" as HTTP 404, or as Graph code 100 with subcode 33
/// ("Unsupported get request. Object with ID ... does not exist").
fn is_unknown_object(status: u16, error: &OnPremError) -> bool {
    status == 404 || (error.cloud_code == Some(100) && error.cloud_subcode == Some(33))
}

/// Pass-through answers keep their shape; On-Premise clients still expect `meta` beside it.
fn add_meta(mut body: Value, meta: &Meta) -> Value {
    if let Value::Object(map) = &mut body {
        map.entry("meta").or_insert_with(|| meta.to_value());
    }
    body
}
