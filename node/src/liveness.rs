//! The one rule for "is a peer alive": it was heard from within a limit.
//! Pure (time is given), saturating (a clock that steps back is "just
//! heard", never an overflow). Used by the cluster membership
//! ([`crate::presence::Membership`]: paused after three silent heartbeat
//! periods) and by the bookstore's callers ([`crate::services::bookstore::wire::Peers`]:
//! a replica silent past `timeout_ms` is not called). The replication
//! needs none: raft's own heartbeats and election timeouts decide there.

use std::time::{Duration, Instant};

/// Alive while silent for at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    limit: Duration,
}

impl Liveness {
    pub const fn new(limit: Duration) -> Self {
        Self { limit }
    }

    /// Alive while silent for at most `periods` beats of `period_ms` (the
    /// period clamped to 50 ms ..= 10 s, so a silly announced period cannot
    /// make a peer immortal or always dead).
    pub fn periods(period_ms: u64, periods: u32) -> Self {
        Self::new(Duration::from_millis(period_ms.clamp(50, 10_000)) * periods)
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// How long since `last`, by monotonic instants.
    pub fn since(last: Instant, now: Instant) -> Duration {
        now.saturating_duration_since(last)
    }

    /// How long since `last_ms`, by millisecond clock readings.
    pub fn since_ms(last_ms: u64, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(last_ms))
    }

    /// The rule: heard within the limit.
    pub fn alive(&self, silent_for: Duration) -> bool {
        silent_for <= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_up_to_the_limit_and_never_overflowing() {
        let l = Liveness::new(Duration::from_millis(1000));
        assert!(l.alive(Liveness::since_ms(0, 1000)));
        assert!(!l.alive(Liveness::since_ms(0, 1001)));
        assert!(
            l.alive(Liveness::since_ms(5000, 10)),
            "a clock stepping back is not silence"
        );
        assert!(l.alive(Liveness::since_ms(u64::MAX, 0)));
        assert!(!l.alive(Liveness::since_ms(0, u64::MAX)));
        let t = Instant::now();
        assert_eq!(
            Liveness::since(t + Duration::from_secs(1), t),
            Duration::ZERO
        );
        assert_eq!(
            Liveness::periods(u64::MAX, 3).limit(),
            Duration::from_secs(30)
        );
        assert_eq!(Liveness::periods(0, 3).limit(), Duration::from_millis(150));
    }
}
