//! The schema of both backends, as numbered migrations, and the statements both share.

/// The schema of both backends, as numbered migrations applied in order, each once; `{id}` is
/// the backend's auto-numbered key column. Version 1 is the schema from before versioning
/// (hence `IF NOT EXISTS`: SQLite files created then already have it).
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "
CREATE TABLE IF NOT EXISTS webhook_channels (
    name TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    legacy_url TEXT NOT NULL,
    headers TEXT NOT NULL,
    sent_status BOOLEAN NOT NULL,
    api_key_hash TEXT
);
CREATE TABLE IF NOT EXISTS webhook_events (
    id {id},
    channel TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id {id},
    event_id BIGINT NOT NULL,
    channel TEXT NOT NULL,
    ordering_key TEXT NOT NULL,
    dedupe_key TEXT,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
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
    id {id},
    outbox_id BIGINT,
    channel TEXT NOT NULL,
    ordering_key TEXT NOT NULL,
    payload TEXT NOT NULL,
    reason TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    died_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
",
    ),
    (
        2,
        "
ALTER TABLE webhook_outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE webhook_outbox ADD COLUMN claimed_until BIGINT;
CREATE TABLE documents (
    kind TEXT NOT NULL,
    key_hash TEXT NOT NULL,
    body TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (kind, key_hash)
);
CREATE TABLE login_sessions (
    token_hash TEXT PRIMARY KEY,
    user_name TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
",
    ),
    // Delivery rounds take the oldest pending payloads: without this index they walk past every
    // delivered row first (half a second per round at 100,000 events).
    (
        3,
        "
CREATE INDEX webhook_outbox_pending_id
    ON webhook_outbox (id) WHERE delivered_at IS NULL AND dead_at IS NULL;
",
    ),
    // On-Premise 2.41.2's `webhooks.message.{delivered,read}` filter statuses per channel, like
    // `sent_status` does for `sent`; existing channels keep receiving everything.
    (
        4,
        "
ALTER TABLE webhook_channels ADD COLUMN delivered_status BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE webhook_channels ADD COLUMN read_status BOOLEAN NOT NULL DEFAULT TRUE;
",
    ),
    // Delivery takes each channel's due heads on their own, so a channel with a large backlog
    // (a dead receiver) is not walked through to find another channel's payloads. The
    // `next_attempt_at IS NOT NULL` (always true) keeps the index to the queries that name
    // `next_attempt_at`: the "is there an earlier event of this recipient" check must use
    // `webhook_outbox_pending_order`, and PostgreSQL picked this one for it while its
    // statistics were stale (400 ms a claim at 40,000 pending).
    (
        5,
        "
CREATE INDEX webhook_outbox_pending_channel
    ON webhook_outbox (channel, id)
    WHERE delivered_at IS NULL AND dead_at IS NULL AND next_attempt_at IS NOT NULL;
",
    ),
];

/// A channel stored whole (the flag-configured one: the operator's secret wins); placeholders
/// are `?N` (SQLite), made `$N` for PostgreSQL. Returns the stored secret.
pub(super) const UPSERT_CHANNEL: &str = "INSERT INTO webhook_channels
         (name, secret, legacy_url, headers, sent_status, api_key_hash, delivered_status,
          read_status)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
     ON CONFLICT (name) DO UPDATE SET secret = excluded.secret, legacy_url = excluded.legacy_url,
         headers = excluded.headers, sent_status = excluded.sent_status,
         api_key_hash = excluded.api_key_hash, delivered_status = excluded.delivered_status,
         read_status = excluded.read_status
     RETURNING secret";

/// A channel whose secret, once stored, stays: two replicas registering the same key at once
/// both get (and register upstream) the first one's secret.
pub(super) const UPSERT_CHANNEL_KEEPING_SECRET: &str = "INSERT INTO webhook_channels
         (name, secret, legacy_url, headers, sent_status, api_key_hash, delivered_status,
          read_status)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
     ON CONFLICT (name) DO UPDATE SET legacy_url = excluded.legacy_url,
         headers = excluded.headers, sent_status = excluded.sent_status,
         api_key_hash = excluded.api_key_hash, delivered_status = excluded.delivered_status,
         read_status = excluded.read_status
     RETURNING secret";

/// The channels SQLite's per-channel fetch looks at. Every stored payload's channel has a row:
/// ingest needs it, and channels are never deleted. (Finding channels from the outbox itself
/// walks index entries of delivered rows; PostgreSQL, which keeps them until vacuum, claims in
/// one id-order scan instead.)
pub(super) const CHANNELS: &str = "SELECT name FROM webhook_channels";

/// The migrations with `{id}` filled in for a backend.
pub(super) fn migrations(id_column: &str) -> impl Iterator<Item = (i64, String)> + '_ {
    MIGRATIONS
        .iter()
        .map(move |(version, sql)| (*version, sql.replace("{id}", id_column)))
}
