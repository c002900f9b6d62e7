//! `distlab-node fault …`: read the lab's fault rules from the bus, change
//! them, send each node whose rules changed its new ones, print the result.

use std::collections::BTreeMap;
use std::time::Duration;

use distlab_node::bus::Bus;
use distlab_node::faults::{
    self, FaultPlan, parse_delay, parse_fraction, parse_groups, parse_node,
};
use distlab_node::shim::{LinkCounts, LinkRule, ShimReport};

use super::args::FaultCommand;

/// How long to wait for the retained rules and presence records.
const LOAD: Duration = Duration::from_secs(3);

pub(super) async fn fault_command(bus: &Bus, seed: u64, op: FaultCommand) -> anyhow::Result<()> {
    let view = faults::load(bus, LOAD).await?;
    if let FaultCommand::Ls { listen_ms } = op {
        let counts = listen_counts(bus, Duration::from_millis(listen_ms)).await?;
        print_links(&view.plan, &counts);
        return Ok(());
    }
    let mut plan = view.plan.clone();
    let mut named = Vec::new();
    match op {
        FaultCommand::Partition { groups } => {
            let groups = parse_groups(&groups)?;
            named.extend(groups.iter().flatten().cloned());
            plan.partition(&groups);
        }
        FaultCommand::Isolate { node } => {
            let node = parse_node(&node)?;
            let mut nodes = view.nodes.clone();
            if !nodes.contains(&node) {
                nodes.push(node.clone());
            }
            named.push(node.clone());
            plan.isolate(&node, &nodes);
        }
        FaultCommand::OneWay { from, to } => {
            let from = parse_node(&from)?;
            let to = to
                .iter()
                .map(|t| parse_node(t))
                .collect::<Result<Vec<_>, _>>()?;
            named.push(from.clone());
            named.extend(to.iter().cloned());
            plan.cut_one_way(&from, &to);
        }
        FaultCommand::Delay {
            from,
            to,
            delay,
            both_ways,
        } => {
            let (delay_ms, jitter_ms) = parse_delay(&delay)?;
            link(&mut plan, &mut named, &from, &to, both_ways, |r| {
                r.delay_ms = delay_ms;
                r.jitter_ms = jitter_ms;
            })?;
        }
        FaultCommand::Loss {
            from,
            to,
            fraction,
            both_ways,
        } => {
            let loss = parse_fraction(&fraction)?;
            link(&mut plan, &mut named, &from, &to, both_ways, |r| {
                r.loss = loss
            })?;
        }
        FaultCommand::Duplicate {
            from,
            to,
            fraction,
            both_ways,
        } => {
            let duplicate = parse_fraction(&fraction)?;
            link(&mut plan, &mut named, &from, &to, both_ways, |r| {
                r.duplicate = duplicate
            })?;
        }
        FaultCommand::Heal => plan.heal(),
        FaultCommand::Ls { .. } => unreachable!("handled above"),
    }
    plan.reseed(seed);
    plan.check()?;
    for node in &named {
        if !view.nodes.contains(node) {
            eprintln!(
                "distlab-node: note: {node} is not up now; its rules are kept for when it starts"
            );
        }
    }
    let changes = plan.changes(&view.plan);
    faults::publish(bus, &changes).await?;
    outln!(
        "{} node{} told",
        changes.len(),
        if changes.len() == 1 { "" } else { "s" }
    );
    print_links(&plan, &BTreeMap::new());
    Ok(())
}

fn link(
    plan: &mut FaultPlan,
    named: &mut Vec<String>,
    from: &str,
    to: &str,
    both_ways: bool,
    change: impl Fn(&mut LinkRule),
) -> anyhow::Result<()> {
    let (from, to) = (parse_node(from)?, parse_node(to)?);
    anyhow::ensure!(from != to, "a link joins two different nodes");
    plan.update(&from, &to, &change);
    if both_ways {
        plan.update(&to, &from, &change);
    }
    named.extend([from, to]);
    Ok(())
}

/// Each node's shim report heard within `listen`, by node.
async fn listen_counts(
    bus: &Bus,
    listen: Duration,
) -> anyhow::Result<BTreeMap<String, ShimReport>> {
    let mut rx = bus.subscribe(&bus.topics().telemetry("+", "shim")).await?;
    let mut reports = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + listen;
    while let Ok(Some(incoming)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        if let Ok(report) = incoming.envelope.body_as::<ShimReport>() {
            reports.insert(incoming.envelope.from.clone(), report);
        }
    }
    Ok(reports)
}

fn print_links(plan: &FaultPlan, counts: &BTreeMap<String, ShimReport>) {
    let links = plan.links();
    if links.is_empty() {
        outln!("no fault rules: every link delivers");
    } else {
        outln!("{:<16} {:<16} RULE", "FROM", "TO");
        for (from, to, rule) in &links {
            outln!("{from:<16} {to:<16} {}", rule.describe());
        }
    }
    let mut rows: Vec<(&str, &str, LinkCounts)> = counts
        .iter()
        .flat_map(|(to, report)| {
            report
                .links
                .iter()
                .map(move |(from, c)| (from.as_str(), to.as_str(), *c))
        })
        .collect();
    rows.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    if !rows.is_empty() {
        outln!("");
        outln!(
            "{:<16} {:<16} {:>10} {:>10} {:>10} {:>10}",
            "FROM",
            "TO",
            "SEEN",
            "DROPPED",
            "DELAYED",
            "DUPLICATED"
        );
        for (from, to, c) in rows {
            outln!(
                "{from:<16} {to:<16} {:>10} {:>10} {:>10} {:>10}",
                c.seen,
                c.dropped,
                c.delayed,
                c.duplicated
            );
        }
    }
}
