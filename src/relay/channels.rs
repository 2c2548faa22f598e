//! Fair, isolated delivery across channels: which fetched payload goes out next. Pure (every
//! time is an argument), so its rules are tested without sleeps or receivers.
//!
//! The rules:
//! - A channel has at most `per_channel` deliveries in flight, so one slow receiver (say 10 s
//!   per answer) can hold at most that many of the relay's slots, never all of them.
//! - Channels with work take turns: each free slot goes to the next channel in round-robin
//!   order that has a payload waiting and room under its cap.
//! - A per-channel circuit breaker: after `trip_after` failures in a row the channel is *open*
//!   and gets no slot until its probe time (the payloads' own backoff, from the number of
//!   failures). Then one delivery probes it (*half open*): success closes the breaker, failure
//!   opens it again for longer. A dead receiver thus costs one slot per probe, not a slot per
//!   payload per timeout.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::db::Due;

/// The limits the scheduler keeps.
#[derive(Debug, Clone, Copy)]
pub struct Fairness {
    /// Deliveries in flight per channel.
    pub per_channel: usize,
    /// Failures in a row that open a channel's breaker.
    pub trip_after: u32,
    /// The first probe wait; it doubles with each failed probe.
    pub probe_base: Duration,
    /// The longest wait between probes.
    pub probe_max: Duration,
}

/// A fetched payload, and until when its claim lets this replica deliver it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub due: Due,
    pub lease_ends_ms: i64,
}

/// A channel's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    /// Delivering; `failures` in a row so far.
    Closed { failures: u32 },
    /// No deliveries until `probe_at_ms`; `probes` failed so far (the wait doubles with each).
    Open {
        failures: u32,
        probes: u32,
        probe_at_ms: i64,
    },
    /// One probe delivery is out; nothing else goes until it answers.
    HalfOpen { failures: u32, probes: u32 },
}

#[derive(Debug)]
struct ChannelState {
    queued: VecDeque<Pending>,
    in_flight: usize,
    breaker: Breaker,
    /// Deliveries the receiver took, since start (for the console's rate).
    delivered: u64,
    last_error: Option<String>,
}

/// The per-channel queues, counts and breakers of one replica's delivery loop.
#[derive(Debug)]
pub struct Channels {
    fairness: Fairness,
    states: HashMap<String, ChannelState>,
    /// Round-robin order of the channels known; the front is served first.
    turns: VecDeque<String>,
}

/// What a channel looks like to an operator.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChannelView {
    pub channel: String,
    pub queued: usize,
    pub in_flight: usize,
    /// `closed`, `open` or `half-open`.
    pub circuit: &'static str,
    pub failures_in_a_row: u32,
    pub delivered: u64,
    /// Why the last failed delivery failed.
    pub last_error: Option<String>,
}

impl Channels {
    pub fn new(fairness: Fairness) -> Channels {
        Channels {
            fairness: Fairness {
                per_channel: fairness.per_channel.max(1),
                trip_after: fairness.trip_after.max(1),
                ..fairness
            },
            states: HashMap::new(),
            turns: VecDeque::new(),
        }
    }

    fn state(&mut self, channel: &str) -> &mut ChannelState {
        if !self.states.contains_key(channel) {
            self.turns.push_back(channel.to_owned());
        }
        self.states
            .entry(channel.to_owned())
            .or_insert_with(|| ChannelState {
                queued: VecDeque::new(),
                in_flight: 0,
                breaker: Breaker::Closed { failures: 0 },
                delivered: 0,
                last_error: None,
            })
    }

    /// A fetched payload waits for its channel's turn.
    pub fn push(&mut self, pending: Pending) {
        let channel = pending.due.channel.clone();
        self.state(&channel).queued.push_back(pending);
    }

    /// Payloads fetched and not yet started.
    pub fn queued(&self) -> usize {
        self.states.values().map(|s| s.queued.len()).sum()
    }

