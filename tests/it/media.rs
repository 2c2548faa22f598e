//! Media through the running proxy: streamed multipart uploads, two-step streamed downloads,
//! deletes and provider links, against the in-process waba-v2 mock (which parses the multipart
//! body it receives).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use crate::support::mock_upstream::{Behaviour, MockUpstream};
use crate::support::proxy::{
    media_providers, proxy_with_mock, proxy_with_mock_answering, proxy_with_mock_tuned, send,
    send_bytes, send_json, set_media_providers, spawn_proxy_with, Answer, TestProxy, API_KEY,
};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use sha2::{Digest, Sha256};

/// Deterministic, incompressible-looking bytes.
fn payload(len: usize) -> Bytes {
    let mut state: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

async fn upload(proxy: &TestProxy, mime: &str, body: Bytes) -> Answer {
    send_bytes(
        proxy,
        "POST",
        "/v1/media",
        &[("D360-API-KEY", API_KEY), ("content-type", mime)],
        body,
    )
    .await
}

/// Sends `chunks` with chunked transfer encoding (no Content-Length), as streaming clients do.
async fn upload_chunked(
    proxy: &TestProxy,
    mime: &str,
    chunks: Vec<Bytes>,
) -> (u16, serde_json::Value) {
    let stream = futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, std::io::Error>(hyper::body::Frame::data(c))),
    );
    let client = Client::builder(TokioExecutor::new()).build_http::<StreamBody<_>>();
    let request = http::Request::post(proxy.url("/v1/media"))
        .header("D360-API-KEY", API_KEY)
        .header("content-type", mime)
        .body(StreamBody::new(stream))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn upload_becomes_cloud_multipart_with_exact_length_and_answers_201() {
    let (mock, proxy) = proxy_with_mock().await;
    let image = payload(300_000);
    let answer = upload(&proxy, "image/jpeg", image.clone()).await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    let id = answer.json()["media"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(answer.json()["meta"]["version"], "v2.53.0");

    let sent = &mock.requests()[0];
    assert_eq!(
        (sent.method.as_str(), sent.path_and_query.as_str()),
        ("POST", "/media")
    );
    assert_eq!(sent.header("d360-api-key"), Some(API_KEY));
    assert!(
        !sent.chunked,
        "a client Content-Length must give upstream an exact length"
    );
    assert_eq!(sent.declared_length, Some(sent.body.len() as u64));
    assert_eq!(sent.part("messaging_product").unwrap().data, "whatsapp");
    assert_eq!(sent.part("type").unwrap().data, "image/jpeg");
    let file = sent.part("file").unwrap();
    assert_eq!(file.filename.as_deref(), Some("upload.jpg"));
    assert_eq!(file.content_type.as_deref(), Some("image/jpeg"));
    assert_eq!(mock.media(&id).unwrap(), ("image/jpeg".to_owned(), image));
}

#[tokio::test]
async fn a_multi_megabyte_chunked_document_arrives_byte_for_byte() {
    let (mock, proxy) = proxy_with_mock().await;
    let document = payload(6 * 1024 * 1024 + 17);
    let chunks = document
        .chunks(100_000)
        .map(Bytes::copy_from_slice)
        .collect();
    let (status, body) = upload_chunked(&proxy, "application/pdf", chunks).await;
    assert_eq!(status, 201, "{body}");
    let id = body["media"][0]["id"].as_str().unwrap();
    let (mime, stored) = mock.media(id).unwrap();
    assert_eq!(mime, "application/pdf");
    assert_eq!(sha256(&stored), sha256(&document));
    assert!(mock.requests()[0].chunked, "unknown length travels chunked");
}

#[tokio::test]
async fn uploads_without_a_usable_type_or_over_the_limit_never_reach_upstream() {
    let (mock, proxy) = proxy_with_mock().await;
    let missing = send_bytes(
        &proxy,
        "POST",
        "/v1/media",
        &[("D360-API-KEY", API_KEY)],
        payload(10),
    )
    .await;
    assert_eq!((missing.status, missing.onprem_error_code()), (400, 1009));
    let unsupported = upload(&proxy, "application/x-msdownload", payload(10)).await;
    assert_eq!(
        (unsupported.status, unsupported.onprem_error_code()),
        (400, 1009)
    );
    assert!(unsupported.json()["errors"][0]["details"]
        .as_str()
        .unwrap()
        .contains("image/jpeg"));
    let too_big = upload(&proxy, "image/png", payload(5 * 1024 * 1024 + 1)).await;
    assert_eq!((too_big.status, too_big.onprem_error_code()), (413, 1009));
    assert!(too_big.json()["errors"][0]["details"]
        .as_str()
        .unwrap()
        .contains("5242880"));
    assert!(mock.requests().is_empty());
}

/// Refused before its body is read (too large by its length, or an unknown login token), an
/// upload is still read to its end and thrown away: the client can finish sending, reads the
/// refusal, and its keep-alive connection carries the next request.
#[tokio::test]
async fn a_refused_upload_is_read_to_its_end_and_the_connection_stays_usable() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mock, proxy) = proxy_with_mock().await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let refusals = [
        (
            format!("d360-api-key: {API_KEY}"),
            16 * 1024 * 1024 + 1,
            "413",
        ),
        (
            "authorization: Bearer not-a-session".to_owned(),
            4 * 1024 * 1024,
            "401",
        ),
    ];
    for (credential, length, status) in refusals {
        let head = format!(
            "POST /v1/media HTTP/1.1\r\nhost: proxy\r\n{credential}\r\n\
             content-type: video/mp4\r\ncontent-length: {length}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        // All of it is taken in, although the proxy answered before reading any.
        stream.write_all(&vec![0u8; length]).await.unwrap();
        let answer = read_response(&mut stream).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
    }
    stream
        .write_all(b"GET /v1/health HTTP/1.1\r\nhost: proxy\r\n\r\n")
        .await
        .unwrap();
    let health = read_response(&mut stream).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(mock.requests().is_empty());

    /// One response with a `content-length` body, read off the stream.
    async fn read_response(stream: &mut tokio::net::TcpStream) -> String {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "connection closed after {:?}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if seen.len() >= end + 4 + length {
                    return text;
                }
            }
        }
    }
}

