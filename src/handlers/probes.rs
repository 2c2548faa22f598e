//! The proxy's own endpoints for operators and orchestrators: `/metrics` and `/readyz`
//! (`/healthz` answers inline). Separate from On-Premise's `GET /v1/health`.

use std::sync::atomic::Ordering;

use http::header::{self, HeaderValue};
use http::Response;
use tracing::warn;

use super::{AppState, Reply};
use crate::body::full;

pub(super) async fn metrics(state: &AppState) -> Reply {
    let (ready, _) = readiness(state).await;
    state.metrics.ready.set(i64::from(ready));
    let stats = match state.relay.db.stats(crate::clock::now_ms()).await {
        Ok(stats) => Some(stats),
        Err(error) => {
            warn!(%error, "outbox statistics unavailable for /metrics");
            None
        }
    };
    let mut response = Response::new(full(
        state
            .metrics
            .render(stats.as_ref(), &state.relay.channel_views()),
    ));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Reply::Stream(response)
}

/// Ready means: not shutting down, the outbox takes writes, and upstream accepts a TCP
/// connection within the connect timeout.
pub(super) async fn readyz(state: &AppState) -> Reply {
    let (ready, body) = readiness(state).await;
    Reply::Json(if ready { 200 } else { 503 }, body)
}

/// Whether the proxy is ready, and the checks that say so (for `/readyz` and the `ready` gauge).
async fn readiness(state: &AppState) -> (bool, serde_json::Value) {
    let shutting_down = state.shutting_down.load(Ordering::SeqCst);
    let outbox_ok = state.relay.db.writable().await.is_ok();
    let upstream_ok = state.upstream.reachable(state.config.connect_timeout).await;
    let ready = !shutting_down && outbox_ok && upstream_ok;
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not ready" },
        "checks": {"shutting_down": shutting_down, "outbox_writable": outbox_ok, "upstream_reachable": upstream_ok},
    });
    (ready, body)
}
