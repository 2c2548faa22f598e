//! Inbound webhooks: one Cloud envelope (`object`, `entry[].changes[]`) -> the On-Premise
//! payloads the legacy webhook URL expects, one per `messages` change.
//!
//! Each payload also carries what delivery needs: the recipient it must stay in order with
//! (`ordering_key`) and what identifies it across upstream re-sends (`dedupe_key`).

use serde_json::{json, Map, Value};

use super::errors::cloud_to_onprem_webhook_error;
use super::TranslateError;

/// The client's On-Premise choices that change what is delivered: which message statuses it
/// wants. Everything else (messages, `failed`, `deleted`, `warning`, errors) always goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookOptions {
    /// `sent` statuses: off when `sent_status` or `webhooks.message.sent` is false.
    pub sent: bool,
    /// `delivered` statuses: off when `webhooks.message.delivered` is false.
    pub delivered: bool,
    /// `read` statuses (and Cloud's `played`, relayed as `read`): off when
    /// `webhooks.message.read` is false.
    pub read: bool,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        WebhookOptions {
            sent: true,
            delivered: true,
            read: true,
        }
    }
}

impl WebhookOptions {
    /// The choices an application settings document makes. On-Premise 2.41.2 added
    /// `webhooks.message.{sent,delivered,read}` as the preferred switch over the older
    /// `sent_status`; both keep working, and the stricter wins (either one off drops `sent`).
    /// Only an explicit `false` turns a status off: Cloud always reports all three, and a
    /// client that never chose should lose nothing.
    pub fn from_application_settings(settings: &Value) -> Self {
        let off = |pointer: &str| settings.pointer(pointer) == Some(&Value::Bool(false));
        WebhookOptions {
            sent: !off("/sent_status") && !off("/webhooks/message/sent"),
            delivered: !off("/webhooks/message/delivered"),
            read: !off("/webhooks/message/read"),
        }
    }

    fn relays(&self, status: &Value) -> bool {
        match status.get("status").and_then(Value::as_str) {
            Some("sent") => self.sent,
            Some("delivered") => self.delivered,
            Some("read" | "played") => self.read,
            _ => true,
        }
    }
}

/// Who one change of a Meta app's webhook is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Recipient {
    /// A number: `value.metadata.phone_number_id`.
    PhoneNumber(String),
    /// No number named (template status, account updates): the business account, the entry's
    /// `id`.
    Business(String),
    /// Neither: nothing says whom the change is for.
    Unknown,
}

/// A Meta app posts one webhook URL for all its numbers. Splits such a post into one Cloud
/// envelope per recipient, each with that recipient's changes in their order (entries kept
/// apart, with their `id`), in the order recipients first appear. A body that is not a Cloud
/// envelope comes back whole, for [`Recipient::Unknown`].
pub fn split_by_recipient(body: &Value) -> Vec<(Recipient, Value)> {
    let Some(entries) = body.get("entry").and_then(Value::as_array) else {
        return vec![(Recipient::Unknown, body.clone())];
    };
    // Per recipient: each kept entry with the index of the entry it came from.
    type Kept = Vec<(usize, Map<String, Value>)>;
    let mut groups: Vec<(Recipient, Kept)> = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let id = entry.get("id").and_then(Value::as_str);
        let Some(changes) = entry.get("changes").and_then(Value::as_array) else {
            continue;
        };
        for change in changes {
            let recipient = match change
                .pointer("/value/metadata/phone_number_id")
                .and_then(Value::as_str)
            {
                Some(number) => Recipient::PhoneNumber(number.to_owned()),
                None => id.map_or(Recipient::Unknown, |id| Recipient::Business(id.to_owned())),
            };
            let position = match groups.iter().position(|(r, _)| *r == recipient) {
                Some(position) => position,
                None => {
                    groups.push((recipient, Vec::new()));
                    groups.len() - 1
                }
            };
            let kept = &mut groups[position].1;
            match kept.last_mut() {
                // Changes of one entry stay in one entry.
                Some((from, entry)) if *from == index => {
                    if let Some(Value::Array(changes)) = entry.get_mut("changes") {
                        changes.push(change.clone());
                    }
                }
                _ => {
                    let mut copy = Map::new();
                    if let Some(id) = entry.get("id") {
                        copy.insert("id".into(), id.clone());
                    }
                    copy.insert("changes".into(), Value::Array(vec![change.clone()]));
                    kept.push((index, copy));
                }
            }
        }
    }
    if groups.is_empty() {
        return vec![(Recipient::Unknown, body.clone())];
    }
    groups
        .into_iter()
        .map(|(recipient, entries)| {
            let mut envelope = Map::new();
            if let Some(object) = body.get("object") {
                envelope.insert("object".into(), object.clone());
            }
            let entries = entries.into_iter().map(|(_, e)| Value::Object(e)).collect();
            envelope.insert("entry".into(), Value::Array(entries));
            (recipient, Value::Object(envelope))
        })
        .collect()
}

