//! The operator console in a real browser: headless Chromium driven over WebDriver
//! (`chromedriver`, Debian's `chromium-driver`; fantoccini). Without them the test says
//! SKIPPED, unless `WABA_PROXY_TEST_TOOLS_REQUIRED=1` (as in CI).
//!
//! Also, without a browser: the page's security headers, its sign-in, and the form token.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::process::Stdio;
use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};
use serde_json::json;

use crate::support::mock_upstream::{Behaviour, MockUpstream};
use crate::support::proxy::{send, send_text, spawn_proxy_with, TestProxy};
use crate::webhooks::{legacy_receiver, post_event, receiver_ok, text_event, SECRET};

const TOKEN: &str = "console-admin-token-8c1";
/// A dead letter's message text, hostile twice over.
const HOSTILE: &str =
    "<script>document.title='pwned'</script>\"><img src=x onerror=\"document.title='pwned2'\">";

/// A proxy with the console on, some traffic, and one dead letter holding `HOSTILE`; the
/// receiver refuses everything until the test says otherwise.
async fn console_with_a_dead_letter() -> (MockUpstream, MockUpstream, TestProxy) {
    let upstream = MockUpstream::start().await;
    let receiver = legacy_receiver(
        [],
        Behaviour::Respond {
            status: 500,
            headers: vec![],
            body: bytes::Bytes::from_static(b"down"),
        },
    )
    .await;
    let hook = format!("{}/hook", receiver.url());
    let proxy = spawn_proxy_with(&upstream.url(), |c| {
        c.admin_token = Some(TOKEN.into());
        c.legacy_webhook_url = Some(hook);
        c.webhook_secret = Some(SECRET.into());
        c.webhook_retry_base = Duration::from_millis(20);
        c.webhook_retry_period = Duration::from_millis(300);
    })
    .await;
    for _ in 0..3 {
        assert_eq!(send_text(&proxy).await.status, 201);
    }
    assert_eq!(
        send(&proxy, "GET", "/v1/nowhere", &[], "").await.status,
        404
    );
    let event = text_event("4915112345678", "wamid.HOSTILE", HOSTILE);
    assert_eq!(
        post_event(&proxy, "default", Some(SECRET), &event).await,
        200
    );
    // Refused until the retry period ends: then it is a dead letter.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if !dead_letters(&proxy).await.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (upstream, receiver, proxy)
}

/// The dead letters, as the admin API lists them.
async fn dead_letters(proxy: &TestProxy) -> Vec<serde_json::Value> {
    let listed = send(
        proxy,
        "GET",
        "/admin/webhooks/dead",
        &[("authorization", &format!("Bearer {TOKEN}"))],
        "",
    )
    .await;
    listed.json()["dead"].as_array().unwrap().clone()
}

#[tokio::test]
async fn the_console_asks_for_the_token_and_sends_its_security_headers() {
    let (_upstream, _receiver, proxy) = console_with_a_dead_letter().await;
    let anonymous = send(&proxy, "GET", "/admin", &[], "").await;
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    assert!(String::from_utf8_lossy(&anonymous.body).contains("name=\"token\""));
    let wrong = send(
        &proxy,
        "GET",
        "/admin",
        &[("authorization", "Basic eDp3cm9uZw==")],
        "",
    )
    .await;
    assert_eq!(wrong.status, 401);

    // A send on the hot path that leaves an On-Premise field behind: the readiness report
    // names it, with the request id to look it up.
    let moved = send(
        &proxy,
        "POST",
        "/v1/messages",
        &[("D360-API-KEY", "k"), ("x-request-id", "moved-preview-1")],
        r#"{"to":"1","type":"text","preview_url":true,"text":{"body":"x"}}"#,
    )
    .await;
    assert_eq!(moved.status, 201);

    let basic = crate::support::proxy::basic_auth("operator", TOKEN);
    let page = send(&proxy, "GET", "/admin", &[("authorization", &basic)], "").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .split(';')
            .next(),
        Some("default-src 'self'")
    );
    assert_eq!(page.headers["x-frame-options"], "DENY");
    assert_eq!(page.headers["referrer-policy"], "no-referrer");
    let html = String::from_utf8(page.body.to_vec()).unwrap();
    assert!(
        !html.contains("<script") && !html.contains("<img"),
        "markup from traffic leaked"
    );
    assert!(html.contains("&lt;script&gt;document.title="));
    assert!(html.contains("send_message 201"));
    assert!(html.contains("send_message: preview_url (rewritten as text.preview_url)"));
    assert!(html.contains("moved-preview-1"));
    assert!(!html.contains(TOKEN) && !html.contains(SECRET));

    // The sign-in form sets an HttpOnly, SameSite=Strict cookie that then opens the page.
    let signed = send(
        &proxy,
        "POST",
        "/admin/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        &format!("token={TOKEN}"),
    )
    .await;
    assert_eq!(signed.status, 303);
    let cookie = signed.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains(TOKEN));
    let session = cookie.split(';').next().unwrap().to_owned();
    let page = send(&proxy, "GET", "/admin", &[("cookie", &session)], "").await;
    assert_eq!(page.status, 200);

    // A replay without the page's form token is refused, and the letter stays.
    let forged = send(
        &proxy,
        "POST",
        "/admin/console/replay",
        &[
            ("cookie", &session),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        "id=1&csrf=guessed",
    )
    .await;
    assert_eq!(forged.status, 403);
    assert_eq!(dead_letters(&proxy).await.len(), 1);
}

