//! Errors in On-Premise shape: Cloud's error bodies translated (the table in `map_cloud_code`, README "Errors"), and the errors the
//! proxy makes itself, all rendered as `{"errors":[{"code","title","details"}],"meta":{...}}`.
//!
//! Errors returned by the Cloud API are data, not proxy failures: they are translated here.

use serde::Serialize;
use serde_json::{json, Value};

use super::{Meta, TranslateError};

/// One On-Premise error item plus the HTTP status On-Premise answered it with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OnPremError {
    #[serde(skip)]
    pub status: u16,
    pub code: i64,
    pub title: String,
    pub details: String,
    /// The Cloud error code this one was mapped from, kept so nothing is lost in translation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_code: Option<i64>,
    /// Cloud's `error_subcode`; read for decisions (unknown media id), not sent to clients.
    #[serde(skip)]
    pub cloud_subcode: Option<i64>,
}

impl OnPremError {
    /// An error with the On-Premise title for `code`.
    pub fn new(status: u16, code: i64, details: impl Into<String>) -> Self {
        OnPremError {
            status,
            code,
            title: onprem_title(code).unwrap_or("Generic error").to_owned(),
            details: details.into(),
            cloud_code: None,
            cloud_subcode: None,
        }
    }

    pub fn to_body(&self, meta: &Meta) -> Value {
        json!({ "errors": [self], "meta": meta.to_value() })
    }
}

/// The titles On-Premise gave its error codes.
pub fn onprem_title(code: i64) -> Option<&'static str> {
    Some(match code {
        400 => "Media download error",
        402 => "Business eligibility payment issue",
        470 => "Re-engagement message",
        471 => "Spam rate limit hit",
        472 => "User's number is part of an experiment",
        501 => "Unknown message type",
        1000 => "Generic error",
        1001 => "Message too long",
        1005 => "Access denied",
        1006 => "Resource not found",
        1008 => "Required parameter is missing",
        1009 => "Parameter value is not valid",
        1011 => "Service not ready",
        1013 => "User is not valid",
        1014 => "Internal error",
        1015 => "Too many requests",
        1016 => "System overloaded",
        1021 => "Bad user",
        1026 => "Receiver Incapable",
        1031 => "Sender account has been locked",
        2000 => "Template Param Count Mismatch",
        2001 => "Template Missing",
        2005 => "Template Hydrated Text Too Long",
        2007 => "Template Format Character Policy Violated",
        2012 => "Template Parameter Format Mismatch",
        2061 => "Template Paused",
        2062 => "Template Disabled",
        2068 => "Flow is blocked",
        2069 => "Flow is throttled",
        _ => return None,
    })
}

/// Cloud code -> (On-Premise code, HTTP status). `None` keeps the Cloud code and the upstream
/// status. Sources, each row checked against them (README "Error codes" has the table):
/// - Cloud codes, titles and HTTP statuses: Meta, "WhatsApp error codes"
///   (developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes, Dec 2025).
/// - On-Premise codes and titles: Meta, "Error and Status Messages"
///   (developers.facebook.com/docs/whatsapp/api/errors) and the titles copied from it in
///   great-detail/WhatsApp-Nodejs-SDK `src/types/Error.ts`.
fn map_cloud_code(cloud_code: i64) -> Option<(i64, u16)> {
    Some(match cloud_code {
        0 | 190 => (1005, 401),
        // Code 3 is a 500 on Cloud, but it means a missing capability: retrying cannot help.
        3 | 10 | 200..=299 | 131005 => (1005, 403),
        // Cloud answers these with 400; 429 is what makes On-Premise clients back off.
        4 | 80007 | 130429 | 131056 => (1015, 429),
        100 | 131009 => (1009, 400),
        131008 => (1008, 400),
        // "API Unknown: invalid request or possible server error", a 400 on Cloud. Not 503:
        // clients retry 503, and a malformed request would be sent again and again.
        1 => (1000, 400),
        131000 => (1000, 500),
        // Passing outages ("API Service", "Service unavailable", "Server temporarily
        // unavailable"): Service not ready, which clients retry.
        2 | 131016 | 133004 => (1011, 503),
        131021 => (1021, 400),
        // Message undeliverable (not a WhatsApp user, old app, terms not accepted): the failure
        // On-Premise called 1026 Receiver Incapable, in answers and in failed statuses alike.
        131026 => (1026, 400),
        131031 => (1031, 403),
        131047 => (470, 400),
        131048 => (471, 400),
        130472 => (472, 400),
        131042 => (402, 400),
        131051 => (501, 400),
        131052 => (400, 400),
        // Media upload error: On-Premise reported a failed media upload as 1014.
        131053 => (1014, 400),
        132000 => (2000, 400),
        132001 => (2001, 404),
        132005 => (2005, 400),
        132007 => (2007, 400),
        132012 => (2012, 400),
        // Template paused / disabled are 2061 / 2062 on On-Premise; its 2015 and 2016 are
        // list-message errors (sections, rows).
        132015 => (2061, 400),
        132016 => (2062, 400),
        132068 => (2068, 400),
        132069 => (2069, 400),
        // Everything else, 133010 (number not registered) included: a setup error with no
        // On-Premise twin keeps its Cloud code and Cloud's status (400, so it is not retried).
        _ => return None,
    })
}

