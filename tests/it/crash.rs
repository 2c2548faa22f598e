//! Crash safety of the webhook relay, with the real binary: events are posted while the legacy
//! receiver fails 30 % of deliveries and proxies are killed with SIGKILL several times and
//! restarted. Every acknowledged event must arrive at least once, in order per recipient;
//! duplicates are counted (at-least-once allows them).
//!
//! Two runs: one proxy on its SQLite file (the default set-up), and three replicas sharing one
//! PostgreSQL, with events spread over all three and a random replica killed each time.
//!
//! Size: `CRASH_EVENTS` (default 200), `CRASH_RECIPIENTS` (20), `CRASH_KILLS` (3),
//! `CRASH_SENDERS` (4 concurrent posters, each owning some recipients), `CRASH_RUN` (`sqlite`
//! or `postgres` to run only one). `bench/relay` runs both with 100,000 events and prints the
//! report lines.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::support::mock_upstream::{Behaviour, MockUpstream};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_waba-onprem-proxy");
const SECRET: &str = "crash-secret";

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Proxy {
    child: Child,
    base: String,
}

async fn start(data_dir: &std::path::Path, database: Option<&str>, receiver: &str) -> Proxy {
    let mut command = Command::new(BIN);
    if let Some(url) = database {
        command.env("WABA_PROXY_DATABASE", url);
    }
    let mut child = command
        .args(["--listen", "127.0.0.1:0"])
        .env("WABA_PROXY_DATA_DIR", data_dir)
        // A killed replica's claims return after twice this plus 10 s.
        .env("WABA_PROXY_WEBHOOK_TIMEOUT_MS", "1000")
        .env("WABA_PROXY_LEGACY_WEBHOOK_URL", format!("{receiver}/hook"))
        .env("WABA_PROXY_WEBHOOK_SECRET", SECRET)
        .env("WABA_PROXY_WEBHOOK_RETRY_BASE_MS", "20")
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let base = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("listening on ").nth(1) {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
        }
        panic!("proxy exited before it was ready");
    })
    .await
    .expect("ready");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Proxy { child, base }
}

fn event(i: usize, recipients: usize) -> serde_json::Value {
    let wa_id = format!("1555{:06}", i % recipients);
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages",
        "value": {"messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": "2"},
                  "contacts": [{"profile": {"name": "C"}, "wa_id": wa_id}],
                  "messages": [{"from": wa_id, "id": format!("wamid.crash.{i}"), "timestamp": "1700000000",
                                "type": "text", "text": {"body": format!("{i}")}}]}}]}]})
}

