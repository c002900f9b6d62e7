//! `distlab-node bench mom`: publish → ack throughput and latency through
//! the JSON API (closed loop with N clients, and open loop at a fixed rate,
//! timed from each request's intended start so queueing counts), then
//! publish → consume end to end; first on a single node, then replicated.
//! Everything runs in this process on an embedded broker.

use crate::cli::args::{count, positive};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use super::cluster::InProcess;
use super::{histogram, quantiles};
use distlab_node::config::{BrokerAddr, Role};
use distlab_node::http1::Http1;
use distlab_node::services::mom::node::{MomHttp, MomStats};

#[derive(Debug, Clone, clap::Args)]
pub struct MomBench {
    /// Seconds per run.
    #[arg(long, default_value_t = 5, value_parser = positive())]
    pub seconds: u64,
    /// Concurrent HTTP connections publishing (1 to 10000).
    #[arg(long, default_value_t = 128, value_parser = count(1..=10_000))]
    pub clients: usize,
    /// Offered publishes per second for the latency run.
    #[arg(long, default_value_t = 10_000, value_parser = positive())]
    pub rate: u64,
    /// Message size, bytes (16 to 262144).
    #[arg(long, default_value_t = 100, value_parser = count(16..=262_144))]
    pub size: usize,
    /// Consumers in the publish -> consume run.
    #[arg(long, default_value_t = 8, value_parser = count(1..))]
    pub consumers: usize,
    /// Messages per request in the batched publish run, and most
    /// messages per consume (acked in one request) in the e2e run.
    #[arg(long, default_value_t = 100, value_parser = count(1..))]
    pub batch: usize,
    /// Group sizes to measure (1 to 7): 1 = a single node, 3 = a raft group of three.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 3], value_parser = count(1..=7))]
    pub nodes: Vec<usize>,
    /// Which runs: closed (publish -> ack, one message per request),
    /// open (publish at --rate), batch (--batch per request), e2e
    /// (publish at --rate -> consume + ack).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = MomRun::ALL)]
    pub runs: Vec<MomRun>,
}

/// The runs of `bench mom`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MomRun {
    /// Publish -> ack, one message per request, closed loop.
    Closed,
    /// Publish -> ack at the offered rate.
    Open,
    /// Publish -> ack, a batch per request, closed loop.
    Batch,
    /// Publish at the offered rate -> consume + ack.
    E2e,
}

impl MomRun {
    pub const ALL: [MomRun; 4] = [MomRun::Closed, MomRun::Open, MomRun::Batch, MomRun::E2e];
}

/// The queue of the publish -> consume run (empty at its start).
const E2E_QUEUE: &str = "e2e";

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A message of about `size` bytes that starts with its send time (µs).
fn stamped(size: usize) -> String {
    let stamp = micros_now().to_string();
    let pad = size.saturating_sub(stamp.len() + 1);
    format!("{stamp}:{}", "x".repeat(pad))
}

/// The JSON body of a publish: one message, or `batch` of them.
fn message_body(size: usize, batch: usize) -> String {
    if batch == 1 {
        json!({ "message": stamped(size) }).to_string()
    } else {
        let messages: Vec<String> = (0..batch).map(|_| stamped(size)).collect();
        json!({ "messages": messages }).to_string()
    }
}

fn message(size: usize) -> String {
    message_body(size, 1)
}

/// One load task: requests made and their latencies.
type Load = tokio::task::JoinHandle<anyhow::Result<(u64, Histogram<u64>)>>;

/// Waits for every load task; returns the requests made and their merged latencies.
async fn gather(handles: Vec<Load>) -> anyhow::Result<(u64, Histogram<u64>)> {
    let mut total = histogram();
    let mut count = 0;
    for handle in handles {
        let (n, h) = handle.await??;
        count += n;
        total.add(&h).ok();
    }
    Ok((count, total))
}

/// A MOM cluster of `nodes` running in this process.
struct Cluster {
    nodes: InProcess,
    addr: SocketAddr,
}

