//! Runs one node: owns its data directory, announces presence, beats, applies
//! fault rules from its control topic, runs the services of its roles, and on
//! shutdown says goodbye before it disconnects.

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::{Bus, BusError, BusOptions};
use crate::config::{BrokerAddr, ConfigError, LabConfig, NodeSpec, Role, default_data_dir};
use crate::envelope::{Envelope, Topics, now_ms};
use crate::presence::{Heartbeat, Presence, PresenceState, VERSION};
use crate::services;
use crate::shim::ShimReport;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "node `{node}` is already running with data directory {path}; stop it first or use another --data-dir"
    )]
    AlreadyRunning { node: String, path: PathBuf },
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("service {role} failed to start: {source}")]
    Service {
        role: Role,
        source: services::StartError,
    },
}

/// What `distlab-node serve` was asked to run.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub config: LabConfig,
    pub node: String,
    /// Overrides the config's broker.
    pub broker: Option<BrokerAddr>,
    /// Overrides the config's data directory.
    pub data_dir: Option<PathBuf>,
}

/// Everything a service needs from the node it runs in.
#[derive(Clone)]
pub struct NodeContext {
    pub bus: Bus,
    pub spec: NodeSpec,
    pub config: Arc<LabConfig>,
    /// `<data dir>/<node id>/`, owned by this node alone.
    pub dir: PathBuf,
    /// Cancelled when the node shuts down.
    pub shutdown: CancellationToken,
}

impl NodeContext {
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// Publishes a state snapshot of one service for the dashboard
    /// (`telemetry/<node>/<service>`, QoS 0: the next one replaces it).
    pub fn telemetry<T: serde::Serialize>(&self, service: &str, snapshot: &T) {
        let topic = self.bus.topics().telemetry(self.id(), service);
        self.bus
            .publish_lossy(&topic, &self.bus.envelope("telemetry", to_value(snapshot)));
    }

    /// Announces retained state of this node (re-sent after every reconnect).
    pub async fn announce<T: serde::Serialize>(
        &self,
        topic: &str,
        kind: &str,
        body: &T,
    ) -> Result<(), BusError> {
        self.bus
            .announce(topic, self.bus.envelope(kind, to_value(body)))
            .await
    }

    /// Calls `snapshot` every `period` and publishes it as telemetry, until shutdown.
    pub fn spawn_telemetry<T, F>(
        &self,
        tasks: &TaskTracker,
        service: &'static str,
        period: Duration,
        snapshot: F,
    ) where
        T: serde::Serialize,
        F: Fn() -> T + Send + 'static,
    {
        let ctx = self.clone();
        tasks.spawn(async move {
            let mut ticker = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = ticker.tick() => ctx.telemetry(service, &snapshot()),
                    _ = ctx.shutdown.cancelled() => {
                        // The final figures, so watchers see where it ended.
                        ctx.telemetry(service, &snapshot());
                        return;
                    }
                }
            }
        });
    }
}

/// An HTTP listener that could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: cannot serve HTTP on {addr}: {source}")]
pub struct BindError {
    /// The config key, e.g. `mom.http`.
    pub setting: &'static str,
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Listens for HTTP on `wanted` (the config's `setting`, named in errors);
/// a port in use falls back to a free one, logged, so a second lab on one
/// machine still starts. Returns the listener and the address it took.
pub async fn bind_http(
    setting: &'static str,
    wanted: SocketAddr,
) -> Result<(tokio::net::TcpListener, SocketAddr), BindError> {
    let err = |addr| {
        move |source| BindError {
            setting,
            addr,
            source,
        }
    };
    let listener = match tokio::net::TcpListener::bind(wanted).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::warn!(%wanted, "{setting}: address in use; taking a free port");
            let any = SocketAddr::new(wanted.ip(), 0);
            tokio::net::TcpListener::bind(any).await.map_err(err(any))?
        }
        Err(e) => return Err(err(wanted)(e)),
    };
    let bound = listener.local_addr().map_err(err(wanted))?;
    Ok((listener, bound))
}

