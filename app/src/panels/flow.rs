//! Message-flow panel: a live sequence (Lamport) diagram. One lifeline per
//! node, time downwards (the newest at the bottom), an arrow per message
//! from its sender to its receiver, coloured by kind; a message a shim
//! dropped ends in a cross at its receiver, a delayed one slants by its
//! delay. Pause to scrub back; click an arrow to see its envelope.

use egui::{Color32, Pos2, Rect, RichText, Sense, Stroke, Ui, pos2, vec2};
use serde::{Deserialize, Serialize};

use crate::palette;
use crate::systems::flow::{Fate, FlowModel, Kind, Message};
use crate::systems::time::TimeBase;

/// Most arrows drawn in one frame (beyond: every k-th, and it says so).
pub const MAX_DRAWN: usize = 1_500;
/// Pixels an undelayed arrow slants (it takes some time on the wire).
const MIN_SLANT: f32 = 4.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowSettings {
    /// Seconds shown.
    pub window_s: f64,
    pub requests: bool,
    pub replies: bool,
    pub raft: bool,
    pub token: bool,
    pub heartbeats: bool,
    /// Only messages to or from this node ("": all).
    pub node: String,
    /// Only this service's messages ("": all).
    pub service: String,
    #[serde(skip)]
    pub paused: bool,
    /// When paused: the end of the window shown (s).
    #[serde(skip)]
    pub end: f64,
    #[serde(skip)]
    pub selected: Option<String>,
}

impl Default for FlowSettings {
    fn default() -> Self {
        Self {
            window_s: 5.0,
            requests: true,
            replies: true,
            raft: true,
            token: true,
            heartbeats: false,
            node: String::new(),
            service: String::new(),
            paused: false,
            end: 0.0,
            selected: None,
        }
    }
}

impl FlowSettings {
    fn shows(&self, m: &Message) -> bool {
        let kind = match m.kind {
            Kind::Request => self.requests,
            Kind::Reply => self.replies,
            Kind::Raft => self.raft,
            Kind::Grant => self.token,
            Kind::Heartbeat => self.heartbeats,
        };
        kind && (self.node.is_empty() || m.from == self.node || m.to == self.node)
            && (self.service.is_empty() || m.service == self.service || m.service.is_empty())
    }
}

fn color(kind: Kind) -> Color32 {
    match kind {
        Kind::Request => palette::BLUE,
        Kind::Reply => palette::GREEN,
        Kind::Raft => Color32::from_rgb(0xb1, 0x8c, 0xf0),
        Kind::Grant => palette::AMBER,
        Kind::Heartbeat => palette::GREY,
    }
}

/// One arrow as drawn: its ends, and the message it is.
#[derive(Debug, Clone, Copy)]
pub struct Arrow {
    pub from: Pos2,
    pub to: Pos2,
    pub index: usize,
}

/// The arrow nearest `p` within `reach` pixels.
pub fn nearest(arrows: &[Arrow], p: Pos2, reach: f32) -> Option<usize> {
    arrows
        .iter()
        .map(|a| (a.index, distance(p, a.from, a.to)))
        .filter(|(_, d)| *d <= reach)
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i)
}

fn distance(p: Pos2, a: Pos2, b: Pos2) -> f32 {
    let ab = b - a;
    let len2 = ab.length_sq();
    if len2 == 0.0 {
        return (p - a).length();
    }
    let t = ((p - a).dot(ab) / len2).clamp(0.0, 1.0);
    (p - (a + ab * t)).length()
}

/// What the last frame drew (for tests and the status line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drawn {
    pub in_view: usize,
    pub drawn: usize,
}

