//! Map panel: the map log's partition table as a grid (one cell per
//! partition, coloured by its owner, its backups marked in their colours),
//! whether the members agree on a view or are migrating, each member's
//! figures, the facade's and the messages nodes' counts, and buttons to log
//! messages, read them all back and check, and kill two loggers at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use egui::{Color32, RichText, Sense, Stroke, Ui, pos2, vec2};
use serde::{Deserialize, Serialize};

use crate::link::LinkCommand;
use crate::palette;
use crate::panels::cluster::ClusterAction;
use crate::supervisor::NodeCommand;
use crate::systems::maplog::{MapSession, MaplogModel, Migration, TableView};
use crate::systems::time::STALE_S;

/// What the panel remembers between runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MapSettings {
    /// How many messages "Log N messages" sends.
    pub log_n: usize,
}

impl Default for MapSettings {
    fn default() -> Self {
        Self { log_n: 100 }
    }
}

/// The map log's nodes as the lab names them, and the facade's address
/// from the lab config (used until the facade reports its own).
pub struct LabView<'a> {
    pub loggers: &'a [String],
    pub facades: &'a [String],
    pub messages: &'a [String],
    pub facade_http: Option<SocketAddr>,
}

/// Partitions per row of the grid.
const COLS: usize = 24;
const CELL: f32 = 20.0;
const GAP: f32 = 3.0;
/// A partition whose owner is not known.
const NO_OWNER: Color32 = Color32::from_gray(70);
/// Missing messages listed after a failed check.
const SHOW_MISSING: usize = 5;

/// Member colours, in order: the plot series, the status colours last.
const MEMBER_ORDER: [usize; 8] = [0, 4, 5, 6, 7, 1, 2, 3];

pub fn show(
    ui: &mut Ui,
    model: &MaplogModel,
    session: &mut MapSession,
    settings: &mut MapSettings,
    nodes: &LabView<'_>,
    now: f64,
) -> (Vec<ClusterAction>, Vec<LinkCommand>) {
    let mut actions = Vec::new();
    let mut commands = Vec::new();
    if nodes.loggers.is_empty() && model.loggers.is_empty() {
        ui.label(
            "No map log in this lab. Add `logger` nodes (three), a `facade` and `messages` nodes (config/lab.toml).",
        );
        return (actions, commands);
    }
    let table = model.table();
    let colours = colours(nodes.loggers, model, table.as_ref());
    summary(ui, model, table.as_ref(), now);
    ui.add_space(4.0);
    controls(
        ui,
        model,
        session,
        settings,
        nodes,
        table.as_ref(),
        now,
        &mut actions,
        &mut commands,
    );
    session_figures(ui, session);
    ui.add_space(4.0);
    ui.separator();
    ui.columns(2, |cols| {
        match &table {
            Some(t) => {
                grid(&mut cols[0], t, &colours);
                cols[0].add_space(6.0);
                legend(&mut cols[0], t, model, &colours);
            }
            None => {
                cols[0].label(RichText::new("Partition table").strong());
                cols[0].label(
                    RichText::new(
                        "No logger reports a partition table yet (the first view is being formed).",
                    )
                    .weak(),
                );
            }
        }
        members(&mut cols[1], model, nodes.loggers, &colours, now);
        cols[1].add_space(8.0);
        others(&mut cols[1], model, nodes, now);
    });
    (actions, commands)
}

/// One stable colour per member: by its place among every logger the lab
/// names or that has reported, whatever the current view.
fn colours(
    configured: &[String],
    model: &MaplogModel,
    table: Option<&TableView>,
) -> BTreeMap<String, Color32> {
    let mut names: Vec<&str> = configured.iter().map(String::as_str).collect();
    names.extend(model.loggers.keys().map(String::as_str));
    if let Some(t) = table {
        names.extend(t.members.iter().map(String::as_str));
    }
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            let c = palette::SERIES[MEMBER_ORDER[i % MEMBER_ORDER.len()]];
            (n.to_owned(), c)
        })
        .collect()
}

