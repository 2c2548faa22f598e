//! Upkeep beside delivery, on its own clock so a long cleanup never delays a delivery: dead
//! letters and finished payloads past their retention go in small batches, and on PostgreSQL
//! the planner's picture of the outbox is kept current.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::Relay;
use crate::db::Horizon;

/// How often cleanup runs.
const EVERY: Duration = Duration::from_secs(60);
/// How often the planner's statistics of the outbox are refreshed (shared database).
const STATISTICS_EVERY: Duration = Duration::from_secs(15);
/// Rows removed per transaction: a few milliseconds of the database at most.
const BATCH: usize = 2_000;
/// Pause between batches, so inbound posts get the database in between.
const BETWEEN_BATCHES: Duration = Duration::from_millis(20);

/// How long what is kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Delivered and dead payloads (and their raw events) deduplicate upstream re-sends for
    /// this long (the retry period, or the retention if shorter).
    pub finished: Duration,
    /// Dead letters stay this long for an operator to look at and replay.
    pub dead_letters: Duration,
}

impl Retention {
    pub fn from_config(config: &crate::config::Config) -> Retention {
        Retention {
            finished: config.webhook_retry_period.min(config.webhook_retention),
            dead_letters: config.webhook_retention,
        }
    }
}

/// Runs until the task is aborted.
pub async fn maintain_forever(relay: Arc<Relay>, retention: Retention) {
    let mut statistics = tokio::time::interval(STATISTICS_EVERY);
    let mut cleanup = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = statistics.tick() => {
                if let Err(error) = relay.db.refresh_statistics().await {
                    warn!(%error, "outbox statistics not refreshed");
                }
            }
            _ = cleanup.tick() => clean_up(&relay, retention).await,
        }
    }
}

/// Removes what `retention` lets go, a batch at a time.
pub async fn clean_up(relay: &Relay, retention: Retention) {
    let now = relay.clock().now_ms();
    let before =
        |kept: Duration| now.saturating_sub(i64::try_from(kept.as_millis()).unwrap_or(i64::MAX));
    let horizon = Horizon {
        finished_before_ms: before(retention.finished),
        dead_letters_before_ms: before(retention.dead_letters),
        now_ms: now,
    };
    let mut batches = 0usize;
    loop {
        match relay.db.prune_batch(horizon, BATCH).await {
            Ok(removed) if removed == BATCH => {
                batches += 1;
                tokio::time::sleep(BETWEEN_BATCHES).await;
            }
            Ok(_) => break,
            Err(error) => {
                warn!(%error, "outbox cleanup failed; will try again");
                break;
            }
        }
    }
    if batches > 0 {
        info!(batches, "outbox cleanup removed rows past their retention");
    }
}
