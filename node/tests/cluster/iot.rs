//! The IoT pipeline with real processes: sensors → receivers → signed grants
//! → store; attacks on the token; killing each kind of node.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use distlab_node::bus::{Bus, Incoming, RpcError};
use distlab_node::config::TokenMode;
use distlab_node::envelope::now_ms;
use distlab_node::presence::MemberState;
use distlab_node::services::iot::coordinator::CoordinatorStats;
use distlab_node::services::iot::keys::KeyPair;
use distlab_node::services::iot::receiver::{ReceiverStats, WriteRequest};
use distlab_node::services::iot::sensor::SensorSim;
use distlab_node::services::iot::store::{StoreHttp, StoreStats};
use distlab_node::services::iot::token::{Grant, SignedGrant};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::sync::mpsc::Receiver;

use crate::harness::{Lab, embedded_broker};

const T: Duration = Duration::from_secs(20);
const NODES: [&str; 5] = ["sensors", "recv-a", "recv-b", "coord", "store"];
const RECEIVERS: [&str; 2] = ["recv-a", "recv-b"];
/// The lease of [`iot_lab`].
const LEASE_MS: u64 = 400;

fn iot_lab() -> Lab {
    iot_lab_with(LEASE_MS, "central")
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

/// Latest telemetry per node, from `telemetry/+/<service>`, with when it
/// was sent.
struct Telemetry {
    rx: Receiver<Incoming>,
    latest: BTreeMap<String, (u64, Value)>,
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
            self.latest.insert(
                m.envelope.from.clone(),
                (m.envelope.sent_ms, m.envelope.body.to_value()),
            );
        }
    }

    fn get<T: serde::de::DeserializeOwned>(&mut self, node: &str) -> Option<T> {
        self.get_since(node, 0)
    }

    /// The latest snapshot, if it was sent at `since_ms` or later.
    fn get_since<T: serde::de::DeserializeOwned>(
        &mut self,
        node: &str,
        since_ms: u64,
    ) -> Option<T> {
        self.drain();
        self.latest
            .get(node)
            .filter(|(sent, _)| *sent >= since_ms)
            .and_then(|(_, v)| serde_json::from_value(v.clone()).ok())
    }

    async fn wait<T: serde::de::DeserializeOwned + std::fmt::Debug>(
        &mut self,
        node: &str,
        what: &str,
        pred: impl Fn(&T) -> bool,
    ) -> T {
        self.wait_since(node, what, 0, pred).await
    }

    /// Waits for a snapshot sent at `since_ms` or later that satisfies `pred`.
    async fn wait_since<T: serde::de::DeserializeOwned + std::fmt::Debug>(
        &mut self,
        node: &str,
        what: &str,
        since_ms: u64,
        pred: impl Fn(&T) -> bool,
    ) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = self.get_since::<T>(node, since_ms).filter(|v| pred(v)) {
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

/// Polls `f` until it gives a value (at most [`T`]).
async fn eventually<V>(what: &str, mut f: impl FnMut() -> Option<V>) -> V {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < T, "not {what} within {T:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The next grant on `iot/grant` that satisfies `pred` (at most [`T`]).
async fn next_grant(
    grants: &mut Receiver<Incoming>,
    what: &str,
    pred: impl Fn(&SignedGrant) -> bool,
) -> SignedGrant {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let m = tokio::time::timeout_at(deadline, grants.recv())
            .await
            .unwrap_or_else(|_| panic!("no grant {what} within {T:?}"))
            .expect("the test's bus is open");
        if let Ok(g) = m.envelope.body_as::<SignedGrant>()
            && pred(&g)
        {
            return g;
        }
    }
}

/// Rows in the store's table, read from its database file.
fn db_rows(db: &rusqlite::Connection) -> u64 {
    db.query_row("SELECT COUNT(*) FROM meas", [], |r| r.get::<_, i64>(0))
        .unwrap() as u64
}

/// `(rows, distinct (sensor, timestamp) pairs)` in the store's table.
fn db_rows_and_distinct(db: &rusqlite::Connection) -> (i64, i64) {
    db.query_row(
        "SELECT COUNT(*), COUNT(DISTINCT sensor || '@' || ts_ms) FROM meas",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

/// Sends `query` to the store until it answers (its RPC subscription comes
/// up a little after its presence); returns the reply's body.
async fn query_store(bus: &Bus, n: u64) -> Value {
    let start = Instant::now();
    loop {
        match bus
            .request(
                "store",
                "store",
                "query",
                json!({ "n": n }),
                Duration::from_secs(1),
            )
            .await
        {
            Ok(reply) => return reply.body.to_value(),
            Err(RpcError::Timeout { .. }) if start.elapsed() < T => {}
            Err(err) => panic!("the store does not answer a query: {err}"),
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
    m.envelope.body_as::<StoreHttp>().unwrap().addr.to_string()
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

/// Waits until `node` (PID `pid`) is up.
async fn obs_up(lab: &Lab, node: &str, pid: u32) {
    let mut obs = lab.observer().await;
    obs.wait_state(node, MemberState::Up, pid, T).await;
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
    // The seed's reader: GET /get_measurements/<n>, each row read as a list
    // (`item[1]` the sensor … `item[6]` the timestamp), newest first.
    let (status, body) = http_get(&addr, "/get_measurements/5").await;
    assert_eq!(status, 200);
    let rows = body["measurements"]
        .as_array()
        .expect("seed shape: {measurements: [...]}");
    assert_eq!(rows.len(), 5);
    for row in rows {
        let item = row
            .as_array()
            .expect("a row is a list, as the seed's reader indexes it");
        assert_eq!(item.len(), 7, "{row}");
        assert!(item[0].is_i64() && item[1].is_string(), "{row}");
        for value in &item[2..6] {
            assert!(value.is_f64() || value.is_i64(), "{row}");
        }
        // `2026-11-23 05:43:21.452000`, as Python printed the seed's
        // datetimes (and without the fraction on a whole second).
        let ts = item[6].as_str().unwrap();
        assert_eq!(&ts[10..11], " ", "{ts}");
        assert!(
            (ts.len() == 26 && &ts[19..20] == ".") || ts.len() == 19,
            "{ts}"
        );
    }
    let ids: Vec<i64> = rows.iter().map(|r| r[0].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    for bad in ["lots", "-1", "1.5"] {
        let (status, _) = http_get(&addr, &format!("/get_measurements/{bad}")).await;
        assert_eq!(status, 404, "the seed's <int:n> does not match {bad}");
    }
    // The JSON path: objects, oldest first, a 400 on a bad n.
    let (status, body) = http_get(&addr, "/api/v1/measurements?n=5").await;
    assert_eq!(status, 200);
    let objects = body["measurements"].as_array().unwrap();
    assert_eq!(objects.len(), 5);
    for key in [
        "id",
        "sensor",
        "humidity",
        "temperature",
        "pressure",
        "battery",
        "ts",
    ] {
        assert!(
            objects[0].get(key).is_some(),
            "missing {key}: {}",
            objects[0]
        );
    }
    let ids: Vec<i64> = objects.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");
    let (status, body) = http_get(&addr, "/api/v1/measurements?n=lots").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("n="), "{body}");
    let (status, body) = http_get(&addr, "/health").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));

    // Stop the sensors. Settled: neither receiver holds a reading and the
    // store has exactly what they wrote, in its telemetry and on disk.
    // Readings still on their way when the sensors stopped only delay this.
    lab.signal(pids["sensors"], Signal::SIGTERM);
    lab.wait_exit(pids["sensors"], T);
    let db = rusqlite::Connection::open(lab.data_dir().join("store/meas.db")).unwrap();
    let (settled, store) = eventually("settled", || {
        let settled: Vec<ReceiverStats> = RECEIVERS
            .iter()
            .map(|r| receivers.get::<ReceiverStats>(r))
            .collect::<Option<_>>()?;
        let written: u64 = settled.iter().map(|s| s.written).sum();
        let store = stores.get::<StoreStats>("store")?;
        let done = settled.iter().all(|s| s.buffered == 0)
            && store.rows == written
            && db_rows(&db) == written;
        done.then_some((settled, store))
    })
    .await;
    for (r, s) in RECEIVERS.iter().zip(&settled) {
        assert_eq!(s.dropped, 0, "{r}: {s:?}");
        assert_eq!(
            s.accepted, s.written,
            "{r}: accepted readings minus dropped must all be written: {s:?}"
        );
    }
    // Under load an honest holder can be late (expired, stale_epoch: it then
    // retries under its next grant), but it is never taken for an intruder.
    for reason in ["bad_signature", "wrong_holder", "replayed", "no_key"] {
        assert!(!store.rejected.contains_key(reason), "{store:?}");
    }
    let (rows, distinct) = db_rows_and_distinct(&db);
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
    let mut receivers = Telemetry::new(&client, "receiver").await;
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
    let now = now_ms();
    let forge = |epoch| {
        forger.sign(Grant {
            holder: "tester".into(),
            epoch,
            seq: 1,
            issued_ms: now,
            expires_ms: now + 60_000,
            holder_key: forger.public_hex(),
            ring: Vec::new(),
        })
    };
    let forged = forge(99);
    let msg = rejected(
        client
            .request("store", "store", "write", write(forged), T)
            .await,
    );
    assert!(msg.contains("bad_signature"), "{msg}");

    // The forger announces its own key as the coordinator's (retained, and
    // under the coordinator's name): the store and the receivers pinned
    // the real one at first sight and refuse it; the forged grant stays
    // forged, and the pipeline goes on.
    let impostor = lab.client("coord").await;
    let forged_key = json!({"coordinator": "coord", "public": forger.public_hex()});
    let key_topic = impostor.topics().service("iot", "key");
    let envelope = impostor.envelope("iot-key", &forged_key);
    impostor
        .publish_retained(&key_topic, &envelope)
        .await
        .unwrap();
    for node in ["store", "recv-a"] {
        crate::harness::assert_file_mentions(&lab.log_path(node, 0), "is not the one pinned");
    }
    let msg = rejected(
        client
            .request("store", "store", "write", write(forge(100)), T)
            .await,
    );
    assert!(msg.contains("bad_signature"), "{msg}");
    let before = stores
        .wait::<StoreStats>("store", "a report", |_| true)
        .await
        .rows;
    stores
        .wait::<StoreStats>("store", "still writing", |s| s.rows > before)
        .await;

    // Someone else's grant: genuine (signed with the coordinator's own key,
    // read from its data dir), for recv-a, of an epoch still to come (a
    // grant copied off the bus may be stale by now), sent by the tester.
    let coordinator =
        KeyPair::load_or_create(&lab.data_dir().join("coord/coordinator.key")).unwrap();
    let theirs = coordinator.sign(Grant {
        epoch: captured.grant.epoch + 1_000,
        issued_ms: now,
        expires_ms: now + 60_000,
        ..captured.grant.clone()
    });
    let msg = rejected(
        client
            .request("store", "store", "write", write(theirs), T)
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
    lab.wait_exit(pids["coord"], T);
    // Every grant it made was made by now, valid for LEASE_MS at most.
    let last_expiry = now_ms() + LEASE_MS;
    let mut obs = lab.observer().await;
    obs.wait_state("coord", MemberState::Down, pids["coord"], T)
        .await;
    // Wait out the last grant's expiry, then ask the store something: it
    // handles requests one at a time, so once it answers, every write it
    // admitted is committed, and any write it takes from now on is expired.
    tokio::time::sleep(Duration::from_millis(
        last_expiry.saturating_sub(now_ms()) + 1,
    ))
    .await;
    query_store(&client, 1).await;
    let db = rusqlite::Connection::open(&db_path).unwrap();
    let paused_at = db_rows(&db);
    // Readings keep coming into both receivers meanwhile: they would write
    // them if anyone held a token.
    let quiet_since = now_ms();
    for r in RECEIVERS {
        let first: ReceiverStats = receivers
            .wait_since(r, "reporting", quiet_since, |_| true)
            .await;
        receivers
            .wait_since(r, "receiving", quiet_since, |s: &ReceiverStats| {
                s.buffered > 0 && s.accepted + s.dropped >= first.accepted + first.dropped + 50
            })
            .await;
    }
    let rows_before = db_rows(&db);
    assert_eq!(
        rows_before, paused_at,
        "rows were written without a coordinator"
    );
    let store_now: StoreStats = stores
        .wait_since("store", "reporting", quiet_since, |_| true)
        .await;
    assert_eq!(store_now.rows, paused_at, "{store_now:?}");
    lab.spawn("coord");
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

    // Freeze the store: a holder's write then waits on it (up to 2 s) and
    // the holder keeps the token meanwhile.
    let mut grants = client
        .subscribe(&client.topics().service("iot", "grant"))
        .await
        .unwrap();
    let mut pids = pids;
    lab.signal(pids["store"], Signal::SIGSTOP);
    let mut after_ms = now_ms();
    let mut attempts = 0;
    let (holder, killed, next) = loop {
        // A grant made after the freeze: its holder is stuck on the store.
        let granted = next_grant(&mut grants, "after the freeze", |g| {
            g.grant.issued_ms >= after_ms && RECEIVERS.contains(&g.grant.holder.as_str())
        })
        .await;
        let holder = granted.grant.holder.clone();
        let holder_pid = pids[holder.as_str()];
        lab.signal(holder_pid, Signal::SIGKILL);
        // What follows that grant tells whether its holder died holding it:
        // a new epoch, or the token handed on in the same epoch.
        let (epoch, seq) = (granted.grant.epoch, granted.grant.seq);
        let next = next_grant(&mut grants, "after the kill", |g| {
            g.grant.epoch > epoch || (g.grant.epoch == epoch && g.grant.seq > seq)
        })
        .await;
        if next.grant.epoch > epoch {
            break (holder, granted, next);
        }
        // It had nothing to write and handed the token on before it died:
        // bring it back and try again.
        attempts += 1;
        assert!(attempts < 3, "no holder could be killed while holding");
        lab.wait_exit(holder_pid, T);
        let again = lab.spawn(&holder);
        obs_up(&lab, &holder, again).await;
        let node = RECEIVERS.into_iter().find(|r| *r == holder).unwrap();
        pids.insert(node, again);
        after_ms = now_ms();
    };
    eprintln!(
        "holder {holder} killed in epoch {} -> epoch {} after {} ms",
        killed.grant.epoch,
        next.grant.epoch,
        next.grant.issued_ms.saturating_sub(killed.grant.issued_ms)
    );
    // The coordinator's own clock says it: reissued before the lease ended.
    assert!(
        next.grant.issued_ms < killed.grant.expires_ms,
        "the grant was only reissued at expiry: {next:?} after {killed:?}"
    );
    assert_ne!(next.grant.holder, holder);
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
    let on_disk = db_rows(&db);
    assert!(
        on_disk >= before,
        "committed rows lost: {on_disk} < {before}"
    );
    let store = lab.spawn("store");
    obs_up(&lab, "store", store).await;
    stores
        .wait::<StoreStats>("store", "writing after restart", |s| s.rows > on_disk + 50)
        .await;
    let after = db_rows_and_distinct(&db);
    assert_eq!(after.0, after.1, "a reading was written twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_or_malformed_request_gets_a_clear_error_and_the_store_serves_on() {
    let mut lab = iot_lab();
    let client = lab.client("tester").await;
    let store = lab.spawn("store");
    obs_up(&lab, "store", store).await;
    assert_eq!(query_store(&client, 5).await["measurements"], json!([]));
    let refused = |r: Result<distlab_node::envelope::Envelope, RpcError>| match r {
        Err(RpcError::Remote { message, .. }) => message,
        other => panic!("expected an error reply, got {other:?}"),
    };

    let msg = refused(
        client
            .request("store", "store", "frobnicate", json!({ "n": 1 }), T)
            .await,
    );
    assert_eq!(
        msg,
        "unknown request kind `frobnicate`; the store answers `write` and `query`"
    );
    let msg = refused(
        client
            .request("store", "store", "write", json!({ "readings": [] }), T)
            .await,
    );
    assert!(msg.starts_with("malformed write request: "), "{msg}");

    // Still serving, in the same process.
    assert!(query_store(&client, 5).await["measurements"].is_array());
    assert!(lab.is_alive(store));
}
