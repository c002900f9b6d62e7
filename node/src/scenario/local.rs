//! Nodes the scenario runner starts itself (`distlab-node scenario run
//! --spawn`): child processes of this one, each `distlab-node serve` with
//! its log in the run's directory, killed, paused and restarted by PID.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::run::Processes;
use super::spec::Process;
use crate::config::BrokerAddr;

/// How long a stopped node gets to leave before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

pub struct Spawned {
    program: PathBuf,
    /// The lab config file (none: the built-in lab).
    config: Option<PathBuf>,
    broker: BrokerAddr,
    dir: PathBuf,
    children: BTreeMap<String, Child>,
    starts: BTreeMap<String, usize>,
}

impl Spawned {
    /// Nodes will run `program serve`, with their data and logs in `dir`.
    pub fn new(program: PathBuf, config: Option<PathBuf>, broker: BrokerAddr, dir: &Path) -> Self {
        Self {
            program,
            config,
            broker,
            dir: dir.to_owned(),
            children: BTreeMap::new(),
            starts: BTreeMap::new(),
        }
    }

    /// Where `node`'s `n`th run logs.
    pub fn log_path(&self, node: &str, n: usize) -> PathBuf {
        self.dir.join(format!("{node}.{n}.log"))
    }

    /// Starts `node`.
    pub fn spawn(&mut self, node: &str) -> anyhow::Result<u32> {
        let n = self.starts.entry(node.to_owned()).or_insert(0);
        let log = std::fs::File::create(self.dir.join(format!("{node}.{n}.log")))?;
        *n += 1;
        let mut cmd = Command::new(&self.program);
        cmd.args([
            "serve",
            "--node",
            node,
            "--broker",
            &self.broker.to_string(),
        ])
        .arg("--data-dir")
        .arg(self.dir.join("data"))
        .envs(
            self.broker
                .credentials
                .iter()
                .flat_map(|c| c.env())
                .collect::<Vec<_>>(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", self.program.display()))?;
        let pid = child.id();
        self.children.insert(node.to_owned(), child);
        Ok(pid)
    }

    fn signal(&self, node: &str, signal: Signal) -> anyhow::Result<()> {
        let child = self
            .children
            .get(node)
            .ok_or_else(|| anyhow::anyhow!("{node} was not started by this run"))?;
        kill(Pid::from_raw(child.id() as i32), signal)?;
        Ok(())
    }

    /// Stops `node` (SIGTERM, SIGKILL after the grace) and reaps it.
    fn end(&mut self, node: &str, signal: Signal) -> anyhow::Result<()> {
        let Some(mut child) = self.children.remove(node) else {
            return Ok(());
        };
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = Pid::from_raw(child.id() as i32);
        // A paused node must run to take SIGTERM.
        let _ = kill(pid, Signal::SIGCONT);
        let _ = kill(pid, signal);
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                child.wait()?;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops every node it started.
    pub fn stop_all(&mut self) {
        let nodes: Vec<String> = self.children.keys().cloned().collect();
        for node in nodes {
            if let Err(e) = self.end(&node, Signal::SIGTERM) {
                tracing::warn!(%node, error = %e, "could not stop a node");
            }
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Processes for Spawned {
    async fn act(&mut self, node: &str, op: Process) -> anyhow::Result<()> {
        match op {
            Process::Kill => tokio::task::block_in_place(|| self.end(node, Signal::SIGKILL)),
            Process::Stop => tokio::task::block_in_place(|| self.end(node, Signal::SIGTERM)),
            Process::Pause => self.signal(node, Signal::SIGSTOP),
            Process::Resume => self.signal(node, Signal::SIGCONT),
            Process::Restart => {
                tokio::task::block_in_place(|| self.end(node, Signal::SIGTERM))?;
                self.spawn(node).map(|_| ())
            }
        }
    }
}
