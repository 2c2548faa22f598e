//! Open-loop load at a fixed rate, for bench/run's latency rounds (wrk, used for peak
//! throughput, has no fixed-rate mode).
//!
//! `bench_load URL BODY RATE SECONDS [CONNECTIONS]` POSTs BODY (JSON, with `D360-API-KEY: bench`)
//! to URL, request `i` due at `start + i / RATE`, over CONNECTIONS keep-alive connections
//! (default 64). A request whose connection was still busy when it fell due is timed from when
//! it was due, so a server that falls behind shows it in the tail instead of slowing the load
//! down. Prints `RATE_ACHIEVED P50_MS P99_MS P99.9_MS FAILURES`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

struct Load {
    uri: http::Uri,
    body: Bytes,
    start: Instant,
    interval: Duration,
    requests: u64,
    next: AtomicU64,
}

/// Opens one keep-alive connection.
async fn open(authority: &str) -> Option<http1::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(authority).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(connection);
    Some(sender)
}

/// One connection's share: it takes the next due request whenever it is free. The connection
/// is opened before the first request falls due, so its set-up is not timed.
async fn connection(load: Arc<Load>) -> (Vec<Duration>, u64) {
    let mut latencies = Vec::new();
    let mut failures = 0;
    let authority = load.uri.authority().expect("URL with a host").to_string();
    let mut sender = open(&authority).await;
    loop {
        let i = load.next.fetch_add(1, Ordering::Relaxed);
        if i >= load.requests {
            return (latencies, failures);
        }
        let due = load.start + load.interval.mul_f64(i as f64);
        let free = Instant::now();
        tokio::time::sleep_until(due.into()).await;
        // Late because this connection was still busy: the server's delay, counted from when
        // the request was due. Otherwise counted from the send: the timer's own lateness (it
        // ticks in milliseconds) is not the server's.
        let origin = if free > due { due } else { Instant::now() };
        if sender.is_none() {
            sender = open(&authority).await;
        }
        let Some(send) = sender.as_mut() else {
            failures += 1;
            continue;
        };
        let request = Request::post(load.uri.clone())
            .header("host", authority.as_str())
            .header("content-type", "application/json")
            .header("d360-api-key", "bench")
            .body(Full::new(load.body.clone()))
            .unwrap();
        let (answered, closing) = match send.send_request(request).await {
            Ok(response) => {
                let ok = response.status().is_success();
                // nginx closes a keep-alive connection after 1,000 requests by default.
                let closing = response
                    .headers()
                    .get(http::header::CONNECTION)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                (response.into_body().collect().await.is_ok() && ok, closing)
            }
            Err(_) => (false, true),
        };
        if answered {
            latencies.push(origin.elapsed());
        } else {
            failures += 1;
        }
        if closing {
            sender = None;
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: bench_load URL BODY RATE SECONDS [CONNECTIONS]");
        std::process::exit(2);
    }
    let rate: f64 = args[3].parse().expect("RATE");
    let seconds: f64 = args[4].parse().expect("SECONDS");
    let connections: usize = args.get(5).map_or(64, |c| c.parse().expect("CONNECTIONS"));
    let load = Arc::new(Load {
        uri: args[1].parse().expect("URL"),
        body: Bytes::from(args[2].clone()),
        // A moment to open the connections before the first request is due.
        start: Instant::now() + Duration::from_millis(500),
        interval: Duration::from_secs_f64(1.0 / rate),
        requests: (rate * seconds) as u64,
        next: AtomicU64::new(0),
    });
    let tasks: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(connection(load.clone())))
        .collect();
    let mut latencies = Vec::new();
    let mut failures = 0;
    for task in tasks {
        let (l, f) = task.await.unwrap();
        latencies.extend(l);
        failures += f;
    }
    let elapsed = load.start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    println!(
        "{:.0} {:.3} {:.3} {:.3} {}",
        latencies.len() as f64 / elapsed,
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 99.9),
        failures
    );
}
