//! The IoT pipeline with real processes: sensors → receivers → signed grants
//! → store; attacks on the token; killing each kind of node.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use distlab_node::bus::{Bus, RpcError};
use distlab_node::config::TokenMode;
use distlab_node::presence::MemberState;
use distlab_node::services::iot::coordinator::CoordinatorStats;
use distlab_node::services::iot::receiver::{ReceiverStats, WriteRequest};
use distlab_node::services::iot::sensor::SensorSim;
use distlab_node::services::iot::store::{StoreHttp, StoreStats};
use distlab_node::services::iot::token::{Grant, KeyPair, SignedGrant};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::sync::mpsc::Receiver;

use crate::harness::{Lab, embedded_broker};

const T: Duration = Duration::from_secs(20);
const NODES: [&str; 5] = ["sensors", "recv-a", "recv-b", "coord", "store"];

fn iot_lab() -> Lab {
    iot_lab_with(400, "central")
}

fn iot_lab_with(lease_ms: u64, mode: &str) -> Lab {
    Lab::with_config(embedded_broker(), |cluster| {
        format!(
            "[lab]\nname = \"{cluster}\"\nheartbeat_ms = 200\n\n[iot]\nsensors = 6\nperiod_ms = [10, 20]\n\
             buffer = 1000\nlease_ms = {lease_ms}\nmode = \"{mode}\"\nrefresh_ms = 1000\nhttp = \"127.0.0.1:0\"\n\n\
             [[node]]\nid = \"sensors\"\nroles = [\"sensors\"]\n\n[[node]]\nid = \"recv-a\"\nroles = [\"receiver\"]\n\n\
             [[node]]\nid = \"recv-b\"\nroles = [\"receiver\"]\n\n[[node]]\nid = \"coord\"\nroles = [\"coordinator\"]\n\n\
             [[node]]\nid = \"store\"\nroles = [\"store\"]\n"
        )
    })
}

/// Latest telemetry per node, from `telemetry/+/<service>`.
struct Telemetry {
    rx: Receiver<distlab_node::bus::Incoming>,
    latest: BTreeMap<String, Value>,
}

impl Telemetry {
    async fn new(bus: &Bus, service: &str) -> Telemetry {
        let filter = format!("{}/telemetry/+/{service}", bus.topics().prefix());
        Telemetry {
            rx: bus.subscribe(&filter).await.unwrap(),
            latest: BTreeMap::new(),
        }
    }

    fn drain(&mut self) {
        while let Ok(m) = self.rx.try_recv() {
            self.latest
                .insert(m.envelope.from.clone(), m.envelope.body.to_value());
        }
    }

