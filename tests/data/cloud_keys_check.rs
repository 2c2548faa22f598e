//! Checks a Cloud API send body (`POST /{phone-number-id}/messages`) against the committed key
//! table `cloud_send_keys.json`, derived from Meta's OpenAPI document and reference pages (see
//! `README.md` beside this file). The table is compiled in, so tests never read `../shared`.
//!
//! Two kinds of violation are reported, each as a readable path such as
//! `template.components[0].parameters[1].image.provider`:
//! - a key the table does not allow in a *closed* object (Meta lists that object's keys exhaustively);
//! - an On-Premise-only key, anywhere (or, for `fallback` and `preview_url`, at the places where
//!   they are On-Premise-only), even inside objects the table does not know or leaves open.
//!
//! Only `serde_json` and `std` are used so that any test binary can include this file.

use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

/// The allowed keys of one object of a send body.
struct ObjectRule {
    keys: HashSet<String>,
    /// Closed objects reject unknown keys; open ones only reject On-Premise-only keys.
    closed: bool,
}

/// Where a key counts as On-Premise-only.
enum Scope {
    Anywhere,
    /// Only in these object paths (e.g. `fallback` in language objects, not `fallback_value`).
    At(HashSet<String>),
}

struct Table {
    objects: HashMap<String, ObjectRule>,
    /// Maps a path built by nesting onto the table entry that describes it, e.g. `message.text`
    /// -> `text`, or a carousel card's `components` -> `template.components`.
    aliases: HashMap<String, String>,
    /// Developer-defined data (Flow payloads): its keys are the business's own, never checked.
    opaque: HashSet<String>,
    onprem_only: HashMap<String, Scope>,
}

impl Table {
    fn place_of(&self, path: String) -> String {
        self.aliases.get(&path).cloned().unwrap_or(path)
    }

    fn is_onprem_only(&self, key: &str, place: &str) -> bool {
        match self.onprem_only.get(key) {
            Some(Scope::Anywhere) => true,
            Some(Scope::At(places)) => places.contains(place),
            None => false,
        }
    }
}

const TABLE_NAME: &str = "tests/data/cloud_send_keys.json";

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| parse_table(include_str!("cloud_send_keys.json")))
}

/// Parses the committed table. It is part of the repository, so a malformed table is a bug in
/// this commit and panicking with a pointed message is the right reaction.
fn parse_table(text: &str) -> Table {
    let doc: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("{TABLE_NAME} is not valid JSON: {e}"));
    let strings = |v: &Value, what: &str| -> HashSet<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("{TABLE_NAME}: {what} must be an array of strings"))
            .iter()
            .map(|s| {
                let s = s.as_str();
                s.unwrap_or_else(|| panic!("{TABLE_NAME}: {what} must hold strings"))
                    .to_owned()
            })
            .collect()
    };
    let section = |name: &str| {
        doc.get(name)
            .and_then(Value::as_object)
            .unwrap_or_else(|| panic!("{TABLE_NAME}: missing object `{name}`"))
    };

    let mut objects = HashMap::new();
    for (path, entry) in section("objects") {
        let keys = strings(&entry["keys"], &format!("objects.{path}.keys"));
        let closed = entry["closed"]
            .as_bool()
            .unwrap_or_else(|| panic!("{TABLE_NAME}: objects.{path}.closed must be a boolean"));
        objects.insert(path.clone(), ObjectRule { keys, closed });
    }
    let aliases = section("aliases")
        .iter()
        .map(|(from, to)| {
            let to = to.as_str();
            let to = to.unwrap_or_else(|| panic!("{TABLE_NAME}: aliases.{from} must be a string"));
            (from.clone(), to.to_owned())
        })
        .collect();
    let opaque = strings(&section("opaque")["paths"], "opaque.paths");
    let mut onprem_only = HashMap::new();
    let onprem = section("onprem_only")["keys"].as_object();
    for (key, rule) in onprem.unwrap_or_else(|| panic!("{TABLE_NAME}: missing onprem_only.keys")) {
        let scope = match &rule["where"] {
            Value::String(s) if s == "anywhere" => Scope::Anywhere,
            places => Scope::At(strings(places, &format!("onprem_only.keys.{key}.where"))),
        };
        onprem_only.insert(key.clone(), scope);
    }
    Table {
        objects,
        aliases,
        opaque,
        onprem_only,
    }
}

