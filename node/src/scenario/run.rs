//! Runs a [`Scenario`] against a lab on the bus: its timeline in order
//! (each step at its time; repeated steps and their undos expanded by
//! [`timeline`]), then the end (loads stopped, network healed, stopped and
//! paused nodes back, every node up), then the checks.
//!
//! What it needs from outside is only process control ([`Processes`]): the
//! command line starts the nodes itself, the app hands the actions to its
//! supervisor. Everything else goes over the bus: fault rules, the loads,
//! what the nodes report (raft telemetry, presence, the IoT grants and
//! store), the checks.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::spec::{Action, Condition, Invariant, Pick, Process, Scenario, System};
use crate::bus::Bus;
use crate::config::LabConfig;
use crate::faults::{self, FaultPlan};
use crate::history::{History, OpType};
use crate::replica::Role as RaftRole;
use crate::replica::shell::RaftTelemetry;
use crate::services::mom::client::Client;
use crate::services::mom::model::Kind;
use crate::shim::LinkRule;

/// Process control: the one thing a runner needs from its host.
pub trait Processes: Send {
    fn act(&mut self, node: &str, op: Process) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// A host that controls no process: process steps fail with `why`.
pub struct NoProcesses(pub &'static str);

impl Processes for NoProcesses {
    async fn act(&mut self, node: &str, op: Process) -> anyhow::Result<()> {
        anyhow::bail!("cannot {} {node}: {}", op.as_str(), self.0)
    }
}

/// One entry of the expanded timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub at: Duration,
    /// Index into the scenario's steps.
    pub step: usize,
    /// Which repetition of the step.
    pub round: u32,
    /// The undo of that repetition.
    pub undo: bool,
}

/// Every step's repetitions and undos, in time order (a step's undo before
/// a later step at the same time).
pub fn timeline(s: &Scenario) -> Vec<Due> {
    let mut out = Vec::new();
    for (i, step) in s.steps.iter().enumerate() {
        let end = step.until.unwrap_or(s.length).min(s.length);
        let mut at = step.at;
        let mut round = 0;
        loop {
            out.push(Due {
                at,
                step: i,
                round,
                undo: false,
            });
            if let Some(after) = step.undo_after
                && at + after <= s.length
            {
                out.push(Due {
                    at: at + after,
                    step: i,
                    round,
                    undo: true,
                });
            }
            match step.every {
                Some(every) if at + every <= end => {
                    at += every;
                    round += 1;
                }
                _ => break,
            }
        }
    }
    out.sort_by_key(|d| (d.at, !d.undo, d.step, d.round));
    out
}

/// What the runner tells as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A step began (`t` since the start).
    Step {
        t: Duration,
        line: usize,
        text: String,
    },
    /// Something the runner noticed (a wait done, a load's figures).
    Note {
        t: Duration,
        text: String,
    },
    /// A step could not be done.
    Failed {
        t: Duration,
        line: usize,
        text: String,
    },
    Check(CheckResult),
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Step { t, line, text } => {
                write!(f, "{:>7.1}s  line {line:<3} {text}", t.as_secs_f64())
            }
            Event::Note { t, text } => write!(f, "{:>7.1}s            {text}", t.as_secs_f64()),
            Event::Failed { t, line, text } => {
                write!(
                    f,
                    "{:>7.1}s  line {line:<3} FAILED: {text}",
                    t.as_secs_f64()
                )
            }
            Event::Check(c) => write!(
                f,
                "check {:<22} {}  {}",
                c.invariant.as_str(),
                if c.ok { "ok  " } else { "FAIL" },
                c.detail
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    pub invariant: Invariant,
    pub ok: bool,
    pub detail: String,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Every client operation of the loads and every fault, in order.
    pub history: History,
    pub checks: Vec<CheckResult>,
    /// Steps that could not be done (a wait that timed out, an action that
    /// failed).
    pub failed_steps: usize,
    /// Stopped before its end.
    pub stopped: bool,
}

impl Report {
    pub fn passed(&self) -> bool {
        !self.stopped && self.failed_steps == 0 && self.checks.iter().all(|c| c.ok)
    }

