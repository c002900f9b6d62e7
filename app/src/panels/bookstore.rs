//! Bookstore panel: the live checks, stock per book, the frontend's
//! requests/s and latency per operation, the catalog and order replicas,
//! buttons that call the frontend's API, and a load client to start and stop.

use distlab_node::services::bookstore::load::{LoadReport, Op, TOPICS};
use distlab_node::services::bookstore::model::Book;
use egui::{Color32, RichText, Ui};
use egui_plot::{
    Bar, BarChart, Corner, GridInput, GridMark, Legend, Line, LineStyle, Plot, PlotPoint,
    PlotPoints, Text,
};
use serde::{Deserialize, Serialize};

use crate::link::LinkCommand;
use crate::outcome::Outcome;
use crate::palette::{self, AMBER, BLUE, GREEN, GREY, RED};
use crate::systems::bookstore::{
    BookstoreModel, Check, FrontendView, LoadView, OPS, OpSample, Verdict,
};
use crate::systems::time::STALE_S;

/// What the panel remembers between runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BookstoreSettings {
    pub topic: String,
    pub lookup_id: u32,
    pub buy_id: u32,
    pub clients: usize,
    pub rounds: usize,
    /// Visible time window of the plots, s.
    pub window_s: f64,
}

impl Default for BookstoreSettings {
    fn default() -> Self {
        Self {
            topic: TOPICS[0].to_owned(),
            lookup_id: 1,
            buy_id: 1,
            clients: 8,
            rounds: 200,
            window_s: 60.0,
        }
    }
}

/// What the person asked for.
#[derive(Debug)]
pub enum BookstoreAction {
    Link(LinkCommand),
    StartLoad {
        addr: std::net::SocketAddr,
        clients: usize,
        rounds: usize,
    },
    StopLoad,
}

const WINDOWS: [(f64, &str); 4] = [
    (30.0, "30 s"),
    (60.0, "1 min"),
    (300.0, "5 min"),
    (600.0, "10 min"),
];

const PLOT_HEIGHT: f32 = 200.0;

#[allow(clippy::too_many_arguments)]
pub fn show(
    ui: &mut Ui,
    model: &BookstoreModel,
    settings: &mut BookstoreSettings,
    servers: &[String],
    load: &LoadView,
    outcome: Option<&Outcome>,
    now: f64,
) -> Vec<BookstoreAction> {
    let mut actions = Vec::new();
    if servers.is_empty() && model.beats.is_empty() && model.frontends.is_empty() {
        ui.label(
            "No bookstore in this lab. Add `frontend`, `catalog` and `order` nodes (config/lab.toml has them).",
        );
        return actions;
    }
    egui::ScrollArea::vertical()
        .id_salt("bookstore-scroll")
        .auto_shrink([false, false])
        .show(ui, |ui| {
            ui.columns(2, |cols| {
                checks(&mut cols[0], &model.checks(now));
                controls(&mut cols[1], model, settings, load, now, &mut actions);
            });
            ui.add_space(6.0);
            ui.columns(2, |cols| {
                stock(&mut cols[0], &model.books(now));
                replicas(&mut cols[1], model, servers, now);
            });
            ui.add_space(6.0);
            let frontend = model.frontend().map(|(_, f)| f);
            ui.horizontal(|ui| {
                ui.label(RichText::new("Frontend").strong());
                window_picker(ui, settings);
                if let Some(f) = frontend {
                    ui.separator();
                    cache_line(ui, f, now);
                }
            });
            ui.columns(2, |cols| {
                rate_plot(&mut cols[0], frontend, settings.window_s, now);
                latency_plot(&mut cols[1], frontend, settings.window_s, now);
            });
            ui.add_space(6.0);
            ui.columns(2, |cols| {
                load_figures(&mut cols[0], load);
                reply(&mut cols[1], outcome);
            });
        });
    actions
}

fn verdict_style(v: Verdict) -> (Color32, &'static str) {
    match v {
        Verdict::Pass => (GREEN, "ok"),
        Verdict::Settling => (AMBER, "settling"),
        Verdict::Fail => (RED, "FAILED"),
        Verdict::Waiting => (GREY, "waiting"),
    }
}

