//! Scenarios panel: the scenarios on offer, the chosen one's timeline with
//! the step being done, Run and Stop, what the run told, and its verdict.

use distlab_node::scenario::run::Event;
use distlab_node::scenario::{Scenario, Step};
use egui::{Button, RichText, Ui};
use serde::{Deserialize, Serialize};

use crate::palette;
use crate::systems::scenarios::{Catalog, Feed, PastRun, Tally};

/// A saved run opened in the panel: its directory and operation tally.
pub type Opened = (std::path::PathBuf, Result<Tally, String>);

/// What the panel shows besides the scenarios.
pub struct Runs<'a> {
    pub past: &'a [PastRun],
    pub opened: Option<&'a Opened>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScenarioSettings {
    /// The chosen scenario's file name.
    pub selected: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScenarioAction {
    /// Run the scenario of this file name.
    Start(String),
    Stop,
    /// Show a saved run.
    Open(std::path::PathBuf),
    Close,
}

pub fn show(
    ui: &mut Ui,
    catalog: &Catalog,
    settings: &mut ScenarioSettings,
    feed: &Feed,
    runs: &Runs,
) -> Vec<ScenarioAction> {
    let mut out = Vec::new();
    if catalog.is_empty() {
        ui.label("No scenarios.");
        return out;
    }
    if !catalog.iter().any(|(f, _)| *f == settings.selected) {
        settings.selected = catalog[0].0.clone();
    }
    ui.horizontal_top(|ui| {
        ui.allocate_ui_with_layout(
            egui::vec2(340.0, ui.available_height()),
            egui::Layout::top_down(egui::Align::Min),
            |ui| {
                ui.set_width(340.0);
                list(ui, catalog, settings, feed);
                ui.add_space(10.0);
                past_list(ui, runs, &mut out);
            },
        );
        ui.separator();
        ui.vertical(|ui| {
            if let Some(opened) = runs.opened {
                opened_run(ui, runs.past, opened, &mut out);
                return;
            }
            let Some((file, chosen)) = catalog.iter().find(|(f, _)| *f == settings.selected) else {
                return;
            };
            match chosen {
                Ok(s) => detail(ui, file, s, feed, &mut out),
                Err(e) => {
                    ui.colored_label(palette::RED, format!("{file} cannot be used: {e}"));
                }
            }
        });
    });
    out
}

fn past_list(ui: &mut Ui, runs: &Runs, out: &mut Vec<ScenarioAction>) {
    ui.label(RichText::new("Past runs").strong());
    if runs.past.is_empty() {
        ui.label(RichText::new("None saved yet.").weak());
        return;
    }
    egui::ScrollArea::vertical()
        .id_salt("past-runs")
        .max_height(260.0)
        .auto_shrink([false, true])
        .show(ui, |ui| {
            for run in runs.past {
                let open = runs.opened.is_some_and(|(d, _)| *d == run.dir);
                let (verdict, color) = if run.passed {
                    ("passed", palette::GREEN)
                } else {
                    ("FAILED", palette::RED)
                };
                ui.horizontal(|ui| {
                    ui.label(RichText::new(verdict).color(color).monospace());
                    if ui
                        .add(egui::Button::selectable(open, &run.name).truncate())
                        .on_hover_text(run.dir.display().to_string())
                        .clicked()
                    {
                        out.push(ScenarioAction::Open(run.dir.clone()));
                    }
                });
            }
        });
}

fn opened_run(ui: &mut Ui, past: &[PastRun], opened: &Opened, out: &mut Vec<ScenarioAction>) {
    let (dir, tally) = opened;
    let Some(run) = past.iter().find(|r| r.dir == *dir) else {
        return;
    };
    ui.horizontal(|ui| {
        if ui.button("Back").clicked() {
            out.push(ScenarioAction::Close);
        }
        ui.label(RichText::new(&run.scenario).heading());
    });
    let (text, color) = if run.passed {
        ("PASSED", palette::GREEN)
    } else {
        ("FAILED", palette::RED)
    };
    ui.label(
        RichText::new(format!(
            "{text} · {} operations · {}",
            run.operations, run.name
        ))
        .color(color)
        .strong(),
    );
    for (check, ok, detail) in &run.checks {
        let c = if *ok { palette::GREEN } else { palette::RED };
        ui.label(
            RichText::new(format!(
                "check {check}: {}  {detail}",
                if *ok { "ok" } else { "FAIL" }
            ))
            .color(c)
            .monospace(),
        );
    }
    ui.add_space(6.0);
    ui.label(RichText::new("The history, by operation").strong());
    match tally {
        Err(e) => {
            ui.colored_label(palette::RED, e);
        }
        Ok(rows) => {
            egui::Grid::new("run-tally")
                .striped(true)
                .spacing([14.0, 3.0])
                .show(ui, |ui| {
                    for h in ["operation", "type", "count"] {
                        ui.label(RichText::new(h).weak());
                    }
                    ui.end_row();
                    for ((f, kind), n) in rows {
                        ui.label(RichText::new(f).monospace());
                        ui.label(kind);
                        ui.label(n.to_string());
                        ui.end_row();
                    }
                });
        }
    }
    ui.add_space(6.0);
    ui.label(
        RichText::new(format!(
            "Files: {} (history.jsonl, history.edn for Jepsen's checkers, report.json)",
            dir.display()
        ))
        .weak(),
    );
}

