//! `distlab-node bench maplog`: the map log's map through its client (in
//! this process, as a facade or logger uses it) with three loggers and one
//! synchronous backup: puts and gets from many callers at once (closed
//! loop), then puts offered at a fixed rate (open loop, latency measured
//! from when each was due), everything on an embedded broker here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cluster::InProcess;
use super::{histogram, quantiles};
use crate::cli::args::{count, positive};
use distlab_node::config::{BrokerAddr, Role};
use distlab_node::http1::Http1;
use distlab_node::services::maplog::client::MapClient;
use distlab_node::services::maplog::member::MemberStats;

#[derive(Debug, Clone, clap::Args)]
pub struct MaplogBench {
    /// Seconds per run.
    #[arg(long, default_value_t = 5, value_parser = positive())]
    pub seconds: u64,
    /// Concurrent callers in the closed-loop runs (1 to 10000).
    #[arg(long, default_value_t = 256, value_parser = count(1..=10_000))]
    pub clients: usize,
    /// Puts per second offered in the open-loop run.
    #[arg(long, default_value_t = 5000, value_parser = count(1..=1_000_000))]
    pub rate: usize,
}

const NODES: [(&str, Role); 4] = [
    ("logger-1", Role::Logger),
    ("logger-2", Role::Logger),
    ("logger-3", Role::Logger),
    ("facade", Role::Facade),
];

/// The facade's counts, from its telemetry.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
struct FacadeCounts {
    http: Option<SocketAddr>,
    logged: u64,
    failed: u64,
}

/// What the bench runs against: the nodes, a map client, and the facade's
/// telemetry.
struct Running {
    nodes: InProcess,
    client: MapClient,
    facade: tokio::sync::watch::Receiver<FacadeCounts>,
}

/// Starts the loggers and the facade; returns once the view holds all
/// three loggers, they are ready and the facade reported its address.
async fn start(broker: &BrokerAddr) -> anyhow::Result<Running> {
    let cluster = format!("benchmaplog{}", std::process::id());
    let mut config = super::cluster::lab(&cluster, &NODES);
    config.maplog.logger_http = SocketAddr::from(([127, 0, 0, 1], 0));
    config.maplog.http = SocketAddr::from(([127, 0, 0, 1], 0));
    let watcher = super::cluster::watcher(broker, &cluster).await;
    let mut reports = watcher
        .subscribe(&watcher.topics().telemetry("+", "maplog"))
        .await?;
    let mut facades = watcher
        .subscribe(&watcher.topics().telemetry("facade", "facade"))
        .await?;
    let running = InProcess::start(broker, &config)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ready = std::collections::BTreeMap::new();
    loop {
        anyhow::ensure!(Instant::now() < deadline, "the loggers never became ready");
        if ready.len() == 3
            && ready
                .values()
                .all(|s: &MemberStats| s.ready && s.members.len() == 3)
        {
            break;
        }
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), reports.recv()).await
            && let Ok(s) = m.envelope.body_as::<MemberStats>()
        {
            ready.insert(m.envelope.from.clone(), s);
        }
    }
    drop(reports);
    let (counts, facade) = tokio::sync::watch::channel(FacadeCounts::default());
    tokio::spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        while let Some(m) = facades.recv().await {
            if let Ok(c) = m.envelope.body_as::<FacadeCounts>() {
                counts.send_replace(c);
            }
        }
    });
    let client = MapClient::start(
        super::cluster::watcher(broker, &cluster).await,
        config.maplog.partitions,
        config.maplog.backup_count,
        Duration::from_secs(10),
        &TaskTracker::new(),
        CancellationToken::new(),
    )
    .await?;
    anyhow::ensure!(
        client.wait_view(Duration::from_secs(10)).await,
        "no map view"
    );
    let mut seen = facade.clone();
    tokio::time::timeout(Duration::from_secs(30), seen.wait_for(|c| c.http.is_some()))
        .await
        .context("the facade never reported")??;
    Ok(Running {
        nodes: running,
        client,
        facade,
    })
}

/// `clients` connections, each posting the seed's form to the facade in a
/// loop for `seconds`; counts what the facade logged and failed, from its
/// telemetry before and after.
async fn facade(
    running: &Running,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<(f64, u64, u64, Histogram<u64>)> {
    let addr = running.facade.borrow().http.expect("reported");
    let mut counts = running.facade.clone();
    let before = *counts.borrow_and_update();
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut handles = Vec::new();
    for w in 0..clients {
        handles.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut http = Http1::connect(addr).await?;
            let mut i = 0u64;
            while Instant::now() < until {
                let t0 = Instant::now();
                let (status, _) = http
                    .post_form("/polls/", &format!("msg=bench+message+{w}-{i}"))
                    .await?;
                anyhow::ensure!(status == 302, "the facade answered {status}");
                h.record(t0.elapsed().as_micros().max(1) as u64).ok();
                i += 1;
            }
            anyhow::Ok(h)
        }));
    }
    let mut h = histogram();
    for handle in handles {
        h.add(&handle.await??).ok();
    }
    let secs = started.elapsed().as_secs_f64();
    // Its telemetry after the last answer (every 500 ms).
    let sent = h.len();
    tokio::time::timeout(
        Duration::from_secs(5),
        counts.wait_for(|c| c.logged + c.failed >= before.logged + before.failed + sent),
    )
    .await
    .context("the facade's telemetry did not catch up")??;
    let after = *counts.borrow();
    Ok((
        secs,
        after.logged - before.logged,
        after.failed - before.failed,
        h,
    ))
}

