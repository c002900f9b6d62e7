//! What the dashboard knows about the IoT pipeline: sensor series, the token's
//! history, and the counters each IoT node reports.

use std::collections::{BTreeMap, VecDeque};

use distlab_node::envelope::{Envelope, Topics};
use distlab_node::services::iot::coordinator::CoordinatorStats;
use distlab_node::services::iot::receiver::ReceiverStats;
use distlab_node::services::iot::sensor::readings_of;
use distlab_node::services::iot::sensors::SensorsStats;
use distlab_node::services::iot::store::{StoreHttp, StoreStats};
use distlab_node::services::iot::token::SignedGrant;

use super::time::{Rate, TimeBase};

/// The four quantities of a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Field {
    Humidity,
    Temperature,
    Pressure,
    Battery,
}

impl Field {
    pub const ALL: [Field; 4] = [
        Field::Humidity,
        Field::Temperature,
        Field::Pressure,
        Field::Battery,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Field::Humidity => "Humidity",
            Field::Temperature => "Temperature",
            Field::Pressure => "Pressure",
            Field::Battery => "Battery",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Field::Humidity => "%",
            Field::Temperature => "°C",
            Field::Pressure => "hPa",
            Field::Battery => "%",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Points kept per sensor: 10 minutes at the fastest default rate.
pub const SERIES_CAPACITY: usize = 60_000;

/// One sensor's history: time (s of the [`TimeBase`]) and the four values.
#[derive(Debug, Default)]
pub struct Series {
    pub t: VecDeque<f64>,
    pub v: VecDeque<[f32; 4]>,
}

impl Series {
    fn push(&mut self, t: f64, v: [f32; 4]) {
        if self.t.len() == SERIES_CAPACITY {
            self.t.pop_front();
            self.v.pop_front();
        }
        self.t.push_back(t);
        self.v.push_back(v);
    }
}

/// One grant as seen on the bus.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenMark {
    pub t: f64,
    pub holder: String,
    pub epoch: u64,
    pub seq: u64,
}

#[derive(Debug)]
pub struct IotModel {
    /// Every time below is in seconds of this base.
    pub time: TimeBase,
    pub series: BTreeMap<String, Series>,
    pub tokens: VecDeque<TokenMark>,
    /// Recent grants as signed, newest last (for "replay an old token").
    pub grants: VecDeque<(f64, SignedGrant)>,
    pub sensors: BTreeMap<String, SensorsStats>,
    pub receivers: BTreeMap<String, ReceiverStats>,
    pub store: Option<(String, StoreStats)>,
    pub coordinator: Option<(String, CoordinatorStats)>,
    pub store_http: Option<std::net::SocketAddr>,
    pub published: Rate,
    pub committed: Rate,
}

const TOKEN_MARKS: usize = 4000;

impl IotModel {
    pub fn new(time: TimeBase) -> Self {
        Self {
            time,
            series: BTreeMap::new(),
            tokens: VecDeque::new(),
            grants: VecDeque::new(),
            sensors: BTreeMap::new(),
            receivers: BTreeMap::new(),
            store: None,
            coordinator: None,
            store_http: None,
            published: Rate::default(),
            committed: Rate::default(),
        }
    }

    /// Feeds one bus message; returns whether it was IoT data.
    pub fn observe(&mut self, topics: &Topics, topic: &str, e: &Envelope) -> bool {
        let Some(parts) = super::levels(topics, topic) else {
            return false;
        };
        match parts.as_slice() {
            ["data", "sensors", _] => {
                let Some(readings) = readings_of(e) else {
                    return false;
                };
                for r in readings {
                    let t = self.time.seconds(r.ts_ms);
                    let v = [
                        r.humidity as f32,
                        r.temperature as f32,
                        r.pressure as f32,
                        r.battery as f32,
                    ];
                    self.series.entry(r.sensor).or_default().push(t, v);
                }
                true
            }
            ["iot", "grant"] => {
                let Ok(g) = e.body_as::<SignedGrant>() else {
                    return false;
                };
                let t = self.time.seconds(g.grant.issued_ms);
                if self.tokens.len() == TOKEN_MARKS {
                    self.tokens.pop_front();
                }
                self.tokens.push_back(TokenMark {
                    t,
                    holder: g.grant.holder.clone(),
                    epoch: g.grant.epoch,
                    seq: g.grant.seq,
                });
                if self.grants.len() == 64 {
                    self.grants.pop_front();
                }
                self.grants.push_back((t, g));
                true
            }
            ["iot", "store-http"] => {
                self.store_http = e.body_as::<StoreHttp>().ok().map(|s| s.addr);
                true
            }
            ["telemetry", node, service] => {
                let now = self.time.seconds(e.sent_ms);
                let node = (*node).to_owned();
                match *service {
                    "sensors" => {
                        let Ok(s) = e.body_as::<SensorsStats>() else {
                            return false;
                        };
                        self.sensors.insert(node, s);
                        let total = self.sensors.values().map(|s| s.published).sum();
                        self.published.record(now, total);
                    }
                    "receiver" => {
                        let Ok(s) = e.body_as::<ReceiverStats>() else {
                            return false;
                        };
                        self.receivers.insert(node, s);
                    }
                    "store" => {
                        let Ok(s) = e.body_as::<StoreStats>() else {
                            return false;
                        };
                        self.committed.record(now, s.rows);
                        self.store = Some((node, s));
                    }
                    "coordinator" => {
                        let Ok(s) = e.body_as::<CoordinatorStats>() else {
                            return false;
                        };
                        self.coordinator = Some((node, s));
                    }
                    _ => return false,
                }
                true
            }
            _ => false,
        }
    }

