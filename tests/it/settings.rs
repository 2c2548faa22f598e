//! Business profile, about, photo, application settings, templates, key map and login, through
//! the running proxy against the in-process waba-v2 mock.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use crate::support::mock_upstream::{Behaviour, MockUpstream};
use crate::support::proxy::{
    basic_auth, key_map_file, password_sha256, patch_application_settings, post_authorized,
    proxy_with_mock, proxy_with_mock_answering, proxy_with_mock_tuned, send, send_bytes, send_json,
    send_text, spawn_proxy, API_KEY, TEXT_MESSAGE,
};
use bytes::Bytes;
use serde_json::json;

const META: &str = r#"{"api_status":"stable","version":"v2.53.0"}"#;

fn meta() -> serde_json::Value {
    serde_json::from_str(META).unwrap()
}

#[tokio::test]
async fn business_profile_reads_back_nested_with_on_premise_vertical_names() {
    let (mock, proxy) = proxy_with_mock().await;
    let answer = send_json(&proxy, "GET", "/v1/settings/business/profile", "").await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(
        answer.json(),
        json!({"settings": {"business": {"profile": {"address": "Main St 1", "description": "Shop",
            "email": "a@b.co", "vertical": "Shopping and Retail", "websites": ["https://a.example"]}}},
            "meta": meta()})
    );
    assert_eq!(
        mock.requests()[0].path_and_query,
        "/whatsapp_business_profile?fields=address,description,email,websites,vertical"
    );
}

#[tokio::test]
async fn business_profile_update_sends_only_what_was_sent_with_the_vertical_enum() {
    let (mock, proxy) = proxy_with_mock().await;
    let answer = send_json(
        &proxy,
        "POST",
        "/v1/settings/business/profile",
        r#"{"vertical": "Beauty, Spa and Salon", "websites": ["https://a.example", "http://b.example"]}"#,
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.json(), json!({"meta": meta()}));
    let sent = &mock.requests()[0];
    assert_eq!(
        (sent.method.as_str(), sent.path_and_query.as_str()),
        ("POST", "/whatsapp_business_profile")
    );
    assert_eq!(
        sent.json(),
        json!({"messaging_product": "whatsapp", "vertical": "BEAUTY",
               "websites": ["https://a.example", "http://b.example"]})
    );
}