/// `clients` callers, each putting (or getting) in a loop for `seconds`.
async fn closed(
    client: &MapClient,
    clients: usize,
    seconds: u64,
    gets: bool,
) -> anyhow::Result<(f64, u64, u64, Histogram<u64>)> {
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut handles = Vec::new();
    for w in 0..clients {
        let c = client.clone();
        handles.push(tokio::spawn(async move {
            let mut h = histogram();
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut i = 0u64;
            while Instant::now() < until {
                let key = format!("k{w}-{}", i % 1000);
                i += 1;
                let t0 = Instant::now();
                let done = if gets {
                    c.get(&key).await.map(|_| ())
                } else {
                    c.put(&key, "a message of about forty bytes, as logged")
                        .await
                };
                h.record(t0.elapsed().as_micros().max(1) as u64).ok();
                match done {
                    Ok(()) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
            (ok, failed, h)
        }));
    }
    let (mut ok, mut failed, mut h) = (0, 0, histogram());
    for handle in handles {
        let (o, f, hh) = handle.await?;
        ok += o;
        failed += f;
        h.add(&hh).ok();
    }
    Ok((started.elapsed().as_secs_f64(), ok, failed, h))
}

/// Puts offered at `rate`/s, each on its own task; latency from when it
/// was due, so a stall shows in the figures instead of slowing the offer.
async fn open(client: &MapClient, rate: usize, seconds: u64) -> (f64, u64, u64, Histogram<u64>) {
    let h = Arc::new(Mutex::new(histogram()));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let total = rate as u64 * seconds;
    let tasks = TaskTracker::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0u64;
    while sent < total {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due.min(total) {
            let at = started + Duration::from_secs_f64(sent as f64 / rate as f64);
            let (c, h, ok, failed) = (client.clone(), h.clone(), ok.clone(), failed.clone());
            let key = format!("open-{sent}");
            tasks.spawn(async move {
                let done = c
                    .put(&key, "a message of about forty bytes, as logged")
                    .await;
                h.lock().record(at.elapsed().as_micros().max(1) as u64).ok();
                let n = if done.is_ok() { &ok } else { &failed };
                n.fetch_add(1, Ordering::Relaxed);
            });
            sent += 1;
        }
    }
    tasks.close();
    tasks.wait().await;
    let h = h.lock().clone();
    (
        started.elapsed().as_secs_f64(),
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        h,
    )
}

pub async fn run_maplog(opts: MaplogBench) -> anyhow::Result<()> {
    let broker = distlab_node::broker::start(
        "127.0.0.1:0".parse()?,
        distlab_node::credentials::Credentials::generate(),
    )?;
    let broker = broker.client_addr();
    println!(
        "distlab bench maplog: embedded broker {broker}, logger-1/2/3 (271 partitions, 1 synchronous backup) and the map client in this process, {} s per run",
        opts.seconds
    );
    let running = start(&broker).await.context("starting the loggers")?;
    let client = &running.client;
    for gets in [false, true] {
        let (secs, ok, failed, h) = closed(client, opts.clients, opts.seconds, gets).await?;
        println!(
            "{:>5} callers {}: {:>8.0}/s  {failed} failed",
            opts.clients,
            if gets { "gets" } else { "puts" },
            ok as f64 / secs
        );
        println!("    {}", quantiles(&h));
    }
    let (secs, ok, failed, h) = open(client, opts.rate, opts.seconds).await;
    println!(
        "open loop, {} puts/s offered: {:>8.0}/s done  {failed} failed",
        opts.rate,
        ok as f64 / secs
    );
    println!("    {}", quantiles(&h));
    // HTTP/1.1 keep-alive connections; at most 64 (a browser's worth each).
    let connections = opts.clients.min(64);
    let (secs, ok, failed, h) = facade(&running, connections, opts.seconds).await?;
    println!(
        "{connections:>5} connections POST /polls/ (facade, no MOM: no copy to `messages`): {:>8.0}/s logged  {failed} failed",
        ok as f64 / secs
    );
    println!("    {}", quantiles(&h));
    running.nodes.stop().await;
    Ok(())
}