fn checks(ui: &mut Ui, checks: &[Check]) {
    ui.label(RichText::new("Live checks").strong());
    egui::Grid::new("bookstore-checks")
        .num_columns(4)
        .spacing([8.0, 4.0])
        .show(ui, |ui| {
            for c in checks {
                let (color, word) = verdict_style(c.verdict);
                super::dot(ui, color);
                ui.label(c.name);
                ui.label(RichText::new(word).color(color).strong());
                ui.label(RichText::new(&c.detail).weak());
                ui.end_row();
            }
        });
}

fn controls(
    ui: &mut Ui,
    model: &BookstoreModel,
    settings: &mut BookstoreSettings,
    load: &LoadView,
    now: f64,
    actions: &mut Vec<BookstoreAction>,
) {
    let addr = model.addr();
    ui.horizontal(|ui| {
        ui.label(RichText::new("Requests").strong());
        match &addr {
            Some(a) => ui.label(RichText::new(format!("to http://{a}")).weak()),
            None => ui.label(RichText::new("frontend address not known yet").color(AMBER)),
        };
        if let Some((node, f)) = model.frontend()
            && now - f.at > STALE_S
        {
            ui.label(RichText::new(format!("{node} silent")).color(RED));
        }
    });
    let mut topics: Vec<String> = model.books(now).into_iter().map(|b| b.topic).collect();
    topics.extend(TOPICS.iter().map(|t| (*t).to_owned()));
    topics.sort();
    topics.dedup();
    let mut get = |path: String| {
        if let Some(addr) = &addr {
            actions.push(BookstoreAction::Link(LinkCommand::BookstoreGet {
                addr: *addr,
                path,
            }));
        }
    };
    ui.add_enabled_ui(addr.is_some(), |ui| {
        ui.horizontal(|ui| {
            if ui.button("Search").clicked() {
                get(format!(
                    "/search?topic={}",
                    distlab_node::http1::query_value(&settings.topic)
                ));
            }
            let label = ui.label("topic");
            egui::ComboBox::from_id_salt("bookstore-topic")
                .selected_text(&settings.topic)
                .width(170.0)
                .show_ui(ui, |ui| {
                    for t in &topics {
                        ui.selectable_value(&mut settings.topic, t.clone(), t);
                    }
                })
                .response
                .labelled_by(label.id);
            ui.separator();
            if ui.button("Lookup").clicked() {
                get(format!("/lookup?id={}", settings.lookup_id));
            }
            ui.add(
                egui::DragValue::new(&mut settings.lookup_id)
                    .range(0..=99)
                    .prefix("id "),
            );
            ui.separator();
            if ui.button("Buy").clicked() {
                get(format!("/buy?id={}", settings.buy_id));
            }
            ui.add(
                egui::DragValue::new(&mut settings.buy_id)
                    .range(0..=99)
                    .prefix("id "),
            );
        });
    });
    ui.add_space(4.0);
    ui.horizontal(|ui| {
        ui.label(RichText::new("Load").strong());
        ui.add_enabled_ui(!load.active, |ui| {
            ui.add(
                egui::DragValue::new(&mut settings.clients)
                    .range(1..=256)
                    .suffix(" clients"),
            );
            ui.label("×");
            ui.add(
                egui::DragValue::new(&mut settings.rounds)
                    .range(1..=100_000)
                    .suffix(" rounds"),
            );
        });
        if load.active {
            if ui.button("Stop load").clicked() {
                actions.push(BookstoreAction::StopLoad);
            }
        } else if let Some(addr) = &addr
            && ui.button("Start load").clicked()
        {
            actions.push(BookstoreAction::StartLoad {
                addr: *addr,
                clients: settings.clients,
                rounds: settings.rounds,
            });
        }
    });
    if let Some(r) = &load.report {
        let total = (r.clients * r.rounds) as u64;
        let fraction = if total > 0 {
            r.rounds_done as f32 / total as f32
        } else {
            0.0
        };
        let state = if load.active {
            "running"
        } else if r.rounds_done < total {
            "stopped"
        } else {
            "finished"
        };
        ui.add(
            egui::ProgressBar::new(fraction)
                .desired_width(ui.available_width().min(420.0))
                .text(format!(
                    "{}/{} rounds in {:.1} s, {} failed — {state}",
                    r.rounds_done,
                    total,
                    r.elapsed_s,
                    r.failed()
                )),
        );
    }
}

