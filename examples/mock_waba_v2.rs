//! A local stand-in for 360dialog's waba-v2 host, to try the proxy without a real account:
//!
//! ```text
//! cargo run --example mock_waba_v2            # prints: mock waba-v2 on http://127.0.0.1:PORT
//! WABA_PROXY_UPSTREAM=http://127.0.0.1:PORT cargo run --release --locked
//! ```
//! It is the same mock the integration tests use; it answers like waba-v2 and prints every
//! request it receives (API key values masked).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/it/support/mock_upstream.rs"]
#[allow(dead_code)]
mod mock_upstream;

use std::time::Duration;

#[tokio::main]
async fn main() {
    let mock = mock_upstream::MockUpstream::start().await;
    println!("mock waba-v2 on {}", mock.url());
    let mut seen = 0;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let requests = mock.requests();
        for request in &requests[seen..] {
            let key = if request.header("d360-api-key").is_some() {
                "present"
            } else {
                "missing"
            };
            println!(
                "{} {} (D360-API-KEY {key})\n  {}",
                request.method,
                request.path(),
                String::from_utf8_lossy(&request.body)
            );
        }
        seen = requests.len();
        let _ = std::io::Write::flush(&mut std::io::stdout());
    }
}
