//! Self-test of the mock Graph API and media CDN (`support::mock_graph`), driven by a plain
//! hyper client: every refusal and every happy path the mock offers.

use std::time::{Duration, Instant};

use crate::support::mock_graph::{
    graph_error, unsupported_request_message, GraphAccount, MockGraph, INVALID_TOKEN_MESSAGE,
};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

type TestClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Two disjoint accounts: `a` is used for the happy paths, `b` is "another account".
async fn start() -> (MockGraph, GraphAccount, GraphAccount) {
    let (a, b) = (GraphAccount::example(0), GraphAccount::example(1));
    let mock = MockGraph::start(vec![a.clone(), b.clone()]).await;
    (mock, a, b)
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
                "answer ({}) is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts a Graph error answer: status, code and subcode.
    fn assert_error(&self, status: u16, code: i64, subcode: Option<i64>) {
        let body = self.json();
        assert_eq!(self.status.as_u16(), status, "{body}");
        assert_eq!(self.headers["content-type"], "application/json");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert_eq!(body["error"]["type"], "OAuthException", "{body}");
        match subcode {
            Some(s) => assert_eq!(body["error"]["error_subcode"], s, "{body}"),
            None => assert!(body["error"].get("error_subcode").is_none(), "{body}"),
        }
    }
}

/// A request to any url; `auth` is the whole Authorization value.
fn raw(
    method: Method,
    url: &str,
    auth: Option<&str>,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(url);
    if let Some(auth) = auth {
        builder = builder.header("authorization", auth);
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(body.into()))
        .unwrap_or_else(|e| panic!("bad test request {url:?}: {e}"))
}

