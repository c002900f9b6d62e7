//! The network faults in force, as the dashboard sees them: each node's
//! rules from its retained control topic (what was asked), and each node's
//! shim report (what its shim did, per link).

use std::collections::BTreeMap;

use distlab_node::envelope::{Envelope, Topics};
use distlab_node::faults::FaultPlan;
use distlab_node::shim::{FaultRules, LinkCounts, LinkRule, ShimReport};

use super::time::TimeBase;

/// What a node's links look like, for the Cluster panel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeFaults {
    /// Links to or from this node that are cut.
    pub cut: usize,
    /// Links to or from it that delay, lose or duplicate.
    pub degraded: usize,
    /// Messages its shim dropped (all peers).
    pub dropped: u64,
}

impl NodeFaults {
    pub fn is_clear(&self) -> bool {
        self.cut == 0 && self.degraded == 0
    }
}

pub struct FaultsModel {
    time: TimeBase,
    plan: FaultPlan,
    /// Each node's latest shim report and when it was sent (s).
    reports: BTreeMap<String, (f64, ShimReport)>,
}

impl FaultsModel {
    pub fn new(time: TimeBase) -> Self {
        Self {
            time,
            plan: FaultPlan::default(),
            reports: BTreeMap::new(),
        }
    }

    /// Takes the messages it knows; `true` when it took this one.
    pub fn observe(&mut self, topics: &Topics, topic: &str, e: &Envelope) -> bool {
        let Some(parts) = super::levels(topics, topic) else {
            return false;
        };
        match parts.as_slice() {
            ["control", node] => {
                match e.body_as::<FaultRules>() {
                    Ok(rules) => {
                        self.plan.nodes.insert((*node).to_owned(), rules);
                    }
                    Err(err) => tracing::debug!(%node, error = %err, "unreadable fault rules"),
                }
                true
            }
            ["telemetry", node, "shim"] => {
                let Ok(report) = e.body_as::<ShimReport>() else {
                    return false;
                };
                let t = self.time.seconds(e.sent_ms);
                self.reports.insert((*node).to_owned(), (t, report));
                true
            }
            _ => false,
        }
    }

    /// The rules in force (as last sent to each node).
    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    /// What the shim of `to` did to messages from `from`.
    pub fn counts(&self, from: &str, to: &str) -> Option<LinkCounts> {
        self.reports.get(to)?.1.links.get(from).copied()
    }

    /// Every link with a rule, with what its shim did.
    pub fn links(&self) -> Vec<(String, String, LinkRule, Option<LinkCounts>)> {
        self.plan
            .links()
            .into_iter()
            .map(|(from, to, rule)| (from.to_owned(), to.to_owned(), rule, self.counts(from, to)))
            .collect()
    }

    /// The faults touching `node`.
    pub fn node(&self, node: &str) -> NodeFaults {
        let mut out = NodeFaults::default();
        for (from, to, rule) in self.plan.links() {
            if from != node && to != node {
                continue;
            }
            if rule.cut {
                out.cut += 1;
            } else {
                out.degraded += 1;
            }
        }
        out.dropped = self.reports.get(node).map_or(0, |(_, r)| r.dropped());
        out
    }
}

#[cfg(test)]
mod tests {
    use distlab_node::envelope::EnvelopeFactory;

    use super::*;

    #[test]
    fn rules_and_reports_become_links_with_counts() {
        let topics = Topics::new("lab");
        let mut m = FaultsModel::new(TimeBase::at(0));
        let mut plan = FaultPlan::default();
        plan.partition(&[vec!["a".into()], vec!["b".into()]]);
        plan.update("c", "b", |r| r.delay_ms = 100);
        for (node, rules) in plan.changes(&FaultPlan::default()) {
            let e = EnvelopeFactory::new("dashboard").make("faults", None, &rules);
            assert!(m.observe(&topics, &topics.control(&node), &e));
        }
        let mut report = ShimReport::default();
        report.links.insert(
            "a".into(),
            LinkCounts {
                seen: 9,
                dropped: 9,
                ..Default::default()
            },
        );
        let e = EnvelopeFactory::new("b").make("telemetry", None, &report);
        assert!(m.observe(&topics, &topics.telemetry("b", "shim"), &e));
        assert!(!m.observe(&topics, &topics.telemetry("b", "mom"), &e));

        let links = m.links();
        assert_eq!(links.len(), 3);
        let (_, _, rule, counts) = links
            .iter()
            .find(|(f, t, ..)| f == "a" && t == "b")
            .unwrap();
        assert!(rule.cut);
        assert_eq!(counts.unwrap().dropped, 9);
        assert_eq!(
            m.node("b"),
            NodeFaults {
                cut: 2,
                degraded: 1,
                dropped: 9
            }
        );
        assert!(m.node("d").is_clear());
    }
}
