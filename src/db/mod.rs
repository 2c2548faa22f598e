//! Everything the proxy keeps: the webhook outbox (events, payloads, dedupe keys, dead letters,
//! counters), the webhook channels (stored legacy URLs), per-key documents (application
//! settings, media providers) and login sessions.
//!
//! Two backends with one schema: an embedded SQLite file (the default, one replica) and a
//! shared PostgreSQL (several replicas). Each applies its numbered migrations at start-up in
//! one transaction, so replicas starting together agree on the schema.

mod postgres;
mod sqlite;
pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

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
];

/// A channel stored whole (the flag-configured one: the operator's secret wins); placeholders
/// are `?N` (SQLite), made `$N` for PostgreSQL. Returns the stored secret.
const UPSERT_CHANNEL: &str = "INSERT INTO webhook_channels
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
const UPSERT_CHANNEL_KEEPING_SECRET: &str = "INSERT INTO webhook_channels
         (name, secret, legacy_url, headers, sent_status, api_key_hash, delivered_status,
          read_status)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
     ON CONFLICT (name) DO UPDATE SET legacy_url = excluded.legacy_url,
         headers = excluded.headers, sent_status = excluded.sent_status,
         api_key_hash = excluded.api_key_hash, delivered_status = excluded.delivered_status,
         read_status = excluded.read_status
     RETURNING secret";

/// The migrations with `{id}` filled in for a backend.
fn migrations(id_column: &str) -> impl Iterator<Item = (i64, String)> + '_ {
    MIGRATIONS
        .iter()
        .map(move |(version, sql)| (*version, sql.replace("{id}", id_column)))
}

/// Where the state lives: `sqlite:<path>` or `postgres://...` (`postgresql://` too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DatabaseUrl {
    /// The default when no `--database` is given: a SQLite file in the data directory.
    pub fn default_in(data_dir: &Path) -> DatabaseUrl {
        DatabaseUrl::Sqlite(data_dir.join("webhooks.sqlite3"))
    }

    pub fn parse(text: &str) -> Result<DatabaseUrl, String> {
        if let Some(path) = text.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err("sqlite: needs a file path, e.g. sqlite:./data/proxy.sqlite3".into());
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            if text.contains("sslmode=verify-") {
                return Err("sslmode=verify-ca/verify-full: use sslmode=require with \
                     --database-ca-file (the server is then verified, host name included)"
                    .into());
            }
            text.parse::<tokio_postgres::Config>()
                .map_err(|e| format!("not a usable PostgreSQL URL: {e}"))?;
            return Ok(DatabaseUrl::Postgres(text.to_owned()));
        }
        Err("must start with sqlite: or postgres://".into())
    }

    /// For logs: the backend and, for PostgreSQL, host and database without credentials.
    pub fn describe(&self) -> String {
        match self {
            DatabaseUrl::Sqlite(path) => format!("sqlite:{}", path.display()),
            DatabaseUrl::Postgres(url) => match url.parse::<tokio_postgres::Config>() {
                Ok(config) => {
                    let hosts: Vec<String> = config
                        .get_hosts()
                        .iter()
                        .map(|h| match h {
                            tokio_postgres::config::Host::Tcp(h) => h.clone(),
                            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                        })
                        .collect();
                    format!(
                        "postgres://{}/{}",
                        hosts.join(","),
                        config.get_dbname().unwrap_or("")
                    )
                }
                Err(_) => "postgres".to_owned(),
            },
        }
    }
}

// The drivers' own messages stop at the outermost layer ("db error", "error performing TLS
// handshake"); the reason an operator needs is further down the source chain.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("sqlite: {}", chain(.0))]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {}", postgres_text(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres: {}", chain(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("postgres: {}", chain(.0))]
    CreatePool(#[from] deadpool_postgres::CreatePoolError),
    #[error("{0}")]
    Other(String),
}

/// A PostgreSQL error for the log: the server's message and SQLSTATE only. Its DETAIL line can
/// quote the row it refused ("Failing row contains (...)"), secrets and headers included.
fn postgres_text(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => chain(error),
    }
}

/// An error and its causes, each said once.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// One payload to store for delivery: its body as sent to the receiver, the recipient whose
/// events must stay in order, and what identifies it across upstream re-sends. Storage's own
/// shape, so the database knows no translation type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPayload {
    pub body: String,
    pub ordering_key: String,
    pub dedupe_key: Option<String>,
}