impl Cluster {
    async fn start(broker: &BrokerAddr, nodes: &[&str], tag: &str) -> anyhow::Result<Self> {
        let cluster = format!("benchmom{}{tag}", std::process::id());
        let specs: Vec<(&str, Role)> = nodes.iter().map(|n| (*n, Role::Mom)).collect();
        let mut config = super::cluster::lab(&cluster, &specs);
        config.mom.http = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let watcher = super::cluster::watcher(broker, &cluster).await;
        let mut http = watcher
            .subscribe(&watcher.topics().service("mom", "http/+"))
            .await?;
        let mut telemetry = watcher
            .subscribe(&watcher.topics().telemetry("+", "mom"))
            .await?;
        let running = InProcess::start(broker, &config)?;
        // Wait for a leader whose followers have its whole log; the load
        // goes to the leader's HTTP address (a follower would forward).
        let want = nodes.len() - 1;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut addrs = std::collections::BTreeMap::new();
        let leader = loop {
            anyhow::ensure!(Instant::now() < deadline, "the MOM never became ready");
            while let Ok(m) = http.try_recv() {
                let h = m.envelope.body_as::<MomHttp>()?;
                addrs.insert(h.node, h.addr);
            }
            if let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_millis(500), telemetry.recv()).await
                && let Ok(s) = m.envelope.body_as::<MomStats>()
                && s.raft.role == distlab_node::replica::Role::Leader
                && s.raft.lag.len() == want
                && s.raft.lag.iter().all(|(_, behind)| *behind == 0)
            {
                break m.envelope.from;
            }
        };
        let addr = loop {
            if let Some(a) = addrs.get(&leader) {
                break *a;
            }
            let m = tokio::time::timeout(Duration::from_secs(10), http.recv())
                .await
                .context("the leader never announced its HTTP address")?
                .context("bus closed")?;
            let h = m.envelope.body_as::<MomHttp>()?;
            addrs.insert(h.node, h.addr);
        };
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

/// Makes a user and the queues `bench` and `e2e`, subscribed; returns the key.
async fn setup(addr: SocketAddr) -> anyhow::Result<String> {
    let mut c = Http1::connect(addr).await?;
    let (status, body) = c.request("POST", "/api/v1/users", None, None).await?;
    anyhow::ensure!(status == 201, "create user: {status} {body}");
    let key = serde_json::from_str::<Value>(&body)?["key"]
        .as_str()
        .context("no key")?
        .to_owned();
    for queue in ["bench", E2E_QUEUE] {
        let name = json!({ "name": queue }).to_string();
        let (status, body) = c
            .request("POST", "/api/v1/queues", Some(&key), Some(&name))
            .await?;
        anyhow::ensure!(status == 201, "create {queue}: {status} {body}");
        let path = format!("/api/v1/queues/{queue}/subscription");
        let (status, body) = c.request("POST", &path, Some(&key), None).await?;
        anyhow::ensure!(status == 204, "subscribe {queue}: {status} {body}");
    }
    Ok(key)
}

/// `clients` connections publishing `batch` messages per request as fast as
/// acks come back, for `secs`; returns messages/s and the request latency.
async fn closed_loop(
    addr: SocketAddr,
    key: &str,
    clients: usize,
    secs: u64,
    size: usize,
    batch: usize,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut handles = Vec::new();
    for _ in 0..clients {
        let key = key.to_owned();
        handles.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut c = Http1::connect(addr).await?;
            let mut n = 0u64;
            while Instant::now() < end {
                let t = Instant::now();
                let (status, body) = c
                    .request(
                        "POST",
                        "/api/v1/queues/bench/messages",
                        Some(&key),
                        Some(&message_body(size, batch)),
                    )
                    .await?;
                anyhow::ensure!(status == 201, "publish: {status} {body}");
                h.saturating_record(t.elapsed().as_micros() as u64);
                n += batch as u64;
            }
            Ok::<_, anyhow::Error>((n, h))
        }));
    }
    let started = Instant::now();
    let (count, total) = gather(handles).await?;
    Ok((count as f64 / started.elapsed().as_secs_f64(), total))
}