fn colour_of(colours: &BTreeMap<String, Color32>, member: Option<&str>) -> Color32 {
    member
        .and_then(|m| colours.get(m).copied())
        .unwrap_or(NO_OWNER)
}

fn summary(ui: &mut Ui, model: &MaplogModel, table: Option<&TableView>, now: f64) {
    ui.horizontal_wrapped(|ui| {
        match table {
            Some(t) => {
                ui.label(RichText::new(format!("Epoch {}", t.epoch)).strong())
                    .on_hover_text(format!(
                        "The view with the highest epoch, as {} reports it.",
                        t.from
                    ));
                ui.separator();
                ui.label(format!(
                    "master {}",
                    if t.master.is_empty() {
                        "—"
                    } else {
                        &t.master
                    }
                ));
                ui.separator();
                ui.label(format!("{} members", t.members.len()));
                ui.separator();
                ui.label(format!("{} partitions", t.parts.len()));
                ui.separator();
                let b = t.backup_count;
                ui.label(format!("{b} backup{}", if b == 1 { "" } else { "s" }))
                    .on_hover_text("Synchronous copies of each partition besides its owner's.");
                let copies = t.members.len().min(b + 1);
                if copies < b + 1 && !t.members.is_empty() {
                    ui.label(
                        RichText::new(format!(
                            "(only {copies} cop{} of each partition with {} member{})",
                            if copies == 1 { "y" } else { "ies" },
                            t.members.len(),
                            if t.members.len() == 1 { "" } else { "s" },
                        ))
                        .color(palette::AMBER),
                    );
                }
                ui.separator();
            }
            None => {
                ui.label(RichText::new("no partition table yet").color(palette::GREY));
                ui.separator();
            }
        }
        let (color, text) = match model.migration(now) {
            Migration::Unknown => (palette::RED, "no logger reports".to_owned()),
            Migration::Stable { .. } => (
                palette::GREEN,
                "stable: every member is in this view and synced".to_owned(),
            ),
            Migration::Migrating {
                epochs,
                syncing,
                in_flight,
            } => {
                let mut text = format!("migrating: {in_flight} partitions in flight");
                if epochs.len() > 1 {
                    let list: Vec<String> = epochs.iter().map(u64::to_string).collect();
                    text.push_str(&format!("; members on epochs {}", list.join(", ")));
                }
                if !syncing.is_empty() {
                    text.push_str(&format!("; syncing: {}", syncing.join(", ")));
                }
                (palette::AMBER, text)
            }
        };
        ui.label(RichText::new(text).color(color).strong());
    });
}

/// The two live loggers whose loss loses the most partitions (every copy on
/// them), and how many that is.
fn victims(
    model: &MaplogModel,
    table: Option<&TableView>,
    now: f64,
) -> Option<(String, String, usize)> {
    let live = model.live_loggers(now);
    let mut best: Option<(String, String, usize)> = None;
    for (i, a) in live.iter().enumerate() {
        for b in &live[i + 1..] {
            let lost = table.map_or(0, |t| t.only_on(a, b));
            if best.as_ref().is_none_or(|(_, _, l)| lost > *l) {
                best = Some(((*a).to_owned(), (*b).to_owned(), lost));
            }
        }
    }
    best
}