fn list(ui: &mut Ui, catalog: &Catalog, settings: &mut ScenarioSettings, feed: &Feed) {
    ui.label(RichText::new("Scenarios").strong());
    egui::ScrollArea::vertical()
        .id_salt("scenario-list")
        .auto_shrink([false, true])
        .show(ui, |ui| {
            for (file, s) in catalog {
                let title = match s {
                    Ok(s) => s.name.clone(),
                    Err(_) => format!("{file} (has mistakes)"),
                };
                let running = feed.running() && feed.file == *file;
                let text = if running {
                    RichText::new(format!("running · {title}")).color(palette::BLUE)
                } else {
                    RichText::new(title)
                };
                let selected = settings.selected == *file;
                if ui
                    .add(egui::Button::selectable(selected, text).wrap())
                    .on_hover_text(file)
                    .clicked()
                {
                    settings.selected = file.clone();
                }
            }
        });
}

fn detail(ui: &mut Ui, file: &str, s: &Scenario, feed: &Feed, out: &mut Vec<ScenarioAction>) {
    ui.label(RichText::new(&s.name).heading());
    if !s.about.is_empty() {
        ui.label(RichText::new(s.about.trim().replace('\n', " ")).weak());
    }
    let mine = feed.file == file;
    let running = feed.running();
    ui.horizontal(|ui| {
        let run = ui
            .add_enabled(!running, Button::new(RichText::new("Run").strong()))
            .on_hover_text("Runs it against this lab now: the faults are real");
        if run.clicked() {
            out.push(ScenarioAction::Start(file.to_owned()));
        }
        if ui
            .add_enabled(running && mine, Button::new("Stop"))
            .on_hover_text("Stops the run: loads stop, the network is healed")
            .clicked()
        {
            out.push(ScenarioAction::Stop);
        }
        ui.label(
            RichText::new(format!(
                "{} long · seed {} · {}",
                humantime::format_duration(s.length),
                s.seed,
                if s.nodes.is_empty() {
                    "every node".to_owned()
                } else {
                    format!("{} nodes", s.nodes.len())
                }
            ))
            .weak(),
        );
        if running
            && mine
            && let Some(t) = feed.elapsed()
        {
            ui.spinner();
            ui.label(format!(
                "running: {:.0} s of {}",
                t.as_secs_f64(),
                s.length.as_secs()
            ));
        }
    });
    if mine {
        verdict(ui, feed);
    }
    ui.add_space(6.0);
    ui.label(RichText::new("Timeline").strong());
    let current = (mine && running).then_some(feed.current).flatten();
    egui::Grid::new("scenario-steps")
        .striped(true)
        .spacing([14.0, 3.0])
        .show(ui, |ui| {
            for h in ["at", "repeat", "do", "undo"] {
                ui.label(RichText::new(h).weak());
            }
            ui.end_row();
            for step in &s.steps {
                step_row(ui, step, current == Some(step.line));
                ui.end_row();
            }
        });
    if !s.checks.is_empty() {
        let names: Vec<&str> = s.checks.iter().map(|c| c.as_str()).collect();
        ui.label(format!("Checks at the end: {}", names.join(", ")));
    }
    if mine && !feed.events.is_empty() {
        ui.add_space(6.0);
        ui.label(RichText::new("What the run told").strong());
        egui::ScrollArea::vertical()
            .id_salt("scenario-events")
            .max_height((ui.available_height() - 8.0).max(160.0))
            .stick_to_bottom(true)
            .auto_shrink([false, true])
            .show(ui, |ui| {
                for e in &feed.events {
                    let text = RichText::new(e.to_string()).monospace();
                    let text = match e {
                        Event::Failed { .. } => text.color(palette::RED),
                        Event::Check(c) if !c.ok => text.color(palette::RED),
                        Event::Check(_) => text.color(palette::GREEN),
                        _ => text,
                    };
                    ui.label(text);
                }
            });
    }
}

fn step_row(ui: &mut Ui, step: &Step, now: bool) {
    let fmt = |d: std::time::Duration| humantime::format_duration(d).to_string();
    let text = |t: String| {
        if now {
            RichText::new(t).color(palette::BLUE).strong()
        } else {
            RichText::new(t)
        }
    };
    ui.label(text(fmt(step.at)));
    ui.label(text(match (step.every, step.until) {
        (Some(e), Some(u)) => format!("every {} until {}", fmt(e), fmt(u)),
        (Some(e), None) => format!("every {}", fmt(e)),
        _ => String::new(),
    }));
    ui.label(text(step.action.to_string()));
    ui.label(text(
        step.undo_after
            .map(|u| format!("after {}", fmt(u)))
            .unwrap_or_default(),
    ));
}

