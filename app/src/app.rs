//! The eframe application: drains the bus and the supervisor in `logic`,
//! draws the panels in `ui`, and hands every button press to the supervisor.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use distlab_node::config::{BrokerAddr, LabConfig};
use distlab_node::envelope::Topics;
use distlab_node::presence::{MemberState, Membership};
use distlab_node::services::mom::service::Reply as MomReply;
use egui::{Color32, RichText};
use serde::{Deserialize, Serialize};

use crate::link::{Link, LinkCommand, LinkEvent, LoadJob};
use crate::model::{self, NodeRow};
use crate::node_bin::NodeBinError;
use crate::outcome::{MomAsk, Outcome};
use crate::palette;
use crate::panels::bookstore::{BookstoreAction, BookstoreSettings};
use crate::panels::faults::FaultSettings;
use crate::panels::flow::FlowSettings;
use crate::panels::lockers::LockerSettings;
use crate::panels::maplog::MapSettings;
use crate::panels::queues::QueueSettings;
use crate::panels::scenarios::{ScenarioAction, ScenarioSettings};
use crate::panels::sensors::SensorSettings;
use crate::panels::{self, cluster::ClusterAction};
use crate::supervisor::Supervisor;
use crate::systems::bookstore::{BookstoreModel, LoadRun};
use crate::systems::faults::FaultsModel;
use crate::systems::flow::FlowModel;
use crate::systems::iot::IotModel;
use crate::systems::lockers::LockersModel;
use crate::systems::maplog::{MapSession, MaplogModel};
use crate::systems::mom::MomModel;
use crate::systems::scenarios::{Catalog, ScenarioRuns};
use crate::systems::time::TimeBase;

/// The views of the main area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tab {
    Cluster,
    Faults,
    Scenarios,
    Flow,
    Sensors,
    Queues,
    Bookstore,
    Lockers,
    Map,
}

/// UI state saved between runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub tab: Tab,
    pub log_node: Option<String>,
    pub show_logs: bool,
    pub sensors: SensorSettings,
    pub queues: QueueSettings,
    pub bookstore: BookstoreSettings,
    pub lockers: LockerSettings,
    pub maplog: MapSettings,
    pub faults: FaultSettings,
    pub scenarios: ScenarioSettings,
    pub flow: FlowSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            tab: Tab::Cluster,
            log_node: None,
            show_logs: true,
            sensors: SensorSettings::default(),
            queues: QueueSettings::default(),
            bookstore: BookstoreSettings::default(),
            lockers: LockerSettings::default(),
            maplog: MapSettings::default(),
            faults: FaultSettings::default(),
            scenarios: ScenarioSettings::default(),
            flow: FlowSettings::default(),
        }
    }
}

/// Where the broker is and who runs it.
#[derive(Debug, Clone)]
pub struct BrokerInfo {
    pub addr: BrokerAddr,
    pub embedded: bool,
    /// Where other machines reach the embedded broker, when that is not
    /// `addr` (it serves TLS there), and its certificate's fingerprint.
    pub remote: Option<(String, String)>,
}

/// Progress of getting the node binary.
pub enum NodeBinStatus {
    Ready,
    Building(Receiver<Result<PathBuf, NodeBinError>>),
    Failed(NodeBinError),
}

pub struct DistlabApp {
    settings: Settings,
    config: LabConfig,
    broker: BrokerInfo,
    supervisor: Supervisor,
    link: Link,
    membership: Membership,
    topics: Topics,
    /// The one time base of the models and plots.
    time: TimeBase,
    iot: IotModel,
    mom: MomModel,
    bookstore: BookstoreModel,
    lockers: LockersModel,
    maplog: MaplogModel,
    faults: FaultsModel,
    flow: FlowModel,
    /// The scenarios on offer, and the run of one.
    scenarios: Catalog,
    runs: ScenarioRuns,
    /// Where scenario histories are saved (`runs/` below it).
    runs_root: PathBuf,
    /// The runs saved there (read at start and after each run).
    past_runs: Vec<crate::systems::scenarios::PastRun>,
    opened_run: Option<panels::scenarios::Opened>,
    /// What this app logged to the map log, and the last read-back check.
    map_session: MapSession,
    /// A lockers rush is running (its outcome ends it).
    rushing: bool,
    load: LoadRun,
    /// The answer to the last request fired from a panel.
    outcome: Option<Outcome>,
    bus_connected: bool,
    node_bin: NodeBinStatus,
}