    /// Deliveries started and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.states.values().map(|s| s.in_flight).sum()
    }

    /// The next payload to start at `now_ms`, taking turns across channels; it counts as in
    /// flight until [`Channels::finished`].
    pub fn next(&mut self, now_ms: i64) -> Option<Pending> {
        let per_channel = self.fairness.per_channel;
        for _ in 0..self.turns.len() {
            let channel = self.turns.pop_front()?;
            self.turns.push_back(channel.clone());
            let Some(state) = self.states.get_mut(&channel) else {
                continue;
            };
            if state.queued.is_empty() {
                continue;
            }
            let may_start = match state.breaker {
                Breaker::Closed { .. } => state.in_flight < per_channel,
                Breaker::Open {
                    failures,
                    probes,
                    probe_at_ms,
                } if now_ms >= probe_at_ms && state.in_flight == 0 => {
                    state.breaker = Breaker::HalfOpen { failures, probes };
                    true
                }
                Breaker::Open { .. } | Breaker::HalfOpen { .. } => false,
            };
            if may_start {
                if let Some(pending) = state.queued.pop_front() {
                    state.in_flight += 1;
                    return Some(pending);
                }
            }
        }
        None
    }

    /// What became of a delivery of `channel`, for operators: taken, or why not.
    pub fn note(&mut self, channel: &str, error: Option<&str>) {
        let state = self.state(channel);
        match error {
            None => state.delivered += 1,
            Some(error) => state.last_error = Some(error.to_owned()),
        }
    }

    /// A delivery of `channel` ended; `delivered` says whether the receiver took it.
    pub fn finished(&mut self, channel: &str, delivered: bool, now_ms: i64) {
        let fairness = self.fairness;
        let state = self.state(channel);
        state.in_flight = state.in_flight.saturating_sub(1);
        let failures = match state.breaker {
            Breaker::Closed { failures }
            | Breaker::Open { failures, .. }
            | Breaker::HalfOpen { failures, .. } => failures,
        };
        state.breaker = if delivered {
            Breaker::Closed { failures: 0 }
        } else {
            let failures = failures.saturating_add(1);
            match state.breaker {
                Breaker::Closed { .. } if failures < fairness.trip_after => {
                    Breaker::Closed { failures }
                }
                Breaker::Closed { .. } => Breaker::Open {
                    failures,
                    probes: 0,
                    probe_at_ms: now_ms + probe_wait(fairness, 0),
                },
                // A failure from before the breaker opened does not move the probe.
                Breaker::Open {
                    probes,
                    probe_at_ms,
                    ..
                } => Breaker::Open {
                    failures,
                    probes,
                    probe_at_ms,
                },
                Breaker::HalfOpen { probes, .. } => {
                    let probes = probes.saturating_add(1);
                    Breaker::Open {
                        failures,
                        probes,
                        probe_at_ms: now_ms + probe_wait(fairness, probes),
                    }
                }
            }
        };
    }

    /// A payload taken by [`Channels::next`] that did not go out after all (its lease was too
    /// short): its slot frees, the breaker learns nothing.
    pub fn abandoned(&mut self, channel: &str, now_ms: i64) {
        let state = self.state(channel);
        state.in_flight = state.in_flight.saturating_sub(1);
        // A probe that did not go out: the channel may be probed again at once.
        if let Breaker::HalfOpen { failures, probes } = state.breaker {
            state.breaker = Breaker::Open {
                failures,
                probes,
                probe_at_ms: now_ms,
            };
        }
    }

    /// Channels that should not be fetched for now: their breaker is open (and not yet due
    /// for a probe) or they already hold a full cap of payloads waiting.
    pub fn not_fetching(&self, now_ms: i64) -> Vec<String> {
        let per_channel = self.fairness.per_channel;
        self.states
            .iter()
            .filter(|(_, state)| {
                state.queued.len() >= per_channel
                    || match state.breaker {
                        Breaker::Open { probe_at_ms, .. } => now_ms < probe_at_ms,
                        Breaker::HalfOpen { .. } => true,
                        Breaker::Closed { .. } => false,
                    }
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Payloads waiting behind an open breaker: they give their claims back instead of
    /// holding them (and their lease) until the probe.
    pub fn take_blocked(&mut self, now_ms: i64) -> Vec<Pending> {
        self.states
            .values_mut()
            .filter(|state| match state.breaker {
                Breaker::Open { probe_at_ms, .. } => now_ms < probe_at_ms,
                Breaker::HalfOpen { .. } | Breaker::Closed { .. } => false,
            })
            .flat_map(|state| state.queued.drain(..))
            .collect()
    }

    /// The earliest probe time of an open breaker still to come (one already past waits for
    /// a payload of its channel, which a commit or the poll brings).
    pub fn next_probe_at(&self, now_ms: i64) -> Option<i64> {
        self.states
            .values()
            .filter_map(|state| match state.breaker {
                Breaker::Open { probe_at_ms, .. } if probe_at_ms > now_ms => Some(probe_at_ms),
                _ => None,
            })
            .min()
    }

    pub fn breaker(&self, channel: &str) -> Option<Breaker> {
        self.states.get(channel).map(|state| state.breaker)
    }

    /// Each channel as an operator sees it, by name.
    pub fn view(&self) -> Vec<ChannelView> {
        let mut views: Vec<ChannelView> = self
            .states
            .iter()
            .map(|(name, state)| {
                let (circuit, failures) = match state.breaker {
                    Breaker::Closed { failures } => ("closed", failures),
                    Breaker::Open { failures, .. } => ("open", failures),
                    Breaker::HalfOpen { failures, .. } => ("half-open", failures),
                };
                ChannelView {
                    channel: name.clone(),
                    queued: state.queued.len(),
                    in_flight: state.in_flight,
                    circuit,
                    failures_in_a_row: failures,
                    delivered: state.delivered,
                    last_error: state.last_error.clone(),
                }
            })
            .collect();
        views.sort_by(|a, b| a.channel.cmp(&b.channel));
        views
    }
}

/// The wait before the next probe: the probe base after the breaker first opens, doubling
/// with each failed probe (not with failures of deliveries that were already out), capped.
fn probe_wait(fairness: Fairness, failed_probes: u32) -> i64 {
    let wait = fairness
        .probe_base
        .saturating_mul(1u32 << failed_probes.min(20))
        .min(fairness.probe_max);
    i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAIRNESS: Fairness = Fairness {
        per_channel: 2,
        trip_after: 3,
        probe_base: Duration::from_secs(1),
        probe_max: Duration::from_secs(60),
    };

    fn pending(id: i64, channel: &str) -> Pending {
        Pending {
            due: Due {
                id,
                channel: channel.to_owned(),
                payload: String::new(),
                attempts: 0,
                created_at: 0,
            },
            lease_ends_ms: i64::MAX,
        }
    }

    fn started(channels: &mut Channels, now: i64) -> Vec<(String, i64)> {
        std::iter::from_fn(|| channels.next(now))
            .map(|p| (p.due.channel, p.due.id))
            .collect()
    }

    #[test]
    fn a_channel_never_holds_more_than_its_cap_and_channels_take_turns() {
        let mut channels = Channels::new(FAIRNESS);
        for id in 1..=5 {
            channels.push(pending(id, "slow"));
        }
        for id in 10..=11 {
            channels.push(pending(id, "fast"));
        }
        let first = started(&mut channels, 0);
        assert_eq!(
            first,
            [
                ("slow".into(), 1),
                ("fast".into(), 10),
                ("slow".into(), 2),
                ("fast".into(), 11)
            ]
        );
        assert_eq!(channels.in_flight(), 4);
        // `slow` is at its cap: a freed `fast` slot does not go to it.
        channels.finished("fast", true, 0);
        assert!(channels.next(0).is_none());
        channels.finished("slow", true, 0);
        assert_eq!(started(&mut channels, 0), [("slow".into(), 3)]);
        // A channel holding a full cap of waiting payloads is not fetched for.
        assert_eq!(channels.not_fetching(0), ["slow".to_owned()]);
    }

    #[test]
    fn failures_in_a_row_open_the_breaker_until_one_probe_answers() {
        let mut channels = Channels::new(FAIRNESS);
        for id in 1..=10 {
            channels.push(pending(id, "dead"));
        }
        // Two failures leave it closed, a success resets the count.
        for _ in 0..2 {
            channels.next(0);
            channels.finished("dead", false, 0);
        }
        channels.next(0);
        channels.finished("dead", true, 0);
        assert_eq!(
            channels.breaker("dead"),
            Some(Breaker::Closed { failures: 0 })
        );
        for _ in 0..3 {
            channels.next(0);
            channels.finished("dead", false, 1_000);
        }
        assert_eq!(
            channels.breaker("dead"),
            Some(Breaker::Open {
                failures: 3,
                probes: 0,
                probe_at_ms: 2_000
            })
        );
        // Open: no slot, not fetched for, waiting payloads give their claims back.
        assert!(channels.next(1_999).is_none());
        assert_eq!(channels.not_fetching(1_999), ["dead".to_owned()]);
        assert_eq!(channels.take_blocked(1_999).len(), 4);
        assert_eq!(channels.next_probe_at(1_999), Some(2_000));
        assert_eq!(channels.next_probe_at(2_000), None);
        // Probe time: exactly one delivery goes, the rest wait for its answer.
        channels.push(pending(20, "dead"));
        channels.push(pending(21, "dead"));
        assert_eq!(started(&mut channels, 2_000), [("dead".into(), 20)]);
        assert_eq!(channels.not_fetching(2_000), ["dead".to_owned()]);
        // A failed probe opens it again, for twice as long.
        channels.finished("dead", false, 2_500);
        assert_eq!(
            channels.breaker("dead"),
            Some(Breaker::Open {
                failures: 4,
                probes: 1,
                probe_at_ms: 4_500
            })
        );
        assert_eq!(started(&mut channels, 4_500), [("dead".into(), 21)]);
        // A delivered probe closes it.
        channels.finished("dead", true, 4_600);
        assert_eq!(
            channels.breaker("dead"),
            Some(Breaker::Closed { failures: 0 })
        );
    }

    #[test]
    fn a_probe_that_did_not_go_out_leaves_the_channel_open_for_the_next_probe() {
        let mut channels = Channels::new(FAIRNESS);
        for id in 1..=4 {
            channels.push(pending(id, "dead"));
        }
        for _ in 0..3 {
            channels.next(0);
            channels.finished("dead", false, 0);
        }
        let probe = channels.next(1_000).map(|p| p.due.id);
        assert_eq!(probe, Some(4));
        assert!(matches!(
            channels.breaker("dead"),
            Some(Breaker::HalfOpen { .. })
        ));
        // Its lease was too short: it is given back, and the channel may be probed again.
        channels.abandoned("dead", 1_200);
        assert_eq!(
            channels.breaker("dead"),
            Some(Breaker::Open {
                failures: 3,
                probes: 0,
                probe_at_ms: 1_200
            })
        );
        channels.push(pending(5, "dead"));
        assert_eq!(started(&mut channels, 1_200), [("dead".into(), 5)]);
    }

    #[test]
    fn probes_back_off_up_to_the_cap() {
        assert_eq!(probe_wait(FAIRNESS, 0), 1_000);
        assert_eq!(probe_wait(FAIRNESS, 2), 4_000);
        assert_eq!(probe_wait(FAIRNESS, 40), 60_000);
    }

    #[test]
    fn failures_of_deliveries_already_out_do_not_lengthen_the_first_probe_wait() {
        let mut channels = Channels::new(Fairness {
            per_channel: 10,
            ..FAIRNESS
        });
        for id in 1..=10 {
            channels.push(pending(id, "dead"));
        }
        assert_eq!(started(&mut channels, 0).len(), 10);
        for _ in 0..10 {
            channels.finished("dead", false, 0);
        }
        assert_eq!(channels.next_probe_at(0), Some(1_000));
    }

    #[test]
    fn an_open_channel_does_not_slow_the_others() {
        let mut channels = Channels::new(FAIRNESS);
        for id in 1..=3 {
            channels.push(pending(id, "dead"));
            channels.next(0);
            channels.finished("dead", false, 0);
        }
        channels.push(pending(4, "dead"));
        for id in 10..=12 {
            channels.push(pending(id, "ok"));
        }
        assert_eq!(
            started(&mut channels, 10),
            [("ok".into(), 10), ("ok".into(), 11)]
        );
    }
}
