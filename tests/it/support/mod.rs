#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a panic is the failure report

pub mod mock_graph;
pub mod mock_upstream;
pub mod postgres;
pub mod proxy;

use waba_onprem_proxy::db::DatabaseUrl;

/// The database a test runs on: the default SQLite file in the proxy's data directory, or a
/// fresh PostgreSQL database of its own.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

impl Backend {
    /// None when no PostgreSQL can be had (the reason is printed; CI makes it a failure).
    pub async fn postgres() -> Option<Backend> {
        postgres::fresh_database().await.map(Backend::Postgres)
    }

    /// What goes into the proxy's `--database` (None: the SQLite default).
    pub fn database(&self) -> Option<DatabaseUrl> {
        match self {
            Backend::Sqlite => None,
            Backend::Postgres(url) => Some(DatabaseUrl::Postgres(url.clone())),
        }
    }
}

/// Writes each listed `async fn case(backend: Backend)` as two tests, `sqlite::case` and
/// `postgres::case`.
#[allow(unused_macros)] // only the suites that run on both backends use it
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $case() {
                super::$case(crate::support::Backend::Sqlite).await;
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $case() {
                if let Some(backend) = crate::support::Backend::postgres().await {
                    super::$case(backend).await;
                }
            })*
        }
    };
}

/// Channel rows for the names storage tests ingest into: delivery looks only at channels
/// that exist (as every channel the proxy ingests into does).
pub async fn with_channels(db: &waba_onprem_proxy::db::Database, names: &[&str]) {
    for name in names {
        let channel = waba_onprem_proxy::db::Channel {
            name: (*name).to_owned(),
            secret: "test-secret".to_owned(),
            legacy_url: String::new(),
            headers: Vec::new(),
            sent_status: true,
            delivered_status: true,
            read_status: true,
            api_key_hash: None,
        };
        db.upsert_channel(&channel, true)
            .await
            .expect("channel row");
    }
}
