//! The PostgreSQL test support itself: every `fresh_database` is a separate, empty database on a
//! real server, and `drop_database` removes one.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use crate::support::postgres::{drop_database, fresh_database};
use tokio_postgres::{Client, NoTls};

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

async fn has_table(client: &Client, name: &str) -> bool {
    let row = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = $1",
            &[&name],
        )
        .await
        .expect("query");
    row.get::<_, i64>(0) == 1
}

#[tokio::test]
async fn fresh_databases_are_isolated() {
    let Some(first) = fresh_database().await else {
        return;
    };
    let Some(second) = fresh_database().await else {
        return;
    };
    assert_ne!(first, second);
    let (a, b) = (connect(&first).await, connect(&second).await);

    assert!(
        !has_table(&a, "only_in_first").await,
        "a fresh database is empty"
    );
    a.batch_execute("CREATE TABLE only_in_first (id bigint PRIMARY KEY)")
        .await
        .expect("create table");
    assert!(has_table(&a, "only_in_first").await);
    assert!(
        !has_table(&b, "only_in_first").await,
        "databases must not share tables"
    );

    let version: String = a
        .query_one("SHOW server_version", &[])
        .await
        .expect("server_version")
        .get(0);
    let major: u32 = version
        .split(['.', ' '])
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("unparsable server_version {version:?}"));
    assert!(
        major >= 13,
        "PostgreSQL {version} is too old (DROP ... WITH (FORCE) needs 13)"
    );
    eprintln!("PostgreSQL {version}");
}

// Runs alongside the test above, on another runtime: both must get the same once-started
// cluster (or the CI one), not a half-started one.
#[tokio::test]
async fn dropped_database_is_gone() {
    let Some(url) = fresh_database().await else {
        return;
    };
    let still_open = connect(&url).await;
    drop_database(&url).await;
    assert!(
        tokio_postgres::connect(&url, NoTls).await.is_err(),
        "database still exists"
    );
    assert!(
        still_open.simple_query("SELECT 1").await.is_err(),
        "session survived the drop"
    );
}
