//! `/v1/messages`: sends and mark-as-read, both directions.
//!
//! Unknown fields pass through untouched (Meta adds fields every quarter); only the fields that
//! exist solely on On-Premise are removed or rewritten.

use serde_json::{json, Map, Value};

use super::templates::{onprem_hsm_to_cloud_template, onprem_to_cloud_template};
use super::{as_object, join, optional_str, required_str, Meta, TranslateError};

/// Cloud's limit for `text.body`; On-Premise answered 1001 "Message too long" past it.
pub const TEXT_BODY_MAX_CHARS: usize = 4096;

/// The message types whose object is a media object (`id` or `link`, and On-Premise's `provider`).
pub const MEDIA_TYPES: [&str; 5] = ["image", "video", "document", "audio", "sticker"];

/// Top-level send fields that exist only in On-Premise and have no Cloud form, so they are
/// removed: `render_mentions` (Cloud renders mentions itself) and `ttl` (the message
/// time-to-live, deprecated in On-Premise 2.33; Cloud keeps undelivered messages for 30 days
/// and has no per-message setting). Cloud refuses unknown top-level keys, so leaving either in
/// would fail the send.
pub const ONPREM_ONLY_FIELDS: [&str; 2] = ["render_mentions", "ttl"];

/// On-Premise send body -> Cloud `POST /messages` body. Takes the parsed body by value: the
/// proxy's hot path moves the fields it keeps instead of copying them.
pub fn onprem_to_cloud_send(body: Value) -> Result<Value, TranslateError> {
    let mut message = match body {
        Value::Object(map) => map,
        Value::Null => return Err(TranslateError::missing("to")),
        _ => return Err(TranslateError::wrong_type("request body", "an object")),
    };
    required_str(&message, "", "to")?;
    let kind = match optional_str(&message, "", "type")? {
        Some(kind) => kind.to_owned(),
        None => {
            let kind = implied_type(&message);
            message.insert("type".into(), Value::from(kind));
            kind.to_owned()
        }
    };

    // On-Premise-only fields: taken out, and rewritten where they have a Cloud form
    // (`render_mentions` has none: Cloud renders mentions itself).
    let preview_url = message.remove("preview_url");
    for only_onprem in ONPREM_ONLY_FIELDS {
        message.remove(only_onprem);
    }
    let hsm = message.remove("hsm");
    let mut out = message;
    out.insert("messaging_product".into(), Value::from("whatsapp"));
    // Absent or null: "not given", so the default applies.
    if out.get("recipient_type").is_none_or(Value::is_null) {
        out.insert("recipient_type".into(), Value::from("individual"));
    }

    match kind.as_str() {
        "text" => {
            let text = take_type_object(&mut out, "text")?;
            out.insert("text".into(), rewrite_text(text, preview_url)?);
        }
        "hsm" => {
            let hsm = hsm
                .filter(|v| !v.is_null())
                .ok_or_else(|| TranslateError::missing("hsm"))?;
            out.insert("type".into(), Value::from("template"));
            out.insert("template".into(), onprem_hsm_to_cloud_template(&hsm)?);
        }
        "template" => {
            let template = take_type_object(&mut out, "template")?;
            out.insert("template".into(), onprem_to_cloud_template(&template)?);
        }
        media if MEDIA_TYPES.contains(&media) => {
            let object = take_type_object(&mut out, media)?;
            out.insert(media.to_owned(), rewrite_media(media, object)?);
        }
        "interactive" => {
            let interactive = take_type_object(&mut out, "interactive")?;
            out.insert("interactive".into(), rewrite_interactive(interactive)?);
        }
        "contacts" => {
            let contacts = take_type_object(&mut out, "contacts")?;
            out.insert("contacts".into(), rewrite_contacts(contacts));
        }
        // location, contacts, interactive, reaction and anything Cloud-only: unchanged. A type
        // Cloud does not know comes back from it as 131051, answered as On-Premise's 501.
        other => {
            if other.is_empty() {
                return Err(TranslateError::invalid("type", "must not be empty"));
            }
            if out.get(other).is_none_or(Value::is_null) {
                return Err(TranslateError::missing(other));
            }
        }
    }
    Ok(Value::Object(out))
}

/// The message types whose object a send may carry, for a send that names no `type`.
const TYPE_OBJECTS: [&str; 12] = [
    "text",
    "image",
    "video",
    "document",
    "audio",
    "sticker",
    "location",
    "contacts",
    "interactive",
    "template",
    "hsm",
    "reaction",
];

