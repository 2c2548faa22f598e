//! `--upstream dry-run`: nothing is sent to Cloud (webhook deliveries to the client's own
//! receivers still go out, as in live mode). Every request is translated and validated
//! as usual; the Cloud request it would have been is logged (secrets masked), a synthetic Cloud
//! answer is reshaped as usual, and what the proxy saw is counted for the operator's report.

use bytes::Bytes;
use http::header::HeaderMap;
use http::{Method, StatusCode};

use super::{CloudAnswer, Upstream};
use crate::translate::dryrun;

/// Dry-run mode: nothing is sent to Cloud. Cloud's answers are synthesized (ids
/// `wamid.DRYRUN...`), and what the proxy saw is counted for `GET /admin/dry-run/report`.
#[derive(Debug)]
pub struct DryRun {
    serial: std::sync::atomic::AtomicU64,
    report: std::sync::Mutex<DryRunReport>,
}

impl Default for DryRun {
    fn default() -> Self {
        DryRun {
            serial: std::sync::atomic::AtomicU64::new(1),
            report: std::sync::Mutex::default(),
        }
    }
}

/// Counts for `GET /admin/dry-run/report`: requests by route and status, refusals by reason, and
/// the On-Premise fields that did not reach the Cloud request.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct DryRunReport {
    pub requests: std::collections::BTreeMap<String, u64>,
    pub refused: std::collections::BTreeMap<String, u64>,
    pub dropped_fields: std::collections::BTreeMap<String, u64>,
    /// One request id per dropped field, to look the request up in the log.
    pub dropped_examples: std::collections::BTreeMap<String, String>,
}

/// Distinct keys one table of the report keeps; past it, new keys are counted together under
/// `(other)`. Refusal reasons quote what clients sent: without a bound, a client could grow
/// the report (kept for the process's life in live mode) by a line per request.
const MAX_KEYS: usize = 500;
/// Longest key kept, in characters.
const MAX_KEY_CHARS: usize = 200;

/// Counts `key` once in `table`, within the bounds above; returns the key it was counted under.
pub fn count(table: &mut std::collections::BTreeMap<String, u64>, key: String) -> String {
    let mut key = key;
    if key.chars().count() > MAX_KEY_CHARS {
        key = key
            .chars()
            .take(MAX_KEY_CHARS)
            .chain(std::iter::once('…'))
            .collect();
    }
    if !table.contains_key(&key) && table.len() >= MAX_KEYS {
        key = "(other)".to_owned();
    }
    *table.entry(key.clone()).or_default() += 1;
    key
}

impl DryRun {
    /// Changes the report (a poisoned lock only means a panic elsewhere: the counts stand).
    pub fn record(&self, change: impl FnOnce(&mut DryRunReport)) {
        change(
            &mut self
                .report
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
    }

    /// A copy of the report as it stands.
    pub fn report(&self) -> DryRunReport {
        self.report
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Logs the Cloud request that would have been sent (to `sent_to`, the dialect's path;
    /// secrets masked, no query) and synthesizes Cloud's answer to `path_and_query`.
    pub(super) fn answer(
        &self,
        method: &Method,
        path_and_query: &str,
        sent_to: &str,
        body: Option<&[u8]>,
    ) -> CloudAnswer {
        let serial = self
            .serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body = body.and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok());
        let path = sent_to.split('?').next().unwrap_or("");
        let logged = body.as_ref().map(dryrun::redacted).unwrap_or_default();
        tracing::info!(method = %method, path = %path, body = %logged, "dry run: Cloud request not sent");
        let (status, answer) =
            dryrun::synthetic_cloud_answer(method.as_str(), path_and_query, body.as_ref(), serial);
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        CloudAnswer {
            status,
            headers: HeaderMap::new(),
            body: Bytes::from(answer.to_string()),
        }
    }
}

impl Upstream {
    /// The dry-run mode's state, when the proxy runs in it.
    pub fn dry_run(&self) -> Option<&DryRun> {
        self.dry_run.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_tables_stay_bounded_whatever_clients_send() {
        let mut table = std::collections::BTreeMap::new();
        for i in 0..2 * MAX_KEYS {
            count(
                &mut table,
                format!("not_found: no such endpoint: GET /v1/x{i}"),
            );
        }
        assert_eq!(table.len(), MAX_KEYS + 1);
        assert_eq!(table["(other)"], MAX_KEYS as u64);
        let long = count(&mut std::collections::BTreeMap::new(), "y".repeat(10_000));
        assert_eq!(long.chars().count(), MAX_KEY_CHARS + 1);
    }
}
