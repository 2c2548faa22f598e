//! The relay under load and failure: group commit (a post is answered only after its commit, a
//! batch that cannot commit fails only its own posts), isolation of channels (a dead receiver
//! does not slow another channel), dead letters page by page, and retention.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use crate::support::mock_upstream::{Behaviour, MockUpstream};
use crate::support::proxy::{send, send_at, spawn_proxy_with, Answer, TestProxy};
use crate::support::Backend;
use crate::webhooks::{admin, post_event, receiver_ok, relay_proxy, status_event, SECRET};
use serde_json::{json, Value};
use waba_onprem_proxy::clock::Clock;
use waba_onprem_proxy::config::Config;
use waba_onprem_proxy::db::{Database, DatabaseUrl, Inbound, NewPayload, Outcome};
use waba_onprem_proxy::relay::{clean_up, Relay, Retention};

fn sqlite_file() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("waba-relay-{}.sqlite3", uuid::Uuid::new_v4()))
}

/// Holds SQLite's write lock from outside the proxy, as a long checkpoint or a stuck disk
/// would: the proxy's next commit waits for it (and gives up after its busy timeout, 5 s).
fn hold_write_lock(path: &std::path::Path) -> rusqlite::Connection {
    let outside = rusqlite::Connection::open(path).unwrap();
    outside.execute_batch("BEGIN IMMEDIATE").unwrap();
    outside
}

/// A post to the sidecar channel from a task of its own.
async fn post_at(addr: std::net::SocketAddr, event: Value) -> Answer {
    let headers = [
        ("content-type", "application/json"),
        ("x-webhook-secret", SECRET),
    ];
    send_at(
        addr,
        "POST",
        "/cloud-webhooks/default",
        &headers,
        &event.to_string(),
    )
    .await
}

/// A sidecar relay on a SQLite file of its own, with that file's write lock held from outside
/// (released by `ROLLBACK` on the returned connection).
async fn relay_with_write_lock_held() -> (MockUpstream, TestProxy, rusqlite::Connection) {
    let receiver = MockUpstream::start().await;
    receiver.set_default(receiver_ok());
    let path = sqlite_file();
    let proxy = relay_proxy(&Backend::Sqlite, &receiver, |c| {
        c.database = Some(DatabaseUrl::Sqlite(path.clone()))
    })
    .await;
    let outside = hold_write_lock(&path);
    (receiver, proxy, outside)
}

#[tokio::test]
async fn a_post_is_answered_only_after_the_transaction_holding_it_has_committed() {
    let (receiver, proxy, outside) = relay_with_write_lock_held().await;
    let post = tokio::spawn(post_at(proxy.addr, status_event("7", "wamid.C1", "sent")));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        !post.is_finished(),
        "the post was answered while its transaction could not commit"
    );
    outside.execute_batch("ROLLBACK").unwrap();
    assert_eq!(post.await.unwrap().status, 200);
    let got = receiver.wait_for_requests(1).await;
    assert_eq!(got[0].json()["statuses"][0]["id"], "wamid.C1");
}

