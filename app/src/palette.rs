//! The dashboard's colours, in one place: five that carry meaning (green
//! good or leading, blue a healthy follower or plain information, amber
//! waiting or a warning, red down or failed, grey nothing yet), the series
//! colours for plots, and the banner's fill.

use distlab_node::presence::MemberState;
use egui::Color32;

pub const GREEN: Color32 = Color32::from_rgb(0x3f, 0xb9, 0x50);
pub const BLUE: Color32 = Color32::from_rgb(0x58, 0x9c, 0xf5);
pub const AMBER: Color32 = Color32::from_rgb(0xe3, 0xb3, 0x41);
pub const RED: Color32 = Color32::from_rgb(0xe5, 0x53, 0x4b);
pub const GREY: Color32 = Color32::from_rgb(0x8b, 0x94, 0x9e);

/// Behind white text: the banner that says the nodes cannot start.
pub const ERROR_FILL: Color32 = Color32::from_rgb(0x5a, 0x1d, 0x1d);

/// Distinct colours for plot series, in order (see [`series`]).
pub const SERIES: [Color32; 8] = [
    BLUE,
    AMBER,
    GREEN,
    RED,
    Color32::from_rgb(0xbc, 0x8c, 0xff),
    Color32::from_rgb(0x39, 0xc5, 0xcf),
    Color32::from_rgb(0xf0, 0x88, 0x3e),
    Color32::from_rgb(0xdb, 0x61, 0xa2),
];

/// The colour of series `i`, cycling through [`SERIES`].
pub fn series(i: usize) -> Color32 {
    SERIES[i % SERIES.len()]
}

/// The colour of a node state, used everywhere a state is drawn.
pub fn state(state: MemberState) -> Color32 {
    match state {
        MemberState::Up => GREEN,
        MemberState::Starting => AMBER,
        MemberState::Paused => BLUE,
        MemberState::Down => RED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_colours_are_distinct_and_cycle() {
        for (i, a) in SERIES.iter().enumerate() {
            for b in &SERIES[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(series(0), BLUE);
        assert_eq!(series(SERIES.len()), series(0));
        assert_eq!(series(2 * SERIES.len() + 3), SERIES[3]);
    }

    #[test]
    fn every_state_has_its_own_colour() {
        let states = [
            MemberState::Up,
            MemberState::Starting,
            MemberState::Paused,
            MemberState::Down,
        ];
        let colours: Vec<Color32> = states.into_iter().map(state).collect();
        for (i, a) in colours.iter().enumerate() {
            for b in &colours[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(state(MemberState::Up), GREEN);
        assert_eq!(state(MemberState::Down), RED);
    }
}