/// Where inbound events for one legacy receiver come in and go out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub name: String,
    /// Expected in `X-Webhook-Secret` on every inbound post.
    pub secret: String,
    pub legacy_url: String,
    /// Extra headers the client asked for on deliveries.
    pub headers: Vec<(String, String)>,
    /// Which statuses the client wants relayed (On-Premise's `sent_status` and
    /// `webhooks.message.*`, already combined).
    pub sent_status: bool,
    pub delivered_status: bool,
    pub read_status: bool,
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
    pub payload: Value,
    pub reason: String,
    pub attempts: i64,
    pub created_at: i64,
    pub died_at: i64,
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

/// Who takes a round of due payloads, and until when nobody else may.
#[derive(Debug, Clone)]
pub struct Claim {
    /// This process (a fresh id per start).
    pub replica: String,
    /// Epoch milliseconds; a killed replica's payloads return to the pool after this.
    pub until_ms: i64,
}

/// The database handle the handlers and the relay share; cheap to clone.
#[derive(Clone)]
pub enum Database {
    Sqlite(Arc<sqlite::Sqlite>),
    Postgres(postgres::Postgres),
}

/// A change to one per-key document: given what is stored (if anything), what to store.
pub type DocumentChange = Box<dyn FnOnce(Option<Value>) -> Value + Send>;

impl Database {
    /// Opens (creating when needed) and migrates. `import_dir` is the data directory whose
    /// per-key JSON files (from before documents moved into the database) are imported once.
    pub async fn open(url: &DatabaseUrl, import_dir: Option<&Path>) -> Result<Database, DbError> {
        Database::open_with(url, import_dir, None).await
    }

