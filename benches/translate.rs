//! Criterion benchmarks of the pure translations on the hot paths: a text send, an hsm with
//! three parameters (text, currency, date_time), a send answer, and a webhook with ten statuses.
//! `cargo bench --bench translate`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use serde_json::{json, Value};
use waba_onprem_proxy::translate::messages::{cloud_to_onprem_send_response, onprem_to_cloud_send};
use waba_onprem_proxy::translate::webhooks::{cloud_to_onprem_webhook, WebhookOptions};
use waba_onprem_proxy::translate::{parse_body, Meta};

// The allocator the proxy binary runs with (src/main.rs): allocation is most of these costs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn text() -> Value {
    json!({"to": "15551234567", "type": "text", "preview_url": true, "text": {"body": "Your order #1234 has shipped: https://shop.example/t/1234"}})
}

fn hsm() -> Value {
    json!({"to": "15551234567", "type": "hsm", "hsm": {"namespace": "c8ae5f90_307a_ca4c_b8f6_d1e2a2573574",
        "element_name": "order_update", "language": {"policy": "deterministic", "code": "en"},
        "localizable_params": [
            {"default": "Ann"},
            {"default": "$10.50", "currency": {"currency_code": "USD", "amount_1000": 10500}},
            {"default": "", "date_time": {"component": {"year": 2026, "month": 11, "day_of_month": 25, "hour": 9, "minute": 30}}}]}})
}

fn webhook_with_ten_statuses() -> Value {
    let statuses: Vec<Value> = (0..10)
        .map(|i| {
            let status = ["sent", "delivered", "read"][i % 3];
            json!({"id": format!("wamid.HBgLMTU1NTEyMzQ1NjcVAgARGBI{i}"), "status": status,
            "timestamp": "1700000000", "recipient_id": "15551234567",
            "conversation": {"id": "c1", "origin": {"type": "utility"}},
            "pricing": {"billable": true, "pricing_model": "CBP", "category": "utility"}})
        })
        .collect();
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages",
        "value": {"messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": "2"},
                  "statuses": statuses}}]}]})
}

fn benches(c: &mut Criterion) {
    let text_bytes = serde_json::to_vec(&text()).unwrap();
    c.bench_function("text send: parse + onprem_to_cloud_send + serialize", |b| {
        b.iter(|| {
            let body = parse_body(black_box(&text_bytes)).unwrap();
            serde_json::to_vec(&onprem_to_cloud_send(body).unwrap()).unwrap()
        })
    });
    let hsm_bytes = serde_json::to_vec(&hsm()).unwrap();
    c.bench_function(
        "hsm with 3 params: parse + onprem_to_cloud_send + serialize",
        |b| {
            b.iter(|| {
                let body = parse_body(black_box(&hsm_bytes)).unwrap();
                serde_json::to_vec(&onprem_to_cloud_send(body).unwrap()).unwrap()
            })
        },
    );
    // The translations alone, on already parsed bodies, taken by value as the hot paths do: the
    // copy each iteration needs is made in criterion's setup, outside the measured time.
    let text_value = text();
    c.bench_function("text send: onprem_to_cloud_send only", |b| {
        b.iter_batched(
            || text_value.clone(),
            |body| onprem_to_cloud_send(body).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let hsm_value = hsm();
    c.bench_function("hsm with 3 params: onprem_to_cloud_send only", |b| {
        b.iter_batched(
            || hsm_value.clone(),
            |body| onprem_to_cloud_send(body).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let webhook_value = webhook_with_ten_statuses();
    c.bench_function(
        "webhook with 10 statuses: cloud_to_onprem_webhook only",
        |b| {
            b.iter_batched(
                || webhook_value.clone(),
                |body| cloud_to_onprem_webhook(body, WebhookOptions::default()).unwrap(),
                BatchSize::SmallInput,
            )
        },
    );
    let answer = br#"{"messaging_product":"whatsapp","contacts":[{"input":"15551234567","wa_id":"15551234567"}],"messages":[{"id":"wamid.HBgLMTU1NTEyMzQ1NjcVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA","message_status":"accepted"}]}"#;
    let meta = Meta::new("v2.53.0");
    c.bench_function(
        "send answer: parse + cloud_to_onprem_send_response + serialize",
        |b| {
            b.iter(|| {
                let body: Value = serde_json::from_slice(black_box(answer)).unwrap();
                serde_json::to_vec(&cloud_to_onprem_send_response(body, &meta).unwrap()).unwrap()
            })
        },
    );
    let webhook_bytes = serde_json::to_vec(&webhook_with_ten_statuses()).unwrap();
    c.bench_function(
        "webhook with 10 statuses: parse + cloud_to_onprem_webhook",
        |b| {
            b.iter(|| {
                let body: Value = serde_json::from_slice(black_box(&webhook_bytes)).unwrap();
                cloud_to_onprem_webhook(body, WebhookOptions::default()).unwrap()
            })
        },
    );
}

criterion_group!(translate, benches);
criterion_main!(translate);
