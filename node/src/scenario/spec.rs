//! A scenario file (`config/scenarios/*.toml`): a timeline of faults,
//! loads, waits and checks, read with every mistake reported at its line.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::faults::{parse_delay, parse_fraction};

/// Longest a scenario may run.
pub const MAX_LENGTH: Duration = Duration::from_secs(3600);

/// A scenario, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub about: String,
    /// Seed of every random choice ("a random node of role X", loss).
    pub seed: u64,
    /// The lab's nodes the scenario needs (what `--spawn` starts); empty:
    /// every node of the lab.
    pub nodes: Vec<String>,
    /// When the timeline ends: loads stop, the lab is healed, checks run.
    pub length: Duration,
    pub steps: Vec<Step>,
    pub checks: Vec<Invariant>,
}

/// One entry of the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Line in the file (for messages).
    pub line: usize,
    pub at: Duration,
    /// Repeat every this long, until `until` (or the end).
    pub every: Option<Duration>,
    pub until: Option<Duration>,
    pub action: Action,
    /// Undo the action this long after it (restart, resume, heal).
    pub undo_after: Option<Duration>,
}

/// Which node an action picks, when it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    Node(String),
    /// The leader of a raft group (`mom`, `catalog`, `order`, `users`,
    /// `lockers`), by its members' telemetry.
    Leader(String),
    /// A random node with this role (seeded).
    Random(String),
    /// The IoT receiver that holds the write token now.
    Holder,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    Kill,
    Stop,
    Pause,
    Resume,
    Restart,
}

impl Process {
    pub fn as_str(self) -> &'static str {
        match self {
            Process::Kill => "kill",
            Process::Stop => "stop",
            Process::Pause => "pause",
            Process::Resume => "resume",
            Process::Restart => "restart",
        }
    }

    /// What undoes it.
    pub fn undo(self) -> Option<Process> {
        match self {
            Process::Kill | Process::Stop => Some(Process::Restart),
            Process::Pause => Some(Process::Resume),
            Process::Resume | Process::Restart => None,
        }
    }
}

/// A system a load runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    Mom,
    Bookstore,
}

impl System {
    pub fn as_str(self) -> &'static str {
        match self {
            System::Mom => "mom",
            System::Bookstore => "bookstore",
        }
    }
}

/// What must be true at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invariant {
    /// Every publish the MOM load had acknowledged is consumed afterwards.
    MomNoAckedLost,
    /// Every catalog and order replica agrees, every order has its sale,
    /// the ledger balances (`bookstore check`).
    BookstoreConsistent,
    /// The store committed new readings after the last fault.
    IotFlows,
    /// No load request failed.
    NoFailedRequests,
}

impl Invariant {
    pub fn as_str(self) -> &'static str {
        match self {
            Invariant::MomNoAckedLost => "mom-no-acked-lost",
            Invariant::BookstoreConsistent => "bookstore-consistent",
            Invariant::IotFlows => "iot-flows",
            Invariant::NoFailedRequests => "no-failed-requests",
        }
    }

    const ALL: [Invariant; 4] = [
        Invariant::MomNoAckedLost,
        Invariant::BookstoreConsistent,
        Invariant::IotFlows,
        Invariant::NoFailedRequests,
    ];
}

/// A condition a step waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The group has a leader.
    Leader(String),
    /// The group has a leader other than the one it had when the scenario
    /// last looked (at its last action).
    NewLeader(String),
    /// Every node of the scenario is up.
    AllUp,
    /// The IoT store commits new readings (more rows than when the wait began).
    StoreGrows,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Process(Process, Pick),
    Isolate(Pick),
    Partition(Vec<Vec<String>>),
    /// Cut what the node sends to every other node.
    OneWay(Pick),
    Delay {
        from: Pick,
        to: Pick,
        delay_ms: u64,
        jitter_ms: u64,
    },
    Loss {
        from: Pick,
        to: Pick,
        fraction: f64,
    },
    Heal,
    /// MOM: `rate` publishes a second; bookstore: `clients` of the seed's
    /// loop (search, lookup, buy) back to back.
    LoadStart {
        system: System,
        rate: u32,
        clients: usize,
    },
    LoadStop(System),
    Wait {
        until: Condition,
        within: Duration,
    },
}