/// Every key in `send` that the table does not allow at its place, and every On-Premise-only key
/// anywhere, as readable paths like "template.components[0].parameters[1].image.provider".
pub fn cloud_send_violations(send: &Value) -> Vec<String> {
    let table = table();
    // A read receipt / typing indicator goes to the same endpoint but has its own shape.
    let root = match send {
        Value::Object(m) if m.contains_key("status") && !m.contains_key("type") => "status_update",
        _ => "message",
    };
    let mut found = Vec::new();
    walk(table, send, root, "", &mut found);
    found
}

/// `place` is the table path of `value` (`template.components.*`), `shown` the path reported
/// to people (`template.components[0]`).
fn walk(table: &Table, value: &Value, place: &str, shown: &str, found: &mut Vec<String>) {
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(
                    table,
                    item,
                    &format!("{place}.*"),
                    &format!("{shown}[{i}]"),
                    found,
                );
            }
        }
        Value::Object(map) => {
            let rule = table.objects.get(place);
            for (key, child) in map {
                let shown_child = if shown.is_empty() {
                    key.clone()
                } else {
                    format!("{shown}.{key}")
                };
                let not_allowed = rule.is_some_and(|r| r.closed && !r.keys.contains(key));
                if table.is_onprem_only(key, place) || not_allowed {
                    found.push(shown_child.clone());
                }
                // Keep descending even below a reported key: an `hsm` object should also show
                // its `namespace`, `element_name`, ... so one run lists everything to fix.
                let child_place = table.place_of(format!("{place}.{key}"));
                if !table.opaque.contains(&child_place) {
                    walk(table, child, &child_place, &shown_child, found);
                }
            }
        }
        _ => {}
    }
}

