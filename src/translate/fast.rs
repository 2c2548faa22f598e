//! The hot path: the most common sends (text, and media by id or link) and Cloud's ordinary
//! send answer, translated without building a `serde_json::Value`.
//!
//! The body is read as borrowed slices (each top-level field's raw JSON), checked, and the
//! Cloud body written straight into one buffer; fields that pass through are copied as the
//! client wrote them. Anything this path does not recognise in full (another type, an unknown
//! field, a duplicate key, a value of the wrong kind, a too-long text) returns `None`, and the
//! general `Value` path handles the request, errors included. So both paths give the same
//! Cloud body for every input this one accepts (as JSON values: key order and escapes may
//! differ), which `tests/it/properties.rs` checks over every fixture and generated inputs.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::messages::{MEDIA_TYPES, TEXT_BODY_MAX_CHARS};
use super::Meta;

/// A JSON string, borrowed from the input unless it has escapes (serde's own `Cow<str>`
/// always copies).
struct Text<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Borrow;
        impl<'de> Visitor<'de> for Borrow {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s.to_owned())))
            }
        }
        deserializer.deserialize_str(Borrow)
    }
}

/// The most members an object this path takes may have (a send has at most 7 known fields).
const MAX_MEMBERS: usize = 8;

/// A JSON object's members in order, as raw JSON: nothing is parsed below the top level.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Collect;
        impl<'de> Visitor<'de> for Collect {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Members<'de>, M::Error> {
                let mut members = Vec::with_capacity(8);
                while let Some((Text(key), value)) = map.next_entry::<Text<'de>, &'de RawValue>()? {
                    // No object this path takes has more members: a larger one is given up
                    // at once (checking many keys for repeats would cost time a client chose).
                    if members.len() == MAX_MEMBERS {
                        return Err(serde::de::Error::custom(
                            "more members than the fast path takes",
                        ));
                    }
                    members.push((key, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Collect)
    }
}

impl<'a> Members<'a> {
    fn parse(json: &'a [u8]) -> Option<Members<'a>> {
        let members: Members = serde_json::from_slice(json).ok()?;
        // A repeated key: the general path decides (it keeps the last).
        for (i, (key, _)) in members.0.iter().enumerate() {
            if members.0[..i].iter().any(|(k, _)| k == key) {
                return None;
            }
        }
        Some(members)
    }

    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    fn only(&self, allowed: &[&str]) -> bool {
        self.0.iter().all(|(k, _)| allowed.contains(&k.as_ref()))
    }
}

/// A raw JSON string's text (unescaped), or None when the value is not a string.
fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    if !raw.get().starts_with('"') {
        return None;
    }
    serde_json::from_str::<Text>(raw.get()).ok().map(|t| t.0)
}

/// A value copied through as the client wrote it: a string (checked in full: a raw copy would
/// carry a lone surrogate escape that the general path refuses), `true`, `false` or `null`.
/// Anything else (numbers, objects, arrays) is left to the general path.
fn plain(raw: &RawValue) -> Option<&RawValue> {
    match raw.get() {
        "true" | "false" | "null" => Some(raw),
        _ => string(raw).map(|_| raw),
    }
}

/// An object of plain values (`context`, a contact), each key once.
fn plain_object(raw: &RawValue) -> Option<&RawValue> {
    let members = Members::parse(raw.get().as_bytes())?;
    members
        .0
        .iter()
        .all(|(_, value)| plain(value).is_some())
        .then_some(raw)
}

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// Top-level send fields this path handles; anything else takes the general path.
/// (`ttl` and `render_mentions`, which are dropped, take the general path, so the console's
/// readiness report counts them.)
const SEND_FIELDS: [&str; 7] = [
    "to",
    "type",
    "recipient_type",
    "preview_url",
    "context",
    "biz_opaque_callback_data",
    "text",
];

/// What a send on this path left behind, named as the readiness report names it
/// (`translate::dryrun::dropped_fields` of the general path gives the same).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// A top-level `preview_url`, moved into `text`.
    pub preview_url_moved: bool,
    /// The media type whose `caption` Cloud refuses (audio, sticker), left out.
    pub caption_of: Option<&'static str>,
}

impl Dropped {
    pub fn fields(&self) -> Vec<String> {
        let mut fields = Vec::new();
        if self.preview_url_moved {
            fields.push("preview_url (rewritten as text.preview_url)".to_owned());
        }
        if let Some(kind) = self.caption_of {
            fields.push(format!("{kind}.caption"));
        }
        fields
    }
}

