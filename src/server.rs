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
use tracing::{debug, info, warn};

use crate::handlers::{handle, AppState};

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

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
    reload_key_map_on_sighup(state.clone());
    // Undelivered webhooks from before a crash start going out at once.
    let delivery = tokio::spawn(crate::relay::deliver_forever(state.clone()));
    let graceful = GracefulShutdown::new();
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
                let state = state.clone();
                let service = service_fn(move |request| handle(state.clone(), request));
                let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        debug!(%peer, %error, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    // Deliveries in flight are simply retried after the restart (at least once).
    delivery.abort();
    info!("shutting down: draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => info!("all connections drained"),
        () = tokio::time::sleep(grace) => warn!(?grace, "grace period over, closing remaining connections"),
    }
}

/// SIGHUP re-reads the key map; connections and sessions are untouched.
fn reload_key_map_on_sighup(state: Arc<AppState>) {
    #[cfg(unix)]
    tokio::spawn(async move {
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
    });
    #[cfg(not(unix))]
    let _ = state;
}
