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

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

mod error;
mod model;
mod schema;
mod url;
mod walk;

pub use error::DbError;
pub use model::{
    Channel, Claim, Dead, Due, DueFilter, Inbound, Ingested, NewPayload, Outcome, Stats,
};
pub use url::DatabaseUrl;

use model::{dead_payload, headers_from_text, headers_to_text};
use schema::{migrations, CHANNELS, UPSERT_CHANNEL, UPSERT_CHANNEL_KEEPING_SECRET};

/// What cleanup may remove.
#[derive(Debug, Clone, Copy)]
pub struct Horizon {
    /// Delivered and dead outbox rows (and their raw events) created before this.
    pub finished_before_ms: i64,
    /// Dead letters that died before this.
    pub dead_letters_before_ms: i64,
    /// Login sessions that expired before this.
    pub now_ms: i64,
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

    /// Stores inbound posts, in order, in one transaction: all of them or none. For each post,
    /// what was stored; payloads whose dedupe key was already stored (an upstream re-send, also
    /// one earlier in the same batch) are left out.
    pub async fn ingest_batch(
        &self,
        posts: Vec<Inbound>,
        now_ms: i64,
    ) -> Result<Vec<Ingested>, DbError> {
        match self {
            Database::Sqlite(db) => blocking(db, move |db| db.ingest_batch(&posts, now_ms)).await,
            Database::Postgres(db) => db.ingest_batch(&posts, now_ms).await,
        }
    }

    /// Stores one inbound event and its payloads in one transaction (a batch of one).
    pub async fn ingest(
        &self,
        channel: &str,
        raw: String,
        payloads: Vec<NewPayload>,
        skipped: usize,
        now_ms: i64,
    ) -> Result<Ingested, DbError> {
        let post = Inbound::Event {
            channel: channel.to_owned(),
            raw,
            payloads,
            skipped,
        };
        let mut stored = self.ingest_batch(vec![post], now_ms).await?;
        Ok(stored.pop().unwrap_or_default())
    }

    /// An inbound post that is not a Cloud webhook: kept in the dead-letter table, never lost.
    pub async fn store_unreadable(
        &self,
        channel: &str,
        raw: String,
        reason: String,
        now_ms: i64,
    ) -> Result<(), DbError> {
        let post = Inbound::Unreadable {
            channel: channel.to_owned(),
            raw,
            reason,
        };
        self.ingest_batch(vec![post], now_ms).await.map(|_| ())
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
        let filter = DueFilter {
            per_channel: limit,
            total: Some(limit),
            ..DueFilter::default()
        };
        let mut due = self.claim_heads(now_ms, &filter, claim).await?;
        if due.len() > limit {
            // Over several channels: keep the oldest, give the rest back.
            let spare: Vec<i64> = due.split_off(limit).iter().map(|d| d.id).collect();
            self.release(&spare, &claim.replica).await?;
        }
        Ok(due)
    }

    /// [`Database::claim_due`] channel by channel: each channel's due heads, oldest first, at
    /// most `filter.per_channel` of each, leaving out what `filter` names. The result is in id
    /// order.
    pub async fn claim_heads(
        &self,
        now_ms: i64,
        filter: &DueFilter,
        claim: &Claim,
    ) -> Result<Vec<Due>, DbError> {
        match self {
            // One process owns the file: nobody to claim against, and a restart must not wait
            // for its own earlier claims to expire.
            Database::Sqlite(db) => {
                let filter = filter.clone();
                blocking(db, move |db| db.due(now_ms, &filter)).await
            }
            Database::Postgres(db) => db.claim_heads(now_ms, filter, claim).await,
        }
    }

    /// Gives claims back before their lease ends (payloads this replica will not deliver now).
    pub async fn release(&self, ids: &[i64], replica: &str) -> Result<(), DbError> {
        match self {
            Database::Postgres(db) if !ids.is_empty() => db.release(ids, replica).await,
            Database::Postgres(_) | Database::Sqlite(_) => Ok(()),
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

    /// The first `limit` dead letters, oldest first.
    pub async fn dead(&self, limit: usize) -> Result<Vec<Dead>, DbError> {
        self.dead_page(0, limit).await
    }

    /// Up to `limit` dead letters with an id above `after`, oldest first: the page after the
    /// one that ended at `after`.
    pub async fn dead_page(&self, after: i64, limit: usize) -> Result<Vec<Dead>, DbError> {
        match self {
            Database::Sqlite(db) => blocking(db, move |db| db.dead_page(after, limit)).await,
            Database::Postgres(db) => db.dead_page(after, limit).await,
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

    /// Forgets delivered and dead payloads (and raw events) created before `before_ms` (until
    /// then they still deduplicate upstream re-sends), and expired login sessions. Dead
    /// letters stay (see [`Database::prune_batch`]).
    pub async fn prune(&self, before_ms: i64, now_ms: i64) -> Result<(), DbError> {
        let horizon = Horizon {
            finished_before_ms: before_ms,
            dead_letters_before_ms: i64::MIN,
            now_ms,
        };
        while self.prune_batch(horizon, 10_000).await? == 10_000 {}
        Ok(())
    }

    /// One small step of cleanup: at most `batch` rows of each kind that `horizon` lets go, in
    /// short transactions, so ingest waits for none of them long. Returns the most rows removed
    /// of one kind (the caller goes on while that is `batch`).
    pub async fn prune_batch(&self, horizon: Horizon, batch: usize) -> Result<usize, DbError> {
        match self {
            Database::Sqlite(db) => blocking(db, move |db| db.prune_batch(horizon, batch)).await,
            Database::Postgres(db) => db.prune_batch(horizon, batch).await,
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
