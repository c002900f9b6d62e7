//! A deterministic simulator of the map: members as [`Member`] state
//! machines, a network that delays, reorders and drops (seeded), views
//! that reach each member at its own time, clients that put and retry,
//! crashes and restarts. The checks: every acknowledged put is readable at
//! the end (with one member down at a time), and a scan sees each entry
//! once. `DISTLAB_SIM_SEEDS=<n>` runs `n` seeds per test.

use std::collections::{BTreeMap, BTreeSet};

use super::member::{Effect, Member, RESEND_MS};
use super::model::{MapAnswer, MapRequest, Peer};
use super::table::{Incarnation, View, partition_of};

#[derive(Debug)]
enum Event {
    Peer { to: String, from: String, msg: Peer },
    View { to: String, view: View },
    Tick { to: String },
}

pub struct Sim {
    pub rng: fastrand::Rng,
    now: u64,
    /// Events by due time, then insertion order.
    queue: BTreeMap<(u64, u64), Event>,
    seq: u64,
    pub members: BTreeMap<String, Member>,
    started: BTreeMap<String, u64>,
    epoch: u64,
    pub loss: f64,
    partitions: u32,
    backups: usize,
    /// Client tokens -> (key, value) of puts in flight.
    puts: BTreeMap<u64, (String, String)>,
    /// Puts waiting for their client's next try (an event in the queue).
    retrying: usize,
    /// The member each put in flight went to.
    put_at: BTreeMap<u64, String>,
    next_token: u64,
    pub acked: BTreeMap<String, String>,
    /// Answers to non-put requests by token.
    answers: BTreeMap<u64, MapAnswer>,
    latest_view: Option<View>,
}

impl Sim {
    pub fn new(seed: u64, nodes: &[&str], partitions: u32, backups: usize) -> Sim {
        let mut sim = Sim {
            rng: fastrand::Rng::with_seed(seed),
            now: 0,
            queue: BTreeMap::new(),
            seq: 0,
            members: BTreeMap::new(),
            started: BTreeMap::new(),
            epoch: 0,
            loss: 0.05,
            partitions,
            backups,
            puts: BTreeMap::new(),
            retrying: 0,
            put_at: BTreeMap::new(),
            next_token: 1,
            acked: BTreeMap::new(),
            answers: BTreeMap::new(),
            latest_view: None,
        };
        for n in nodes {
            sim.start(n);
        }
        sim.publish_view();
        sim
    }

    fn push(&mut self, delay: u64, e: Event) {
        self.seq += 1;
        self.queue.insert((self.now + delay, self.seq), e);
    }

    pub fn start(&mut self, node: &str) {
        self.members.insert(
            node.to_owned(),
            Member::new(node, self.partitions, self.backups),
        );
        self.started.insert(node.to_owned(), self.now);
        let t = self.rng.u64(1..50);
        self.push(
            t,
            Event::Tick {
                to: node.to_owned(),
            },
        );
    }

    pub fn crash(&mut self, node: &str) {
        self.members.remove(node);
        // Its clients time out and put again.
        let gone: Vec<u64> = self
            .put_at
            .iter()
            .filter(|(_, n)| *n == node)
            .map(|(t, _)| *t)
            .collect();
        for t in gone {
            self.put_at.remove(&t);
            if let Some((k, v)) = self.puts.remove(&t) {
                self.retry_later(&k, &v);
            }
        }
    }

    /// The master's next view: the live members.
    pub fn publish_view(&mut self) {
        self.epoch += 1;
        let view = View {
            epoch: self.epoch,
            master: "m".into(),
            members: self
                .members
                .keys()
                .map(|n| Incarnation {
                    node: n.clone(),
                    started_ms: self.started[n],
                })
                .collect(),
        };
        self.latest_view = Some(view.clone());
        let nodes: Vec<String> = self.members.keys().cloned().collect();
        for to in nodes {
            let d = self.rng.u64(0..200);
            self.push(
                d,
                Event::View {
                    to,
                    view: view.clone(),
                },
            );
        }
    }

