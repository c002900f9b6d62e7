//! Queues panel (MOM): the raft group (role, term, commit, applied, how far
//! each follower is behind), the table of topics and queues (owner, subscribers, depth, rates),
//! a live depth plot of the selected one, and forms to create, publish and
//! consume by hand.

use distlab_node::services::mom::model::Kind;
use distlab_node::services::mom::service::{Reply, Request};
use egui::{Color32, RichText, Ui};
use egui_plot::{Legend, Line, Plot, PlotPoints};
use serde::{Deserialize, Serialize};

use crate::link::LinkCommand;
use crate::outcome::Outcome;
use crate::palette;
use crate::systems::mom::MomModel;
use crate::systems::time::STALE_S;

/// What the panel remembers between runs (never the key: it is a secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueSettings {
    #[serde(skip)]
    pub key: String,
    pub kind: Kind,
    pub name: String,
    pub message: String,
    pub wait_ms: u64,
    pub selected: Option<(Kind, String)>,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            key: String::new(),
            kind: Kind::Queue,
            name: "jobs".into(),
            message: "hello".into(),
            wait_ms: 0,
            selected: None,
        }
    }
}

const PRIMARY: Color32 = palette::GREEN;
const WAITING: Color32 = palette::AMBER;
const SILENT: Color32 = palette::RED;

pub fn show(
    ui: &mut Ui,
    model: &MomModel,
    settings: &mut QueueSettings,
    mom_nodes: &[String],
    outcome: Option<&Outcome>,
    now: f64,
) -> Vec<LinkCommand> {
    let mut commands = Vec::new();
    if mom_nodes.is_empty() && model.nodes.is_empty() {
        ui.label(
            "No MOM in this lab. Add `mom` nodes to the lab (config/lab.toml has mom-a, mom-b and mom-c).",
        );
        return commands;
    }
    replicas(ui, model, mom_nodes, now);
    gateways(ui, model, now);
    ui.add_space(6.0);
    let target = model
        .leader()
        .map(|(n, _)| n.to_owned())
        .or_else(|| mom_nodes.first().cloned());
    ui.columns(2, |cols| {
        table(&mut cols[0], model, settings);
        depth_plot(&mut cols[1], model, settings, now);
    });
    ui.add_space(6.0);
    ui.separator();
    if let Some(node) = target {
        forms(ui, settings, &node, outcome, &mut commands);
    }
    commands
}

/// Where clients connect: each gateway's address, whom it forwards to, and
/// how many requests it had to send again (failovers).
fn gateways(ui: &mut Ui, model: &MomModel, now: f64) {
    for (node, (t, g)) in &model.gateways {
        ui.horizontal(|ui| {
            ui.label(RichText::new("Clients connect to").weak());
            ui.label(RichText::new(format!("http://{}", g.http)).monospace().strong())
                .on_hover_text(
                    "The MOM's one address (the seed's API and /api/v1): the gateway forwards \
                     each request to whichever replica leads, so killing a replica never changes it.",
                );
            let silent = now - t > STALE_S;
            let (color, via) = match (&g.status.leader, silent) {
                (_, true) => (SILENT, format!("{node}: silent (down?)")),
                (Some(l), false) => (PRIMARY, format!("{node} forwards to {l} (term {})", g.status.term)),
                (None, false) => (WAITING, format!("{node}: waiting for a leader")),
            };
            ui.label(RichText::new(via).color(color));
            ui.label(
                RichText::new(format!("{} requests, {} sent again", g.requests, g.resent)).weak(),
            )
            .on_hover_text("Sent again: the node it went to died or was between leaders; the client saw no error.");
        });
    }
}

