//! The lab's network faults as a person sets them, per directed link, and
//! how they reach the nodes.
//!
//! A [`FaultPlan`] holds every node's [`FaultRules`] (a link A → B is a rule
//! in B's rules, see [`crate::shim`]). The operations people use (partition,
//! isolate, one-way cut, delay, loss, duplicate, heal) edit the plan; then
//! [`FaultPlan::changes`] says which nodes' rules differ from before, and
//! [`publish`] sends those, retained, on each node's control topic. Retained,
//! so a restarted node gets its rules back before anything else (it is still
//! on its side of a partition) and a new command line or dashboard can read
//! the plan in force with [`load`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::bus::{Bus, BusError};
use crate::config::check_name;
use crate::presence::{Presence, PresenceState};
use crate::shim::{FaultRules, LinkRule, RuleError};

/// Every node's rules: for each receiving node, per sending peer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultPlan {
    pub nodes: BTreeMap<String, FaultRules>,
}

impl FaultPlan {
    /// The rule of the link `from` → `to`.
    pub fn rule(&self, from: &str, to: &str) -> LinkRule {
        self.nodes
            .get(to)
            .and_then(|r| r.from.get(from))
            .copied()
            .unwrap_or_default()
    }

    /// Changes the rule of the link `from` → `to`.
    pub fn update(&mut self, from: &str, to: &str, change: impl FnOnce(&mut LinkRule)) {
        if from == to {
            return;
        }
        let rules = self.nodes.entry(to.to_owned()).or_default();
        let rule = rules.from.entry(from.to_owned()).or_default();
        change(rule);
        if rule.is_clear() {
            rules.from.remove(from);
        }
    }

    /// Cuts every link between nodes of different groups, both ways, after
    /// lifting the cuts in force (delays and loss stay). Nodes in no group
    /// keep their links.
    pub fn partition(&mut self, groups: &[Vec<String>]) {
        self.lift_cuts();
        for (i, a) in groups.iter().enumerate() {
            for b in groups.iter().skip(i + 1) {
                for x in a {
                    for y in b {
                        self.update(x, y, |r| r.cut = true);
                        self.update(y, x, |r| r.cut = true);
                    }
                }
            }
        }
    }

    /// Cuts `node` off from every other of `nodes`, both ways (replacing the
    /// cuts in force).
    pub fn isolate(&mut self, node: &str, nodes: &[String]) {
        let others: Vec<String> = nodes.iter().filter(|n| *n != node).cloned().collect();
        self.partition(&[vec![node.to_owned()], others]);
    }

    /// Cuts the links from `from` to each of `to`, one way (adding to the
    /// cuts in force).
    pub fn cut_one_way(&mut self, from: &str, to: &[String]) {
        for t in to {
            self.update(from, t, |r| r.cut = true);
        }
    }

    fn lift_cuts(&mut self) {
        for rules in self.nodes.values_mut() {
            for rule in rules.from.values_mut() {
                rule.cut = false;
            }
            rules.from.retain(|_, r| !r.is_clear());
        }
    }

    /// Clears every rule (every node with rules gets empty ones).
    pub fn heal(&mut self) {
        for rules in self.nodes.values_mut() {
            rules.from.clear();
        }
    }

    /// Sets the seed of every node's random choices (each node gets its own,
    /// derived from `seed` and its name, so two links do not lose alike).
    pub fn reseed(&mut self, seed: u64) {
        for (node, rules) in &mut self.nodes {
            rules.seed = seed ^ fnv1a(node);
        }
    }

    /// Every link with a rule: (from, to, rule).
    pub fn links(&self) -> Vec<(&str, &str, LinkRule)> {
        let mut links: Vec<_> = self
            .nodes
            .iter()
            .flat_map(|(to, rules)| {
                rules
                    .from
                    .iter()
                    .map(move |(from, rule)| (from.as_str(), to.as_str(), *rule))
            })
            .collect();
        links.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        links
    }

    /// The nodes whose rules differ from `before`, with their new rules.
    pub fn changes(&self, before: &FaultPlan) -> Vec<(String, FaultRules)> {
        let names: BTreeSet<&String> = self.nodes.keys().chain(before.nodes.keys()).collect();
        names
            .into_iter()
            .filter_map(|n| {
                let now = self.nodes.get(n).cloned().unwrap_or_default();
                let was = before.nodes.get(n).cloned().unwrap_or_default();
                (now.from != was.from || now.seed != was.seed).then(|| (n.clone(), now))
            })
            .collect()
    }

    /// Checks every node's rules.
    pub fn check(&self) -> Result<(), RuleError> {
        for rules in self.nodes.values() {
            rules.clone().checked()?;
        }
        Ok(())
    }
}