const STORAGE_KEY: &str = "distlab-settings";
/// Saved scenario runs listed.
const PAST_RUNS: usize = 50;

/// `scenarios/` beside the lab config file, else `config/scenarios` here.
fn scenario_dir(config: &LabConfig) -> Option<PathBuf> {
    let beside = match &config.origin {
        distlab_node::config::Origin::File(path) => path.parent().map(|d| d.join("scenarios")),
        distlab_node::config::Origin::BuiltIn => None,
    };
    beside
        .filter(|d| d.is_dir())
        .or_else(|| Some(PathBuf::from("config/scenarios")).filter(|d| d.is_dir()))
}
/// Time `logic` may spend draining messages per frame.
const DRAIN_BUDGET: Duration = Duration::from_millis(8);

impl DistlabApp {
    pub fn new(
        cc: &eframe::CreationContext<'_>,
        config: LabConfig,
        broker: BrokerInfo,
        supervisor: Supervisor,
        link: Link,
        node_bin: NodeBinStatus,
        runs_root: PathBuf,
    ) -> Self {
        let settings = cc
            .storage
            .and_then(|s| eframe::get_value(s, STORAGE_KEY))
            .unwrap_or_default();
        let topics = Topics::new(&config.lab.name);
        let membership = Membership::new(topics.clone());
        let time = TimeBase::starting_now();
        let scenarios = distlab_node::scenario::catalog(scenario_dir(&config).as_deref());
        Self {
            settings,
            config,
            broker,
            supervisor,
            link,
            membership,
            topics,
            time,
            iot: IotModel::new(time),
            mom: MomModel::new(time),
            bookstore: BookstoreModel::new(time),
            lockers: LockersModel::new(time),
            maplog: MaplogModel::new(time),
            faults: FaultsModel::new(time),
            flow: FlowModel::new(time),
            scenarios,
            runs: ScenarioRuns::default(),
            past_runs: crate::systems::scenarios::past_runs(&runs_root, PAST_RUNS),
            opened_run: None,
            runs_root,
            map_session: MapSession::starting_now(),
            rushing: false,
            load: LoadRun::default(),
            outcome: None,
            bus_connected: false,
            node_bin,
        }
    }

