//! `distlab-node bench iot`: end-to-end throughput of the IoT pipeline
//! (sensor publish → committed row) at increasing sensor counts, next to the
//! raw broker throughput measured in the same run. Prints figures; asserts
//! nothing (these machines are shared and noisy).

use crate::cli::args::{count, positive};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio_util::sync::CancellationToken;

use distlab_node::bus::{Bus, BusOptions};
use distlab_node::config::{BrokerAddr, IotSettings, LabConfig, NodeSpec, Origin, Role};
use distlab_node::runtime::{ServeOptions, serve};
use distlab_node::services::iot::receiver::ReceiverStats;
use distlab_node::services::iot::sensors::SensorsStats;
use distlab_node::services::iot::store::StoreStats;

/// Options of `bench iot`.
#[derive(Debug, Clone, clap::Args)]
pub struct IotBench {
    /// Sensor counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,50,100,200", value_parser = count(1..))]
    pub sensors: Vec<usize>,
    /// Readings per sensor message, comma-separated (1 = one message per reading).
    #[arg(long, value_delimiter = ',', default_value = "1,50", value_parser = count(1..=1000))]
    pub batch: Vec<usize>,
    #[arg(long, default_value_t = 3, value_parser = count(1..))]
    pub receivers: usize,
    /// Every sensor's period, ms (1 ms = 1000 readings/s per sensor).
    #[arg(long, default_value_t = 1, value_parser = positive())]
    pub period_ms: u64,
    /// Seconds measured per step.
    #[arg(long, default_value_t = 5, value_parser = positive())]
    pub seconds: u64,
    /// Receiver buffer size.
    #[arg(long, default_value_t = 20_000, value_parser = count(1..))]
    pub buffer: usize,
}

/// One measured row.
#[derive(Debug, Clone, Default)]
pub struct IotFigures {
    pub sensors: usize,
    pub batch: usize,
    pub offered_per_s: f64,
    pub published_per_s: f64,
    pub committed_per_s: f64,
    pub published: u64,
    pub accepted: u64,
    pub dropped: u64,
    pub committed: u64,
    /// Published but never reached a receiver: QoS 0 messages shed by the
    /// broker or a receiver's inbound queue under overload.
    pub shed: u64,
}

