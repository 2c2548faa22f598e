//! The Graph dialect end to end: an On-Premise client in front of a mock of Meta's Graph API
//! (which refuses anything without the right version, phone-number id and bearer token), and
//! a Meta app posting signed webhooks for several numbers to one URL.
//!
//! Shapes: Meta's OpenAPI document for the Cloud API (`business-messaging-api_v23.0.yaml`:
//! `/{Version}/{Phone-Number-ID}/messages`, `/media`, `/{Media-ID}`,
//! `/whatsapp_business_profile`, `/{WABA-ID}/message_templates`), Meta's resumable upload
//! reference (`/{app-id}/uploads`, `/upload:<id>` with `Authorization: OAuth`), and Meta's
//! webhook reference (`hub.*` verification, `X-Hub-Signature-256`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use waba_onprem_proxy::config::{Config, Dialect};

use crate::support::mock_graph::{graph_error, GraphAccount, MockGraph};
use crate::support::mock_upstream::{Behaviour, MockUpstream};
use crate::support::proxy::{
    basic_auth, password_sha256, send, send_bytes, send_json, send_text, spawn_proxy_with, Answer,
    TestProxy, API_KEY, TEXT_MESSAGE,
};
use crate::webhooks::{admin, legacy_receiver, receiver_ok, text_event};

/// Meta's example ids (the OpenAPI document's).
const PHONE: &str = "106540352242922";
const WABA: &str = "102290129340398";
const APP: &str = "1234567890";
const TOKEN: &str = "EAAGraphSystemUserToken0123456789";
const APP_SECRET: &str = "app-secret-8d1f2c";
const VERIFY_TOKEN: &str = "verify-me-41a7";
/// A second number of the same app.
const PHONE_2: &str = "106540352242923";
const TOKEN_2: &str = "EAAGraphSecondNumberToken987";
const API_KEY_2: &str = "SECOND-CLIENT-KEY-55aa";

fn graph_account(phone: &str, token: &str) -> GraphAccount {
    GraphAccount {
        phone_number_id: phone.into(),
        waba_id: WABA.into(),
        access_token: token.into(),
        graph_version: "v23.0".into(),
        app_id: APP.into(),
    }
}

/// An accounts file: `API_KEY` (and user `admin`) act for `PHONE`; `API_KEY_2` for `PHONE_2`.
/// The first token comes from a file, as an operator would keep it.
fn accounts_file() -> std::path::PathBuf {
    accounts_file_with(APP_SECRET)
}

/// As [`accounts_file`], the second number belonging to an app with `second_app_secret`.
fn accounts_file_with(second_app_secret: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("graph-accounts-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    let accounts = json!({"accounts": [
        {"name": "shop", "api_keys": [API_KEY], "users": {"admin": {"password_sha256": password_sha256("pw-1")}},
         "phone_number_id": PHONE, "waba_id": WABA, "access_token_file": dir.join("token"),
         "graph_version": "v23.0", "app_id": APP, "app_secret": APP_SECRET, "verify_token": VERIFY_TOKEN},
        {"name": "second", "api_keys": [API_KEY_2], "phone_number_id": PHONE_2, "waba_id": WABA,
         "access_token": TOKEN_2, "app_id": APP, "app_secret": second_app_secret}
    ]});
    let path = dir.join("accounts.json");
    std::fs::write(&path, accounts.to_string()).unwrap();
    path
}

async fn graph_proxy(graph: &MockGraph, tune: impl FnOnce(&mut Config)) -> TestProxy {
    graph_proxy_with(graph, accounts_file(), tune).await
}

async fn graph_proxy_with(
    graph: &MockGraph,
    accounts: std::path::PathBuf,
    tune: impl FnOnce(&mut Config),
) -> TestProxy {
    spawn_proxy_with(&graph.url(), |c| {
        c.dialect = Dialect::Graph;
        c.accounts = Some(accounts);
        c.token_hosts = vec!["127.0.0.1".into()];
        c.admin_token = Some("admin-token".into());
        c.webhook_retry_base = Duration::from_millis(50);
        tune(c);
    })
    .await
}

async fn graph_and_proxy() -> (MockGraph, TestProxy) {
    let graph = MockGraph::start(vec![
        graph_account(PHONE, TOKEN),
        graph_account(PHONE_2, TOKEN_2),
    ])
    .await;
    let proxy = graph_proxy(&graph, |_| {}).await;
    (graph, proxy)
}