/// An error object inside a Cloud webhook (`statuses[].errors[]`, `messages[].errors[]`,
/// `value.errors[]`) -> the On-Premise webhook error: code mapped, `details` from
/// `error_data`, `message` and `error_data` dropped, the Cloud code kept as `cloud_code`.
pub fn cloud_to_onprem_webhook_error(error: &Value) -> Value {
    let Value::Object(error) = error else {
        return error.clone();
    };
    let cloud_code = error.get("code").and_then(Value::as_i64);
    let code = cloud_code
        .map(|c| map_cloud_code(c).map(|(code, _)| code).unwrap_or(c))
        .unwrap_or(1000);
    let text = |k: &str| error.get(k).and_then(Value::as_str).map(str::to_owned);
    let title = onprem_title(code)
        .map(str::to_owned)
        .or_else(|| text("title"))
        .or_else(|| text("message"))
        .unwrap_or_else(|| "Generic error".to_owned());
    // On-Premise errors always explained themselves in `details`. Cloud puts the explanation in
    // `error_data.details`, but its older webhooks (and courier's recorded ones) carry `details`
    // beside the code, and some carry only a `title`.
    let details = error_data_details(error)
        .or_else(|| text("details"))
        .or_else(|| text("message"))
        .or_else(|| text("title"))
        .unwrap_or_default();
    let mut out = serde_json::Map::new();
    out.insert("code".into(), Value::from(code));
    out.insert("title".into(), Value::from(title));
    out.insert("details".into(), Value::from(details));
    if let Some(cloud_code) = cloud_code {
        out.insert("cloud_code".into(), Value::from(cloud_code));
    }
    if let Some(href) = error.get("href") {
        out.insert("href".into(), href.clone());
    }
    Value::Object(out)
}

/// The On-Premise code for an error that came without a Cloud code (360dialog's gateway,
/// non-JSON or empty bodies), judged by the HTTP status alone.
fn code_for_status(status: u16) -> i64 {
    match status {
        401 | 403 => 1005,
        404 => 1006,
        429 => 1015,
        502..=504 => 1011,
        _ => 1000,
    }
}

/// A Cloud error answer (any non-2xx) -> the On-Premise error. The HTTP status comes from the
/// answer, never from a status inside the body (360dialog's own example pairs HTTP 401 with
/// `httpCode: 404`).
pub fn cloud_to_onprem_error(status: u16, body: &[u8]) -> OnPremError {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    match parsed {
        Some(Value::Object(map)) => {
            if let Some(Value::Object(graph)) = map.get("error") {
                return graph_error(status, graph);
            }
            if let Some(Value::String(text)) = map.get("error") {
                return OnPremError::new(status, code_for_status(status), text.clone());
            }
            if let Some(Value::Object(gateway)) = map.get("meta") {
                let message = ["developerMessage", "developer_message", "message"]
                    .iter()
                    .find_map(|k| gateway.get(*k).and_then(Value::as_str));
                if let Some(message) = message {
                    return OnPremError::new(status, code_for_status(status), message);
                }
            }
            if let Some(Value::Array(errors)) = map.get("errors") {
                if let Some(first) = errors.first().and_then(Value::as_object) {
                    return already_onprem(status, first);
                }
            }
            OnPremError::new(
                status,
                code_for_status(status),
                non_json_details(status, body),
            )
        }
        _ => OnPremError::new(
            status,
            code_for_status(status),
            non_json_details(status, body),
        ),
    }
}