/// Draws the panel; `nodes` are the lab's nodes (lifelines, in order);
/// `now` is in the time base's seconds.
pub fn show(
    ui: &mut Ui,
    model: &FlowModel,
    settings: &mut FlowSettings,
    nodes: &[String],
    time: TimeBase,
    now: f64,
) -> Drawn {
    controls(ui, model, settings, nodes, now);
    let end = if settings.paused { settings.end } else { now };
    let start = end - settings.window_s;
    let lanes: Vec<&String> = nodes
        .iter()
        .filter(|n| {
            settings.service.is_empty() || n.starts_with(&settings.service) || settings.node == **n
        })
        .collect();
    let shown: Vec<(usize, &Message)> = model
        .between(start, end)
        .enumerate()
        .filter(|(_, m)| settings.shows(m))
        .collect();
    let stride = shown.len().div_ceil(MAX_DRAWN).max(1);
    let drawn = Drawn {
        in_view: shown.len(),
        drawn: shown.len().div_ceil(stride),
    };
    ui.horizontal(|ui| {
        ui.label(format!(
            "{} message(s) in view ({} seen in all)",
            drawn.in_view, model.seen
        ));
        if model.sample > 1 {
            ui.label(
                RichText::new(format!(
                    "sampling: 1 in {} kept ({}+ msg/s)",
                    model.sample,
                    (model.sample - 1) * crate::systems::flow::SAMPLE_ABOVE
                ))
                .color(palette::AMBER),
            );
        }
        if stride > 1 {
            ui.label(RichText::new(format!("drawing 1 in {stride}")).color(palette::AMBER));
        }
    });
    let height = (ui.available_height() - 150.0).max(240.0);
    let (rect, response) =
        ui.allocate_exact_size(vec2(ui.available_width(), height), Sense::click());
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 4.0, ui.visuals().extreme_bg_color);
    let header = 34.0;
    let body = Rect::from_min_max(pos2(rect.left() + 56.0, rect.top() + header), rect.max);
    let lane_x = |name: &str| -> Option<f32> {
        let i = lanes.iter().position(|n| *n == name)?;
        let w = body.width() / lanes.len().max(1) as f32;
        Some(body.left() + w * (i as f32 + 0.5))
    };
    let y = |t: f64| -> f32 {
        let f = ((t - start) / settings.window_s.max(0.1)) as f32;
        body.top() + f.clamp(0.0, 1.0) * body.height()
    };
    let text = ui.visuals().text_color();
    for (i, n) in lanes.iter().enumerate() {
        let Some(x) = lane_x(n) else { continue };
        painter.line_segment(
            [pos2(x, body.top()), pos2(x, body.bottom())],
            Stroke::new(1.0, ui.visuals().widgets.noninteractive.bg_stroke.color),
        );
        // Two rows of names, so neighbours do not overlap.
        let row = if i % 2 == 0 { 8.0 } else { 22.0 };
        painter.text(
            pos2(x, rect.top() + row),
            egui::Align2::CENTER_CENTER,
            n.as_str(),
            egui::FontId::monospace(10.0),
            text,
        );
    }
    // Time ticks every second (or every 10 s on long windows).
    let step = if settings.window_s > 20.0 { 10.0 } else { 1.0 };
    let mut tick = (start / step).ceil() * step;
    while tick <= end {
        let ty = y(tick);
        painter.text(
            pos2(rect.left() + 4.0, ty),
            egui::Align2::LEFT_CENTER,
            time.clock(tick),
            egui::FontId::monospace(9.0),
            palette::GREY,
        );
        tick += step;
    }
    let mut arrows = Vec::with_capacity(drawn.drawn);
    let few = drawn.drawn <= 120;
    for (k, (_, m)) in shown.iter().enumerate() {
        if k % stride != 0 {
            continue;
        }
        let Some(x0) = lane_x(&m.from) else { continue };
        let y0 = y(m.t);
        let c = color(m.kind);
        if m.to == "*" {
            painter.circle_filled(pos2(x0, y0), 2.0, c);
            continue;
        }
        let Some(x1) = lane_x(&m.to) else { continue };
        let slant = match m.fate {
            Fate::Delayed { ms } | Fate::Duplicated { ms } => {
                (y(m.t + ms as f64 / 1000.0) - y0).max(MIN_SLANT)
            }
            _ => MIN_SLANT,
        };
        let (a, b) = (pos2(x0, y0), pos2(x1, y0 + slant));
        let selected = settings.selected.as_deref() == Some(m.id.as_str());
        let width = if selected { 2.5 } else { 1.0 };
        let stroke = match m.fate {
            Fate::Dropped => Stroke::new(width, palette::RED),
            Fate::Delayed { .. } => Stroke::new(width, palette::AMBER),
            _ => Stroke::new(width, c),
        };
        painter.line_segment([a, b], stroke);
        if m.fate == Fate::Dropped {
            let s = 4.0;
            painter.line_segment([b + vec2(-s, -s), b + vec2(s, s)], stroke);
            painter.line_segment([b + vec2(-s, s), b + vec2(s, -s)], stroke);
        } else {
            let dir = (b - a).normalized();
            let side = vec2(-dir.y, dir.x);
            painter.line_segment([b, b - dir * 6.0 + side * 3.0], stroke);
            painter.line_segment([b, b - dir * 6.0 - side * 3.0], stroke);
            if matches!(m.fate, Fate::Duplicated { .. }) {
                painter.line_segment([a + side * 3.0, b + side * 3.0], stroke);
            }
        }
        if few {
            painter.text(
                a + (b - a) * 0.5 + vec2(0.0, -6.0),
                egui::Align2::CENTER_BOTTOM,
                &m.label,
                egui::FontId::proportional(10.0),
                palette::GREY,
            );
        }
        arrows.push(Arrow {
            from: a,
            to: b,
            index: k,
        });
    }
    if response.clicked()
        && let Some(p) = response.interact_pointer_pos()
    {
        settings.selected = nearest(&arrows, p, 6.0).map(|k| shown[k].1.id.clone());
        if settings.selected.is_some() && !settings.paused {
            // Hold the picture still while reading the message.
            settings.paused = true;
            settings.end = end;
        }
    }
    inspector(ui, model, settings);
    drawn
}

