//! Delivery: due payloads out to the legacy receivers, pipelined. There is no round barrier:
//! whenever a slot frees, the next waiting payload starts (taking turns across channels, see
//! [`super::channels`]), and outcomes are recorded in batches while deliveries go on.
//!
//! What holds, as before:
//! - at least once: an outcome is recorded after the receiver answered; a crash in between
//!   delivers the payload again (the receiver sees the same `X-Webhook-Id`);
//! - per-recipient order: only the head of a recipient's queue is ever due, and it stays the
//!   head until its outcome is recorded;
//! - on a shared database every payload taken is claimed with a lease; one is started only
//!   while its lease outlasts the delivery timeout, so replicas never deliver it at once.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Uri;
use prometheus_client::metrics::histogram::Histogram;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::channels::{Channels, Fairness, Pending};
use super::Relay;
use crate::clock::Clock;
use crate::config::Config;
use crate::db::{Channel, Claim, Due, DueFilter, Outcome};
use crate::upstream::Upstream;

/// Upper bound on one wait of the delivery loop when nothing is due sooner.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Shortest wait of the delivery loop after a fetch that found nothing to take.
const MIN_PAUSE: Duration = Duration::from_millis(50);
/// How often the loop's picture of its channels is published for operators.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// The least time between two fetches prompted by commits of new events (see the loop).
const FETCH_GAP: Duration = Duration::from_millis(10);
/// Margin kept between a delivery's end (at the latest) and its lease's end.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// What the delivery loop uses, and nothing more: the outbox, the outbound client, the metric
/// it feeds, its settings and its clock.
#[derive(Clone)]
pub struct Delivery {
    pub relay: Arc<Relay>,
    pub upstream: Arc<Upstream>,
    pub delivery_seconds: Histogram,
    pub settings: DeliverySettings,
    pub clock: Clock,
}

/// The delivery settings taken from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct DeliverySettings {
    pub concurrency: usize,
    pub timeout: Duration,
    pub retry_period: Duration,
    pub retry_base: Duration,
    pub fairness: Fairness,
}

impl DeliverySettings {
    pub fn from_config(config: &Config) -> Self {
        DeliverySettings {
            concurrency: config.webhook_concurrency,
            timeout: config.webhook_delivery_timeout,
            retry_period: config.webhook_retry_period,
            retry_base: config.webhook_retry_base,
            fairness: Fairness {
                per_channel: config.webhook_channel_concurrency,
                trip_after: config.webhook_breaker_failures,
                probe_base: config.webhook_retry_base,
                probe_max: Duration::from_secs(300),
            },
        }
    }
}

/// What the loop holds between the database and the receivers.
struct Loop {
    channels: Channels,
    /// Payloads taken and not yet recorded (waiting, in flight, or answered): never taken
    /// twice.
    held: HashSet<i64>,
    /// Answered, not yet recorded.
    outcomes: Vec<Outcome>,
    /// Whether the last fetch may have left due payloads behind (it was full).
    more_due: bool,
    /// Whether new events were committed (fetched for at most every [`FETCH_GAP`]).
    fetch_wanted: bool,
    /// Whether outcomes were recorded: recipients' next payloads are due now.
    fetch_now: bool,
    /// When the retries this loop scheduled fall due (earliest first). Asking the database
    /// instead would read every recipient's head each time the loop runs dry; new events wake
    /// the loop by themselves, and anything else due (another replica's retries) is found by
    /// the poll every [`IDLE_POLL`].
    retries: BinaryHeap<Reverse<i64>>,
}

