//! Where the state lives: `--database` parsed, and described for logs without credentials.

use std::path::{Path, PathBuf};

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
