//! A lean stand-in for waba-v2 for benchmarks: fixed answers, nothing recorded, media bytes
//! generated on the fly, so the mock itself never holds a large body.
//!
//! `cargo run --release --example bench_upstream -- 127.0.0.1:0` prints `listening on ADDR`.
//! - `POST /messages` (and `/v1/messages`, for a plain proxy_pass) -> a fixed send answer; `POST /media` -> drains the body, `{"id":"<bytes>"}`
//! - `GET /{n}` -> media metadata whose url serves `n` bytes; `GET /bytes/{n}?hash=..` -> `n` bytes
//! - anything else -> 404

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

type Reply = Response<UnsyncBoxBody<Bytes, Infallible>>;

const SEND_ANSWER: &[u8] = br#"{"messaging_product":"whatsapp","contacts":[{"input":"15551234567","wa_id":"15551234567"}],"messages":[{"id":"wamid.HBgLMTU1NTEyMzQ1NjcVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"}]}"#;

/// `remaining` bytes served from one shared 64 KiB chunk.
struct Generated {
    chunk: Bytes,
    remaining: u64,
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()).boxed_unsync());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

async fn answer(request: Request<Incoming>) -> Result<Reply, Infallible> {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    Ok(match (method.as_str(), segments.as_slice()) {
        // `/v1/messages` too: nginx's plain proxy_pass forwards the On-Premise path unchanged.
        ("POST", ["messages"] | ["v1", "messages"]) => {
            let _ = request.into_body().collect().await;
            json(StatusCode::OK, SEND_ANSWER)
        }
        ("POST", ["media"]) => {
            let mut body = request.into_body();
            let mut received = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    received += data.len() as u64;
                }
            }
            json(StatusCode::OK, format!(r#"{{"id":"{received}"}}"#))
        }
        ("GET", ["bytes", n]) => match n.parse::<u64>() {
            Ok(n) => {
                let body = Generated {
                    chunk: Bytes::from(vec![0x5a; 64 * 1024]),
                    remaining: n,
                };
                let mut response = Response::new(body.boxed_unsync());
                response
                    .headers_mut()
                    .insert("content-type", "application/pdf".parse().unwrap());
                response
            }
            Err(_) => json(StatusCode::NOT_FOUND, "{}"),
        },
        ("GET", [n]) if n.parse::<u64>().is_ok() => json(
            StatusCode::OK,
            format!(
                r#"{{"messaging_product":"whatsapp","url":"https://lookaside.fbsbx.com/bytes/{n}?mid={n}&hash=ATs%2Fbench%3D","mime_type":"application/pdf","sha256":"x","file_size":{n},"id":"{n}"}}"#
            ),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            r#"{"error":{"message":"Unknown path","code":2500}}"#,
        ),
    })
}

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = TcpListener::bind(&addr).await.expect("bind");
    println!("listening on {}", listener.local_addr().unwrap());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}