#[tokio::test]
async fn a_chunked_upload_that_outgrows_its_limit_is_cut_off_with_413() {
    let (mock, proxy) = proxy_with_mock().await;
    let sticker = payload(600 * 1024);
    let chunks = sticker
        .chunks(64 * 1024)
        .map(Bytes::copy_from_slice)
        .collect();
    let (status, body) = upload_chunked(&proxy, "image/webp", chunks).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["errors"][0]["code"], 1009);
    // Whatever upstream got was cut short: nothing of it was stored as media.
    for request in mock.requests() {
        assert!(request.body.len() < sticker.len());
    }
}

#[tokio::test]
async fn download_streams_the_bytes_from_the_rerooted_url_with_type_and_length() {
    let (mock, proxy) = proxy_with_mock().await;
    let image = payload(3 * 1024 * 1024 + 5);
    mock.add_media("1037543291543636", "image/jpeg", image.clone());
    let answer = download(&proxy, "1037543291543636").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["content-type"], "image/jpeg");
    assert_eq!(
        answer.headers["content-length"],
        image.len().to_string().as_str()
    );
    assert_eq!(sha256(&answer.body), sha256(&image));

    let sent = mock.requests();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].path_and_query, "/1037543291543636");
    let lookaside = MockUpstream::media_url("1037543291543636");
    let expected = &lookaside[lookaside.find("/whatsapp_business").unwrap()..];
    assert_eq!(
        sent[1].path_and_query, expected,
        "path and query must be kept byte for byte"
    );
    assert!(expected.contains("%2F") && expected.contains("x=a=b"));
    assert_eq!(sent[1].header("d360-api-key"), Some(API_KEY));
}

/// A media host (or upstream) answering with a file of type `mime`.
fn media_file(mime: &str, body: Bytes) -> Behaviour {
    Behaviour::Respond {
        status: 200,
        headers: vec![("content-type".into(), mime.into())],
        body,
    }
}

/// A media host (or upstream) answering `status` with nothing in it.
fn empty_answer(status: u16) -> Behaviour {
    Behaviour::Respond {
        status,
        headers: vec![],
        body: Bytes::new(),
    }
}

