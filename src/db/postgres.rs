//! The shared backend: PostgreSQL behind a connection pool, for several replicas. Deliveries
//! are claimed with `FOR UPDATE SKIP LOCKED` plus a lease (`claimed_until`): two replicas never
//! take the same payload at once, and a killed replica's claims return to the pool when their
//! lease ends.

use std::time::Duration;

use deadpool_postgres::{ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::walk::{take_seen, wanted, ChannelWalk, Cursors, Limits, Visited};
use super::{
    dead_payload, headers_from_text, headers_to_text, migrations, Channel, Claim, DbError, Dead,
    DocumentChange, Due, DueFilter, Horizon, Inbound, Ingested, Outcome, Stats, UPSERT_CHANNEL,
    UPSERT_CHANNEL_KEEPING_SECRET,
};

/// Any lock id both our migrations and nobody else's use: replicas starting together migrate
/// one after the other.
const MIGRATION_LOCK: i64 = 0x7761_6261_5f6d_6967; // "waba_mig"

/// How long a request may wait for a pooled connection, or for a new one: a database that is
/// down gives a storage error, never a hang.
const POOL_WAIT: Duration = Duration::from_secs(5);
const POOL_SIZE: usize = 16;
/// Session settings of every connection:
/// - each statement is planned for its actual values: a generic plan for the claim query, made
///   while the outbox was small, can walk the whole pending index for every candidate;
/// - a replica killed mid-query must not leave its query running, holding row locks that stall
///   the other replicas' deliveries: the server checks every second that the client is there;
/// - no statement and no idle transaction outlives a few minutes, whatever happens.
const SESSION_SETTINGS: &str = "-c plan_cache_mode=force_custom_plan \
     -c client_connection_check_interval=1000 -c statement_timeout=300000 \
     -c idle_in_transaction_session_timeout=60000";

/// Statements a claim's walk may take (each looks at a bounded number of recipients per
/// channel): a claim stays short whatever the backlog, and the next one goes on from there.
const WALK_STATEMENTS: usize = 4;
/// Claim statements a claim may take: heads lost to another replica are made up for once.
const CLAIM_ROUNDS: usize = 2;

/// The claim's walk (a loose index scan): for each channel ($1) from its key ($2, inclusive)
/// up to its last ($5, inclusive, or none), one probe of `webhook_outbox_pending_order` per
/// recipient gives that recipient's head, and whether it may be taken now ($3: the time; $7:
/// ids this replica holds). `found` counts those, so the walk stops once it has as many as are
/// wanted ($6), or has looked at $4 recipients.
static WALK: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let head = |channel: &str, key: &str| {
        format!(
            "SELECT o.ordering_key, o.id,
                    o.next_attempt_at <= $3
                    AND (o.claimed_until IS NULL OR o.claimed_until < $3)
                    AND NOT (o.id = ANY($7::BIGINT[])) AS eligible
             FROM webhook_outbox o
             WHERE o.channel = {channel} AND o.ordering_key {key}
               AND o.delivered_at IS NULL AND o.dead_at IS NULL
             ORDER BY o.ordering_key, o.id LIMIT 1"
        )
    };
    format!(
        "WITH RECURSIVE walk (channel, until_key, ordering_key, id, eligible, step, found) AS (
             SELECT c.name, c.until_key, h.ordering_key, h.id, h.eligible, 1, h.eligible::INT
             FROM unnest($1::TEXT[], $2::TEXT[], $5::TEXT[]) AS c(name, from_key, until_key)
             CROSS JOIN LATERAL ({first}) h
             WHERE c.until_key IS NULL OR h.ordering_key <= c.until_key
           UNION ALL
             SELECT w.channel, w.until_key, h.ordering_key, h.id, h.eligible, w.step + 1,
                    w.found + h.eligible::INT
             FROM walk w
             CROSS JOIN LATERAL ({next}) h
             WHERE w.step < $4 AND w.found < $6
               AND (w.until_key IS NULL OR h.ordering_key <= w.until_key))
         SELECT channel, ordering_key, id, eligible, step, found FROM walk",
        first = head("c.name", ">= c.from_key"),
        next = head("w.channel", "> w.ordering_key"),
    )
});

#[derive(Clone)]
pub struct Postgres {
    pool: Pool,
    cursors: Cursors,
}

