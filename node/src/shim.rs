//! The bus's fault shim: the one place where network faults are applied.
//!
//! Every envelope a node receives, except on its control topic, passes
//! [`FaultShim::inbound`] with the name of the node that sent it. A rule is
//! kept per directed link at the receiving end: what this node does with what
//! `peer` sends it (cut, lose a fraction, delay with jitter, duplicate a
//! fraction). A link A → B is therefore a rule in B's shim, a symmetric
//! partition is a cut on both sides, and every kind of traffic (requests,
//! replies, replication, heartbeats between nodes) meets the same rules.
//! The dashboard and the command line are no node's peers, so what they
//! watch (presence, heartbeats, telemetry) is never cut.
//!
//! What the shim did is counted per link so it can be shown.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest delay (and jitter) a rule may set.
pub const MAX_DELAY_MS: u64 = 60_000;
/// Most peers one node's rules may name.
pub const MAX_PEERS: usize = 1_000;

/// What the shim decided for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Drop,
    /// Deliver `copies` (1, or 2 for a duplicate) after `delay`.
    Deliver {
        delay: Duration,
        copies: u8,
    },
}

impl Verdict {
    /// Deliver once, now.
    pub const NOW: Verdict = Verdict::Deliver {
        delay: Duration::ZERO,
        copies: 1,
    };
}

/// What happens to the messages of one directed link. The default lets
/// everything through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkRule {
    /// Drop every message: the link is cut (one side of a partition).
    pub cut: bool,
    /// Fraction of messages dropped at random, 0 to 1.
    pub loss: f64,
    /// Delay of every message, in ms.
    pub delay_ms: u64,
    /// Up to this many ms more or less than `delay_ms` (uniform, never below
    /// zero); messages overtake each other.
    pub jitter_ms: u64,
    /// Fraction of messages delivered twice, 0 to 1.
    pub duplicate: f64,
}

impl LinkRule {
    pub const CUT: LinkRule = LinkRule {
        cut: true,
        loss: 0.0,
        delay_ms: 0,
        jitter_ms: 0,
        duplicate: 0.0,
    };

    /// Whether this rule changes nothing.
    pub fn is_clear(&self) -> bool {
        *self == LinkRule::default()
    }

    /// Checks every field is in its range.
    pub fn check(&self) -> Result<(), RuleError> {
        for (field, value) in [("loss", self.loss), ("duplicate", self.duplicate)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(RuleError::Fraction { field, value });
            }
        }
        for (field, value) in [("delay_ms", self.delay_ms), ("jitter_ms", self.jitter_ms)] {
            if value > MAX_DELAY_MS {
                return Err(RuleError::Delay { field, value });
            }
        }
        Ok(())
    }

    /// A short description, e.g. `cut`, `loss 10%`, `delay 100±20 ms, dup 5%`.
    pub fn describe(&self) -> String {
        if self.cut {
            return "cut".to_owned();
        }
        let mut parts = Vec::new();
        if self.delay_ms > 0 || self.jitter_ms > 0 {
            parts.push(if self.jitter_ms > 0 {
                format!("delay {}±{} ms", self.delay_ms, self.jitter_ms)
            } else {
                format!("delay {} ms", self.delay_ms)
            });
        }
        if self.loss > 0.0 {
            parts.push(format!("loss {}%", percent(self.loss)));
        }
        if self.duplicate > 0.0 {
            parts.push(format!("dup {}%", percent(self.duplicate)));
        }
        if parts.is_empty() {
            "clear".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

fn percent(fraction: f64) -> String {
    let p = fraction * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{p:.0}")
    } else {
        format!("{p:.1}")
    }
}

/// A rule out of its range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    #[error("{field} = {value} is not a fraction from 0 to 1")]
    Fraction { field: &'static str, value: f64 },
    #[error("{field} = {value} is above the {MAX_DELAY_MS} ms allowed")]
    Delay { field: &'static str, value: u64 },
    #[error("rules name {0} peers; at most {MAX_PEERS} are allowed")]
    TooManyPeers(usize),
    #[error("peer {peer:?}: {source}")]
    Peer {
        peer: String,
        #[source]
        source: Box<RuleError>,
    },
}

/// Fault rules of one node: per peer, what it does with what that peer sends.
/// Empty rules let everything through.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultRules {
    /// The rule for the link from each peer to this node.
    pub from: BTreeMap<String, LinkRule>,
    /// Seed of the random choices (loss, jitter, duplicates).
    pub seed: u64,
}

impl FaultRules {
    /// Checks every rule; clear rules are removed.
    pub fn checked(mut self) -> Result<Self, RuleError> {
        self.from.retain(|_, rule| !rule.is_clear());
        if self.from.len() > MAX_PEERS {
            return Err(RuleError::TooManyPeers(self.from.len()));
        }
        for (peer, rule) in &self.from {
            rule.check().map_err(|source| RuleError::Peer {
                peer: peer.clone(),
                source: Box::new(source),
            })?;
        }
        Ok(self)
    }

    pub fn is_empty(&self) -> bool {
        self.from.values().all(LinkRule::is_clear)
    }
}

/// Most shim events kept between two reports.
pub const RECENT: usize = 256;

/// One message the shim did something to, for the message-flow diagram.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimEvent {
    /// The envelope's id.
    pub id: String,
    pub from: String,
    pub fate: Fate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    Dropped,
    Delayed { ms: u64 },
    Duplicated { ms: u64 },
}