impl std::fmt::Display for Pick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pick::Node(n) => write!(f, "{n}"),
            Pick::Leader(g) => write!(f, "the {g} leader"),
            Pick::Random(r) => write!(f, "a random {r} node"),
            Pick::Holder => write!(f, "the token holder"),
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Process(p, pick) => write!(f, "{} {pick}", p.as_str()),
            Action::Isolate(pick) => write!(f, "isolate {pick}"),
            Action::Partition(groups) => {
                let g: Vec<String> = groups.iter().map(|g| g.join(",")).collect();
                write!(f, "partition {}", g.join(" | "))
            }
            Action::OneWay(pick) => write!(f, "cut what {pick} sends"),
            Action::Delay {
                from,
                to,
                delay_ms,
                jitter_ms,
            } => write!(f, "delay {from} -> {to} by {delay_ms}±{jitter_ms} ms"),
            Action::Loss { from, to, fraction } => {
                write!(f, "lose {:.0}% of {from} -> {to}", fraction * 100.0)
            }
            Action::Heal => write!(f, "heal"),
            Action::LoadStart {
                system: System::Mom,
                rate,
                ..
            } => write!(f, "start the mom load ({rate} publishes/s)"),
            Action::LoadStart {
                system: System::Bookstore,
                clients,
                ..
            } => write!(f, "start the bookstore load ({clients} clients)"),
            Action::LoadStop(system) => write!(f, "stop the {} load", system.as_str()),
            Action::Wait { until, within } => {
                let what = match until {
                    Condition::Leader(g) => format!("a {g} leader"),
                    Condition::NewLeader(g) => format!("a new {g} leader"),
                    Condition::AllUp => "every node up".to_owned(),
                    Condition::StoreGrows => "the store to commit readings".to_owned(),
                };
                write!(
                    f,
                    "wait for {what} (at most {})",
                    humantime::format_duration(*within)
                )
            }
        }
    }
}

/// A scenario file that cannot be used, with where.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    At {
        file: String,
        line: usize,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    #[serde(default)]
    about: String,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    nodes: Vec<String>,
    length: Spanned<String>,
    #[serde(default)]
    step: Vec<Spanned<RawStep>>,
    #[serde(default)]
    check: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    at: String,
    every: Option<String>,
    until: Option<String>,
    #[serde(rename = "do")]
    action: String,
    node: Option<String>,
    from: Option<String>,
    to: Option<String>,
    groups: Option<Vec<Vec<String>>>,
    delay: Option<String>,
    loss: Option<String>,
    system: Option<String>,
    rate: Option<u32>,
    clients: Option<usize>,
    #[serde(rename = "for")]
    condition: Option<String>,
    within: Option<String>,
    undo_after: Option<String>,
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Scenario::parse(&path.display().to_string(), &text)
    }

    /// Reads a scenario from `text`; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Scenario, SpecError> {
        let at = |offset: usize, message: String| SpecError::At {
            file: file.to_owned(),
            line: line_of(text, offset),
            message,
        };
        let raw: RawScenario = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            at(offset, e.message().trim().to_owned())
        })?;
        let length = duration(raw.length.get_ref())
            .map_err(|m| at(raw.length.span().start, format!("length: {m}")))?;
        if length.is_zero() || length > MAX_LENGTH {
            return Err(at(
                raw.length.span().start,
                format!(
                    "length must be above 0 and at most {}",
                    humantime::format_duration(MAX_LENGTH)
                ),
            ));
        }
        for node in &raw.nodes {
            crate::config::check_name(node).map_err(|e| at(0, format!("nodes: {node:?}: {e}")))?;
        }
        let mut steps = Vec::new();
        for spanned in &raw.step {
            let offset = spanned.span().start;
            let step = step(spanned.get_ref(), length).map_err(|m| at(offset, m))?;
            steps.push(Step {
                line: line_of(text, offset),
                ..step
            });
        }
        steps.sort_by_key(|s| s.at);
        let mut checks = Vec::new();
        for c in &raw.check {
            let name = c.get_ref().as_str();
            let invariant = Invariant::ALL
                .into_iter()
                .find(|i| i.as_str() == name)
                .ok_or_else(|| {
                    let known: Vec<&str> = Invariant::ALL.iter().map(|i| i.as_str()).collect();
                    at(
                        c.span().start,
                        format!("no check {name:?}; there are {}", known.join(", ")),
                    )
                })?;
            checks.push(invariant);
        }
        Ok(Scenario {
            name: raw.name,
            about: raw.about,
            seed: raw.seed,
            nodes: raw.nodes,
            length,
            steps,
            checks,
        })
    }

    /// Which systems the scenario loads.
    pub fn loads(&self) -> Vec<System> {
        let mut out = Vec::new();
        for s in &self.steps {
            if let Action::LoadStart { system, .. } = s.action
                && !out.contains(&system)
            {
                out.push(system);
            }
        }
        out
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|_| format!("{text:?} is not a duration: write e.g. 500ms, 5s or 1m30s"))
}

