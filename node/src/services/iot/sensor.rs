//! Simulated sensors: smooth random walks inside the physical ranges, a
//! battery that drains slowly. Pure and seeded, so a run can be repeated.

use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One reading, as published on `data/sensors/<sensor>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub sensor: String,
    /// Relative humidity, % (0–100).
    pub humidity: f64,
    /// °C (−20–50).
    pub temperature: f64,
    /// hPa (0–2000).
    pub pressure: f64,
    /// % (0–100).
    pub battery: f64,
    /// ISO 8601 (UTC, milliseconds).
    pub ts: String,
    /// The same instant in ms since the Unix epoch.
    pub ts_ms: u64,
}

/// Envelope kind of a message with one reading (body: a [`Reading`]).
pub const READING: &str = "reading";
/// Envelope kind of a message with several readings of one sensor, oldest
/// first (body: an array of [`Reading`]); sent when `iot.batch` > 1.
pub const READINGS: &str = "readings";

/// The readings a sensor message carries, whichever of the two kinds it is;
/// `None` when it is neither.
pub fn readings_of(e: &crate::envelope::Envelope) -> Option<Vec<Reading>> {
    match e.kind.as_str() {
        READING => e.body_as::<Reading>().ok().map(|r| vec![r]),
        READINGS => e.body_as::<Vec<Reading>>().ok(),
        _ => None,
    }
}

/// Range and step of one simulated quantity.
#[derive(Debug, Clone, Copy)]
struct Walk {
    min: f64,
    max: f64,
    /// Largest change per reading.
    step: f64,
}

const HUMIDITY: Walk = Walk {
    min: 0.0,
    max: 100.0,
    step: 0.8,
};
const TEMPERATURE: Walk = Walk {
    min: -20.0,
    max: 50.0,
    step: 0.25,
};
const PRESSURE: Walk = Walk {
    min: 0.0,
    max: 2000.0,
    step: 4.0,
};

impl Walk {
    /// One step with momentum (so curves are smooth), reflected at the bounds.
    fn advance(&self, value: &mut f64, velocity: &mut f64, rng: &mut fastrand::Rng) {
        *velocity = 0.85 * *velocity + 0.15 * (rng.f64() * 2.0 - 1.0) * self.step;
        *value += *velocity;
        if *value > self.max {
            *value = 2.0 * self.max - *value;
            *velocity = -*velocity;
        }
        if *value < self.min {
            *value = 2.0 * self.min - *value;
            *velocity = -*velocity;
        }
        *value = value.clamp(self.min, self.max);
    }

    fn start(&self, rng: &mut fastrand::Rng) -> f64 {
        // Somewhere in the middle half, so walks do not hug a bound.
        let span = self.max - self.min;
        self.min + span * (0.25 + 0.5 * rng.f64())
    }
}

/// One simulated sensor.
#[derive(Debug, Clone)]
pub struct SensorSim {
    pub id: String,
    pub period: Duration,
    rng: fastrand::Rng,
    humidity: (f64, f64),
    temperature: (f64, f64),
    pressure: (f64, f64),
    battery: f64,
    drain_per_reading: f64,
}

impl SensorSim {
    /// A sensor seeded from the lab seed and its index; its period is drawn
    /// from `period_ms` (inclusive range).
    pub fn new(id: &str, seed: u64, period_ms: (u64, u64)) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let (lo, hi) = (period_ms.0.min(period_ms.1), period_ms.0.max(period_ms.1));
        let period = Duration::from_millis(rng.u64(lo.max(1)..=hi.max(1)));
        Self {
            id: id.to_owned(),
            period,
            humidity: (HUMIDITY.start(&mut rng), 0.0),
            temperature: (TEMPERATURE.start(&mut rng), 0.0),
            pressure: (PRESSURE.start(&mut rng), 0.0),
            battery: 60.0 + 40.0 * rng.f64(),
            // About 1 % per 10 minutes at the sensor's rate.
            drain_per_reading: period.as_secs_f64() / 600.0,
            rng,
        }
    }

    /// The next reading, stamped `now_ms`.
    pub fn next(&mut self, now_ms: u64) -> Reading {
        let rng = &mut self.rng;
        HUMIDITY.advance(&mut self.humidity.0, &mut self.humidity.1, rng);
        TEMPERATURE.advance(&mut self.temperature.0, &mut self.temperature.1, rng);
        PRESSURE.advance(&mut self.pressure.0, &mut self.pressure.1, rng);
        self.battery = (self.battery - self.drain_per_reading * (0.5 + rng.f64())).max(0.0);
        Reading {
            sensor: self.id.clone(),
            humidity: round2(self.humidity.0),
            temperature: round2(self.temperature.0),
            pressure: round2(self.pressure.0),
            battery: round2(self.battery),
            ts: iso_ms(now_ms),
            ts_ms: now_ms,
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `2026-11-23T05:43:21.452Z`
pub fn iso_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The seed's timestamp text, `2026-11-23 05:43:21.452000`: what Python's
/// `str(datetime)` gave its SQLite column (microseconds, omitted when zero,
/// as Python does), here in UTC.
pub fn seed_timestamp(ms: u64) -> String {
    let iso = humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_millis(ms)).to_string();
    let text = iso.trim_end_matches('Z').replacen('T', " ", 1);
    match text.strip_suffix(".000000") {
        Some(whole) => whole.to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_stay_in_range_and_move_smoothly() {
        let mut s = SensorSim::new("s1", 42, (10, 100));
        assert!((10..=100).contains(&(s.period.as_millis() as u64)));
        let mut last = s.next(0);
        for i in 1..20_000u64 {
            let r = s.next(i * 10);
            assert!((0.0..=100.0).contains(&r.humidity), "{r:?}");
            assert!((-20.0..=50.0).contains(&r.temperature), "{r:?}");
            assert!((0.0..=2000.0).contains(&r.pressure), "{r:?}");
            assert!((0.0..=100.0).contains(&r.battery), "{r:?}");
            assert!(
                (r.temperature - last.temperature).abs() <= 0.26,
                "jumpy: {last:?} -> {r:?}"
            );
            assert!(r.battery <= last.battery);
            last = r;
        }
    }

    #[test]
    fn same_seed_same_readings() {
        let mut a = SensorSim::new("s", 7, (10, 100));
        let mut b = SensorSim::new("s", 7, (10, 100));
        for t in 0..100 {
            assert_eq!(a.next(t), b.next(t));
        }
        let mut c = SensorSim::new("s", 8, (10, 100));
        assert_ne!(a.next(200), c.next(200));
    }

    #[test]
    fn timestamps_are_iso_utc_with_millis() {
        assert_eq!(iso_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_ms(1_795_412_601_452), "2026-11-23T05:43:21.452Z");
    }

    #[test]
    fn seed_timestamps_read_like_python_datetimes() {
        assert_eq!(
            seed_timestamp(1_795_412_601_452),
            "2026-11-23 05:43:21.452000"
        );
        assert_eq!(seed_timestamp(1_795_412_601_000), "2026-11-23 05:43:21");
        assert_eq!(seed_timestamp(1), "1970-01-01 00:00:00.001000");
    }
}
