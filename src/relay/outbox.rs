//! The durable outbox: inbound events and their On-Premise payloads in an embedded SQLite
//! database (WAL mode, `synchronous=FULL`: a committed event survives a crash or power loss).
//!
//! The SQL sticks to what PostgreSQL also accepts (partial indexes, `ON CONFLICT ... DO
//! NOTHING`, `BIGINT` epoch milliseconds, `BOOLEAN`), so the same tables can move to a shared
//! PostgreSQL for several replicas. The one SQLite-ism is `INTEGER PRIMARY KEY` (the rowid); in
//! PostgreSQL those columns are `BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY`.

use std::path::Path;
use std::sync::{Mutex, PoisonError};

use rusqlite::{params, Connection, OptionalExtension};

use crate::translate::webhooks::OnPremWebhook;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS webhook_channels (
    name TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    legacy_url TEXT NOT NULL,
    headers TEXT NOT NULL,
    sent_status BOOLEAN NOT NULL,
    api_key_hash TEXT
);
CREATE TABLE IF NOT EXISTS webhook_events (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id INTEGER PRIMARY KEY,
    event_id BIGINT NOT NULL,
    channel TEXT NOT NULL,
    ordering_key TEXT NOT NULL,
    dedupe_key TEXT,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error TEXT,
    delivered_at BIGINT,
    dead_at BIGINT
);
CREATE UNIQUE INDEX IF NOT EXISTS webhook_outbox_dedupe
    ON webhook_outbox (channel, dedupe_key) WHERE dedupe_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS webhook_outbox_pending_order
    ON webhook_outbox (channel, ordering_key, id) WHERE delivered_at IS NULL AND dead_at IS NULL;
CREATE INDEX IF NOT EXISTS webhook_outbox_pending_due
    ON webhook_outbox (next_attempt_at) WHERE delivered_at IS NULL AND dead_at IS NULL;
CREATE INDEX IF NOT EXISTS webhook_outbox_event
    ON webhook_outbox (event_id);
CREATE TABLE IF NOT EXISTS webhook_dead (
    id INTEGER PRIMARY KEY,
    outbox_id BIGINT,
    channel TEXT NOT NULL,
    ordering_key TEXT NOT NULL,
    payload TEXT NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_at BIGINT NOT NULL,
    died_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
";

/// Where inbound events for one legacy receiver come in and go out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub name: String,
    /// Expected in `X-Webhook-Secret` on every inbound post.
    pub secret: String,
    pub legacy_url: String,
    /// Extra headers the client asked for on deliveries.
    pub headers: Vec<(String, String)>,
    pub sent_status: bool,
    /// SHA-256 of the API key the channel belongs to (none for the flag-configured one).
    pub api_key_hash: Option<String>,
}

