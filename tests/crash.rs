//! Crash safety of the webhook relay, with the real binary: events are posted while the legacy
//! receiver fails 30 % of deliveries and the proxy is killed with SIGKILL several times and
//! restarted on the same data directory. Every acknowledged event must arrive at least once,
//! in order per recipient; duplicates are counted (at-least-once allows them).
//!
//! Size: `CRASH_EVENTS` (default 200), `CRASH_RECIPIENTS` (20), `CRASH_KILLS` (3). `bench/relay`
//! runs it with 100,000 events and prints the report line.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use support::mock_upstream::{Behaviour, MockUpstream};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_waba-onprem-proxy");
const SECRET: &str = "crash-secret";

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Proxy {
    child: Child,
    base: String,
}

async fn start(data_dir: &std::path::Path, receiver: &str) -> Proxy {
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0"])
        .env("WABA_PROXY_DATA_DIR", data_dir)
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
async fn post(client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>, base: &str, body: &Bytes) -> bool {
    let request = http::Request::post(format!("{base}/cloud-webhooks/default"))
        .header("x-webhook-secret", SECRET)
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .unwrap();
    matches!(client.request(request).await, Ok(r) if r.status() == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_is_lost_across_sigkills_and_a_flaky_receiver() {
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
            Behaviour::Respond { status: 500, headers: vec![], body: Bytes::new() }
        } else {
            Behaviour::Json { status: 200, body: json!({}) }
        });
    }
    receiver.set_default(Behaviour::Json { status: 200, body: json!({}) });

    let data_dir = std::env::temp_dir().join(format!("crash-{}", uuid::Uuid::new_v4()));
    let mut proxy = start(&data_dir, &receiver.url()).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let kill_every = events / (kills + 1);
    let started = Instant::now();
    let mut restarts = 0;
    for i in 0..events {
        let body = Bytes::from(event(i, recipients).to_string());
        if kill_every > 0 && i > 0 && i % kill_every == 0 && restarts < kills {
            // SIGKILL: no shutdown, no flush; whatever was acknowledged must survive.
            proxy.child.start_kill().unwrap();
            proxy.child.wait().await.unwrap();
            proxy = start(&data_dir, &receiver.url()).await;
            restarts += 1;
        }
        let mut tries = 0;
        while !post(&client, &proxy.base, &body).await {
            tries += 1;
            assert!(tries < 100, "event {i} never acknowledged");
        }
    }
    let posted_in = started.elapsed();

    let wanted: HashSet<String> = (0..events).map(|i| format!("wamid.crash.{i}")).collect();
    let deadline = Instant::now() + Duration::from_secs(setting("CRASH_DRAIN_SECS", 120) as u64);
    let delivered = loop {
        let got: Vec<(String, usize)> = receiver
            .requests()
            .iter()
            .filter_map(|r| {
                let body: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
                let message = &body["messages"][0];
                Some((message["id"].as_str()?.to_owned(), message["text"]["body"].as_str()?.parse().ok()?))
            })
            .collect();
        let successes = successful_deliveries(&receiver, events);
        let seen: HashSet<&String> = successes.iter().map(|(id, _)| id).collect();
        if wanted.iter().all(|id| seen.contains(id)) || Instant::now() > deadline {
            let _ = got;
            break successes;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let drained_in = started.elapsed();
    proxy.child.start_kill().unwrap();

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
                assert!(previous < *seq, "recipient {recipient}: event {seq} arrived before {previous}");
            }
        }
    }
    println!(
        "crash run: {events} events, {recipients} recipients, {restarts} SIGKILLs, lost {}, duplicates {duplicates}, \
         posted in {:.1} s ({:.0} events/s), all delivered after {:.1} s ({:.0} events/s)",
        lost.len(),
        posted_in.as_secs_f64(),
        events as f64 / posted_in.as_secs_f64(),
        drained_in.as_secs_f64(),
        events as f64 / drained_in.as_secs_f64()
    );
    assert!(lost.is_empty(), "{} events lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
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
            Some((message["id"].as_str()?.to_owned(), message["text"]["body"].as_str()?.parse().ok()?))
        })
        .collect()
}
