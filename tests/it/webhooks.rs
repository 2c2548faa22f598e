//! The webhook relay through the running proxy: Cloud posts in, On-Premise payloads out to an
//! in-process legacy receiver that fails on demand.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::Duration;

use crate::support::mock_upstream::{Behaviour, MockUpstream};
use crate::support::proxy::{
    patch_application_settings, send, send_json, set_webhook, spawn_proxy_with, TestProxy,
};
use crate::support::Backend;
use bytes::Bytes;
use serde_json::{json, Value};
use waba_onprem_proxy::config::Config;

pub(crate) const SECRET: &str = "cloud-to-proxy-secret";

pub(crate) fn text_event(wa_id: &str, id: &str, body: &str) -> Value {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{"field": "messages",
        "value": {"messaging_product": "whatsapp",
                  "metadata": {"display_phone_number": "15550001111", "phone_number_id": "106540352242922"},
                  "contacts": [{"profile": {"name": "Kerry"}, "wa_id": wa_id}],
                  "messages": [{"from": wa_id, "id": id, "timestamp": "1669233778", "type": "text", "text": {"body": body}}]}}]}]})
}

pub(crate) fn status_event(wa_id: &str, id: &str, status: &str) -> Value {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages",
        "value": {"messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": "2"},
                  "statuses": [{"id": id, "status": status, "timestamp": "1669233779", "recipient_id": wa_id}]}}]}]})
}

pub(crate) fn receiver_ok() -> Behaviour {
    Behaviour::Json {
        status: 200,
        body: json!({}),
    }
}

fn receiver_down() -> Behaviour {
    Behaviour::Respond {
        status: 503,
        headers: vec![],
        body: Bytes::from_static(b"down"),
    }
}

pub(crate) async fn relay_proxy(
    db: &Backend,
    receiver: &MockUpstream,
    tune: impl FnOnce(&mut Config),
) -> TestProxy {
    let hook = format!("{}/hook", receiver.url());
    spawn_proxy_with("http://127.0.0.1:9", |c| {
        c.database = db.database();
        c.legacy_webhook_url = Some(hook);
        c.webhook_secret = Some(SECRET.into());
        c.admin_token = Some("admin-token".into());
        // Retries in tens of milliseconds keep the suite fast; the spacing itself is unit-tested.
        c.webhook_retry_base = Duration::from_millis(50);
        tune(c);
    })
    .await
}

/// A legacy receiver that gives `answers` in turn, then `then` to every later delivery.
pub(crate) async fn legacy_receiver(
    answers: impl IntoIterator<Item = Behaviour>,
    then: Behaviour,
) -> MockUpstream {
    let receiver = MockUpstream::start().await;
    for answer in answers {
        receiver.push(answer);
    }
    receiver.set_default(then);
    receiver
}

/// Cloud posting `event` on the `default` channel with the right secret: the status it got.
async fn deliver(proxy: &TestProxy, event: &Value) -> u16 {
    post_event(proxy, "default", Some(SECRET), event).await
}

pub(crate) async fn post_event(
    proxy: &TestProxy,
    channel: &str,
    secret: Option<&str>,
    event: &Value,
) -> u16 {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(secret) = secret {
        headers.push(("x-webhook-secret", secret));
    }
    send(
        proxy,
        "POST",
        &format!("/cloud-webhooks/{channel}"),
        &headers,
        &event.to_string(),
    )
    .await
    .status
}

/// A proxy that registers its own inbound URL upstream when a client sets its webhook.
pub(crate) async fn registering_proxy(db: &Backend, upstream: &MockUpstream) -> TestProxy {
    spawn_proxy_with(&upstream.url(), |c| {
        c.database = db.database();
        c.public_url = Some("https://proxy.example.com".into())
    })
    .await
}

/// A registering proxy whose upstream accepts every registration, and a legacy receiver that
/// takes every delivery: `(upstream, receiver, proxy)`.
async fn registering_relay(db: &Backend) -> (MockUpstream, MockUpstream, TestProxy) {
    let upstream = MockUpstream::start().await;
    upstream.set_default(Behaviour::Json {
        status: 200,
        body: json!({"url": "ok"}),
    });
    let receiver = legacy_receiver([], receiver_ok()).await;
    let proxy = registering_proxy(db, &upstream).await;
    (upstream, receiver, proxy)
}

