//! Lab configuration: which nodes exist and which roles each one runs.
//!
//! The file is TOML, read with serde; unknown keys are rejected so a typo never
//! silently falls back to a default. Errors name the file, the key and the line.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The default lab, the same text as `config/lab.toml` in the repository.
pub const DEFAULT_LAB_TOML: &str = include_str!("../../config/lab.toml");

/// Where nodes find the MQTT broker when neither the command line nor the file says.
pub const DEFAULT_BROKER: &str = "127.0.0.1:1883";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {origin}: {source}")]
    Parse {
        origin: String,
        source: Box<toml::de::Error>,
    },
    #[error("invalid config {origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("no node `{id}` in {origin}; the nodes are: {known}")]
    UnknownNode {
        id: String,
        origin: String,
        known: String,
    },
}

/// A whole lab: cluster settings plus every node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabConfig {
    #[serde(default)]
    pub lab: LabSettings,
    #[serde(default)]
    pub iot: IotSettings,
    #[serde(default)]
    pub mom: MomSettings,
    #[serde(default)]
    pub bookstore: BookstoreSettings,
    #[serde(default)]
    pub lockers: LockersSettings,
    #[serde(default)]
    pub maplog: MaplogSettings,
    #[serde(default, rename = "node")]
    pub nodes: Vec<NodeSpec>,
    /// Where the config came from, for error messages and for child processes.
    #[serde(skip)]
    pub origin: Origin,
}

/// Where a config came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Origin {
    #[default]
    BuiltIn,
    File(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::BuiltIn => f.write_str("(built-in default lab)"),
            Origin::File(path) => write!(f, "{}", path.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LabSettings {
    /// Cluster name; topics live under `distlab/<name>/`.
    pub name: String,
    /// Broker address `HOST:PORT` used when `--broker` is not given.
    pub broker: Option<String>,
    /// Heartbeat period in milliseconds.
    pub heartbeat_ms: u64,
    /// Data directory; `--data-dir` overrides it.
    pub data_dir: Option<PathBuf>,
}

impl Default for LabSettings {
    fn default() -> Self {
        Self {
            name: "lab".to_owned(),
            broker: None,
            heartbeat_ms: 500,
            data_dir: None,
        }
    }
}

/// One node of the lab.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub id: String,
    pub roles: Vec<Role>,
}

/// A service a node can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Answers `echo` requests: the smallest end-to-end check of the RPC path.
    Echo,
    /// IoT: simulates `iot.sensors` sensors, one topic each.
    Sensors,
    /// IoT: buffers its share of the readings; writes them while holding the token.
    Receiver,
    /// IoT: owns the signing key and grants the write token.
    Coordinator,
    /// IoT: SQLite `meas` table behind the token check; HTTP `/get_measurements/<n>`.
    Store,
    /// MOM: users, topics and queues in SQLite; the seed's REST API and `/api/v1`.
    Mom,
    /// MOM: the stable front door on `[mom] http`, stateless; forwards every
    /// request to the MOM's raft leader over the bus and rides over elections.
    MomGateway,
    /// Bookstore: the seed's HTTP API (`/search`, `/lookup`, `/buy`) with a cache.
    Frontend,
    /// Bookstore: books and stock (replicated, SQLite).
    Catalog,
    /// Bookstore: the orders (replicated, SQLite).
    Order,
    /// Lockers: users, each with at most one locker (replicated, SQLite);
    /// the seed's UserService API, `/api/v1` and a web page on `[lockers] http`.
    Users,
    /// Lockers: the lockers, each free or held (replicated, SQLite); the
    /// leader answers the requests on the MOM's queues.
    Lockers,
    /// Map log: a member of the partitioned in-memory map (with backups);
    /// the seed's logger HTTP API (`/database/`).
    Logger,
    /// Map log: the seed's facade (`/polls/...`) on `[maplog] http`.
    Facade,
    /// Map log: a competing consumer of the MOM queue `messages` (the
    /// facade's copy of each message), kept in SQLite; the seed's
    /// `GET /messages/` on `[maplog] messages_http`.
    Messages,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Echo => "echo",
            Role::Sensors => "sensors",
            Role::Receiver => "receiver",
            Role::Coordinator => "coordinator",
            Role::Store => "store",
            Role::Mom => "mom",
            Role::MomGateway => "mom-gateway",
            Role::Frontend => "frontend",
            Role::Catalog => "catalog",
            Role::Order => "order",
            Role::Users => "users",
            Role::Lockers => "lockers",
            Role::Logger => "logger",
            Role::Facade => "facade",
            Role::Messages => "messages",
        }
    }
}