    fn drain_bus(&mut self) {
        let started = Instant::now();
        while started.elapsed() < DRAIN_BUDGET {
            match self.link.rx.try_recv() {
                Ok(LinkEvent::Connected(up)) => self.bus_connected = up,
                Ok(LinkEvent::Message(m)) => {
                    // The diagram sees everything; the models below share it out.
                    self.flow.observe(&self.topics, &m.topic, &m.envelope);
                    if !self
                        .membership
                        .observe(&m.topic, &m.envelope, Instant::now())
                        && !self.mom.observe(&self.topics, &m.topic, &m.envelope)
                        && !self.bookstore.observe(&self.topics, &m.topic, &m.envelope)
                        && !self.lockers.observe(&self.topics, &m.topic, &m.envelope)
                        && !self.maplog.observe(&self.topics, &m.topic, &m.envelope)
                        && !self.faults.observe(&self.topics, &m.topic, &m.envelope)
                    {
                        self.iot.observe(&self.topics, &m.topic, &m.envelope);
                    }
                }
                Ok(LinkEvent::Outcome(outcome)) => self.answered(outcome),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
    }

    fn answered(&mut self, outcome: Outcome) {
        match &outcome {
            // A new MOM user: its key goes into the form.
            Outcome::Mom {
                ask: MomAsk::CreateUser,
                result: Ok(MomReply::Key { key }),
            } => self.settings.queues.key = key.clone(),
            // The panel shows the load's figures live; its end leaves the
            // last HTTP reply in place.
            Outcome::Rush(report) => {
                self.rushing = false;
                tracing::info!(?report, "lockers rush finished");
            }
            Outcome::MapLogged(report) => self.map_session.logged(report.clone()),
            Outcome::MapRead { expected, result } => self
                .map_session
                .read_back(*expected, result.as_deref().map_err(ToString::to_string)),
            Outcome::Scenario { name, passed } => {
                tracing::info!(%name, passed, "scenario finished");
                self.past_runs = crate::systems::scenarios::past_runs(&self.runs_root, PAST_RUNS);
                return;
            }
            Outcome::LoadFinished(report) => {
                tracing::info!("bookstore load finished\n{}", report.render());
                return;
            }
            _ => {}
        }
        self.outcome = Some(outcome);
    }

    fn poll_node_bin(&mut self) {
        if let NodeBinStatus::Building(rx) = &self.node_bin {
            match rx.try_recv() {
                Ok(Ok(path)) => {
                    self.supervisor.set_program(path);
                    self.node_bin = NodeBinStatus::Ready;
                }
                Ok(Err(why)) => self.node_bin = NodeBinStatus::Failed(why),
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => {
                    self.node_bin = NodeBinStatus::Failed(NodeBinError::BuildThreadDied)
                }
            }
        }
    }

    fn rows(&self) -> Vec<NodeRow> {
        let now = Instant::now();
        model::rows(
            &self.config.nodes,
            &self.supervisor.views(),
            &self.membership.rows(now),
            now,
        )
    }

    fn top_bar(&mut self, ui: &mut egui::Ui, rows: &[NodeRow]) {
        ui.horizontal(|ui| {
            ui.heading(RichText::new("Distlab").strong());
            ui.separator();
            ui.label(format!("cluster {}", self.config.lab.name));
            ui.separator();
            let (state, text) = if self.bus_connected {
                (MemberState::Up, "connected")
            } else {
                (MemberState::Down, "not connected")
            };
            panels::state_dot(ui, state);
            let who = if self.broker.embedded {
                "embedded broker"
            } else {
                "broker"
            };
            ui.label(format!("{who} {} — {text}", self.broker.addr));
            if let Some((addr, fingerprint)) = &self.broker.remote {
                // The first 8 bytes are enough to compare by eye; the hover
                // has it all (and the credentials file holds it).
                let short: String = fingerprint.chars().take(7 + 8).collect();
                ui.label(format!("· remote: {addr}, TLS {short}…"))
                    .on_hover_text(format!(
                        "Nodes on other machines connect to {addr} with TLS and pin the \
                         certificate {fingerprint} (it is in the bus-credentials file they use)."
                    ));
            }
            ui.separator();
            let (up, total) = model::count_up(rows);
            ui.label(RichText::new(format!("{up}/{total} nodes up")).strong());
            ui.separator();
            ui.selectable_value(&mut self.settings.tab, Tab::Cluster, "Cluster");
            ui.selectable_value(&mut self.settings.tab, Tab::Faults, "Faults");
            ui.selectable_value(&mut self.settings.tab, Tab::Scenarios, "Scenarios");
            ui.selectable_value(&mut self.settings.tab, Tab::Flow, "Flow");
            ui.selectable_value(&mut self.settings.tab, Tab::Sensors, "Sensors");
            ui.selectable_value(&mut self.settings.tab, Tab::Queues, "Queues");
            ui.selectable_value(&mut self.settings.tab, Tab::Bookstore, "Bookstore");
            ui.selectable_value(&mut self.settings.tab, Tab::Lockers, "Lockers");
            ui.selectable_value(&mut self.settings.tab, Tab::Map, "Map");
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                ui.toggle_value(&mut self.settings.show_logs, "Logs");
            });
        });
    }

    fn banner(&self, ui: &mut egui::Ui) {
        match &self.node_bin {
            NodeBinStatus::Ready => {}
            NodeBinStatus::Building(_) => {
                ui.horizontal(|ui| {
                    ui.spinner();
                    ui.label("Building distlab-node (first run under cargo)… nodes start when it is ready.");
                });
            }
            NodeBinStatus::Failed(why) => {
                egui::Frame::new()
                    .fill(palette::ERROR_FILL)
                    .inner_margin(8.0)
                    .corner_radius(4.0)
                    .show(ui, |ui| {
                        ui.label(
                            RichText::new(format!("Nodes cannot start: {why}"))
                                .color(Color32::WHITE),
                        );
                    });
            }
        }
    }

