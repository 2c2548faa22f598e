//! The accept loop: HTTP/1.1 connections with an armed header-read timeout, and graceful
//! shutdown (stop accepting, drain in-flight requests, bounded by the grace period).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::handlers::{handle, AppState};

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// A refused client that does not read its 503 is not waited for longer than this.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves until `shutdown` resolves, then drains. The listener and the shutdown future are
/// arguments so tests can bind port 0 and stop the server when they like.
pub async fn run(listener: TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()>) {
    let config = &state.config;
    let grace = config.shutdown_grace;
    let mut builder = http1::Builder::new();
    // header_read_timeout does nothing without a timer.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true);
    let hangups = reload_key_map_on_sighup(state.clone());
    // Undelivered webhooks from before a crash start going out at once.
    let delivery = tokio::spawn(crate::relay::deliver_forever(state.clone()));
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(state.config.max_connections));
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        warn!(%error, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    // Over the cap: a short On-Premise-shaped 503 instead of queueing or crashing.
                    tokio::spawn(refuse_connection(stream, state.config.meta.clone()));
                    continue;
                };
                let state = state.clone();
                let service = service_fn(move |request| handle(state.clone(), request));
                let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        debug!(%peer, %error, "connection ended with an error");
                    }
                    drop(permit);
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    state
        .shutting_down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // Deliveries in flight are simply retried after the restart (at least once); on a shared
    // database their claims go back at once instead of when the lease ends.
    delivery.abort();
    // Stopped before its claims go back: no post of ours may still be on its way then.
    let _ = delivery.await;
    hangups.abort();
    let _ = hangups.await;
    if let Err(error) = state.relay.db.release_claims(&state.relay.replica).await {
        warn!(%error, "claims not released; other replicas take them when the lease ends");
    }
    info!("shutting down: draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => info!("all connections drained"),
        () = tokio::time::sleep(grace) => warn!(?grace, "grace period over, closing remaining connections"),
    }
}

/// Answers 503 with `Retry-After` on a connection over the cap, then closes it.
async fn refuse_connection(mut stream: tokio::net::TcpStream, meta: crate::translate::Meta) {
    use tokio::io::AsyncWriteExt;
    let body = crate::translate::errors::OnPremError::new(
        503,
        1011,
        "too many connections; retry shortly",
    )
    .to_body(&meta)
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ =
        tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, stream.write_all(response.as_bytes())).await;
    let _ = stream.shutdown().await;
}

/// SIGHUP re-reads the key map; connections and sessions are untouched. The task is stopped
/// at shutdown, so nothing keeps the state (and the database) open after the server ends.
fn reload_key_map_on_sighup(state: Arc<AppState>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hangups) = signal(SignalKind::hangup()) else {
                warn!("cannot listen for SIGHUP: the key map will not be reloaded");
                return;
            };
            while hangups.recv().await.is_some() {
                match state.auth.reload() {
                    Ok(()) => info!("key map reloaded"),
                    Err(error) => {
                        warn!(%error, "key map not reloaded; the previous one stays in force")
                    }
                }
            }
        }
        #[cfg(not(unix))]
        let _ = state;
    })
}
