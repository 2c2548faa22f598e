//! Self-test of the mock 360dialog upstream used by the integration tests.

use std::io::Read as _;
use std::time::Duration;

use crate::support::mock_upstream::{closed_port_url, Behaviour, MockUpstream};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};

type TestClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn request(mock: &MockUpstream, method: Method, path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("{}{path}", mock.url()))
        .header("D360-API-KEY", "test-key")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap_or_else(|e| panic!("bad test request {path:?}: {e}"))
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "answer is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

async fn send(client: &TestClient, req: Request<Full<Bytes>>) -> Answer {
    let target = format!("{} {}", req.method(), req.uri());
    let resp = client
        .request(req)
        .await
        .unwrap_or_else(|e| panic!("{target}: no answer from the mock: {e:?}"));
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => panic!("{target}: answer body failed: {e:?}"),
        },
    }
}

#[tokio::test]
async fn records_requests_and_answers_messages_like_waba_v2() {
    let mock = MockUpstream::start().await;
    let c = client();

    let a = send(
        &c,
        request(
            &mock,
            Method::POST,
            "/messages?x=1",
            r#"{"to":"+49 170-123","type":"text"}"#,
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(
        a.json(),
        json!({
            "messaging_product": "whatsapp",
            "contacts": [{"input": "+49 170-123", "wa_id": "49170123"}],
            "messages": [{"id": "wamid.MOCK1", "message_status": "accepted"}]
        })
    );
    let a = send(
        &c,
        request(&mock, Method::POST, "/messages", r#"{"to":"15550001"}"#),
    )
    .await;
    assert_eq!(a.json()["messages"][0]["id"], "wamid.MOCK2");

    let a = send(
        &c,
        request(
            &mock,
            Method::POST,
            "/messages",
            r#"{"messaging_product":"whatsapp","status":"read","message_id":"wamid.X"}"#,
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json(), json!({"success": true}));

    let a = send(&c, request(&mock, Method::POST, "/messages", "not json")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json()["error"]["code"], 100);
    assert_eq!(a.json()["error"]["type"], "OAuthException");
    assert_eq!(a.json()["error"]["fbtrace_id"], "AbCdEf");
    assert_eq!(
        a.json()["error"]["error_data"]["messaging_product"],
        "whatsapp"
    );

    let recorded = mock.requests();
    assert_eq!(recorded.len(), 4);
    let first = &recorded[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path_and_query, "/messages?x=1");
    assert_eq!(first.path(), "/messages");
    assert_eq!(first.headers["d360-api-key"], "test-key");
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_eq!(
        first.body,
        Bytes::from_static(br#"{"to":"+49 170-123","type":"text"}"#)
    );
    assert_eq!(first.json()["type"], "text");
    assert_eq!(recorded[3].body, Bytes::from_static(b"not json"));
}

/// Like Cloud, the mock refuses keys Meta's OpenAPI table does not allow at their place: an
/// On-Premise `provider` on a template header image, a top-level `ttl`.
#[tokio::test]
async fn sends_with_keys_cloud_does_not_accept_are_refused_like_cloud() {
    let mock = MockUpstream::start().await;
    let c = client();
    for body in [
        r#"{"messaging_product":"whatsapp","to":"1","type":"template","template":{"name":"t",
            "language":{"code":"en"},"components":[{"type":"header","parameters":[{"type":"image",
            "image":{"link":"https://x/a.jpg","provider":{"name":"cdn"}}}]}]}}"#,
        r#"{"messaging_product":"whatsapp","to":"1","type":"text","ttl":604800,"text":{"body":"x"}}"#,
    ] {
        let a = send(&c, request(&mock, Method::POST, "/messages", body)).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(a.json()["error"]["code"], 100);
        let details = a.json()["error"]["error_data"]["details"].to_string();
        assert!(
            details.contains("provider") || details.contains("ttl"),
            "{details}"
        );
    }
}

#[tokio::test]
#[should_panic(expected = "is not JSON")]
async fn recorded_json_panics_helpfully() {
    let mock = MockUpstream::start().await;
    send(&client(), request(&mock, Method::POST, "/messages", "nope")).await;
    mock.requests()[0].json();
}

#[tokio::test]
async fn other_default_answers() {
    let mock = MockUpstream::start().await;
    let c = client();

    let a = send(
        &c,
        request(&mock, Method::GET, "/v1/configs/templates?limit=10", ""),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["waba_templates"][0]["name"], "hello");
    assert_eq!(a.json()["total"], 1);

    let a = send(&c, request(&mock, Method::DELETE, "/1234567890", "")).await;
    assert_eq!(
        (a.status, a.json()),
        (StatusCode::OK, json!({"success": true}))
    );

    let a = send(
        &c,
        request(&mock, Method::GET, "/whatsapp_business_profile", ""),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["data"][0]["vertical"], "RETAIL");

    let a = send(
        &c,
        request(&mock, Method::POST, "/whatsapp_business_profile", "{}"),
    )
    .await;
    assert_eq!(
        (a.status, a.json()),
        (StatusCode::OK, json!({"success": true}))
    );

    for (method, path) in [
        (Method::GET, "/v1/contacts"),
        (Method::DELETE, "/a/b"),
        (Method::GET, "/messages"),
    ] {
        let a = send(&c, request(&mock, method, path, "")).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(a.json()["error"]["code"], 2500);
    }

    let no_key = Request::post(format!("{}/messages", mock.url()))
        .body(Full::new(Bytes::from_static(br#"{"to":"1"}"#)))
        .unwrap();
    let a = send(&c, no_key).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        a.json(),
        json!({"meta": {"success": false, "http_code": 401, "developer_message": "Invalid api key"}})
    );
    // A scripted behaviour does not check the key.
    mock.push(Behaviour::Json {
        status: 200,
        body: json!({"ok": 1}),
    });
    let no_key = Request::get(format!("{}/anything", mock.url()))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&c, no_key).await.json(), json!({"ok": 1}));
}

#[tokio::test]
async fn queue_is_fifo_then_default() {
    let mock = MockUpstream::start().await;
    let c = client();
    mock.push(Behaviour::Json {
        status: 500,
        body: json!({"n": 1}),
    });
    mock.push(Behaviour::Respond {
        status: 202,
        headers: vec![("x-a".into(), "1".into()), ("x-a".into(), "2".into())],
        body: Bytes::from_static(b"plain"),
    });

    let a = send(&c, request(&mock, Method::GET, "/x", "")).await;
    assert_eq!(
        (a.status, a.json()),
        (StatusCode::INTERNAL_SERVER_ERROR, json!({"n": 1}))
    );
    let a = send(&c, request(&mock, Method::GET, "/x", "")).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let xa: Vec<_> = a.headers.get_all("x-a").iter().collect();
    assert_eq!(xa, ["1", "2"]);
    assert_eq!(a.body, Bytes::from_static(b"plain"));
    let a = send(&c, request(&mock, Method::GET, "/x", "")).await;
    assert_eq!(
        a.status,
        StatusCode::NOT_FOUND,
        "queue empty: LikeWabaV2 default"
    );

    mock.set_default(Behaviour::Json {
        status: 201,
        body: json!([]),
    });
    mock.push(Behaviour::Json {
        status: 203,
        body: json!([]),
    });
    assert_eq!(
        send(&c, request(&mock, Method::GET, "/x", "")).await.status,
        203
    );
    assert_eq!(
        send(&c, request(&mock, Method::GET, "/x", "")).await.status,
        201
    );
    assert_eq!(
        send(&c, request(&mock, Method::GET, "/x", "")).await.status,
        201
    );
    assert_eq!(mock.requests().len(), 6);
}

#[tokio::test]
async fn gzip_json_is_really_compressed() {
    let mock = MockUpstream::start().await;
    let body = json!({"error": {"message": "x".repeat(500), "code": 131000}});
    mock.push(Behaviour::GzipJson {
        status: 400,
        body: body.clone(),
    });

    let a = send(&client(), request(&mock, Method::POST, "/messages", "{}")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.headers["content-encoding"], "gzip");
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(&a.body[..2], &[0x1f, 0x8b], "gzip magic");
    assert!(a.body.len() < body.to_string().len());

    let mut decoded = String::new();
    flate2::read::GzDecoder::new(&a.body[..])
        .read_to_string(&mut decoded)
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&decoded).unwrap(), body);
}

#[tokio::test]
async fn stall_never_answers_but_is_recorded() {
    let mock = MockUpstream::start().await;
    mock.push(Behaviour::Stall);
    let c = client();
    let pending = c.request(request(&mock, Method::POST, "/messages", r#"{"to":"1"}"#));
    let outcome = tokio::time::timeout(Duration::from_millis(300), pending).await;
    assert!(
        outcome.is_err(),
        "stalled request got an answer: {outcome:?}"
    );
    let recorded = mock.wait_for_requests(1).await;
    assert_eq!(recorded[0].json()["to"], "1");
}

#[tokio::test]
async fn stalled_connection_is_closed_when_mock_is_dropped() {
    let mock = MockUpstream::start().await;
    mock.set_default(Behaviour::Stall);
    let c = client();
    let pending = tokio::spawn(c.request(request(&mock, Method::GET, "/x", "")));
    mock.wait_for_requests(1).await;
    drop(mock);
    let err = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("dropping the mock must end the stalled request")
        .unwrap()
        .expect_err("no answer expected");
    assert!(!err.is_connect(), "{err:?}");
}

#[tokio::test]
async fn delay_then_inner_behaviour() {
    let mock = MockUpstream::start().await;
    mock.push(Behaviour::Delay(
        Duration::from_millis(200),
        Box::new(Behaviour::Delay(
            Duration::from_millis(50),
            Box::new(Behaviour::Json {
                status: 200,
                body: json!({"late": true}),
            }),
        )),
    ));
    let started = tokio::time::Instant::now();
    let a = send(&client(), request(&mock, Method::GET, "/x", "")).await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(a.json(), json!({"late": true}));
}

#[tokio::test]
async fn wait_for_release() {
    let mock = MockUpstream::start().await;
    mock.set_default(Behaviour::WaitForRelease);

    let mut held: Vec<_> = ["7", "8"]
        .into_iter()
        .map(|to| {
            let req = request(
                &mock,
                Method::POST,
                "/messages",
                &format!(r#"{{"to":"{to}"}}"#),
            );
            tokio::spawn(client().request(req))
        })
        .collect();
    assert_eq!(mock.wait_for_requests(2).await.len(), 2);
    let early = tokio::time::timeout(Duration::from_millis(200), &mut held[0]).await;
    assert!(early.is_err(), "answered before release: {early:?}");

    mock.release();
    let mut wa_ids = Vec::new();
    for handle in held {
        let resp = tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("released request must be answered")
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap();
        wa_ids.push(body["contacts"][0]["wa_id"].clone());
    }
    wa_ids.sort_by_key(|v| v.to_string());
    assert_eq!(wa_ids, [json!("7"), json!("8")]);

    // Requests arriving after release() proceed immediately.
    let a = send(&client(), request(&mock, Method::DELETE, "/42", "")).await;
    assert_eq!(a.json(), json!({"success": true}));
}

#[tokio::test]
async fn close_without_answer_is_a_client_error() {
    let mock = MockUpstream::start().await;
    mock.push(Behaviour::CloseWithoutAnswer);
    let err = client()
        .request(request(&mock, Method::POST, "/messages", r#"{"to":"1"}"#))
        .await
        .expect_err("connection must close without an answer");
    assert!(!err.is_connect(), "the connection was established: {err:?}");
    let hyper_err = std::error::Error::source(&err)
        .and_then(|e| e.downcast_ref::<hyper::Error>())
        .unwrap_or_else(|| panic!("expected a hyper::Error source: {err:?}"));
    assert!(hyper_err.is_incomplete_message(), "{hyper_err:?}");
    assert_eq!(mock.requests().len(), 1, "recorded, and not retried");

    // The mock keeps serving afterwards.
    let a = send(
        &client(),
        request(&mock, Method::GET, "/whatsapp_business_profile", ""),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn close_without_answer_writes_no_bytes() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mock = MockUpstream::start().await;
    mock.push(Behaviour::CloseWithoutAnswer);
    let mut stream = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
    stream
        .write_all(b"GET /x HTTP/1.1\r\nhost: a\r\nd360-api-key: k\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received))
        .await
        .expect("the mock must close the connection");
    // Either a clean EOF or a reset, but never response bytes.
    if read.is_ok() {
        assert!(
            received.is_empty(),
            "{:?}",
            String::from_utf8_lossy(&received)
        );
    }
}

#[tokio::test]
async fn redirect_308_sets_location() {
    let mock = MockUpstream::start().await;
    mock.push(Behaviour::Redirect308("/elsewhere?a=b".into()));
    mock.push(Behaviour::Redirect308(
        "https://evil.example/messages".into(),
    ));
    let c = client();

    let a = send(&c, request(&mock, Method::POST, "/messages", "{}")).await;
    assert_eq!(a.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(a.headers["location"], "/elsewhere?a=b");
    assert!(a.body.is_empty());
    let a = send(&c, request(&mock, Method::POST, "/messages", "{}")).await;
    assert_eq!(a.headers["location"], "https://evil.example/messages");
    assert_eq!(
        mock.requests().len(),
        2,
        "the client did not follow the redirect"
    );
}

#[tokio::test]
async fn connections_accepted_counts_tcp_connections() {
    let mock = MockUpstream::start().await;
    assert_eq!(mock.connections_accepted(), 0);

    // Keep-alive: several requests over one explicit connection.
    let stream = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = request(&mock, Method::GET, "/whatsapp_business_profile", "");
        let (mut parts, body) = req.into_parts();
        parts.uri = "/whatsapp_business_profile".parse().unwrap();
        let resp = sender
            .send_request(Request::from_parts(parts, body))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.unwrap();
        sender.ready().await.unwrap();
    }
    assert_eq!(mock.requests().len(), 3);
    assert_eq!(mock.connections_accepted(), 1);

    // Each new legacy client has its own pool and so its own connection.
    for expected in 2..=3 {
        let a = send(
            &client(),
            request(&mock, Method::GET, "/v1/configs/templates", ""),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(mock.connections_accepted(), expected);
    }
}

#[tokio::test]
async fn wait_for_requests_wakes_up_without_polling() {
    let mock = MockUpstream::start().await;
    let c = client();
    let url = mock.url();
    let sender = tokio::spawn(async move {
        for i in 0..3 {
            let req = Request::post(format!("{url}/messages"))
                .header("d360-api-key", "k")
                .body(Full::new(Bytes::from(format!(r#"{{"to":"{i}"}}"#))))
                .unwrap();
            let resp = c.request(req).await.unwrap();
            resp.into_body().collect().await.unwrap();
        }
    });
    let recorded = mock.wait_for_requests(3).await;
    assert_eq!(recorded.len(), 3);
    let tos: Vec<_> = recorded.iter().map(|r| r.json()["to"].clone()).collect();
    assert_eq!(tos, [json!("0"), json!("1"), json!("2")]);
    sender.await.unwrap();
    // Already satisfied: resolves immediately.
    assert_eq!(mock.wait_for_requests(1).await.len(), 3);
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "waited 10s for 1 request(s), but only 0 arrived")]
async fn wait_for_requests_times_out_with_a_clear_message() {
    let mock = MockUpstream::start().await;
    mock.wait_for_requests(1).await;
}

#[tokio::test]
async fn closed_port_refuses_connections() {
    let url = closed_port_url().await;
    assert!(url.starts_with("http://127.0.0.1:"));
    let err = client()
        .request(
            Request::get(format!("{url}/x"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .expect_err("nothing listens there");
    assert!(err.is_connect(), "{err:?}");
}

#[tokio::test]
#[should_panic(expected = "invalid header name")]
async fn invalid_scripted_header_panics_at_push() {
    let mock = MockUpstream::start().await;
    mock.push(Behaviour::Respond {
        status: 200,
        headers: vec![("bad header".into(), "v".into())],
        body: Bytes::new(),
    });
}

// ---------------------------------------------------------------- media

const BOUNDARY: &str = "mockBoundary7MA4YWxkTrZu0gW";

/// One multipart/form-data part, written out by hand.
fn form_part(name: &str, file: Option<(&str, &str)>, data: &[u8]) -> Vec<u8> {
    let mut part = format!("--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"{name}\"");
    if let Some((filename, content_type)) = file {
        part.push_str(&format!(
            "; filename=\"{filename}\"\r\ncontent-type: {content_type}"
        ));
    }
    part.push_str("\r\n\r\n");
    let mut part = part.into_bytes();
    part.extend_from_slice(data);
    part.extend_from_slice(b"\r\n");
    part
}

fn form_body(parts: &[Vec<u8>]) -> Bytes {
    let mut body = parts.concat();
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    Bytes::from(body)
}

/// The three parts of a valid upload.
fn upload_form(mime: &str, filename: &str, data: &[u8]) -> Bytes {
    form_body(&[
        form_part("messaging_product", None, b"whatsapp"),
        form_part("type", None, mime.as_bytes()),
        form_part("file", Some((filename, mime)), data),
    ])
}

fn multipart_request(mock: &MockUpstream, body: Bytes) -> Request<Full<Bytes>> {
    Request::post(format!("{}/media", mock.url()))
        .header("D360-API-KEY", "test-key")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(Full::new(body))
        .unwrap_or_else(|e| panic!("bad multipart request: {e}"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deterministic bytes that do not compress and contain every byte value
/// (CR, LF, dashes, ... — things a multipart parser might trip over).
fn noise(len: usize) -> Bytes {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// Writes `raw` on a fresh connection, optionally half-closes, and reads
/// until the mock closes the connection (at most 10 s); returns what
/// arrived before EOF or a reset.
async fn raw_exchange(mock: &MockUpstream, raw: &[u8], half_close: bool) -> Vec<u8> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(mock.addr())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the mock: {e}"));
    stream
        .write_all(raw)
        .await
        .unwrap_or_else(|e| panic!("cannot write the request: {e}"));
    if half_close {
        stream
            .shutdown()
            .await
            .unwrap_or_else(|e| panic!("cannot half-close: {e}"));
    }
    let mut received = Vec::new();
    // A reset ends reading as well; `received` keeps what came before it.
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received))
        .await
        .unwrap_or_else(|_| panic!("the mock did not close the connection within 10 s"));
    received
}

fn split_head(raw: &[u8]) -> (String, &[u8]) {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete head in {:?}", String::from_utf8_lossy(raw)));
    (
        String::from_utf8_lossy(&raw[..end]).into_owned(),
        &raw[end + 4..],
    )
}

#[tokio::test]
async fn multipart_upload_is_parsed_recorded_and_stored() {
    let mock = MockUpstream::start().await;
    let c = client();
    let file = Bytes::from_static(b"\x89PNG\r\n\x1a\n--not-a-boundary\r\n\x00\xff");
    let body = upload_form("image/png", "pic one.png", &file);

    let a = send(&c, multipart_request(&mock, body.clone())).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.headers["content-type"], "application/json");
    let id = a.json()["id"].as_str().unwrap().to_owned();
    assert!(
        id.len() >= 15 && id.bytes().all(|b| b.is_ascii_digit()),
        "{id}"
    );
    assert_eq!(a.json(), json!({"id": id}));

    let recorded = &mock.requests()[0];
    assert_eq!(recorded.body, body, "the raw body is recorded as well");
    assert_eq!(recorded.declared_length, Some(body.len() as u64));
    assert!(!recorded.chunked);
    let parts = recorded.multipart.as_ref().expect("multipart parsed");
    let summary: Vec<_> = parts
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.filename.as_deref(),
                p.content_type.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("messaging_product", None, None),
            ("type", None, None),
            ("file", Some("pic one.png"), Some("image/png")),
        ]
    );
    assert_eq!(parts[0].data, "whatsapp");
    assert_eq!(parts[1].data, "image/png");
    assert_eq!(parts[2].data, file);
    assert_eq!(recorded.part("file").unwrap().data, file);
    assert!(recorded.part("caption").is_none());

    assert_eq!(
        mock.media(&id),
        Some(("image/png".to_owned(), file.clone()))
    );
    assert_eq!(mock.media("1"), None);

    // A second upload gets another id.
    let a = send(
        &c,
        multipart_request(&mock, upload_form("audio/ogg", "a.ogg", b"x")),
    )
    .await;
    let second = a.json()["id"].as_str().unwrap().to_owned();
    assert_ne!(second, id);
    assert_eq!(mock.media(&second).unwrap().0, "audio/ogg");

    // Requests with other content types are not multipart.
    send(
        &c,
        request(&mock, Method::POST, "/messages", r#"{"to":"1"}"#),
    )
    .await;
    let recorded = &mock.requests()[2];
    assert!(recorded.multipart.is_none());
    assert_eq!(recorded.declared_length, Some(10));
}

#[tokio::test]
async fn media_metadata_has_the_lookaside_url_sha256_and_size() {
    let mock = MockUpstream::start().await;
    let c = client();
    let a = send(
        &c,
        multipart_request(&mock, upload_form("image/jpeg", "p.jpg", b"jpeg bytes")),
    )
    .await;
    let id = a.json()["id"].as_str().unwrap().to_owned();

    let a = send(&c, request(&mock, Method::GET, &format!("/{id}"), "")).await;
    assert_eq!(a.status, StatusCode::OK);
    let expected_url = format!(
        "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid={id}&ext=1700000000&hash=ATs%2Fsecret%3D%3D&x=a=b"
    );
    assert_eq!(MockUpstream::media_url(&id), expected_url);
    assert_eq!(
        a.json(),
        json!({
            "messaging_product": "whatsapp",
            "url": expected_url,
            "mime_type": "image/jpeg",
            "sha256": sha256_hex(b"jpeg bytes"),
            "file_size": 10,
            "id": id
        })
    );
    // The url is in the raw JSON text exactly (no escaping of `/` or `&`).
    let raw = String::from_utf8(a.body.to_vec()).unwrap();
    assert!(
        raw.contains(&format!("\"url\":\"{expected_url}\"")),
        "{raw}"
    );

    // Seeded media, with a query string on the metadata request.
    mock.add_media("42", "video/mp4", Bytes::from_static(b""));
    let a = send(&c, request(&mock, Method::GET, "/42?phone_number_id=1", "")).await;
    assert_eq!(a.json()["file_size"], 0);
    assert_eq!(a.json()["mime_type"], "video/mp4");
    assert_eq!(a.json()["sha256"], sha256_hex(b""));

    // Unknown digits: Graph's "does not exist"; other unknown paths keep 2500.
    let a = send(&c, request(&mock, Method::GET, "/999", "")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(
        a.json(),
        json!({"error": {
            "message": "(#100) Unsupported get request. Object with ID '999' does not exist",
            "type": "GraphMethodException",
            "code": 100,
            "error_subcode": 33,
            "fbtrace_id": "AbC"
        }})
    );
    let a = send(&c, request(&mock, Method::GET, "/not-media", "")).await;
    assert_eq!(a.json()["error"]["code"], 2500);

    // DELETE forgets the media.
    let a = send(&c, request(&mock, Method::DELETE, &format!("/{id}"), "")).await;
    assert_eq!(a.json(), json!({"success": true}));
    assert_eq!(mock.media(&id), None);
    let a = send(&c, request(&mock, Method::GET, &format!("/{id}"), "")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn upload_with_a_missing_or_invalid_part_is_400_naming_the_part() {
    let mock = MockUpstream::start().await;
    let c = client();
    let product = form_part("messaging_product", None, b"whatsapp");
    let kind = form_part("type", None, b"image/png");
    let file = form_part("file", Some(("a.png", "image/png")), b"png");
    let cases: Vec<(Vec<Vec<u8>>, &str)> = vec![
        (vec![kind.clone(), file.clone()], "messaging_product"),
        (
            vec![
                form_part("messaging_product", None, b"instagram"),
                kind.clone(),
                file.clone(),
            ],
            "messaging_product",
        ),
        (vec![product.clone(), file.clone()], "type"),
        (
            vec![
                product.clone(),
                form_part("type", None, b"png"),
                file.clone(),
            ],
            "type",
        ),
        (vec![product.clone(), kind.clone()], "file"),
        (
            vec![product.clone(), kind.clone(), form_part("file", None, b"png")],
            "file",
        ),
        (
            vec![
                product.clone(),
                kind.clone(),
                b"--mockBoundary7MA4YWxkTrZu0gW\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\npng\r\n".to_vec(),
            ],
            "file",
        ),
    ];
    for (parts, named) in cases {
        let a = send(&c, multipart_request(&mock, form_body(&parts))).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{named}");
        assert_eq!(a.json()["error"]["code"], 100);
        let details = a.json()["error"]["error_data"]["details"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(details.contains(named), "{named}: {details}");
    }

    // Not multipart at all.
    let a = send(&c, request(&mock, Method::POST, "/media", "{}")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.json()["error"]["error_data"]["details"]
        .as_str()
        .unwrap()
        .contains("multipart/form-data"));
    assert!(mock.requests().last().unwrap().multipart.is_none());

    // Nothing was stored.
    let a = send(&c, request(&mock, Method::GET, "/1037543291543637", "")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn unparsable_multipart_is_recorded_empty_and_answered_400() {
    let mock = MockUpstream::start().await;
    let c = client();
    let mut truncated = upload_form("image/png", "a.png", b"png").to_vec();
    truncated.truncate(truncated.len() - 20); // no closing boundary
    let no_boundary = Request::post(format!("{}/media", mock.url()))
        .header("d360-api-key", "k")
        .header("content-type", "multipart/form-data")
        .body(Full::new(upload_form("image/png", "a.png", b"png")))
        .unwrap();

    for req in [
        multipart_request(&mock, Bytes::from(truncated)),
        no_boundary,
    ] {
        let a = send(&c, req).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert_eq!(a.json()["error"]["code"], 100);
        assert!(a.json()["error"]["error_data"]["details"]
            .as_str()
            .unwrap()
            .starts_with("Invalid multipart/form-data body"));
    }
    for recorded in mock.requests() {
        assert_eq!(recorded.multipart.as_ref().map(Vec::len), Some(0));
    }

    // Whatever the path.
    let mut req = multipart_request(&mock, Bytes::from_static(b"garbage"));
    *req.uri_mut() = format!("{}/messages", mock.url()).parse().unwrap();
    assert_eq!(send(&c, req).await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn upload_shorter_than_its_content_length_is_400() {
    let mock = MockUpstream::start().await;
    let body = upload_form("image/png", "a.png", b"png");
    let mut raw = format!(
        "POST /media HTTP/1.1\r\nhost: a\r\nd360-api-key: k\r\ncontent-type: multipart/form-data; boundary={BOUNDARY}\r\ncontent-length: {}\r\n\r\n",
        body.len() + 10
    )
    .into_bytes();
    raw.extend_from_slice(&body);

    // The client stops sending (half-close) 10 bytes short.
    let answer = raw_exchange(&mock, &raw, true).await;
    let (head, answer_body) = split_head(&answer);
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    let answer_body: Value = serde_json::from_slice(answer_body).unwrap();
    assert_eq!(answer_body["error"]["code"], 100);
    assert!(answer_body["error"]["error_data"]["details"]
        .as_str()
        .unwrap()
        .contains("content-length"));

    let recorded = &mock.requests()[0];
    assert_eq!(recorded.declared_length, Some(body.len() as u64 + 10));
    assert_eq!(recorded.body, body, "what did arrive is recorded");
    assert!(mock.media("1037543291543637").is_none());
}

#[tokio::test]
async fn chunked_upload_is_recorded_as_chunked_and_stored() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    let mock = MockUpstream::start().await;
    let file = noise(200_000);
    let body = upload_form("application/pdf", "doc.pdf", &file);
    // Several frames of unknown total length: hyper sends them chunked.
    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = body
        .chunks(30_000)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let stream = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post("/media")
        .header("host", "waba-v2")
        .header("d360-api-key", "k")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let answer = resp.into_body().collect().await.unwrap().to_bytes();
    let id = serde_json::from_slice::<Value>(&answer).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let recorded = &mock.requests()[0];
    assert!(recorded.chunked);
    assert_eq!(recorded.header("transfer-encoding"), Some("chunked"));
    assert_eq!(recorded.declared_length, None);
    assert_eq!(recorded.body, body);
    assert_eq!(mock.media(&id), Some(("application/pdf".to_owned(), file)));
}

#[tokio::test]
async fn five_megabytes_go_up_and_come_back_identical() {
    let mock = MockUpstream::start().await;
    let c = client();
    let file = noise(5 * 1024 * 1024);
    let a = send(
        &c,
        multipart_request(&mock, upload_form("video/mp4", "clip.mp4", &file)),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let id = a.json()["id"].as_str().unwrap().to_owned();

    let meta = send(&c, request(&mock, Method::GET, &format!("/{id}"), "")).await;
    assert_eq!(meta.json()["file_size"], file.len());
    let url = meta.json()["url"].as_str().unwrap().to_owned();
    let path_and_query = url
        .strip_prefix("https://lookaside.fbsbx.com")
        .unwrap()
        .to_owned();

    // With 360dialog the same path and query go to the waba-v2 host.
    let resp = c
        .request(
            Request::get(format!("{}{path_and_query}", mock.url()))
                .header("d360-api-key", "k")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "video/mp4");
    assert_eq!(resp.headers()["content-length"], file.len().to_string());
    assert!(resp.headers().get("transfer-encoding").is_none());
    let mut body = resp.into_body();
    let mut downloaded = Vec::with_capacity(file.len());
    let mut frames = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            downloaded.extend_from_slice(&data);
            frames += 1;
        }
    }
    assert!(frames > 1, "streamed, not one frame");
    assert_eq!(downloaded.len(), file.len());
    assert_eq!(sha256_hex(&downloaded), sha256_hex(&file));
    assert_eq!(meta.json()["sha256"], sha256_hex(&downloaded));

    // The download request kept its query byte for byte.
    let recorded = mock.requests().last().unwrap().clone();
    assert_eq!(
        recorded.path_and_query,
        format!(
            "/whatsapp_business/attachments/?mid={id}&ext=1700000000&hash=ATs%2Fsecret%3D%3D&x=a=b"
        )
    );
}

#[tokio::test]
async fn attachment_download_needs_the_key_and_a_known_mid() {
    let mock = MockUpstream::start().await;
    let c = client();
    mock.add_media("77", "audio/ogg", Bytes::from_static(b"OggS...."));
    let path = MockUpstream::media_url("77")
        .strip_prefix("https://lookaside.fbsbx.com")
        .unwrap()
        .to_owned();

    let a = send(&c, request(&mock, Method::GET, &path, "")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["content-type"], "audio/ogg");
    assert_eq!(a.headers["content-length"], "8");
    assert_eq!(a.body, Bytes::from_static(b"OggS...."));

    // Without the trailing slash and without the other parameters, too.
    let a = send(
        &c,
        request(
            &mock,
            Method::GET,
            "/whatsapp_business/attachments?mid=77",
            "",
        ),
    )
    .await;
    assert_eq!(a.body, Bytes::from_static(b"OggS...."));

    let no_key = Request::get(format!("{}{path}", mock.url()))
        .body(Full::default())
        .unwrap();
    let a = send(&c, no_key).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.json()["meta"]["http_code"], 401);

    for unknown in [
        "/whatsapp_business/attachments/?mid=78&ext=1",
        "/whatsapp_business/attachments/?ext=1",
    ] {
        let a = send(&c, request(&mock, Method::GET, unknown, "")).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{unknown}");
        assert_eq!(a.json()["error"]["error_subcode"], 33);
    }
}

#[tokio::test]
#[should_panic(expected = "invalid media id")]
async fn add_media_rejects_ids_that_break_urls() {
    let mock = MockUpstream::start().await;
    mock.add_media("1&x=2", "image/png", Bytes::new());
}

#[tokio::test]
async fn reset_mid_body_sends_the_head_and_part_then_cuts() {
    let mock = MockUpstream::start().await;
    mock.push(Behaviour::ResetMidBody {
        status: 200,
        headers: vec![("content-type".into(), "image/jpeg".into())],
        declared_len: 1000,
        send: Bytes::from_static(b"only the first bytes"),
    });
    let resp = client()
        .request(request(
            &mock,
            Method::GET,
            "/whatsapp_business/attachments/?mid=1",
            "",
        ))
        .await
        .expect("the head arrives");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-length"], "1000");
    assert_eq!(resp.headers()["content-type"], "image/jpeg");
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let err = loop {
        match body.frame().await {
            Some(Ok(frame)) => got.extend_from_slice(&frame.into_data().unwrap()),
            Some(Err(e)) => break e,
            None => panic!("body ended cleanly after {} bytes", got.len()),
        }
    };
    let cause = std::error::Error::source(&err)
        .and_then(|e| e.downcast_ref::<std::io::Error>())
        .unwrap_or_else(|| panic!("expected an io::Error source: {err:?}"));
    assert_eq!(cause.kind(), std::io::ErrorKind::UnexpectedEof, "{err:?}");
    assert_eq!(got, b"only the first bytes");
}

#[tokio::test]
async fn reset_mid_body_really_sends_a_large_part_before_closing() {
    let mock = MockUpstream::start().await;
    let send_part = noise(3 * 1024 * 1024 + 17);
    mock.push(Behaviour::ResetMidBody {
        status: 200,
        headers: vec![],
        declared_len: 10 * 1024 * 1024,
        send: send_part.clone(),
    });
    let raw = raw_exchange(
        &mock,
        b"GET /whatsapp_business/attachments/?mid=1 HTTP/1.1\r\nhost: a\r\n\r\n",
        false,
    )
    .await;
    let (head, body) = split_head(&raw);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-length: 10485760"),
        "{head}"
    );
    assert_eq!(body.len(), send_part.len());
    assert!(body == &send_part[..]);
}

#[tokio::test]
#[should_panic(expected = "must send fewer bytes than it declares")]
async fn reset_mid_body_must_be_short() {
    let mock = MockUpstream::start().await;
    mock.push(Behaviour::ResetMidBody {
        status: 200,
        headers: vec![],
        declared_len: 3,
        send: Bytes::from_static(b"abc"),
    });
}

#[tokio::test]
#[should_panic(expected = "sets \"Content-Length\" itself")]
async fn byte_behaviours_refuse_a_scripted_length() {
    let mock = MockUpstream::start().await;
    mock.push(Behaviour::BytesChunked {
        status: 200,
        headers: vec![("Content-Length".into(), "3".into())],
        body: Bytes::from_static(b"abc"),
    });
}

#[tokio::test]
async fn bytes_chunked_has_no_content_length() {
    let mock = MockUpstream::start().await;
    let c = client();
    let body = noise(300_000);
    mock.push(Behaviour::BytesChunked {
        status: 200,
        headers: vec![
            ("content-type".into(), "image/webp".into()),
            ("x-a".into(), "1".into()),
        ],
        body: body.clone(),
    });
    mock.push(Behaviour::BytesChunked {
        status: 200,
        headers: vec![],
        body: Bytes::new(),
    });

    let a = send(&c, request(&mock, Method::GET, "/x", "")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["transfer-encoding"], "chunked");
    assert!(a.headers.get("content-length").is_none());
    assert_eq!(a.headers["content-type"], "image/webp");
    assert_eq!(a.headers["x-a"], "1");
    assert_eq!(a.body, body);

    let a = send(&c, request(&mock, Method::GET, "/x", "")).await;
    assert_eq!(a.headers["transfer-encoding"], "chunked");
    assert!(a.body.is_empty());

    // On the wire: chunk framing, terminated by the zero chunk.
    mock.push(Behaviour::BytesChunked {
        status: 201,
        headers: vec![],
        body: Bytes::from_static(b"hello"),
    });
    let raw = raw_exchange(
        &mock,
        b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
        false,
    )
    .await;
    let (head, body) = split_head(&raw);
    assert!(head.starts_with("HTTP/1.1 201 "), "{head}");
    assert_eq!(body, b"5\r\nhello\r\n0\r\n\r\n");
}

#[tokio::test]
async fn gzip_bytes_is_really_compressed() {
    let mock = MockUpstream::start().await;
    let body = Bytes::from("media ".repeat(20_000));
    mock.push(Behaviour::GzipBytes {
        status: 200,
        headers: vec![("content-type".into(), "text/plain".into())],
        body: body.clone(),
    });
    let a = send(&client(), request(&mock, Method::GET, "/x", "")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["content-encoding"], "gzip");
    assert_eq!(a.headers["content-type"], "text/plain");
    assert_eq!(a.headers["content-length"], a.body.len().to_string());
    assert_eq!(&a.body[..2], &[0x1f, 0x8b], "gzip magic");
    assert!(a.body.len() < body.len() / 10);
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(&a.body[..])
        .read_to_end(&mut decoded)
        .unwrap();
    assert_eq!(decoded, body);
}
