//! Inbound Cloud webhooks -> durable outbox -> delivery to the client's legacy webhook URL in
//! On-Premise shape. An event is acknowledged only once committed; delivery is at least once,
//! retried with backoff, in order per recipient, and resumes after any crash.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Uri;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::clock::now_ms;
use crate::config::Config;
use crate::db::{Channel, Claim, Database, DbError, Due, NewPayload, Outcome};
use crate::secret::same_secret;
use crate::translate::webhooks::{cloud_to_onprem_webhook, WebhookOptions};
use crate::upstream::Upstream;
use prometheus_client::metrics::histogram::Histogram;

/// Header the inbound post must carry; its value is the channel's secret.
pub const SECRET_HEADER: &str = "x-webhook-secret";
/// The flag-configured channel of a single-channel sidecar.
pub const DEFAULT_CHANNEL: &str = "default";

/// Upper bound on one wait of the delivery loop when nothing is due sooner.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Shortest wait of the delivery loop after a round that found nothing to take.
const MIN_PAUSE: Duration = Duration::from_millis(50);
/// How often the planner's statistics of the outbox are refreshed (shared database).
const STATISTICS_EVERY_MS: i64 = 15_000;
/// Payloads fetched per delivery round.
const ROUND_SIZE: usize = 256;

pub struct Relay {
    pub db: Database,
    /// This process, in claims on a shared database.
    pub replica: String,
    wake: Notify,
}

/// Why an inbound post was not accepted.
#[derive(Debug)]
pub enum Refused {
    UnknownChannel,
    BadSecret,
    /// Could not be stored: upstream must retry. The cause is the operator's to read.
    Storage(DbError),
}

/// The channel name for an API key: derived, so the key itself appears nowhere.
pub fn channel_for_key(api_key: &str) -> (String, String) {
    let hash = crate::secret::key_hash(api_key);
    (format!("k{}", &hash[..24]), hash)
}

impl Relay {
    /// Sets up the flag-configured channel (if any) in `db`.
    pub async fn open(config: &Config, db: Database) -> Result<Relay, DbError> {
        if let (Some(url), Some(secret)) = (&config.legacy_webhook_url, &config.webhook_secret) {
            let existing = db.channel(DEFAULT_CHANNEL).await?;
            db.upsert_channel(
                &Channel {
                    name: DEFAULT_CHANNEL.to_owned(),
                    secret: secret.clone(),
                    legacy_url: url.clone(),
                    headers: existing
                        .as_ref()
                        .map(|c| c.headers.clone())
                        .unwrap_or_default(),
                    sent_status: existing.as_ref().map(|c| c.sent_status).unwrap_or(true),
                    delivered_status: existing
                        .as_ref()
                        .map(|c| c.delivered_status)
                        .unwrap_or(true),
                    read_status: existing.as_ref().map(|c| c.read_status).unwrap_or(true),
                    api_key_hash: None,
                },
                false,
            )
            .await?;
        }
        Ok(Relay {
            db,
            replica: uuid::Uuid::new_v4().simple().to_string(),
            wake: Notify::new(),
        })
    }

    /// Stores one inbound post (after checking the channel's secret) and wakes delivery.
    pub async fn ingest(
        &self,
        channel: &str,
        secret: Option<&[u8]>,
        raw: Bytes,
    ) -> Result<(), Refused> {
        let Some(found) = self.db.channel(channel).await.map_err(Refused::Storage)? else {
            return Err(Refused::UnknownChannel);
        };
        match secret {
            Some(given) if same_secret(given, found.secret.as_bytes()) => {}
            _ => return Err(Refused::BadSecret),
        }
        let text = String::from_utf8_lossy(&raw).into_owned();
        let options = WebhookOptions {
            sent: found.sent_status,
            delivered: found.delivered_status,
            read: found.read_status,
        };
        let translated = serde_json::from_slice::<Value>(&raw)
            .map_err(|e| e.to_string())
            .and_then(|v| cloud_to_onprem_webhook(v, options).map_err(|e| e.to_string()));
        match translated {
            Ok(translation) => {
                let skipped = translation.skipped.len();
                let payloads = translation
                    .payloads
                    .into_iter()
                    .map(|p| NewPayload {
                        body: p.body.to_string(),
                        ordering_key: p.ordering_key,
                        dedupe_key: p.dedupe_key,
                    })
                    .collect();
                let ingested = self
                    .db
                    .ingest(channel, text, payloads, skipped, now_ms())
                    .await
                    .map_err(Refused::Storage)?;
                debug!(channel = %channel, stored = ingested.stored, duplicates = ingested.duplicates,
                    skipped, "webhook stored");
            }
            // Not a Cloud webhook: kept for the operator, acknowledged (a re-send would not
            // make it readable).
            Err(reason) => self
                .db
                .store_unreadable(channel, text, reason, now_ms())
                .await
                .map_err(Refused::Storage)?,
        }
        self.wake.notify_one();
        Ok(())
    }

    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// What the delivery loop uses, and nothing more: the outbox, the outbound client, the metric
/// it feeds, and its settings.
#[derive(Clone)]
pub struct Delivery {
    pub relay: Arc<Relay>,
    pub upstream: Arc<Upstream>,
    pub delivery_seconds: Histogram,
    pub settings: DeliverySettings,
}

/// The delivery settings taken from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct DeliverySettings {
    pub concurrency: usize,
    pub timeout: Duration,
    pub retry_period: Duration,
    pub retry_base: Duration,
}

