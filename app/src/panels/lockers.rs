//! Lockers panel: both raft groups (users, lockers), the locker grid (free
//! or taken, by whom, since when), the users and their lockers, the depth
//! of the two request queues on the MOM, allocations per second and the
//! wait percentiles, a live check, buttons for one user, and a rush of
//! simulated users racing for the lockers.

use distlab_node::services::lockers::model::{
    Done, FREE_QUEUE, LockerId, Op, RequestState, TAKE_QUEUE,
};
use distlab_node::services::lockers::wire::{UsersReply, UsersRequest};
use distlab_node::services::mom::model::Kind;
use egui::{Color32, RichText, Ui};
use serde::{Deserialize, Serialize};

use crate::link::LinkCommand;
use crate::outcome::Outcome;
use crate::palette;
use crate::systems::lockers::{Check, LockersModel};
use crate::systems::mom::MomModel;

/// What the panel remembers between runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LockerSettings {
    pub name: String,
    pub rush_users: usize,
    pub rush_rounds: usize,
}

impl Default for LockerSettings {
    fn default() -> Self {
        Self {
            name: "ann".into(),
            rush_users: 40,
            rush_rounds: 10,
        }
    }
}

const FREE: Color32 = Color32::from_rgb(0x1f, 0x4d, 0x2b);
const TAKEN: Color32 = Color32::from_rgb(0x6b, 0x24, 0x24);

/// The groups' nodes as the lab names them, and whether a rush runs.
pub struct LabView<'a> {
    pub users: &'a [String],
    pub lockers: &'a [String],
    pub rushing: bool,
}

pub fn show(
    ui: &mut Ui,
    model: &LockersModel,
    mom: &MomModel,
    settings: &mut LockerSettings,
    nodes: &LabView<'_>,
    outcome: Option<&Outcome>,
    now: f64,
) -> Vec<LinkCommand> {
    let mut commands = Vec::new();
    if nodes.users.is_empty() && model.users.is_empty() {
        ui.label(
            "No lockers in this lab. Add `users` and `lockers` nodes (config/lab.toml has users-a/b/c and lockers-a/b/c).",
        );
        return commands;
    }
    figures(ui, model, mom);
    check(ui, model);
    ui.add_space(4.0);
    ui.columns(2, |cols| {
        cols[0].label(RichText::new("Users group").strong()).on_hover_text(
            "Users, each with at most one locker; a take or free is accepted once a majority holds it and answered when the lockers' reply comes back through the MOM.",
        );
        super::raft_grid(&mut cols[0], "users-raft", &members(nodes.users, &model.users, |s| &s.raft), now);
        cols[1].label(RichText::new("Lockers group").strong()).on_hover_text(
            "The lockers; its leader consumes get_locker_id and free_locker_id, commits each answer, publishes it on locker_replies, then acks.",
        );
        super::raft_grid(&mut cols[1], "lockers-raft", &members(nodes.lockers, &model.lockers, |s| &s.raft), now);
    });
    ui.add_space(6.0);
    ui.separator();
    controls(ui, model, settings, nodes, outcome, &mut commands);
    ui.separator();
    ui.columns(2, |cols| {
        grid(&mut cols[0], model, now);
        users(&mut cols[1], model);
    });
    commands
}

fn members<T>(
    names: &[String],
    seen: &std::collections::BTreeMap<String, (f64, T)>,
    raft: impl Fn(&T) -> &distlab_node::replica::GroupStatus,
) -> Vec<(String, Option<(f64, distlab_node::replica::GroupStatus)>)> {
    let mut all: Vec<String> = names.to_vec();
    all.extend(seen.keys().filter(|n| !names.contains(n)).cloned());
    all.into_iter()
        .map(|n| {
            let status = seen.get(&n).map(|(t, s)| (*t, raft(s).clone()));
            (n, status)
        })
        .collect()
}

/// Depth (ready + unacked) of a MOM queue, as the MOM leader reports it.
fn depth(mom: &MomModel, queue: &str) -> Option<u64> {
    mom.channels()
        .into_iter()
        .find(|c| c.kind == Kind::Queue && c.name == queue)
        .map(|c| c.ready + c.unacked)
}

