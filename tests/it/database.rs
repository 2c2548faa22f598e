//! The storage the relay and the settings stand on, run against both backends: the SQLite file
//! (one replica) and a real PostgreSQL (several replicas). Each case is written once and run
//! twice; the PostgreSQL run gets a fresh database of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::support::Backend;
use serde_json::{json, Value};
use waba_onprem_proxy::db::{Claim, Database, DatabaseUrl, Outcome};
use waba_onprem_proxy::db::{DueFilter, Ingested, NewPayload};

async fn open(backend: Backend) -> Database {
    let url = backend.database().unwrap_or_else(|| {
        let path = std::env::temp_dir().join(format!("waba-db-{}.sqlite3", uuid::Uuid::new_v4()));
        DatabaseUrl::Sqlite(path)
    });
    let db = Database::open(&url, None).await.unwrap();
    crate::support::with_channels(&db, &["c", "default"]).await;
    db
}

async fn postgres_url() -> Option<DatabaseUrl> {
    let url = crate::support::postgres::fresh_database().await?;
    Some(DatabaseUrl::Postgres(url))
}

fn payload(wa_id: &str, id: &str) -> NewPayload {
    NewPayload {
        body: json!({"messages": [{"id": id, "from": wa_id}]}).to_string(),
        ordering_key: wa_id.to_owned(),
        dedupe_key: Some(format!("message:{id}")),
    }
}

fn claim(replica: &str, until_ms: i64) -> Claim {
    Claim {
        replica: replica.to_owned(),
        until_ms,
    }
}

/// The ids `replica` claims at `now` (at most `limit`), its lease ending at `until`.
async fn claimed_ids(db: &Database, now: i64, limit: usize, replica: &str, until: i64) -> Vec<i64> {
    db.claim_due(now, limit, &claim(replica, until))
        .await
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect()
}

/// One post to channel `c` carrying `payloads`, stored at `now`.
async fn ingest(db: &Database, payloads: Vec<NewPayload>, now: i64) -> Ingested {
    db.ingest("c", "{}".into(), payloads, 0, now).await.unwrap()
}

/// Replica `r` records `outcomes` at `now` (`r` is the replica `due_ids` claims as).
async fn record(db: &Database, outcomes: Vec<Outcome>, now: i64) {
    db.record(outcomes, now, "r").await.unwrap()
}

/// A failed delivery of `id`, to be tried again at `next_attempt_at`.
fn retry(id: i64, next_attempt_at: i64) -> Outcome {
    Outcome::Retry {
        id,
        next_attempt_at,
        error: "503".into(),
    }
}

/// `id` given up on: dead-lettered.
fn gave_up(id: i64) -> Outcome {
    Outcome::Dead {
        id,
        error: "gave up".into(),
    }
}

async fn due_ids(db: &Database, now: i64) -> Vec<i64> {
    claimed_ids(db, now, 10, "r", now).await
}

on_both_backends!(
    resends_are_stored_once,
    a_recipient_waits_for_its_earlier_event_others_do_not,
    a_lone_busy_recipient_is_served_claim_after_claim,
    a_fetch_takes_no_more_than_the_loop_has_room_for,
    dead_payloads_unblock_their_recipient_and_can_be_replayed,
    a_dead_payload_can_be_replayed_after_its_outbox_row_was_pruned,
    unreadable_posts_are_kept_as_dead_letters,
    channels_keep_their_url_headers_and_sent_status,
    documents_change_one_at_a_time,
    login_sessions_expire_and_end,
    migrations_are_recorded_and_not_applied_twice,
);

async fn resends_are_stored_once(backend: Backend) {
    let db = open(backend).await;
    let first = ingest(&db, vec![payload("1", "a")], 10).await;
    let again = ingest(&db, vec![payload("1", "a")], 11).await;
    assert_eq!((first.stored, again.stored, again.duplicates), (1, 0, 1));
    let stats = db.stats(20).await.unwrap();
    assert_eq!((stats.pending, stats.duplicates), (1, 1));
}

