//! The webhook side of the shell: Cloud's inbound posts, the client's webhook configuration
//! (360dialog's `/v1/configs/webhook`, or `webhooks.url` in application settings), and the
//! operator's admin routes.

use bytes::Bytes;
use http::header::HeaderMap;
use http::Method;
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::{api_key, APPLICATION_SETTINGS};
use super::{Reply, RequestContext};
use crate::clock::now_ms;
use crate::config::Dialect;
use crate::error::ProxyError;
use crate::handlers::AppState;
use crate::relay::{
    channel_for_key, configure_channel, webhook_config_answer, Refused, SECRET_HEADER,
};
use crate::routes::Route;
use crate::secret::{same_secret, signed_with};
use crate::translate::errors::{cloud_to_onprem_error, onprem_error_for, OnPremError};
use crate::translate::webhooks::WebhookOptions;
use crate::translate::webhooks::{split_by_recipient, Recipient};
use crate::translate::{as_object, parse_body, TranslateError};

/// `POST /cloud-webhooks/{channel}`: 200 only once the event is committed to disk.
pub(super) async fn inbound(
    state: &AppState,
    channel: &str,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Reply, ProxyError> {
    let limit = state.config.max_webhook_bytes;
    let within = state.config.body_read_timeout;
    let raw = super::intake::read_limited(headers, body, limit, within, || {
        ProxyError::BodyTooLarge { limit }
    })
    .await?;
    if state.upstream.dialect() == Dialect::Graph {
        return inbound_from_app(state, channel, headers, raw).await;
    }
    // A channel is always named here (only a Meta app's callback may end at /cloud-webhooks).
    if channel.is_empty() {
        return Err(rejected(
            404,
            1006,
            "no such endpoint: POST /cloud-webhooks (a channel name follows it)".to_owned(),
        ));
    }
    let secret = headers.get(SECRET_HEADER).map(|v| v.as_bytes());
    match state.relay.ingest(channel, secret, raw).await {
        Ok(()) => Ok(Reply::Json(200, json!({}))),
        Err(Refused::UnknownChannel) => Err(rejected(
            404,
            1006,
            format!("no webhook channel named {channel}"),
        )),
        Err(Refused::BadSecret) => Err(rejected(
            401,
            1005,
            "missing or wrong X-Webhook-Secret".to_owned(),
        )),
        // Not stored: a 5xx makes Cloud send it again; the cause is for the operator.
        Err(Refused::Storage(cause)) => Err(storage_refused(cause)),
    }
}

/// The header a Meta app signs its webhooks with.
const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// Graph dialect: a Meta app's post, for any of its numbers. Nothing is stored before the
/// signature is proven; then each number's changes go to that number's channel, and changes
/// no channel can take are kept as dead letters (acknowledged: Meta re-sending them would not
/// help).
async fn inbound_from_app(
    state: &AppState,
    channel: &str,
    headers: &HeaderMap,
    raw: Bytes,
) -> Result<Reply, ProxyError> {
    let accounts = state.auth.accounts().unwrap_or_default();
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(app_secret) = accounts
        .iter()
        .filter_map(|a| a.app_secret())
        .filter(|secret| !secret.is_empty())
        .find(|secret| signed_with(secret.as_bytes(), &raw, signature))
    else {
        return Err(rejected(
            401,
            1005,
            "missing or wrong X-Hub-Signature-256 (no app_secret in --accounts signs this body)"
                .to_owned(),
        ));
    };
    let keep = |reason: String, raw: String| async move {
        state
            .relay
            .keep_undeliverable(channel, raw, reason)
            .await
            .map_err(storage_refused)
    };
    let Ok(body) = serde_json::from_slice::<Value>(&raw) else {
        keep(
            "not JSON".to_owned(),
            String::from_utf8_lossy(&raw).into_owned(),
        )
        .await?;
        return Ok(Reply::Json(200, json!({})));
    };
    for (recipient, envelope) in split_by_recipient(&body) {
        let account = match &recipient {
            Recipient::PhoneNumber(number) => accounts.by_phone_number_id(number),
            Recipient::Business(waba_id) => accounts
                .iter()
                .find(|a| a.waba_id.as_deref() == Some(waba_id.as_str()))
                .cloned(),
            Recipient::Unknown => None,
        };
        let text = envelope.to_string();
        let Some(account) = account else {
            keep(format!("no account in --accounts for {recipient:?}"), text).await?;
            continue;
        };
        // One app's secret must not vouch for another app's numbers.
        if !account
            .app_secret()
            .is_some_and(|own| same_secret(own.as_bytes(), app_secret.as_bytes()))
        {
            keep(format!("not signed by the app of {}", account.name), text).await?;
            continue;
        }
        let (own, _) = channel_for_key(account.owner());
        let target = if state
            .relay
            .channel(&own)
            .await
            .map_err(storage_refused)?
            .is_some()
        {
            own
        } else if state.config.legacy_webhook_url.is_some() {
            crate::relay::DEFAULT_CHANNEL.to_owned()
        } else {
            keep(
                format!(
                    "{} has no webhook URL yet (POST /v1/configs/webhook sets it)",
                    account.name
                ),
                text,
            )
            .await?;
            continue;
        };
        match state.relay.ingest_signed(&target, Bytes::from(text)).await {
            Ok(()) => {}
            Err(Refused::Storage(cause)) => return Err(storage_refused(cause)),
            // The channel went away since it was looked up: not stored, so Meta sends it again.
            Err(_) => {
                return Err(rejected(
                    503,
                    1011,
                    "the event could not be stored; send it again".to_owned(),
                ))
            }
        }
    }
    Ok(Reply::Json(200, json!({})))
}

/// Not stored: a 5xx makes the sender post again; the cause is for the operator.
fn storage_refused(cause: crate::db::DbError) -> ProxyError {
    let cause = cause.to_string().escape_debug().to_string();
    tracing::warn!(error = %cause, "inbound webhook not stored");
    rejected(
        503,
        1011,
        "the event could not be stored; send it again".to_owned(),
    )
}

/// `GET /cloud-webhooks/{channel}?hub.mode=subscribe&hub.verify_token=..&hub.challenge=..`:
/// Meta checks a callback URL by asking it to echo the challenge, which it does only for the
/// verify token of an account in `--accounts`.
pub(super) fn verification(state: &AppState, query: Option<&str>) -> Result<Reply, ProxyError> {
    if state.upstream.dialect() != Dialect::Graph {
        return Err(rejected(
            404,
            1006,
            "no such endpoint (webhook verification is Meta's, for --upstream-dialect graph)"
                .to_owned(),
        ));
    }
    let (mut mode, mut token, mut challenge) = (None, None, None);
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match name.as_ref() {
            "hub.mode" => mode = Some(value.into_owned()),
            "hub.verify_token" => token = Some(value.into_owned()),
            "hub.challenge" => challenge = Some(value.into_owned()),
            _ => {}
        }
    }
    let accounts = state.auth.accounts().unwrap_or_default();
    let matches = token.as_deref().is_some_and(|given| {
        accounts
            .iter()
            .filter_map(|a| a.verify_token())
            .fold(false, |found, expected| {
                found | same_secret(given.as_bytes(), expected.as_bytes())
            })
    });
    // The challenge is echoed as plain text: only what Meta sends (a short token) is.
    let challenge = challenge.filter(|c| {
        !c.is_empty()
            && c.len() <= 256
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    });
    match (mode.as_deref(), matches, challenge) {
        (Some("subscribe"), true, Some(challenge)) => {
            let mut response = http::Response::new(crate::body::full(challenge));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain"),
            );
            Ok(Reply::Stream(response))
        }
        _ => Err(rejected(
            403,
            1005,
            "webhook verification needs hub.mode=subscribe, a hub.challenge and the verify_token of an account".to_owned(),
        )),
    }
}

