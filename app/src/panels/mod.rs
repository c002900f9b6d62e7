//! One file per panel. A panel draws from plain data and returns what the
//! person asked for; it never does I/O itself.

pub mod bookstore;
pub mod cluster;
pub mod logs;
pub mod queues;
pub mod sensors;

use distlab_node::presence::MemberState;
use egui::{Color32, Ui};

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
