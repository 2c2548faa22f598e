//! The application: the parts every request shares, built once at start-up from the
//! configuration (the database opened and migrated, the key map read, the upstream clients,
//! the relay, the metrics). No request logic lives here.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::auth::{Auth, KeyMapError};
use crate::config::{Config, Dialect};
use crate::db::Database;
use crate::metrics::Metrics;
use crate::relay::Relay;
use crate::store::Store;
use crate::upstream::{DryRun, Upstream};

/// What every request handler shares.
pub struct AppState {
    pub config: Config,
    pub upstream: Arc<Upstream>,
    pub store: Store,
    pub auth: Auth,
    pub relay: Arc<Relay>,
    pub metrics: Metrics,
    /// Set when shutdown starts: `/readyz` turns 503 so load balancers stop sending.
    pub shutting_down: AtomicBool,
    /// Live mode with the console on (`--admin-token`): the migration-readiness counts the
    /// console shows (in dry-run mode the dry run's own report serves).
    live_readiness: Option<DryRun>,
    /// The console's counter snapshots, for its "recent" columns.
    pub console: crate::metrics::History,
}

/// Why the proxy cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    KeyMap(#[from] KeyMapError),
    #[error("cannot open the database {database}: {source}")]
    Database {
        database: String,
        source: crate::db::DbError,
    },
}

impl AppState {
    /// Opens (and migrates) the database. Fails when the key map cannot be read or the
    /// database cannot be opened.
    pub async fn open(config: Config) -> Result<AppState, StartError> {
        let url = config.database_url();
        let failed = |source| StartError::Database {
            database: url.describe(),
            source,
        };
        // Documents kept as files by earlier versions come along into the default database.
        let import_dir = config
            .database
            .is_none()
            .then_some(config.data_dir.as_path());
        let db = Database::open_with(&url, import_dir, config.database_ca_file.as_deref())
            .await
            .map_err(failed)?;
        let auth = match config.dialect {
            Dialect::WabaV2 => Auth::new(config.key_map.clone(), db.clone())?,
            Dialect::Graph => Auth::with_accounts(
                config.accounts.clone(),
                config.graph_version.clone(),
                db.clone(),
            )?,
        };
        let relay = Arc::new(
            Relay::open(&config, db.clone(), crate::clock::Clock::system())
                .await
                .map_err(failed)?,
        );
        let upstream = Arc::new(Upstream::new(&config));
        let (config_has_console, dry_run) = (config.admin_token.is_some(), config.dry_run);
        let store = Store::new(db);
        Ok(AppState {
            config,
            upstream,
            store,
            auth,
            relay,
            metrics: Metrics::new(),
            shutting_down: AtomicBool::new(false),
            live_readiness: (config_has_console && !dry_run).then(DryRun::default),
            console: crate::metrics::History::default(),
        })
    }

    /// Where routes used, refusals and dropped fields are counted: the dry run's report, or
    /// in live mode the console's; none when neither runs.
    pub fn readiness(&self) -> Option<&DryRun> {
        self.upstream.dry_run().or(self.live_readiness.as_ref())
    }
}
