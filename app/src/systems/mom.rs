//! What the dashboard knows of the MOM, from the `mom` nodes' telemetry: who
//! leads, each node's raft position (the panel's raft grid works out the
//! lag), the channel table, and per-channel
//! depth history and rates.

use std::collections::{BTreeMap, VecDeque};

use distlab_node::envelope::{Envelope, Topics};
use distlab_node::replica::Role;
use distlab_node::services::mom::gateway::GatewayStats;
use distlab_node::services::mom::model::{ChannelInfo, Kind};
use distlab_node::services::mom::node::MomStats;

use super::time::{Rate, TimeBase};

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

#[derive(Debug)]
pub struct MomModel {
    /// Latest telemetry per MOM node, with when it was sent (s of `time`).
    pub nodes: BTreeMap<String, (f64, MomStats)>,
    pub history: BTreeMap<(Kind, String), ChannelHistory>,
    /// Latest telemetry per `mom-gateway`, with when it was sent.
    pub gateways: BTreeMap<String, (f64, GatewayStats)>,
    time: TimeBase,
}

impl MomModel {
    pub fn new(time: TimeBase) -> Self {
        Self {
            nodes: BTreeMap::new(),
            history: BTreeMap::new(),
            gateways: BTreeMap::new(),
            time,
        }
    }

    /// Feeds one bus message; returns whether it was MOM telemetry.
    pub fn observe(&mut self, topics: &Topics, topic: &str, e: &Envelope) -> bool {
        let Some(parts) = super::levels(topics, topic) else {
            return false;
        };
        if let ["telemetry", node, "mom-gateway"] = parts.as_slice() {
            let Ok(stats) = e.body_as::<GatewayStats>() else {
                return false;
            };
            let t = self.time.seconds(e.sent_ms);
            self.gateways.insert((*node).to_owned(), (t, stats));
            return true;
        }
        let ["telemetry", node, "mom"] = parts.as_slice() else {
            return false;
        };
        let Ok(stats) = e.body_as::<MomStats>() else {
            return false;
        };
        let t = self.time.seconds(e.sent_ms);
        // The leader's table is the truth; a follower's only fills in when
        // no leader reports.
        let authoritative = stats.raft.role == Role::Leader || self.leader().is_none();
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

    /// The node reporting itself leader with the newest term.
    pub fn leader(&self) -> Option<(&str, &MomStats)> {
        self.nodes
            .iter()
            .filter(|(_, (_, s))| s.raft.role == Role::Leader)
            .max_by_key(|(_, (_, s))| s.raft.term)
            .map(|(n, (_, s))| (n.as_str(), s))
    }

    /// The channel table to show: the leader's, else any node's.
    pub fn channels(&self) -> Vec<ChannelInfo> {
        self.leader()
            .map(|(_, s)| s.channels.clone())
            .or_else(|| self.nodes.values().next().map(|(_, s)| s.channels.clone()))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distlab_node::envelope::EnvelopeFactory;

    fn stats(role: Role, term: u64, lsn: u64, ready: u64) -> MomStats {
        MomStats {
            raft: distlab_node::replica::GroupStatus {
                role,
                term,
                commit: lsn,
                applied: lsn,
                ..Default::default()
            },
            channels: vec![ChannelInfo {
                kind: Kind::Queue,
                name: "jobs".into(),
                owner: "u1".into(),
                subscribers: 1,
                created: 1,
                ready,
                unacked: 0,
                published: lsn,
                delivered: 0,
                private: false,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn the_leader_rules_and_followers_show_their_lag() {
        let topics = Topics::new("lab");
        let mut m = MomModel::new(TimeBase::at(0));
        let f = EnvelopeFactory::new("mom-a");
        let feed = |m: &mut MomModel, node: &str, s: MomStats| {
            let topic = format!("{}/telemetry/{node}/mom", topics.prefix());
            assert!(m.observe(&topics, &topic, &f.make("telemetry", None, &s)));
        };
        feed(&mut m, "mom-a", stats(Role::Leader, 1, 100, 7));
        feed(&mut m, "mom-b", stats(Role::Follower, 1, 90, 3));
        assert_eq!(m.leader().map(|(n, _)| n), Some("mom-a"));
        assert_eq!(m.channels()[0].ready, 7, "the leader's table");
        // Takeover: mom-b leads in term 2.
        feed(&mut m, "mom-b", stats(Role::Leader, 2, 120, 9));
        assert_eq!(m.leader().map(|(n, _)| n), Some("mom-b"));
        assert!(!m.observe(
            &topics,
            "distlab/lab/telemetry/x/store",
            &f.make("t", None, 1)
        ));
    }
}