/// Publishes at `rate`/s over `clients` connections; latency from each
/// request's scheduled time (so a stall counts for everything behind it).
#[allow(clippy::too_many_arguments)]
async fn open_loop(
    addr: SocketAddr,
    key: &str,
    queue: &'static str,
    clients: usize,
    rate: u64,
    secs: u64,
    size: usize,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let interval = Duration::from_secs_f64(clients as f64 / rate as f64);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let end = start + Duration::from_secs(secs);
    let mut handles = Vec::new();
    for i in 0..clients {
        let key = key.to_owned();
        handles.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut c = Http1::connect(addr).await?;
            let mut next = start + interval.mul_f64(i as f64 / clients as f64);
            let mut n = 0u64;
            let path = format!("/api/v1/queues/{queue}/messages");
            while next < end {
                tokio::time::sleep_until(next).await;
                let (status, body) = c
                    .request("POST", &path, Some(&key), Some(&message(size)))
                    .await?;
                anyhow::ensure!(status == 201, "publish: {status} {body}");
                h.saturating_record(next.elapsed().as_micros() as u64);
                n += 1;
                next += interval;
            }
            Ok::<_, anyhow::Error>((n, h))
        }));
    }
    let (count, total) = gather(handles).await?;
    Ok((count as f64 / secs as f64, total))
}

/// Publishers (open loop at the offered rate) and consumers (consume up to
/// `batch` at once, then ack them in one request) together; once the
/// publishers stop, the consumers get up to 10 s to take the rest.
async fn end_to_end(addr: SocketAddr, key: &str, opts: &MomBench) -> anyhow::Result<EndToEnd> {
    let stop = Arc::new(AtomicBool::new(false));
    let consumed = Arc::new(AtomicU64::new(0));
    let mut consumers = Vec::new();
    for _ in 0..opts.consumers {
        let (addr, key, stop, consumed, batch) = (
            addr,
            key.to_owned(),
            stop.clone(),
            consumed.clone(),
            opts.batch,
        );
        consumers.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut c = Http1::connect(addr).await?;
            let next = format!("/api/v1/queues/{E2E_QUEUE}/messages/next?wait_ms=200&max={batch}");
            while !stop.load(Ordering::Relaxed) {
                let (status, body) = c.request("POST", &next, Some(&key), None).await?;
                if status == 204 {
                    continue;
                }
                anyhow::ensure!(status == 200, "consume: {status} {body}");
                let got: Value = serde_json::from_str(&body)?;
                let deliveries = got["deliveries"].as_array().context("no deliveries")?;
                let now = micros_now();
                let mut ids = Vec::with_capacity(deliveries.len());
                for d in deliveries {
                    if let Some(sent) = d["body"]
                        .as_str()
                        .and_then(|b| b.split(':').next())
                        .and_then(|s| s.parse::<u64>().ok())
                    {
                        h.saturating_record(now.saturating_sub(sent).max(1));
                    }
                    ids.push(d["id"].as_u64().context("no id")?);
                }
                let ack = json!({ "ids": ids }).to_string();
                let (status, body) = c
                    .request("POST", "/api/v1/messages/ack", Some(&key), Some(&ack))
                    .await?;
                anyhow::ensure!(status == 200, "ack: {status} {body}");
                consumed.fetch_add(ids.len() as u64, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(h)
        }));
    }
    let started = Instant::now();
    let (rate, publish) = open_loop(
        addr,
        key,
        E2E_QUEUE,
        opts.clients,
        opts.rate,
        opts.seconds,
        opts.size,
    )
    .await?;
    let published = (rate * opts.seconds as f64).round() as u64;
    let last_publish = Instant::now();
    let drain_by = last_publish + Duration::from_secs(10);
    while consumed.load(Ordering::Relaxed) < published && Instant::now() < drain_by {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drained = last_publish.elapsed();
    let taken = consumed.load(Ordering::Relaxed);
    let rate = taken as f64 / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut latency = histogram();
    for c in consumers {
        latency.add(&c.await??).ok();
    }
    Ok(EndToEnd {
        publish,
        published,
        consumed: taken,
        rate,
        drained,
        latency,
    })
}