/// What posts Cloud's webhooks, in each dialect.
enum Cloud<'a> {
    /// 360dialog: to the channel the proxy registered, with its `X-Webhook-Secret`.
    WabaV2(&'a MockUpstream),
    /// A Meta app: to its one URL, signed with the app secret.
    Graph,
}

impl Cloud<'_> {
    /// 360dialog accepts the proxy's registration of its inbound URL (Graph has none).
    fn accepts_the_registration(&self) {
        if let Cloud::WabaV2(upstream) = self {
            upstream.push(Behaviour::Json {
                status: 200,
                body: json!({"url": "ok"}),
            });
        }
    }

    async fn post_webhook(&self, proxy: &TestProxy, event: &Value) -> u16 {
        match self {
            Cloud::WabaV2(upstream) => {
                crate::webhooks::post_registered(proxy, upstream, event).await
            }
            Cloud::Graph => {
                signed_post(proxy, &event.to_string(), APP_SECRET)
                    .await
                    .status
            }
        }
    }
}

/// `X-Hub-Signature-256` of `body` as Meta's app with `secret` signs it.
pub(crate) fn signature(body: &[u8], secret: &str) -> String {
    let hex = waba_onprem_proxy::secret::hmac_hex(secret.as_bytes(), body);
    format!("sha256={hex}")
}

async fn signed_post(proxy: &TestProxy, body: &str, secret: &str) -> Answer {
    let signature = signature(body.as_bytes(), secret);
    send(
        proxy,
        "POST",
        "/cloud-webhooks/meta",
        &[
            ("content-type", "application/json"),
            ("x-hub-signature-256", &signature),
        ],
        body,
    )
    .await
}

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n-not-really-an-image-but-bytes-0123456789";