/// The relay's counters once nothing is pending (or after 10 s, for the assertion to show).
async fn settled_stats(proxy: &TestProxy) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, stats) = admin(proxy, "GET", "/admin/webhooks/stats").await;
        if stats["pending"] == 0 || tokio::time::Instant::now() > deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn admin(proxy: &TestProxy, method: &str, path: &str) -> (u16, Value) {
    let answer = send(
        proxy,
        method,
        path,
        &[("authorization", "Bearer admin-token")],
        "",
    )
    .await;
    (answer.status, answer.json())
}

async fn a_cloud_message_reaches_the_legacy_url_in_on_premise_shape(db: Backend) {
    let receiver = legacy_receiver([], receiver_ok()).await;
    let proxy = relay_proxy(&db, &receiver, |_| {}).await;
    assert_eq!(
        deliver(&proxy, &text_event("16315551234", "wamid.A1", "hi")).await,
        200
    );
    let got = receiver.wait_for_requests(1).await;
    assert_eq!(
        (got[0].method.as_str(), got[0].path_and_query.as_str()),
        ("POST", "/hook")
    );
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    assert!(got[0].header("x-webhook-id").is_some());
    assert_eq!(
        got[0].json(),
        json!({"contacts": [{"profile": {"name": "Kerry"}, "wa_id": "16315551234"}],
               "messages": [{"from": "16315551234", "id": "wamid.A1", "timestamp": "1669233778", "type": "text", "text": {"body": "hi"}}]})
    );
}

async fn posts_without_the_secret_or_too_large_are_refused_and_not_stored(db: Backend) {
    let receiver = legacy_receiver([], receiver_ok()).await;
    let proxy = relay_proxy(&db, &receiver, |c| c.max_webhook_bytes = 2048).await;
    let event = text_event("1", "wamid.X", "x");
    assert_eq!(post_event(&proxy, "default", None, &event).await, 401);
    assert_eq!(
        post_event(&proxy, "default", Some("wrong"), &event).await,
        401
    );
    assert_eq!(post_event(&proxy, "nope", Some(SECRET), &event).await, 404);
    assert_eq!(
        deliver(&proxy, &text_event("1", "wamid.Y", &"x".repeat(3000))).await,
        413
    );
    let (_, stats) = admin(&proxy, "GET", "/admin/webhooks/stats").await;
    assert_eq!(
        (stats["pending"].as_i64(), stats["delivered"].as_i64()),
        (Some(0), Some(0))
    );
    assert!(receiver.requests().is_empty());
}

async fn a_receiver_outage_is_ridden_out_with_retries(db: Backend) {
    let receiver = legacy_receiver([receiver_down(), receiver_down()], receiver_ok()).await;
    let proxy = relay_proxy(&db, &receiver, |_| {}).await;
    assert_eq!(
        deliver(&proxy, &text_event("1", "wamid.R", "retry me")).await,
        200
    );
    let got = receiver.wait_for_requests(3).await;
    let ids: Vec<_> = got
        .iter()
        .map(|r| r.header("x-webhook-id").unwrap().to_owned())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "X-Webhook-Id must be stable across retries: {ids:?}"
    );
    assert_eq!(got[2].json()["messages"][0]["id"], "wamid.R");
    // The outcome is recorded just after the receiver answered.
    let stats = settled_stats(&proxy).await;
    assert_eq!(
        (stats["pending"].as_i64(), stats["delivered"].as_i64()),
        (Some(0), Some(1))
    );
}

async fn upstream_resends_are_delivered_once(db: Backend) {
    let receiver = legacy_receiver([], receiver_ok()).await;
    let proxy = relay_proxy(&db, &receiver, |_| {}).await;
    let event = status_event("1", "wamid.D", "delivered");
    assert_eq!(deliver(&proxy, &event).await, 200);
    assert_eq!(deliver(&proxy, &event).await, 200);
    // A later event for the same recipient: once it is in, the duplicate would have been too.
    assert_eq!(
        deliver(&proxy, &status_event("1", "wamid.D", "read")).await,
        200
    );
    let got = receiver.wait_for_requests(2).await;
    let (_, stats) = admin(&proxy, "GET", "/admin/webhooks/stats").await;
    assert_eq!(stats["duplicates"].as_i64(), Some(1));
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].json()["statuses"][0]["status"], "delivered");
    assert_eq!(got[1].json()["statuses"][0]["status"], "read");
    assert_eq!(got[1].json()["statuses"][0]["type"], "message");
}

