//! State the proxy keeps itself: application settings per API key, and login sessions.

use http::HeaderMap;
use serde_json::json;

use super::{api_key, Reply, RequestContext, APPLICATION_SETTINGS};
use crate::auth::LoginRefused;
use crate::error::ProxyError;
use crate::handlers::AppState;
use crate::translate::errors::{onprem_error_for, OnPremError};
use crate::translate::settings::{
    merge_settings, onprem_application_settings_answer, onprem_application_settings_patch,
};
use crate::translate::webhooks::WebhookOptions;
use crate::translate::{parse_body, TranslateError};

/// GET shows, PATCH merges, DELETE resets to defaults.
pub(super) async fn application(
    state: &AppState,
    context: &RequestContext,
    method: &str,
    upstream_headers: &HeaderMap,
    body: &[u8],
) -> Result<Reply, ProxyError> {
    let key = api_key(context, upstream_headers)?;
    let meta = &state.config.meta;
    let rejected = |e: TranslateError| ProxyError::Rejected(onprem_error_for(&e));
    match method {
        "GET" => {
            let stored = state
                .store
                .load(APPLICATION_SETTINGS, key)
                .await
                .map_err(ProxyError::Storage)?;
            Ok(Reply::Json(
                200,
                onprem_application_settings_answer(stored.as_ref(), meta),
            ))
        }
        "PATCH" => {
            let patch = onprem_application_settings_patch(&parse_body(body).map_err(rejected)?)
                .map_err(rejected)?;
            // Meta's own form of setting the webhook: the relay takes it like /v1/configs/webhook.
            if let Some(url) = patch.pointer("/webhooks/url").and_then(|u| u.as_str()) {
                if !url.is_empty() {
                    super::webhooks::register(state, context, upstream_headers, url, Vec::new())
                        .await?;
                }
            }
            let settings = state
                .store
                .update(APPLICATION_SETTINGS, key, move |stored| {
                    merge_settings(&stored.unwrap_or_else(|| json!({})), &patch)
                })
                .await
                .map_err(ProxyError::Storage)?;
            // `sent_status` and `webhooks.message.*` decide which statuses the relay delivers.
            super::webhooks::follow_relayed_statuses(
                state,
                key,
                WebhookOptions::from_application_settings(&settings),
            )
            .await;
            Ok(Reply::Json(200, json!({"meta": meta.to_value()})))
        }
        _ => {
            state
                .store
                .update(APPLICATION_SETTINGS, key, |_| json!({}))
                .await
                .map_err(ProxyError::Storage)?;
            // Reset: every status is relayed again.
            super::webhooks::follow_relayed_statuses(state, key, WebhookOptions::default()).await;
            Ok(Reply::Json(200, json!({"meta": meta.to_value()})))
        }
    }
}

/// `POST /v1/users/login`: Basic credentials -> a token, as On-Premise answered it.
pub(super) async fn login(
    state: &AppState,
    client_headers: &HeaderMap,
) -> Result<Reply, ProxyError> {
    match state.auth.login(client_headers).await {
        Ok((token, expires)) => {
            let expires = time::OffsetDateTime::from(expires);
            let expires_after = format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}+00:00",
                expires.year(),
                u8::from(expires.month()),
                expires.day(),
                expires.hour(),
                expires.minute(),
                expires.second()
            );
            Ok(Reply::Json(
                200,
                json!({"users": [{"token": token, "expires_after": expires_after}],
                       "meta": state.config.meta.to_value()}),
            ))
        }
        Err(LoginRefused::NoUsers) => Err(ProxyError::Rejected(OnPremError::new(
            501,
            1000,
            "login needs \"user:<name>\" entries in the proxy's --key-map; 360dialog clients authenticate with D360-API-KEY",
        ))),
        Err(LoginRefused::BadCredentials) => Err(ProxyError::Rejected(OnPremError::new(
            401,
            1005,
            "unknown user or wrong password",
        ))),
        Err(LoginRefused::Storage(cause)) => Err(ProxyError::Storage(cause)),
    }
}

/// `POST /v1/users/logout`: the token stops working.
pub(super) async fn logout(
    state: &AppState,
    client_headers: &HeaderMap,
) -> Result<Reply, ProxyError> {
    match state.auth.logout(client_headers).await {
        Ok(true) => Ok(Reply::Json(
            200,
            json!({"meta": state.config.meta.to_value()}),
        )),
        Ok(false) => Err(ProxyError::Rejected(OnPremError::new(
            401,
            1005,
            "no valid login token in the Authorization header",
        ))),
        Err(cause) => Err(ProxyError::Storage(cause)),
    }
}