impl DeliverySettings {
    pub fn from_config(config: &Config) -> Self {
        DeliverySettings {
            concurrency: config.webhook_concurrency,
            timeout: config.webhook_delivery_timeout,
            retry_period: config.webhook_retry_period,
            retry_base: config.webhook_retry_base,
        }
    }
}

/// The delivery loop: runs until the task is aborted. Each round takes the due heads (one per
/// recipient), delivers them concurrently, and records the outcomes in one transaction.
pub async fn deliver_forever(delivery: Delivery) {
    let relay = &*delivery.relay;
    let config = delivery.settings;
    // On a shared database a round is one wave of deliveries, so it ends within one delivery
    // timeout and the lease (twice that, and some) never runs out under a live replica.
    let (round_size, lease) = if relay.db.is_shared() {
        (
            config.concurrency,
            config.timeout * 2 + Duration::from_secs(10),
        )
    } else {
        (ROUND_SIZE, Duration::ZERO)
    };
    let mut last_prune = 0i64;
    let mut last_statistics = 0i64;
    loop {
        let now = now_ms();
        if now - last_statistics > STATISTICS_EVERY_MS {
            last_statistics = now;
            if let Err(error) = relay.db.refresh_statistics().await {
                warn!(%error, "outbox statistics not refreshed");
            }
        }
        // Cleanup runs on its own clock, backlog or not, and before claiming: however long it
        // takes, it must not eat into a round's lease.
        if now - last_prune > 60_000 {
            last_prune = now;
            let before = now - config.retry_period.as_millis() as i64;
            if let Err(error) = relay.db.prune(before, now).await {
                warn!(%error, "outbox cleanup failed; will try again");
            }
        }
        let now = now_ms();
        let claim = Claim {
            replica: relay.replica.clone(),
            until_ms: now + lease.as_millis() as i64,
        };
        let due = match relay.db.claim_due(now, round_size, &claim).await {
            Ok(due) => due,
            Err(error) => {
                warn!(%error, "outbox unreadable; retrying");
                wait(relay, IDLE_POLL).await;
                continue;
            }
        };
        if due.is_empty() {
            let next = relay.db.next_due_at().await.ok().flatten();
            // Something due but nothing taken means another replica holds it (or its lock): a
            // short pause, not a tight loop of queries.
            let pause = next
                .map(|at| {
                    Duration::from_millis(
                        (at - now_ms())
                            .clamp(MIN_PAUSE.as_millis() as i64, IDLE_POLL.as_millis() as i64)
                            as u64,
                    )
                })
                .unwrap_or(IDLE_POLL);
            wait(relay, pause).await;
            continue;
        }
        // Each channel is read once per round, not once per payload.
        let mut channels: HashMap<String, Result<Option<Arc<Channel>>, String>> = HashMap::new();
        for item in &due {
            if !channels.contains_key(&item.channel) {
                let channel = relay.db.channel(&item.channel).await;
                channels.insert(
                    item.channel.clone(),
                    channel.map(|c| c.map(Arc::new)).map_err(|e| e.to_string()),
                );
            }
        }
        let mut deliveries = JoinSet::new();
        let mut outcomes = Vec::with_capacity(due.len());
        for item in due {
            if deliveries.len() >= config.concurrency {
                if let Some(Ok(outcome)) = deliveries.join_next().await {
                    outcomes.push(outcome);
                }
            }
            let delivery = delivery.clone();
            let channel = channels.get(&item.channel).cloned().unwrap_or(Ok(None));
            deliveries.spawn(async move { deliver_one(&delivery, channel, item).await });
        }
        while let Some(joined) = deliveries.join_next().await {
            if let Ok(outcome) = joined {
                outcomes.push(outcome);
            }
        }
        if let Err(error) = relay.db.record(outcomes, now_ms(), &relay.replica).await {
            warn!(%error, "delivery outcomes not recorded; those payloads will be delivered again");
            wait(relay, IDLE_POLL).await;
        }
    }
}

async fn wait(relay: &Relay, at_most: Duration) {
    let _ = tokio::time::timeout(at_most, relay.wake.notified()).await;
}

