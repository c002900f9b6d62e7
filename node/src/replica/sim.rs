//! A deterministic simulator of a replication group: three [`Core`]s (the
//! code the nodes run, on the real SQLite stores in memory) over an
//! in-memory network with seeded delivery order, delay, loss, duplication,
//! one-way and symmetric partitions, pauses (no ticks, nothing received)
//! and crashes (the replica is dropped; only its store — what it committed
//! to SQLite — survives the restart). Clients write and read throughout.
//!
//! Checked while it runs: at most one leader per term; a committed index
//! never holds two different entries (committed prefixes agree); a current
//! read sees every write acknowledged before it was asked. After healing
//! (every link up, every node back): the group converges, every
//! acknowledged write is on every replica, and their states are equal.
//!
//! A failing schedule prints its seed; `DISTLAB_SIM_SEED=<seed>` replays
//! exactly that one, `DISTLAB_SIM_SEEDS=<n>` runs more.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};

use raft::eraftpb::Message;

use super::core::{Core, Role, Timing};
use super::store::{LogStore, dump_state};

/// Fast raft timing for the simulator (a tick is [`TICK_STEPS`] steps).
const TIMING: Timing = Timing {
    heartbeat: 1,
    election: 5,
};
const TICK_STEPS: u64 = 10;
const NODES: u64 = 3;