async fn a_recipient_waits_for_its_earlier_event_others_do_not(backend: Backend) {
    let db = open(backend).await;
    ingest(
        &db,
        vec![payload("1", "a"), payload("1", "b"), payload("2", "c")],
        10,
    )
    .await;
    assert_eq!(due_ids(&db, 10).await, [1, 3]);
    record(&db, vec![retry(1, 100)], 10).await;
    // Still waiting on its earlier event, even though that one is not due.
    assert_eq!(due_ids(&db, 20).await, [3]);
    record(
        &db,
        vec![Outcome::Delivered { id: 1 }, Outcome::Delivered { id: 3 }],
        30,
    )
    .await;
    assert_eq!(due_ids(&db, 30).await, [2]);
    assert_eq!(db.stats(30).await.unwrap().delivered, 2);
}

/// One recipient with a queue, one payload a claim: each claim takes the next one (a claim that
/// came back empty would idle the delivery loop for up to a second).
async fn a_lone_busy_recipient_is_served_claim_after_claim(backend: Backend) {
    let db = open(backend).await;
    let queue = ["x1", "x2", "x3"]
        .iter()
        .map(|id| payload("x", id))
        .collect();
    ingest(&db, queue, 10).await;
    for (n, id) in [1, 2, 3].into_iter().enumerate() {
        let now = 20 + n as i64;
        assert_eq!(claimed_ids(&db, now, 1, "r", 1_000).await, [id]);
        record(&db, vec![Outcome::Delivered { id }], now).await;
    }
}

/// The delivery loop asks for at most the room in its queue, over all channels: payloads past
/// it would wait in the queue while their claim's lease runs. They stay for the next fetch.
async fn a_fetch_takes_no_more_than_the_loop_has_room_for(backend: Backend) {
    let db = open(backend).await;
    ingest(&db, vec![payload("1", "a"), payload("2", "b")], 10).await;
    db.ingest("default", "{}".into(), vec![payload("3", "c")], 0, 10)
        .await
        .unwrap();
    let filter = DueFilter {
        per_channel: 5,
        total: Some(2),
        ..DueFilter::default()
    };
    let first = db
        .claim_heads(20, &filter, &claim("r", 1_000))
        .await
        .unwrap();
    assert_eq!(first.len(), 2);
    // The next fetch, leaving out what the loop now holds, takes the one left.
    let held = DueFilter {
        except_ids: first.iter().map(|d| d.id).collect(),
        ..filter
    };
    let rest = db.claim_heads(20, &held, &claim("r", 1_000)).await.unwrap();
    let mut ids: Vec<i64> = first.iter().chain(&rest).map(|d| d.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3]);
}

async fn dead_payloads_unblock_their_recipient_and_can_be_replayed(backend: Backend) {
    let db = open(backend).await;
    ingest(&db, vec![payload("1", "a"), payload("1", "b")], 10).await;
    record(&db, vec![gave_up(1)], 20).await;
    assert_eq!(due_ids(&db, 20).await, [2]);
    let dead = db.dead(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload["messages"][0]["id"], "a");
    assert_eq!((dead[0].reason.as_str(), dead[0].attempts), ("gave up", 1));
    assert!(db.replay(dead[0].id, 30).await.unwrap());
    assert!(!db.replay(dead[0].id, 30).await.unwrap(), "replayed twice");
    let stats = db.stats(30).await.unwrap();
    assert_eq!((stats.dead, stats.pending), (0, 2));
}

async fn a_dead_payload_can_be_replayed_after_its_outbox_row_was_pruned(backend: Backend) {
    let db = open(backend).await;
    ingest(&db, vec![payload("1", "a")], 10).await;
    record(&db, vec![gave_up(1)], 20).await;
    db.prune(1_000, 1_000).await.unwrap();
    let dead = db.dead(10).await.unwrap();
    assert!(db.replay(dead[0].id, 30).await.unwrap());
    let due = db.claim_due(30, 10, &claim("r", 30)).await.unwrap();
    assert_eq!(due.len(), 1);
    assert!(due[0].payload.contains("\"a\""));
}

async fn unreadable_posts_are_kept_as_dead_letters(backend: Backend) {
    let db = open(backend).await;
    db.store_unreadable("c", "not json".into(), "expected value".into(), 10)
        .await
        .unwrap();
    let dead = db.dead(10).await.unwrap();
    assert_eq!(dead[0].payload, json!("not json"));
    // Nothing to replay: it never was a deliverable payload.
    assert!(!db.replay(dead[0].id, 20).await.unwrap());
}