/// One On-Premise client's day: sends, a media round trip, the profile, its webhook, and an
/// inbound message relayed to it. Only what the client sees is asserted here: it must be the
/// same whichever dialect the proxy speaks upstream.
async fn client_session(proxy: &TestProxy, cloud: Cloud<'_>) {
    let text = send_json(
        proxy,
        "POST",
        "/v1/messages",
        r#"{"to":"15551234567","type":"text","preview_url":true,"text":{"body":"hello"}}"#,
    )
    .await;
    assert_eq!(text.status, 201, "{:?}", text.body);
    assert!(text.json()["messages"][0]["id"]
        .as_str()
        .unwrap()
        .starts_with("wamid."));

    let hsm = send_json(
        proxy,
        "POST",
        "/v1/messages",
        &json!({"to": "15551234567", "type": "hsm", "hsm": {
            "namespace": "ns", "element_name": "order_update",
            "language": {"policy": "deterministic", "code": "en"},
            "localizable_params": [{"default": "A-17"}]}})
        .to_string(),
    )
    .await;
    assert_eq!(hsm.status, 201, "{:?}", hsm.body);

    let key = [("D360-API-KEY", API_KEY), ("content-type", "image/png")];
    let uploaded = send_bytes(proxy, "POST", "/v1/media", &key, Bytes::from_static(PNG)).await;
    assert_eq!(uploaded.status, 201, "{:?}", uploaded.body);
    let media_id = uploaded.json()["media"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/v1/media/{media_id}");
    let key = [("D360-API-KEY", API_KEY)];
    let downloaded = send(proxy, "GET", &path, &key, "").await;
    assert_eq!(downloaded.status, 200, "{:?}", downloaded.body);
    assert_eq!(&downloaded.body[..], PNG);
    assert_eq!(downloaded.headers["content-type"], "image/png");
    assert_eq!(send(proxy, "DELETE", &path, &key, "").await.status, 200);
    let gone = send(proxy, "GET", &path, &key, "").await;
    assert_eq!((gone.status, gone.onprem_error_code()), (404, 1006));

    let profile = send_json(proxy, "GET", "/v1/settings/business/profile", "").await;
    assert_eq!(profile.status, 200, "{:?}", profile.body);
    assert!(profile.json()["settings"]["business"]["profile"].is_object());
    let changed = send_json(
        proxy,
        "POST",
        "/v1/settings/business/profile",
        r#"{"address": "Main St 1", "description": "Shop", "email": "a@b.example", "vertical": "Retail", "websites": ["https://shop.example"]}"#,
    )
    .await;
    assert_eq!(changed.status, 200, "{:?}", changed.body);

    // Answered by the proxy itself, in either dialect.
    let contacts = send_json(
        proxy,
        "POST",
        "/v1/contacts",
        r#"{"blocking":"wait","contacts":["+4915112345678"],"force_check":true}"#,
    )
    .await;
    assert_eq!(contacts.status, 200, "{:?}", contacts.body);
    assert_eq!(contacts.json()["contacts"][0]["wa_id"], "4915112345678");
    let health = send_json(proxy, "GET", "/v1/health", "").await;
    assert_eq!(health.status, 200, "{:?}", health.body);

    let receiver = legacy_receiver([], receiver_ok()).await;
    cloud.accepts_the_registration();
    let settings = send_json(
        proxy,
        "PATCH",
        "/v1/settings/application",
        &json!({"webhooks": {"url": format!("{}/crm", receiver.url())}}).to_string(),
    )
    .await;
    assert_eq!(settings.status, 200, "{:?}", settings.body);
    let read = send_json(proxy, "GET", "/v1/settings/application", "").await;
    assert_eq!(
        read.json()["settings"]["application"]["webhooks"]["url"],
        format!("{}/crm", receiver.url())
    );

    let event = text_event("4915112345678", "wamid.IN1", "hi shop");
    assert_eq!(cloud.post_webhook(proxy, &event).await, 200);
    let got = receiver.wait_for_requests(1).await;
    assert_eq!(got[0].path_and_query, "/crm");
    let delivered = got[0].json();
    assert_eq!(delivered["messages"][0]["text"]["body"], "hi shop");
    assert_eq!(delivered["contacts"][0]["wa_id"], "4915112345678");
}

#[tokio::test]
async fn the_client_session_passes_against_waba_v2() {
    let upstream = MockUpstream::start().await;
    let proxy = spawn_proxy_with(&upstream.url(), |c| {
        c.public_url = Some("https://proxy.example.com".into());
    })
    .await;
    client_session(&proxy, Cloud::WabaV2(&upstream)).await;
}

#[tokio::test]
async fn the_client_session_passes_against_graph() {
    let (graph, proxy) = graph_and_proxy().await;
    client_session(&proxy, Cloud::Graph).await;
    // Every call went to the account's versioned paths with its token, and nothing the client
    // presented went along.
    for request in graph.requests() {
        assert!(request.path().starts_with("/v23.0/"), "{}", request.path());
        assert!(request.header("d360-api-key").is_none());
        let authorization = request.header("authorization").unwrap();
        assert!(
            authorization == format!("Bearer {TOKEN}") || authorization == format!("OAuth {TOKEN}"),
            "{authorization}"
        );
    }
    let paths: Vec<String> = graph
        .requests()
        .iter()
        .map(|r| r.path().to_owned())
        .collect();
    // A media id travels with the number it belongs to, so Graph refuses another number's.
    let lookups: Vec<String> = graph
        .requests()
        .iter()
        .filter(|r| {
            r.path().starts_with("/v23.0/") && r.path()[7..].bytes().all(|b| b.is_ascii_digit())
        })
        .map(|r| r.path_and_query.clone())
        .collect();
    assert!(!lookups.is_empty());
    for lookup in &lookups {
        assert!(
            lookup.ends_with(&format!("?phone_number_id={PHONE}")),
            "{lookup}"
        );
    }
    assert!(
        paths.contains(&format!("/v23.0/{PHONE}/messages")),
        "{paths:?}"
    );
    assert!(
        paths.contains(&format!("/v23.0/{PHONE}/media")),
        "{paths:?}"
    );
    assert!(
        paths.contains(&format!("/v23.0/{PHONE}/whatsapp_business_profile")),
        "{paths:?}"
    );
    // The media bytes came from the CDN, fetched with the account's token.
    let cdn = graph.cdn_requests();
    assert_eq!(cdn.len(), 1);
    assert_eq!(
        cdn[0].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
}

#[tokio::test]
async fn a_request_that_maps_to_no_account_is_401_and_reaches_no_upstream() {
    let (graph, proxy) = graph_and_proxy().await;
    for headers in [
        vec![("D360-API-KEY", "unknown-key")],
        vec![],
        vec![("authorization", "Bearer not-a-session")],
    ] {
        let answer = send(&proxy, "POST", "/v1/messages", &headers, TEXT_MESSAGE).await;
        assert_eq!(
            (answer.status, answer.onprem_error_code()),
            (401, 1005),
            "{headers:?}"
        );
    }
    assert!(graph.requests().is_empty());
}

#[tokio::test]
async fn each_client_acts_for_its_own_number() {
    let (graph, proxy) = graph_and_proxy().await;
    let second = send(
        &proxy,
        "POST",
        "/v1/messages",
        &[("D360-API-KEY", API_KEY_2)],
        TEXT_MESSAGE,
    )
    .await;
    assert_eq!(second.status, 201, "{:?}", second.body);
    let sent = &graph.requests()[0];
    assert_eq!(sent.path(), format!("/v23.0/{PHONE_2}/messages"));
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {TOKEN_2}").as_str())
    );
}

#[tokio::test]
async fn a_login_user_acts_for_its_account_and_its_token_stays_with_the_proxy() {
    let (graph, proxy) = graph_and_proxy().await;
    let login = send(
        &proxy,
        "POST",
        "/v1/users/login",
        &[("authorization", &basic_auth("admin", "pw-1"))],
        "",
    )
    .await;
    assert_eq!(login.status, 200, "{:?}", login.body);
    let token = login.json()["users"][0]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bearer = format!("Bearer {token}");
    let sent = send(
        &proxy,
        "POST",
        "/v1/messages",
        &[("authorization", &bearer)],
        TEXT_MESSAGE,
    )
    .await;
    assert_eq!(sent.status, 201, "{:?}", sent.body);
    let got = &graph.requests()[0];
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    let wrong = send(
        &proxy,
        "POST",
        "/v1/users/login",
        &[("authorization", &basic_auth("admin", "nope"))],
        "",
    )
    .await;
    assert_eq!(wrong.status, 401);
}

#[tokio::test]
async fn an_expired_access_token_is_401_1005() {
    let (graph, proxy) = graph_and_proxy().await;
    graph.push(
        401,
        graph_error(
            190,
            Some(463),
            "Error validating access token: Session has expired",
        ),
    );
    let answer = send_text(&proxy).await;
    assert_eq!((answer.status, answer.onprem_error_code()), (401, 1005));
}

#[tokio::test]
async fn a_media_url_outside_the_token_hosts_is_refused_and_gets_no_token() {
    let graph = MockGraph::start(vec![graph_account(PHONE, TOKEN)]).await;
    let elsewhere = MockUpstream::start().await;
    // Only the CDN's host may receive the token; `localhost` names another host here.
    let proxy = graph_proxy(&graph, |_| {}).await;
    let url = format!(
        "http://localhost:{}/whatsapp_business/attachments/?mid=1",
        elsewhere.addr().port()
    );
    graph.push(
        200,
        json!({"messaging_product": "whatsapp", "url": url, "mime_type": "image/png",
               "sha256": "00", "file_size": 3, "id": "4711"}),
    );
    let answer = send_json(&proxy, "GET", "/v1/media/4711", "").await;
    assert_eq!(answer.status, 502, "{:?}", answer.body);
    assert!(elsewhere.requests().is_empty());
}

#[tokio::test]
async fn a_profile_photo_takes_graphs_resumable_upload() {
    let (graph, proxy) = graph_and_proxy().await;
    let photo = Bytes::from_static(b"\xff\xd8\xff\xe0-jpeg-bytes");
    let answer = send_bytes(
        &proxy,
        "POST",
        "/v1/settings/profile/photo",
        &[("D360-API-KEY", API_KEY), ("content-type", "image/jpeg")],
        photo.clone(),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let requests = graph.requests();
    assert!(
        requests[0]
            .path_and_query
            .starts_with(&format!("/v23.0/{APP}/uploads?")),
        "{}",
        requests[0].path_and_query
    );
    assert!(requests[1].path().starts_with("/v23.0/upload:"));
    assert_eq!(
        requests[1].header("authorization"),
        Some(format!("OAuth {TOKEN}").as_str())
    );
    assert_eq!(requests[1].header("file_offset"), Some("0"));
    assert_eq!(requests[1].body, photo);
    assert_eq!(
        requests[2].path(),
        format!("/v23.0/{PHONE}/whatsapp_business_profile")
    );
    assert!(requests[2].json()["profile_picture_handle"].is_string());
    assert!(graph.profile(PHONE)["profile_picture_url"].is_string());
    // Read back, as a link and as the image itself (from the CDN, which asks for the token).
    let link = send_json(&proxy, "GET", "/v1/settings/profile/photo?format=link", "").await;
    assert_eq!(link.status, 200, "{:?}", link.body);
    let image = send_json(&proxy, "GET", "/v1/settings/profile/photo", "").await;
    assert_eq!(image.status, 200, "{:?}", image.body);
    assert_eq!(image.body, photo);
}

#[tokio::test]
async fn about_is_read_and_changed_on_the_numbers_profile() {
    let (graph, proxy) = graph_and_proxy().await;
    let changed = send_json(
        &proxy,
        "PATCH",
        "/v1/settings/profile/about",
        r#"{"text": "Open 9-5"}"#,
    )
    .await;
    assert_eq!(changed.status, 200, "{:?}", changed.body);
    assert_eq!(graph.profile(PHONE)["about"], "Open 9-5");
    let read = send_json(&proxy, "GET", "/v1/settings/profile/about", "").await;
    assert_eq!(
        read.json()["settings"]["profile"]["about"]["text"],
        "Open 9-5"
    );
}

#[tokio::test]
async fn templates_are_listed_created_and_deleted_on_the_business_account() {
    let (graph, proxy) = graph_and_proxy().await;
    let listed = send_json(&proxy, "GET", "/v1/configs/templates", "").await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    let body = listed.json();
    let names: Vec<&str> = body["waba_templates"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"hello_world"), "{body}");
    assert_eq!(body["count"], names.len());
    let created = send_json(
        &proxy,
        "POST",
        "/v1/configs/templates",
        r#"{"name": "shipping_note", "category": "UTILITY", "language": "en", "components": [{"type": "BODY", "text": "Shipped {{1}}"}]}"#,
    )
    .await;
    assert_eq!(created.status, 200, "{:?}", created.body);
    assert_eq!(created.json()["name"], "shipping_note");
    assert!(graph
        .templates(WABA)
        .iter()
        .any(|t| t["name"] == "shipping_note"));
    let deleted = send_json(&proxy, "DELETE", "/v1/configs/templates/shipping_note", "").await;
    assert_eq!(deleted.status, 200, "{:?}", deleted.body);
    assert!(!graph
        .templates(WABA)
        .iter()
        .any(|t| t["name"] == "shipping_note"));
    let asked: Vec<String> = graph
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path_and_query))
        .collect();
    let templates = format!("/v23.0/{WABA}/message_templates");
    assert_eq!(
        asked,
        [
            format!("GET {templates}?limit=1000"),
            format!("POST {templates}"),
            format!("DELETE {templates}?name=shipping%5Fnote"),
        ]
    );
}

