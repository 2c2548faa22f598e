//! The real server on 127.0.0.1:0 against an in-process mock of waba-v2 that records what it
//! received: every test asserts both what the client got and what went upstream.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::mock_upstream::{closed_port_url, Behaviour, MockUpstream};
use crate::support::proxy::{
    proxy_with_mock, proxy_with_mock_answering, proxy_with_mock_tuned, send, send_json, send_text,
    spawn_proxy, spawn_proxy_with, TestProxyRef, API_KEY, TEXT_MESSAGE,
};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use waba_onprem_proxy::config::Config;

fn graph_error(code: i64, message: &str, details: &str) -> Value {
    json!({"error": {"message": message, "type": "OAuthException", "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": details}, "fbtrace_id": "AbC"}})
}

/// Short enough to keep the suite fast; tests that wait on it also check it was not waited out.
fn short_upstream_timeout(config: &mut Config) {
    config.upstream_timeout = Duration::from_millis(300);
}

/// `n` clients each sending a text at once, each on a task of its own: the statuses they got.
fn texts_at_once(addr: SocketAddr, n: usize) -> Vec<JoinHandle<u16>> {
    (0..n)
        .map(|_| tokio::spawn(async move { TestProxyRef::new(addr).send_text().await }))
        .collect()
}

// ---- 1. sends ------------------------------------------------------------------------------

#[tokio::test]
async fn text_send_goes_upstream_in_cloud_shape_with_the_api_key() {
    let (mock, proxy) = proxy_with_mock().await;
    let answer = send_json(
        &proxy,
        "POST",
        "/v1/messages",
        r#"{"to":"15551234567","type":"text","preview_url":true,"render_mentions":true,
            "text":{"body":"see https://example.com"},"biz_opaque_callback_data":"crm-42"}"#,
    )
    .await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    let sent = mock.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].method, "POST");
    assert_eq!(sent[0].path_and_query, "/messages");
    assert_eq!(sent[0].header("d360-api-key"), Some(API_KEY));
    assert_eq!(sent[0].header("content-type"), Some("application/json"));
    assert_eq!(
        sent[0].json(),
        json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": "15551234567",
               "type": "text", "text": {"body": "see https://example.com", "preview_url": true},
               "biz_opaque_callback_data": "crm-42"})
    );
}

#[tokio::test]
async fn hsm_send_reaches_upstream_as_a_template() {
    let (mock, proxy) = proxy_with_mock().await;
    let hsm = json!({"to": "15551234567", "type": "hsm", "hsm": {
        "namespace": "ns", "element_name": "order_ready",
        "language": {"policy": "deterministic", "code": "en"},
        "localizable_params": [
            {"default": "Ann"},
            {"default": "$10.50", "currency": {"currency_code": "USD", "amount_1000": 10500}},
            {"date_time": {"unix_epoch": {"timestamp": 1485470276}}}]}});
    let answer = send_json(&proxy, "POST", "/v1/messages", &hsm.to_string()).await;
    assert_eq!(answer.status, 201);
    assert_eq!(
        mock.requests()[0].json()["template"],
        json!({"name": "order_ready", "language": {"code": "en"}, "components": [{"type": "body", "parameters": [
            {"type": "text", "text": "Ann"},
            {"type": "currency", "currency": {"fallback_value": "$10.50", "code": "USD", "amount_1000": 10500}},
            {"type": "date_time", "date_time": {"fallback_value": "2017-01-26 22:37 UTC"}}]}]})
    );
    assert_eq!(mock.requests()[0].json()["type"], "template");
}

#[tokio::test]
async fn media_by_link_drops_the_audio_caption() {
    let (mock, proxy) = proxy_with_mock().await;
    let body =
        r#"{"to":"1","type":"audio","audio":{"link":"https://cdn.example/a.ogg","caption":"x"}}"#;
    assert_eq!(
        send_json(&proxy, "POST", "/v1/messages", body).await.status,
        201
    );
    assert_eq!(
        mock.requests()[0].json()["audio"],
        json!({"link": "https://cdn.example/a.ogg"})
    );
}

#[tokio::test]
async fn a_type_the_proxy_does_not_know_is_left_for_cloud_to_judge() {
    let (mock, proxy) = proxy_with_mock_answering([Behaviour::Json {
        status: 400,
        body: graph_error(
            131051,
            "(#131051) Unsupported message type",
            "Message type is not currently supported",
        ),
    }])
    .await;
    let answer = send_json(
        &proxy,
        "POST",
        "/v1/messages",
        r#"{"to":"1","type":"hologram","hologram":{"id":"1"}}"#,
    )
    .await;
    assert_eq!((answer.status, answer.onprem_error_code()), (400, 501));
    assert_eq!(mock.requests()[0].json()["hologram"], json!({"id": "1"}));
}

// ---- 2. send response ----------------------------------------------------------------------

#[tokio::test]
async fn send_response_is_201_with_ids_and_wa_id_exactly_as_upstream_gave_them() {
    let (_mock, proxy) = proxy_with_mock_answering([Behaviour::Json {
        status: 200,
        body: json!({"messaging_product": "whatsapp",
            "contacts": [{"input": "+55 11 91234-5678", "wa_id": "551112345678"}],
            "messages": [{"id": "wamid.HBgNNTUxMTkxMjM0NTY3OBUCABEYEjQ=", "message_status": "accepted"}]}),
    }]).await;
    let answer = send_json(
        &proxy,
        "POST",
        "/v1/messages",
        r#"{"to":"+55 11 91234-5678","type":"text","text":{"body":"oi"}}"#,
    )
    .await;
    assert_eq!(answer.status, 201);
    assert_eq!(
        answer.json(),
        json!({"contacts": [{"input": "+55 11 91234-5678", "wa_id": "551112345678"}],
               "messages": [{"id": "wamid.HBgNNTUxMTkxMjM0NTY3OBUCABEYEjQ="}],
               "meta": {"api_status": "stable", "version": "v2.53.0"}})
    );
    assert_eq!(answer.headers["content-type"], "application/json");
}