    fn get<T: serde::de::DeserializeOwned>(&mut self, node: &str) -> Option<T> {
        self.drain();
        self.latest
            .get(node)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    async fn wait<T: serde::de::DeserializeOwned + std::fmt::Debug>(
        &mut self,
        node: &str,
        what: &str,
        pred: impl Fn(&T) -> bool,
    ) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = self.get::<T>(node).filter(|v| pred(v)) {
                return v;
            }
            assert!(
                start.elapsed() < T,
                "{node}: not {what} within {T:?}; last {:?}",
                self.get::<T>(node)
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

async fn store_http(bus: &Bus) -> String {
    let mut rx = bus
        .subscribe(&bus.topics().service("iot", "store-http"))
        .await
        .unwrap();
    let m = tokio::time::timeout(T, rx.recv())
        .await
        .expect("store http address")
        .unwrap();
    m.envelope.body_as::<StoreHttp>().unwrap().addr
}

/// A tiny HTTP/1.1 GET (no client crate needed for one request).
async fn http_get(addr: &str, path: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn start_all(lab: &mut Lab) -> BTreeMap<&'static str, u32> {
    let mut obs = lab.observer().await;
    let mut pids = BTreeMap::new();
    for node in NODES {
        pids.insert(node, lab.spawn(node));
    }
    for (node, pid) in &pids {
        obs.wait_state(node, MemberState::Up, *pid, T).await;
    }
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_flow_to_the_store_exactly_once() {
    flows_exactly_once(iot_lab()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_ring_mode_readings_flow_exactly_once_too() {
    flows_exactly_once(iot_lab_with(400, "ring")).await;
}

async fn flows_exactly_once(mut lab: Lab) {
    let client = lab.client("tester").await;
    let mut receivers = Telemetry::new(&client, "receiver").await;
    let mut stores = Telemetry::new(&client, "store").await;
    let pids = start_all(&mut lab).await;
    let addr = store_http(&client).await;

    stores
        .wait::<StoreStats>("store", "writing", |s| s.rows >= 300)
        .await;
    let (status, body) = http_get(&addr, "/get_measurements/5").await;
    assert_eq!(status, 200);
    let rows = body["measurements"]
        .as_array()
        .expect("seed shape: {measurements: [...]}");
    assert_eq!(rows.len(), 5);
    for key in [
        "sensor",
        "humidity",
        "temperature",
        "pressure",
        "battery",
        "ts",
    ] {
        assert!(rows[0].get(key).is_some(), "missing {key}: {}", rows[0]);
    }
    let (status, body) = http_get(&addr, "/get_measurements/lots").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("lots"));
    let (status, body) = http_get(&addr, "/health").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));

    // Stop the sensors; once the receivers are drained, every accepted
    // reading is in the table, once.
    lab.signal(pids["sensors"], Signal::SIGTERM);
    for r in ["recv-a", "recv-b"] {
        let s: ReceiverStats = receivers
            .wait(r, "drained", |s: &ReceiverStats| s.buffered == 0)
            .await;
        assert_eq!(s.dropped, 0, "{r}: {s:?}");
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Readings still in flight when the sensors stopped may have arrived
    // since: take both counts from the same, settled, snapshot.
    let settled: Vec<ReceiverStats> = ["recv-a", "recv-b"]
        .iter()
        .map(|r| receivers.get::<ReceiverStats>(r).unwrap())
        .collect();
    assert!(settled.iter().all(|s| s.buffered == 0), "{settled:?}");
    let accepted: u64 = settled.iter().map(|s| s.accepted).sum();
    let written: u64 = settled.iter().map(|s| s.written).sum();
    let store: StoreStats = stores
        .wait("store", "caught up", |s: &StoreStats| s.rows == written)
        .await;
    assert_eq!(
        accepted, written,
        "accepted readings minus dropped must all be written"
    );
    // Under load an honest holder can be late (expired, stale_epoch: it then
    // retries under its next grant), but it is never taken for an intruder.
    for reason in ["bad_signature", "wrong_holder", "replayed", "no_key"] {
        assert!(!store.rejected.contains_key(reason), "{store:?}");
    }

    let db = rusqlite::Connection::open(lab.data_dir().join("store/meas.db")).unwrap();
    let (rows, distinct): (i64, i64) = db
        .query_row(
            "SELECT COUNT(*), COUNT(DISTINCT sensor || '@' || ts_ms) FROM meas",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(rows as u64, written);
    assert_eq!(rows, distinct, "a (sensor, timestamp) was written twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_stale_and_misdirected_tokens_are_rejected() {
    let mut lab = iot_lab();
    let client = lab.client("tester").await;
    let mut grants = client
        .subscribe(&client.topics().service("iot", "grant"))
        .await
        .unwrap();
    let mut stores = Telemetry::new(&client, "store").await;
    let pids = start_all(&mut lab).await;
    stores
        .wait::<StoreStats>("store", "writing", |s| s.rows > 0)
        .await;

    // Real grants for recv-a, seen on the bus; keep one the store has
    // committed a batch under (its `grants_used` table says which).
    let mut seen = std::collections::HashMap::new();
    let db_path = lab.data_dir().join("store/meas.db");
    let captured = loop {
        let m = tokio::time::timeout(T, grants.recv())
            .await
            .unwrap()
            .unwrap();
        let g: SignedGrant = m.envelope.body_as().unwrap();
        if g.grant.holder == "recv-a" {
            seen.insert((g.grant.epoch, g.grant.seq), g);
        }
        let db = rusqlite::Connection::open(&db_path).unwrap();
        let used: Vec<(i64, i64)> = db
            .prepare("SELECT epoch, seq FROM grants_used WHERE holder = 'recv-a'")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        if let Some(g) = used
            .iter()
            .find_map(|(e, q)| seen.get(&(*e as u64, *q as u64)))
        {
            break g.clone();
        }
    };
    let mut sim = SensorSim::new("attacker-s", 9, (10, 10));
    let junk: Vec<_> = (0..3).map(|i| sim.next(i)).collect();
    // An intruder has grants, but not the holders' keys: no valid proof.
    let write = |grant: SignedGrant| {
        json!(WriteRequest {
            grant,
            readings: junk.clone(),
            proof: String::new(),
        })
    };
    let rejected = |r: Result<distlab_node::envelope::Envelope, RpcError>| match r {
        Err(RpcError::Remote { message, .. }) => message,
        other => panic!("expected a rejection, got {other:?}"),
    };

    // Forged: signed with a key that is not the coordinator's.
    let forger = KeyPair::from_seed([1; 32]);
    let now = distlab_node::envelope::now_ms();
    let forged = forger.sign(Grant {
        holder: "tester".into(),
        epoch: 99,
        seq: 1,
        issued_ms: now,
        expires_ms: now + 60_000,
        holder_key: forger.public_hex(),
        ring: Vec::new(),
    });
    let msg = rejected(
        client
            .request("store", "store", "write", write(forged), T)
            .await,
    );
    assert!(msg.contains("bad_signature"), "{msg}");

    // Someone else's grant.
    let msg = rejected(
        client
            .request("store", "store", "write", write(captured.clone()), T)
            .await,
    );
    assert!(msg.contains("wrong_holder"), "{msg}");

    // Replayed under recv-a's own name: without recv-a's key it is refused.
    let spoof = lab.client("recv-a").await;
    let msg = rejected(
        spoof
            .request("store", "store", "write", write(captured.clone()), T)
            .await,
    );
    assert!(
        msg.contains("wrong_holder") || msg.contains("stale_epoch"),
        "{msg}"
    );

    // Even with recv-a's own key (read from its data dir), an already used
    // grant cannot carry other data: a replay.
    let stolen = KeyPair::load_or_create(&lab.data_dir().join("recv-a/receiver.key")).unwrap();
    let digest = distlab_node::services::iot::db::digest(&junk);
    let proven = json!(WriteRequest {
        grant: captured.clone(),
        readings: junk.clone(),
        proof: stolen.prove(&captured.grant, digest),
    });
    let msg = rejected(spoof.request("store", "store", "write", proven, T).await);
    assert!(
        msg.contains("replayed") || msg.contains("stale_epoch"),
        "{msg}"
    );

    // Kill the coordinator and restart it: a new epoch makes old grants stale.
    lab.signal(pids["coord"], Signal::SIGKILL);
    let mut obs = lab.observer().await;
    obs.wait_state("coord", MemberState::Down, pids["coord"], T)
        .await;
    // No coordinator, no grants: once in-flight writes are done, writes pause.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let paused_at = stores.get::<StoreStats>("store").unwrap().rows;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rows_before = stores.get::<StoreStats>("store").unwrap().rows;
    assert_eq!(
        rows_before, paused_at,
        "rows were written without a coordinator"
    );
    let coord = lab.spawn("coord");
    let mut coordinators = Telemetry::new(&client, "coordinator").await;
    coordinators
        .wait::<CoordinatorStats>("coord", "in a new epoch", |c| {
            c.epoch > captured.grant.epoch && c.grants > 0
        })
        .await;
    stores
        .wait::<StoreStats>("store", "writing again", |s| s.rows > rows_before)
        .await;
    let msg = rejected(
        spoof
            .request("store", "store", "write", write(captured.clone()), T)
            .await,
    );
    assert!(msg.contains("stale_epoch"), "{msg}");
    let _ = coord;

    let stats: StoreStats = stores
        .wait("store", "counting", |s: &StoreStats| {
            s.rejected.contains_key("stale_epoch")
        })
        .await;
    for reason in ["bad_signature", "wrong_holder", "stale_epoch"] {
        assert!(stats.rejected.contains_key(reason), "{stats:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_holder_or_the_store_loses_nothing_committed() {
    kill_holder_then_store(TokenMode::Central).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_ring_mode_killing_a_holder_or_the_store_loses_nothing_committed() {
    kill_holder_then_store(TokenMode::Ring).await;
}

async fn kill_holder_then_store(mode: TokenMode) {
    // A long lease, so a new epoch within it can only come from the holder's death.
    const LEASE: Duration = Duration::from_secs(10);
    let mut lab = iot_lab_with(LEASE.as_millis() as u64, mode.as_str());
    let client = lab.client("tester").await;
    let mut stores = Telemetry::new(&client, "store").await;
    let mut coordinators = Telemetry::new(&client, "coordinator").await;
    let pids = start_all(&mut lab).await;
    stores
        .wait::<StoreStats>("store", "writing", |s| s.rows > 100)
        .await;
    // The coordinator follows the token in either mode.
    coordinators
        .wait("coord", "in its mode", |c: &CoordinatorStats| {
            c.mode == mode && c.grants > 2
        })
        .await;

    // Freeze the store: the next holder waits on it and keeps the token.
    lab.signal(pids["store"], Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stuck: CoordinatorStats = coordinators
        .wait("coord", "granting", |c: &CoordinatorStats| {
            c.holder.is_some()
        })
        .await;
    let holder = stuck.holder.clone().unwrap();
    let holder_pid = if holder == "recv-a" {
        pids["recv-a"]
    } else {
        pids["recv-b"]
    };
    lab.signal(holder_pid, Signal::SIGKILL);
    let started = Instant::now();
    let next: CoordinatorStats = coordinators
        .wait("coord", "in a new epoch", |c: &CoordinatorStats| {
            c.epoch > stuck.epoch
        })
        .await;
    eprintln!(
        "holder {holder} killed -> epoch {} in {:?}",
        next.epoch,
        started.elapsed()
    );
    assert!(
        started.elapsed() < LEASE,
        "the grant was only reissued at expiry"
    );
    assert_ne!(next.holder.as_deref(), Some(holder.as_str()));
    lab.signal(pids["store"], Signal::SIGCONT);
    let rows = stores
        .wait::<StoreStats>("store", "back", |_| true)
        .await
        .rows;
    stores
        .wait::<StoreStats>("store", "writing on", |s| s.rows > rows + 50)
        .await;

    // Kill and restart the store: every committed row is still there.
    let before = stores.get::<StoreStats>("store").unwrap().rows;
    lab.signal(pids["store"], Signal::SIGKILL);
    lab.wait_exit(pids["store"], T);
    let db = rusqlite::Connection::open(lab.data_dir().join("store/meas.db")).unwrap();
    let on_disk: i64 = db
        .query_row("SELECT COUNT(*) FROM meas", [], |r| r.get(0))
        .unwrap();
    let on_disk = on_disk as u64;
    assert!(
        on_disk >= before,
        "committed rows lost: {on_disk} < {before}"
    );
    let store = lab.spawn("store");
    let mut obs = lab.observer().await;
    obs.wait_state("store", MemberState::Up, store, T).await;
    stores
        .wait::<StoreStats>("store", "writing after restart", |s| s.rows > on_disk + 50)
        .await;
    let after: (i64, i64) = db
        .query_row(
            "SELECT COUNT(*), COUNT(DISTINCT sensor || '@' || ts_ms) FROM meas",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(after.0, after.1, "a reading was written twice");
}