async fn channels_keep_their_url_headers_and_sent_status(backend: Backend) {
    let db = open(backend).await;
    let channel = waba_onprem_proxy::db::Channel {
        name: "k1".into(),
        secret: "s".into(),
        legacy_url: "http://legacy.example/hook".into(),
        headers: vec![("x-auth".into(), "t".into())],
        sent_status: true,
        delivered_status: true,
        read_status: true,
        api_key_hash: Some("h".into()),
    };
    assert_eq!(db.upsert_channel(&channel, true).await.unwrap(), "s");
    // A second registration racing the first keeps the stored secret (both register it
    // upstream); the operator's flag-configured channel replaces it.
    let racing = waba_onprem_proxy::db::Channel {
        secret: "other".into(),
        ..channel.clone()
    };
    assert_eq!(db.upsert_channel(&racing, true).await.unwrap(), "s");
    assert_eq!(db.upsert_channel(&racing, false).await.unwrap(), "other");
    db.upsert_channel(&channel, false).await.unwrap();
    db.set_relayed_statuses("k1", [false, true, false])
        .await
        .unwrap();
    let stored = db.channel("k1").await.unwrap().unwrap();
    assert_eq!(stored.headers, channel.headers);
    assert_eq!(stored.legacy_url, channel.legacy_url);
    assert!(!stored.sent_status);
    assert!(stored.delivered_status);
    assert!(!stored.read_status);
    assert_eq!(db.channel("k2").await.unwrap(), None);
}

async fn documents_change_one_at_a_time(backend: Backend) {
    let db = open(backend).await;
    assert_eq!(db.document("settings", "h").await.unwrap(), None);
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let db = db.clone();
        writers.spawn(async move {
            db.update_document(
                "settings",
                "h",
                Box::new(|current: Option<Value>| {
                    let n = current.and_then(|c| c["n"].as_i64()).unwrap_or(0);
                    json!({"n": n + 1})
                }),
            )
            .await
            .unwrap()
        });
    }
    while writers.join_next().await.is_some() {}
    assert_eq!(
        db.document("settings", "h").await.unwrap(),
        Some(json!({"n": 20}))
    );
    assert_eq!(db.document("providers", "h").await.unwrap(), None);
}

async fn login_sessions_expire_and_end(backend: Backend) {
    let db = open(backend).await;
    db.create_session("t1", "admin", 1_000).await.unwrap();
    db.create_session("t2", "admin", 1_000).await.unwrap();
    assert_eq!(
        db.session_user("t1", 999).await.unwrap().as_deref(),
        Some("admin")
    );
    assert_eq!(db.session_user("t1", 1_000).await.unwrap(), None, "expired");
    assert!(db.delete_session("t2").await.unwrap());
    assert!(!db.delete_session("t2").await.unwrap());
    assert_eq!(db.session_user("t2", 10).await.unwrap(), None);
}

async fn migrations_are_recorded_and_not_applied_twice(backend: Backend) {
    let db = open(backend).await;
    assert_eq!(db.schema_version().await.unwrap(), 5);
}

#[tokio::test]
async fn a_sqlite_file_reopens_with_its_events_and_schema() {
    let path = std::env::temp_dir().join(format!("waba-db-{}.sqlite3", uuid::Uuid::new_v4()));
    let url = DatabaseUrl::Sqlite(path);
    let db = Database::open(&url, None).await.unwrap();
    crate::support::with_channels(&db, &["c", "default"]).await;
    ingest(&db, vec![payload("1", "a")], 10).await;
    drop(db);
    let again = Database::open(&url, None).await.unwrap();
    crate::support::with_channels(&again, &["c", "default"]).await;
    assert_eq!(again.schema_version().await.unwrap(), 5);
    assert_eq!(again.stats(10).await.unwrap().pending, 1);
}

