//! The embedded backend: one SQLite file in WAL mode with `synchronous=FULL` (a committed event
//! survives a crash or power loss). One connection behind a mutex: the proxy is its only user.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde_json::Value;

use super::{
    dead_payload, headers_from_text, headers_to_text, migrations, Channel, DbError, Dead,
    DocumentChange, Due, DueFilter, Horizon, Inbound, Ingested, Outcome, Stats, CHANNELS,
    UPSERT_CHANNEL, UPSERT_CHANNEL_KEEPING_SECRET,
};

pub struct Sqlite {
    connection: Mutex<Connection>,
    /// Held while open: a second process on the same file would deliver every webhook again.
    _lock: std::fs::File,
}

impl Sqlite {
    /// Fails when another process (or another open in this one) holds the file.
    pub fn open(path: &Path) -> Result<Sqlite, DbError> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| DbError::Other(format!("{}: {e}", Path::new(&lock_path).display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(DbError::Other(format!(
                    "{} is in use by another waba-onprem-proxy; one SQLite file serves one \
                     process (several replicas need --database postgres://...)",
                    path.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(DbError::Other(format!(
                    "{}: {e}",
                    Path::new(&lock_path).display()
                )))
            }
        }
        let connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: every commit reaches the disk before the event is acknowledged.
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        let sqlite = Sqlite {
            connection: Mutex::new(connection),
            _lock: lock,
        };
        sqlite.migrate()?;
        Ok(sqlite)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn migrate(&self) -> rusqlite::Result<()> {
        let mut connection = self.lock();
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )?;
        // The rowid itself: SQLite numbers it.
        for (version, sql) in migrations("INTEGER PRIMARY KEY") {
            let applied: Option<i64> = tx
                .query_row(
                    "SELECT version FROM schema_migrations WHERE version = ?1",
                    params![version],
                    |row| row.get(0),
                )
                .optional()?;
            if applied.is_none() {
                tx.execute_batch(&sql)?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                    params![version, crate::clock::now_ms()],
                )?;
            }
        }
        tx.commit()
    }

    pub fn schema_version(&self) -> rusqlite::Result<i64> {
        self.lock().query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |row| row.get(0),
        )
    }