/// How the coordinator hands out the write token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenMode {
    #[default]
    /// The coordinator grants each receiver in turn.
    Central,
    /// The token passes receiver to receiver (each pass signed by the
    /// passer); the coordinator only roots each epoch and watches.
    Ring,
}

impl TokenMode {
    /// The name used in config files: `central` or `ring`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenMode::Central => "central",
            TokenMode::Ring => "ring",
        }
    }
}

/// Settings of the IoT pipeline (`[iot]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IotSettings {
    /// Number of simulated sensors (on each `sensors` node).
    pub sensors: usize,
    /// Each sensor's period is drawn from this range, in ms.
    pub period_ms: [u64; 2],
    /// Readings per message: a sensor publishes every `batch` readings it
    /// takes as one message (1 = each reading as it is taken).
    pub batch: usize,
    /// Seed of the simulation, so runs repeat.
    pub seed: u64,
    /// Readings a receiver buffers at most; more are dropped and counted.
    pub buffer: usize,
    pub mode: TokenMode,
    /// How long a grant is valid, in ms.
    pub lease_ms: u64,
    /// How often the store is granted a cache refresh, in ms.
    pub refresh_ms: u64,
    /// Where the store serves HTTP (port 0 picks a free port).
    pub http: SocketAddr,
}

impl Default for IotSettings {
    fn default() -> Self {
        Self {
            sensors: 8,
            period_ms: [10, 100],
            batch: 1,
            seed: 1,
            buffer: 100,
            mode: TokenMode::Central,
            lease_ms: 1000,
            refresh_ms: 5000,
            http: SocketAddr::from(([127, 0, 0, 1], 8081)),
        }
    }
}

/// Settings of the MOM (`[mom]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MomSettings {
    /// Where the `mom` node serves HTTP (port 0 picks a free port).
    pub http: SocketAddr,
    /// Largest message body accepted, in bytes.
    pub max_message: usize,
    /// A consumed message not acked within this time is delivered again, ms.
    pub visibility_ms: u64,
    /// Longest wait a blocking consume may ask for, ms.
    pub max_wait_ms: u64,
}

impl Default for MomSettings {
    fn default() -> Self {
        Self {
            http: SocketAddr::from(([127, 0, 0, 1], 8082)),
            max_message: 256 * 1024,
            visibility_ms: 30_000,
            max_wait_ms: 30_000,
        }
    }
}

/// Settings of the bookstore (`[bookstore]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BookstoreSettings {
    /// Where the `frontend` serves the seed's API (port 0 picks a free port).
    pub http: SocketAddr,
    /// Copies added when a sale takes a book's last copy.
    pub restock: u32,
    /// How often catalog and order servers send a heartbeat to frontends, ms.
    pub heartbeat_ms: u64,
    /// A replica silent this long is down for the frontend, ms.
    pub timeout_ms: u64,
    /// Whether the frontend caches search and lookup answers.
    pub cache: bool,
    /// How long a frontend request (with its retries) may take at most, ms.
    pub deadline_ms: u64,
}

impl Default for BookstoreSettings {
    fn default() -> Self {
        Self {
            http: SocketAddr::from(([127, 0, 0, 1], 8083)),
            restock: 10,
            heartbeat_ms: 250,
            timeout_ms: 1000,
            cache: true,
            deadline_ms: 10_000,
        }
    }
}

/// Settings of the lockers (`[lockers]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LockersSettings {
    /// Where the `users` nodes serve HTTP: the first of them here, the
    /// others (and this one when it is taken) on a free port.
    pub http: SocketAddr,
    /// How many lockers there are (numbered from 1).
    pub count: u32,
    /// Requests that may wait for the lockers at once (with the MOM down
    /// they pile up); more are refused with a clear error.
    pub max_waiting: u64,
    /// A request sent to the MOM and not answered by then is sent again
    /// (idempotent: the lockers answer it once), ms.
    pub resend_ms: u64,
    /// How long the JSON API's take or free waits for the answer before it
    /// says "pending" (202), ms.
    pub wait_ms: u64,
}

