//! A legacy On-Premise client, end to end, against the real binary: configured only through
//! `WABA_PROXY_*` variables, started with `--listen 127.0.0.1:0`, it prints its real address,
//! serves the calls an On-Premise integration makes every day, logs without ever writing the
//! API key, and exits cleanly on SIGTERM. Also the `translate` command.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::mock_upstream::MockUpstream;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_waba-onprem-proxy");
const KEY: &str = "LEGACY-SECRET-KEY-7f3a9c";

struct RunningProxy {
    child: Child,
    base: String,
    stderr: Arc<Mutex<String>>,
    drain: tokio::task::JoinHandle<()>,
}

async fn start_binary_with(upstream: &str, env: &[(&str, &str)]) -> RunningProxy {
    let mut child = Command::new(BIN)
        .envs(env.iter().copied())
        .env("WABA_PROXY_LISTEN", "127.0.0.1:0")
        .env("WABA_PROXY_UPSTREAM", upstream)
        .env("WABA_PROXY_ONPREM_VERSION", "v2.49.3")
        .env("RUST_LOG", "trace")
        .env(
            "WABA_PROXY_DATA_DIR",
            // One per binary: a data directory (its SQLite file) serves one process.
            std::env::temp_dir().join(format!("waba-legacy-{}", uuid::Uuid::new_v4())),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("binary starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let stderr = Arc::new(Mutex::new(String::new()));
    let base = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            stderr.lock().unwrap().push_str(&line);
            stderr.lock().unwrap().push('\n');
            if let Some(rest) = line.split("listening on ").nth(1) {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
        }
        panic!("no ready line; stderr:\n{}", stderr.lock().unwrap());
    })
    .await
    .expect("ready line within 10 s");
    let sink = stderr.clone();
    let drain = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let mut sink = sink.lock().unwrap();
            sink.push_str(&line);
            sink.push('\n');
        }
    });
    RunningProxy {
        child,
        base,
        stderr,
        drain,
    }
}