/// A 64-bit FNV-1a hash (stable across builds, unlike `DefaultHasher`).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What the lab looks like on the bus: the plan in force and the nodes up.
#[derive(Debug, Clone, Default)]
pub struct LabView {
    pub plan: FaultPlan,
    /// Nodes announced up, by name.
    pub nodes: Vec<String>,
}

/// Reads the rules in force and the nodes present from their retained
/// records. The broker sends a subscription's retained messages before
/// anything published after it, so once our own marker comes back, all of
/// them are in.
pub async fn load(bus: &Bus, within: Duration) -> Result<LabView, BusError> {
    let topics = bus.topics().clone();
    let marker = topics.service("faults", &format!("marker/{}", bus.node()));
    let mut rx = bus
        .subscribe_all(&[topics.control("+"), topics.presence_all(), marker.clone()])
        .await?;
    let envelope = bus.envelope("marker", serde_json::Value::Null);
    bus.publish(&marker, &envelope).await?;
    let mut view = LabView::default();
    let mut nodes = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let incoming = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(incoming)) => incoming,
            Ok(None) => return Err(BusError::Closed),
            Err(_) => {
                tracing::warn!(
                    "the broker did not echo our marker within {within:?}; the fault rules read may be incomplete"
                );
                break;
            }
        };
        if incoming.topic == marker {
            if incoming.envelope.id == envelope.id {
                break;
            }
            continue;
        }
        let node = crate::envelope::Topics::last_level(&incoming.topic).to_owned();
        if topics.is_control(&incoming.topic) {
            match incoming.envelope.body_as::<FaultRules>() {
                Ok(rules) => {
                    view.plan.nodes.insert(node, rules);
                }
                Err(err) => tracing::warn!(%node, error = %err, "unreadable fault rules"),
            }
        } else if let Ok(p) = incoming.envelope.body_as::<Presence>() {
            if p.state == PresenceState::Up {
                nodes.insert(node);
            } else {
                nodes.remove(&node);
            }
        }
    }
    view.nodes = nodes.into_iter().collect();
    Ok(view)
}

/// Sends each changed node its rules, retained on its control topic.
pub async fn publish(bus: &Bus, changes: &[(String, FaultRules)]) -> Result<(), BusError> {
    for (node, rules) in changes {
        let envelope = bus.envelope("faults", rules);
        bus.publish_retained(&bus.topics().control(node), &envelope)
            .await?;
    }
    Ok(())
}

/// A command-line value that is not a fault setting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("{0:?} is not a delay: write e.g. 100ms, 100ms±20ms or 1s+-200ms")]
    Delay(String),
    #[error("{0:?} is not a fraction: write e.g. 10% or 0.1")]
    Fraction(String),
    #[error("{0:?} is not a node name: {1}")]
    Node(String, String),
    #[error("a partition needs two groups or more, split by '|', e.g. `a,b | c`")]
    Groups,
    #[error("{0} is in two groups")]
    Twice(String),
}

/// Reads `100ms`, `100ms±20ms`, `100ms+-20ms` (also `~`): (delay, jitter) in ms.
pub fn parse_delay(text: &str) -> Result<(u64, u64), ParseError> {
    let bad = || ParseError::Delay(text.to_owned());
    let t = text.trim();
    let (delay, jitter) = match t.split_once('±').or_else(|| t.split_once("+-")) {
        Some((d, j)) => (d, Some(j)),
        None => match t.split_once('~') {
            Some((d, j)) => (d, Some(j)),
            None => (t, None),
        },
    };
    let ms = |s: &str| -> Result<u64, ParseError> {
        let d = humantime::parse_duration(s.trim()).map_err(|_| bad())?;
        let ms = u64::try_from(d.as_millis()).map_err(|_| bad())?;
        if ms > crate::shim::MAX_DELAY_MS {
            return Err(bad());
        }
        Ok(ms)
    };
    Ok((ms(delay)?, jitter.map(ms).transpose()?.unwrap_or(0)))
}

/// Reads `10%`, `2.5%` or `0.1` as a fraction from 0 to 1.
pub fn parse_fraction(text: &str) -> Result<f64, ParseError> {
    let bad = || ParseError::Fraction(text.to_owned());
    let t = text.trim();
    let value = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map_err(|_| bad())? / 100.0,
        None => t.parse::<f64>().map_err(|_| bad())?,
    };
    if !(0.0..=1.0).contains(&value) {
        return Err(bad());
    }
    Ok(value)
}

/// Reads a node name.
pub fn parse_node(text: &str) -> Result<String, ParseError> {
    let name = text.trim();
    check_name(name).map_err(|e| ParseError::Node(name.to_owned(), e.to_string()))?;
    Ok(name.to_owned())
}

