//! The bookstore with real processes: the seed's API and its errors, and
//! the seed's client loop (search → lookup → buy, several clients) while
//! the catalog and order leaders are killed (or paused) and come back: no
//! client error, the ledger balances, and the replicas agree order for order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use distlab_node::bus::Bus;
use distlab_node::presence::MemberState;
use distlab_node::services::bookstore::check::{gather, verify};
use distlab_node::services::bookstore::frontend::FrontendHttp;
use distlab_node::services::bookstore::model::{BookError, Command};
use distlab_node::services::bookstore::wire::{
    Beat, CatalogReply, CatalogRequest, OrderReply, OrderRequest,
};
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::harness::{BrokerProc, Lab, embedded_broker};
use crate::mom::http;

const T: Duration = Duration::from_secs(30);
const NODES: [&str; 7] = [
    "catalog-a",
    "catalog-b",
    "catalog-c",
    "order-a",
    "order-b",
    "order-c",
    "frontend",
];
const CATALOGS: [&str; 3] = ["catalog-a", "catalog-b", "catalog-c"];
const ORDERS: [&str; 3] = ["order-a", "order-b", "order-c"];

fn bookstore_lab() -> Lab {
    bookstore_lab_on(embedded_broker())
}

fn bookstore_lab_on(broker: distlab_node::config::BrokerAddr) -> Lab {
    Lab::with_config(broker, |cluster| {
        let mut text = format!(
            "[lab]\nname = \"{cluster}\"\nheartbeat_ms = 200\n\n[bookstore]\nhttp = \"127.0.0.1:0\"\n\
             heartbeat_ms = 100\ntimeout_ms = 500\n"
        );
        for id in NODES {
            let role = id.split('-').next().unwrap_or(id);
            text.push_str(&format!(
                "\n[[node]]\nid = \"{id}\"\nroles = [\"{role}\"]\n"
            ));
        }
        text
    })
}

/// Starts every node; returns the pids (in [`NODES`] order) and the
/// frontend's address, once a catalog and an order replica serve.
async fn start_all(lab: &mut Lab) -> (Vec<u32>, String) {
    let client = lab.client("tester").await;
    let mut http_addr = client
        .subscribe(&client.topics().service("bookstore", "http/frontend"))
        .await
        .unwrap();
    let mut obs = lab.observer().await;
    let mut pids = Vec::new();
    for node in NODES {
        let pid = lab.spawn(node);
        obs.wait_state(node, MemberState::Up, pid, T).await;
        pids.push(pid);
    }
    let addr = loop {
        let m = tokio::time::timeout(T, http_addr.recv())
            .await
            .expect("frontend http address")
            .unwrap();
        let addr = m.envelope.body_as::<FrontendHttp>().unwrap().addr;
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            break addr.to_string();
        }
    };
    // Until both services have a leader, a buy may still wait: wait here.
    wait_leader(&client, &CATALOGS, None).await;
    wait_leader(&client, &ORDERS, None).await;
    (pids, addr)
}

