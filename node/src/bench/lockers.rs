//! `distlab-node bench lockers`: take + free cycles through the users'
//! JSON API over HTTP/1.1 keep-alive (closed loop, one user per client),
//! with the MOM, the users and the lockers each a raft group of three,
//! everything in this process on an embedded broker. An allocation is a
//! take answered 201: accepted by the users group, sent on the MOM's
//! `get_locker_id`, committed by the lockers group, answered on
//! `locker_replies` and applied by the users group.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use super::cluster::InProcess;
use super::{histogram, quantiles};
use crate::cli::args::{count, positive};
use distlab_node::config::{BrokerAddr, Role};
use distlab_node::http1::Http1;
use distlab_node::services::lockers::wire::{LockersStats, UsersStats};

#[derive(Debug, Clone, clap::Args)]
pub struct LockersBench {
    /// Seconds per run.
    #[arg(long, default_value_t = 5, value_parser = positive())]
    pub seconds: u64,
    /// Concurrent HTTP connections, one user each (1 to 1000).
    #[arg(long, default_value_t = 64, value_parser = count(1..=1000))]
    pub clients: usize,
}

const NODES: [(&str, Role); 9] = [
    ("mom-a", Role::Mom),
    ("mom-b", Role::Mom),
    ("mom-c", Role::Mom),
    ("users-a", Role::Users),
    ("users-b", Role::Users),
    ("users-c", Role::Users),
    ("lockers-a", Role::Lockers),
    ("lockers-b", Role::Lockers),
    ("lockers-c", Role::Lockers),
];

