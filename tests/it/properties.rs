//! Property tests: arbitrary bytes and arbitrary JSON into every translation entry point. None
//! may panic; each either translates or refuses with an On-Premise-shaped error.
//! `PROPTEST_CASES` raises the count (default 2,000 per property here).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use waba_onprem_proxy::routes::route;
use waba_onprem_proxy::translate::errors::{cloud_to_onprem_error, onprem_error_for};
use waba_onprem_proxy::translate::messages::onprem_to_cloud_send;
use waba_onprem_proxy::translate::profile::onprem_to_cloud_business_profile;
use waba_onprem_proxy::translate::request::{cloud_to_onprem_response, onprem_to_cloud_request};
use waba_onprem_proxy::translate::templates::onprem_hsm_to_cloud_template;
use waba_onprem_proxy::translate::webhooks::{cloud_to_onprem_webhook, WebhookOptions};
use waba_onprem_proxy::translate::{parse_body, Meta, TranslateError};

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(2_000);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Keys the translators look at, so arbitrary objects reach deep code, not just the first check.
const KEYS: &[&str] = &[
    "to",
    "type",
    "text",
    "body",
    "preview_url",
    "hsm",
    "element_name",
    "language",
    "code",
    "policy",
    "fallback_lc",
    "localizable_params",
    "default",
    "currency",
    "currency_code",
    "amount_1000",
    "date_time",
    "component",
    "unix_epoch",
    "timestamp",
    "year",
    "month",
    "day_of_month",
    "hour",
    "minute",
    "template",
    "name",
    "namespace",
    "components",
    "parameters",
    "index",
    "image",
    "id",
    "link",
    "provider",
    "caption",
    "audio",
    "address",
    "email",
    "vertical",
    "websites",
    "entry",
    "changes",
    "field",
    "value",
    "messages",
    "statuses",
    "errors",
    "status",
    "recipient_id",
    "from",
    "error_data",
    "details",
    "error",
    "meta",
    "data",
    "success",
    "contacts",
    "system",
    "wa_id",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[ -~]{0,12}".prop_map(Value::from),
        prop::sample::select(vec![
            "text",
            "hsm",
            "template",
            "image",
            "audio",
            "read",
            "sent",
            "messages",
            "date_time",
            "currency",
            "button",
            "unsupported",
            "system"
        ])
        .prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS.to_vec()), inner), 0..8).prop_map(
                |pairs| {
                    Value::Object(
                        pairs
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), v))
                            .collect::<Map<_, _>>(),
                    )
                }
            ),
        ]
    })
}