fn controls(
    ui: &mut Ui,
    model: &FlowModel,
    settings: &mut FlowSettings,
    nodes: &[String],
    now: f64,
) {
    ui.horizontal_wrapped(|ui| {
        let label = if settings.paused { "Live" } else { "Pause" };
        if ui
            .button(label)
            .on_hover_text("Pause to scrub back through what was recorded")
            .clicked()
        {
            settings.paused = !settings.paused;
            settings.end = now;
        }
        ui.add(
            egui::Slider::new(&mut settings.window_s, 0.5..=60.0)
                .logarithmic(true)
                .suffix(" s")
                .text("window"),
        );
        ui.checkbox(&mut settings.requests, "requests");
        ui.checkbox(&mut settings.replies, "replies");
        ui.checkbox(&mut settings.raft, "raft");
        ui.checkbox(&mut settings.token, "token");
        ui.checkbox(&mut settings.heartbeats, "heartbeats");
        let label = ui.label("node");
        egui::ComboBox::from_id_salt("flow-node")
            .selected_text(if settings.node.is_empty() {
                "all"
            } else {
                &settings.node
            })
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut settings.node, String::new(), "all");
                for n in nodes {
                    ui.selectable_value(&mut settings.node, n.clone(), n);
                }
            })
            .response
            .labelled_by(label.id);
        let label = ui.label("system");
        egui::ComboBox::from_id_salt("flow-service")
            .selected_text(if settings.service.is_empty() {
                "all"
            } else {
                &settings.service
            })
            .show_ui(ui, |ui| {
                for s in ["", "mom", "catalog", "order", "iot", "users", "lockers"] {
                    ui.selectable_value(
                        &mut settings.service,
                        s.to_owned(),
                        if s.is_empty() { "all" } else { s },
                    );
                }
            })
            .response
            .labelled_by(label.id);
    });
    if settings.paused {
        let first = model.messages().front().map_or(now, |m| m.t);
        let lo = (first + settings.window_s).min(now);
        ui.horizontal(|ui| {
            ui.add(
                egui::Slider::new(&mut settings.end, lo..=now)
                    .text("scrub: the window ends at")
                    .custom_formatter(|v, _| format!("{:.1} s ago", now - v)),
            );
        });
    }
}

