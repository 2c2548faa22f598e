//! `/v1/settings/application`: On-Premise's application settings, kept by the proxy (Cloud has
//! no such object). The webhook relay reads `webhooks.url`, `sent_status` and
//! `webhooks.message.*` from here.

use serde_json::{json, Map, Value};

use super::{as_object, Meta, TranslateError};

/// What GET shows before anything was set. `sent_status` starts on: Cloud always reports
/// `sent`, and a client that never asked to turn it off should lose nothing.
pub fn default_application_settings() -> Value {
    json!({"sent_status": true, "webhooks": {"url": ""}})
}

/// Validates a PATCH body (flat, or nested as GET answers it) and returns the patch.
pub fn onprem_application_settings_patch(body: &Value) -> Result<Value, TranslateError> {
    let body = match body {
        Value::Null => return Err(TranslateError::missing("settings")),
        other => as_object(other, "request body")?,
    };
    let patch = match body.get("settings").and_then(|s| s.get("application")) {
        Some(nested) => as_object(nested, "settings.application")?,
        None => body,
    };
    if patch.is_empty() {
        return Err(TranslateError::missing("settings"));
    }
    if let Some(sent_status) = patch.get("sent_status") {
        if !sent_status.is_boolean() {
            return Err(TranslateError::wrong_type("sent_status", "a boolean"));
        }
    }
    if let Some(webhooks) = patch.get("webhooks") {
        let webhooks = as_object(webhooks, "webhooks")?;
        if let Some(message) = webhooks.get("message") {
            let message = as_object(message, "webhooks.message")?;
            for status in ["sent", "delivered", "read"] {
                if message.get(status).is_some_and(|v| !v.is_boolean()) {
                    return Err(TranslateError::wrong_type(
                        format!("webhooks.message.{status}"),
                        "a boolean",
                    ));
                }
            }
        }
        if let Some(url) = webhooks.get("url") {
            let url = url
                .as_str()
                .ok_or_else(|| TranslateError::wrong_type("webhooks.url", "a string"))?;
            let lower = url.to_ascii_lowercase();
            if !url.is_empty() && !lower.starts_with("http://") && !lower.starts_with("https://") {
                return Err(TranslateError::invalid(
                    "webhooks.url",
                    "must start with http:// or https://",
                ));
            }
        }
    }
    Ok(Value::Object(patch.clone()))
}

/// `patch` laid over `stored`: objects merge key by key, anything else is replaced.
pub fn merge_settings(stored: &Value, patch: &Value) -> Value {
    match (stored, patch) {
        (Value::Object(stored), Value::Object(patch)) => {
            let mut merged: Map<String, Value> = stored.clone();
            for (key, value) in patch {
                let next = match merged.get(key) {
                    Some(existing) => merge_settings(existing, value),
                    None => value.clone(),
                };
                merged.insert(key.clone(), next);
            }
            Value::Object(merged)
        }
        (_, patch) => patch.clone(),
    }
}

pub fn onprem_application_settings_answer(stored: Option<&Value>, meta: &Meta) -> Value {
    let defaults = default_application_settings();
    let settings = match stored {
        Some(stored) => merge_settings(&defaults, stored),
        None => defaults,
    };
    json!({"settings": {"application": settings}, "meta": meta.to_value()})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_objects_merge_and_scalars_replace() {
        let stored = json!({"webhooks": {"url": "https://a", "max_concurrent_requests": 6}, "sent_status": false});
        let patch = json!({"webhooks": {"url": "https://b"}, "sent_status": true});
        assert_eq!(
            merge_settings(&stored, &patch),
            json!({"webhooks": {"url": "https://b", "max_concurrent_requests": 6}, "sent_status": true})
        );
    }

    #[test]
    fn webhook_url_must_be_http() {
        assert!(
            onprem_application_settings_patch(&json!({"webhooks": {"url": "ftp://x"}})).is_err()
        );
        assert!(onprem_application_settings_patch(&json!({"webhooks": {"url": ""}})).is_ok());
        assert!(onprem_application_settings_patch(&json!({"sent_status": "yes"})).is_err());
    }
}