impl Default for LockersSettings {
    fn default() -> Self {
        Self {
            http: SocketAddr::from(([127, 0, 0, 1], 8084)),
            count: 20,
            max_waiting: 1000,
            resend_ms: 3000,
            wait_ms: 5000,
        }
    }
}

/// The longest a consume may wait for a message, ms (the ceiling of
/// `[mom] max_wait_ms`).
pub const MAX_WAIT_MS: u64 = 300_000;

/// Settings of the map log (`[maplog]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaplogSettings {
    /// The facade's HTTP (a free port if taken).
    pub http: SocketAddr,
    /// The first logger's HTTP; the others (and it, if taken) on a free port.
    pub logger_http: SocketAddr,
    /// The first messages node's HTTP; the others (and it, if taken) on a
    /// free port.
    pub messages_http: SocketAddr,
    /// Partitions of the map (Hazelcast's default: 271).
    pub partitions: u32,
    /// Synchronous backups of each partition.
    pub backup_count: usize,
    /// How long the facade and the map client keep trying one operation, ms.
    pub deadline_ms: u64,
}

impl Default for MaplogSettings {
    fn default() -> Self {
        Self {
            http: SocketAddr::from(([127, 0, 0, 1], 8085)),
            logger_http: SocketAddr::from(([127, 0, 0, 1], 7001)),
            messages_http: SocketAddr::from(([127, 0, 0, 1], 5001)),
            partitions: 271,
            backup_count: 1,
            deadline_ms: 5000,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl LabConfig {
    /// The built-in default lab.
    pub fn default_lab() -> Self {
        Self::parse(DEFAULT_LAB_TOML, Origin::BuiltIn).expect("the built-in lab config is valid")
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, Origin::File(path.to_owned()))
    }

    /// Parses and validates config text.
    pub fn parse(text: &str, origin: Origin) -> Result<Self, ConfigError> {
        let mut config: LabConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            origin: origin.to_string(),
            source: Box::new(source),
        })?;
        config.origin = origin;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            origin: self.origin.to_string(),
            message,
        };
        check_name(&self.lab.name).map_err(|why| invalid(format!("lab.name: {why}")))?;
        if !(50..=10_000).contains(&self.lab.heartbeat_ms) {
            return Err(invalid(format!(
                "lab.heartbeat_ms = {} is out of range; use 50 to 10000",
                self.lab.heartbeat_ms
            )));
        }
        if let Some(broker) = &self.lab.broker {
            BrokerAddr::from_str(broker).map_err(|why| invalid(format!("lab.broker: {why}")))?;
        }
        // Every number has a range (a value outside it is an error that
        // names the setting), so no arithmetic on a setting can overflow.
        let within = |name: &str, value: u64, range: std::ops::RangeInclusive<u64>| {
            if range.contains(&value) {
                Ok(())
            } else {
                Err(invalid(format!(
                    "{name} = {value} is out of range; use {} to {}",
                    range.start(),
                    range.end()
                )))
            }
        };
        let (iot, mom, books, lockers, maplog) = (
            &self.iot,
            &self.mom,
            &self.bookstore,
            &self.lockers,
            &self.maplog,
        );
        const HOUR_MS: u64 = 3_600_000;
        within("iot.sensors", iot.sensors as u64, 0..=100_000)?;
        within("iot.period_ms[0]", iot.period_ms[0], 1..=HOUR_MS)?;
        within(
            "iot.period_ms[1]",
            iot.period_ms[1],
            iot.period_ms[0]..=HOUR_MS,
        )?;
        within("iot.batch", iot.batch as u64, 1..=1000)?;
        within("iot.buffer", iot.buffer as u64, 1..=10_000_000)?;
        within("iot.lease_ms", iot.lease_ms, 10..=HOUR_MS)?;
        within("iot.refresh_ms", iot.refresh_ms, 100..=24 * HOUR_MS)?;
        within("mom.max_message", mom.max_message as u64, 1..=512 * 1024)?;
        within("mom.visibility_ms", mom.visibility_ms, 10..=24 * HOUR_MS)?;
        within("mom.max_wait_ms", mom.max_wait_ms, 0..=MAX_WAIT_MS)?;
        within("bookstore.restock", books.restock.into(), 1..=1_000_000)?;
        within("bookstore.heartbeat_ms", books.heartbeat_ms, 10..=60_000)?;
        // A replica is declared dead after missing at least two heartbeats.
        within(
            "bookstore.timeout_ms",
            books.timeout_ms,
            2 * books.heartbeat_ms..=600_000,
        )?;
        // A request outlives one failover.
        within(
            "bookstore.deadline_ms",
            books.deadline_ms,
            books.timeout_ms..=600_000,
        )?;
        within("lockers.count", lockers.count.into(), 1..=1000)?;
        within("lockers.max_waiting", lockers.max_waiting, 1..=1_000_000)?;
        within("lockers.resend_ms", lockers.resend_ms, 100..=HOUR_MS)?;
        within("lockers.wait_ms", lockers.wait_ms, 0..=60_000)?;
        within("maplog.partitions", maplog.partitions.into(), 1..=10_000)?;
        within("maplog.backup_count", maplog.backup_count as u64, 0..=6)?;
        within("maplog.deadline_ms", maplog.deadline_ms, 100..=60_000)?;
        let mut seen = HashSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            check_name(&node.id).map_err(|why| invalid(format!("node[{i}].id: {why}")))?;
            if !seen.insert(node.id.as_str()) {
                return Err(invalid(format!("node id `{}` appears twice", node.id)));
            }
            if node.roles.is_empty() {
                return Err(invalid(format!(
                    "node `{}` has no roles; give it at least one, e.g. roles = [\"echo\"]",
                    node.id
                )));
            }
            let mut roles = HashSet::new();
            if let Some(twice) = node.roles.iter().find(|r| !roles.insert(**r)) {
                return Err(invalid(format!(
                    "node `{}` lists role `{twice}` twice; a node runs each role once",
                    node.id
                )));
            }
        }
        Ok(())
    }

    /// The node with this id, or an error listing the known ids.
    pub fn node(&self, id: &str) -> Result<&NodeSpec, ConfigError> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or_else(|| ConfigError::UnknownNode {
                id: id.to_owned(),
                origin: self.origin.to_string(),
                known: self
                    .nodes
                    .iter()
                    .map(|n| n.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Ids of the nodes that run `role`, in file order.
    pub fn nodes_with(&self, role: Role) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.roles.contains(&role))
            .map(|n| n.id.clone())
            .collect()
    }

    /// The broker address from the file, or the default.
    pub fn broker(&self) -> BrokerAddr {
        self.lab
            .broker
            .as_deref()
            .and_then(|b| b.parse().ok())
            .unwrap_or_else(|| {
                DEFAULT_BROKER
                    .parse()
                    .expect("default broker address is valid")
            })
    }
}