async fn deliver_one(
    delivery: &Delivery,
    channel: Result<Option<Arc<Channel>>, String>,
    mut item: Due,
) -> Outcome {
    let config = delivery.settings;
    // The payload goes out once per attempt: moved into the request, not copied.
    let payload = Bytes::from(std::mem::take(&mut item.payload));
    let result = match channel {
        Err(error) => Err(format!("channel unreadable: {error}")),
        Ok(None) => Err("channel no longer configured".to_owned()),
        Ok(Some(channel)) if channel.legacy_url.is_empty() => {
            Err("channel has no legacy webhook URL".to_owned())
        }
        Ok(Some(channel)) => post(delivery, &channel, item.id, payload).await,
    };
    match result {
        Ok(()) => {
            let waited = (now_ms() - item.created_at).max(0) as f64 / 1000.0;
            delivery.delivery_seconds.observe(waited);
            Outcome::Delivered { id: item.id }
        }
        Err(error) => {
            let now = now_ms();
            let age = Duration::from_millis((now - item.created_at).max(0) as u64);
            if age >= config.retry_period {
                warn!(id = item.id, %error, "webhook undeliverable for the whole retry period: dead-lettered");
                Outcome::Dead { id: item.id, error }
            } else {
                let wait = backoff(config.retry_base, item.attempts);
                let next_attempt_at = now + wait.as_millis() as i64;
                debug!(id = item.id, %error, "webhook delivery failed; will retry");
                Outcome::Retry {
                    id: item.id,
                    next_attempt_at,
                    error,
                }
            }
        }
    }
}

/// `base` (1 s by default) after the first failure, doubling, with ±20 % jitter so a receiver
/// coming back is not hit by every retry at once; never more than an hour apart.
pub fn backoff(base: Duration, attempts_before: i64) -> Duration {
    let exponent = attempts_before.clamp(0, 20) as u32;
    let base = base.saturating_mul(1 << exponent);
    base.mul_f64(0.8 + fastrand::f64() * 0.4)
        .min(Duration::from_secs(3600))
}

async fn post(
    delivery: &Delivery,
    channel: &Channel,
    id: i64,
    payload: Bytes,
) -> Result<(), String> {
    let uri: Uri = channel
        .legacy_url
        .parse()
        .map_err(|_| "legacy webhook URL is invalid".to_owned())?;
    let mut headers = HeaderMap::new();
    for (name, value) in &channel.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Stable across retries: the receiver can drop what it already processed.
    headers.insert("x-webhook-id", HeaderValue::from(id));
    let send = delivery.upstream.post_absolute(uri, headers, payload);
    match tokio::time::timeout(delivery.settings.timeout, send).await {
        Err(_) => Err("legacy receiver did not answer in time".to_owned()),
        Ok(Err(error)) => Err(format!("legacy receiver unreachable: {error}")),
        Ok(Ok(status)) if status.is_success() => Ok(()),
        Ok(Ok(status)) => Err(format!("legacy receiver answered HTTP {}", status.as_u16())),
    }
}

/// Stores the client's legacy URL (and headers) for its API key; returns the channel so the
/// caller can register the proxy's inbound URL upstream.
pub async fn configure_channel(
    db: &Database,
    api_key: &str,
    legacy_url: &str,
    headers: Vec<(String, String)>,
    relayed: Option<WebhookOptions>,
) -> Result<Channel, DbError> {
    let (name, hash) = channel_for_key(api_key);
    let existing = db.channel(&name).await?;
    let mut channel = Channel {
        secret: existing
            .as_ref()
            .map(|c| c.secret.clone())
            .unwrap_or_else(|| {
                format!(
                    "{}{}",
                    uuid::Uuid::new_v4().simple(),
                    uuid::Uuid::new_v4().simple()
                )
            }),
        legacy_url: legacy_url.to_owned(),
        headers,
        sent_status: relayed
            .map(|r| r.sent)
            .or(existing.as_ref().map(|c| c.sent_status))
            .unwrap_or(true),
        delivered_status: relayed
            .map(|r| r.delivered)
            .or(existing.as_ref().map(|c| c.delivered_status))
            .unwrap_or(true),
        read_status: relayed
            .map(|r| r.read)
            .or(existing.as_ref().map(|c| c.read_status))
            .unwrap_or(true),
        api_key_hash: Some(hash),
        name,
    };
    channel.secret = db.upsert_channel(&channel, true).await?;
    Ok(channel)
}

/// What 360dialog's `GET /v1/configs/webhook` answered: the client's own URL and headers.
pub fn webhook_config_answer(channel: Option<&Channel>) -> Value {
    match channel {
        Some(channel) => {
            let headers: serde_json::Map<String, Value> = channel
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.clone())))
                .collect();
            if headers.is_empty() {
                json!({"url": channel.legacy_url})
            } else {
                json!({"url": channel.legacy_url, "headers": headers})
            }
        }
        None => json!({"url": ""}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_within_seconds_and_is_capped_at_an_hour() {
        let second = Duration::from_secs(1);
        assert!(backoff(second, 0) <= Duration::from_millis(1200));
        assert!(backoff(second, 0) >= Duration::from_millis(800));
        assert!(backoff(second, 1) >= Duration::from_millis(1600));
        assert!(backoff(second, 30) <= Duration::from_secs(3600));
        assert!(backoff(second, 30) >= Duration::from_secs(2880));
    }
}