#[tokio::test]
async fn forged_or_other_sessions_neither_open_the_page_nor_replay() {
    let (_upstream, receiver, proxy) = console_with_a_dead_letter().await;
    // A replayed letter is then delivered, not dead again at once.
    receiver.set_default(receiver_ok());
    // Every console answer carries the anti-framing headers, refusals included.
    let anonymous = send(&proxy, "GET", "/admin", &[], "").await;
    let css = send(&proxy, "GET", "/admin/console.css", &[], "").await;
    let refused = send(
        &proxy,
        "POST",
        "/admin/console/replay",
        &[("authorization", &format!("Bearer {TOKEN}"))],
        "id=1&csrf=x",
    )
    .await;
    assert_eq!(refused.status, 403);
    for answer in [&anonymous, &css, &refused] {
        assert_eq!(answer.headers["x-frame-options"], "DENY");
        assert_eq!(answer.headers["referrer-policy"], "no-referrer");
        assert!(answer.headers.contains_key("content-security-policy"));
    }
    let sign_in = |token: String| {
        let proxy = &proxy;
        async move {
            let signed = send(
                proxy,
                "POST",
                "/admin/login",
                &[("content-type", "application/x-www-form-urlencoded")],
                &format!("token={token}"),
            )
            .await;
            (
                signed.status,
                signed
                    .headers
                    .get("set-cookie")
                    .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_owned()),
            )
        }
    };
    // A wrong token: the form again (401, no cookie, no Basic prompt over it).
    let (status, cookie) = sign_in("wrong".into()).await;
    assert_eq!((status, cookie), (401, None));
    // Cookies that are not the proxy's: a forged signature, an old issue time re-signed by
    // nobody, garbage.
    let (_, Some(real)) = sign_in(TOKEN.into()).await else {
        panic!("no cookie")
    };
    let (issued, signature) = real
        .trim_start_matches("waba_console=")
        .split_once('.')
        .unwrap();
    for forged in [
        format!("waba_console={issued}.{}", "0".repeat(64)),
        format!("waba_console=1.{signature}"),
        format!(
            "waba_console={}.{signature}",
            issued.parse::<i64>().unwrap() - 13 * 3600 * 1000
        ),
        "waba_console=garbage".to_owned(),
    ] {
        let page = send(&proxy, "GET", "/admin", &[("cookie", &forged)], "").await;
        assert_eq!(page.status, 401, "{forged}");
    }
    // The form token is bound to its sign-in: another session's does not replay.
    let page = send(&proxy, "GET", "/admin", &[("cookie", &real)], "").await;
    let html = String::from_utf8(page.body.to_vec()).unwrap();
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (_, Some(other)) = sign_in(TOKEN.into()).await else {
        panic!("no cookie")
    };
    assert_ne!(other, real);
    let id = html
        .split("name=\"id\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let replay = |cookie: String, csrf: String| {
        let proxy = &proxy;
        let id = id.clone();
        async move {
            send(
                proxy,
                "POST",
                "/admin/console/replay",
                &[
                    ("cookie", &cookie),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                &format!("id={id}&csrf={csrf}"),
            )
            .await
            .status
        }
    };
    assert_eq!(replay(other.clone(), csrf.clone()).await, 403);
    let dead = dead_letters(&proxy).await;
    assert_eq!(dead.len(), 1, "still dead");
    // Its own session's token does.
    assert_eq!(replay(real, csrf).await, 303);
    let dead = dead_letters(&proxy).await;
    assert!(dead.is_empty(), "replayed");
}