async fn call(base: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let request = http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("D360-API-KEY", KEY)
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

const WEBHOOK_SECRET: &str = "webhook-secret-5f2e";
const ADMIN_TOKEN: &str = "console-token-in-the-scan-77";

/// Logs in as the key map's user and sends one text with the bearer token; returns the token.
async fn login_and_send(base: &str) -> String {
    use base64::Engine as _;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let basic = base64::engine::general_purpose::STANDARD.encode("admin:admin-password-9");
    let login = http::Request::post(format!("{base}/v1/users/login"))
        .header("authorization", format!("Basic {basic}"))
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = client.request(login).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let token = body["users"][0]["token"].as_str().unwrap().to_owned();
    let send = http::Request::post(format!("{base}/v1/messages"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(bytes::Bytes::from_static(
            br#"{"to":"15551234567","type":"text","text":{"body":"as admin"}}"#,
        )))
        .unwrap();
    assert_eq!(client.request(send).await.unwrap().status(), 201);
    token
}

async fn post_webhook(base: &str, secret: &str, event: &Value) -> (u16, bytes::Bytes) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let request = http::Request::post(format!("{base}/cloud-webhooks/default"))
        .header("x-webhook-secret", secret)
        .body(Full::new(bytes::Bytes::from(event.to_string())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

async fn raw_call(base: &str, method: &str, path: &str) -> (u16, bytes::Bytes) {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let request = http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("D360-API-KEY", KEY)
        .body(Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn legacy_client_session_through_the_binary() {
    let mock = MockUpstream::start().await;
    let receiver = MockUpstream::start().await;
    receiver.set_default(crate::support::mock_upstream::Behaviour::Json {
        status: 200,
        body: json!({}),
    });
    let map = std::env::temp_dir().join(format!("legacy-keymap-{}.json", std::process::id()));
    // sha256("admin-password-9")
    let digest: String = {
        use sha2::Digest;
        sha2::Sha256::digest(b"admin-password-9")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    std::fs::write(
        &map,
        format!(r#"{{"user:admin": {{"password_sha256": "{digest}", "api_key": "{KEY}"}}}}"#),
    )
    .unwrap();
    let hook = format!("{}/hook", receiver.url());
    let mut proxy = start_binary_with(
        &mock.url(),
        &[
            ("WABA_PROXY_KEY_MAP", map.to_str().unwrap()),
            ("WABA_PROXY_LEGACY_WEBHOOK_URL", &hook),
            ("WABA_PROXY_WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("WABA_PROXY_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    )
    .await;
    assert!(
        proxy.base.starts_with("http://127.0.0.1:") && !proxy.base.ends_with(":0"),
        "{}",
        proxy.base
    );
    let meta = json!({"api_status": "stable", "version": "v2.49.3"});

    let (status, text) = call(&proxy.base, "POST", "/v1/messages",
        json!({"to": "15551234567", "type": "text", "preview_url": true, "text": {"body": "Hi https://a.example"}})).await;
    assert_eq!(status, 201);
    assert_eq!(text["meta"], meta);
    let wamid = text["messages"][0]["id"].as_str().unwrap().to_owned();

    let (status, hsm) = call(
        &proxy.base,
        "POST",
        "/v1/messages",
        json!({"to": "15551234567", "type": "hsm",
        "hsm": {"namespace": "ns", "element_name": "welcome", "fallback_lc": "pt_BR",
                "localizable_params": [{"default": "Ana"}]}}),
    )
    .await;
    assert_eq!(
        (status, hsm["messages"].as_array().map(Vec::len)),
        (201, Some(1))
    );

    let (status, _) = call(&proxy.base, "POST", "/v1/messages", json!({"to": "15551234567", "type": "template",
        "template": {"namespace": "ns", "name": "shipping", "language": {"policy": "deterministic", "code": "en"},
            "components": [{"type": "button", "sub_type": "quick_reply", "index": 0,
                            "parameters": [{"type": "payload", "payload": "yes"}]}]}})).await;
    assert_eq!(status, 201);

    let (status, _) = call(
        &proxy.base,
        "POST",
        "/v1/messages",
        json!({"to": "15551234567", "type": "image",
        "image": {"link": "https://cdn.example/p.jpg", "caption": "Your order"}}),
    )
    .await;
    assert_eq!(status, 201);

    let (status, read) = call(
        &proxy.base,
        "PUT",
        &format!("/v1/messages/{wamid}"),
        json!({"status": "read"}),
    )
    .await;
    assert_eq!((status, read), (200, json!({"meta": meta})));

    let (status, contacts) = call(
        &proxy.base,
        "POST",
        "/v1/contacts",
        json!({"blocking": "wait", "contacts": ["+1 555 123 4567"]}),
    )
    .await;
    assert_eq!(
        (status, contacts["contacts"][0]["wa_id"].clone()),
        (200, json!("15551234567"))
    );

    let (status, health) = call(&proxy.base, "GET", "/v1/health", Value::Null).await;
    assert_eq!(
        (status, health["health"]["gateway_status"].clone()),
        (200, json!("connected"))
    );

    // An inbound media id: the bytes come back; the signed url's query stays out of the logs.
    mock.add_media(
        "990011",
        "image/png",
        bytes::Bytes::from_static(b"\x89PNG fake"),
    );
    let (status, _) = raw_call(&proxy.base, "GET", "/v1/media/990011").await;
    assert_eq!(status, 200);

    // A self-hosted client logs in and sends with its token; Cloud posts a webhook.
    let token = login_and_send(&proxy.base).await;
    let event = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages",
        "value": {"messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": "2"},
                  "statuses": [{"id": wamid, "status": "delivered", "timestamp": "1", "recipient_id": "15551234567"}]}}]}]});
    let (status, _) = post_webhook(&proxy.base, WEBHOOK_SECRET, &event).await;
    assert_eq!(status, 200);
    let (status, _) = post_webhook(&proxy.base, "wrong-secret-value", &event).await;
    assert_eq!(status, 401);
    assert_eq!(
        receiver.wait_for_requests(1).await[0].json()["statuses"][0]["type"],
        "message"
    );

    // What upstream saw: five valid Cloud requests, none carrying On-Premise-only fields.
    let sent: Vec<_> = mock
        .requests()
        .into_iter()
        .filter(|r| r.path_and_query == "/messages")
        .collect();
    assert_eq!(sent.len(), 6);
    for request in &sent {
        assert_eq!(
            (request.method.as_str(), request.path_and_query.as_str()),
            ("POST", "/messages")
        );
        assert_eq!(request.header("d360-api-key"), Some(KEY));
        let body = request.json();
        assert_eq!(body["messaging_product"], "whatsapp");
        for onprem_only in ["preview_url", "hsm", "render_mentions"] {
            assert!(
                body.get(onprem_only).is_none(),
                "{onprem_only} sent upstream: {body}"
            );
        }
    }
    assert_eq!(sent[0].json()["text"]["preview_url"], true);
    assert_eq!(
        sent[1].json()["template"],
        json!({"name": "welcome", "language": {"code": "pt_BR"},
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}]})
    );
    assert_eq!(sent[2].json()["template"]["components"][0]["index"], "0");
    assert!(sent[2].json()["template"].get("namespace").is_none());
    assert_eq!(
        sent[3].json()["image"],
        json!({"link": "https://cdn.example/p.jpg", "caption": "Your order"})
    );
    assert_eq!(
        sent[4].json(),
        json!({"messaging_product": "whatsapp", "status": "read", "message_id": wamid})
    );

    // The operator's console after the session (read now; scanned with the logs below).
    let console_html = {
        use base64::Engine as _;
        use http_body_util::{BodyExt, Full};
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<bytes::Bytes>>();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("op:{ADMIN_TOKEN}"));
        let request = http::Request::get(format!("{}/admin", proxy.base))
            .header("authorization", format!("Basic {basic}"))
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        Some(
            String::from_utf8(
                response
                    .into_body()
                    .collect()
                    .await
                    .unwrap()
                    .to_bytes()
                    .to_vec(),
            )
            .unwrap(),
        )
    };

    // SIGTERM: a clean, prompt exit.
    let pid = proxy.child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), proxy.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    let _ = proxy.drain.await;

    let logs = proxy.stderr.lock().unwrap().clone();
    assert!(logs.contains("request"), "no request log lines:\n{logs}");
    // The console page, after the same session, shows no secret either.
    let page = console_html.expect("the console page was read before shutdown");
    assert!(
        page.contains("send_message 201"),
        "not the console after the session:\n{page}"
    );
    for secret in [
        KEY,
        token.as_str(),
        WEBHOOK_SECRET,
        "wrong-secret-value",
        "admin-password-9",
        ADMIN_TOKEN,
        "hash=ATs",
    ] {
        assert!(
            !page.contains(secret),
            "a secret reached the console page: {secret}"
        );
    }
    // A send's line says what upstream answered and which message Cloud made of it: the
    // trace of every message that reached Cloud.
    assert!(
        logs.lines().any(|l| l.contains("route=\"send_message\"")
            && l.contains("upstream_status=200")
            && l.contains("message_id=\"wamid.")),
        "no send line with its upstream status and message id:\n{logs}"
    );
    assert!(
        !logs.contains(KEY),
        "the API key leaked into the logs:\n{logs}"
    );
    assert!(
        !logs.contains("hash=ATs"),
        "the media url's query leaked into the logs:\n{logs}"
    );
    for secret in [
        token.as_str(),
        WEBHOOK_SECRET,
        "wrong-secret-value",
        "admin-password-9",
    ] {
        assert!(
            !logs.contains(secret),
            "a secret leaked into the logs: {secret}\n{logs}"
        );
    }
    assert_eq!(
        sent[5].header("d360-api-key"),
        Some(KEY),
        "the token stood for the key upstream"
    );
}

