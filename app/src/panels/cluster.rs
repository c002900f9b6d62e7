//! Cluster panel: one row per node with its state and the process buttons.

use std::time::Duration;

use distlab_node::presence::MemberState;
use distlab_node::status::human;
use egui::{Button, RichText, Ui};

use super::state_color;
use crate::model::NodeRow;
use crate::supervisor::NodeCommand;

/// What the person clicked in the panel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterAction {
    Command(String, NodeCommand),
    ShowLogs(String),
}

/// Draws the table; returns the clicks of this frame.
pub fn show(ui: &mut Ui, rows: &[NodeRow]) -> Vec<ClusterAction> {
    let mut actions = Vec::new();
    if rows.is_empty() {
        ui.label("No nodes yet. Nodes from the lab config appear here as they start.");
        return actions;
    }
    egui::ScrollArea::both().auto_shrink([false, true]).show(ui, |ui| {
        egui::Grid::new("cluster-grid")
            .striped(true)
            .num_columns(8)
            .spacing([14.0, 6.0])
            .min_row_height(24.0)
            .show(ui, |ui| {
                for title in ["State", "Node", "Roles", "Host", "PID", "Heartbeat", "Uptime", "Process"] {
                    ui.label(RichText::new(title).strong());
                }
                ui.end_row();
                for row in rows {
                    row_ui(ui, row, &mut actions);
                    ui.end_row();
                }
            });
    });
    actions
}

fn row_ui(ui: &mut Ui, row: &NodeRow, actions: &mut Vec<ClusterAction>) {
    let color = state_color(row.state);
    ui.horizontal(|ui| {
        ui.label(RichText::new("●").color(color));
        ui.label(RichText::new(row.state.as_str()).color(color).strong());
        if let Some(note) = &row.note {
            ui.label(RichText::new(note).small().weak());
        }
    });
    let node = ui
        .add(egui::Label::new(RichText::new(&row.id).monospace().strong()).sense(egui::Sense::click()))
        .on_hover_text("Show this node's log");
    if node.clicked() {
        actions.push(ClusterAction::ShowLogs(row.id.clone()));
    }
    ui.label(row.roles.join(", "));
    ui.label(match row.local {
        Some(_) => format!("{} (local)", row.host),
        None => format!("{} (remote)", row.host),
    });
    ui.label(row.pid.map(|p| p.to_string()).unwrap_or_else(|| "–".to_owned()));
    heartbeat_ui(ui, row);
    ui.label(row.uptime.map(human).unwrap_or_else(|| "–".to_owned()));
    ui.horizontal(|ui| match row.local {
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
}

fn heartbeat_ui(ui: &mut Ui, row: &NodeRow) {
    match row.heartbeat_age {
        Some(age) => {
            let late = age > Duration::from_millis(1500);
            let text = format!("{} ago", human(age));
            if late {
                ui.label(RichText::new(text).color(state_color(MemberState::Paused)));
            } else {
                ui.label(text);
            }
        }
        None => {
            ui.label("–");
        }
    }
}