fn rejected(status: u16, code: i64, details: String) -> ProxyError {
    ProxyError::Rejected(OnPremError::new(status, code, details))
}

/// `GET/POST /v1/configs/webhook`.
pub(super) async fn config(
    state: &AppState,
    context: &RequestContext,
    method: &str,
    upstream_headers: &HeaderMap,
    body: &[u8],
) -> Result<Reply, ProxyError> {
    let key = api_key(context, upstream_headers)?;
    let meta = state.config.meta.to_value();
    if method == "GET" {
        let (name, _) = channel_for_key(key);
        let channel = state
            .relay
            .db
            .channel(&name)
            .await
            .map_err(ProxyError::Storage)?;
        let mut answer = webhook_config_answer(channel.as_ref());
        answer["meta"] = meta;
        return Ok(Reply::Json(200, answer));
    }
    let bad = |e: TranslateError| ProxyError::Rejected(onprem_error_for(&e));
    let body = parse_body(body).map_err(bad)?;
    let request = as_object(&body, "request body").map_err(bad)?;
    let url = match request.get("url") {
        Some(Value::String(url)) => url.clone(),
        None | Some(Value::Null) => return Err(bad(TranslateError::missing("url"))),
        Some(_) => return Err(bad(TranslateError::wrong_type("url", "a string"))),
    };
    let headers = match request.get("headers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(headers)) => headers
            .iter()
            .map(|(k, v)| match v {
                Value::String(v) => Ok((k.clone(), v.clone())),
                _ => Err(bad(TranslateError::wrong_type(
                    format!("headers.{k}"),
                    "a string",
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(bad(TranslateError::wrong_type("headers", "an object"))),
    };
    register(state, context, upstream_headers, &url, headers).await?;
    Ok(Reply::Json(200, json!({"url": url, "meta": meta})))
}

/// Keeps the client's legacy URL for its key and registers the proxy's own inbound URL (with
/// the channel's secret) upstream, so Cloud's events come to the proxy first.
pub(super) async fn register(
    state: &AppState,
    context: &RequestContext,
    upstream_headers: &HeaderMap,
    legacy_url: &str,
    headers: Vec<(String, String)>,
) -> Result<(), ProxyError> {
    let lower = legacy_url.to_ascii_lowercase();
    if !lower.starts_with("http://") && !lower.starts_with("https://") {
        return Err(ProxyError::Rejected(onprem_error_for(
            &TranslateError::invalid("url", "must start with http:// or https://"),
        )));
    }
    // Graph: a Meta app has one callback URL, set once in Meta's dashboard (README); the
    // client's URL is only kept here, and each number's events find it by phone-number id.
    let graph = state.upstream.dialect() == Dialect::Graph;
    let public_url = state.config.public_url.clone();
    if public_url.is_none() && !graph {
        return Err(rejected(
            501,
            1000,
            "this proxy has no --public-url, so it cannot register its inbound webhook URL upstream; \
             for a single channel configure --legacy-webhook-url and --webhook-secret instead"
                .to_owned(),
        ));
    }
    let key = api_key(context, upstream_headers)?.to_owned();
    let stored = state
        .store
        .load(APPLICATION_SETTINGS, &key)
        .await
        .map_err(ProxyError::Storage)?;
    let relayed = stored
        .as_ref()
        .map(WebhookOptions::from_application_settings);
    let channel = configure_channel(&state.relay, &key, legacy_url, headers, relayed)
        .await
        .map_err(ProxyError::Storage)?;
    let Some(public_url) = public_url.filter(|_| !graph) else {
        return Ok(());
    };

    let registration = json!({
        "url": format!("{public_url}/cloud-webhooks/{}", channel.name),
        "headers": {"X-Webhook-Secret": channel.secret},
    });
    let answer = state
        .upstream
        .exchange(
            &context.upstream,
            Method::POST,
            "/v1/configs/webhook",
            upstream_headers,
            Some(Bytes::from(registration.to_string())),
        )
        .await?;
    if !answer.status.is_success() {
        // Cloud's refusal, translated like any other answer, is the client's answer.
        return Err(ProxyError::Rejected(cloud_to_onprem_error(
            answer.status.as_u16(),
            &answer.body,
        )));
    }
    Ok(())
}

/// `sent_status` or `webhooks.message.*` changed in application settings: the channel's
/// deliveries follow.
pub(super) async fn follow_relayed_statuses(
    state: &AppState,
    api_key: &str,
    relayed: WebhookOptions,
) {
    let (name, _) = channel_for_key(api_key);
    let statuses = [relayed.sent, relayed.delivered, relayed.read];
    // As a single-channel sidecar (`--legacy-webhook-url`), the client's settings are the
    // `default` channel's: it is the one that delivers to that client.
    let sidecar = state
        .config
        .legacy_webhook_url
        .is_some()
        .then_some(crate::relay::DEFAULT_CHANNEL);
    for channel in std::iter::once(name.as_str()).chain(sidecar) {
        if let Err(error) = state.relay.set_relayed_statuses(channel, statuses).await {
            tracing::warn!(%error, "the status filter was not applied to the webhook channel");
        }
    }
}

/// The admin routes exist only with `--admin-token`, and need it as a bearer token.
pub(super) fn admin_allowed(state: &AppState, headers: &HeaderMap) -> Result<(), ProxyError> {
    let Some(token) = &state.config.admin_token else {
        return Err(rejected(
            404,
            1006,
            "no such endpoint (admin routes need --admin-token)".to_owned(),
        ));
    };
    let given = crate::auth::bearer(headers).unwrap_or("");
    if same_secret(given.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(rejected(
            401,
            1005,
            "admin routes need Authorization: Bearer <admin token>".to_owned(),
        ))
    }
}

/// Dead letters per page unless `limit` says otherwise, and the most it may say.
const DEAD_PAGE: usize = 100;
const DEAD_PAGE_MAX: usize = 1_000;

/// `?after=<id>&limit=<n>` of the dead-letter listing: the page after the one that ended at
/// `after` (its `next`).
fn dead_page(query: Option<&str>) -> Result<(i64, usize), ProxyError> {
    let mut page = (0, DEAD_PAGE);
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match name.as_ref() {
            "after" => {
                page.0 = value.parse::<i64>().map_err(|_| {
                    rejected(
                        400,
                        1009,
                        "after must be a dead-letter id (a number)".to_owned(),
                    )
                })?;
            }
            "limit" => {
                page.1 = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=DEAD_PAGE_MAX).contains(n))
                    .ok_or_else(|| {
                        rejected(
                            400,
                            1009,
                            format!("limit must be a number from 1 to {DEAD_PAGE_MAX}"),
                        )
                    })?;
            }
            _ => {}
        }
    }
    Ok(page)
}

/// The admin routes; the caller was checked by the route's policy (`Caller::Admin`).
pub(super) async fn admin(
    state: &AppState,
    route: &Route,
    query: Option<&str>,
) -> Result<Reply, ProxyError> {
    let db = &state.relay.db;
    let page = match route {
        Route::AdminDead => Some(dead_page(query)?),
        _ => None,
    };
    let answer = async {
        match route {
            Route::AdminStats => {
                let mut stats = serde_json::to_value(db.stats(now_ms()).await?).unwrap_or_default();
                stats["channels"] =
                    serde_json::to_value(state.relay.channel_views()).unwrap_or_default();
                Ok((200, stats))
            }
            Route::AdminDead => {
                let (after, limit) = page.unwrap_or((0, DEAD_PAGE));
                let dead = db.dead_page(after, limit).await?;
                // A full page may have a next one; its cursor is the last id shown.
                let next = (dead.len() == limit)
                    .then(|| dead.last().map(|d| d.id))
                    .flatten();
                Ok((200, json!({"dead": dead, "next": next})))
            }
            Route::AdminReplay { dead_id } => match dead_id.parse::<i64>() {
                Ok(id) if db.replay(id, now_ms()).await? => Ok((200, json!({"replayed": id}))),
                _ => Ok((
                    404,
                    OnPremError::new(
                        404,
                        1006,
                        format!("no replayable dead-letter entry {dead_id}"),
                    )
                    .to_body(&state.config.meta),
                )),
            },
            _ => Ok((404, json!({}))),
        }
    }
    .await
    .map_err(ProxyError::Storage)?;
    if answer.0 == 200 {
        state.relay.wake();
    }
    Ok(Reply::Json(answer.0, answer.1))
}