#[allow(clippy::too_many_arguments)]
fn controls(
    ui: &mut Ui,
    model: &MaplogModel,
    session: &mut MapSession,
    settings: &mut MapSettings,
    nodes: &LabView<'_>,
    table: Option<&TableView>,
    now: f64,
    actions: &mut Vec<ClusterAction>,
    commands: &mut Vec<LinkCommand>,
) {
    let facade = model.facade_addr(nodes.facade_http);
    ui.horizontal(|ui| {
        ui.add(
            egui::DragValue::new(&mut settings.log_n)
                .range(1..=10_000)
                .suffix(" messages"),
        );
        let logging = session.logging;
        let label = if logging {
            "Logging…".to_owned()
        } else {
            format!("Log {} messages", settings.log_n)
        };
        let log = ui
            .add_enabled(facade.is_some() && !logging, egui::Button::new(label))
            .on_hover_text(format!(
                "POST each to the facade's /polls/ as msg=app-{}-<n>; a redirect to /polls/thanks counts as acknowledged.",
                session.session
            ));
        if log.clicked()
            && let Some(addr) = facade
        {
            session.logging = true;
            commands.push(LinkCommand::MapLog {
                addr,
                messages: session.next_batch(settings.log_n),
            });
        }
        let reading = session.reading;
        let read = ui
            .add_enabled(
                facade.is_some() && !reading,
                egui::Button::new(if reading { "Reading…" } else { "Read all back and check" }),
            )
            .on_hover_text("GET the facade's /polls/database and look for every message this app logged and had acknowledged.");
        if read.clicked()
            && let Some(addr) = facade
        {
            let expected = session.start_read();
            commands.push(LinkCommand::MapRead { addr, expected });
        }
        ui.separator();
        let victims = victims(model, table, now);
        let help = match (&victims, table) {
            (Some((a, b, lost)), Some(t)) => format!(
                "SIGKILL {a} and {b} at once. With {} backup{}, {lost} partitions have every copy on these two: their entries are lost. Restart them from the Cluster tab.",
                t.backup_count,
                if t.backup_count == 1 { "" } else { "s" },
            ),
            (Some((a, b, _)), None) => format!("SIGKILL {a} and {b} at once."),
            (None, _) => "Needs two loggers that report.".to_owned(),
        };
        let kill = ui
            .add_enabled(victims.is_some(), egui::Button::new("Kill two loggers"))
            .on_hover_text(help);
        if kill.clicked()
            && let Some((a, b, _)) = &victims
        {
            for node in [a, b] {
                actions.push(ClusterAction::Command(node.clone(), NodeCommand::Kill));
            }
        }
        if let (Some((a, b, lost)), Some(_)) = (&victims, table) {
            let color = if *lost > 0 { palette::AMBER } else { palette::GREY };
            ui.label(
                RichText::new(format!("{lost} partitions have every copy on {a} and {b}"))
                    .color(color),
            );
        }
    });
    if facade.is_none() {
        ui.label(
            RichText::new("No facade in this lab: nothing to log through.").color(palette::AMBER),
        );
    }
}

fn session_figures(ui: &mut Ui, session: &MapSession) {
    ui.horizontal_wrapped(|ui| {
        ui.label(RichText::new("This session").weak());
        ui.label(format!("{} acknowledged", session.acked().len()))
            .on_hover_text(format!(
                "Messages app-{}-<n> the facade thanked for.",
                session.session
            ));
        let count = |n: u64, what: &str| format!("{n} {what}");
        let color = |n: u64| if n > 0 { palette::AMBER } else { palette::GREY };
        ui.label(
            RichText::new(count(session.errors, "sent to /polls/error"))
                .color(color(session.errors)),
        );
        ui.label(RichText::new(count(session.failed, "failed")).color(color(session.failed)));
        if let Some(r) = &session.last_run {
            ui.separator();
            ui.label(
                RichText::new(format!(
                    "last run: {} of {} acknowledged in {:.1} s",
                    r.thanks.len(),
                    r.sent,
                    r.secs
                ))
                .weak(),
            );
        }
        if let Some(why) = &session.last_failure {
            ui.separator();
            ui.label(
                RichText::new(format!("last failure: {why}"))
                    .color(palette::AMBER)
                    .small(),
            );
        }
    });
    match &session.last_check {
        None => {}
        Some(Err(why)) => {
            ui.label(RichText::new(format!("Read back failed: {why}")).color(palette::AMBER));
        }
        Some(Ok(c)) if c.ok() => {
            ui.label(
                RichText::new(format!("All {} acknowledged messages readable", c.expected))
                    .color(palette::GREEN)
                    .strong(),
            )
            .on_hover_text(format!("{} messages read back in all.", c.read));
        }
        Some(Ok(c)) => {
            let shown: Vec<&str> = c
                .missing
                .iter()
                .take(SHOW_MISSING)
                .map(String::as_str)
                .collect();
            let more = c.missing.len().saturating_sub(SHOW_MISSING);
            let tail = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            ui.label(
                RichText::new(format!(
                    "{} of {} acknowledged messages missing: {}{tail}",
                    c.missing.len(),
                    c.expected,
                    shown.join(", ")
                ))
                .color(palette::RED)
                .strong(),
            );
        }
    }
}