/// Starts the nine nodes with `lockers` lockers; returns them and the
/// users leader's HTTP address once both groups lead and talk.
async fn start(
    broker: &BrokerAddr,
    run: usize,
    lockers: u32,
) -> anyhow::Result<(InProcess, SocketAddr)> {
    let cluster = format!("benchlockers{}r{run}", std::process::id());
    let mut config = super::cluster::lab(&cluster, &NODES);
    config.mom.http = SocketAddr::from(([127, 0, 0, 1], 0));
    config.lockers.http = SocketAddr::from(([127, 0, 0, 1], 0));
    config.lockers.count = lockers;
    let watcher = super::cluster::watcher(broker, &cluster).await;
    let mut users = watcher
        .subscribe(&watcher.topics().telemetry("+", "users"))
        .await?;
    let mut keepers = watcher
        .subscribe(&watcher.topics().telemetry("+", "lockers"))
        .await?;
    let running = InProcess::start(broker, &config)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut addr, mut keeping) = (None, false);
    while addr.is_none() || !keeping {
        anyhow::ensure!(Instant::now() < deadline, "the lockers never came up");
        tokio::select! {
            Some(m) = users.recv() => {
                if let Ok(s) = m.envelope.body_as::<UsersStats>()
                    && s.raft.role == distlab_node::replica::Role::Leader
                {
                    addr = s.http;
                }
            }
            Some(m) = keepers.recv() => {
                if let Ok(s) = m.envelope.body_as::<LockersStats>() {
                    keeping |= s.raft.role == distlab_node::replica::Role::Leader;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    watcher.close(Vec::new()).await;
    let addr = addr.context("no users leader")?;
    Ok((running, addr))
}

/// Per run: takes granted, takes told none is free, frees, failures, and
/// the latencies of takes and frees.
#[derive(Default)]
struct Figures {
    granted: u64,
    none_free: u64,
    freed: u64,
    failed: u64,
    take: Option<Histogram<u64>>,
    free: Option<Histogram<u64>>,
}

async fn call(
    c: &mut Http1,
    method: &str,
    path: &str,
    h: &mut Histogram<u64>,
) -> anyhow::Result<(u16, Value)> {
    let t0 = Instant::now();
    let (status, body) = c.request(method, path, None, None).await?;
    h.record(t0.elapsed().as_micros().max(1) as u64).ok();
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

/// `clients` users (added first), each taking and freeing in a loop.
async fn cycles(
    addr: SocketAddr,
    clients: usize,
    seconds: u64,
    tag: &str,
) -> anyhow::Result<(f64, Figures)> {
    let mut setup = Http1::connect(addr).await?;
    for i in 0..clients {
        let body = json!({ "name": format!("{tag}-{i}") }).to_string();
        let (status, text) = setup
            .request("POST", "/api/v1/users", None, Some(&body))
            .await?;
        anyhow::ensure!(status == 201, "add user: {status} {text}");
    }
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut handles = Vec::new();
    for i in 0..clients {
        let name = format!("{tag}-{i}");
        handles.push(tokio::spawn(async move {
            let mut c = Http1::connect(addr).await?;
            let (mut take, mut free) = (histogram(), histogram());
            let mut f = Figures::default();
            let path = format!("/api/v1/users/{name}/locker");
            while Instant::now() < until {
                match call(&mut c, "POST", &path, &mut take).await? {
                    (201, _) => f.granted += 1,
                    (409, _) => {
                        f.none_free += 1;
                        continue;
                    }
                    _ => {
                        f.failed += 1;
                        continue;
                    }
                }
                match call(&mut c, "DELETE", &path, &mut free).await? {
                    (200, _) => f.freed += 1,
                    _ => f.failed += 1,
                }
            }
            f.take = Some(take);
            f.free = Some(free);
            anyhow::Ok(f)
        }));
    }
    let mut total = Figures {
        take: Some(histogram()),
        free: Some(histogram()),
        ..Figures::default()
    };
    for handle in handles {
        let f = handle.await??;
        total.granted += f.granted;
        total.none_free += f.none_free;
        total.freed += f.freed;
        total.failed += f.failed;
        for (sum, h) in [(&mut total.take, f.take), (&mut total.free, f.free)] {
            if let (Some(sum), Some(h)) = (sum.as_mut(), h) {
                sum.add(&h).ok();
            }
        }
    }
    Ok((started.elapsed().as_secs_f64(), total))
}

pub async fn run_lockers(opts: LockersBench) -> anyhow::Result<()> {
    let broker = distlab_node::broker::start(
        "127.0.0.1:0".parse()?,
        distlab_node::credentials::Credentials::generate(),
    )?;
    let broker = broker.client_addr();
    println!(
        "distlab bench lockers: embedded broker {broker}, take + free through the users' JSON API over HTTP/1.1 keep-alive, {} s per run, everything in this process",
        opts.seconds
    );
    println!(
        "mom-a/b/c, users-a/b/c, lockers-a/b/c: three raft groups of three (SQLite WAL, synchronous=FULL); a take goes users -> MOM queue -> lockers -> MOM queue -> users"
    );
    // As many lockers as clients (every take can be granted), then the
    // default 20 for the contended case.
    let few = opts.clients.clamp(1, 2);
    let runs = [
        (few, opts.clients.max(20) as u32),
        (opts.clients, opts.clients.max(20) as u32),
        (opts.clients, 20),
    ];
    for (n, (clients, lockers)) in runs.into_iter().enumerate() {
        let (nodes, addr) = start(&broker, n, lockers).await?;
        let (secs, f) = cycles(addr, clients, opts.seconds, &format!("b{n}")).await?;
        let rate = |v: u64| v as f64 / secs;
        println!(
            "{clients:>4} clients {lockers:>4} lockers: {:>7.0} allocations/s {:>7.0} frees/s {:>7.0} none-free/s  {} failed",
            rate(f.granted),
            rate(f.freed),
            rate(f.none_free),
            f.failed
        );
        if let (Some(take), Some(free)) = (&f.take, &f.free) {
            println!("    take  {}", quantiles(take));
            println!("    free  {}", quantiles(free));
        }
        nodes.stop().await;
    }
    Ok(())
}