fn figures(ui: &mut Ui, model: &LockersModel, mom: &MomModel) {
    ui.horizontal_wrapped(|ui| {
        let leader = model.users_leader();
        ui.label(RichText::new(format!("{:.0} allocations/s", model.allocations_per_s())).strong())
            .on_hover_text("Takes granted a locker per second, on the users leader.");
        ui.separator();
        match leader {
            Some((_, s)) => {
                ui.label(format!("wait p50 {} ms  p99 {} ms", s.p50_ms, s.p99_ms))
                    .on_hover_text("Accepted to answered (the lockers' reply applied), the last 5 s, on the users leader.");
                ui.separator();
                ui.label(format!("{} waiting for the lockers", s.waiting));
                ui.separator();
                let (color, text) = if s.mom.up {
                    (palette::GREEN, format!("MOM link up ({})", s.mom.target))
                } else {
                    let why = s.mom.error.clone().unwrap_or_else(|| "not used yet".into());
                    (palette::AMBER, format!("MOM link: {why}"))
                };
                ui.label(RichText::new(text).color(color));
            }
            None => {
                ui.label(RichText::new("no users leader reports").color(palette::AMBER));
            }
        }
        ui.separator();
        for queue in [TAKE_QUEUE, FREE_QUEUE] {
            let d = depth(mom, queue).map_or_else(|| "—".to_owned(), |d| d.to_string());
            ui.label(format!("{queue}: {d}"))
                .on_hover_text("Messages in the MOM queue (ready + unacked).");
        }
    });
}

fn check(ui: &mut Ui, model: &LockersModel) {
    let (color, text) = match model.check() {
        Check::Unknown => (
            palette::GREY,
            "Check: waiting for both leaders to report".to_owned(),
        ),
        Check::Ok => (
            palette::GREEN,
            "Check: no locker held twice; users and lockers agree".to_owned(),
        ),
        Check::Settling => (
            palette::BLUE,
            "Check: requests on their way (no locker held twice)".to_owned(),
        ),
        Check::Broken(why) => (palette::RED, format!("Check FAILED: {why}")),
    };
    ui.label(RichText::new(text).color(color).strong());
}

fn controls(
    ui: &mut Ui,
    model: &LockersModel,
    settings: &mut LockerSettings,
    nodes: &LabView<'_>,
    outcome: Option<&Outcome>,
    commands: &mut Vec<LinkCommand>,
) {
    let rushing = nodes.rushing;
    let target = model
        .users_leader()
        .map(|(n, _)| n.to_owned())
        .or_else(|| nodes.users.first().cloned());
    let Some(node) = target else { return };
    ui.horizontal(|ui| {
        let label = ui.label("User");
        ui.add(
            egui::TextEdit::singleline(&mut settings.name)
                .desired_width(160.0)
                .char_limit(64),
        )
        .labelled_by(label.id);
        let name = settings.name.clone();
        let mut send = |request| {
            commands.push(LinkCommand::Users {
                node: node.clone(),
                request,
            })
        };
        let named = !name.is_empty();
        if ui.add_enabled(named, egui::Button::new("Add")).clicked() {
            send(UsersRequest::Add { name: name.clone() });
        }
        if ui.add_enabled(named, egui::Button::new("Take a locker")).clicked() {
            send(UsersRequest::ask(Op::Take, name.clone(), None, 5000));
        }
        if ui.add_enabled(named, egui::Button::new("Free")).clicked() {
            send(UsersRequest::ask(Op::Free, name.clone(), None, 5000));
        }
        if ui.add_enabled(named, egui::Button::new("Look up")).clicked() {
            send(UsersRequest::User { name: name.clone() });
        }
        if ui.add_enabled(named, egui::Button::new("Delete")).clicked() {
            send(UsersRequest::Delete { name });
        }
        ui.separator();
        ui.add(egui::DragValue::new(&mut settings.rush_users).range(1..=500).suffix(" users"));
        ui.add(egui::DragValue::new(&mut settings.rush_rounds).range(1..=100).suffix(" rounds"));
        let rush = ui
            .add_enabled(!rushing, egui::Button::new(if rushing { "Rushing…" } else { "Rush" }))
            .on_hover_text("Simulated users race for the lockers: each takes, frees what it got, again and again. Kill a node meanwhile and watch the check.");
        if rush.clicked() {
            commands.push(LinkCommand::LockersRush {
                node: node.clone(),
                users: settings.rush_users,
                rounds: settings.rush_rounds,
            });
        }
    });
    match outcome {
        Some(o @ Outcome::Users { result, .. }) => {
            let (color, text) = match result {
                Ok(reply) => (palette::GREEN, describe(reply)),
                Err(e) => (palette::RED, e.to_string()),
            };
            ui.horizontal(|ui| {
                ui.label(RichText::new(o.title()).weak());
                ui.label(RichText::new(text).color(color));
            });
        }
        Some(o @ Outcome::Rush(r)) => {
            ui.horizontal(|ui| {
                ui.label(RichText::new(o.title()).weak());
                ui.label(format!(
                    "{} granted, {} told none is free, {} freed, {} failed in {:.1} s",
                    r.granted, r.none_free, r.freed, r.failed, r.secs
                ));
            });
        }
        _ => {}
    }
}

