//! Media providers: stored per API key (`/v1/settings/application/media/providers`), and used
//! when a send names one: the proxy fetches the link with the provider's credentials, uploads
//! the bytes to Cloud and sends the message by id.

use http::header::{self, HeaderMap, HeaderValue};
use http::Uri;
use serde_json::Value;

use super::api_key;
use super::media::{fetch_and_upload, Uploaded};
use super::{Reply, RequestContext};
use crate::error::ProxyError;
use crate::handlers::AppState;
use crate::translate::errors::{onprem_error_for, OnPremError};
use crate::translate::media::{
    merge_media_providers, onprem_media_providers, onprem_media_providers_answer,
    provider_authorization, provider_links, send_by_uploaded_id,
};
use crate::translate::{parse_body, TranslateError};

const DOCUMENT: &str = "media_providers";

/// Media objects of one send that may name a provider: a header and ten carousel cards.
const MAX_PROVIDER_LINKS: usize = 11;

fn stored(document: Option<Value>) -> Vec<Value> {
    match document {
        Some(Value::Array(providers)) => providers,
        _ => Vec::new(),
    }
}

/// GET lists, POST adds or replaces by name, DELETE `/{name}` removes one.
pub(super) async fn manage(
    state: &AppState,
    context: &RequestContext,
    method: &str,
    name: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Reply, ProxyError> {
    let key = api_key(context, headers)?;
    let meta = &state.config.meta;
    let rejected = |e: TranslateError| ProxyError::Rejected(onprem_error_for(&e));
    match (method, name) {
        ("GET", None) => {
            let providers = stored(
                state
                    .store
                    .load(DOCUMENT, key)
                    .await
                    .map_err(ProxyError::Storage)?,
            );
            Ok(Reply::Json(
                200,
                onprem_media_providers_answer(&providers, meta),
            ))
        }
        ("POST", None) => {
            let incoming =
                onprem_media_providers(&parse_body(body).map_err(rejected)?).map_err(rejected)?;
            state
                .store
                .update(DOCUMENT, key, move |current| {
                    Value::Array(merge_media_providers(&stored(current), incoming))
                })
                .await
                .map_err(ProxyError::Storage)?;
            Ok(Reply::Json(
                200,
                serde_json::json!({"meta": meta.to_value()}),
            ))
        }
        ("DELETE", Some(name)) => {
            let current = stored(
                state
                    .store
                    .load(DOCUMENT, key)
                    .await
                    .map_err(ProxyError::Storage)?,
            );
            if !current.iter().any(|p| p["name"] == name) {
                return Err(ProxyError::Rejected(OnPremError::new(
                    404,
                    1006,
                    format!("no media provider named {name}"),
                )));
            }
            let name = name.to_owned();
            state
                .store
                .update(DOCUMENT, key, move |current| {
                    Value::Array(
                        stored(current)
                            .into_iter()
                            .filter(|p| p["name"] != name.as_str())
                            .collect(),
                    )
                })
                .await
                .map_err(ProxyError::Storage)?;
            Ok(Reply::Json(
                200,
                serde_json::json!({"meta": meta.to_value()}),
            ))
        }
        _ => Err(ProxyError::Rejected(OnPremError::new(
            404,
            1006,
            format!("no such endpoint: {method} /v1/settings/application/media/providers"),
        ))),
    }
}

/// For a send with media links that name a provider (the message's own media, template header
/// parameters, an interactive header): fetch each, upload it, and return the send rewritten to
/// use the uploaded ids. Sends without any come back as `None` (nothing to do).
pub(super) async fn resolve_provider_links(
    state: &AppState,
    context: &RequestContext,
    upstream_headers: &HeaderMap,
    mut message: Value,
) -> Result<Option<Result<Value, Reply>>, ProxyError> {
    let links = provider_links(&message);
    if links.is_empty() {
        return Ok(None);
    }
    // One header plus a carousel's ten cards is the most a real send carries; more would let
    // one send make the proxy fetch without bound.
    if links.len() > MAX_PROVIDER_LINKS {
        return Err(ProxyError::Rejected(OnPremError::new(
            400,
            1009,
            format!(
                "a send may name a media provider on at most {MAX_PROVIDER_LINKS} media objects"
            ),
        )));
    }
    let key = api_key(context, upstream_headers)?;
    let providers = stored(
        state
            .store
            .load(DOCUMENT, key)
            .await
            .map_err(ProxyError::Storage)?,
    );
    // Every link is checked before the first fetch, so a bad second link does not leave an
    // orphan upload behind the first.
    let mut fetches = Vec::with_capacity(links.len());
    for link in &links {
        let Some(provider) = providers.iter().find(|p| p["name"] == link.provider_name) else {
            return Err(ProxyError::Rejected(OnPremError::new(
                400,
                1009,
                format!(
                    "{}.provider.name: no media provider named {} is configured",
                    link.path, link.provider_name
                ),
            )));
        };
        let uri: Uri = link
            .link
            .parse()
            .ok()
            .filter(|u: &Uri| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            })
            .ok_or_else(|| {
                ProxyError::Rejected(OnPremError::new(
                    400,
                    1009,
                    format!("{}.link is not an http(s) URL", link.path),
                ))
            })?;
        let mut fetch_headers = HeaderMap::new();
        if let Some(value) =
            provider_authorization(provider).and_then(|a| HeaderValue::from_str(&a).ok())
        {
            fetch_headers.insert(header::AUTHORIZATION, value);
        }
        fetches.push((link, uri, fetch_headers));
    }
    // One after another, all under one media deadline: a send is one transfer to its client.
    // An upload that succeeded before a later link failed stays in Cloud (unused; Cloud
    // deletes media after 30 days).
    let deadline = tokio::time::Instant::now() + state.config.media_timeout;
    for (link, uri, fetch_headers) in fetches {
        match fetch_and_upload(
            state,
            context,
            uri,
            fetch_headers,
            upstream_headers.clone(),
            deadline,
        )
        .await?
        {
            Uploaded::Id(id) => send_by_uploaded_id(&mut message, &link.pointer, &id),
            Uploaded::Refused(reply) => return Ok(Some(Err(reply))),
        }
    }
    Ok(Some(Ok(message)))
}
