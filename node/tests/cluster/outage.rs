//! The replication against the broker's own faults, each a case that lost
//! acknowledged writes under the old primary/backup scheme (retained
//! records as the arbiter): the broker paused 10 s under load, killed and
//! restarted (nothing retained survives) with a follower down before it,
//! forged and empty messages on the replication topics, and 4 MB bursts on
//! the bus. Every case must keep every acknowledged write, and the group
//! must end with equal replicas.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use distlab_node::presence::MemberState;
use distlab_node::replica::Role;
use distlab_node::services::mom::client::Client;
use distlab_node::services::mom::model::Kind;
use nix::sys::signal::Signal;

use crate::harness::{BrokerProc, Lab};
use crate::mom::{mom_group, replicated_lab_on, settled_leader};

const T: Duration = Duration::from_secs(30);
const MEMBERS: [&str; 3] = ["mom-a", "mom-b", "mom-c"];

/// A MOM group of three on `broker`, settled; its pids, a telemetry
/// subscription, and a client with a user subscribed to queue `q`.
struct Group {
    lab: Lab,
    pids: std::collections::BTreeMap<&'static str, u32>,
    stats: tokio::sync::mpsc::Receiver<distlab_node::bus::Incoming>,
    mom: Arc<Client>,
    key: String,
}

async fn group(broker: distlab_node::config::BrokerAddr) -> Group {
    let mut lab = replicated_lab_on(broker);
    let watcher = lab.client("watcher").await;
    let stats = watcher
        .subscribe(&format!("{}/telemetry/+/mom", watcher.topics().prefix()))
        .await
        .unwrap();
    std::mem::forget(watcher); // lives as long as the test (its subscription does)
    let mut obs = lab.observer().await;
    let mut pids = std::collections::BTreeMap::new();
    for node in MEMBERS {
        let pid = lab.spawn(node);
        obs.wait_state(node, MemberState::Up, pid, T).await;
        pids.insert(node, pid);
    }
    let mut g = Group {
        mom: Arc::new(Client::new(lab.client("publisher").await, "mom-a")),
        lab,
        pids,
        stats,
        key: String::new(),
    };
    mom_group(&mut g.stats, "a settled leader", |l| {
        settled_leader(l, &MEMBERS).is_some()
    })
    .await;
    g.key = g.mom.create_user().await.unwrap();
    g.mom.create(Kind::Queue, "q", &g.key).await.unwrap();
    g.mom.subscribe(Kind::Queue, "q", &g.key).await.unwrap();
    g
}

/// Publishes `m<i>` one after another until stopped; keeps the
/// acknowledged bodies (a failed publish is not acknowledged: fine).
struct Publisher {
    acked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<usize>,
}