/// A Graph request of account `acct` (its token and version) to `/{v}/{path}`, JSON body.
fn graph(
    mock: &MockGraph,
    acct: &GraphAccount,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Request<Full<Bytes>> {
    let url = format!("{}/{}/{path}", mock.url(), acct.graph_version);
    let auth = format!("Bearer {}", acct.access_token);
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    raw(
        method,
        &url,
        Some(&auth),
        &[("content-type", "application/json")],
        body,
    )
}

/// One multipart part: name, `Some((filename, content-type))` for a file, data.
type FormPart<'a> = (&'a str, Option<(&'a str, &'a str)>, &'a [u8]);

/// A multipart/form-data body: (name, Some((filename, content-type)) for files, data).
fn multipart(parts: &[FormPart<'_>]) -> (String, Bytes) {
    let boundary = "mockGraphBoundary7MA4YWxk";
    let mut body = Vec::new();
    for (name, file, data) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some((filename, content_type)) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (
        format!("multipart/form-data; boundary={boundary}"),
        Bytes::from(body),
    )
}

fn media_upload(
    mock: &MockGraph,
    acct: &GraphAccount,
    parts: &[FormPart<'_>],
) -> Request<Full<Bytes>> {
    let (content_type, body) = multipart(parts);
    raw(
        Method::POST,
        &format!(
            "{}/{}/{}/media",
            mock.url(),
            acct.graph_version,
            acct.phone_number_id
        ),
        Some(&format!("Bearer {}", acct.access_token)),
        &[("content-type", &content_type)],
        body,
    )
}

/// A CDN GET of `url` with `Authorization: Bearer <token>` if given.
fn cdn_get(url: &str, token: Option<&str>) -> Request<Full<Bytes>> {
    let auth = token.map(|t| format!("Bearer {t}"));
    raw(Method::GET, url, auth.as_deref(), &[], Bytes::new())
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
async fn mock_graph_sends_messages_and_read_receipts() {
    let (mock, a, _) = start().await;
    let c = client();
    let messages = format!("{}/messages", a.phone_number_id);

    let text = json!({"messaging_product": "whatsapp", "recipient_type": "individual",
        "to": "+49 170-123", "type": "text", "text": {"body": "hi"}});
    let first = send(
        &c,
        graph(&mock, &a, Method::POST, &messages, Some(text.clone())),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.headers["content-type"], "application/json");
    let body = first.json();
    assert_eq!(body["messaging_product"], "whatsapp");
    assert_eq!(
        body["contacts"],
        json!([{"input": "+49 170-123", "wa_id": "49170123"}])
    );
    let wamid = body["messages"][0]["id"].as_str().unwrap().to_owned();
    assert!(wamid.starts_with("wamid."), "{wamid}");
    assert_eq!(body["messages"].as_array().unwrap().len(), 1);
    let second = send(&c, graph(&mock, &a, Method::POST, &messages, Some(text))).await;
    assert_ne!(
        second.json()["messages"][0]["id"],
        wamid.as_str(),
        "wamids are unique"
    );

    let read = json!({"messaging_product": "whatsapp", "status": "read", "message_id": wamid});
    let answer = send(&c, graph(&mock, &a, Method::POST, &messages, Some(read))).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json(), json!({"success": true}));

    // Refusals: no messaging_product, an On-Premise key, no recipient, no JSON.
    let answer = send(
        &c,
        graph(
            &mock,
            &a,
            Method::POST,
            &messages,
            Some(json!({"to": "1", "type": "text", "text": {"body": "x"}})),
        ),
    )
    .await;
    answer.assert_error(400, 100, None);
    assert_eq!(
        answer.json(),
        graph_error(
            100,
            None,
            "(#100) The parameter messaging_product is required."
        )
    );
    let onprem = json!({"messaging_product": "whatsapp", "to": "1", "type": "text",
        "text": {"body": "x"}, "ttl": 60});
    let answer = send(&c, graph(&mock, &a, Method::POST, &messages, Some(onprem))).await;
    answer.assert_error(400, 100, None);
    assert!(answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("ttl"));
    let no_to = json!({"messaging_product": "whatsapp", "type": "text", "text": {"body": "x"}});
    send(&c, graph(&mock, &a, Method::POST, &messages, Some(no_to)))
        .await
        .assert_error(400, 100, None);
    let read_without_id = json!({"messaging_product": "whatsapp", "status": "read"});
    send(
        &c,
        graph(&mock, &a, Method::POST, &messages, Some(read_without_id)),
    )
    .await
    .assert_error(400, 100, None);
    let url = format!("{}/v23.0/{messages}", mock.url());
    let auth = format!("Bearer {}", a.access_token);
    send(&c, raw(Method::POST, &url, Some(&auth), &[], "not json"))
        .await
        .assert_error(400, 100, None);

    let recorded = mock.wait_for_requests(8).await;
    assert_eq!(recorded.len(), 8);
    assert_eq!(recorded[0].method, "POST");
    assert_eq!(recorded[0].path_and_query, format!("/v23.0/{messages}"));
    assert_eq!(recorded[0].header("authorization"), Some(auth.as_str()));
    assert_eq!(recorded[0].json()["to"], "+49 170-123");
    assert!(mock.cdn_requests().is_empty());
}

#[tokio::test]
async fn mock_graph_refuses_missing_or_wrong_tokens_versions_and_paths() {
    let (mock, a, _) = start().await;
    let c = client();
    let url = format!(
        "{}/v23.0/{}/whatsapp_business_profile",
        mock.url(),
        a.phone_number_id
    );
    let invalid_token = graph_error(190, None, INVALID_TOKEN_MESSAGE);

    for auth in [
        None,
        Some("Bearer not-a-token".to_owned()),
        Some("Bearer".to_owned()),
        // Only /upload:<session> takes the OAuth scheme.
        Some(format!("OAuth {}", a.access_token)),
        Some(a.access_token.clone()),
    ] {
        let answer = send(&c, raw(Method::GET, &url, auth.as_deref(), &[], "")).await;
        answer.assert_error(401, 190, None);
        assert_eq!(answer.json(), invalid_token, "{auth:?}");
        assert!(answer.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("OAuth \"Facebook Platform\" \"invalid_token\""));
    }

    // The token is checked before the version, the version before the path.
    let answer = send(
        &c,
        raw(
            Method::GET,
            &format!("{}/v19.0/x/y", mock.url()),
            None,
            &[],
            "",
        ),
    )
    .await;
    answer.assert_error(401, 190, None);
    let wrong_version = send(
        &c,
        raw(
            Method::GET,
            &url.replace("v23.0", "v19.0"),
            Some(&format!("Bearer {}", a.access_token)),
            &[],
            "",
        ),
    )
    .await;
    wrong_version.assert_error(400, 2500, None);
    assert_eq!(
        wrong_version.json(),
        graph_error(2500, None, "Unknown path components: /v19.0")
    );

    for path in [
        format!("{}/no_such_edge", a.phone_number_id),
        format!("{}/messages/extra", a.phone_number_id),
    ] {
        send(&c, graph(&mock, &a, Method::GET, &path, None))
            .await
            .assert_error(400, 100, None);
    }
    assert_eq!(mock.requests().len(), 9);
}

#[tokio::test]
async fn mock_graph_refuses_ids_of_other_accounts() {
    let (mock, a, b) = start().await;
    let c = client();
    mock.add_media(
        &b.phone_number_id,
        "777",
        "image/png",
        Bytes::from_static(b"png"),
    );
    mock.add_media(
        &a.phone_number_id,
        "555",
        "text/plain",
        Bytes::from_static(b"txt"),
    );

    let send_body =
        json!({"messaging_product": "whatsapp", "to": "1", "type": "text", "text": {"body": "x"}});
    let cases = [
        (
            Method::POST,
            format!("{}/messages", b.phone_number_id),
            Some(send_body),
            b.phone_number_id.clone(),
        ),
        (
            Method::GET,
            format!("{}/whatsapp_business_profile", b.phone_number_id),
            None,
            b.phone_number_id.clone(),
        ),
        (
            Method::GET,
            format!("{}/message_templates", b.waba_id),
            None,
            b.waba_id.clone(),
        ),
        (
            Method::POST,
            format!("{}/uploads?file_length=1&file_type=image/png", b.app_id),
            None,
            b.app_id.clone(),
        ),
        (Method::GET, "777".to_owned(), None, "777".to_owned()),
        (Method::DELETE, "777".to_owned(), None, "777".to_owned()),
        (Method::GET, "999999".to_owned(), None, "999999".to_owned()),
        // Own media, but asked for through another number.
        (
            Method::GET,
            format!("555?phone_number_id={}", b.phone_number_id),
            None,
            "555".to_owned(),
        ),
        (
            Method::DELETE,
            format!("555?phone_number_id={}", b.phone_number_id),
            None,
            "555".to_owned(),
        ),
    ];
    for (method, path, body, id) in cases {
        let answer = send(&c, graph(&mock, &a, method.clone(), &path, body)).await;
        answer.assert_error(400, 100, Some(33));
        assert_eq!(
            answer.json(),
            graph_error(
                100,
                Some(33),
                &unsupported_request_message(method.as_str(), &id)
            ),
            "{method} {path}"
        );
    }
    assert!(unsupported_request_message("POST", "1")
        .starts_with("Unsupported post request. Object with ID '1' does not exist"));
    // Nothing was deleted; each owner still sees its media.
    assert!(mock.media("777").is_some() && mock.media("555").is_some());
    let own = send(&c, graph(&mock, &b, Method::GET, "777", None)).await;
    assert_eq!(own.status, StatusCode::OK);
}

#[tokio::test]
async fn mock_graph_uploads_describes_serves_and_deletes_media() {
    let (mock, a, b) = start().await;
    let c = client();
    let bytes: &[u8] = b"\x89PNG fake image bytes";

    let answer = send(
        &c,
        media_upload(
            &mock,
            &a,
            &[
                ("messaging_product", None, b"whatsapp"),
                ("type", None, b"image/png"),
                ("file", Some(("pic.png", "image/png")), bytes),
            ],
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.json());
    let id = answer.json()["id"].as_str().unwrap().to_owned();
    assert!(id.bytes().all(|b| b.is_ascii_digit()), "{id}");
    assert_eq!(
        mock.media(&id),
        Some(("image/png".to_owned(), Bytes::from_static(bytes)))
    );
    let recorded = mock.requests();
    let file = recorded[0].part("file").unwrap();
    assert_eq!(file.filename.as_deref(), Some("pic.png"));

    // Metadata, also with the owning number as phone_number_id.
    let expected_url = format!(
        "{}/whatsapp_business/attachments/?mid={id}&ext=1700000000&hash=ATsecret%3D&source=getMedia",
        mock.cdn_url()
    );
    assert_eq!(mock.media_url(&id), expected_url);
    for path in [
        id.clone(),
        format!("{id}?phone_number_id={}", a.phone_number_id),
    ] {
        let meta = send(&c, graph(&mock, &a, Method::GET, &path, None)).await;
        assert_eq!(meta.status, StatusCode::OK);
        assert_eq!(
            meta.json(),
            json!({
                "messaging_product": "whatsapp",
                "url": expected_url,
                "mime_type": "image/png",
                "sha256": crate::support::mock_upstream::sha256_hex(bytes),
                "file_size": bytes.len(),
                "id": id
            })
        );
    }

    // The CDN: only with the owner's bearer token, and with the url as issued.
    let got = send(&c, cdn_get(&expected_url, Some(&a.access_token))).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.headers["content-type"], "image/png");
    assert_eq!(got.body, bytes);
    for token in [None, Some("nope"), Some(b.access_token.as_str())] {
        let refused = send(&c, cdn_get(&expected_url, token)).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert!(!refused.body.is_empty() && refused.body.len() < 100);
    }
    let unknown = expected_url.replace(&id, "424242");
    assert_eq!(
        send(&c, cdn_get(&unknown, Some(&a.access_token)))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let reencoded = expected_url.replace("%3D", "=");
    assert_eq!(
        send(&c, cdn_get(&reencoded, Some(&a.access_token)))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let cdn = mock.wait_for_cdn_requests(6).await;
    assert_eq!(cdn.len(), 6);
    assert_eq!(
        cdn[0].path_and_query,
        expected_url.replace(&mock.cdn_url(), "")
    );
    assert_eq!(
        cdn[0].header("authorization"),
        Some(format!("Bearer {}", a.access_token).as_str())
    );
    assert_eq!(mock.cdn_authority(), mock.cdn_url().replace("http://", ""));

    // Without `type` the file's content type counts; missing parts are refused.
    let answer = send(
        &c,
        media_upload(
            &mock,
            &a,
            &[
                ("messaging_product", None, b"whatsapp"),
                ("file", Some(("a.txt", "text/plain")), b"hi"),
            ],
        ),
    )
    .await;
    let txt = answer.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(mock.media(&txt).unwrap().0, "text/plain");
    for parts in [
        vec![("file", Some(("a.txt", "text/plain")), &b"hi"[..])],
        vec![("messaging_product", None, &b"whatsapp"[..])],
        vec![
            ("messaging_product", None, &b"whatsapp"[..]),
            ("file", None, &b"hi"[..]),
        ],
    ] {
        send(&c, media_upload(&mock, &a, &parts))
            .await
            .assert_error(400, 100, None);
    }

    // Delete: gone for Graph and for the CDN.
    let deleted = send(
        &c,
        graph(
            &mock,
            &a,
            Method::DELETE,
            &format!("{id}?phone_number_id={}", a.phone_number_id),
            None,
        ),
    )
    .await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(deleted.json(), json!({"success": true}));
    assert!(mock.media(&id).is_none());
    send(&c, graph(&mock, &a, Method::GET, &id, None))
        .await
        .assert_error(400, 100, Some(33));
    assert_eq!(
        send(&c, cdn_get(&expected_url, Some(&a.access_token)))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn mock_graph_reads_and_updates_the_business_profile() {
    let (mock, a, _) = start().await;
    let c = client();
    let path = format!("{}/whatsapp_business_profile", a.phone_number_id);

    let answer = send(
        &c,
        graph(
            &mock,
            &a,
            Method::GET,
            &format!("{path}?fields=about,vertical,address"),
            None,
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    // `address` is not set, so it is left out.
    assert_eq!(
        answer.json(),
        json!({"data": [{"about": "Hello from Graph", "vertical": "OTHER", "messaging_product": "whatsapp"}]})
    );
    let all = send(&c, graph(&mock, &a, Method::GET, &path, None))
        .await
        .json();
    assert_eq!(all["data"][0]["email"], "shop@example.com");
    send(
        &c,
        graph(
            &mock,
            &a,
            Method::GET,
            &format!("{path}?fields=about,colour"),
            None,
        ),
    )
    .await
    .assert_error(400, 100, None);

    let update = json!({"messaging_product": "whatsapp", "about": "Open 9-5",
        "address": "Main St 1", "websites": ["https://a.example/", "https://b.example/"], "email": ""});
    let answer = send(&c, graph(&mock, &a, Method::POST, &path, Some(update))).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json(), json!({"success": true}));
    let profile = mock.profile(&a.phone_number_id);
    assert_eq!(profile["about"], "Open 9-5");
    assert_eq!(profile["address"], "Main St 1");
    assert_eq!(
        profile["websites"],
        json!(["https://a.example/", "https://b.example/"])
    );
    assert!(
        profile.get("email").is_none(),
        "an empty string clears: {profile}"
    );
    let answer = send(
        &c,
        graph(
            &mock,
            &a,
            Method::GET,
            &format!("{path}?fields=about,address,email"),
            None,
        ),
    )
    .await;
    assert_eq!(
        answer.json(),
        json!({"data": [{"about": "Open 9-5", "address": "Main St 1", "messaging_product": "whatsapp"}]})
    );

    for bad in [
        json!({"about": "no product"}),
        json!({"messaging_product": "whatsapp", "colour": "red"}),
        json!({"messaging_product": "whatsapp", "websites": "https://a.example/"}),
        json!({"messaging_product": "whatsapp", "profile_picture_handle": "4:not:issued"}),
    ] {
        send(&c, graph(&mock, &a, Method::POST, &path, Some(bad)))
            .await
            .assert_error(400, 100, None);
    }
    assert_eq!(mock.profile(&a.phone_number_id)["about"], "Open 9-5");
}

#[tokio::test]
async fn mock_graph_resumable_upload_sets_a_profile_picture_the_cdn_serves() {
    let (mock, a, b) = start().await;
    let c = client();
    let picture: &[u8] = b"\xff\xd8 jpeg bytes";
    let uploads = format!("{}/uploads", a.app_id);

    for query in [
        "",
        "?file_type=image/jpeg",
        "?file_length=x&file_type=image/jpeg",
        "?file_length=14",
    ] {
        send(
            &c,
            graph(&mock, &a, Method::POST, &format!("{uploads}{query}"), None),
        )
        .await
        .assert_error(400, 100, None);
    }
    let answer = send(
        &c,
        graph(
            &mock,
            &a,
            Method::POST,
            &format!(
                "{uploads}?file_length={}&file_type=image/jpeg&file_name=me.jpg",
                picture.len()
            ),
            None,
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let session = answer.json()["id"].as_str().unwrap().to_owned();
    assert!(
        session.starts_with("upload:") && session.contains("?sig="),
        "{session}"
    );

    let url = format!("{}/v23.0/{session}", mock.url());
    let oauth = format!("OAuth {}", a.access_token);
    let offset0 = [("file_offset", "0")];
    // Bearer is refused on upload:, even with a good token.
    let bearer = format!("Bearer {}", a.access_token);
    send(
        &c,
        raw(Method::POST, &url, Some(&bearer), &offset0, picture),
    )
    .await
    .assert_error(401, 190, None);
    // Another account's (valid) token does not see the session; nor does a wrong sig.
    let other = format!("OAuth {}", b.access_token);
    send(&c, raw(Method::POST, &url, Some(&other), &offset0, picture))
        .await
        .assert_error(400, 100, Some(33));
    let unsigned = url.split_once('?').unwrap().0.to_owned();
    send(
        &c,
        raw(Method::POST, &unsigned, Some(&oauth), &offset0, picture),
    )
    .await
    .assert_error(400, 100, Some(33));
    // Wrong length, missing or non-zero offset.
    send(
        &c,
        raw(Method::POST, &url, Some(&oauth), &offset0, &picture[1..]),
    )
    .await
    .assert_error(400, 100, None);
    send(&c, raw(Method::POST, &url, Some(&oauth), &[], picture))
        .await
        .assert_error(400, 100, None);
    send(
        &c,
        raw(
            Method::POST,
            &url,
            Some(&oauth),
            &[("file_offset", "3")],
            picture,
        ),
    )
    .await
    .assert_error(400, 100, None);
    let offset = send(&c, raw(Method::GET, &url, Some(&oauth), &[], "")).await;
    assert_eq!(offset.json()["file_offset"], 0);

    let answer = send(&c, raw(Method::POST, &url, Some(&oauth), &offset0, picture)).await;
    assert_eq!(answer.status, StatusCode::OK);
    let handle = answer.json()["h"].as_str().unwrap().to_owned();
    assert!(!handle.is_empty());
    let offset = send(&c, raw(Method::GET, &url, Some(&oauth), &[], "")).await;
    assert_eq!(offset.json()["file_offset"], picture.len());

    // The handle is only good for the token that uploaded it.
    let set = json!({"messaging_product": "whatsapp", "profile_picture_handle": handle});
    let b_profile = format!("{}/whatsapp_business_profile", b.phone_number_id);
    send(
        &c,
        graph(&mock, &b, Method::POST, &b_profile, Some(set.clone())),
    )
    .await
    .assert_error(400, 100, None);
    let a_profile = format!("{}/whatsapp_business_profile", a.phone_number_id);
    let answer = send(&c, graph(&mock, &a, Method::POST, &a_profile, Some(set))).await;
    assert_eq!(answer.json(), json!({"success": true}));
    let picture_url = mock.profile(&a.phone_number_id)["profile_picture_url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(picture_url.starts_with(&mock.cdn_url()), "{picture_url}");
    let listed = send(
        &c,
        graph(
            &mock,
            &a,
            Method::GET,
            &format!("{a_profile}?fields=profile_picture_url"),
            None,
        ),
    )
    .await;
    assert_eq!(
        listed.json()["data"][0]["profile_picture_url"],
        picture_url.as_str()
    );

    let got = send(&c, cdn_get(&picture_url, Some(&a.access_token))).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.headers["content-type"], "image/jpeg");
    assert_eq!(got.body, picture);
    for token in [None, Some(b.access_token.as_str())] {
        assert_eq!(
            send(&c, cdn_get(&picture_url, token)).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(mock.cdn_requests().len(), 3);
}

#[tokio::test]
async fn mock_graph_lists_creates_and_deletes_message_templates() {
    let (mock, a, b) = start().await;
    let c = client();
    let path = format!("{}/message_templates", a.waba_id);

    let list = send(&c, graph(&mock, &a, Method::GET, &path, None)).await;
    assert_eq!(list.status, StatusCode::OK);
    let list = list.json();
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hello_world", "order_update"]);
    let hello = &list["data"][0];
    assert_eq!(
        (
            hello["language"].as_str(),
            hello["status"].as_str(),
            hello["category"].as_str()
        ),
        (Some("en_US"), Some("APPROVED"), Some("UTILITY"))
    );
    assert!(hello["components"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "BODY"));
    assert!(hello["id"]
        .as_str()
        .unwrap()
        .bytes()
        .all(|b| b.is_ascii_digit()));
    assert!(list["data"][1]["components"][0]["text"]
        .as_str()
        .unwrap()
        .contains("{{1}}"));
    assert!(
        list["paging"]["cursors"]["before"].is_string()
            && list["paging"]["cursors"]["after"].is_string()
    );
    assert_eq!(
        mock.templates(&a.waba_id),
        list["data"].as_array().unwrap().clone()
    );

    // Filter and pages.
    let filtered = send(
        &c,
        graph(
            &mock,
            &a,
            Method::GET,
            &format!("{path}?name=order_update"),
            None,
        ),
    )
    .await
    .json();
    assert_eq!(filtered["data"].as_array().unwrap().len(), 1);
    assert_eq!(filtered["data"][0]["name"], "order_update");
    let page1 = send(
        &c,
        graph(&mock, &a, Method::GET, &format!("{path}?limit=1"), None),
    )
    .await
    .json();
    assert_eq!(page1["data"][0]["name"], "hello_world");
    assert!(page1["paging"]["next"].is_string());
    let after = page1["paging"]["cursors"]["after"].as_str().unwrap();
    let page2 = send(
        &c,
        graph(
            &mock,
            &a,
            Method::GET,
            &format!("{path}?limit=1&after={after}"),
            None,
        ),
    )
    .await
    .json();
    assert_eq!(page2["data"][0]["name"], "order_update");
    assert!(page2["paging"].get("next").is_none());

    // Create.
    let new = json!({"name": "summer_sale", "category": "MARKETING", "language": "en",
        "components": [{"type": "BODY", "text": "Sale!"}]});
    let created = send(&c, graph(&mock, &a, Method::POST, &path, Some(new.clone()))).await;
    assert_eq!(created.status, StatusCode::OK);
    let created = created.json();
    assert_eq!(created["status"], "PENDING");
    assert_eq!(created["category"], "MARKETING");
    let stored = mock.templates(&a.waba_id);
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[2]["id"], created["id"]);
    assert_eq!(stored[2]["status"], "PENDING");
    assert!(
        mock.templates(&b.waba_id).len() == 2,
        "other WABAs are untouched"
    );
    let duplicate = send(&c, graph(&mock, &a, Method::POST, &path, Some(new.clone()))).await;
    duplicate.assert_error(400, 100, Some(2_388_024));
    for key in ["name", "category", "language", "components"] {
        let mut incomplete = new.clone();
        incomplete.as_object_mut().unwrap().remove(key);
        send(&c, graph(&mock, &a, Method::POST, &path, Some(incomplete)))
            .await
            .assert_error(400, 100, None);
    }

    // Delete.
    let deleted = send(
        &c,
        graph(
            &mock,
            &a,
            Method::DELETE,
            &format!("{path}?name=summer_sale"),
            None,
        ),
    )
    .await;
    assert_eq!(deleted.json(), json!({"success": true}));
    assert_eq!(mock.templates(&a.waba_id).len(), 2);
    for query in ["?name=summer_sale", "?name=never_was", ""] {
        let answer = send(
            &c,
            graph(&mock, &a, Method::DELETE, &format!("{path}{query}"), None),
        )
        .await;
        answer.assert_error(400, 100, None);
        assert!(!answer.json()["error"]["message"]
            .as_str()
            .unwrap()
            .is_empty());
    }
}

#[tokio::test]
async fn mock_graph_push_and_push_delay_script_one_request_each() {
    let (mock, a, _) = start().await;
    let c = client();
    let path = format!("{}/whatsapp_business_profile", a.phone_number_id);

    // push: exactly that answer, whatever the request (even without a token), recorded first.
    let throttled = graph_error(130_429, None, "(#130429) Rate limit hit");
    mock.push(429, throttled.clone());
    let url = format!("{}/v1.0/anything", mock.url());
    let answer = send(&c, raw(Method::GET, &url, None, &[], "")).await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(answer.headers["content-type"], "application/json");
    assert_eq!(answer.json(), throttled);
    assert_eq!(mock.requests()[0].path_and_query, "/v1.0/anything");
    // Then back to normal.
    let normal = send(&c, graph(&mock, &a, Method::GET, &path, None)).await;
    assert_eq!(normal.status, StatusCode::OK);

    // push_delay: recorded at once, answered (normally) only after the delay; FIFO with push.
    let delay = Duration::from_millis(300);
    mock.push_delay(delay);
    mock.push(200, json!({"scripted": true}));
    let started = Instant::now();
    let slow = tokio::spawn({
        let c = c.clone();
        let req = graph(&mock, &a, Method::GET, &path, None);
        async move { send(&c, req).await }
    });
    let recorded = mock.wait_for_requests(3).await;
    assert_eq!(recorded[2].path(), format!("/v23.0/{path}"));
    assert!(!slow.is_finished(), "answered before the delay was over");
    let scripted = send(&c, graph(&mock, &a, Method::GET, &path, None)).await;
    assert_eq!(scripted.json(), json!({"scripted": true}));
    let slow = slow.await.unwrap();
    assert!(started.elapsed() >= delay);
    assert_eq!(slow.status, StatusCode::OK);
    assert_eq!(slow.json()["data"][0]["about"], "Hello from Graph");
    assert_eq!(mock.requests().len(), 4);
}

#[tokio::test]
async fn mock_graph_shared_token_sees_every_number_it_covers() {
    // One token (e.g. a system user's) for two numbers of one WABA.
    let a = GraphAccount::example(0);
    let second = GraphAccount {
        phone_number_id: "106540352249999".to_owned(),
        ..a.clone()
    };
    let mock = MockGraph::start(vec![a.clone(), second.clone()]).await;
    let c = client();
    mock.add_media(
        &second.phone_number_id,
        "31",
        "audio/ogg",
        Bytes::from_static(b"ogg"),
    );
    let meta = send(
        &c,
        graph(
            &mock,
            &a,
            Method::GET,
            &format!("31?phone_number_id={}", second.phone_number_id),
            None,
        ),
    )
    .await;
    assert_eq!(meta.status, StatusCode::OK);
    send(
        &c,
        graph(
            &mock,
            &a,
            Method::GET,
            &format!("31?phone_number_id={}", a.phone_number_id),
            None,
        ),
    )
    .await
    .assert_error(400, 100, Some(33));
    let got = send(&c, cdn_get(&mock.media_url("31"), Some(&a.access_token))).await;
    assert_eq!(got.body, "ogg");
    assert_eq!(mock.templates(&a.waba_id).len(), 2, "one WABA, seeded once");
    assert_eq!(mock.profile(&second.phone_number_id)["vertical"], "OTHER");
}