#[tokio::test]
async fn the_client_webhook_is_kept_locally_and_nothing_is_registered_upstream() {
    let (graph, proxy) = graph_and_proxy().await;
    let set = send_json(
        &proxy,
        "POST",
        "/v1/configs/webhook",
        r#"{"url": "https://crm.example/hook"}"#,
    )
    .await;
    assert_eq!(set.status, 200, "{:?}", set.body);
    let read = send_json(&proxy, "GET", "/v1/configs/webhook", "").await;
    assert_eq!(read.json()["url"], "https://crm.example/hook");
    assert!(graph.requests().is_empty());
}

/// Sets each client's webhook to its own receiver: `(first, second)`.
async fn two_clients_with_webhooks(proxy: &TestProxy) -> (MockUpstream, MockUpstream) {
    let first = legacy_receiver([], receiver_ok()).await;
    let second = legacy_receiver([], receiver_ok()).await;
    for (key, receiver) in [(API_KEY, &first), (API_KEY_2, &second)] {
        let set = send(
            proxy,
            "POST",
            "/v1/configs/webhook",
            &[("D360-API-KEY", key)],
            &json!({"url": format!("{}/hook", receiver.url())}).to_string(),
        )
        .await;
        assert_eq!(set.status, 200, "{:?}", set.body);
    }
    (first, second)
}

