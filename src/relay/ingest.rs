//! Group commit: inbound posts that arrive together are stored in one transaction, so one
//! disk flush acknowledges many of them instead of one each (a flush takes about 0.4 ms on a
//! typical disk: one post per flush would cap a proxy near 2,500 events/s).
//!
//! One committer task takes the posts in arrival order. A batch is what is already waiting
//! when the previous commit ends (posts gather by themselves while a commit runs), up to
//! `max_posts`; with a `max_wait` above zero it also waits that long for more. Each post is
//! answered only after the transaction holding it has committed; a failed transaction fails
//! exactly the posts in it (the caller answers 503 and Cloud sends them again).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};
use tracing::warn;

use crate::clock::Clock;
use crate::db::{Database, DbError, Inbound, Ingested};

/// The batching knobs.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub max_posts: usize,
    pub max_wait: Duration,
}

/// Posts queued for the committer at most; past it an inbound post waits for room.
const QUEUE: usize = 8_192;

struct Waiting {
    post: Inbound,
    stored: oneshot::Sender<Result<Ingested, DbError>>,
}

/// The way into the committer task.
pub struct GroupCommit {
    queue: mpsc::Sender<Waiting>,
}

impl GroupCommit {
    /// Starts the committer on the current runtime; `committed` is woken after each commit.
    pub fn start(
        db: Database,
        batching: Batching,
        clock: Clock,
        committed: Arc<Notify>,
    ) -> GroupCommit {
        let (queue, waiting) = mpsc::channel(QUEUE);
        tokio::spawn(commit_forever(db, waiting, batching, clock, committed));
        GroupCommit { queue }
    }

    /// Stores `post`; returns once the transaction holding it has committed (or failed).
    pub async fn store(&self, post: Inbound) -> Result<Ingested, DbError> {
        let (stored, answer) = oneshot::channel();
        self.queue
            .send(Waiting { post, stored })
            .await
            .map_err(|_| DbError::Other("the webhook committer has stopped".to_owned()))?;
        answer.await.map_err(|_| {
            DbError::Other("the webhook committer stopped before committing".to_owned())
        })?
    }
}

async fn commit_forever(
    db: Database,
    mut waiting: mpsc::Receiver<Waiting>,
    batching: Batching,
    clock: Clock,
    committed: Arc<Notify>,
) {
    let max_posts = batching.max_posts.max(1);
    let mut batch = Vec::with_capacity(max_posts);
    while let Some(first) = waiting.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + batching.max_wait;
        while batch.len() < max_posts {
            match waiting.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) if batching.max_wait.is_zero() => break,
                Err(_) => match tokio::time::timeout_at(deadline, waiting.recv()).await {
                    Ok(Some(next)) => batch.push(next),
                    Ok(None) | Err(_) => break,
                },
            }
        }
        let (posts, answers): (Vec<Inbound>, Vec<_>) =
            batch.drain(..).map(|w| (w.post, w.stored)).unzip();
        let count = posts.len();
        match db.ingest_batch(posts, clock.now_ms()).await {
            Ok(stored) => {
                for (answer, ingested) in answers.into_iter().zip(stored) {
                    // The poster may have hung up; its event is stored all the same.
                    let _ = answer.send(Ok(ingested));
                }
                committed.notify_one();
            }
            Err(error) => {
                let cause = error.to_string();
                warn!(error = %cause, posts = count, "a batch of inbound webhooks was not stored");
                for answer in answers {
                    let _ = answer.send(Err(DbError::Other(cause.clone())));
                }
            }
        }
    }
}