/// A client downloading media `id` the two-step way, the whole body collected.
async fn download(proxy: &TestProxy, id: &str) -> Answer {
    send(
        proxy,
        "GET",
        &format!("/v1/media/{id}"),
        &[("D360-API-KEY", API_KEY)],
        "",
    )
    .await
}

/// As [`download`], the response left unread: for bodies that must end in an error.
async fn download_streamed(proxy: &TestProxy, id: &str) -> hyper::Response<hyper::body::Incoming> {
    let client = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<Bytes>>();
    let request = http::Request::get(proxy.url(&format!("/v1/media/{id}")))
        .header("D360-API-KEY", API_KEY)
        .body(http_body_util::Empty::new())
        .unwrap();
    client.request(request).await.unwrap()
}

/// A proxy in front of a recording upstream, and a media host for provider links:
/// `(upstream, media_host, proxy)`.
async fn proxy_and_media_host() -> (MockUpstream, MockUpstream, TestProxy) {
    let (mock, proxy) = proxy_with_mock().await;
    (mock, MockUpstream::start().await, proxy)
}

/// The client stores one provider, `cdn`, whose links are fetched with a bearer token.
async fn store_cdn_provider(proxy: &TestProxy) {
    let providers = json!([{"name": "cdn", "config": {"bearer": "t"}}]).to_string();
    set_media_providers(proxy, &providers).await;
}

fn lookup(id: &str, mime: &str, size: usize) -> Behaviour {
    Behaviour::Json {
        status: 200,
        body: json!({"messaging_product": "whatsapp", "url": MockUpstream::media_url(id),
                     "mime_type": mime, "sha256": "x", "file_size": size, "id": id}),
    }
}

#[tokio::test]
async fn gzip_encoded_and_chunked_media_are_decoded_with_the_metadata_length() {
    let audio = Bytes::from(vec![b'a'; 200_000]);
    let (_mock, proxy) = proxy_with_mock_answering([
        lookup("77", "audio/ogg", audio.len()),
        Behaviour::GzipBytes {
            status: 200,
            headers: vec![("content-type".into(), "audio/ogg".into())],
            body: audio.clone(),
        },
        lookup("78", "audio/ogg", audio.len()),
        Behaviour::BytesChunked {
            status: 200,
            headers: vec![],
            body: audio.clone(),
        },
    ])
    .await;
    for id in ["77", "78"] {
        let answer = download(&proxy, id).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.headers["content-length"], "200000");
        assert_eq!(answer.body, audio);
    }
}

#[tokio::test]
async fn unknown_media_is_404_and_a_blocked_media_endpoint_429_neither_retried() {
    let (mock, proxy) = proxy_with_mock().await;
    let unknown = download(&proxy, "999").await;
    assert_eq!((unknown.status, unknown.onprem_error_code()), (404, 1006));
    assert_eq!(mock.requests().len(), 1);

    mock.push(Behaviour::Json {
        status: 429,
        body: json!({"error": {"message": "(#4) Application request limit reached", "code": 4, "fbtrace_id": "x"}}),
    });
    let blocked = download(&proxy, "1").await;
    assert_eq!((blocked.status, blocked.onprem_error_code()), (429, 1015));
    assert_eq!(mock.requests().len(), 2);
}

#[tokio::test]
async fn upstream_dying_mid_download_is_an_error_not_a_short_200() {
    let (_mock, proxy) = proxy_with_mock_answering([
        lookup("55", "video/mp4", 1_000_000),
        Behaviour::ResetMidBody {
            status: 200,
            headers: vec![("content-type".into(), "video/mp4".into())],
            declared_len: 1_000_000,
            send: payload(100_000),
        },
    ])
    .await;
    let response = download_streamed(&proxy, "55").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.into_body().collect().await.is_err(),
        "a truncated body must not end cleanly"
    );
}

