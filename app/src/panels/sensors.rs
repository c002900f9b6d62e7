//! Sensors panel (IoT pipeline): live plots of the chosen sensors and fields,
//! the token lane, the pipeline's counters, and buttons that attack the token.

use std::collections::BTreeSet;

use distlab_node::config::TokenMode;
use egui::{RichText, Ui};
use egui_plot::{Legend, Line, Plot, PlotPoints, Points, VLine};
use serde::{Deserialize, Serialize};

use crate::link::LinkCommand;
use crate::outcome::Outcome;
use crate::palette;
use crate::systems::iot::{Field, IotModel, decimate};

/// What the panel remembers between runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SensorSettings {
    /// Visible time window, s.
    pub window_s: f64,
    pub fields: Vec<Field>,
    /// Sensors drawn; empty means the first four.
    pub selected: BTreeSet<String>,
    pub query_n: u64,
}

impl Default for SensorSettings {
    fn default() -> Self {
        Self {
            window_s: 30.0,
            fields: vec![Field::Temperature, Field::Humidity],
            selected: BTreeSet::new(),
            query_n: 10,
        }
    }
}

const WINDOWS: [(f64, &str); 5] = [
    (10.0, "10 s"),
    (30.0, "30 s"),
    (60.0, "1 min"),
    (300.0, "5 min"),
    (600.0, "10 min"),
];

/// `outcome` is the answer to the last request fired from any panel; this
/// one shows it when it answers one of its own buttons.
pub fn show(
    ui: &mut Ui,
    model: &IotModel,
    settings: &mut SensorSettings,
    store: Option<&str>,
    outcome: Option<&Outcome>,
) -> Vec<LinkCommand> {
    let mut commands = Vec::new();
    if model.series.is_empty() && model.store.is_none() {
        ui.label("No IoT data yet. Add `sensors`, `receiver`, `coordinator` and `store` nodes to the lab (config/lab.toml has them).");
        return commands;
    }
    counters(ui, model);
    ui.add_space(4.0);
    actions(ui, model, settings, store, outcome, &mut commands);
    ui.separator();

    egui::Panel::left("sensor-picker")
        .resizable(true)
        .default_size(170.0)
        .show(ui, |ui| {
            picker(ui, model, settings);
        });
    egui::Panel::bottom("token-lane")
        .resizable(true)
        .default_size(150.0)
        .show(ui, |ui| {
            token_lane(ui, model, settings);
            receivers(ui, model);
        });
    egui::CentralPanel::default().show(ui, |ui| plots(ui, model, settings));
    commands
}

fn stat(ui: &mut Ui, label: &str, value: String) {
    ui.vertical(|ui| {
        ui.label(RichText::new(label).small().weak());
        ui.label(RichText::new(value).strong().size(16.0));
    });
    ui.add_space(10.0);
}