    /// Per-key JSON files from before documents lived in the database (`<dir>/<kind>/<sha256
    /// of the key>.json`): imported unless the database already has that document.
    pub fn import_document_files(&self, dir: &Path) -> rusqlite::Result<()> {
        for kind in ["media_providers", "application_settings"] {
            let Ok(entries) = std::fs::read_dir(dir.join(kind)) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Some(key_hash) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".json"))
                else {
                    continue;
                };
                let Ok(body) = std::fs::read_to_string(&path) else {
                    continue;
                };
                if serde_json::from_str::<Value>(&body).is_err() {
                    continue;
                }
                self.lock().execute(
                    "INSERT INTO documents (kind, key_hash, body, updated_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (kind, key_hash) DO NOTHING",
                    params![kind, key_hash, body, crate::clock::now_ms()],
                )?;
            }
        }
        Ok(())
    }

    pub fn writable(&self) -> rusqlite::Result<()> {
        self.lock().execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
    }

    pub fn upsert_channel(&self, channel: &Channel, keep_secret: bool) -> rusqlite::Result<String> {
        let sql = if keep_secret {
            UPSERT_CHANNEL_KEEPING_SECRET
        } else {
            UPSERT_CHANNEL
        };
        self.lock().query_row(
            sql,
            params![
                channel.name,
                channel.secret,
                channel.legacy_url,
                headers_to_text(&channel.headers),
                channel.sent_status,
                channel.api_key_hash,
                channel.delivered_status,
                channel.read_status
            ],
            |row| row.get(0),
        )
    }

    pub fn channel(&self, name: &str) -> rusqlite::Result<Option<Channel>> {
        self.lock()
            .query_row(
                "SELECT name, secret, legacy_url, headers, sent_status, api_key_hash,
                        delivered_status, read_status
                 FROM webhook_channels WHERE name = ?1",
                params![name],
                |row| {
                    let headers: String = row.get(3)?;
                    Ok(Channel {
                        name: row.get(0)?,
                        secret: row.get(1)?,
                        legacy_url: row.get(2)?,
                        headers: headers_from_text(&headers),
                        sent_status: row.get(4)?,
                        api_key_hash: row.get(5)?,
                        delivered_status: row.get(6)?,
                        read_status: row.get(7)?,
                    })
                },
            )
            .optional()
    }

    pub fn set_relayed_statuses(&self, name: &str, relayed: [bool; 3]) -> rusqlite::Result<()> {
        let [sent, delivered, read] = relayed;
        self.lock().execute(
            "UPDATE webhook_channels SET sent_status = ?2, delivered_status = ?3, read_status = ?4
             WHERE name = ?1",
            params![name, sent, delivered, read],
        )?;
        Ok(())
    }

    pub fn ingest_batch(&self, posts: &[Inbound], now_ms: i64) -> rusqlite::Result<Vec<Ingested>> {
        let mut connection = self.lock();
        let tx = connection.transaction()?;
        let mut results = Vec::with_capacity(posts.len());
        let (mut skipped_total, mut duplicates_total) = (0i64, 0i64);
        {
            let mut insert_event = tx.prepare_cached(
                "INSERT INTO webhook_events (channel, received_at, body) VALUES (?1, ?2, ?3)",
            )?;
            let mut insert_payload = tx.prepare_cached(
                "INSERT INTO webhook_outbox
                     (event_id, channel, ordering_key, dedupe_key, payload, created_at, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
                 ON CONFLICT (channel, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING",
            )?;
            let mut insert_unreadable = tx.prepare_cached(
                "INSERT INTO webhook_dead (outbox_id, channel, ordering_key, payload, reason, attempts, created_at, died_at)
                 VALUES (NULL, ?1, '', ?2, ?3, 0, ?4, ?4)",
            )?;
            for post in posts {
                let mut ingested = Ingested::default();
                match post {
                    Inbound::Event {
                        channel,
                        raw,
                        payloads,
                        skipped,
                    } => {
                        insert_event.execute(params![channel, now_ms, raw])?;
                        let event_id = tx.last_insert_rowid();
                        for payload in payloads {
                            let inserted = insert_payload.execute(params![
                                event_id,
                                channel,
                                payload.ordering_key,
                                payload.dedupe_key,
                                payload.body.as_str(),
                                now_ms
                            ])?;
                            if inserted == 1 {
                                ingested.stored += 1;
                            } else {
                                ingested.duplicates += 1;
                            }
                        }
                        skipped_total += *skipped as i64;
                        duplicates_total += ingested.duplicates as i64;
                    }
                    Inbound::Unreadable {
                        channel,
                        raw,
                        reason,
                    } => {
                        let kept = Value::String(raw.clone()).to_string();
                        insert_unreadable.execute(params![channel, kept, reason, now_ms])?;
                    }
                }
                results.push(ingested);
            }
        }
        bump(&tx, "skipped_changes", skipped_total)?;
        bump(&tx, "duplicates", duplicates_total)?;
        tx.commit()?;
        Ok(results)
    }

    /// Each channel's due heads on their own (each query walks
    /// only that channel's pending rows, in id order, by `webhook_outbox_pending_channel`).
    pub fn due(&self, now_ms: i64, filter: &DueFilter) -> rusqlite::Result<Vec<Due>> {
        let connection = self.lock();
        let mut names = connection.prepare_cached(CHANNELS)?;
        let channels: Vec<String> = names
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let except_ids = serde_json::to_string(&filter.except_ids).unwrap_or_else(|_| "[]".into());
        let mut statement = connection.prepare_cached(
            "SELECT o.id, o.channel, o.payload, o.attempts, o.created_at FROM webhook_outbox o
             WHERE o.channel = ?1 AND o.delivered_at IS NULL AND o.dead_at IS NULL
               AND o.next_attempt_at <= ?2
               AND o.id NOT IN (SELECT value FROM json_each(?4))
               AND NOT EXISTS (
                   SELECT 1 FROM webhook_outbox p
                   WHERE p.channel = o.channel AND p.ordering_key = o.ordering_key
                     AND p.delivered_at IS NULL AND p.dead_at IS NULL AND p.id < o.id)
             ORDER BY o.id LIMIT ?3",
        )?;
        let mut due = Vec::new();
        for channel in channels
            .iter()
            .filter(|c| !filter.except_channels.contains(c))
        {
            let rows = statement.query_map(
                params![channel, now_ms, filter.per_channel as i64, except_ids],
                |row| {
                    Ok(Due {
                        id: row.get(0)?,
                        channel: row.get(1)?,
                        payload: row.get(2)?,
                        attempts: row.get(3)?,
                        created_at: row.get(4)?,
                    })
                },
            )?;
            for row in rows {
                due.push(row?);
            }
        }
        due.sort_by_key(|d| d.id);
        due.truncate(filter.total.unwrap_or(usize::MAX));
        Ok(due)
    }

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

    pub fn dead_page(&self, after: i64, limit: usize) -> rusqlite::Result<Vec<Dead>> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT id, channel, ordering_key, payload, reason, attempts, created_at, died_at
             FROM webhook_dead WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = statement.query_map(params![after, limit as i64], |row| {
            Ok(Dead {
                id: row.get(0)?,
                channel: row.get(1)?,
                ordering_key: row.get(2)?,
                payload: dead_payload(row.get(3)?),
                reason: row.get(4)?,
                attempts: row.get(5)?,
                created_at: row.get(6)?,
                died_at: row.get(7)?,
            })
        })?;
        rows.collect()
    }

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

    pub fn prune_batch(&self, horizon: Horizon, batch: usize) -> rusqlite::Result<usize> {
        let batch = batch as i64;
        let step = |sql: &str, at: i64| -> rusqlite::Result<usize> {
            // Each in a transaction of its own: ingest waits for one small step at most.
            self.lock().prepare_cached(sql)?.execute(params![at, batch])
        };
        let finished = step(
            "DELETE FROM webhook_outbox WHERE id IN (
                 SELECT id FROM webhook_outbox
                 WHERE (delivered_at IS NOT NULL OR dead_at IS NOT NULL) AND created_at < ?1
                 LIMIT ?2)",
            horizon.finished_before_ms,
        )?;
        let events = step(
            "DELETE FROM webhook_events WHERE id IN (
                 SELECT e.id FROM webhook_events e WHERE e.received_at < ?1
                   AND NOT EXISTS (SELECT 1 FROM webhook_outbox o WHERE o.event_id = e.id)
                 LIMIT ?2)",
            horizon.finished_before_ms,
        )?;
        let dead = step(
            "DELETE FROM webhook_dead WHERE id IN (
                 SELECT id FROM webhook_dead WHERE died_at < ?1 LIMIT ?2)",
            horizon.dead_letters_before_ms,
        )?;
        let sessions = step(
            "DELETE FROM login_sessions WHERE token_hash IN (
                 SELECT token_hash FROM login_sessions WHERE expires_at <= ?1 LIMIT ?2)",
            horizon.now_ms,
        )?;
        Ok(finished.max(events).max(dead).max(sessions))
    }

    pub fn document(&self, kind: &str, key_hash: &str) -> rusqlite::Result<Option<Value>> {
        let body: Option<String> = self
            .lock()
            .query_row(
                "SELECT body FROM documents WHERE kind = ?1 AND key_hash = ?2",
                params![kind, key_hash],
                |row| row.get(0),
            )
            .optional()?;
        Ok(body.and_then(|b| serde_json::from_str(&b).ok()))
    }

    pub fn update_document(
        &self,
        kind: &str,
        key_hash: &str,
        change: DocumentChange,
    ) -> rusqlite::Result<Value> {
        let mut connection = self.lock();
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let body: Option<String> = tx
            .query_row(
                "SELECT body FROM documents WHERE kind = ?1 AND key_hash = ?2",
                params![kind, key_hash],
                |row| row.get(0),
            )
            .optional()?;
        let next = change(body.and_then(|b| serde_json::from_str(&b).ok()));
        tx.execute(
            "INSERT INTO documents (kind, key_hash, body, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (kind, key_hash) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
            params![kind, key_hash, next.to_string(), crate::clock::now_ms()],
        )?;
        tx.commit()?;
        Ok(next)
    }

    pub fn create_session(
        &self,
        token_hash: &str,
        user: &str,
        expires_ms: i64,
    ) -> rusqlite::Result<()> {
        self.lock().execute(
            "INSERT INTO login_sessions (token_hash, user_name, expires_at) VALUES (?1, ?2, ?3)",
            params![token_hash, user, expires_ms],
        )?;
        Ok(())
    }

    pub fn session_user(&self, token_hash: &str, now_ms: i64) -> rusqlite::Result<Option<String>> {
        self.lock()
            .query_row(
                "SELECT user_name FROM login_sessions WHERE token_hash = ?1 AND expires_at > ?2",
                params![token_hash, now_ms],
                |row| row.get(0),
            )
            .optional()
    }

    pub fn delete_session(&self, token_hash: &str) -> rusqlite::Result<bool> {
        let deleted = self.lock().execute(
            "DELETE FROM login_sessions WHERE token_hash = ?1",
            params![token_hash],
        )?;
        Ok(deleted > 0)
    }
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
