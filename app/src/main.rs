//! `distlab`: the Distlab desktop app.
//!
//! Starts an embedded MQTT broker (or uses `--broker`), starts every node of
//! the lab config as a child process of `distlab-node`, and shows the cluster.
//!
//! # Layout
//! - `main.rs`: command line and start-up (broker, node binary, supervisor, window).
//! - [`app`]: the eframe app: drains data in `logic`, draws panels in `ui`.
//! - [`supervisor`]: local node processes: spawn, signals, logs, no orphans.
//! - [`link`]: the dashboard's own bus connection, on its own thread.
//! - [`outcome`]: what a request fired from a panel answered, typed by request.
//! - [`model`]: rows of the cluster table from membership + processes.
//! - [`systems`]: one model per system (IoT, MOM, bookstore) and the one time base.
//! - [`panels`]: one file per panel (cluster, sensors, queues, bookstore, logs).
//! - [`palette`]: the dashboard's colours.
//! - [`node_bin`]: finding (or, under cargo, building) `distlab-node`.

mod app;
mod link;
mod model;
mod node_bin;
mod outcome;
mod palette;
mod panels;
mod supervisor;
mod systems;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use distlab_node::config::{BrokerAddr, LabConfig, Origin, default_data_dir};

use crate::app::{BrokerInfo, DistlabApp, NodeBinStatus};
use crate::supervisor::{NodeLaunch, Supervisor};
use distlab_node::credentials::Credentials;