/// Up to `max` characters of `title`, with "…" when cut.
fn short_title(title: &str, max: usize) -> String {
    let title = title.trim_end_matches('.');
    match title.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", title[..cut].trim_end()),
        None => title.to_owned(),
    }
}

fn stock(ui: &mut Ui, books: &[Book]) {
    ui.label(RichText::new("Stock per book (catalog leader)").strong());
    if books.is_empty() {
        ui.label(RichText::new("No catalog beat yet.").weak());
        return;
    }
    let bars: Vec<Bar> = books
        .iter()
        .map(|b| {
            Bar::new(f64::from(b.id), f64::from(b.count))
                .name(format!("#{} {}", b.id, b.title))
                .fill(BLUE)
                .width(0.7)
        })
        .collect();
    let labels: Vec<(u32, String)> = books.iter().map(|b| (b.id, format!("#{}", b.id))).collect();
    let ids: Vec<u32> = books.iter().map(|b| b.id).collect();
    let top = books.iter().map(|b| b.count).max().unwrap_or(0);
    let chart = BarChart::new("copies", bars)
        .color(BLUE)
        .element_formatter(Box::new(|bar, _| {
            format!("{}\n{} copies", bar.name, bar.value)
        }));
    Plot::new("bookstore-stock")
        .height(PLOT_HEIGHT)
        .y_axis_label("copies")
        .x_grid_spacer(move |_: GridInput| {
            ids.iter()
                .map(|id| GridMark {
                    value: f64::from(*id),
                    step_size: 1.0,
                })
                .collect()
        })
        .x_axis_formatter(move |mark, _| {
            labels
                .iter()
                .find(|(id, _)| f64::from(*id) == mark.value)
                .map(|(_, l)| l.clone())
                .unwrap_or_default()
        })
        .allow_drag(false)
        .allow_zoom(false)
        .allow_scroll(false)
        .allow_boxed_zoom(false)
        .show(ui, |plot| {
            let (lo, hi) = (
                books.iter().map(|b| b.id).min().unwrap_or(1),
                books.iter().map(|b| b.id).max().unwrap_or(1),
            );
            plot.set_plot_bounds_x(f64::from(lo) - 0.6..=f64::from(hi) + 0.6);
            // Room above the tallest bar for its count, and a labelled tick.
            plot.set_plot_bounds_y(0.0..=(f64::from(top) * 1.25).max(12.0));
            plot.bar_chart(chart);
            for b in books {
                plot.text(
                    Text::new(
                        format!("count {}", b.id),
                        PlotPoint::new(f64::from(b.id), f64::from(b.count)),
                        RichText::new(b.count.to_string()).small(),
                    )
                    .anchor(egui::Align2::CENTER_BOTTOM),
                );
            }
        });
    // The key: the axis has room for ids only.
    ui.horizontal_wrapped(|ui| {
        ui.spacing_mut().item_spacing.x = 14.0;
        for b in books {
            ui.label(RichText::new(format!("#{} {}", b.id, short_title(&b.title, 22))).small())
                .on_hover_text(format!("{} ({}, ${})", b.title, b.topic, b.cost));
        }
    });
}

fn state_color(state: &str) -> Color32 {
    match state {
        "leader" => GREEN,
        "follower" => BLUE,
        _ => AMBER,
    }
}