#[tokio::test]
async fn without_an_admin_token_there_is_no_console() {
    let upstream = MockUpstream::start().await;
    let proxy = spawn_proxy_with(&upstream.url(), |_| {}).await;
    for (method, path) in [
        ("GET", "/admin"),
        ("GET", "/admin/console.css"),
        ("GET", "/admin/login"),
        ("POST", "/admin/login"),
        ("POST", "/admin/console/replay"),
    ] {
        assert_eq!(
            send(&proxy, method, path, &[], "").await.status,
            404,
            "{path}"
        );
    }
}

/// chromedriver on a free port, killed with the guard.
struct Driver {
    child: std::process::Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text of the page's first element matching `css`.
async fn text_of(client: &fantoccini::Client, css: &str) -> String {
    let element = client.find(Locator::Css(css)).await.unwrap();
    element.text().await.unwrap()
}

/// Clicks the page's first element matching `css`.
async fn click(client: &fantoccini::Client, css: &str) {
    let element = client.find(Locator::Css(css)).await.unwrap();
    element.click().await.unwrap();
}

fn start_driver() -> Result<Driver, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let child = std::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("chromedriver: {e}"))?;
    which("chromium")?;
    Ok(Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    })
}

fn which(binary: &str) -> Result<(), String> {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(binary).is_file()))
        .unwrap_or(false);
    found.then_some(()).ok_or(format!("{binary} not found"))
}

#[tokio::test]
async fn an_operator_signs_in_sees_the_traffic_and_replays_a_hostile_dead_letter_in_a_browser() {
    let driver = match start_driver() {
        Ok(driver) => driver,
        Err(reason) => {
            assert!(
                std::env::var("WABA_PROXY_TEST_TOOLS_REQUIRED").as_deref() != Ok("1"),
                "Chromium is required but unavailable: {reason}"
            );
            eprintln!("SKIPPED (no Chromium): {reason}");
            return;
        }
    };
    let (_upstream, receiver, proxy) = console_with_a_dead_letter().await;
    let base = format!("http://{}", proxy.addr);

    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,2000"]}),
    );
    // chromedriver takes a moment to listen.
    let mut client = None;
    for _ in 0..100 {
        match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities.clone())
            .connect(&driver.url)
            .await
        {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let client = client.expect("a WebDriver session");

    // Sign in through the form (`/admin` itself answers with the browser's Basic prompt).
    client.goto(&format!("{base}/admin/login")).await.unwrap();
    client
        .find(Locator::Css("input[name=token]"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    click(&client, "form button").await;
    client
        .wait()
        .for_element(Locator::Css("#traffic"))
        .await
        .unwrap();

    // The session's traffic is there.
    let traffic = text_of(&client, "#traffic").await;
    assert!(traffic.contains("send_message 201"), "{traffic}");
    assert!(traffic.contains("not_found 404"), "{traffic}");

    // The hostile text shows as text, and none of it ran.
    let dead = text_of(&client, "#dead pre").await;
    assert!(
        dead.contains("<script>document.title='pwned'</script>"),
        "{dead}"
    );
    assert!(dead.contains("onerror="), "{dead}");
    assert!(client
        .find_all(Locator::Css("#dead img"))
        .await
        .unwrap()
        .is_empty());
    assert!(client
        .find_all(Locator::Css("main script"))
        .await
        .unwrap()
        .is_empty());
    let title = client.title().await.unwrap();
    assert_eq!(title, "Console · waba-onprem-proxy");

    let screenshot = client.screenshot().await.unwrap();
    let dir = std::env::temp_dir().join(format!("console-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("console.png"), &screenshot).unwrap();
    assert!(screenshot.starts_with(b"\x89PNG"));
    // `WABA_PROXY_UPDATE_SCREENSHOT=1` refreshes the README's picture from this run.
    if std::env::var("WABA_PROXY_UPDATE_SCREENSHOT").as_deref() == Ok("1") {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join("console.png"), &screenshot).unwrap();
    }

    // The receiver is back: a replay from the page delivers the letter and it leaves the list.
    receiver.set_default(receiver_ok());
    click(&client, "#dead form button").await;
    let delivered = receiver.wait_for_requests(1).await;
    assert!(delivered
        .iter()
        .any(|r| r.json()["messages"][0]["text"]["body"] == HOSTILE));
    client.goto(&format!("{base}/admin")).await.unwrap();
    let dead = text_of(&client, "#dead").await;
    assert!(dead.contains("No dead letters."), "{dead}");
    client.close().await.unwrap();
}