async fn a_read_never_overtakes_its_delivered_but_other_recipients_do_not_wait(db: Backend) {
    // The first delivery (A's `delivered`) fails once.
    let receiver = legacy_receiver([receiver_down()], receiver_ok()).await;
    // A full second before A's retry: B, posted meanwhile, is certainly delivered first.
    let proxy = relay_proxy(&db, &receiver, |c| {
        c.webhook_retry_base = Duration::from_secs(1)
    })
    .await;
    assert_eq!(
        deliver(&proxy, &status_event("A", "wamid.1", "delivered")).await,
        200
    );
    receiver.wait_for_requests(1).await;
    assert_eq!(
        deliver(&proxy, &status_event("A", "wamid.1", "read")).await,
        200
    );
    assert_eq!(
        deliver(&proxy, &status_event("B", "wamid.2", "delivered")).await,
        200
    );
    let got = receiver.wait_for_requests(4).await;
    let order: Vec<(String, String)> = got
        .iter()
        .map(|r| {
            let status = &r.json()["statuses"][0];
            (
                status["recipient_id"].as_str().unwrap().to_owned(),
                status["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    // B went out while A's first event was still being retried; A's read came after its delivered.
    assert_eq!(order[0], ("A".into(), "delivered".into()));
    assert_eq!(order[1], ("B".into(), "delivered".into()));
    assert_eq!(
        &order[2..],
        [
            ("A".into(), "delivered".into()),
            ("A".into(), "read".into())
        ]
    );
}

async fn undeliverable_events_go_to_the_dead_letter_table_and_can_be_replayed(db: Backend) {
    let receiver = legacy_receiver([], receiver_down()).await;
    let proxy = relay_proxy(&db, &receiver, |c| c.webhook_retry_period = Duration::ZERO).await;
    assert_eq!(
        deliver(&proxy, &text_event("1", "wamid.Dead", "x")).await,
        200
    );
    receiver.wait_for_requests(1).await;
    let dead = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let (_, dead) = admin(&proxy, "GET", "/admin/webhooks/dead").await;
            if !dead["dead"].as_array().unwrap().is_empty() {
                return dead;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("dead-lettered");
    let entry = &dead["dead"][0];
    assert_eq!(entry["payload"]["messages"][0]["id"], "wamid.Dead");
    assert!(entry["reason"].as_str().unwrap().contains("503"));

    receiver.set_default(receiver_ok());
    let (status, _) = admin(
        &proxy,
        "POST",
        &format!("/admin/webhooks/dead/{}/replay", entry["id"]),
    )
    .await;
    assert_eq!(status, 200);
    let got = receiver.wait_for_requests(2).await;
    assert_eq!(
        got.last().unwrap().json()["messages"][0]["id"],
        "wamid.Dead"
    );
    // Replaying what is not (or no longer) a dead letter: an On-Premise error, meta included.
    let (status, body) = admin(&proxy, "POST", "/admin/webhooks/dead/999999/replay").await;
    assert_eq!(status, 404);
    assert_eq!(body["errors"][0]["code"], 1006);
    assert_eq!(body["meta"]["api_status"], "stable");
}

async fn admin_routes_need_the_token_and_do_not_exist_without_one(db: Backend) {
    let receiver = MockUpstream::start().await;
    let with_token = relay_proxy(&db, &receiver, |_| {}).await;
    let wrong = send(
        &with_token,
        "GET",
        "/admin/webhooks/stats",
        &[("authorization", "Bearer nope")],
        "",
    )
    .await;
    assert_eq!(wrong.status, 401);
    // Admin errors are On-Premise-shaped like every other, `meta` included.
    assert_eq!(wrong.json()["errors"][0]["code"], 1005);
    assert_eq!(wrong.json()["meta"]["api_status"], "stable");
    // RFC 9110: the scheme in any case, any run of spaces.
    let lower = send(
        &with_token,
        "GET",
        "/admin/webhooks/stats",
        &[("authorization", "bearer   admin-token")],
        "",
    )
    .await;
    assert_eq!(lower.status, 200, "{:?}", lower.body);
    let without = relay_proxy(&db, &receiver, |c| c.admin_token = None).await;
    for (method, path) in [
        ("GET", "/admin/webhooks/stats"),
        ("GET", "/admin/webhooks/dead"),
        ("POST", "/admin/webhooks/dead/1/replay"),
        ("GET", "/admin/dry-run/report"),
    ] {
        let absent = send(
            &without,
            method,
            path,
            &[("authorization", "Bearer admin-token")],
            "",
        )
        .await;
        assert_eq!(absent.status, 404, "{path}");
        assert_eq!(absent.json()["meta"]["api_status"], "stable");
    }
}

async fn a_client_setting_its_webhook_registers_the_proxy_upstream_and_receives_through_it(
    db: Backend,
) {
    let (upstream, receiver, proxy) = registering_relay(&db).await;
    let legacy = format!("{}/crm/whatsapp", receiver.url());
    let set = set_webhook(
        &proxy,
        &json!({"url": legacy, "headers": {"X-Crm-Token": "crm-secret"}}).to_string(),
    )
    .await;
    assert_eq!(set.status, 200, "{:?}", set.body);

    let registration = &upstream.requests()[0];
    assert_eq!(registration.path_and_query, "/v1/configs/webhook");
    let body = registration.json();
    let inbound = body["url"].as_str().unwrap().to_owned();
    let secret = body["headers"]["X-Webhook-Secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        inbound.starts_with("https://proxy.example.com/cloud-webhooks/k"),
        "{inbound}"
    );
    assert!(
        !inbound.contains(crate::support::proxy::API_KEY),
        "the API key must not appear in the URL"
    );

    let read = send_json(&proxy, "GET", "/v1/configs/webhook", "").await;
    assert_eq!(read.json()["url"], legacy.as_str());

    let channel = inbound.rsplit('/').next().unwrap();
    assert_eq!(
        post_event(
            &proxy,
            channel,
            Some(&secret),
            &text_event("5", "wamid.C", "via channel")
        )
        .await,
        200
    );
    let got = receiver.wait_for_requests(1).await;
    assert_eq!(got[0].path_and_query, "/crm/whatsapp");
    assert_eq!(got[0].header("x-crm-token"), Some("crm-secret"));
    assert_eq!(got[0].json()["messages"][0]["id"], "wamid.C");
}

async fn without_a_public_url_webhook_registration_is_a_clear_501(db: Backend) {
    let upstream = MockUpstream::start().await;
    let proxy = spawn_proxy_with(&upstream.url(), |c| c.database = db.database()).await;
    let set = set_webhook(&proxy, r#"{"url": "https://crm.example/hook"}"#).await;
    assert_eq!(set.status, 501);
    assert!(set.json()["errors"][0]["details"]
        .as_str()
        .unwrap()
        .contains("--public-url"));
    assert!(upstream.requests().is_empty());
}

async fn sent_status_off_in_application_settings_drops_sent_statuses(db: Backend) {
    let (upstream, receiver, proxy) = registering_relay(&db).await;
    let patch =
        json!({"webhooks": {"url": format!("{}/hook", receiver.url())}, "sent_status": false});
    let set = patch_application_settings(&proxy, &patch.to_string()).await;
    assert_eq!(set.status, 200, "{:?}", set.body);

    let sent = status_event("7", "wamid.S", "sent");
    assert_eq!(post_registered(&proxy, &upstream, &sent).await, 200);
    let delivered = status_event("7", "wamid.S", "delivered");
    assert_eq!(post_registered(&proxy, &upstream, &delivered).await, 200);
    let got = receiver.wait_for_requests(1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["statuses"][0]["status"], "delivered");
}

/// The channel name and secret the proxy registered upstream (its first registration).
pub(crate) fn registered_channel(upstream: &MockUpstream) -> (String, String) {
    let registration = upstream
        .requests()
        .into_iter()
        .find(|r| r.path() == "/v1/configs/webhook")
        .expect("the proxy registered its inbound URL")
        .json();
    let channel = registration["url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let secret = registration["headers"]["X-Webhook-Secret"]
        .as_str()
        .unwrap()
        .to_owned();
    (channel, secret)
}

/// Cloud posting `event` on the channel the proxy registered upstream, with its secret.
pub(crate) async fn post_registered(
    proxy: &TestProxy,
    upstream: &MockUpstream,
    event: &Value,
) -> u16 {
    let (channel, secret) = registered_channel(upstream);
    post_event(proxy, &channel, Some(&secret), event).await
}

/// On-Premise 2.41.2's `webhooks.message.*` filter statuses like `sent_status`, and resetting
/// the application settings relays everything again.
async fn webhooks_message_read_off_drops_read_statuses_until_the_settings_are_reset(db: Backend) {
    let (upstream, receiver, proxy) = registering_relay(&db).await;
    let patch = json!({"webhooks": {"url": format!("{}/hook", receiver.url()),
                                    "message": {"sent": true, "delivered": true, "read": false}}});
    let set = patch_application_settings(&proxy, &patch.to_string()).await;
    assert_eq!(set.status, 200, "{:?}", set.body);
    let post = |id: &'static str, status: &'static str| {
        let (proxy, upstream) = (&proxy, &upstream);
        async move { post_registered(proxy, upstream, &status_event("7", id, status)).await }
    };

    // Per recipient, events go out in order: a read that was kept would arrive first.
    assert_eq!(post("wamid.R", "read").await, 200);
    assert_eq!(post("wamid.R", "delivered").await, 200);
    let got = receiver.wait_for_requests(1).await;
    assert_eq!(got[0].json()["statuses"][0]["status"], "delivered");

    let reset = send_json(&proxy, "DELETE", "/v1/settings/application", "").await;
    assert_eq!(reset.status, 200, "{:?}", reset.body);
    assert_eq!(post("wamid.R2", "read").await, 200);
    let got = receiver.wait_for_requests(2).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].json()["statuses"][0]["status"], "read");
}

/// A single-channel sidecar delivers everything through `default`: the client's status choices
/// apply there.
async fn a_sidecar_s_default_channel_follows_the_client_s_status_choices(db: Backend) {
    let receiver = legacy_receiver([], receiver_ok()).await;
    let proxy = relay_proxy(&db, &receiver, |_| {}).await;
    let set = patch_application_settings(&proxy, r#"{"sent_status": false}"#).await;
    assert_eq!(set.status, 200, "{:?}", set.body);
    for status in ["sent", "delivered"] {
        let event = status_event("7", "wamid.D", status);
        assert_eq!(deliver(&proxy, &event).await, 200);
    }
    let got = receiver.wait_for_requests(1).await;
    assert_eq!(got[0].json()["statuses"][0]["status"], "delivered");
}

async fn events_stored_before_a_restart_are_delivered_after_it(db: Backend) {
    let receiver = legacy_receiver([], receiver_down()).await;
    let data_dir = std::env::temp_dir().join(format!("relay-restart-{}", uuid::Uuid::new_v4()));
    let dir = data_dir.clone();
    let mut first = relay_proxy(&db, &receiver, move |c| c.data_dir = dir).await;
    assert_eq!(
        deliver(&first, &text_event("9", "wamid.Keep", "survive")).await,
        200
    );
    receiver.wait_for_requests(1).await;
    first.shutdown();
    tokio::time::timeout(Duration::from_secs(10), first.server)
        .await
        .unwrap()
        .unwrap();

    receiver.set_default(receiver_ok());
    let dir = data_dir.clone();
    let _second = relay_proxy(&db, &receiver, move |c| c.data_dir = dir).await;
    let got = receiver.wait_for_requests(2).await;
    assert_eq!(
        got.last().unwrap().json()["messages"][0]["id"],
        "wamid.Keep"
    );
}

async fn an_upstream_refusing_the_webhook_registration_answers_the_client_on_premise_style(
    db: Backend,
) {
    let upstream = MockUpstream::start().await;
    upstream.push(Behaviour::Json {
        status: 401,
        body: json!({"error": "Invalid api key"}),
    });
    let proxy = registering_proxy(&db, &upstream).await;
    let set = set_webhook(&proxy, r#"{"url": "https://crm.example/hook"}"#).await;
    assert_eq!((set.status, set.onprem_error_code()), (401, 1005));
    assert_eq!(set.json()["errors"][0]["details"], "Invalid api key");
}

on_both_backends!(
    a_cloud_message_reaches_the_legacy_url_in_on_premise_shape,
    posts_without_the_secret_or_too_large_are_refused_and_not_stored,
    a_receiver_outage_is_ridden_out_with_retries,
    upstream_resends_are_delivered_once,
    a_read_never_overtakes_its_delivered_but_other_recipients_do_not_wait,
    undeliverable_events_go_to_the_dead_letter_table_and_can_be_replayed,
    admin_routes_need_the_token_and_do_not_exist_without_one,
    a_client_setting_its_webhook_registers_the_proxy_upstream_and_receives_through_it,
    without_a_public_url_webhook_registration_is_a_clear_501,
    sent_status_off_in_application_settings_drops_sent_statuses,
    webhooks_message_read_off_drops_read_statuses_until_the_settings_are_reset,
    a_sidecar_s_default_channel_follows_the_client_s_status_choices,
    events_stored_before_a_restart_are_delivered_after_it,
    an_upstream_refusing_the_webhook_registration_answers_the_client_on_premise_style,
);