/// One On-Premise webhook body and how to deliver it.
#[derive(Debug, Clone, PartialEq)]
pub struct OnPremWebhook {
    pub body: Value,
    /// The `wa_id` whose events must arrive in order (a `read` after its `delivered`).
    pub ordering_key: String,
    /// Stable identity of the events inside, to store upstream re-sends once.
    pub dedupe_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct WebhookTranslation {
    pub payloads: Vec<OnPremWebhook>,
    /// `field`s of changes that have no On-Premise form (template status, quality, ...).
    pub skipped: Vec<String>,
}

/// A Cloud webhook post -> the On-Premise payloads. Takes the parsed post by value: the relay
/// moves fields instead of copying them.
pub fn cloud_to_onprem_webhook(
    envelope: Value,
    options: WebhookOptions,
) -> Result<WebhookTranslation, TranslateError> {
    let Value::Object(mut envelope) = envelope else {
        return Err(TranslateError::wrong_type("webhook", "an object"));
    };
    let Some(Value::Array(entries)) = envelope.remove("entry") else {
        return Err(TranslateError::missing("entry"));
    };
    let mut translation = WebhookTranslation::default();
    for entry in entries {
        let Value::Object(mut entry) = entry else {
            continue;
        };
        let Some(Value::Array(changes)) = entry.remove("changes") else {
            continue;
        };
        for change in changes {
            let field = change.get("field").and_then(Value::as_str).unwrap_or("");
            if field != "messages" {
                translation.skipped.push(field.to_owned());
                continue;
            }
            let Value::Object(mut change) = change else {
                continue;
            };
            let Some(Value::Object(value)) = change.remove("value") else {
                continue;
            };
            if let Some(payload) = messages_change(value, options) {
                translation.payloads.push(payload);
            }
        }
    }
    Ok(translation)
}

fn messages_change(
    mut value: Map<String, Value>,
    options: WebhookOptions,
) -> Option<OnPremWebhook> {
    let mut body = Map::new();
    if let Some(contacts) = value.remove("contacts") {
        body.insert("contacts".into(), contacts);
    }
    if let Some(Value::Array(messages)) = value.remove("messages") {
        body.insert(
            "messages".into(),
            Value::Array(messages.into_iter().map(message).collect()),
        );
    }
    if let Some(Value::Array(statuses)) = value.remove("statuses") {
        let kept: Vec<Value> = statuses
            .into_iter()
            .filter(|s| options.relays(s))
            .map(status)
            .collect();
        if !kept.is_empty() {
            body.insert("statuses".into(), Value::Array(kept));
        }
    }
    if let Some(Value::Array(errors)) = value.remove("errors") {
        body.insert(
            "errors".into(),
            Value::Array(errors.iter().map(cloud_to_onprem_webhook_error).collect()),
        );
    }
    if !["messages", "statuses", "errors"]
        .iter()
        .any(|k| body.contains_key(*k))
    {
        return None;
    }
    let body = Value::Object(body);
    Some(OnPremWebhook {
        ordering_key: ordering_key(&body),
        dedupe_key: dedupe_key(&body),
        body,
    })
}

fn message(message: Value) -> Value {
    let Value::Object(mut out) = message else {
        return message;
    };
    flatten_errors(&mut out);
    match out.get("type").and_then(Value::as_str) {
        Some("unsupported") => {
            out.insert("type".into(), Value::from("unknown"));
            if !out.contains_key("errors") {
                out.insert(
                    "errors".into(),
                    json!([{"code": 501, "title": "Unknown message type",
                            "details": "Message type is not currently supported"}]),
                );
            }
        }
        // Cloud marks voice notes as audio with `voice: true`; On-Premise had a `voice` type.
        Some("audio")
            if out.get("audio").and_then(|a| a.get("voice")) == Some(&Value::Bool(true)) =>
        {
            if let Some(Value::Object(mut audio)) = out.remove("audio") {
                audio.remove("voice");
                out.insert("voice".into(), Value::Object(audio));
            }
            out.insert("type".into(), Value::from("voice"));
        }
        Some("system") => {
            if let Some(Value::Object(system)) = out.get_mut("system") {
                if let Some(wa_id) = system.remove("wa_id") {
                    system.insert("new_wa_id".into(), wa_id);
                }
            }
        }
        _ => {}
    }
    Value::Object(out)
}

fn status(status: Value) -> Value {
    let Value::Object(mut out) = status else {
        return status;
    };
    out.remove("biz_opaque_callback_data");
    // On-Premise had no `played`; a played voice note has certainly been read.
    if out.get("status").and_then(Value::as_str) == Some("played") {
        out.insert("status".into(), Value::from("read"));
    }
    out.insert("type".into(), Value::from("message"));
    if let Some(recipient) = out.get("recipient_id").cloned() {
        out.insert(
            "message".into(),
            Value::Object(Map::from_iter([("recipient_id".to_owned(), recipient)])),
        );
    }
    flatten_errors(&mut out);
    Value::Object(out)
}

fn flatten_errors(object: &mut Map<String, Value>) {
    if let Some(Value::Array(errors)) = object.get_mut("errors") {
        for error in errors.iter_mut() {
            *error = cloud_to_onprem_webhook_error(error);
        }
    }
}

fn ordering_key(body: &Value) -> String {
    let first = |list: &str, key: &str| {
        body.get(list)
            .and_then(|l| l.get(0))
            .and_then(|item| item.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    first("messages", "from")
        .or_else(|| first("statuses", "recipient_id"))
        .unwrap_or_default()
}

fn dedupe_key(body: &Value) -> Option<String> {
    let mut keys = Vec::new();
    if let Some(Value::Array(messages)) = body.get("messages") {
        keys.extend(
            messages
                .iter()
                .filter_map(|m| m.get("id")?.as_str())
                .map(|id| format!("message:{id}")),
        );
    }
    if let Some(Value::Array(statuses)) = body.get("statuses") {
        keys.extend(statuses.iter().filter_map(|s| {
            Some(format!(
                "status:{}:{}",
                s.get("id")?.as_str()?,
                s.get("status")?.as_str()?
            ))
        }));
    }
    (!keys.is_empty()).then(|| keys.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_app_post_splits_by_phone_number_in_order() {
        let change = |number: &str, id: &str| {
            json!({"field": "messages", "value": {"messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "1", "phone_number_id": number},
                "statuses": [{"id": id, "status": "sent", "recipient_id": "49"}]}})
        };
        let body = json!({"object": "whatsapp_business_account", "entry": [
            {"id": "W1", "changes": [change("111", "a"), change("222", "b"), change("111", "c")]},
            {"id": "W1", "changes": [change("111", "d"),
                {"field": "message_template_status_update", "value": {"event": "APPROVED"}}]}
        ]});
        let split = split_by_recipient(&body);
        let recipients: Vec<&Recipient> = split.iter().map(|(r, _)| r).collect();
        assert_eq!(
            recipients,
            [
                &Recipient::PhoneNumber("111".into()),
                &Recipient::PhoneNumber("222".into()),
                &Recipient::Business("W1".into())
            ]
        );
        let ids = |v: &Value| -> Vec<String> {
            v["entry"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|e| e["changes"].as_array().unwrap().iter())
                .filter_map(|c| c.pointer("/value/statuses/0/id").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(ids(&split[0].1), ["a", "c", "d"]);
        // Two source entries stay two entries, each with its id.
        assert_eq!(split[0].1["entry"].as_array().unwrap().len(), 2);
        assert_eq!(split[0].1["object"], "whatsapp_business_account");
        assert_eq!(ids(&split[1].1), ["b"]);
        assert_eq!(
            split_by_recipient(&json!({"x": 1}))[0].0,
            Recipient::Unknown
        );
    }

    fn envelope(value: Value) -> Value {
        json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}]})
    }

    #[test]
    fn ordering_and_dedupe_keys_follow_the_recipient_and_ids() {
        let t = cloud_to_onprem_webhook(
            envelope(json!({"statuses": [{"id": "wamid.A", "status": "read", "recipient_id": "155", "timestamp": "1"}]})),
            WebhookOptions::default(),
        )
        .unwrap();
        assert_eq!(t.payloads[0].ordering_key, "155");
        assert_eq!(
            t.payloads[0].dedupe_key.as_deref(),
            Some("status:wamid.A:read")
        );
    }

    #[test]
    fn a_payload_left_empty_by_sent_status_off_is_not_delivered() {
        let t = cloud_to_onprem_webhook(
            envelope(
                json!({"statuses": [{"id": "wamid.A", "status": "sent", "recipient_id": "155"}]}),
            ),
            WebhookOptions {
                sent: false,
                ..WebhookOptions::default()
            },
        )
        .unwrap();
        assert!(t.payloads.is_empty() && t.skipped.is_empty());
    }
}