    fn effects(&mut self, from: &str, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Send { to, msg } => {
                    if self.rng.f64() < self.loss {
                        continue;
                    }
                    let d = self.rng.u64(0..30);
                    self.push(
                        d,
                        Event::Peer {
                            to,
                            from: from.to_owned(),
                            msg,
                        },
                    );
                }
                Effect::Reply { token, answer } => {
                    if let Some((k, v)) = self.puts.remove(&token) {
                        self.put_at.remove(&token);
                        match answer {
                            MapAnswer::Stored => {
                                self.acked.insert(k, v);
                            }
                            _ => {
                                // The client puts again, through its view.
                                self.put(&k, &v);
                            }
                        }
                    } else {
                        self.answers.insert(token, answer);
                    }
                }
            }
        }
    }

    /// A client put, routed by the latest view to its owner.
    pub fn put(&mut self, key: &str, value: &str) {
        let token = self.next_token;
        self.next_token += 1;
        self.puts.insert(token, (key.to_owned(), value.to_owned()));
        let owner = self.owner_of(key);
        let now = self.now;
        match owner.and_then(|o| self.members.get_mut(&o).map(|m| (o.clone(), m))) {
            Some((o, m)) => {
                self.put_at.insert(token, o.clone());
                let effects = m.on_request(
                    token,
                    MapRequest::Put {
                        key: key.to_owned(),
                        value: value.to_owned(),
                    },
                    now,
                );
                // A reply means "put again": after a pause, not at once.
                let (replies, sends): (Vec<Effect>, Vec<Effect>) = effects
                    .into_iter()
                    .partition(|e| matches!(e, Effect::Reply { .. }));
                self.effects(&o, sends);
                self.defer_replies(&o, replies);
            }
            None => {
                // No owner alive: the client waits and puts again.
                self.puts.remove(&token);
                self.retry_later(key, value);
            }
        }
    }

    fn defer_replies(&mut self, from: &str, replies: Vec<Effect>) {
        for r in replies {
            if let Effect::Reply {
                token,
                answer: MapAnswer::Stored,
            } = &r
            {
                let _ = token;
                self.effects(from, vec![r]);
            } else if let Effect::Reply { token, .. } = r
                && let Some((k, v)) = self.puts.remove(&token)
            {
                self.put_at.remove(&token);
                self.retry_later(&k, &v);
            }
        }
    }

    fn retry_later(&mut self, key: &str, value: &str) {
        self.retrying += 1;
        let d = self.rng.u64(20..100);
        self.push(
            d,
            Event::Tick {
                to: format!("client\u{0}{key}\u{0}{value}"),
            },
        );
    }

    fn owner_of(&self, key: &str) -> Option<String> {
        let view = self.latest_view.as_ref()?;
        let t = super::table::Table::compute(&view.nodes(), self.partitions, self.backups);
        t.owner(partition_of(key, self.partitions))
            .map(str::to_owned)
    }

    /// Runs events until `until` (simulated ms).
    pub fn run_until(&mut self, until: u64) {
        while let Some((&(at, s), _)) = self.queue.iter().next() {
            if at > until {
                break;
            }
            let e = self.queue.remove(&(at, s)).expect("it is there");
            self.now = at;
            let now = self.now;
            match e {
                Event::Peer { to, from, msg } => {
                    if let Some(m) = self.members.get_mut(&to) {
                        let effects = m.on_peer(&from, msg, now);
                        self.effects(&to, effects);
                    }
                }
                Event::View { to, view } => {
                    if let Some(m) = self.members.get_mut(&to) {
                        let effects = m.on_view(view, now);
                        self.effects(&to, effects);
                    }
                }
                Event::Tick { to } => {
                    if let Some(rest) = to.strip_prefix("client\u{0}") {
                        self.retrying -= 1;
                        let (k, v) = rest.split_once('\u{0}').expect("key and value");
                        let (k, v) = (k.to_owned(), v.to_owned());
                        self.put(&k, &v);
                    } else if let Some(m) = self.members.get_mut(&to) {
                        let effects = m.on_tick(now);
                        self.effects(&to, effects);
                        self.push(RESEND_MS / 5, Event::Tick { to });
                    }
                }
            }
        }
        self.now = self.now.max(until);
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    /// Whether every member is at the latest view, ready, with no fill out.
    pub fn settled(&self) -> bool {
        let epoch = self.epoch;
        self.members
            .values()
            .all(|m| m.epoch() == epoch && m.ready() && m.stats().migrations_in_flight == 0)
    }

    pub fn run_until_settled(&mut self, limit: u64) -> bool {
        let end = self.now + limit;
        while self.now < end {
            let next = self.now + 50;
            self.run_until(next);
            // Settled, and no put outstanding: neither waiting for its
            // answer nor for its client's next try.
            if self.settled() && self.puts.is_empty() && self.retrying == 0 {
                return true;
            }
        }
        false
    }

    /// Every entry, read with a scan of each member at the latest epoch.
    pub fn scan(&mut self) -> Vec<(String, String)> {
        let epoch = self.epoch;
        let mut all = Vec::new();
        let nodes: Vec<String> = self.members.keys().cloned().collect();
        for n in nodes {
            let token = self.next_token;
            self.next_token += 1;
            let now = self.now;
            let effects = self.members.get_mut(&n).expect("live").on_request(
                token,
                MapRequest::Scan { epoch },
                now,
            );
            for e in effects {
                if let Effect::Reply {
                    answer: MapAnswer::Scanned { entries, .. },
                    ..
                } = e
                {
                    all.extend(entries);
                } else {
                    panic!("{n} did not scan: {e:?}");
                }
            }
        }
        all
    }

    /// Acknowledged keys not readable (or with another value).
    pub fn lost(&mut self) -> BTreeSet<String> {
        let all: BTreeMap<String, String> = self.scan().into_iter().collect();
        self.acked
            .iter()
            .filter(|(k, v)| all.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: [&str; 3] = ["logger-1", "logger-2", "logger-3"];

    /// `default` seeds from `first`; `DISTLAB_SIM_SEEDS=<n>` runs `n`
    /// (as the replication's simulator does).
    fn seeds(first: u64, default: u64) -> std::ops::Range<u64> {
        let n = std::env::var("DISTLAB_SIM_SEEDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default);
        first..first + n
    }

    fn load(sim: &mut Sim, from: usize, n: usize) {
        for i in from..from + n {
            sim.put(&format!("k{i}"), &format!("v{i}"));
            let t = sim.now() + 2;
            sim.run_until(t);
        }
    }

    #[test]
    fn puts_survive_one_crash_and_a_restart_under_loss_and_reordering() {
        for seed in seeds(0, 12) {
            let mut sim = Sim::new(seed, &NODES, 271, 1);
            assert!(sim.run_until_settled(20_000), "seed {seed}: settles");
            load(&mut sim, 0, 300);
            // A crash in the middle of the load.
            let victim = NODES[(seed % 3) as usize];
            sim.crash(victim);
            sim.publish_view();
            load(&mut sim, 300, 300);
            assert!(
                sim.run_until_settled(30_000),
                "seed {seed}: settles after the crash"
            );
            assert_eq!(
                sim.acked.len(),
                600,
                "seed {seed}: every put acknowledged in the end"
            );
            assert!(sim.lost().is_empty(), "seed {seed}: lost {:?}", sim.lost());
            // It comes back (empty memory): partitions migrate to it.
            sim.start(victim);
            sim.publish_view();
            load(&mut sim, 600, 200);
            assert!(
                sim.run_until_settled(30_000),
                "seed {seed}: settles after the restart"
            );
            assert!(
                sim.members[victim].stats().owned_entries > 0,
                "seed {seed}: partitions moved back"
            );
            assert!(sim.lost().is_empty(), "seed {seed}: lost {:?}", sim.lost());
            let scanned = sim.scan();
            let keys: BTreeSet<&String> = scanned.iter().map(|(k, _)| k).collect();
            assert_eq!(keys.len(), scanned.len(), "seed {seed}: each entry once");
            assert_eq!(scanned.len(), 800);
            // Then another member dies: the restored backups hold.
            sim.crash(NODES[((seed + 1) % 3) as usize]);
            sim.publish_view();
            assert!(sim.run_until_settled(30_000));
            assert!(sim.lost().is_empty(), "seed {seed}: lost {:?}", sim.lost());
        }
    }

    #[test]
    fn views_that_follow_each_other_fast_lose_nothing() {
        for seed in seeds(100, 10) {
            let mut sim = Sim::new(seed, &NODES, 64, 1);
            sim.run_until_settled(20_000);
            load(&mut sim, 0, 100);
            // A fourth member joins, and before anything settles one leaves
            // and another view follows.
            sim.start("logger-4");
            sim.publish_view();
            load(&mut sim, 100, 50);
            sim.publish_view();
            load(&mut sim, 150, 50);
            assert!(sim.run_until_settled(30_000), "seed {seed}");
            sim.crash("logger-2");
            sim.publish_view();
            load(&mut sim, 200, 50);
            assert!(sim.run_until_settled(30_000), "seed {seed}");
            assert_eq!(sim.acked.len(), 250, "seed {seed}: every put acknowledged");
            assert!(sim.lost().is_empty(), "seed {seed}: lost {:?}", sim.lost());
        }
    }

    /// The same seed, the same run: every event, time and answer again
    /// (nothing iterates in an order the seed does not fix).
    #[test]
    fn a_seed_replays_exactly() {
        let run = |seed| {
            let mut sim = Sim::new(seed, &NODES, 64, 1);
            sim.run_until_settled(20_000);
            load(&mut sim, 0, 60);
            sim.crash("logger-2");
            sim.publish_view();
            load(&mut sim, 60, 40);
            sim.run_until_settled(30_000);
            (sim.now(), sim.seq, sim.acked.clone(), sim.scan())
        };
        for seed in seeds(300, 3) {
            assert!(run(seed) == run(seed), "seed {seed} did not replay");
        }
    }

    #[test]
    fn two_down_at_once_loses_with_one_backup_and_not_with_two() {
        let mut lost_some = false;
        for seed in seeds(200, 4) {
            for backups in [1, 2] {
                let mut sim = Sim::new(seed, &NODES, 271, backups);
                sim.loss = 0.0;
                sim.run_until_settled(20_000);
                load(&mut sim, 0, 300);
                assert!(sim.run_until_settled(20_000));
                sim.crash("logger-1");
                sim.crash("logger-2");
                sim.publish_view();
                assert!(sim.run_until_settled(20_000));
                let lost = sim.lost();
                if backups == 2 {
                    assert!(lost.is_empty(), "seed {seed}: lost {lost:?}");
                } else {
                    // The entries only logger-1 and logger-2 held.
                    lost_some |= !lost.is_empty();
                    assert!(lost.len() < 300);
                }
            }
        }
        assert!(lost_some);
    }
}
