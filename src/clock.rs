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