/// What the publish -> consume run measured.
struct EndToEnd {
    /// Publish -> ack, from each publish's scheduled time.
    publish: Histogram<u64>,
    published: u64,
    /// Consumed and acked, by the end of the drain.
    consumed: u64,
    /// Consumed per second, from the first publish to the end of the drain.
    rate: f64,
    /// From the last publish until every message was consumed (or the drain
    /// gave up).
    drained: Duration,
    /// Publish -> consume.
    latency: Histogram<u64>,
}

pub async fn run_mom(opts: MomBench) -> anyhow::Result<()> {
    let broker = distlab_node::broker::start(
        "127.0.0.1:0".parse()?,
        distlab_node::credentials::Credentials::generate(),
    )?;
    let broker = broker.client_addr();
    println!(
        "distlab bench mom: embedded broker {broker}, JSON API over HTTP/1.1 keep-alive, {} B messages, {} s per run, everything in this process",
        opts.size, opts.seconds
    );
    for &size in &opts.nodes {
        let names: Vec<String> = (0..size)
            .map(|i| format!("mom-{}", char::from(b'a' + i as u8)))
            .collect();
        let nodes: Vec<&str> = names.iter().map(String::as_str).collect();
        let label = match size {
            1 => "single node".to_owned(),
            n => format!("replicated (raft, {n} nodes)"),
        };
        println!();
        println!("== {label} (SQLite WAL, synchronous=FULL, group commit)");
        let cluster = Cluster::start(&broker, &nodes, &nodes.len().to_string()).await?;
        let key = setup(cluster.addr).await?;
        let run = |r: MomRun| opts.runs.contains(&r);
        if run(MomRun::Closed) {
            let (rate, h) =
                closed_loop(cluster.addr, &key, opts.clients, opts.seconds, opts.size, 1).await?;
            println!(
                "publish -> ack, {} clients, closed loop: {rate:>8.0} msg/s   {}",
                opts.clients,
                quantiles(&h)
            );
        }
        if run(MomRun::Open) {
            let (rate, h) = open_loop(
                cluster.addr,
                &key,
                "bench",
                opts.clients,
                opts.rate,
                opts.seconds,
                opts.size,
            )
            .await?;
            println!(
                "publish -> ack at {} msg/s offered: {rate:>8.0} msg/s   {}",
                opts.rate,
                quantiles(&h)
            );
        }
        if run(MomRun::Batch) {
            // Fewer connections: each request carries `batch` messages.
            let clients = opts.clients.div_ceil(opts.batch).max(4);
            let (rate, h) = closed_loop(
                cluster.addr,
                &key,
                clients,
                opts.seconds,
                opts.size,
                opts.batch,
            )
            .await?;
            println!(
                "publish -> ack, {clients} clients, batches of {}, closed loop: {rate:>8.0} msg/s   per batch {}",
                opts.batch,
                quantiles(&h)
            );
        }
        if run(MomRun::E2e) {
            let e = end_to_end(cluster.addr, &key, &opts).await?;
            println!(
                "publish at {} msg/s -> consume (up to {} at once) + ack by {} consumers: {:>8.0} msg/s consumed   {}",
                opts.rate,
                opts.batch,
                opts.consumers,
                e.rate,
                quantiles(&e.latency)
            );
            println!(
                "    {} of {} published consumed and acked, the last {:.0} ms after the last publish; publish -> ack {}",
                e.consumed,
                e.published,
                e.drained.as_secs_f64() * 1000.0,
                quantiles(&e.publish)
            );
        }
        cluster.stop().await;
    }
    Ok(())
}
