//! `distlab-node scenario …`: run a scenario (on a lab that runs, or on
//! nodes it starts itself), check scenario files, list them.

use std::path::PathBuf;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use distlab_node::config::{BrokerAddr, LabConfig};
use distlab_node::credentials::Credentials;
use distlab_node::scenario::Scenario;
use distlab_node::scenario::local::Spawned;
use distlab_node::scenario::run::{NoProcesses, Processes, Report, run};

use super::args::{ClusterArgs, ScenarioCommand};
use super::{connect_client, load_config, runtime};

const SCENARIOS: &str = "config/scenarios";

pub(super) fn scenario_command(op: ScenarioCommand) -> anyhow::Result<()> {
    match op {
        ScenarioCommand::Check { files } => {
            let mut bad = 0;
            for file in &files {
                match Scenario::load(file) {
                    Ok(s) => outln!(
                        "{}: ok: {:?}, {} step(s), {} long",
                        file.display(),
                        s.name,
                        s.steps.len(),
                        humantime::format_duration(s.length)
                    ),
                    Err(e) => {
                        bad += 1;
                        eprintln!("{e}");
                    }
                }
            }
            anyhow::ensure!(
                bad == 0,
                "{bad} of {} scenario file(s) have mistakes",
                files.len()
            );
            Ok(())
        }
        ScenarioCommand::Ls { dir } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(SCENARIOS));
            for (file, s) in distlab_node::scenario::catalog(Some(&dir)) {
                match s {
                    Ok(s) => outln!("{file:<36} {}", s.name),
                    Err(e) => outln!("{file:<36} (unreadable: {e})"),
                }
            }
            Ok(())
        }
        ScenarioCommand::Run {
            file,
            target,
            spawn,
            keep,
            history,
        } => {
            let scenario = distlab_node::scenario::find(&file)?;
            let config = load_config(target.config.as_ref())?;
            let history_root = history
                .or_else(|| config.lab.data_dir.clone())
                .unwrap_or_else(distlab_node::config::default_data_dir);
            for node in &scenario.nodes {
                config
                    .node(node)
                    .with_context(|| format!("{}: nodes", file.display()))?;
            }
            outln!("scenario {:?} ({})", scenario.name, file.display());
            for line in scenario.about.trim().lines() {
                outln!("  {}", line.trim());
            }
            let report = if spawn {
                run_spawned(&scenario, config, target, keep)?
            } else {
                let (broker, cluster) = target.resolve()?;
                let mut procs = NoProcesses(
                    "process steps need --spawn (this run controls only nodes it started)",
                );
                runtime()?.block_on(run_there(&scenario, &config, &broker, &cluster, &mut procs))?
            };
            match report.save(&scenario, &history_root) {
                Ok(dir) => outln!(
                    "history ({} operations, JSON lines and Jepsen EDN): {}",
                    report.history.len(),
                    dir.display()
                ),
                Err(e) => eprintln!("distlab-node: could not save the history: {e}"),
            }
            verdict(&scenario, &report)
        }
    }
}

fn verdict(scenario: &Scenario, report: &Report) -> anyhow::Result<()> {
    if report.passed() {
        outln!("PASSED: {}", scenario.name);
        return Ok(());
    }
    let failed_checks = report.checks.iter().filter(|c| !c.ok).count();
    if report.stopped {
        anyhow::bail!("stopped before the end: {}", scenario.name);
    }
    anyhow::bail!(
        "FAILED: {} ({failed_checks} check(s) failed, {} step(s) could not be done)",
        scenario.name,
        report.failed_steps
    )
}

async fn run_there<P: Processes>(
    scenario: &Scenario,
    config: &LabConfig,
    broker: &BrokerAddr,
    cluster: &str,
    procs: &mut P,
) -> anyhow::Result<Report> {
    let bus = connect_client(broker, cluster).await?;
    let stop = CancellationToken::new();
    distlab_node::runtime::cancel_on_signals(stop.clone());
    let report = run(scenario, config, &bus, procs, |e| outln!("{e}"), stop).await;
    bus.close(Vec::new()).await;
    report
}

/// Starts a broker (unless one is given) and the scenario's nodes, runs
/// it, stops them.
fn run_spawned(
    scenario: &Scenario,
    config: LabConfig,
    target: ClusterArgs,
    keep: bool,
) -> anyhow::Result<Report> {
    let dir = std::env::temp_dir().join(format!(
        "distlab-scenario-{}-{}",
        std::process::id(),
        distlab_node::envelope::now_ms()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot make {}", dir.display()))?;
    let config_file = target
        .config
        .as_ref()
        .map(std::path::absolute)
        .transpose()?;
    let cluster = target
        .cluster
        .clone()
        .unwrap_or_else(|| config.lab.name.clone());
    // A broker of its own, on a free port, unless told which.
    let (broker, _embedded) = match target.broker.clone() {
        Some(_) => (target.resolve()?.0, None),
        None => {
            let embedded = distlab_node::broker::start(
                std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                Credentials::generate(),
            )?;
            (embedded.client_addr(), Some(embedded))
        }
    };
    let nodes: Vec<String> = if scenario.nodes.is_empty() {
        config.nodes.iter().map(|n| n.id.clone()).collect()
    } else {
        scenario.nodes.clone()
    };
    let program = std::env::current_exe().context("cannot find this program")?;
    let mut procs = Spawned::new(program, config_file, broker.clone(), &dir);
    outln!(
        "  starting {} node(s) on {broker}; logs in {}",
        nodes.len(),
        dir.display()
    );
    for node in &nodes {
        procs.spawn(node)?;
    }
    let outcome = runtime()?.block_on(run_there(scenario, &config, &broker, &cluster, &mut procs));
    procs.stop_all();
    let passed = outcome.as_ref().is_ok_and(Report::passed);
    if keep || !passed {
        outln!("  node data and logs kept in {}", dir.display());
    } else if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!(
            "distlab-node: note: could not remove {}: {e}",
            dir.display()
        );
    }
    outcome
}
