//! The `distlab-node` command line. The binary only calls [`main`]:
//! `args` holds what each command takes, `mom` and `bookstore` the bodies
//! of those commands; the rest runs here.

pub(crate) mod args;
/// `print!` to stdout that ends the program quietly when the reader went
/// away (`distlab-node status --json | head`) instead of panicking.
macro_rules! out {
    ($($t:tt)*) => { $crate::cli::write_out(format_args!($($t)*), false) };
}

/// `println!` likewise.
macro_rules! outln {
    ($($t:tt)*) => { $crate::cli::write_out(format_args!($($t)*), true) };
}

mod bookstore;
mod fault;
mod mom;
mod scenario;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use distlab_node::config::{BrokerAddr, DEFAULT_LAB_TOML, LabConfig, default_data_dir};
use distlab_node::credentials::Credentials;
use distlab_node::runtime::{ServeOptions, serve};
use distlab_node::services::mom::client::Client;

use args::{BenchCommand, Cli, Command};

/// Entry point of the `distlab-node` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        // rumqttd logs every connection that ends (the start-up probe's
        // too) as an ERROR of its connection handler and its router:
        // those two off.
        Command::Broker { .. } => {
            "info,rumqttd=warn,rumqttd::server::broker=off,rumqttd::router::routing=off"
        }
        Command::Serve { .. } => "info,rumqttd=off",
        Command::Status { .. }
        | Command::Request { .. }
        | Command::Mom { .. }
        | Command::Bookstore { .. }
        | Command::Fault { .. }
        | Command::Scenario { .. }
        | Command::DefaultConfig
        | Command::Bench { .. } => "warn,rumqttd=off",
    };
    init_logging(cli.verbose, default_filter);
    let result = run(cli.command);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("distlab-node: error: {}", distlab_node::report(&err));
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::DefaultConfig => {
            out!("{DEFAULT_LAB_TOML}");
            Ok(())
        }
        Command::Serve {
            config,
            node,
            broker,
            data_dir,
            credentials,
        } => {
            let config = load_config(config.as_ref())?;
            // Fail on an unknown node before touching the network or the disk.
            config.node(&node)?;
            // An explicit file here; otherwise `serve` finds them (the
            // environment, the data dir).
            let credentials = credentials.as_deref().map(Credentials::load).transpose()?;
            let broker = Some(
                broker
                    .unwrap_or_else(|| config.broker())
                    .with_credentials(credentials),
            );
            let rt = runtime()?;
            rt.block_on(async {
                let shutdown = CancellationToken::new();
                distlab_node::runtime::cancel_on_signals(shutdown.clone());
                serve(
                    ServeOptions {
                        config,
                        node,
                        broker,
                        data_dir,
                    },
                    shutdown,
                )
                .await
            })?;
            Ok(())
        }
        Command::Broker {
            listen,
            credentials,
            data_dir,
            tls,
        } => {
            let root = data_dir.unwrap_or_else(default_data_dir);
            let lab = distlab_node::broker::start_lab(
                Some(listen),
                credentials.as_deref(),
                &root,
                tls.files(),
            )?;
            let broker = &lab.broker;
            tracing::info!(addr = %broker.addr, "MQTT broker ready");
            let from = match &lab.credentials_file {
                Some(path) => format!("in {}", path.display()),
                None => "from the environment".to_owned(),
            };
            match broker.tls {
                None => outln!(
                    "distlab MQTT broker listening on {}; clients present the lab's credentials ({from})",
                    broker.addr
                ),
                Some(fp) => outln!(
                    "distlab MQTT broker listening on {} with TLS (certificate {fp}); clients present \
                     the lab's credentials and pin that certificate ({from})",
                    broker.addr
                ),
            }
            let rt = runtime()?;
            rt.block_on(async {
                let stop = CancellationToken::new();
                distlab_node::runtime::cancel_on_signals(stop.clone());
                stop.cancelled().await;
            });
            Ok(())
        }
        Command::Bench {
            what: BenchCommand::Mom(opts),
        } => {
            let most = distlab_node::services::mom::service::BATCH_MESSAGES
                .min(distlab_node::services::mom::service::BATCH_BYTES / opts.size);
            anyhow::ensure!(
                opts.batch <= most,
                "--batch must be between 1 and {most} for {}-byte messages",
                opts.size
            );
            runtime()?.block_on(crate::bench::mom::run_mom(opts))
        }
        Command::Bench {
            what: BenchCommand::Bookstore(opts),
        } => runtime()?.block_on(crate::bench::bookstore::run_bookstore(opts)),
        Command::Bench {
            what: BenchCommand::Lockers(opts),
        } => runtime()?.block_on(crate::bench::lockers::run_lockers(opts)),
        Command::Bench {
            what: BenchCommand::Maplog(opts),
        } => runtime()?.block_on(crate::bench::maplog::run_maplog(opts)),
        Command::Bench {
            what: BenchCommand::Iot(opts),
        } => runtime()?.block_on(crate::bench::run_iot(opts)),
        Command::Request {
            target,
            timeout_ms,
            service,
            instance,
            kind,
            body,
        } => {
            let (broker, cluster) = target.resolve()?;
            let body: serde_json::Value = match body {
                Some(text) => serde_json::from_str(&text)
                    .with_context(|| format!("the body `{text}` is not JSON"))?,
                None => serde_json::json!({}),
            };
            let rt = runtime()?;
            let reply = rt.block_on(async {
                let bus = connect_client(&broker, &cluster).await?;
                let reply = bus
                    .request(
                        &service,
                        &instance,
                        &kind,
                        body,
                        Duration::from_millis(timeout_ms),
                    )
                    .await;
                bus.close(Vec::new()).await;
                anyhow::Ok(reply?)
            })?;
            outln!("{}", serde_json::to_string_pretty(&reply.body.to_value())?);
            Ok(())
        }
        Command::Mom {
            target,
            node,
            key,
            op,
        } => {
            let (broker, cluster) = target.resolve()?;
            let rt = runtime()?;
            rt.block_on(async {
                let bus = connect_client(&broker, &cluster).await?;
                let out = mom::mom_command(&Client::new(bus.clone(), &node), key, op).await;
                bus.close(Vec::new()).await;
                out
            })
        }
        Command::Fault { target, seed, op } => {
            let (broker, cluster) = target.resolve()?;
            let rt = runtime()?;
            rt.block_on(async {
                let bus = connect_client(&broker, &cluster).await?;
                let out = fault::fault_command(&bus, seed, op).await;
                bus.close(Vec::new()).await;
                out
            })
        }
        Command::Scenario { op } => scenario::scenario_command(op),
        Command::Bookstore { target, op } => {
            let (broker, cluster, config) = target.resolve_with_config()?;
            runtime()?.block_on(bookstore::bookstore_command(broker, cluster, config, op))
        }
        Command::Status {
            target,
            listen_ms,
            json,
        } => {
            let (broker, cluster) = target.resolve()?;
            let rt = runtime()?;
            let rows = rt.block_on(distlab_node::status::collect(
                broker,
                &cluster,
                Duration::from_millis(listen_ms),
            ))?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                out!("{}", distlab_node::status::table(&rows));
            }
            Ok(())
        }
    }
}

