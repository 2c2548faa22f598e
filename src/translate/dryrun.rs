//! Dry-run mode (`--upstream dry-run`): realistic synthetic Cloud answers, so every request is
//! translated, validated and reshaped exactly as it would be, with nothing leaving the machine;
//! and the fields a translation leaves out, for the operator's report.

use serde_json::{json, Map, Value};

/// What Cloud would plausibly answer to `method path` with `body`; ids are clearly fake.
pub fn synthetic_cloud_answer(
    method: &str,
    path: &str,
    body: Option<&Value>,
    serial: u64,
) -> (u16, Value) {
    let path_only = path.split('?').next().unwrap_or("");
    match (method, path_only) {
        ("POST", "/messages") => match body.and_then(|b| b.get("status")).and_then(Value::as_str) {
            Some("read") => (200, json!({"success": true})),
            _ => {
                let to = body
                    .and_then(|b| b.get("to"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let wa_id: String = to.chars().filter(char::is_ascii_digit).collect();
                (
                    200,
                    json!({"messaging_product": "whatsapp",
                    "contacts": [{"input": to, "wa_id": wa_id}],
                    "messages": [{"id": format!("wamid.DRYRUN{serial:012}"), "message_status": "accepted"}]}),
                )
            }
        },
        ("GET", "/whatsapp_business_profile") => (
            200,
            json!({"data": [{
            "about": "Dry run", "address": "", "description": "", "email": "", "messaging_product": "whatsapp",
            "profile_picture_url": "", "vertical": "UNDEFINED", "websites": []}]}),
        ),
        ("POST", "/whatsapp_business_profile") | ("DELETE", _) => (200, json!({"success": true})),
        ("GET", p) if p.starts_with("/v1/configs/templates") => (
            200,
            json!({"count": 0, "filters": {}, "limit": 1000,
            "offset": 0, "sort": ["id"], "total": 0, "waba_templates": []}),
        ),
        ("POST", "/v1/configs/webhook") => (200, json!({"url": "dry-run"})),
        ("POST", "/uploads") => (200, json!({"id": format!("upload:DRYRUN{serial:012}")})),
        ("POST", p) if p.starts_with("/upload:") => {
            (200, json!({"h": format!("DRYRUN-HANDLE-{serial}")}))
        }
        ("POST", p) if p.starts_with("/v1/configs/templates") => {
            (200, json!({"id": format!("DRYRUN{serial}")}))
        }
        ("GET", _) => (
            404,
            json!({"error": {"message": "(#100) Unsupported get request (dry run: no such object)",
            "type": "GraphMethodException", "code": 100, "error_subcode": 33, "fbtrace_id": "DRYRUN"}}),
        ),
        _ => (
            404,
            json!({"error": {"message": "Unknown path components (dry run)", "code": 2500, "fbtrace_id": "DRYRUN"}}),
        ),
    }
}

/// Fields On-Premise had that the proxy rewrites rather than drops.
const REWRITTEN: [(&str, &str); 2] = [("hsm", "template"), ("preview_url", "text.preview_url")];

/// Paths present in the On-Premise body but absent from the Cloud body (array items folded as
/// `[]`), each marked "rewritten as ..." where the proxy moved it on purpose.
pub fn dropped_fields(onprem: &Value, cloud: &Value) -> Vec<String> {
    let mut dropped = Vec::new();
    walk(onprem, Some(cloud), "", &mut dropped);
    dropped
        .into_iter()
        .map(
            |path| match REWRITTEN.iter().find(|(from, _)| *from == path) {
                Some((_, to)) => format!("{path} (rewritten as {to})"),
                None => path,
            },
        )
        .collect()
}

fn walk(onprem: &Value, cloud: Option<&Value>, path: &str, dropped: &mut Vec<String>) {
    match (onprem, cloud) {
        (Value::Object(fields), Some(Value::Object(kept))) => {
            for (key, value) in fields {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match kept.get(key) {
                    Some(kept_value) => walk(value, Some(kept_value), &child, dropped),
                    None => dropped.push(child),
                }
            }
        }
        (Value::Array(items), Some(Value::Array(kept))) => {
            for (item, kept_item) in items.iter().zip(kept) {
                walk(item, Some(kept_item), &format!("{path}[]"), dropped);
            }
        }
        _ => {}
    }
}

/// A body for the log with anything secret-looking masked.
pub fn redacted(body: &Value) -> Value {
    match body {
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| {
                    let lower = k.to_ascii_lowercase();
                    let secret = [
                        "secret",
                        "password",
                        "token",
                        "authorization",
                        "bearer",
                        "api-key",
                        "api_key",
                    ]
                    .iter()
                    .any(|s| lower.contains(s));
                    (
                        k.clone(),
                        if secret {
                            Value::from("[redacted]")
                        } else {
                            redacted(v)
                        },
                    )
                })
                .collect::<Map<_, _>>(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redacted).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_fields_name_what_did_not_reach_cloud() {
        let onprem = json!({"to": "1", "type": "text", "preview_url": true, "render_mentions": true,
            "text": {"body": "x"}, "x": [{"a": 1, "b": 2}]});
        let cloud = json!({"to": "1", "type": "text", "text": {"body": "x", "preview_url": true}, "x": [{"a": 1}]});
        assert_eq!(
            dropped_fields(&onprem, &cloud),
            [
                "preview_url (rewritten as text.preview_url)",
                "render_mentions",
                "x[].b"
            ]
        );
    }

    #[test]
    fn secrets_are_masked_at_any_depth() {
        let body = json!({"url": "u", "headers": {"X-Webhook-Secret": "s3"}});
        assert_eq!(
            redacted(&body),
            json!({"url": "u", "headers": {"X-Webhook-Secret": "[redacted]"}})
        );
    }
}
