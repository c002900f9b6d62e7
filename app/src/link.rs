//! The dashboard's own connection to the bus.
//!
//! A small tokio runtime on its own thread subscribes to what the dashboard
//! shows and hands messages to the UI over a bounded channel; the UI drains it
//! in `logic` and is asked to repaint when something arrives. Requests the
//! person fires (queries, attacks on the token) run here too, never on the UI
//! thread; their outcome comes back as [`LinkEvent::Outcome`].

use std::net::SocketAddr;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use distlab_node::bus::{Bus, BusOptions, Incoming, RpcError};
use distlab_node::config::BrokerAddr;
use distlab_node::config::LabConfig;
use distlab_node::envelope::{Envelope, Topics, now_ms};
use distlab_node::scenario::run::Processes;
use distlab_node::scenario::{Process, Scenario};
use distlab_node::services::bookstore::load::{self, LoadOptions, Progress};
use distlab_node::services::iot::keys::KeyPair;
use distlab_node::services::iot::receiver::WriteRequest;
use distlab_node::services::iot::sensor::SensorSim;
use distlab_node::services::iot::token::{Grant, SignedGrant};
use distlab_node::services::lockers::model::LockerError;
use distlab_node::services::lockers::wire::{UsersReply, UsersRequest};
use distlab_node::services::mom::service::Request as MomRequest;
use distlab_node::shim::FaultRules;
use std::sync::Arc;

use crate::supervisor::{Commander, NodeCommand};
use crate::systems::scenarios::{Feed, record};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::outcome::{HttpReply, LinkError, Measurements, MomAsk, Outcome, RushReport, StoreWrite};
use crate::systems::maplog::{LogReport, Logged, classify};

pub enum LinkEvent {
    Connected(bool),
    Message(Incoming),
    /// The answer to a [`LinkCommand`].
    Outcome(Outcome),
}

/// Requests the person fires from the dashboard.
#[derive(Debug, Clone)]
pub enum LinkCommand {
    /// Ask the store for its newest `n` readings.
    QueryStore { store: String, n: u64 },
    /// Write to the store with a grant signed by a key that is not the coordinator's.
    ForgeToken { store: String },
    /// Re-send an old grant under its holder's name, with other data.
    ReplayToken { store: String, grant: SignedGrant },
    /// A MOM request, sent to `node` (a non-primary forwards it).
    Mom { node: String, request: MomRequest },
    /// `GET path` from the bookstore frontend at `addr` (`host:port`).
    BookstoreGet { addr: SocketAddr, path: String },
    /// Run the bookstore load client until done or cancelled.
    BookstoreLoad(LoadJob),
    /// A users request, sent to `node` (a non-leader forwards it).
    Users { node: String, request: UsersRequest },
    /// `users` simulated users (added if missing) each take and free a
    /// locker `rounds` times, racing each other, through `node`.
    LockersRush {
        node: String,
        users: usize,
        rounds: usize,
    },
    /// POST each message to the map log's facade at `addr` (`/polls/`).
    MapLog {
        addr: SocketAddr,
        messages: Vec<String>,
    },
    /// `GET /polls/database` from the facade; the check looks for the first
    /// `expected` messages this app had logged when it was sent.
    MapRead { addr: SocketAddr, expected: usize },
    /// Send these nodes their new fault rules (retained on their control
    /// topics); `what` names the change for the outcome line.
    Faults {
        what: String,
        changes: Vec<(String, FaultRules)>,
    },
    /// Run a scenario; its steps go to the job's feed as they happen.
    Scenario(Box<ScenarioJob>),
}

/// A scenario run handed to the link: process steps go to the supervisor.
#[derive(Clone)]
pub struct ScenarioJob {
    pub file: String,
    pub scenario: Scenario,
    pub config: LabConfig,
    pub commander: Commander,
    /// The history is saved under `<this>/runs/`.
    pub history_root: std::path::PathBuf,
    pub feed: Arc<parking_lot::Mutex<Feed>>,
    pub stop: CancellationToken,
}