#[tokio::test]
async fn a_batch_that_cannot_commit_fails_only_its_own_posts_with_a_retryable_503() {
    let (receiver, proxy, outside) = relay_with_write_lock_held().await;
    let failed = futures_util::future::join_all((0..3).map(|n| {
        post_at(
            proxy.addr,
            status_event("7", &format!("wamid.F{n}"), "sent"),
        )
    }))
    .await;
    for answer in &failed {
        assert_eq!(answer.status, 503, "{:?}", answer.body);
        assert_eq!(answer.onprem_error_code(), 1011);
    }
    outside.execute_batch("ROLLBACK").unwrap();
    // The next post is a batch of its own and commits.
    assert_eq!(
        post_event(
            &proxy,
            "default",
            Some(SECRET),
            &status_event("7", "wamid.OK", "sent")
        )
        .await,
        200
    );
    let got = receiver.wait_for_requests(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delivered: Vec<Value> = receiver
        .requests()
        .iter()
        .map(|r| r.json()["statuses"][0]["id"].clone())
        .collect();
    assert_eq!(got.len(), 1);
    assert_eq!(delivered, [json!("wamid.OK")], "refused posts were stored");
}

/// A proxy with two client channels (two API keys, each with its own receiver); returns each
/// channel's name and secret.
async fn two_channels(
    receivers: [&MockUpstream; 2],
    tune: impl FnOnce(&mut Config),
) -> (TestProxy, [(String, String); 2]) {
    let upstream = MockUpstream::start().await;
    upstream.set_default(Behaviour::Json {
        status: 200,
        body: json!({"url": "ok"}),
    });
    let proxy = spawn_proxy_with(&upstream.url(), |c| {
        c.public_url = Some("https://proxy.example.com".into());
        tune(c);
    })
    .await;
    let mut channels = Vec::new();
    for (n, receiver) in receivers.iter().enumerate() {
        let key = format!("TEST-KEY-channel-{n}");
        let body = json!({"url": format!("{}/hook", receiver.url())}).to_string();
        let set = send(
            &proxy,
            "POST",
            "/v1/configs/webhook",
            &[("d360-api-key", &key), ("content-type", "application/json")],
            &body,
        )
        .await;
        assert_eq!(set.status, 200, "{:?}", set.body);
        let registration = upstream.requests()[n].json();
        let url = registration["url"].as_str().unwrap();
        channels.push((
            url.rsplit('/').next().unwrap().to_owned(),
            registration["headers"]["X-Webhook-Secret"]
                .as_str()
                .unwrap()
                .to_owned(),
        ));
    }
    let [first, second]: [(String, String); 2] = channels.try_into().unwrap();
    (proxy, [first, second])
}

#[tokio::test]
async fn a_dead_receiver_neither_slows_another_channel_nor_keeps_its_slots() {
    let dead = MockUpstream::start().await;
    dead.set_default(Behaviour::Stall);
    let healthy = MockUpstream::start().await;
    healthy.set_default(receiver_ok());
    let (proxy, [(dead_channel, dead_secret), (channel, secret)]) =
        two_channels([&dead, &healthy], |c| {
            c.webhook_concurrency = 4;
            c.webhook_channel_concurrency = 2;
            c.webhook_breaker_failures = 2;
            c.webhook_delivery_timeout = Duration::from_secs(5);
            c.webhook_retry_base = Duration::from_millis(500);
            c.admin_token = Some("admin-token".into());
        })
        .await;
    // Every event its own recipient, so each is due at once: 40 would fill every slot for
    // 5 s at a time if a channel could take them all.
    for n in 0..40 {
        let event = status_event(&format!("dead{n}"), &format!("wamid.D{n}"), "sent");
        assert_eq!(
            post_event(&proxy, &dead_channel, Some(&dead_secret), &event).await,
            200
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    for n in 0..40 {
        let event = status_event(&format!("ok{n}"), &format!("wamid.H{n}"), "sent");
        assert_eq!(
            post_event(&proxy, &channel, Some(&secret), &event).await,
            200
        );
    }
    healthy.wait_for_requests(40).await;
    let took = started.elapsed();
    // One delivery to the dead receiver holds its slot for 5 s; the healthy channel's 40
    // went through its own slots meanwhile.
    assert!(
        took < Duration::from_secs(4),
        "the healthy channel took {took:?} behind a dead one"
    );
    // After two timeouts in a row the dead channel's breaker opens: one probe at a time.
    let deadline = Instant::now() + Duration::from_secs(15);
    let circuit = loop {
        let (_, stats) = admin(&proxy, "GET", "/admin/webhooks/stats").await;
        let circuit = stats["channels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["channel"] == dead_channel.as_str())
            .map(|c| c["circuit"].clone());
        if circuit == Some(json!("open")) || Instant::now() > deadline {
            break circuit;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(circuit, Some(json!("open")));
    assert!(
        dead.requests().len() <= 4,
        "the dead receiver got {} deliveries before its breaker opened",
        dead.requests().len()
    );
}

#[tokio::test]
async fn dead_letters_are_listed_page_by_page_with_a_cursor() {
    let receiver = MockUpstream::start().await;
    receiver.set_default(receiver_ok());
    let proxy = relay_proxy(&Backend::Sqlite, &receiver, |_| {}).await;
    // Posts that are not Cloud webhooks become dead letters at once.
    for n in 0..5 {
        let answer = send(
            &proxy,
            "POST",
            "/cloud-webhooks/default",
            &[("x-webhook-secret", SECRET)],
            &format!("not json {n}"),
        )
        .await;
        assert_eq!(answer.status, 200);
    }
    let mut seen = Vec::new();
    let mut path = "/admin/webhooks/dead?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let (status, page) = admin(&proxy, "GET", &path).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        for dead in page["dead"].as_array().unwrap() {
            seen.push(dead["payload"].as_str().unwrap().to_owned());
        }
        match page["next"].as_i64() {
            Some(next) => path = format!("/admin/webhooks/dead?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        (0..5).map(|n| format!("not json {n}")).collect::<Vec<_>>()
    );
    let (status, refused) = admin(&proxy, "GET", "/admin/webhooks/dead?limit=0").await;
    assert_eq!(
        (status, refused["errors"][0]["code"].clone()),
        (400, json!(1009))
    );
    let (status, refused) = admin(&proxy, "GET", "/admin/webhooks/dead?after=x").await;
    assert_eq!(
        (status, refused["errors"][0]["code"].clone()),
        (400, json!(1009))
    );
}

#[tokio::test]
async fn the_oldest_pending_age_is_exported_while_a_receiver_is_down() {
    let receiver = MockUpstream::start().await;
    receiver.set_default(Behaviour::Respond {
        status: 503,
        headers: vec![],
        body: bytes::Bytes::from_static(b"down"),
    });
    let proxy = relay_proxy(&Backend::Sqlite, &receiver, |_| {}).await;
    let event = status_event("7", "wamid.M", "sent");
    assert_eq!(
        post_event(&proxy, "default", Some(SECRET), &event).await,
        200
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let metrics = send(&proxy, "GET", "/metrics", &[], "").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let age: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("waba_proxy_webhook_outbox_oldest_pending_seconds "))
        .expect("the oldest pending age is exported")
        .trim()
        .parse()
        .unwrap();
    assert!(age >= 1.0, "{age}");
    assert!(text.contains("waba_proxy_webhook_outbox{state=\"pending\"} 1"));
}

fn payload(wa_id: &str, id: &str) -> NewPayload {
    NewPayload {
        body: json!({"statuses": [{"id": id, "recipient_id": wa_id}]}).to_string(),
        ordering_key: wa_id.to_owned(),
        dedupe_key: Some(format!("status:{id}")),
    }
}

fn event(channel: &str, payloads: Vec<NewPayload>) -> Inbound {
    Inbound::Event {
        channel: channel.to_owned(),
        raw: "{}".to_owned(),
        payloads,
        skipped: 0,
    }
}

async fn open(backend: &Backend) -> Database {
    let url = backend
        .database()
        .unwrap_or_else(|| DatabaseUrl::Sqlite(sqlite_file()));
    let db = Database::open(&url, None).await.unwrap();
    crate::support::with_channels(&db, &["c", "default"]).await;
    db
}

on_both_backends!(
    one_batch_keeps_arrival_order_and_dedupes_within_itself,
    retention_removes_old_dead_letters_and_finished_rows_and_keeps_the_rest,
);

async fn one_batch_keeps_arrival_order_and_dedupes_within_itself(backend: Backend) {
    let db = open(&backend).await;
    let stored = db
        .ingest_batch(
            vec![
                event("c", vec![payload("7", "a")]),
                Inbound::Unreadable {
                    channel: "c".into(),
                    raw: "garbage".into(),
                    reason: "expected value".into(),
                },
                event("c", vec![payload("7", "b"), payload("8", "a2")]),
                // Cloud sent "a" twice, and both arrived in one batch.
                event("c", vec![payload("7", "a")]),
            ],
            10,
        )
        .await
        .unwrap();
    let counts: Vec<(usize, usize)> = stored.iter().map(|i| (i.stored, i.duplicates)).collect();
    assert_eq!(counts, [(1, 0), (0, 0), (2, 0), (0, 1)]);
    let due = db
        .claim_due(
            10,
            10,
            &waba_onprem_proxy::db::Claim {
                replica: "r".into(),
                until_ms: 1_000,
            },
        )
        .await
        .unwrap();
    // Recipient 7's first event is its head; "b" waits behind it.
    let heads: Vec<&str> = due
        .iter()
        .map(|d| {
            if d.payload.contains("\"a\"") {
                "a"
            } else if d.payload.contains("a2") {
                "a2"
            } else {
                "b"
            }
        })
        .collect();
    assert_eq!(heads, ["a", "a2"]);
    assert_eq!(db.dead(10).await.unwrap().len(), 1);
    let stats = db.stats(10).await.unwrap();
    assert_eq!((stats.pending, stats.duplicates), (3, 1));
}

const DAY_MS: i64 = 24 * 3600 * 1000;

async fn retention_removes_old_dead_letters_and_finished_rows_and_keeps_the_rest(backend: Backend) {
    let url = backend
        .database()
        .unwrap_or_else(|| DatabaseUrl::Sqlite(sqlite_file()));
    let config = Config::with_upstream("http://127.0.0.1:9").unwrap();
    let start = 1_000 * DAY_MS;
    let clock = Clock::manual(start);
    let db = Database::open(&url, None).await.unwrap();
    crate::support::with_channels(&db, &["c", "default"]).await;
    let relay = Relay::open(&config, db.clone(), clock.clone())
        .await
        .unwrap();
    db.ingest_batch(
        vec![event(
            "c",
            vec![payload("7", "old"), payload("8", "pending")],
        )],
        start,
    )
    .await
    .unwrap();
    db.record(vec![Outcome::Delivered { id: 1 }], start, "r")
        .await
        .unwrap();
    db.store_unreadable("c", "old garbage".into(), "not json".into(), start)
        .await
        .unwrap();
    let retention = Retention {
        finished: Duration::from_secs(7 * 24 * 3600),
        dead_letters: Duration::from_secs(30 * 24 * 3600),
    };
    clock.advance(Duration::from_secs(8 * 24 * 3600));
    db.store_unreadable("c", "new garbage".into(), "not json".into(), clock.now_ms())
        .await
        .unwrap();
    clean_up(&relay, retention).await;
    // The delivered row is past the dedupe window: gone, so its re-send is stored again; the
    // undelivered one stays whatever its age.
    let stats = db.stats(clock.now_ms()).await.unwrap();
    assert_eq!(stats.pending, 1);
    let again = db
        .ingest(
            "c",
            "{}".into(),
            vec![payload("7", "old")],
            0,
            clock.now_ms(),
        )
        .await
        .unwrap();
    assert_eq!(again.stored, 1);
    assert_eq!(db.dead(10).await.unwrap().len(), 2);
    clock.advance(Duration::from_secs(23 * 24 * 3600));
    clean_up(&relay, retention).await;
    let left: Vec<Value> = db
        .dead(10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.payload)
        .collect();
    assert_eq!(left, [json!("new garbage")]);
}
