//! The `distlab-node` command line. The binary only calls [`main`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use distlab_node::config::{BrokerAddr, DEFAULT_LAB_TOML, LabConfig};
use distlab_node::runtime::{ServeOptions, serve};
use distlab_node::services::mom::client::Client;
use distlab_node::services::mom::model::Kind;

#[derive(Debug, Parser)]
#[command(
    name = "distlab-node",
    version,
    about = "Distlab node: runs node roles, the MQTT broker, and cluster tools"
)]
pub struct Cli {
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one node of a lab with the roles its config gives it.
    Serve {
        /// Lab config file (default: the built-in lab, see `default-config`).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Id of the node to run, as listed in the config.
        #[arg(long)]
        node: String,
        /// MQTT broker HOST:PORT (default: the config's `lab.broker`, else 127.0.0.1:1883).
        #[arg(long)]
        broker: Option<BrokerAddr>,
        /// Directory for node data; the node uses <DIR>/<node id>/.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run the MQTT broker headless, for labs that span machines.
    Broker {
        /// Address to listen on; use 0.0.0.0:1883 to accept other machines.
        #[arg(long, default_value = "127.0.0.1:1883")]
        listen: SocketAddr,
    },
    /// Print the cluster membership and exit.
    Status {
        #[command(flatten)]
        target: ClusterArgs,
        /// How long to listen for heartbeats, in ms.
        #[arg(long, default_value_t = 2000)]
        listen_ms: u64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send one request to a service and print the reply as JSON, e.g.
    /// `distlab-node request store store query '{"n": 5}'`.
    Request {
        #[command(flatten)]
        target: ClusterArgs,
        /// Reply deadline, ms.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
        /// Service, e.g. `echo` or `store`.
        service: String,
        /// Node that runs it.
        instance: String,
        /// Request kind, e.g. `echo` or `query`.
        kind: String,
        /// JSON body (default `{}`).
        body: Option<String>,
    },
    /// Talk to the MOM (topics and queues) over MQTT RPC.
    Mom {
        #[command(flatten)]
        target: ClusterArgs,
        /// The MOM node to ask.
        #[arg(long, default_value = "mom-a")]
        node: String,
        /// Your access key (from `create-user`); or set DISTLAB_MOM_KEY.
        #[arg(long, env = "DISTLAB_MOM_KEY", hide_env_values = true)]
        key: Option<String>,
        #[command(subcommand)]
        op: MomCommand,
    },
    /// The bookstore: the load client and the invariant checks.
    Bookstore {
        #[command(flatten)]
        target: ClusterArgs,
        #[command(subcommand)]
        op: BookstoreCommand,
    },
    /// Print the default lab config (config/lab.toml).
    DefaultConfig,
    /// Measure throughput and print figures.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

/// Which cluster, on which broker, a client command talks to.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// MQTT broker HOST:PORT (default: the config's, else 127.0.0.1:1883).
    #[arg(long)]
    broker: Option<BrokerAddr>,
    /// Lab config file, for the cluster name and broker.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Cluster name (default: the config's, else `lab`).
    #[arg(long)]
    cluster: Option<String>,
}

impl ClusterArgs {
    /// The broker and the (checked) cluster name.
    fn resolve(self) -> anyhow::Result<(BrokerAddr, String)> {
        self.resolve_with_config().map(|(b, c, _)| (b, c))
    }

    /// The broker, the cluster name and the lab config.
    fn resolve_with_config(self) -> anyhow::Result<(BrokerAddr, String, LabConfig)> {
        let config = load_config(self.config.as_ref())?;
        let broker = self.broker.unwrap_or_else(|| config.broker());
        let cluster = self.cluster.unwrap_or_else(|| config.lab.name.clone());
        distlab_node::config::check_name(&cluster)
            .map_err(|e| anyhow::anyhow!("--cluster: {e}"))?;
        Ok((broker, cluster, config))
    }
}

#[derive(Debug, Subcommand)]
pub enum BookstoreCommand {
    /// N clients x R rounds of the seed's loop (search -> lookup -> buy)
    /// through the frontend; prints throughput and latency per operation.
    Load {
        #[arg(long, default_value_t = 8)]
        clients: usize,
        #[arg(long, default_value_t = 100)]
        rounds: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The frontend's HOST:PORT (default: the address it announced on
        /// the broker, else the config's `bookstore.http`).
        #[arg(long)]
        addr: Option<String>,
    },
    /// Read every catalog and order replica and check the invariants
    /// (stock balances, replicas agree, every order has its sale).
    Check,
}

/// A topic or a queue, named on the command line.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    #[arg(long)]
    topic: Option<String>,
    #[arg(long)]
    queue: Option<String>,
}

impl Target {
    fn split(self) -> (Kind, String) {
        match (self.topic, self.queue) {
            (Some(t), _) => (Kind::Topic, t),
            (_, Some(q)) => (Kind::Queue, q),
            (None, None) => unreachable!("clap requires one of --topic/--queue"),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum MomCommand {
    /// Make a user; prints its key.
    CreateUser,
    /// Create a topic or queue (`--topic NAME` or `--queue NAME`).
    Create {
        #[command(flatten)]
        target: Target,
    },
    /// Delete a topic or queue you own.
    Delete {
        #[command(flatten)]
        target: Target,
    },
    /// List topics and queues (everyone's, or `--mine`).
    Ls {
        #[arg(long)]
        mine: bool,
    },
    Subscribe {
        #[command(flatten)]
        target: Target,
    },
    Unsubscribe {
        #[command(flatten)]
        target: Target,
    },
    /// Publish one message, or several as one batch (stored in order, all
    /// or none); returns once durable.
    Publish {
        #[command(flatten)]
        target: Target,
        #[arg(required = true)]
        messages: Vec<String>,
    },
    /// Take messages (waiting up to --wait-ms for the first); prints id,
    /// deliveries and body, one line each.
    Consume {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
        /// Take up to this many at once (1 to 1000).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
        max: u32,
        /// Ack them at once (several in one request).
        #[arg(long)]
        ack: bool,
    },
    /// Acknowledge consumed messages by id (several: one request).
    Ack {
        #[arg(required = true, num_args = 1..=1000)]
        ids: Vec<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// IoT pipeline: sensor publish -> committed row, at increasing sensor counts.
    Iot {
        /// Sensor counts to measure, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10,50,100,200")]
        sensors: Vec<usize>,
        /// Readings per sensor message, comma-separated (1 = one message per reading).
        #[arg(long, value_delimiter = ',', default_value = "1,50")]
        batch: Vec<usize>,
        #[arg(long, default_value_t = 3)]
        receivers: usize,
        /// Every sensor's period, ms (1 ms = 1000 readings/s per sensor).
        #[arg(long, default_value_t = 1)]
        period_ms: u64,
        /// Seconds measured per step.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Receiver buffer size.
        #[arg(long, default_value_t = 20_000)]
        buffer: usize,
    },
    /// MOM: publish -> ack and publish -> consume, single node and replicated.
    Mom {
        /// Seconds per run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Concurrent HTTP connections publishing.
        #[arg(long, default_value_t = 128)]
        clients: usize,
        /// Offered publishes per second for the latency run.
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        /// Message size, bytes.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Consumers in the publish -> consume run.
        #[arg(long, default_value_t = 8)]
        consumers: usize,
        /// Messages per request in the batched publish run, and most
        /// messages per consume (acked in one request) in the e2e run.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Group sizes to measure: 1 = a single node, 3 = a raft group of three.
        #[arg(long, value_delimiter = ',', default_values_t = [1, 3])]
        nodes: Vec<usize>,
        /// Which runs: closed (publish -> ack, one message per request),
        /// open (publish at --rate), batch (--batch per request), e2e
        /// (publish at --rate -> consume + ack).
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = crate::bench::mom::MomRun::ALL)]
        runs: Vec<crate::bench::mom::MomRun>,
    },
    /// Bookstore: cached lookup, search and replicated buy through the frontend.
    Bookstore {
        /// Seconds per run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Concurrent HTTP connections.
        #[arg(long, default_value_t = 32)]
        clients: usize,
    },
}

fn init_logging(verbose: u8, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = match verbose {
        0 => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
        1 => EnvFilter::new("debug,rumqttd=info"),
        _ => EnvFilter::new("trace"),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<LabConfig> {
    Ok(match path {
        Some(path) => LabConfig::load(path)?,
        None => LabConfig::default_lab(),
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A bus client for one command; a clear error when the broker is away.
async fn connect_client(
    broker: &BrokerAddr,
    cluster: &str,
) -> anyhow::Result<distlab_node::bus::Bus> {
    let me = format!("cli-{}", std::process::id());
    let bus = distlab_node::bus::Bus::start(distlab_node::bus::BusOptions::new(
        broker.clone(),
        &me,
        cluster,
    ));
    if !bus.wait_connected(Duration::from_secs(3)).await {
        bus.close(Vec::new()).await;
        anyhow::bail!("cannot reach the MQTT broker at {broker}; is it running?");
    }
    Ok(bus)
}

async fn mom_command(mom: &Client, key: Option<String>, op: MomCommand) -> anyhow::Result<()> {
    let key = || {
        key.clone().ok_or_else(|| {
            anyhow::anyhow!("this needs your key: pass --key KEY or set DISTLAB_MOM_KEY (make one with `mom create-user`)")
        })
    };
    match op {
        MomCommand::CreateUser => println!("{}", mom.create_user().await?),
        MomCommand::Create { target } => {
            let (kind, name) = target.split();
            mom.create(kind, &name, &key()?).await?;
            println!("{kind} {name} created");
        }
        MomCommand::Delete { target } => {
            let (kind, name) = target.split();
            mom.delete(kind, &name, &key()?).await?;
            println!("{kind} {name} deleted");
        }
        MomCommand::Ls { mine } => {
            println!(
                "{:<6} {:<24} {:<18} {:>5} {:>7} {:>7} {:>9}",
                "KIND", "NAME", "OWNER", "SUBS", "READY", "UNACKED", "PUBLISHED"
            );
            for c in mom.list(None, &key()?, mine).await? {
                println!(
                    "{:<6} {:<24} {:<18} {:>5} {:>7} {:>7} {:>9}",
                    c.kind, c.name, c.owner, c.subscribers, c.ready, c.unacked, c.published
                );
            }
        }
        MomCommand::Subscribe { target } => {
            let (kind, name) = target.split();
            let new = mom.subscribe(kind, &name, &key()?).await?;
            println!(
                "subscribed to {kind} {name}{}",
                if new { "" } else { " (already)" }
            );
        }
        MomCommand::Unsubscribe { target } => {
            let (kind, name) = target.split();
            mom.unsubscribe(kind, &name, &key()?).await?;
            println!("unsubscribed from {kind} {name}");
        }
        MomCommand::Publish {
            target,
            mut messages,
        } => {
            let (kind, name) = target.split();
            let ids = if messages.len() == 1 {
                let message = messages.pop().unwrap_or_default();
                vec![mom.publish(kind, &name, &key()?, &message).await?]
            } else {
                mom.publish_batch(kind, &name, &key()?, messages).await?
            };
            let copies: usize = ids.iter().map(Vec::len).sum();
            println!(
                "published {} message{} to {kind} {name}: {copies} cop{}",
                ids.len(),
                if ids.len() == 1 { "" } else { "s" },
                if copies == 1 { "y" } else { "ies" }
            );
        }
        MomCommand::Consume {
            target,
            wait_ms,
            max,
            ack,
        } => {
            let (kind, name) = target.split();
            let key = key()?;
            let got = if max == 1 {
                mom.consume(kind, &name, &key, wait_ms)
                    .await?
                    .into_iter()
                    .collect()
            } else {
                mom.consume_batch(kind, &name, &key, max, wait_ms).await?
            };
            anyhow::ensure!(!got.is_empty(), "no message in {kind} {name}");
            if ack {
                let ids: Vec<u64> = got.iter().map(|d| d.id).collect();
                let acked = match ids.as_slice() {
                    [id] => mom.ack(&key, *id).await.map(|()| ids.clone())?,
                    _ => mom.ack_batch(&key, &ids).await?,
                };
                anyhow::ensure!(
                    acked.len() == ids.len(),
                    "only {} of {} acked (the others came due again first)",
                    acked.len(),
                    ids.len()
                );
            }
            for d in got {
                println!("{}\t{}\t{}", d.id, d.deliveries, d.body);
            }
        }
        MomCommand::Ack { ids } => {
            let key = key()?;
            if let [id] = ids.as_slice() {
                mom.ack(&key, *id).await?;
                println!("acked {id}");
            } else {
                let acked = mom.ack_batch(&key, &ids).await?;
                let listed: Vec<String> = acked.iter().map(u64::to_string).collect();
                println!(
                    "acked {} of {}: {}",
                    acked.len(),
                    ids.len(),
                    listed.join(" ")
                );
                anyhow::ensure!(
                    acked.len() == ids.len(),
                    "the others were not yours to ack (acked already, or delivered again to another)"
                );
            }
        }
    }
    Ok(())
}

/// Entry point of the `distlab-node` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Broker { .. } => "info,rumqttd=warn",
        Command::Serve { .. } => "info,rumqttd=off",
        Command::Status { .. }
        | Command::Request { .. }
        | Command::Mom { .. }
        | Command::Bookstore { .. }
        | Command::DefaultConfig
        | Command::Bench { .. } => "warn,rumqttd=off",
    };
    init_logging(cli.verbose, default_filter);
    let result = run(cli.command);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("distlab-node: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::DefaultConfig => {
            print!("{DEFAULT_LAB_TOML}");
            Ok(())
        }
        Command::Serve {
            config,
            node,
            broker,
            data_dir,
        } => {
            let config = load_config(config.as_ref())?;
            // Fail on an unknown node before touching the network or the disk.
            config.node(&node)?;
            let rt = runtime()?;
            rt.block_on(async {
                let shutdown = CancellationToken::new();
                distlab_node::runtime::cancel_on_signals(shutdown.clone());
                serve(
                    ServeOptions {
                        config,
                        node,
                        broker,
                        data_dir,
                    },
                    shutdown,
                )
                .await
            })?;
            Ok(())
        }
        Command::Broker { listen } => {
            let broker = distlab_node::broker::start(listen)?;
            tracing::info!(addr = %broker.addr, "MQTT broker ready");
            println!("distlab MQTT broker listening on {}", broker.addr);
            let rt = runtime()?;
            rt.block_on(async {
                let stop = CancellationToken::new();
                distlab_node::runtime::cancel_on_signals(stop.clone());
                stop.cancelled().await;
            });
            Ok(())
        }
        Command::Bench {
            what:
                BenchCommand::Mom {
                    seconds,
                    clients,
                    rate,
                    size,
                    consumers,
                    batch,
                    nodes,
                    runs,
                },
        } => {
            anyhow::ensure!(
                seconds >= 1
                    && clients >= 1
                    && rate >= 1
                    && consumers >= 1
                    && (16..=262_144).contains(&size),
                "bench values must be at least 1, --size between 16 and 262144"
            );
            let most = distlab_node::services::mom::service::BATCH_MESSAGES
                .min(distlab_node::services::mom::service::BATCH_BYTES / size);
            anyhow::ensure!(
                (1..=most).contains(&batch),
                "--batch must be between 1 and {most} for {size}-byte messages"
            );
            anyhow::ensure!(
                nodes.iter().all(|n| (1..=7).contains(n)),
                "--nodes are group sizes from 1 to 7"
            );
            runtime()?.block_on(crate::bench::mom::run_mom(crate::bench::mom::MomBench {
                seconds,
                clients,
                rate,
                size,
                consumers,
                batch,
                nodes,
                runs,
            }))
        }
        Command::Bench {
            what: BenchCommand::Bookstore { seconds, clients },
        } => {
            anyhow::ensure!(
                seconds >= 1 && (1..=10_000).contains(&clients),
                "--seconds must be at least 1 and --clients between 1 and 10000"
            );
            runtime()?.block_on(crate::bench::bookstore::run_bookstore(
                crate::bench::bookstore::BookstoreBench { seconds, clients },
            ))
        }
        Command::Bench {
            what:
                BenchCommand::Iot {
                    sensors,
                    batch,
                    receivers,
                    period_ms,
                    seconds,
                    buffer,
                },
        } => {
            anyhow::ensure!(
                receivers >= 1 && period_ms >= 1 && seconds >= 1 && buffer >= 1,
                "bench values must be at least 1"
            );
            anyhow::ensure!(
                batch.iter().all(|b| (1..=1000).contains(b)) && sensors.iter().all(|&n| n >= 1),
                "--batch values must be between 1 and 1000, --sensors at least 1"
            );
            let rt = runtime()?;
            rt.block_on(crate::bench::run_iot(crate::bench::IotBench {
                sensors,
                batch,
                receivers,
                period_ms,
                seconds,
                buffer,
            }))
        }
        Command::Request {
            target,
            timeout_ms,
            service,
            instance,
            kind,
            body,
        } => {
            let (broker, cluster) = target.resolve()?;
            let body: serde_json::Value = match body {
                Some(text) => serde_json::from_str(&text)
                    .with_context(|| format!("the body `{text}` is not JSON"))?,
                None => serde_json::json!({}),
            };
            let rt = runtime()?;
            let reply = rt.block_on(async {
                let me = format!("cli-{}", std::process::id());
                let bus = distlab_node::bus::Bus::start(distlab_node::bus::BusOptions::new(
                    broker.clone(),
                    &me,
                    &cluster,
                ));
                if !bus.wait_connected(Duration::from_secs(3)).await {
                    bus.close(Vec::new()).await;
                    anyhow::bail!("cannot reach the MQTT broker at {broker}; is it running?");
                }
                let reply = bus
                    .request(
                        &service,
                        &instance,
                        &kind,
                        body,
                        Duration::from_millis(timeout_ms),
                    )
                    .await;
                bus.close(Vec::new()).await;
                Ok(reply?)
            })?;
            println!("{}", serde_json::to_string_pretty(&reply.body.to_value())?);
            Ok(())
        }
        Command::Mom {
            target,
            node,
            key,
            op,
        } => {
            let (broker, cluster) = target.resolve()?;
            let rt = runtime()?;
            rt.block_on(async {
                let bus = connect_client(&broker, &cluster).await?;
                let out = mom_command(&Client::new(bus.clone(), &node), key, op).await;
                bus.close(Vec::new()).await;
                out
            })
        }
        Command::Bookstore { target, op } => {
            let (broker, cluster, config) = target.resolve_with_config()?;
            runtime()?.block_on(bookstore_command(broker, cluster, config, op))
        }
        Command::Status {
            target,
            listen_ms,
            json,
        } => {
            let (broker, cluster) = target.resolve()?;
            let rt = runtime()?;
            let rows = rt.block_on(distlab_node::status::collect(
                broker,
                &cluster,
                Duration::from_millis(listen_ms),
            ))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", distlab_node::status::table(&rows));
            }
            Ok(())
        }
    }
}

async fn bookstore_command(
    broker: BrokerAddr,
    cluster: String,
    config: LabConfig,
    op: BookstoreCommand,
) -> anyhow::Result<()> {
    use distlab_node::services::bookstore::{check, frontend::FrontendHttp, load};
    match op {
        BookstoreCommand::Load {
            clients,
            rounds,
            seed,
            addr,
        } => {
            anyhow::ensure!(
                (1..=10_000).contains(&clients) && rounds >= 1,
                "--clients must be between 1 and 10000 and --rounds at least 1"
            );
            let addr = match addr {
                Some(a) => a,
                None => {
                    // The address the frontend announced (it takes a free
                    // port when its own is in use), else the config's.
                    let bus = connect_client(&broker, &cluster).await?;
                    let topic = bus.topics().service("bookstore", "http/+");
                    let mut rx = bus.subscribe(&topic).await?;
                    let announced = tokio::time::timeout(Duration::from_secs(2), rx.recv())
                        .await
                        .ok()
                        .flatten()
                        .and_then(|m| m.envelope.body_as::<FrontendHttp>().ok());
                    bus.close(Vec::new()).await;
                    announced
                        .map(|h| h.addr)
                        .unwrap_or_else(|| config.bookstore.http.clone())
                }
            };
            println!(
                "{clients} clients x {rounds} rounds of search -> lookup -> buy against {addr}"
            );
            let options = load::LoadOptions {
                addr,
                clients,
                rounds,
                seed,
                ..Default::default()
            };
            let stop = CancellationToken::new();
            distlab_node::runtime::cancel_on_signals(stop.clone());
            let report = load::run(options, load::Progress::default(), stop).await;
            print!("{}", report.render());
            anyhow::ensure!(report.failed() == 0, "{} requests failed", report.failed());
            Ok(())
        }
        BookstoreCommand::Check => {
            let bus = connect_client(&broker, &cluster).await?;
            let catalogs = config.nodes_with(distlab_node::config::Role::Catalog);
            let orders = config.nodes_with(distlab_node::config::Role::Order);
            let gathered = check::gather(&bus, &catalogs, &orders).await;
            bus.close(Vec::new()).await;
            let (cats, ords) =
                gathered.map_err(|e| anyhow::anyhow!("cannot read a replica: {e}"))?;
            let findings = check::verify(&cats, &ords);
            for f in &findings {
                println!(
                    "{} {}: {}",
                    if f.ok { "ok  " } else { "FAIL" },
                    f.check,
                    f.detail
                );
            }
            anyhow::ensure!(findings.iter().all(|f| f.ok), "a check failed");
            Ok(())
        }
    }
}