fn message_for(phone: &str, id: &str, body: &str) -> Value {
    json!({"field": "messages", "value": {"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": phone},
        "contacts": [{"profile": {"name": "Kerry"}, "wa_id": "4915112345678"}],
        "messages": [{"from": "4915112345678", "id": id, "timestamp": "1669233778", "type": "text", "text": {"body": body}}]}})
}

#[tokio::test]
async fn only_posts_signed_with_the_app_secret_are_stored() {
    let (_graph, proxy) = graph_and_proxy().await;
    let (first, _) = two_clients_with_webhooks(&proxy).await;
    let body = json!({"object": "whatsapp_business_account",
        "entry": [{"id": WABA, "changes": [message_for(PHONE, "wamid.SIG", "signed")]}]})
    .to_string();
    let good = signature(body.as_bytes(), APP_SECRET);
    let mut altered = body.clone().into_bytes();
    let at = altered.iter().position(|b| *b == b's').unwrap();
    altered[at] = b'S';
    let altered = String::from_utf8(altered).unwrap();
    let refused = [
        (body.clone(), None),
        (
            body.clone(),
            Some(signature(body.as_bytes(), "another-secret")),
        ),
        (altered, Some(good.clone())),
        (
            body.clone(),
            Some(good.trim_start_matches("sha256=").to_owned()),
        ),
    ];
    for (body, signature) in refused {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(signature) = &signature {
            headers.push(("x-hub-signature-256", signature));
        }
        let answer = send(&proxy, "POST", "/cloud-webhooks/meta", &headers, &body).await;
        assert_eq!(
            (answer.status, answer.onprem_error_code()),
            (401, 1005),
            "{signature:?}"
        );
    }
    let (_, stats) = admin(&proxy, "GET", "/admin/webhooks/stats").await;
    assert_eq!(stats["pending"], 0, "{stats}");
    assert!(first.requests().is_empty());

    assert_eq!(signed_post(&proxy, &body, APP_SECRET).await.status, 200);
    let got = first.wait_for_requests(1).await;
    assert_eq!(got[0].json()["messages"][0]["id"], "wamid.SIG");
}

