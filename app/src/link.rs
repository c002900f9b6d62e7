//! The dashboard's own connection to the bus.
//!
//! A small tokio runtime on its own thread subscribes to what the dashboard
//! shows and hands messages to the UI over a bounded channel; the UI drains it
//! in `logic` and is asked to repaint when something arrives. Requests the
//! person fires (queries, attacks on the token) run here too, never on the UI
//! thread; their outcome comes back as [`LinkEvent::Outcome`].

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use distlab_node::bus::{Bus, BusOptions, Incoming};
use distlab_node::config::BrokerAddr;
use distlab_node::envelope::{Topics, now_ms};
use distlab_node::http1::Http1;
use distlab_node::services::bookstore::load::{self, LoadOptions, Progress};
use distlab_node::services::iot::receiver::WriteRequest;
use distlab_node::services::iot::sensor::SensorSim;
use distlab_node::services::iot::token::{Grant, KeyPair, SignedGrant};
use distlab_node::services::mom::model::MomError;
use distlab_node::services::mom::service::{Reply, Request as MomRequest};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub enum LinkEvent {
    Connected(bool),
    Message(Incoming),
    /// The result of a [`LinkCommand`]: a title and the reply (or error).
    Outcome(String, Result<Value, String>),
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
    BookstoreGet { addr: String, path: String },
    /// Run the bookstore load client until done or cancelled.
    BookstoreLoad(LoadJob),
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
        let _ = self.commands.send(command);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
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
                let (bus, tx, notify, broker, cluster) = (bus.clone(), tx.clone(), notify.clone(), broker.clone(), cluster.clone());
                tokio::spawn(async move {
                    let (title, outcome) = execute(&bus, &broker, &cluster, command).await;
                    // A reply the person asked for is worth a short wait for room.
                    let mut event = LinkEvent::Outcome(title, outcome);
                    for _ in 0..250 {
                        match tx.try_send(event) {
                            Err(TrySendError::Full(back)) => {
                                event = back;
                                notify();
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            _ => break,
                        }
                    }
                    notify();
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

fn junk_readings() -> Vec<distlab_node::services::iot::sensor::Reading> {
    let mut sim = SensorSim::new("intruder", now_ms(), (10, 10));
    (0..3).map(|i| sim.next(now_ms() + i)).collect()
}

async fn execute(
    bus: &Bus,
    broker: &BrokerAddr,
    cluster: &str,
    command: LinkCommand,
) -> (String, Result<Value, String>) {
    let outcome = |r: Result<distlab_node::envelope::Envelope, distlab_node::bus::RpcError>| {
        r.map(|e| e.body.to_value()).map_err(|e| e.to_string())
    };
    match command {
        LinkCommand::QueryStore { store, n } => (
            format!("{store}: get_measurements {n}"),
            outcome(
                bus.request("store", &store, "query", json!({ "n": n }), RPC_DEADLINE)
                    .await,
            ),
        ),
        LinkCommand::ForgeToken { store } => {
            let forger = match KeyPair::generate() {
                Ok(k) => k,
                Err(e) => return ("Forged token".into(), Err(e.to_string())),
            };
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
            (
                "Forged token".into(),
                outcome(
                    bus.request("store", &store, "write", json!(request), RPC_DEADLINE)
                        .await,
                ),
            )
        }
        LinkCommand::ReplayToken { store, grant } => {
            // Speak as the grant's holder, as an intruder who copied it would.
            let holder = grant.grant.holder.clone();
            let spoof = Bus::start(BusOptions::new(broker.clone(), &holder, cluster));
            let title = format!(
                "Replayed token of {holder} (epoch {}, seq {})",
                grant.grant.epoch, grant.grant.seq
            );
            if !spoof.wait_connected(RPC_DEADLINE).await {
                spoof.close(Vec::new()).await;
                return (title, Err("cannot reach the broker".into()));
            }
            // The intruder copied the grant but has not the holder's key.
            let request = WriteRequest {
                grant,
                readings: junk_readings(),
                proof: String::new(),
            };
            let result = outcome(
                spoof
                    .request("store", &store, "write", json!(request), RPC_DEADLINE)
                    .await,
            );
            spoof.close(Vec::new()).await;
            (title, result)
        }
        LinkCommand::Mom { node, request } => {
            let title = mom_title(&request);
            let wait = request.wait_ms();
            let deadline = Duration::from_millis(5000 + wait);
            let result = match bus
                .request("mom", &node, "dashboard", &request, deadline)
                .await
            {
                Ok(reply) => match reply.body_as::<Result<Reply, MomError>>() {
                    Ok(Ok(r)) => serde_json::to_value(r).map_err(|e| e.to_string()),
                    Ok(Err(e)) => Err(format!("{} ({})", e, e.status())),
                    Err(e) => Err(format!("unexpected answer: {e}")),
                },
                Err(e) => Err(e.to_string()),
            };
            (title, result)
        }
        LinkCommand::BookstoreGet { addr, path } => {
            let get = async {
                let mut c = Http1::connect(&addr).await?;
                c.request("GET", &path, None, None).await
            };
            match tokio::time::timeout(HTTP_DEADLINE, get).await {
                Err(_) => (
                    format!("{BOOKSTORE}GET {path}"),
                    Err(format!("no reply from {addr} within {HTTP_DEADLINE:?}")),
                ),
                Ok(Err(e)) => (
                    format!("{BOOKSTORE}GET {path}"),
                    Err(format!("cannot reach the frontend at {addr}: {e}")),
                ),
                Ok(Ok((status, body))) => {
                    let title = format!("{BOOKSTORE}GET {path}: HTTP {status}");
                    let value = serde_json::from_str::<Value>(&body).unwrap_or(Value::String(body));
                    if (200..300).contains(&status) {
                        (title, Ok(value))
                    } else {
                        (title, Err(value.to_string()))
                    }
                }
            }
        }
        LinkCommand::BookstoreLoad(job) => {
            let report = load::run(job.opts, job.progress, job.stop).await;
            (LOAD_FINISHED.to_owned(), Ok(Value::String(report.render())))
        }
    }
}

/// How the titles of bookstore outcomes start.
pub const BOOKSTORE: &str = "Bookstore: ";

/// Title of the outcome of a load run (its report as text).
pub const LOAD_FINISHED: &str = "Bookstore: load finished";

/// The title of a MOM request's outcome, e.g. `MOM: publish to queue jobs`.
pub fn mom_title(request: &MomRequest) -> String {
    match request {
        MomRequest::CreateUser => MOM_CREATE_USER.to_owned(),
        MomRequest::Create { kind, name, .. } => format!("MOM: create {kind} {name}"),
        MomRequest::Delete { kind, name, .. } => format!("MOM: delete {kind} {name}"),
        MomRequest::List { .. } => "MOM: list".to_owned(),
        MomRequest::Subscribe { kind, name, .. } => format!("MOM: subscribe to {kind} {name}"),
        MomRequest::Unsubscribe { kind, name, .. } => {
            format!("MOM: unsubscribe from {kind} {name}")
        }
        MomRequest::Publish { kind, name, .. } => format!("MOM: publish to {kind} {name}"),
        MomRequest::PublishBatch {
            kind,
            name,
            messages,
            ..
        } => format!("MOM: publish {} messages to {kind} {name}", messages.len()),
        MomRequest::Consume { kind, name, .. } => format!("MOM: consume from {kind} {name}"),
        MomRequest::ConsumeBatch {
            kind, name, max, ..
        } => {
            format!("MOM: consume up to {max} from {kind} {name}")
        }
        MomRequest::Ack { id, .. } => format!("MOM: ack {id}"),
        MomRequest::AckBatch { ids, .. } => format!("MOM: ack {} messages", ids.len()),
    }
}

/// Title of the outcome that carries a new user's key.
pub const MOM_CREATE_USER: &str = "MOM: create user";