/// Raw broker throughput: one QoS 0 publisher to one subscriber, 100-byte
/// payloads, for `seconds`; returns messages received per second.
pub async fn raw_broker(broker: &BrokerAddr, seconds: u64) -> f64 {
    let topic = format!("distlab-bench/raw/{}", std::process::id());
    let mut sub_opts =
        distlab_node::bus::mqtt_options(broker, &format!("bench-sub-{}", std::process::id()));
    sub_opts.set_keep_alive(Duration::from_secs(30));
    let (sub, mut sub_loop) = AsyncClient::new(sub_opts, 1024);
    sub.subscribe(&topic, QoS::AtMostOnce).await.ok();
    // Wait for the SUBACK before publishing.
    loop {
        match sub_loop.poll().await {
            Ok(Event::Incoming(Packet::SubAck(_))) => break,
            Ok(_) => {}
            Err(_) => return 0.0,
        }
    }
    let mut pub_opts =
        distlab_node::bus::mqtt_options(broker, &format!("bench-pub-{}", std::process::id()));
    pub_opts.set_keep_alive(Duration::from_secs(30));
    let (publisher, mut pub_loop) = AsyncClient::new(pub_opts, 4096);
    let stop = CancellationToken::new();
    let pump_stop = stop.clone();
    let pump = tokio::spawn(async move {
        loop {
            tokio::select! {
                r = pub_loop.poll() => if r.is_err() { return },
                _ = pump_stop.cancelled() => return,
            }
        }
    });
    let payload = vec![b'x'; 100];
    let feeder_stop = stop.clone();
    let feeder = tokio::spawn(async move {
        while !feeder_stop.is_cancelled() {
            if publisher
                .publish(topic.clone(), QoS::AtMostOnce, false, payload.clone())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let start = Instant::now();
    let window = Duration::from_secs(seconds);
    let mut received = 0u64;
    while start.elapsed() < window {
        match tokio::time::timeout(window.saturating_sub(start.elapsed()), sub_loop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(_)))) => received += 1,
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    let rate = received as f64 / start.elapsed().as_secs_f64();
    stop.cancel();
    for (what, task) in [("feeder", feeder), ("pump", pump)] {
        if let Err(e) = task.await {
            eprintln!("the broker bench's {what} ended badly: {e}");
        }
    }
    rate
}

fn lab(cluster: &str, sensors: usize, batch: usize, opts: &IotBench) -> LabConfig {
    let mut nodes = vec![NodeSpec {
        id: "sensors".into(),
        roles: vec![Role::Sensors],
    }];
    for i in 0..opts.receivers {
        nodes.push(NodeSpec {
            id: format!("receiver-{i}"),
            roles: vec![Role::Receiver],
        });
    }
    nodes.push(NodeSpec {
        id: "coordinator".into(),
        roles: vec![Role::Coordinator],
    });
    nodes.push(NodeSpec {
        id: "store".into(),
        roles: vec![Role::Store],
    });
    let mut config = LabConfig::default_lab();
    config.origin = Origin::BuiltIn;
    config.lab.name = cluster.to_owned();
    config.lab.heartbeat_ms = 500;
    config.iot = IotSettings {
        sensors,
        batch,
        period_ms: [opts.period_ms, opts.period_ms],
        buffer: opts.buffer,
        lease_ms: 2000,
        http: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        ..IotSettings::default()
    };
    config.nodes = nodes;
    config
}

/// Runs the pipeline in this process with `sensors` sensors and measures it.
pub async fn iot_once(
    broker: &BrokerAddr,
    sensors: usize,
    batch: usize,
    opts: &IotBench,
) -> anyhow::Result<IotFigures> {
    let cluster = format!("bench{}x{sensors}b{batch}", std::process::id());
    let config = lab(&cluster, sensors, batch, opts);
    let dir = tempfile_dir()?;
    let watcher = Bus::start(BusOptions::new(
        broker.clone(),
        &format!("bench-{}", std::process::id()),
        &cluster,
    ));
    watcher.wait_connected(Duration::from_secs(5)).await;
    let mut telemetry = watcher
        .subscribe(&format!("{}/telemetry/+/+", watcher.topics().prefix()))
        .await?;

    let stop = CancellationToken::new();
    let sensors_stop = CancellationToken::new();
    let mut tasks = Vec::new();
    // Everything but the sensors first, so nothing is missed at the start.
    for node in config.nodes.iter().rev() {
        let token = if node.roles.contains(&Role::Sensors) {
            sensors_stop.clone()
        } else {
            stop.clone()
        };
        let options = ServeOptions {
            config: config.clone(),
            node: node.id.clone(),
            broker: Some(broker.clone()),
            data_dir: Some(dir.clone()),
        };
        tasks.push(tokio::spawn(async move { serve(options, token).await }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut seen = Seen::default();
    // Warm up for a second, then measure.
    let warm = Instant::now() + Duration::from_secs(1);
    while Instant::now() < warm {
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(50), telemetry.recv()).await
        {
            seen.absorb(m);
        }
    }
    let (published0, rows0, t0) = (seen.sensors.published, seen.store.rows, Instant::now());
    let window = Duration::from_secs(opts.seconds);
    while t0.elapsed() < window {
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(50), telemetry.recv()).await
        {
            seen.absorb(m);
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let published_per_s = (seen.sensors.published - published0) as f64 / elapsed;
    let committed_per_s = seen.store.rows.saturating_sub(rows0) as f64 / elapsed;

    // Stop the sensors and let the receivers drain, then compare totals.
    sensors_stop.cancel();
    let drain = Instant::now() + Duration::from_secs(10);
    let mut settled = 0;
    while Instant::now() < drain && settled < 8 {
        if let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(100), telemetry.recv()).await
        {
            seen.absorb(m);
        }
        let buffered: u64 = seen.receivers.values().map(|r| r.buffered).sum();
        settled = if buffered == 0 { settled + 1 } else { 0 };
    }
    stop.cancel();
    for t in tasks {
        if let Err(e) = t.await {
            eprintln!("a bench node ended badly: {e}");
        }
    }
    // The nodes' final figures.
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), telemetry.recv()).await
    {
        seen.absorb(m);
    }
    watcher.close(Vec::new()).await;
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("cannot remove {}: {e}", dir.display());
    }
    let accepted: u64 = seen.receivers.values().map(|r| r.accepted).sum();
    let dropped: u64 = seen.receivers.values().map(|r| r.dropped).sum();
    Ok(IotFigures {
        sensors,
        batch,
        shed: seen.sensors.published.saturating_sub(accepted + dropped),
        offered_per_s: sensors as f64 * 1000.0 / opts.period_ms as f64,
        published_per_s,
        committed_per_s,
        published: seen.sensors.published,
        accepted,
        dropped,
        committed: seen.store.rows,
    })
}

/// The latest telemetry of each IoT node.
#[derive(Default)]
struct Seen {
    store: StoreStats,
    sensors: SensorsStats,
    receivers: std::collections::BTreeMap<String, ReceiverStats>,
}

impl Seen {
    fn absorb(&mut self, m: distlab_node::bus::Incoming) {
        match m.topic.rsplit('/').next().unwrap_or("") {
            "store" => self.store = m.envelope.body_as().unwrap_or_default(),
            "sensors" => self.sensors = m.envelope.body_as().unwrap_or_default(),
            "receiver" => {
                self.receivers.insert(
                    m.envelope.from.clone(),
                    m.envelope.body_as().unwrap_or_default(),
                );
            }
            _ => {}
        }
    }
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "distlab-bench-{}-{}",
        std::process::id(),
        distlab_node::envelope::now_ms()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs the whole benchmark and prints a table.
pub async fn run_iot(opts: IotBench) -> anyhow::Result<()> {
    let broker = distlab_node::broker::start(
        "127.0.0.1:0".parse()?,
        distlab_node::credentials::Credentials::generate(),
    )?;
    let broker = broker.client_addr();
    println!(
        "distlab bench iot: embedded broker {broker}, {} receivers, {} s per step, period {} ms",
        opts.receivers, opts.seconds, opts.period_ms
    );
    let raw = raw_broker(&broker, opts.seconds).await;
    println!("baseline: raw broker, 1 publisher -> 1 subscriber, QoS 0, 100 B: {raw:.0} msg/s");
    println!();
    println!(
        "{:>6} {:>8} {:>12} {:>14} {:>14} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6}",
        "batch",
        "sensors",
        "offered/s",
        "published/s",
        "committed/s",
        "published",
        "accepted",
        "committed",
        "dropped",
        "shed",
        "lost"
    );
    for &batch in &opts.batch {
        for &n in &opts.sensors {
            let f = iot_once(&broker, n, batch, &opts).await?;
            let lost = f.accepted.saturating_sub(f.committed);
            println!(
                "{:>6} {:>8} {:>12.0} {:>14.0} {:>14.0} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6}",
                f.batch,
                f.sensors,
                f.offered_per_s,
                f.published_per_s,
                f.committed_per_s,
                f.published,
                f.accepted,
                f.committed,
                f.dropped,
                f.shed,
                lost
            );
        }
    }
    println!();
    println!(
        "published/s and committed/s: rates over the measured window; the counts are totals after the receivers drained."
    );
    println!(
        "dropped: refused by a full receiver buffer. shed: published QoS 0 but never reached a receiver (broker or inbound queue overloaded)."
    );
    println!("lost: accepted by a receiver but never committed (must be 0).");
    Ok(())
}