    /// The verdict as JSON (`report.json` beside the history).
    pub fn to_json(&self, scenario: &Scenario) -> Value {
        serde_json::json!({
            "scenario": scenario.name,
            "seed": scenario.seed,
            "passed": self.passed(),
            "stopped": self.stopped,
            "failed_steps": self.failed_steps,
            "operations": self.history.len(),
            "checks": self.checks.iter().map(|c| serde_json::json!({
                "check": c.invariant.as_str(),
                "ok": c.ok,
                "detail": c.detail,
            })).collect::<Vec<_>>(),
        })
    }

    /// Saves the history and the verdict under `<root>/runs/<time>-<name>`.
    pub fn save(
        &self,
        scenario: &Scenario,
        root: &std::path::Path,
    ) -> std::io::Result<std::path::PathBuf> {
        let dir = crate::history::run_dir(root, &scenario.name);
        self.history.save(&dir, &self.to_json(scenario))
    }
}

/// What the runner sees of the lab on the bus.
#[derive(Debug, Default)]
struct World {
    raft: BTreeMap<String, RaftTelemetry>,
    up: BTreeSet<String>,
    holder: Option<String>,
    store_rows: u64,
    frontend: Option<SocketAddr>,
}

impl World {
    fn leader(&self, group: &str) -> Option<(String, u64)> {
        self.raft
            .iter()
            .filter(|(_, t)| t.group == group && t.status.role == RaftRole::Leader)
            .max_by_key(|(_, t)| t.status.term)
            .map(|(n, t)| (n.clone(), t.status.term))
    }
}

struct Watch {
    world: Arc<Mutex<World>>,
    changed: watch::Receiver<u64>,
}

impl Watch {
    async fn start(bus: &Bus, stop: CancellationToken) -> anyhow::Result<Watch> {
        let t = bus.topics().clone();
        let mut rx = bus
            .subscribe_all(&[
                t.telemetry("+", "raft"),
                t.telemetry("+", "store"),
                t.presence_all(),
                t.service("iot", "grant"),
                t.service("bookstore", "http/+"),
            ])
            .await?;
        let world = Arc::new(Mutex::new(World::default()));
        let (tx, changed) = watch::channel(0u64);
        let w = world.clone();
        tokio::spawn(async move {
            use crate::presence::{Presence, PresenceState};
            use crate::services::bookstore::frontend::FrontendHttp;
            use crate::services::iot::store::StoreStats;
            use crate::services::iot::token::SignedGrant;
            loop {
                let m = tokio::select! {
                    m = rx.recv() => m,
                    _ = stop.cancelled() => return,
                };
                let Some(m) = m else { return };
                let Some(rest) = m.topic.strip_prefix(t.prefix()) else {
                    continue;
                };
                let levels: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
                {
                    let mut w = w.lock();
                    match levels.as_slice() {
                        ["telemetry", _, "raft"] => {
                            if let Ok(r) = m.envelope.body_as::<RaftTelemetry>() {
                                w.raft.insert(m.envelope.from.clone(), r);
                            }
                        }
                        ["telemetry", _, "store"] => {
                            if let Ok(s) = m.envelope.body_as::<StoreStats>() {
                                w.store_rows = s.rows;
                            }
                        }
                        ["presence", node] => {
                            if let Ok(p) = m.envelope.body_as::<Presence>() {
                                if p.state == PresenceState::Up {
                                    w.up.insert((*node).to_owned());
                                } else {
                                    w.up.remove(*node);
                                    w.raft.remove(*node);
                                }
                            }
                        }
                        ["iot", "grant"] => {
                            if let Ok(g) = m.envelope.body_as::<SignedGrant>() {
                                w.holder = Some(g.grant.holder);
                            }
                        }
                        ["bookstore", "http", _] => {
                            if let Ok(h) = m.envelope.body_as::<FrontendHttp>() {
                                w.frontend = Some(h.addr);
                            }
                        }
                        _ => continue,
                    }
                }
                tx.send_modify(|v| *v += 1);
            }
        });
        Ok(Watch { world, changed })
    }

