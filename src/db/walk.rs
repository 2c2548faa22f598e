//! The bookkeeping of PostgreSQL's claim walk, kept pure so it can be tested without a server.
//!
//! A claim walks each channel's recipients in key order, one probe per recipient (a loose
//! index scan; the SQL is in `postgres.rs`), and takes the heads that are due. A walk starts
//! where the channel's last one stopped and wraps round to its start once, so every recipient
//! gets its turn however long the others' queues are.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Where each channel's next walk starts (this process's own; replicas keep their own), and
/// whose turn it is to be walked first (a claim's budget may run out before the last channel).
#[derive(Clone, Default)]
pub(super) struct Cursors(Arc<Mutex<HashMap<String, String>>>, Arc<AtomicUsize>);

impl Cursors {
    pub(super) fn next_turn(&self) -> usize {
        self.1.fetch_add(1, Ordering::Relaxed)
    }

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
    /// Eligible heads found by this statement's walk so far, this one included.
    pub found: i32,
}

/// One channel's walk during one claim.
#[derive(Debug)]
pub(super) struct ChannelWalk {
    pub channel: String,
    /// The first key the next statement looks at (inclusive; the key the walk stands on is
    /// passed over).
    pub from: String,
    /// Where the next statement stops (inclusive): after wrapping, the key the claim began at,
    /// which the first statement passed over (it had its turn in the last claim) and which now
    /// has its turn last.
    pub until: Option<String>,
    began: Option<String>,
    wrapped: bool,
    /// Heads taken and claimed, plus `picks`.
    taken: usize,
    /// Heads taken and not yet claimed.
    picks: Vec<i64>,
    last_taken: Option<String>,
    /// The key the walk stands on: the next statement starts here and passes it over.
    last_visited: Option<String>,
    quota_met: bool,
    came_round: bool,
    /// Its quota is met, it has come round to where it began, or the claim's budget is spent.
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
            picks: Vec::new(),
            last_taken: None,
            last_visited: cursor,
            quota_met: false,
            came_round: false,
            done: false,
        }
    }

    pub(super) fn taken(&self) -> usize {
        self.taken
    }

    /// Heads taken since the last [`ChannelWalk::settle`], to be claimed.
    pub(super) fn picks(&self) -> &[i64] {
        &self.picks
    }

    /// Takes what one statement's walk of this channel saw (`visited`, in step order):
    /// eligible heads that the loop does not already hold, until `quota` are taken in this
    /// claim. `stopped_early`: the statement stopped before the end of the channel's
    /// recipients (it had looked at as many as it may, or found as many as were wanted).
    pub(super) fn take<'a>(
        &mut self,
        visited: impl IntoIterator<Item = &'a Visited>,
        stopped_early: bool,
        quota: usize,
        held: &[i64],
    ) {
        for head in visited {
            if self.last_visited.as_deref() == Some(head.ordering_key.as_str()) {
                continue;
            }
            self.last_visited = Some(head.ordering_key.clone());
            if head.eligible && !held.contains(&head.id) && !self.picks.contains(&head.id) {
                self.picks.push(head.id);
                self.taken += 1;
                self.last_taken = Some(head.ordering_key.clone());
                if self.taken >= quota {
                    // Should a lost race reopen the walk, it goes on from here.
                    self.from = head.ordering_key.clone();
                    self.quota_met = true;
                    self.done = true;
                    return;
                }
            }
        }
        if !stopped_early {
            // The end of the channel's recipients (or, after wrapping, where the claim began).
            if self.wrapped {
                self.came_round = true;
                self.done = true;
            } else {
                self.wrapped = true;
                self.from = String::new();
                self.until = self.began.clone();
                self.last_visited = None;
            }
        } else if let Some(last) = &self.last_visited {
            self.from = last.clone();
        }
    }

    /// Stops the walk where it stands (the claim's budget is spent); the next claim goes on
    /// from here.
    pub(super) fn pause(&mut self) {
        self.done = true;
    }

    /// After the claim statement: picks that `claimed` lacks were taken by another replica
    /// first. They no longer count, and a walk that stopped at its quota goes on for as many.
    /// Returns how many were lost.
    pub(super) fn settle(&mut self, claimed: &std::collections::HashSet<i64>) -> usize {
        let before = self.picks.len();
        self.picks.retain(|id| claimed.contains(id));
        let lost = before - self.picks.len();
        self.picks.clear();
        self.taken -= lost;
        if lost > 0 && self.quota_met {
            self.quota_met = false;
            self.done = self.came_round;
        }
        lost
    }

    /// Where the channel's next claim starts (after this key; it comes last in that claim's
    /// walk): the last head taken when the quota was met, the last recipient looked at when
    /// the claim stopped early, or the start (`None`) when the walk came round.
    pub(super) fn cursor(&self) -> Option<String> {
        if self.quota_met {
            return self.last_taken.clone();
        }
        if self.came_round {
            return None;
        }
        // After the wrap, what lies before the old cursor is still to be looked at: from
        // where the walk stands, or from the start if it has not looked at anything since.
        if self.wrapped {
            return self.last_visited.clone();
        }
        self.last_visited.clone().or_else(|| self.began.clone())
    }
}