/// A reply in a sentence.
fn describe(reply: &UsersReply) -> String {
    match reply {
        UsersReply::User { user } => match (user.locker, &user.pending) {
            (Some(l), _) => format!("{} holds locker {l}", user.name),
            (None, Some(p)) => format!("{} waits for an answer ({:?})", user.name, p.op),
            (None, None) => format!("{} holds no locker", user.name),
        },
        UsersReply::Users { users } => format!("{} users", users.len()),
        UsersReply::Deleted { user: Some(u) } => match u.locker {
            Some(l) => format!("deleted {}; locker {l} is being freed", u.name),
            None => format!("deleted {}", u.name),
        },
        UsersReply::Deleted { user: None } => "no such user".to_owned(),
        UsersReply::Request { state } => match state {
            RequestState::Pending { request } => format!("on its way ({request})"),
            RequestState::Done { done, .. } => match done {
                Done::Granted { locker } => format!("granted locker {locker}"),
                Done::NoneFree => "no free locker".to_owned(),
                Done::Freed { locker: Some(l) } => format!("freed locker {l}"),
                Done::Freed { locker: None } => "held no locker".to_owned(),
            },
        },
    }
}

fn grid(ui: &mut Ui, model: &LockersModel, now: f64) {
    let lockers = model.grid();
    let held = lockers.iter().filter(|l| l.holder.is_some()).count();
    ui.label(RichText::new(format!("Lockers: {held} of {} taken", lockers.len())).strong());
    if lockers.is_empty() {
        ui.label(RichText::new("No lockers replica reports yet.").weak());
        return;
    }
    egui::ScrollArea::vertical()
        .id_salt("locker-grid")
        .max_height(ui.available_height().max(200.0))
        .show(ui, |ui| {
            egui::Grid::new("lockers-grid")
                .spacing([6.0, 6.0])
                .show(ui, |ui| {
                    for row in lockers.chunks(5) {
                        for l in row {
                            cell(
                                ui,
                                l.id,
                                l.holder.as_ref().map(|h| h.name.as_str()),
                                l.changed_ms,
                                model,
                                now,
                            );
                        }
                        ui.end_row();
                    }
                });
        });
}

fn cell(
    ui: &mut Ui,
    id: LockerId,
    holder: Option<&str>,
    changed_ms: u64,
    model: &LockersModel,
    now: f64,
) {
    let fill = if holder.is_some() { TAKEN } else { FREE };
    egui::Frame::new()
        .fill(fill)
        .corner_radius(4.0)
        .inner_margin(6.0)
        .show(ui, |ui| {
            ui.set_width(104.0);
            ui.vertical(|ui| {
                ui.label(
                    RichText::new(format!("#{id}"))
                        .strong()
                        .color(Color32::WHITE),
                );
                let who = holder.map_or_else(|| "free".to_owned(), |h| truncate(h, 14));
                ui.label(RichText::new(who).color(Color32::WHITE));
                let since = if changed_ms == 0 {
                    "never taken".to_owned()
                } else {
                    format!("{:.0} s ago", (now - model.seconds(changed_ms)).max(0.0))
                };
                ui.label(RichText::new(since).small().color(Color32::from_gray(200)));
            });
        })
        .response
        .on_hover_text(holder.unwrap_or("free"));
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n - 1).collect::<String>() + "…"
    }
}