    /// [`Database::open`], with the CA that must have signed a PostgreSQL server's certificate
    /// (see [`tls`]).
    pub async fn open_with(
        url: &DatabaseUrl,
        import_dir: Option<&Path>,
        ca_file: Option<&Path>,
    ) -> Result<Database, DbError> {
        match url {
            DatabaseUrl::Sqlite(path) => {
                let path = path.clone();
                let import_dir = import_dir.map(Path::to_path_buf);
                let sqlite = tokio::task::spawn_blocking(move || {
                    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                        std::fs::create_dir_all(parent)
                            .map_err(|e| DbError::Other(format!("{}: {e}", parent.display())))?;
                    }
                    let sqlite = sqlite::Sqlite::open(&path)?;
                    if let Some(dir) = import_dir {
                        sqlite.import_document_files(&dir)?;
                    }
                    Ok::<_, DbError>(sqlite)
                })
                .await
                .map_err(|e| DbError::Other(e.to_string()))??;
                Ok(Database::Sqlite(Arc::new(sqlite)))
            }
            DatabaseUrl::Postgres(url) => Ok(Database::Postgres(
                postgres::Postgres::open(url, tls::connector(ca_file)?, ca_file.is_some()).await?,
            )),
        }
    }

    /// Whether several replicas can share this database (claims with leases matter).
    pub fn is_shared(&self) -> bool {
        matches!(self, Database::Postgres(_))
    }

    /// Keeps the query planner's picture of the outbox current (PostgreSQL; SQLite's planner
    /// needs none).
    pub async fn refresh_statistics(&self) -> Result<(), DbError> {
        match self {
            Database::Sqlite(_) => Ok(()),
            Database::Postgres(db) => db.refresh_statistics().await,
        }
    }

    /// The highest migration applied.
    pub async fn schema_version(&self) -> Result<i64, DbError> {
        match self {
            Database::Sqlite(db) => blocking(db, |db| db.schema_version()).await,
            Database::Postgres(db) => db.schema_version().await,
        }
    }

    /// Whether a write transaction can start (disk, locks, connection usable).
    pub async fn writable(&self) -> Result<(), DbError> {
        match self {
            Database::Sqlite(db) => blocking(db, |db| db.writable()).await,
            Database::Postgres(db) => db.writable().await,
        }
    }

    /// Stores a channel; with `keep_secret` an already stored secret is kept. Returns the
    /// secret now stored.
    pub async fn upsert_channel(
        &self,
        channel: &Channel,
        keep_secret: bool,
    ) -> Result<String, DbError> {
        match self {
            Database::Sqlite(db) => {
                let channel = channel.clone();
                blocking(db, move |db| db.upsert_channel(&channel, keep_secret)).await
            }
            Database::Postgres(db) => db.upsert_channel(channel, keep_secret).await,
        }
    }

    pub async fn channel(&self, name: &str) -> Result<Option<Channel>, DbError> {
        match self {
            Database::Sqlite(db) => {
                let name = name.to_owned();
                blocking(db, move |db| db.channel(&name)).await
            }
            Database::Postgres(db) => db.channel(name).await,
        }
    }

    /// The statuses a channel relays: `sent`, `delivered`, `read`.
    pub async fn set_relayed_statuses(
        &self,
        name: &str,
        relayed: [bool; 3],
    ) -> Result<(), DbError> {
        match self {
            Database::Sqlite(db) => {
                let name = name.to_owned();
                blocking(db, move |db| db.set_relayed_statuses(&name, relayed)).await
            }
            Database::Postgres(db) => db.set_relayed_statuses(name, relayed).await,
        }
    }

    /// Stores one inbound event and its payloads in one transaction. Payloads whose dedupe key
    /// was already stored (an upstream re-send) are left out.
    pub async fn ingest(
        &self,
        channel: &str,
        raw: String,
        payloads: Vec<NewPayload>,
        skipped: usize,
        now_ms: i64,
    ) -> Result<Ingested, DbError> {
        match self {
            Database::Sqlite(db) => {
                let channel = channel.to_owned();
                blocking(db, move |db| {
                    db.ingest(&channel, &raw, &payloads, skipped, now_ms)
                })
                .await
            }
            Database::Postgres(db) => db.ingest(channel, &raw, &payloads, skipped, now_ms).await,
        }
    }

    /// An inbound post that is not a Cloud webhook: kept in the dead-letter table, never lost.
    pub async fn store_unreadable(
        &self,
        channel: &str,
        raw: String,
        reason: String,
        now_ms: i64,
    ) -> Result<(), DbError> {
        match self {
            Database::Sqlite(db) => {
                let channel = channel.to_owned();
                blocking(db, move |db| {
                    db.store_unreadable(&channel, &raw, &reason, now_ms)
                })
                .await
            }
            Database::Postgres(db) => db.store_unreadable(channel, &raw, &reason, now_ms).await,
        }
    }

    /// Due payloads, oldest first, at most one per (channel, recipient): a later event for a
    /// recipient waits until every earlier one is delivered or dead. On a shared database the
    /// payloads are claimed for `claim` (others skip them until it expires).
    pub async fn claim_due(
        &self,
        now_ms: i64,
        limit: usize,
        claim: &Claim,
    ) -> Result<Vec<Due>, DbError> {
        match self {
            // One process owns the file: nobody to claim against, and a restart must not wait
            // for its own earlier claims to expire.
            Database::Sqlite(db) => blocking(db, move |db| db.due(now_ms, limit)).await,
            Database::Postgres(db) => db.claim_due(now_ms, limit, claim).await,
        }
    }

    /// When the next deliverable payload becomes due: only the head of each recipient's queue
    /// counts (a later event waits for its head, however old it is itself).
    pub async fn next_due_at(&self) -> Result<Option<i64>, DbError> {
        match self {
            Database::Sqlite(db) => blocking(db, |db| db.next_due_at()).await,
            Database::Postgres(db) => db.next_due_at().await,
        }
    }

    /// Records one round of delivery outcomes in one transaction (and ends their claims), as
    /// `replica`, which claimed them.
    pub async fn record(
        &self,
        outcomes: Vec<Outcome>,
        now_ms: i64,
        replica: &str,
    ) -> Result<(), DbError> {
        match self {
            Database::Sqlite(db) => blocking(db, move |db| db.record(&outcomes, now_ms)).await,
            Database::Postgres(db) => db.record(&outcomes, now_ms, replica).await,
        }
    }

    /// Gives this replica's unfinished claims back (on shutdown), so others need not wait
    /// for them to expire.
    pub async fn release_claims(&self, replica: &str) -> Result<(), DbError> {
        match self {
            Database::Sqlite(_) => Ok(()),
            Database::Postgres(db) => db.release_claims(replica).await,
        }
    }

    pub async fn stats(&self, now_ms: i64) -> Result<Stats, DbError> {
        match self {
            Database::Sqlite(db) => blocking(db, move |db| db.stats(now_ms)).await,
            Database::Postgres(db) => db.stats(now_ms).await,
        }
    }

    pub async fn dead(&self, limit: usize) -> Result<Vec<Dead>, DbError> {
        match self {
            Database::Sqlite(db) => blocking(db, move |db| db.dead(limit)).await,
            Database::Postgres(db) => db.dead(limit).await,
        }
    }

    /// Puts a dead payload back in the outbox as a fresh event (a new retry period);
    /// false when there is no such dead payload (or it never was a payload).
    pub async fn replay(&self, dead_id: i64, now_ms: i64) -> Result<bool, DbError> {
        match self {
            Database::Sqlite(db) => blocking(db, move |db| db.replay(dead_id, now_ms)).await,
            Database::Postgres(db) => db.replay(dead_id, now_ms).await,
        }
    }

    /// Forgets delivered and dead payloads (and raw events) older than the retry period (until
    /// then they still deduplicate upstream re-sends), and expired login sessions.
    pub async fn prune(&self, before_ms: i64, now_ms: i64) -> Result<(), DbError> {
        match self {
            Database::Sqlite(db) => blocking(db, move |db| db.prune(before_ms, now_ms)).await,
            Database::Postgres(db) => db.prune(before_ms, now_ms).await,
        }
    }

    /// One per-key document (`kind` is e.g. "settings"; `key_hash` the SHA-256 of the key).
    pub async fn document(&self, kind: &str, key_hash: &str) -> Result<Option<Value>, DbError> {
        match self {
            Database::Sqlite(db) => {
                let (kind, key_hash) = (kind.to_owned(), key_hash.to_owned());
                blocking(db, move |db| db.document(&kind, &key_hash)).await
            }
            Database::Postgres(db) => db.document(kind, key_hash).await,
        }
    }

    /// Reads, changes and writes one document in one transaction; concurrent changes to the
    /// same document (from any replica) apply one after the other.
    pub async fn update_document(
        &self,
        kind: &str,
        key_hash: &str,
        change: DocumentChange,
    ) -> Result<Value, DbError> {
        match self {
            Database::Sqlite(db) => {
                let (kind, key_hash) = (kind.to_owned(), key_hash.to_owned());
                blocking(db, move |db| db.update_document(&kind, &key_hash, change)).await
            }
            Database::Postgres(db) => db.update_document(kind, key_hash, change).await,
        }
    }

    /// A login session: the token is stored only as its SHA-256, with the key map user it
    /// belongs to (the API key itself stays in the key map).
    pub async fn create_session(
        &self,
        token_hash: &str,
        user: &str,
        expires_ms: i64,
    ) -> Result<(), DbError> {
        match self {
            Database::Sqlite(db) => {
                let (token_hash, user) = (token_hash.to_owned(), user.to_owned());
                blocking(db, move |db| {
                    db.create_session(&token_hash, &user, expires_ms)
                })
                .await
            }
            Database::Postgres(db) => db.create_session(token_hash, user, expires_ms).await,
        }
    }

    /// The user of an unexpired session.
    pub async fn session_user(
        &self,
        token_hash: &str,
        now_ms: i64,
    ) -> Result<Option<String>, DbError> {
        match self {
            Database::Sqlite(db) => {
                let token_hash = token_hash.to_owned();
                blocking(db, move |db| db.session_user(&token_hash, now_ms)).await
            }
            Database::Postgres(db) => db.session_user(token_hash, now_ms).await,
        }
    }

    /// Ends a session; whether there was one.
    pub async fn delete_session(&self, token_hash: &str) -> Result<bool, DbError> {
        match self {
            Database::Sqlite(db) => {
                let token_hash = token_hash.to_owned();
                blocking(db, move |db| db.delete_session(&token_hash)).await
            }
            Database::Postgres(db) => db.delete_session(token_hash).await,
        }
    }
}

/// SQLite calls block on disk (fsync): they run on the blocking pool, not a runtime worker.
async fn blocking<T: Send + 'static>(
    db: &Arc<sqlite::Sqlite>,
    call: impl FnOnce(&sqlite::Sqlite) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, DbError> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || call(&db))
        .await
        .map_err(|e| DbError::Other(format!("database task failed: {e}")))?
        .map_err(DbError::from)
}

/// Headers as stored: a JSON array of [name, value] pairs.
fn headers_to_text(headers: &[(String, String)]) -> String {
    serde_json::to_string(headers).unwrap_or_else(|_| "[]".into())
}

fn headers_from_text(text: &str) -> Vec<(String, String)> {
    serde_json::from_str(text).unwrap_or_default()
}

/// A dead row's payload as shown by the admin route: JSON when it is JSON.
fn dead_payload(text: String) -> Value {
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}