#[tokio::test]
async fn configured_onprem_version_is_what_meta_says() {
    let (_mock, proxy) = proxy_with_mock_tuned([], |c| c.meta.version = "v2.41.2".into()).await;
    let answer = send_json(&proxy, "GET", "/v1/health", "").await;
    assert_eq!(answer.json()["meta"]["version"], "v2.41.2");
}

// ---- 3. mark as read -----------------------------------------------------------------------

#[tokio::test]
async fn mark_as_read_posts_the_decoded_id_and_answers_meta_only() {
    let (mock, proxy) = proxy_with_mock().await;
    let answer = send_json(
        &proxy,
        "PUT",
        "/v1/messages/wamid.HBgLMTU1NTEy%3D%3D",
        r#"{"status":"read"}"#,
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(
        answer.json(),
        json!({"meta": {"api_status": "stable", "version": "v2.53.0"}})
    );
    let sent = mock.requests();
    assert_eq!(sent[0].path_and_query, "/messages");
    assert_eq!(
        sent[0].json(),
        json!({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.HBgLMTU1NTEy=="})
    );
}

#[tokio::test]
async fn mark_as_read_with_another_status_is_1009_and_never_reaches_upstream() {
    let (mock, proxy) = proxy_with_mock().await;
    let answer = send_json(
        &proxy,
        "PUT",
        "/v1/messages/wamid.X",
        r#"{"status":"delivered"}"#,
    )
    .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.onprem_error_code(), 1009);
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn old_message_read_rejection_131009_comes_back_as_1009() {
    let (_mock, proxy) = proxy_with_mock_answering([Behaviour::Json {
        status: 400,
        body: graph_error(
            131009,
            "(#131009) Parameter value is not valid",
            "Message is older than 30 days",
        ),
    }])
    .await;
    let answer = send_json(
        &proxy,
        "PUT",
        "/v1/messages/wamid.OLD",
        r#"{"status":"read"}"#,
    )
    .await;
    assert_eq!(answer.status, 400);
    let body = answer.json();
    assert_eq!(body["errors"][0]["code"], 1009);
    assert_eq!(body["errors"][0]["cloud_code"], 131009);
    assert_eq!(
        body["errors"][0]["details"],
        "Message is older than 30 days"
    );
}

// ---- 4. local answers ----------------------------------------------------------------------

#[tokio::test]
async fn contacts_and_health_are_answered_without_calling_upstream() {
    let (mock, proxy) = proxy_with_mock().await;
    let contacts = send_json(
        &proxy,
        "POST",
        "/v1/contacts",
        r#"{"blocking":"wait","contacts":["+1 (555) 123-4567"],"force_check":true}"#,
    )
    .await;
    assert_eq!(contacts.status, 200);
    assert_eq!(
        contacts.json()["contacts"],
        json!([{"input": "+1 (555) 123-4567", "status": "valid", "wa_id": "15551234567"}])
    );
    let health = send_json(&proxy, "GET", "/v1/health", "").await;
    assert_eq!(health.status, 200);
    assert_eq!(
        health.json()["health"],
        json!({"gateway_status": "connected"})
    );
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn contacts_without_contacts_is_1008() {
    let (_mock, proxy) = proxy_with_mock().await;
    let answer = send_json(&proxy, "POST", "/v1/contacts", r#"{"contacts":[]}"#).await;
    assert_eq!((answer.status, answer.onprem_error_code()), (400, 1008));
}

// ---- 5. Cloud error shapes -----------------------------------------------------------------

async fn error_through_proxy(behaviour: Behaviour) -> (u16, Value) {
    let (_mock, proxy) = proxy_with_mock_answering([behaviour]).await;
    let answer = send_text(&proxy).await;
    (answer.status, answer.json())
}

#[tokio::test]
async fn graph_re_engagement_error_becomes_470_with_cloud_code_kept() {
    let (status, body) = error_through_proxy(Behaviour::Json {
        status: 400,
        body: graph_error(
            131047,
            "(#131047) Re-engagement message",
            "More than 24 hours have passed",
        ),
    })
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["errors"],
        json!([{"code": 470, "title": "Re-engagement message", "details": "More than 24 hours have passed",
                "cloud_code": 131047}])
    );
}

#[tokio::test]
async fn gateway_text_error_with_401_becomes_access_denied() {
    let (status, body) = error_through_proxy(Behaviour::Json {
        status: 401,
        body: json!({"error": "Invalid api key"}),
    })
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["errors"][0]["code"], 1005);
    assert_eq!(body["errors"][0]["details"], "Invalid api key");
}

#[tokio::test]
async fn gateway_meta_error_takes_the_status_from_http_not_from_the_body() {
    let (status, body) = error_through_proxy(Behaviour::Json {
        status: 401,
        body: json!({"meta": {"httpCode": 404, "developerMessage": "Api key invalid", "success": false}}),
    })
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["errors"][0]["code"], 1005);
    assert_eq!(body["errors"][0]["details"], "Api key invalid");
}

#[tokio::test]
async fn html_and_empty_error_bodies_become_onprem_errors() {
    let (status, body) = error_through_proxy(Behaviour::Respond {
        status: 502,
        headers: vec![("content-type".into(), "text/html".into())],
        body: Bytes::from_static(b"<html><body>\n  Bad   gateway\n</body></html>"),
    })
    .await;
    assert_eq!(status, 502);
    assert_eq!(body["errors"][0]["code"], 1011);
    assert_eq!(
        body["errors"][0]["details"],
        "upstream answered HTTP 502: <html><body> Bad gateway </body></html>"
    );

    let (status, body) = error_through_proxy(Behaviour::Respond {
        status: 500,
        headers: vec![],
        body: Bytes::new(),
    })
    .await;
    assert_eq!(status, 500);
    assert_eq!(body["errors"][0]["code"], 1000);
}

// ---- 6. proxy-made errors ------------------------------------------------------------------

#[tokio::test]
async fn bad_requests_get_onprem_errors_and_never_reach_upstream() {
    let (mock, proxy) = proxy_with_mock().await;
    let cases = [
        (r#"{"to":"1","type":"text","text":{"body":"#, 400, 1009),
        (
            r#"{"to":15551234567,"type":"text","text":{"body":"x"}}"#,
            400,
            1009,
        ),
        (r#"{"type":"text","text":{"body":"x"}}"#, 400, 1008),
        // No `type` is text, as in On-Premise: then `text` is missing.
        (r#"{"to":"1"}"#, 400, 1008),
        (r#"{"to":"1","type":"image"}"#, 400, 1008),
        (r#"{"to":"1","type":"order"}"#, 400, 1008),
        (r#"[1,2]"#, 400, 1009),
        ("", 400, 1008),
    ];
    for (body, status, code) in cases {
        let answer = send_json(&proxy, "POST", "/v1/messages", body).await;
        assert_eq!(
            (answer.status, answer.onprem_error_code()),
            (status, code),
            "{body}"
        );
    }
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn unknown_routes_are_404_and_on_premise_only_routes_are_501() {
    let (mock, proxy) = proxy_with_mock().await;
    let unknown = send_json(&proxy, "GET", "/v1/nothing/here", "").await;
    assert_eq!((unknown.status, unknown.onprem_error_code()), (404, 1006));
    assert!(unknown.json()["errors"][0]["details"]
        .as_str()
        .unwrap()
        .contains("/v1/nothing/here"));
    let outside = send_json(&proxy, "GET", "/favicon.ico", "").await;
    assert_eq!(outside.status, 404);
    for path in [
        "/v1/account",
        "/v1/stats/app",
        "/v1/contacts/15551234567/block",
        "/v1/settings/backup",
    ] {
        let answer = send_json(&proxy, "POST", path, "{}").await;
        assert_eq!(answer.status, 501, "{path}");
        assert!(answer.json()["errors"][0]["details"]
            .as_str()
            .unwrap()
            .contains("not available after migration"));
    }
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn body_over_the_limit_is_413_whether_declared_or_chunked() {
    let (mock, proxy) = proxy_with_mock_tuned([], |c| c.max_body_bytes = 1024).await;
    let big = format!(
        r#"{{"to":"1","type":"text","text":{{"body":"{}"}}}}"#,
        "a".repeat(2000)
    );
    let answer = send_json(&proxy, "POST", "/v1/messages", &big).await;
    assert_eq!((answer.status, answer.onprem_error_code()), (413, 1009));

    // Chunked: no Content-Length, so the limit is enforced while reading.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let chunk = "a".repeat(2000);
    let request = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("\"code\":1009"), "{response}");
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn a_body_that_never_finishes_is_408_after_the_body_read_timeout() {
    let (mock, proxy) =
        proxy_with_mock_tuned([], |c| c.body_read_timeout = Duration::from_millis(200)).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"to\":")
        .await
        .unwrap();
    let mut response = vec![0; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut response)).await;
    let n = read.expect("answered before the outer timeout").unwrap();
    let response = String::from_utf8_lossy(&response[..n]);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn upstream_refusing_connections_is_503_service_not_ready() {
    let proxy = spawn_proxy(&closed_port_url().await).await;
    let answer = send_text(&proxy).await;
    assert_eq!((answer.status, answer.onprem_error_code()), (503, 1011));
}

#[tokio::test]
async fn stalled_upstream_is_504_after_the_deadline() {
    let mock = MockUpstream::start().await;
    mock.set_default(Behaviour::Stall);
    let proxy = spawn_proxy_with(&mock.url(), short_upstream_timeout).await;
    let answer = send_text(&proxy).await;
    assert_eq!((answer.status, answer.onprem_error_code()), (504, 1011));
}

#[tokio::test]
async fn garbage_and_resets_from_upstream_are_502() {
    let (_mock, proxy) = proxy_with_mock_answering([
        Behaviour::Respond {
            status: 200,
            headers: vec![],
            body: Bytes::from_static(b"\x00\x01 not json at all"),
        },
        Behaviour::Json {
            status: 200,
            body: json!({"unexpected": true}),
        },
        Behaviour::CloseWithoutAnswer,
    ])
    .await;
    for _ in 0..3 {
        let answer = send_text(&proxy).await;
        assert_eq!((answer.status, answer.onprem_error_code()), (502, 1000));
    }
}

// ---- 7. headers ----------------------------------------------------------------------------

#[tokio::test]
async fn api_key_in_any_case_passes_untouched_and_hop_by_hop_headers_do_not() {
    let (mock, proxy) = proxy_with_mock().await;
    let answer = send(
        &proxy,
        "POST",
        "/v1/messages",
        &[
            ("D360-Api-Key", "MiXeD-Case-Value_123"),
            ("connection", "keep-alive, x-hop-only"),
            ("x-hop-only", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("te", "trailers"),
            ("x-end-to-end", "kept"),
        ],
        TEXT_MESSAGE,
    )
    .await;
    assert_eq!(answer.status, 201);
    let sent = &mock.requests()[0];
    assert_eq!(sent.header("d360-api-key"), Some("MiXeD-Case-Value_123"));
    assert_eq!(sent.header("x-end-to-end"), Some("kept"));
    for hop in ["x-hop-only", "keep-alive", "proxy-authorization", "te"] {
        assert!(sent.header(hop).is_none(), "{hop} was forwarded");
    }
}

#[tokio::test]
async fn gzipped_upstream_answers_are_decoded_before_translation() {
    let (mock, proxy) = proxy_with_mock_answering([Behaviour::GzipJson {
        status: 200,
        body: json!({"messaging_product": "whatsapp", "contacts": [{"input": "1", "wa_id": "1"}],
                     "messages": [{"id": "wamid.GZ"}]}),
    }])
    .await;
    let answer = send_text(&proxy).await;
    assert_eq!(answer.status, 201);
    assert_eq!(answer.json()["messages"][0]["id"], "wamid.GZ");
    assert_eq!(mock.requests()[0].header("accept-encoding"), Some("gzip"));
}

#[tokio::test]
async fn same_host_308_is_followed_with_method_body_and_key() {
    let (mock, proxy) =
        proxy_with_mock_answering([Behaviour::Redirect308("/moved/messages".into())]).await;
    let answer = send_text(&proxy).await;
    let sent = mock.requests();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].method, "POST");
    assert_eq!(sent[1].path_and_query, "/moved/messages");
    assert_eq!(sent[1].json(), sent[0].json());
    assert_eq!(sent[1].header("d360-api-key"), Some(API_KEY));
    // The mock answers 404 for unknown paths: what matters is that it was asked.
    assert_eq!(answer.status, 404);
}

#[tokio::test]
async fn redirect_to_another_host_is_not_followed() {
    let (mock, proxy) = proxy_with_mock_answering([Behaviour::Redirect308(
        "http://evil.example/messages".into(),
    )])
    .await;
    let answer = send_text(&proxy).await;
    assert_eq!((answer.status, answer.onprem_error_code()), (502, 1000));
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test]
async fn request_id_is_echoed_or_generated_on_every_answer() {
    let (mock, proxy) = proxy_with_mock().await;
    let echoed = send(
        &proxy,
        "GET",
        "/v1/health",
        &[("x-request-id", "client-abc-1")],
        "",
    )
    .await;
    assert_eq!(echoed.headers["x-request-id"], "client-abc-1");
    let generated = send(&proxy, "GET", "/v1/nope", &[], "").await;
    let id = generated.headers["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 32, "{id}");
    let forwarded = send(
        &proxy,
        "POST",
        "/v1/messages",
        &[("x-request-id", "trace-42"), ("d360-api-key", "k")],
        TEXT_MESSAGE,
    )
    .await;
    assert_eq!(forwarded.headers["x-request-id"], "trace-42");
    assert_eq!(mock.requests()[0].header("x-request-id"), Some("trace-42"));
}

// ---- 8. foundations ------------------------------------------------------------------------

#[tokio::test]
async fn half_sent_request_headers_are_cut_off_by_the_header_read_timeout() {
    let (_mock, proxy) =
        proxy_with_mock_tuned([], |c| c.header_read_timeout = Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // Without an armed timer hyper would wait forever; the outer timeout turns that into a failure.
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "connection still open after the header read timeout"
    );
    // Closed by the timeout, not by anything quicker (a misconfigured server drops at once).
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "closed after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish_and_refuses_new_ones() {
    let mock = MockUpstream::start().await;
    mock.set_default(Behaviour::WaitForRelease);
    let mut proxy = spawn_proxy(&mock.url()).await;
    let addr = proxy.addr;
    let proxy_url = proxy.url("");
    let in_flight = tokio::spawn({
        let proxy_ref = TestProxyRef::new(addr);
        async move { proxy_ref.send_text().await }
    });
    mock.wait_for_requests(1).await;
    proxy.shutdown();
    // The listener closes once shutdown starts; the in-flight request still completes.
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if TcpStream::connect(addr).await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        refused.is_ok(),
        "{proxy_url} still accepting after shutdown"
    );
    mock.release();
    let status = in_flight.await.unwrap();
    assert_eq!(status, 201);
    tokio::time::timeout(Duration::from_secs(5), proxy.server)
        .await
        .unwrap()
        .unwrap();
}

/// Two clients, each on its own keep-alive connection, take turns. The second connection goes
/// to the other serving thread (the one with fewer open), and each thread sends upstream over
/// its own pooled connection: two upstream connections, each reused. One thread, or one pool
/// for both, would have used a single upstream connection.
#[tokio::test]
async fn keep_alive_clients_spread_over_serving_threads_each_with_its_own_upstream_pool() {
    use http_body_util::{BodyExt, Full};
    let (mock, proxy) = proxy_with_mock_tuned([], |c| c.serving_threads = 2).await;
    let clients: Vec<_> = (0..2)
        .map(|_| {
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>()
        })
        .collect();
    for turn in 0..6 {
        let request = http::Request::post(proxy.url("/v1/messages"))
            .header("d360-api-key", API_KEY)
            .body(Full::new(Bytes::from_static(TEXT_MESSAGE.as_bytes())))
            .unwrap();
        let response = clients[turn % 2].request(request).await.unwrap();
        assert_eq!(response.status(), 201);
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(mock.requests().len(), 6);
    assert_eq!(mock.connections_accepted(), 2);
}

/// With three serving threads, six held connections are spread two to a thread (each new
/// connection goes to the thread with the fewest). At shutdown every thread drains what it
/// holds, and once the server has returned nothing keeps the data directory locked.
#[tokio::test]
async fn every_serving_thread_drains_at_shutdown_and_lets_go_of_the_state() {
    let mock = MockUpstream::start().await;
    for _ in 1..6 {
        mock.push(Behaviour::WaitForRelease);
    }
    // The last one, on a serving thread of its own, answers well after the others (and after
    // the few seconds the server allows a drained thread to wind down): the server must wait
    // for that thread to drain before anything ends.
    mock.push(Behaviour::Delay(
        Duration::from_millis(5000),
        Box::new(Behaviour::WaitForRelease),
    ));
    let data_dir = std::env::temp_dir().join(format!("waba-proxy-test-{}", uuid::Uuid::new_v4()));
    let mut proxy = spawn_proxy_with(&mock.url(), |c| {
        c.serving_threads = 3;
        c.data_dir = data_dir.clone();
    })
    .await;
    let mut in_flight = Vec::new();
    for n in 1..=6 {
        let proxy_ref = TestProxyRef::new(proxy.addr);
        in_flight.push(tokio::spawn(async move { proxy_ref.send_text().await }));
        // One at a time, so each connection is placed knowing where the earlier ones went.
        mock.wait_for_requests(n).await;
    }
    assert_eq!(
        mock.connections_accepted(),
        6,
        "each thread keeps its own upstream connections"
    );
    proxy.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    mock.release();
    for request in in_flight {
        assert_eq!(request.await.unwrap(), 201);
    }
    tokio::time::timeout(Duration::from_secs(5), proxy.server)
        .await
        .unwrap()
        .unwrap();
    let mut config = waba_onprem_proxy::config::Config::with_upstream(&mock.url()).unwrap();
    config.data_dir = data_dir;
    // Right after `run` returns. The only grace is 200 ms for another test's fork in this
    // shared test process, which holds the lock file's description until its exec; a serving
    // thread still draining would hold it for its 5 s answer.
    let deadline = std::time::Instant::now() + Duration::from_millis(200);
    loop {
        match waba_onprem_proxy::app::AppState::open(config.clone()).await {
            Ok(_) => break,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => panic!("the data directory is still held: {e}"),
        }
    }
}

// ---- client abuse and probes ---------------------------------------------------------------

#[tokio::test]
async fn connections_over_the_cap_get_503_with_retry_after() {
    let (_mock, proxy) = proxy_with_mock_tuned([], |c| c.max_connections = 1).await;
    // The first connection holds the only slot (kept alive after its request).
    let mut first = TcpStream::connect(proxy.addr).await.unwrap();
    first
        .write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0; 4096];
    let n = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    let mut second = TcpStream::connect(proxy.addr).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), second.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(response.contains("retry-after: 1"), "{response}");
    assert!(response.contains("\"code\":1011"), "{response}");
    drop(first);
}

#[tokio::test]
async fn oversized_request_headers_are_431() {
    let (_mock, proxy) = proxy_with_mock().await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let request = format!(
        "GET /v1/health HTTP/1.1\r\nhost: x\r\nx-huge: {}\r\n\r\n",
        "a".repeat(1_000_000)
    );
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = vec![0; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut response))
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(
        String::from_utf8_lossy(&response[..n]).starts_with("HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&response[..n])
    );
}

#[tokio::test]
async fn healthz_is_alive_and_readyz_follows_upstream_reachability() {
    let (_mock, proxy) = proxy_with_mock().await;
    assert_eq!(send(&proxy, "GET", "/healthz", &[], "").await.status, 200);
    let ready = send(&proxy, "GET", "/readyz", &[], "").await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);

    let unreachable = spawn_proxy(&closed_port_url().await).await;
    let not_ready = send(&unreachable, "GET", "/readyz", &[], "").await;
    assert_eq!(not_ready.status, 503);
    assert_eq!(not_ready.json()["checks"]["upstream_reachable"], false);
    assert_eq!(not_ready.json()["checks"]["outbox_writable"], true);
}

#[tokio::test]
async fn a_send_is_never_retried_when_the_connection_breaks() {
    let (mock, proxy) = proxy_with_mock_answering([Behaviour::CloseWithoutAnswer]).await;
    let answer = send_text(&proxy).await;
    assert_eq!((answer.status, answer.onprem_error_code()), (502, 1000));
    assert_eq!(
        mock.requests().len(),
        1,
        "a POST that may have been sent must not be sent twice"
    );
}

#[tokio::test]
async fn an_unresolvable_upstream_host_is_503() {
    let proxy = spawn_proxy("http://upstream.invalid").await;
    let answer = send_text(&proxy).await;
    assert_eq!((answer.status, answer.onprem_error_code()), (503, 1011));
}

#[tokio::test]
async fn a_tls_handshake_failure_is_503() {
    // An https:// upstream that only speaks plain HTTP: the handshake fails.
    let mock = MockUpstream::start().await;
    let proxy = spawn_proxy(&mock.url().replace("http://", "https://")).await;
    let answer = send_text(&proxy).await;
    assert_eq!((answer.status, answer.onprem_error_code()), (503, 1011));
}

#[tokio::test]
async fn an_upstream_trickling_its_answer_hits_the_deadline() {
    let (_mock, proxy) = proxy_with_mock_tuned(
        [Behaviour::Delay(
            Duration::from_secs(30),
            Box::new(Behaviour::LikeWabaV2),
        )],
        short_upstream_timeout,
    )
    .await;
    let started = std::time::Instant::now();
    let answer = send_text(&proxy).await;
    assert_eq!((answer.status, answer.onprem_error_code()), (504, 1011));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_200_carrying_an_error_body_is_not_a_success() {
    let (_mock, proxy) = proxy_with_mock_answering([Behaviour::Json {
        status: 200,
        body: graph_error(131026, "(#131026) Receiver is incapable", "x"),
    }])
    .await;
    let answer = send_text(&proxy).await;
    assert_eq!((answer.status, answer.onprem_error_code()), (400, 1026));
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_errors_by_code() {
    let (_mock, proxy) = proxy_with_mock().await;
    send_text(&proxy).await;
    send_json(&proxy, "POST", "/v1/messages", r#"{"type":"text"}"#).await;
    let metrics = send(&proxy, "GET", "/metrics", &[], "").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    assert!(
        text.contains(r#"waba_proxy_requests_total{route="send_message",status="201"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"waba_proxy_requests_total{route="send_message",status="400"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"waba_proxy_errors_total{code="1008"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("waba_proxy_upstream_seconds_count 1"),
        "{text}"
    );
    assert!(
        text.contains(r#"waba_proxy_webhook_outbox{state="pending"} 0"#),
        "{text}"
    );
    assert!(
        text.contains("waba_proxy_in_flight_requests 1"),
        "the scrape itself is in flight: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_completes_all_200_in_flight_requests() {
    let mock = MockUpstream::start().await;
    mock.set_default(Behaviour::WaitForRelease);
    let mut proxy =
        spawn_proxy_with(&mock.url(), |c| c.shutdown_grace = Duration::from_secs(20)).await;
    let addr = proxy.addr;
    let in_flight = texts_at_once(addr, 200);
    mock.wait_for_requests(200).await;
    proxy.shutdown();
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        refused.is_ok(),
        "new connections still accepted during shutdown"
    );
    mock.release();
    for request in in_flight {
        assert_eq!(request.await.unwrap(), 201);
    }
    tokio::time::timeout(Duration::from_secs(20), proxy.server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn dry_run_translates_everything_sends_nothing_and_reports_what_was_dropped() {
    let proxy = spawn_proxy_with("dry-run", |c| c.admin_token = Some("admin-token".into())).await;
    let text = send_json(&proxy, "POST", "/v1/messages",
        r#"{"to":"+1 555 0100","type":"text","render_mentions":true,"preview_url":true,"text":{"body":"hi"}}"#).await;
    assert_eq!(text.status, 201, "{:?}", text.body);
    assert!(text.json()["messages"][0]["id"]
        .as_str()
        .unwrap()
        .starts_with("wamid.DRYRUN"));
    assert_eq!(text.json()["contacts"][0]["wa_id"], "15550100");
    let hsm = send_json(&proxy, "POST", "/v1/messages",
        r#"{"to":"1","type":"hsm","hsm":{"namespace":"n","element_name":"e","language":{"policy":"deterministic","code":"en"}}}"#).await;
    assert_eq!(hsm.status, 201);
    assert_eq!(
        send_json(
            &proxy,
            "PUT",
            "/v1/messages/wamid.DRYRUN1",
            r#"{"status":"read"}"#
        )
        .await
        .status,
        200
    );
    assert_eq!(
        send_json(&proxy, "GET", "/v1/settings/business/profile", "")
            .await
            .status,
        200
    );
    assert_eq!(
        send_json(&proxy, "POST", "/v1/messages", r#"{"type":"text"}"#)
            .await
            .status,
        400
    );
    let media = send(
        &proxy,
        "POST",
        "/v1/media",
        &[("content-type", "image/png"), ("d360-api-key", "k")],
        "png",
    )
    .await;
    assert_eq!(media.status, 501);

    let report = send(
        &proxy,
        "GET",
        "/admin/dry-run/report",
        &[("authorization", "Bearer admin-token")],
        "",
    )
    .await;
    assert_eq!(report.status, 200);
    assert_eq!(report.json()["dry_run"], true);
    let report = report.json()["report"].clone();
    assert_eq!(report["requests"]["send_message 201"], 2);
    assert_eq!(report["requests"]["send_message 400"], 1);
    assert_eq!(report["dropped_fields"]["send_message: render_mentions"], 1);
    assert_eq!(
        report["dropped_fields"]["send_message: preview_url (rewritten as text.preview_url)"],
        1
    );
    assert_eq!(
        report["dropped_fields"]["send_message: hsm (rewritten as template)"],
        1
    );
    assert_eq!(report["refused"]["send_message: to is required"], 1);
    assert!(report["refused"]
        .as_object()
        .unwrap()
        .keys()
        .any(|k| k.starts_with("upload_media: dry run")));
}

#[tokio::test]
async fn an_upstream_answer_cut_off_mid_body_is_502() {
    let (_mock, proxy) = proxy_with_mock_answering([Behaviour::ResetMidBody {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        declared_len: 500,
        send: Bytes::from_static(br#"{"messaging_product":"whatsapp","mess"#),
    }])
    .await;
    let answer = send_text(&proxy).await;
    assert_eq!((answer.status, answer.onprem_error_code()), (502, 1000));
}

#[tokio::test]
async fn huge_upstream_headers_are_502_not_a_crash() {
    let (_mock, proxy) = proxy_with_mock_answering([Behaviour::Respond {
        status: 200,
        headers: vec![("x-huge".into(), "a".repeat(2_000_000))],
        body: Bytes::from_static(br#"{"messages":[{"id":"wamid.A"}]}"#),
    }])
    .await;
    let answer = send_text(&proxy).await;
    assert_eq!((answer.status, answer.onprem_error_code()), (502, 1000));
    assert_eq!(
        send_json(&proxy, "GET", "/v1/health", "").await.status,
        200,
        "still serving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_upstream_5xx_is_answered_503_every_time() {
    let mock = MockUpstream::start().await;
    mock.set_default(Behaviour::Respond {
        status: 503,
        headers: vec![],
        body: Bytes::from_static(b"overloaded"),
    });
    let proxy = spawn_proxy(&mock.url()).await;
    let addr = proxy.addr;
    let storm = texts_at_once(addr, 100);
    for request in storm {
        assert_eq!(request.await.unwrap(), 503);
    }
    assert_eq!(
        mock.requests().len(),
        100,
        "each send went upstream exactly once"
    );
    assert_eq!(send_json(&proxy, "GET", "/v1/health", "").await.status, 200);
}

#[tokio::test]
async fn an_upstream_stalling_mid_body_is_504_within_the_deadline() {
    let (_mock, proxy) = proxy_with_mock_tuned(
        [Behaviour::StallMidBody {
            status: 200,
            declared_len: 400,
            send: Bytes::from_static(br#"{"messaging_product":"whatsapp","#),
        }],
        short_upstream_timeout,
    )
    .await;
    let started = std::time::Instant::now();
    let answer = send_text(&proxy).await;
    assert_eq!((answer.status, answer.onprem_error_code()), (504, 1011));
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Ids become upstream paths that carry the client's key (and, with Graph, tokens the client
/// never holds): hostile ones are 404/1006 and never reach upstream.
#[tokio::test]
async fn hostile_ids_in_paths_are_404_and_never_reach_upstream() {
    let (mock, proxy) = proxy_with_mock().await;
    for (method, path) in [
        ("GET", "/v1/media/..%2f..%2fadmin"),
        ("GET", "/v1/media/..%5c..%5cadmin"),
        ("DELETE", "/v1/media/%2e%2e%2fmessages"),
        ("GET", "/v1/configs/templates/..%2f..%2fmessages"),
        ("GET", "/v1/media/123%00"),
        ("GET", "/v1/media/1%0d%0aX:%201"),
        ("GET", "/v1/media/1%202"),
        ("GET", "/v1/media/"),
        ("GET", "/v1/media/a/b"),
        ("PUT", "/v1/messages/wamid.1%0a"),
    ] {
        let answer = send_json(&proxy, method, path, r#"{"status":"read"}"#).await;
        assert_eq!(
            (answer.status, answer.onprem_error_code()),
            (404, 1006),
            "{method} {path}"
        );
    }
    assert!(mock.requests().is_empty(), "{:?}", mock.requests());
}

/// An upstream 429 says when to come back; the client hears it too.
#[tokio::test]
async fn an_upstream_429_passes_its_retry_after_to_the_client() {
    let (_mock, proxy) = proxy_with_mock_answering([Behaviour::Respond {
        status: 429,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("retry-after".into(), "37".into()),
        ],
        body: Bytes::from_static(
            br#"{"error":{"message":"(#130429) Rate limit hit","type":"OAuthException","code":130429,"error_data":{"messaging_product":"whatsapp","details":"Cloud API message throughput has been reached."}}}"#,
        ),
    }]).await;
    let answer = send_text(&proxy).await;
    assert_eq!((answer.status, answer.onprem_error_code()), (429, 1015));
    assert_eq!(answer.headers.get("retry-after").unwrap(), "37");
}

/// One raw request on a fresh connection; the whole answer as text (the proxy closes after
/// `Connection: close`).
async fn raw_exchange(proxy: &crate::support::proxy::TestProxy, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// RFC 9112 3.2: an HTTP/1.1 request has exactly one valid Host; and request headers are capped
/// (`--max-header-bytes`), answered On-Premise-shaped like every error the proxy makes.
#[tokio::test]
async fn host_rules_and_the_header_cap_are_enforced_on_premise_style() {
    let (mock, proxy) = proxy_with_mock().await;
    let body = TEXT_MESSAGE;
    let request = |head: &str| {
        format!(
            "POST /v1/messages HTTP/1.1\r\n{head}D360-API-KEY: k\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    for head in [
        "",
        "Host: a.example\r\nHost: b.example\r\n",
        "Host: a b\r\n",
        "Host: user@a.example\r\n",
    ] {
        let answer = raw_exchange(&proxy, request(head).as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{head:?}: {answer}");
        assert!(answer.contains(r#""code":1009"#), "{answer}");
        assert!(answer.contains(r#""meta""#), "{answer}");
    }
    // Past the cap, and past twice it: both answered On-Premise-shaped.
    for kib in [40, 64] {
        let big = format!("Host: p\r\nX-Padding: {}\r\n", "a".repeat(kib * 1024));
        let answer = raw_exchange(&proxy, request(&big).as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 431"),
            "{}",
            &answer[..answer.len().min(200)]
        );
        assert!(
            answer.contains(r#""errors""#) && answer.contains(r#""meta""#),
            "{answer}"
        );
    }
    assert!(
        mock.requests().is_empty(),
        "nothing refused may reach upstream"
    );

    // HTTP/1.0 has no Host requirement; one valid Host passes.
    let ten = format!(
        "POST /v1/messages HTTP/1.0\r\nD360-API-KEY: k\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert!(raw_exchange(&proxy, ten.as_bytes())
        .await
        .starts_with("HTTP/1.0 201"));
    for host in ["proxy.internal:8080", "[::1]:8080", "10.0.0.7"] {
        let ok = raw_exchange(&proxy, request(&format!("Host: {host}\r\n")).as_bytes()).await;
        assert!(ok.starts_with("HTTP/1.1 201"), "{host}: {ok}");
    }
}

/// An upstream that answers a status outside 100-599, or a head past the header cap, is broken:
/// 502/1000, never passed on.
#[tokio::test]
async fn an_upstream_status_outside_100_599_or_an_oversized_head_is_502() {
    let (_mock, proxy) = proxy_with_mock_answering([
        Behaviour::Respond {
            status: 999,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from_static(b"{}"),
        },
        Behaviour::Respond {
            status: 200,
            headers: vec![("x-padding".into(), "a".repeat(64 * 1024))],
            body: Bytes::from_static(b"{}"),
        },
    ])
    .await;
    for _ in 0..2 {
        let answer = send_text(&proxy).await;
        assert_eq!((answer.status, answer.onprem_error_code()), (502, 1000));
    }
}

/// A client that sends its request and then shuts down its writing side (`shutdown(SHUT_WR)`)
/// still gets its answer.
#[tokio::test]
async fn a_half_closed_client_still_gets_its_answer() {
    let (_mock, proxy) = proxy_with_mock().await;
    let body = TEXT_MESSAGE;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let request = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: p\r\nD360-API-KEY: k\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("an answer, then the close")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert!(answer.contains("wamid.MOCK1"), "{answer}");
}

fn metric(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Clients that go away at every stage: the in-flight gauge comes back to exactly zero, and a
/// send already forwarded runs to its end upstream and is logged and counted, never cut off
/// halfway (without half-close support hyper cancels it when the client resets).
#[tokio::test]
async fn abandoned_requests_leave_the_gauge_exact_and_forwarded_sends_finish_upstream() {
    let (mock, proxy) = proxy_with_mock().await;
    let body = TEXT_MESSAGE;
    let head = |length: usize| {
        format!(
            "POST /v1/messages HTTP/1.1\r\nHost: p\r\nD360-API-KEY: k\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        )
    };
    // 1. Mid-headers.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"POST /v1/messages HTTP/1.1\r\nHost: p\r\nD360-AP")
        .await
        .unwrap();
    drop(s);
    // 2. Mid-body.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(head(500).as_bytes()).await.unwrap();
    s.write_all(b"{\"to\":").await.unwrap();
    drop(s);
    // 3. Waiting on upstream: reset (SO_LINGER 0) while the send is upstream.
    for _ in 0..3 {
        mock.push(Behaviour::Delay(
            Duration::from_millis(400),
            Box::new(Behaviour::LikeWabaV2),
        ));
    }
    for _ in 0..3 {
        let s = TcpStream::connect(proxy.addr).await.unwrap();
        let mut s = s;
        s.write_all(format!("{}{body}", head(body.len())).as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.set_zero_linger().unwrap();
        drop(s);
    }
    // 4. Streaming the answer: a download whose upstream stalls mid-body, dropped by the client.
    mock.push(Behaviour::Json {
        status: 200,
        body: json!({"url": format!("{}/whatsapp_business/attachments/?mid=9", mock.url()),
                     "mime_type": "image/jpeg", "sha256": "x", "file_size": 1000, "id": "9"}),
    });
    mock.push(Behaviour::StallMidBody {
        status: 200,
        declared_len: 1000,
        send: Bytes::from_static(b"partial"),
    });
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /v1/media/9 HTTP/1.1\r\nHost: p\r\nD360-API-KEY: k\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut first)).await;
    drop(s);

    // The three sends reach upstream and finish there, and the gauge settles at zero.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = send(&proxy, "GET", "/metrics", &[], "").await;
        let text = String::from_utf8_lossy(&metrics.body).into_owned();
        let in_flight = metric(&text, "waba_proxy_in_flight_requests ");
        // Sent to their end: answered 201, or 499 where the reset was seen before the answer.
        let finished = ["201", "499"]
            .iter()
            .filter_map(|status| {
                metric(
                    &text,
                    &format!(
                        r#"waba_proxy_requests_total{{route="send_message",status="{status}"}}"#
                    ),
                )
            })
            .sum::<f64>();
        // The /metrics request itself is in flight while it is answered.
        if in_flight == Some(1.0) && finished == 3.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "in flight {in_flight:?}, finished sends {finished}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sends = mock
        .requests()
        .iter()
        .filter(|r| r.path_and_query == "/messages")
        .count();
    assert_eq!(sends, 3, "each forwarded send reached upstream once");
}

/// Webhook receivers are URLs clients set: deliveries follow the same link policy as media
/// links, so no client can make the proxy post to a cloud metadata service.
#[tokio::test]
async fn webhook_deliveries_cannot_reach_link_local_addresses() {
    let config = waba_onprem_proxy::config::Config::with_upstream("http://127.0.0.1:9").unwrap();
    let upstream = waba_onprem_proxy::upstream::Upstream::new(&config);
    for url in [
        "http://169.254.169.254/latest/meta-data",
        "http://[fd00:ec2::254]/latest",
    ] {
        let started = std::time::Instant::now();
        let result = upstream
            .post_absolute(
                url.parse().unwrap(),
                http::HeaderMap::new(),
                Bytes::from_static(b"{}"),
            )
            .await;
        let error = result.expect_err(url).to_string();
        assert!(
            error.contains("not an address links may be fetched from"),
            "{error}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refused before connecting"
        );
    }
}

/// In dry-run mode nothing is sent upstream, so its reachability does not decide readiness
/// (the dry-run root does not even resolve).
#[tokio::test]
async fn a_dry_run_proxy_is_ready_without_any_upstream() {
    let proxy = spawn_proxy_with("dry-run", |_| {}).await;
    let ready = send(&proxy, "GET", "/readyz", &[], "").await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
    assert_eq!(ready.json()["checks"]["upstream_reachable"], true);
    let live = spawn_proxy(&closed_port_url().await).await;
    let ready = send(&live, "GET", "/readyz", &[], "").await;
    assert_eq!(ready.status, 503, "{:?}", ready.body);
    assert_eq!(ready.json()["checks"]["upstream_reachable"], false);
}

#[tokio::test]
async fn clients_that_connect_per_request_reuse_one_upstream_connection() {
    // Each `send_text` opens a client connection of its own, as PHP and curl clients do.
    let (mock, proxy) = proxy_with_mock_tuned([], |c| c.serving_threads = 1).await;
    for _ in 0..3 {
        assert_eq!(send_text(&proxy).await.status, 201);
    }
    assert_eq!(mock.requests().len(), 3);
    assert_eq!(
        mock.connections_accepted(),
        1,
        "an upstream connection idle after its client left serves the next client"
    );
}

#[tokio::test]
async fn a_kept_connection_upstream_closed_is_replaced_and_the_send_goes_out_once() {
    // Upstream answers and closes the connection: the next send finds it closed, and goes out
    // on a fresh one, exactly once.
    let closing = Behaviour::Respond {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("connection".into(), "close".into()),
        ],
        body: Bytes::from_static(
            br#"{"messaging_product":"whatsapp","contacts":[{"input":"1","wa_id":"1"}],"messages":[{"id":"wamid.CLOSED"}]}"#,
        ),
    };
    let (mock, proxy) = proxy_with_mock_tuned([closing], |c| c.serving_threads = 1).await;
    assert_eq!(send_text(&proxy).await.status, 201);
    // Give the closing connection's task a moment to see the close, as in real use.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = send_text(&proxy).await;
    assert_eq!(second.status, 201, "{:?}", second.body);
    assert_eq!(
        mock.requests().len(),
        2,
        "each send reached upstream exactly once"
    );
    assert_eq!(mock.connections_accepted(), 2);
}

#[tokio::test]
async fn common_sends_take_the_hot_path_and_others_the_general_one() {
    // The hot path writes the Cloud body in its own field order (the general path's map
    // sorts its keys): what upstream received shows which path a send took.
    let (mock, proxy) = proxy_with_mock().await;
    assert_eq!(send_text(&proxy).await.status, 201);
    let hsm = r#"{"to":"1","type":"hsm","hsm":{"namespace":"n","element_name":"e","language":{"policy":"deterministic","code":"en"}}}"#;
    assert_eq!(
        send_json(&proxy, "POST", "/v1/messages", hsm).await.status,
        201
    );
    let bodies: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| String::from_utf8(r.body.to_vec()).unwrap())
        .collect();
    assert!(
        bodies[0].starts_with(r#"{"messaging_product":"whatsapp","to":"1""#),
        "{}",
        bodies[0]
    );
    assert!(
        bodies[1].starts_with(
            r#"{"messaging_product":"whatsapp","recipient_type":"individual","template":"#
        ),
        "{}",
        bodies[1]
    );
}

#[tokio::test]
async fn a_send_lost_on_a_kept_connection_is_not_sent_again() {
    // The first send keeps its connection; upstream reads the second and closes without an
    // answer. It may have reached Cloud: 502, and not sent a second time.
    let (mock, proxy) = proxy_with_mock_tuned([], |c| c.serving_threads = 1).await;
    assert_eq!(send_text(&proxy).await.status, 201);
    mock.push(Behaviour::CloseWithoutAnswer);
    let lost = send_text(&proxy).await;
    assert_eq!((lost.status, lost.onprem_error_code()), (502, 1000));
    assert_eq!(mock.requests().len(), 2, "the lost send went out once");
    assert_eq!(mock.connections_accepted(), 1);
}
