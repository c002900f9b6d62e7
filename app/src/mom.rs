//! What the dashboard knows of the MOM, from the `mom` nodes' telemetry: who
//! is primary, each node's log position, the channel table, and per-channel
//! depth history and rates.

use std::collections::{BTreeMap, VecDeque};

use distlab_node::envelope::{Envelope, Topics};
use distlab_node::services::mom::model::{ChannelInfo, Kind};
use distlab_node::services::mom::node::MomStats;

use crate::iot::Rate;

/// Depth samples kept per channel (10 min at 2 Hz).
const DEPTH_POINTS: usize = 1200;

/// One channel's history.
#[derive(Debug, Default)]
pub struct ChannelHistory {
    /// (t s, ready, unacked)
    pub depth: VecDeque<(f64, u64, u64)>,
    pub published: Rate,
    pub delivered: Rate,
}

#[derive(Debug, Default)]
pub struct MomModel {
    /// Latest telemetry per MOM node, with its time (s since `base_ms`).
    pub nodes: BTreeMap<String, (f64, MomStats)>,
    pub history: BTreeMap<(Kind, String), ChannelHistory>,
    base_ms: Option<u64>,
}

impl MomModel {
    fn x(&mut self, ms: u64) -> f64 {
        let base = *self.base_ms.get_or_insert(ms);
        (ms as f64 - base as f64) / 1000.0
    }

    /// Seconds since the first message, for a wall-clock time.
    pub fn now(&self, now_ms: u64) -> f64 {
        self.base_ms
            .map(|b| (now_ms as f64 - b as f64) / 1000.0)
            .unwrap_or(0.0)
    }

    /// Feeds one bus message; returns whether it was MOM telemetry.
    pub fn observe(&mut self, topics: &Topics, topic: &str, e: &Envelope) -> bool {
        let Some(rest) = topic.strip_prefix(topics.prefix()) else {
            return false;
        };
        let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        let ["telemetry", node, "mom"] = parts.as_slice() else {
            return false;
        };
        let Ok(stats) = e.body_as::<MomStats>() else {
            return false;
        };
        let t = self.x(e.sent_ms);
        // The primary's table is the truth; a replica's only fills in when
        // no primary reports.
        let authoritative = stats.role == "primary" || self.primary().is_none();
        if authoritative {
            for c in &stats.channels {
                let h = self.history.entry((c.kind, c.name.clone())).or_default();
                if h.depth.back().is_none_or(|(last, _, _)| t > *last) {
                    if h.depth.len() == DEPTH_POINTS {
                        h.depth.pop_front();
                    }
                    h.depth.push_back((t, c.ready, c.unacked));
                    h.published.record(t, c.published);
                    h.delivered.record(t, c.delivered);
                }
            }
        }
        self.nodes.insert((*node).to_owned(), (t, stats));
        true
    }

    /// The node reporting itself primary with the newest epoch.
    pub fn primary(&self) -> Option<(&str, &MomStats)> {
        self.nodes
            .iter()
            .filter(|(_, (_, s))| s.role == "primary")
            .max_by_key(|(_, (_, s))| s.epoch)
            .map(|(n, (_, s))| (n.as_str(), s))
    }

    /// The channel table to show: the primary's, else any node's.
    pub fn channels(&self) -> Vec<ChannelInfo> {
        self.primary()
            .map(|(_, s)| s.channels.clone())
            .or_else(|| self.nodes.values().next().map(|(_, s)| s.channels.clone()))
            .unwrap_or_default()
    }

    /// Entries a replica is behind the primary.
    pub fn lag(&self, node: &str) -> Option<u64> {
        let (_, p) = self.primary()?;
        let (_, s) = self.nodes.get(node)?;
        (s.role == "replica").then(|| p.lsn.saturating_sub(s.lsn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distlab_node::envelope::EnvelopeFactory;

    fn stats(role: &str, epoch: u64, lsn: u64, ready: u64) -> MomStats {
        MomStats {
            role: role.into(),
            epoch,
            lsn,
            channels: vec![ChannelInfo {
                kind: Kind::Queue,
                name: "jobs".into(),
                owner: "u1".into(),
                subscribers: 1,
                ready,
                unacked: 0,
                published: lsn,
                delivered: 0,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn the_primary_rules_and_replicas_show_their_lag() {
        let topics = Topics::new("lab");
        let mut m = MomModel::default();
        let f = EnvelopeFactory::new("mom-a");
        let feed = |m: &mut MomModel, node: &str, s: MomStats| {
            let topic = format!("{}/telemetry/{node}/mom", topics.prefix());
            assert!(m.observe(&topics, &topic, &f.make("telemetry", None, &s)));
        };
        feed(&mut m, "mom-a", stats("primary", 1, 100, 7));
        feed(&mut m, "mom-b", stats("replica", 1, 90, 3));
        assert_eq!(m.primary().map(|(n, _)| n), Some("mom-a"));
        assert_eq!(m.lag("mom-b"), Some(10));
        assert_eq!(m.lag("mom-a"), None);
        assert_eq!(m.channels()[0].ready, 7, "the primary's table");
        // Takeover: mom-b leads in epoch 2.
        feed(&mut m, "mom-b", stats("primary", 2, 120, 9));
        assert_eq!(m.primary().map(|(n, _)| n), Some("mom-b"));
        assert!(!m.observe(
            &topics,
            "distlab/lab/telemetry/x/store",
            &f.make("t", None, 1)
        ));
    }
}
