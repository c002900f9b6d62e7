//! What the dashboard knows of the map log, from the `logger`, `facade`
//! and `messages` nodes' telemetry: each member's view of the partition
//! table (owner and backups per partition), its entries and counters, the
//! facade's and the messages nodes' figures; and what this app logged
//! itself in this session, to check it can all be read back.
//!
//! Telemetry is read leniently: every field has a default, so a field the
//! node does not send (yet) never hides the rest.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;

use distlab_node::envelope::{Envelope, Topics};
use serde::{Deserialize, Serialize};

use super::time::{Rate, STALE_S, TimeBase};

/// Service `maplog` of a logger node: one member of the map (the node's
/// own type, every field defaulted when missing).
pub use distlab_node::services::maplog::member::MemberStats;

/// Service `facade` of the facade node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FacadeStats {
    pub http: String,
    pub logged: u64,
    pub failed: u64,
    pub queued_for_messages: u64,
}

/// Service `messages` of a messages node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MessagesStats {
    pub http: String,
    pub held: u64,
    pub consumed: u64,
}

/// A total sampled over time; a total that goes down (the node restarted)
/// starts the rate afresh.
#[derive(Debug, Default)]
pub struct Counter {
    rate: Rate,
    last: Option<u64>,
}

impl Counter {
    pub fn record(&mut self, t: f64, total: u64) {
        if self.last.is_some_and(|last| total < last) {
            self.rate = Rate::default();
        }
        self.last = Some(total);
        self.rate.record(t, total);
    }

    pub fn per_second(&self) -> f64 {
        self.rate.per_second()
    }
}

/// The partition table as one member reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableView {
    /// The member whose report this is.
    pub from: String,
    pub epoch: u64,
    pub master: String,
    pub members: Vec<String>,
    pub backup_count: usize,
    /// Per partition: owner and backups, as member names (`None` for an
    /// index outside the member list).
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub owner: Option<String>,
    pub backups: Vec<String>,
}

impl TableView {
    fn of(from: &str, s: &MemberStats) -> Self {
        let name = |i: u16| s.members.get(usize::from(i)).cloned();
        let parts = s
            .owners
            .iter()
            .enumerate()
            .map(|(p, &o)| Part {
                owner: name(o),
                backups: s
                    .backups
                    .get(p)
                    .map(|b| b.iter().filter_map(|&i| name(i)).collect())
                    .unwrap_or_default(),
            })
            .collect();
        Self {
            from: from.to_owned(),
            epoch: s.epoch,
            master: s.master.clone(),
            members: s.members.clone(),
            backup_count: s.backup_count,
            parts,
        }
    }

    /// Partitions owned by `member` in this table.
    pub fn owned_by(&self, member: &str) -> usize {
        self.parts
            .iter()
            .filter(|p| p.owner.as_deref() == Some(member))
            .count()
    }

    /// Partitions whose every copy (owner and backups) is on `a` or `b`:
    /// what two members down at once lose.
    pub fn only_on(&self, a: &str, b: &str) -> usize {
        self.parts
            .iter()
            .filter(|p| {
                p.owner.is_some() && p.owner.iter().chain(&p.backups).all(|m| m == a || m == b)
            })
            .count()
    }
}

/// Whether the members agree on one view and have all synced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Migration {
    /// No member reports.
    Unknown,
    Stable {
        epoch: u64,
    },
    Migrating {
        /// The epochs reported (more than one: members disagree).
        epochs: Vec<u64>,
        /// Members not done syncing.
        syncing: Vec<String>,
        in_flight: u64,
    },
}

#[derive(Debug)]
pub struct MaplogModel {
    /// Latest telemetry per node, with when it was sent (s of `time`).
    pub loggers: BTreeMap<String, (f64, MemberStats)>,
    pub facades: BTreeMap<String, (f64, FacadeStats)>,
    pub messages: BTreeMap<String, (f64, MessagesStats)>,
    puts: BTreeMap<String, Counter>,
    gets: BTreeMap<String, Counter>,
    time: TimeBase,
}

