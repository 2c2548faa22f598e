//! The bookkeeping of PostgreSQL's claim walk, kept pure so it can be tested without a server.
//!
//! A claim walks each channel's recipients in key order, one probe per recipient (a loose
//! index scan; the SQL is in `postgres.rs`), and takes the heads that are due. A walk starts
//! where the channel's last one stopped and wraps round to its start once, so every recipient
//! gets its turn however long the others' queues are.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Where each channel's next walk starts (this process's own; replicas keep their own).
#[derive(Clone, Default)]
pub(super) struct Cursors(Arc<Mutex<HashMap<String, String>>>);

impl Cursors {
    pub(super) fn get(&self, channel: &str) -> Option<String> {
        let cursors = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        cursors.get(channel).cloned()
    }

    pub(super) fn set(&self, channel: &str, cursor: Option<String>) {
        let mut cursors = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match cursor {
            Some(key) => {
                cursors.insert(channel.to_owned(), key);
            }
            None => {
                cursors.remove(channel);
            }
        }
    }
}

/// One recipient's head as the walk saw it.
#[derive(Debug, Clone)]
pub(super) struct Visited {
    pub channel: String,
    pub ordering_key: String,
    pub id: i64,
    /// Due and not claimed under a live lease.
    pub eligible: bool,
    /// 1 for the first recipient of this statement's walk, then 2, 3, …
    pub step: i32,
}

/// One channel's walk during one claim.
#[derive(Debug)]
pub(super) struct ChannelWalk {
    pub channel: String,
    /// The first key the next statement looks at (inclusive; a key already looked at in this
    /// claim is passed over).
    pub from: String,
    /// Where the next statement stops (exclusive): after wrapping, the key the claim began at.
    pub until: Option<String>,
    began: Option<String>,
    wrapped: bool,
    taken: usize,
    last_taken: Option<String>,
    last_visited: Option<String>,
    /// `taken` once the quota is met (never, until then).
    quota_met_at: usize,
    /// Its quota is met, or it has come round to where it began.
    pub done: bool,
}

impl ChannelWalk {
    /// A walk from the recipient after `cursor`, or from the channel's first recipient.
    pub(super) fn new(channel: String, cursor: Option<String>) -> ChannelWalk {
        ChannelWalk {
            channel,
            from: cursor.clone().unwrap_or_default(),
            until: None,
            wrapped: cursor.is_none(),
            began: cursor.clone(),
            taken: 0,
            last_taken: None,
            // The cursor's recipient had its turn in the last claim: passed over this time.
            last_visited: cursor,
            quota_met_at: usize::MAX,
            done: false,
        }
    }

