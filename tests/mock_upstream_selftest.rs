//! Self-test of the mock 360dialog upstream used by the integration tests.

mod support;

use std::io::Read as _;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use support::mock_upstream::{closed_port_url, Behaviour, MockUpstream};

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