impl MaplogModel {
    pub fn new(time: TimeBase) -> Self {
        Self {
            loggers: BTreeMap::new(),
            facades: BTreeMap::new(),
            messages: BTreeMap::new(),
            puts: BTreeMap::new(),
            gets: BTreeMap::new(),
            time,
        }
    }

    /// Feeds one bus message; returns whether it was map log telemetry.
    pub fn observe(&mut self, topics: &Topics, topic: &str, e: &Envelope) -> bool {
        let Some(parts) = super::levels(topics, topic) else {
            return false;
        };
        let t = self.time.seconds(e.sent_ms);
        match parts.as_slice() {
            ["telemetry", node, "maplog"] => {
                let Ok(s) = e.body_as::<MemberStats>() else {
                    return false;
                };
                let node = (*node).to_owned();
                self.puts.entry(node.clone()).or_default().record(t, s.puts);
                self.gets.entry(node.clone()).or_default().record(t, s.gets);
                self.loggers.insert(node, (t, s));
                true
            }
            ["telemetry", node, "facade"] => {
                let Ok(s) = e.body_as::<FacadeStats>() else {
                    return false;
                };
                self.facades.insert((*node).to_owned(), (t, s));
                true
            }
            ["telemetry", node, "messages"] => {
                let Ok(s) = e.body_as::<MessagesStats>() else {
                    return false;
                };
                self.messages.insert((*node).to_owned(), (t, s));
                true
            }
            _ => false,
        }
    }

    /// The table of the member with the highest epoch (of those that have
    /// one); between equal epochs, the latest report.
    pub fn table(&self) -> Option<TableView> {
        self.loggers
            .iter()
            .filter(|(_, (_, s))| !s.owners.is_empty())
            .max_by(|(_, (ta, a)), (_, (tb, b))| a.epoch.cmp(&b.epoch).then(ta.total_cmp(tb)))
            .map(|(n, (_, s))| TableView::of(n, s))
    }

    /// Loggers heard from within [`STALE_S`] of `now`.
    pub fn live_loggers(&self, now: f64) -> Vec<&str> {
        self.loggers
            .iter()
            .filter(|(_, (t, _))| now - t <= STALE_S)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// Stable or migrating, judged on the loggers heard from lately.
    pub fn migration(&self, now: f64) -> Migration {
        let live: Vec<&MemberStats> = self
            .loggers
            .values()
            .filter(|(t, _)| now - t <= STALE_S)
            .map(|(_, s)| s)
            .collect();
        if live.is_empty() {
            return Migration::Unknown;
        }
        let epochs: BTreeSet<u64> = live.iter().map(|s| s.epoch).collect();
        let syncing: Vec<String> = self
            .loggers
            .iter()
            .filter(|(_, (t, s))| now - t <= STALE_S && !s.ready)
            .map(|(n, _)| n.clone())
            .collect();
        let in_flight = live.iter().map(|s| s.migrations_in_flight).sum();
        if epochs.len() == 1 && syncing.is_empty() {
            Migration::Stable {
                epoch: epochs.into_iter().next().unwrap_or_default(),
            }
        } else {
            Migration::Migrating {
                epochs: epochs.into_iter().collect(),
                syncing,
                in_flight,
            }
        }
    }

    /// Puts and gets per second served by `node` as owner.
    pub fn rates(&self, node: &str) -> (f64, f64) {
        let rate = |m: &BTreeMap<String, Counter>| m.get(node).map_or(0.0, Counter::per_second);
        (rate(&self.puts), rate(&self.gets))
    }

    /// Where to send the facade's requests: the address a facade reports
    /// (the latest), else `fallback` (the lab config's).
    pub fn facade_addr(&self, fallback: Option<SocketAddr>) -> Option<SocketAddr> {
        self.facades
            .values()
            .filter_map(|(t, s)| s.http.parse::<SocketAddr>().ok().map(|a| (*t, a)))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, a)| a)
            .or(fallback)
    }
}