fn grid(ui: &mut Ui, table: &TableView, colours: &BTreeMap<String, Color32>) {
    ui.label(RichText::new(format!("Partition table ({} partitions)", table.parts.len())).strong())
        .on_hover_text("One cell per partition, in its owner's colour; the corner mark is its first backup's colour, a dot each further backup.");
    let n = table.parts.len();
    let rows = n.div_ceil(COLS);
    let step = CELL + GAP;
    let size = vec2(COLS as f32 * step - GAP, rows as f32 * step - GAP);
    let (rect, response) = ui.allocate_exact_size(size, Sense::hover());
    let painter = ui.painter_at(rect);
    let hovered = response.hover_pos().and_then(|p| {
        let rel = p - rect.min;
        let (c, r) = ((rel.x / step) as usize, (rel.y / step) as usize);
        let i = r * COLS + c;
        (rel.x >= 0.0 && rel.y >= 0.0 && c < COLS && i < n).then_some(i)
    });
    for (i, part) in table.parts.iter().enumerate() {
        let min = rect.min + vec2((i % COLS) as f32 * step, (i / COLS) as f32 * step);
        let cell = egui::Rect::from_min_size(min, vec2(CELL, CELL));
        painter.rect_filled(cell, 2.0, colour_of(colours, part.owner.as_deref()));
        let mut backups = part.backups.iter();
        if let Some(first) = backups.next() {
            // The first backup: a corner in its colour, with a dark edge.
            let (br, leg) = (cell.right_bottom(), CELL * 0.55);
            let corner = vec![pos2(br.x - leg, br.y), br, pos2(br.x, br.y - leg)];
            painter.add(egui::Shape::convex_polygon(
                corner,
                colour_of(colours, Some(first)),
                Stroke::new(1.0, Color32::from_black_alpha(140)),
            ));
        }
        for (k, b) in backups.enumerate() {
            let centre = pos2(cell.left() + 3.5 + k as f32 * 4.5, cell.top() + 3.5);
            painter.circle(
                centre,
                2.0,
                colour_of(colours, Some(b)),
                Stroke::new(0.5, Color32::from_black_alpha(160)),
            );
        }
        if hovered == Some(i) {
            painter.rect_stroke(
                cell,
                2.0,
                Stroke::new(1.5, Color32::WHITE),
                egui::StrokeKind::Outside,
            );
        }
    }
    if let Some(i) = hovered {
        let part = &table.parts[i];
        response.on_hover_ui_at_pointer(|ui| {
            ui.label(RichText::new(format!("Partition {i}")).strong());
            ui.label(format!(
                "owner: {}",
                part.owner.as_deref().unwrap_or("unknown")
            ));
            let backups = if part.backups.is_empty() {
                "none".to_owned()
            } else {
                part.backups.join(", ")
            };
            ui.label(format!("backups: {backups}"));
        });
    }
}

fn swatch(ui: &mut Ui, color: Color32) {
    let (rect, _) = ui.allocate_exact_size(vec2(12.0, 12.0), Sense::hover());
    ui.painter().rect_filled(rect, 2.0, color);
}