impl Postgres {
    pub async fn open(
        url: &str,
        tls: MakeRustlsConnect,
        verified_tls: bool,
    ) -> Result<Postgres, DbError> {
        let mut config: tokio_postgres::Config = url.parse()?;
        let options = match config.get_options() {
            Some(given) => format!("{given} {SESSION_SETTINGS}"),
            None => SESSION_SETTINGS.to_owned(),
        };
        config.options(&options);
        // A connection that died silently (failover, NAT drop) fails within seconds instead of
        // when TCP gives up retransmitting, minutes later.
        config
            .connect_timeout(POOL_WAIT)
            .tcp_user_timeout(POOL_WAIT * 2)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        if verified_tls {
            // A CA to verify against means TLS is wanted: no silent fallback to plaintext
            // (`prefer`) that anyone in the path could force.
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        let manager = deadpool_postgres::Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .recycle_timeout(Some(POOL_WAIT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| DbError::Other(format!("connection pool: {e}")))?;
        let postgres = Postgres {
            pool,
            cursors: Cursors::default(),
        };
        postgres.migrate().await?;
        Ok(postgres)
    }

    async fn migrate(&self) -> Result<(), DbError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await?;
        for (version, sql) in migrations("BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY") {
            let applied = tx
                .query_opt(
                    "SELECT version FROM schema_migrations WHERE version = $1",
                    &[&version],
                )
                .await?;
            if applied.is_none() {
                tx.batch_execute(&sql).await?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                    &[&version, &crate::clock::now_ms()],
                )
                .await?;
            }
        }
        // The outbox is a queue: rows are updated out of the pending indexes as fast as they
        // come in. Vacuumed and analysed every few thousand changes instead of every 20 % of
        // the table, claims do not wade through dead index entries, and the planner knows
        // the table's size from the start. Idempotent, so applied at every start.
        // Not fatal (PostgreSQL before 13 lacks the insert thresholds; a role that does not own
        // the table may not set them): a savepoint keeps the migration's transaction usable.
        tx.batch_execute("SAVEPOINT outbox_vacuum").await?;
        if let Err(error) = tx
            .batch_execute(
                "ALTER TABLE webhook_outbox SET (autovacuum_vacuum_scale_factor = 0,
                 autovacuum_vacuum_threshold = 5000, autovacuum_vacuum_insert_scale_factor = 0,
                 autovacuum_vacuum_insert_threshold = 5000, autovacuum_analyze_scale_factor = 0,
                 autovacuum_analyze_threshold = 5000, autovacuum_vacuum_cost_delay = 0)",
            )
            .await
        {
            tracing::warn!(error = %DbError::from(error), "outbox vacuum settings not applied");
            tx.batch_execute("ROLLBACK TO SAVEPOINT outbox_vacuum")
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    // Statements are prepared once per pooled connection (a plain query would parse and plan
    // on every call, one more round trip each).
    async fn one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, DbError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(sql).await?;
        Ok(client.query_one(&statement, params).await?)
    }