/// Posts like Cloud does: until a 200 comes back, the same event is sent again.
async fn post(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    base: &str,
    body: &Bytes,
) -> bool {
    let request = http::Request::post(format!("{base}/cloud-webhooks/default"))
        .header("x-webhook-secret", SECRET)
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .unwrap();
    matches!(client.request(request).await, Ok(r) if r.status() == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_is_lost_across_sigkills_and_a_flaky_receiver() {
    if std::env::var("CRASH_RUN").is_ok_and(|run| run != "sqlite") {
        return;
    }
    crash_run("one proxy on SQLite", None, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_one_postgres_lose_nothing_across_random_sigkills() {
    if std::env::var("CRASH_RUN").is_ok_and(|run| run != "postgres") {
        return;
    }
    let Some(url) = crate::support::postgres::fresh_database().await else {
        return;
    };
    crash_run("three replicas on PostgreSQL", Some(&url), 3).await;
}

async fn crash_run(name: &str, database: Option<&str>, replicas: usize) {
    let events = setting("CRASH_EVENTS", 200);
    let recipients = setting("CRASH_RECIPIENTS", 20);
    let kills = setting("CRASH_KILLS", 3);

    let receiver = MockUpstream::start().await;
    // 30 % of delivery attempts fail, in a fixed pseudo-random pattern.
    let mut state: u32 = 0x9e37_79b9;
    for _ in 0..events * 2 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        receiver.push(if state % 10 < 3 {
            Behaviour::Respond {
                status: 500,
                headers: vec![],
                body: Bytes::new(),
            }
        } else {
            Behaviour::Json {
                status: 200,
                body: json!({}),
            }
        });
    }
    receiver.set_default(Behaviour::Json {
        status: 200,
        body: json!({}),
    });

    // With SQLite the one proxy restarts on its data directory; replicas each have their own.
    let data_dirs: Vec<_> = (0..replicas)
        .map(|_| std::env::temp_dir().join(format!("crash-{}", uuid::Uuid::new_v4())))
        .collect();
    let mut proxies = Vec::new();
    for dir in &data_dirs {
        proxies.push(start(dir, database, &receiver.url()).await);
    }
    let bases = Arc::new(RwLock::new(
        proxies.iter().map(|p| p.base.clone()).collect::<Vec<_>>(),
    ));
    let acked = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();

    // Senders, like Cloud: each owns some recipients and posts their events in order, sending
    // an event again until it is acknowledged.
    let senders = setting("CRASH_SENDERS", 4).min(recipients).max(1);
    let mut tasks = Vec::new();
    for sender in 0..senders {
        let (bases, acked) = (bases.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            for i in (0..events).filter(|i| (i % recipients) % senders == sender) {
                let body = Bytes::from(event(i, recipients).to_string());
                // Like a load balancer: events go round the replicas, and a failed post is
                // sent again to the next one.
                let mut tries = 0;
                loop {
                    let current = {
                        let bases = bases.read().unwrap();
                        bases[(i + tries) % bases.len()].clone()
                    };
                    if post(&client, &current, &body).await {
                        break;
                    }
                    tries += 1;
                    assert!(tries < 10_000, "event {i} never acknowledged");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                acked.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // SIGKILL: no shutdown, no flush; whatever was acknowledged must survive.
    let mut restarts = 0;
    while restarts < kills {
        let due = events * (restarts + 1) / (kills + 1);
        while acked.load(Ordering::SeqCst) < due {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let victim = fastrand::usize(..replicas);
        proxies[victim].child.start_kill().unwrap();
        proxies[victim].child.wait().await.unwrap();
        proxies[victim] = start(&data_dirs[victim], database, &receiver.url()).await;
        bases.write().unwrap()[victim] = proxies[victim].base.clone();
        restarts += 1;
    }
    for task in tasks {
        task.await.unwrap();
    }
    let posted_in = started.elapsed();

    let wanted: HashSet<String> = (0..events).map(|i| format!("wamid.crash.{i}")).collect();
    let deadline = Instant::now() + Duration::from_secs(setting("CRASH_DRAIN_SECS", 120) as u64);
    let poll = Duration::from_millis((events as u64 / 100).clamp(100, 2_000));
    let delivered = loop {
        let successes = successful_deliveries(&receiver, events);
        let seen: HashSet<&String> = successes.iter().map(|(id, _)| id).collect();
        if wanted.iter().all(|id| seen.contains(id)) || Instant::now() > deadline {
            break successes;
        }
        tokio::time::sleep(poll).await;
    };
    let drained_in = started.elapsed();
    for proxy in &mut proxies {
        proxy.child.start_kill().unwrap();
    }

    let seen: HashSet<&String> = delivered.iter().map(|(id, _)| id).collect();
    let lost: Vec<&String> = wanted.iter().filter(|id| !seen.contains(id)).collect();
    let duplicates = delivered.len() - seen.len();
    // Per recipient, first deliveries come in the order the events were posted.
    let mut last: HashMap<usize, usize> = HashMap::new();
    let mut first_seen = HashSet::new();
    for (id, seq) in &delivered {
        if first_seen.insert(id.clone()) {
            let recipient = seq % recipients;
            if let Some(previous) = last.insert(recipient, *seq) {
                assert!(
                    previous < *seq,
                    "recipient {recipient}: event {seq} arrived before {previous}"
                );
            }
        }
    }
    println!(
        "crash run ({name}): {events} events, {recipients} recipients, {restarts} SIGKILLs, lost {}, duplicates {duplicates}, \
         posted in {:.1} s ({:.0} events/s), all delivered after {:.1} s ({:.0} events/s)",
        lost.len(),
        posted_in.as_secs_f64(),
        events as f64 / posted_in.as_secs_f64(),
        drained_in.as_secs_f64(),
        events as f64 / drained_in.as_secs_f64()
    );
    assert!(
        lost.is_empty(),
        "{} events lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

/// Deliveries the receiver answered 200, in arrival order: (message id, sequence number).
/// The receiver's queued answers line up with its requests one to one.
fn successful_deliveries(receiver: &MockUpstream, events: usize) -> Vec<(String, usize)> {
    let mut state: u32 = 0x9e37_79b9;
    receiver
        .requests()
        .iter()
        .enumerate()
        .filter_map(|(n, r)| {
            let failed = if n < events * 2 {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state % 10 < 3
            } else {
                false
            };
            if failed {
                return None;
            }
            let body: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
            let message = &body["messages"][0];
            Some((
                message["id"].as_str()?.to_owned(),
                message["text"]["body"].as_str()?.parse().ok()?,
            ))
        })
        .collect()
}
