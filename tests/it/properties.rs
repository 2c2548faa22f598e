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
