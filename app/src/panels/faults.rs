//! Faults panel: partitions, slow, lossy and duplicating links between
//! nodes, set on each node's bus shim; what is in force, and what each
//! shim did about it.

use std::collections::BTreeMap;

use distlab_node::faults::FaultPlan;
use distlab_node::shim::{LinkCounts, LinkRule};
use egui::{Button, RichText, Slider, Ui};
use serde::{Deserialize, Serialize};

use crate::link::LinkCommand;
use crate::outcome::Outcome;
use crate::palette;
use crate::systems::faults::FaultsModel;

/// The groups of the partition editor.
const GROUPS: [&str; 3] = ["A", "B", "C"];
/// "Every node", in the link editor's pickers.
const EVERY: &str = "";

/// The panel's form, kept between runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultSettings {
    /// Group of each node in the partition editor (0 = in none, 1.. = A..).
    pub groups: BTreeMap<String, u8>,
    /// The node the presets act on.
    pub target: String,
    /// Link editor: from and to ("" = every node).
    pub from: String,
    pub to: String,
    pub both_ways: bool,
    pub delay_ms: u64,
    pub jitter_ms: u64,
    pub loss_pct: f64,
    pub duplicate_pct: f64,
    /// Seed of the shims' random choices.
    pub seed: u64,
}

impl Default for FaultSettings {
    fn default() -> Self {
        Self {
            groups: BTreeMap::new(),
            target: String::new(),
            from: EVERY.to_owned(),
            to: EVERY.to_owned(),
            both_ways: true,
            delay_ms: 200,
            jitter_ms: 50,
            loss_pct: 0.0,
            duplicate_pct: 0.0,
            seed: 1,
        }
    }
}

impl FaultSettings {
    fn rule(&self) -> LinkRule {
        LinkRule {
            cut: false,
            loss: self.loss_pct / 100.0,
            delay_ms: self.delay_ms,
            jitter_ms: self.jitter_ms,
            duplicate: self.duplicate_pct / 100.0,
        }
    }