/// What the shim did on one link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinkCounts {
    /// Messages that met a rule on this link.
    pub seen: u64,
    pub dropped: u64,
    pub delayed: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
}

/// What a node's shim has done, per peer, and the rules in force. This is
/// the node's `shim` telemetry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShimReport {
    pub rules: FaultRules,
    /// Per peer, since the node started (a peer stays once it had a rule).
    pub links: BTreeMap<String, LinkCounts>,
    /// What it did to which message since the last report (at most
    /// [`RECENT`]; `recent_lost` more were not kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<ShimEvent>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub recent_lost: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ShimReport {
    /// Messages dropped on all links.
    pub fn dropped(&self) -> u64 {
        self.links.values().map(|c| c.dropped).sum()
    }
}

#[derive(Debug)]
pub struct FaultShim {
    rules: FaultRules,
    links: BTreeMap<String, LinkCounts>,
    rng: fastrand::Rng,
    recent: Vec<ShimEvent>,
    recent_lost: u64,
}

impl Default for FaultShim {
    fn default() -> Self {
        Self {
            rules: FaultRules::default(),
            links: BTreeMap::new(),
            rng: fastrand::Rng::with_seed(0),
            recent: Vec::new(),
            recent_lost: 0,
        }
    }
}

impl FaultShim {
    /// Replaces the rules (already [`FaultRules::checked`]); the random
    /// choices restart from the rules' seed.
    pub fn set_rules(&mut self, rules: FaultRules) {
        self.rng = fastrand::Rng::with_seed(rules.seed);
        self.rules = rules;
    }

    pub fn rules(&self) -> &FaultRules {
        &self.rules
    }

    pub fn report(&self) -> ShimReport {
        ShimReport {
            rules: self.rules.clone(),
            links: self.links.clone(),
            recent: Vec::new(),
            recent_lost: 0,
        }
    }

    /// The report with the events since the last one (which it takes).
    pub fn take_report(&mut self) -> ShimReport {
        ShimReport {
            recent: std::mem::take(&mut self.recent),
            recent_lost: std::mem::take(&mut self.recent_lost),
            ..self.report()
        }
    }

    fn note(&mut self, id: &str, from: &str, fate: Fate) {
        if self.recent.len() < RECENT {
            self.recent.push(ShimEvent {
                id: id.to_owned(),
                from: from.to_owned(),
                fate,
            });
        } else {
            self.recent_lost += 1;
        }
    }