    /// Bookstore buttons: HTTP calls go to the link; a load run gets fresh
    /// handles here and runs on the link's runtime.
    fn bookstore_actions(&mut self, actions: Vec<BookstoreAction>) -> Vec<LinkCommand> {
        let mut commands = Vec::new();
        for action in actions {
            match action {
                BookstoreAction::Link(c) => commands.push(c),
                BookstoreAction::StartLoad {
                    addr,
                    clients,
                    rounds,
                } => {
                    tracing::info!(%addr, clients, rounds, "starting bookstore load");
                    let (progress, stop) = self.load.start();
                    let opts = distlab_node::services::bookstore::load::LoadOptions {
                        addr,
                        clients,
                        rounds,
                        seed: distlab_node::envelope::now_ms(),
                        ..Default::default()
                    };
                    commands.push(LinkCommand::BookstoreLoad(LoadJob {
                        opts,
                        progress,
                        stop,
                    }));
                }
                BookstoreAction::StopLoad => self.load.stop(),
            }
        }
        commands
    }

    /// The lab's nodes with the role of this name (by name: the map log's
    /// roles are still settling).
    fn nodes_named(&self, role: &str) -> Vec<String> {
        self.config
            .nodes
            .iter()
            .filter(|n| n.roles.iter().any(|r| r.as_str() == role))
            .map(|n| n.id.clone())
            .collect()
    }

    /// Run / Stop: a run goes to the link with a handle on the supervisor.
    fn scenario_actions(&mut self, actions: Vec<ScenarioAction>) -> Vec<LinkCommand> {
        let mut commands = Vec::new();
        for action in actions {
            match action {
                ScenarioAction::Stop => self.runs.stop(),
                ScenarioAction::Open(dir) => {
                    let tally = crate::systems::scenarios::tally(&dir);
                    self.opened_run = Some((dir, tally));
                }
                ScenarioAction::Close => self.opened_run = None,
                ScenarioAction::Start(file) => {
                    let Some((_, Ok(scenario))) = self.scenarios.iter().find(|(f, _)| *f == file)
                    else {
                        continue;
                    };
                    let Some((feed, stop)) = self.runs.start(&file) else {
                        continue;
                    };
                    tracing::info!(%file, "running a scenario");
                    commands.push(LinkCommand::Scenario(Box::new(crate::link::ScenarioJob {
                        file,
                        scenario: scenario.clone(),
                        config: self.config.clone(),
                        commander: self.supervisor.commander(),
                        history_root: self.runs_root.clone(),
                        feed,
                        stop,
                    })));
                }
            }
        }
        commands
    }

    fn handle(&mut self, actions: Vec<ClusterAction>) {
        for action in actions {
            match action {
                ClusterAction::Command(node, command) => {
                    tracing::info!(%node, ?command, "command");
                    self.supervisor.command(&node, command);
                }
                ClusterAction::ShowLogs(node) => {
                    self.settings.log_node = Some(node);
                    self.settings.show_logs = true;
                }
            }
        }
    }
}