/// The delivery loop: runs until the task is aborted.
pub async fn deliver_forever(delivery: Delivery) {
    let relay = delivery.relay.clone();
    let settings = delivery.settings;
    let clock = delivery.clock.clone();
    // The lease covers a wait in the queue behind the channel's cap and the delivery itself.
    let lease = if relay.db.is_shared() {
        settings.timeout * 4 + LEASE_MARGIN * 2
    } else {
        Duration::ZERO
    };
    let mut state = Loop {
        channels: Channels::new(settings.fairness),
        held: HashSet::new(),
        outcomes: Vec::new(),
        more_due: false,
        fetch_wanted: true,
        fetch_now: true,
        retries: BinaryHeap::new(),
    };
    let mut deliveries: JoinSet<(String, Outcome)> = JoinSet::new();
    // Which channel and payload each running delivery task has.
    let mut started: HashMap<tokio::task::Id, (String, i64)> = HashMap::new();
    // At most one batch of outcomes is being recorded at a time.
    let mut recording: JoinSet<Result<Vec<i64>, Vec<Outcome>>> = JoinSet::new();
    let mut record_after = i64::MIN;
    let queue_bound = settings.concurrency * 2;
    let mut last_fetch = i64::MIN / 2;
    let mut published = std::time::Instant::now()
        .checked_sub(PUBLISH_EVERY)
        .unwrap_or_else(std::time::Instant::now);
    loop {
        let now = clock.now_ms();
        // Payloads behind an open breaker give their claims back.
        let blocked = state.channels.take_blocked(now);
        if !blocked.is_empty() {
            let ids: Vec<i64> = blocked.iter().map(|p| p.due.id).collect();
            forget(&relay, &mut state.held, &ids).await;
        }
        start_what_may_start(&delivery, &mut state, &mut deliveries, &mut started, now).await;
        let mut pause = IDLE_POLL;
        let room = queue_bound.saturating_sub(state.channels.queued());
        // Commits of new events prompt a fetch at most every FETCH_GAP: under a stream of
        // commits a fetch per commit would keep the database busy finding the same heads.
        // Recorded outcomes (recipients' next payloads now due) prompt one at once.
        let gap_left = (last_fetch + FETCH_GAP.as_millis() as i64 - now).max(0);
        let wanted = state.more_due || state.fetch_now || (state.fetch_wanted && gap_left == 0);
        if state.fetch_wanted && gap_left > 0 {
            pause = Duration::from_millis(gap_left as u64);
        }
        if room > settings.concurrency / 2 && wanted {
            state.fetch_wanted = false;
            state.fetch_now = false;
            last_fetch = now;
            let filter = DueFilter {
                per_channel: settings.fairness.per_channel,
                except_channels: state.channels.not_fetching(now),
                except_ids: state.held.iter().copied().collect(),
                total: Some(room),
            };
            let claim = Claim {
                replica: relay.replica.clone(),
                until_ms: now + lease.as_millis() as i64,
            };
            match relay.db.claim_heads(now, &filter, &claim).await {
                Ok(due) if !due.is_empty() => {
                    state.more_due = due.len() >= filter.per_channel || due.len() >= room;
                    let lease_ends_ms = if lease.is_zero() {
                        i64::MAX
                    } else {
                        claim.until_ms
                    };
                    let mut taken = false;
                    for due in due {
                        if state.held.insert(due.id) {
                            state.channels.push(Pending { due, lease_ends_ms });
                            taken = true;
                        }
                    }
                    // Only something new makes another pass at once (no spin on old rows).
                    if taken {
                        continue;
                    }
                    state.more_due = false;
                }
                Ok(_) => {
                    state.more_due = false;
                    pause = idle_pause(&mut state, clock.now_ms());
                }
                Err(error) => {
                    warn!(%error, "outbox unreadable; retrying");
                    state.more_due = false;
                }
            }
        }
        if recording.is_empty() && !state.outcomes.is_empty() && now >= record_after {
            let outcomes = std::mem::take(&mut state.outcomes);
            let (db, replica, now) = (relay.db.clone(), relay.replica.clone(), clock.now_ms());
            recording.spawn(async move {
                match db.record(outcomes.clone(), now, &replica).await {
                    Ok(()) => Ok(outcomes.iter().map(outcome_id).collect::<Vec<i64>>()),
                    Err(error) => {
                        warn!(%error, "delivery outcomes not recorded; trying again shortly");
                        Err(outcomes)
                    }
                }
            });
        }
        if published.elapsed() >= PUBLISH_EVERY {
            published = std::time::Instant::now();
            relay.publish_channels(state.channels.view());
        }
        tokio::select! {
            Some(joined) = deliveries.join_next_with_id(), if !deliveries.is_empty() => {
                match joined {
                    Ok((task, (channel, outcome))) => {
                        started.remove(&task);
                        let delivered = matches!(outcome, Outcome::Delivered { .. });
                        state.channels.finished(&channel, delivered, clock.now_ms());
                        let error = match &outcome {
                            Outcome::Retry { error, .. } | Outcome::Dead { error, .. } => Some(error.as_str()),
                            Outcome::Delivered { .. } => None,
                        };
                        state.channels.note(&channel, error);
                        if let Outcome::Retry { next_attempt_at, .. } = outcome {
                            state.retries.push(Reverse(next_attempt_at));
                            if state.retries.len() > 1_024 {
                                let now = clock.now_ms();
                                state.retries.retain(|Reverse(at)| *at > now);
                            }
                        }
                        state.outcomes.push(outcome);
                    }
                    // A delivery task that failed (it has no known way to): its slot and its
                    // payload are freed, so the payload is taken again.
                    Err(failed) => {
                        if let Some((channel, id)) = started.remove(&failed.id()) {
                            warn!(id, "a delivery task failed; the payload will be delivered again");
                            state.channels.abandoned(&channel, clock.now_ms());
                            forget(&relay, &mut state.held, &[id]).await;
                        }
                    }
                }
            }
            Some(recorded) = recording.join_next(), if !recording.is_empty() => {
                // Recorded (or not: then they are due again): no longer held. A recorded head
                // lets its recipient's next payload become due.
                match recorded {
                    Ok(Ok(ids)) => {
                        for id in ids {
                            state.held.remove(&id);
                        }
                        state.fetch_now = true;
                    }
                    // Not recorded: the answers are kept (and their payloads held, so they
                    // are not delivered again) and recorded again after a pause.
                    Ok(Err(outcomes)) => {
                        state.outcomes.extend(outcomes);
                        record_after = clock.now_ms() + IDLE_POLL.as_millis() as i64;
                    }
                    Err(_) => {}
                }
            }
            () = relay.committed.notified() => state.fetch_wanted = true,
            () = tokio::time::sleep(pause) => state.fetch_wanted = true,
        }
    }
}