impl std::fmt::Debug for ScenarioJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScenarioJob")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// Process steps of a scenario, done by the app's supervisor.
struct SupervisorProcesses(Commander);

impl Processes for SupervisorProcesses {
    async fn act(&mut self, node: &str, op: Process) -> anyhow::Result<()> {
        let command = match op {
            Process::Kill => NodeCommand::Kill,
            Process::Stop => NodeCommand::Stop,
            Process::Pause => NodeCommand::Pause,
            Process::Resume => NodeCommand::Resume,
            Process::Restart => NodeCommand::Restart,
        };
        anyhow::ensure!(
            self.0.command(node, command),
            "the app is closing; {node} was not told"
        );
        Ok(())
    }
}

/// A load run handed to the link: the clients record into `progress`,
/// which the UI reads, and stop when `stop` is cancelled.
#[derive(Clone)]
pub struct LoadJob {
    pub opts: LoadOptions,
    pub progress: Progress,
    pub stop: CancellationToken,
}

impl std::fmt::Debug for LoadJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadJob")
            .field("opts", &self.opts)
            .field("stopped", &self.stop.is_cancelled())
            .finish_non_exhaustive()
    }
}

pub struct Link {
    pub rx: Receiver<LinkEvent>,
    commands: tokio::sync::mpsc::UnboundedSender<LinkCommand>,
    stop: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

const QUEUE: usize = 65_536;
const RPC_DEADLINE: Duration = Duration::from_secs(3);
/// A bookstore request waits at most this (the frontend's own deadline is
/// 10 s with retries).
const HTTP_DEADLINE: Duration = Duration::from_secs(12);

impl Link {
    /// Connects as `dashboard-<pid>`. `notify` is called when events arrive;
    /// `on_signal` when the app gets SIGINT or SIGTERM.
    pub fn start(
        broker: BrokerAddr,
        cluster: &str,
        notify: impl Fn() + Send + Sync + 'static,
        on_signal: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<Link> {
        let (tx, rx) = sync_channel(QUEUE);
        let (commands, command_rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let cluster = cluster.to_owned();
        let token = stop.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("bus-link".to_owned())
            .spawn(move || {
                runtime.block_on(run(
                    broker, cluster, tx, command_rx, notify, on_signal, token,
                ))
            })?;
        Ok(Link {
            rx,
            commands,
            stop,
            thread: Some(thread),
        })
    }

    pub fn send(&self, command: LinkCommand) {
        // Only fails once the link's thread has ended (it logged why).
        if let Err(unsent) = self.commands.send(command) {
            tracing::warn!(command = ?unsent.0, "the bus link has stopped; request not sent");
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::warn!("the bus link's thread panicked");
        }
    }
}

/// What the dashboard subscribes to.
pub fn filters(topics: &Topics) -> Vec<String> {
    vec![
        topics.presence_all(),
        topics.heartbeat_all(),
        format!("{}/telemetry/+/+", topics.prefix()),
        format!("{}/data/sensors/+", topics.prefix()),
        topics.service("iot", "grant"),
        topics.service("iot", "store-http"),
        topics.service("bookstore", "beat/+"),
        topics.service("bookstore", "http/+"),
        topics.control("+"),
        // For the message-flow diagram: node-to-node traffic.
        format!("{}/rpc/+/+", topics.prefix()),
        format!("{}/reply/+", topics.prefix()),
        format!("{}/+/raft/+", topics.prefix()),
    ]
}

async fn run(
    broker: BrokerAddr,
    cluster: String,
    tx: SyncSender<LinkEvent>,
    mut commands: tokio::sync::mpsc::UnboundedReceiver<LinkCommand>,
    notify: impl Fn() + Send + Sync + 'static,
    on_signal: impl FnOnce() + Send + 'static,
    stop: CancellationToken,
) {
    let signals = CancellationToken::new();
    distlab_node::runtime::cancel_on_signals(signals.clone());
    let me = format!("dashboard-{}", std::process::id());
    let bus = Bus::start(BusOptions::new(broker.clone(), &me, &cluster));
    let topics = Topics::new(&cluster);
    let mut merged = match bus.subscribe_all(&filters(&topics)).await {
        Ok(rx) => rx,
        Err(err) => {
            tracing::error!(error = %err, "the dashboard cannot subscribe");
            return;
        }
    };
    let notify = std::sync::Arc::new(notify);
    // One HTTP client (and connection pool) for every frontend call.
    let http = frontend_client();
    let mut connected = false;
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    let mut on_signal = Some(on_signal);
    let mut dropped = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = signals.cancelled(), if on_signal.is_some() => {
                if let Some(f) = on_signal.take() { f() }
            }
            Some(m) = merged.recv() => {
                match tx.try_send(LinkEvent::Message(m)) {
                    Ok(()) => notify(),
                    Err(TrySendError::Full(_)) => {
                        dropped += 1;
                        if dropped.is_power_of_two() {
                            tracing::warn!(dropped, "dashboard is behind; dropping bus messages");
                        }
                    }
                    Err(TrySendError::Disconnected(_)) => break,
                }
            }
            Some(command) = commands.recv() => {
                let (bus, tx, notify, broker, cluster, http) = (bus.clone(), tx.clone(), notify.clone(), broker.clone(), cluster.clone(), http.clone());
                tokio::spawn(async move {
                    let outcome = execute(&bus, &http, &broker, &cluster, command).await;
                    hand_over(&tx, &*notify, outcome).await;
                });
            }
            _ = poll.tick() => {
                let now = bus.is_connected();
                // Only counted as told once it is in the queue; else next tick.
                if now != connected && tx.try_send(LinkEvent::Connected(now)).is_ok() {
                    connected = now;
                    notify();
                }
            }
        }
    }
    bus.close(Vec::new()).await;
}

/// A reply the person asked for is worth a short wait for room (5 s).
async fn hand_over(tx: &SyncSender<LinkEvent>, notify: &(dyn Fn() + Sync), outcome: Outcome) {
    let mut event = LinkEvent::Outcome(outcome);
    for _ in 0..250 {
        match tx.try_send(event) {
            Ok(()) => {
                notify();
                return;
            }
            Err(TrySendError::Full(back)) => {
                event = back;
                notify();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // The window is closing: nobody left to show it to.
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
    if let LinkEvent::Outcome(outcome) = event {
        tracing::warn!(title = %outcome.title(), "the dashboard is behind; a reply was not shown");
    }
}

fn junk_readings() -> Vec<distlab_node::services::iot::sensor::Reading> {
    let mut sim = SensorSim::new("intruder", now_ms(), (10, 10));
    (0..3).map(|i| sim.next(now_ms() + i)).collect()
}

async fn execute(
    bus: &Bus,
    http: &reqwest::Client,
    broker: &BrokerAddr,
    cluster: &str,
    command: LinkCommand,
) -> Outcome {
    match command {
        LinkCommand::QueryStore { store, n } => {
            let reply = bus
                .request("store", &store, "query", json!({ "n": n }), RPC_DEADLINE)
                .await;
            let result = body::<Measurements>(reply).map(|m| m.measurements);
            Outcome::StoreQuery { store, n, result }
        }
        LinkCommand::ForgeToken { store } => Outcome::ForgedToken(forge(bus, &store).await),
        LinkCommand::ReplayToken { store, grant } => {
            let (holder, epoch, seq) = (
                grant.grant.holder.clone(),
                grant.grant.epoch,
                grant.grant.seq,
            );
            let result = replay(broker, cluster, &store, grant).await;
            Outcome::ReplayedToken {
                holder,
                epoch,
                seq,
                result,
            }
        }
        LinkCommand::Mom { node, request } => {
            use distlab_node::services::mom::client::{ClientError, call_on};
            let ask = MomAsk::from(&request);
            // Through the client library: the key stays in the app.
            let result = call_on(bus, &node, request, Duration::from_secs(5))
                .await
                .map_err(|e| match e {
                    ClientError::Mom(e) => LinkError::Mom(e),
                    ClientError::Rpc(e) => LinkError::Rpc(e),
                    ClientError::Unexpected(why) => {
                        LinkError::Unexpected(serde::de::Error::custom(why))
                    }
                });
            Outcome::Mom { ask, result }
        }
        LinkCommand::BookstoreGet { addr, path } => {
            let result = http_get(http, addr, &path, HTTP_DEADLINE).await;
            Outcome::BookstoreGet { path, result }
        }
        LinkCommand::BookstoreLoad(job) => {
            Outcome::LoadFinished(load::run(job.opts, job.progress, job.stop).await)
        }
        LinkCommand::Users { node, request } => {
            let ask = users_ask(&request);
            Outcome::Users {
                ask,
                result: users_call(bus, &node, &request).await,
            }
        }
        LinkCommand::LockersRush {
            node,
            users,
            rounds,
        } => Outcome::Rush(rush(bus, &node, users, rounds).await),
        LinkCommand::MapLog { addr, messages } => Outcome::MapLogged(map_log(addr, messages).await),
        LinkCommand::Faults { what, changes } => {
            let result = distlab_node::faults::publish(bus, &changes)
                .await
                .map(|()| changes.len())
                .map_err(|e| LinkError::Rpc(RpcError::Bus(e)));
            Outcome::Faults { what, result }
        }
        LinkCommand::Scenario(job) => {
            let mut procs = SupervisorProcesses(job.commander.clone());
            let feed = job.feed.clone();
            // A connection of its own: it must see the retained records
            // (presence, fault rules) that this one was sent long ago.
            let me = format!("dashboard-{}-scenario", std::process::id());
            let own = Bus::start(BusOptions::new(broker.clone(), &me, cluster));
            let result = if own.wait_connected(Duration::from_secs(5)).await {
                distlab_node::scenario::run::run(
                    &job.scenario,
                    &job.config,
                    &own,
                    &mut procs,
                    |e| record(&feed, e),
                    job.stop.clone(),
                )
                .await
                .map_err(|e| format!("{e:#}"))
            } else {
                Err(format!("cannot reach the broker at {broker}"))
            };
            own.close(Vec::new()).await;
            if let Ok(report) = &result {
                let text = match report.save(&job.scenario, &job.history_root) {
                    Ok(dir) => format!(
                        "history: {} operations saved in {} (history.jsonl, history.edn)",
                        report.history.len(),
                        dir.display()
                    ),
                    Err(e) => format!("the history could not be saved: {e}"),
                };
                let t = feed.lock().elapsed().unwrap_or_default();
                record(&feed, distlab_node::scenario::run::Event::Note { t, text });
            }
            let passed = result.as_ref().is_ok_and(|r| r.passed());
            job.feed.lock().outcome = Some(result);
            Outcome::Scenario {
                name: job.scenario.name,
                passed,
            }
        }
        LinkCommand::MapRead { addr, expected } => Outcome::MapRead {
            expected,
            result: http_text(http, addr, "/polls/database", HTTP_DEADLINE).await,
        },
    }
}

/// Requests in flight at once in a map log run.
const MAP_LOG_WORKERS: usize = 8;

/// POSTs each message to the facade (`msg=<text>`), a few at a time; a
/// redirect to `/polls/thanks` is an acknowledgement, to `/polls/error` an
/// error. Redirects are read, not followed.
async fn map_log(addr: SocketAddr, messages: Vec<String>) -> LogReport {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let started = std::time::Instant::now();
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client without TLS always builds");
    let sent = messages.len();
    let messages = Arc::new(messages);
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..MAP_LOG_WORKERS.min(sent))
        .map(|_| {
            let (client, messages, next) = (client.clone(), messages.clone(), next.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(msg) = messages.get(i) else { break };
                    answers.push((i, log_one(&client, addr, msg).await));
                }
                answers
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(sent);
    let mut report = LogReport {
        sent,
        ..Default::default()
    };
    for worker in workers {
        match worker.await {
            Ok(a) => answers.extend(a),
            Err(e) => {
                report.first_failure.get_or_insert_with(|| e.to_string());
            }
        }
    }
    answers.sort_by_key(|(i, _)| *i);
    for (i, answer) in &answers {
        match answer {
            Logged::Thanks => report.thanks.push(messages[*i].clone()),
            Logged::Error => {
                report.errors += 1;
                report
                    .first_failure
                    .get_or_insert_with(|| "the facade answered /polls/error".to_owned());
            }
            Logged::Failed(why) => {
                report.failed += 1;
                report.first_failure.get_or_insert_with(|| why.clone());
            }
        }
    }
    // A worker that died took its answers with it.
    report.failed += sent - answers.len();
    report.secs = started.elapsed().as_secs_f64();
    report
}

async fn log_one(client: &reqwest::Client, addr: SocketAddr, msg: &str) -> Logged {
    let response = client
        .post(format!("http://{addr}/polls/"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("msg={}", form_value(msg)))
        .timeout(HTTP_DEADLINE)
        .send()
        .await;
    match response {
        Ok(r) => {
            let location = r
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .map(str::to_owned);
            classify(r.status().as_u16(), location.as_deref())
        }
        Err(e) if e.is_timeout() => {
            Logged::Failed(format!("no reply from {addr} within {HTTP_DEADLINE:?}"))
        }
        Err(e) => Logged::Failed(format!("cannot reach the facade at {addr}: {e}")),
    }
}

/// A value of an `application/x-www-form-urlencoded` body.
fn form_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `GET path` at `addr` as text; a status other than 2xx is an error
/// that shows the body.
async fn http_text(
    client: &reqwest::Client,
    addr: SocketAddr,
    path: &str,
    deadline: Duration,
) -> Result<String, LinkError> {
    let (status, text) = get_raw(client, addr, path, deadline).await?;
    if (200..300).contains(&status) {
        Ok(text)
    } else {
        Err(LinkError::HttpStatus {
            status,
            body: HttpReply::body_of(text),
        })
    }
}

/// `GET path` at `addr`: the status and the body's text.
async fn get_raw(
    client: &reqwest::Client,
    addr: SocketAddr,
    path: &str,
    deadline: Duration,
) -> Result<(u16, String), LinkError> {
    let failed = |source: reqwest::Error| {
        if source.is_timeout() {
            LinkError::HttpTimeout { addr, deadline }
        } else {
            LinkError::HttpUnreachable { addr, source }
        }
    };
    let response = client
        .get(format!("http://{addr}{path}"))
        .timeout(deadline)
        .send()
        .await
        .map_err(failed)?;
    let status = response.status().as_u16();
    Ok((status, response.text().await.map_err(failed)?))
}

/// A users request as its outcome names it (never more than the name).
fn users_ask(request: &UsersRequest) -> String {
    match request {
        UsersRequest::Add { name } => format!("add user {name}"),
        UsersRequest::Delete { name } => format!("delete user {name}"),
        UsersRequest::Take { name, .. } => format!("take a locker for {name}"),
        UsersRequest::Free { name, .. } => format!("free the locker of {name}"),
        UsersRequest::User { name } => format!("look up {name}"),
        UsersRequest::Users => "list users".to_owned(),
    }
}

async fn users_call(
    bus: &Bus,
    node: &str,
    request: &UsersRequest,
) -> Result<UsersReply, LinkError> {
    let wait = match request {
        UsersRequest::Take { wait_ms, .. } | UsersRequest::Free { wait_ms, .. } => *wait_ms,
        _ => 0,
    };
    let deadline = Duration::from_millis(wait + 5000);
    let reply = bus
        .request("users", node, "dashboard", request, deadline)
        .await;
    body::<Result<UsersReply, LockerError>>(reply).and_then(|a| a.map_err(LinkError::Lockers))
}

/// `users` users racing for the lockers: each takes (waiting for the
/// answer), frees what it got, `rounds` times.
async fn rush(bus: &Bus, node: &str, users: usize, rounds: usize) -> RushReport {
    use distlab_node::services::lockers::model::{Done, Op, RequestState};
    let started = std::time::Instant::now();
    let mut report = RushReport {
        users,
        ..Default::default()
    };
    let names: Vec<String> = (0..users).map(|i| format!("rush-{i}")).collect();
    for name in &names {
        let add = UsersRequest::Add { name: name.clone() };
        match users_call(bus, node, &add).await {
            Ok(_) | Err(LinkError::Lockers(LockerError::Exists(_))) => {}
            Err(e) => {
                tracing::warn!(error = %e, "rush: cannot add {name}");
                report.failed += 1;
            }
        }
    }
    let runs: Vec<_> = names
        .into_iter()
        .map(|name| {
            let (bus, node) = (bus.clone(), node.to_owned());
            tokio::spawn(async move {
                let mut r = RushReport::default();
                for _ in 0..rounds {
                    let take = UsersRequest::ask(Op::Take, name.clone(), None, 5000);
                    match users_call(&bus, &node, &take).await {
                        Ok(UsersReply::Request {
                            state:
                                RequestState::Done {
                                    done: Done::Granted { .. },
                                    ..
                                },
                        }) => r.granted += 1,
                        Ok(UsersReply::Request {
                            state:
                                RequestState::Done {
                                    done: Done::NoneFree,
                                    ..
                                },
                        }) => {
                            r.none_free += 1;
                            continue;
                        }
                        _ => {
                            r.failed += 1;
                            continue;
                        }
                    }
                    let free = UsersRequest::ask(Op::Free, name.clone(), None, 5000);
                    match users_call(&bus, &node, &free).await {
                        Ok(UsersReply::Request {
                            state: RequestState::Done { .. },
                        }) => r.freed += 1,
                        _ => r.failed += 1,
                    }
                }
                r
            })
        })
        .collect();
    for run in runs {
        if let Ok(r) = run.await {
            report.granted += r.granted;
            report.none_free += r.none_free;
            report.freed += r.freed;
            report.failed += r.failed;
        } else {
            report.failed += 1;
        }
    }
    report.secs = started.elapsed().as_secs_f64();
    report
}

/// The body of an RPC reply, read as the request's reply type.
fn body<T: DeserializeOwned>(reply: Result<Envelope, RpcError>) -> Result<T, LinkError> {
    reply?.body_as().map_err(LinkError::Unexpected)
}

/// Writes junk to the store with a grant the coordinator never signed.
async fn forge(bus: &Bus, store: &str) -> Result<StoreWrite, LinkError> {
    let forger = KeyPair::generate()?;
    let now = now_ms();
    let grant = forger.sign(Grant {
        holder: bus.node().to_owned(),
        epoch: u64::MAX / 2,
        seq: 1,
        issued_ms: now,
        expires_ms: now + 60_000,
        holder_key: forger.public_hex(),
        ring: Vec::new(),
    });
    let readings = junk_readings();
    let proof = forger.prove(
        &grant.grant,
        distlab_node::services::iot::db::digest(&readings),
    );
    let request = WriteRequest {
        grant,
        readings,
        proof,
    };
    body(
        bus.request("store", store, "write", json!(request), RPC_DEADLINE)
            .await,
    )
}

/// Sends an old grant again, speaking as its holder (as an intruder who
/// copied it would), with other data and without the holder's key.
async fn replay(
    broker: &BrokerAddr,
    cluster: &str,
    store: &str,
    grant: SignedGrant,
) -> Result<StoreWrite, LinkError> {
    let spoof = Bus::start(BusOptions::new(
        broker.clone(),
        &grant.grant.holder,
        cluster,
    ));
    if !spoof.wait_connected(RPC_DEADLINE).await {
        spoof.close(Vec::new()).await;
        return Err(LinkError::NoBroker);
    }
    let request = WriteRequest {
        grant,
        readings: junk_readings(),
        proof: String::new(),
    };
    let reply = spoof
        .request("store", store, "write", json!(request), RPC_DEADLINE)
        .await;
    spoof.close(Vec::new()).await;
    body(reply)
}

/// The client for frontend calls. The frontend is on the lab's own hosts:
/// never through a proxy. Without TLS there is nothing that can fail to set
/// up, so a failure here is a bug.
fn frontend_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client without TLS always builds")
}

/// `GET path` from the frontend at `addr`; a 2xx answer is the reply, any
/// other an error that shows its body.
async fn http_get(
    client: &reqwest::Client,
    addr: SocketAddr,
    path: &str,
    deadline: Duration,
) -> Result<HttpReply, LinkError> {
    let (status, text) = get_raw(client, addr, path, deadline).await?;
    let body = HttpReply::body_of(text);
    if (200..300).contains(&status) {
        Ok(HttpReply { status, body })
    } else {
        Err(LinkError::HttpStatus { status, body })
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    use super::*;

    /// An HTTP server on 127.0.0.1:0 for one request: it reads the request
    /// head, answers `response` (if any) and, when `hold` is given, keeps the
    /// connection open until that is dropped. Returns the address and the
    /// request line it got.
    fn serve_once(
        response: Option<&'static str>,
        hold: Option<mpsc::Receiver<()>>,
    ) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            reader.read_line(&mut first).unwrap();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
            }
            if let Some(response) = response {
                (&stream).write_all(response.as_bytes()).unwrap();
            }
            if let Some(hold) = hold {
                // Returns when the test drops its sender.
                hold.recv().unwrap_err();
            }
            first.trim_end().to_owned()
        });
        (addr, thread)
    }

    const T: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_chunked_json_answer_is_read_whole() {
        let (addr, server) = serve_once(
            Some(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
                 7\r\n{\"item\"\r\n9\r\n: [1, 2]}\r\n0\r\n\r\n",
            ),
            None,
        );
        let reply = http_get(&frontend_client(), addr, "/search?topic=a%20b", T)
            .await
            .unwrap();
        assert_eq!(
            reply,
            HttpReply {
                status: 200,
                body: json!({"item": [1, 2]})
            }
        );
        assert_eq!(server.join().unwrap(), "GET /search?topic=a%20b HTTP/1.1");
    }

    #[tokio::test]
    async fn a_text_answer_is_kept_as_text() {
        let (addr, _server) = serve_once(
            Some("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain"),
            None,
        );
        let reply = http_get(&frontend_client(), addr, "/", T).await.unwrap();
        assert_eq!(reply.body, json!("plain"));
    }

    #[tokio::test]
    async fn a_status_other_than_2xx_is_an_error_with_the_body() {
        let (addr, _server) = serve_once(
            Some(
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
                 Content-Length: 29\r\n\r\n{\"error\": \"no order server\"}\n",
            ),
            None,
        );
        let outcome = Outcome::BookstoreGet {
            path: "/buy?id=1".into(),
            result: http_get(&frontend_client(), addr, "/buy?id=1", T).await,
        };
        assert_eq!(outcome.title(), "Bookstore: GET /buy?id=1: HTTP 503");
        let Outcome::BookstoreGet {
            result: Err(e @ LinkError::HttpStatus { status: 503, .. }),
            ..
        } = &outcome
        else {
            panic!("{outcome:?}");
        };
        assert_eq!(e.to_string(), r#"{"error":"no order server"}"#);
    }

    #[tokio::test]
    async fn a_frontend_that_is_not_there_is_unreachable() {
        let addr = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let e = http_get(&frontend_client(), addr, "/", T)
            .await
            .unwrap_err();
        assert!(matches!(e, LinkError::HttpUnreachable { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("cannot reach the frontend at {addr}: ")),
            "{text}"
        );
        assert!(text.contains("onnection refused"), "{text}");
    }

    #[tokio::test]
    async fn a_frontend_that_never_answers_times_out() {
        let (keep, hold) = mpsc::channel();
        let (addr, server) = serve_once(None, Some(hold));
        let deadline = Duration::from_millis(300);
        let e = http_get(&frontend_client(), addr, "/lookup?id=1", deadline)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("no reply from {addr} within {deadline:?}")
        );
        drop(keep);
        assert_eq!(server.join().unwrap(), "GET /lookup?id=1 HTTP/1.1");
    }

    /// A facade on 127.0.0.1:0 that answers every `POST /polls/` with a
    /// redirect: to the error page for a message ending in `3`, to nowhere
    /// known for one ending in `4`, else to thanks. Returns the address and
    /// the bodies it got.
    fn fake_facade() -> (SocketAddr, mpsc::Receiver<String>) {
        use std::io::Read;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    loop {
                        let mut first = String::new();
                        if reader.read_line(&mut first).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut length = 0;
                        loop {
                            let mut line = String::new();
                            reader.read_line(&mut line).unwrap();
                            if line == "\r\n" {
                                break;
                            }
                            let lower = line.to_ascii_lowercase();
                            if let Some(v) = lower.strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0; length];
                        reader.read_exact(&mut body).unwrap();
                        let body = String::from_utf8(body).unwrap();
                        let to = if body.ends_with('3') {
                            "/polls/error"
                        } else if body.ends_with('4') {
                            "/somewhere"
                        } else {
                            "/polls/thanks"
                        };
                        let response = format!(
                            "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n"
                        );
                        (&stream).write_all(response.as_bytes()).unwrap();
                        let _ = tx.send(format!("{} {body}", first.trim_end()));
                    }
                });
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn a_map_log_run_posts_forms_and_reads_the_redirects() {
        let (addr, bodies) = fake_facade();
        let messages: Vec<String> = (1..=20).map(|i| format!("app-x y-{i}")).collect();
        let report = map_log(addr, messages.clone()).await;
        assert_eq!(report.sent, 20);
        // 3 and 13 go to the error page, 4 and 14 elsewhere.
        let thanked: Vec<String> = messages
            .iter()
            .filter(|m| !m.ends_with('3') && !m.ends_with('4'))
            .cloned()
            .collect();
        assert_eq!(report.thanks, thanked, "in sending order");
        assert_eq!((report.errors, report.failed), (2, 2));
        assert!(report.first_failure.is_some());
        let mut got: Vec<String> = bodies.try_iter().collect();
        got.sort();
        assert_eq!(got.len(), 20);
        assert!(
            got.contains(&"POST /polls/ HTTP/1.1 msg=app-x+y-7".to_owned()),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn a_map_log_run_without_a_facade_fails_each_message() {
        let addr = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let report = map_log(addr, vec!["a".into(), "b".into()]).await;
        assert_eq!((report.thanks.len(), report.failed), (0, 2));
        assert!(
            report
                .first_failure
                .as_deref()
                .unwrap()
                .starts_with("cannot reach the facade"),
            "{report:?}"
        );
    }

    #[test]
    fn form_values_are_encoded() {
        assert_eq!(form_value("app-1a.b_c*"), "app-1a.b_c*");
        assert_eq!(form_value("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
    }

    #[tokio::test]
    async fn the_database_is_read_as_text() {
        let (addr, _server) = serve_once(
            Some("HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n12\nab\ncd"),
            None,
        );
        let text = http_text(&frontend_client(), addr, "/polls/database", T)
            .await
            .unwrap();
        assert_eq!(text, "12\nab\ncd");
        let (addr, _server) = serve_once(
            Some(
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 18\r\n\r\nno logger answered",
            ),
            None,
        );
        let e = http_text(&frontend_client(), addr, "/polls/database", T)
            .await
            .unwrap_err();
        assert!(
            matches!(e, LinkError::HttpStatus { status: 503, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn rpc_bodies_are_read_as_the_reply_type() {
        let f = distlab_node::envelope::EnvelopeFactory::new("store");
        let reply = f.make("reply", None, json!({"inserted": 2, "duplicate": true}));
        assert_eq!(
            body::<StoreWrite>(Ok(reply.clone())).unwrap(),
            StoreWrite {
                duplicate: true,
                inserted: 2
            }
        );
        let e = body::<Measurements>(Ok(reply)).unwrap_err();
        assert!(matches!(e, LinkError::Unexpected(_)), "{e:?}");
        let timeout = RpcError::Timeout {
            service: "store".into(),
            instance: "store".into(),
            deadline: RPC_DEADLINE,
        };
        let e = body::<StoreWrite>(Err(timeout)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no reply from store/store within 3s; is the node up?"
        );
    }
}