/// An optional duration field; its name in the message when it is wrong.
fn optional_duration(field: &str, value: &Option<String>) -> Result<Option<Duration>, String> {
    value
        .as_deref()
        .map(duration)
        .transpose()
        .map_err(|m| format!("{field}: {m}"))
}

fn step(raw: &RawStep, length: Duration) -> Result<Step, String> {
    let at = duration(&raw.at).map_err(|m| format!("at: {m}"))?;
    if at > length {
        return Err(format!(
            "at {} is after the scenario's length ({})",
            raw.at,
            humantime::format_duration(length)
        ));
    }
    let every = optional_duration("every", &raw.every)?;
    if every.is_some_and(|e| e < Duration::from_millis(100)) {
        return Err("every must be 100ms or more".to_owned());
    }
    let until = optional_duration("until", &raw.until)?;
    let undo_after = optional_duration("undo_after", &raw.undo_after)?;
    let pick = |field: &str, value: &Option<String>| -> Result<Pick, String> {
        let v = value
            .as_deref()
            .ok_or_else(|| format!("do = {:?} needs `{field}`", raw.action))?;
        parse_pick(v).map_err(|m| format!("{field}: {m}"))
    };
    let system = || -> Result<System, String> {
        match raw.system.as_deref() {
            Some("mom") => Ok(System::Mom),
            Some("bookstore") => Ok(System::Bookstore),
            Some(other) => Err(format!("system {other:?}: the loads are mom and bookstore")),
            None => Err(format!("do = {:?} needs `system`", raw.action)),
        }
    };
    let action = match raw.action.as_str() {
        "kill" => Action::Process(Process::Kill, pick("node", &raw.node)?),
        "stop" => Action::Process(Process::Stop, pick("node", &raw.node)?),
        "pause" => Action::Process(Process::Pause, pick("node", &raw.node)?),
        "resume" => Action::Process(Process::Resume, pick("node", &raw.node)?),
        "restart" => Action::Process(Process::Restart, pick("node", &raw.node)?),
        "isolate" => Action::Isolate(pick("node", &raw.node)?),
        "one-way" => Action::OneWay(pick("node", &raw.node)?),
        "partition" => {
            let groups = raw
                .groups
                .clone()
                .ok_or("do = \"partition\" needs `groups`, e.g. [[\"a\"], [\"b\", \"c\"]]")?;
            let words: Vec<String> = groups
                .iter()
                .map(|g| g.join(","))
                .collect::<Vec<_>>()
                .join(" | ")
                .split(' ')
                .map(str::to_owned)
                .collect();
            Action::Partition(crate::faults::parse_groups(&words).map_err(|e| e.to_string())?)
        }
        "delay" => {
            let text = raw.delay.as_deref().ok_or("do = \"delay\" needs `delay`")?;
            let (delay_ms, jitter_ms) = parse_delay(text).map_err(|e| e.to_string())?;
            Action::Delay {
                from: pick("from", &raw.from)?,
                to: pick("to", &raw.to)?,
                delay_ms,
                jitter_ms,
            }
        }
        "loss" => {
            let text = raw.loss.as_deref().ok_or("do = \"loss\" needs `loss`")?;
            Action::Loss {
                from: pick("from", &raw.from)?,
                to: pick("to", &raw.to)?,
                fraction: parse_fraction(text).map_err(|e| e.to_string())?,
            }
        }
        "heal" => Action::Heal,
        "load" => {
            let rate = raw.rate.unwrap_or(20);
            if !(1..=1000).contains(&rate) {
                return Err(format!("rate {rate}: from 1 to 1000 requests a second"));
            }
            let clients = raw.clients.unwrap_or(2);
            if !(1..=64).contains(&clients) {
                return Err(format!("clients {clients}: from 1 to 64"));
            }
            Action::LoadStart {
                system: system()?,
                rate,
                clients,
            }
        }
        "stop-load" => Action::LoadStop(system()?),
        "wait" => {
            let text = raw.condition.as_deref().ok_or(
                "do = \"wait\" needs `for`: leader:GROUP, new-leader:GROUP, all-up or store-grows",
            )?;
            let until = match text.split_once(':') {
                Some(("leader", g)) => Condition::Leader(group(g)?),
                Some(("new-leader", g)) => Condition::NewLeader(group(g)?),
                None if text == "all-up" => Condition::AllUp,
                None if text == "store-grows" => Condition::StoreGrows,
                _ => {
                    return Err(format!(
                        "for {text:?}: write leader:GROUP, new-leader:GROUP, all-up or store-grows"
                    ));
                }
            };
            let within =
                optional_duration("within", &raw.within)?.unwrap_or(Duration::from_secs(30));
            Action::Wait { until, within }
        }
        other => {
            return Err(format!(
                "do {other:?}: the actions are kill, stop, pause, resume, restart, isolate, \
                 one-way, partition, delay, loss, heal, load, stop-load and wait"
            ));
        }
    };
    let undoable = match &action {
        Action::Process(p, _) => p.undo().is_some(),
        Action::Isolate(_)
        | Action::OneWay(_)
        | Action::Partition(_)
        | Action::Delay { .. }
        | Action::Loss { .. } => true,
        _ => false,
    };
    if undo_after.is_some() && !undoable {
        return Err(format!("do = {:?} has nothing to undo", raw.action));
    }
    if until.is_some() && every.is_none() {
        return Err("until needs every".to_owned());
    }
    if let (Some(e), Some(u)) = (every, undo_after)
        && u >= e
    {
        return Err("undo_after must be shorter than every".to_owned());
    }
    Ok(Step {
        line: 0,
        at,
        every,
        until,
        action,
        undo_after,
    })
}