/// `type` was optional in On-Premise (and is in Cloud), defaulting to `text`; real clients
/// relied on it (seed-message-sender sends `{"to","text"}`). A send without `type` whose only type
/// object is another one (gupshup's documented interactive sends) is taken as that type.
pub(crate) fn implied_type(message: &Map<String, Value>) -> &'static str {
    let mut present = TYPE_OBJECTS
        .iter()
        .filter(|kind| message.get(**kind).is_some_and(|v| !v.is_null()));
    match (present.next(), present.next()) {
        (Some(only), None) => only,
        _ => "text",
    }
}

/// The object named by `type`, which every message must carry, taken out for rewriting.
fn take_type_object(message: &mut Map<String, Value>, kind: &str) -> Result<Value, TranslateError> {
    message
        .remove(kind)
        .filter(|v| !v.is_null())
        .ok_or_else(|| TranslateError::missing(kind))
}

fn rewrite_text(text: Value, preview_url: Option<Value>) -> Result<Value, TranslateError> {
    let mut text = match text {
        Value::Object(text) => text,
        _ => return Err(TranslateError::wrong_type("text", "an object")),
    };
    let body = required_str(&text, "text", "body")?;
    if body.chars().count() > TEXT_BODY_MAX_CHARS {
        return Err(TranslateError::MessageTooLong {
            path: "text.body".into(),
            limit: TEXT_BODY_MAX_CHARS,
        });
    }
    // On-Premise put preview_url beside `text`; Cloud wants it inside. One already inside wins.
    match preview_url {
        None | Some(Value::Null) => {}
        Some(Value::Bool(preview)) => {
            if text.get("preview_url").is_none_or(Value::is_null) {
                text.insert("preview_url".into(), Value::Bool(preview));
            }
        }
        Some(_) => return Err(TranslateError::wrong_type("preview_url", "a boolean")),
    }
    Ok(Value::Object(text))
}

fn rewrite_media(kind: &str, media: Value) -> Result<Value, TranslateError> {
    let mut media = match media {
        Value::Object(media) => media,
        _ => return Err(TranslateError::wrong_type(kind, "an object")),
    };
    for key in ["id", "link"] {
        if let Some(v) = media.get(key) {
            if !v.is_null() && !v.is_string() {
                return Err(TranslateError::wrong_type(join(kind, key), "a string"));
            }
        }
    }
    let has = |key: &str| media.get(key).is_some_and(|v| !v.is_null());
    if !has("id") && !has("link") {
        return Err(TranslateError::missing(format!("{kind}.id or {kind}.link")));
    }
    // `provider` named On-Premise-side credentials for fetching `link`; Cloud fetches links
    // itself, without credentials.
    media.remove("provider");
    // Cloud rejects a caption on audio and stickers; On-Premise ignored it.
    if kind == "audio" || kind == "sticker" {
        media.remove("caption");
    }
    Ok(Value::Object(media))
}

/// An interactive message passes through, except that a media header may carry On-Premise's
/// `provider` like any media object. The shell has already replaced a configured provider's
/// link by an uploaded id; what is left of `provider` has no Cloud form.
fn rewrite_interactive(interactive: Value) -> Result<Value, TranslateError> {
    let mut interactive = match interactive {
        Value::Object(interactive) => interactive,
        _ => return Err(TranslateError::wrong_type("interactive", "an object")),
    };
    // 360dialog's On-Premise took `action` as JSON text too (chatwoot's 360dialog provider sends
    // it so); Cloud wants the object.
    if let Some(Value::String(text)) = interactive.get("action") {
        match serde_json::from_str::<Value>(text) {
            Ok(action @ Value::Object(_)) => {
                interactive.insert("action".into(), action);
            }
            _ => {
                return Err(TranslateError::wrong_type(
                    "interactive.action",
                    "an object",
                ))
            }
        }
    }
    strip_header_provider(interactive.get_mut("header"));
    // A media carousel's cards each carry a media header of their own.
    if let Some(Value::Object(action)) = interactive.get_mut("action") {
        if let Some(Value::Array(cards)) = action.get_mut("cards") {
            for card in cards.iter_mut() {
                strip_header_provider(card.get_mut("header"));
            }
        }
    }
    Ok(Value::Object(interactive))
}

