//! Spawns the real proxy server on 127.0.0.1:0 in-process and talks to it over real HTTP.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use waba_onprem_proxy::config::Config;

use super::mock_upstream::{Behaviour, MockUpstream};

pub struct TestProxy {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    pub server: JoinHandle<()>,
}

/// Defaults pointed at `upstream`, adjusted by `tune` (timeouts, limits).
pub async fn spawn_proxy_with(upstream: &str, tune: impl FnOnce(&mut Config)) -> TestProxy {
    let mut config = Config::with_upstream(upstream).expect("config");
    // Each proxy gets its own data directory: tests must not share (or litter) state.
    config.data_dir =
        std::env::temp_dir().join(format!("waba-proxy-test-{}", uuid::Uuid::new_v4()));
    tune(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let state = std::sync::Arc::new(
        waba_onprem_proxy::app::AppState::open(config)
            .await
            .expect("state"),
    );
    let server = tokio::spawn(waba_onprem_proxy::server::run(listener, state, async {
        let _ = rx.await;
    }));
    TestProxy {
        addr,
        shutdown: Some(tx),
        server,
    }
}

pub async fn spawn_proxy(upstream: &str) -> TestProxy {
    spawn_proxy_with(upstream, |_| {}).await
}

/// A fresh recording mock upstream and a default proxy in front of it: where most tests start.
pub async fn proxy_with_mock() -> (MockUpstream, TestProxy) {
    proxy_with_mock_tuned([], |_| {}).await
}

/// As [`proxy_with_mock`], the mock giving `answers` in turn before it answers like waba-v2.
pub async fn proxy_with_mock_answering(
    answers: impl IntoIterator<Item = Behaviour>,
) -> (MockUpstream, TestProxy) {
    proxy_with_mock_tuned(answers, |_| {}).await
}

/// As [`proxy_with_mock_answering`], the proxy's config adjusted by `tune`.
pub async fn proxy_with_mock_tuned(
    answers: impl IntoIterator<Item = Behaviour>,
    tune: impl FnOnce(&mut Config),
) -> (MockUpstream, TestProxy) {
    let mock = MockUpstream::start().await;
    for answer in answers {
        mock.push(answer);
    }
    let proxy = spawn_proxy_with(&mock.url(), tune).await;
    (mock, proxy)
}

impl TestProxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Starts graceful shutdown; `server` finishes once drained.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// What the client saw.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "proxy answered non-JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The first On-Premise error's code, asserting the envelope shape on the way.
    pub fn onprem_error_code(&self) -> i64 {
        let body = self.json();
        assert_eq!(body["meta"]["api_status"], "stable", "no meta in {body}");
        let error = &body["errors"][0];
        assert!(error["title"].is_string(), "no title in {body}");
        assert!(error["details"].is_string(), "no details in {body}");
        error["code"].as_i64().expect("numeric code")
    }
}

/// Sends one request with the given headers (the API key among them, as clients do).
pub async fn send(
    proxy: &TestProxy,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    send_at(proxy.addr, method, path, headers, body).await
}

/// [`send`] to the proxy at `addr`: from a task of its own while the test holds the proxy.
pub async fn send_at(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    send_bytes_at(addr, method, path, headers, Bytes::from(body.to_owned())).await
}

pub const API_KEY: &str = "TEST-KEY-d360-0123456789abcdef";

/// The smallest valid send, for tests about what happens around a send rather than in it.
pub const TEXT_MESSAGE: &str = r#"{"to":"1","type":"text","text":{"body":"x"}}"#;

/// Sends raw bytes with the given headers, as media clients do.
pub async fn send_bytes(
    proxy: &TestProxy,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Answer {
    send_bytes_at(proxy.addr, method, path, headers, body).await
}

/// The one request builder every `send*` helper goes through.
async fn send_bytes_at(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(Full::new(body)).expect("request"))
        .await
        .expect("proxy answered");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// `send` with the usual client headers.
pub async fn send_json(proxy: &TestProxy, method: &str, path: &str, body: &str) -> Answer {
    send(
        proxy,
        method,
        path,
        &[
            ("D360-API-KEY", API_KEY),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
}

/// [`TEXT_MESSAGE`] sent with the usual client headers.
pub async fn send_text(proxy: &TestProxy) -> Answer {
    send_json(proxy, "POST", "/v1/messages", TEXT_MESSAGE).await
}

/// A client changing its application settings with the JSON `patch`.
pub async fn patch_application_settings(proxy: &TestProxy, patch: &str) -> Answer {
    send_json(proxy, "PATCH", "/v1/settings/application", patch).await
}

/// A client setting its webhook (`{"url": ...}`, perhaps with `headers`).
pub async fn set_webhook(proxy: &TestProxy, body: &str) -> Answer {
    send_json(proxy, "POST", "/v1/configs/webhook", body).await
}

/// A client storing its media providers (a JSON array).
pub async fn set_media_providers(proxy: &TestProxy, providers: &str) -> Answer {
    send_json(
        proxy,
        "POST",
        "/v1/settings/application/media/providers",
        providers,
    )
    .await
}

/// A client reading its media providers back.
pub async fn media_providers(proxy: &TestProxy) -> Answer {
    send_json(proxy, "GET", "/v1/settings/application/media/providers", "").await
}

/// A key map file (`--key-map`) with the given JSON, in a place of its own.
pub fn key_map_file(json: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("keymap-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&path, json).unwrap();
    path
}

/// A password as a key map stores it: its SHA-256, in hex.
pub fn password_sha256(password: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(password.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `authorization` value of a login as `user` with `password`.
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {credentials}")
}

/// A request carrying only `authorization` (a login's Basic or a session's Bearer), no API key.
pub async fn post_authorized(
    proxy: &TestProxy,
    path: &str,
    authorization: &str,
    body: &str,
) -> Answer {
    send(
        proxy,
        "POST",
        path,
        &[("authorization", authorization)],
        body,
    )
    .await
}

/// A handle that can send from another task while the test owns the [`TestProxy`].
pub struct TestProxyRef {
    addr: SocketAddr,
}

impl TestProxyRef {
    pub fn new(addr: SocketAddr) -> Self {
        TestProxyRef { addr }
    }

    /// Sends a minimal text message and returns the status.
    pub async fn send_text(&self) -> u16 {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let request = Request::post(format!("http://{}/v1/messages", self.addr))
            .header("d360-api-key", API_KEY)
            .body(Full::new(Bytes::from_static(TEXT_MESSAGE.as_bytes())))
            .expect("request");
        client
            .request(request)
            .await
            .expect("answer")
            .status()
            .as_u16()
    }
}
