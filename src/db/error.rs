//! Storage failures, with the cause an operator needs (and nothing a row holds).

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