fn verdict(ui: &mut Ui, feed: &Feed) {
    match &feed.outcome {
        None => {}
        Some(Err(e)) => {
            ui.colored_label(palette::RED, format!("Could not run: {e}"));
        }
        Some(Ok(report)) => {
            let (text, color) = if report.stopped {
                ("Stopped before the end".to_owned(), palette::AMBER)
            } else if report.passed() {
                (
                    "PASSED: every step done, every check held".to_owned(),
                    palette::GREEN,
                )
            } else {
                let bad = report.checks.iter().filter(|c| !c.ok).count();
                (
                    format!(
                        "FAILED: {bad} check(s) failed, {} step(s) could not be done",
                        report.failed_steps
                    ),
                    palette::RED,
                )
            };
            ui.label(RichText::new(text).color(color).strong());
        }
    }
}

#[cfg(test)]
mod tests {
    use distlab_node::scenario::run::{CheckResult, Report};
    use distlab_node::scenario::{Invariant, SHIPPED};
    use egui_kittest::Harness;
    use egui_kittest::kittest::Queryable;

    use super::*;

    fn catalog() -> Catalog {
        distlab_node::scenario::catalog(None)
    }

    type State = (Catalog, ScenarioSettings, Feed, Vec<ScenarioAction>);

    fn harness(feed: Feed) -> Harness<'static, State> {
        let mut h = Harness::new_ui_state(
            |ui, (catalog, settings, feed, out): &mut State| {
                let runs = Runs {
                    past: &[],
                    opened: None,
                };
                out.extend(show(ui, catalog, settings, feed, &runs));
            },
            (catalog(), ScenarioSettings::default(), feed, Vec::new()),
        );
        h.set_size(egui::vec2(1280.0, 800.0));
        h.run();
        h
    }

    #[test]
    fn lists_the_shipped_scenarios_and_runs_the_chosen_one() {
        let mut h = harness(Feed::default());
        assert_eq!(catalog().len(), SHIPPED.len());
        h.get_by_label("MOM: kill the leader every 8 s under load, nothing acknowledged lost")
            .click();
        h.run();
        h.get_by_label("Timeline");
        h.get_by_label("kill the mom leader");
        h.get_by_label("Run").click();
        h.run();
        assert_eq!(
            h.state().3,
            vec![ScenarioAction::Start("mom-kill-leader.toml".into())]
        );
    }

    #[test]
    fn a_saved_run_opens_with_its_checks_and_its_history_tally() {
        let dir = std::path::PathBuf::from("/runs/20261208T020000Z-mom");
        let past = vec![PastRun {
            dir: dir.clone(),
            name: "20261208T020000Z-mom".into(),
            scenario: "MOM: kill the leader".into(),
            passed: true,
            operations: 412,
            checks: vec![("mom-no-acked-lost".into(), true, "205 acknowledged".into())],
        }];
        let opened: Opened = (
            dir.clone(),
            Ok(vec![(("enqueue".into(), "ok".into()), 205)]),
        );
        let mut h = Harness::new_ui_state(
            move |ui, out: &mut Vec<ScenarioAction>| {
                let runs = Runs {
                    past: &past,
                    opened: Some(&opened),
                };
                out.extend(show(
                    ui,
                    &catalog(),
                    &mut ScenarioSettings::default(),
                    &Feed::default(),
                    &runs,
                ));
            },
            Vec::new(),
        );
        h.set_size(egui::vec2(1280.0, 800.0));
        h.run();
        h.get_by_label("PASSED · 412 operations · 20261208T020000Z-mom");
        h.get_by_label("check mom-no-acked-lost: ok  205 acknowledged");
        h.get_by_label("205");
        h.get_by_label("Back").click();
        h.run();
        assert_eq!(h.state(), &vec![ScenarioAction::Close]);
    }

    #[test]
    fn a_run_shows_its_steps_and_its_verdict() {
        let feed = Feed {
            file: "mom-kill-leader.toml".into(),
            events: vec![Event::Check(CheckResult {
                invariant: Invariant::MomNoAckedLost,
                ok: false,
                detail: "170 acknowledged, 169 consumed, 1 lost".into(),
            })],
            started: Some(std::time::Instant::now()),
            outcome: Some(Ok(Report {
                history: Default::default(),
                checks: vec![],
                failed_steps: 1,
                stopped: false,
            })),
            current: None,
        };
        let mut h = harness(feed);
        h.state_mut().1.selected = "mom-kill-leader.toml".into();
        h.run();
        h.get_by_label("FAILED: 0 check(s) failed, 1 step(s) could not be done");
        h.get_by_label("check mom-no-acked-lost      FAIL  170 acknowledged, 169 consumed, 1 lost");
    }
}
