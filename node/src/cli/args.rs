//! The command line's arguments: what each command takes, with clap
//! checking the ranges (a bad value gets clap's message and usage).

use std::net::SocketAddr;
use std::ops::RangeBounds;
use std::path::PathBuf;

use anyhow::Context;
use clap::builder::RangedU64ValueParser;
use clap::{Parser, Subcommand};

use distlab_node::config::{BrokerAddr, LabConfig, default_data_dir};
use distlab_node::credentials::Credentials;
use distlab_node::services::mom::model::Kind;

/// A count within `range` (clap refuses others with the range in its message).
pub(crate) fn count(range: impl RangeBounds<u64>) -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(range)
}

/// A whole number of at least 1.
pub(crate) fn positive() -> RangedU64ValueParser<u64> {
    RangedU64ValueParser::new().range(1..)
}

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
        /// The bus credentials file (default: $DISTLAB_BUS_PASSWORD, else
        /// $DISTLAB_CREDENTIALS, else bus-credentials in the data dir).
        #[arg(long)]
        credentials: Option<PathBuf>,
    },
    /// Run the MQTT broker headless, for labs that span machines. Every
    /// client must present the lab's credentials.
    Broker {
        /// Address to listen on; use 0.0.0.0:1883 to accept other machines.
        #[arg(long, default_value = "127.0.0.1:1883")]
        listen: SocketAddr,
        /// The credentials clients must present (default: as `serve` finds
        /// them, else made now in the default data dir's bus-credentials).
        #[arg(long)]
        credentials: Option<PathBuf>,
        /// Where it keeps its TLS certificate and makes the credentials
        /// (default: ~/.local/share/distlab).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        tls: TlsArgs,
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
    /// Network faults between nodes: partitions, delay, loss, duplicates.
    /// Each node applies them to what it receives; they stay across a
    /// node's restart until `heal`.
    Fault {
        #[command(flatten)]
        target: ClusterArgs,
        /// Seed of the random choices (loss, jitter, duplicates).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[command(subcommand)]
        op: FaultCommand,
    },
    /// Scenarios (config/scenarios/*.toml): a timeline of faults, loads,
    /// waits and checks.
    Scenario {
        #[command(subcommand)]
        op: ScenarioCommand,
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
    pub(super) broker: Option<BrokerAddr>,
    /// Lab config file, for the cluster name and broker.
    #[arg(long, short)]
    pub(super) config: Option<PathBuf>,
    /// Cluster name (default: the config's, else `lab`).
    #[arg(long)]
    pub(super) cluster: Option<String>,
    /// The bus credentials file (default: $DISTLAB_BUS_PASSWORD, else
    /// $DISTLAB_CREDENTIALS, else bus-credentials in the data dir).
    #[arg(long)]
    pub(super) credentials: Option<PathBuf>,
}

impl ClusterArgs {
    /// The broker and the (checked) cluster name.
    pub(super) fn resolve(self) -> anyhow::Result<(BrokerAddr, String)> {
        self.resolve_with_config().map(|(b, c, _)| (b, c))
    }

    /// The broker, the cluster name and the lab config.
    pub(super) fn resolve_with_config(self) -> anyhow::Result<(BrokerAddr, String, LabConfig)> {
        let config = super::load_config(self.config.as_ref())?;
        let data_dir = config.lab.data_dir.clone().unwrap_or_else(default_data_dir);
        let credentials = Credentials::resolve(self.credentials.as_deref(), &data_dir)?;
        let broker = self
            .broker
            .unwrap_or_else(|| config.broker())
            .with_credentials(credentials);
        let cluster = self.cluster.unwrap_or_else(|| config.lab.name.clone());
        distlab_node::config::check_name(&cluster).context("--cluster")?;
        Ok((broker, cluster, config))
    }
}

#[derive(Debug, Subcommand)]
pub enum BookstoreCommand {
    /// N clients x R rounds of the seed's loop (search -> lookup -> buy)
    /// through the frontend; prints throughput and latency per operation.
    Load {
        /// Concurrent clients, one connection each (1 to 10000).
        #[arg(long, default_value_t = 8, value_parser = count(1..=10_000))]
        clients: usize,
        /// Rounds per client.
        #[arg(long, default_value_t = 100, value_parser = count(1..))]
        rounds: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The frontend's HOST:PORT (default: the address it announced on
        /// the broker, else the config's `bookstore.http`).
        #[arg(long)]
        addr: Option<SocketAddr>,
    },
    /// Read every catalog and order replica and check the invariants
    /// (stock balances, replicas agree, every order has its sale).
    Check,
}

#[derive(Debug, Subcommand)]
pub enum FaultCommand {
    /// Cut every link between groups, both ways, e.g. `partition a,b '|' c,d`
    /// (replaces the cuts in force; delays and loss stay).
    Partition {
        /// Groups of nodes, split by `|`.
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
        groups: Vec<String>,
    },
    /// Cut one node off from every other node up, both ways.
    Isolate { node: String },
    /// Cut what FROM sends to each of TO, one way (FROM still hears them).
    OneWay {
        from: String,
        #[arg(required = true)]
        to: Vec<String>,
    },
    /// Delay what FROM sends to TO, e.g. `delay a b 100ms±20ms` (or `+-`).
    Delay {
        from: String,
        to: String,
        /// DELAY or DELAY±JITTER; `0ms` clears it.
        delay: String,
        /// The link TO -> FROM too.
        #[arg(long)]
        both_ways: bool,
    },
    /// Lose a fraction of what FROM sends to TO, e.g. `loss a b 10%`.
    Loss {
        from: String,
        to: String,
        fraction: String,
        #[arg(long)]
        both_ways: bool,
    },
    /// Deliver a fraction of what FROM sends to TO twice.
    Duplicate {
        from: String,
        to: String,
        fraction: String,
        #[arg(long)]
        both_ways: bool,
    },
    /// Clear every fault rule.
    Heal,
    /// List the rules in force and what each node's shim did.
    Ls {
        /// How long to listen for the nodes' counts, in ms.
        #[arg(long, default_value_t = 1500)]
        listen_ms: u64,
    },
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per run
pub enum ScenarioCommand {
    /// Run a scenario, printing each step; exits non-zero if a step could
    /// not be done or a check failed.
    Run {
        /// A scenario file, or the name of a shipped one (`scenario ls`).
        file: PathBuf,
        #[command(flatten)]
        target: ClusterArgs,
        /// Start the scenario's nodes here (and a broker of its own unless
        /// --broker is given), and stop them at the end.
        #[arg(long)]
        spawn: bool,
        /// Keep the run's directory (node data and logs) afterwards.
        #[arg(long)]
        keep: bool,
        /// Where the run's history goes, under runs/<time>-<name>/ (default:
        /// the lab's data dir).
        #[arg(long)]
        history: Option<PathBuf>,
    },
    /// Read scenario files and report their mistakes.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List the shipped scenarios and those in a directory (default
    /// config/scenarios).
    Ls { dir: Option<PathBuf> },
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
    pub(super) fn split(self) -> (Kind, String) {
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
    Iot(crate::bench::IotBench),
    /// MOM: publish -> ack and publish -> consume, single node and replicated.
    Mom(crate::bench::mom::MomBench),
    /// Bookstore: cached lookup, search and replicated buy through the frontend.
    Bookstore(crate::bench::bookstore::BookstoreBench),
    /// Lockers: take + free cycles through the users' JSON API, both groups replicated.
    Lockers(crate::bench::lockers::LockersBench),
    /// Map log: puts and gets through the map client (three loggers, one backup).
    Maplog(crate::bench::maplog::MaplogBench),
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    fn parse(args: &str) -> Result<Cli, String> {
        Cli::try_parse_from(std::iter::once("distlab-node").chain(args.split_whitespace()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn ranges_are_checked_by_clap() {
        for bad in [
            "bench mom --size 8",
            "bench mom --nodes 1,9",
            "bench mom --seconds 0",
            "bench bookstore --clients 0",
            "bench iot --batch 1,1001",
            "bookstore load --clients 10001",
            "bookstore load --addr nowhere",
        ] {
            let err = parse(bad)
                .err()
                .unwrap_or_else(|| panic!("`{bad}` was accepted"));
            assert!(err.contains("invalid value"), "{bad}: {err}");
        }
        for good in [
            "bench mom --size 16 --nodes 1,3,7",
            "bench iot --batch 1,1000 --sensors 5",
            "bookstore load --clients 10000 --addr 127.0.0.1:8083",
        ] {
            parse(good).unwrap_or_else(|e| panic!("`{good}`: {e}"));
        }
    }
}

/// The broker's own TLS certificate, instead of the one made in the data
/// dir (a broker beyond loopback always serves TLS).
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// The certificate (PEM; the broker's first, then its chain).
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    pub fn files(&self) -> Option<(&std::path::Path, &std::path::Path)> {
        Some((self.tls_cert.as_deref()?, self.tls_key.as_deref()?))
    }
}
