//! The one clock: every time the proxy stores is milliseconds since the Unix epoch, taken
//! here. A module of its own at the bottom of the house, so storage, login sessions and the
//! relay read the same clock without importing one another.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    epoch_ms(SystemTime::now())
}

/// Milliseconds since the Unix epoch: how every time is stored.
pub fn epoch_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The relay's clock, injectable: the system clock in the proxy, a hand-moved one in tests of
/// timing (backoff, the circuit breaker, leases), so they need no sleeps.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<std::sync::Arc<std::sync::atomic::AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock that stands at `start_ms` until moved with [`Clock::advance`].
    pub fn manual(start_ms: i64) -> Clock {
        Clock {
            manual: Some(std::sync::Arc::new(std::sync::atomic::AtomicI64::new(
                start_ms,
            ))),
        }
    }

    pub fn now_ms(&self) -> i64 {
        match &self.manual {
            Some(at) => at.load(std::sync::atomic::Ordering::SeqCst),
            None => now_ms(),
        }
    }

    /// Moves a manual clock forward; the system clock moves by itself.
    pub fn advance(&self, by: std::time::Duration) {
        if let Some(at) = &self.manual {
            let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
            at.fetch_add(by, std::sync::atomic::Ordering::SeqCst);
        }
    }
}