fn assert_onprem_error(error: &TranslateError) {
    let onprem = onprem_error_for(error);
    assert!(matches!(onprem.status, 400 | 413), "{onprem:?}");
    let body = onprem.to_body(&Meta::new("v2.53.0"));
    assert!(body["errors"][0]["code"].is_i64() && body["errors"][0]["details"].is_string());
    assert_eq!(body["meta"]["api_status"], "stable");
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_as_a_send_translate_or_refuse(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        match parse_body(&bytes).and_then(onprem_to_cloud_send) {
            Ok(cloud) => prop_assert_eq!(&cloud["messaging_product"], &json!("whatsapp")),
            Err(e) => assert_onprem_error(&e),
        }
    }

    #[test]
    fn any_json_as_a_send_translate_or_refuse(value in json_value()) {
        match onprem_to_cloud_send(value.clone()) {
            Ok(cloud) => {
                prop_assert_eq!(&cloud["messaging_product"], &json!("whatsapp"));
                for onprem_only in ["preview_url", "render_mentions", "hsm"] {
                    prop_assert!(cloud.get(onprem_only).is_none());
                }
            }
            Err(e) => assert_onprem_error(&e),
        }
    }

    #[test]
    fn any_json_as_an_hsm_translates_or_refuses(value in json_value()) {
        match onprem_hsm_to_cloud_template(&value) {
            Ok(template) => prop_assert!(template["name"].is_string() && template["language"]["code"].is_string()),
            Err(e) => assert_onprem_error(&e),
        }
    }

    #[test]
    fn any_json_as_a_profile_translates_or_refuses(value in json_value()) {
        match onprem_to_cloud_business_profile(&value) {
            Ok(cloud) => prop_assert_eq!(&cloud["messaging_product"], &json!("whatsapp")),
            Err(e) => assert_onprem_error(&e),
        }
    }

    #[test]
    fn any_json_as_a_webhook_translates_or_refuses(value in json_value(), sent in any::<bool>(), delivered in any::<bool>(), read in any::<bool>()) {
        if let Ok(translation) = cloud_to_onprem_webhook(value.clone(), WebhookOptions { sent, delivered, read }) {
            for payload in translation.payloads {
                prop_assert!(payload.body.is_object());
                prop_assert!(payload.body.get("metadata").is_none());
            }
        }
    }

    #[test]
    fn any_upstream_error_answer_becomes_an_onprem_error(status in 300u16..600, body in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..128),
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
    ]) {
        let error = cloud_to_onprem_error(status, &body);
        prop_assert!((100..600).contains(&error.status));
        let shaped = error.to_body(&Meta::new("v2.53.0"));
        prop_assert!(shaped["errors"][0]["title"].is_string());
    }

    #[test]
    fn any_request_on_any_route_translates_or_refuses(
        method in prop::sample::select(vec!["GET", "POST", "PUT", "PATCH", "DELETE"]),
        path in prop::sample::select(vec!["/v1/messages", "/v1/messages/wamid.X%3D", "/v1/contacts", "/v1/health",
            "/v1/media/1", "/v1/settings/business/profile", "/v1/settings/profile/about", "/v1/configs/templates?limit=1",
            "/v1/settings/profile/photo?format=link", "/v1/account", "/v1/nope", "/v1/messages/%FF"]),
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        ],
        status in 100u16..600,
    ) {
        let meta = Meta::new("v2.53.0");
        let routed = route(method, path);
        if let Err(error) = onprem_to_cloud_request(&routed, method, path, &body, &meta) {
            prop_assert!((400..600).contains(&error.status));
        }
        // Whatever upstream answers, the reshaping never panics.
        let _ = cloud_to_onprem_response(&routed, status, &body, &meta);
    }
}

/// The hot path's translation (`translate::fast`) must agree with the general one wherever it
/// answers at all: same Cloud body as JSON. Over every send in the fixtures, and below over
/// generated sends and answers.
mod fast_path {
    use super::*;
    use std::path::Path;
    use waba_onprem_proxy::translate::fast;

    /// The Cloud body the general path makes of `body`, if it makes one.
    fn general(body: &[u8]) -> Option<Value> {
        onprem_to_cloud_send(parse_body(body).ok()?).ok()
    }

    /// Checks one body; returns whether the fast path took it. Both paths must give the same
    /// Cloud body and report the same On-Premise fields left behind.
    fn agree(body: &[u8]) -> bool {
        let Some((fast, dropped)) = fast::onprem_to_cloud_send_reporting(body) else {
            return false;
        };
        let fast: Value = serde_json::from_slice(&fast).expect("the fast path writes JSON");
        let general = general(body);
        assert_eq!(
            Some(&fast),
            general.as_ref(),
            "paths disagree on {}",
            String::from_utf8_lossy(body)
        );
        let onprem = parse_body(body).unwrap();
        assert_eq!(
            dropped.fields(),
            waba_onprem_proxy::translate::dryrun::dropped_fields(&onprem, &fast),
            "the paths report different dropped fields for {}",
            String::from_utf8_lossy(body)
        );
        true
    }

