//! Inbound Cloud webhooks -> durable outbox -> delivery to the client's legacy webhook URL in
//! On-Premise shape. An event is acknowledged only once committed; delivery is at least once,
//! retried with backoff, in order per recipient, and resumes after any crash.

mod channels;
mod delivery;
mod ingest;
mod maintenance;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tracing::debug;

use crate::clock::Clock;
use crate::config::Config;
use crate::db::{Channel, Database, DbError, Inbound, NewPayload};
use crate::secret::same_secret;
use crate::translate::webhooks::{cloud_to_onprem_webhook, WebhookOptions};

pub use channels::{Breaker, ChannelView, Channels, Fairness, Pending};
pub use delivery::{backoff, deliver_forever, Delivery, DeliverySettings};
pub use ingest::Batching;
pub use maintenance::{clean_up, maintain_forever, Retention};

/// Header the inbound post must carry; its value is the channel's secret.
pub const SECRET_HEADER: &str = "x-webhook-secret";
/// The flag-configured channel of a single-channel sidecar.
pub const DEFAULT_CHANNEL: &str = "default";

/// How long a channel read from the database serves inbound posts and deliveries. Changes made
/// through this replica apply at once; another replica's within this.
const CHANNEL_CACHE: Duration = Duration::from_secs(1);

/// A channel as read at an instant (`None`: there is no such channel).
type Cached = (Instant, Option<Arc<Channel>>);

pub struct Relay {
    pub db: Database,
    /// This process, in claims on a shared database.
    pub replica: String,
    /// Woken after each commit of inbound posts (and by a replay): delivery looks for work.
    committed: Arc<Notify>,
    commits: ingest::GroupCommit,
    clock: Clock,
    channels: Mutex<HashMap<String, Cached>>,
    /// The delivery loop's picture of its channels, for operators.
    circuits: Mutex<Vec<ChannelView>>,
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
    /// Sets up the flag-configured channel (if any) in `db` and starts the committer of inbound
    /// posts on the current runtime.
    pub async fn open(config: &Config, db: Database, clock: Clock) -> Result<Relay, DbError> {
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
        let committed = Arc::new(Notify::new());
        let batching = Batching {
            max_posts: config.webhook_batch_max,
            max_wait: config.webhook_batch_wait,
        };
        Ok(Relay {
            commits: ingest::GroupCommit::start(
                db.clone(),
                batching,
                clock.clone(),
                committed.clone(),
            ),
            db,
            replica: uuid::Uuid::new_v4().simple().to_string(),
            committed,
            clock,
            channels: Mutex::new(HashMap::new()),
            circuits: Mutex::new(Vec::new()),
        })
    }

    /// A channel, from the cache while it is fresh.
    pub async fn channel(&self, name: &str) -> Result<Option<Arc<Channel>>, DbError> {
        let cached = self
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .filter(|(at, _)| at.elapsed() < CHANNEL_CACHE)
            .map(|(_, channel)| channel.clone());
        if let Some(channel) = cached {
            return Ok(channel);
        }
        let channel = self.db.channel(name).await?.map(Arc::new);
        // Only channels that exist are kept: names come from unauthenticated posts.
        if let Some(found) = &channel {
            self.channels
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(name.to_owned(), (Instant::now(), Some(found.clone())));
        }
        Ok(channel)
    }

    /// Which statuses a channel relays (`sent`, `delivered`, `read`).
    pub async fn set_relayed_statuses(
        &self,
        name: &str,
        relayed: [bool; 3],
    ) -> Result<(), DbError> {
        self.db.set_relayed_statuses(name, relayed).await?;
        self.forget_channel(name);
        Ok(())
    }

    /// A channel changed through this replica: the next read sees it.
    pub fn forget_channel(&self, name: &str) {
        self.channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }

    /// Stores one inbound post (after checking the channel's secret), in the next group
    /// commit; returns once that has committed.
    pub async fn ingest(
        &self,
        channel: &str,
        secret: Option<&[u8]>,
        raw: Bytes,
    ) -> Result<(), Refused> {
        let Some(found) = self.channel(channel).await.map_err(Refused::Storage)? else {
            return Err(Refused::UnknownChannel);
        };
        match secret {
            Some(given) if same_secret(given, found.secret.as_bytes()) => {}
            _ => return Err(Refused::BadSecret),
        }
        self.store(channel, &found, raw).await
    }

    /// Stores a post whose sender was already proven (a Meta app's signed webhook) for
    /// `channel`, in the next group commit; returns once that has committed.
    pub async fn ingest_signed(&self, channel: &str, raw: Bytes) -> Result<(), Refused> {
        let Some(found) = self.channel(channel).await.map_err(Refused::Storage)? else {
            return Err(Refused::UnknownChannel);
        };
        self.store(channel, &found, raw).await
    }

    /// Keeps a post (or part of one) that no channel can take as a dead letter, with the
    /// reason, for the operator.
    pub async fn keep_undeliverable(
        &self,
        channel: &str,
        raw: String,
        reason: String,
    ) -> Result<(), DbError> {
        let post = Inbound::Unreadable {
            channel: channel.to_owned(),
            raw,
            reason,
        };
        self.commits.store(post).await.map(|_| ())
    }

    async fn store(&self, channel: &str, found: &Channel, raw: Bytes) -> Result<(), Refused> {
        let text = String::from_utf8_lossy(&raw).into_owned();
        let options = WebhookOptions {
            sent: found.sent_status,
            delivered: found.delivered_status,
            read: found.read_status,
        };
        let translated = serde_json::from_slice::<Value>(&raw)
            .map_err(|e| e.to_string())
            .and_then(|v| cloud_to_onprem_webhook(v, options).map_err(|e| e.to_string()));
        let post = match translated {
            Ok(translation) => Inbound::Event {
                channel: channel.to_owned(),
                raw: text,
                skipped: translation.skipped.len(),
                payloads: translation
                    .payloads
                    .into_iter()
                    .map(|p| NewPayload {
                        body: p.body.to_string(),
                        ordering_key: p.ordering_key,
                        dedupe_key: p.dedupe_key,
                    })
                    .collect(),
            },
            // Not a Cloud webhook: kept for the operator, acknowledged (a re-send would not
            // make it readable).
            Err(reason) => Inbound::Unreadable {
                channel: channel.to_owned(),
                raw: text,
                reason,
            },
        };
        let ingested = self.commits.store(post).await.map_err(Refused::Storage)?;
        debug!(channel = %channel, stored = ingested.stored, duplicates = ingested.duplicates,
            "webhook stored");
        Ok(())
    }

    /// Delivery should look for work now (a replayed dead letter).
    pub fn wake(&self) {
        self.committed.notify_one();
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    fn publish_channels(&self, view: Vec<ChannelView>) {
        *self.circuits.lock().unwrap_or_else(PoisonError::into_inner) = view;
    }

    /// Each channel as the delivery loop last saw it: waiting, in flight, circuit state.
    pub fn channel_views(&self) -> Vec<ChannelView> {
        self.circuits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Stores the client's legacy URL (and headers) for its API key; returns the channel so the
/// caller can register the proxy's inbound URL upstream.
pub async fn configure_channel(
    relay: &Relay,
    api_key: &str,
    legacy_url: &str,
    headers: Vec<(String, String)>,
    relayed: Option<WebhookOptions>,
) -> Result<Channel, DbError> {
    let db = &relay.db;
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
    relay.forget_channel(&channel.name);
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