/// Panics unless the built-in good bodies pass and each bad body yields exactly the expected
/// violations. Meant to be called from a test once this file is wired into a test binary.
pub fn self_check() {
    use serde_json::json;
    // Each example gets this envelope unless it is a read receipt (has `status`).
    let envelope = json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": "15551234567"});
    let good = json!([
        {"type": "text", "text": {"body": "hi https://x.y", "preview_url": true},
         "context": {"message_id": "wamid.A"}, "biz_opaque_callback_data": "t-1"},
        {"type": "document", "document": {"link": "https://x.y/a.pdf", "caption": "c", "filename": "a.pdf"}},
        {"type": "audio", "audio": {"id": "1", "voice": true}},
        {"type": "template", "template": {"name": "n", "language": {"code": "en_US"}, "components": [
            {"type": "header", "parameters": [{"type": "document", "document": {"id": "1", "filename": "a.pdf"}}]},
            {"type": "body", "parameters": [
                {"type": "text", "parameter_name": "who", "text": "Ana"},
                {"type": "currency", "currency": {"fallback_value": "$1", "code": "USD", "amount_1000": 1000}},
                {"type": "date_time", "date_time": {"fallback_value": "Feb 25", "day_of_month": 25}}]},
            {"type": "button", "sub_type": "flow", "index": "0", "parameters": [{"type": "action",
                "action": {"flow_token": "t", "flow_action_data": {"provider": "business data, not ours"}}}]},
            {"type": "carousel", "cards": [{"card_index": 0, "components": [
                {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://x.y/i.png"}}]}]}]}]}},
        {"type": "interactive", "interactive": {"type": "list", "header": {"type": "text", "text": "h"},
            "body": {"text": "b"}, "footer": {"text": "f"}, "action": {"button": "Pick", "sections": [
                {"title": "s", "rows": [{"id": "1", "title": "One", "description": "d"}]}]}}},
        {"type": "interactive", "interactive": {"type": "cta_url",
            "header": {"type": "image", "image": {"id": "1"}}, "body": {"text": "b"},
            "action": {"name": "cta_url", "parameters": {"display_text": "Go", "url": "https://x.y"}}}},
        {"type": "contacts", "contacts": [{"name": {"formatted_name": "A B", "first_name": "A"},
            "birthday": "2000-01-31", "phones": [{"phone": "+1 555", "type": "WORK", "wa_id": "1555"}],
            "emails": [{"email": "a@b.c"}], "urls": [{"url": "https://x.y"}], "org": {"company": "C"},
            "addresses": [{"city": "X", "country_code": "us"}]}]},
        {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.A",
         "typing_indicator": {"type": "text"}}
    ]);
    let bad = json!([
        {"body": {"type": "image", "image": {"link": "https://x.y/i.png", "provider": {"name": "p"}}},
         "expect": ["image.provider"]},
        {"body": {"type": "text", "text": {"body": "x"}, "preview_url": true, "ttl": 60, "render_mentions": true},
         "expect": ["preview_url", "render_mentions", "ttl"]},
        {"body": {"type": "template", "template": {"namespace": "ns", "name": "n",
            "language": {"code": "en", "policy": "deterministic", "fallback": "en"}, "components": [
                {"type": "header", "parameters": [{"type": "image", "image": {"id": "1", "caption": "no"}}]}]}},
         "expect": ["template.namespace", "template.language.policy", "template.language.fallback",
                    "template.components[0].parameters[0].image.caption"]},
        {"body": {"type": "hsm", "hsm": {"namespace": "ns", "element_name": "e",
            "language": {"policy": "fallback", "code": "en", "fallback": "en"},
            "localizable_params": [{"default": "x"}]}},
         "expect": ["hsm", "hsm.namespace", "hsm.element_name", "hsm.language.policy",
                    "hsm.language.fallback", "hsm.localizable_params"]},
        {"body": {"type": "audio", "audio": {"id": "1", "caption": "c", "filename": "a.mp3"},
            "sticker": {"id": "2", "caption": "c"}},
         "expect": ["audio.caption", "audio.filename", "sticker.caption"]},
        {"body": {"type": "contacts", "contacts": [{"name": {"formatted_name": "A", "nickname": "x"},
            "phones": [{"phone": "1", "label": "x"}]}]},
         "expect": ["contacts[0].name.nickname", "contacts[0].phones[0].label"]}
    ]);

    let with_envelope = |example: &Value| -> Value {
        let mut body = if example.get("status").is_some() {
            json!({})
        } else {
            envelope.clone()
        };
        if let (Some(body), Some(example)) = (body.as_object_mut(), example.as_object()) {
            body.extend(example.clone());
        }
        body
    };
    let mut problems = Vec::new();
    for example in good.as_array().into_iter().flatten() {
        let body = with_envelope(example);
        let found = cloud_send_violations(&body);
        if !found.is_empty() {
            problems.push(format!("good body reported {found:?}: {body}"));
        }
    }
    for case in bad.as_array().into_iter().flatten() {
        let body = with_envelope(&case["body"]);
        // Key order inside an object depends on serde_json features; compare sorted.
        let mut found = cloud_send_violations(&body);
        let mut expected: Vec<String> = case["expect"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_str().map(str::to_owned))
            .collect();
        found.sort();
        expected.sort();
        if found != expected {
            problems.push(format!(
                "bad body gave {found:?}, expected {expected:?}: {body}"
            ));
        }
    }
    if !problems.is_empty() {
        panic!(
            "cloud_keys_check self_check failed:\n{}",
            problems.join("\n")
        );
    }
}