#[tokio::test]
async fn invalid_profiles_are_refused_before_upstream_naming_the_field() {
    let (mock, proxy) = proxy_with_mock().await;
    let cases = [
        (
            r#"{"vertical": "Spaceships"}"#,
            "vertical Spaceships is not accepted",
        ),
        (
            r#"{"email": "not-an-email"}"#,
            "email is not an email address",
        ),
        (
            r#"{"websites": ["a","b","c"]}"#,
            "websites must have at most 2 entries",
        ),
        (
            r#"{"websites": ["ftp://x"]}"#,
            "websites[0] must start with http:// or https://",
        ),
    ];
    for (body, details) in cases {
        let answer = send_json(&proxy, "POST", "/v1/settings/business/profile", body).await;
        assert_eq!(
            (answer.status, answer.onprem_error_code()),
            (400, 1009),
            "{body}"
        );
        let got = answer.json()["errors"][0]["details"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(got.starts_with(details), "{got}");
    }
    let long = format!(r#"{{"address": "{}"}}"#, "a".repeat(257));
    let answer = send_json(&proxy, "POST", "/v1/settings/business/profile", &long).await;
    assert_eq!((answer.status, answer.onprem_error_code()), (400, 1009));
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn about_reads_and_writes() {
    let (mock, proxy) = proxy_with_mock().await;
    let about = send_json(&proxy, "GET", "/v1/settings/profile/about", "").await;
    assert_eq!(
        about.json(),
        json!({"settings": {"profile": {"about": {"text": "Hi"}}}, "meta": meta()})
    );
    assert_eq!(
        mock.requests()[0].path_and_query,
        "/whatsapp_business_profile?fields=about"
    );
    let set = send_json(
        &proxy,
        "PATCH",
        "/v1/settings/profile/about",
        r#"{"text": "Open 9-5"}"#,
    )
    .await;
    assert_eq!((set.status, set.json()), (200, json!({"meta": meta()})));
    assert_eq!(
        mock.requests()[1].json(),
        json!({"messaging_product": "whatsapp", "about": "Open 9-5"})
    );
    let too_long = format!(r#"{{"text": "{}"}}"#, "x".repeat(140));
    let refused = send_json(&proxy, "PATCH", "/v1/settings/profile/about", &too_long).await;
    assert_eq!((refused.status, refused.onprem_error_code()), (400, 1009));
    assert_eq!(mock.requests().len(), 2);
}

#[tokio::test]
async fn photo_link_and_photo_bytes() {
    let mock = MockUpstream::start().await;
    let cdn = MockUpstream::start().await;
    let picture = Bytes::from(vec![0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3, 4]);
    let url = format!("{}/v/t61/pic.jpg?oh=1&oe=2", cdn.url());
    mock.set_default(Behaviour::Json {
        status: 200,
        body: json!({"data": [{"profile_picture_url": url, "messaging_product": "whatsapp"}]}),
    });
    cdn.push(Behaviour::Respond {
        status: 200,
        headers: vec![("content-type".into(), "image/jpeg".into())],
        body: picture.clone(),
    });
    let proxy = spawn_proxy(&mock.url()).await;
    let link = send_json(&proxy, "GET", "/v1/settings/profile/photo?format=link", "").await;
    assert_eq!(
        link.json(),
        json!({"settings": {"profile": {"photo": {"link": url}}}, "meta": meta()})
    );
    let bytes = send_json(&proxy, "GET", "/v1/settings/profile/photo", "").await;
    assert_eq!(bytes.status, 200);
    assert_eq!(bytes.headers["content-type"], "image/jpeg");
    assert_eq!(bytes.headers["content-length"], "8");
    assert_eq!(bytes.body, picture);
    assert_eq!(cdn.requests()[0].path_and_query, "/v/t61/pic.jpg?oh=1&oe=2");
    assert!(
        cdn.requests()[0].header("d360-api-key").is_none(),
        "the key stays with the upstream"
    );
}

#[tokio::test]
async fn photo_upload_runs_the_three_resumable_upload_calls() {
    let (mock, proxy) = proxy_with_mock_answering([
        Behaviour::Json {
            status: 200,
            body: json!({"id": "MTphdHRhY2htZW50"}),
        },
        Behaviour::Json {
            status: 200,
            body: json!({"h": "4::aW1hZ2UvanBlZw==:ARZ"}),
        },
        Behaviour::Json {
            status: 200,
            body: json!({"success": true}),
        },
    ])
    .await;
    let photo = Bytes::from(vec![7u8; 40_000]);
    let answer = send_bytes(
        &proxy,
        "POST",
        "/v1/settings/profile/photo",
        &[("D360-API-KEY", API_KEY), ("content-type", "image/jpeg")],
        photo.clone(),
    )
    .await;
    assert_eq!(
        (answer.status, answer.json()),
        (200, json!({"meta": meta()}))
    );
    let sent = mock.requests();
    assert_eq!(sent.len(), 3);
    assert_eq!(
        sent[0].path_and_query,
        "/uploads?file_name=profile.jpg&file_length=40000&file_type=image/jpeg"
    );
    assert_eq!(
        sent[1].path_and_query, "/upload:MTphdHRhY2htZW50",
        "the upload: prefix is added back"
    );
    assert_eq!(sent[1].header("file_offset"), Some("0"));
    assert_eq!(sent[1].header("d360-api-key"), Some(API_KEY));
    assert_eq!(sent[1].body, photo);
    assert_eq!(
        sent[2].json(),
        json!({"messaging_product": "whatsapp", "profile_picture_handle": "4::aW1hZ2UvanBlZw==:ARZ"})
    );
}

#[tokio::test]
async fn photo_upload_limits_and_delete() {
    let (mock, proxy) = proxy_with_mock().await;
    let gif = send_bytes(
        &proxy,
        "POST",
        "/v1/settings/profile/photo",
        &[("content-type", "image/webp")],
        Bytes::from_static(b"x"),
    )
    .await;
    assert_eq!((gif.status, gif.onprem_error_code()), (400, 1009));
    let big = Bytes::from(vec![0u8; 5 * 1024 * 1024 + 1]);
    let huge = send_bytes(
        &proxy,
        "POST",
        "/v1/settings/profile/photo",
        &[("content-type", "image/png")],
        big,
    )
    .await;
    assert_eq!((huge.status, huge.onprem_error_code()), (413, 1009));
    let delete = send_json(&proxy, "DELETE", "/v1/settings/profile/photo", "").await;
    assert_eq!(delete.status, 501);
    assert!(delete.json()["errors"][0]["details"]
        .as_str()
        .unwrap()
        .contains("Cloud API"));
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn application_settings_are_kept_per_key_and_echoed() {
    let (mock, proxy) = proxy_with_mock().await;
    let defaults = send_json(&proxy, "GET", "/v1/settings/application", "").await;
    assert_eq!(
        defaults.json(),
        json!({"settings": {"application": {"sent_status": true, "webhooks": {"url": ""}}}, "meta": meta()})
    );
    let patch = r#"{"webhooks": {"message": {"delivered": true}}, "sent_status": false, "callback_persist": true}"#;
    let patched = patch_application_settings(&proxy, patch).await;
    assert_eq!(patched.status, 200, "{:?}", patched.body);
    let again =
        patch_application_settings(&proxy, r#"{"webhooks": {"max_concurrent_requests": 12}}"#)
            .await;
    assert_eq!(again.status, 200);
    let read = send_json(&proxy, "GET", "/v1/settings/application", "").await;
    assert_eq!(
        read.json()["settings"]["application"],
        json!({"sent_status": false, "callback_persist": true,
               "webhooks": {"url": "", "message": {"delivered": true}, "max_concurrent_requests": 12}})
    );
    let other = send(
        &proxy,
        "GET",
        "/v1/settings/application",
        &[("D360-API-KEY", "other-channel")],
        "",
    )
    .await;
    assert_eq!(other.json()["settings"]["application"]["sent_status"], true);
    let bad = patch_application_settings(&proxy, r#"{"webhooks": {"url": "ftp://x"}}"#).await;
    assert_eq!((bad.status, bad.onprem_error_code()), (400, 1009));
    assert!(
        mock.requests().is_empty(),
        "application settings never go upstream"
    );
}

#[tokio::test]
async fn templates_pass_through_with_their_queries_and_errors_reshaped() {
    let (mock, proxy) = proxy_with_mock().await;
    let list = send_json(
        &proxy,
        "GET",
        "/v1/configs/templates?limit=5&offset=10&sort=business_templates.name",
        "",
    )
    .await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json()["waba_templates"][0]["name"], "hello");
    assert_eq!(list.json()["meta"], meta());
    assert_eq!(
        mock.requests()[0].path_and_query,
        "/v1/configs/templates?limit=5&offset=10&sort=business_templates.name"
    );

    mock.push(Behaviour::Json {
        status: 400,
        body: json!({"error": {"message": "(#100) Invalid parameter", "code": 100,
            "error_data": {"messaging_product": "whatsapp", "details": "name already exists"}, "fbtrace_id": "x"}}),
    });
    let created = send_json(
        &proxy,
        "POST",
        "/v1/configs/templates",
        r#"{"name":"hello","category":"MARKETING","language":"en","components":[]}"#,
    )
    .await;
    assert_eq!((created.status, created.onprem_error_code()), (400, 1009));
    assert_eq!(mock.requests()[1].json()["name"], "hello");

    mock.push(Behaviour::Json {
        status: 200,
        body: json!({"success": true}),
    });
    let deleted = send_json(&proxy, "DELETE", "/v1/configs/templates/hello", "").await;
    assert_eq!(deleted.status, 200);
    assert_eq!(mock.requests()[2].method, "DELETE");
    assert_eq!(
        mock.requests()[2].path_and_query,
        "/v1/configs/templates/hello"
    );
}

#[tokio::test]
async fn mapped_keys_are_replaced_upstream_and_others_pass() {
    let map = key_map_file(&format!(r#"{{"{API_KEY}": "NEW-CLOUD-KEY"}}"#));
    let (mock, proxy) = proxy_with_mock_tuned([], |c| c.key_map = Some(map)).await;
    assert_eq!(send_text(&proxy).await.status, 201);
    assert_eq!(
        mock.requests()[0].header("d360-api-key"),
        Some("NEW-CLOUD-KEY")
    );
    send(
        &proxy,
        "POST",
        "/v1/messages",
        &[("D360-API-KEY", "unmapped")],
        TEXT_MESSAGE,
    )
    .await;
    assert_eq!(mock.requests()[1].header("d360-api-key"), Some("unmapped"));
}

#[tokio::test]
async fn login_gives_a_token_that_stands_for_the_api_key_until_logout() {
    let real_digest = password_sha256("secret-pw");
    let map = key_map_file(&format!(
        r#"{{"user:admin": {{"password_sha256": "{real_digest}", "api_key": "KEY-FOR-ADMIN"}}}}"#
    ));
    let (mock, proxy) = proxy_with_mock_tuned([], |c| c.key_map = Some(map)).await;

    let wrong = post_authorized(&proxy, "/v1/users/login", &basic_auth("admin", "nope"), "").await;
    assert_eq!((wrong.status, wrong.onprem_error_code()), (401, 1005));
    let login = post_authorized(
        &proxy,
        "/v1/users/login",
        &basic_auth("admin", "secret-pw"),
        "",
    )
    .await;
    assert_eq!(login.status, 200, "{:?}", login.body);
    let token = login.json()["users"][0]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let expires = login.json()["users"][0]["expires_after"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        expires.ends_with("+00:00") && expires.len() == 25,
        "{expires}"
    );

    let bearer = format!("Bearer {token}");
    let sent = post_authorized(&proxy, "/v1/messages", &bearer, TEXT_MESSAGE).await;
    assert_eq!(sent.status, 201);
    let upstream = &mock.requests()[0];
    assert_eq!(upstream.header("d360-api-key"), Some("KEY-FOR-ADMIN"));
    assert!(
        upstream.header("authorization").is_none(),
        "the token is ours, not upstream's"
    );

    let logout = post_authorized(&proxy, "/v1/users/logout", &bearer, "").await;
    assert_eq!(logout.status, 200);
    let after = post_authorized(&proxy, "/v1/messages", &bearer, TEXT_MESSAGE).await;
    assert_eq!((after.status, after.onprem_error_code()), (401, 1005));
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test]
async fn login_without_configured_users_is_501() {
    let (_mock, proxy) = proxy_with_mock().await;
    let login = post_authorized(&proxy, "/v1/users/login", "Basic YTpi", "").await;
    assert_eq!(login.status, 501);
}