#[tokio::test]
async fn one_app_url_serves_every_number_and_an_unknown_one_becomes_a_dead_letter() {
    let (_graph, proxy) = graph_and_proxy().await;
    let (first, second) = two_clients_with_webhooks(&proxy).await;
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": WABA, "changes": [
        message_for(PHONE, "wamid.ONE", "for the shop"),
        message_for(PHONE_2, "wamid.TWO", "for the second"),
        message_for("999000111", "wamid.NOBODY", "for nobody"),
    ]}]})
    .to_string();
    assert_eq!(signed_post(&proxy, &body, APP_SECRET).await.status, 200);
    let to_first = first.wait_for_requests(1).await;
    let to_second = second.wait_for_requests(1).await;
    assert_eq!(to_first[0].json()["messages"][0]["id"], "wamid.ONE");
    assert_eq!(to_second[0].json()["messages"][0]["id"], "wamid.TWO");
    assert_eq!(first.requests().len() + second.requests().len(), 2);
    let (_, dead) = admin(&proxy, "GET", "/admin/webhooks/dead").await;
    let dead = dead["dead"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0]["reason"].as_str().unwrap().contains("999000111"),
        "{dead:?}"
    );
    assert!(dead[0]["payload"]
        .as_str()
        .unwrap()
        .contains("wamid.NOBODY"));
}