fn replicas(ui: &mut Ui, model: &MomModel, mom_nodes: &[String], now: f64) {
    let mut names: Vec<String> = mom_nodes.to_vec();
    for n in model.nodes.keys() {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    ui.label(RichText::new("Raft group").strong())
        .on_hover_text("A write is acknowledged once a majority (2 of 3) holds it. Kill the leader in the Cluster tab and watch another take over in a new term.");
    let members: Vec<_> = names
        .into_iter()
        .map(|n| {
            let status = model.nodes.get(&n).map(|(t, s)| (*t, s.raft.clone()));
            (n, status)
        })
        .collect();
    super::raft_grid(ui, "mom-raft", &members, now);
}

fn table(ui: &mut Ui, model: &MomModel, settings: &mut QueueSettings) {
    let channels = model.channels();
    ui.label(RichText::new("Topics and queues").strong());
    if channels.is_empty() {
        ui.label(RichText::new("None yet: create one below.").weak());
        return;
    }
    egui::Grid::new("mom-channels")
        .striped(true)
        .num_columns(8)
        .show(ui, |ui| {
            for h in [
                "kind", "name", "owner", "subs", "ready", "unacked", "pub/s", "out/s",
            ] {
                ui.label(RichText::new(h).small().weak());
            }
            ui.end_row();
            for c in channels {
                let key = (c.kind, c.name.clone());
                let rates = model.history.get(&key);
                ui.label(c.kind.as_str());
                let selected = settings.selected.as_ref() == Some(&key);
                if ui.selectable_label(selected, &c.name).clicked() {
                    settings.selected = Some(key.clone());
                    settings.kind = c.kind;
                    settings.name = c.name.clone();
                }
                ui.label(RichText::new(&c.owner).monospace().small());
                ui.label(c.subscribers.to_string());
                ui.label(RichText::new(c.ready.to_string()).strong());
                ui.label(c.unacked.to_string());
                ui.label(format!(
                    "{:.0}",
                    rates.map(|r| r.published.per_second()).unwrap_or(0.0)
                ));
                ui.label(format!(
                    "{:.0}",
                    rates.map(|r| r.delivered.per_second()).unwrap_or(0.0)
                ));
                ui.end_row();
            }
        });
}

fn depth_plot(ui: &mut Ui, model: &MomModel, settings: &QueueSettings, now: f64) {
    // The chosen one, else the deepest.
    let chosen = settings.selected.clone().or_else(|| {
        model
            .channels()
            .into_iter()
            .max_by_key(|c| (c.ready + c.unacked, c.kind == Kind::Queue))
            .map(|c| (c.kind, c.name))
    });
    let Some(key) = chosen else {
        return;
    };
    ui.label(RichText::new(format!("Depth of {} {} (messages)", key.0, key.1)).strong());
    let Some(h) = model.history.get(&key) else {
        return;
    };
    let ready: Vec<[f64; 2]> = h
        .depth
        .iter()
        .map(|(t, r, _)| [t - now, *r as f64])
        .collect();
    let unacked: Vec<[f64; 2]> = h
        .depth
        .iter()
        .map(|(t, _, u)| [t - now, *u as f64])
        .collect();
    Plot::new("mom-depth")
        .height(180.0)
        .legend(Legend::default())
        .x_axis_label("seconds from now")
        .y_axis_label("messages")
        .include_y(0.0)
        .include_x(-60.0)
        .include_x(0.0)
        .allow_scroll(false)
        .show(ui, |plot| {
            // Depth is never negative: the y axis starts at 0.
            let top = h
                .depth
                .iter()
                .map(|(_, r, u)| r.max(u))
                .max()
                .copied()
                .unwrap_or(0);
            plot.set_plot_bounds_y(0.0..=(top as f64 * 1.15).max(5.0));
            plot.line(Line::new("ready", PlotPoints::from(ready)).color(palette::series(0)));
            plot.line(Line::new("unacked", PlotPoints::from(unacked)).color(palette::series(1)));
        });
}

fn forms(
    ui: &mut Ui,
    settings: &mut QueueSettings,
    node: &str,
    outcome: Option<&Outcome>,
    commands: &mut Vec<LinkCommand>,
) {
    let mut send = |request: Request| {
        commands.push(LinkCommand::Mom {
            node: node.to_owned(),
            request,
        })
    };
    ui.horizontal(|ui| {
        let label = ui.label("Key");
        ui.add(
            egui::TextEdit::singleline(&mut settings.key)
                .desired_width(280.0)
                .password(true),
        )
        .labelled_by(label.id);

        if ui.button("New user").clicked() {
            send(Request::CreateUser);
        }
        ui.label(RichText::new(format!("requests go to {node}")).weak());
    });
    let key = settings.key.trim().to_owned();
    ui.horizontal(|ui| {
        let label = ui.label("Kind");
        egui::ComboBox::from_id_salt("mom-kind")
            .selected_text(settings.kind.as_str())
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut settings.kind, Kind::Queue, "queue");
                ui.selectable_value(&mut settings.kind, Kind::Topic, "topic");
            })
            .response
            .labelled_by(label.id);
        ui.add(
            egui::TextEdit::singleline(&mut settings.name)
                .desired_width(140.0)
                .hint_text("name"),
        );
        let (kind, name) = (settings.kind, settings.name.trim().to_owned());
        if ui.button("Create").clicked() {
            // The creator is subscribed at once, as in the seed: create,
            // publish, consume works without a separate subscribe.
            send(Request::Create {
                kind,
                name: name.clone(),
                key: key.clone(),
                subscribe: true,
            });
        }
        if ui.button("Subscribe").clicked() {
            send(Request::Subscribe {
                kind,
                name: name.clone(),
                key: key.clone(),
            });
        }
        if ui.button("Delete").clicked() {
            send(Request::Delete {
                kind,
                name: name.clone(),
                key: key.clone(),
            });
        }
        ui.separator();
        ui.add(
            egui::TextEdit::singleline(&mut settings.message)
                .desired_width(200.0)
                .hint_text("message"),
        );
        if ui.button("Publish").clicked() {
            send(Request::Publish {
                kind,
                name: name.clone(),
                key: key.clone(),
                message: settings.message.clone(),
                as_subscriber: false,
            });
        }
        ui.separator();
        ui.add(
            egui::DragValue::new(&mut settings.wait_ms)
                .range(0..=30_000)
                .suffix(" ms wait"),
        );
        if ui.button("Consume").clicked() {
            send(Request::Consume {
                kind,
                name: name.clone(),
                key: key.clone(),
                wait_ms: settings.wait_ms,
            });
        }
        // Ack the message the last consume returned.
        let last = match outcome {
            Some(Outcome::Mom {
                result:
                    Ok(Reply::Delivery {
                        delivery: Some(d), ..
                    }),
                ..
            }) => Some(d.id),
            _ => None,
        };
        if let Some(id) = last
            && ui.button(format!("Ack {id}")).clicked()
        {
            send(Request::Ack {
                key: key.clone(),
                id,
            });
        }
    });
    if let Some(Outcome::Mom { ask, result }) = outcome {
        let (color, text) = match result {
            // As JSON, the form the MOM's API answers in.
            Ok(reply) => (
                PRIMARY,
                format!(
                    "{ask}: {}",
                    serde_json::to_value(reply).map_or_else(|e| e.to_string(), |v| v.to_string())
                ),
            ),
            Err(e) => (WAITING, format!("{ask}: {e}")),
        };
        ui.label(RichText::new(text).color(color).monospace());
    }
}