/// Cloud puts the human detail in `error_data.details`, or makes `error_data` a string.
fn error_data_details(error: &serde_json::Map<String, Value>) -> Option<String> {
    match error.get("error_data") {
        Some(Value::Object(data)) => data
            .get("details")
            .and_then(Value::as_str)
            .map(str::to_owned),
        Some(Value::String(data)) => Some(data.clone()),
        _ => None,
    }
}

fn graph_error(status: u16, graph: &serde_json::Map<String, Value>) -> OnPremError {
    let cloud_code = graph.get("code").and_then(Value::as_i64);
    let message = graph.get("message").and_then(Value::as_str).unwrap_or("");
    let details = error_data_details(graph).unwrap_or_else(|| message.to_owned());

    let (code, status) = match cloud_code.and_then(map_cloud_code) {
        Some(mapped) => mapped,
        None => (
            cloud_code.unwrap_or_else(|| code_for_status(status)),
            status,
        ),
    };
    let title = onprem_title(code)
        .map(str::to_owned)
        .unwrap_or_else(|| strip_code_prefix(message).to_owned());
    OnPremError {
        status,
        code,
        title,
        details,
        cloud_code,
        cloud_subcode: graph.get("error_subcode").and_then(Value::as_i64),
    }
}

/// Some paths (e.g. `/v1/configs/templates`) answer in On-Premise shape already: keep it.
fn already_onprem(status: u16, error: &serde_json::Map<String, Value>) -> OnPremError {
    let code = error
        .get("code")
        .and_then(Value::as_i64)
        .unwrap_or_else(|| code_for_status(status));
    let text = |k: &str| error.get(k).and_then(Value::as_str).map(str::to_owned);
    OnPremError {
        status,
        code,
        title: text("title")
            .or_else(|| onprem_title(code).map(str::to_owned))
            .unwrap_or_else(|| "Generic error".into()),
        details: text("details").unwrap_or_default(),
        cloud_code: None,
        cloud_subcode: None,
    }
}

/// Graph messages start with "(#131047) "; On-Premise titles never did.
fn strip_code_prefix(message: &str) -> &str {
    if let Some(rest) = message.strip_prefix("(#") {
        if let Some((code, tail)) = rest.split_once(')') {
            if code.chars().all(|c| c.is_ascii_digit()) {
                return tail.trim_start();
            }
        }
    }
    message
}

fn non_json_details(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.is_empty() {
        return format!("upstream answered HTTP {status} with an empty body");
    }
    let snippet: String = collapsed.chars().take(200).collect();
    format!("upstream answered HTTP {status}: {snippet}")
}

/// A client-caused translation failure -> its On-Premise error (HTTP 400; 413 for sizes).
pub fn onprem_error_for(error: &TranslateError) -> OnPremError {
    let code = match error {
        TranslateError::InvalidJson(_)
        | TranslateError::WrongType { .. }
        | TranslateError::InvalidValue { .. } => 1009,
        TranslateError::Missing { .. } => 1008,
        TranslateError::MessageTooLong { .. } => 1001,
        TranslateError::TooLarge { .. } => return OnPremError::new(413, 1009, error.to_string()),
    };
    OnPremError::new(400, code, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mapped_cloud_code_has_an_onprem_title() {
        for cloud in [
            0, 190, 3, 10, 250, 131005, 4, 80007, 130429, 131056, 100, 131009, 131008,
        ]
        .into_iter()
        .chain([
            131000, 1, 2, 131016, 133004, 131021, 131026, 131031, 131047, 131048, 130472, 131042,
        ])
        .chain([
            131051, 131052, 131053, 132000, 132001, 132005, 132007, 132012,
        ])
        .chain([132015, 132016, 132068, 132069])
        {
            let (code, _) = map_cloud_code(cloud).unwrap();
            assert!(
                onprem_title(code).is_some(),
                "no title for {code} (cloud {cloud})"
            );
        }
    }

    #[test]
    fn code_prefix_is_stripped_only_when_numeric() {
        assert_eq!(
            strip_code_prefix("(#131031) Account locked"),
            "Account locked"
        );
        assert_eq!(strip_code_prefix("(#abc) x"), "(#abc) x");
    }

    #[test]
    fn long_non_json_bodies_are_cut_to_200_chars() {
        let body = "x".repeat(1000);
        let err = cloud_to_onprem_error(502, body.as_bytes());
        assert_eq!(
            err.details.len(),
            "upstream answered HTTP 502: ".len() + 200
        );
        assert_eq!(err.code, 1011);
    }
}