/// Contact cards pass through, except that a card's list fields given as one object (positus's
/// PHP client sends `"phones": {...}`) become the one-element list Cloud requires.
fn rewrite_contacts(mut contacts: Value) -> Value {
    if let Value::Array(cards) = &mut contacts {
        for card in cards.iter_mut() {
            let Value::Object(card) = card else { continue };
            for list in ["phones", "emails", "urls", "addresses"] {
                if let Some(single @ Value::Object(_)) = card.get_mut(list) {
                    let one = single.take();
                    *single = Value::Array(vec![one]);
                }
            }
        }
    }
    contacts
}

fn strip_header_provider(header: Option<&mut Value>) {
    let Some(Value::Object(header)) = header else {
        return;
    };
    for kind in HEADER_MEDIA_TYPES {
        if let Some(Value::Object(media)) = header.get_mut(kind) {
            media.remove("provider");
        }
    }
}

/// The media objects a template header parameter or an interactive header may carry.
pub const HEADER_MEDIA_TYPES: [&str; 3] = ["image", "video", "document"];

/// Cloud send answer -> On-Premise send answer (sent with HTTP 201 by the caller).
/// Ids and `wa_id`s are kept exactly: later statuses and mark-as-read use them, and clients
/// update their stored number when `wa_id` differs from what they sent. Takes the parsed
/// answer by value and keeps its maps: nothing needs it afterwards.
pub fn cloud_to_onprem_send_response(body: Value, meta: &Meta) -> Result<Value, TranslateError> {
    let mut out = match body {
        Value::Object(answer) => answer,
        Value::Null => return Err(TranslateError::missing("response")),
        _ => return Err(TranslateError::wrong_type("response", "an object")),
    };
    out.remove("messaging_product");
    match out.get_mut("messages") {
        Some(Value::Array(messages)) => {
            for message in messages.iter_mut() {
                if let Value::Object(message) = message {
                    message.remove("message_status");
                }
            }
        }
        None | Some(Value::Null) => return Err(TranslateError::missing("messages")),
        Some(_) => return Err(TranslateError::wrong_type("messages", "an array")),
    }
    out.insert("meta".into(), meta.to_value());
    Ok(Value::Object(out))
}

/// `PUT /v1/messages/{id}` body -> Cloud `POST /messages` body. `message_id` is the already
/// URL-decoded path segment.
pub fn onprem_to_cloud_mark_read(message_id: &str, body: &Value) -> Result<Value, TranslateError> {
    let body = match body {
        Value::Null => return Err(TranslateError::missing("status")),
        other => as_object(other, "request body")?,
    };
    let status = required_str(body, "", "status")?;
    if status != "read" {
        return Err(TranslateError::invalid(
            "status",
            format!("must be \"read\", got \"{status}\""),
        ));
    }
    if message_id.is_empty() {
        return Err(TranslateError::missing("message id in the path"));
    }
    Ok(json!({"messaging_product": "whatsapp", "status": "read", "message_id": message_id}))
}

/// Cloud `{"success":true}` -> On-Premise `{"meta":{...}}`.
pub fn cloud_to_onprem_success(body: &Value, meta: &Meta) -> Result<Value, TranslateError> {
    let answer = as_object(body, "response")?;
    match answer.get("success") {
        Some(Value::Bool(true)) => Ok(json!({ "meta": meta.to_value() })),
        Some(Value::Bool(false)) => Err(TranslateError::invalid("success", "is false")),
        _ => Err(TranslateError::missing("success")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_preview_url_already_inside_text_wins() {
        let out = onprem_to_cloud_send(json!({
            "to": "1", "type": "text", "preview_url": true,
            "text": {"body": "https://example.com", "preview_url": false}
        }))
        .unwrap();
        assert_eq!(out["text"]["preview_url"], json!(false));
        assert!(out.get("preview_url").is_none());
    }

    #[test]
    fn text_body_at_the_limit_passes_and_one_more_char_is_too_long() {
        let at_limit = "é".repeat(TEXT_BODY_MAX_CHARS);
        let send = |body: &str| {
            onprem_to_cloud_send(json!({"to":"1","type":"text","text":{"body": body}}))
        };
        assert!(send(&at_limit).is_ok());
        let over = format!("{at_limit}x");
        assert!(matches!(
            send(&over),
            Err(TranslateError::MessageTooLong { .. })
        ));
    }

    #[test]
    fn mark_read_rejects_other_statuses() {
        let err =
            onprem_to_cloud_mark_read("wamid.1", &json!({"status": "delivered"})).unwrap_err();
        assert!(matches!(err, TranslateError::InvalidValue { .. }));
    }
}