#[cfg(test)]
mod tests {
    use distlab_node::envelope::{EnvelopeFactory, Topics};
    use distlab_node::services::mom::model::{ChannelInfo, Delivery, MomError};
    use distlab_node::services::mom::node::MomStats;
    use egui_kittest::Harness;
    use egui_kittest::kittest::Queryable;

    use super::*;
    use crate::outcome::{Channel, LinkError, MomAsk};
    use crate::systems::time::TimeBase;
    use distlab_node::replica::Role;

    fn fake_model() -> MomModel {
        let topics = Topics::new("lab");
        let mut m = MomModel::new(TimeBase::at(0));
        for (i, (node, role, lsn)) in [
            ("mom-a", Role::Leader, 40u64),
            ("mom-b", Role::Follower, 37),
        ]
        .into_iter()
        .enumerate()
        {
            let stats = MomStats {
                raft: distlab_node::replica::GroupStatus {
                    role,
                    term: 3,
                    leader: Some("mom-a".into()),
                    commit: 40,
                    applied: lsn,
                    lag: if i == 0 {
                        vec![("mom-b".into(), 3)]
                    } else {
                        vec![]
                    },
                },
                channels: vec![ChannelInfo {
                    kind: Kind::Queue,
                    name: "orders".into(),
                    owner: "u1234".into(),
                    subscribers: 2,
                    created: 1,
                    ready: 12,
                    unacked: 3,
                    published: 40,
                    delivered: 28,
                    private: false,
                }],
                ..Default::default()
            };
            let e = EnvelopeFactory::new(node).make("telemetry", None, &stats);
            m.observe(&topics, &topics.telemetry(node, "mom"), &e);
        }
        let gateway = distlab_node::services::mom::gateway::GatewayStats {
            http: std::net::SocketAddr::from(([127, 0, 0, 1], 8082)),
            status: distlab_node::services::mom::gateway::LeaderStatus {
                node: "mom-gateway".into(),
                role: "mom-gateway".into(),
                leader: Some("mom-a".into()),
                term: 3,
                members: Vec::new(),
            },
            requests: 120,
            resent: 2,
        };
        let e = EnvelopeFactory::new("mom-gateway").make("telemetry", None, &gateway);
        assert!(m.observe(&topics, &topics.telemetry("mom-gateway", "mom-gateway"), &e));
        m
    }