    async fn optional(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, DbError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(sql).await?;
        Ok(client.query_opt(&statement, params).await?)
    }

    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, DbError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(sql).await?;
        Ok(client.execute(&statement, params).await?)
    }

    /// Fresh planner statistics for the outbox, whose size swings from empty to a backlog
    /// faster than autovacuum looks at it.
    pub async fn refresh_statistics(&self) -> Result<(), DbError> {
        self.pool
            .get()
            .await?
            .batch_execute("ANALYZE webhook_outbox")
            .await?;
        Ok(())
    }

    pub async fn schema_version(&self) -> Result<i64, DbError> {
        let row = self
            .one(
                "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations",
                &[],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    pub async fn writable(&self) -> Result<(), DbError> {
        let read_only: String = self
            .one("SHOW transaction_read_only", &[])
            .await?
            .try_get(0)?;
        if read_only == "on" {
            return Err(DbError::Other(
                "connected to a read-only PostgreSQL (a standby?)".into(),
            ));
        }
        Ok(())
    }

    pub async fn upsert_channel(
        &self,
        channel: &Channel,
        keep_secret: bool,
    ) -> Result<String, DbError> {
        let sql = if keep_secret {
            UPSERT_CHANNEL_KEEPING_SECRET
        } else {
            UPSERT_CHANNEL
        };
        let row = self
            .one(
                &sql.replace("?", "$"),
                &[
                    &channel.name,
                    &channel.secret,
                    &channel.legacy_url,
                    &headers_to_text(&channel.headers),
                    &channel.sent_status,
                    &channel.api_key_hash,
                    &channel.delivered_status,
                    &channel.read_status,
                ],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    pub async fn channel(&self, name: &str) -> Result<Option<Channel>, DbError> {
        let Some(row) = self
            .optional(
                "SELECT name, secret, legacy_url, headers, sent_status, api_key_hash,
                        delivered_status, read_status
                 FROM webhook_channels WHERE name = $1",
                &[&name],
            )
            .await?
        else {
            return Ok(None);
        };
        let headers: String = row.try_get(3)?;
        Ok(Some(Channel {
            name: row.try_get(0)?,
            secret: row.try_get(1)?,
            legacy_url: row.try_get(2)?,
            headers: headers_from_text(&headers),
            sent_status: row.try_get(4)?,
            api_key_hash: row.try_get(5)?,
            delivered_status: row.try_get(6)?,
            read_status: row.try_get(7)?,
        }))
    }

    pub async fn set_relayed_statuses(
        &self,
        name: &str,
        relayed: [bool; 3],
    ) -> Result<(), DbError> {
        let [sent, delivered, read] = relayed;
        self.execute(
            "UPDATE webhook_channels SET sent_status = $2, delivered_status = $3, read_status = $4
             WHERE name = $1",
            &[&name, &sent, &delivered, &read],
        )
        .await?;
        Ok(())
    }

    /// One transaction for the whole batch, a handful of statements whatever its size: the
    /// recipients' locks, the ids, then each table's rows as arrays, the counters, the commit.
    pub async fn ingest_batch(
        &self,
        posts: &[Inbound],
        now_ms: i64,
    ) -> Result<Vec<Ingested>, DbError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Ids are handed out at insert, rows become visible at commit: two ingests of one
        // recipient on two connections could commit out of id order, and a delivery round in
        // between would take the later event as the head. One ingest per recipient at a time
        // (until commit) keeps id order and commit order the same. Sorted: no deadlocks.
        let mut recipients: Vec<String> = posts
            .iter()
            .flat_map(|post| match post {
                Inbound::Event {
                    channel, payloads, ..
                } => payloads
                    .iter()
                    .map(|p| format!("{channel}:{}", p.ordering_key))
                    .collect(),
                Inbound::Unreadable { .. } => Vec::new(),
            })
            .collect();
        recipients.sort();
        recipients.dedup();
        if !recipients.is_empty() {
            let lock = tx
                .prepare_cached(
                    "SELECT pg_advisory_xact_lock(hashtextextended(r, 1))
                     FROM (SELECT r FROM unnest($1::text[]) r ORDER BY r) sorted",
                )
                .await?;
            tx.execute(&lock, &[&recipients]).await?;
        }
        // Whole arrays, one statement per table: the server's work per event stays small. Ids
        // are taken first, in order, so payloads keep arrival order and their event.
        let events: Vec<(usize, &String, &String)> = posts
            .iter()
            .enumerate()
            .filter_map(|(index, post)| match post {
                Inbound::Event { channel, raw, .. } => Some((index, channel, raw)),
                Inbound::Unreadable { .. } => None,
            })
            .collect();
        let event_ids = next_ids(&tx, "webhook_events", events.len()).await?;
        if !events.is_empty() {
            let channels: Vec<&String> = events.iter().map(|e| e.1).collect();
            let bodies: Vec<&String> = events.iter().map(|e| e.2).collect();
            let insert = tx
                .prepare_cached(
                    "INSERT INTO webhook_events (id, channel, received_at, body) OVERRIDING SYSTEM VALUE
                     SELECT i, c, $3, b FROM unnest($1::BIGINT[], $2::TEXT[], $4::TEXT[]) AS t(i, c, b)",
                )
                .await?;
            tx.execute(&insert, &[&event_ids, &channels, &now_ms, &bodies])
                .await?;
        }
        let (mut unreadable_channels, mut unreadable_bodies, mut reasons) =
            (Vec::new(), Vec::new(), Vec::new());
        for post in posts {
            if let Inbound::Unreadable {
                channel,
                raw,
                reason,
            } = post
            {
                unreadable_channels.push(channel);
                unreadable_bodies.push(Value::String(raw.clone()).to_string());
                reasons.push(reason);
            }
        }
        if !unreadable_channels.is_empty() {
            let insert = tx
                .prepare_cached(
                    "INSERT INTO webhook_dead (outbox_id, channel, ordering_key, payload, reason, attempts, created_at, died_at)
                     SELECT NULL, c, '', p, r, 0, $4, $4 FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[]) AS t(c, p, r)",
                )
                .await?;
            tx.execute(
                &insert,
                &[&unreadable_channels, &unreadable_bodies, &reasons, &now_ms],
            )
            .await?;
        }
        // (post index, payload) in order, with each payload's event.
        let mut rows = Vec::new();
        for ((index, _, _), event_id) in events.iter().zip(&event_ids) {
            if let Inbound::Event {
                channel, payloads, ..
            } = &posts[*index]
            {
                for payload in payloads {
                    rows.push((*index, *event_id, channel, payload));
                }
            }
        }
        let ids = next_ids(&tx, "webhook_outbox", rows.len()).await?;
        let mut inserted = std::collections::HashSet::new();
        if !rows.is_empty() {
            let event_of: Vec<i64> = rows.iter().map(|r| r.1).collect();
            let channels: Vec<&String> = rows.iter().map(|r| r.2).collect();
            let keys: Vec<&String> = rows.iter().map(|r| &r.3.ordering_key).collect();
            let dedupe: Vec<Option<&String>> =
                rows.iter().map(|r| r.3.dedupe_key.as_ref()).collect();
            let bodies: Vec<&String> = rows.iter().map(|r| &r.3.body).collect();
            // In id order, so of two payloads with one dedupe key in a batch the first stays.
            let insert = tx
                .prepare_cached(
                    "INSERT INTO webhook_outbox
                         (id, event_id, channel, ordering_key, dedupe_key, payload, created_at, next_attempt_at)
                     OVERRIDING SYSTEM VALUE
                     SELECT i, e, c, k, d, p, $7, $7
                     FROM unnest($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[])
                         AS t(i, e, c, k, d, p)
                     ORDER BY i
                     ON CONFLICT (channel, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING
                     RETURNING id",
                )
                .await?;
            for row in tx
                .query(
                    &insert,
                    &[&ids, &event_of, &channels, &keys, &dedupe, &bodies, &now_ms],
                )
                .await?
            {
                inserted.insert(row.try_get::<_, i64>(0)?);
            }
        }
        let mut results = vec![Ingested::default(); posts.len()];
        for ((index, ..), id) in rows.iter().zip(&ids) {
            if inserted.contains(id) {
                results[*index].stored += 1;
            } else {
                results[*index].duplicates += 1;
            }
        }
        let skipped: usize = posts
            .iter()
            .map(|post| match post {
                Inbound::Event { skipped, .. } => *skipped,
                Inbound::Unreadable { .. } => 0,
            })
            .sum();
        let duplicates: usize = results.iter().map(|r| r.duplicates).sum();
        bump(&tx, "skipped_changes", skipped as i64).await?;
        bump(&tx, "duplicates", duplicates as i64).await?;
        tx.commit().await?;
        Ok(results)
    }

    /// The heads of the recipients' queues that are due and not claimed by a live lease, at
    /// most `per_channel` of each channel the filter does not skip, claimed with a lease.
    ///
    /// Finding them is a loose index scan over `webhook_outbox_pending_order` (channel,
    /// recipient, id): one probe per recipient gives that recipient's head, whatever its queue
    /// length. A scan in id order instead walks past every payload that waits behind its head:
    /// with a backlog of 66,000 events behind 1,000 recipients it took 145 ms a claim and most of
    /// the server's CPU. Each channel's walk starts where its last one stopped and wraps around,
    /// so every recipient gets its turn (round robin over recipients, in place of oldest first).
    ///
    /// The claim itself locks the heads found (`SKIP LOCKED`: another replica's in-flight claim
    /// is passed over, not waited for) and re-checks them, so two replicas never take one
    /// payload. A recipient's later payload is never found while its head is pending: ingest
    /// commits each recipient's payloads in id order (see `ingest_batch`).
    pub async fn claim_heads(
        &self,
        now_ms: i64,
        filter: &DueFilter,
        claim: &Claim,
    ) -> Result<Vec<Due>, DbError> {
        let client = self.pool.get().await?;
        let names = client.prepare_cached(super::schema::CHANNELS).await?;
        let mut walks: Vec<ChannelWalk> = client
            .query(&names, &[])
            .await?
            .iter()
            .map(|row| row.try_get::<_, String>(0))
            .collect::<Result<Vec<String>, _>>()?
            .into_iter()
            .filter(|name| !filter.except_channels.contains(name))
            .map(|name| {
                let cursor = self.cursors.get(&name);
                ChannelWalk::new(name, cursor)
            })
            .collect();
        let quota = filter.per_channel.max(1);
        // Recipients looked at per channel and statement at most (it stops sooner once it has
        // found what is wanted): bounded so one statement stays short.
        let steps: i32 = 1_024;
        let walk = client.prepare_cached(&WALK).await?;
        let statement = client
            .prepare_cached(
                // Pending is spelled `COALESCE(..) IS NULL` so that no partial index qualifies:
                // under a fast-growing backlog the statistics lag, and the planner then took
                // `webhook_outbox_pending_due` as "a few rows" and read the whole backlog
                // (30 ms a claim) instead of a primary-key probe per id.
                "WITH heads AS (
                     SELECT o.id FROM webhook_outbox o
                     WHERE o.id = ANY($1::BIGINT[])
                       AND COALESCE(o.delivered_at, o.dead_at) IS NULL AND o.next_attempt_at <= $2
                       AND (o.claimed_until IS NULL OR o.claimed_until < $2)
                     FOR UPDATE OF o SKIP LOCKED)
                 UPDATE webhook_outbox w SET claimed_by = $3, claimed_until = $4
                 FROM heads WHERE w.id = heads.id
                 RETURNING w.id, w.channel, w.payload, w.attempts, w.created_at",
            )
            .await?;
        // Channels take turns at being walked first: the budget may run out before the last.
        if !walks.is_empty() {
            let turn = self.cursors.next_turn() % walks.len();
            walks.rotate_left(turn);
        }
        let mut budget = filter.total.unwrap_or(usize::MAX);
        let mut due = Vec::new();
        // Heads picked by the walk may be claimed by another replica before this claim locks
        // them (it walks in a snapshot of its own): the walk then goes on for as many.
        for _ in 0..CLAIM_ROUNDS {
            for _ in 0..WALK_STATEMENTS {
                let open: Vec<&ChannelWalk> = walks.iter().filter(|w| !w.done).collect();
                if open.is_empty() {
                    break;
                }
                let channels: Vec<&str> = open.iter().map(|w| w.channel.as_str()).collect();
                let from: Vec<&str> = open.iter().map(|w| w.from.as_str()).collect();
                let until: Vec<Option<&str>> = open.iter().map(|w| w.until.as_deref()).collect();
                let wanted = wanted(&open, quota, budget);
                let rows = client
                    .query(
                        &walk,
                        &[
                            &channels,
                            &from,
                            &now_ms,
                            &steps,
                            &until,
                            &wanted,
                            &filter.except_ids,
                        ],
                    )
                    .await?
                    .iter()
                    .map(|row| {
                        Ok(Visited {
                            channel: row.try_get(0)?,
                            ordering_key: row.try_get(1)?,
                            id: row.try_get(2)?,
                            eligible: row.try_get(3)?,
                            step: row.try_get(4)?,
                            found: row.try_get(5)?,
                        })
                    })
                    .collect::<Result<Vec<Visited>, tokio_postgres::Error>>()?;
                let limits = Limits {
                    steps,
                    wanted,
                    quota,
                };
                take_seen(&mut walks, rows, limits, &mut budget, &filter.except_ids);
            }
            let picked: Vec<i64> = walks.iter().flat_map(|w| w.picks().to_vec()).collect();
            if picked.is_empty() {
                break;
            }
            let rows = client
                .query(
                    &statement,
                    &[&picked, &now_ms, &claim.replica, &claim.until_ms],
                )
                .await?;
            let before = due.len();
            for row in &rows {
                due.push(Due {
                    id: row.try_get(0)?,
                    channel: row.try_get(1)?,
                    payload: row.try_get(2)?,
                    attempts: row.try_get(3)?,
                    created_at: row.try_get(4)?,
                });
            }
            let claimed: std::collections::HashSet<i64> =
                due[before..].iter().map(|d| d.id).collect();
            let lost: usize = walks.iter_mut().map(|w| w.settle(&claimed)).sum();
            if lost == 0 {
                break;
            }
            budget = budget.saturating_add(lost);
        }
        for channel in &walks {
            self.cursors.set(&channel.channel, channel.cursor());
        }
        // RETURNING has no order of its own.
        due.sort_by_key(|d| d.id);
        Ok(due)
    }

    /// One statement per kind of outcome, whatever the size of the round. A retry or a death
    /// is recorded only while `replica` still holds the claim: after its lease ran out another
    /// replica may be delivering the payload, and must not lose its claim (or see the payload
    /// dead-lettered under it).
    pub async fn record(
        &self,
        outcomes: &[Outcome],
        now_ms: i64,
        replica: &str,
    ) -> Result<(), DbError> {
        // Pending is spelled `COALESCE(..) IS NULL` in these statements for the reason given
        // in `claim_heads`: each row is found by its primary key, whatever the statistics say.
        let mut delivered_ids = Vec::new();
        let (mut retry_ids, mut retry_at, mut retry_errors) = (Vec::new(), Vec::new(), Vec::new());
        let (mut dead_ids, mut dead_errors) = (Vec::new(), Vec::new());
        for outcome in outcomes {
            match outcome {
                Outcome::Delivered { id } => delivered_ids.push(*id),
                Outcome::Retry {
                    id,
                    next_attempt_at,
                    error,
                } => {
                    retry_ids.push(*id);
                    retry_at.push(*next_attempt_at);
                    retry_errors.push(error.as_str());
                }
                Outcome::Dead { id, error } => {
                    dead_ids.push(*id);
                    dead_errors.push(error.as_str());
                }
            }
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let mut delivered = 0;
        if !delivered_ids.is_empty() {
            // Counted once even when a lease ran out and two replicas delivered it.
            let statement = tx
                .prepare_cached(
                    "UPDATE webhook_outbox SET delivered_at = $2, attempts = attempts + 1,
                         claimed_by = NULL, claimed_until = NULL
                     WHERE id = ANY($1) AND COALESCE(delivered_at, dead_at) IS NULL",
                )
                .await?;
            delivered = tx.execute(&statement, &[&delivered_ids, &now_ms]).await? as i64;
        }
        if !retry_ids.is_empty() {
            let statement = tx
                .prepare_cached(
                    "UPDATE webhook_outbox o SET attempts = o.attempts + 1, next_attempt_at = r.next_at,
                         last_error = r.error, claimed_by = NULL, claimed_until = NULL
                     FROM unnest($1::BIGINT[], $2::BIGINT[], $3::TEXT[]) AS r(id, next_at, error)
                     WHERE o.id = r.id AND COALESCE(o.delivered_at, o.dead_at) IS NULL
                       AND (o.claimed_by = $4 OR o.claimed_by IS NULL)",
                )
                .await?;
            tx.execute(
                &statement,
                &[&retry_ids, &retry_at, &retry_errors, &replica],
            )
            .await?;
        }
        if !dead_ids.is_empty() {
            let copy = tx
                .prepare_cached(
                    "INSERT INTO webhook_dead (outbox_id, channel, ordering_key, payload, reason, attempts, created_at, died_at)
                     SELECT o.id, o.channel, o.ordering_key, o.payload, r.error, o.attempts + 1, o.created_at, $3
                     FROM webhook_outbox o JOIN unnest($1::BIGINT[], $2::TEXT[]) AS r(id, error) ON o.id = r.id
                     WHERE COALESCE(o.delivered_at, o.dead_at) IS NULL
                       AND (o.claimed_by = $4 OR o.claimed_by IS NULL)",
                )
                .await?;
            tx.execute(&copy, &[&dead_ids, &dead_errors, &now_ms, &replica])
                .await?;
            let mark = tx
                .prepare_cached(
                    "UPDATE webhook_outbox o SET dead_at = $3, attempts = o.attempts + 1, last_error = r.error,
                         claimed_by = NULL, claimed_until = NULL
                     FROM unnest($1::BIGINT[], $2::TEXT[]) AS r(id, error)
                     WHERE o.id = r.id AND COALESCE(o.delivered_at, o.dead_at) IS NULL
                       AND (o.claimed_by = $4 OR o.claimed_by IS NULL)",
                )
                .await?;
            tx.execute(&mark, &[&dead_ids, &dead_errors, &now_ms, &replica])
                .await?;
        }
        bump(&tx, "delivered", delivered).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn release(&self, ids: &[i64], replica: &str) -> Result<(), DbError> {
        self.execute(
            "UPDATE webhook_outbox SET claimed_by = NULL, claimed_until = NULL
             WHERE id = ANY($1::BIGINT[]) AND claimed_by = $2",
            &[&ids, &replica],
        )
        .await?;
        Ok(())
    }

    pub async fn release_claims(&self, replica: &str) -> Result<(), DbError> {
        self.execute(
            "UPDATE webhook_outbox SET claimed_by = NULL, claimed_until = NULL
             WHERE claimed_by = $1 AND delivered_at IS NULL AND dead_at IS NULL",
            &[&replica],
        )
        .await?;
        Ok(())
    }

    pub async fn stats(&self, now_ms: i64) -> Result<Stats, DbError> {
        let row = self
            .one(
                "SELECT
                     (SELECT COUNT(*) FROM webhook_outbox WHERE delivered_at IS NULL AND dead_at IS NULL),
                     (SELECT MIN(created_at) FROM webhook_outbox WHERE delivered_at IS NULL AND dead_at IS NULL),
                     (SELECT COUNT(*) FROM webhook_dead),
                     (SELECT COALESCE(MAX(value), 0) FROM webhook_counters WHERE name = 'delivered'),
                     (SELECT COALESCE(MAX(value), 0) FROM webhook_counters WHERE name = 'skipped_changes'),
                     (SELECT COALESCE(MAX(value), 0) FROM webhook_counters WHERE name = 'duplicates')",
                &[],
            )
            .await?;
        let oldest: Option<i64> = row.try_get(1)?;
        Ok(Stats {
            pending: row.try_get(0)?,
            dead: row.try_get(2)?,
            oldest_pending_age_ms: oldest.map(|o| now_ms - o),
            delivered: row.try_get(3)?,
            skipped_changes: row.try_get(4)?,
            duplicates: row.try_get(5)?,
        })
    }

    pub async fn dead_page(&self, after: i64, limit: usize) -> Result<Vec<Dead>, DbError> {
        let rows = self
            .pool
            .get()
            .await?
            .query(
                "SELECT id, channel, ordering_key, payload, reason, attempts, created_at, died_at
                 FROM webhook_dead WHERE id > $1 ORDER BY id LIMIT $2",
                &[&after, &(limit as i64)],
            )
            .await?;
        let dead = rows
            .iter()
            .map(|row| {
                Ok(Dead {
                    id: row.try_get(0)?,
                    channel: row.try_get(1)?,
                    ordering_key: row.try_get(2)?,
                    payload: dead_payload(row.try_get(3)?),
                    reason: row.try_get(4)?,
                    attempts: row.try_get(5)?,
                    created_at: row.try_get(6)?,
                    died_at: row.try_get(7)?,
                })
            })
            .collect::<Result<Vec<Dead>, tokio_postgres::Error>>()?;
        Ok(dead)
    }

    pub async fn replay(&self, dead_id: i64, now_ms: i64) -> Result<bool, DbError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Deleted first: two replicas replaying the same dead letter at once replay it once.
        let Some(row) = tx
            .query_opt(
                "DELETE FROM webhook_dead WHERE id = $1 AND outbox_id IS NOT NULL
                 RETURNING channel, ordering_key, payload, outbox_id",
                &[&dead_id],
            )
            .await?
        else {
            return Ok(false);
        };
        let (channel, ordering_key, payload, outbox_id): (String, String, String, i64) = (
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
        );
        // The recipient's lock, as ingest takes it: the new row's id and its commit must not
        // interleave with an ingest of the same recipient (see `ingest_batch`).
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 1))",
            &[&format!("{channel}:{ordering_key}")],
        )
        .await?;
        // From the dead row itself: the outbox row may already be pruned.
        tx.execute(
            "INSERT INTO webhook_outbox (event_id, channel, ordering_key, dedupe_key, payload, created_at, next_attempt_at)
             VALUES (COALESCE((SELECT event_id FROM webhook_outbox WHERE id = $1), 0), $2, $3, NULL, $4, $5, $5)",
            &[&outbox_id, &channel, &ordering_key, &payload, &now_ms],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn prune_batch(&self, horizon: Horizon, batch: usize) -> Result<usize, DbError> {
        let client = self.pool.get().await?;
        let batch = batch as i64;
        // Each statement is a transaction of its own: ingest waits for one small step at most.
        let mut most = 0;
        for (sql, at) in [
            (
                "DELETE FROM webhook_outbox WHERE id IN (
                     SELECT id FROM webhook_outbox
                     WHERE (delivered_at IS NOT NULL OR dead_at IS NOT NULL) AND created_at < $1
                     LIMIT $2)",
                horizon.finished_before_ms,
            ),
            (
                "DELETE FROM webhook_events WHERE id IN (
                     SELECT e.id FROM webhook_events e WHERE e.received_at < $1
                       AND NOT EXISTS (SELECT 1 FROM webhook_outbox o WHERE o.event_id = e.id)
                     LIMIT $2)",
                horizon.finished_before_ms,
            ),
            (
                "DELETE FROM webhook_dead WHERE id IN (
                     SELECT id FROM webhook_dead WHERE died_at < $1 LIMIT $2)",
                horizon.dead_letters_before_ms,
            ),
            (
                "DELETE FROM login_sessions WHERE token_hash IN (
                     SELECT token_hash FROM login_sessions WHERE expires_at <= $1 LIMIT $2)",
                horizon.now_ms,
            ),
        ] {
            let removed = client.execute(sql, &[&at, &batch]).await?;
            most = most.max(removed as usize);
        }
        Ok(most)
    }

    pub async fn document(&self, kind: &str, key_hash: &str) -> Result<Option<Value>, DbError> {
        let row = self
            .optional(
                "SELECT body FROM documents WHERE kind = $1 AND key_hash = $2",
                &[&kind, &key_hash],
            )
            .await?;
        Ok(match row {
            Some(row) => serde_json::from_str(&row.try_get::<_, String>(0)?).ok(),
            None => None,
        })
    }

    pub async fn update_document(
        &self,
        kind: &str,
        key_hash: &str,
        change: DocumentChange,
    ) -> Result<Value, DbError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // A row lock cannot cover a document that does not exist yet; this lock does.
        let lock_name = format!("documents:{kind}:{key_hash}");
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&lock_name],
        )
        .await?;
        let current = tx
            .query_opt(
                "SELECT body FROM documents WHERE kind = $1 AND key_hash = $2",
                &[&kind, &key_hash],
            )
            .await?;
        let current = match current {
            Some(row) => serde_json::from_str(&row.try_get::<_, String>(0)?).ok(),
            None => None,
        };
        let next = change(current);
        tx.execute(
            "INSERT INTO documents (kind, key_hash, body, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (kind, key_hash) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
            &[&kind, &key_hash, &next.to_string(), &crate::clock::now_ms()],
        )
        .await?;
        tx.commit().await?;
        Ok(next)
    }

    pub async fn create_session(
        &self,
        token_hash: &str,
        user: &str,
        expires_ms: i64,
    ) -> Result<(), DbError> {
        self.execute(
            "INSERT INTO login_sessions (token_hash, user_name, expires_at) VALUES ($1, $2, $3)",
            &[&token_hash, &user, &expires_ms],
        )
        .await?;
        Ok(())
    }

    pub async fn session_user(
        &self,
        token_hash: &str,
        now_ms: i64,
    ) -> Result<Option<String>, DbError> {
        let row = self
            .optional(
                "SELECT user_name FROM login_sessions WHERE token_hash = $1 AND expires_at > $2",
                &[&token_hash, &now_ms],
            )
            .await?;
        Ok(match row {
            Some(row) => Some(row.try_get(0)?),
            None => None,
        })
    }

    pub async fn delete_session(&self, token_hash: &str) -> Result<bool, DbError> {
        let deleted = self
            .execute(
                "DELETE FROM login_sessions WHERE token_hash = $1",
                &[&token_hash],
            )
            .await?;
        Ok(deleted > 0)
    }
}

/// `count` fresh ids of `table`'s identity column, ascending.
async fn next_ids(
    tx: &deadpool_postgres::Transaction<'_>,
    table: &str,
    count: usize,
) -> Result<Vec<i64>, DbError> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let statement = tx
        .prepare_cached(
            "SELECT nextval(pg_get_serial_sequence($1, 'id')) FROM generate_series(1::BIGINT, $2::BIGINT)",
        )
        .await?;
    let mut ids = tx
        .query(&statement, &[&table, &(count as i64)])
        .await?
        .iter()
        .map(|row| row.try_get::<_, i64>(0))
        .collect::<Result<Vec<i64>, _>>()?;
    ids.sort_unstable();
    Ok(ids)
}

async fn bump(tx: &deadpool_postgres::Transaction<'_>, name: &str, by: i64) -> Result<(), DbError> {
    if by == 0 {
        return Ok(());
    }
    let statement = tx
        .prepare_cached(
            "INSERT INTO webhook_counters (name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET value = webhook_counters.value + excluded.value",
        )
        .await?;
    tx.execute(&statement, &[&name, &by]).await?;
    Ok(())
}