#[tokio::test]
async fn documents_kept_as_files_by_earlier_versions_are_imported() {
    let dir = std::env::temp_dir().join(format!("waba-data-{}", uuid::Uuid::new_v4()));
    let hash = waba_onprem_proxy::store::key_hash("K1");
    std::fs::create_dir_all(dir.join("application_settings")).unwrap();
    std::fs::write(
        dir.join("application_settings")
            .join(format!("{hash}.json")),
        r#"{"sent_status": false}"#,
    )
    .unwrap();
    let db = Database::open(&DatabaseUrl::default_in(&dir), Some(&dir))
        .await
        .unwrap();
    crate::support::with_channels(&db, &["c", "default"]).await;
    assert_eq!(
        db.document("application_settings", &hash).await.unwrap(),
        Some(json!({"sent_status": false}))
    );
}

/// Three replicas start at once on one empty database: all of them migrate without error and
/// the schema is applied once.
#[tokio::test]
async fn replicas_starting_together_migrate_once() {
    let Some(url) = postgres_url().await else {
        return;
    };
    let opens: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { Database::open(&url, None).await.map(|_| ()) })
        })
        .collect();
    for open in opens {
        open.await.unwrap().unwrap();
    }
    let db = Database::open(&url, None).await.unwrap();
    crate::support::with_channels(&db, &["c", "default"]).await;
    assert_eq!(db.schema_version().await.unwrap(), 5);
}

/// A claim keeps a payload from other replicas until its lease ends; then it returns.
#[tokio::test]
async fn a_claim_excludes_other_replicas_until_its_lease_ends() {
    let Some(url) = postgres_url().await else {
        return;
    };
    let a = Database::open(&url, None).await.unwrap();
    crate::support::with_channels(&a, &["c", "default"]).await;
    let b = Database::open(&url, None).await.unwrap();
    crate::support::with_channels(&b, &["c", "default"]).await;
    ingest(
        &a,
        vec![payload("1", "x"), payload("1", "y"), payload("2", "z")],
        10,
    )
    .await;
    assert_eq!(claimed_ids(&a, 10, 1, "a", 1_000).await, [1]);
    // Replica b neither takes x nor skips ahead to y (x is still undelivered): only z.
    assert_eq!(claimed_ids(&b, 20, 10, "b", 5_000).await, [3]);
    // Replica a stalls; after its lease, b takes x.
    assert_eq!(claimed_ids(&b, 1_001, 10, "b", 2_000).await, [1]);
    // a comes back and records a failure for x: b is delivering it, and keeps its claim.
    a.record(vec![retry(1, 0)], 1_001, "a").await.unwrap();
    assert_eq!(
        claimed_ids(&a, 1_002, 10, "a", 3_000).await,
        Vec::<i64>::new()
    );
    // Released claims (b's x and z) return at once, long before their lease ends.
    b.release_claims("b").await.unwrap();
    assert_eq!(due_ids(&a, 1_002).await, [1, 3]);
}