/// Why a node id or cluster name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("`{0}` must be 1 to 64 characters long")]
    Length(String),
    #[error("`{0}` may only contain letters, digits, `-` and `_`")]
    Characters(String),
}

/// Node ids and cluster names become MQTT topic levels and directory names.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() || name.len() > 64 {
        return Err(NameError::Length(name.to_owned()));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(NameError::Characters(name.to_owned()));
    }
    Ok(())
}

/// A broker address `HOST:PORT`, and the credentials to present there
/// (printed never: `Display` shows the address only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
    pub credentials: Option<crate::credentials::Credentials>,
}

impl BrokerAddr {
    /// Which credentials a client of this address presents, for messages.
    pub fn login(&self) -> String {
        match &self.credentials {
            Some(c) => match c.broker_fingerprint {
                Some(fp) => format!(
                    "the credentials of user `{}` over TLS, and is its certificate {fp}",
                    c.user
                ),
                None => format!(
                    "the credentials of user `{}` over plain MQTT (a broker that serves TLS \
                     needs its certificate's `broker_fingerprint` in the credentials file)",
                    c.user
                ),
            },
            None => "no credentials (none found: pass --credentials FILE)".to_owned(),
        }
    }

    /// This address with `credentials` to present.
    pub fn with_credentials(self, credentials: Option<crate::credentials::Credentials>) -> Self {
        Self {
            credentials,
            ..self
        }
    }
}