    /// Every send body among the fixtures (message fixtures, and requests to `/v1/messages`).
    fn fixture_sends() -> Vec<Vec<u8>> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        let mut sends = Vec::new();
        for area in ["messages", "requests", "corpus_requests"] {
            for entry in std::fs::read_dir(root.join(area)).unwrap() {
                let path = entry.unwrap().path();
                if !path.to_string_lossy().ends_with(".onprem.json") {
                    continue;
                }
                let value: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                if area == "messages" {
                    sends.push(serde_json::to_vec(&value).unwrap());
                } else if value["path"] == "/v1/messages" && value["method"] == "POST" {
                    sends.push(serde_json::to_vec(&value["body"]).unwrap());
                }
            }
        }
        sends
    }

    #[test]
    fn every_fixture_send_translates_the_same_on_both_paths() {
        let sends = fixture_sends();
        let taken = sends.iter().filter(|body| agree(body)).count();
        // The fast path is not dead code: the common sends among the fixtures take it.
        assert!(
            taken >= 10,
            "only {taken} of {} fixture sends took the fast path",
            sends.len()
        );
    }

    #[test]
    fn the_benchmarks_sends_take_the_fast_path() {
        for body in [
            r#"{"to":"15551234567","type":"text","preview_url":true,"text":{"body":"Your order #1234 has shipped"}}"#,
            r#"{"to":"15551234567","type":"image","image":{"id":"1037543291543636","caption":"Your receipt"}}"#,
        ] {
            assert!(agree(body.as_bytes()), "{body}");
        }
    }

    fn maybe<T: std::fmt::Debug>(
        value: impl Strategy<Value = T>,
    ) -> impl Strategy<Value = Option<T>> {
        prop::option::weighted(0.6, value)
    }

    fn sometimes<T: std::fmt::Debug>(
        probability: f64,
        value: impl Strategy<Value = T>,
    ) -> impl Strategy<Value = Option<T>> {
        prop::option::weighted(probability, value)
    }

    /// Mostly ordinary strings; sometimes escapes, emoji, a text at or past Cloud's limit, or
    /// not a string at all.
    fn string_ish() -> impl Strategy<Value = Value> {
        prop_oneof![
            12 => "[ -~]{0,8}".prop_map(Value::from),
            2 => "\\PC{0,6}".prop_map(Value::from),
            1 => Just(Value::from("é \" \\ \u{1F600} \n")),
            1 => Just(Value::from("x".repeat(4096))),
            1 => Just(Value::from("é".repeat(4097))),
            2 => scalar(),
        ]
    }

    /// Sends shaped like real ones, with every field sometimes odd.
    fn send() -> impl Strategy<Value = Value> {
        let kind = prop_oneof![
            6 => Just("text"), 3 => Just("image"), 1 => Just("audio"), 1 => Just("sticker"),
            1 => Just("video"), 1 => Just("document"), 1 => Just("hsm"), 1 => Just("location"),
        ];
        let media = (
            sometimes(0.7, string_ish()),
            sometimes(0.4, string_ish()),
            sometimes(0.5, string_ish()),
            sometimes(0.3, string_ish()),
            sometimes(0.1, Just(json!({"name": "p"}))),
        )
            .prop_map(|(id, link, caption, filename, provider)| {
                let mut m = Map::new();
                for (k, v) in [
                    ("id", id),
                    ("link", link),
                    ("caption", caption),
                    ("filename", filename),
                    ("provider", provider),
                ] {
                    if let Some(v) = v {
                        m.insert(k.into(), v);
                    }
                }
                Value::Object(m)
            });
        let text = (
            sometimes(0.9, string_ish()),
            sometimes(0.3, scalar()),
            sometimes(0.1, scalar()),
        )
            .prop_map(|(body, preview, extra)| {
                let mut t = Map::new();
                if let Some(b) = body {
                    t.insert("body".into(), b);
                }
                if let Some(p) = preview {
                    t.insert("preview_url".into(), p);
                }
                if let Some(e) = extra {
                    t.insert("extra".into(), e);
                }
                Value::Object(t)
            });
        let to = prop_oneof![8 => "[0-9+]{1,15}".prop_map(Value::from), 1 => string_ish()];
        (
            sometimes(0.9, kind),
            sometimes(0.95, to),
            sometimes(0.3, scalar()),
            sometimes(
                0.5,
                prop_oneof![3 => any::<bool>().prop_map(Value::from), 1 => scalar()],
            ),
            sometimes(0.9, text),
            sometimes(0.9, media),
            sometimes(
                0.3,
                prop::sample::select(vec![
                    "ttl",
                    "render_mentions",
                    "context",
                    "biz_opaque_callback_data",
                    "unknown",
                ]),
            ),
            scalar(),
        )
            .prop_map(
                |(kind, to, recipient_type, preview_url, text, media, extra, extra_value)| {
                    let mut m = Map::new();
                    if let Some(kind) = kind {
                        m.insert("type".into(), Value::from(kind));
                    }
                    let kind = kind.unwrap_or("text");
                    if let Some(to) = to {
                        m.insert("to".into(), to);
                    }
                    if let Some(r) = recipient_type {
                        m.insert("recipient_type".into(), r);
                    }
                    if let Some(p) = preview_url {
                        m.insert("preview_url".into(), p);
                    }
                    if let Some(t) = text.filter(|_| kind == "text" || fastrand_like(&m)) {
                        m.insert("text".into(), t);
                    }
                    if kind != "text" {
                        if let Some(md) = media {
                            m.insert(kind.into(), md);
                        }
                    }
                    if let Some(e) = extra {
                        m.insert(e.into(), extra_value);
                    }
                    Value::Object(m)
                },
            )
    }

    /// Whether a non-text send also carries a `text` object (a deterministic coin from the
    /// send's size, so generated cases replay).
    fn fastrand_like(m: &Map<String, Value>) -> bool {
        Value::Object(m.clone()).to_string().len().is_multiple_of(5)
    }

    #[test]
    fn a_good_share_of_generated_sends_take_the_fast_path() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = send();
        let taken = (0..2_000)
            .filter(|_| {
                let body = strategy.new_tree(&mut runner).unwrap().current();
                agree(body.to_string().as_bytes())
            })
            .count();
        // Otherwise the comparison below would mostly compare nothing (about a fifth take it: the
        // generator makes every field odd often, and the fast path declines anything odd).
        assert!(
            taken >= 300,
            "only {taken} of 2,000 generated sends took the fast path"
        );
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn generated_sends_translate_the_same_on_both_paths(body in send()) {
            agree(body.to_string().as_bytes());
        }

        #[test]
        fn generated_send_answers_read_the_same_on_both_paths(
            ids in prop::collection::vec("[ -~]{0,12}", 0..3),
            contacts in maybe(Just(json!([{"input": "+49 151", "wa_id": "49151"}]))),
            status in maybe(Just(Value::from("accepted"))),
        ) {
            let messages: Vec<Value> = ids
                .iter()
                .map(|id| match &status {
                    Some(s) => json!({"id": id, "message_status": s}),
                    None => json!({"id": id}),
                })
                .collect();
            let mut answer = json!({"messaging_product": "whatsapp", "messages": messages});
            if let Some(c) = contacts {
                answer["contacts"] = c;
            }
            let bytes = answer.to_string();
            let meta = Meta::new("v2.53.0");
            if let Some((fast, id)) = fast::cloud_to_onprem_send_response(bytes.as_bytes(), &meta) {
                let fast: Value = serde_json::from_slice(&fast).unwrap();
                let (status, general) = cloud_to_onprem_response(
                    &route("POST", "/v1/messages"), 200, bytes.as_bytes(), &meta).unwrap();
                prop_assert_eq!(status, 201);
                prop_assert_eq!(&fast, &general);
                prop_assert_eq!(Some(id.as_str()), general.pointer("/messages/0/id").and_then(Value::as_str));
            }
        }
    }
}