/// Serves `app` on `listener` until the node shuts down (then gracefully),
/// with the front door's limits ([`crate::front_door`]); `what` names the
/// server in the log.
pub fn spawn_http(
    ctx: &NodeContext,
    tasks: &TaskTracker,
    listener: tokio::net::TcpListener,
    app: axum::Router,
    what: &'static str,
) {
    let (stop, conns) = (ctx.shutdown.clone(), tasks.clone());
    let limits = crate::front_door::Limits::here();
    tasks.spawn(crate::front_door::serve(
        listener, app, limits, stop, conns, what,
    ));
}

/// Requests a service answered, and how many of them with an error.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub requests: Arc<std::sync::atomic::AtomicU64>,
    pub failed: Arc<std::sync::atomic::AtomicU64>,
}

impl Counters {
    fn count(&self, failed: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        self.requests.fetch_add(1, Relaxed);
        if failed {
            self.failed.fetch_add(1, Relaxed);
        }
    }

    /// (answered, failed) so far.
    pub fn get(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.requests.load(Relaxed), self.failed.load(Relaxed))
    }
}

/// Envelope kind of a request a group member forwarded to its leader:
/// run it there, never forward it again.
pub const FORWARDED: &str = "forwarded";

/// Serves `rpc/<service>/<this node>`: each request body is parsed as `Q`
/// (a body of another shape is answered `Err(bad(why))`), handled by
/// `handle` in a task of its own (given the envelope too: its kind says
/// whether it was forwarded), and answered with the `Result`; `counters`
/// count them. Stops at shutdown.
pub async fn serve_rpc<Q, T, E, F, Fut>(
    ctx: &NodeContext,
    tasks: &TaskTracker,
    service: &str,
    counters: Counters,
    bad: fn(String) -> E,
    handle: F,
) -> Result<(), BusError>
where
    Q: serde::de::DeserializeOwned + Send + 'static,
    T: serde::Serialize + Send + Sync + 'static,
    E: serde::Serialize + Send + Sync + 'static,
    F: Fn(Q, Envelope) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<T, E>> + Send + 'static,
{
    let mut rpc = ctx
        .bus
        .subscribe(&ctx.bus.topics().rpc(service, ctx.id()))
        .await?;
    let (ctx, inner, what) = (ctx.clone(), tasks.clone(), service.to_owned());
    tasks.spawn(async move {
        loop {
            let m = tokio::select! {
                m = rpc.recv() => m,
                _ = ctx.shutdown.cancelled() => return,
            };
            let Some(m) = m else { return };
            let (ctx, handle, counters, what) =
                (ctx.clone(), handle.clone(), counters.clone(), what.clone());
            inner.spawn(async move {
                let answer = match m.envelope.body_as::<Q>() {
                    Ok(request) => tokio::select! {
                        a = handle(request, m.envelope.clone()) => a,
                        _ = ctx.shutdown.cancelled() => return,
                    },
                    Err(e) => Err(bad(format!("not a {what} request: {e}"))),
                };
                counters.count(answer.is_err());
                if let Err(e) = ctx.bus.reply(&m.envelope, "reply", &answer).await {
                    tracing::warn!(error = %e, service = what, "cannot send a reply");
                }
            });
        }
    });
    Ok(())
}

/// The node's data directory, locked against a second process with the same id.
#[derive(Debug)]
pub struct DataDir {
    pub path: PathBuf,
    _lock: Flock<File>,
}

