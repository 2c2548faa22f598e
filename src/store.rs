//! Small per-API-key JSON documents in the data directory (media providers, application
//! settings). Files are named by the SHA-256 of the key, so no key appears on disk, and are
//! replaced atomically (write, fsync, rename) so a crash never leaves half a document.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

pub struct Store {
    dir: PathBuf,
    /// Serialises read-modify-write cycles; documents change rarely.
    writes: Mutex<()>,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store {
            dir: dir.into(),
            writes: Mutex::new(()),
        }
    }

    fn path(&self, kind: &str, api_key: &str) -> PathBuf {
        let digest = Sha256::digest(api_key.as_bytes());
        let name: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(kind).join(format!("{name}.json"))
    }

    pub async fn load(&self, kind: &str, api_key: &str) -> io::Result<Option<Value>> {
        let path = self.path(kind, api_key);
        tokio::task::spawn_blocking(move || read(&path))
            .await
            .map_err(io::Error::other)?
    }

    /// Read, change and write one document under the write lock.
    pub async fn update(
        &self,
        kind: &str,
        api_key: &str,
        change: impl FnOnce(Option<Value>) -> Value + Send + 'static,
    ) -> io::Result<Value> {
        let _guard = self.writes.lock().await;
        let path = self.path(kind, api_key);
        tokio::task::spawn_blocking(move || {
            let next = change(read(&path)?);
            write_atomically(&path, &next)?;
            Ok(next)
        })
        .await
        .map_err(io::Error::other)?
    }
}

fn read(path: &Path) -> io::Result<Option<Value>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn write_atomically(path: &Path, value: &Value) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("document path has no parent"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec_pretty(value).map_err(io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    // The rename itself is durable only once the directory is synced.
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn documents_are_kept_per_key_and_survive_a_new_store() {
        let dir = std::env::temp_dir().join(format!("waba-store-{}", uuid::Uuid::new_v4()));
        let store = Store::new(&dir);
        store
            .update("providers", "key-a", |_| json!([1]))
            .await
            .unwrap();
        store
            .update("providers", "key-b", |_| json!([2]))
            .await
            .unwrap();
        let reopened = Store::new(&dir);
        assert_eq!(
            reopened.load("providers", "key-a").await.unwrap(),
            Some(json!([1]))
        );
        assert_eq!(reopened.load("providers", "key-c").await.unwrap(), None);
        let names: Vec<String> = std::fs::read_dir(dir.join("providers"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.contains("key-")), "{names:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
