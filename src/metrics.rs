//! Prometheus metrics (`GET /metrics`, OpenMetrics text): requests by route and status, errors by
//! On-Premise code, upstream latency, in-flight requests, and the webhook outbox.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::db::Stats;
use crate::relay::ChannelView;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub code: i64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutboxLabels {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    pub channel: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub in_flight: Gauge,
    /// 1 when `/readyz` would answer 200 (set at scrape time).
    pub ready: Gauge,
    pub upstream_seconds: Histogram,
    pub delivery_seconds: Histogram,
    outbox: Family<OutboxLabels, Gauge>,
    oldest_pending: Gauge<f64, std::sync::atomic::AtomicU64>,
    circuit_open: Family<ChannelLabels, Gauge>,
    channel_in_flight: Family<ChannelLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("waba_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route and HTTP status",
            requests.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "errors",
            "Errors answered, by On-Premise error code",
            errors.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight_requests",
            "Requests being served",
            in_flight.clone(),
        );
        // 1 ms .. ~16 s
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 while the proxy is ready (not shutting down, outbox writable, upstream reachable), else 0",
            ready.clone(),
        );
        let upstream_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "upstream_seconds",
            "Time of one upstream exchange (JSON calls; media transfers excluded)",
            upstream_seconds.clone(),
        );
        // 10 ms .. ~2.3 h: deliveries wait through retries.
        let delivery_seconds = Histogram::new(exponential_buckets(0.01, 3.0, 14));
        registry.register(
            "webhook_delivery_seconds",
            "Time from an inbound webhook being stored to its delivery",
            delivery_seconds.clone(),
        );
        let outbox = Family::<OutboxLabels, Gauge>::default();
        registry.register(
            "webhook_outbox",
            "Webhook payloads by state (read at scrape time)",
            outbox.clone(),
        );
        let oldest_pending = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "webhook_outbox_oldest_pending_seconds",
            "Age of the oldest undelivered webhook payload (0 when none; read at scrape time)",
            oldest_pending.clone(),
        );
        let circuit_open = Family::<ChannelLabels, Gauge>::default();
        registry.register(
            "webhook_channel_circuit_open",
            "1 while a channel's circuit breaker is open or probing, else 0",
            circuit_open.clone(),
        );
        let channel_in_flight = Family::<ChannelLabels, Gauge>::default();
        registry.register(
            "webhook_channel_in_flight",
            "Deliveries in flight per channel",
            channel_in_flight.clone(),
        );
        Metrics {
            registry,
            requests,
            errors,
            in_flight,
            ready,
            upstream_seconds,
            delivery_seconds,
            outbox,
            oldest_pending,
            circuit_open,
            channel_in_flight,
        }
    }

    /// The OpenMetrics text, with the outbox figures and the delivery loop's channels as of
    /// now.
    pub fn render(&self, outbox: Option<&Stats>, channels: &[ChannelView]) -> String {
        for view in channels {
            let labels = ChannelLabels {
                channel: view.channel.clone(),
            };
            self.circuit_open
                .get_or_create(&labels)
                .set(i64::from(view.circuit != "closed"));
            self.channel_in_flight
                .get_or_create(&labels)
                .set(view.in_flight as i64);
        }
        if let Some(stats) = outbox {
            self.oldest_pending
                .set(stats.oldest_pending_age_ms.unwrap_or(0).max(0) as f64 / 1000.0);
            for (state, value) in [
                ("pending", stats.pending),
                ("delivered", stats.delivered),
                ("dead", stats.dead),
                ("skipped_changes", stats.skipped_changes),
                ("duplicates", stats.duplicates),
            ] {
                self.outbox
                    .get_or_create(&OutboxLabels { state })
                    .set(value);
            }
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// What the console's "recent" columns cover.
pub const RECENT: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// Counter values over time, for the console's "recent" columns: one snapshot per half
/// minute (and per page view), the last few minutes kept.
#[derive(Default)]
pub struct History {
    snapshots: Mutex<VecDeque<(Instant, HashMap<String, f64>)>>,
}

impl History {
    /// Takes a snapshot of `now` unless one was taken in the last 10 s; returns the one the
    /// recent figures are measured from (the newest at least `RECENT` old, else the oldest)
    /// and its age.
    pub fn baseline(
        &self,
        now: HashMap<String, f64>,
    ) -> (HashMap<String, f64>, std::time::Duration) {
        let mut snapshots = self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let at = Instant::now();
        if snapshots
            .back()
            .is_none_or(|(taken, _)| taken.elapsed() >= std::time::Duration::from_secs(10))
        {
            snapshots.push_back((at, now));
        }
        // Keep one snapshot older than the window, so the window is always covered.
        while snapshots.len() > 1 && snapshots[1].0.elapsed() >= RECENT {
            snapshots.pop_front();
        }
        snapshots
            .front()
            .map(|(taken, values)| (values.clone(), taken.elapsed()))
            .unwrap_or_default()
    }
}