impl eframe::App for DistlabApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.drain_bus();
        self.poll_node_bin();
        // Heartbeat ages and uptimes move on their own: refresh a few times a
        // second; new messages repaint sooner.
        ctx.request_repaint_after(Duration::from_millis(250));
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let rows = self.rows();
        egui::Panel::top("top-bar").show(ui, |ui| {
            ui.add_space(4.0);
            self.top_bar(ui, &rows);
            ui.add_space(2.0);
        });
        if self.settings.show_logs {
            let nodes: Vec<String> = self.config.nodes.iter().map(|n| n.id.clone()).collect();
            if self.settings.log_node.is_none() {
                self.settings.log_node = nodes.first().cloned();
            }
            let lines = self
                .settings
                .log_node
                .as_deref()
                .map(|n| self.supervisor.log_tail(n, 500))
                .unwrap_or_default();
            egui::Panel::bottom("logs")
                .resizable(true)
                .default_size(240.0)
                .show(ui, |ui| {
                    panels::logs::show(ui, &nodes, &mut self.settings.log_node, &lines);
                });
        }
        let tab = self.settings.tab;
        let now = self.time.now();
        let store = self
            .config
            .nodes_with(distlab_node::config::Role::Store)
            .into_iter()
            .next();
        let (actions, commands) = egui::CentralPanel::default()
            .show(ui, |ui| {
                self.banner(ui);
                match tab {
                    Tab::Cluster => {
                        ui.label(RichText::new("Cluster").heading());
                        ui.label(
                            RichText::new("Every node of the lab and any node that joined the broker. Kill, pause and restart act on real processes.")
                                .weak(),
                        );
                        ui.add_space(6.0);
                        (panels::cluster::show(ui, &rows, &self.faults), Vec::new())
                    }
                    Tab::Faults => {
                        ui.label(RichText::new("Faults: the network between nodes").heading());
                        let nodes: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
                        let commands = panels::faults::show(
                            ui,
                            &self.faults,
                            &mut self.settings.faults,
                            &nodes,
                            self.outcome.as_ref(),
                        );
                        (Vec::new(), commands)
                    }
                    Tab::Flow => {
                        ui.label(RichText::new("Flow: the messages between nodes").heading());
                        let nodes: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
                        panels::flow::show(ui, &self.flow, &mut self.settings.flow, &nodes, self.time, now);
                        (Vec::new(), Vec::new())
                    }
                    Tab::Scenarios => {
                        ui.label(RichText::new("Scenarios: faults, loads and checks on a timeline").heading());
                        let feed = self.runs.snapshot();
                        let runs = panels::scenarios::Runs {
                            past: &self.past_runs,
                            opened: self.opened_run.as_ref(),
                        };
                        let actions = panels::scenarios::show(
                            ui,
                            &self.scenarios,
                            &mut self.settings.scenarios,
                            &feed,
                            &runs,
                        );
                        (Vec::new(), self.scenario_actions(actions))
                    }
                    Tab::Sensors => {
                        ui.label(RichText::new("Sensors: IoT pipeline").heading());
                        let commands = panels::sensors::show(
                            ui,
                            &self.iot,
                            &mut self.settings.sensors,
                            store.as_deref(),
                            self.outcome.as_ref(),
                        );
                        (Vec::new(), commands)
                    }
                    Tab::Queues => {
                        ui.label(RichText::new("Queues: MOM topics and queues").heading());
                        let nodes = self.config.nodes_with(distlab_node::config::Role::Mom);
                        let commands = panels::queues::show(
                            ui,
                            &self.mom,
                            &mut self.settings.queues,
                            &nodes,
                            self.outcome.as_ref(),
                            now,
                        );
                        (Vec::new(), commands)
                    }
                    Tab::Bookstore => {
                        ui.label(RichText::new("Bookstore: frontend, catalog and order replicas").heading());
                        let mut servers = self.config.nodes_with(distlab_node::config::Role::Catalog);
                        servers.extend(self.config.nodes_with(distlab_node::config::Role::Order));
                        let actions = panels::bookstore::show(
                            ui,
                            &self.bookstore,
                            &mut self.settings.bookstore,
                            &servers,
                            &self.load.view(),
                            self.outcome.as_ref(),
                            now,
                        );
                        let commands = self.bookstore_actions(actions);
                        (Vec::new(), commands)
                    }
                    Tab::Lockers => {
                        ui.label(RichText::new("Lockers: users and lockers over the MOM").heading());
                        let users = self.config.nodes_with(distlab_node::config::Role::Users);
                        let lockers = self.config.nodes_with(distlab_node::config::Role::Lockers);
                        let nodes = panels::lockers::LabView {
                            users: &users,
                            lockers: &lockers,
                            rushing: self.rushing,
                        };
                        let commands = panels::lockers::show(
                            ui,
                            &self.lockers,
                            &self.mom,
                            &mut self.settings.lockers,
                            &nodes,
                            self.outcome.as_ref(),
                            now,
                        );
                        if commands.iter().any(|c| matches!(c, LinkCommand::LockersRush { .. })) {
                            self.rushing = true;
                        }
                        (Vec::new(), commands)
                    }
                    Tab::Map => {
                        ui.label(RichText::new("Map: a partitioned map with backups, and the log through it").heading());
                        let loggers = self.nodes_named("logger");
                        let facades = self.nodes_named("facade");
                        let messages = self.nodes_named("messages");
                        let facade_http = (!facades.is_empty()).then_some(self.config.maplog.http);
                        let nodes = panels::maplog::LabView {
                            loggers: &loggers,
                            facades: &facades,
                            messages: &messages,
                            facade_http,
                        };
                        panels::maplog::show(
                            ui,
                            &self.maplog,
                            &mut self.map_session,
                            &mut self.settings.maplog,
                            &nodes,
                            now,
                        )
                    }
                }
            })
            .inner;
        self.handle(actions);
        for command in commands {
            self.link.send(command);
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, STORAGE_KEY, &self.settings);
    }

    fn on_exit(&mut self, _gl: Option<&eframe::glow::Context>) {
        tracing::info!("closing: stopping every node");
        crate::node_bin::cancel_build();
        self.supervisor.shutdown();
    }
}