/// What one message POSTed to the facade came back as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Logged {
    /// Redirected to `/polls/thanks`: acknowledged.
    Thanks,
    /// Redirected to `/polls/error`: the facade could not log it.
    Error,
    /// Anything else (another status, another place, no answer).
    Failed(String),
}

/// Reads the facade's answer to `POST /polls/` (redirects not followed).
pub fn classify(status: u16, location: Option<&str>) -> Logged {
    let place = location.map(|l| {
        // An absolute Location (`http://host/polls/thanks`) counts too.
        let path = l
            .split_once("://")
            .map_or(l, |(_, rest)| rest.find('/').map_or("/", |i| &rest[i..]));
        path.split(['?', '#'])
            .next()
            .unwrap_or("")
            .trim_end_matches('/')
    });
    match (status, place) {
        (300..=399, Some("/polls/thanks")) => Logged::Thanks,
        (300..=399, Some("/polls/error")) => Logged::Error,
        (300..=399, Some(other)) => Logged::Failed(format!("HTTP {status} to {other}")),
        _ => Logged::Failed(format!("HTTP {status}")),
    }
}

/// What a "log N messages" run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogReport {
    pub sent: usize,
    /// The messages the facade acknowledged (thanks), in sending order.
    pub thanks: Vec<String>,
    /// Redirected to the error page.
    pub errors: usize,
    /// No answer of either kind.
    pub failed: usize,
    /// The first failure, in words.
    pub first_failure: Option<String>,
    pub secs: f64,
}

/// The read-back check: which acknowledged messages are not in the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadCheck {
    /// Acknowledged messages looked for.
    pub expected: usize,
    /// Those not read back, in logging order.
    pub missing: Vec<String>,
    /// Messages read back in all (anyone's).
    pub read: usize,
}

impl ReadCheck {
    pub fn ok(&self) -> bool {
        self.missing.is_empty()
    }
}