/// Reads groups of nodes: the words given, joined, split at `|`, each group
/// at commas or spaces: `a,b | c,d`.
pub fn parse_groups(words: &[String]) -> Result<Vec<Vec<String>>, ParseError> {
    let text = words.join(" ");
    let mut seen = BTreeSet::new();
    let mut groups = Vec::new();
    for part in text.split('|') {
        let mut group = Vec::new();
        for name in part.split([',', ' ']).filter(|n| !n.trim().is_empty()) {
            let name = parse_node(name)?;
            if !seen.insert(name.clone()) {
                return Err(ParseError::Twice(name));
            }
            group.push(name);
        }
        if group.is_empty() {
            return Err(ParseError::Groups);
        }
        groups.push(group);
    }
    if groups.len() < 2 {
        return Err(ParseError::Groups);
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_partition_cuts_both_ways_between_groups_only() {
        let mut plan = FaultPlan::default();
        plan.partition(&[names(&["a", "b"]), names(&["c"])]);
        for (x, y) in [("a", "c"), ("c", "a"), ("b", "c"), ("c", "b")] {
            assert!(plan.rule(x, y).cut, "{x} -> {y}");
        }
        assert!(!plan.rule("a", "b").cut && !plan.rule("b", "a").cut);
        assert_eq!(plan.links().len(), 4);
        // A new partition replaces the cuts, and keeps a delay.
        plan.update("a", "b", |r| r.delay_ms = 50);
        plan.isolate("a", &names(&["a", "b", "c", "d"]));
        assert!(!plan.rule("c", "b").cut, "the old cut is lifted");
        for x in ["b", "c", "d"] {
            assert!(plan.rule("a", x).cut && plan.rule(x, "a").cut, "{x}");
        }
        assert_eq!(plan.rule("a", "b").delay_ms, 50);
        assert!(!plan.rule("b", "c").cut);
    }

    #[test]
    fn changes_name_exactly_the_nodes_to_tell_and_heal_tells_them_all() {
        let before = FaultPlan::default();
        let mut plan = before.clone();
        plan.cut_one_way("a", &names(&["b", "c"]));
        let changed: Vec<String> = plan.changes(&before).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            changed,
            names(&["b", "c"]),
            "a one-way cut is kept by the receivers"
        );
        let cut = plan.clone();
        plan.update("a", "b", |r| r.loss = 0.1);
        assert_eq!(plan.changes(&cut).len(), 1);
        plan.heal();
        let healed = plan.changes(&cut);
        assert_eq!(healed.len(), 2);
        assert!(healed.iter().all(|(_, r)| r.is_empty()));
        assert!(plan.changes(&plan.clone()).is_empty());
        assert!(plan.links().is_empty());
    }

    #[test]
    fn seeds_differ_per_node_and_repeat() {
        let mut plan = FaultPlan::default();
        plan.update("a", "b", |r| r.loss = 0.5);
        plan.update("b", "a", |r| r.loss = 0.5);
        plan.reseed(9);
        let (sa, sb) = (plan.nodes["a"].seed, plan.nodes["b"].seed);
        assert_ne!(sa, sb);
        plan.reseed(9);
        assert_eq!(plan.nodes["a"].seed, sa);
    }

    #[test]
    fn command_line_values_read_or_say_what_is_wrong() {
        assert_eq!(parse_delay("100ms").unwrap(), (100, 0));
        assert_eq!(parse_delay("100ms±20ms").unwrap(), (100, 20));
        assert_eq!(parse_delay("1s+-200ms").unwrap(), (1000, 200));
        assert_eq!(parse_delay("250ms~5ms").unwrap(), (250, 5));
        for bad in ["", "fast", "100", "10h", "100ms±"] {
            let e = parse_delay(bad).unwrap_err().to_string();
            assert!(e.contains("not a delay"), "{bad}: {e}");
        }
        assert_eq!(parse_fraction("10%").unwrap(), 0.1);
        assert_eq!(parse_fraction("0.25").unwrap(), 0.25);
        for bad in ["150%", "-1", "NaN", "x%"] {
            assert!(parse_fraction(bad).is_err(), "{bad}");
        }
        let groups = parse_groups(&names(&["a,b", "|", "c,d"])).unwrap();
        assert_eq!(groups, vec![names(&["a", "b"]), names(&["c", "d"])]);
        assert_eq!(
            parse_groups(&names(&["a b|c"])).unwrap(),
            vec![names(&["a", "b"]), names(&["c"])]
        );
        assert_eq!(
            parse_groups(&names(&["a,b"])).unwrap_err(),
            ParseError::Groups
        );
        assert_eq!(
            parse_groups(&names(&["a", "|", "a"])).unwrap_err(),
            ParseError::Twice("a".to_owned())
        );
        assert!(matches!(
            parse_groups(&names(&["a/b", "|", "c"])).unwrap_err(),
            ParseError::Node(..)
        ));
    }
}
