//! What storage hands out and takes in: its own types, so it knows no translation type, and
//! how they are written as text.

use serde_json::Value;

/// One payload to store for delivery: its body as sent to the receiver, the recipient whose
/// events must stay in order, and what identifies it across upstream re-sends. Storage's own
/// shape, so the database knows no translation type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPayload {
    pub body: String,
    pub ordering_key: String,
    pub dedupe_key: Option<String>,
}

/// One inbound post to store: a Cloud webhook with its translated payloads, or a post that is
/// not one (kept as a dead letter for the operator). Posts that arrive together are stored
/// together, in one transaction (group commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Event {
        channel: String,
        raw: String,
        payloads: Vec<NewPayload>,
        /// Changes the translation left out (counted, not stored).
        skipped: usize,
    },
    Unreadable {
        channel: String,
        raw: String,
        reason: String,
    },
}

/// Where inbound events for one legacy receiver come in and go out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub name: String,
    /// Expected in `X-Webhook-Secret` on every inbound post.
    pub secret: String,
    pub legacy_url: String,
    /// Extra headers the client asked for on deliveries.
    pub headers: Vec<(String, String)>,
    /// Which statuses the client wants relayed (On-Premise's `sent_status` and
    /// `webhooks.message.*`, already combined).
    pub sent_status: bool,
    pub delivered_status: bool,
    pub read_status: bool,
    /// SHA-256 of the API key the channel belongs to (none for the flag-configured one).
    pub api_key_hash: Option<String>,
}

/// A payload due for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub id: i64,
    pub channel: String,
    pub payload: String,
    pub attempts: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ingested {
    pub stored: usize,
    pub duplicates: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub pending: i64,
    pub delivered: i64,
    pub dead: i64,
    pub oldest_pending_age_ms: Option<i64>,
    pub skipped_changes: i64,
    pub duplicates: i64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Dead {
    pub id: i64,
    pub channel: String,
    pub ordering_key: String,
    pub payload: Value,
    pub reason: String,
    pub attempts: i64,
    pub created_at: i64,
    pub died_at: i64,
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered {
        id: i64,
    },
    Retry {
        id: i64,
        next_attempt_at: i64,
        error: String,
    },
    Dead {
        id: i64,
        error: String,
    },
}

/// Which due payloads a delivery loop wants: the heads of each channel's recipients, at most
/// `per_channel` of each channel, none of the channels or payloads it names.
#[derive(Debug, Clone, Default)]
pub struct DueFilter {
    pub per_channel: usize,
    /// Channels not to fetch for (an open circuit breaker, a full queue).
    pub except_channels: Vec<String>,
    /// Payloads the loop already holds (waiting, in flight, or delivered and not yet recorded).
    pub except_ids: Vec<i64>,
    /// At most this many in all (the room in the loop's queue): claims beyond it would wait
    /// in the queue while their lease runs.
    pub total: Option<usize>,
}

/// Who takes a round of due payloads, and until when nobody else may.
#[derive(Debug, Clone)]
pub struct Claim {
    /// This process (a fresh id per start).
    pub replica: String,
    /// Epoch milliseconds; a killed replica's payloads return to the pool after this.
    pub until_ms: i64,
}

/// Headers as stored: a JSON array of [name, value] pairs.
pub(super) fn headers_to_text(headers: &[(String, String)]) -> String {
    serde_json::to_string(headers).unwrap_or_else(|_| "[]".into())
}

pub(super) fn headers_from_text(text: &str) -> Vec<(String, String)> {
    serde_json::from_str(text).unwrap_or_default()
}

/// A dead row's payload as shown by the admin route: JSON when it is JSON.
pub(super) fn dead_payload(text: String) -> Value {
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}