#[tokio::test]
async fn one_apps_signature_does_not_vouch_for_another_apps_number() {
    let graph = MockGraph::start(vec![
        graph_account(PHONE, TOKEN),
        graph_account(PHONE_2, TOKEN_2),
    ])
    .await;
    let proxy = graph_proxy_with(&graph, accounts_file_with("another-app-secret"), |_| {}).await;
    let (first, second) = two_clients_with_webhooks(&proxy).await;
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": WABA, "changes": [
        message_for(PHONE, "wamid.OWN", "own app"),
        message_for(PHONE_2, "wamid.FORGED", "other app"),
    ]}]})
    .to_string();
    assert_eq!(signed_post(&proxy, &body, APP_SECRET).await.status, 200);
    assert_eq!(
        first.wait_for_requests(1).await[0].json()["messages"][0]["id"],
        "wamid.OWN"
    );
    let (_, dead) = admin(&proxy, "GET", "/admin/webhooks/dead").await;
    let dead = dead["dead"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0]["reason"]
            .as_str()
            .unwrap()
            .contains("not signed by the app"),
        "{dead:?}"
    );
    assert!(second.requests().is_empty());
    // The second app's own signature is taken for its number.
    let own = json!({"object": "whatsapp_business_account", "entry": [{"id": WABA, "changes": [
        message_for(PHONE_2, "wamid.SECOND", "second app")]}]})
    .to_string();
    assert_eq!(
        signed_post(&proxy, &own, "another-app-secret").await.status,
        200
    );
    assert_eq!(
        second.wait_for_requests(1).await[0].json()["messages"][0]["id"],
        "wamid.SECOND"
    );
}

#[tokio::test]
async fn meta_verifies_the_callback_url_with_the_verify_token() {
    let (_graph, proxy) = graph_and_proxy().await;
    let ok = send(
        &proxy,
        "GET",
        &format!("/cloud-webhooks/meta?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1158201444"),
        &[],
        "",
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(&ok.body[..], b"1158201444");
    for query in [
        "hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1",
        // Echoed as it came, markup would be a reflected page: only a plain token is.
        &format!("hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=%3Cscript%3E"),
        &format!("hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}"),
        "hub.mode=subscribe&hub.challenge=1",
        &format!("hub.mode=unsubscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1"),
    ] {
        let refused = send(
            &proxy,
            "GET",
            &format!("/cloud-webhooks/meta?{query}"),
            &[],
            "",
        )
        .await;
        assert_eq!(refused.status, 403, "{query}");
    }
}

#[tokio::test]
async fn dry_run_in_the_graph_dialect_answers_without_sending() {
    let graph = MockGraph::start(vec![graph_account(PHONE, TOKEN)]).await;
    let proxy = graph_proxy(&graph, |c| c.dry_run = true).await;
    let answer = send_text(&proxy).await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    assert!(graph.requests().is_empty());
}

#[tokio::test]
async fn a_versioned_root_and_a_webhook_url_without_a_segment_work_too() {
    // `--upstream http://host/v23.0`, as Meta writes the base: the version is the accounts'
    // default, the calls go to the same paths; the app's callback may end at /cloud-webhooks.
    let graph = MockGraph::start(vec![graph_account(PHONE, TOKEN)]).await;
    let accounts = accounts_file();
    let root = format!("{}/v23.0", graph.url());
    let args = [
        "x",
        "--upstream",
        &root,
        "--upstream-dialect",
        "graph",
        "--accounts",
        accounts.to_str().unwrap(),
    ]
    .map(str::to_owned);
    let Ok(waba_onprem_proxy::config::Cli {
        command: waba_onprem_proxy::config::Command::Serve(serve),
    }) = waba_onprem_proxy::config::Cli::parse_with_default(args)
    else {
        panic!("serve arguments")
    };
    let validated = serve.validate().unwrap();
    let proxy = spawn_proxy_with(&graph.url(), |c| {
        *c = Config {
            data_dir: c.data_dir.clone(),
            ..validated
        };
    })
    .await;
    let sent = send_text(&proxy).await;
    assert_eq!(sent.status, 201, "{:?}", sent.body);
    assert_eq!(
        graph.requests()[0].path(),
        format!("/v23.0/{PHONE}/messages")
    );
    let verified = send(
        &proxy,
        "GET",
        &format!(
            "/cloud-webhooks?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=77"
        ),
        &[],
        "",
    )
    .await;
    assert_eq!((verified.status, &verified.body[..]), (200, &b"77"[..]));
    let body = json!({"object": "whatsapp_business_account", "entry": []}).to_string();
    let signature = signature(body.as_bytes(), APP_SECRET);
    let posted = send(
        &proxy,
        "POST",
        "/cloud-webhooks",
        &[("x-hub-signature-256", &signature)],
        &body,
    )
    .await;
    assert_eq!(posted.status, 200, "{:?}", posted.body);
}