    /// Waits until `done` holds for the world, at most `within`.
    async fn until<T>(
        &mut self,
        within: Duration,
        done: impl Fn(&World) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = done(&self.world.lock()) {
                return Some(v);
            }
            match tokio::time::timeout_at(deadline, self.changed.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }
}

/// The MOM load: publishes `m<i>` to the queue `scenario` at a rate.
struct MomLoad {
    client: Arc<Client>,
    key: String,
    acked: Arc<Mutex<Vec<String>>>,
    failed: Arc<std::sync::atomic::AtomicU64>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    history: History,
}

const MOM_QUEUE: &str = "scenario";

impl MomLoad {
    async fn start(
        bus: &Bus,
        lab: &LabConfig,
        rate: u32,
        history: History,
    ) -> anyhow::Result<MomLoad> {
        let node = lab
            .nodes_with(crate::config::Role::Mom)
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("the lab has no mom node"))?;
        let client = Arc::new(Client::new(bus.clone(), &node));
        let key = client.create_user().await?;
        client.create(Kind::Queue, MOM_QUEUE, &key).await?;
        client.subscribe(Kind::Queue, MOM_QUEUE, &key).await?;
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (c, k, a, f, s) = (
            client.clone(),
            key.clone(),
            acked.clone(),
            failed.clone(),
            stop.clone(),
        );
        let h = history.clone();
        let task = tokio::spawn(async move {
            let mut process = h.process();
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut i = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = s.cancelled() => return,
                }
                let body = format!("m{i}");
                i += 1;
                let pending = h.invoke(process, "enqueue", serde_json::json!(body));
                let sent = tokio::select! {
                    r = c.publish(Kind::Queue, MOM_QUEUE, &k, &body) => r,
                    _ = s.cancelled() => {
                        h.complete(pending, OpType::Info, Value::Null);
                        return;
                    }
                };
                match sent {
                    Ok(_) => {
                        h.complete(pending, OpType::Ok, serde_json::json!(body));
                        a.lock().push(body);
                    }
                    Err(e) => {
                        f.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::debug!(error = %e, "a scenario publish failed");
                        // Refused is refused; anything else may have happened.
                        let refused = matches!(
                            &e,
                            crate::services::mom::client::ClientError::Rpc(
                                crate::bus::RpcError::Remote { .. }
                            )
                        );
                        let kind = if refused { OpType::Fail } else { OpType::Info };
                        h.complete(pending, kind, serde_json::json!(e.to_string()));
                        if !refused {
                            process = h.process();
                        }
                    }
                }
            }
        });
        Ok(MomLoad {
            client,
            key,
            acked,
            failed,
            stop,
            task,
            history,
        })
    }

    async fn stop(&mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }

    /// Consumes the queue to its end; every acknowledged body must be there.
    async fn check(&self) -> CheckResult {
        let acked = self.acked.lock().clone();
        let mut got = BTreeSet::new();
        let mut error = None;
        let process = self.history.process();
        loop {
            let pending = self.history.invoke(process, "dequeue", Value::Null);
            match self
                .client
                .consume(Kind::Queue, MOM_QUEUE, &self.key, 0)
                .await
            {
                Ok(Some(d)) => {
                    self.history
                        .complete(pending, OpType::Ok, serde_json::json!(d.body));
                    got.insert(d.body.clone());
                    if let Err(e) = self.client.ack(&self.key, d.id).await {
                        error = Some(e.to_string());
                        break;
                    }
                }
                Ok(None) => {
                    self.history.complete(pending, OpType::Fail, Value::Null);
                    break;
                }
                Err(e) => {
                    self.history
                        .complete(pending, OpType::Info, serde_json::json!(e.to_string()));
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        let lost: Vec<&String> = acked.iter().filter(|b| !got.contains(*b)).collect();
        let ok = lost.is_empty() && error.is_none() && !acked.is_empty();
        let mut detail = format!(
            "{} acknowledged, {} consumed, {} lost",
            acked.len(),
            got.len(),
            lost.len()
        );
        if let Some(first) = lost.first() {
            detail.push_str(&format!(" (first: {first})"));
        }
        if let Some(e) = error {
            detail.push_str(&format!("; reading the queue back failed: {e}"));
        }
        if acked.is_empty() {
            detail.push_str("; the load never got an acknowledgement");
        }
        CheckResult {
            invariant: Invariant::MomNoAckedLost,
            ok,
            detail,
        }
    }
}

struct BookstoreLoad {
    progress: crate::services::bookstore::load::Progress,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl BookstoreLoad {
    fn start(addr: SocketAddr, clients: usize, seed: u64, history: History) -> BookstoreLoad {
        use crate::services::bookstore::load;
        let progress = load::Progress::default();
        let stop = CancellationToken::new();
        let opts = load::LoadOptions {
            addr,
            clients,
            rounds: 1_000_000,
            seed,
            history: Some(history),
            ..Default::default()
        };
        let (p, s) = (progress.clone(), stop.clone());
        let task = tokio::spawn(async move {
            load::run(opts, p, s).await;
        });
        BookstoreLoad {
            progress,
            stop,
            task,
        }
    }

    async fn stop(&mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }
}

/// Runs `scenario` on the lab `lab` through `bus`; `procs` does the process
/// steps; each event goes to `tell` as it happens. Stops early (reporting
/// so) when `stop` is cancelled.
pub async fn run<P: Processes>(
    scenario: &Scenario,
    lab: &LabConfig,
    bus: &Bus,
    procs: &mut P,
    mut tell: impl FnMut(Event),
    stop: CancellationToken,
) -> anyhow::Result<Report> {
    let watch_stop = CancellationToken::new();
    let _guard = watch_stop.clone().drop_guard();
    let mut watch = Watch::start(bus, watch_stop).await?;
    let nodes: Vec<String> = if scenario.nodes.is_empty() {
        lab.nodes.iter().map(|n| n.id.clone()).collect()
    } else {
        scenario.nodes.clone()
    };
    let mut r = Runner {
        scenario,
        lab,
        bus,
        nodes,
        rng: fastrand::Rng::with_seed(scenario.seed),
        started: Instant::now(),
        leaders: BTreeMap::new(),
        done: BTreeMap::new(),
        down: BTreeSet::new(),
        paused: BTreeSet::new(),
        mom: None,
        bookstore: None,
        failed_steps: 0,
        history: History::new(),
    };
    // Every fault is a nemesis op of the history.
    let history = r.history.clone();
    let mut tell = move |e: Event| {
        const FAULTS: [&str; 12] = [
            "kill",
            "stop",
            "pause",
            "resume",
            "restart",
            "isolate",
            "cut",
            "partition",
            "delay",
            "lose",
            "heal",
            "restore",
        ];
        if let Event::Step { text, .. } = &e
            && let Some(f) = text.split(' ').next().filter(|f| FAULTS.contains(f))
        {
            history.nemesis(f, serde_json::json!(text));
        }
        tell(e)
    };
    let mut stopped = false;
    // The lab is up before the clock starts.
    tell(Event::Note {
        t: Duration::ZERO,
        text: format!("waiting for {} node(s) to be up", r.nodes.len()),
    });
    let nodes = r.nodes.clone();
    let up = tokio::select! {
        up = watch.until(Duration::from_secs(60), |w| {
            nodes.iter().all(|n| w.up.contains(n)).then_some(())
        }) => up,
        _ = stop.cancelled() => {
            return Ok(Report {
                history: r.history.clone(),
                checks: Vec::new(),
                failed_steps: 0,
                stopped: true,
            });
        }
    };
    if up.is_none() {
        let missing: Vec<String> = {
            let w = watch.world.lock();
            r.nodes
                .iter()
                .filter(|n| !w.up.contains(*n))
                .cloned()
                .collect()
        };
        anyhow::bail!("these nodes are not up: {}", missing.join(", "));
    }
    r.started = Instant::now();
    for due in timeline(scenario) {
        let at = r.started + due.at;
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = stop.cancelled() => { stopped = true; break; }
        }
        let step = &scenario.steps[due.step];
        let t = r.started.elapsed();
        let outcome = tokio::select! {
            o = r.step(due, &mut watch, procs, &mut tell) => o,
            _ = stop.cancelled() => { stopped = true; break; }
        };
        if let Err(e) = outcome {
            r.failed_steps += 1;
            tell(Event::Failed {
                t,
                line: step.line,
                text: format!("{}: {e:#}", step.action),
            });
        }
    }
    if !stopped {
        tokio::select! {
            _ = tokio::time::sleep_until(r.started + scenario.length) => {}
            _ = stop.cancelled() => stopped = true,
        }
    }
    let checks = r.finish(&mut watch, procs, &mut tell).await;
    for c in &checks {
        tell(Event::Check(c.clone()));
    }
    Ok(Report {
        history: r.history.clone(),
        checks,
        failed_steps: r.failed_steps,
        stopped,
    })
}

/// What a done step changed, so its undo can put it back.
enum Done {
    Process(String, Process),
    /// The links it set, with their rules before.
    Links(Vec<(String, String, LinkRule)>),
    Nothing,
}

struct Runner<'a> {
    scenario: &'a Scenario,
    lab: &'a LabConfig,
    bus: &'a Bus,
    nodes: Vec<String>,
    rng: fastrand::Rng,
    started: Instant,
    /// Each group's leader (and term) when the last action began.
    leaders: BTreeMap<String, (String, u64)>,
    done: BTreeMap<(usize, u32), Done>,
    down: BTreeSet<String>,
    paused: BTreeSet<String>,
    mom: Option<MomLoad>,
    bookstore: Option<BookstoreLoad>,
    failed_steps: usize,
    history: History,
}

const LOAD_PLAN: Duration = Duration::from_secs(3);

impl Runner<'_> {
    fn t(&self) -> Duration {
        self.started.elapsed()
    }

    /// Tells that the step at `line` begins doing `text`.
    fn began(&self, tell: &mut impl FnMut(Event), line: usize, text: String) {
        tell(Event::Step {
            t: self.t(),
            line,
            text,
        });
    }

    async fn step<P: Processes>(
        &mut self,
        due: Due,
        watch: &mut Watch,
        procs: &mut P,
        tell: &mut impl FnMut(Event),
    ) -> anyhow::Result<()> {
        let step = &self.scenario.steps[due.step];
        let line = step.line;
        if due.undo {
            let done = self
                .done
                .remove(&(due.step, due.round))
                .unwrap_or(Done::Nothing);
            return self.undo(done, line, procs, tell).await;
        }
        if !matches!(step.action, Action::Wait { .. }) {
            let w = watch.world.lock();
            for g in ["mom", "catalog", "order", "users", "lockers"] {
                if let Some(l) = w.leader(g) {
                    self.leaders.insert(g.to_owned(), l);
                }
            }
        }
        let done = match &step.action {
            Action::Process(op, pick) => {
                let node = self.pick(pick, watch)?;
                self.began(tell, line, format!("{} {node}", op.as_str()));
                self.process(&node, *op, procs).await?;
                Done::Process(node, *op)
            }
            Action::Isolate(pick) => {
                let node = self.pick(pick, watch)?;
                self.began(tell, line, format!("isolate {node}"));
                let all = self.nodes.clone();
                self.links(|p| p.isolate(&node, &all)).await?
            }
            Action::OneWay(pick) => {
                let node = self.pick(pick, watch)?;
                self.began(
                    tell,
                    line,
                    format!("cut what {node} sends to every other node"),
                );
                let others: Vec<String> =
                    self.nodes.iter().filter(|n| **n != node).cloned().collect();
                self.links(|p| p.cut_one_way(&node, &others)).await?
            }
            Action::Partition(groups) => {
                self.began(tell, line, step.action.to_string());
                let groups = groups.clone();
                self.links(|p| p.partition(&groups)).await?
            }
            Action::Delay {
                from,
                to,
                delay_ms,
                jitter_ms,
            } => {
                let (from, to) = (self.pick(from, watch)?, self.pick(to, watch)?);
                self.began(
                    tell,
                    line,
                    format!("delay {from} -> {to} by {delay_ms}±{jitter_ms} ms"),
                );
                let (d, j) = (*delay_ms, *jitter_ms);
                self.links(|p| {
                    p.update(&from, &to, |r| {
                        r.delay_ms = d;
                        r.jitter_ms = j;
                    })
                })
                .await?
            }
            Action::Loss { from, to, fraction } => {
                let (from, to) = (self.pick(from, watch)?, self.pick(to, watch)?);
                self.began(
                    tell,
                    line,
                    format!("lose {:.0}% of {from} -> {to}", fraction * 100.0),
                );
                let f = *fraction;
                self.links(|p| p.update(&from, &to, |r| r.loss = f)).await?
            }
            Action::Heal => {
                self.began(tell, line, "heal".to_owned());
                self.links(FaultPlan::heal).await?;
                Done::Nothing
            }
            Action::LoadStart {
                system,
                rate,
                clients,
            } => {
                self.began(tell, line, step.action.to_string());
                match system {
                    System::Mom if self.mom.is_none() => {
                        let load = tokio::time::timeout(
                            Duration::from_secs(30),
                            MomLoad::start(self.bus, self.lab, *rate, self.history.clone()),
                        )
                        .await
                        .map_err(|_| anyhow::anyhow!("the MOM did not answer within 30 s"))??;
                        self.mom = Some(load);
                    }
                    System::Bookstore if self.bookstore.is_none() => {
                        let addr = watch
                            .until(Duration::from_secs(30), |w| w.frontend)
                            .await
                            .ok_or_else(|| anyhow::anyhow!("no frontend announced its address"))?;
                        self.bookstore = Some(BookstoreLoad::start(
                            addr,
                            *clients,
                            self.scenario.seed,
                            self.history.clone(),
                        ));
                    }
                    _ => anyhow::bail!("the {} load runs already", system.as_str()),
                }
                Done::Nothing
            }
            Action::LoadStop(system) => {
                self.began(tell, line, step.action.to_string());
                self.stop_load(*system, tell).await;
                Done::Nothing
            }
            Action::Wait { until, within } => {
                self.began(tell, line, step.action.to_string());
                let before = self.leaders.clone();
                let nodes = self.nodes.clone();
                let rows = watch.world.lock().store_rows;
                let found = watch
                    .until(*within, |w| match until {
                        Condition::Leader(g) => w.leader(g).map(|(n, _)| format!("{n} leads {g}")),
                        Condition::NewLeader(g) => w.leader(g).and_then(|(n, term)| {
                            let new = before.get(g).is_none_or(|(old, t)| *old != n || term > *t);
                            new.then(|| format!("{n} leads {g} (term {term})"))
                        }),
                        Condition::AllUp => nodes
                            .iter()
                            .all(|n| w.up.contains(n))
                            .then(|| "every node up".to_owned()),
                        Condition::StoreGrows => (w.store_rows > rows)
                            .then(|| format!("the store commits: {rows} -> {} rows", w.store_rows)),
                    })
                    .await
                    .ok_or_else(|| {
                        anyhow::anyhow!("not within {}", humantime::format_duration(*within))
                    })?;
                tell(Event::Note {
                    t: self.t(),
                    text: found,
                });
                Done::Nothing
            }
        };
        self.done.insert((due.step, due.round), done);
        Ok(())
    }

    async fn undo<P: Processes>(
        &mut self,
        done: Done,
        line: usize,
        procs: &mut P,
        tell: &mut impl FnMut(Event),
    ) -> anyhow::Result<()> {
        match done {
            Done::Process(node, op) => {
                let Some(undo) = op.undo() else {
                    return Ok(());
                };
                self.began(tell, line, format!("{} {node} (undo)", undo.as_str()));
                self.process(&node, undo, procs).await
            }
            Done::Links(before) => {
                self.began(
                    tell,
                    line,
                    format!("restore {} link(s) (undo)", before.len()),
                );
                self.links(|p| {
                    for (from, to, rule) in &before {
                        p.update(from, to, |r| *r = *rule);
                    }
                })
                .await?;
                Ok(())
            }
            Done::Nothing => Ok(()),
        }
    }

    async fn process<P: Processes>(
        &mut self,
        node: &str,
        op: Process,
        procs: &mut P,
    ) -> anyhow::Result<()> {
        procs.act(node, op).await?;
        match op {
            Process::Kill | Process::Stop => {
                self.down.insert(node.to_owned());
            }
            Process::Pause => {
                self.paused.insert(node.to_owned());
            }
            Process::Resume => {
                self.paused.remove(node);
            }
            Process::Restart => {
                self.down.remove(node);
                self.paused.remove(node);
            }
        }
        Ok(())
    }

    /// Edits the plan in force and sends the nodes whose rules changed;
    /// what the links were before, for an undo.
    async fn links(&mut self, edit: impl FnOnce(&mut FaultPlan)) -> anyhow::Result<Done> {
        let before = faults::load(self.bus, LOAD_PLAN).await?.plan;
        let mut plan = before.clone();
        edit(&mut plan);
        plan.reseed(self.scenario.seed);
        plan.check()?;
        faults::publish(self.bus, &plan.changes(&before)).await?;
        let mut changed = Vec::new();
        let links: BTreeSet<(String, String)> = plan
            .links()
            .iter()
            .chain(before.links().iter())
            .map(|(f, t, _)| ((*f).to_owned(), (*t).to_owned()))
            .collect();
        for (f, t) in links {
            let was = before.rule(&f, &t);
            if was != plan.rule(&f, &t) {
                changed.push((f, t, was));
            }
        }
        Ok(Done::Links(changed))
    }

    fn pick(&mut self, pick: &Pick, watch: &Watch) -> anyhow::Result<String> {
        match pick {
            Pick::Node(n) => Ok(n.clone()),
            Pick::Leader(g) => watch
                .world
                .lock()
                .leader(g)
                .map(|(n, _)| n)
                .ok_or_else(|| anyhow::anyhow!("the {g} group has no leader now")),
            Pick::Random(role) => {
                let with: Vec<String> = self
                    .lab
                    .nodes
                    .iter()
                    .filter(|n| n.roles.iter().any(|r| r.as_str() == role))
                    .filter(|n| self.nodes.contains(&n.id))
                    .map(|n| n.id.clone())
                    .collect();
                if with.is_empty() {
                    anyhow::bail!("no node of the scenario has the role {role}");
                }
                Ok(with[self.rng.usize(..with.len())].clone())
            }
            Pick::Holder => watch
                .world
                .lock()
                .holder
                .clone()
                .ok_or_else(|| anyhow::anyhow!("no receiver holds the token now")),
        }
    }

    async fn stop_load(&mut self, system: System, tell: &mut impl FnMut(Event)) {
        match system {
            System::Mom => {
                if let Some(load) = &mut self.mom {
                    load.stop().await;
                    let text = format!(
                        "mom load: {} publishes acknowledged, {} failed",
                        load.acked.lock().len(),
                        load.failed.load(std::sync::atomic::Ordering::Relaxed)
                    );
                    tell(Event::Note { t: self.t(), text });
                }
            }
            System::Bookstore => {
                if let Some(load) = &mut self.bookstore {
                    load.stop().await;
                    let report = load.progress.snapshot();
                    let text = format!(
                        "bookstore load: {} buys, {} requests failed",
                        report.buy.ok,
                        report.failed()
                    );
                    tell(Event::Note { t: self.t(), text });
                }
            }
        }
    }

    /// The end: loads stopped, the network healed, every node back and up;
    /// then the checks.
    async fn finish<P: Processes>(
        &mut self,
        watch: &mut Watch,
        procs: &mut P,
        tell: &mut impl FnMut(Event),
    ) -> Vec<CheckResult> {
        tell(Event::Note {
            t: self.t(),
            text: "end of the timeline: stop the loads, heal, bring every node back".to_owned(),
        });
        let rows_before = watch.world.lock().store_rows;
        self.stop_load(System::Mom, tell).await;
        self.stop_load(System::Bookstore, tell).await;
        self.history.close_open();
        if let Err(e) = self.links(FaultPlan::heal).await {
            tell(Event::Note {
                t: self.t(),
                text: format!("could not heal: {e:#}"),
            });
        }
        for node in std::mem::take(&mut self.paused) {
            if let Err(e) = procs.act(&node, Process::Resume).await {
                tell(Event::Note {
                    t: self.t(),
                    text: format!("resume {node}: {e:#}"),
                });
            }
        }
        for node in std::mem::take(&mut self.down) {
            if let Err(e) = procs.act(&node, Process::Restart).await {
                tell(Event::Note {
                    t: self.t(),
                    text: format!("restart {node}: {e:#}"),
                });
            }
        }
        let nodes = self.nodes.clone();
        let all_up = watch
            .until(Duration::from_secs(60), |w| {
                nodes.iter().all(|n| w.up.contains(n)).then_some(())
            })
            .await
            .is_some();
        if !all_up {
            tell(Event::Note {
                t: self.t(),
                text: "not every node came back up within 60 s".to_owned(),
            });
        }
        let mut out = Vec::new();
        for invariant in &self.scenario.checks {
            out.push(match invariant {
                Invariant::MomNoAckedLost => match &self.mom {
                    Some(load) => load.check().await,
                    None => missing(*invariant, "the scenario ran no mom load"),
                },
                Invariant::BookstoreConsistent => self.bookstore_check().await,
                Invariant::IotFlows => {
                    let grew = watch
                        .until(Duration::from_secs(30), |w| {
                            (w.store_rows > rows_before).then_some(w.store_rows)
                        })
                        .await;
                    CheckResult {
                        invariant: *invariant,
                        ok: grew.is_some(),
                        detail: match grew {
                            Some(rows) => {
                                format!("the store went on: {rows_before} -> {rows} rows")
                            }
                            None => format!(
                                "the store stayed at {rows_before} rows for 30 s after the end"
                            ),
                        },
                    }
                }
                Invariant::NoFailedRequests => {
                    let mom = self
                        .mom
                        .as_ref()
                        .map_or(0, |l| l.failed.load(std::sync::atomic::Ordering::Relaxed));
                    let books = self
                        .bookstore
                        .as_ref()
                        .map_or(0, |l| l.progress.snapshot().failed());
                    CheckResult {
                        invariant: *invariant,
                        ok: mom + books == 0,
                        detail: format!(
                            "{mom} mom publishes and {books} bookstore requests failed"
                        ),
                    }
                }
            });
        }
        out
    }

    async fn bookstore_check(&self) -> CheckResult {
        use crate::config::Role;
        use crate::services::bookstore::check::{gather, verify};
        let catalogs = self.lab.nodes_with(Role::Catalog);
        let orders = self.lab.nodes_with(Role::Order);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = String::new();
        // Replicas settle a moment after the last buy: look until they agree.
        while Instant::now() < deadline {
            match gather(self.bus, &catalogs, &orders).await {
                Ok((cats, ords)) => {
                    let findings = verify(&cats, &ords);
                    let bad: Vec<String> = findings
                        .iter()
                        .filter(|f| !f.ok)
                        .map(|f| format!("{}: {}", f.check, f.detail))
                        .collect();
                    if bad.is_empty() {
                        let orders = ords.first().map_or(0, |o| o.orders.len());
                        return CheckResult {
                            invariant: Invariant::BookstoreConsistent,
                            ok: true,
                            detail: format!(
                                "{} catalog and {} order replicas agree; {orders} orders, each with its sale; the ledger balances",
                                cats.len(),
                                ords.len()
                            ),
                        };
                    }
                    last = bad.join("; ");
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        CheckResult {
            invariant: Invariant::BookstoreConsistent,
            ok: false,
            detail: last,
        }
    }
}

fn missing(invariant: Invariant, why: &str) -> CheckResult {
    CheckResult {
        invariant,
        ok: false,
        detail: why.to_owned(),
    }
}

/// A group member's status, for tests of the world.
#[cfg(test)]
fn member(group: &str, role: RaftRole, term: u64) -> RaftTelemetry {
    use crate::replica::shell::GroupStatus;
    RaftTelemetry {
        group: group.to_owned(),
        status: GroupStatus {
            role,
            term,
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::spec::Scenario;

    #[test]
    fn repeated_steps_and_their_undos_expand_in_time_order() {
        let s = Scenario::parse(
            "t.toml",
            r#"
name = "t"
length = "20s"
[[step]]
at = "2s"
every = "5s"
until = "15s"
do = "isolate"
node = "leader:mom"
undo_after = "3s"
[[step]]
at = "7s"
do = "heal"
"#,
        )
        .unwrap();
        let t: Vec<(u64, usize, u32, bool)> = timeline(&s)
            .iter()
            .map(|d| (d.at.as_secs(), d.step, d.round, d.undo))
            .collect();
        assert_eq!(
            t,
            vec![
                (2, 0, 0, false),
                (5, 0, 0, true),
                (7, 0, 1, false),
                (7, 1, 0, false),
                (10, 0, 1, true),
                (12, 0, 2, false),
                (15, 0, 2, true),
            ]
        );
    }

    #[test]
    fn an_undo_past_the_end_is_left_to_the_end() {
        let s = Scenario::parse(
            "t.toml",
            "name = \"t\"\nlength = \"10s\"\n[[step]]\nat = \"8s\"\ndo = \"pause\"\nnode = \"a\"\nundo_after = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(timeline(&s).len(), 1);
    }

    #[test]
    fn the_leader_is_the_newest_term_s() {
        let mut w = World::default();
        w.raft
            .insert("a".into(), member("mom", RaftRole::Leader, 2));
        w.raft
            .insert("b".into(), member("mom", RaftRole::Leader, 3));
        w.raft
            .insert("c".into(), member("mom", RaftRole::Follower, 3));
        w.raft
            .insert("d".into(), member("catalog", RaftRole::Leader, 9));
        assert_eq!(w.leader("mom"), Some(("b".into(), 3)));
        assert_eq!(w.leader("order"), None);
    }
}