/// Four replicas drain one outbox concurrently: every payload is delivered exactly once (no two
/// replicas hold it at once) and each recipient's payloads go out in order.
#[tokio::test]
async fn concurrent_replicas_deliver_each_payload_once_and_in_order() {
    let Some(url) = postgres_url().await else {
        return;
    };
    let db = Database::open(&url, None).await.unwrap();
    crate::support::with_channels(&db, &["c", "default"]).await;
    let recipients = 10;
    let per_recipient = 30;
    for n in 0..per_recipient {
        let payloads = (0..recipients)
            .map(|r| payload(&format!("w{r}"), &format!("{r}-{n}")))
            .collect();
        ingest(&db, payloads, 10).await;
    }
    let seen: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    // Recipients with a payload being delivered right now, by any replica.
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut replicas = tokio::task::JoinSet::new();
    for r in 0..4 {
        let url = url.clone();
        let (seen, in_flight) = (seen.clone(), in_flight.clone());
        replicas.spawn(async move {
            let db = Database::open(&url, None).await.unwrap();
            crate::support::with_channels(&db, &["c", "default"]).await;
            let mut idle = 0;
            while idle < 3 {
                let due = db
                    .claim_due(100, 5, &claim(&format!("r{r}"), 10_000))
                    .await
                    .unwrap();
                if due.is_empty() {
                    idle += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
                idle = 0;
                let mut outcomes = Vec::new();
                let mut recipients_taken = Vec::new();
                for item in due {
                    let body: Value = serde_json::from_str(&item.payload).unwrap();
                    let id = body["messages"][0]["id"].as_str().unwrap().to_owned();
                    let recipient = body["messages"][0]["from"].as_str().unwrap().to_owned();
                    assert!(
                        in_flight.lock().unwrap().insert(recipient.clone()),
                        "{id} taken while an earlier payload of {recipient} is in flight"
                    );
                    recipients_taken.push(recipient);
                    seen.lock().unwrap().push((id, item.id));
                    outcomes.push(Outcome::Delivered { id: item.id });
                }
                // Delivering takes a moment; then the round is recorded.
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                for recipient in recipients_taken {
                    in_flight.lock().unwrap().remove(&recipient);
                }
                db.record(outcomes, 100, &format!("r{r}")).await.unwrap();
            }
        });
    }
    while let Some(done) = replicas.join_next().await {
        done.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    let unique: HashSet<&String> = seen.iter().map(|(id, _)| id).collect();
    assert_eq!(seen.len(), recipients * per_recipient, "delivered twice");
    assert_eq!(unique.len(), recipients * per_recipient);
    let mut last: HashMap<String, usize> = HashMap::new();
    for (id, _) in seen.iter() {
        let (recipient, n) = id.split_once('-').unwrap();
        let n: usize = n.parse().unwrap();
        if let Some(previous) = last.insert(recipient.to_owned(), n) {
            assert!(previous < n, "{recipient}: {n} after {previous}");
        }
    }
    assert_eq!(db.stats(200).await.unwrap().pending, 0);
}

/// PostgreSQL finds heads one recipient at a time, in turns (a walk that goes on where the last
/// claim stopped), not oldest first: a deep backlog behind a few recipients does not have to
/// be read through to reach the others, and every recipient is served in its turn.
#[tokio::test]
async fn postgres_claims_serve_recipients_in_turn() {
    let Some(url) = postgres_url().await else {
        return;
    };
    let db = Database::open(&url, None).await.unwrap();
    crate::support::with_channels(&db, &["c", "default"]).await;
    // Ids 1..6: a and b each have a second payload older than c's and d's first.
    let batch = [("a", "a1"), ("b", "b1"), ("a", "a2"), ("b", "b2")];
    ingest(
        &db,
        batch.iter().map(|(w, id)| payload(w, id)).collect(),
        10,
    )
    .await;
    ingest(&db, vec![payload("c", "c1"), payload("d", "d1")], 10).await;
    // Leases long enough that nothing claimed here returns during the test.
    assert_eq!(claimed_ids(&db, 20, 2, "r", 1_000).await, [1, 2]);
    record(
        &db,
        vec![Outcome::Delivered { id: 1 }, Outcome::Delivered { id: 2 }],
        30,
    )
    .await;
    // a2 and b2 are heads now, and older: c and d still come first, it is their turn.
    assert_eq!(claimed_ids(&db, 40, 2, "r", 1_000).await, [5, 6]);
    // Then the walk comes round to a and b.
    assert_eq!(claimed_ids(&db, 50, 2, "r", 1_000).await, [3, 4]);
    assert_eq!(claimed_ids(&db, 60, 2, "r", 1_000).await, Vec::<i64>::new());
}

/// TLS to PostgreSQL, against a server that refuses unencrypted TCP: reached with
/// `sslmode=require` (and the default `prefer`), verified when the CA is given, and a
/// certificate from another CA is refused with a reason an operator can act on.
#[tokio::test]
async fn postgres_over_tls_is_encrypted_and_verified_against_the_given_ca() {
    let Some(cluster) = crate::support::postgres::tls_cluster().await else {
        return;
    };
    let url = |mode: &str| DatabaseUrl::Postgres(format!("{}?sslmode={mode}", cluster.url));
    let verified = Database::open_with(&url("require"), None, Some(&cluster.ca_file))
        .await
        .unwrap();
    verified.writable().await.unwrap();
    assert_eq!(verified.schema_version().await.unwrap(), 5);
    // Encrypted without verification, as libpq does when no CA is given.
    Database::open_with(&url("prefer"), None, None)
        .await
        .unwrap();
    let refused = Database::open_with(&url("require"), None, Some(&cluster.other_ca_file))
        .await
        .err()
        .expect("a certificate from another CA must be refused");
    assert!(refused.to_string().contains("UnknownIssuer"), "{refused}");
    // The server takes no unencrypted TCP: the connections above were encrypted.
    assert!(Database::open_with(&url("disable"), None, None)
        .await
        .is_err());
}

/// A webhook outbox written by a version from before migrations (no `schema_migrations`, no
/// claim columns) opens, migrates to the current schema, and keeps its pending events.
#[tokio::test]
async fn an_outbox_from_before_migrations_is_migrated_in_place() {
    let path = std::env::temp_dir().join(format!("waba-db-{}.sqlite3", uuid::Uuid::new_v4()));
    {
        let old = rusqlite::Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE webhook_channels (name TEXT PRIMARY KEY, secret TEXT NOT NULL,
                 legacy_url TEXT NOT NULL, headers TEXT NOT NULL, sent_status BOOLEAN NOT NULL,
                 api_key_hash TEXT);
             CREATE TABLE webhook_outbox (id INTEGER PRIMARY KEY, event_id BIGINT NOT NULL,
                 channel TEXT NOT NULL, ordering_key TEXT NOT NULL, dedupe_key TEXT,
                 payload TEXT NOT NULL, created_at BIGINT NOT NULL,
                 attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at BIGINT NOT NULL,
                 last_error TEXT, delivered_at BIGINT, dead_at BIGINT);
             INSERT INTO webhook_outbox (event_id, channel, ordering_key, dedupe_key, payload,
                 created_at, next_attempt_at)
                 VALUES (1, 'default', '1', 'message:a', '{\"messages\":[]}', 10, 10);",
        )
        .unwrap();
    }
    let db = Database::open(&DatabaseUrl::Sqlite(path), None)
        .await
        .unwrap();
    crate::support::with_channels(&db, &["c", "default"]).await;
    assert_eq!(db.schema_version().await.unwrap(), 5);
    assert_eq!(due_ids(&db, 20).await, [1]);
    // The old dedupe key still holds.
    let again = db
        .ingest("default", "{}".into(), vec![payload("1", "a")], 0, 30)
        .await
        .unwrap();
    assert_eq!(again.duplicates, 1);
}

/// Ids are taken at insert and rows seen at commit. While one ingest of a recipient is open,
/// another ingest of the same recipient waits for it, so the later event can never commit (and
/// be delivered) ahead of the earlier one. Other recipients do not wait.
#[tokio::test]
async fn ingests_of_one_recipient_commit_in_id_order() {
    let Some(url) = crate::support::postgres::fresh_database().await else {
        return;
    };
    let db = Database::open(&DatabaseUrl::Postgres(url.clone()), None)
        .await
        .unwrap();
    crate::support::with_channels(&db, &["c", "default"]).await;
    // An ingest of recipient 1 in flight: its transaction holds the recipient until commit.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client.batch_execute("BEGIN").await.unwrap();
    client
        .execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 1))",
            &[&"c:1"],
        )
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let db = db.clone();
        async move { ingest(&db, vec![payload("1", "later")], 10).await }
    });
    ingest(&db, vec![payload("2", "other")], 10).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the later ingest did not wait");
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(waiting.await.unwrap().stored, 1);
}

/// One SQLite file serves one process: a second proxy on the same data directory would deliver
/// every webhook again, so it is refused at start with the reason, until the first one ends.
#[tokio::test]
async fn a_sqlite_file_in_use_is_refused_until_released() {
    let path = std::env::temp_dir().join(format!("waba-db-{}.sqlite3", uuid::Uuid::new_v4()));
    let url = DatabaseUrl::Sqlite(path);
    let first = Database::open(&url, None).await.unwrap();
    crate::support::with_channels(&first, &["c", "default"]).await;
    let refused = Database::open(&url, None)
        .await
        .err()
        .expect("a second open must be refused");
    assert!(refused.to_string().contains("in use"), "{refused}");
    drop(first);
    // Released with `first`. The integration tests share one process, and another test
    // spawning the proxy binary forks: until that child's exec closes it, the fork holds the
    // lock file's description too, for microseconds. So the reopen may wait briefly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Database::open(&url, None).await {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("in use") => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(e) => panic!("not released: {e}"),
        }
    }
}