async fn translate(method: &str, path: &str, stdin: &str) -> (Value, i32) {
    translate_with(&[method, path], stdin).await
}

/// `translate` with these arguments (method, path, then any flags).
async fn translate_with(args: &[&str], stdin: &str) -> (Value, i32) {
    let mut child = Command::new(BIN)
        .arg("translate")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .await
        .unwrap();
    let output = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "one JSON object on one line: {stdout}"
    );
    (
        serde_json::from_str(&stdout).unwrap(),
        output.status.code().unwrap(),
    )
}

#[tokio::test]
async fn translate_command_prints_the_upstream_request() {
    let (out, code) = translate(
        "POST",
        "/v1/messages",
        r#"{"to":"1","type":"text","text":{"body":"x"}}"#,
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(out["method"], "POST");
    assert_eq!(out["path"], "/messages");
    assert_eq!(out["body"]["messaging_product"], "whatsapp");

    let (out, code) = translate("PUT", "/v1/messages/wamid.A%3D", r#"{"status":"read"}"#).await;
    assert_eq!(
        (code, out["body"]["message_id"].clone()),
        (0, json!("wamid.A="))
    );

    let (out, code) = translate("GET", "/v1/configs/templates?limit=2", "").await;
    assert_eq!(
        (code, out["path"].clone(), out["body"].clone()),
        (0, json!("/v1/configs/templates?limit=2"), Value::Null)
    );

    // The Graph dialect's path, with placeholder ids; a path Graph has no counterpart for is
    // an On-Premise error.
    let text = r#"{"to":"1","type":"text","text":{"body":"x"}}"#;
    let (out, code) = translate_with(
        &[
            "POST",
            "/v1/messages",
            "--upstream-dialect",
            "graph",
            "--graph-version",
            "v21.0",
        ],
        text,
    )
    .await;
    assert_eq!(
        (code, out["path"].clone()),
        (0, json!("/v21.0/{phone-number-id}/messages"))
    );
    let (out, code) = translate_with(
        &[
            "DELETE",
            "/v1/configs/templates/abc",
            "--upstream-dialect",
            "graph",
        ],
        "",
    )
    .await;
    assert_eq!(
        (code, out["path"].clone()),
        (0, json!("/v23.0/{waba-id}/message_templates?name=abc"))
    );
}

#[tokio::test]
async fn translate_command_exits_2_with_an_onprem_error_on_bad_input() {
    let (out, code) = translate("POST", "/v1/messages", "{not json").await;
    assert_eq!(code, 2);
    assert_eq!(out["errors"][0]["code"], 1009);
    assert_eq!(out["meta"]["version"], "v2.53.0");

    let (out, code) = translate("GET", "/v1/unknown", "").await;
    assert_eq!((code, out["errors"][0]["code"].clone()), (2, json!(1006)));
}

#[tokio::test]
async fn an_invalid_upstream_is_refused_at_start_with_a_clear_message() {
    let output = Command::new(BIN)
        .args(["--upstream", "ftp://example.com", "--listen", "127.0.0.1:0"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--upstream ftp://example.com"), "{stderr}");
}

/// One request on an open keep-alive connection; returns the status line.
async fn on_connection(stream: &mut tokio::net::TcpStream, body: &str) -> String {
    use tokio::io::AsyncReadExt;
    let request = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nd360-api-key: OLD-KEY\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed");
        received.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&received).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if received.len() >= end + 4 + length {
                return text.lines().next().unwrap().to_owned();
            }
        }
    }
}

#[tokio::test]
async fn sighup_reloads_the_key_map_without_dropping_connections() {
    let mock = MockUpstream::start().await;
    let map = std::env::temp_dir().join(format!("keymap-{}.json", std::process::id()));
    std::fs::write(&map, r#"{"OLD-KEY": "FIRST-NEW-KEY"}"#).unwrap();
    let mut proxy = start_binary_with(
        &mock.url(),
        &[("WABA_PROXY_KEY_MAP", map.to_str().unwrap())],
    )
    .await;
    let address = proxy.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let text = r#"{"to":"1","type":"text","text":{"body":"x"}}"#;
    assert_eq!(
        on_connection(&mut stream, text).await,
        "HTTP/1.1 201 Created"
    );
    assert_eq!(
        mock.requests()[0].header("d360-api-key"),
        Some("FIRST-NEW-KEY")
    );

    std::fs::write(&map, r#"{"OLD-KEY": "SECOND-NEW-KEY"}"#).unwrap();
    let pid = proxy.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    // The reload is logged once done; wait for that line (bounded).
    tokio::time::timeout(Duration::from_secs(10), async {
        while !proxy.stderr.lock().unwrap().contains("key map reloaded") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("reload logged");

    assert_eq!(
        on_connection(&mut stream, text).await,
        "HTTP/1.1 201 Created",
        "same connection still served"
    );
    assert_eq!(
        mock.requests()[1].header("d360-api-key"),
        Some("SECOND-NEW-KEY")
    );
    proxy.child.kill().await.unwrap();
}

/// When Cloud answers but the answer cannot be used (not JSON here), the failure's log line
/// still says what upstream answered: the operator sees "upstream said 200, then garbage".
#[tokio::test]
async fn an_unusable_upstream_answer_is_logged_with_the_status_upstream_gave() {
    let upstream = MockUpstream::start().await;
    upstream.push(crate::support::mock_upstream::Behaviour::Respond {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: bytes::Bytes::from_static(b"<html>not json</html>"),
    });
    let proxy = start_binary_with(&upstream.url(), &[]).await;
    let (status, body) = call(
        &proxy.base,
        "POST",
        "/v1/messages",
        json!({"to": "1", "type": "text", "text": {"body": "x"}}),
    )
    .await;
    assert_eq!(
        (status, body["errors"][0]["code"].as_i64()),
        (502, Some(1000))
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let logs = proxy.stderr.lock().unwrap().clone();
        if logs
            .lines()
            .any(|l| l.contains("status=502") && l.contains("upstream_status=200"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no such line:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Graph dialect through the binary, configured only by variables, at trace level: sends,
/// a media round trip, a login, Meta's verification and a signed webhook, then a SIGHUP that
/// brings a new access token. No token, app secret, verify token, API key or password is
/// ever written to the log.
#[tokio::test]
async fn graph_session_through_the_binary_logs_no_secret_and_takes_new_tokens_on_sighup() {
    use crate::support::mock_graph::{GraphAccount, MockGraph};
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    const PHONE: &str = "106540352242922";
    const TOKEN: &str = "EAAGraphTokenForTheLogScan0001";
    const NEW_TOKEN: &str = "EAAGraphRotatedTokenForTheLogScan2";
    const APP_SECRET: &str = "app-secret-for-the-log-scan";
    const VERIFY_TOKEN: &str = "verify-token-for-the-log-scan";
    let account = |token: &str| GraphAccount {
        phone_number_id: PHONE.into(),
        waba_id: "102290129340398".into(),
        access_token: token.into(),
        graph_version: "v23.0".into(),
        app_id: "1234567890".into(),
    };
    let graph = MockGraph::start(vec![account(TOKEN)]).await;
    let accounts = |token: &str| {
        json!({"accounts": [{"api_keys": [KEY], "phone_number_id": PHONE,
            "users": {"admin": {"password_sha256": crate::support::proxy::password_sha256("admin-password-9")}},
            "waba_id": "102290129340398", "app_id": "1234567890", "access_token": token,
            "app_secret": APP_SECRET, "verify_token": VERIFY_TOKEN}]})
        .to_string()
    };
    let file = std::env::temp_dir().join(format!("accounts-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, accounts(TOKEN)).unwrap();
    let mut proxy = start_binary_with(
        &graph.url(),
        &[
            ("WABA_PROXY_UPSTREAM_DIALECT", "graph"),
            ("WABA_PROXY_ACCOUNTS", file.to_str().unwrap()),
            ("WABA_PROXY_TOKEN_HOSTS", "127.0.0.1"),
        ],
    )
    .await;
    let base = proxy.base.clone();
    let text = json!({"to": "15551234567", "type": "text", "text": {"body": "hi"}});
    assert_eq!(
        call(&base, "POST", "/v1/messages", text.clone()).await.0,
        201
    );

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let upload = http::Request::post(format!("{base}/v1/media"))
        .header("D360-API-KEY", KEY)
        .header("content-type", "image/png")
        .body(Full::new(bytes::Bytes::from_static(b"\x89PNG-bytes")))
        .unwrap();
    let answer = client.request(upload).await.unwrap();
    assert_eq!(answer.status(), 201);
    let body: Value =
        serde_json::from_slice(&answer.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let id = body["media"][0]["id"].as_str().unwrap().to_owned();
    let (status, bytes) = raw_call(&base, "GET", &format!("/v1/media/{id}")).await;
    assert_eq!((status, &bytes[..]), (200, &b"\x89PNG-bytes"[..]));

    let login_token = login_and_send(&base).await;

    let verify = http::Request::get(format!(
        "{base}/cloud-webhooks/meta?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=42"
    ))
    .body(Full::new(bytes::Bytes::new()))
    .unwrap();
    assert_eq!(client.request(verify).await.unwrap().status(), 200);
    let event = json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398",
        "changes": [{"field": "messages", "value": {"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "1", "phone_number_id": PHONE},
        "statuses": [{"id": "wamid.X", "status": "sent", "timestamp": "1", "recipient_id": "4915"}]}}]}]})
    .to_string();
    let signature = crate::graph::signature(event.as_bytes(), APP_SECRET);
    let signed = http::Request::post(format!("{base}/cloud-webhooks/meta"))
        .header("x-hub-signature-256", signature)
        .body(Full::new(bytes::Bytes::from(event)))
        .unwrap();
    assert_eq!(client.request(signed).await.unwrap().status(), 200);

    // A forged post is refused (and its refusal logged without the secret).
    let forged = http::Request::post(format!("{base}/cloud-webhooks/meta"))
        .header("x-hub-signature-256", format!("sha256={}", "0".repeat(64)))
        .body(Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    assert_eq!(client.request(forged).await.unwrap().status(), 401);

    // A broken file on SIGHUP is reported without quoting it, and the accounts stay.
    let pid = proxy.child.id().unwrap().to_string();
    let hangup = || {
        assert!(std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success())
    };
    std::fs::write(
        &file,
        format!(r#"{{"accounts": [{{"api_keys": "{KEY}", "access_token": "{TOKEN}"}}]}}"#),
    )
    .unwrap();
    hangup();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !proxy.stderr.lock().unwrap().contains("not reloaded") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("failed reload logged");
    assert_eq!(
        call(&base, "POST", "/v1/messages", text.clone()).await.0,
        201
    );

    // A rotated token takes effect on SIGHUP.
    std::fs::write(&file, accounts(NEW_TOKEN)).unwrap();
    hangup();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !proxy.stderr.lock().unwrap().contains("key map reloaded") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("reload logged");
    // The mock knows only the old token: the proxy now sends the new one, which it refuses.
    let (status, body) = call(&base, "POST", "/v1/messages", text).await;
    assert_eq!(
        (status, body["errors"][0]["code"].as_i64()),
        (401, Some(1005))
    );
    let last = graph.requests().last().cloned().unwrap();
    assert_eq!(
        last.header("authorization"),
        Some(format!("Bearer {NEW_TOKEN}").as_str())
    );

    proxy.child.kill().await.unwrap();
    let _ = proxy.drain.await;
    let logs = proxy.stderr.lock().unwrap().clone();
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "not at trace level:\n{logs}"
    );
    for secret in [
        TOKEN,
        NEW_TOKEN,
        APP_SECRET,
        VERIFY_TOKEN,
        KEY,
        &login_token,
        "admin-password-9",
    ] {
        assert!(
            !logs.contains(secret),
            "a secret leaked into the logs: {secret}\n{logs}"
        );
    }
}