fn replicas(ui: &mut Ui, model: &BookstoreModel, servers: &[String], now: f64) {
    ui.label(RichText::new("Catalog and order replicas").strong());
    let mut names: Vec<String> = servers.to_vec();
    for n in model.beats.keys() {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let seen_by_frontend = model
        .frontend()
        .map(|(_, f)| f.stats.replicas.clone())
        .unwrap_or_default();
    egui::Grid::new("bookstore-replicas")
        .striped(true)
        .num_columns(9)
        .spacing([12.0, 4.0])
        .show(ui, |ui| {
            for h in [
                "node",
                "service",
                "state",
                "frontend sees",
                "term",
                "commit",
                "applied",
                "orders/sales",
                "requests",
                "failed",
            ] {
                ui.label(RichText::new(h).small().weak());
            }
            ui.end_row();
            for node in &names {
                ui.label(RichText::new(node).monospace().strong());
                let Some(s) = model.beats.get(node) else {
                    ui.label("");
                    ui.label(RichText::new("no beat yet").color(GREY));
                    ui.end_row();
                    continue;
                };
                let b = &s.beat;
                ui.label(&b.service);
                if s.fresh(now) {
                    let text = if b.serving || b.state == "leader" {
                        b.state.clone()
                    } else {
                        format!("{} (not serving)", b.state)
                    };
                    ui.label(RichText::new(text).color(state_color(&b.state)));
                } else {
                    ui.label(RichText::new(format!("silent {:.0} s", now - s.at)).color(RED));
                }
                match seen_by_frontend.iter().find(|p| &p.node == node) {
                    Some(p) if p.alive => {
                        ui.label(RichText::new(format!("{} ms ago", p.age_ms)).color(GREEN))
                    }
                    Some(p) => {
                        ui.label(RichText::new(format!("down ({} ms)", p.age_ms)).color(RED))
                    }
                    None => ui.label(RichText::new("—").weak()),
                };
                ui.label(b.term.to_string());
                ui.label(b.commit.to_string());
                ui.label(b.applied.to_string());
                let what = if b.service == "catalog" {
                    "sales"
                } else {
                    "orders"
                };
                ui.label(format!("{} {what}", b.digest.orders));
                ui.label(b.requests.to_string());
                let failed = RichText::new(b.failed.to_string());
                ui.label(if b.failed > 0 {
                    failed.color(AMBER)
                } else {
                    failed
                });
                ui.end_row();
            }
        });
}

fn window_picker(ui: &mut Ui, settings: &mut BookstoreSettings) {
    let current = WINDOWS
        .iter()
        .find(|(s, _)| *s == settings.window_s)
        .map(|(_, l)| *l)
        .unwrap_or("custom");
    let label = ui.label("plots show the");
    egui::ComboBox::from_id_salt("bookstore-window")
        .selected_text(format!("last {current}"))
        .show_ui(ui, |ui| {
            for (secs, label) in WINDOWS {
                ui.selectable_value(&mut settings.window_s, secs, label);
            }
        })
        .response
        .labelled_by(label.id);
}

fn cache_line(ui: &mut Ui, f: &FrontendView, now: f64) {
    let s = &f.stats;
    if s.cache_enabled {
        ui.label(format!(
            "cache hit ratio {:.0} % ({} entries)",
            s.cache_hit_ratio * 100.0,
            s.cache_entries
        ));
    } else {
        ui.label(RichText::new("cache off").weak());
    }
    ui.separator();
    let totals = [&s.search, &s.lookup, &s.buy]
        .iter()
        .zip(OPS)
        .map(|(o, name)| format!("{name} {} ok / {} failed", o.ok, o.failed))
        .collect::<Vec<_>>()
        .join(", ");
    ui.label(RichText::new(totals).weak());
    if now - f.at > STALE_S {
        ui.label(RichText::new("(no report for a while)").color(RED));
    }
}

/// The points of one operation's series inside the window, as seconds
/// from now; `value` picks the figure.
fn points(
    series: &std::collections::VecDeque<OpSample>,
    window_s: f64,
    now: f64,
    value: impl Fn(&OpSample) -> f64,
) -> Vec<[f64; 2]> {
    series
        .iter()
        .filter(|s| now - s.t <= window_s)
        .map(|s| [s.t - now, value(s)])
        .collect()
}

fn time_plot(id: &str, y_label: &str, window_s: f64) -> Plot<'static> {
    Plot::new(id.to_owned())
        .height(PLOT_HEIGHT)
        // The newest points are on the right: keep the legend off them.
        .legend(Legend::default().position(Corner::LeftTop))
        .x_axis_label("seconds from now")
        .y_axis_label(y_label.to_owned())
        .include_y(0.0)
        .allow_scroll(false)
        .allow_drag(false)
        .allow_zoom(false)
        .allow_boxed_zoom(false)
        .default_x_bounds(-window_s, 0.0)
}

