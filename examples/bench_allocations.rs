//! Heap allocations per translated send, counted (a benchmark, not a test).
//!
//! The real proxy runs in this process, in front of a raw-socket upstream that answers every
//! request with the same bytes, and a raw-socket client sends the same On-Premise body on one
//! keep-alive connection. Neither the client nor the upstream allocates per request (their
//! buffers are reused), so the count is the proxy's: every allocation any thread makes while
//! `ROUNDS` sends go through, divided by `ROUNDS`.
//!
//! `cargo run --release --example bench_allocations [text|hsm|template|image]` prints
//! `allocations_per_request <n> bytes_per_request <n>`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// dhat's allocator counts every allocation (the crate forbids hand-written unsafe code, and
// dhat is the standard heap profiler for Rust).
#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

const ROUNDS: u64 = 5_000;
const WARM_UP: u64 = 1_000;

const ANSWER_BODY: &str = "{\"messaging_product\":\"whatsapp\",\"contacts\":[{\"input\":\"15551234567\",\"wa_id\":\"15551234567\"}],\"messages\":[{\"id\":\"wamid.HBgLMTU1NTEyMzQ1NjcVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA\"}]}";

fn answer() -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ANSWER_BODY}",
        ANSWER_BODY.len()
    )
    .into_bytes()
}

fn body(kind: &str) -> &'static str {
    match kind {
        "hsm" => {
            r#"{"to":"15551234567","type":"hsm","hsm":{"namespace":"c8ae5f90_307a_ca4c_b8f6_d1e2a2573574","element_name":"order_update","language":{"policy":"deterministic","code":"en"},"localizable_params":[{"default":"Ann"},{"default":"$10.50","currency":{"currency_code":"USD","amount_1000":10500}},{"default":"25 Nov 09:30","date_time":{"component":{"year":2026,"month":11,"day_of_month":25,"hour":9,"minute":30}}}]}}"#
        }
        "template" => {
            r#"{"to":"15551234567","type":"template","template":{"namespace":"ns","name":"shipping","language":{"policy":"deterministic","code":"en"},"components":[{"type":"body","parameters":[{"type":"text","text":"1234"}]},{"type":"button","sub_type":"url","index":0,"parameters":[{"type":"text","text":"t/1234"}]}]}}"#
        }
        "image" => {
            r#"{"to":"15551234567","type":"image","image":{"id":"1037543291543636","caption":"Your receipt"}}"#
        }
        _ => {
            r#"{"to":"15551234567","type":"text","preview_url":true,"text":{"body":"Your order #1234 has shipped: https://shop.example/t/1234"}}"#
        }
    }
}

/// Reads one HTTP/1.1 message with a content-length body into `buf` (reused).
async fn read_message(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).unwrap();
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return;
            }
        }
    }
}

async fn upstream(listener: TcpListener) {
    loop {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        let answer = answer();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(8192);
            loop {
                read_message(&mut stream, &mut buf).await;
                stream.write_all(&answer).await.unwrap();
            }
        });
    }
}

fn main() {
    // With BENCH_DHAT=1, a full profile (every allocation site) goes to dhat-heap.json.
    let _profiler = if std::env::var_os("BENCH_DHAT").is_some() {
        dhat::Profiler::new_heap()
    } else {
        dhat::Profiler::builder().testing().build()
    };
    let kind = std::env::args().nth(1).unwrap_or_else(|| "text".to_owned());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mock = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mock_addr = mock.local_addr().unwrap();
        tokio::spawn(upstream(mock));

        let mut config =
            waba_onprem_proxy::config::Config::with_upstream(&format!("http://{mock_addr}"))
                .unwrap();
        config.data_dir =
            std::env::temp_dir().join(format!("bench-allocations-{}", std::process::id()));
        config.serving_threads = 1;
        let state = Arc::new(
            waba_onprem_proxy::app::AppState::open(config)
                .await
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(waba_onprem_proxy::server::run(
            listener,
            state,
            std::future::pending(),
        ));

        let body = body(&kind);
        let request = format!(
            "POST /v1/messages HTTP/1.1\r\nhost: proxy\r\ncontent-type: application/json\r\nd360-api-key: bench\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.set_nodelay(true).unwrap();
        let mut buf = Vec::with_capacity(8192);
        let mut send = async |n: u64| {
            for _ in 0..n {
                client.write_all(request.as_bytes()).await.unwrap();
                read_message(&mut client, &mut buf).await;
                assert!(buf.starts_with(b"HTTP/1.1 201"), "{}", String::from_utf8_lossy(&buf));
            }
        };
        send(WARM_UP).await;
        let before = dhat::HeapStats::get();
        send(ROUNDS).await;
        let after = dhat::HeapStats::get();
        let allocations = after.total_blocks - before.total_blocks;
        let bytes = after.total_bytes - before.total_bytes;
        println!(
            "allocations_per_request {:.1} bytes_per_request {:.0}",
            allocations as f64 / ROUNDS as f64,
            bytes as f64 / ROUNDS as f64
        );
    });
}