fn legend(
    ui: &mut Ui,
    table: &TableView,
    model: &MaplogModel,
    colours: &BTreeMap<String, Color32>,
) {
    for m in &table.members {
        ui.horizontal(|ui| {
            swatch(ui, colour_of(colours, Some(m)));
            ui.label(RichText::new(m).monospace().strong());
            let entries = model
                .loggers
                .get(m)
                .map_or_else(|| "—".to_owned(), |(_, s)| s.owned_entries.to_string());
            ui.label(format!(
                "{} partitions · {entries} entries",
                table.owned_by(m)
            ));
            if *m == table.master {
                ui.label(RichText::new("master").weak());
            }
        });
    }
    let unknown = table.parts.iter().filter(|p| p.owner.is_none()).count();
    if unknown > 0 {
        ui.horizontal(|ui| {
            swatch(ui, NO_OWNER);
            ui.label(format!("{unknown} partitions without a known owner"));
        });
    }
}

fn members(
    ui: &mut Ui,
    model: &MaplogModel,
    configured: &[String],
    colours: &BTreeMap<String, Color32>,
    now: f64,
) {
    ui.label(RichText::new("Members").strong());
    let mut names: Vec<String> = configured.to_vec();
    names.extend(
        model
            .loggers
            .keys()
            .filter(|n| !configured.contains(n))
            .cloned(),
    );
    egui::Grid::new("maplog-members")
        .striped(true)
        .spacing([12.0, 3.0])
        .show(ui, |ui| {
            for h in [
                "",
                "member",
                "state",
                "epoch",
                "partitions",
                "entries",
                "backup entries",
                "puts/s",
                "gets/s",
                "migrations",
                "heard",
            ] {
                ui.label(RichText::new(h).small().weak());
            }
            ui.end_row();
            for name in &names {
                swatch(ui, colour_of(colours, Some(name)));
                ui.label(RichText::new(name).monospace().strong());
                let Some((t, s)) = model.loggers.get(name) else {
                    ui.label(RichText::new("no telemetry").color(palette::RED));
                    ui.end_row();
                    continue;
                };
                let (color, state) = if now - t > STALE_S {
                    (palette::RED, "silent (down?)")
                } else if s.ready {
                    (palette::GREEN, "ready")
                } else {
                    (palette::AMBER, "syncing")
                };
                ui.label(RichText::new(state).color(color));
                ui.label(s.epoch.to_string());
                ui.label(s.owned_partitions.to_string());
                ui.label(s.owned_entries.to_string());
                ui.label(s.backup_entries.to_string());
                let (puts, gets) = model.rates(name);
                ui.label(format!("{puts:.0}"));
                ui.label(format!("{gets:.0}"));
                let migrations = format!(
                    "{} in flight / {} done",
                    s.migrations_in_flight, s.migrations_done
                );
                if s.migrations_in_flight > 0 {
                    ui.label(RichText::new(migrations).color(palette::AMBER));
                } else {
                    ui.label(migrations);
                }
                ui.label(RichText::new(format!("{:.1} s ago", (now - t).max(0.0))).weak())
                    .on_hover_text(if s.http.is_empty() {
                        "seed HTTP not reported".to_owned()
                    } else {
                        format!("seed HTTP {} (/database/)", s.http)
                    });
                ui.end_row();
            }
        });
}

/// The facade's and the messages nodes' figures.
fn others(ui: &mut Ui, model: &MaplogModel, nodes: &LabView<'_>, now: f64) {
    node_rows(
        ui,
        "Facade",
        "no facade",
        nodes.facades,
        &model.facades,
        now,
        |ui, s| {
            ui.label(RichText::new(format!("{} logged", s.logged)).color(palette::GREEN));
            let failed = if s.failed > 0 {
                palette::RED
            } else {
                palette::GREY
            };
            ui.label(RichText::new(format!("{} failed", s.failed)).color(failed));
            ui.label(format!("{} queued for messages", s.queued_for_messages))
                .on_hover_text(
                    "Copies waiting to be published on the MOM queue for the messages nodes.",
                );
            &s.http
        },
    );
    ui.add_space(4.0);
    node_rows(
        ui,
        "Messages",
        "no messages nodes",
        nodes.messages,
        &model.messages,
        now,
        |ui, s| {
            ui.label(format!("{} held", s.held));
            ui.label(RichText::new(format!("{} consumed", s.consumed)).weak());
            &s.http
        },
    );
}