impl FromStr for BrokerAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` is not HOST:PORT (e.g. 127.0.0.1:1883)"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("`{s}` has no host; write HOST:PORT"));
        }
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("`{port}` in `{s}` is not a port number (1-65535)"))?;
        if port == 0 {
            return Err(format!("port 0 in `{s}` cannot be connected to"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            credentials: None,
        })
    }
}

impl fmt::Display for BrokerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The data directory for a desktop user: `$XDG_DATA_HOME/distlab`, else
/// `~/.local/share/distlab`, else `./distlab-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("distlab");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/share/distlab");
    }
    PathBuf::from("distlab-data")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_lab_is_valid() {
        let lab = LabConfig::default_lab();
        assert_eq!(lab.lab.name, "lab");
        assert!(!lab.nodes.is_empty());
        assert_eq!(lab.broker().to_string(), "127.0.0.1:1883");
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text =
            "[lab]\nname = \"x\"\n\n[[node]]\nid = \"a\"\nroles = [\"echo\"]\ncolour = \"red\"\n";
        let err = LabConfig::parse(text, Origin::BuiltIn)
            .unwrap_err()
            .to_string();
        assert!(err.contains("colour"), "{err}");
        assert!(err.contains("line 7"), "{err}");
    }

    #[test]
    fn unknown_role_is_rejected() {
        let text = "[[node]]\nid = \"a\"\nroles = [\"juggler\"]\n";
        let err = LabConfig::parse(text, Origin::BuiltIn)
            .unwrap_err()
            .to_string();
        assert!(err.contains("juggler"), "{err}");
        assert!(err.contains("echo"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected() {
        for (text, needle) in [
            ("[[node]]\nid = \"a/b\"\nroles = [\"echo\"]\n", "node[0].id"),
            ("[[node]]\nid = \"a\"\nroles = []\n", "no roles"),
            (
                "[[node]]\nid = \"a\"\nroles = [\"echo\"]\n[[node]]\nid = \"a\"\nroles = [\"echo\"]\n",
                "twice",
            ),
            ("[lab]\nheartbeat_ms = 1\n", "heartbeat_ms"),
            ("[lab]\nbroker = \"nohost\"\n", "lab.broker"),
            // An HTTP address that is not IP:PORT, named by its key and line.
            ("[mom]\nhttp = \"localhost\"\n", "http = \"localhost\""),
            ("[bookstore]\nhttp = \"1.2.3.4\"\n", "socket address"),
            // Numbers out of range, each named, however large.
            (
                "[mom]\nvisibility_ms = 9223372036854775807\n",
                "mom.visibility_ms = 9223372036854775807 is out of range; use 10 to 86400000",
            ),
            ("[mom]\nmax_wait_ms = 300001\n", "mom.max_wait_ms"),
            ("[iot]\nperiod_ms = [50, 10]\n", "iot.period_ms[1] = 10"),
            ("[iot]\nlease_ms = 18446744073709551615\n", "iot.lease_ms"),
            (
                "[bookstore]\ntimeout_ms = 300\n",
                "bookstore.timeout_ms = 300",
            ),
            ("[bookstore]\ndeadline_ms = 999\n", "bookstore.deadline_ms"),
            ("[lockers]\ncount = 0\n", "lockers.count = 0"),
            ("[maplog]\nbackup_count = 7\n", "maplog.backup_count = 7"),
            (
                "[[node]]\nid = \"m\"\nroles = [\"mom\", \"mom\"]\n",
                "node `m` lists role `mom` twice",
            ),
            (
                "[[node]]\nid = \"e\"\nroles = [\"echo\", \"store\", \"echo\"]\n",
                "role `echo` twice",
            ),
        ] {
            let err = LabConfig::parse(text, Origin::BuiltIn)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn unknown_node_lists_known_ones() {
        let lab = LabConfig::default_lab();
        let err = lab.node("nope").unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("echo-a"), "{err}");
    }

    #[test]
    fn broker_addr_parses_and_prints() {
        let a: BrokerAddr = "localhost:1883".parse().unwrap();
        assert_eq!((a.host.as_str(), a.port), ("localhost", 1883));
        let b: BrokerAddr = "[::1]:1884".parse().unwrap();
        assert_eq!(b.host, "::1");
        assert_eq!(b.to_string(), "[::1]:1884");
        assert!("host:0".parse::<BrokerAddr>().is_err());
        assert!("host:http".parse::<BrokerAddr>().is_err());
    }
}