impl DataDir {
    pub fn open(root: &Path, node: &str) -> Result<DataDir, RuntimeError> {
        let path = root.join(node);
        let err = |source| RuntimeError::DataDir {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&path).map_err(err)?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join("node.lock"))
            .map_err(err)?;
        let mut lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| {
            RuntimeError::AlreadyRunning {
                node: node.to_owned(),
                path: path.clone(),
            }
        })?;
        lock.set_len(0).map_err(err)?;
        // The pid is for people looking at the directory; the lock is the flock.
        if let Err(e) = writeln!(&mut *lock, "{}", std::process::id()) {
            tracing::warn!(error = %e, "cannot write the pid into node.lock");
        }
        Ok(DataDir { path, _lock: lock })
    }
}

/// Runs the node until `shutdown` is cancelled, then leaves cleanly.
pub async fn serve(opts: ServeOptions, shutdown: CancellationToken) -> Result<(), RuntimeError> {
    let spec = opts.config.node(&opts.node)?.clone();
    // Room for the HTTP ports' connection caps (see front_door).
    let open_files = crate::front_door::raise_open_files();
    tracing::debug!(open_files, "open-file limit");
    let config = Arc::new(opts.config);
    let broker = opts.broker.unwrap_or_else(|| config.broker());
    let root = opts
        .data_dir
        .or_else(|| config.lab.data_dir.clone())
        .unwrap_or_else(default_data_dir);
    // No credentials given: the ones the environment or the data dir has.
    let broker = match broker.credentials {
        Some(_) => broker,
        None => match crate::credentials::Credentials::resolve(None, &root) {
            Ok(found) => {
                if found.is_none() {
                    use crate::credentials::{FILE_ENV, FILE_NAME, PASSWORD_ENV};
                    tracing::warn!(
                        "no bus credentials (--credentials, ${PASSWORD_ENV}, ${FILE_ENV} or {}): a Distlab broker will refuse this node",
                        root.join(FILE_NAME).display()
                    );
                }
                broker.with_credentials(found)
            }
            Err(e) => {
                tracing::warn!(error = %e, "bus credentials not usable; connecting without");
                broker
            }
        },
    };
    let dir = DataDir::open(&root, &spec.id)?;
    let heartbeat = Duration::from_millis(config.lab.heartbeat_ms);

    let presence = Presence {
        node: spec.id.clone(),
        state: PresenceState::Up,
        roles: spec.roles.iter().map(|r| r.to_string()).collect(),
        pid: std::process::id(),
        host: hostname(),
        version: VERSION.to_owned(),
        started_ms: now_ms(),
        heartbeat_ms: config.lab.heartbeat_ms,
        reason: None,
    };
    let mut bus_opts = BusOptions::new(broker.clone(), &spec.id, &config.lab.name);
    let will = body_envelope(&spec.id, "presence", &presence.down("lost"));
    let presence_topic = Topics::new(&config.lab.name).presence(&spec.id);
    bus_opts.last_will = Some((presence_topic.clone(), will));
    let bus = Bus::start(bus_opts);
    tracing::info!(
        node = %spec.id,
        roles = ?presence.roles,
        %broker,
        data_dir = %dir.path.display(),
        "node starting"
    );

    let tasks = TaskTracker::new();
    let stop = shutdown.child_token();
    let ctx = NodeContext {
        bus: bus.clone(),
        spec: spec.clone(),
        config: config.clone(),
        dir: dir.path.clone(),
        shutdown: stop.clone(),
    };

    let up = bus.envelope("presence", to_value(&presence));
    bus.announce(&presence_topic, up).await?;
    tasks.spawn(guard_presence(ctx.clone(), presence.clone()));
    tasks.spawn(beat(ctx.clone(), heartbeat));
    tasks.spawn(report_shim(ctx.clone()));
    for role in &spec.roles {
        services::start(*role, ctx.clone(), &tasks)
            .await
            .map_err(|source| RuntimeError::Service {
                role: *role,
                source,
            })?;
    }

    shutdown.cancelled().await;
    tracing::info!(node = %spec.id, "node stopping");
    stop.cancel();
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(3), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not finish within 3 s");
    }
    let goodbye = bus.envelope("presence", to_value(&presence.down("stopped")));
    bus.close(vec![(presence_topic, goodbye)]).await;
    tracing::info!(node = %spec.id, "node stopped");
    Ok(())
}