    type State = (MomModel, QueueSettings, Vec<LinkCommand>, Option<Outcome>);

    fn harness() -> Harness<'static, State> {
        harness_with(None)
    }

    fn harness_with(outcome: Option<Outcome>) -> Harness<'static, State> {
        let nodes = vec!["mom-a".to_owned(), "mom-b".to_owned()];
        let mut h = Harness::new_ui_state(
            move |ui, (model, settings, out, outcome): &mut State| {
                out.extend(show(ui, model, settings, &nodes, outcome.as_ref(), 0.5));
            },
            (fake_model(), QueueSettings::default(), Vec::new(), outcome),
        );
        h.set_size(egui::vec2(1200.0, 700.0));
        h.run();
        h
    }

    #[test]
    fn shows_where_clients_connect_and_whom_the_gateway_forwards_to() {
        let h = harness();
        h.get_by_label("http://127.0.0.1:8082");
        h.get_by_label("mom-gateway forwards to mom-a (term 3)");
        h.get_by_label("120 requests, 2 sent again");
    }

    #[test]
    fn shows_the_leader_the_follower_lag_and_the_table() {
        let h = harness();
        // The column "leader" and mom-a's role; mom-b follows, applied 37,
        // 3 behind (and both in term 3; the queue has 3 unacked).
        assert_eq!(h.query_all_by_label("leader").count(), 2);
        h.get_by_label("follower");
        h.get_by_label("37");
        assert_eq!(h.query_all_by_label("3").count(), 4);
        h.get_by_label("orders");
        h.get_by_label("12");
    }

    #[test]
    fn buttons_send_requests_to_the_leader() {
        let mut h = harness();
        h.state_mut().1.key = "k".into();
        h.get_by_label("orders").click();
        h.run();
        h.get_by_label("Publish").click();
        h.run();
        h.get_by_label("New user").click();
        h.run();
        let out = &h.state().2;
        match &out[0] {
            LinkCommand::Mom {
                node,
                request: Request::Publish { name, key, .. },
            } => {
                assert_eq!(
                    (node.as_str(), name.as_str(), key.as_str()),
                    ("mom-a", "orders", "k")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(
                &out[1],
                LinkCommand::Mom {
                    request: Request::CreateUser,
                    ..
                }
            ),
            "{out:?}"
        );
    }

    #[test]
    fn a_consumed_message_can_be_acked_and_answers_are_shown() {
        let jobs = Channel {
            kind: Kind::Queue,
            name: "jobs".into(),
        };
        let delivery = Delivery {
            id: 41,
            body: "hello".into(),
            deliveries: 1,
            published_ms: 1,
            visible_again_ms: 2,
        };
        let mut h = harness_with(Some(Outcome::Mom {
            ask: MomAsk::Consume(jobs.clone()),
            result: Ok(Reply::Delivery {
                delivery: Some(delivery),
            }),
        }));
        h.get_by_label_contains("MOM: consume from queue jobs: {\"delivery\":{");
        h.state_mut().1.key = "k".into();
        h.get_by_label("Ack 41").click();
        h.run();
        assert!(
            matches!(
                &h.state().2[..],
                [LinkCommand::Mom {
                    request: Request::Ack { id: 41, .. },
                    ..
                }]
            ),
            "{:?}",
            h.state().2
        );

        let h = harness_with(Some(Outcome::Mom {
            ask: MomAsk::Create(jobs),
            result: Err(LinkError::Mom(MomError::Exists("queue jobs exists".into()))),
        }));
        h.get_by_label("MOM: create queue jobs: queue jobs exists (409)");
        assert!(h.query_by_label_contains("Ack ").is_none());
    }

    #[test]
    fn answers_to_other_panels_are_not_shown_here() {
        let h = harness_with(Some(Outcome::ForgedToken(Err(LinkError::NoBroker))));
        assert!(h.query_by_label_contains("Forged token").is_none());
    }
}
