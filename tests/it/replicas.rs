//! Two replicas on one PostgreSQL answer any client the same way: what a client stored through
//! one (application settings, media providers, its webhook URL, a login session) the other one
//! knows, as a load balancer sending consecutive requests to different replicas needs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use crate::support::mock_upstream::{Behaviour, MockUpstream};
use crate::support::proxy::{
    basic_auth, key_map_file, media_providers, password_sha256, patch_application_settings,
    post_authorized, send, send_json, set_media_providers, set_webhook, spawn_proxy_with,
    TestProxy, TEXT_MESSAGE,
};
use serde_json::json;
use waba_onprem_proxy::db::DatabaseUrl;

async fn two_replicas(upstream: &MockUpstream) -> Option<(TestProxy, TestProxy)> {
    let url = crate::support::postgres::fresh_database().await?;
    // The key map is a file every replica is given the same copy of.
    let key_map = key_map_file(
        &json!({"user:ops": {"password_sha256": password_sha256("pw-1"), "api_key": "KEY-OPS"}})
            .to_string(),
    );
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let (url, key_map) = (url.clone(), key_map.clone());
        replicas.push(
            spawn_proxy_with(&upstream.url(), move |c| {
                c.database = Some(DatabaseUrl::Postgres(url));
                c.key_map = Some(key_map);
                c.public_url = Some("https://proxy.example.com".into());
            })
            .await,
        );
    }
    let b = replicas.pop()?;
    let a = replicas.pop()?;
    Some((a, b))
}

#[tokio::test]
async fn settings_and_media_providers_stored_through_one_replica_are_read_through_another() {
    let upstream = MockUpstream::start().await;
    let Some((a, b)) = two_replicas(&upstream).await else {
        return;
    };
    let patched = patch_application_settings(&a, r#"{"sent_status": false}"#).await;
    assert_eq!(patched.status, 200, "{:?}", patched.body);
    let read = send_json(&b, "GET", "/v1/settings/application", "").await;
    assert_eq!(read.json()["settings"]["application"]["sent_status"], false);

    let providers = json!([{"name": "cdn", "type": "www", "config": {"bearer": "tok"}}]);
    let stored = set_media_providers(&b, &providers.to_string()).await;
    assert_eq!(stored.status, 200, "{:?}", stored.body);
    let listed = media_providers(&a).await;
    assert_eq!(
        listed.json()["settings"]["application"]["media"]["providers"],
        providers
    );
}

#[tokio::test]
async fn a_webhook_url_set_through_one_replica_is_answered_by_another() {
    let upstream = MockUpstream::start().await;
    upstream.set_default(Behaviour::Json {
        status: 200,
        body: json!({"url": "ok"}),
    });
    let Some((a, b)) = two_replicas(&upstream).await else {
        return;
    };
    let set = set_webhook(&a, r#"{"url": "https://crm.example/hook"}"#).await;
    assert_eq!(set.status, 200, "{:?}", set.body);
    let read = send_json(&b, "GET", "/v1/configs/webhook", "").await;
    assert_eq!(read.json()["url"], "https://crm.example/hook");
}

#[tokio::test]
async fn a_login_token_from_one_replica_works_on_another_until_logged_out_anywhere() {
    let upstream = MockUpstream::start().await;
    let Some((a, b)) = two_replicas(&upstream).await else {
        return;
    };
    let basic = basic_auth("ops", "pw-1");
    let login = post_authorized(&a, "/v1/users/login", &basic, "").await;
    assert_eq!(login.status, 200, "{:?}", login.body);
    let bearer = format!(
        "Bearer {}",
        login.json()["users"][0]["token"].as_str().unwrap()
    );
    let sent = post_authorized(&b, "/v1/messages", &bearer, TEXT_MESSAGE).await;
    assert_eq!(sent.status, 201, "{:?}", sent.body);
    assert_eq!(
        upstream.requests()[0].header("d360-api-key"),
        Some("KEY-OPS")
    );

    let logout = post_authorized(&b, "/v1/users/logout", &bearer, "").await;
    assert_eq!(logout.status, 200);
    let after = post_authorized(&a, "/v1/messages", &bearer, TEXT_MESSAGE).await;
    assert_eq!((after.status, after.onprem_error_code()), (401, 1005));
    assert_eq!(upstream.requests().len(), 1);
}

/// The database going away under a running replica: requests that need it get a prompt
/// On-Premise 503 (clients and Cloud retry), readiness turns 503, and nothing hangs.
#[tokio::test]
async fn a_lost_database_is_a_prompt_503_not_a_hang() {
    let upstream = MockUpstream::start().await;
    let Some(url) = crate::support::postgres::fresh_database().await else {
        return;
    };
    let database = url.clone();
    let proxy = spawn_proxy_with(&upstream.url(), move |c| {
        c.database = Some(DatabaseUrl::Postgres(database));
        c.legacy_webhook_url = Some("http://127.0.0.1:9/hook".into());
        c.webhook_secret = Some("s".into());
    })
    .await;
    let before = send_json(&proxy, "GET", "/v1/settings/application", "").await;
    assert_eq!(before.status, 200);

    crate::support::postgres::drop_database(&url).await;
    let started = std::time::Instant::now();
    let settings = send_json(&proxy, "GET", "/v1/settings/application", "").await;
    assert_eq!((settings.status, settings.onprem_error_code()), (503, 1011));
    let inbound = send(
        &proxy,
        "POST",
        "/cloud-webhooks/default",
        &[
            ("x-webhook-secret", "s"),
            ("content-type", "application/json"),
        ],
        r#"{"object":"whatsapp_business_account","entry":[]}"#,
    )
    .await;
    assert_eq!(inbound.status, 503, "Cloud must send it again");
    let ready = send(&proxy, "GET", "/readyz", &[], "").await;
    assert_eq!(ready.status, 503);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}
