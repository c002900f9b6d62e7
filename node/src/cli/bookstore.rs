//! `distlab-node bookstore …`: the seed's client loop as a load generator,
//! and the invariant checks over every replica.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use distlab_node::config::{BrokerAddr, LabConfig};
use distlab_node::services::bookstore::{check, frontend::FrontendHttp, load};

use super::args::BookstoreCommand;
use super::connect_client;

pub(super) async fn bookstore_command(
    broker: BrokerAddr,
    cluster: String,
    config: LabConfig,
    op: BookstoreCommand,
) -> anyhow::Result<()> {
    match op {
        BookstoreCommand::Load {
            clients,
            rounds,
            seed,
            addr,
        } => {
            let addr = match addr {
                Some(a) => a,
                None => announced_frontend(&broker, &cluster)
                    .await?
                    .unwrap_or(config.bookstore.http),
            };
            outln!("{clients} clients x {rounds} rounds of search -> lookup -> buy against {addr}");
            let options = load::LoadOptions {
                addr,
                clients,
                rounds,
                seed,
                ..Default::default()
            };
            let stop = CancellationToken::new();
            distlab_node::runtime::cancel_on_signals(stop.clone());
            let report = load::run(options, load::Progress::default(), stop).await;
            out!("{}", report.render());
            anyhow::ensure!(report.failed() == 0, "{} requests failed", report.failed());
            Ok(())
        }
        BookstoreCommand::Check => {
            let bus = connect_client(&broker, &cluster).await?;
            let catalogs = config.nodes_with(distlab_node::config::Role::Catalog);
            let orders = config.nodes_with(distlab_node::config::Role::Order);
            let gathered = check::gather(&bus, &catalogs, &orders).await;
            bus.close(Vec::new()).await;
            let (cats, ords) = gathered.context("cannot read a replica")?;
            let findings = check::verify(&cats, &ords);
            for f in &findings {
                outln!(
                    "{} {}: {}",
                    if f.ok { "ok  " } else { "FAIL" },
                    f.check,
                    f.detail
                );
            }
            anyhow::ensure!(findings.iter().all(|f| f.ok), "a check failed");
            Ok(())
        }
    }
}

/// The address the frontend announced (it takes a free port when its own
/// is in use), if it did within 2 s.
async fn announced_frontend(
    broker: &BrokerAddr,
    cluster: &str,
) -> anyhow::Result<Option<SocketAddr>> {
    let bus = connect_client(broker, cluster).await?;
    let topic = bus.topics().service("bookstore", "http/+");
    let mut rx = bus.subscribe(&topic).await?;
    let announced = tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .ok()
        .flatten()
        .and_then(|m| m.envelope.body_as::<FrontendHttp>().ok());
    bus.close(Vec::new()).await;
    Ok(announced.map(|h| h.addr))
}