/// What bounds one statement's walk.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Recipients looked at per channel at most.
    pub steps: i32,
    /// Eligible heads found per channel at most (see [`wanted`]).
    pub wanted: i32,
    /// Heads one channel may take in one claim.
    pub quota: usize,
}

/// How many eligible heads a statement should find per channel: one more than the most any
/// open walk may still take (its first recipient may be the one it stands on, passed over).
pub(super) fn wanted(open: &[&ChannelWalk], quota: usize, budget: usize) -> i32 {
    open.iter()
        .map(|w| quota.saturating_sub(w.taken()).min(budget))
        .max()
        .unwrap_or(0)
        .saturating_add(1)
        .min(i32::MAX as usize) as i32
}

/// Hands one statement's rows to the walks still open, channel by channel in the walks'
/// order, while the claim's `budget` (heads it may still take in all) lasts; walks left when
/// it is spent stop where they stand.
pub(super) fn take_seen(
    walks: &mut [ChannelWalk],
    mut rows: Vec<Visited>,
    limits: Limits,
    budget: &mut usize,
    held: &[i64],
) {
    rows.sort_by(|a, b| (&a.channel, a.step).cmp(&(&b.channel, b.step)));
    for walk in walks.iter_mut().filter(|w| !w.done) {
        if *budget == 0 {
            walk.pause();
            continue;
        }
        let before = walk.taken();
        let visited: Vec<&Visited> = rows.iter().filter(|v| v.channel == walk.channel).collect();
        let stopped_early = visited
            .last()
            .is_some_and(|last| last.step >= limits.steps || last.found >= limits.wanted);
        let quota = limits.quota.min(before.saturating_add(*budget));
        walk.take(visited, stopped_early, quota, held);
        *budget -= walk.taken() - before;
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
                found: 0,
            })
            .collect()
    }

    #[test]
    fn takes_eligible_heads_not_held_until_the_quota_and_resumes_after_the_last_taken() {
        let mut walk = ChannelWalk::new("c".into(), None);
        let heads = seen(&[
            ("a", 1, true),
            ("b", 2, false),
            ("c", 3, true),
            ("d", 4, true),
        ]);
        walk.take(&heads, false, 2, &[3]);
        // b is not due (or claimed elsewhere), c is already held by this loop.
        assert_eq!(walk.picks(), [1, 4]);
        assert!(walk.done);
        assert_eq!(walk.cursor().as_deref(), Some("d"));
    }

    #[test]
    fn the_cursors_recipient_comes_last_after_the_wrap() {
        let mut walk = ChannelWalk::new("c".into(), Some("b".into()));
        assert_eq!((walk.from.as_str(), walk.until.as_deref()), ("b", None));
        // The first statement starts at the cursor, passes it over, and reaches the end.
        walk.take(&seen(&[("b", 2, true), ("c", 3, true)]), false, 5, &[]);
        assert_eq!(walk.picks(), [3]);
        assert!(!walk.done);
        // It wraps: from the start up to and including where it began.
        assert_eq!((walk.from.as_str(), walk.until.as_deref()), ("", Some("b")));
        walk.take(&seen(&[("a", 1, true), ("b", 2, true)]), false, 5, &[]);
        assert_eq!(walk.picks(), [3, 1, 2]);
        assert!(walk.done);
        // Round once without meeting the quota: the next claim starts at the start.
        assert_eq!(walk.cursor(), None);
    }

    #[test]
    fn a_lone_recipient_is_taken_claim_after_claim() {
        // Quota 1: the last claim took x's head, so the cursor is x.
        let mut walk = ChannelWalk::new("c".into(), Some("x".into()));
        walk.take(&seen(&[("x", 2, true)]), false, 1, &[]);
        assert!(walk.picks().is_empty());
        walk.take(&seen(&[("x", 2, true)]), false, 1, &[]);
        assert_eq!(walk.picks(), [2]);
        assert_eq!(walk.cursor().as_deref(), Some("x"));
    }

    #[test]
    fn a_walk_from_the_start_that_reaches_the_end_does_not_wrap() {
        let mut walk = ChannelWalk::new("c".into(), None);
        walk.take(&seen(&[("a", 1, false)]), false, 5, &[]);
        assert!(walk.picks().is_empty());
        assert!(walk.done);
        assert_eq!(walk.cursor(), None);
    }

    #[test]
    fn a_full_statement_continues_from_its_last_recipient_without_taking_it_twice() {
        let mut walk = ChannelWalk::new("c".into(), None);
        walk.take(&seen(&[("a", 1, true), ("b", 2, true)]), true, 5, &[]);
        assert!(!walk.done);
        assert_eq!(walk.from, "b");
        walk.take(&seen(&[("b", 2, true), ("c", 3, true)]), true, 5, &[]);
        assert_eq!(walk.picks(), [1, 2, 3]);
        // Stopped early (out of statements): the next claim goes on after c.
        assert_eq!(walk.cursor().as_deref(), Some("c"));
    }

    #[test]
    fn heads_another_replica_claimed_first_are_made_up_for_by_walking_on() {
        let mut walk = ChannelWalk::new("c".into(), None);
        walk.take(
            &seen(&[("a", 1, true), ("b", 2, true), ("c", 3, true)]),
            true,
            2,
            &[],
        );
        assert!(walk.done);
        // The claim got a; b went to another replica in between.
        assert_eq!(walk.settle(&[1].into_iter().collect()), 1);
        assert!(!walk.done);
        assert_eq!(walk.taken(), 1);
        walk.take(&seen(&[("c", 3, true)]), false, 2, &[]);
        assert_eq!(walk.picks(), [3]);
        assert!(walk.done);
        assert_eq!(walk.settle(&[3].into_iter().collect()), 0);
        assert_eq!(walk.cursor().as_deref(), Some("c"));
    }

    #[test]
    fn a_walk_paused_right_after_its_wrap_starts_the_next_claim_at_the_start() {
        let mut walk = ChannelWalk::new("c".into(), Some("m".into()));
        // Nothing after m is due: the walk wraps, then the claim's budget runs out.
        walk.take(&seen(&[("m", 1, false), ("x", 2, false)]), false, 5, &[]);
        walk.pause();
        // Not m again: the recipients before m would never be looked at.
        assert_eq!(walk.cursor(), None);
    }

    #[test]
    fn a_walk_reopened_after_a_lost_race_goes_on_after_its_last_pick() {
        let mut walk = ChannelWalk::new("c".into(), Some("b".into()));
        walk.take(
            &seen(&[("b", 2, true), ("c", 3, true), ("d", 4, true)]),
            true,
            2,
            &[],
        );
        assert_eq!(walk.picks(), [3, 4]);
        assert_eq!(walk.settle(&[4].into_iter().collect()), 1);
        // The next statement starts at d (passed over), not back at the cursor b.
        assert_eq!(walk.from, "d");
        walk.take(&seen(&[("d", 4, true), ("e", 5, true)]), true, 2, &[]);
        assert_eq!(walk.picks(), [5]);
    }

    #[test]
    fn a_paused_walk_resumes_where_it_stood() {
        let mut walk = ChannelWalk::new("c".into(), None);
        walk.take(&seen(&[("a", 1, false), ("b", 2, false)]), true, 5, &[]);
        walk.pause();
        assert!(walk.done);
        assert_eq!(walk.cursor().as_deref(), Some("b"));
    }

    #[test]
    fn the_claims_budget_is_shared_by_channels_in_turn_and_the_rest_pause() {
        let mut walks = vec![
            ChannelWalk::new("c".into(), None),
            ChannelWalk::new("d".into(), None),
        ];
        let row = |channel: &str, key: &str, id, step, found| Visited {
            channel: channel.into(),
            ordering_key: key.into(),
            id,
            eligible: true,
            step,
            found,
        };
        // Both channels have two due heads; the loop has room for three.
        let rows = vec![
            row("d", "a", 3, 1, 1),
            row("c", "a", 1, 1, 1),
            row("c", "b", 2, 2, 2),
            row("d", "b", 4, 2, 2),
        ];
        let open: Vec<&ChannelWalk> = walks.iter().collect();
        assert_eq!(wanted(&open, 5, 3), 4);
        let limits = Limits {
            steps: 10,
            wanted: 4,
            quota: 5,
        };
        let mut budget = 3;
        take_seen(&mut walks, rows, limits, &mut budget, &[]);
        assert_eq!(budget, 0);
        assert_eq!(walks[0].picks(), [1, 2]);
        assert_eq!(walks[1].picks(), [3]);
        assert!(walks.iter().all(|w| w.done));
        // d stopped at its budget: its next claim goes on after a, not from the start.
        assert_eq!(walks[1].cursor().as_deref(), Some("a"));
    }

    #[test]
    fn cursors_are_kept_per_channel_and_cleared_by_none() {
        let cursors = Cursors::default();
        cursors.set("c", Some("k".into()));
        cursors.set("d", Some("m".into()));
        cursors.set("d", None);
        assert_eq!(cursors.get("c").as_deref(), Some("k"));
        assert_eq!(cursors.get("d"), None);
        assert_ne!(cursors.next_turn(), cursors.next_turn());
    }
}
