//! Cluster panel: one row per node with its state and the process buttons.

use std::time::Duration;

use distlab_node::presence::MemberState;
use distlab_node::status::human;
use egui::{Button, RichText, Ui};

use crate::model::NodeRow;
use crate::palette;
use crate::supervisor::NodeCommand;
use crate::systems::faults::{FaultsModel, NodeFaults};

/// What the person clicked in the panel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterAction {
    Command(String, NodeCommand),
    ShowLogs(String),
}

/// Draws the table; returns the clicks of this frame.
///
/// The buttons sit right after the node name and every column that changes
/// its text has a minimum width, so buttons never move under the pointer.
pub fn show(ui: &mut Ui, rows: &[NodeRow], faults: &FaultsModel) -> Vec<ClusterAction> {
    let mut actions = Vec::new();
    if rows.is_empty() {
        ui.label("No nodes yet. Nodes from the lab config appear here as they start.");
        return actions;
    }
    let links = faults.plan().links();
    if !links.is_empty() {
        let cut = links.iter().filter(|(_, _, r)| r.cut).count();
        ui.label(
            RichText::new(format!(
                "Network faults in force: {} link rule(s), {cut} cut, {} slow or lossy (Faults tab)",
                links.len(),
                links.len() - cut
            ))
            .color(palette::AMBER)
            .strong(),
        );
        ui.add_space(4.0);
    }
    egui::ScrollArea::both()
        .auto_shrink([false, true])
        .show(ui, |ui| {
            egui::Grid::new("cluster-grid")
                .striped(true)
                .num_columns(10)
                .spacing([14.0, 6.0])
                .min_row_height(24.0)
                .show(ui, |ui| {
                    for title in [
                        "State",
                        "Node",
                        "Actions",
                        "Heartbeat",
                        "Network",
                        "Uptime",
                        "PID",
                        "Host",
                        "Roles",
                        "Details",
                    ] {
                        ui.label(RichText::new(title).strong());
                    }
                    ui.end_row();
                    for row in rows {
                        row_ui(ui, row, faults.node(&row.id), &mut actions);
                        ui.end_row();
                    }
                });
        });
    actions
}

/// A cell at least `width` wide.
fn cell(ui: &mut Ui, width: f32, add: impl FnOnce(&mut Ui)) {
    ui.horizontal(|ui| {
        ui.set_min_width(width);
        add(ui);
    });
}

fn row_ui(ui: &mut Ui, row: &NodeRow, network: NodeFaults, actions: &mut Vec<ClusterAction>) {
    let color = palette::state(row.state);
    cell(ui, 78.0, |ui| {
        super::state_dot(ui, row.state);
        ui.label(RichText::new(row.state.as_str()).color(color).strong());
    });
    let node = ui
        .add(
            egui::Label::new(RichText::new(&row.id).monospace().strong())
                .sense(egui::Sense::click()),
        )
        .on_hover_text("Show this node's log");
    if node.clicked() {
        actions.push(ClusterAction::ShowLogs(row.id.clone()));
    }
    cell(ui, 285.0, |ui| match row.local {
        Some(local) => {
            for command in NodeCommand::ALL {
                let enabled = match command {
                    NodeCommand::Kill | NodeCommand::Stop => local.alive,
                    NodeCommand::Pause => local.alive && !local.paused,
                    NodeCommand::Resume => local.paused,
                    NodeCommand::Restart => true,
                };
                let button = ui
                    .add_enabled(enabled, Button::new(command.label()))
                    .on_hover_text(command.help());
                if button.clicked() {
                    actions.push(ClusterAction::Command(row.id.clone(), command));
                }
            }
        }
        None => {
            ui.label(RichText::new("remote: control it on its machine").weak());
        }
    });
    cell(ui, 84.0, |ui| heartbeat_ui(ui, row));
    cell(ui, 150.0, |ui| network_ui(ui, network));
    cell(ui, 56.0, |ui| {
        ui.label(row.uptime.map(human).unwrap_or_else(|| "–".to_owned()));
    });
    cell(ui, 48.0, |ui| {
        ui.label(
            row.pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "–".to_owned()),
        );
    });
    ui.label(match row.local {
        Some(_) => format!("{} (local)", row.host),
        None => format!("{} (remote)", row.host),
    });
    ui.label(row.roles.join(", "));
    ui.label(RichText::new(row.note.as_deref().unwrap_or("")).weak());
}

/// The faults on a node's links: cut ones in red, slow or lossy in amber,
/// and what its shim dropped.
fn network_ui(ui: &mut Ui, n: NodeFaults) {
    if n.is_clear() {
        ui.label(RichText::new("ok").color(palette::GREEN));
    }
    if n.cut > 0 {
        ui.label(
            RichText::new(format!("{} cut", n.cut))
                .color(palette::RED)
                .strong(),
        );
    }
    if n.degraded > 0 {
        ui.label(RichText::new(format!("{} slow/lossy", n.degraded)).color(palette::AMBER));
    }
    if n.dropped > 0 {
        ui.label(RichText::new(format!("{} dropped", n.dropped)).weak())
            .on_hover_text("Messages this node's shim dropped since it started");
    }
}

