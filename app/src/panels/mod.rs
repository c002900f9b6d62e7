//! One file per panel. A panel draws from plain data and returns what the
//! person asked for; it never does I/O itself.

pub mod bookstore;
pub mod cluster;
pub mod faults;
pub mod flow;
pub mod lockers;
pub mod logs;
pub mod maplog;
pub mod queues;
pub mod scenarios;
pub mod sensors;

use distlab_node::presence::MemberState;
use distlab_node::replica::{GroupStatus, Role};
use egui::{Color32, RichText, Ui};

use crate::palette;

/// A filled circle (the default fonts have no "●").
pub fn dot(ui: &mut Ui, color: Color32) {
    let size = egui::vec2(10.0, 10.0);
    let (rect, _) = ui.allocate_exact_size(size, egui::Sense::hover());
    ui.painter().circle_filled(rect.center(), 4.5, color);
}

/// A dot in the state's colour.
pub fn state_dot(ui: &mut Ui, state: MemberState) {
    dot(ui, palette::state(state));
}

/// A raft group as a table: each member's role (coloured), term, leader,
/// commit, applied, how far behind the leader, and when it was heard.
/// `members` are (node, its latest status and when it was sent, s);
/// `now` is in the same seconds.
pub fn raft_grid(
    ui: &mut Ui,
    id: &str,
    members: &[(String, Option<(f64, GroupStatus)>)],
    now: f64,
) {
    use crate::systems::time::STALE_S;
    let leader = members
        .iter()
        .filter_map(|(n, s)| s.as_ref().map(|(_, s)| (n, s)))
        .filter(|(_, s)| s.role == Role::Leader)
        .max_by_key(|(_, s)| s.term);
    let behind = |node: &str, s: &GroupStatus| -> Option<u64> {
        let (name, l) = leader?;
        if name == node {
            return None;
        }
        match l.lag.iter().find(|(n, _)| n == node) {
            Some((_, b)) => Some(*b),
            None => Some(l.applied.saturating_sub(s.applied)),
        }
    };
    egui::Grid::new(id)
        .striped(true)
        .spacing([14.0, 2.0])
        .show(ui, |ui| {
            for h in [
                "node", "role", "term", "leader", "commit", "applied", "behind", "heard",
            ] {
                ui.label(RichText::new(h).small().weak());
            }
            ui.end_row();
            for (node, status) in members {
                ui.label(RichText::new(node).strong().monospace());
                let Some((t, r)) = status else {
                    ui.label(RichText::new("no telemetry").color(palette::RED));
                    ui.end_row();
                    continue;
                };
                let (color, role) = if now - t > STALE_S {
                    (palette::RED, "silent (down?)")
                } else {
                    match r.role {
                        Role::Leader => (palette::GREEN, "leader"),
                        Role::Follower if r.leader.is_some() => (palette::BLUE, "follower"),
                        Role::Follower => (palette::AMBER, "follower (no leader)"),
                        Role::Candidate => (palette::AMBER, "candidate"),
                    }
                };
                ui.label(RichText::new(role).color(color));
                ui.label(r.term.to_string());
                ui.label(r.leader.clone().unwrap_or_else(|| "—".into()));
                ui.label(r.commit.to_string());
                ui.label(r.applied.to_string());
                ui.label(behind(node, r).map_or_else(|| "—".into(), |b| b.to_string()));
                ui.label(RichText::new(format!("{:.1} s ago", (now - t).max(0.0))).weak());
                ui.end_row();
            }
        });
}