/// Starts deliveries while slots are free and payloads wait; a payload whose lease would run
/// out before its delivery could end gives its claim back instead (it is taken again later).
async fn start_what_may_start(
    delivery: &Delivery,
    state: &mut Loop,
    deliveries: &mut JoinSet<(String, Outcome)>,
    started: &mut HashMap<tokio::task::Id, (String, i64)>,
    now: i64,
) {
    let latest_end = (delivery.settings.timeout + LEASE_MARGIN).as_millis() as i64;
    let mut expired = Vec::new();
    while deliveries.len() < delivery.settings.concurrency {
        let Some(pending) = state.channels.next(now) else {
            break;
        };
        if pending.lease_ends_ms.saturating_sub(now) < latest_end {
            state.channels.abandoned(&pending.due.channel, now);
            expired.push(pending.due.id);
            continue;
        }
        let delivery = delivery.clone();
        // The whole delivery (the channel's lookup included) ends before the lease does, so no
        // other replica can have taken the payload meanwhile.
        let within = Duration::from_millis(
            (pending.lease_ends_ms.saturating_sub(now) - LEASE_MARGIN.as_millis() as i64).max(1)
                as u64,
        )
        .min(delivery.settings.timeout + LEASE_MARGIN);
        let running = (pending.due.channel.clone(), pending.due.id);
        let task = deliveries.spawn(async move {
            let channel = pending.due.channel.clone();
            let (id, attempts) = (pending.due.id, pending.due.attempts);
            let outcome =
                match tokio::time::timeout(within, deliver_one(&delivery, pending.due)).await {
                    Ok(outcome) => outcome,
                    Err(_) => Outcome::Retry {
                        id,
                        next_attempt_at: delivery.clock.now_ms()
                            + backoff(delivery.settings.retry_base, attempts).as_millis() as i64,
                        error: "delivery did not end within its lease".to_owned(),
                    },
                };
            (channel, outcome)
        });
        started.insert(task.id(), running);
    }
    if !expired.is_empty() {
        forget(&delivery.relay, &mut state.held, &expired).await;
    }
}

/// Payloads this loop will not deliver now: their claims go back and they may be taken again.
async fn forget(relay: &Relay, held: &mut HashSet<i64>, ids: &[i64]) {
    if let Err(error) = relay.db.release(ids, &relay.replica).await {
        warn!(%error, "claims not given back; others take them when the lease ends");
    }
    for id in ids {
        held.remove(id);
    }
}

/// How long to wait when nothing was due: until the next retry or breaker probe this loop
/// knows of, within bounds.
fn idle_pause(state: &mut Loop, now: i64) -> Duration {
    while state.retries.peek().is_some_and(|Reverse(at)| *at <= now) {
        state.retries.pop();
    }
    let next_retry = state.retries.peek().map(|Reverse(at)| *at);
    let next = [next_retry, state.channels.next_probe_at(now)]
        .into_iter()
        .flatten()
        .min();
    next.map(|at| {
        Duration::from_millis(
            (at - now).clamp(MIN_PAUSE.as_millis() as i64, IDLE_POLL.as_millis() as i64) as u64,
        )
    })
    .unwrap_or(IDLE_POLL)
}

fn outcome_id(outcome: &Outcome) -> i64 {
    match outcome {
        Outcome::Delivered { id } | Outcome::Retry { id, .. } | Outcome::Dead { id, .. } => *id,
    }
}

async fn deliver_one(delivery: &Delivery, mut item: Due) -> Outcome {
    let config = delivery.settings;
    let clock = &delivery.clock;
    // The payload goes out once per attempt: moved into the request, not copied.
    let payload = Bytes::from(std::mem::take(&mut item.payload));
    let result = match delivery.relay.channel(&item.channel).await {
        Err(error) => Err(format!("channel unreadable: {error}")),
        Ok(None) => Err("channel no longer configured".to_owned()),
        Ok(Some(channel)) if channel.legacy_url.is_empty() => {
            Err("channel has no legacy webhook URL".to_owned())
        }
        Ok(Some(channel)) => post(delivery, &channel, item.id, payload).await,
    };
    match result {
        Ok(()) => {
            let waited = (clock.now_ms() - item.created_at).max(0) as f64 / 1000.0;
            delivery.delivery_seconds.observe(waited);
            Outcome::Delivered { id: item.id }
        }
        Err(error) => {
            let now = clock.now_ms();
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