fn to_value<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).expect("plain data serializes")
}

/// An envelope made before the bus exists (the last will).
fn body_envelope<T: serde::Serialize>(from: &str, kind: &str, body: &T) -> Envelope {
    crate::envelope::EnvelopeFactory::new(from).make(kind, None, body)
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Sends a heartbeat every period while connected.
async fn beat(ctx: NodeContext, period: Duration) {
    let started = Instant::now();
    let topic = ctx.bus.topics().heartbeat(ctx.id());
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = ctx.shutdown.cancelled() => return,
        }
        seq += 1;
        let beat = Heartbeat {
            seq,
            uptime_ms: started.elapsed().as_millis() as u64,
        };
        ctx.bus
            .publish_lossy(&topic, &ctx.bus.envelope("heartbeat", to_value(&beat)));
    }
}

const SHIM_REPORT: Duration = Duration::from_millis(500);

/// Publishes the fault shim's rules, counts and recent events
/// (`telemetry/<node>/shim`) twice a second once it ever had a rule, and once
/// more when it changes.
async fn report_shim(ctx: NodeContext) {
    let mut ticker = tokio::time::interval(SHIM_REPORT);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last = ShimReport::default();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = ctx.shutdown.cancelled() => return,
        }
        let report = ctx.bus.take_shim_report();
        if report != ShimReport::default() || report != last {
            ctx.telemetry("shim", &report);
            last = report;
        }
    }
}

/// Re-asserts our presence if a stale message overwrote it, e.g. the late last
/// will of an earlier incarnation of this node. Another live node with the same
/// id is reported, not fought (two nodes re-announcing would never stop).
async fn guard_presence(ctx: NodeContext, presence: Presence) {
    let topic = ctx.bus.topics().presence(ctx.id());
    let Ok(mut rx) = ctx.bus.subscribe(&topic).await else {
        return;
    };
    let mut warned = false;
    loop {
        let incoming = tokio::select! {
            incoming = rx.recv() => incoming,
            _ = ctx.shutdown.cancelled() => return,
        };
        let Some(incoming) = incoming else { return };
        let theirs = incoming.envelope.body_as::<Presence>().ok();
        match theirs {
            Some(p) if p == presence => {}
            Some(p) if p.state == PresenceState::Up => {
                if !warned {
                    tracing::error!(
                        other_pid = p.pid,
                        other_host = %p.host,
                        "another node runs with the id `{}`; give one of them another id",
                        ctx.id()
                    );
                    warned = true;
                }
            }
            stale => {
                tracing::info!(
                    seen = ?stale.map(|p| (p.state, p.pid)),
                    "presence was overwritten; announcing again"
                );
                let up = ctx.bus.envelope("presence", to_value(&presence));
                if ctx.bus.announce(&topic, up).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Cancels the token on SIGTERM or Ctrl-C; a second one exits at once.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            tracing::error!("cannot listen for SIGTERM");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; stopping (again to exit now)"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received; stopping (again to exit now)"),
        }
        token.cancel();
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::warn!("second signal: exiting without a clean stop");
        std::process::exit(130);
    });
}

#[cfg(test)]
mod tests {
    use super::bind_http;

    #[tokio::test]
    async fn a_taken_http_port_falls_back_to_a_free_one() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let (_listener, bound) = bind_http("test.http", addr).await.unwrap();
        assert_ne!(bound, addr);
        assert_eq!(bound.ip(), addr.ip());
        // An address this machine does not have (TEST-NET-1): a clear error.
        let away: std::net::SocketAddr = "192.0.2.1:8080".parse().unwrap();
        let err = bind_http("test.http", away).await.unwrap_err().to_string();
        assert!(
            err.contains("test.http") && err.contains("192.0.2.1:8080"),
            "{err}"
        );
    }
}