#[tokio::test]
async fn delete_media_answers_meta() {
    let (mock, proxy) = proxy_with_mock().await;
    mock.add_media("4242", "image/png", payload(10));
    let answer = send_json(&proxy, "DELETE", "/v1/media/4242", "").await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(
        answer.json(),
        json!({"meta": {"api_status": "stable", "version": "v2.53.0"}})
    );
    assert_eq!(mock.requests()[0].method, "DELETE");
    assert_eq!(mock.requests()[0].path_and_query, "/4242");
    assert!(mock.media("4242").is_none());
}

#[tokio::test]
async fn provider_links_are_fetched_with_credentials_uploaded_and_sent_by_id() {
    let (mock, media_host, proxy) = proxy_and_media_host().await;
    let providers = json!([
        {"name": "cdn-basic", "type": "www", "config": {"basic": {"username": "ann", "password": "s3cret"}}},
        {"name": "cdn-bearer", "type": "www", "config": {"bearer": "tok-123"}}
    ]);
    let stored = set_media_providers(&proxy, &providers.to_string()).await;
    assert_eq!(stored.status, 200, "{:?}", stored.body);
    let listed = media_providers(&proxy).await;
    assert_eq!(
        listed.json()["settings"]["application"]["media"]["providers"],
        providers
    );

    let photo = payload(50_000);
    for (provider, authorization) in [
        ("cdn-basic", "Basic YW5uOnMzY3JldA=="),
        ("cdn-bearer", "Bearer tok-123"),
    ] {
        media_host.push(media_file("image/jpeg", photo.clone()));
        let send = json!({"to": "15551234567", "type": "image",
            "image": {"link": format!("{}/p.jpg?sig=a%2Fb", media_host.url()), "caption": "hi", "provider": {"name": provider}}});
        let answer = send_json(&proxy, "POST", "/v1/messages", &send.to_string()).await;
        assert_eq!(answer.status, 201, "{:?}", answer.body);
        let fetched = media_host.requests().pop().unwrap();
        assert_eq!(fetched.path_and_query, "/p.jpg?sig=a%2Fb");
        assert_eq!(fetched.header("authorization"), Some(authorization));
        assert!(
            fetched.header("d360-api-key").is_none(),
            "the API key must not go to the media host"
        );
    }
    let sent = mock.requests();
    let uploads: Vec<_> = sent
        .iter()
        .filter(|r| r.path_and_query == "/media")
        .collect();
    let messages: Vec<_> = sent
        .iter()
        .filter(|r| r.path_and_query == "/messages")
        .collect();
    assert_eq!((uploads.len(), messages.len()), (2, 2));
    for message in messages {
        let image = &message.json()["image"];
        let id = image["id"].as_str().unwrap();
        assert_eq!(image.get("link"), None);
        assert_eq!(image.get("provider"), None);
        assert_eq!(image["caption"], "hi");
        assert_eq!(mock.media(id).unwrap().1, photo);
    }

    let deleted = send_json(
        &proxy,
        "DELETE",
        "/v1/settings/application/media/providers/cdn-basic",
        "",
    )
    .await;
    assert_eq!(deleted.status, 200);
    let listed = media_providers(&proxy).await;
    assert_eq!(
        listed.json()["settings"]["application"]["media"]["providers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn unknown_provider_is_1009_and_providers_are_kept_per_api_key() {
    let (mock, proxy) = proxy_with_mock().await;
    let providers = json!([{"name": "cdn", "type": "www", "config": {"bearer": "t"}}]).to_string();
    assert_eq!(set_media_providers(&proxy, &providers).await.status, 200);
    let other_key = send(
        &proxy,
        "POST",
        "/v1/messages",
        &[("D360-API-KEY", "another-channel")],
        r#"{"to":"1","type":"image","image":{"link":"https://x.example/a.jpg","provider":{"name":"cdn"}}}"#,
    )
    .await;
    assert_eq!(
        (other_key.status, other_key.onprem_error_code()),
        (400, 1009)
    );
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn a_provider_host_that_fails_is_a_media_download_error() {
    let (mock, media_host, proxy) = proxy_and_media_host().await;
    store_cdn_provider(&proxy).await;
    media_host.push(empty_answer(403));
    let send = json!({"to": "1", "type": "document", "document": {"link": format!("{}/f.pdf", media_host.url()), "provider": {"name": "cdn"}}});
    let answer = send_json(&proxy, "POST", "/v1/messages", &send.to_string()).await;
    assert_eq!((answer.status, answer.onprem_error_code()), (400, 400));
    assert!(
        mock.requests().is_empty(),
        "nothing may be sent when the media could not be fetched"
    );
}

/// On-Premise allowed `provider` on any media object, not only the message's own: template
/// header parameters (carousel cards included) and interactive headers. Each is fetched with its
/// provider's credentials, uploaded, and sent by id; `filename` and `caption` stay.
#[tokio::test]
async fn providers_on_template_headers_cards_and_interactive_headers_are_each_uploaded() {
    let (mock, media_host, proxy) = proxy_and_media_host().await;
    let providers = json!([
        {"name": "files", "config": {"basic": {"username": "ann", "password": "s3cret"}}},
        {"name": "cdn", "config": {"bearer": "tok-123"}}
    ]);
    set_media_providers(&proxy, &providers.to_string()).await;
    let (pdf, jpeg_a, jpeg_b) = (payload(3_000), payload(4_000), payload(5_000));
    for (mime, body) in [
        ("application/pdf", &pdf),
        ("image/jpeg", &jpeg_a),
        ("image/jpeg", &jpeg_b),
    ] {
        media_host.push(media_file(mime, body.clone()));
    }
    let host = media_host.url();
    let template = json!({"to": "15551234567", "type": "template", "template": {
    "namespace": "ns", "name": "ticket", "language": {"policy": "deterministic", "code": "en"},
    "components": [
        {"type": "header", "parameters": [{"type": "document", "document":
            {"link": format!("{host}/t.pdf"), "filename": "ticket.pdf", "provider": {"name": "files"}}}]},
        {"type": "carousel", "cards": [
            {"card_index": 0, "components": [{"type": "header", "parameters": [{"type": "image",
                "image": {"link": format!("{host}/a.jpg"), "provider": {"name": "cdn"}}}]}]},
            {"card_index": 1, "components": [{"type": "header", "parameters": [{"type": "image",
                "image": {"link": format!("{host}/b.jpg"), "provider": {"name": "cdn"}}}]}]}
        ]}
    ]}});
    let answer = send_json(&proxy, "POST", "/v1/messages", &template.to_string()).await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);

    let fetched = media_host.requests();
    let fetched: Vec<_> = fetched
        .iter()
        .map(|r| (r.path_and_query.as_str(), r.header("authorization")))
        .collect();
    assert_eq!(
        fetched,
        [
            ("/t.pdf", Some("Basic YW5uOnMzY3JldA==")),
            ("/a.jpg", Some("Bearer tok-123")),
            ("/b.jpg", Some("Bearer tok-123")),
        ]
    );
    assert!(media_host
        .requests()
        .iter()
        .all(|r| r.header("d360-api-key").is_none()));
    let sent = mock.requests();
    let message = sent
        .iter()
        .find(|r| r.path_and_query == "/messages")
        .unwrap()
        .json();
    assert!(!message.to_string().contains("provider"), "{message}");
    let document = &message["template"]["components"][0]["parameters"][0]["document"];
    assert_eq!(document["filename"], "ticket.pdf");
    assert_eq!(document.get("link"), None);
    assert_eq!(mock.media(document["id"].as_str().unwrap()).unwrap().1, pdf);
    let cards = &message["template"]["components"][1]["cards"];
    for (card, bytes) in [(0, &jpeg_a), (1, &jpeg_b)] {
        let image = &cards[card]["components"][0]["parameters"][0]["image"];
        assert_eq!(image.get("link"), None);
        assert_eq!(&mock.media(image["id"].as_str().unwrap()).unwrap().1, bytes);
    }

    // An interactive message's media header.
    media_host.push(media_file("video/mp4", payload(6_000)));
    let interactive = json!({"to": "15551234567", "type": "interactive", "interactive": {
        "type": "button",
        "header": {"type": "video", "video": {"link": format!("{host}/v.mp4"), "provider": {"name": "cdn"}}},
        "body": {"text": "Watch and confirm"},
        "action": {"buttons": [{"type": "reply", "reply": {"id": "ok", "title": "OK"}}]}}});
    let answer = send_json(&proxy, "POST", "/v1/messages", &interactive.to_string()).await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    let message = mock.requests().pop().unwrap().json();
    let video = &message["interactive"]["header"]["video"];
    assert_eq!((video.get("link"), video.get("provider")), (None, None));
    assert_eq!(
        mock.media(video["id"].as_str().unwrap()).unwrap().1,
        payload(6_000)
    );
}

/// A nested provider link that cannot be fetched fails the send like a top-level one does, and
/// a provider that is not configured is refused before anything is fetched.
#[tokio::test]
async fn a_nested_provider_link_that_fails_is_a_media_download_error_and_nothing_is_sent() {
    let (mock, media_host, proxy) = proxy_and_media_host().await;
    store_cdn_provider(&proxy).await;
    media_host.push(empty_answer(404));
    let header = |provider: &str| {
        json!({"to": "1", "type": "template", "template": {"name": "t", "language": {"code": "en"},
            "components": [{"type": "header", "parameters": [{"type": "image",
                "image": {"link": format!("{}/gone.jpg", media_host.url()), "provider": {"name": provider}}}]}]}})
    };
    let answer = send_json(&proxy, "POST", "/v1/messages", &header("cdn").to_string()).await;
    assert_eq!((answer.status, answer.onprem_error_code()), (400, 400));
    let unknown = send_json(&proxy, "POST", "/v1/messages", &header("nope").to_string()).await;
    assert_eq!((unknown.status, unknown.onprem_error_code()), (400, 1009));
    assert!(unknown.json()["errors"][0]["details"]
        .as_str()
        .unwrap()
        .starts_with("template.components[0].parameters[0].image.provider.name"));
    assert_eq!(media_host.requests().len(), 1);
    assert!(mock.requests().is_empty());
}

/// The media url of a lookup is upstream's word, fetched with the client's key: a `file://`
/// url, dot segments or CR/LF in it are an unreadable answer (502/1000), never a request.
#[tokio::test]
async fn a_media_url_that_is_not_a_plain_http_url_is_502_and_never_fetched() {
    let (mock, proxy) = proxy_with_mock().await;
    for url in [
        "file:///etc/passwd",
        "https://lookaside.fbsbx.com/a/%2e%2e/%2e%2e/v1/configs/webhook",
        "https://lookaside.fbsbx.com/a/../../messages",
        "https://lookaside.fbsbx.com/a\r\nX-Injected: 1",
    ] {
        mock.push(Behaviour::Json {
            status: 200,
            body: json!({"url": url, "mime_type": "image/jpeg", "sha256": "x", "file_size": 3, "id": "77"}),
        });
        let answer = send(&proxy, "GET", "/v1/media/77", &[], "").await;
        assert_eq!(
            (answer.status, answer.onprem_error_code()),
            (502, 1000),
            "{url:?}"
        );
    }
    let requests = mock.requests();
    assert_eq!(requests.len(), 4, "only the four lookups: {requests:?}");
    assert!(requests.iter().all(|r| r.path_and_query == "/77"));
}

/// A provider link may not reach cloud metadata services (link-local addresses), written as a
/// literal or behind a name; the check comes before any connection. `--link-fetch-block
/// private` also keeps links off internal hosts, judged on what the name resolves to.
#[tokio::test]
async fn provider_links_cannot_reach_link_local_addresses_and_private_keeps_them_off_internal_hosts(
) {
    let (mock, media_host, proxy) = proxy_and_media_host().await;
    store_cdn_provider(&proxy).await;
    let image = |link: String| {
        json!({"to": "1", "type": "image", "image": {"link": link, "provider": {"name": "cdn"}}})
            .to_string()
    };

    for link in [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[fe80::1]/x.jpg",
        "http://[::ffff:169.254.169.254]/x.jpg",
    ] {
        let started = std::time::Instant::now();
        let answer = send_json(&proxy, "POST", "/v1/messages", &image(link.to_owned())).await;
        assert_eq!(
            (answer.status, answer.onprem_error_code()),
            (400, 400),
            "{link}"
        );
        assert!(
            answer.json()["errors"][0]["details"]
                .as_str()
                .unwrap()
                .contains("not an address links may be fetched from"),
            "{link}: {:?}",
            answer.body
        );
        // Refused before connecting: no connect timeout was waited out.
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
    assert!(mock.requests().is_empty());

    let strict = spawn_proxy_with(&mock.url(), |c| {
        c.link_fetch_block = waba_onprem_proxy::link_guard::LinkPolicy::Private;
    })
    .await;
    store_cdn_provider(&strict).await;
    let by_name = media_host.url().replace("127.0.0.1", "localhost");
    let answer = send_json(
        &strict,
        "POST",
        "/v1/messages",
        &image(format!("{by_name}/a.jpg")),
    )
    .await;
    assert_eq!((answer.status, answer.onprem_error_code()), (400, 400));
    assert!(media_host.requests().is_empty(), "localhost is internal");
    assert!(mock.requests().is_empty());
}

/// An empty upload is refused (400/1009) rather than sent to Cloud as an empty file, whether
/// its length is declared or it arrives chunked.
#[tokio::test]
async fn an_empty_upload_is_400_1009_and_never_a_success() {
    let (mock, proxy) = proxy_with_mock().await;
    let answer = upload(&proxy, "image/jpeg", Bytes::new()).await;
    assert_eq!((answer.status, answer.onprem_error_code()), (400, 1009));
    assert!(mock.requests().is_empty());
    let (status, body) = upload_chunked(&proxy, "image/jpeg", vec![]).await;
    assert_eq!(
        (status, body["errors"][0]["code"].as_i64()),
        (400, Some(1009))
    );
    assert_eq!(body["errors"][0]["details"], "the media upload is empty");
}

/// A media transfer whose upstream stops sending ends after `--media-idle-timeout-ms`, not after
/// the whole `--media-timeout-ms`: 504/1011 while no answer has started, an aborted stream once
/// it has.
#[tokio::test]
async fn media_transfers_that_stall_end_after_the_idle_timeout() {
    let (mock, proxy) = proxy_with_mock_tuned([], |c| {
        c.media_timeout = std::time::Duration::from_secs(120);
        c.media_idle_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let started = std::time::Instant::now();

    // Upload: upstream never answers.
    mock.push(Behaviour::Stall);
    let answer = upload(&proxy, "image/png", payload(2_000)).await;
    assert_eq!((answer.status, answer.onprem_error_code()), (504, 1011));

    // Download: the media url never answers.
    mock.push(lookup("31", "image/png", 10));
    mock.push(Behaviour::Stall);
    let answer = send(&proxy, "GET", "/v1/media/31", &[], "").await;
    assert_eq!((answer.status, answer.onprem_error_code()), (504, 1011));

    // Download: upstream stops halfway; the client's stream is cut off, never completed.
    mock.push(lookup("32", "image/png", 1_000));
    mock.push(Behaviour::StallMidBody {
        status: 200,
        declared_len: 1_000,
        send: Bytes::from_static(b"partial"),
    });
    let response = download_streamed(&proxy, "32").await;
    assert_eq!(response.status(), 200);
    assert!(response.into_body().collect().await.is_err());

    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// One send may name a provider on at most 11 media objects (a header and ten carousel cards):
/// more is refused before anything is fetched, so no send makes the proxy fetch without bound.
#[tokio::test]
async fn a_send_naming_providers_on_more_than_eleven_media_objects_is_refused_unfetched() {
    let (mock, media_host, proxy) = proxy_and_media_host().await;
    store_cdn_provider(&proxy).await;
    let cards: Vec<_> = (0..12)
        .map(|i| json!({"card_index": i, "components": [{"type": "header", "parameters": [{"type": "image",
            "image": {"link": format!("{}/{i}.jpg", media_host.url()), "provider": {"name": "cdn"}}}]}]}))
        .collect();
    let send = json!({"to": "1", "type": "template", "template": {"name": "t", "language": {"code": "en"},
        "components": [{"type": "carousel", "cards": cards}]}});
    let answer = send_json(&proxy, "POST", "/v1/messages", &send.to_string()).await;
    assert_eq!((answer.status, answer.onprem_error_code()), (400, 1009));
    assert!(media_host.requests().is_empty());
    assert!(mock.requests().is_empty());
}