    /// A grant issued at least `age` seconds before the newest one: by then
    /// its holder has used it (or it lapsed), so sending it again is a replay.
    pub fn old_grant(&self, age: f64) -> Option<SignedGrant> {
        let newest = self.grants.back()?.0;
        self.grants
            .iter()
            .rev()
            .find(|(t, _)| newest - t >= age)
            .map(|(_, g)| g.clone())
    }

    /// The newest reading's time (0 before the first).
    pub fn now(&self) -> f64 {
        self.series
            .values()
            .filter_map(|s| s.t.back().copied())
            .reduce(f64::max)
            .unwrap_or(0.0)
    }
}

/// Min/max decimation: at most two points per pixel column of `[x0, x1]`, in
/// time order, so a long series draws fast and keeps its peaks.
pub fn decimate(
    t: &VecDeque<f64>,
    v: &VecDeque<[f32; 4]>,
    field: usize,
    x0: f64,
    x1: f64,
    columns: usize,
) -> Vec<[f64; 2]> {
    let start = t.partition_point(|x| *x < x0);
    let end = t.partition_point(|x| *x <= x1);
    let n = end.saturating_sub(start);
    let columns = columns.max(1);
    if n <= 2 * columns {
        return (start..end)
            .map(|i| [t[i], f64::from(v[i][field])])
            .collect();
    }
    let width = (x1 - x0) / columns as f64;
    let mut out = Vec::with_capacity(2 * columns);
    let mut i = start;
    while i < end {
        let column = ((t[i] - x0) / width).floor();
        let mut lo = (t[i], v[i][field]);
        let mut hi = lo;
        while i < end && ((t[i] - x0) / width).floor() == column {
            let p = (t[i], v[i][field]);
            if p.1 < lo.1 {
                lo = p;
            }
            if p.1 > hi.1 {
                hi = p;
            }
            i += 1;
        }
        let (a, b) = if lo.0 <= hi.0 { (lo, hi) } else { (hi, lo) };
        out.push([a.0, f64::from(a.1)]);
        if b != a {
            out.push([b.0, f64::from(b.1)]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(n: usize) -> (VecDeque<f64>, VecDeque<[f32; 4]>) {
        let t = (0..n).map(|i| i as f64 * 0.001).collect();
        let v = (0..n).map(|i| [(i % 100) as f32, 0.0, 0.0, 0.0]).collect();
        (t, v)
    }

    #[test]
    fn short_series_are_kept_whole() {
        let (t, v) = series(50);
        assert_eq!(decimate(&t, &v, 0, 0.0, 1.0, 100).len(), 50);
    }

    #[test]
    fn long_series_get_two_points_per_column_and_keep_peaks() {
        let (t, v) = series(100_000);
        let out = decimate(&t, &v, 0, 0.0, 100.0, 500);
        assert!(out.len() <= 1000, "{}", out.len());
        assert!(out.windows(2).all(|w| w[0][0] <= w[1][0]), "time order");
        let max = out.iter().map(|p| p[1]).fold(f64::MIN, f64::max);
        let min = out.iter().map(|p| p[1]).fold(f64::MAX, f64::min);
        assert_eq!((min, max), (0.0, 99.0));
    }

    #[test]
    fn window_selects_its_range() {
        let (t, v) = series(10_000);
        let out = decimate(&t, &v, 0, 5.0, 6.0, 2000);
        assert!(out.iter().all(|p| (5.0..=6.0).contains(&p[0])));
        assert_eq!(out.len(), 1001);
    }
}
