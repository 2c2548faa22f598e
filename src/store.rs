//! Small per-API-key JSON documents (media providers, application settings), kept in the
//! database so every replica answers the same. Documents are found by the SHA-256 of the key,
//! so no key is ever stored.

use serde_json::Value;

use crate::db::{Database, DbError};
pub use crate::secret::key_hash;

pub struct Store {
    db: Database,
}

impl Store {
    pub fn new(db: Database) -> Store {
        Store { db }
    }

    pub async fn load(&self, kind: &str, api_key: &str) -> Result<Option<Value>, DbError> {
        self.db.document(kind, &key_hash(api_key)).await
    }

    /// Read, change and write one document in one transaction.
    pub async fn update(
        &self,
        kind: &str,
        api_key: &str,
        change: impl FnOnce(Option<Value>) -> Value + Send + 'static,
    ) -> Result<Value, DbError> {
        self.db
            .update_document(kind, &key_hash(api_key), Box::new(change))
            .await
    }
}
