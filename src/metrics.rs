//! Prometheus metrics (`GET /metrics`, OpenMetrics text): requests by route and status, errors by
//! On-Premise code, upstream latency, in-flight requests, and the webhook outbox.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::db::Stats;

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

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub in_flight: Gauge,
    pub upstream_seconds: Histogram,
    pub delivery_seconds: Histogram,
    outbox: Family<OutboxLabels, Gauge>,
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
        Metrics {
            registry,
            requests,
            errors,
            in_flight,
            upstream_seconds,
            delivery_seconds,
            outbox,
        }
    }

    /// The OpenMetrics text, with the outbox figures as of now.
    pub fn render(&self, outbox: Option<&Stats>) -> String {
        if let Some(stats) = outbox {
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