/// Waits until one of `nodes` (not `not`) beats as the leader; returns it.
async fn wait_leader(client: &Bus, nodes: &[&str], not: Option<&str>) -> String {
    let topic = client.topics().service("bookstore", "beat/+");
    let mut beats = client.subscribe(&topic).await.unwrap();
    tokio::time::timeout(T, async {
        loop {
            let m = beats.recv().await.unwrap();
            if let Ok(beat) = m.envelope.body_as::<Beat>()
                && nodes.contains(&beat.node.as_str())
                && Some(beat.node.as_str()) != not
                && beat.state == "leader"
            {
                return beat.node;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("none of {nodes:?} (but {not:?}) became the leader"))
}

/// Waits until `node` beats as serving (it knows a leader).
async fn wait_serving(client: &Bus, node: &str) -> Beat {
    let topic = client
        .topics()
        .service("bookstore", &format!("beat/{node}"));
    let mut beats = client.subscribe(&topic).await.unwrap();
    tokio::time::timeout(T, async {
        loop {
            let m = beats.recv().await.unwrap();
            if let Ok(beat) = m.envelope.body_as::<Beat>()
                && beat.serving
            {
                return beat;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{node} never served"))
}

async fn get(addr: &str, path: &str) -> (u16, Value) {
    let a = http(addr, "GET", path, &[], None).await;
    assert!(
        a.content_type.starts_with("application/json"),
        "{path}: {}",
        a.content_type
    );
    (a.status, a.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_api_answers_in_its_shapes_and_bad_requests_get_clear_errors() {
    let mut lab = bookstore_lab();
    let (pids, addr) = start_all(&mut lab).await;

    let (status, body) = get(&addr, "/search?topic=distributed%20systems").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "Success");
    assert_eq!(body["validation_code"], 200);
    assert_eq!(body["message"], "");
    let items = body["item"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    for key in ["id", "title", "count", "cost", "topic"] {
        assert!(
            items[0].get(key).is_some(),
            "item has `{key}`: {}",
            items[0]
        );
    }

    let (status, body) = get(&addr, "/lookup?id=2").await;
    assert_eq!(status, 200);
    assert_eq!(body["item"][0]["title"], "RPCs for Dummies.");
    assert_eq!(body["item"][0]["count"], 100);

    let (status, body) = get(&addr, "/buy?id=2").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "Success");
    assert_eq!(body["frontend"], Value::Array(vec![]));
    // The cache was invalidated by the buy.
    let (_, body) = get(&addr, "/lookup?id=2").await;
    assert_eq!(body["item"][0]["count"], 99);

    for (path, code) in [
        ("/lookup?id=99", 404),
        ("/buy?id=99", 404),
        ("/lookup?id=abc", 400),
        ("/lookup", 400),
        ("/buy?id=-1", 400),
        ("/buy", 400),
        ("/search", 400),
        ("/search?topic=", 400),
        ("/search?topic=cooking", 404),
        ("/nothing", 404),
    ] {
        let (status, body) = get(&addr, path).await;
        assert_eq!(status, code, "{path}: {body}");
        assert_eq!(body["status"], "Failed", "{path}");
        assert_eq!(body["validation_code"], code, "{path}");
        assert!(
            !body["message"].as_str().unwrap_or("").is_empty(),
            "{path}: a message says why"
        );
    }

    // A restock made elsewhere reaches the frontend's cache (the seed's
    // cache kept showing the old count forever).
    let (_, body) = get(&addr, "/lookup?id=3").await;
    let before = body["item"][0]["count"].as_u64().unwrap();
    let client = lab.client("restocker").await;
    let restock = CatalogRequest::Apply {
        command: Command::Restock { book: 3, amount: 5 },
    };
    let reply = client
        .request("catalog", "catalog-b", "request", &restock, T)
        .await
        .unwrap();
    let answer = reply.body_as::<Result<CatalogReply, BookError>>().unwrap();
    assert!(
        answer.is_ok(),
        "restock through the replica (forwarded): {answer:?}"
    );
    let mut seen = before;
    for _ in 0..100 {
        let (_, body) = get(&addr, "/lookup?id=3").await;
        seen = body["item"][0]["count"].as_u64().unwrap();
        if seen == before + 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, before + 5, "the cached lookup shows the restock");

    // A sale whose buy was given up midway (sold, never recorded as an
    // order: its caller and the order leader gone, say) gets its order
    // from the order leader's reconciler.
    let sale = CatalogRequest::Apply {
        command: Command::Buy {
            order_id: "given-up-1".into(),
            book: 4,
            restock: 10,
            now_ms: 1,
        },
    };
    let reply = client
        .request("catalog", "catalog-c", "request", &sale, T)
        .await
        .unwrap();
    let answer = reply.body_as::<Result<CatalogReply, BookError>>().unwrap();
    assert!(answer.is_ok(), "a sale without its order: {answer:?}");
    let deadline = tokio::time::Instant::now() + T;
    let order = loop {
        let reply = client
            .request("order", "order-b", "request", &OrderRequest::Orders, T)
            .await
            .unwrap();
        if let Ok(Ok(OrderReply::Orders { orders })) =
            reply.body_as::<Result<OrderReply, BookError>>()
            && let Some(o) = orders.into_iter().find(|o| o.order_id == "given-up-1")
        {
            break o;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sale never got its order"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((order.book, order.ts_ms), (4, 1), "the sale's own order");

    // Every order server down: a buy is answered 503, it does not hang (the
    // seed's frontend kept a lock forever here).
    for pid in &pids[3..6] {
        lab.signal(*pid, Signal::SIGKILL);
    }
    let (status, body) = tokio::time::timeout(T, get(&addr, "/buy?id=1"))
        .await
        .expect("the frontend answers with every order server down");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "Failed");
    // Reads still work: the catalog is up.
    let (status, _) = get(&addr, "/lookup?id=3").await;
    assert_eq!(status, 200);
}

/// Outcome counts of the client loop.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    buys: AtomicU64,
    failed: AtomicU64,
}

impl Tally {
    /// Waits until the clients have bought `by` more books: the load runs
    /// (an event, not a span of time).
    async fn buys_grow(&self, by: u64) {
        let want = self.buys.load(Ordering::Relaxed) + by;
        tokio::time::timeout(T, async {
            while self.buys.load(Ordering::Relaxed) < want {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("fewer than {by} more buys within {T:?}"));
    }
}

/// Four of the seed's clients, seeded `seed`, `seed + 1`, …
fn start_clients(
    addr: &str,
    seed: u64,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|i| {
            tokio::spawn(client_loop(
                addr.to_owned(),
                seed + i,
                stop.clone(),
                tally.clone(),
            ))
        })
        .collect()
}

/// The seed's client: search a topic, look a book up, buy it; again.
async fn client_loop(addr: String, seed: u64, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let topics = ["distributed%20systems", "graduate%20school"];
    while !stop.load(Ordering::Relaxed) {
        let topic = topics[rng.usize(..2)];
        let (s, body) = get(&addr, &format!("/search?topic={topic}")).await;
        let ids: Vec<u64> = body["item"]
            .as_array()
            .map(|a| a.iter().filter_map(|b| b["id"].as_u64()).collect())
            .unwrap_or_default();
        let id = if ids.is_empty() {
            1
        } else {
            ids[rng.usize(..ids.len())]
        };
        let (l, _) = get(&addr, &format!("/lookup?id={id}")).await;
        let (b, body) = get(&addr, &format!("/buy?id={id}")).await;
        for (op, status) in [("search", s), ("lookup", l), ("buy", b)] {
            if status == 200 {
                tally.ok.fetch_add(1, Ordering::Relaxed);
            } else {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("{op} failed with {status}: {body}");
            }
        }
        if b == 200 {
            tally.buys.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The bookstore up, a checker on the bus, and four of the seed's clients
/// (seeded `seed`) buying; returns once they bought `buys` books.
struct Loaded {
    lab: Lab,
    pids: Vec<u32>,
    client: Bus,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

async fn loaded(seed: u64, buys: u64) -> Loaded {
    let mut lab = bookstore_lab();
    let (pids, addr) = start_all(&mut lab).await;
    let client = lab.client("checker").await;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients = start_clients(&addr, seed, &stop, &tally);
    tally.buys_grow(buys).await;
    Loaded {
        lab,
        pids,
        client,
        stop,
        tally,
        clients,
    }
}

impl Loaded {
    /// Stops the clients; how many requests failed.
    async fn stop_clients(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients.drain(..) {
            c.await.unwrap();
        }
        let failed = self.tally.failed.load(Ordering::Relaxed);
        eprintln!(
            "{} requests ok ({} buys), {failed} failed",
            self.tally.ok.load(Ordering::Relaxed),
            self.tally.buys.load(Ordering::Relaxed)
        );
        failed
    }

    /// Stops the clients: none of their requests failed, and every buy is
    /// on every replica once.
    async fn end_clean(mut self) {
        let failed = self.stop_clients().await;
        if failed > 0 {
            self.lab.print_logs();
        }
        assert_eq!(failed, 0, "client requests failed");
        let buys = self.tally.buys.load(Ordering::Relaxed);
        assert!(buys > 10, "the load ran ({buys} buys)");
        assert_consistent(&self.client, buys).await;
    }
}

/// Waits until `node` is serving again after a restart, then a bit of load.
async fn restart(lab: &mut Lab, client: &Bus, node: &str) -> u32 {
    let mut obs = lab.observer().await;
    let pid = lab.spawn(node);
    obs.wait_state(node, MemberState::Up, pid, T).await;
    wait_serving(client, node).await;
    pid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_see_no_error_while_replicas_crash_and_the_replicas_agree_afterwards() {
    let mut l = loaded(7, 20).await;

    // The catalog leader dies under load, another member takes over, the
    // dead one comes back and catches up; then the same for orders.
    for group in [&CATALOGS, &ORDERS] {
        let leader = wait_leader(&l.client, group, None).await;
        let dead = NODES.iter().position(|n| *n == leader).unwrap();
        l.lab.signal(l.pids[dead], Signal::SIGKILL);
        let next = wait_leader(&l.client, group, Some(&leader)).await;
        eprintln!("{leader} killed; {next} leads");
        // Buys go on with the new leader, then with the dead one back.
        l.tally.buys_grow(20).await;
        restart(&mut l.lab, &l.client, NODES[dead]).await;
        l.tally.buys_grow(20).await;
    }

    l.end_clean().await;
}

/// SIGSTOP keeps a node's connection open, so its presence says up for
/// seconds; its raft heartbeats stop at once and another member takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_costs_clients_no_error() {
    let l = loaded(70, 20).await;
    for group in [&CATALOGS, &ORDERS] {
        let leader = wait_leader(&l.client, group, None).await;
        let paused = NODES.iter().position(|n| *n == leader).unwrap();
        l.lab.signal(l.pids[paused], Signal::SIGSTOP);
        let next = wait_leader(&l.client, group, Some(&leader)).await;
        eprintln!("{leader} paused; {next} leads");
        l.lab.signal(l.pids[paused], Signal::SIGCONT);
        wait_serving(&l.client, NODES[paused]).await;
        l.tally.buys_grow(20).await;
    }
    l.end_clean().await;
}

/// Faults on the frontend's links under the seed's client loop: 200 ms of
/// delay to every catalog replica, then 20 % loss both ways to every
/// catalog and order replica. Requests get slower and are retried (a buy
/// keeps its order id), none fails, every buy is recorded once, and the
/// shims count what they did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_and_loss_on_the_frontend_links_cost_clients_no_error() {
    use crate::faults::wait_shim;

    let l = loaded(40, 10).await;
    let (lab, client, tally) = (&l.lab, &l.client, &l.tally);

    for catalog in CATALOGS {
        lab.fault(&["delay", "frontend", catalog, "200ms"]);
    }
    tally.buys_grow(10).await;
    wait_shim(client, "+", |r| {
        r.links.get("frontend").is_some_and(|c| c.delayed >= 5)
    })
    .await;

    lab.fault(&["heal"]);
    for node in CATALOGS.iter().chain(&ORDERS) {
        lab.fault(&["loss", "frontend", node, "20%", "--both-ways"]);
    }
    tally.buys_grow(30).await;
    wait_shim(client, "+", |r| {
        r.links.get("frontend").is_some_and(|c| c.dropped >= 3)
    })
    .await;
    wait_shim(client, "frontend", |r| {
        r.links.values().map(|c| c.dropped).sum::<u64>() >= 3
    })
    .await;
    lab.fault(&["heal"]);
    tally.buys_grow(10).await;

    l.end_clean().await;
}

/// Every replica of each service holds the same data, every item and
/// every order; every order has its sale; the books balance; every buy the
/// clients were told about took one copy and is recorded once (a replica
/// gets a moment to apply the last entries).
async fn assert_consistent(client: &Bus, buys: u64) {
    assert_consistent_with(client, buys, true).await
}

/// The same; with `exact` false, buys whose answer the clients never got
/// (a failed request may still have been carried out, and a buy abandoned
/// midway is finished by the order leader) may be there too.
async fn assert_consistent_with(client: &Bus, buys: u64, exact: bool) {
    let (catalogs, orders): (Vec<String>, Vec<String>) = (
        CATALOGS.iter().map(|n| n.to_string()).collect(),
        ORDERS.iter().map(|n| n.to_string()).collect(),
    );
    let mut findings = Vec::new();
    for _ in 0..100 {
        let (cats, ords) = gather(client, &catalogs, &orders).await.unwrap();
        findings = verify(&cats, &ords);
        if findings.iter().all(|f| f.ok) {
            let sold: u64 = cats[0].ledger.iter().map(|l| l.sold).sum();
            let recorded = ords[0].orders.len() as u64;
            if exact {
                assert_eq!(recorded, buys, "one order per successful buy");
                assert_eq!(sold, buys, "one copy per successful buy");
            } else {
                assert!(
                    recorded >= buys,
                    "{recorded} orders for {buys} successful buys"
                );
                assert_eq!(sold, recorded, "one copy per order");
            }
            assert_eq!(cats[0].books.len(), 7);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("checks failed: {findings:#?}");
}

/// The broker stops for 10 s under the seed's client loop: requests fail
/// meanwhile (no replica can be reached), none that succeeded is lost, and
/// the books balance with every replica equal afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_paused_10s_under_buys_loses_no_sale() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProc::start(dir.path());
    let mut lab = bookstore_lab_on(broker.addr.clone());
    let (_pids, addr) = start_all(&mut lab).await;
    let client = lab.client("checker").await;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients = start_clients(&addr, 170, &stop, &tally);
    tally.buys_grow(20).await;
    broker.signal(Signal::SIGSTOP);
    // The fault itself is 10 s long: nothing to wait for but the clock.
    tokio::time::sleep(Duration::from_secs(10)).await;
    broker.signal(Signal::SIGCONT);
    tally.buys_grow(20).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    eprintln!(
        "{} ok ({} buys), {} failed during the pause",
        tally.ok.load(Ordering::Relaxed),
        tally.buys.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed)
    );
    assert_consistent_with(&client, tally.buys.load(Ordering::Relaxed), false).await;
}