impl Publisher {
    fn start(mom: Arc<Client>, key: String) -> Publisher {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (acked.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut failed = 0;
            let mut i = 0;
            while !s.load(Ordering::Relaxed) {
                let body = format!("m{i}");
                i += 1;
                match mom.publish(Kind::Queue, "q", &key, &body).await {
                    Ok(_) => a.lock().unwrap().push(body),
                    Err(_) => failed += 1,
                }
            }
            failed
        });
        Publisher { acked, stop, task }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `more` writes beyond now are acknowledged.
    async fn progress(&self, more: usize, what: &str) {
        let want = self.count() + more;
        let deadline = tokio::time::Instant::now() + T;
        while self.count() < want {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no progress {what}: {} of {want} acknowledged",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) -> (Vec<String>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let failed = self.task.await.unwrap();
        let acked = self.acked.lock().unwrap().clone();
        (acked, failed)
    }
}

/// A plain MQTT client (no envelope, 8 MB packets) and the task that
/// polls its event loop.
fn raw_client(lab: &Lab, name: &str) -> (rumqttc::AsyncClient, tokio::task::JoinHandle<()>) {
    let mut opts = distlab_node::bus::mqtt_options(&lab.broker, name);
    opts.set_max_packet_size(8 << 20, 8 << 20);
    let (raw, mut eventloop) = rumqttc::AsyncClient::new(opts, 64);
    let pump = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    (raw, pump)
}

/// Every acknowledged body is consumed (duplicates allowed) and all three
/// replicas end with the same state.
async fn assert_nothing_lost(g: &mut Group, acked: &[String]) {
    mom_group(&mut g.stats, "all three converged", |l| {
        settled_leader(l, &MEMBERS).is_some()
    })
    .await;
    let mut got = std::collections::BTreeSet::new();
    while let Some(d) = g.mom.consume(Kind::Queue, "q", &g.key, 0).await.unwrap() {
        got.insert(d.body.clone());
        g.mom.ack(&g.key, d.id).await.unwrap();
    }
    let lost: Vec<&String> = acked.iter().filter(|b| !got.contains(*b)).collect();
    eprintln!(
        "{} acknowledged, {} consumed, {} lost",
        acked.len(),
        got.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_paused_10s_under_load_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProc::start(dir.path());
    let mut g = group(broker.addr.clone()).await;
    let p = Publisher::start(g.mom.clone(), g.key.clone());
    p.progress(20, "before the pause").await;
    broker.signal(Signal::SIGSTOP);
    // The fault itself is 10 s long: nothing to wait for but the clock.
    tokio::time::sleep(Duration::from_secs(10)).await;
    broker.signal(Signal::SIGCONT);
    p.progress(20, "after the broker came back").await;
    let (acked, failed) = p.finish().await;
    eprintln!("{failed} publishes failed (not acknowledged) during the pause");
    assert_nothing_lost(&mut g, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_with_a_follower_down_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProc::start(dir.path());
    let mut g = group(broker.addr.clone()).await;
    let p = Publisher::start(g.mom.clone(), g.key.clone());
    p.progress(20, "at first").await;
    // A follower goes down; the other two go on.
    // A leader and a follower both reported (the leader's report alone can
    // come first).
    let latest = mom_group(&mut g.stats, "a leader and a follower", |l| {
        l.values().any(|s| s.raft.role == Role::Leader)
            && l.values().any(|s| s.raft.role == Role::Follower)
    })
    .await;
    let follower = MEMBERS
        .into_iter()
        .find(|n| {
            latest
                .get(*n)
                .is_some_and(|s| s.raft.role == Role::Follower)
        })
        .expect("a follower");
    g.lab.signal(g.pids[follower], Signal::SIGKILL);
    g.lab.wait_exit(g.pids[follower], T);
    p.progress(20, "with a follower down").await;
    // The broker dies and comes back empty (no retained message survives).
    broker.kill_and_restart();
    p.progress(20, "after the broker restart").await;
    let pid = g.lab.spawn(follower);
    g.pids.insert(follower, pid);
    p.progress(20, "with the follower back").await;
    let (acked, _) = p.finish().await;
    assert_nothing_lost(&mut g, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_empty_messages_on_the_replication_topics_lose_nothing() {
    use raft::eraftpb::{Message, MessageType};
    use rumqttc::QoS;

    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProc::start(dir.path());
    let mut g = group(broker.addr.clone()).await;
    let p = Publisher::start(g.mom.clone(), g.key.clone());
    p.progress(20, "at first").await;

    let (raw, pump) = raw_client(&g.lab, "vandal");
    let forger = g.lab.client("mom-b").await; // claims to be a member
    let t = distlab_node::envelope::Topics::new(&g.lab.cluster);
    for (i, node) in MEMBERS.iter().enumerate() {
        let topic = t.service("mom", &format!("raft/{node}"));
        for (bytes, retain) in [
            (&b""[..], true),
            (b"{", true),
            (b"\xff\xfe", false),
            (b"{\"seq\":1,\"part\":0,\"parts\":1,\"data\":\"*\"}", true),
        ] {
            raw.publish(topic.clone(), QoS::AtLeastOnce, retain, bytes.to_vec())
                .await
                .unwrap();
        }
        // Well-formed frames of raft messages that must not be obeyed: a
        // term where +1 overflows, a local message type, one to another
        // member, one from a non-member id.
        let to = i as u64 + 1;
        let mut msgs = Vec::new();
        for (ty, term, from, dest) in [
            (MessageType::MsgHeartbeat, u64::MAX, 2, to),
            (MessageType::MsgRequestVote, u64::MAX - 1, 2, to),
            (MessageType::MsgHup, 1, 2, to),
            (MessageType::MsgHeartbeat, 1, 2, to % 3 + 1),
            (MessageType::MsgHeartbeat, 1, 9, to),
        ] {
            let mut m = Message {
                term,
                from,
                to: dest,
                ..Default::default()
            };
            m.set_msg_type(ty);
            msgs.push(m);
        }
        for (n, m) in msgs.iter().enumerate() {
            for f in distlab_node::replica::transport::frames(
                std::slice::from_ref(m),
                1_000_000 + n as u64,
            )
            .unwrap()
            {
                forger
                    .publish_retained(&topic, &forger.envelope("raft", &f))
                    .await
                    .unwrap();
            }
        }
    }
    p.progress(50, "after the forgeries").await;
    let (acked, _) = p.finish().await;
    let latest = mom_group(&mut g.stats, "all three converged", |l| {
        settled_leader(l, &MEMBERS).is_some()
    })
    .await;
    for (node, s) in &latest {
        assert!(
            s.raft.term < 1_000,
            "{node} is at term {} (an absurd term was obeyed)",
            s.raft.term
        );
    }
    assert_nothing_lost(&mut g, &acked).await;
    pump.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolating_the_leader_under_load_elects_another_and_loses_nothing() {
    leader_cut_off_under_load(|leader| vec!["isolate".to_owned(), leader.to_owned()]).await;
}

/// The leader's messages to the others are lost, theirs to it arrive: the
/// others elect a leader, whose messages make the old one step down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_cut_from_the_leader_moves_leadership_and_loses_nothing() {
    leader_cut_off_under_load(|leader| {
        let mut args = vec!["one-way".to_owned(), leader.to_owned()];
        args.extend(
            MEMBERS
                .iter()
                .filter(|m| **m != leader)
                .map(|m| m.to_string()),
        );
        args
    })
    .await;
}

/// A MOM group on `broker`, settled, with 20 publishes acknowledged and a
/// publisher going on: the group, its leader and term, the publisher.
async fn settled_under_load(broker: &BrokerProc) -> (Group, String, u64, Publisher) {
    let mut g = group(broker.addr.clone()).await;
    let before = mom_group(&mut g.stats, "a leader", |l| {
        settled_leader(l, &MEMBERS).is_some()
    })
    .await;
    let leader = settled_leader(&before, &MEMBERS).unwrap();
    let term = before[&leader].raft.term;
    let p = Publisher::start(g.mom.clone(), g.key.clone());
    p.progress(20, "at first").await;
    (g, leader, term, p)
}

/// Cuts the MOM leader off with `fault(leader)` while a client publishes:
/// the others elect a leader of their own and the old one steps down
/// (publishes go on through the new one); after `heal` every acknowledged
/// message is there.
async fn leader_cut_off_under_load(fault: impl Fn(&str) -> Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProc::start(dir.path());
    let (mut g, old, term, p) = settled_under_load(&broker).await;

    let args = fault(&old);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = g.lab.fault(&args);
    assert!(out.contains("cut"), "{out}");
    let during = mom_group(
        &mut g.stats,
        "a new leader, the old one stepped down",
        |l| {
            let new = l
                .iter()
                .any(|(n, s)| *n != old && s.raft.role == Role::Leader && s.raft.term > term);
            new && l.get(&old).is_some_and(|s| s.raft.role != Role::Leader)
        },
    )
    .await;
    p.progress(30, "during the cut").await;
    let new = during
        .iter()
        .find(|(n, s)| **n != old && s.raft.role == Role::Leader)
        .map(|(n, _)| n.clone())
        .unwrap();
    eprintln!("{old} cut off ({args:?}); {new} leads");

    let out = g.lab.fault(&["heal"]);
    assert!(out.contains("no fault rules"), "{out}");
    p.progress(20, "after the heal").await;
    let (acked, _) = p.finish().await;
    assert_nothing_lost(&mut g, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4mb_burst_on_the_bus_changes_no_leader() {
    use rumqttc::QoS;

    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProc::start(dir.path());
    let (mut g, leader, term, p) = settled_under_load(&broker).await;
    let rss_before = broker.rss();

    let (raw, pump) = raw_client(&g.lab, "burst");
    let t = distlab_node::envelope::Topics::new(&g.lab.cluster);
    let big = vec![b'x'; 4 * 1024 * 1024 - 1024];
    // Thirty 4 MB messages to every member's raft topic and heartbeats
    // (720 MB through the broker).
    // Half of them raw bytes, half well-formed envelopes from a member's
    // name carrying a 3 MB frame that is no raft message (so they reach
    // the replication, which must drop them and go on).
    let member = g.lab.client("mom-b").await;
    let frame = distlab_node::replica::transport::Frame {
        seq: 1,
        part: 0,
        parts: 1,
        data: "A".repeat(3 * 1024 * 1024),
    };
    let enveloped = member.envelope("raft", &frame);
    for _ in 0..30 {
        for node in MEMBERS {
            let raft = t.service("mom", &format!("raft/{node}"));
            raw.publish(t.heartbeat(node), QoS::AtLeastOnce, false, big.clone())
                .await
                .unwrap();
            member.publish(&raft, &enveloped).await.unwrap();
        }
    }
    p.progress(50, "after the burst").await;
    // Memory falls once the subscribers have drained the burst, to what
    // rumqttd keeps: each connection's write buffer at the largest batch it
    // sent (until the connection closes), each subscription's last two
    // segments, and the publisher's read buffers those pin. Measured here
    // over 12 runs: 13 MB before, 170 to 600 MB at the peak, 117 to 473 MB
    // after (with rumqttd's 8 segments and glibc's default thresholds:
    // 430 to 920 MB). Bounded, not back where it was (see the README).
    let bound = 640 << 20;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rss_after = broker.rss();
    while rss_after >= bound && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rss_after = broker.rss();
    }
    let peak = broker.peak_rss();
    eprintln!(
        "broker memory: {} MB before the burst, {} MB at the peak, {} MB after it",
        rss_before >> 20,
        peak >> 20,
        rss_after >> 20
    );
    assert!(
        rss_after < bound,
        "the broker still holds {} MB 30 s after the burst",
        rss_after >> 20
    );
    let (acked, _) = p.finish().await;
    let after = mom_group(&mut g.stats, "all three converged", |l| {
        settled_leader(l, &MEMBERS).is_some()
    })
    .await;
    assert_eq!(
        settled_leader(&after, &MEMBERS).as_deref(),
        Some(leader.as_str()),
        "the same leader"
    );
    assert_eq!(after[&leader].raft.term, term, "no election happened");
    assert_nothing_lost(&mut g, &acked).await;
    pump.abort();
}

/// A broker that other machines can reach serves TLS only; nodes whose
/// credentials file pins its certificate replicate through it, and a
/// client without the pin, or pinning another certificate, is not let in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mom_group_replicates_through_a_tls_broker_it_pins() {
    use distlab_node::broker::probe;

    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProc::start_beyond_loopback(dir.path());
    let pinned = broker.addr.credentials.clone().unwrap();
    let fp = pinned
        .broker_fingerprint
        .expect("the broker wrote its certificate's fingerprint into the credentials file");
    let at = ("127.0.0.1", broker.addr.port);
    let t = Duration::from_secs(3);
    probe(at, Some(&pinned), t).unwrap();
    let plain = pinned.clone().pinning(None);
    assert!(probe(at, Some(&plain), t).is_err(), "plain MQTT let in");
    let other = tempfile::tempdir().unwrap();
    let wrong = distlab_node::tls::BrokerCert::load_or_create(other.path()).unwrap();
    assert_ne!(wrong.fingerprint, fp);
    let err = probe(at, Some(&plain.pinning(Some(wrong.fingerprint))), t).unwrap_err();
    assert!(err.to_string().contains("not the pinned"), "{err}");

    // Three MOM nodes get the pinned credentials in their environment.
    let mut g = group(broker.addr.clone()).await;
    let p = Publisher::start(g.mom.clone(), g.key.clone());
    p.progress(30, "through TLS").await;
    let (acked, _) = p.finish().await;
    assert_nothing_lost(&mut g, &acked).await;
}