/// What the simulator needs of a store under test.
pub trait Subject {
    type S: LogStore;
    /// A new, empty store (the same initial state on every node).
    fn open() -> Self::S;
    /// A write; `op` is unique in the run.
    fn command(op: u64, rng: &mut fastrand::Rng) -> <Self::S as LogStore>::Command;
    /// Whether `store` holds the effect of `command` (which was applied).
    fn holds(store: &Self::S, command: &<Self::S as LogStore>::Command) -> bool;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Token {
    Write(u64),
    Read(u64),
}

struct Node<S: LogStore> {
    core: Option<Core<S, Token>>,
    parked: Option<S>,
    paused: bool,
    next_tick: u64,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: u64,
    seq: u64,
    to: u64,
    bytes: Vec<u8>,
}

struct Sim<X: Subject> {
    seed: u64,
    rng: fastrand::Rng,
    now: u64,
    nodes: Vec<Node<X::S>>,
    net: BinaryHeap<Reverse<InFlight>>,
    sent: u64,
    loss: f64,
    dup: f64,
    max_delay: u64,
    /// Cut links (from, to).
    cut: BTreeSet<(u64, u64)>,
    next_op: u64,
    writes: BTreeMap<u64, <X::S as LogStore>::Command>,
    /// Acknowledged writes, in the order they were acknowledged.
    acked: Vec<u64>,
    /// Reads asked: id → how many writes were acknowledged then.
    reads: BTreeMap<u64, usize>,
    next_read: u64,
    reads_checked: u64,
    /// Every committed entry seen: index → (term, hash of its data).
    committed: BTreeMap<u64, (u64, u64)>,
    leaders: BTreeMap<u64, u64>,
    trace: Vec<String>,
}

fn hash(data: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

impl<X: Subject> Sim<X> {
    fn new(seed: u64) -> Self {
        let rng = fastrand::Rng::with_seed(seed);
        let mut sim = Self {
            seed,
            rng,
            now: 0,
            nodes: Vec::new(),
            net: BinaryHeap::new(),
            sent: 0,
            loss: 0.0,
            dup: 0.0,
            max_delay: 5,
            cut: BTreeSet::new(),
            next_op: 0,
            writes: BTreeMap::new(),
            acked: Vec::new(),
            reads: BTreeMap::new(),
            next_read: 0,
            reads_checked: 0,
            committed: BTreeMap::new(),
            leaders: BTreeMap::new(),
            trace: Vec::new(),
        };
        for id in 1..=NODES {
            let phase = sim.rng.u64(0..TICK_STEPS);
            let core = sim.boot(X::open(), id);
            sim.nodes.push(Node {
                core: Some(core),
                parked: None,
                paused: false,
                next_tick: phase,
            });
        }
        sim
    }

    fn boot(&mut self, store: X::S, id: u64) -> Core<X::S, Token> {
        let voters: Vec<u64> = (1..=NODES).collect();
        let seed = self.rng.u64(..);
        Core::new(store, id, &voters, seed, TIMING)
            .unwrap_or_else(|e| self.fail(&format!("boot {id}: {e}")))
    }

    fn note(&mut self, what: String) {
        self.trace.push(format!("[{}] {what}", self.now));
        if self.trace.len() > 400 {
            self.trace.drain(..100);
        }
    }

    fn fail(&self, why: &str) -> ! {
        let mut msg = format!(
            "simulated schedule {} failed: {why}\nreplay: DISTLAB_SIM_SEED={} cargo test -p distlab-node --lib replica::sim\nlast events:\n",
            self.seed, self.seed
        );
        for line in self.trace.iter().rev().take(60).rev() {
            let _ = writeln!(msg, "  {line}");
        }
        panic!("{msg}");
    }

    fn up(&self, id: u64) -> bool {
        let n = &self.nodes[(id - 1) as usize];
        n.core.is_some() && !n.paused
    }

    fn node(&mut self, id: u64) -> &mut Core<X::S, Token> {
        self.nodes[(id - 1) as usize]
            .core
            .as_mut()
            .expect("an up node")
    }

    fn send(&mut self, m: Message) {
        if self.cut.contains(&(m.from, m.to)) || self.rng.f64() < self.loss {
            return;
        }
        let bytes = protobuf::Message::write_to_bytes(&m).expect("encodable");
        let copies = if self.rng.f64() < self.dup { 2 } else { 1 };
        for _ in 0..copies {
            self.sent += 1;
            let at = self.now + 1 + self.rng.u64(0..=self.max_delay);
            self.net.push(Reverse(InFlight {
                at,
                seq: self.sent,
                to: m.to,
                bytes: bytes.clone(),
            }));
        }
    }

    /// Handles a node's Ready and what came out of it.
    fn ready(&mut self, id: u64) {
        let mut early = Vec::new();
        let out = match self.node(id).ready(&mut |m| early.extend(m)) {
            Ok(out) => out,
            Err(e) => self.fail(&format!("node {id} cannot persist: {e}")),
        };
        for m in early.into_iter().chain(out.messages) {
            self.send(m);
        }
        for (who, outcome) in out.answers {
            if let Token::Write(op) = who
                && outcome.is_ok()
            {
                self.note(format!("write {op} acknowledged by {id}"));
                self.acked.push(op);
            }
        }
        for who in out.reads {
            if let Token::Read(r) = who {
                let seen = self.reads.remove(&r).unwrap_or(0);
                for i in 0..seen {
                    let op = self.acked[i];
                    let store = self.nodes[(id - 1) as usize]
                        .core
                        .as_mut()
                        .expect("up")
                        .store();
                    if !X::holds(store, &self.writes[&op]) {
                        self.fail(&format!(
                            "a current read on node {id} misses write {op}, acknowledged before the read was asked"
                        ));
                    }
                }
                self.reads_checked += 1;
            }
        }
        self.observe(id);
    }

    /// Checks one node's view: one leader a term, committed entries agree.
    fn observe(&mut self, id: u64) {
        let status = self.node(id).status();
        if status.role == Role::Leader {
            match self.leaders.insert(status.term, id) {
                Some(other) if other != id => self.fail(&format!(
                    "two leaders in term {}: {other} and {id}",
                    status.term
                )),
                None => self.note(format!("{id} leads term {}", status.term)),
                _ => {}
            }
        }
        let from = self
            .committed
            .range(..=status.commit)
            .next_back()
            .map_or(0, |(i, _)| *i);
        let rows: Vec<(u64, u64, Vec<u8>)> = {
            let conn = self.node(id).store().conn();
            let mut stmt = conn
                .prepare_cached("SELECT idx, term, data FROM raft_log WHERE idx > ?1 AND idx <= ?2 ORDER BY idx")
                .expect("raft_log");
            let rows = stmt
                .query_map(
                    [from.saturating_sub(50) as i64, status.commit as i64],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)? as u64,
                            r.get::<_, i64>(1)? as u64,
                            r.get::<_, Vec<u8>>(2)?,
                        ))
                    },
                )
                .expect("query");
            rows.map(|r| r.expect("row")).collect()
        };
        for (idx, term, data) in rows {
            let h = hash(&data);
            match self.committed.get(&idx) {
                Some(&(t, d)) if (t, d) != (term, h) => self.fail(&format!(
                    "committed index {idx} differs: term {t} elsewhere, term {term} on node {id}"
                )),
                Some(_) => {}
                None => {
                    self.committed.insert(idx, (term, h));
                }
            }
        }
    }

    fn deliver(&mut self) -> BTreeSet<u64> {
        let mut touched = BTreeSet::new();
        let mut later = Vec::new();
        while self.net.peek().is_some_and(|Reverse(m)| m.at <= self.now) {
            let Reverse(m) = self.net.pop().expect("peeked");
            let n = &self.nodes[(m.to - 1) as usize];
            if n.core.is_none() {
                continue; // a crashed process receives nothing
            }
            if n.paused {
                later.push(m); // waits in the socket
                continue;
            }
            let msg: Message = protobuf::Message::parse_from_bytes(&m.bytes).expect("decodable");
            // Refusals (stale or foreign messages) are part of the protocol.
            let _ = self.node(m.to).step(msg);
            touched.insert(m.to);
        }
        for mut m in later {
            m.at = self.now + 1;
            self.net.push(Reverse(m));
        }
        touched
    }

    fn fault(&mut self) {
        let ids: Vec<u64> = (1..=NODES).collect();
        match self.rng.u32(0..100) {
            0..=14 => {
                // Split in two, both ways.
                let a = self.rng.u64(1..=NODES);
                let side: Vec<bool> = ids.iter().map(|i| *i == a || self.rng.bool()).collect();
                self.cut.clear();
                for i in &ids {
                    for j in &ids {
                        if side[(*i - 1) as usize] != side[(*j - 1) as usize] {
                            self.cut.insert((*i, *j));
                        }
                    }
                }
                self.note(format!("partition {side:?}"));
            }
            15..=24 => {
                let (a, b) = (self.rng.u64(1..=NODES), self.rng.u64(1..=NODES));
                if a != b {
                    self.cut.insert((a, b));
                    self.note(format!("one-way cut {a} -> {b}"));
                }
            }
            25..=44 => {
                self.cut.clear();
                self.note("heal links".into());
            }
            45..=54 => {
                let id = self.rng.u64(1..=NODES);
                let n = &mut self.nodes[(id - 1) as usize];
                if let Some(core) = n.core.take() {
                    n.parked = Some(core.into_store());
                    n.paused = false;
                    self.note(format!("crash {id}"));
                }
            }
            55..=69 => {
                let id = self.rng.u64(1..=NODES);
                if let Some(store) = self.nodes[(id - 1) as usize].parked.take() {
                    let core = self.boot(store, id);
                    self.nodes[(id - 1) as usize].core = Some(core);
                    self.note(format!("restart {id}"));
                }
            }
            70..=79 => {
                let id = self.rng.u64(1..=NODES);
                let n = &mut self.nodes[(id - 1) as usize];
                if n.core.is_some() {
                    n.paused = !n.paused;
                    let what = if n.paused { "pause" } else { "resume" };
                    self.note(format!("{what} {id}"));
                }
            }
            _ => {
                self.loss = [0.0, 0.0, 0.05, 0.2, 0.4][self.rng.usize(0..5)];
                self.dup = [0.0, 0.05, 0.2][self.rng.usize(0..3)];
                self.max_delay = [1, 5, 20, 60][self.rng.usize(0..4)];
                self.note(format!(
                    "loss {} dup {} delay <= {}",
                    self.loss, self.dup, self.max_delay
                ));
            }
        }
    }

    fn client(&mut self) {
        let id = self.rng.u64(1..=NODES);
        if !self.up(id) {
            return;
        }
        if self.rng.u32(0..4) == 0 {
            self.next_read += 1;
            let r = self.next_read;
            self.reads.insert(r, self.acked.len());
            if self.node(id).read_index(Token::Read(r)).is_err() {
                self.reads.remove(&r);
            }
        } else {
            // One write, or several that the engine would put in one entry.
            let n = if self.rng.u32(0..3) == 0 {
                self.rng.u64(2..=4)
            } else {
                1
            };
            let mut batch = Vec::new();
            for _ in 0..n {
                self.next_op += 1;
                let op = self.next_op;
                let command = X::command(op, &mut self.rng);
                self.writes.insert(op, command.clone());
                batch.push((command, Token::Write(op)));
            }
            // Refused at once (not the leader): the client would go elsewhere.
            let _ = self.node(id).propose_batch(batch);
        }
        self.ready(id);
    }

    fn step(&mut self, faults: bool) {
        self.now += 1;
        if faults && self.rng.u32(0..40) == 0 {
            self.fault();
        }
        let mut touched = self.deliver();
        for id in 1..=NODES {
            let now = self.now;
            let n = &mut self.nodes[(id - 1) as usize];
            if let Some(core) = n.core.as_mut()
                && !n.paused
                && n.next_tick <= now
            {
                n.next_tick = now + TICK_STEPS;
                core.tick();
                touched.insert(id);
            }
        }
        if faults && self.rng.u32(0..3) == 0 {
            self.client();
        }
        for id in touched {
            if self.up(id) {
                self.ready(id);
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
        (self.loss, self.dup, self.max_delay) = (0.0, 0.0, 5);
        for id in 1..=NODES {
            let n = &mut self.nodes[(id - 1) as usize];
            n.paused = false;
            if let Some(store) = n.parked.take() {
                let core = self.boot(store, id);
                self.nodes[(id - 1) as usize].core = Some(core);
            }
        }
        self.note("heal everything".into());
    }

    /// Every node at the leader's last index, applied.
    fn converged(&mut self) -> bool {
        let statuses: Vec<_> = (1..=NODES).map(|id| self.node(id).status()).collect();
        let Some(leader) = statuses.iter().find(|s| s.role == Role::Leader) else {
            return false;
        };
        statuses
            .iter()
            .all(|s| s.term == leader.term && s.applied == leader.last && s.last == leader.last)
    }

    fn run(mut self, steps: u64) -> Self {
        for _ in 0..steps {
            self.step(true);
        }
        self.heal();
        let mut waited = 0;
        while !self.converged() {
            waited += 1;
            if waited > 5_000 {
                let s: Vec<_> = (1..=NODES).map(|id| self.node(id).status()).collect();
                self.fail(&format!("no convergence after healing: {s:?}"));
            }
            self.step(false);
        }
        for id in 1..=NODES {
            self.observe(id);
        }
        // Every acknowledged write on every replica; equal states.
        for op in self.acked.clone() {
            for id in 1..=NODES {
                let store = self.nodes[(id - 1) as usize]
                    .core
                    .as_mut()
                    .expect("up")
                    .store();
                if !X::holds(store, &self.writes[&op]) {
                    self.fail(&format!("acknowledged write {op} is missing on node {id}"));
                }
            }
        }
        let first = dump_state(self.node(1).store().conn()).expect("dump");
        for id in 2..=NODES {
            if dump_state(self.node(id).store().conn()).expect("dump") != first {
                self.fail(&format!("node {id}'s state differs from node 1's"));
            }
        }
        self
    }
}

/// Runs the schedules for one subject; returns (schedules, acknowledged
/// writes, reads checked, leaders) for the log.
fn run_many<X: Subject>(default: u64, steps: u64) -> (u64, usize, u64, usize) {
    let only = std::env::var("DISTLAB_SIM_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    let count = std::env::var("DISTLAB_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    let seeds: Vec<u64> = match only {
        Some(s) => vec![s],
        None => (0..count).collect(),
    };
    let (mut acked, mut reads, mut leaders) = (0, 0, 0);
    for &seed in &seeds {
        // A panic inside the schedule (raft's own checks included) names
        // its seed too.
        let run = std::panic::catch_unwind(|| Sim::<X>::new(seed).run(steps));
        let sim = run.unwrap_or_else(|e| {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!(
                "simulated schedule {seed} panicked: {why}\nreplay: DISTLAB_SIM_SEED={seed} cargo test -p distlab-node --lib replica::sim"
            )
        });
        acked += sim.acked.len();
        reads += sim.reads_checked;
        leaders += sim.leaders.len();
    }
    (seeds.len() as u64, acked, reads, leaders)
}

pub(super) mod subjects {
    use super::*;
    use crate::replica::ReplError;
    use crate::replica::store::exec;
    use rusqlite::Connection;
    use serde::{Deserialize, Serialize};

    /// `SELECT COUNT(*) …` with one parameter, for `holds`.
    fn count(conn: &Connection, sql: &str, p: impl rusqlite::ToSql) -> i64 {
        conn.query_row(sql, [p], |r| r.get::<_, i64>(0))
            .expect("query")
    }

    /// A small store whose state depends on the order of its commands.
    pub struct Counters {
        conn: Connection,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Add {
        pub op: u64,
        pub key: u8,
        pub n: i64,
    }

    impl LogStore for Counters {
        type Command = Add;
        type Outcome = i64;
        type Error = ReplError;

        fn conn(&self) -> &Connection {
            &self.conn
        }

        fn apply_command(&mut self, c: &Add) -> Result<i64, ReplError> {
            exec(
                &self.conn,
                "INSERT INTO ops (op) VALUES (?1)",
                [c.op as i64],
            )?;
            exec(
                &self.conn,
                "INSERT INTO kv (k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = v * 3 + excluded.v",
                [i64::from(c.key), c.n],
            )?;
            Ok(self
                .conn
                .query_row("SELECT v FROM kv WHERE k = ?1", [c.key], |r| r.get(0))?)
        }
    }

    impl Subject for Counters {
        type S = Counters;
        fn open() -> Counters {
            let conn = Connection::open_in_memory().expect("sqlite");
            conn.execute_batch(
                "CREATE TABLE ops (op INTEGER PRIMARY KEY); CREATE TABLE kv (k INTEGER PRIMARY KEY, v INTEGER);",
            )
            .expect("schema");
            Counters { conn }
        }
        fn command(op: u64, rng: &mut fastrand::Rng) -> Add {
            Add {
                op,
                key: rng.u8(0..4),
                n: rng.i64(-5..5),
            }
        }
        fn holds(s: &Counters, c: &Add) -> bool {
            count(
                &s.conn,
                "SELECT COUNT(*) FROM ops WHERE op = ?1",
                c.op as i64,
            ) == 1
        }
    }

    pub struct Mom;
    impl Subject for Mom {
        type S = crate::services::mom::sql::SqlStore;
        fn open() -> Self::S {
            use crate::services::mom::model::{Command, Kind};
            let mut s = Self::S::open_in_memory().expect("mom store");
            let mut setup = vec![Command::AddUser { key: "u".into() }];
            for name in ["q", "w"] {
                setup.push(Command::Create {
                    kind: Kind::Queue,
                    name: name.into(),
                    owner: "u".into(),
                    subscribe: false,
                });
                setup.push(Command::Subscribe {
                    kind: Kind::Queue,
                    name: name.into(),
                    user: "u".into(),
                });
            }
            for c in setup {
                s.apply_command(&c).expect("setup");
            }
            s
        }
        /// Publishes to `q` (each checked for on every member), and work on
        /// `w`: publishes, batch consumes (with redeliveries) and batch acks,
        /// whose effects the equal table dumps check.
        fn command(op: u64, rng: &mut fastrand::Rng) -> crate::services::mom::model::Command {
            use crate::services::mom::model::{Command, Kind};
            let publish = |name: &str| Command::Publish {
                kind: Kind::Queue,
                name: name.into(),
                body: format!("m{op}"),
                now_ms: op,
                sender: None,
            };
            match op % 4 {
                0 | 1 => publish("q"),
                2 => publish("w"),
                _ if rng.bool() => Command::Consume {
                    kind: Kind::Queue,
                    name: "w".into(),
                    user: "u".into(),
                    now_ms: op,
                    visibility_ms: 40,
                    max: rng.u32(1..=5),
                },
                _ => Command::AckBatch {
                    user: "u".into(),
                    ids: (0..rng.usize(1..=6))
                        .map(|_| rng.u64(1..=op.max(1) * 2))
                        .collect(),
                },
            }
        }
        fn holds(s: &Self::S, c: &crate::services::mom::model::Command) -> bool {
            use crate::services::mom::model::Command;
            let Command::Publish { body, name, .. } = c else {
                return true;
            };
            if name != "q" {
                return true;
            }
            count(
                s.conn(),
                "SELECT COUNT(*) FROM copies WHERE body = ?1",
                body,
            ) == 1
        }
    }

    pub struct Catalog;
    impl Subject for Catalog {
        type S = crate::services::bookstore::sql::SqlStore;
        fn open() -> Self::S {
            let catalog = crate::services::bookstore::model::CatalogFile::built_in();
            Self::S::open_in_memory(&catalog).expect("catalog store")
        }
        fn command(op: u64, rng: &mut fastrand::Rng) -> crate::services::bookstore::model::Command {
            crate::services::bookstore::model::Command::Buy {
                order_id: format!("o{op}"),
                book: rng.u32(1..=7),
                restock: 10,
                now_ms: op,
            }
        }
        fn holds(s: &Self::S, c: &crate::services::bookstore::model::Command) -> bool {
            let crate::services::bookstore::model::Command::Buy { order_id, .. } = c else {
                return false;
            };
            count(
                s.conn(),
                "SELECT COUNT(*) FROM orders WHERE order_id = ?1",
                order_id,
            ) == 1
        }
    }

    pub struct Orders;
    impl Subject for Orders {
        type S = crate::services::bookstore::orders::OrderStore;
        fn open() -> Self::S {
            Self::S::open_in_memory().expect("order store")
        }
        fn command(
            op: u64,
            rng: &mut fastrand::Rng,
        ) -> crate::services::bookstore::orders::OrderCommand {
            crate::services::bookstore::orders::OrderCommand::Record {
                order: crate::services::bookstore::model::Order {
                    order_id: format!("o{op}"),
                    book: rng.u32(1..=7),
                    cost: 10,
                    ts_ms: op,
                },
            }
        }
        fn holds(s: &Self::S, c: &crate::services::bookstore::orders::OrderCommand) -> bool {
            let crate::services::bookstore::orders::OrderCommand::Record { order } = c else {
                return false;
            };
            s.order(&order.order_id).expect("query").is_some()
        }
    }
}

#[test]
fn counters_keep_every_acknowledged_write_under_seeded_faults() {
    let (n, acked, reads, leaders) = run_many::<subjects::Counters>(1000, 1500);
    eprintln!(
        "{n} schedules: {acked} acknowledged writes, {reads} current reads checked, {leaders} terms with a leader"
    );
    assert!(
        acked > n as usize * 5,
        "the schedules acknowledged writes ({acked})"
    );
    assert!(reads > n, "and served current reads ({reads})");
    assert!(leaders > n as usize * 2, "with leader changes ({leaders})");
}

#[test]
fn the_mom_store_keeps_every_acknowledged_publish_under_seeded_faults() {
    let (n, acked, ..) = run_many::<subjects::Mom>(100, 1500);
    assert!(acked > n as usize * 5, "{acked}");
}

#[test]
fn the_catalog_keeps_every_acknowledged_sale_under_seeded_faults() {
    let (n, acked, ..) = run_many::<subjects::Catalog>(100, 1500);
    assert!(acked > n as usize * 5, "{acked}");
}

#[test]
fn the_order_store_keeps_every_acknowledged_order_under_seeded_faults() {
    let (n, acked, ..) = run_many::<subjects::Orders>(100, 1500);
    assert!(acked > n as usize * 5, "{acked}");
}

#[test]
fn a_schedule_replays_exactly() {
    let a = Sim::<subjects::Counters>::new(7).run(800);
    let b = Sim::<subjects::Counters>::new(7).run(800);
    assert_eq!(a.acked, b.acked);
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.committed, b.committed);
}
