//! Nodes of a lab running as tasks in this process, for the benchmarks:
//! each node is a real `serve` (bus, presence, services) on the given
//! broker, with its data in a temporary directory removed at the end.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use distlab_node::bus::{Bus, BusOptions};
use distlab_node::config::{BrokerAddr, LabConfig, NodeSpec, Origin, Role};
use distlab_node::runtime::{ServeOptions, serve};

pub struct InProcess {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<Result<(), distlab_node::runtime::RuntimeError>>>,
    dir: std::path::PathBuf,
}

/// The default lab renamed `cluster`, with only `nodes` (id, role) in it.
pub fn lab(cluster: &str, nodes: &[(&str, Role)]) -> LabConfig {
    let mut config = LabConfig::default_lab();
    config.origin = Origin::BuiltIn;
    config.lab.name = cluster.to_owned();
    config.nodes = nodes
        .iter()
        .map(|(id, role)| NodeSpec {
            id: (*id).to_owned(),
            roles: vec![*role],
        })
        .collect();
    config
}

/// A client of `cluster` on `broker`, connected.
pub async fn watcher(broker: &BrokerAddr, cluster: &str) -> Bus {
    let bus = Bus::start(BusOptions::new(
        broker.clone(),
        &format!("{cluster}-watch"),
        cluster,
    ));
    bus.wait_connected(Duration::from_secs(5)).await;
    bus
}

impl InProcess {
    /// Serves every node of `config` on `broker`.
    pub fn start(broker: &BrokerAddr, config: &LabConfig) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("distlab-bench-{}", config.lab.name));
        std::fs::create_dir_all(&dir)?;
        let stop = CancellationToken::new();
        let tasks = config
            .nodes
            .iter()
            .map(|node| {
                let options = ServeOptions {
                    config: config.clone(),
                    node: node.id.clone(),
                    broker: Some(broker.clone()),
                    data_dir: Some(dir.clone()),
                };
                let token = stop.clone();
                tokio::spawn(async move { serve(options, token).await })
            })
            .collect();
        Ok(Self { stop, tasks, dir })
    }

    /// Stops every node and removes the data.
    pub async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            if let Err(e) = t.await {
                eprintln!("a bench node ended badly: {e}");
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("cannot remove {}: {e}", self.dir.display());
        }
    }
}