    /// A message from `peer` with envelope id `id` arrives (what is done to
    /// it is kept for the next report).
    pub fn inbound_id(&mut self, peer: &str, id: &str) -> Verdict {
        let Some(rule) = self.rules.from.get(peer) else {
            return Verdict::NOW;
        };
        let counts = match self.links.get_mut(peer) {
            Some(counts) => counts,
            None => self.links.entry(peer.to_owned()).or_default(),
        };
        counts.seen += 1;
        if rule.cut || (rule.loss > 0.0 && self.rng.f64() < rule.loss) {
            counts.dropped += 1;
            self.note(id, peer, Fate::Dropped);
            return Verdict::Drop;
        }
        let copies = if rule.duplicate > 0.0 && self.rng.f64() < rule.duplicate {
            counts.duplicated += 1;
            2
        } else {
            1
        };
        let low = rule.delay_ms.saturating_sub(rule.jitter_ms);
        let high = rule.delay_ms.saturating_add(rule.jitter_ms);
        let delay_ms = if high > low {
            self.rng.u64(low..=high)
        } else {
            rule.delay_ms
        };
        if delay_ms > 0 {
            counts.delayed += 1;
        }
        if copies > 1 {
            self.note(id, peer, Fate::Duplicated { ms: delay_ms });
        } else if delay_ms > 0 {
            self.note(id, peer, Fate::Delayed { ms: delay_ms });
        }
        Verdict::Deliver {
            delay: Duration::from_millis(delay_ms),
            copies,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shim(peer: &str, rule: LinkRule, seed: u64) -> FaultShim {
        let mut shim = FaultShim::default();
        shim.set_rules(
            FaultRules {
                from: [(peer.to_owned(), rule)].into(),
                seed,
            }
            .checked()
            .unwrap(),
        );
        shim
    }

    #[test]
    fn no_rules_deliver_everything_at_once() {
        let mut shim = FaultShim::default();
        assert_eq!(shim.inbound_id("a", ""), Verdict::NOW);
        assert_eq!(shim.report(), ShimReport::default());
    }

    #[test]
    fn a_cut_link_drops_everything_from_that_peer_only() {
        let mut shim = shim("b", LinkRule::CUT, 1);
        for _ in 0..3 {
            assert_eq!(shim.inbound_id("b", ""), Verdict::Drop);
        }
        assert_eq!(shim.inbound_id("c", ""), Verdict::NOW);
        let report = shim.report();
        assert_eq!(
            report.links["b"],
            LinkCounts {
                seen: 3,
                dropped: 3,
                ..LinkCounts::default()
            }
        );
        assert!(!report.links.contains_key("c"));
        let report = shim.take_report();
        assert_eq!(report.recent.len(), 3);
        assert_eq!(report.recent[0].fate, Fate::Dropped);
        assert!(shim.take_report().recent.is_empty(), "taken once");
        shim.set_rules(FaultRules::default());
        assert_eq!(shim.inbound_id("b", ""), Verdict::NOW);
        assert_eq!(shim.report().dropped(), 3, "counts outlive the rule");
    }

    #[test]
    fn loss_drops_about_its_fraction_and_the_seed_repeats_it() {
        let rule = LinkRule {
            loss: 0.2,
            ..LinkRule::default()
        };
        let run = |seed| {
            let mut s = shim("b", rule, seed);
            (0..10_000)
                .map(|_| s.inbound_id("b", "") == Verdict::Drop)
                .collect::<Vec<_>>()
        };
        let first = run(7);
        let dropped = first.iter().filter(|d| **d).count();
        assert!((1_800..=2_200).contains(&dropped), "{dropped} of 10,000");
        assert_eq!(first, run(7), "the same seed, the same drops");
        assert_ne!(first, run(8));
    }

    #[test]
    fn delay_stays_within_its_jitter_and_reorders() {
        let mut s = shim(
            "b",
            LinkRule {
                delay_ms: 100,
                jitter_ms: 20,
                ..LinkRule::default()
            },
            3,
        );
        let delays: Vec<u64> = (0..1_000)
            .map(|_| match s.inbound_id("b", "") {
                Verdict::Deliver { delay, copies: 1 } => delay.as_millis() as u64,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(delays.iter().all(|d| (80..=120).contains(d)));
        assert!(delays.windows(2).any(|w| w[1] < w[0]), "jitter reorders");
        assert_eq!(s.report().links["b"].delayed, 1_000);
        // Jitter larger than the delay never goes below zero.
        let mut s = shim(
            "b",
            LinkRule {
                delay_ms: 5,
                jitter_ms: 50,
                ..LinkRule::default()
            },
            3,
        );
        for _ in 0..1_000 {
            let Verdict::Deliver { delay, .. } = s.inbound_id("b", "") else {
                panic!()
            };
            assert!(delay <= Duration::from_millis(55));
        }
    }

    #[test]
    fn duplicates_are_delivered_twice_and_counted() {
        let mut s = shim(
            "b",
            LinkRule {
                duplicate: 0.5,
                ..LinkRule::default()
            },
            11,
        );
        let copies: u64 = (0..1_000)
            .map(|_| match s.inbound_id("b", "") {
                Verdict::Deliver { copies, delay } => {
                    assert_eq!(delay, Duration::ZERO);
                    u64::from(copies)
                }
                Verdict::Drop => panic!("nothing is lost"),
            })
            .sum();
        let extra = s.report().links["b"].duplicated;
        assert_eq!(copies, 1_000 + extra);
        assert!((400..=600).contains(&extra), "{extra} duplicates");
    }

    #[test]
    fn rules_out_of_range_are_refused_and_clear_ones_removed() {
        let bad = |rule: LinkRule| {
            FaultRules {
                from: [("b".to_owned(), rule)].into(),
                seed: 0,
            }
            .checked()
            .unwrap_err()
            .to_string()
        };
        let e = bad(LinkRule {
            loss: 1.5,
            ..LinkRule::default()
        });
        assert!(e.contains("peer \"b\"") && e.contains("loss = 1.5"), "{e}");
        let e = bad(LinkRule {
            duplicate: f64::NAN,
            ..LinkRule::default()
        });
        assert!(e.contains("duplicate"), "{e}");
        let e = bad(LinkRule {
            delay_ms: u64::MAX,
            ..LinkRule::default()
        });
        assert!(e.contains("delay_ms") && e.contains("60000"), "{e}");
        let rules = FaultRules {
            from: [("b".to_owned(), LinkRule::default())].into(),
            seed: 0,
        }
        .checked()
        .unwrap();
        assert!(rules.from.is_empty() && rules.is_empty());
        let many = FaultRules {
            from: (0..=MAX_PEERS)
                .map(|i| (format!("n{i}"), LinkRule::CUT))
                .collect(),
            seed: 0,
        };
        assert!(many.checked().is_err());
    }

    #[test]
    fn rules_read_back_from_json_and_unknown_fields_are_refused() {
        let rules: FaultRules =
            serde_json::from_str(r#"{"from": {"b": {"delay_ms": 100, "jitter_ms": 20}}}"#).unwrap();
        assert_eq!(rules.from["b"].describe(), "delay 100±20 ms");
        assert!(serde_json::from_str::<FaultRules>(r#"{"drop_from": ["b"]}"#).is_err());
        assert_eq!(LinkRule::CUT.describe(), "cut");
        let mixed = LinkRule {
            loss: 0.1,
            duplicate: 0.025,
            delay_ms: 40,
            ..LinkRule::default()
        };
        assert_eq!(mixed.describe(), "delay 40 ms, loss 10%, dup 2.5%");
    }
}