#[derive(Debug, Parser)]
#[command(
    name = "distlab",
    version,
    about = "Distlab: a distributed-systems lab on one desktop"
)]
struct Cli {
    /// Lab config (default: config/lab.toml if present, else the built-in lab).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Use this MQTT broker (HOST:PORT) instead of starting the embedded one.
    #[arg(long, conflicts_with = "listen")]
    broker: Option<BrokerAddr>,
    /// Where the embedded broker listens (default 127.0.0.1:1883, or a free
    /// port when 1883 is taken).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory for the nodes (default: the config's, else ~/.local/share/distlab).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Path of the distlab-node binary (default: next to this program).
    #[arg(long)]
    node_bin: Option<PathBuf>,
    /// The bus credentials file (default: $DISTLAB_BUS_PASSWORD, else
    /// $DISTLAB_CREDENTIALS, else bus-credentials in the data dir, made at
    /// the first start of the embedded broker).
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// The embedded broker's TLS certificate (PEM), instead of the one made
    /// in the data dir; a broker beyond loopback always serves TLS.
    #[arg(
        long,
        requires = "tls_key",
        conflicts_with = "broker",
        value_name = "FILE"
    )]
    tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=off"));
    if let Err(err) = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init()
    {
        // Only if a logger is already installed; the app runs on without its own.
        eprintln!("distlab: cannot set up logging: {err}");
    }
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("distlab: error: {}", distlab_node::report(&err));
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<PathBuf>) -> anyhow::Result<LabConfig> {
    let path = path.or_else(|| {
        let local = PathBuf::from("config/lab.toml");
        local.is_file().then_some(local)
    });
    Ok(match path {
        Some(path) => LabConfig::load(&path)?,
        None => LabConfig::default_lab(),
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = load_config(cli.config)?;
    let data_dir = cli
        .data_dir
        .or_else(|| config.lab.data_dir.clone())
        .unwrap_or_else(default_data_dir);
    let broker = match cli.broker {
        Some(addr) => {
            let found = Credentials::resolve(cli.credentials.as_deref(), &data_dir)?;
            let addr = addr.with_credentials(found);
            let target = (addr.host.as_str(), addr.port);
            distlab_node::broker::probe(
                target,
                addr.credentials.as_ref(),
                std::time::Duration::from_secs(3),
            )
            .with_context(|| {
                format!(
                    "no MQTT broker lets us in at {addr}; start one, give its credentials \
                     (--credentials FILE), or leave out --broker"
                )
            })?;
            BrokerInfo {
                addr,
                embedded: false,
                remote: None,
            }
        }
        None => {
            // The lab's credentials: found, or made now (once) in the data
            // dir; TLS beyond loopback.
            let cert = cli.tls_cert.as_deref().zip(cli.tls_key.as_deref());
            let lab = distlab_node::broker::start_lab(
                cli.listen,
                cli.credentials.as_deref(),
                &data_dir,
                cert,
            )?;
            let embedded = lab.broker;
            match embedded.tls {
                Some(fp) => {
                    tracing::info!(addr = %embedded.addr, certificate = %fp, "embedded MQTT broker ready, TLS")
                }
                None => tracing::info!(addr = %embedded.addr, "embedded MQTT broker ready"),
            }
            BrokerInfo {
                addr: embedded.client_addr(),
                embedded: true,
                remote: embedded
                    .tls
                    .map(|fp| (embedded.remote_addr().to_string(), fp.to_string())),
            }
        }
    };
    let launches = node_launches(&config, &broker.addr, &data_dir)?;

    let (program, node_bin) = match node_bin::locate(cli.node_bin.as_deref()) {
        Ok(path) => (Some(path), NodeBinStatus::Ready),
        Err(_) if cli.node_bin.is_none() && node_bin::can_build() => {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                if tx.send(node_bin::build()).is_err() {
                    // The window closed first; the nodes are not needed.
                    tracing::debug!("distlab-node build finished after the app closed");
                }
            });
            (None, NodeBinStatus::Building(rx))
        }
        Err(why) => (None, NodeBinStatus::Failed(why)),
    };

    let icon = eframe::icon_data::from_png_bytes(include_bytes!("../../assets/icon.png"))
        .context("the bundled icon is not a PNG")?;
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title(format!("Distlab — {}", config.lab.name))
            .with_app_id("distlab")
            .with_icon(icon)
            .with_inner_size([1200.0, 760.0])
            .with_min_inner_size([720.0, 420.0]),
        // Next to the nodes' data: ~/.local/share/distlab/app.ron.
        persistence_path: Some(default_data_dir().join("app.ron")),
        ..Default::default()
    };
    let cluster = config.lab.name.clone();
    // Scenario histories go to <data dir>/runs/.
    let runs_root = data_dir.clone();
    eframe::run_native(
        "Distlab",
        options,
        Box::new(move |cc| {
            let repaint = cc.egui_ctx.clone();
            let supervisor =
                Supervisor::start(launches, program, move || repaint.request_repaint());
            let (notify, closer) = (cc.egui_ctx.clone(), cc.egui_ctx.clone());
            let link = link::Link::start(
                broker.addr.clone(),
                &cluster,
                move || notify.request_repaint(),
                move || closer.send_viewport_cmd(egui::ViewportCommand::Close),
            )?;
            Ok(Box::new(DistlabApp::new(
                cc, config, broker, supervisor, link, node_bin, runs_root,
            )))
        }),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the window: {e}"))
}

/// The command line of every node the app runs.
fn node_launches(
    config: &LabConfig,
    broker: &BrokerAddr,
    data_dir: &std::path::Path,
) -> anyhow::Result<Vec<NodeLaunch>> {
    let config_arg: Option<PathBuf> = match &config.origin {
        Origin::File(path) => Some(
            std::fs::canonicalize(path)
                .with_context(|| format!("cannot resolve {}", path.display()))?,
        ),
        Origin::BuiltIn => None,
    };
    Ok(config
        .nodes
        .iter()
        .map(|node| {
            let mut args: Vec<OsString> =
                vec!["serve".into(), "--node".into(), node.id.clone().into()];
            if let Some(path) = &config_arg {
                args.push("--config".into());
                args.push(path.clone().into());
            }
            args.extend(["--broker".into(), broker.to_string().into()]);
            args.extend(["--data-dir".into(), data_dir.as_os_str().to_owned()]);
            NodeLaunch {
                id: node.id.clone(),
                args,
                env: broker
                    .credentials
                    .iter()
                    .flat_map(|c| c.env())
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
            }
        })
        .collect())
}
