//! The dashboard's one time base, and what is measured against it.
//!
//! Every model and plot counts time in seconds since one origin, a
//! wall-clock time fixed when the app starts. Wall-clock inputs (an
//! envelope's `sent_ms`, a reading's `ts_ms`, a grant's `issued_ms`) go
//! through [`TimeBase::seconds`]; "now" is [`TimeBase::now`], and an axis label
//! is [`TimeBase::clock`]. The app makes one and hands copies to the models,
//! so they all agree; tests make one at a chosen origin.

use std::collections::VecDeque;

use distlab_node::envelope::now_ms;

/// A node or frontend not heard from for this long is shown as silent.
pub const STALE_S: f64 = 2.0;

/// Seconds since an origin (ms since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeBase {
    origin_ms: u64,
}

impl TimeBase {
    /// A base whose origin is now.
    pub fn starting_now() -> Self {
        Self::at(now_ms())
    }

    /// A base whose origin is `origin_ms`.
    pub const fn at(origin_ms: u64) -> Self {
        Self { origin_ms }
    }

    /// Seconds since the origin of a wall-clock time (negative before it).
    pub fn seconds(self, ms: u64) -> f64 {
        // In i128: no wrap for any pair of u64, and the difference is exact.
        (i128::from(ms) - i128::from(self.origin_ms)) as f64 / 1000.0
    }

    /// The wall clock now, in seconds since the origin.
    pub fn now(self) -> f64 {
        self.seconds(now_ms())
    }

    /// `HH:MM:SS` (UTC) of a time in seconds since the origin.
    pub fn clock(self, seconds: f64) -> String {
        let secs = (self.origin_ms as f64 / 1000.0 + seconds).max(0.0) as u64 % 86_400;
        format!(
            "{:02}:{:02}:{:02}",
            secs / 3600,
            (secs / 60) % 60,
            secs % 60
        )
    }
}

/// A counter sampled over time (seconds of a [`TimeBase`]), for rates.
#[derive(Debug, Default)]
pub struct Rate {
    samples: VecDeque<(f64, u64)>,
}

/// How far back [`Rate::per_second`] looks, s.
const RATE_SPAN_S: f64 = 3.0;

impl Rate {
    pub fn record(&mut self, t: f64, total: u64) {
        self.samples.push_back((t, total));
        while self
            .samples
            .front()
            .is_some_and(|(t0, _)| t - t0 > RATE_SPAN_S)
        {
            self.samples.pop_front();
        }
    }

    /// Per second over the last few seconds.
    pub fn per_second(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, a)), Some((t1, b))) if t1 > t0 => b.saturating_sub(*a) as f64 / (t1 - t0),
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_count_from_the_origin_both_ways() {
        let base = TimeBase::at(1_700_000_000_000);
        assert_eq!(base.seconds(1_700_000_000_000), 0.0);
        assert_eq!(base.seconds(1_700_000_002_500), 2.5);
        assert_eq!(base.seconds(1_699_999_999_250), -0.75);
        // Absurd inputs (a malformed message) neither wrap nor panic.
        assert!(base.seconds(u64::MAX) > 1e15);
        assert!(TimeBase::at(u64::MAX).seconds(0) < -1e15);
    }

    #[test]
    fn two_bases_agree_on_differences() {
        let (a, b) = (TimeBase::at(0), TimeBase::at(123_456));
        let (t0, t1) = (200_000, 201_750);
        assert_eq!(a.seconds(t1) - a.seconds(t0), 1.75);
        assert_eq!(b.seconds(t1) - b.seconds(t0), 1.75);
    }

    #[test]
    fn now_is_the_wall_clock_on_this_base() {
        let before = now_ms();
        let base = TimeBase::starting_now();
        let now = base.now();
        let after = now_ms();
        assert!(
            now >= 0.0 && now <= (after - before) as f64 / 1000.0,
            "{now}"
        );
        let earlier = TimeBase::at(before - 10_000);
        assert!(earlier.now() >= 10.0, "{}", earlier.now());
    }

    #[test]
    fn clock_labels_are_wall_clock_times() {
        // 1970-01-02 01:02:03 UTC.
        let base = TimeBase::at((86_400 + 3_723) * 1000);
        assert_eq!(base.clock(0.0), "01:02:03");
        assert_eq!(base.clock(57.9), "01:03:00");
        assert_eq!(base.clock(-3_723.0), "00:00:00");
        assert_eq!(TimeBase::at(0).clock(-5.0), "00:00:00", "never before 1970");
    }

    #[test]
    fn rates_come_from_counter_deltas_over_the_last_seconds() {
        let mut r = Rate::default();
        assert_eq!(r.per_second(), 0.0, "no samples");
        r.record(0.0, 100);
        assert_eq!(r.per_second(), 0.0, "one sample");
        r.record(2.0, 300);
        assert_eq!(r.per_second(), 100.0);
        // The sample at 0 s falls out: 2 s → 4 s, 400 more.
        r.record(4.0, 700);
        assert_eq!(r.per_second(), 200.0);
        // Only samples of the last 3 s count: one is no rate.
        r.record(10.0, 800);
        assert_eq!(r.per_second(), 0.0);
    }
}
