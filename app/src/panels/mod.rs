//! One file per panel. A panel draws from plain data and returns what the
//! person asked for; it never does I/O itself.

pub mod bookstore;
pub mod cluster;
pub mod logs;
pub mod queues;
pub mod sensors;

use distlab_node::presence::MemberState;
use egui::{Color32, Ui};

/// The colour of a node state, used everywhere a state is drawn.
pub fn state_color(state: MemberState) -> Color32 {
    match state {
        MemberState::Up => Color32::from_rgb(0x3f, 0xb9, 0x50),
        MemberState::Starting => Color32::from_rgb(0xe3, 0xb3, 0x41),
        MemberState::Paused => Color32::from_rgb(0x58, 0x9c, 0xf5),
        MemberState::Down => Color32::from_rgb(0xe5, 0x53, 0x4b),
    }
}

/// A filled circle in the state's colour (the default fonts have no "●").
pub fn state_dot(ui: &mut Ui, state: MemberState) {
    let size = egui::vec2(10.0, 10.0);
    let (rect, _) = ui.allocate_exact_size(size, egui::Sense::hover());
    ui.painter()
        .circle_filled(rect.center(), 4.5, state_color(state));
}