fn users(ui: &mut Ui, model: &LockersModel) {
    let (list, total) = model.user_list();
    ui.label(RichText::new(format!("Users: {total}")).strong());
    if list.is_empty() {
        ui.label(RichText::new("No users yet: add one above.").weak());
        return;
    }
    egui::ScrollArea::vertical()
        .id_salt("users-list")
        .max_height(ui.available_height().max(200.0))
        .show(ui, |ui| {
            egui::Grid::new("lockers-users")
                .striped(true)
                .spacing([14.0, 2.0])
                .show(ui, |ui| {
                    for h in ["user", "locker", "waiting for"] {
                        ui.label(RichText::new(h).small().weak());
                    }
                    ui.end_row();
                    for u in &list {
                        ui.label(&u.name);
                        ui.label(u.locker.map_or_else(|| "—".to_owned(), |l| l.to_string()));
                        ui.label(u.pending.clone().unwrap_or_default());
                        ui.end_row();
                    }
                });
            if (list.len() as u64) < total {
                ui.label(RichText::new(format!("… and {} more", total - list.len() as u64)).weak());
            }
        });
}

#[cfg(test)]
mod tests {
    use distlab_node::envelope::{EnvelopeFactory, Topics};
    use distlab_node::replica::{GroupStatus, Role};
    use distlab_node::services::lockers::model::{Holder, Locker};
    use distlab_node::services::lockers::wire::{LockersStats, UserView, UsersStats};
    use egui_kittest::Harness;
    use egui_kittest::kittest::Queryable;

    use super::*;
    use crate::systems::time::TimeBase;

    fn model() -> LockersModel {
        let topics = Topics::new("lab");
        let mut m = LockersModel::new(TimeBase::at(0));
        let lead = GroupStatus {
            role: Role::Leader,
            term: 2,
            leader: Some("users-a".into()),
            ..Default::default()
        };
        let users = UsersStats {
            raft: lead.clone(),
            users: vec![
                UserView {
                    name: "ann".into(),
                    locker: Some(1),
                    pending: None,
                },
                UserView {
                    name: "bo".into(),
                    locker: None,
                    pending: None,
                },
            ],
            users_total: 2,
            p50_ms: 12,
            p99_ms: 31,
            ..Default::default()
        };
        let e = EnvelopeFactory::new("users-a").make("telemetry", None, &users);
        m.observe(&topics, &topics.telemetry("users-a", "users"), &e);
        let lockers = LockersStats {
            raft: GroupStatus {
                leader: Some("lockers-b".into()),
                ..lead
            },
            lockers: (1..=20)
                .map(|id| Locker {
                    id,
                    holder: (id == 1).then(|| Holder {
                        user: 1,
                        name: "ann".into(),
                    }),
                    changed_ms: 0,
                })
                .collect(),
            ..Default::default()
        };
        let e = EnvelopeFactory::new("lockers-b").make("telemetry", None, &lockers);
        m.observe(&topics, &topics.telemetry("lockers-b", "lockers"), &e);
        m
    }

    type State = (LockersModel, MomModel, LockerSettings, Vec<LinkCommand>);

    fn harness() -> Harness<'static, State> {
        let users = vec!["users-a".to_owned()];
        let lockers = vec!["lockers-b".to_owned()];
        let mut h = Harness::new_ui_state(
            move |ui, (model, mom, settings, out): &mut State| {
                let nodes = LabView {
                    users: &users,
                    lockers: &lockers,
                    rushing: false,
                };
                out.extend(show(ui, model, mom, settings, &nodes, None, 0.5));
            },
            (
                model(),
                MomModel::new(TimeBase::at(0)),
                LockerSettings::default(),
                Vec::new(),
            ),
        );
        h.set_size(egui::vec2(1400.0, 900.0));
        h.run();
        h
    }

    #[test]
    fn shows_the_grid_the_users_and_the_check() {
        let h = harness();
        h.get_by_label("Lockers: 1 of 20 taken");
        h.get_by_label("#20");
        h.get_by_label("Users: 2");
        h.get_by_label("wait p50 12 ms  p99 31 ms");
        h.get_by_label("Check: no locker held twice; users and lockers agree");
    }

    #[test]
    fn buttons_send_requests_to_the_users_leader() {
        let mut h = harness();
        h.get_by_label("Take a locker").click();
        h.run();
        h.get_by_label("Rush").click();
        h.run();
        let out = &h.state().3;
        assert!(
            matches!(&out[0], LinkCommand::Users { node, request: UsersRequest::Take { name, .. } } if node == "users-a" && name == "ann"),
            "{out:?}"
        );
        assert!(
            matches!(
                &out[1],
                LinkCommand::LockersRush {
                    users: 40,
                    rounds: 10,
                    ..
                }
            ),
            "{out:?}"
        );
    }
}