/// Writes to stdout; on a closed pipe, exits at once with success (the
/// reader has what it wanted), as `head` expects of a Unix tool.
pub(crate) fn write_out(args: std::fmt::Arguments, newline: bool) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                stdout.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| stdout.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("distlab-node: cannot write the output: {e}");
            std::process::exit(1);
        }
    }
}

fn init_logging(verbose: u8, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = match verbose {
        0 => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
        1 => EnvFilter::new("debug,rumqttd=info"),
        _ => EnvFilter::new("trace"),
    };
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    if let Err(e) = installed {
        eprintln!("distlab-node: no log output: {e}");
    }
}

pub(super) fn load_config(path: Option<&PathBuf>) -> anyhow::Result<LabConfig> {
    Ok(match path {
        Some(path) => LabConfig::load(path)?,
        None => LabConfig::default_lab(),
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A bus client for one command; a clear error when the broker is away.
pub(super) async fn connect_client(
    broker: &BrokerAddr,
    cluster: &str,
) -> anyhow::Result<distlab_node::bus::Bus> {
    let me = format!("cli-{}", std::process::id());
    let bus = distlab_node::bus::Bus::start(distlab_node::bus::BusOptions::new(
        broker.clone(),
        &me,
        cluster,
    ));
    if !bus.wait_connected(Duration::from_secs(3)).await {
        bus.close(Vec::new()).await;
        anyhow::bail!(
            "cannot reach the MQTT broker at {broker}; is it running, and does it take {}?",
            broker.login()
        );
    }
    Ok(bus)
}