/// The messages of `GET /polls/database`: one a line (a JSON list of
/// strings is read too).
pub fn read_lines(body: &str) -> Vec<String> {
    if let Ok(list) = serde_json::from_str::<Vec<String>>(body) {
        return list;
    }
    body.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Compares the acknowledged messages with what was read back.
pub fn compare(expected: &[String], body: &str) -> ReadCheck {
    let read = read_lines(body);
    let have: HashSet<&str> = read.iter().map(String::as_str).collect();
    ReadCheck {
        expected: expected.len(),
        missing: expected
            .iter()
            .filter(|m| !have.contains(m.as_str()))
            .cloned()
            .collect(),
        read: read.len(),
    }
}

/// What this app logged to the map in this run, and the last check.
#[derive(Debug)]
pub struct MapSession {
    /// In every message's text: `app-<session>-<n>`.
    pub session: String,
    next: u64,
    /// Acknowledged messages, in order.
    acked: Vec<String>,
    pub errors: u64,
    pub failed: u64,
    pub last_failure: Option<String>,
    /// A log run is on its way.
    pub logging: bool,
    /// A read-back is on its way.
    pub reading: bool,
    pub last_run: Option<LogReport>,
    pub last_check: Option<Result<ReadCheck, String>>,
}

impl MapSession {
    pub fn new(session: impl Into<String>) -> Self {
        Self {
            session: session.into(),
            next: 1,
            acked: Vec::new(),
            errors: 0,
            failed: 0,
            last_failure: None,
            logging: false,
            reading: false,
            last_run: None,
            last_check: None,
        }
    }

    /// A session named after the time it starts (hex ms).
    pub fn starting_now() -> Self {
        Self::new(format!("{:x}", distlab_node::envelope::now_ms()))
    }

    /// The next `n` messages to log, each new.
    pub fn next_batch(&mut self, n: usize) -> Vec<String> {
        let batch = (0..n as u64)
            .map(|i| format!("app-{}-{}", self.session, self.next + i))
            .collect();
        self.next += n as u64;
        batch
    }

    pub fn acked(&self) -> &[String] {
        &self.acked
    }

    /// A log run ended.
    pub fn logged(&mut self, report: LogReport) {
        self.logging = false;
        self.acked.extend(report.thanks.iter().cloned());
        self.errors += report.errors as u64;
        self.failed += report.failed as u64;
        if report.first_failure.is_some() {
            self.last_failure.clone_from(&report.first_failure);
        }
        self.last_run = Some(report);
    }

    /// A read-back is sent: it checks the first `expected` acknowledged
    /// messages (those acknowledged later may not be in its answer).
    pub fn start_read(&mut self) -> usize {
        self.reading = true;
        self.acked.len()
    }

    /// A read-back came back.
    pub fn read_back(&mut self, expected: usize, body: Result<&str, String>) {
        self.reading = false;
        let upto = expected.min(self.acked.len());
        self.last_check = Some(body.map(|b| compare(&self.acked[..upto], b)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distlab_node::envelope::EnvelopeFactory;
    use serde_json::json;

    fn feed(m: &mut MaplogModel, node: &str, service: &str, at_ms: u64, body: serde_json::Value) {
        let topics = Topics::new("lab");
        let mut e = EnvelopeFactory::new(node).make("telemetry", None, &body);
        e.sent_ms = at_ms;
        assert!(m.observe(&topics, &topics.telemetry(node, service), &e));
    }

    fn members() -> serde_json::Value {
        json!(["logger-1", "logger-2", "logger-3"])
    }

    #[test]
    fn telemetry_with_missing_fields_still_reads() {
        let mut m = MaplogModel::new(TimeBase::at(0));
        feed(&mut m, "logger-1", "maplog", 1000, json!({"epoch": 3}));
        feed(&mut m, "facade", "facade", 1000, json!({}));
        feed(&mut m, "messages-1", "messages", 1000, json!({"held": 4}));
        let (t, s) = &m.loggers["logger-1"];
        assert_eq!(*t, 1.0);
        assert_eq!(s.epoch, 3);
        assert!(s.owners.is_empty() && !s.ready && s.http.is_empty());
        assert_eq!(m.facades["facade"].1, FacadeStats::default());
        assert_eq!(m.messages["messages-1"].1.held, 4);
        // No owners yet: no table.
        assert_eq!(m.table(), None);
        // Unknown fields are ignored; a whole report reads.
        feed(
            &mut m,
            "logger-1",
            "maplog",
            1500,
            json!({"epoch": 4, "members": members(), "owners": [0, 2], "backups": [[1]],
                   "ready": true, "something_new": [1, 2], "http": "127.0.0.1:7001"}),
        );
        let t = m.table().unwrap();
        assert_eq!(t.parts.len(), 2);
        assert_eq!(t.parts[0].owner.as_deref(), Some("logger-1"));
        assert_eq!(t.parts[0].backups, ["logger-2"]);
        // A partition without a backups entry has none.
        assert_eq!(t.parts[1].owner.as_deref(), Some("logger-3"));
        assert!(t.parts[1].backups.is_empty());
        // Other services and other clusters are not the map's.
        let topics = Topics::new("lab");
        let e = EnvelopeFactory::new("x").make("telemetry", None, json!({}));
        assert!(!m.observe(&topics, &topics.telemetry("x", "lockers"), &e));
        assert!(!m.observe(&topics, &Topics::new("other").telemetry("x", "maplog"), &e));
    }

    #[test]
    fn an_index_outside_the_members_is_no_owner() {
        let mut m = MaplogModel::new(TimeBase::at(0));
        feed(
            &mut m,
            "logger-1",
            "maplog",
            0,
            json!({"members": ["logger-1"], "owners": [0, 5], "backups": [[7], []]}),
        );
        let t = m.table().unwrap();
        assert_eq!(t.parts[1].owner, None);
        assert!(t.parts[0].backups.is_empty());
    }

    #[test]
    fn the_table_is_the_highest_epochs() {
        let mut m = MaplogModel::new(TimeBase::at(0));
        let report = |epoch: u64, owners: serde_json::Value| json!({"epoch": epoch, "members": members(), "owners": owners, "ready": true});
        feed(&mut m, "logger-1", "maplog", 2000, report(7, json!([0, 0])));
        feed(&mut m, "logger-2", "maplog", 1000, report(8, json!([1, 1])));
        feed(&mut m, "logger-3", "maplog", 3000, report(6, json!([2, 2])));
        let t = m.table().unwrap();
        assert_eq!((t.from.as_str(), t.epoch), ("logger-2", 8));
        assert_eq!(t.owned_by("logger-2"), 2);
        // A higher epoch without a table yet does not hide the tables.
        feed(&mut m, "logger-3", "maplog", 3000, json!({"epoch": 9}));
        assert_eq!(m.table().unwrap().from, "logger-2");
        // Between equal epochs, the latest report.
        feed(&mut m, "logger-1", "maplog", 2500, report(8, json!([0, 0])));
        assert_eq!(m.table().unwrap().from, "logger-1");
    }

    #[test]
    fn migrating_when_epochs_differ_or_a_member_syncs() {
        let mut m = MaplogModel::new(TimeBase::at(0));
        assert_eq!(m.migration(0.0), Migration::Unknown);
        let report = |epoch: u64, ready: bool, in_flight: u64| json!({"epoch": epoch, "ready": ready, "migrations_in_flight": in_flight});
        feed(&mut m, "logger-1", "maplog", 1000, report(5, true, 0));
        feed(&mut m, "logger-2", "maplog", 1000, report(5, true, 0));
        assert_eq!(m.migration(1.0), Migration::Stable { epoch: 5 });
        feed(&mut m, "logger-2", "maplog", 1000, report(6, false, 12));
        assert_eq!(
            m.migration(1.0),
            Migration::Migrating {
                epochs: vec![5, 6],
                syncing: vec!["logger-2".into()],
                in_flight: 12
            }
        );
        // A silent member's old report does not count.
        feed(&mut m, "logger-1", "maplog", 5000, report(6, true, 0));
        feed(&mut m, "logger-3", "maplog", 5000, report(6, true, 0));
        assert_eq!(m.migration(5.5), Migration::Stable { epoch: 6 });
        assert_eq!(m.live_loggers(5.5), ["logger-1", "logger-3"]);
    }

    #[test]
    fn rates_come_from_the_totals_between_samples() {
        let mut m = MaplogModel::new(TimeBase::at(0));
        let report = |puts: u64, gets: u64| json!({"puts": puts, "gets": gets});
        feed(&mut m, "logger-1", "maplog", 0, report(100, 10));
        assert_eq!(m.rates("logger-1"), (0.0, 0.0), "one sample is no rate");
        feed(&mut m, "logger-1", "maplog", 500, report(150, 10));
        feed(&mut m, "logger-1", "maplog", 1000, report(200, 30));
        assert_eq!(m.rates("logger-1"), (100.0, 20.0));
        assert_eq!(m.rates("logger-9"), (0.0, 0.0));
        // A restarted member counts from 0 again: no negative, no spike.
        feed(&mut m, "logger-1", "maplog", 1500, report(5, 0));
        assert_eq!(m.rates("logger-1"), (0.0, 0.0));
        feed(&mut m, "logger-1", "maplog", 2500, report(55, 10));
        assert_eq!(m.rates("logger-1"), (50.0, 10.0));
    }

    #[test]
    fn partitions_only_on_two_members() {
        let mut m = MaplogModel::new(TimeBase::at(0));
        feed(
            &mut m,
            "logger-1",
            "maplog",
            0,
            json!({"members": members(), "owners": [0, 1, 2, 0], "backups": [[1], [0], [0], [2]]}),
        );
        let t = m.table().unwrap();
        assert_eq!(t.only_on("logger-1", "logger-2"), 2);
        assert_eq!(t.only_on("logger-1", "logger-3"), 2);
        assert_eq!(t.only_on("logger-2", "logger-3"), 0);
    }

    #[test]
    fn the_facade_address_is_the_reported_one_else_the_configs() {
        let mut m = MaplogModel::new(TimeBase::at(0));
        let config: SocketAddr = "127.0.0.1:8085".parse().unwrap();
        assert_eq!(m.facade_addr(Some(config)), Some(config));
        assert_eq!(m.facade_addr(None), None);
        feed(
            &mut m,
            "facade",
            "facade",
            0,
            json!({"http": "not an address"}),
        );
        assert_eq!(m.facade_addr(Some(config)), Some(config));
        feed(
            &mut m,
            "facade",
            "facade",
            0,
            json!({"http": "127.0.0.1:9001"}),
        );
        assert_eq!(m.facade_addr(Some(config)), "127.0.0.1:9001".parse().ok());
    }

    #[test]
    fn the_facades_redirects_are_read() {
        assert_eq!(classify(302, Some("/polls/thanks")), Logged::Thanks);
        assert_eq!(classify(303, Some("/polls/thanks/")), Logged::Thanks);
        assert_eq!(
            classify(302, Some("http://127.0.0.1:8085/polls/thanks?x=1")),
            Logged::Thanks
        );
        assert_eq!(classify(302, Some("/polls/error")), Logged::Error);
        assert_eq!(
            classify(302, Some("/elsewhere")),
            Logged::Failed("HTTP 302 to /elsewhere".into())
        );
        assert_eq!(classify(302, None), Logged::Failed("HTTP 302".into()));
        assert_eq!(
            classify(500, Some("/polls/thanks")),
            Logged::Failed("HTTP 500".into())
        );
    }

    #[test]
    fn the_check_finds_the_missing_acknowledged_messages() {
        let expected: Vec<String> = (1..=5).map(|i| format!("app-s-{i}")).collect();
        let all = compare(
            &expected,
            "app-s-3\napp-s-1\r\nother\n\napp-s-2\napp-s-5\napp-s-4\n",
        );
        assert!(all.ok());
        assert_eq!((all.expected, all.read), (5, 6));
        let some = compare(&expected, "app-s-1\napp-s-4\n");
        assert_eq!(some.missing, ["app-s-2", "app-s-3", "app-s-5"]);
        assert!(!some.ok());
        // A JSON list reads too; an empty answer misses everything.
        assert!(compare(&expected[..2], r#"["app-s-2", "app-s-1"]"#).ok());
        assert_eq!(compare(&expected, "").missing.len(), 5);
        // Nothing logged: nothing missing.
        assert!(compare(&[], "a\nb").ok());
    }

    #[test]
    fn the_session_names_messages_and_checks_what_was_acknowledged_before_the_read() {
        let mut s = MapSession::new("abc");
        assert_eq!(s.next_batch(2), ["app-abc-1", "app-abc-2"]);
        let batch = s.next_batch(3);
        assert_eq!(batch[0], "app-abc-3");
        s.logging = true;
        s.logged(LogReport {
            sent: 3,
            thanks: vec![batch[0].clone(), batch[2].clone()],
            errors: 1,
            first_failure: Some("HTTP 503".into()),
            ..Default::default()
        });
        assert!(!s.logging);
        assert_eq!(s.acked(), ["app-abc-3", "app-abc-5"]);
        assert_eq!((s.errors, s.failed), (1, 0));
        let upto = s.start_read();
        assert_eq!(upto, 2);
        // Acknowledged after the read was sent: not looked for.
        s.logged(LogReport {
            thanks: vec!["app-abc-6".into()],
            ..Default::default()
        });
        s.read_back(upto, Ok("app-abc-5\n"));
        assert!(!s.reading);
        let check = s.last_check.clone().unwrap().unwrap();
        assert_eq!(
            (check.expected, check.missing),
            (2, vec!["app-abc-3".to_owned()])
        );
        assert_eq!(s.last_failure.as_deref(), Some("HTTP 503"));
        s.read_back(3, Err("no facade".into()));
        assert_eq!(s.last_check, Some(Err("no facade".into())));
    }
}