/// A payload due for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub id: i64,
    pub channel: String,
    pub payload: String,
    pub attempts: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ingested {
    pub stored: usize,
    pub duplicates: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub pending: i64,
    pub delivered: i64,
    pub dead: i64,
    pub oldest_pending_age_ms: Option<i64>,
    pub skipped_changes: i64,
    pub duplicates: i64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Dead {
    pub id: i64,
    pub channel: String,
    pub ordering_key: String,
    pub payload: serde_json::Value,
    pub reason: String,
    pub attempts: i64,
    pub created_at: i64,
    pub died_at: i64,
}

pub struct Outbox {
    connection: Mutex<Connection>,
}

impl Outbox {
    pub fn open(path: &Path) -> rusqlite::Result<Outbox> {
        let connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: every commit reaches the disk before the event is acknowledged.
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        connection.execute_batch(SCHEMA)?;
        Ok(Outbox {
            connection: Mutex::new(connection),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a write transaction can start (the disk and the database lock are usable).
    pub fn writable(&self) -> rusqlite::Result<()> {
        let connection = self.lock();
        connection.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
    }

    pub fn upsert_channel(&self, channel: &Channel) -> rusqlite::Result<()> {
        let headers = serde_json::to_string(&channel.headers).unwrap_or_else(|_| "[]".into());
        self.lock().execute(
            "INSERT INTO webhook_channels (name, secret, legacy_url, headers, sent_status, api_key_hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (name) DO UPDATE SET secret = excluded.secret, legacy_url = excluded.legacy_url,
                 headers = excluded.headers, sent_status = excluded.sent_status,
                 api_key_hash = excluded.api_key_hash",
            params![
                channel.name,
                channel.secret,
                channel.legacy_url,
                headers,
                channel.sent_status,
                channel.api_key_hash
            ],
        )?;
        Ok(())
    }

    pub fn channel(&self, name: &str) -> rusqlite::Result<Option<Channel>> {
        self.lock()
            .query_row(
                "SELECT name, secret, legacy_url, headers, sent_status, api_key_hash
                 FROM webhook_channels WHERE name = ?1",
                params![name],
                |row| {
                    let headers: String = row.get(3)?;
                    Ok(Channel {
                        name: row.get(0)?,
                        secret: row.get(1)?,
                        legacy_url: row.get(2)?,
                        headers: serde_json::from_str(&headers).unwrap_or_default(),
                        sent_status: row.get(4)?,
                        api_key_hash: row.get(5)?,
                    })
                },
            )
            .optional()
    }

    pub fn set_sent_status(&self, name: &str, sent_status: bool) -> rusqlite::Result<()> {
        self.lock().execute(
            "UPDATE webhook_channels SET sent_status = ?2 WHERE name = ?1",
            params![name, sent_status],
        )?;
        Ok(())
    }

    /// Stores one inbound event and its payloads in one transaction. Payloads whose dedupe key
    /// was already stored (an upstream re-send) are left out.
    pub fn ingest(
        &self,
        channel: &str,
        raw: &str,
        payloads: &[OnPremWebhook],
        skipped: usize,
        now_ms: i64,
    ) -> rusqlite::Result<Ingested> {
        let mut connection = self.lock();
        let tx = connection.transaction()?;
        tx.execute(
            "INSERT INTO webhook_events (channel, received_at, body) VALUES (?1, ?2, ?3)",
            params![channel, now_ms, raw],
        )?;
        let event_id = tx.last_insert_rowid();
        let mut ingested = Ingested::default();
        for payload in payloads {
            let inserted = tx.execute(
                "INSERT INTO webhook_outbox
                     (event_id, channel, ordering_key, dedupe_key, payload, created_at, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
                 ON CONFLICT (channel, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING",
                params![
                    event_id,
                    channel,
                    payload.ordering_key,
                    payload.dedupe_key,
                    payload.body.to_string(),
                    now_ms
                ],
            )?;
            if inserted == 1 {
                ingested.stored += 1;
            } else {
                ingested.duplicates += 1;
            }
        }
        bump(&tx, "skipped_changes", skipped as i64)?;
        bump(&tx, "duplicates", ingested.duplicates as i64)?;
        tx.commit()?;
        Ok(ingested)
    }

    /// An inbound post that is not a Cloud webhook: kept in the dead-letter table, never lost.
    pub fn store_unreadable(
        &self,
        channel: &str,
        raw: &str,
        reason: &str,
        now_ms: i64,
    ) -> rusqlite::Result<()> {
        self.lock().execute(
            "INSERT INTO webhook_dead (outbox_id, channel, ordering_key, payload, reason, attempts, created_at, died_at)
             VALUES (NULL, ?1, '', ?2, ?3, 0, ?4, ?4)",
            params![channel, serde_json::Value::String(raw.to_owned()).to_string(), reason, now_ms],
        )?;
        Ok(())
    }

    /// Due payloads, oldest first, at most one per (channel, recipient): a later event for a
    /// recipient waits until every earlier one is delivered or dead.
    pub fn due(&self, now_ms: i64, limit: usize) -> rusqlite::Result<Vec<Due>> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT o.id, o.channel, o.payload, o.attempts, o.created_at FROM webhook_outbox o
             WHERE o.delivered_at IS NULL AND o.dead_at IS NULL AND o.next_attempt_at <= ?1
               AND NOT EXISTS (
                   SELECT 1 FROM webhook_outbox p
                   WHERE p.channel = o.channel AND p.ordering_key = o.ordering_key
                     AND p.delivered_at IS NULL AND p.dead_at IS NULL AND p.id < o.id)
             ORDER BY o.id LIMIT ?2",
        )?;
        let rows = statement.query_map(params![now_ms, limit as i64], |row| {
            Ok(Due {
                id: row.get(0)?,
                channel: row.get(1)?,
                payload: row.get(2)?,
                attempts: row.get(3)?,
                created_at: row.get(4)?,
            })
        })?;
        rows.collect()
    }

    /// When the next deliverable payload becomes due: only the head of each recipient's queue
    /// counts (a later event waits for its head, however old it is itself).
    pub fn next_due_at(&self) -> rusqlite::Result<Option<i64>> {
        self.lock().query_row(
            "SELECT MIN(o.next_attempt_at) FROM webhook_outbox o
             WHERE o.delivered_at IS NULL AND o.dead_at IS NULL
               AND NOT EXISTS (
                   SELECT 1 FROM webhook_outbox p
                   WHERE p.channel = o.channel AND p.ordering_key = o.ordering_key
                     AND p.delivered_at IS NULL AND p.dead_at IS NULL AND p.id < o.id)",
            [],
            |row| row.get(0),
        )
    }

    /// Records one round of delivery outcomes in one transaction.
    pub fn record(&self, outcomes: &[Outcome], now_ms: i64) -> rusqlite::Result<()> {
        let mut connection = self.lock();
        let tx = connection.transaction()?;
        let mut delivered = 0;
        for outcome in outcomes {
            match outcome {
                Outcome::Delivered { id } => {
                    tx.execute(
                        "UPDATE webhook_outbox SET delivered_at = ?2, attempts = attempts + 1 WHERE id = ?1",
                        params![id, now_ms],
                    )?;
                    delivered += 1;
                }
                Outcome::Retry {
                    id,
                    next_attempt_at,
                    error,
                } => {
                    tx.execute(
                        "UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = ?2, last_error = ?3
                         WHERE id = ?1",
                        params![id, next_attempt_at, error],
                    )?;
                }
                Outcome::Dead { id, error } => {
                    tx.execute(
                        "INSERT INTO webhook_dead (outbox_id, channel, ordering_key, payload, reason, attempts, created_at, died_at)
                         SELECT id, channel, ordering_key, payload, ?2, attempts + 1, created_at, ?3
                         FROM webhook_outbox WHERE id = ?1",
                        params![id, error, now_ms],
                    )?;
                    tx.execute(
                        "UPDATE webhook_outbox SET dead_at = ?2, attempts = attempts + 1, last_error = ?3 WHERE id = ?1",
                        params![id, now_ms, error],
                    )?;
                }
            }
        }
        bump(&tx, "delivered", delivered)?;
        tx.commit()
    }

    pub fn stats(&self, now_ms: i64) -> rusqlite::Result<Stats> {
        let connection = self.lock();
        let (pending, oldest): (i64, Option<i64>) = connection.query_row(
            "SELECT COUNT(*), MIN(created_at) FROM webhook_outbox WHERE delivered_at IS NULL AND dead_at IS NULL",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        let dead: i64 =
            connection.query_row("SELECT COUNT(*) FROM webhook_dead", [], |row| row.get(0))?;
        let counter = |name: &str| -> rusqlite::Result<i64> {
            connection
                .query_row(
                    "SELECT value FROM webhook_counters WHERE name = ?1",
                    params![name],
                    |row| row.get(0),
                )
                .optional()
                .map(|v| v.unwrap_or(0))
        };
        Ok(Stats {
            pending,
            delivered: counter("delivered")?,
            dead,
            oldest_pending_age_ms: oldest.map(|o| now_ms - o),
            skipped_changes: counter("skipped_changes")?,
            duplicates: counter("duplicates")?,
        })
    }

    pub fn dead(&self, limit: usize) -> rusqlite::Result<Vec<Dead>> {
        let connection = self.lock();
        let mut statement = connection.prepare(
            "SELECT id, channel, ordering_key, payload, reason, attempts, created_at, died_at
             FROM webhook_dead ORDER BY id LIMIT ?1",
        )?;
        let rows = statement.query_map(params![limit as i64], |row| {
            let payload: String = row.get(3)?;
            Ok(Dead {
                id: row.get(0)?,
                channel: row.get(1)?,
                ordering_key: row.get(2)?,
                payload: serde_json::from_str(&payload)
                    .unwrap_or(serde_json::Value::String(payload)),
                reason: row.get(4)?,
                attempts: row.get(5)?,
                created_at: row.get(6)?,
                died_at: row.get(7)?,
            })
        })?;
        rows.collect()
    }

    /// Puts a dead payload back in the outbox as a fresh event (a new retry period);
    /// false when there is no such dead payload (or it never was a payload).
    pub fn replay(&self, dead_id: i64, now_ms: i64) -> rusqlite::Result<bool> {
        let mut connection = self.lock();
        let tx = connection.transaction()?;
        let row: Option<(String, String, String, Option<i64>)> = tx
            .query_row(
                "SELECT channel, ordering_key, payload, outbox_id FROM webhook_dead WHERE id = ?1",
                params![dead_id],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .optional()?;
        let Some((channel, ordering_key, payload, Some(outbox_id))) = row else {
            return Ok(false);
        };
        // From the dead row itself: the outbox row may already be pruned.
        tx.execute(
            "INSERT INTO webhook_outbox (event_id, channel, ordering_key, dedupe_key, payload, created_at, next_attempt_at)
             VALUES (COALESCE((SELECT event_id FROM webhook_outbox WHERE id = ?1), 0), ?2, ?3, NULL, ?4, ?5, ?5)",
            params![outbox_id, channel, ordering_key, payload, now_ms],
        )?;
        tx.execute("DELETE FROM webhook_dead WHERE id = ?1", params![dead_id])?;
        tx.commit()?;
        Ok(true)
    }

    /// Forgets delivered and dead payloads (and raw events) older than the retry period:
    /// until then they still deduplicate upstream re-sends.
    pub fn prune(&self, before_ms: i64) -> rusqlite::Result<()> {
        let connection = self.lock();
        connection.execute(
            "DELETE FROM webhook_outbox WHERE (delivered_at IS NOT NULL OR dead_at IS NOT NULL) AND created_at < ?1",
            params![before_ms],
        )?;
        connection.execute(
            "DELETE FROM webhook_events WHERE received_at < ?1
               AND NOT EXISTS (SELECT 1 FROM webhook_outbox o WHERE o.event_id = webhook_events.id)",
            params![before_ms],
        )?;
        Ok(())
    }
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered {
        id: i64,
    },
    Retry {
        id: i64,
        next_attempt_at: i64,
        error: String,
    },
    Dead {
        id: i64,
        error: String,
    },
}

fn bump(tx: &rusqlite::Transaction<'_>, name: &str, by: i64) -> rusqlite::Result<()> {
    if by == 0 {
        return Ok(());
    }
    tx.execute(
        "INSERT INTO webhook_counters (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = webhook_counters.value + excluded.value",
        params![name, by],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn outbox() -> Outbox {
        let path = std::env::temp_dir().join(format!("outbox-{}.db", uuid::Uuid::new_v4()));
        Outbox::open(&path).unwrap()
    }

    fn payload(wa_id: &str, id: &str) -> OnPremWebhook {
        OnPremWebhook {
            body: json!({"messages": [{"id": id, "from": wa_id}]}),
            ordering_key: wa_id.to_owned(),
            dedupe_key: Some(format!("message:{id}")),
        }
    }

    #[test]
    fn resends_are_stored_once() {
        let outbox = outbox();
        let first = outbox
            .ingest("c", "{}", &[payload("1", "a")], 0, 10)
            .unwrap();
        let again = outbox
            .ingest("c", "{}", &[payload("1", "a")], 0, 11)
            .unwrap();
        assert_eq!((first.stored, again.stored, again.duplicates), (1, 0, 1));
    }

    #[test]
    fn a_recipient_waits_for_its_earlier_event_others_do_not() {
        let outbox = outbox();
        outbox
            .ingest(
                "c",
                "{}",
                &[payload("1", "a"), payload("1", "b"), payload("2", "c")],
                0,
                10,
            )
            .unwrap();
        let due: Vec<i64> = outbox.due(10, 10).unwrap().iter().map(|d| d.id).collect();
        assert_eq!(due, [1, 3]);
        outbox
            .record(
                &[Outcome::Retry {
                    id: 1,
                    next_attempt_at: 100,
                    error: "503".into(),
                }],
                10,
            )
            .unwrap();
        // Still waiting on its earlier event, even though that one is not due.
        assert_eq!(
            outbox
                .due(20, 10)
                .unwrap()
                .iter()
                .map(|d| d.id)
                .collect::<Vec<_>>(),
            [3]
        );
        outbox
            .record(
                &[Outcome::Delivered { id: 1 }, Outcome::Delivered { id: 3 }],
                30,
            )
            .unwrap();
        assert_eq!(
            outbox
                .due(30, 10)
                .unwrap()
                .iter()
                .map(|d| d.id)
                .collect::<Vec<_>>(),
            [2]
        );
    }

    #[test]
    fn a_dead_payload_can_be_replayed_after_its_outbox_row_was_pruned() {
        let outbox = outbox();
        outbox
            .ingest("c", "{}", &[payload("1", "a")], 0, 10)
            .unwrap();
        outbox
            .record(
                &[Outcome::Dead {
                    id: 1,
                    error: "gave up".into(),
                }],
                20,
            )
            .unwrap();
        outbox.prune(1_000).unwrap();
        let dead = outbox.dead(10).unwrap();
        assert!(outbox.replay(dead[0].id, 30).unwrap());
        let due = outbox.due(30, 10).unwrap();
        assert_eq!(due.len(), 1);
        assert!(due[0].payload.contains("\"a\""));
    }

    #[test]
    fn the_next_due_time_ignores_events_waiting_behind_their_recipient() {
        let outbox = outbox();
        outbox
            .ingest("c", "{}", &[payload("1", "a"), payload("1", "b")], 0, 10)
            .unwrap();
        outbox
            .record(
                &[Outcome::Retry {
                    id: 1,
                    next_attempt_at: 5_000,
                    error: "503".into(),
                }],
                20,
            )
            .unwrap();
        // Event b (created at 10) is not deliverable before a: the loop must sleep until 5000.
        assert_eq!(outbox.next_due_at().unwrap(), Some(5_000));
    }

    #[test]
    fn dead_payloads_unblock_their_recipient_and_can_be_replayed() {
        let outbox = outbox();
        outbox
            .ingest("c", "{}", &[payload("1", "a"), payload("1", "b")], 0, 10)
            .unwrap();
        outbox
            .record(
                &[Outcome::Dead {
                    id: 1,
                    error: "gave up".into(),
                }],
                20,
            )
            .unwrap();
        assert_eq!(outbox.due(20, 10).unwrap()[0].id, 2);
        let dead = outbox.dead(10).unwrap();
        assert_eq!(dead.len(), 1);
        assert!(outbox.replay(dead[0].id, 30).unwrap());
        assert_eq!(outbox.stats(30).unwrap().dead, 0);
        assert_eq!(outbox.stats(30).unwrap().pending, 2);
    }
}