fn heartbeat_ui(ui: &mut Ui, row: &NodeRow) {
    match row.heartbeat_age {
        Some(age) => {
            let late = age > Duration::from_millis(1500);
            let text = format!("{} ago", human(age));
            if late {
                ui.label(RichText::new(text).color(palette::state(MemberState::Paused)));
            } else {
                ui.label(text);
            }
        }
        None => {
            ui.label("–");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use egui_kittest::Harness;
    use egui_kittest::kittest::Queryable;

    use super::*;
    use crate::model::LocalControl;
    use crate::systems::time::TimeBase;

    fn row(id: &str, state: MemberState, local: Option<LocalControl>) -> NodeRow {
        NodeRow {
            id: id.into(),
            roles: vec!["echo".into()],
            host: "box".into(),
            pid: Some(100),
            state,
            heartbeat_age: Some(Duration::from_millis(200)),
            uptime: Some(Duration::from_secs(65)),
            local,
            note: None,
        }
    }

    fn fake_cluster() -> Vec<NodeRow> {
        let running = Some(LocalControl {
            alive: true,
            paused: false,
        });
        let paused = Some(LocalControl {
            alive: true,
            paused: true,
        });
        let dead = Some(LocalControl {
            alive: false,
            paused: false,
        });
        let mut down = row("echo-c", MemberState::Down, dead);
        down.note = Some("killed by SIGKILL".into());
        vec![
            row("echo-a", MemberState::Up, running),
            row("echo-b", MemberState::Paused, paused),
            down,
            row("far-away", MemberState::Up, None),
        ]
    }

    type State = (Vec<NodeRow>, Vec<ClusterAction>);

    fn harness() -> Harness<'static, State> {
        let mut h = Harness::new_ui_state(
            |ui, state: &mut State| {
                let actions = show(ui, &state.0, &FaultsModel::new(TimeBase::at(0)));
                state.1.extend(actions);
            },
            (fake_cluster(), Vec::new()),
        );
        h.set_size(egui::vec2(1100.0, 400.0));
        h.run();
        h
    }

    #[test]
    fn rows_appear_with_their_states() {
        let h = harness();
        for id in ["echo-a", "echo-b", "echo-c", "far-away"] {
            h.get_by_label(id);
        }
        assert_eq!(h.get_all_by_label("up").count(), 2);
        h.get_by_label("paused");
        h.get_by_label("down");
        h.get_by_label("killed by SIGKILL");
        h.get_by_label("box (remote)");
        h.get_by_label("remote: control it on its machine");
        // Local rows have process buttons, the remote one has none.
        assert_eq!(h.get_all_by_label("Kill").count(), 3);
    }

    #[test]
    fn clicking_kill_emits_kill_for_that_row() {
        let mut h = harness();
        let second = h
            .get_all_by_label("Kill")
            .nth(1)
            .expect("a Kill button per local row");
        second.click();
        h.run();
        assert_eq!(
            h.state().1,
            vec![ClusterAction::Command("echo-b".into(), NodeCommand::Kill)]
        );
    }

    #[test]
    fn each_button_emits_its_command() {
        let mut h = harness();
        for (label, nth) in [("Pause", 0), ("Resume", 1), ("Stop", 0), ("Restart", 2)] {
            h.get_all_by_label(label).nth(nth).unwrap().click();
            h.run();
        }
        let expected = vec![
            ClusterAction::Command("echo-a".into(), NodeCommand::Pause),
            ClusterAction::Command("echo-b".into(), NodeCommand::Resume),
            ClusterAction::Command("echo-a".into(), NodeCommand::Stop),
            ClusterAction::Command("echo-c".into(), NodeCommand::Restart),
        ];
        assert_eq!(h.state().1, expected);
    }

    #[test]
    fn disabled_buttons_do_nothing() {
        let mut h = harness();
        // echo-a runs: its Resume is disabled. echo-c is dead: its Kill is disabled.
        h.get_all_by_label("Resume").next().unwrap().click();
        h.get_all_by_label("Kill").nth(2).unwrap().click();
        h.run();
        assert!(h.state().1.is_empty(), "{:?}", h.state().1);
    }

    #[test]
    fn clicking_a_node_name_asks_for_its_log() {
        let mut h = harness();
        h.get_by_label("echo-c").click();
        h.run();
        assert_eq!(h.state().1, vec![ClusterAction::ShowLogs("echo-c".into())]);
    }
}