    /// Takes what one statement's walk of this channel saw (`visited`, in step order; the
    /// statement looks at `steps` recipients at most): eligible heads that the loop does not
    /// already hold go to `picked` until `quota` of them are taken.
    pub(super) fn take<'a>(
        &mut self,
        visited: impl IntoIterator<Item = &'a Visited>,
        steps: usize,
        quota: usize,
        held: &[i64],
        picked: &mut Vec<i64>,
    ) {
        let mut seen = 0;
        for head in visited {
            seen += 1;
            // A statement starts at the key the last one ended on (or at the cursor).
            if self.last_visited.as_deref() == Some(head.ordering_key.as_str()) {
                continue;
            }
            self.last_visited = Some(head.ordering_key.clone());
            if head.eligible && !held.contains(&head.id) {
                picked.push(head.id);
                self.taken += 1;
                self.last_taken = Some(head.ordering_key.clone());
                if self.taken >= quota {
                    self.quota_met_at = quota;
                    self.done = true;
                    return;
                }
            }
        }
        if seen < steps {
            // The end of the channel's recipients (or, after wrapping, where the claim began).
            if self.wrapped {
                self.done = true;
            } else {
                self.wrapped = true;
                self.from = String::new();
                self.until = self.began.clone();
            }
        } else if let Some(last) = &self.last_visited {
            self.from = last.clone();
        }
    }

    /// Where the channel's next claim starts (after this key): the last head taken when the
    /// quota was met, the last recipient looked at when the claim ran out of statements, or
    /// the start (`None`) when the walk came round.
    pub(super) fn cursor(&self) -> Option<String> {
        if self.taken >= self.quota_met_at {
            return self.last_taken.clone();
        }
        if self.done {
            return None;
        }
        self.last_visited.clone().or_else(|| self.began.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What one statement of the walk sees: (recipient, head id, eligible).
    fn seen(heads: &[(&str, i64, bool)]) -> Vec<Visited> {
        heads
            .iter()
            .enumerate()
            .map(|(step, (key, id, eligible))| Visited {
                channel: "c".into(),
                ordering_key: (*key).into(),
                id: *id,
                eligible: *eligible,
                step: step as i32 + 1,
            })
            .collect()
    }

    #[test]
    fn takes_eligible_heads_not_held_until_the_quota_and_resumes_after_the_last_taken() {
        let mut walk = ChannelWalk::new("c".into(), None);
        let mut picked = Vec::new();
        let heads = seen(&[
            ("a", 1, true),
            ("b", 2, false),
            ("c", 3, true),
            ("d", 4, true),
        ]);
        walk.take(&heads, 10, 2, &[3], &mut picked);
        // b is not due (or claimed elsewhere), c is already held by this loop.
        assert_eq!(picked, [1, 4]);
        assert!(walk.done);
        assert_eq!(walk.cursor().as_deref(), Some("d"));
    }

    #[test]
    fn passes_over_the_cursors_recipient_and_wraps_round_to_it() {
        let mut walk = ChannelWalk::new("c".into(), Some("b".into()));
        assert_eq!((walk.from.as_str(), walk.until.as_deref()), ("b", None));
        let mut picked = Vec::new();
        // The first statement starts at the cursor (inclusive) and reaches the end.
        walk.take(
            &seen(&[("b", 2, true), ("c", 3, true)]),
            10,
            5,
            &[],
            &mut picked,
        );
        assert_eq!(picked, [3]);
        assert!(!walk.done);
        // It wraps: from the start up to (not including) where it began.
        assert_eq!((walk.from.as_str(), walk.until.as_deref()), ("", Some("b")));
        walk.take(&seen(&[("a", 1, true)]), 10, 5, &[], &mut picked);
        assert_eq!(picked, [3, 1]);
        assert!(walk.done);
        // Round once without meeting the quota: the next claim starts at the start.
        assert_eq!(walk.cursor(), None);
    }

    #[test]
    fn a_walk_from_the_start_that_reaches_the_end_does_not_wrap() {
        let mut walk = ChannelWalk::new("c".into(), None);
        let mut picked = Vec::new();
        walk.take(&seen(&[("a", 1, false)]), 10, 5, &[], &mut picked);
        assert!(picked.is_empty());
        assert!(walk.done);
        assert_eq!(walk.cursor(), None);
    }

    #[test]
    fn a_full_statement_continues_from_its_last_recipient_without_taking_it_twice() {
        let mut walk = ChannelWalk::new("c".into(), None);
        let mut picked = Vec::new();
        walk.take(
            &seen(&[("a", 1, true), ("b", 2, true)]),
            2,
            5,
            &[],
            &mut picked,
        );
        assert!(!walk.done);
        assert_eq!(walk.from, "b");
        walk.take(
            &seen(&[("b", 2, true), ("c", 3, true)]),
            2,
            5,
            &[],
            &mut picked,
        );
        assert_eq!(picked, [1, 2, 3]);
        // Out of statements (the caller stops): the next claim goes on after c.
        assert_eq!(walk.cursor().as_deref(), Some("c"));
    }

    #[test]
    fn cursors_are_kept_per_channel_and_cleared_by_none() {
        let cursors = Cursors::default();
        cursors.set("c", Some("k".into()));
        cursors.set("d", Some("m".into()));
        cursors.set("d", None);
        assert_eq!(cursors.get("c").as_deref(), Some("k"));
        assert_eq!(cursors.get("d"), None);
    }
}