fn rate_plot(ui: &mut Ui, frontend: Option<&FrontendView>, window_s: f64, now: f64) {
    let Some(f) = frontend else {
        ui.label(RichText::new("No frontend report yet.").weak());
        return;
    };
    time_plot("bookstore-rate", "requests/s", window_s).show(ui, |plot| {
        let top = f
            .ops
            .iter()
            .flat_map(|s| s.iter().filter(|x| now - x.t <= window_s))
            .map(|s| s.per_sec)
            .fold(0.0, f64::max);
        plot.set_plot_bounds_x(-window_s..=0.0);
        plot.set_plot_bounds_y(0.0..=(top * 1.15).max(5.0));
        for (i, name) in OPS.iter().enumerate() {
            let pts = points(&f.ops[i], window_s, now, |s| s.per_sec);
            // A round does one of each, so the lines lie on each other:
            // wider first, narrower on top, so all three show.
            let width = [4.5, 2.75, 1.25][i];
            plot.line(
                Line::new(*name, PlotPoints::from(pts))
                    .color(palette::series(i))
                    .width(width),
            );
        }
    });
}

/// Latency over the windows that had requests: an idle window has no
/// latency (not 0 ms), so the line breaks there.
fn latency_segments(
    series: &std::collections::VecDeque<OpSample>,
    window_s: f64,
    now: f64,
    value: impl Fn(&OpSample) -> f64,
) -> Vec<Vec<[f64; 2]>> {
    let mut out: Vec<Vec<[f64; 2]>> = Vec::new();
    let mut current = Vec::new();
    for s in series.iter().filter(|s| now - s.t <= window_s) {
        if s.per_sec > 0.0 {
            current.push([s.t - now, value(s)]);
        } else if !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn latency_plot(ui: &mut Ui, frontend: Option<&FrontendView>, window_s: f64, now: f64) {
    let Some(f) = frontend else {
        return;
    };
    time_plot("bookstore-latency", "latency (ms)", window_s).show(ui, |plot| {
        let top = f
            .ops
            .iter()
            .flat_map(|s| {
                s.iter()
                    .filter(|x| now - x.t <= window_s && x.per_sec > 0.0)
            })
            .map(|s| s.p99_ms)
            .fold(0.0, f64::max);
        plot.set_plot_bounds_x(-window_s..=0.0);
        plot.set_plot_bounds_y(0.0..=(top * 1.15).max(1.0));
        for (i, name) in OPS.iter().enumerate() {
            for (q, style) in [
                ("p50", LineStyle::Solid),
                ("p99", LineStyle::dashed_dense()),
            ] {
                let label = format!("{name} {q}");
                let value = |s: &OpSample| if q == "p50" { s.p50_ms } else { s.p99_ms };
                for (k, seg) in latency_segments(&f.ops[i], window_s, now, value)
                    .into_iter()
                    .enumerate()
                {
                    plot.line(
                        Line::new(label.clone(), PlotPoints::from(seg))
                            .id((label.as_str(), k))
                            .color(palette::series(i))
                            .style(style),
                    );
                }
            }
        }
    });
}

fn load_figures(ui: &mut Ui, load: &LoadView) {
    ui.label(RichText::new("Load client").strong());
    let Some(r) = &load.report else {
        ui.label(
            RichText::new(
                "Not run yet. Each client loops: search a topic, look up one of its books, buy it.",
            )
            .weak(),
        );
        return;
    };
    load_table(ui, r);
    for e in &r.errors {
        ui.label(RichText::new(e).color(AMBER).small());
    }
}

fn load_table(ui: &mut Ui, r: &LoadReport) {
    egui::Grid::new("bookstore-load")
        .striped(true)
        .num_columns(8)
        .spacing([12.0, 3.0])
        .show(ui, |ui| {
            for h in [
                "op", "ok", "failed", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms",
            ] {
                ui.label(RichText::new(h).small().weak());
            }
            ui.end_row();
            for op in Op::ALL {
                let s = r.op(op);
                ui.label(op.name());
                ui.label(s.ok.to_string());
                let failed = RichText::new(s.failed.to_string());
                ui.label(if s.failed > 0 {
                    failed.color(AMBER)
                } else {
                    failed
                });
                ui.label(format!("{:.0}", s.per_sec));
                for v in [s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms] {
                    ui.label(format!("{v:.2}"));
                }
                ui.end_row();
            }
        });
}

fn reply(ui: &mut Ui, outcome: Option<&Outcome>) {
    let Some((title, Outcome::BookstoreGet { result, .. })) =
        outcome.and_then(|o| Some((o.http_title()?, o)))
    else {
        ui.label(RichText::new("Last reply").strong());
        ui.label(RichText::new("Press Search, Lookup or Buy to call the frontend.").weak());
        return;
    };
    let (color, text) = match result {
        Ok(reply) => match &reply.body {
            serde_json::Value::String(s) => (GREEN, s.clone()),
            v => (GREEN, readable_json(v)),
        },
        Err(e) => (AMBER, e.to_string()),
    };
    let label = ui.label(
        RichText::new(format!("Last reply: {title}"))
            .strong()
            .color(color),
    );
    // Read-only text keeps the JSON's indentation and can be copied.
    egui::ScrollArea::vertical()
        .id_salt("bookstore-reply")
        .min_scrolled_height(160.0)
        .max_height(260.0)
        .show(ui, |ui| {
            ui.add(
                egui::TextEdit::multiline(&mut text.as_str())
                    .font(egui::TextStyle::Monospace)
                    .desired_width(f32::INFINITY)
                    .desired_rows(1),
            )
            .labelled_by(label.id);
        });
}

/// JSON for people: one line per key of an object and per element of an
/// array in it; anything deeper on one line.
fn readable_json(v: &serde_json::Value) -> String {
    use serde_json::Value;
    let Value::Object(map) = v else {
        return v.to_string();
    };
    let mut lines = vec!["{".to_owned()];
    let n = map.len();
    for (i, (k, v)) in map.iter().enumerate() {
        let comma = if i + 1 < n { "," } else { "" };
        match v {
            Value::Array(items) if !items.is_empty() => {
                lines.push(format!("  {}: [", Value::String(k.clone())));
                for (j, item) in items.iter().enumerate() {
                    let c = if j + 1 < items.len() { "," } else { "" };
                    lines.push(format!("    {item}{c}"));
                }
                lines.push(format!("  ]{comma}"));
            }
            _ => lines.push(format!("  {}: {v}{comma}", Value::String(k.clone()))),
        }
    }
    lines.push("}".to_owned());
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use egui_kittest::Harness;
    use egui_kittest::kittest::Queryable;

    use super::*;
    use crate::outcome::{HttpReply, LinkError};
    use crate::systems::bookstore::tests::healthy;

    type State = (
        BookstoreModel,
        BookstoreSettings,
        Vec<BookstoreAction>,
        Option<Outcome>,
    );

    fn harness(outcome: Option<Outcome>) -> Harness<'static, State> {
        let servers: Vec<String> = ["catalog-a", "catalog-b", "order-a", "order-b"]
            .map(String::from)
            .to_vec();
        let load = LoadView::default();
        let mut h = Harness::new_ui_state(
            move |ui, (model, settings, out, outcome): &mut State| {
                out.extend(show(
                    ui,
                    model,
                    settings,
                    &servers,
                    &load,
                    outcome.as_ref(),
                    3.1,
                ));
            },
            (healthy(), BookstoreSettings::default(), Vec::new(), outcome),
        );
        h.set_size(egui::vec2(1280.0, 1100.0));
        h.run();
        h
    }

    #[test]
    fn shows_checks_replicas_and_stock() {
        let h = harness(None);
        h.get_by_label("Every order has its sale");
        h.get_by_label("5 orders = 5 sales");
        assert!(h.query_all_by_label("ok").count() >= 4);
        h.get_by_label("to http://127.0.0.1:8083");
        h.get_by_label("catalog-b");
        assert_eq!(h.query_all_by_label("leader").count(), 2);
        assert_eq!(h.query_all_by_label("5 sales").count(), 2);
        assert_eq!(h.query_all_by_label("120 ms ago").count(), 1);
        h.get_by_label("cache hit ratio 75 % (9 entries)");
        h.get_by_label("#2 RPCs for Dummies");
    }

    #[test]
    fn buttons_call_the_frontend_and_start_load() {
        let mut h = harness(None);
        h.get_by_label("Search").click();
        h.run();
        h.get_by_label("Buy").click();
        h.run();
        h.get_by_label("Start load").click();
        h.run();
        let out = &h.state().2;
        let paths: Vec<&str> = out
            .iter()
            .filter_map(|a| match a {
                BookstoreAction::Link(LinkCommand::BookstoreGet { addr, path }) => {
                    assert_eq!(addr.to_string(), "127.0.0.1:8083");
                    Some(path.as_str())
                }
                _ => None,
            })
            .collect();
        assert_eq!(paths, ["/search?topic=distributed%20systems", "/buy?id=1"]);
        assert!(
            out.iter().any(|a| matches!(
                a,
                BookstoreAction::StartLoad {
                    clients: 8,
                    rounds: 200,
                    ..
                }
            )),
            "{out:?}"
        );
    }

    #[test]
    fn the_last_reply_is_shown() {
        let h = harness(Some(Outcome::BookstoreGet {
            path: "/buy?id=1".into(),
            result: Ok(HttpReply {
                status: 200,
                body: serde_json::json!({"status": "Success"}),
            }),
        }));
        h.get_by_label("Last reply: GET /buy?id=1: HTTP 200");
        let shown = |h: &Harness<'_, State>, text: &str| h.query_all_by_value(text).count() > 0;
        assert!(shown(&h, "{\n  \"status\": \"Success\"\n}"));

        let h = harness(Some(Outcome::BookstoreGet {
            path: "/lookup?id=99".into(),
            result: Err(LinkError::HttpStatus {
                status: 404,
                body: serde_json::json!({"error": "no book 99"}),
            }),
        }));
        h.get_by_label("Last reply: GET /lookup?id=99: HTTP 404");
        assert!(shown(&h, r#"{"error":"no book 99"}"#));

        // Another panel's answer leaves the hint in place.
        let h = harness(Some(Outcome::ForgedToken(Err(LinkError::NoBroker))));
        h.get_by_label("Press Search, Lookup or Buy to call the frontend.");
    }

    #[test]
    fn replies_read_one_item_per_line() {
        let v = serde_json::json!({"item": [{"id": 1}, {"id": 2}], "status": "Success"});
        assert_eq!(
            readable_json(&v),
            "{\n  \"item\": [\n    {\"id\":1},\n    {\"id\":2}\n  ],\n  \"status\": \"Success\"\n}"
        );
        assert_eq!(readable_json(&serde_json::json!(3)), "3");
        // Still JSON.
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&readable_json(&v)).unwrap(),
            v
        );
    }

    #[test]
    fn titles_are_shortened() {
        assert_eq!(short_title("RPCs for Dummies.", 10), "RPCs for D…");
        assert_eq!(short_title("RPCs for Dummies.", 22), "RPCs for Dummies");
        assert_eq!(short_title("Short.", 10), "Short");
    }
}