    fn groups_of(&self, nodes: &[String]) -> Vec<Vec<String>> {
        (1..=GROUPS.len() as u8)
            .map(|g| {
                nodes
                    .iter()
                    .filter(|n| self.groups.get(*n) == Some(&g))
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .filter(|g| !g.is_empty())
            .collect()
    }
}

/// Draws the panel; `nodes` are the lab's nodes and any that joined.
/// Returns the rules to send.
pub fn show(
    ui: &mut Ui,
    model: &FaultsModel,
    settings: &mut FaultSettings,
    nodes: &[String],
    outcome: Option<&Outcome>,
) -> Vec<LinkCommand> {
    let mut out = Vec::new();
    if nodes.is_empty() {
        ui.label("No nodes yet.");
        return out;
    }
    if !nodes.contains(&settings.target) {
        settings.target = nodes[0].clone();
    }
    let plan = model.plan();
    let mut send = |what: String, edit: &dyn Fn(&mut FaultPlan), seed: u64| {
        let mut next = plan.clone();
        edit(&mut next);
        next.reseed(seed);
        let changes = next.changes(plan);
        out.push(LinkCommand::Faults { what, changes });
    };
    egui::ScrollArea::vertical()
        .auto_shrink([false, false])
        .show(ui, |ui| {
            ui.label(
                RichText::new(
                    "Each node's bus shim applies these to what it receives from its peers. \
                     The dashboard is no node's peer: it always sees the truth. Rules stay \
                     across a node's restart until healed.",
                )
                .weak(),
            );
            ui.add_space(6.0);
            ui.horizontal(|ui| {
                let label = ui.label(RichText::new("Presets for").strong());
                node_picker(
                    ui,
                    "fault-target",
                    &mut settings.target,
                    nodes,
                    false,
                    label.id,
                );
                let target = settings.target.clone();
                if ui
                    .button("Isolate node")
                    .on_hover_text("Cut this node off from every other node, both ways")
                    .clicked()
                {
                    let all = nodes.to_vec();
                    send(
                        format!("isolate {target}"),
                        &|p| p.isolate(&target, &all),
                        settings.seed,
                    );
                }
                if ui
                    .button("One-way from node")
                    .on_hover_text("What this node sends is lost; it still hears everyone else")
                    .clicked()
                {
                    let others: Vec<String> =
                        nodes.iter().filter(|n| **n != target).cloned().collect();
                    send(
                        format!("one-way from {target}"),
                        &|p| p.cut_one_way(&target, &others),
                        settings.seed,
                    );
                }
                if ui
                    .button("Split in two")
                    .on_hover_text("The first half of the nodes (A) against the rest (B)")
                    .clicked()
                {
                    let half = nodes.len().div_ceil(2);
                    for (i, n) in nodes.iter().enumerate() {
                        settings
                            .groups
                            .insert(n.clone(), if i < half { 1 } else { 2 });
                    }
                    let groups = settings.groups_of(nodes);
                    send(
                        "split in two".to_owned(),
                        &|p| p.partition(&groups),
                        settings.seed,
                    );
                }
                let heal = Button::new(RichText::new("Heal all").strong());
                if ui
                    .add_enabled(!plan.links().is_empty(), heal)
                    .on_hover_text("Clear every rule on every node")
                    .clicked()
                {
                    send("heal all".to_owned(), &|p| p.heal(), settings.seed);
                }
            });
            if let Some(Outcome::Faults { what, result }) = outcome {
                match result {
                    Ok(n) => ui.label(RichText::new(format!("{what}: {n} node(s) told")).weak()),
                    Err(e) => ui.colored_label(palette::RED, format!("{what}: {e}")),
                };
            }
            ui.add_space(4.0);
            active_links(ui, model, &mut send, settings.seed);
            ui.add_space(8.0);
            ui.separator();
            ui.columns(2, |cols| {
                link_editor(&mut cols[0], settings, nodes, &mut send);
                partition_editor(&mut cols[1], settings, nodes, &mut send);
            });
        });
    out
}

type SendRules<'a> = dyn FnMut(String, &dyn Fn(&mut FaultPlan), u64) + 'a;

fn partition_editor(
    ui: &mut Ui,
    settings: &mut FaultSettings,
    nodes: &[String],
    send: &mut SendRules,
) {
    ui.label(RichText::new("Partition").strong());
    ui.label(RichText::new("Put nodes in groups; links between groups are cut both ways.").weak());
    let groups = settings.groups_of(nodes);
    let names: Vec<String> = groups.iter().map(|g| g.join(",")).collect();
    ui.horizontal(|ui| {
        let apply = ui
            .add_enabled(groups.len() >= 2, Button::new("Apply partition"))
            .on_hover_text("Replaces the cuts in force; delays and loss stay");
        if apply.clicked() {
            send(
                format!("partition {}", names.join(" | ")),
                &|p| p.partition(&groups),
                settings.seed,
            );
        }
        if ui.button("Clear groups").clicked() {
            settings.groups.clear();
        }
        if groups.len() < 2 {
            ui.label(RichText::new("put nodes in two groups or more").weak());
        } else {
            ui.label(RichText::new(names.join("  |  ")).monospace());
        }
    });
    // Two nodes a row: a lab of thirty fits without scrolling far.
    egui::Grid::new("partition-grid")
        .striped(true)
        .spacing([14.0, 2.0])
        .show(ui, |ui| {
            for (i, node) in nodes.iter().enumerate() {
                ui.label(RichText::new(node).monospace());
                let group = settings.groups.entry(node.clone()).or_insert(0);
                ui.horizontal(|ui| {
                    ui.radio_value(group, 0, "none");
                    for (g, name) in GROUPS.iter().enumerate() {
                        ui.radio_value(group, g as u8 + 1, *name);
                    }
                });
                if i % 2 == 1 {
                    ui.end_row();
                }
            }
        });
}

fn link_editor(ui: &mut Ui, settings: &mut FaultSettings, nodes: &[String], send: &mut SendRules) {
    ui.label(RichText::new("Slow, lossy or duplicating links").strong());
    ui.horizontal(|ui| {
        let label = ui.label("from");
        node_picker(ui, "fault-from", &mut settings.from, nodes, true, label.id);
        let label = ui.label("to");
        node_picker(ui, "fault-to", &mut settings.to, nodes, true, label.id);
        ui.checkbox(&mut settings.both_ways, "both ways");
    });
    ui.add(
        Slider::new(&mut settings.delay_ms, 0..=2000)
            .suffix(" ms")
            .text("delay"),
    );
    ui.add(
        Slider::new(&mut settings.jitter_ms, 0..=1000)
            .suffix(" ms")
            .text("jitter ±"),
    )
    .on_hover_text(
        "Each message gets up to this much more or less delay: they overtake each other",
    );
    ui.add(
        Slider::new(&mut settings.loss_pct, 0.0..=100.0)
            .suffix(" %")
            .text("loss"),
    );
    ui.add(
        Slider::new(&mut settings.duplicate_pct, 0.0..=100.0)
            .suffix(" %")
            .text("duplicate"),
    );
    ui.horizontal(|ui| {
        let label = ui.label("seed");
        ui.add(egui::DragValue::new(&mut settings.seed))
            .labelled_by(label.id)
            .on_hover_text("Seed of the shims' random choices: the same seed, the same losses");
    });
    let links = pairs(settings, nodes);
    let rule = settings.rule();
    ui.horizontal(|ui| {
        let what = format!(
            "{} -> {}{}",
            name(&settings.from),
            name(&settings.to),
            if settings.both_ways {
                " (both ways)"
            } else {
                ""
            }
        );
        let apply = ui.add_enabled(!links.is_empty(), Button::new("Apply to links"));
        if apply.clicked() {
            send(
                format!("{what}: {}", rule.describe()),
                &|p| {
                    for (f, t) in &links {
                        p.update(f, t, |r| {
                            *r = LinkRule { cut: r.cut, ..rule };
                        });
                    }
                },
                settings.seed,
            );
        }
        if ui
            .add_enabled(!links.is_empty(), Button::new("Clear links"))
            .on_hover_text("Remove delay, loss and duplicates (cuts stay)")
            .clicked()
        {
            send(
                format!("{what}: cleared"),
                &|p| {
                    for (f, t) in &links {
                        p.update(f, t, |r| {
                            *r = LinkRule {
                                cut: r.cut,
                                ..LinkRule::default()
                            }
                        });
                    }
                },
                settings.seed,
            );
        }
        ui.label(RichText::new(format!("{} link(s)", links.len())).weak());
    });
}

/// The directed links the link editor's pickers name.
fn pairs(settings: &FaultSettings, nodes: &[String]) -> Vec<(String, String)> {
    let pick = |n: &str| -> Vec<String> {
        if n == EVERY {
            nodes.to_vec()
        } else {
            vec![n.to_owned()]
        }
    };
    let mut out = Vec::new();
    for f in pick(&settings.from) {
        for t in pick(&settings.to) {
            if f != t {
                out.push((f.clone(), t.clone()));
                if settings.both_ways {
                    out.push((t.clone(), f.clone()));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn name(node: &str) -> &str {
    if node == EVERY { "every node" } else { node }
}

fn node_picker(
    ui: &mut Ui,
    id: &str,
    value: &mut String,
    nodes: &[String],
    every: bool,
    label: egui::Id,
) {
    egui::ComboBox::from_id_salt(id)
        .selected_text(name(value))
        .show_ui(ui, |ui| {
            if every {
                ui.selectable_value(value, EVERY.to_owned(), "every node");
            }
            for n in nodes {
                ui.selectable_value(value, n.clone(), n);
            }
        })
        .response
        .labelled_by(label);
}

fn active_links(ui: &mut Ui, model: &FaultsModel, send: &mut SendRules, seed: u64) {
    let links = model.links();
    if links.is_empty() {
        ui.label(RichText::new("No fault rules: every link delivers.").color(palette::GREEN));
        return;
    }
    ui.label(RichText::new(format!("In force: {} link rule(s)", links.len())).strong());
    egui::Grid::new("fault-links")
        .striped(true)
        .spacing([14.0, 4.0])
        .show(ui, |ui| {
            for h in [
                "From",
                "To",
                "Rule",
                "Seen",
                "Dropped",
                "Delayed",
                "Duplicated",
                "",
            ] {
                ui.label(RichText::new(h).strong());
            }
            ui.end_row();
            for (from, to, rule, counts) in links {
                ui.label(RichText::new(&from).monospace());
                ui.label(RichText::new(&to).monospace());
                let color = if rule.cut {
                    palette::RED
                } else {
                    palette::AMBER
                };
                ui.label(RichText::new(rule.describe()).color(color).strong());
                let c = counts.unwrap_or(LinkCounts::default());
                for n in [c.seen, c.dropped, c.delayed, c.duplicated] {
                    ui.label(n.to_string());
                }
                if ui.small_button("clear").clicked() {
                    send(
                        format!("{from} -> {to}: cleared"),
                        &|p| p.update(&from, &to, |r| *r = LinkRule::default()),
                        seed,
                    );
                }
                ui.end_row();
            }
        });
}

#[cfg(test)]
mod tests {
    use distlab_node::envelope::{EnvelopeFactory, Topics};
    use distlab_node::shim::{FaultRules, ShimReport};
    use egui_kittest::Harness;
    use egui_kittest::kittest::Queryable;

    use super::*;
    use crate::systems::time::TimeBase;

    type State = (FaultsModel, FaultSettings, Vec<LinkCommand>);

    fn nodes() -> Vec<String> {
        ["mom-a", "mom-b", "mom-c"].map(String::from).to_vec()
    }

    fn harness(model: FaultsModel) -> Harness<'static, State> {
        let mut h = Harness::new_ui_state(
            |ui, (model, settings, out): &mut State| {
                out.extend(show(ui, model, settings, &nodes(), None));
            },
            (model, FaultSettings::default(), Vec::new()),
        );
        h.set_size(egui::vec2(1280.0, 800.0));
        h.run();
        h
    }

    fn changes(out: &[LinkCommand]) -> Vec<(String, FaultRules)> {
        match out.last() {
            Some(LinkCommand::Faults { changes, .. }) => changes.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn isolating_a_node_tells_every_node_its_side() {
        let mut h = harness(FaultsModel::new(TimeBase::at(0)));
        h.get_by_label("No fault rules: every link delivers.");
        h.get_by_label("Isolate node").click();
        h.run();
        let changes = changes(&h.state().2);
        let told: Vec<&str> = changes.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(told, ["mom-a", "mom-b", "mom-c"]);
        let a = &changes[0].1;
        assert!(a.from["mom-b"].cut && a.from["mom-c"].cut);
        assert!(changes[1].1.from["mom-a"].cut);
        assert!(!changes[1].1.from.contains_key("mom-c"));
    }

    #[test]
    fn rules_in_force_show_with_their_counts_and_heal_clears_them() {
        let topics = Topics::new("lab");
        let mut model = FaultsModel::new(TimeBase::at(0));
        let mut plan = FaultPlan::default();
        plan.update("mom-a", "mom-b", |r| {
            r.delay_ms = 100;
            r.jitter_ms = 20;
        });
        for (node, rules) in plan.changes(&FaultPlan::default()) {
            let e = EnvelopeFactory::new("dashboard").make("faults", None, &rules);
            model.observe(&topics, &topics.control(&node), &e);
        }
        let mut report = ShimReport::default();
        report.links.insert(
            "mom-a".into(),
            LinkCounts {
                seen: 41,
                delayed: 41,
                ..Default::default()
            },
        );
        let e = EnvelopeFactory::new("mom-b").make("telemetry", None, &report);
        model.observe(&topics, &topics.telemetry("mom-b", "shim"), &e);

        let mut h = harness(model);
        h.get_by_label("In force: 1 link rule(s)");
        h.get_by_label("delay 100±20 ms");
        assert_eq!(h.get_all_by_label("41").count(), 2);
        h.get_by_label("Heal all").click();
        h.run();
        let changes = changes(&h.state().2);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].0, "mom-b");
        assert!(changes[0].1.is_empty());
    }

    #[test]
    fn the_link_editor_sets_delay_and_loss_on_the_links_it_names() {
        let mut h = harness(FaultsModel::new(TimeBase::at(0)));
        {
            let s = &mut h.state_mut().1;
            s.from = "mom-a".into();
            s.to = EVERY.into();
            s.both_ways = false;
            s.loss_pct = 10.0;
            s.duplicate_pct = 0.0;
        }
        h.run();
        h.get_by_label("2 link(s)");
        h.get_by_label("Apply to links").click();
        h.run();
        let changes = changes(&h.state().2);
        let told: Vec<&str> = changes.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(told, ["mom-b", "mom-c"]);
        let rule = changes[0].1.from["mom-a"];
        assert_eq!((rule.delay_ms, rule.jitter_ms, rule.loss), (200, 50, 0.1));
        assert!(!rule.cut);
    }

    #[test]
    fn a_partition_needs_two_groups() {
        let mut h = harness(FaultsModel::new(TimeBase::at(0)));
        h.get_by_label("put nodes in two groups or more");
        {
            let g = &mut h.state_mut().1.groups;
            g.insert("mom-a".into(), 1);
            g.insert("mom-b".into(), 2);
            g.insert("mom-c".into(), 2);
        }
        h.run();
        h.get_by_label("mom-a  |  mom-b,mom-c");
        h.get_by_label("Apply partition").click();
        h.run();
        let changes = changes(&h.state().2);
        assert_eq!(changes.len(), 3);
        assert!(changes[0].1.from["mom-b"].cut && changes[1].1.from["mom-a"].cut);
        assert!(!changes[1].1.from.contains_key("mom-c"));
    }
}