/// An On-Premise text send, or a media send by id or link, as a Cloud `POST /messages` body;
/// None for anything else.
pub fn onprem_to_cloud_send(body: &[u8]) -> Option<Vec<u8>> {
    onprem_to_cloud_send_reporting(body).map(|(cloud, _)| cloud)
}

/// As [`onprem_to_cloud_send`], with what the send left behind.
pub fn onprem_to_cloud_send_reporting(body: &[u8]) -> Option<(Vec<u8>, Dropped)> {
    let message = Members::parse(body)?;
    let to = message.get("to")?;
    string(to)?;
    let kind = match message.get("type") {
        Some(kind) => string(kind)?,
        // Without `type`, On-Premise meant text (the general path also infers other types).
        None => Cow::Borrowed("text"),
    };
    let media = MEDIA_TYPES.iter().find(|m| **m == kind).copied();
    if kind != "text" && media.is_none() {
        return None;
    }
    let mut allowed = SEND_FIELDS;
    if let Some(media) = media {
        // The one type object a media send carries, in place of `text`.
        allowed[6] = media;
        message.get("preview_url").is_none().then_some(())?;
    }
    if !message.only(&allowed) {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() + 64);
    out.extend_from_slice(br#"{"messaging_product":"whatsapp","to":"#);
    out.extend_from_slice(to.get().as_bytes());
    match message.get("recipient_type") {
        None => out.extend_from_slice(br#","recipient_type":"individual""#),
        Some(raw) if is_null(raw) => out.extend_from_slice(br#","recipient_type":"individual""#),
        Some(raw) => {
            string(raw)?;
            member(&mut out, "recipient_type", raw);
        }
    }
    if let Some(raw) = message.get("context") {
        member(&mut out, "context", plain_object(raw)?);
    }
    if let Some(raw) = message.get("biz_opaque_callback_data") {
        member(&mut out, "biz_opaque_callback_data", plain(raw)?);
    }
    let mut dropped = Dropped::default();
    match media {
        None => {
            out.extend_from_slice(br#","type":"text","text":"#);
            text(&mut out, message.get("text")?, message.get("preview_url"))?;
            dropped.preview_url_moved = message.get("preview_url").is_some();
        }
        Some(media) => {
            out.extend_from_slice(br#","type":""#);
            out.extend_from_slice(media.as_bytes());
            out.extend_from_slice(br#"",""#);
            out.extend_from_slice(media.as_bytes());
            out.extend_from_slice(br#"":"#);
            if media_object(&mut out, media, message.get(media)?)? {
                dropped.caption_of = Some(media);
            }
        }
    }
    out.push(b'}');
    Some((out, dropped))
}

fn member(out: &mut Vec<u8>, key: &str, raw: &RawValue) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(raw.get().as_bytes());
}

/// `text`: `body` (within Cloud's limit), and `preview_url` moved in from beside it unless
/// one is already inside.
fn text(out: &mut Vec<u8>, raw: &RawValue, outside: Option<&RawValue>) -> Option<()> {
    let text = Members::parse(raw.get().as_bytes())?;
    if !text.only(&["body", "preview_url"]) {
        return None;
    }
    let body = text.get("body")?;
    if string(body)?.chars().count() > TEXT_BODY_MAX_CHARS {
        return None;
    }
    if let Some(inside) = text.get("preview_url") {
        plain(inside)?;
    }
    let inside = text.get("preview_url").filter(|raw| !is_null(raw));
    let outside = outside.filter(|raw| !is_null(raw));
    if let Some(outside) = outside {
        if !matches!(outside.get(), "true" | "false") {
            return None;
        }
    }
    out.extend_from_slice(b"{\"body\":");
    out.extend_from_slice(body.get().as_bytes());
    match (inside, outside, text.get("preview_url")) {
        (Some(inside), _, _) => member(out, "preview_url", inside),
        (None, Some(outside), _) => member(out, "preview_url", outside),
        // An explicit `null` inside stays, as the general path keeps it.
        (None, None, Some(null)) => member(out, "preview_url", null),
        (None, None, None) => {}
    }
    out.push(b'}');
    Some(())
}

/// A media object by `id` or `link` (strings), with `caption` and `filename`; Cloud refuses a
/// caption on audio and stickers, so it is left out there (then: `Some(true)`).
fn media_object(out: &mut Vec<u8>, kind: &str, raw: &RawValue) -> Option<bool> {
    let media = Members::parse(raw.get().as_bytes())?;
    if !media.only(&["id", "link", "caption", "filename"]) {
        return None;
    }
    // Each given `id`/`link` is a string (null: the general path decides).
    for key in ["id", "link"] {
        if let Some(value) = media.get(key) {
            string(value)?;
        }
    }
    // `caption` and `filename` are plain values.
    for key in ["caption", "filename"] {
        if let Some(value) = media.get(key) {
            plain(value)?;
        }
    }
    if media.get("id").is_none() && media.get("link").is_none() {
        return None;
    }
    out.push(b'{');
    let mut first = true;
    let mut left_out = false;
    for (key, value) in &media.0 {
        if key == "caption" && (kind == "audio" || kind == "sticker") {
            left_out = true;
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        out.extend_from_slice(value.get().as_bytes());
    }
    out.push(b'}');
    Some(left_out)
}

/// Cloud's ordinary send answer (`messaging_product`, `contacts`, `messages` of bare ids) as
/// On-Premise's (sent with 201), and the first message id for the log line; None for any other
/// shape, which the general path reads.
pub fn cloud_to_onprem_send_response(answer: &[u8], meta: &Meta) -> Option<(Vec<u8>, String)> {
    let members = Members::parse(answer)?;
    if !members.only(&["messaging_product", "contacts", "messages"]) {
        return None;
    }
    if let Some(product) = members.get("messaging_product") {
        plain(product)?;
    }
    let messages = members.get("messages")?;
    let ids: Vec<Members> = serde_json::from_str::<Vec<&RawValue>>(messages.get())
        .ok()?
        .into_iter()
        .map(|m| Members::parse(m.get().as_bytes()))
        .collect::<Option<_>>()?;
    if !ids.iter().all(|m| m.only(&["id"])) {
        return None;
    }
    let first = ids.first().and_then(|m| m.get("id")).and_then(string)?;
    // Every id checked in full, as the general path reads them.
    for id in &ids {
        id.get("id").and_then(string)?;
    }
    let contacts = match members.get("contacts") {
        Some(contacts) => Some(
            serde_json::from_str::<Vec<&RawValue>>(contacts.get())
                .ok()?
                .into_iter()
                .all(|c| plain_object(c).is_some())
                .then_some(contacts)?,
        ),
        None => None,
    };
    let mut out = Vec::with_capacity(answer.len() + 64);
    out.push(b'{');
    if let Some(contacts) = contacts {
        out.extend_from_slice(b"\"contacts\":");
        out.extend_from_slice(contacts.get().as_bytes());
        out.push(b',');
    }
    out.extend_from_slice(b"\"messages\":");
    out.extend_from_slice(messages.get().as_bytes());
    out.extend_from_slice(br#","meta":{"api_status":"stable","version":"#);
    serde_json::to_writer(&mut out, &meta.version).ok()?;
    out.extend_from_slice(b"}}");
    Some((out, first.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn fast(body: &Value) -> Option<Value> {
        onprem_to_cloud_send(body.to_string().as_bytes())
            .map(|out| serde_json::from_slice(&out).unwrap())
    }

    #[test]
    fn a_text_send_is_written_straight_into_cloud_shape() {
        let got = fast(&json!({"to": "49", "type": "text", "preview_url": true,
            "text": {"body": "hi \u{e9}"}}))
        .unwrap();
        assert_eq!(
            got,
            json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": "49",
                "type": "text", "text": {"body": "hi \u{e9}", "preview_url": true}})
        );
    }

    #[test]
    fn media_by_id_keeps_its_fields_but_no_caption_on_audio() {
        let got = fast(&json!({"to": "49", "type": "audio", "audio": {"id": "7", "caption": "x"}}))
            .unwrap();
        assert_eq!(got["audio"], json!({"id": "7"}));
        let got = fast(
            &json!({"to": "49", "type": "image", "image": {"link": "https://a/b", "caption": "c"}}),
        )
        .unwrap();
        assert_eq!(got["image"], json!({"link": "https://a/b", "caption": "c"}));
    }

    #[test]
    fn anything_unusual_is_left_to_the_general_path() {
        let long = "x".repeat(TEXT_BODY_MAX_CHARS + 1);
        for body in [
            json!({"to": "49", "type": "hsm", "hsm": {}}),
            json!({"to": "49", "text": {"body": long}}),
            json!({"to": 49, "text": {"body": "x"}}),
            json!({"to": "49", "text": {"body": "x", "extra": 1}}),
            json!({"to": "49", "text": {"body": "x"}, "unknown": 1}),
            json!({"to": "49", "preview_url": "yes", "text": {"body": "x"}}),
            json!({"to": "49", "type": "image", "image": {"id": "1", "provider": {"name": "p"}}}),
            json!({"to": "49", "type": "image", "image": {"caption": "no id"}}),
            json!({"to": "49", "type": "image", "image": {"id": null, "link": "https://a"}}),
            json!([1]),
        ] {
            assert!(fast(&body).is_none(), "{body}");
        }
        assert!(onprem_to_cloud_send(br#"{"to":"1","to":"2","text":{"body":"x"}}"#).is_none());
        assert!(onprem_to_cloud_send(b"{not json").is_none());
        // Written by hand: bytes `Value::to_string` never makes.
        for body in [
            // A lone surrogate in any value copied through (the general path refuses the body).
            r#"{"to":"1","text":{"body":"x"},"context":{"message_id":"\ud800"}}"#,
            r#"{"to":"1","recipient_type":"\udc00","text":{"body":"x"}}"#,
            r#"{"to":"1","biz_opaque_callback_data":"\ud800","text":{"body":"x"}}"#,
            r#"{"to":"1","type":"image","image":{"id":"1","caption":"\ud800"}}"#,
            r#"{"to":"\ud800","text":{"body":"x"}}"#,
            // A repeated key inside a nested object.
            r#"{"to":"1","text":{"body":"x","body":"y"}}"#,
            r#"{"to":"1","text":{"body":"x"},"context":{"message_id":"a","message_id":"b"}}"#,
            r#"{"to":"1","type":"image","image":{"id":"1","id":"2"}}"#,
            // Values the fast path does not copy through.
            r#"{"to":"1","text":{"body":"x"},"context":{"message_id":{"deep":1}}}"#,
            r#"{"to":"1","text":{"body":"x","preview_url":{"x":1}}}"#,
        ] {
            assert!(onprem_to_cloud_send(body.as_bytes()).is_none(), "{body}");
        }
        // Many members are given up at once, not compared pairwise (a client could stall a
        // serving thread for seconds with 80,000 keys otherwise).
        let many: String = (0..80_000).map(|i| format!("\"k{i}\":0,")).collect();
        let body = format!("{{{many}\"to\":\"1\"}}");
        let started = std::time::Instant::now();
        assert!(onprem_to_cloud_send(body.as_bytes()).is_none());
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
    }

    #[test]
    fn the_ordinary_answer_is_reshaped_with_its_message_id() {
        let answer = br#"{"messaging_product":"whatsapp","contacts":[{"input":"1","wa_id":"1"}],"messages":[{"id":"wamid.A"}]}"#;
        let (body, id) = cloud_to_onprem_send_response(answer, &Meta::new("v2.53.0")).unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(id, "wamid.A");
        assert_eq!(
            body,
            json!({"contacts": [{"input": "1", "wa_id": "1"}], "messages": [{"id": "wamid.A"}],
                "meta": {"api_status": "stable", "version": "v2.53.0"}})
        );
        let with_status = br#"{"messages":[{"id":"wamid.A","message_status":"accepted"}]}"#;
        assert!(cloud_to_onprem_send_response(with_status, &Meta::new("v")).is_none());
        assert!(cloud_to_onprem_send_response(br#"{"error":{}}"#, &Meta::new("v")).is_none());
        for answer in [
            r#"{"contacts":[{"input":"\ud800","wa_id":"1"}],"messages":[{"id":"a"}]}"#,
            r#"{"messages":[{"id":"a"},{"id":"\udc00"}]}"#,
            r#"{"contacts":[{"wa_id":"1","wa_id":"2"}],"messages":[{"id":"a"}]}"#,
            r#"{"messaging_product":"\ud800","messages":[{"id":"a"}]}"#,
        ] {
            assert!(
                cloud_to_onprem_send_response(answer.as_bytes(), &Meta::new("v")).is_none(),
                "{answer}"
            );
        }
    }
}
