//! `distlab-node bench bookstore`: the seed's API through the frontend over
//! HTTP/1.1 keep-alive (closed loop, N connections): cached lookups, search,
//! and buys with both services replicated (each a raft group of three),
//! with HdrHistogram quantiles. Everything runs in this process
//! on an embedded broker.

use crate::cli::args::{count, positive};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;

use super::cluster::InProcess;
use super::{histogram, quantiles};
use distlab_node::config::{BrokerAddr, Role};
use distlab_node::http1::Http1;
use distlab_node::services::bookstore::frontend::FrontendHttp;
use distlab_node::services::bookstore::wire::Beat;

#[derive(Debug, Clone, clap::Args)]
pub struct BookstoreBench {
    /// Seconds per run.
    #[arg(long, default_value_t = 5, value_parser = positive())]
    pub seconds: u64,
    /// Concurrent HTTP connections (1 to 10000).
    #[arg(long, default_value_t = 32, value_parser = count(1..=10_000))]
    pub clients: usize,
}

const NODES: [(&str, Role); 7] = [
    ("catalog-a", Role::Catalog),
    ("catalog-b", Role::Catalog),
    ("catalog-c", Role::Catalog),
    ("order-a", Role::Order),
    ("order-b", Role::Order),
    ("order-c", Role::Order),
    ("frontend", Role::Frontend),
];

/// The bookstore's five nodes running in this process.
struct Cluster {
    nodes: InProcess,
    addr: SocketAddr,
}

impl Cluster {
    async fn start(broker: &BrokerAddr) -> anyhow::Result<Self> {
        let cluster = format!("benchbooks{}", std::process::id());
        let mut config = super::cluster::lab(&cluster, &NODES);
        config.bookstore.http = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let watcher = super::cluster::watcher(broker, &cluster).await;
        let mut http = watcher
            .subscribe(&watcher.topics().service("bookstore", "http/frontend"))
            .await?;
        let mut beats = watcher
            .subscribe(&watcher.topics().service("bookstore", "beat/+"))
            .await?;
        let running = InProcess::start(broker, &config)?;
        let m = tokio::time::timeout(Duration::from_secs(10), http.recv())
            .await
            .context("the frontend never announced its HTTP address")?
            .context("bus closed")?;
        let addr = m.envelope.body_as::<FrontendHttp>()?.addr;
        // Wait until all four replicas serve (two primaries, two in sync).
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut serving = std::collections::BTreeSet::new();
        while serving.len() < 6 {
            anyhow::ensure!(Instant::now() < deadline, "the replicas never all served");
            if let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_millis(500), beats.recv()).await
                && let Ok(b) = m.envelope.body_as::<Beat>()
                && b.serving
            {
                serving.insert(b.node);
            }
        }
        watcher.close(Vec::new()).await;
        Ok(Self {
            nodes: running,
            addr,
        })
    }

    async fn stop(self) {
        self.nodes.stop().await;
    }
}

/// `clients` connections, each asking `path(i)` in a loop for `seconds`;
/// returns the answered requests per second, failures and latencies.
async fn closed_loop(
    addr: SocketAddr,
    clients: usize,
    seconds: u64,
    path: PathFn,
) -> anyhow::Result<(f64, u64, Histogram<u64>)> {
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut handles = Vec::new();
    for i in 0..clients {
        handles.push(tokio::spawn(async move {
            let mut c = Http1::connect(addr).await?;
            let mut rng = fastrand::Rng::with_seed(i as u64);
            let mut h = histogram();
            let mut failed = 0u64;
            while Instant::now() < until {
                let p = path(&mut rng);
                let t0 = Instant::now();
                let (status, _) = c.request("GET", &p, None, None).await?;
                if status == 200 {
                    h.record(t0.elapsed().as_micros().max(1) as u64).ok();
                } else {
                    failed += 1;
                }
            }
            anyhow::Ok((h, failed))
        }));
    }
    let mut total = histogram();
    let mut failed = 0;
    for handle in handles {
        let (h, f) = handle.await??;
        total.add(&h).ok();
        failed += f;
    }
    let rate = total.len() as f64 / started.elapsed().as_secs_f64();
    Ok((rate, failed, total))
}

/// Makes the path of the next request.
type PathFn = fn(&mut fastrand::Rng) -> String;

fn lookup(rng: &mut fastrand::Rng) -> String {
    format!("/lookup?id={}", rng.u32(1..=7))
}

fn search(rng: &mut fastrand::Rng) -> String {
    let topic = ["distributed%20systems", "graduate%20school"][rng.usize(..2)];
    format!("/search?topic={topic}")
}

fn buy(rng: &mut fastrand::Rng) -> String {
    format!("/buy?id={}", rng.u32(1..=7))
}

pub async fn run_bookstore(opts: BookstoreBench) -> anyhow::Result<()> {
    let broker = distlab_node::broker::start(
        "127.0.0.1:0".parse()?,
        distlab_node::credentials::Credentials::generate(),
    )?;
    let broker = broker.client_addr();
    println!(
        "distlab bench bookstore: embedded broker {broker}, the seed's API through the frontend over HTTP/1.1 keep-alive, {} connections, {} s per run, everything in this process",
        opts.clients, opts.seconds
    );
    let cluster = Cluster::start(&broker).await?;
    println!(
        "catalog-a/b/c and order-a/b/c, two raft groups of three (SQLite WAL, synchronous=FULL, group commit)"
    );
    // Few connections show the latency of one request; many, the throughput.
    let few = opts.clients.clamp(1, 2);
    let runs: [(&str, usize, PathFn); 5] = [
        ("lookup (cached)", few, lookup),
        ("lookup (cached)", opts.clients, lookup),
        ("search (cached)", opts.clients, search),
        ("buy (replicated catalog + order)", opts.clients, buy),
        ("buy (replicated catalog + order)", 4 * opts.clients, buy),
    ];
    for (label, clients, path) in runs {
        let (rate, failed, h) = closed_loop(cluster.addr, clients, opts.seconds, path).await?;
        println!(
            "{label:<34} {clients:>4} conn {rate:>8.0} req/s  {failed} failed  {}",
            quantiles(&h)
        );
    }
    cluster.stop().await;
    Ok(())
}