fn group(name: &str) -> Result<String, String> {
    const GROUPS: [&str; 5] = ["mom", "catalog", "order", "users", "lockers"];
    if GROUPS.contains(&name) {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "group {name:?}: the groups are {}",
            GROUPS.join(", ")
        ))
    }
}

/// `mom-a`, `leader:mom`, `random:receiver`, `holder`.
fn parse_pick(text: &str) -> Result<Pick, String> {
    match text.split_once(':') {
        Some(("leader", g)) => Ok(Pick::Leader(group(g)?)),
        Some(("random", role)) => {
            use serde::de::IntoDeserializer;
            let de: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
                role.into_deserializer();
            crate::config::Role::deserialize(de).map_err(|_| format!("no role {role:?}"))?;
            Ok(Pick::Random(role.to_owned()))
        }
        Some(_) => Err(format!(
            "{text:?}: write a node name, leader:GROUP, random:ROLE or holder"
        )),
        None if text == "holder" => Ok(Pick::Holder),
        None => {
            crate::config::check_name(text).map_err(|e| format!("{text:?}: {e}"))?;
            Ok(Pick::Node(text.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "MOM: isolate the leader under load"
about = "three replicas"
seed = 7
nodes = ["mom-a", "mom-b", "mom-c"]
length = "30s"
check = ["mom-no-acked-lost"]

[[step]]
at = "0s"
do = "load"
system = "mom"
rate = 10

[[step]]
at = "5s"
every = "8s"
until = "25s"
do = "isolate"
node = "leader:mom"
undo_after = "3s"

[[step]]
at = "6s"
do = "wait"
for = "new-leader:mom"
within = "20s"
"#;

    #[test]
    fn a_good_file_reads_into_its_timeline() {
        let s = Scenario::parse("good.toml", GOOD).unwrap();
        assert_eq!(s.name, "MOM: isolate the leader under load");
        assert_eq!((s.seed, s.length), (7, Duration::from_secs(30)));
        assert_eq!(s.steps.len(), 3);
        let iso = &s.steps[1];
        assert_eq!(iso.action, Action::Isolate(Pick::Leader("mom".into())));
        assert_eq!(iso.every, Some(Duration::from_secs(8)));
        assert_eq!(iso.undo_after, Some(Duration::from_secs(3)));
        assert_eq!(iso.line, 15, "the line of its [[step]]");
        assert_eq!(s.checks, vec![Invariant::MomNoAckedLost]);
        assert_eq!(s.loads(), vec![System::Mom]);
        assert_eq!(iso.action.to_string(), "isolate the mom leader");
    }

    fn error(text: &str) -> String {
        Scenario::parse("bad.toml", text).unwrap_err().to_string()
    }

    #[test]
    fn bad_files_get_line_numbered_errors() {
        let cases: [(&str, &str, &str); 9] = [
            ("length = \"30s\"", "bad.toml:1:", "name"),
            (
                "name = \"x\"\nlength = \"soon\"",
                "bad.toml:2:",
                "not a duration",
            ),
            (
                "name = \"x\"\nlength = \"9s\"\n\n[[step]]\nat = \"1s\"\ndo = \"explode\"",
                "bad.toml:4:",
                "do \"explode\"",
            ),
            (
                "name = \"x\"\nlength = \"9s\"\n[[step]]\nat = \"1s\"\ndo = \"kill\"",
                "bad.toml:3:",
                "needs `node`",
            ),
            (
                "name = \"x\"\nlength = \"9s\"\n[[step]]\nat = \"10s\"\ndo = \"heal\"",
                "bad.toml:3:",
                "after the scenario's length",
            ),
            (
                "name = \"x\"\nlength = \"9s\"\n[[step]]\nat = \"1s\"\ndo = \"kill\"\nnode = \"leader:nothing\"",
                "bad.toml:3:",
                "group \"nothing\"",
            ),
            (
                "name = \"x\"\nlength = \"9s\"\n[[step]]\nat = \"1s\"\ndo = \"heal\"\nundo_after = \"1s\"",
                "bad.toml:3:",
                "nothing to undo",
            ),
            (
                "name = \"x\"\nlength = \"9s\"\ncheck = [\"all-good\"]",
                "bad.toml:3:",
                "no check \"all-good\"",
            ),
            (
                "name = \"x\"\nlength = \"9s\"\ncolour = \"red\"",
                "bad.toml:3:",
                "unknown field",
            ),
        ];
        for (text, place, says) in cases {
            let e = error(text);
            assert!(e.starts_with(place) && e.contains(says), "{text:?}: {e}");
        }
    }

    #[test]
    fn partitions_and_links_read_their_values() {
        let s = Scenario::parse(
            "p.toml",
            r#"
name = "p"
length = "10s"
[[step]]
at = "1s"
do = "partition"
groups = [["a"], ["b", "c"]]
[[step]]
at = "2s"
do = "delay"
from = "frontend"
to = "random:catalog"
delay = "200ms±50ms"
"#,
        )
        .unwrap();
        assert_eq!(
            s.steps[0].action,
            Action::Partition(vec![vec!["a".into()], vec!["b".into(), "c".into()]])
        );
        assert_eq!(
            s.steps[1].action,
            Action::Delay {
                from: Pick::Node("frontend".into()),
                to: Pick::Random("catalog".into()),
                delay_ms: 200,
                jitter_ms: 50
            }
        );
    }
}
