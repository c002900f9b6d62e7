//! The bus's fault shim: the one place where network faults are applied.
//!
//! Every envelope a node receives passes [`FaultShim::inbound`], and every
//! envelope it sends to a known peer passes [`FaultShim::outbound`]. Rules cut
//! traffic from or to chosen peers, which gives one-way or (set on both sides)
//! symmetric partitions. What the shim dropped is counted so it can be shown.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// What the shim decided for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Deliver,
    Drop,
}

/// Fault rules for one node. Empty rules let everything through.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultRules {
    /// Drop everything received from these peers.
    pub drop_from: BTreeSet<String>,
    /// Drop everything sent to these peers.
    pub drop_to: BTreeSet<String>,
}

/// Counts of what the shim dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimStats {
    pub dropped_in: u64,
    pub dropped_out: u64,
}

#[derive(Debug, Default)]
pub struct FaultShim {
    rules: FaultRules,
    stats: ShimStats,
}

impl FaultShim {
    pub fn set_rules(&mut self, rules: FaultRules) {
        self.rules = rules;
    }

    pub fn rules(&self) -> &FaultRules {
        &self.rules
    }

    pub fn stats(&self) -> ShimStats {
        self.stats
    }

    /// A message from `peer` arrives.
    pub fn inbound(&mut self, peer: &str) -> Verdict {
        if self.rules.drop_from.contains(peer) {
            self.stats.dropped_in += 1;
            Verdict::Drop
        } else {
            Verdict::Deliver
        }
    }

    /// A message to `peer` is about to be sent.
    pub fn outbound(&mut self, peer: &str) -> Verdict {
        if self.rules.drop_to.contains(peer) {
            self.stats.dropped_out += 1;
            Verdict::Drop
        } else {
            Verdict::Deliver
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_rules_deliver_everything() {
        let mut shim = FaultShim::default();
        assert_eq!(shim.inbound("a"), Verdict::Deliver);
        assert_eq!(shim.outbound("a"), Verdict::Deliver);
        assert_eq!(shim.stats(), ShimStats::default());
    }

    #[test]
    fn one_way_cut_drops_and_counts() {
        let mut shim = FaultShim::default();
        shim.set_rules(FaultRules {
            drop_from: ["b".to_owned()].into(),
            drop_to: ["c".to_owned()].into(),
        });
        assert_eq!(shim.inbound("b"), Verdict::Drop);
        assert_eq!(shim.inbound("c"), Verdict::Deliver);
        assert_eq!(shim.outbound("c"), Verdict::Drop);
        assert_eq!(shim.outbound("b"), Verdict::Deliver);
        assert_eq!(
            shim.stats(),
            ShimStats {
                dropped_in: 1,
                dropped_out: 1
            }
        );
        shim.set_rules(FaultRules::default());
        assert_eq!(shim.inbound("b"), Verdict::Deliver);
    }
}