fn inspector(ui: &mut Ui, model: &FlowModel, settings: &FlowSettings) {
    let Some(id) = &settings.selected else {
        ui.label(RichText::new("Click an arrow to see its envelope.").weak());
        return;
    };
    let Some(m) = model.messages().iter().rev().find(|m| &m.id == id) else {
        return;
    };
    let fate = match m.fate {
        Fate::Delivered => "delivered".to_owned(),
        Fate::Dropped => "dropped by the receiver's shim".to_owned(),
        Fate::Delayed { ms } => format!("delayed {ms} ms by the receiver's shim"),
        Fate::Duplicated { ms } => format!("delivered twice (after {ms} ms)"),
    };
    ui.label(RichText::new(format!("{} -> {}: {} ({fate})", m.from, m.to, m.label)).strong());
    egui::ScrollArea::vertical()
        .id_salt("flow-json")
        .max_height(110.0)
        .show(ui, |ui| {
            ui.label(RichText::new(&m.json).monospace());
        });
}

#[cfg(test)]
mod tests {
    use egui_kittest::Harness;
    use egui_kittest::kittest::Queryable;

    use super::*;
    use crate::systems::flow::tests::feed;

    #[test]
    fn the_nearest_arrow_is_picked_within_reach() {
        let arrows = [
            Arrow {
                from: pos2(0.0, 0.0),
                to: pos2(100.0, 10.0),
                index: 0,
            },
            Arrow {
                from: pos2(0.0, 50.0),
                to: pos2(100.0, 54.0),
                index: 1,
            },
        ];
        assert_eq!(nearest(&arrows, pos2(50.0, 6.0), 6.0), Some(0));
        assert_eq!(nearest(&arrows, pos2(50.0, 51.0), 6.0), Some(1));
        assert_eq!(nearest(&arrows, pos2(50.0, 30.0), 6.0), None);
    }

    type State = (FlowModel, FlowSettings, Drawn);

    fn harness(model: FlowModel, now: f64) -> Harness<'static, State> {
        let nodes: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let mut h = Harness::new_ui_state(
            move |ui, (model, settings, drawn): &mut State| {
                *drawn = show(ui, model, settings, &nodes, TimeBase::at(0), now);
            },
            (model, FlowSettings::default(), Drawn::default()),
        );
        h.set_size(egui::vec2(1280.0, 800.0));
        h.run();
        h
    }

    /// 10,000 messages a second: the model samples, the frame draws at most
    /// [`MAX_DRAWN`] arrows, and both say so. The frame's CPU time is
    /// printed (a figure, not a pass mark: these machines are shared).
    #[test]
    fn ten_thousand_messages_a_second_are_sampled_and_drawn_bounded() {
        let mut model = FlowModel::new(TimeBase::at(0));
        feed(&mut model, 10_000, 6, 0);
        let mut h = harness(model, 6.0);
        h.get_by_label("sampling: 1 in 10 kept (9000+ msg/s)");
        let d = h.state().2;
        assert!(d.in_view >= 4_000, "{d:?}");
        assert!(d.drawn <= MAX_DRAWN, "{d:?}");
        h.get_by_label(&format!("drawing 1 in {}", d.in_view.div_ceil(MAX_DRAWN)));
        let frames = 30;
        let started = std::time::Instant::now();
        for _ in 0..frames {
            h.run();
        }
        eprintln!(
            "flow diagram: {} arrows of {} in view, {:.2} ms a frame on the CPU (kittest, {frames} frames)",
            d.drawn,
            d.in_view,
            started.elapsed().as_secs_f64() * 1000.0 / frames as f64
        );
    }

    #[test]
    fn pausing_holds_the_window_and_offers_the_scrubber() {
        let mut model = FlowModel::new(TimeBase::at(0));
        feed(&mut model, 20, 10, 0);
        let mut h = harness(model, 10.0);
        h.get_by_label("Click an arrow to see its envelope.");
        h.get_by_label("Pause").click();
        h.run();
        assert!(h.state().1.paused);
        h.get_by_label("Live");
        assert!(
            h.get_all_by_label("scrub: the window ends at")
                .next()
                .is_some()
        );
    }
}