fn counters(ui: &mut Ui, model: &IotModel) {
    ui.horizontal_wrapped(|ui| {
        stat(
            ui,
            "published",
            format!("{:.0} readings/s", model.published.per_second()),
        );
        stat(
            ui,
            "committed",
            format!("{:.0} rows/s", model.committed.per_second()),
        );
        let (rows, rejected) = model
            .store
            .as_ref()
            .map(|(_, s)| (s.rows, s.rejected.clone()))
            .unwrap_or_default();
        stat(ui, "rows in store", rows.to_string());
        let dropped: u64 = model.receivers.values().map(|r| r.dropped).sum();
        stat(ui, "dropped (buffers full)", dropped.to_string());
        if let Some((_, c)) = &model.coordinator {
            let mode = match c.mode {
                TokenMode::Central => "central (coordinator grants)",
                TokenMode::Ring => "ring (receivers pass it on)",
            };
            stat(ui, "token mode", mode.to_owned());
            stat(ui, "epoch", c.epoch.to_string());
            stat(
                ui,
                "token holder",
                c.holder.clone().unwrap_or_else(|| "none".into()),
            );
        }
        let total: u64 = rejected.values().sum();
        let detail = if rejected.is_empty() {
            "none".to_owned()
        } else {
            rejected
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        ui.vertical(|ui| {
            ui.label(RichText::new("rejected tokens").small().weak());
            let color = if total > 0 {
                palette::AMBER
            } else {
                ui.visuals().text_color()
            };
            ui.label(RichText::new(detail).strong().color(color).size(16.0));
        });
    });
}

fn actions(
    ui: &mut Ui,
    model: &IotModel,
    settings: &mut SensorSettings,
    store: Option<&str>,
    outcome: Option<&Outcome>,
    commands: &mut Vec<LinkCommand>,
) {
    ui.horizontal(|ui| {
        let Some(store) = store else {
            ui.label(RichText::new("No store node in the lab.").weak());
            return;
        };
        if ui
            .button("Send forged token")
            .on_hover_text(
                "Write to the store with a grant signed by a key that is not the coordinator's",
            )
            .clicked()
        {
            commands.push(LinkCommand::ForgeToken {
                store: store.to_owned(),
            });
        }
        let old = model.old_grant(1.0);
        let replay = ui.add_enabled(old.is_some(), egui::Button::new("Replay an old token"));
        if replay
            .on_hover_text(
                "Re-send a grant from a second ago (already used), as its holder, with other data",
            )
            .clicked()
            && let Some(grant) = old
        {
            commands.push(LinkCommand::ReplayToken {
                store: store.to_owned(),
                grant,
            });
        }
        ui.separator();
        let label = ui.label("get_measurements");
        ui.add(egui::DragValue::new(&mut settings.query_n).range(1..=500))
            .labelled_by(label.id);
        if ui.button("Query store").clicked() {
            commands.push(LinkCommand::QueryStore {
                store: store.to_owned(),
                n: settings.query_n,
            });
        }
        if let Some(http) = &model.store_http {
            ui.separator();
            ui.label(RichText::new(format!("HTTP: http://{http}/get_measurements/<n>")).weak())
                .on_hover_text(format!(
                    "The seed's path: rows as lists, newest first.\n\
                     Objects, oldest first: http://{http}/api/v1/measurements?n=<n>"
                ));
        }
    });
    if let Some(outcome) = outcome {
        answer(ui, outcome);
    }
}

/// The answer to a query or an attack on the token.
fn answer(ui: &mut Ui, outcome: &Outcome) {
    let (result, readings) = match outcome {
        Outcome::StoreQuery { result, .. } => (
            result
                .as_ref()
                .map(|rows| format!("{} readings", rows.len())),
            result.as_ref().ok(),
        ),
        Outcome::ForgedToken(result) | Outcome::ReplayedToken { result, .. } => {
            (result.as_ref().map(|w| format!("accepted {w}")), None)
        }
        _ => return,
    };
    let title = outcome.title();
    let (color, text) = match result {
        Ok(what) => (palette::GREEN, format!("{title}: {what}")),
        Err(e) => (palette::AMBER, format!("{title}: {e}")),
    };
    ui.label(RichText::new(text).color(color));
    if let Some(rows) = readings {
        egui::CollapsingHeader::new("Readings")
            .default_open(false)
            .show(ui, |ui| {
                for r in rows.iter().rev().take(20) {
                    // As JSON with its keys sorted, as the store's reply reads.
                    let text =
                        serde_json::to_value(r).map_or_else(|e| e.to_string(), |v| v.to_string());
                    ui.label(RichText::new(text).monospace().small());
                }
            });
    }
}

fn picker(ui: &mut Ui, model: &IotModel, settings: &mut SensorSettings) {
    let label = ui.label(RichText::new("Window").strong());
    egui::ComboBox::from_id_salt("window")
        .selected_text(
            WINDOWS
                .iter()
                .find(|w| w.0 == settings.window_s)
                .map_or("custom", |w| w.1),
        )
        .show_ui(ui, |ui| {
            for (secs, label) in WINDOWS {
                ui.selectable_value(&mut settings.window_s, secs, label);
            }
        })
        .response
        .labelled_by(label.id);
    ui.add_space(6.0);
    ui.label(RichText::new("Fields").strong());
    for field in Field::ALL {
        let mut on = settings.fields.contains(&field);
        if ui
            .checkbox(&mut on, format!("{} ({})", field.label(), field.unit()))
            .changed()
        {
            if on {
                settings.fields.push(field);
                settings.fields.sort_by_key(|f| f.index());
            } else {
                settings.fields.retain(|f| *f != field);
            }
        }
    }
    ui.add_space(6.0);
    ui.horizontal(|ui| {
        ui.label(RichText::new(format!("Sensors ({})", model.series.len())).strong());
        if ui.small_button("all").clicked() {
            settings.selected = model.series.keys().cloned().collect();
        }
        if ui.small_button("none").clicked() {
            settings.selected.clear();
            settings.selected.insert(String::new());
        }
    });
    egui::ScrollArea::vertical().show(ui, |ui| {
        let shown = shown_sensors(model, settings);
        for (i, id) in model.series.keys().enumerate() {
            let mut on = shown.contains(id);
            let text = RichText::new(id).color(if on {
                palette::series(i)
            } else {
                ui.visuals().weak_text_color()
            });
            if ui.checkbox(&mut on, text).changed() {
                if settings.selected.is_empty() {
                    settings.selected = shown.iter().cloned().collect();
                }
                settings.selected.remove("");
                if on {
                    settings.selected.insert(id.clone());
                } else {
                    settings.selected.remove(id);
                    if settings.selected.is_empty() {
                        settings.selected.insert(String::new());
                    }
                }
            }
        }
    });
}

/// The sensors to draw: the selection, or the first four when nothing was chosen.
fn shown_sensors(model: &IotModel, settings: &SensorSettings) -> Vec<String> {
    if settings.selected.is_empty() {
        model.series.keys().take(4).cloned().collect()
    } else {
        model
            .series
            .keys()
            .filter(|k| settings.selected.contains(*k))
            .cloned()
            .collect()
    }
}

fn plots(ui: &mut Ui, model: &IotModel, settings: &SensorSettings) {
    if settings.fields.is_empty() {
        ui.label("Pick a field to plot.");
        return;
    }
    let now = model.now();
    let (x0, x1) = (now - settings.window_s, now);
    let shown = shown_sensors(model, settings);
    let time = model.time;
    let height = ((ui.available_height() - 8.0) / settings.fields.len() as f32).max(80.0);
    let columns = ui.available_width().max(100.0) as usize;
    for field in &settings.fields {
        let mut lines = Vec::new();
        for (i, (id, s)) in model.series.iter().enumerate() {
            if shown.contains(id) {
                let pts = decimate(&s.t, &s.v, field.index(), x0, x1, columns);
                lines.push(
                    Line::new(id.clone(), PlotPoints::from(pts))
                        .color(palette::series(i))
                        .width(1.5),
                );
            }
        }
        Plot::new(("sensor-plot", field.index()))
            .height(height)
            .legend(Legend::default())
            .allow_drag(false)
            .allow_zoom(false)
            .allow_scroll(false)
            .y_axis_label(format!("{} ({})", field.label(), field.unit()))
            .x_axis_formatter(move |mark, _| time.clock(mark.value))
            .show(ui, move |plot| {
                plot.set_plot_bounds_x(x0..=x1);
                for line in lines {
                    plot.line(line);
                }
            });
    }
}

fn token_lane(ui: &mut Ui, model: &IotModel, settings: &SensorSettings) {
    ui.label(
        RichText::new("Token lane: who held the write token (dashed lines: new epoch)").strong(),
    );
    let now = model.now().max(model.tokens.back().map_or(0.0, |m| m.t));
    let (x0, x1) = (now - settings.window_s, now);
    let holders: Vec<String> = model.receivers.keys().cloned().collect();
    let time = model.time;
    let columns = ui.available_width().max(100.0) as usize;
    let mut per_holder: Vec<Vec<[f64; 2]>> = vec![Vec::new(); holders.len()];
    let mut last_column = vec![i64::MIN; holders.len()];
    let mut epochs = Vec::new();
    let mut prev_epoch = None;
    let width = (x1 - x0) / columns as f64;
    for m in model.tokens.iter().filter(|m| m.t >= x0 && m.t <= x1) {
        if prev_epoch.is_some_and(|e| e != m.epoch) {
            epochs.push((m.t, m.epoch));
        }
        prev_epoch = Some(m.epoch);
        if let Some(row) = holders.iter().position(|h| *h == m.holder) {
            // One marker per pixel column and holder is plenty.
            let column = ((m.t - x0) / width) as i64;
            if column != last_column[row] {
                last_column[row] = column;
                per_holder[row].push([m.t, row as f64]);
            }
        }
    }
    let names = holders.clone();
    Plot::new("token-lane")
        .height(90.0)
        .allow_drag(false)
        .allow_zoom(false)
        .allow_scroll(false)
        .show_grid([true, false])
        .x_axis_formatter(move |mark, _| time.clock(mark.value))
        .y_axis_formatter(move |mark, _| {
            let i = mark.value.round();
            if (mark.value - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .show(ui, move |plot| {
            plot.set_plot_bounds_x(x0..=x1);
            plot.set_plot_bounds_y(-0.7..=(holders.len() as f64 - 0.3));
            for (row, points) in per_holder.into_iter().enumerate() {
                plot.points(
                    Points::new(holders[row].clone(), PlotPoints::from(points))
                        .radius(2.5)
                        .color(palette::series(row)),
                );
            }
            for (t, epoch) in epochs.into_iter().rev().take(50) {
                plot.vline(
                    VLine::new(format!("epoch {epoch}"), t)
                        .color(palette::RED)
                        .style(egui_plot::LineStyle::dashed_loose()),
                );
            }
        });
}

fn receivers(ui: &mut Ui, model: &IotModel) {
    ui.horizontal_wrapped(|ui| {
        for (name, r) in &model.receivers {
            ui.vertical(|ui| {
                ui.label(RichText::new(name).monospace().strong());
                let fill = if r.capacity > 0 {
                    r.buffered as f32 / r.capacity as f32
                } else {
                    0.0
                };
                ui.add(
                    egui::ProgressBar::new(fill.min(1.0))
                        .desired_width(160.0)
                        .text(format!("buffer {}/{}", r.buffered, r.capacity)),
                );
                ui.label(
                    RichText::new(format!("written {}  dropped {}", r.written, r.dropped)).small(),
                );
            });
            ui.add_space(12.0);
        }
    });
}

#[cfg(test)]
mod tests {
    use distlab_node::envelope::{EnvelopeFactory, Topics};
    use distlab_node::services::iot::keys::KeyPair;
    use distlab_node::services::iot::sensor::SensorSim;
    use distlab_node::services::iot::token::Grant;
    use egui_kittest::Harness;
    use egui_kittest::kittest::Queryable;
    use serde_json::json;

    use super::*;
    use crate::outcome::{LinkError, StoreWrite};
    use crate::systems::time::TimeBase;

    /// A model fed the way the bus would feed it: readings, grants, telemetry.
    fn fake_model() -> IotModel {
        let topics = Topics::new("lab");
        let f = EnvelopeFactory::new("sensors");
        let mut model = IotModel::new(TimeBase::at(1_000_000));
        let mut sims: Vec<SensorSim> = (0..3)
            .map(|i| SensorSim::new(&format!("s{i}"), i, (50, 50)))
            .collect();
        for step in 0..200u64 {
            for sim in &mut sims {
                let r = sim.next(1_000_000 + step * 50);
                model.observe(
                    &topics,
                    &distlab_node::services::iot::sensor_topic(&topics, &r.sensor),
                    &f.make("reading", None, json!(r)),
                );
            }
        }
        let key = KeyPair::from_seed([3; 32]);
        for seq in 0..40u64 {
            let holder = format!("receiver-{}", seq % 2 + 1);
            let g = key.sign(Grant {
                holder,
                epoch: 1 + seq / 20,
                seq,
                issued_ms: 1_000_000 + seq * 250,
                expires_ms: 2_000_000,
                ..Default::default()
            });
            model.observe(
                &topics,
                &topics.service("iot", "grant"),
                &f.make("grant", None, json!(g)),
            );
        }
        for r in ["receiver-1", "receiver-2"] {
            let stats =
                json!({"accepted": 10, "dropped": 2, "written": 8, "buffered": 2, "capacity": 100});
            model.observe(
                &topics,
                &topics.telemetry(r, "receiver"),
                &EnvelopeFactory::new(r).make("telemetry", None, stats),
            );
        }
        let store = json!({"rows": 1234, "epoch": 2, "batches": 5, "duplicates": 0, "rejected": {"bad_signature": 2}, "http": "127.0.0.1:8081"});
        model.observe(
            &topics,
            &topics.telemetry("store", "store"),
            &EnvelopeFactory::new("store").make("telemetry", None, store),
        );
        model
    }

    type State = (IotModel, SensorSettings, Vec<LinkCommand>, Option<Outcome>);

    fn harness() -> Harness<'static, State> {
        harness_with(None)
    }

    fn harness_with(outcome: Option<Outcome>) -> Harness<'static, State> {
        let mut h = Harness::new_ui_state(
            |ui, (model, settings, out, outcome): &mut State| {
                out.extend(show(ui, model, settings, Some("store"), outcome.as_ref()));
            },
            (fake_model(), SensorSettings::default(), Vec::new(), outcome),
        );
        h.set_size(egui::vec2(1200.0, 800.0));
        h.run();
        h
    }

    #[test]
    fn model_times_are_on_the_given_base() {
        let model = fake_model();
        // The first reading was at 1,000,000 ms, the base's origin; the last
        // 199 steps of 50 ms later.
        assert_eq!(model.series["s0"].t.front(), Some(&0.0));
        assert_eq!(model.now(), 9.95);
        assert_eq!(model.tokens.back().map(|m| m.t), Some(9.75));
        assert_eq!(model.time.clock(0.0), "00:16:40");
        assert_eq!(IotModel::new(TimeBase::at(0)).now(), 0.0, "no readings yet");
    }

    #[test]
    fn answers_to_its_own_requests_are_shown() {
        let mut sim = SensorSim::new("s9", 9, (50, 50));
        let rows = (0..3).map(|i| sim.next(5_000 + i)).collect();
        let h = harness_with(Some(Outcome::StoreQuery {
            store: "store".into(),
            n: 10,
            result: Ok(rows),
        }));
        h.get_by_label("store: get_measurements 10: 3 readings");
        h.get_by_label("Readings");

        let h = harness_with(Some(Outcome::ForgedToken(Err(LinkError::NoBroker))));
        h.get_by_label("Forged token: cannot reach the broker");
        let h = harness_with(Some(Outcome::ReplayedToken {
            holder: "receiver-1".into(),
            epoch: 2,
            seq: 7,
            result: Ok(StoreWrite {
                duplicate: false,
                inserted: 3,
            }),
        }));
        h.get_by_label(
            r#"Replayed token of receiver-1 (epoch 2, seq 7): accepted {"duplicate":false,"inserted":3}"#,
        );
    }

    #[test]
    fn answers_to_other_panels_are_not_shown_here() {
        let h = harness_with(Some(Outcome::Mom {
            ask: crate::outcome::MomAsk::CreateUser,
            result: Err(LinkError::NoBroker),
        }));
        assert!(
            h.query_by_label_contains("cannot reach the broker")
                .is_none()
        );
    }

    #[test]
    fn shows_counters_sensors_and_receivers() {
        let h = harness();
        h.get_by_label("1234");
        h.get_by_label("bad_signature 2");
        // Each sensor is in the picker and in the plot legends.
        for s in ["s0", "s1", "s2"] {
            assert!(h.get_all_by_label(s).count() >= 2, "{s}");
        }
        h.get_by_label("receiver-1");
        assert_eq!(
            h.get_all_by_label("buffer 2/100").count(),
            2,
            "one bar per receiver"
        );
    }

    #[test]
    fn attack_and_query_buttons_emit_commands() {
        let mut h = harness();
        h.get_by_label("Send forged token").click();
        h.run();
        h.get_by_label("Replay an old token").click();
        h.run();
        h.get_by_label("Query store").click();
        h.run();
        let out = &h.state().2;
        assert!(
            matches!(&out[0], LinkCommand::ForgeToken { store } if store == "store"),
            "{out:?}"
        );
        match &out[1] {
            // A grant at least a second older than the newest: already used.
            LinkCommand::ReplayToken { grant, .. } => assert!(grant.grant.seq <= 35, "{grant:?}"),
            other => panic!("expected a replay, got {other:?}"),
        }
        assert!(
            matches!(&out[2], LinkCommand::QueryStore { n: 10, .. }),
            "{out:?}"
        );
    }

    #[test]
    fn field_checkboxes_change_the_plots() {
        let mut h = harness();
        h.get_by_label("Pressure (hPa)").click();
        h.run();
        assert!(h.state().1.fields.contains(&Field::Pressure));
    }
}