/// One row per node of a role: those in the lab's config, then any other
/// that reported; `figures` draws a report's figures and returns its HTTP
/// address (shown after them when known).
fn node_rows<T>(
    ui: &mut Ui,
    title: &str,
    none: &str,
    configured: &[String],
    reports: &BTreeMap<String, (f64, T)>,
    now: f64,
    figures: impl for<'a> Fn(&mut Ui, &'a T) -> &'a String,
) {
    ui.label(RichText::new(title).strong());
    let mut names: Vec<&String> = configured.iter().collect();
    names.extend(reports.keys().filter(|n| !configured.contains(n)));
    if names.is_empty() {
        ui.label(RichText::new(none).weak());
    }
    for name in names {
        ui.horizontal_wrapped(|ui| {
            ui.label(RichText::new(name).monospace().strong());
            let Some((t, s)) = reports.get(name) else {
                ui.label(RichText::new("no telemetry").color(palette::RED));
                return;
            };
            if now - t > STALE_S {
                ui.label(RichText::new("silent (down?)").color(palette::RED));
            }
            let http = figures(ui, s);
            if !http.is_empty() {
                ui.label(RichText::new(http).weak());
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use distlab_node::envelope::{EnvelopeFactory, Topics};
    use egui_kittest::Harness;
    use egui_kittest::kittest::Queryable;
    use serde_json::json;

    use super::*;
    use crate::systems::maplog::{LogReport, MapSession};
    use crate::systems::time::TimeBase;

    fn feed(m: &mut MaplogModel, node: &str, service: &str, body: serde_json::Value) {
        let topics = Topics::new("lab");
        let mut e = EnvelopeFactory::new(node).make("telemetry", None, &body);
        e.sent_ms = 0;
        assert!(m.observe(&topics, &topics.telemetry(node, service), &e));
    }

    fn model(ready: bool) -> MaplogModel {
        let mut m = MaplogModel::new(TimeBase::at(0));
        let members = ["logger-1", "logger-2", "logger-3"];
        let owners: Vec<usize> = (0..271).map(|p| p % 3).collect();
        let backups: Vec<Vec<usize>> = (0..271).map(|p| vec![(p + 1) % 3]).collect();
        for (i, name) in members.iter().enumerate() {
            feed(
                &mut m,
                name,
                "maplog",
                json!({
                    "epoch": 7, "master": "logger-1", "members": members,
                    "partitions": 271, "backup_count": 1,
                    "owners": owners, "backups": backups,
                    "ready": ready || i > 0,
                    "owned_partitions": 90 + i, "owned_entries": 340 + i, "backup_entries": 331,
                    "puts": 1234, "gets": 567,
                    "migrations_in_flight": if ready || i > 0 { 0 } else { 4 }, "migrations_done": 12,
                    "http": format!("127.0.0.1:700{}", i + 1),
                }),
            );
        }
        feed(
            &mut m,
            "facade",
            "facade",
            json!({"http": "127.0.0.1:8085", "logged": 100, "failed": 0}),
        );
        feed(
            &mut m,
            "messages-1",
            "messages",
            json!({"http": "127.0.0.1:5001", "held": 48, "consumed": 48}),
        );
        // A field missing altogether.
        feed(&mut m, "messages-2", "messages", json!({"consumed": 3}));
        m
    }

    type State = (
        MaplogModel,
        MapSession,
        MapSettings,
        Vec<ClusterAction>,
        Vec<LinkCommand>,
    );

    fn harness(model: MaplogModel, session: MapSession) -> Harness<'static, State> {
        let loggers: Vec<String> = ["logger-1", "logger-2", "logger-3"]
            .map(String::from)
            .to_vec();
        let facades = vec!["facade".to_owned()];
        let messages = vec!["messages-1".to_owned(), "messages-2".to_owned()];
        let mut h = Harness::new_ui_state(
            move |ui, (model, session, settings, actions, commands): &mut State| {
                let nodes = LabView {
                    loggers: &loggers,
                    facades: &facades,
                    messages: &messages,
                    facade_http: None,
                };
                let (a, c) = show(ui, model, session, settings, &nodes, 0.5);
                actions.extend(a);
                commands.extend(c);
            },
            (
                model,
                session,
                MapSettings::default(),
                Vec::new(),
                Vec::new(),
            ),
        );
        h.set_size(egui::vec2(1500.0, 900.0));
        h.run();
        h
    }

    #[test]
    fn shows_the_table_the_members_and_the_others() {
        let h = harness(model(true), MapSession::new("t"));
        h.get_by_label("Epoch 7");
        h.get_by_label("Partition table (271 partitions)");
        h.get_by_label("stable: every member is in this view and synced");
        // Legend: partitions counted from the table, entries as reported.
        h.get_by_label("91 partitions · 340 entries");
        h.get_by_label("90 partitions · 341 entries");
        h.get_by_label("100 logged");
        h.get_by_label("48 held");
        h.get_by_label("0 held");
        h.get_by_label("Log 100 messages");
    }

    #[test]
    fn a_syncing_member_means_migrating() {
        let h = harness(model(false), MapSession::new("t"));
        h.get_by_label("migrating: 4 partitions in flight; syncing: logger-1");
        h.get_by_label("syncing");
    }

    #[test]
    fn the_check_is_shown_in_words() {
        let mut session = MapSession::new("t");
        let batch = session.next_batch(3);
        session.logged(LogReport {
            sent: 3,
            thanks: batch.clone(),
            ..Default::default()
        });
        let upto = session.start_read();
        session.read_back(upto, Ok(batch[0].as_str()));
        let h = harness(model(true), session);
        h.get_by_label("2 of 3 acknowledged messages missing: app-t-2, app-t-3");
        h.get_by_label("3 acknowledged");
    }

    #[test]
    fn buttons_log_read_and_kill() {
        let mut h = harness(model(true), MapSession::new("t"));
        h.get_by_label("Log 100 messages").click();
        h.run();
        h.get_by_label("Read all back and check").click();
        h.run();
        h.get_by_label("Kill two loggers").click();
        h.run();
        let (_, session, _, actions, commands) = h.state();
        let facade: SocketAddr = "127.0.0.1:8085".parse().unwrap();
        assert!(
            matches!(&commands[0], LinkCommand::MapLog { addr, messages }
                if *addr == facade && messages.len() == 100 && messages[0] == "app-t-1" && messages[99] == "app-t-100"),
            "{commands:?}"
        );
        assert!(
            matches!(&commands[1], LinkCommand::MapRead { addr, expected: 0 } if *addr == facade),
            "{commands:?}"
        );
        assert!(session.logging && session.reading);
        assert_eq!(actions.len(), 2, "{actions:?}");
        let mut killed: Vec<&str> = actions
            .iter()
            .map(|a| match a {
                ClusterAction::Command(node, NodeCommand::Kill) => node.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        killed.sort_unstable();
        killed.dedup();
        assert_eq!(killed.len(), 2);
    }

    #[test]
    fn without_loggers_it_says_what_to_add() {
        let h = Harness::new_ui(|ui| {
            let model = MaplogModel::new(TimeBase::at(0));
            let mut session = MapSession::new("t");
            let nodes = LabView {
                loggers: &[],
                facades: &[],
                messages: &[],
                facade_http: None,
            };
            show(
                ui,
                &model,
                &mut session,
                &mut MapSettings::default(),
                &nodes,
                0.0,
            );
        });
        h.get_by_label_contains("No map log in this lab");
    }
}
